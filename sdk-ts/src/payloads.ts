/**
 * Turning bodies and arbitrary JavaScript values into JSON-safe, redacted, size-capped payloads.
 *
 * The shapes (plain JSON, text, and the `$tracelab` markers for binary, truncated and
 * not-captured bodies) are the contract in spec/README.md, shared with the Python SDK
 * (`tracelab/sdk/payloads.py`, of which this is a port) and the proxy. Redaction always happens
 * before truncation, so a cut never exposes a secret: an over-cap JSON body is parsed, redacted,
 * serialised compactly and then cut; an over-cap text is redacted, cut, and what the cut left
 * half-visible at the end is redacted too (`Redactor.cut`). Nothing here reads a stream.
 */
import { inspect } from "node:util";
import { Redactor } from "./redaction.js";
import { redactShapes } from "./shapes.js";

const MAX_VALUE_DEPTH = 12;
/**
 * An over-cap JSON body up to this size is parsed, redacted, then cut; a larger one is cut as
 * text (parsing megabytes for a 64 KiB excerpt would cost the traced call too much).
 */
export const PARSE_OVER_CAP_BYTES = 4 * 1024 * 1024;
/** Text past the cap redacted with the kept part, so a value straddling the cap is matched whole. */
export const MARGIN = 4096;
const MAX_ITEMS = 200;
const MAX_REPR = 1000;
const utf8 = new TextDecoder("utf-8", { fatal: true });
const encoder = new TextEncoder();

export type NotCaptured = { $tracelab: "not_captured"; reason: string };

export function notCaptured(reason: string): NotCaptured {
  return { $tracelab: "not_captured", reason };
}

export function binary(data: Uint8Array): Record<string, unknown> {
  return { $tracelab: "binary", size: data.byteLength, base64: toBase64(data) };
}

export function truncated(size: number, encoding: "text" | "base64", data: string): Record<string, unknown> {
  return { $tracelab: "truncated", size, encoding, data };
}

function toBase64(data: Uint8Array): string {
  return Buffer.from(data.buffer, data.byteOffset, data.byteLength).toString("base64");
}

function decodeUtf8(data: Uint8Array): string | null {
  try {
    return utf8.decode(data);
  } catch {
    return null;
  }
}

/** The first `cap` bytes as text, or null when the bytes are not UTF-8 (binary). */
function utf8Prefix(raw: Uint8Array, cap: number): string | null {
  const head = raw.subarray(0, cap);
  const text = decodeUtf8(head);
  if (text !== null) return text;
  // Forgive only a multi-byte character cut by the cap: a lead byte in the last 3 bytes
  // whose sequence would run past the end.
  for (let back = 1; back <= 3 && back <= head.length; back++) {
    const byte = head[head.length - back];
    if ((byte & 0xc0) === 0x80) continue; // continuation byte: keep looking for the lead
    const need = byte >= 0xf0 ? 4 : byte >= 0xe0 ? 3 : byte >= 0xc0 ? 2 : 1;
    if (need > back) return decodeUtf8(head.subarray(0, head.length - back));
    return null;
  }
  return null;
}

function isWhitespace(byte: number): boolean {
  return byte === 0x20 || byte === 0x09 || byte === 0x0d || byte === 0x0a;
}

export type BodyInput = string | Uint8Array | ArrayBuffer | null | undefined;

/** A body as the contract stores it: JSON value, text, or a `$tracelab` marker. */
export function encodeBody(
  data: unknown,
  contentType: string | null | undefined,
  redactor: Redactor,
  cap: number,
): unknown {
  if (data === null || data === undefined) return null;
  let raw: Uint8Array;
  if (typeof data === "string") raw = encoder.encode(data);
  else if (data instanceof Uint8Array) raw = data;
  else if (data instanceof ArrayBuffer) raw = new Uint8Array(data);
  else if (ArrayBuffer.isView(data)) raw = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  else {
    const name = (data as object)?.constructor?.name ?? typeof data;
    return notCaptured(`body is a ${name} (stream or file), not read on the caller's behalf`);
  }
  const size = raw.byteLength;
  if (size === 0) return null;
  const ctype = (contentType ?? "").toLowerCase();
  let first = 0;
  while (first < raw.length && isWhitespace(raw[first])) first++;
  const firstByte = raw[first];
  if ((size <= cap || size <= PARSE_OVER_CAP_BYTES) && (ctype.includes("json") || firstByte === 0x7b || firstByte === 0x5b)) {
    const text = decodeUtf8(raw);
    if (text !== null) {
      let parsed: unknown;
      let ok = false;
      try {
        parsed = JSON.parse(text);
        ok = true;
      } catch {
        // not JSON after all: stored as text below
      }
      if (ok) {
        parsed = redactor.shapesIn(redactor.value(parsed));
        if (size <= cap) return parsed;
        return truncated(size, "text", cutText(JSON.stringify(parsed), redactor, cap));
      }
    }
  }
  if (size > cap) {
    const head = utf8Prefix(raw, cap);
    if (head === null) return truncated(size, "base64", toBase64(raw.subarray(0, cap)));
    return truncated(size, "text", cutText(redactor.text(headText(raw, cap + MARGIN)), redactor, cap));
  }
  const text = decodeUtf8(raw);
  if (text === null) return binary(raw);
  if (ctype.includes("x-www-form-urlencoded")) return redactor.form(text);
  return redactor.text(text);
}

/** The first `limit` bytes as text, a partial character at the end dropped. */
function headText(raw: Uint8Array, limit: number): string {
  const head = utf8Prefix(raw, limit);
  return head !== null ? head : new TextDecoder("utf-8").decode(raw.subarray(0, limit)).replace(/\uFFFD+$/, "");
}

/** Redacted `text` cut to `cap` UTF-8 bytes, with what the cut left half-visible redacted. */
function cutText(text: string, redactor: Redactor, cap: number): string {
  const bytes = encoder.encode(text);
  const data = redactor.cut(bytes.byteLength <= cap ? text : utf8Prefix(bytes, cap) ?? "");
  const encoded = encoder.encode(data);
  return encoded.byteLength <= cap ? data : utf8Prefix(encoded, cap) ?? "";
}

function isPlainObject(value: object): boolean {
  const proto = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null;
}

/**
 * Any JavaScript value as JSON-safe data: containers kept, secrets redacted by key, the rest
 * shown as `util.inspect` text (the counterpart of Python's repr). The caller's values are
 * never mutated, and no getter beyond own enumerable properties of plain objects is run.
 */
export function toJsonable(value: unknown, redactor: Redactor, cap: number, depth = 0): unknown {
  if (value === null || value === undefined) return null;
  switch (typeof value) {
    case "boolean":
      return value;
    case "number":
      return Number.isFinite(value) ? value : String(value);
    case "bigint":
      return value.toString();
    case "string":
      if (value.length > cap) {
        return truncated(encoder.encode(value).byteLength, "text",
          cutText(redactor.text(value.slice(0, cap + MARGIN)), redactor, cap));
      }
      return redactShapes(value);
    case "symbol":
      return value.toString();
    case "function":
      return `[Function: ${value.name || "anonymous"}]`;
    default:
      break;
  }
  const obj = value as object;
  if (obj instanceof Uint8Array || obj instanceof ArrayBuffer) return encodeBody(obj, null, redactor, cap);
  if (depth >= MAX_VALUE_DEPTH) return safeRepr(obj);
  if (obj instanceof Date) return Number.isNaN(obj.getTime()) ? "Invalid Date" : obj.toISOString();
  if (obj instanceof Error) return `${obj.name}: ${obj.message}`;
  if (Array.isArray(obj) || obj instanceof Set) {
    const items = Array.from(obj as Iterable<unknown>).slice(0, MAX_ITEMS);
    return items.map((v) => toJsonable(v, redactor, cap, depth + 1));
  }
  let entries: Array<[unknown, unknown]> | null = null;
  if (obj instanceof Map) entries = Array.from(obj.entries());
  else if (isPlainObject(obj)) entries = Object.entries(obj);
  if (entries === null) return safeRepr(obj);
  const out: Record<string, unknown> = {};
  let i = 0;
  for (const [rawKey, member] of entries) {
    if (i >= MAX_ITEMS) {
      out["$tracelab.more"] = `${entries.length - MAX_ITEMS} more items`;
      break;
    }
    i++;
    const key = typeof rawKey === "string" ? rawKey : String(rawKey);
    out[key] = redactor.isSecret(key) && member !== null && member !== undefined
      ? "[REDACTED]"
      : toJsonable(member, redactor, cap, depth + 1);
  }
  return out;
}

function safeRepr(value: object): string {
  try {
    const text = inspect(value, { depth: 2, breakLength: Infinity, maxArrayLength: 50, maxStringLength: MAX_REPR });
    return redactShapes(text.length > MAX_REPR ? `${text.slice(0, MAX_REPR)}...` : text);
  } catch (err) {
    return `<${value?.constructor?.name ?? "object"} (inspect failed: ${(err as Error)?.name ?? "Error"})>`;
  }
}

/**
 * Bytes an integration saw pass by without holding the whole body: the first `cap` bytes
 * (`head`) and how many there were in all (`size`). `complete` is false when reading stopped
 * at the hard limit, so `size` is a lower bound.
 */
export class CapturedBytes {
  constructor(
    readonly head: Uint8Array,
    readonly size: number,
    readonly complete = true,
  ) {}
}

/** Like `encodeBody`, for a body known only by its first `cap` bytes and its full size. */
export function encodeCaptured(
  captured: CapturedBytes,
  contentType: string | null | undefined,
  redactor: Redactor,
  cap: number,
): unknown {
  if (captured.complete && captured.head.byteLength === captured.size) {
    return encodeBody(captured.head, contentType, redactor, cap);
  }
  if (utf8Prefix(captured.head, cap) === null) {
    return truncated(captured.size, "base64", toBase64(captured.head.subarray(0, cap)));
  }
  return truncated(captured.size, "text", cutText(redactor.text(headText(captured.head, cap + MARGIN)), redactor, cap));
}

/**
 * How many bytes of a body to hold while it streams past: the cap plus the margin that lets
 * redaction see a value straddling the cap, and for JSON enough to parse and redact it whole
 * before cutting (up to `PARSE_OVER_CAP_BYTES`).
 */
export function keepBytes(cap: number, contentType: string | null | undefined): number {
  const json = (contentType ?? "").toLowerCase().includes("json");
  return Math.max(cap + MARGIN, json ? PARSE_OVER_CAP_BYTES : 0);
}
