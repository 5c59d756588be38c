/**
 * A recorded response turned back into what the app receives: status, headers and body bytes,
 * or for a streamed recording (`response.chunks`, spec/README.md "Streams": text, or base64
 * with `encoding`) the chunks at their offsets (scaled by the replay speed). Also records the answered call in the new run, tagged `replay=hit`, with the
 * recorded response as it is stored (it was redacted when recorded).
 */
import { buildEvent, type ErrorInfo, type HttpRequestView, type StreamChunk, type StreamInfo } from "../capture.js";
import type { Recorder } from "../recorder.js";
import type { RecordedEvent } from "./matcher.js";

const encoder = new TextEncoder();
/** Headers that described the bytes on the wire, not the body we hand back. */
const WIRE_HEADERS = new Set(["content-length", "content-encoding", "transfer-encoding", "connection", "keep-alive"]);

function isRecord(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

export function sleep(ms: number): Promise<void> {
  return ms > 0 ? new Promise((r) => setTimeout(r, ms)) : Promise.resolve();
}

/** The bytes of a stored body: JSON serialised, text as UTF-8, `$tracelab` markers decoded. */
export function bodyBytes(body: unknown): Uint8Array {
  if (body === null || body === undefined) return new Uint8Array(0);
  if (typeof body === "string") return encoder.encode(body);
  if (isRecord(body) && typeof body.$tracelab === "string") {
    if (body.$tracelab === "binary" && typeof body.base64 === "string") return Buffer.from(body.base64, "base64");
    if (body.$tracelab === "truncated" && typeof body.data === "string") {
      return body.encoding === "base64" ? Buffer.from(body.data, "base64") : encoder.encode(body.data);
    }
    if (body.$tracelab === "not_captured") return new Uint8Array(0);
  }
  return encoder.encode(JSON.stringify(body));
}

export interface Chunk { t: number; data: Uint8Array }

/** The recorded chunks of a streamed response, or null when it was recorded whole. */
export function chunksOf(response: Record<string, unknown> | null): Chunk[] | null {
  const raw = response?.chunks;
  if (!Array.isArray(raw)) return null;
  return raw.filter(isRecord).map((raw) => {
    const c = raw as Partial<StreamChunk>;
    return {
      t: Number(c.t) || 0,
      data: typeof c.data === "string"
        ? (c.encoding === "base64" ? Buffer.from(c.data, "base64") : encoder.encode(c.data))
        : new Uint8Array(0),
    };
  });
}

/** `{type, message}` of a stream that failed mid-way in the recording, else null. */
export function streamError(response: Record<string, unknown> | null): ErrorInfo | null {
  const stream = response?.stream as Partial<StreamInfo> | undefined;
  const error = isRecord(stream) ? stream.error : null;
  return isRecord(error) ? { type: String(error.type ?? "Error"), message: String(error.message ?? "") } : null;
}

/** The recorded response's headers as pairs, without the wire-only ones. */
export function headerPairs(response: Record<string, unknown> | null): Array<[string, string]> {
  const headers = response?.headers;
  const out: Array<[string, string]> = [];
  if (Array.isArray(headers)) {
    for (const pair of headers) if (Array.isArray(pair)) out.push([String(pair[0]), String(pair[1])]);
  } else if (isRecord(headers)) {
    for (const [name, value] of Object.entries(headers)) out.push([name, String(value)]);
  }
  return out.filter(([name]) => !WIRE_HEADERS.has(name.toLowerCase()));
}

/**
 * Chunks delivered at `t / speed` ms after `startMs` (at once with speed 0), then the recorded
 * end: done, or the recorded mid-stream error.
 */
export async function* timedChunks(chunks: Chunk[], speed: number, startMs: number,
  error: { type: string; message: string } | null): AsyncGenerator<Uint8Array> {
  for (const chunk of chunks) {
    if (speed > 0) await sleep(startMs + chunk.t / speed - Date.now());
    yield chunk.data;
  }
  if (error) throw Object.assign(new Error(`${error.type}: ${error.message} (as recorded)`), { code: "ECONNRESET" });
}

/** A web ReadableStream over the recorded chunks (fetch's `response.body`). */
export function chunkStream(chunks: Chunk[], speed: number, startMs: number,
  error: { type: string; message: string } | null): ReadableStream<Uint8Array> {
  const it = timedChunks(chunks, speed, startMs, error);
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      try {
        const { done, value } = await it.next();
        if (done) controller.close();
        else controller.enqueue(value);
      } catch (err) {
        controller.error(new TypeError("terminated", { cause: err }));
      }
    },
    async cancel() {
      await it.return(undefined);
    },
  });
}

/** Record a call answered from the recording: the live request, the recorded outcome. */
export function recordReplayed(rec: Recorder, origin: string, view: { kind: string; target: string; endpoint: string; request: Record<string, unknown> },
  recorded: RecordedEvent, startedAt: bigint, latencyMs: number): void {
  const response = isRecord(recorded.response) ? recorded.response : null;
  const llm: Record<string, string> = {};
  if (isRecord(recorded.tags)) {
    for (const [k, v] of Object.entries(recorded.tags)) if (k.startsWith("llm.")) llm[k] = String(v);
  }
  const event = buildEvent(rec, {
    kind: view.kind,
    target: view.target,
    endpoint: view.endpoint,
    startedAt,
    latencyMs,
    status: recorded.status === "error" ? "error" : "ok",
    request: view.request,
    response,
    statusCode: typeof recorded.status_code === "number" ? recorded.status_code : null,
    error: isRecord(recorded.error) ? { type: String(recorded.error.type), message: String(recorded.error.message) } : null,
    tags: { ...llm, replay: "hit" },
  });
  rec.submit(event, origin);
}

export type { HttpRequestView };
