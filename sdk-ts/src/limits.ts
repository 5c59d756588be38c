/**
 * The contract's two whole-event limits, applied before an event leaves the process.
 *
 * `MAX_NESTING_DEPTH` and `MAX_EVENT_BYTES` are the Python SDK's (`tracelab/events.py`): the
 * ingester dead-letters an event over either, so the SDK makes every event fit instead of
 * losing it. A payload nested too deep is cut, at the deepest level the limit allows, to a
 * `not_captured` marker; an event still too large after serialization has its payloads
 * replaced by markers the same way. The event keeps its identity, timing and status: it still
 * records, only the part that could not be carried is marked as such.
 */
import { serializeEvent } from "./ids.js";
import { notCaptured } from "./payloads.js";

/** The event object is level 1; each object or array inside it adds one. */
export const MAX_NESTING_DEPTH = 64;
/** The largest serialized event (UTF-8 JSON bytes) a spool line or Redis entry carries. */
export const MAX_EVENT_BYTES = 4 * 1024 * 1024;

const TOO_DEEP = `nested deeper than ${MAX_NESTING_DEPTH} levels (MAX_NESTING_DEPTH)`;
const TOO_BIG = `the event would be over ${MAX_EVENT_BYTES} bytes (MAX_EVENT_BYTES)`;

type Event = { started_at: bigint } & Record<string, unknown>;

function isContainer(value: unknown): value is object {
  return value !== null && typeof value === "object";
}

/**
 * True when `value` nests at most `depth` levels (an object or array is one level plus its
 * deepest member). Looks at most `depth` levels down, so data of any depth is safe here.
 */
export function nestsWithin(value: unknown, depth: number): boolean {
  if (!isContainer(value)) return true;
  if (depth < 1) return false;
  for (const member of Array.isArray(value) ? value : Object.values(value)) {
    if (isContainer(member) && !nestsWithin(member, depth - 1)) return false;
  }
  return true;
}

/** `value` with every container that would break `depth` levels replaced by a marker. */
export function cutToDepth(value: unknown, depth: number, reason = TOO_DEEP): unknown {
  if (!isContainer(value) || nestsWithin(value, depth)) return value;
  if (depth <= 1) return notCaptured(reason); // the marker itself is one flat level
  if (Array.isArray(value)) return value.map((member) => cutToDepth(member, depth - 1, reason));
  const out: Record<string, unknown> = {};
  for (const [key, member] of Object.entries(value)) out[key] = cutToDepth(member, depth - 1, reason);
  return out;
}

/** The event with every member nesting within the limit (a copy only where something was cut). */
export function fitDepth(event: Event): Event {
  let fitted: Event | null = null;
  for (const [key, member] of Object.entries(event)) {
    if (isContainer(member) && !nestsWithin(member, MAX_NESTING_DEPTH - 1)) {
      fitted ??= { ...event };
      fitted[key] = cutToDepth(member, MAX_NESTING_DEPTH - 1);
    }
  }
  return fitted ?? event;
}

function utf8Bytes(text: string): number {
  // A UTF-16 unit is at most 3 UTF-8 bytes: skip the count when it cannot matter.
  return text.length * 3 <= MAX_EVENT_BYTES ? text.length : Buffer.byteLength(text, "utf8");
}

/** The payload members of `request`/`response` replaced by markers, the small ones kept. */
function withoutPayloads(part: unknown): unknown {
  if (part === null || part === undefined) return part;
  if (!isContainer(part) || Array.isArray(part)) return notCaptured(TOO_BIG);
  const out: Record<string, unknown> = {};
  for (const [key, member] of Object.entries(part)) {
    const small = !isContainer(member) && (typeof member !== "string" || member.length <= 8192);
    out[key] = small || key === "headers" ? member : notCaptured(TOO_BIG);
  }
  return out;
}

export interface FittedEvent {
  line: string;
  /** What had to be cut: "depth", "size", or null when the event fit as it was. */
  cut: "depth" | "size" | null;
}

/**
 * Serialize `event` so that it validates and fits a transport: nesting cut to
 * `MAX_NESTING_DEPTH`, then, if the JSON is over `MAX_EVENT_BYTES`, payloads replaced by
 * markers (first bodies and values, keeping method, URL, status and headers; then everything
 * in `request`, `response` and `error`). Throws only if serialization itself fails.
 */
export function fitEvent(event: Event): FittedEvent {
  const fitted = fitDepth(event);
  let cut: FittedEvent["cut"] = fitted === event ? null : "depth";
  let line = serializeEvent(fitted);
  if (utf8Bytes(line) <= MAX_EVENT_BYTES) return { line, cut };
  cut = "size";
  const lighter: Event = { ...fitted, request: withoutPayloads(fitted.request) ?? {}, response: withoutPayloads(fitted.response) ?? null };
  line = serializeEvent(lighter);
  if (utf8Bytes(line) <= MAX_EVENT_BYTES) return { line, cut };
  const bare: Event = {
    ...lighter,
    request: notCaptured(TOO_BIG),
    response: fitted.response === null ? null : notCaptured(TOO_BIG),
  };
  if (isContainer(fitted.error)) {
    const type = (fitted.error as { type?: unknown }).type;
    bare.error = { type: String(type ?? "Error").slice(0, 256), message: TOO_BIG };
  }
  return { line: serializeEvent(bare), cut };
}
