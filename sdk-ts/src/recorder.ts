/**
 * The active recorder: configuration, redactor, sink and counters for this process.
 *
 * `init()` creates it (or reconfigures it: a second `init` never patches twice); integrations,
 * `trace` and hooks read it through `current()` on every call. Before `init`, with
 * `TRACELAB_DISABLED=1` or after `shutdown`, `current()` is null and everything calls through.
 * This module also owns the process-exit behaviour: flush on `beforeExit`, a synchronous last
 * write (spool) on `exit`, and when each run's lifecycle events go out (`lifecycle.ts`).
 */
import { type InitOptions, type SDKConfig, isDisabled, resolveConfig } from "./config.js";
import { Redactor } from "./redaction.js";
import { BatchingSink, type Destination } from "./sinks/batching.js";
import { RedisStreamDestination } from "./sinks/redis.js";
import { SpoolDestination } from "./sinks/spool.js";
import { describeError, SDKStats, type StatsSnapshot } from "./stats.js";
import { fitEvent } from "./limits.js";
import { activateIntegrations } from "./integrations/registry.js";
import { finishPending } from "./integrations/pending.js";
import { replaySession, startReplayFromEnv } from "./replay/session.js";
import { endRun, type EndReason, installCrashHooks, startRun } from "./lifecycle.js";
import { nowNs } from "./ids.js";

export class Recorder {
  readonly redactor: Redactor;

  constructor(
    readonly config: SDKConfig,
    readonly stats: SDKStats,
    readonly sink: BatchingSink,
  ) {
    this.redactor = new Redactor(config.redactPatterns);
  }

  /** Serialize (cut to the contract's depth and size limits) and enqueue one event; never throws. */
  submit(event: { started_at: bigint } & Record<string, unknown>, origin: string): void {
    let line: string;
    try {
      const fitted = fitEvent(event);
      line = fitted.line;
      if (fitted.cut) this.stats.countCut(fitted.cut);
    } catch (err) {
      this.stats.countError(origin, `could not serialize an event: ${describeError(err)}`);
      this.stats.countDropped("unserializable");
      return;
    }
    this.stats.countCaptured(origin);
    this.sink.submit(line);
  }

  /** Run capture code so that its failure is counted, never felt by the traced program. */
  safely<T>(origin: string, fn: () => T): T | undefined {
    try {
      return fn();
    } catch (err) {
      this.stats.countError(origin, describeError(err));
      return undefined;
    }
  }
}

let recorder: Recorder | null = null;
const stats = new SDKStats();
let exitHooksInstalled = false;
let lastExitFlushFailed = false;
let submittedAtLastExitFlush = -1;

/** The active recorder, or null when tracing is off (before init, disabled, after shutdown). */
export function current(): Recorder | null {
  return recorder;
}

let lastRecorder: Recorder | null = null;

/**
 * The recorder the integrations answer replayed calls with: the active one, or after
 * `shutdown()` the last one while a replay is on, so a replay stays closed (calls are still
 * answered from the recording, never sent live; their events are counted as dropped).
 */
export function answering(): Recorder | null {
  return recorder ?? (replaySession() ? lastRecorder : null);
}

export function sdkStats(): SDKStats {
  return stats;
}

function makeDestination(config: SDKConfig): Destination {
  return config.redisUrl
    ? new RedisStreamDestination(config.redisUrl, config.stream, config.streamMaxlen, config.shutdownTimeoutMs)
    : new SpoolDestination(config.home);
}

function sameDestination(a: SDKConfig, b: SDKConfig): boolean {
  return a.redisUrl === b.redisUrl && a.stream === b.stream && a.streamMaxlen === b.streamMaxlen &&
    a.home === b.home && a.queueSize === b.queueSize && a.batchSize === b.batchSize;
}

function onBeforeExit(): void {
  const rec = recorder;
  if (!rec) return;
  try {
    finishPending("process exit"); // the loop is empty: what is still pending will never finish by itself
    endRun(rec, "exit");
    if (!rec.sink.queued()) return;
    // beforeExit fires again after our flush settles; don't loop on a destination that is down.
    if (lastExitFlushFailed && submittedAtLastExitFlush === stats.captured) return;
    submittedAtLastExitFlush = stats.captured;
    void rec.sink.flush(rec.config.shutdownTimeoutMs).then((ok) => {
      lastExitFlushFailed = !ok;
    }, () => undefined);
  } catch (err) {
    stats.countError("exit", describeError(err));
  }
}

function onExit(): void {
  const rec = recorder;
  if (!rec) return;
  try {
    // process.exit() skips beforeExit: calls still in flight are recorded as not finished
    finishPending("process exit");
    endRun(rec, "exit");
    rec.sink.closeSync();
  } catch {
    // exiting: never print a stack from here
  }
}

function installExitHooks(): void {
  if (exitHooksInstalled) return;
  exitHooksInstalled = true;
  process.on("beforeExit", onBeforeExit);
  process.on("exit", onExit);
  installCrashHooks({ end: endCurrent, stop: () => shutdown() });
}

/** Record what is pending and end the active run (a crash or a signal); false with none. */
function endCurrent(reason: EndReason, failure?: unknown): boolean {
  const rec = recorder;
  if (!rec) return false;
  finishPending("process exit");
  endRun(rec, reason, failure);
  return true;
}

/**
 * Start recording this process's interactions. Every option falls back to its environment
 * variable. Returns the resolved configuration, or null when `TRACELAB_DISABLED=1`. Throws
 * `ConfigError` only for a missing workflow name or an invalid option, before anything is
 * patched. Publishes the run's start event; a later `init()` with another run id first ends
 * the previous run (`new_run`), one with the same run id publishes nothing new.
 */
export function init(options: InitOptions = {}): SDKConfig | null {
  const at = nowNs();
  if (isDisabled()) return null;
  const config = resolveConfig(options);
  const previous = recorder;
  // Another run ends the previous one, through its own sink (which may close just below).
  if (previous && (previous.config.runId !== config.runId || previous.config.workflow !== config.workflow)) {
    endRun(previous, "new_run");
  }
  let sink: BatchingSink;
  if (previous && sameDestination(previous.config, config)) {
    sink = previous.sink;
    sink.config = config;
  } else {
    sink = new BatchingSink(config, stats, makeDestination(config));
    if (previous) void previous.sink.close(config.shutdownTimeoutMs);
  }
  recorder = new Recorder(config, stats, sink);
  lastRecorder = recorder;
  try {
    startReplayFromEnv();
  } catch (err) {
    stats.countError("replay", describeError(err));
  }
  activateIntegrations(config.integrations, stats);
  installExitHooks();
  startRun(recorder, at);
  return config;
}

/**
 * Deliver everything recorded so far. Resolves false if `timeoutMs` (default 5000) was not
 * enough, e.g. with Redis down; it always settles within the timeout and never rejects.
 */
export async function flush(timeoutMs = 5000): Promise<boolean> {
  const rec = recorder;
  if (!rec) return true;
  try {
    finishPending("flush()");
    replaySession()?.writeReport(false);
    return await rec.sink.flush(timeoutMs);
  } catch (err) {
    stats.countError("flush", describeError(err));
    return false;
  }
}

/**
 * End the run (`shutdown`), flush (within `timeoutMs`, default TRACELAB_SHUTDOWN_TIMEOUT) and
 * stop recording: the integrations call straight through afterwards. Never rejects.
 */
export async function shutdown(timeoutMs?: number): Promise<boolean> {
  const rec = recorder;
  if (!rec) return true;
  finishPending("shutdown()");
  endRun(rec, "shutdown");
  replaySession()?.writeReport(false);
  recorder = null;
  try {
    return await rec.sink.close(timeoutMs ?? rec.config.shutdownTimeoutMs);
  } catch (err) {
    stats.countError("shutdown", describeError(err));
    return false;
  }
}

/** Counters: captured, published (Redis), spooled, dropped, errors, per integration. */
export function getStats(): StatsSnapshot {
  const rec = recorder;
  const extra: Record<string, unknown> = { active: rec !== null };
  if (rec) {
    Object.assign(extra, {
      mode: rec.config.mode,
      queued: rec.sink.queued(),
      workflow: rec.config.workflow,
      run_id: rec.config.runId,
    });
  }
  return stats.snapshot(extra);
}
