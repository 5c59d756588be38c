/**
 * Service mode: pipelined `XADD <stream> * event <json>`, one stream entry per event.
 *
 * ioredis is used with its own retry machinery switched off (no offline queue, no automatic
 * reconnect): the batching sink above owns retries and backoff, and this module connects on
 * demand. The socket is unref'd as soon as it exists, so an idle connection never keeps the
 * process alive; `BatchingSink.flush` holds the process open while a batch is in flight.
 */
import { Redis } from "ioredis";
import type { Destination } from "./batching.js";
import { xaddSync } from "./redis-sync.js";

const CONNECT_TIMEOUT_MS = 1000;
const WRITE_TIMEOUT_MS = 2000;

function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms);
    timer.unref();
  });
  return Promise.race([promise, expired]).finally(() => clearTimeout(timer));
}

interface Unrefable {
  unref?: () => void;
}

export class RedisStreamDestination implements Destination {
  readonly kind = "redis" as const;
  private client: Redis;
  lastError: string | null = null;

  constructor(
    private readonly url: string,
    private readonly stream: string,
    private readonly maxlen: number | null,
    /** The bound on the synchronous write at process exit (the shutdown timeout). */
    private readonly syncTimeoutMs = 2000,
  ) {
    this.client = new Redis(url, {
      lazyConnect: true,
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      retryStrategy: () => null,
      reconnectOnError: () => false,
      autoResendUnfulfilledCommands: false,
      connectTimeout: CONNECT_TIMEOUT_MS,
      enableReadyCheck: false,
      disconnectTimeout: 200,
    });
    // Without a listener ioredis prints "Unhandled error event" to the app's console.
    this.client.on("error", (err: Error) => {
      this.lastError = err?.message ?? String(err);
    });
    this.unrefSockets();
  }

  /**
   * Unref every socket ioredis opens, and skip its disconnect timer (a ref'd 2 s timer that is
   * only cleared by a "close" event) for a socket that is already destroyed. The connector is
   * ioredis-internal, hence the guarded access; without it only the process-exit behaviour
   * degrades, never tracing.
   */
  private unrefSockets(): void {
    type Connector = {
      connect?: (...a: unknown[]) => Promise<unknown>;
      disconnect?: () => void;
      stream?: { destroyed?: boolean };
      connecting?: boolean;
    };
    const connector = (this.client as unknown as { connector?: Connector }).connector;
    if (connector && typeof connector.connect === "function") {
      const connect = connector.connect.bind(connector);
      connector.connect = async (...args: unknown[]) => {
        const stream = await connect(...args);
        (stream as Unrefable)?.unref?.();
        return stream;
      };
    }
    if (connector && typeof connector.disconnect === "function") {
      const disconnect = connector.disconnect.bind(connector);
      connector.disconnect = () => {
        if (connector.stream?.destroyed) {
          connector.connecting = false;
          return;
        }
        disconnect();
      };
    }
    this.client.on("connect", () => {
      (this.client as unknown as { stream?: Unrefable }).stream?.unref?.();
    });
  }

  private hangUp(): void {
    if (this.client.status !== "end") this.client.disconnect();
  }

  private async ready(): Promise<void> {
    const status = this.client.status;
    if (status === "ready") return;
    this.lastError = null;
    if (status === "connecting" || status === "connect") {
      await withTimeout(new Promise<void>((resolve, reject) => {
        const onReady = () => { cleanup(); resolve(); };
        const onEnd = () => { cleanup(); reject(new Error(this.lastError ?? "connection closed")); };
        const cleanup = () => {
          this.client.off("ready", onReady);
          this.client.off("end", onEnd);
        };
        this.client.once("ready", onReady);
        this.client.once("end", onEnd);
      }), CONNECT_TIMEOUT_MS * 2, `connecting to ${this.safeUrl()}`);
      return;
    }
    await withTimeout(this.client.connect(), CONNECT_TIMEOUT_MS * 2, `connecting to ${this.safeUrl()}`);
  }

  private safeUrl(): string {
    return this.url.replace(/\/\/([^@/]*):[^@/]*@/, "//$1:[REDACTED]@");
  }

  async write(lines: string[]): Promise<void> {
    try {
      await this.ready();
    } catch (err) {
      this.hangUp();
      const reason = this.lastError ?? (err as Error)?.message ?? String(err);
      throw new Error(`cannot connect to Redis at ${this.safeUrl()}: ${reason}`);
    }
    const pipeline = this.client.pipeline();
    for (const line of lines) {
      if (this.maxlen) pipeline.xadd(this.stream, "MAXLEN", "~", this.maxlen, "*", "event", line);
      else pipeline.xadd(this.stream, "*", "event", line);
    }
    let results: Array<[Error | null, unknown]> | null;
    try {
      results = await withTimeout(pipeline.exec(), WRITE_TIMEOUT_MS, "XADD batch");
    } catch (err) {
      // A hung or dead server: drop the connection so the next batch starts clean.
      this.hangUp();
      throw err;
    }
    const failed = (results ?? []).find(([err]) => err);
    if (!results || failed) {
      throw failed?.[0] ?? new Error("XADD batch returned no results");
    }
  }

  async close(): Promise<void> {
    if (this.client.status === "ready") {
      // The socket is unref'd: without this ref'd timer an app ending in `await shutdown()`
      // would see its event loop empty mid-QUIT and exit 13 (an unsettled top-level await).
      const hold = setTimeout(() => {}, 1000);
      try {
        await withTimeout(this.client.quit(), 500, "QUIT");
        return;
      } catch {
        // fall through to a hard disconnect
      } finally {
        clearTimeout(hold);
      }
    }
    this.hangUp();
  }

  /** At exit (no more I/O to come): XADD through a short-lived child process (`redis-sync.ts`). */
  writeSync(lines: string[]): void {
    xaddSync(this.url, this.stream, this.maxlen, lines, this.syncTimeoutMs);
  }

  closeSync(): void {
    this.hangUp();
  }
}
