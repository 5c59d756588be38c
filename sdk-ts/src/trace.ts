/**
 * `trace(name, fn)` and `traced(name, fn)`: `kind: function` spans that nest everything inside.
 *
 * The span's id is the parent (through AsyncLocalStorage) of every event recorded while `fn`
 * runs, including after `await`s, so concurrent spans never adopt each other's children.
 * Return values, promises and exceptions pass through untouched (a promise is followed with
 * `.then`, never awaited on the caller's behalf). Mirrors the Python SDK's `tracelab/sdk/spans.py`.
 */
import { basename } from "node:path";
import { buildEvent, errorInfo } from "./capture.js";
import { currentSpanId, runInSpan } from "./context.js";
import { newSpanId, Timer } from "./ids.js";
import { notCaptured, toJsonable } from "./payloads.js";
import { current, type Recorder } from "./recorder.js";

const ORIGIN = "trace";

export interface TraceOptions {
  /** Tags added to this span's event. */
  tags?: Record<string, unknown>;
  /** The span's `target` (default: the calling module's file name, like Python's `__module__`). */
  target?: string;
}

function isThenable(value: unknown): value is PromiseLike<unknown> {
  return value !== null && (typeof value === "object" || typeof value === "function") &&
    typeof (value as { then?: unknown }).then === "function";
}

/** The file name (without extension) of the code that called `fn`: the span's module. */
function callerModule(skip: (...args: never[]) => unknown): string {
  const holder: { stack?: string } = {};
  const limit = Error.stackTraceLimit;
  try {
    Error.stackTraceLimit = 1;
    Error.captureStackTrace(holder, skip);
  } finally {
    Error.stackTraceLimit = limit;
  }
  const line = holder.stack?.split("\n")[1] ?? "";
  const m = /\(?((?:file:\/\/)?[^()\s]+?):\d+:\d+\)?\s*$/.exec(line);
  if (!m) return "function";
  const name = basename(m[1]).replace(/\.(c|m)?(j|t)sx?$/, "");
  return name || "function";
}

interface SpanRecord {
  target: string;
  endpoint: string;
  timer: Timer;
  spanId: string;
  parentId: string | null;
  args: unknown;
  tags?: Record<string, unknown>;
}

function recordSpan(rec: Recorder, span: SpanRecord, outcome: { result?: unknown; error?: unknown; failed: boolean }): void {
  const config = rec.config;
  let request: Record<string, unknown>;
  let response: Record<string, unknown> | null;
  if (config.capturePayloads) {
    request = { args: toJsonable(span.args, rec.redactor, config.maxBodyBytes) };
    response = outcome.failed ? null : { return: toJsonable(outcome.result, rec.redactor, config.maxBodyBytes) };
  } else {
    request = { args: notCaptured("capture_payloads is off") };
    response = null;
  }
  const event = buildEvent(rec, {
    kind: "function",
    target: span.target,
    endpoint: span.endpoint,
    startedAt: span.timer.startedAt,
    latencyMs: span.timer.elapsedMs(),
    status: outcome.failed ? "error" : "ok",
    request,
    response,
    error: outcome.failed ? errorInfo(outcome.error) : null,
    tags: span.tags,
    spanId: span.spanId,
    parentId: span.parentId,
  });
  rec.submit(event, ORIGIN);
}

function runSpan<T>(rec: Recorder, span: SpanRecord, call: () => T): T {
  let result: T;
  try {
    result = runInSpan(span.spanId, call);
  } catch (err) {
    rec.safely(ORIGIN, () => recordSpan(rec, span, { error: err, failed: true }));
    throw err;
  }
  if (isThenable(result)) {
    return (result as PromiseLike<unknown>).then(
      (value) => {
        rec.safely(ORIGIN, () => recordSpan(rec, span, { result: value, failed: false }));
        return value;
      },
      (err: unknown) => {
        rec.safely(ORIGIN, () => recordSpan(rec, span, { error: err, failed: true }));
        throw err;
      },
    ) as T;
  }
  rec.safely(ORIGIN, () => recordSpan(rec, span, { result, failed: false }));
  return result;
}

/**
 * Run `fn` now as a span named `name` and return its result (a promise stays a promise).
 * Before `init()` (or when disabled) it only calls through.
 */
export function trace<T>(name: string, fn: () => T, options: TraceOptions = {}): T {
  const rec = current();
  if (rec === null || typeof fn !== "function") return fn();
  let span: SpanRecord;
  try {
    span = {
      target: options.target || callerModule(trace),
      endpoint: String(name || fn.name || "anonymous"),
      timer: new Timer(),
      spanId: newSpanId(),
      parentId: currentSpanId(),
      args: {},
      tags: options.tags,
    };
  } catch {
    return fn();
  }
  return runSpan(rec, span, fn);
}

/**
 * Wrap `fn` so that every call is recorded as a span named `name` (default: `fn.name`), with
 * its arguments as `request.args.args`. The wrapper keeps `this` and the return value.
 */
export function traced<A extends unknown[], R>(
  name: string | undefined,
  fn: (...args: A) => R,
  options: TraceOptions = {},
): (...args: A) => R {
  const endpoint = name || fn.name || "anonymous";
  const target = options.target || callerModule(traced);
  const wrapper = function (this: unknown, ...args: A): R {
    const rec = current();
    if (rec === null) return fn.apply(this, args);
    const span: SpanRecord = {
      target, endpoint, timer: new Timer(), spanId: newSpanId(), parentId: currentSpanId(),
      args: { args }, tags: options.tags,
    };
    return runSpan(rec, span, () => fn.apply(this, args));
  };
  Object.defineProperty(wrapper, "name", { value: fn.name, configurable: true });
  return wrapper;
}
