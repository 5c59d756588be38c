/**
 * Global `fetch` (Node's built-in, undici): patched by replacing `globalThis.fetch` with a
 * wrapper that records one `http` (or `llm`) event per call.
 *
 * The caller gets fetch's own promise back, untouched. The response body is captured from
 * `response.clone()`, read in the background (bounded): the caller's body stream is not
 * consumed and the caller never waits for us. A `text/event-stream` (SSE) response is read as
 * the caller reads it (`./sse-tap.ts`: a new Response, same status, headers and url, whose body
 * passes the caller's pieces through a tap) and recorded when the stream ends, fails or is
 * cancelled, with its LLM fields from the events (`llm.ttft_ms` included).
 *
 * Each call is exactly one event, whatever ends it: the answer (once its body is read), a
 * rejection (an abort is fetch's own `AbortError`, `TimeoutError` for `AbortSignal.timeout()`,
 * timed to the abort), the body failing mid-way (aborted, socket destroyed: an error with the
 * status and the body read so far), or `flush()`/exit while it is still going (`NotFinished`).
 */
import { type HttpCall, type HttpRequestView, httpRequestView, recordHttp } from "../capture.js";
import { httpSuppressed } from "../context.js";
import { Timer } from "../ids.js";
import { keepBytes } from "../payloads.js";
import { answering, type Recorder } from "../recorder.js";
import { bodyBytes, chunksOf, chunkStream, headerPairs as responseHeaderPairs, recordReplayed, sleep, streamError } from "../replay/answer.js";
import { missError, PASSTHROUGH } from "../replay/errors.js";
import { replaySession, type ReplaySession } from "../replay/session.js";
import { headerPairs, type HeaderPairs, type PendingBody, readSettled, type RequestBody, requestBodyOf } from "./http-common.js";
import { CallEnd, NotFinished } from "./pending.js";
import { tapStream, withBody } from "./sse-tap.js";

export const ORIGIN = "fetch";
const ORIGINAL = Symbol.for("tracelab.fetch.original");

type FetchFn = typeof globalThis.fetch;
type Wrapped = FetchFn & { [ORIGINAL]?: FetchFn };

type Tags = Record<string, string> | null;

interface Call {
  method: string;
  url: string;
  headers: HeaderPairs;
  timer: Timer;
  body: PendingBody;
  /** The request body once `body` has resolved (a call recorded at exit cannot wait for it). */
  settledBody: RequestBody | null;
  signal: AbortSignal | null;
}

/** The abort of a call whose signal fired but whose rejection has not come through yet. */
function abortedBy(call: Call): unknown {
  const signal = call.signal;
  if (!signal?.aborted) return undefined;
  return signal.reason ?? new DOMException("This operation was aborted", "AbortError");
}

function describe(input: unknown, init: RequestInit | undefined, cap: number): Call {
  const isRequest = typeof Request !== "undefined" && input instanceof Request;
  const url = typeof input === "string" ? input
    : input instanceof URL ? input.href
    : isRequest ? (input as Request).url
    : String(input);
  const method = String(init?.method ?? (isRequest ? (input as Request).method : "GET"));
  const headers = headerPairs(init?.headers ?? (isRequest ? (input as Request).headers : null));
  const signal = (init?.signal ?? (isRequest ? (input as Request).signal : null)) || null;
  const call: Call = { method, url, headers, timer: new Timer(), body: requestBodyOf(input, init, cap), settledBody: null, signal };
  call.body.resolve().then((body) => { call.settledBody = body; }, () => undefined);
  return call;
}

type Answer = Partial<HttpCall>;

/**
 * Record `call` ended by `answer`, its latency taken now. Synchronous once the request body is
 * known (always with `now`: a call recorded at exit, its body noted as not read yet).
 */
async function recordCall(rec: Recorder, call: Call, answer: Answer, tags: Tags, now = false): Promise<void> {
  const latencyMs = call.timer.elapsedMs();
  const requestBody = call.settledBody
    ?? (now ? { data: null, note: "request body not read yet when the call was recorded" } : await call.body.resolve());
  rec.safely(ORIGIN, () => recordHttp(rec, {
    origin: ORIGIN,
    method: call.method,
    url: call.url,
    requestHeaders: call.headers,
    requestBody: requestBody.data,
    requestBodyNote: requestBody.note,
    startedAt: call.timer.startedAt,
    latencyMs,
    ...answer,
  }, tags));
}

function answered(response: Response): Answer {
  return { statusCode: response.status, responseHeaders: Array.from(response.headers.entries()) };
}

/**
 * The event of an answered call, once the body read from a clone has ended: read whole, or
 * failed (the caller aborted, the socket was destroyed mid-body: then an error with the body
 * read so far). Recorded only if nothing recorded the call first (`end`).
 */
async function recordResponse(rec: Recorder, call: Call, response: Response, tags: Tags, end: CallEnd): Promise<void> {
  let responseBody: unknown = null;
  let note: string | null = null;
  let error: unknown;
  const contentType = response.headers.get("content-type") ?? "";
  if (rec.config.capturePayloads) {
    if (/text\/event-stream/i.test(contentType)) {
      note = "streamed response (text/event-stream): not read on the caller's behalf";
    } else if (response.body) {
      let clone: ReadableStream<Uint8Array> | null = null;
      try {
        clone = response.clone().body as ReadableStream<Uint8Array>;
      } catch (err) {
        note = `response body could not be read: ${(err as Error)?.message ?? String(err)}`;
      }
      if (clone) ({ bytes: responseBody, error } = await readSettled(clone, keepBytes(rec.config.maxBodyBytes, contentType)));
    }
  }
  if (end.claim()) await recordCall(rec, call, { ...answered(response), responseBody, responseBodyNote: note, error }, tags);
}

/**
 * Record `response` and give the caller its answer: the response itself (its body read from a
 * clone in the background), or for an SSE stream the same answer through a tap.
 */
function observe(rec: Recorder, call: Call, response: Response, tags: Tags, onFail: (err: unknown) => void,
  end: CallEnd): Response {
  end.whenUnfinished((when) => {
    void recordCall(rec, call, { ...answered(response), responseBodyNote: `response body not read to its end before ${when}`,
      error: abortedBy(call) }, tags, true);
  });
  const tapped = rec.safely(ORIGIN, () => {
    const contentType = response.headers.get("content-type") ?? "";
    if (!/text\/event-stream/i.test(contentType) || !response.body || response.bodyUsed
      || response.status < 200 || response.status > 599) return null;
    const keep = keepBytes(rec.config.maxBodyBytes, contentType);
    const body = tapStream(response.body, keep, () => call.timer.elapsedMs(), (result) => {
      if (!end.claim()) return;
      recordCall(rec, call, { ...answered(response), responseBody: result.body, responseFold: result.fold, error: result.error }, tags)
        .catch(onFail);
    });
    end.handOver(); // the tap records the stream as read so far at flush()/exit
    return withBody(response, body);
  });
  if (tapped) return tapped;
  recordResponse(rec, call, response, tags, end).catch(onFail);
  return response;
}

/**
 * `promise` (fetch's own) traced: exactly one event, whether it resolves (then when its body
 * ends), rejects (an error, an abort: fetch's own AbortError or TimeoutError), or is still
 * going at flush()/exit (NotFinished). The caller gets fetch's outcome, unchanged.
 */
function traceLive(rec: Recorder, call: Call, promise: Promise<Response>, tags: Tags,
  onFail: (err: unknown) => void): Promise<Response> {
  const end = new CallEnd((when) => { void recordCall(rec, call, { error: abortedBy(call) ?? new NotFinished(when) }, tags, true); });
  // A derived promise, not a handler on fetch's own: an app that leaves a rejected fetch
  // unhandled still gets its unhandled rejection.
  return promise.then(
    (response) => {
      if (end.done) return response; // recorded at flush() while it was going
      return rec.safely(ORIGIN, () => observe(rec, call, response, tags, onFail, end)) ?? response;
    },
    (error: unknown) => {
      if (end.claim()) recordCall(rec, call, { error: error ?? new Error("fetch rejected without a reason") }, tags).catch(onFail);
      throw error;
    },
  );
}

/**
 * Under replay: answer from the recording, never touching the network. A miss in `fail` mode
 * rejects like fetch does on a refused connection (`TypeError: fetch failed`, the miss in
 * `cause`); in `passthrough`/`record` mode the call goes out live, tagged `replay=passthrough`.
 */
async function replayFetch(rec: Recorder, session: ReplaySession, live: () => Promise<Response>,
  input: unknown, init: RequestInit | undefined): Promise<Response> {
  let call: Call;
  let view: HttpRequestView;
  let outcome: ReturnType<ReplaySession["take"]>;
  const startMs = Date.now();
  const signal = init?.signal ?? (typeof Request !== "undefined" && input instanceof Request ? input.signal : null);
  // An aborted signal rejects before anything is matched, as fetch itself does.
  if (signal?.aborted) throw signal.reason ?? new DOMException("This operation was aborted", "AbortError");
  try {
    call = describe(input, init, rec.config.maxBodyBytes);
    const body = await call.body.resolve();
    view = httpRequestView(rec, {
      origin: ORIGIN, method: call.method, url: call.url, requestHeaders: call.headers,
      requestBody: body.data, requestBodyNote: body.note, startedAt: call.timer.startedAt, latencyMs: 0,
    });
    outcome = session.take({ kind: view.kind, target: view.target, endpoint: view.endpoint, request: view.request });
  } catch (err) {
    rec.safely(ORIGIN, () => { throw err; });
    throw new TypeError("fetch failed", { cause: new Error(`TraceLab replay could not match this call: ${(err as Error)?.message}`) });
  }
  if (!outcome.hit && session.onMiss !== "fail") {
    return traceLive(rec, call, live(), PASSTHROUGH, () => undefined);
  }
  if (!outcome.hit) {
    const error = new TypeError("fetch failed", { cause: missError(outcome.message) });
    rec.safely(ORIGIN, () => recordHttp(rec, {
      origin: ORIGIN, method: call.method, url: call.url, requestHeaders: call.headers,
      startedAt: call.timer.startedAt, latencyMs: call.timer.elapsedMs(), error,
    }, { replay: "miss" }, view));
    throw error;
  }
  const recorded = outcome.event;
  const response = isRecord(recorded.response) ? recorded.response : null;
  const chunks = chunksOf(response);
  if (!chunks) await sleep(session.delayMs(recorded.latency_ms));
  rec.safely(ORIGIN, () => recordReplayed(rec, ORIGIN, view, recorded, call.timer.startedAt, call.timer.elapsedMs()));
  const status = typeof recorded.status_code === "number" ? recorded.status_code : null;
  if (status === null || response === null) {
    const recordedError = isRecord(recorded.error) ? recorded.error : { message: "no response was recorded" };
    throw new TypeError("fetch failed", { cause: new Error(`${String(recordedError.message)} (as recorded)`) });
  }
  const noBody = [101, 103, 204, 205, 304].includes(status) || call.method.toUpperCase() === "HEAD";
  const body = noBody ? null
    : chunks ? chunkStream(chunks, session.speed, startMs, streamError(response))
    : bodyBytes(response.body);
  const headers = new Headers();
  for (const [name, value] of responseHeaderPairs(response)) {
    try {
      headers.append(name, value);
    } catch {
      // a header the Fetch API refuses (not a byte string): the answer goes without it
    }
  }
  let answer: Response;
  try {
    answer = new Response(body as BodyInit | null, { status, headers });
  } catch (err) {
    throw new TypeError("fetch failed", { cause: new Error(`the recorded response cannot be a Response (${(err as Error)?.message})`) });
  }
  Object.defineProperty(answer, "url", { value: call.url });
  return answer;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

function makeWrapper(fetchImpl: FetchFn): Wrapped {
  const wrapped: Wrapped = function fetch(this: unknown, input: unknown, init?: RequestInit): Promise<Response> {
    const rec = answering();
    if (rec === null || httpSuppressed()) return fetchImpl.call(this, input as never, init);
    const session = replaySession();
    if (session) return replayFetch(rec, session, () => fetchImpl.call(this, input as never, init), input, init);
    const call = rec.safely(ORIGIN, () => describe(input, init, rec.config.maxBodyBytes));
    const promise = fetchImpl.call(this, input as never, init);
    if (!call) return promise;
    const countFailure = (err: unknown) => rec.safely(ORIGIN, () => { throw err; });
    return traceLive(rec, call, promise, null, countFailure);
  } as Wrapped;
  wrapped[ORIGINAL] = fetchImpl;
  return wrapped;
}

/** Patch `globalThis.fetch`; idempotent. False when this Node has no global fetch. */
export function install(): boolean {
  const existing = globalThis.fetch as Wrapped | undefined;
  if (typeof existing !== "function") return false;
  if (existing[ORIGINAL]) return true;
  globalThis.fetch = makeWrapper(existing);
  return true;
}

/** Put the original `fetch` back (only if nobody replaced ours since). */
export function uninstall(): void {
  const existing = globalThis.fetch as Wrapped | undefined;
  if (existing && existing[ORIGINAL]) globalThis.fetch = existing[ORIGINAL] as FetchFn;
}
