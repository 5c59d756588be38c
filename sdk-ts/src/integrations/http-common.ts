/**
 * Pieces shared by the HTTP integrations: reading a body we were handed a copy of (bounded),
 * describing a request body without consuming it, and header pairs that keep their case.
 */
import { CapturedBytes, keepBytes } from "../payloads.js";

/** Never hold more than this much of one body while counting its size. */
export const HARD_READ_LIMIT = 32 * 1024 * 1024;

export type HeaderPairs = Array<[string, string]> | Record<string, unknown> | null;

/** Headers as given by the caller, keeping the case of their names where the caller chose it. */
export function headerPairs(raw: unknown): HeaderPairs {
  if (raw === null || raw === undefined) return null;
  if (typeof Headers !== "undefined" && raw instanceof Headers) return Array.from(raw.entries());
  if (Array.isArray(raw)) return raw.map((pair) => [String(pair?.[0]), String(pair?.[1])] as [string, string]);
  if (typeof (raw as Iterable<unknown>)[Symbol.iterator] === "function") {
    return Array.from(raw as Iterable<[unknown, unknown]>, ([k, v]) => [String(k), String(v)] as [string, string]);
  }
  if (typeof raw === "object") return raw as Record<string, unknown>;
  return null;
}

/** Collects the first `cap` bytes of chunks passing by, and counts them all. */
export class ByteCollector {
  private readonly chunks: Uint8Array[] = [];
  private kept = 0;
  total = 0;

  constructor(private readonly cap: number) {}

  add(chunk: Uint8Array): void {
    this.total += chunk.byteLength;
    if (this.kept < this.cap) {
      const take = Math.min(this.cap - this.kept, chunk.byteLength);
      // copy: the producer may reuse its buffer
      this.chunks.push(Uint8Array.prototype.slice.call(chunk, 0, take));
      this.kept += take;
    }
  }

  head(): Uint8Array {
    return this.chunks.length === 1 ? this.chunks[0] : Buffer.concat(this.chunks);
  }

  result(complete = true): CapturedBytes {
    return new CapturedBytes(this.head(), this.total, complete);
  }
}

/** A stream read by `readSettled`: what was kept, and the failure that ended it early, if any. */
export interface ReadResult {
  bytes: CapturedBytes;
  error?: unknown;
}

/**
 * Read a stream we own (a clone or tee branch) to its end, keeping `cap` bytes, bounded; never
 * rejects: a failure (the call aborted, the socket destroyed mid-body) comes back as `error`
 * with the bytes read until then, marked incomplete.
 */
export async function readSettled(stream: ReadableStream<Uint8Array>, cap: number): Promise<ReadResult> {
  const reader = stream.getReader();
  const collector = new ByteCollector(cap);
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) return { bytes: collector.result(true) };
      if (value) collector.add(value);
      if (collector.total > HARD_READ_LIMIT) {
        await reader.cancel().catch(() => undefined);
        return { bytes: collector.result(false) };
      }
    }
  } catch (error) {
    return { bytes: collector.result(false), error: error ?? new Error("the body failed without a reason") };
  } finally {
    try {
      reader.releaseLock();
    } catch {
      // already released or cancelled
    }
  }
}

/** Read a stream we own to its end, keeping `cap` bytes, bounded; rejects when it fails. */
export async function readCapped(stream: ReadableStream<Uint8Array>, cap: number): Promise<CapturedBytes> {
  const { bytes, error } = await readSettled(stream, cap);
  if (error !== undefined) throw error;
  return bytes;
}

export interface RequestBody {
  data: unknown;
  note: string | null;
}

/** A request body's capture, started before the request is sent and resolved later. */
export interface PendingBody {
  resolve(): Promise<RequestBody>;
}

const settled = (data: unknown, note: string | null = null): PendingBody => {
  const value = Promise.resolve({ data, note });
  return { resolve: () => value };
};

function typeName(value: unknown): string {
  return (value as object)?.constructor?.name ?? typeof value;
}

/**
 * What fetch will send as the body, captured without consuming the caller's copy: strings,
 * bytes and URLSearchParams directly; a small Blob by reading it (Blobs are immutable); a
 * `Request` input's body through `clone()`, which must happen before fetch reads it.
 */
export function requestBodyOf(input: unknown, init: { body?: unknown } | undefined, cap: number): PendingBody {
  const body = init?.body;
  if (body === undefined || body === null) {
    if (typeof Request !== "undefined" && input instanceof Request && input.body) {
      if (input.bodyUsed) return settled(null, "request body already used");
      const clone = input.clone();
      const read = readCapped(clone.body as ReadableStream<Uint8Array>, keepBytes(cap, input.headers.get("content-type")))
        .then((bytes) => ({ data: bytes as unknown, note: null }))
        .catch((err: Error) => ({ data: null, note: `request body could not be read: ${err?.message}` }));
      return { resolve: () => read };
    }
    return settled(null);
  }
  if (typeof body === "string") return settled(body);
  if (body instanceof URLSearchParams) return settled(body.toString());
  if (body instanceof ArrayBuffer || ArrayBuffer.isView(body)) return settled(body);
  if (typeof Blob !== "undefined" && body instanceof Blob) {
    if (body.size > cap) return settled(null, `Blob upload of ${body.size} bytes (over the cap), not read`);
    const read = body.arrayBuffer()
      .then((buf) => ({ data: new Uint8Array(buf) as unknown, note: null }))
      .catch((err: Error) => ({ data: null, note: `Blob could not be read: ${err?.message}` }));
    return { resolve: () => read };
  }
  if (typeof FormData !== "undefined" && body instanceof FormData) {
    return settled(null, "multipart form (FormData), not read on the caller's behalf");
  }
  return settled(null, `streamed upload (${typeName(body)}), not read on the caller's behalf`);
}
