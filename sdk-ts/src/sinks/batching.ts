/**
 * The publisher: a bounded in-memory queue drained in batches into one destination.
 *
 * The traced program only appends a serialized event (a full queue drops and counts, never
 * blocks); timers drain it off the hot path. A failing destination is retried with backoff for
 * `retryMs`, after which the pending batch is dropped and counted, so a dead Redis costs the app
 * nothing but a counted drop (the Python SDK's `BatchingSink`, the Sentry transport's design).
 * Every timer here is unref'd: the SDK never keeps a process alive on its own. Destinations
 * live in `redis.ts` and `spool.ts` behind the small `Destination` interface.
 */
import type { SDKConfig } from "../config.js";
import { describeError, type SDKStats } from "../stats.js";

/** Where batches of serialized events go. `write` rejects when the batch was not stored. */
export interface Destination {
  readonly kind: "redis" | "spool";
  write(lines: string[]): Promise<void>;
  /** Synchronous last-chance write at process exit, when the destination can do one. */
  writeSync?(lines: string[]): void;
  /** True when the batch `lines`, whose `write` has not settled yet, is already stored. */
  holds?(lines: string[]): boolean;
  close(): Promise<void>;
  closeSync?(): void;
}

function unrefTimer(fn: () => void, ms: number): NodeJS.Timeout {
  const timer = setTimeout(fn, ms);
  timer.unref();
  return timer;
}

export class BatchingSink {
  private queue: string[] = [];
  private pending: string[] = [];
  private timer: NodeJS.Timeout | null = null;
  private draining: Promise<void> | null = null;
  private outageSince: number | null = null;
  private retryAt = 0;
  private closed = false;

  constructor(
    public config: SDKConfig,
    private readonly stats: SDKStats,
    readonly destination: Destination,
  ) {}

  get kind(): string {
    return this.destination.kind;
  }

  /** Enqueue without blocking; false (and a counted drop) when the queue is full or closed. */
  submit(line: string): boolean {
    if (this.closed) {
      this.stats.countDropped("closed");
      return false;
    }
    if (this.queue.length >= this.config.queueSize) {
      this.stats.countDropped("queue_full");
      return false;
    }
    this.queue.push(line);
    this.schedule(this.queue.length >= this.config.batchSize ? 0 : this.config.flushIntervalMs);
    return true;
  }

  queued(): number {
    return this.queue.length + this.pending.length;
  }

  private schedule(delayMs: number): void {
    if (this.draining) return;
    const wait = Math.max(delayMs, this.retryAt - Date.now(), 0);
    if (this.timer) {
      if (wait > 0) return; // already due soon enough
      clearTimeout(this.timer);
    }
    this.timer = unrefTimer(() => {
      this.timer = null;
      void this.drain();
    }, wait);
  }

  /** Write batches until the queue is empty or the destination fails; never rejects. */
  private drain(): Promise<void> {
    if (this.draining) return this.draining;
    const run = async (): Promise<void> => {
      while (this.queue.length || this.pending.length) {
        if (!this.pending.length) this.pending = this.queue.splice(0, this.config.batchSize);
        if (!(await this.deliver())) return;
      }
    };
    this.draining = run()
      .catch((err) => this.stats.countError(this.kind, `sink worker: ${describeError(err)}`))
      .finally(() => {
        this.draining = null;
        if (this.queued() && !this.closed) this.schedule(this.config.flushIntervalMs);
      });
    return this.draining;
  }

  private async deliver(): Promise<boolean> {
    const batch = this.pending;
    try {
      await this.destination.write(batch);
    } catch (err) {
      const now = Date.now();
      if (this.outageSince === null) {
        this.outageSince = now;
        this.stats.countError(this.kind, describeError(err));
      }
      if (now - this.outageSince >= this.config.retryMs) {
        this.stats.countDropped(`${this.kind}_unavailable`, batch.length);
        this.pending = [];
      }
      const seconds = Math.floor((now - this.outageSince) / 1000);
      this.retryAt = now + Math.min(1000, 50 * 2 ** Math.min(5, seconds));
      return false;
    }
    this.stats.countDelivered(this.kind, batch.length);
    this.pending = [];
    this.outageSince = null;
    this.retryAt = 0;
    return true;
  }

  /**
   * Resolve true once everything submitted so far is written, false if `timeoutMs` ran out
   * first. Settles within the timeout even when the destination hangs. While it waits, a
   * ref'd timer keeps the process alive: this is what makes "flush before exit" work.
   */
  async flush(timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + Math.max(0, timeoutMs);
    let expire: NodeJS.Timeout | undefined;
    const expired = new Promise<false>((resolve) => {
      expire = setTimeout(() => resolve(false), Math.max(0, timeoutMs));
    });
    try {
      while (this.queued() || this.draining) {
        if (Date.now() >= deadline) return false;
        this.retryAt = 0;
        if (this.timer) {
          clearTimeout(this.timer);
          this.timer = null;
        }
        const before = this.queued();
        const outcome = await Promise.race([this.drain().then(() => true), expired]);
        if (!outcome) return false;
        if (this.queued() && this.queued() >= before && this.outageSince !== null) {
          // The destination failed this round: wait a little (bounded by the deadline).
          const pause = Math.min(this.retryAt - Date.now(), deadline - Date.now());
          if (pause > 0) {
            let nap: NodeJS.Timeout | undefined;
            const waited = await Promise.race([
              new Promise<true>((resolve) => { nap = setTimeout(() => resolve(true), pause); }),
              expired,
            ]);
            clearTimeout(nap);
            if (!waited) return false;
          }
        }
      }
      return true;
    } finally {
      clearTimeout(expire);
    }
  }

  /** Flush within `timeoutMs`, then close the destination; what is left is counted as dropped. */
  async close(timeoutMs: number): Promise<boolean> {
    const done = await this.flush(timeoutMs);
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    const leftover = this.queued();
    if (leftover) {
      this.stats.countDropped("shutdown", leftover);
      this.queue = [];
      this.pending = [];
    }
    try {
      await this.destination.close();
    } catch (err) {
      this.stats.countError(this.kind, `closing: ${describeError(err)}`);
    }
    return done;
  }

  /** At process exit: write what is left synchronously if the destination can, then close. */
  closeSync(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    const dest = this.destination;
    // a batch stored already, its write still settling (a spool fsync), is not written twice
    const stored = this.pending.length > 0 && dest.holds?.(this.pending) === true;
    if (stored) this.stats.countDelivered(this.kind, this.pending.length);
    const leftover = [...(stored ? [] : this.pending), ...this.queue];
    this.queue = [];
    this.pending = [];
    if (leftover.length) {
      if (dest.writeSync) {
        try {
          dest.writeSync(leftover);
          this.stats.countDelivered(this.kind, leftover.length);
        } catch (err) {
          this.stats.countError(this.kind, `exit write: ${describeError(err)}`);
          this.stats.countDropped("shutdown", leftover.length);
        }
      } else {
        this.stats.countDropped("shutdown", leftover.length);
      }
    }
    try {
      dest.closeSync?.();
    } catch {
      // the process is exiting: nothing useful left to do with this error
    }
  }
}
