/**
 * An in-memory socket for Node's `http.request` under replay: the client writes its request
 * into it (discarded: the integration observes the request itself) and reads the recorded
 * response back as HTTP/1.1 bytes, so the library above (node-fetch) parses a real response
 * with its own code. A miss destroys the socket with a connection error, which the library
 * reports as it reports a refused connection. Nothing here opens a connection.
 */
import { STATUS_CODES } from "node:http";
import { Duplex } from "node:stream";
import { type Chunk, timedChunks } from "./answer.js";

export class ReplaySocket extends Duplex {
  readonly remoteAddress = "127.0.0.1";
  readonly remotePort = 0;
  readonly remoteFamily = "IPv4";
  readonly connecting = false;

  constructor() {
    super({ allowHalfOpen: true });
  }

  override _write(_chunk: unknown, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    callback();
  }

  override _read(): void {
    // the response is pushed by `respond`
  }

  setTimeout(_ms: number, callback?: () => void): this {
    if (callback) this.once("timeout", callback);
    return this;
  }

  setNoDelay(): this {
    return this;
  }

  setKeepAlive(): this {
    return this;
  }

  ref(): this {
    return this;
  }

  unref(): this {
    return this;
  }

  address(): { address: string; family: string; port: number } {
    return { address: "127.0.0.1", family: "IPv4", port: 0 };
  }

  /** Write the recorded response (whole, or chunked at the recorded offsets) and close. */
  async respond(status: number, headers: Array<[string, string]>, body: Uint8Array | null, stream: {
    chunks: Chunk[]; speed: number; startMs: number; error: { type: string; message: string } | null;
  } | null): Promise<void> {
    const lines = [`HTTP/1.1 ${status} ${STATUS_CODES[status] ?? "Unknown"}`];
    for (const [name, value] of headers) lines.push(`${name}: ${value.replace(/[\r\n]/g, " ")}`);
    lines.push("connection: close");
    if (!stream) {
      const data = body ?? new Uint8Array(0);
      lines.push(`content-length: ${data.byteLength}`);
      this.push(Buffer.from(`${lines.join("\r\n")}\r\n\r\n`, "latin1"));
      if (data.byteLength) this.push(data);
      this.push(null);
      return;
    }
    lines.push("transfer-encoding: chunked");
    this.push(Buffer.from(`${lines.join("\r\n")}\r\n\r\n`, "latin1"));
    try {
      for await (const data of timedChunks(stream.chunks, stream.speed, stream.startMs, stream.error)) {
        if (this.destroyed) return;
        if (data.byteLength) this.push(Buffer.concat([Buffer.from(`${data.byteLength.toString(16)}\r\n`), data, Buffer.from("\r\n")]));
      }
      this.push(Buffer.from("0\r\n\r\n"));
      this.push(null);
    } catch (err) {
      this.destroy(err as Error);
    }
  }
}
