/**
 * Per-async-context tracing state: the enclosing span and the "inner HTTP is already
 * recorded" flag (the counterpart of the Python SDK's contextvars).
 *
 * AsyncLocalStorage gives each promise chain its own view, so concurrent spans never adopt
 * each other's children.
 */
import { AsyncLocalStorage } from "node:async_hooks";

interface TraceContext {
  readonly spanId: string | null;
  readonly httpSuppressed: boolean;
}

const storage = new AsyncLocalStorage<TraceContext>();

/** The span id of the enclosing `trace()` call, or null at top level. */
export function currentSpanId(): string | null {
  return storage.getStore()?.spanId ?? null;
}

/** True inside a vendor call (SendGrid, …) whose own event already covers the HTTP beneath. */
export function httpSuppressed(): boolean {
  return storage.getStore()?.httpSuppressed ?? false;
}

/** Run `fn` with `spanId` as the parent of everything recorded inside it. */
export function runInSpan<T>(spanId: string, fn: () => T): T {
  const outer = storage.getStore();
  return storage.run({ spanId, httpSuppressed: outer?.httpSuppressed ?? false }, fn);
}

/** Run `fn` with HTTP integrations silenced (their call is part of a higher-level event). */
export function runSuppressingHttp<T>(fn: () => T): T {
  const outer = storage.getStore();
  return storage.run({ spanId: outer?.spanId ?? null, httpSuppressed: true }, fn);
}
