/**
 * Run lifecycle: one `kind: "run"` event when a run starts and one when it ends, so the store
 * can tell a finished run from a crashed or abandoned one (spec/README.md, "Run lifecycle";
 * the Python SDK's `tracelab/sdk/lifecycle.py` publishes the same two events).
 *
 * The events go through the normal capture path (`Recorder.submit`: limits, sink). The end's
 * reason is one of `exit`, `shutdown`, `new_run`, `exception`, `signal`. A run id gets at most
 * one start and one end per process, whatever the mix of `init()`, `shutdown()` and exits.
 *
 * Node's own crash behaviour is never changed: an uncaught exception is only watched
 * (`uncaughtExceptionMonitor`, never an `uncaughtException` listener, which would keep the
 * process alive), and the SIGTERM listener exists only when nobody else listens, and re-raises
 * the signal after the flush so the process still dies "killed by SIGTERM".
 */
import { isMainThread } from "node:worker_threads";
import { buildEvent, errorInfo } from "./capture.js";
import { nowNs } from "./ids.js";
import type { Recorder } from "./recorder.js";

export type EndReason = "exit" | "shutdown" | "new_run" | "exception" | "signal";

const ORIGIN = "lifecycle";
/** Runs (workflow and run id) this process published a start for, and those it ended. */
const started = new Set<string>();
const ended = new Set<string>();

function runKey(rec: Recorder): string {
  return JSON.stringify([rec.config.workflow, rec.config.runId]);
}

/** Publish the run's start event (once per run per process); `at`: when `init()` ran. */
export function startRun(rec: Recorder, at: bigint): void {
  const key = runKey(rec);
  if (started.has(key)) return;
  started.add(key);
  rec.safely(ORIGIN, () => rec.submit(runEvent(rec, at, "ok", {}, null), ORIGIN));
}

/**
 * Publish the run's end event unless it already has one (or never started here). `failure`:
 * what killed the program (the thrown value, or the signal's name) for `exception`/`signal`.
 */
export function endRun(rec: Recorder, reason: EndReason, failure?: unknown): void {
  const key = runKey(rec);
  if (!started.has(key) || ended.has(key)) return;
  ended.add(key);
  rec.safely(ORIGIN, () => {
    const response: Record<string, unknown> = { reason };
    let error = null;
    if (reason === "exception") {
      // Names too (`password=…`), as the Python SDK redacts the message of a run's end.
      const info = errorInfo(failure);
      error = { type: info.type, message: rec.redactor.text(info.message) };
    }
    if (reason === "signal") {
      response.signal = String(failure);
      error = { type: "Signal", message: String(failure) };
    }
    rec.submit(runEvent(rec, nowNs(), error ? "error" : "ok", response, error), ORIGIN);
  });
}

function runEvent(rec: Recorder, at: bigint, status: "ok" | "error", response: Record<string, unknown>,
  error: { type: string; message: string } | null) {
  return buildEvent(rec, {
    kind: "run",
    target: rec.config.service,
    endpoint: Object.keys(response).length ? "end" : "start",
    startedAt: at,
    latencyMs: 0,
    status,
    request: {},
    response,
    error,
    spanId: null,
    parentId: null,
  });
}

/**
 * True when this uncaught exception will end the process: nobody handles it (an
 * `uncaughtException` listener or a capture callback keeps the program running).
 */
function fatal(): boolean {
  return process.listenerCount("uncaughtException") === 0 && !process.hasUncaughtExceptionCaptureCallback();
}

export interface LifecycleHooks {
  /** Record what is still pending, then publish the active run's end; false with no active run. */
  end(reason: EndReason, failure?: unknown): boolean;
  /** Deliver everything and stop recording, within the shutdown timeout; never rejects. */
  stop(): Promise<unknown>;
}

let installed = false;

/**
 * Watch for the two ends `beforeExit` never sees: an uncaught exception (its end is queued
 * here and written by the synchronous write at `exit` that follows) and SIGTERM (only in the
 * main thread, and only when no other listener exists at `init()`).
 */
export function installCrashHooks(hooks: LifecycleHooks): void {
  if (installed) return;
  installed = true;
  process.on("uncaughtExceptionMonitor", (err: unknown) => {
    if (fatal()) hooks.end("exception", err);
  });
  if (!isMainThread || process.listenerCount("SIGTERM") > 0) return;
  let stopping = false;
  const onSigterm = (): void => {
    // Someone else listens too by now: their handler decides what SIGTERM means, and the run
    // ends through the normal exit path.
    const alone = process.listenerCount("SIGTERM") === 1;
    if (alone && !stopping && hooks.end("signal", "SIGTERM")) {
      stopping = true;
      void hooks.stop().finally(() => reraise(onSigterm));
      return;
    }
    if (alone) reraise(onSigterm);
    else process.removeListener("SIGTERM", onSigterm);
  };
  process.on("SIGTERM", onSigterm);
}

/** Die of SIGTERM as if nobody had listened: without a listener Node restores the default. */
function reraise(listener: () => void): void {
  process.removeListener("SIGTERM", listener);
  process.kill(process.pid, "SIGTERM");
}
