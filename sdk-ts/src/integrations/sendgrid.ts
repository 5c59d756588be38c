/**
 * `@sendgrid/mail`: one `kind: email` event per message sent, target `sendgrid`, endpoint
 * `mail.send`, patched on `MailService.prototype.send` (so the default `sgMail` singleton and
 * any `new MailService()` are covered). Each message is one event however its send ends: its
 * promise settling or its callback being called (a callback-style send's error is the event's
 * error), or `flush()`/exit while it is still going (`NotFinished`).
 *
 * The package is found from the app's point of view (its main script and working directory),
 * not from this SDK's folder: with `npm install ./sdk-ts` the SDK is a symlink whose own
 * node_modules may hold another copy. Copies already loaded are patched too. The HTTP call
 * beneath (axios) is part of this event, so HTTP integrations are silenced during a send.
 */
import { AsyncResource } from "node:async_hooks";
import { createRequire } from "node:module";
import { join, resolve } from "node:path";
import { buildEvent, errorInfo } from "../capture.js";
import { runSuppressingHttp } from "../context.js";
import { Timer } from "../ids.js";
import { encodeBody, notCaptured, toJsonable } from "../payloads.js";
import { answering, type Recorder } from "../recorder.js";
import { bodyBytes, headerPairs as responseHeaderPairs, recordReplayed, sleep } from "../replay/answer.js";
import { missError, PASSTHROUGH } from "../replay/errors.js";
import { replaySession, type ReplaySession } from "../replay/session.js";
import { STATUS_CODES } from "node:http";
import { CallEnd, NotFinished } from "./pending.js";

export const ORIGIN = "sendgrid";
const ORIGINAL = Symbol.for("tracelab.sendgrid.original");
const PACKAGE = "@sendgrid/mail";
const MODULE_PATH = /[\\/]@sendgrid[\\/]mail[\\/]/;

type SendFn = ((...args: unknown[]) => unknown) & { [ORIGINAL]?: SendFn };
interface MailServiceClass { prototype: { send: SendFn } }

const patched = new Set<MailServiceClass["prototype"]>();
/** The file each MailService prototype was loaded from: its own copies of axios and helpers live near it. */
const origins = new WeakMap<object, string>();

/** Every MailService prototype the app can reach: resolved from its entry points, or loaded. */
function findPrototypes(): Set<MailServiceClass["prototype"]> {
  const found = new Set<MailServiceClass["prototype"]>();
  const consider = (exported: unknown, from: string) => {
    const mod = exported as { MailService?: MailServiceClass; send?: unknown } | null;
    if (!mod) return;
    const proto = mod.MailService?.prototype ?? (typeof mod.send === "function" ? Object.getPrototypeOf(mod) : null);
    if (proto && typeof proto.send === "function" && proto !== Object.prototype) {
      found.add(proto);
      if (!origins.has(proto)) origins.set(proto, from);
    }
  };
  const bases = [process.argv[1] ? resolve(process.argv[1]) : null, join(process.cwd(), "__tracelab__.js")];
  for (const base of bases) {
    if (!base) continue;
    try {
      const req = createRequire(base);
      const path = req.resolve(PACKAGE);
      consider(req(path), path);
      const cache = req.cache;
      for (const key of Object.keys(cache)) {
        if (MODULE_PATH.test(key) && /[\\/]mail[\\/](index\.js|src[\\/]mail\.js)$/.test(key)) consider(cache[key]?.exports, key);
      }
    } catch {
      // not installed where the app can see it
    }
  }
  return found;
}

function addresses(value: unknown): string[] {
  if (value === null || value === undefined) return [];
  const list = Array.isArray(value) ? value : [value];
  const out: string[] = [];
  for (const item of list) {
    if (typeof item === "string") out.push(item);
    else if (item && typeof item === "object" && typeof (item as { email?: unknown }).email === "string") {
      const { email, name } = item as { email: string; name?: string };
      out.push(name ? `${name} <${email}>` : email);
    }
  }
  return out;
}

function describeMessage(rec: Recorder, data: Record<string, unknown>): Record<string, unknown> {
  const cap = rec.config.maxBodyBytes;
  if (!rec.config.capturePayloads) return { body: notCaptured("capture_payloads is off") };
  const personalizations = Array.isArray(data.personalizations) ? data.personalizations as Array<Record<string, unknown>> : [];
  const to = [...addresses(data.to), ...personalizations.flatMap((p) => addresses(p?.to))];
  const cc = [...addresses(data.cc), ...personalizations.flatMap((p) => addresses(p?.cc))];
  const bcc = [...addresses(data.bcc), ...personalizations.flatMap((p) => addresses(p?.bcc))];
  const from = addresses(data.from)[0] ?? null;
  let body: unknown = null;
  if (typeof data.text === "string") body = encodeBody(data.text, "text/plain", rec.redactor, cap);
  else if (typeof data.html === "string") body = encodeBody(data.html, "text/html", rec.redactor, cap);
  else if (Array.isArray(data.content)) body = toJsonable(data.content, rec.redactor, cap);
  const request: Record<string, unknown> = { from, to, subject: typeof data.subject === "string" ? data.subject : null, body };
  if (cc.length) request.cc = cc;
  if (bcc.length) request.bcc = bcc;
  if (typeof data.html === "string" && typeof data.text === "string") request.html = encodeBody(data.html, "text/html", rec.redactor, cap);
  if (data.templateId) request.template_id = String(data.templateId);
  if (data.dynamicTemplateData) request.dynamic_template_data = toJsonable(data.dynamicTemplateData, rec.redactor, cap);
  if (Array.isArray(data.attachments)) {
    request.attachments = (data.attachments as Array<Record<string, unknown>>).map((a) => ({
      filename: a?.filename ?? null, type: a?.type ?? null,
      content: notCaptured("attachment content is not recorded"),
    }));
  }
  return request;
}

function headersOf(raw: unknown): Record<string, unknown> | null {
  if (!raw || typeof raw !== "object") return null;
  const toJSON = (raw as { toJSON?: () => unknown }).toJSON;
  const plain = typeof toJSON === "function" ? toJSON.call(raw) : raw;
  return plain && typeof plain === "object" ? plain as Record<string, unknown> : null;
}

function responseOf(rec: Recorder, statusCode: number, headers: unknown, body: unknown): Record<string, unknown> {
  const redacted = rec.redactor.headers(headersOf(headers));
  const ctype = Object.entries(redacted).find(([k]) => k.toLowerCase() === "content-type")?.[1] ?? null;
  let encoded: unknown;
  if (!rec.config.capturePayloads) encoded = notCaptured("capture_payloads is off");
  else if (typeof body === "string" || body instanceof Uint8Array || body === null || body === undefined) {
    encoded = encodeBody(body === "" ? null : body, ctype, rec.redactor, rec.config.maxBodyBytes);
  } else encoded = rec.redactor.value(toJsonable(body, rec.redactor, rec.config.maxBodyBytes));
  return { status_code: statusCode, headers: redacted, body: encoded };
}

function record(rec: Recorder, data: Record<string, unknown>, timer: Timer,
  outcome: { result?: unknown; error?: unknown; failed: boolean }, tags: Record<string, string> | null = null): void {
  let statusCode: number | null = null;
  let response: Record<string, unknown> | null = null;
  if (!outcome.failed) {
    const [clientResponse, body] = Array.isArray(outcome.result) ? outcome.result : [outcome.result, undefined];
    const cr = clientResponse as { statusCode?: number; headers?: unknown; body?: unknown } | undefined;
    if (cr && Number.isInteger(cr.statusCode)) {
      statusCode = cr.statusCode as number;
      response = responseOf(rec, statusCode, cr.headers, body ?? cr.body);
    }
  } else {
    const err = outcome.error as { code?: unknown; response?: { headers?: unknown; body?: unknown } } | undefined;
    if (err && Number.isInteger(err.code) && (err.code as number) >= 100 && (err.code as number) <= 999) {
      statusCode = err.code as number;
      response = responseOf(rec, statusCode, err.response?.headers, err.response?.body);
    }
  }
  const event = buildEvent(rec, {
    kind: "email",
    target: "sendgrid",
    endpoint: "mail.send",
    startedAt: timer.startedAt,
    latencyMs: timer.elapsedMs(),
    status: outcome.failed || (statusCode !== null && statusCode >= 400) ? "error" : "ok",
    request: describeMessage(rec, data),
    response,
    statusCode,
    error: outcome.failed ? errorInfo(outcome.error) : null,
    tags,
  });
  rec.submit(event, ORIGIN);
}

type Loader = (id: string) => unknown;

/** `require` as seen from the @sendgrid/mail copy that owns `proto` (null if unknown). */
function loaderFor(proto: object): Loader | null {
  const from = origins.get(proto);
  if (!from) return null;
  try {
    const mailRequire = createRequire(from);
    const client = mailRequire.resolve("@sendgrid/client");
    return createRequire(client) as Loader;
  } catch {
    return null;
  }
}

function load<T>(loader: Loader | null, id: string, pick: (mod: unknown) => T | undefined): T | undefined {
  try {
    return loader ? pick(loader(id)) : undefined;
  } catch {
    return undefined;
  }
}

/**
 * What `send` rejects with when the connection is refused: axios's `AxiosError` with code
 * ECONNREFUSED (the client passes it through), here carrying the replay miss explanation.
 */
function refusedError(proto: object, message: string): Error {
  const cause = missError(message);
  type AxiosErrorClass = new (message: string, code: string) => Error;
  const AxiosError = load(loaderFor(proto), "axios", (m) => (m as { AxiosError?: AxiosErrorClass }).AxiosError);
  if (AxiosError) return Object.assign(new AxiosError(message, "ECONNREFUSED"), { cause });
  return Object.assign(new Error(message), { name: "AxiosError", code: "ECONNREFUSED", cause });
}

/** The body as the client hands it back: parsed JSON, text, or "" for none. */
function clientBody(body: unknown): unknown {
  if (body === null || body === undefined) return "";
  if (typeof body === "object" && !("$tracelab" in (body as object))) return body;
  return typeof body === "string" ? body : Buffer.from(bodyBytes(body)).toString("utf8");
}

/** `send` answered from the recording: `[Response, body]`, or the ResponseError of a 4xx/5xx. */
function answerSend(proto: object, recorded: Record<string, unknown>): [unknown, unknown] {
  const response = recorded.response !== null && typeof recorded.response === "object" ? recorded.response as Record<string, unknown> : null;
  const status = typeof recorded.status_code === "number" ? recorded.status_code : null;
  if (status === null || response === null) {
    const error = recorded.error as { message?: unknown } | null;
    throw refusedError(proto, `${String(error?.message ?? "no response was recorded")} (as recorded)`);
  }
  const headers = Object.fromEntries(responseHeaderPairs(response));
  const body = clientBody(response.body);
  const loader = loaderFor(proto);
  if (status >= 400) {
    type ErrorClass = new (r: unknown) => Error;
    const ResponseError = load(loader, "@sendgrid/helpers/classes/response-error", (m) => m as ErrorClass);
    if (ResponseError) throw new ResponseError({ status, statusText: STATUS_CODES[status] ?? "", headers, data: body });
    throw Object.assign(new Error(STATUS_CODES[status] ?? String(status)), { name: "ResponseError", code: status, response: { headers, body } });
  }
  type ResponseClass = new (status: number, body: unknown, headers: unknown) => unknown;
  const Response = load(loader, "@sendgrid/helpers/classes/response", (m) => m as ResponseClass);
  return [Response ? new Response(status, body, headers) : { statusCode: status, body, headers }, body];
}

/**
 * `send` under replay: answered from the recording, nothing sent. A miss in `fail` mode
 * rejects as a refused connection would; in passthrough/record mode the message is sent live.
 */
function replaySend(rec: Recorder, session: ReplaySession, proto: object, data: Record<string, unknown>,
  cb: unknown, live: () => unknown): unknown {
  const timer = new Timer();
  const request = describeMessage(rec, data);
  const view = { kind: "email", target: "sendgrid", endpoint: "mail.send", request };
  const outcome = session.take(view);
  if (!outcome.hit && session.onMiss !== "fail") return live();
  const promise = (async () => {
    if (!outcome.hit) {
      const error = refusedError(proto, outcome.message);
      rec.safely(ORIGIN, () => record(rec, data, timer, { error, failed: true }, { replay: "miss" }));
      throw error;
    }
    await sleep(session.delayMs(outcome.event.latency_ms));
    rec.safely(ORIGIN, () => recordReplayed(rec, ORIGIN, view, outcome.event, timer.startedAt, timer.elapsedMs()));
    return answerSend(proto, outcome.event);
  })();
  if (typeof cb === "function") {
    return promise.then((result) => cb(null, result), (error: unknown) => cb(error, null));
  }
  return promise;
}

/**
 * `send(data, cb)` / `send(data, isMultiple, cb)`: the arguments with the callback wrapped so
 * that its first call (the send's outcome) is seen; the callback itself gets exactly what it
 * would have got, in the caller's async context (its span, HTTP calls recorded as usual), not
 * in the send's, where HTTP integrations are silenced. Other arguments are returned as they are.
 */
function withWatchedCallback(args: unknown[], seen: (outcome: { result?: unknown; error?: unknown; failed: boolean }) => void): unknown[] {
  const at = typeof args[1] === "function" ? 1 : typeof args[2] === "function" ? 2 : -1;
  if (at < 0) return args;
  const callback = AsyncResource.bind(args[at] as (...a: unknown[]) => unknown);
  const watched = function (this: unknown, ...cbArgs: unknown[]): unknown {
    const [error, result] = cbArgs;
    seen(error !== null && error !== undefined ? { error, failed: true } : { result, failed: false });
    return callback.apply(this, cbArgs);
  };
  const copy = [...args];
  copy[at] = watched;
  return copy;
}

function patch(proto: MailServiceClass["prototype"]): void {
  const existing = proto.send;
  if (existing[ORIGINAL]) return;
  const original = existing;
  const send: SendFn = function (this: unknown, ...args: unknown[]): unknown {
    const rec = answering();
    const data = args[0];
    // An array is sent as one call per message, each through this wrapper again.
    if (rec === null || !data || typeof data !== "object" || Array.isArray(data)) {
      return original.apply(this, args);
    }
    const session = replaySession();
    if (session) {
      try {
        return replaySend(rec, session, proto, data as Record<string, unknown>, args[2],
          () => sendTraced(this, rec, data as Record<string, unknown>, args, PASSTHROUGH));
      } catch (err) {
        rec.safely(ORIGIN, () => { throw err; });
        return Promise.reject(refusedError(proto, `TraceLab replay could not match this call: ${(err as Error)?.message}`));
      }
    }
    return sendTraced(this, rec, data as Record<string, unknown>, args, null);
  };

  /**
   * The original send, recorded once (with `tags`: the replay outcome of a call sent live):
   * when it throws, when its promise settles or its callback is called (whichever comes first:
   * a callback-style send resolves its promise with the callback's value), or at flush()/exit
   * while it is still going (NotFinished).
   */
  const sendTraced = (self: unknown, rec: Recorder, data: Record<string, unknown>, args: unknown[],
    tags: Record<string, string> | null): unknown => {
    const timer = new Timer();
    const end = new CallEnd((when) => rec.safely(ORIGIN, () => record(rec, data, timer, { error: new NotFinished(when), failed: true }, tags)));
    const settle = (outcome: { result?: unknown; error?: unknown; failed: boolean }): void => {
      if (end.claim()) rec.safely(ORIGIN, () => record(rec, data, timer, outcome, tags));
    };
    const callArgs = rec.safely(ORIGIN, () => withWatchedCallback(args, settle)) ?? args;
    let result: unknown;
    try {
      result = runSuppressingHttp(() => original.apply(self, callArgs));
    } catch (err) {
      settle({ error: err, failed: true });
      throw err;
    }
    if (result && typeof (result as PromiseLike<unknown>).then === "function") {
      return (result as Promise<unknown>).then(
        (value) => {
          settle({ result: value, failed: false });
          return value;
        },
        (err: unknown) => {
          settle({ error: err, failed: true });
          throw err;
        },
      );
    }
    settle({ result, failed: false });
    return result;
  };
  Object.defineProperty(send, "name", { value: "send", configurable: true });
  send[ORIGINAL] = original;
  proto.send = send;
  patched.add(proto);
}

/** Patch every copy of `@sendgrid/mail` the app can reach; false when none is installed. */
export function install(): boolean {
  const protos = findPrototypes();
  for (const proto of protos) patch(proto);
  return patched.size > 0;
}

export function uninstall(): void {
  for (const proto of patched) {
    const existing = proto.send;
    if (existing[ORIGINAL]) proto.send = existing[ORIGINAL] as SendFn;
  }
  patched.clear();
}

