/**
 * A shared `flock` on an open spool file, the liveness signal the spool fold reads.
 *
 * The fold (Python, `tracelab.store.spool`) treats a `.jsonl.open` file as still being written
 * while someone holds an flock on it: it probes with `LOCK_EX|LOCK_NB`. PIDs cannot tell that
 * across containers or PID namespaces sharing one `$TRACELAB_HOME`; a lock can. Node has no
 * flock and native addons are off the table, so util-linux's `flock(1)` takes it for us: the
 * child gets our descriptor as its fd 3, locks it and exits. An flock belongs to the open file
 * description, which our descriptor still refers to, so the lock lives exactly as long as our
 * descriptor: it goes when we close it or when this process dies, however it dies. No helper
 * process stays behind and nothing keeps the event loop alive. Without `flock(1)` (or on a
 * filesystem that refuses locks) the spool works as before, after one process warning.
 */
import { spawn, spawnSync, type StdioOptions } from "node:child_process";
import { describeError } from "../stats.js";

const ARGS = ["--shared", "--nonblock", "3"];
const TIMEOUT_MS = 5000;
let unavailable: string | null = null;

function stdio(fd: number): StdioOptions {
  return ["ignore", "ignore", "pipe", fd];
}

/** Why locking is off for this process (`flock(1)` missing or failing), or null. */
export function lockingUnavailable(): string | null {
  return unavailable;
}

function giveUp(reason: string): false {
  if (unavailable === null) {
    unavailable = reason;
    try {
      process.emitWarning(
        `TraceLab: cannot lock embedded spool files (${reason}); a spool fold in another ` +
          "container or PID namespace sharing TRACELAB_HOME may take a file this process still " +
          "writes. Install util-linux (the flock command) to prevent that.",
        { type: "TraceLabWarning" },
      );
    } catch {
      // a warning must never be what breaks the app
    }
  }
  return false;
}

function failure(status: number | null, signal: string | null, stderr: string): string {
  const detail = stderr.trim().split("\n")[0]?.slice(0, 200);
  const how = status !== null ? `exit status ${status}` : `signal ${signal}`;
  return `flock ${ARGS.join(" ")} failed with ${how}${detail ? `: ${detail}` : ""}`;
}

/** Take a shared flock on `fd`'s open file; false (and locking off) when it cannot. */
export function lockSharedSync(fd: number): boolean {
  if (unavailable !== null) return false;
  try {
    const run = spawnSync("flock", ARGS, { stdio: stdio(fd), timeout: TIMEOUT_MS, encoding: "utf8" });
    if (run.error) return giveUp(`the flock command: ${describeError(run.error)}`);
    if (run.status !== 0) return giveUp(failure(run.status, run.signal, run.stderr ?? ""));
    return true;
  } catch (err) {
    return giveUp(`the flock command: ${describeError(err)}`);
  }
}

/** Like `lockSharedSync`, without blocking the event loop while `flock(1)` runs. */
export function lockShared(fd: number): Promise<boolean> {
  if (unavailable !== null) return Promise.resolve(false);
  return new Promise((resolve) => {
    let stderr = "";
    let settled = false;
    const settle = (ok: boolean) => {
      if (settled) return;
      settled = true;
      resolve(ok);
    };
    try {
      const child = spawn("flock", ARGS, { stdio: stdio(fd), timeout: TIMEOUT_MS });
      child.stderr?.setEncoding("utf8").on("data", (chunk: string) => {
        if (stderr.length < 1000) stderr += chunk;
      });
      child.once("error", (err) => settle(giveUp(`the flock command: ${describeError(err)}`)));
      child.once("close", (status, signal) => {
        settle(status === 0 ? true : giveUp(failure(status, signal, stderr)));
      });
    } catch (err) {
      settle(giveUp(`the flock command: ${describeError(err)}`));
    }
  });
}
