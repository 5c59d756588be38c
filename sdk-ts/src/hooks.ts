/**
 * `registerHook(owner, "method", hookFn)`: trace any library the SDK does not patch itself.
 *
 * The original TraceLab README's contract, as in the Python SDK (`tracelab/sdk/hooks.py`): the
 * hook receives the wrapped method's arguments and returns an object (`service` becomes the
 * event's `target`; `endpoint`, `request`, `response`, optional `kind` (default `custom`),
 * `tags`, `status`, `status_code`). The SDK times the call (following a returned promise) and
 * records what it threw. A hook may be registered before or after `init()`; until then the
 * wrapper only calls through. A hook that throws or returns junk is counted in `stats()` and
 * ignored; the app never sees it.
 */
import { buildEvent, errorInfo } from "./capture.js";
import { Timer } from "./ids.js";
import { notCaptured, toJsonable } from "./payloads.js";
import { current, type Recorder } from "./recorder.js";
import { describeError } from "./stats.js";

const ORIGIN = "hooks";
const HOOK_FN = Symbol.for("tracelab.hookFn");
const HANDLE = Symbol.for("tracelab.hookHandle");

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type HookFn = (...args: any[]) => HookResult | null | undefined | unknown;

/** What a hook returns to describe one call. */
export interface HookResult {
  service: string;
  endpoint?: string;
  request?: unknown;
  response?: unknown;
  kind?: string;
  status?: string;
  status_code?: number;
  tags?: Record<string, unknown>;
}

/** Returned by `registerHook`; `remove()` puts the original method back exactly. */
export class HookHandle {
  constructor(
    readonly owner: object,
    readonly attr: string,
    private readonly original: unknown,
    private readonly hadOwn: boolean,
  ) {}

  remove(): void {
    const target = this.owner as Record<string, unknown>;
    if (this.hadOwn) target[this.attr] = this.original;
    else delete target[this.attr];
  }
}

function isPlainRecord(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

function record(rec: Recorder, hook: HookFn, attr: string, args: unknown[], timer: Timer, failed: boolean, error: unknown): void {
  const latency = timer.elapsedMs();
  let described: unknown;
  try {
    described = hook(...args);
  } catch (hookErr) {
    rec.stats.countError(ORIGIN, `hook for '${attr}' raised ${describeError(hookErr)}`);
    return;
  }
  if (!isPlainRecord(described) || typeof described.service !== "string" || !described.service) {
    rec.stats.countError(ORIGIN, `hook for '${attr}' returned ${described === null ? "null" : typeof described}; ` +
      "expected an object with a non-empty 'service' string");
    return;
  }
  const d = described as Record<string, unknown>;
  const config = rec.config;
  const payload = (key: string): Record<string, unknown> | null => {
    if (!config.capturePayloads) return { body: notCaptured("capture_payloads is off") };
    const value = toJsonable(d[key], rec.redactor, config.maxBodyBytes);
    if (value === null || isPlainRecord(value)) return value as Record<string, unknown> | null;
    return { value };
  };
  const request = payload("request") ?? {};
  const response = payload("response");
  let statusCode = d.status_code;
  if (typeof statusCode !== "number" || !Number.isInteger(statusCode) || statusCode < 0 || statusCode > 999) {
    statusCode = null;
  }
  const isError = failed || d.status === "error" || (statusCode !== null && (statusCode as number) >= 400);
  const event = buildEvent(rec, {
    kind: String(d.kind || "custom"),
    target: d.service as string,
    endpoint: String(d.endpoint || attr),
    startedAt: timer.startedAt,
    latencyMs: latency,
    status: isError ? "error" : "ok",
    request,
    response,
    statusCode: statusCode as number | null,
    error: failed ? errorInfo(error) : null,
    tags: isPlainRecord(d.tags) ? d.tags : null,
  });
  rec.submit(event, ORIGIN);
}

type Wrapper = ((...args: unknown[]) => unknown) & { [HOOK_FN]?: HookFn; [HANDLE]?: HookHandle };

/**
 * Wrap `owner[attr]` so each call is recorded as the event `hookFn` describes.
 *
 * `owner` is a module namespace's mutable object, a class prototype or an instance. Registering
 * the same method again replaces the hook instead of wrapping twice. Throws a TypeError at
 * registration for a method that does not exist or is not a function, so a typo shows early.
 */
export function registerHook<O extends object>(owner: O, attr: keyof O & string, hookFn: HookFn): HookHandle;
export function registerHook(owner: object, attr: string, hookFn: HookFn): HookHandle;
export function registerHook(owner: object, attr: string, hookFn: HookFn): HookHandle {
  if (typeof hookFn !== "function") {
    throw new TypeError(`registerHook: hookFn must be a function, got ${typeof hookFn}`);
  }
  if (owner === null || (typeof owner !== "object" && typeof owner !== "function")) {
    throw new TypeError(`registerHook: owner must be an object, got ${owner === null ? "null" : typeof owner}`);
  }
  const target = owner as Record<string, unknown>;
  const existing = target[attr] as Wrapper | undefined;
  if (typeof existing !== "function") {
    throw new TypeError(`registerHook: '${attr}' is ${existing === undefined ? "not a member of the owner" : `a ${typeof existing}`}, not a function`);
  }
  if (existing[HOOK_FN] !== undefined && existing[HANDLE]) {
    existing[HOOK_FN] = hookFn;
    return existing[HANDLE] as HookHandle;
  }
  const hadOwn = Object.prototype.hasOwnProperty.call(owner, attr);
  const original = existing;
  const wrapper: Wrapper = function (this: unknown, ...args: unknown[]): unknown {
    const rec = current();
    if (rec === null) return original.apply(this, args);
    const hook = wrapper[HOOK_FN] as HookFn;
    const timer = new Timer();
    let result: unknown;
    try {
      result = original.apply(this, args);
    } catch (err) {
      rec.safely(ORIGIN, () => record(rec, hook, attr, args, timer, true, err));
      throw err;
    }
    if (result !== null && typeof result === "object" && typeof (result as PromiseLike<unknown>).then === "function") {
      return (result as Promise<unknown>).then(
        (value) => {
          rec.safely(ORIGIN, () => record(rec, hook, attr, args, timer, false, undefined));
          return value;
        },
        (err: unknown) => {
          rec.safely(ORIGIN, () => record(rec, hook, attr, args, timer, true, err));
          throw err;
        },
      );
    }
    rec.safely(ORIGIN, () => record(rec, hook, attr, args, timer, false, undefined));
    return result;
  };
  Object.defineProperty(wrapper, "name", { value: original.name, configurable: true });
  Object.defineProperty(wrapper, "length", { value: original.length, configurable: true });
  wrapper[HOOK_FN] = hookFn;
  const handle = new HookHandle(owner, attr, hadOwn ? original : undefined, hadOwn);
  wrapper[HANDLE] = handle;
  target[attr] = wrapper;
  return handle;
}
