/**
 * Embedded mode: JSON lines appended durably to `$TRACELAB_HOME/spool/` (no server at all).
 *
 * The same files as the Python SDK's `SpoolSink` (spec/README.md, "Transport"): one file per
 * process, `<YYYYmmddTHHMMSS>-<pid>-<8 hex>.jsonl.open` while written, each batch appended with
 * one write() on an O_APPEND descriptor and fsync'ed, renamed to `.jsonl` when it rolls over
 * (16 MiB) or the process exits. Readers take only `\n`-terminated lines. While a file may still
 * be appended to, this process holds a shared `flock` on it (see `flock.ts`): that, not the pid
 * in its name, is how a fold anywhere knows the file is live.
 */
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import type { Destination } from "./batching.js";
import { lockingUnavailable, lockShared, lockSharedSync } from "./flock.js";

export const SPOOL_ROLL_BYTES = 16 * 1024 * 1024;

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
  /** Where the open file is now: a hidden name until it is locked, then `finalPath`. */
  private path: string | null = null;
  private finalPath: string | null = null;
  private locked = false;
  private size = 0;
  /** The last batch appended by `write` (see `holds`). */
  private landed: string[] | null = null;

  constructor(home: string) {
    this.directory = join(home, "spool");
  }

  /** The file being written now, if any (for tests and `stats()`). */
  get currentPath(): string | null {
    return this.path;
  }

  /**
   * Create the next file. With locking available it starts under a hidden name (folds skip
   * names starting with `.`) and gets its `.jsonl.open` name only once locked, so no fold
   * can ever see it unlocked and take it for a crashed writer's.
   */
  private create(): number {
    fs.mkdirSync(this.directory, { recursive: true, mode: 0o700 });
    const name = `${stamp(new Date())}-${process.pid}-${randomBytes(4).toString("hex")}.jsonl.open`;
    this.finalPath = join(this.directory, name);
    this.path = lockingUnavailable() === null ? join(this.directory, `.${name}`) : this.finalPath;
    this.fd = fs.openSync(this.path, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_APPEND, 0o600);
    this.locked = false;
    this.size = 0;
    return this.fd;
  }

  /** Give the locked (or, without flock, unlockable) file its `.jsonl.open` name. */
  private publish(): void {
    if (this.path !== null && this.finalPath !== null && this.path !== this.finalPath) {
      fs.renameSync(this.path, this.finalPath);
      this.path = this.finalPath;
    }
  }

  private async ready(): Promise<number> {
    const fd = this.fd ?? this.create();
    if (this.path !== this.finalPath) {
      if (!this.locked) {
        const locked = await lockShared(fd);
        if (this.fd !== fd) throw new Error("the spool file was closed while it was being locked");
        this.locked = locked;
      }
      this.publish();
    }
    return fd;
  }

  private readySync(): number {
    const fd = this.fd ?? this.create();
    if (this.path !== this.finalPath) {
      if (!this.locked) this.locked = lockSharedSync(fd);
      this.publish();
    }
    return fd;
  }

  private static encode(lines: string[]): Buffer {
    return Buffer.from(`${lines.join("\n")}\n`, "utf8");
  }

  /**
   * Append `lines`, then fsync. The append itself is synchronous (a local append is quick; the
   * fsync is what takes time): once it is done the batch is in the file (`holds`), so a
   * process exiting during the fsync does not write it a second time.
   */
  async write(lines: string[]): Promise<void> {
    const fd = await this.ready();
    const data = SpoolDestination.encode(lines);
    let offset = 0;
    while (offset < data.length) {
      offset += fs.writeSync(fd, data, offset, data.length - offset);
    }
    this.landed = lines;
    await fsync(fd);
    this.size += data.length;
    if (this.size >= SPOOL_ROLL_BYTES && this.fd === fd) this.complete();
  }

  /** True when `lines` (this very batch) is already in the file, its fsync perhaps still running. */
  holds(lines: string[]): boolean {
    return this.landed === lines;
  }

  writeSync(lines: string[]): void {
    const fd = this.readySync();
    const data = SpoolDestination.encode(lines);
    let offset = 0;
    while (offset < data.length) {
      offset += fs.writeSync(fd, data, offset, data.length - offset);
    }
    fs.fsyncSync(fd);
    this.size += data.length;
  }

  /**
   * Mark the current file complete by dropping the `.open` suffix, then close it. Renamed
   * first: closing releases the lock, and an unlocked `.open` file reads as a crashed writer's.
   */
  private complete(): void {
    if (this.fd === null || this.path === null || this.finalPath === null) return;
    const fd = this.fd;
    const path = this.path;
    const done = this.finalPath.slice(0, -".open".length);
    this.fd = null;
    this.path = null;
    this.finalPath = null;
    this.locked = false;
    try {
      fs.renameSync(path, done);
    } finally {
      fs.closeSync(fd);
    }
  }

  async close(): Promise<void> {
    this.complete();
  }

  closeSync(): void {
    this.complete();
  }
}
