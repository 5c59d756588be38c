/**
 * Identifiers, the clock and event serialization: the parts of the TraceEvent contract that
 * JavaScript's number type cannot express on its own.
 *
 * `started_at` is an exact integer of epoch nanoseconds, larger than 2**53, so it is a BigInt
 * here and is written into the JSON text by hand (`serializeEvent`), never through a float.
 */
import { randomBytes, randomUUID } from "node:crypto";

/** A fresh event id: 32 lowercase hex characters (128 random bits), as the Python SDK makes. */
export function newEventId(): string {
  return randomBytes(16).toString("hex");
}

/** A fresh span id: 16 lowercase hex characters (64 random bits), as in W3C trace context. */
export function newSpanId(): string {
  return randomBytes(8).toString("hex");
}

/** A fresh run id: a random UUID4 string. */
export function newRunId(): string {
  return randomUUID();
}

// The wall clock is read once (with sub-millisecond precision from the performance timeline)
// and the monotonic clock gives everything after it, so successive events keep their order
// even if the system clock is stepped.
const ANCHOR_NS: bigint =
  BigInt(Math.round((performance.timeOrigin + performance.now()) * 1e6)) - process.hrtime.bigint();

/** Now, as integer epoch nanoseconds (UTC). */
export function nowNs(): bigint {
  return ANCHOR_NS + process.hrtime.bigint();
}

/** Monotonic start point and wall-clock start of one interaction. */
export class Timer {
  readonly startedAt: bigint;
  private readonly t0: bigint;

  constructor() {
    this.t0 = process.hrtime.bigint();
    this.startedAt = ANCHOR_NS + this.t0;
  }

  elapsedMs(): number {
    return Number(process.hrtime.bigint() - this.t0) / 1e6;
  }
}

// A placeholder no user value can contain (it holds 64 random bits chosen at start-up).
const PLACEHOLDER = `__tracelab_started_at_${randomBytes(8).toString("hex")}__`;
const PLACEHOLDER_JSON = JSON.stringify(PLACEHOLDER);

/**
 * One event as UTF-8 JSON text with `started_at` written as an exact integer, in its place.
 * Any other BigInt in the event is written as a string (the contract has no other big ints).
 */
export function serializeEvent(event: { started_at: bigint } & Record<string, unknown>): string {
  const body = JSON.stringify({ ...event, started_at: PLACEHOLDER }, (_key, value) =>
    typeof value === "bigint" ? value.toString() : value);
  return body.replace(PLACEHOLDER_JSON, BigInt(event.started_at).toString());
}
