/**
 * Embedded mode: JSON lines appended durably to `$TRACELAB_HOME/spool/` (no server at all).
 *
 * The same files as the Python SDK's `SpoolSink` (spec/README.md, "Transport"): one file per
 * process, `<YYYYmmddTHHMMSS>-<pid>-<8 hex>.jsonl.open` while written, each batch appended with
 * one write() on an O_APPEND descriptor and fsync'ed, renamed to `.jsonl` when it rolls over
 * (16 MiB) or the process exits. Readers take only `\n`-terminated lines.
 */
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import type { Destination } from "./batching.js";

export const SPOOL_ROLL_BYTES = 16 * 1024 * 1024;

function write(fd: number, buffer: Buffer, offset: number, length: number): Promise<number> {
  return new Promise((resolve, reject) => {
    fs.write(fd, buffer, offset, length, null, (err, written) => (err ? reject(err) : resolve(written)));
  });
}
const fsync = promisify(fs.fsync);

function stamp(date: Date): string {
  const pad = (n: number) => String(n).padStart(2, "0");
  return `${date.getUTCFullYear()}${pad(date.getUTCMonth() + 1)}${pad(date.getUTCDate())}` +
    `T${pad(date.getUTCHours())}${pad(date.getUTCMinutes())}${pad(date.getUTCSeconds())}`;
}

export class SpoolDestination implements Destination {
  readonly kind = "spool" as const;
  readonly directory: string;
  private fd: number | null = null;
  private path: string | null = null;
  private size = 0;

  constructor(home: string) {
    this.directory = join(home, "spool");
  }

  /** The file being written now, if any (for tests and `stats()`). */
  get currentPath(): string | null {
    return this.path;
  }

  private open(): number {
    fs.mkdirSync(this.directory, { recursive: true, mode: 0o700 });
    this.path = join(this.directory, `${stamp(new Date())}-${process.pid}-${randomBytes(4).toString("hex")}.jsonl.open`);
    this.fd = fs.openSync(this.path, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_APPEND, 0o600);
    this.size = 0;
    return this.fd;
  }

  private static encode(lines: string[]): Buffer {
    return Buffer.from(`${lines.join("\n")}\n`, "utf8");
  }

  async write(lines: string[]): Promise<void> {
    const fd = this.fd ?? this.open();
    const data = SpoolDestination.encode(lines);
    let offset = 0;
    while (offset < data.length) {
      offset += await write(fd, data, offset, data.length - offset);
    }
    await fsync(fd);
    this.size += data.length;
    if (this.size >= SPOOL_ROLL_BYTES && this.fd === fd) this.complete();
  }

  writeSync(lines: string[]): void {
    const fd = this.fd ?? this.open();
    const data = SpoolDestination.encode(lines);
    let offset = 0;
    while (offset < data.length) {
      offset += fs.writeSync(fd, data, offset, data.length - offset);
    }
    fs.fsyncSync(fd);
    this.size += data.length;
  }

  /** Close the current file and mark it complete by dropping the `.open` suffix. */
  private complete(): void {
    if (this.fd === null || this.path === null) return;
    const fd = this.fd;
    const path = this.path;
    this.fd = null;
    this.path = null;
    fs.closeSync(fd);
    fs.renameSync(path, path.slice(0, -".open".length));
  }

  async close(): Promise<void> {
    this.complete();
  }

  closeSync(): void {
    this.complete();
  }
}
