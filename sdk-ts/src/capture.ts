/**
 * The one capture helper every integration calls: it builds a contract-valid TraceEvent.
 *
 * Integrations only say what happened (method, URL, headers, bodies, timing, error); this module
 * applies the shared rules — target and endpoint naming, the status rule, LLM detection,
 * redaction, body caps, span nesting — exactly as the Python SDK's `tracelab/sdk/capture.py`
 * does, so events are indistinguishable downstream. Nothing here may throw into the traced
 * program: callers go through `Recorder.safely()`.
 */
import { hostname } from "node:os";
import { currentSpanId } from "./context.js";
import { newEventId } from "./ids.js";
import { type Fold, llmFields, pathModel, type Piece } from "./llm.js";
import { CapturedBytes, encodeBody, encodeCaptured, notCaptured } from "./payloads.js";
import type { Redactor } from "./redaction.js";
import { redactShapes } from "./shapes.js";
import type { HeaderInput } from "./redaction.js";
import type { Recorder } from "./recorder.js";
import { SDK_VERSION } from "./version.js";

export const SOURCE = "sdk-ts";
const HOST = hostname();
const DEFAULT_PORTS: Record<string, string> = { http: "80", https: "443", ws: "80", wss: "443" };
// LLM detection (the Python SDK's rule, tracelab/sdk/capture.py): a known provider host, or an
// LLM-style path whose request body looks like an LLM request (`model` plus `messages`, `input`
// or `prompt`). A path alone is not enough: `/api/surveys/42/responses` is not an LLM call.
// Gemini's paths name the model (`/v1beta/models/M:generateContent`) and its body has `contents`.
export const LLM_HOSTS: Readonly<Record<string, string>> = {
  "api.openai.com": "openai", "api.anthropic.com": "anthropic",
  "generativelanguage.googleapis.com": "google", "api.mistral.ai": "mistral",
  "api.groq.com": "groq", "api.cohere.com": "cohere", "api.cohere.ai": "cohere",
  "openrouter.ai": "openrouter", "api.together.xyz": "together", "api.together.ai": "together",
  "api.deepseek.com": "deepseek", "api.fireworks.ai": "fireworks",
  "api.perplexity.ai": "perplexity", "api.x.ai": "xai",
};
const LLM_HOST_PATTERNS: ReadonlyArray<readonly [RegExp, string]> = [
  [/^[a-z0-9-]+\.openai\.azure\.com$/, "azure-openai"],
  [/^bedrock-runtime(?:-fips)?\.[a-z0-9-]+\.amazonaws\.com$/, "bedrock"],
  [/^[a-z0-9-]+-aiplatform\.googleapis\.com$/, "google-vertex"],
];
const LLM_PATH_SUFFIXES = ["/chat/completions", "/completions", "/embeddings", "/responses", "/v1/messages"];
const LLM_BODY_FIELDS = ["messages", "input", "prompt"];
const TRUNCATED_MODEL = /"model":"/;
const TRUNCATED_FIELDS = /"(?:messages|input|prompt)":/;
const MAX_TAGS = 64;
const MAX_KEY = 128;
const MAX_VALUE = 1024;

export interface ErrorInfo {
  type: string;
  message: string;
}

/**
 * One piece of a streamed response (`response.chunks`, spec/README.md "Streams"): its offset in
 * ms from the request start and its data, UTF-8 text unless `encoding` is "base64".
 */
export interface StreamChunk {
  t: number;
  data: string;
  encoding?: "text" | "base64";
}

/** How a streamed response ended (`response.stream`); always present with `chunks`. */
export interface StreamInfo {
  complete: boolean;
  error: ErrorInfo | null;
  size: number;
  truncated: boolean;
}

/**
 * `{type, message}` of anything thrown (a DOMException by its name); fetch's "fetch failed" gets
 * its cause appended.
 * Messages quote URLs and keys ("Invalid API key provided: sk_live_…"): shapes are redacted.
 */
export function errorInfo(err: unknown): ErrorInfo {
  let type = "Error";
  let message: string;
  try {
    if (err instanceof Error) {
      const ctor = err.constructor?.name;
      // a DOMException's kind is its name: fetch's AbortError, AbortSignal.timeout()'s TimeoutError
      type = ctor && ctor !== "Error" && ctor !== "DOMException" ? ctor : err.name || ctor || "Error";
      message = err.message;
      const cause = (err as { cause?: unknown }).cause;
      if (cause instanceof Error && cause.message && !message.includes(cause.message)) {
        message = `${message}: ${cause.message}`;
      }
    } else {
      type = typeof err;
      message = String(err);
    }
  } catch {
    message = "<String() of the error failed>";
  }
  return { type, message: redactShapes(message.slice(0, 4000)) };
}

/** Tags that fit the contract: strings, at most 64, keys <= 128 and values <= 1024 chars. */
export function cleanTags(tags: Record<string, unknown>): Record<string, string> {
  const out: Record<string, string> = {};
  let n = 0;
  for (const [key, value] of Object.entries(tags)) {
    if (n >= MAX_TAGS) break;
    const k = String(key).slice(0, MAX_KEY) || "_";
    if (!(k in out)) n++;
    out[k] = (typeof value === "string" ? value : String(value)).slice(0, MAX_VALUE);
  }
  return out;
}

export interface EventFields {
  kind: string;
  target: string;
  endpoint: string;
  startedAt: bigint;
  latencyMs: number;
  status: "ok" | "error";
  request: Record<string, unknown>;
  response: Record<string, unknown> | null;
  statusCode?: number | null;
  error?: ErrorInfo | null;
  tags?: Record<string, unknown> | null;
  spanId?: string | null;
  /** undefined: the enclosing span from the async context. */
  parentId?: string | null;
}

export type TraceEvent = { started_at: bigint } & Record<string, unknown>;

export function buildEvent(rec: Recorder, f: EventFields): TraceEvent {
  const config = rec.config;
  let tags: Record<string, string> = config.tags as Record<string, string>;
  if (f.tags && Object.keys(f.tags).length) tags = cleanTags({ ...config.tags, ...f.tags });
  return {
    event_id: newEventId(),
    schema: 1,
    workflow: config.workflow,
    run_id: config.runId,
    service: config.service,
    source: SOURCE,
    kind: f.kind,
    target: (f.target || "unknown").slice(0, 512),
    endpoint: (f.endpoint || "unknown").slice(0, 2048),
    started_at: f.startedAt,
    latency_ms: Math.max(0, f.latencyMs),
    status: f.status,
    request: f.request,
    response: f.response,
    status_code: f.statusCode ?? null,
    error: f.error ?? null,
    tags,
    span_id: f.spanId ?? null,
    parent_id: f.parentId !== undefined ? f.parentId : currentSpanId(),
    host: HOST,
    pid: process.pid,
    sdk_version: SDK_VERSION,
  };
}

/** `api.stripe.com`, or `127.0.0.1:8080` when the port is not the scheme's default. */
export function httpTarget(scheme: string, netloc: string): string {
  const hostport = netloc.slice(netloc.lastIndexOf("@") + 1).toLowerCase();
  const i = hostport.lastIndexOf(":");
  if (i >= 0) {
    const port = hostport.slice(i + 1);
    if (!port.includes("]") && port === DEFAULT_PORTS[scheme.toLowerCase().replace(/:$/, "")]) {
      return hostport.slice(0, i);
    }
  }
  return hostport || "unknown";
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

/** A stored request body with a string `model` and `messages`, `input` or `prompt`. */
function llmShaped(body: unknown): boolean {
  if (!isRecord(body)) return false;
  if (body.$tracelab === "truncated" && typeof body.data === "string") {
    return TRUNCATED_MODEL.test(body.data) && TRUNCATED_FIELDS.test(body.data);
  }
  return typeof body.model === "string" && LLM_BODY_FIELDS.some((f) => f in body);
}

/** The provider when this HTTP call is an LLM call (the rule above), else null. */
export function llmProvider(host: string, path: string, requestBody: unknown): string | null {
  const name = host.toLowerCase().replace(/\.$/, "");
  const known = Object.prototype.hasOwnProperty.call(LLM_HOSTS, name) ? LLM_HOSTS[name] : undefined;
  if (known) return known;
  for (const [pattern, provider] of LLM_HOST_PATTERNS) if (pattern.test(name)) return provider;
  if (LLM_PATH_SUFFIXES.some((s) => path.endsWith(s)) && llmShaped(requestBody)) {
    return path.endsWith("/v1/messages") ? "anthropic" : "openai-compatible";
  }
  if (pathModel(path) && geminiShaped(requestBody)) return "google";
  return null;
}

/** A Gemini `generateContent` request body: `contents` (the model is in the path). */
function geminiShaped(body: unknown): boolean {
  if (!isRecord(body)) return false;
  if (body.$tracelab === "truncated" && typeof body.data === "string") return body.data.includes('"contents":');
  return "contents" in body;
}

/** The host of a URL's netloc as Python's `urlsplit().hostname` gives it: no userinfo, port or brackets. */
export function hostOf(netloc: string): string {
  const hostport = netloc.slice(netloc.lastIndexOf("@") + 1).toLowerCase();
  if (hostport.startsWith("[")) {
    const end = hostport.indexOf("]");
    return hostport.slice(1, end < 0 ? undefined : end);
  }
  const colon = hostport.lastIndexOf(":");
  return colon >= 0 ? hostport.slice(0, colon) : hostport;
}

/**
 * The canonical `llm.*` tags of an LLM call (`./llm.ts`, the Python SDK's rule); null when it is
 * not one. `chunks`: a stream's stored pieces (they time `llm.ttft_ms`); `fold`: the response
 * already folded as it streamed by (then the body is not read again).
 */
export function llmTags(host: string, path: string, requestBody: unknown, responseBody: unknown,
  chunks?: readonly Piece[] | null, fold?: Fold | null): Record<string, string> | null {
  const provider = llmProvider(host, path, requestBody);
  if (provider === null) return null;
  return llmFields(provider, path, requestBody, responseBody, chunks, fold);
}

/** The body as received, for the LLM fields: redaction blanks secret-looking members. */
function receivedBody(body: unknown): unknown {
  if (body instanceof CapturedBytes) return body.complete && body.head.byteLength === body.size ? body.head : null;
  return typeof body === "string" || body instanceof Uint8Array ? body : null;
}

/** scheme, netloc and path of a URL the way Python's urlsplit sees them (no normalization). */
function splitUrl(url: string): { scheme: string; netloc: string; path: string } {
  const m = /^([a-zA-Z][a-zA-Z0-9+.-]*):\/\/([^/?#]*)([^?#]*)/.exec(url);
  if (m) return { scheme: m[1], netloc: m[2], path: m[3] };
  const p = /^([^?#]*)/.exec(url);
  return { scheme: "", netloc: "", path: p ? p[1] : "" };
}

export interface HttpCall {
  origin: string;
  method: string;
  url: string;
  requestHeaders: HeaderInput;
  requestBody?: unknown;
  startedAt: bigint;
  latencyMs: number;
  statusCode?: number | null;
  responseHeaders?: HeaderInput;
  responseBody?: unknown;
  error?: unknown;
  requestBodyNote?: string | null;
  responseBodyNote?: string | null;
  /** A streamed response folded as the caller read it (`integrations/sse-tap.ts`). */
  responseFold?: Fold | null;
}

/** A body given whole (string, bytes) or as `CapturedBytes` seen passing by. */
function encodeAny(body: unknown, contentType: string | null, redactor: Redactor, cap: number): unknown {
  return body instanceof CapturedBytes
    ? encodeCaptured(body, contentType, redactor, cap)
    : encodeBody(body, contentType, redactor, cap);
}

function header(headers: Record<string, string>, name: string): string | null {
  for (const [key, value] of Object.entries(headers)) if (key.toLowerCase() === name) return value;
  return null;
}

/** The stored shape of an HTTP call's request: what the event holds and the replay key reads. */
export interface HttpRequestView {
  kind: "http" | "llm";
  target: string;
  endpoint: string;
  request: Record<string, unknown>;
  host: string;
  path: string;
}

/**
 * The request of `call` exactly as `recordHttp` stores it (redacted, body encoded and capped),
 * so a live call under replay is keyed like the recorded one.
 */
export function httpRequestView(rec: Recorder, call: HttpCall): HttpRequestView {
  const { config, redactor } = rec;
  const parts = splitUrl(call.url);
  const method = call.method.toUpperCase();
  const reqHeaders = redactor.headers(call.requestHeaders);
  const reqBody = !config.capturePayloads ? notCaptured("capture_payloads is off")
    : call.requestBodyNote ? notCaptured(call.requestBodyNote)
    : encodeAny(call.requestBody, header(reqHeaders, "content-type"), redactor, config.maxBodyBytes);
  const path = parts.path || "/";
  const host = hostOf(parts.netloc);
  return {
    kind: llmProvider(host, path, reqBody) ? "llm" : "http",
    target: httpTarget(parts.scheme, parts.netloc),
    endpoint: `${method} ${path}`,
    request: { method, url: redactor.url(call.url), headers: reqHeaders, body: reqBody },
    host,
    path,
  };
}

/**
 * Build and submit one HTTP event. `*BodyNote` marks a body as deliberately not captured;
 * `extraTags` (the replay outcome) are merged into the event's tags.
 */
export function recordHttp(rec: Recorder, call: HttpCall, extraTags?: Record<string, string> | null,
  view?: HttpRequestView): TraceEvent {
  const { config, redactor } = rec;
  const capture = config.capturePayloads;
  const cap = config.maxBodyBytes;
  const off = notCaptured("capture_payloads is off");
  const { request, host, path, target, endpoint } = view ?? httpRequestView(rec, call);
  let response: Record<string, unknown> | null = null;
  const statusCode = call.statusCode ?? null;
  if (statusCode !== null) {
    const respHeaders = redactor.headers(call.responseHeaders);
    const respBody = !capture ? off
      : call.responseBodyNote ? notCaptured(call.responseBodyNote)
      : encodeAny(call.responseBody, header(respHeaders, "content-type"), redactor, cap);
    response = { status_code: statusCode, headers: respHeaders, body: respBody };
  }
  // LLM fields from the body as received (Gemini's `promptTokenCount` is redacted when stored;
  // token counts are not payload, so they are kept with capture off too).
  const received = statusCode !== null && !call.responseBodyNote ? receivedBody(call.responseBody) : null;
  const llm = llmTags(host, path, request.body, received ?? (response ? response.body : null), null,
    statusCode !== null ? call.responseFold : null);
  const tags = llm || extraTags ? { ...(llm ?? {}), ...(extraTags ?? {}) } : null;
  const failed = call.error !== undefined || (statusCode !== null && statusCode >= 400);
  const event = buildEvent(rec, {
    kind: llm ? "llm" : "http",
    target,
    endpoint,
    startedAt: call.startedAt,
    latencyMs: call.latencyMs,
    status: failed ? "error" : "ok",
    request,
    response,
    statusCode,
    error: call.error !== undefined ? errorInfo(call.error) : null,
    tags,
  });
  rec.submit(event, call.origin);
  return event;
}
