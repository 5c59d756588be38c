/**
 * `@sendgrid/mail`: one `kind: email` event per message sent, target `sendgrid`, endpoint
 * `mail.send`, patched on `MailService.prototype.send` (so the default `sgMail` singleton and
 * any `new MailService()` are covered).
 *
 * The package is found from the app's point of view (its main script and working directory),
 * not from this SDK's folder: with `npm install ./sdk-ts` the SDK is a symlink whose own
 * node_modules may hold another copy. Copies already loaded are patched too. The HTTP call
 * beneath (axios) is part of this event, so HTTP integrations are silenced during a send.
 */
import { createRequire } from "node:module";
import { join, resolve } from "node:path";
import { buildEvent, errorInfo } from "../capture.js";
import { runSuppressingHttp } from "../context.js";
import { Timer } from "../ids.js";
import { encodeBody, notCaptured, toJsonable } from "../payloads.js";
import { current, type Recorder } from "../recorder.js";

export const ORIGIN = "sendgrid";
const ORIGINAL = Symbol.for("tracelab.sendgrid.original");
const PACKAGE = "@sendgrid/mail";
const MODULE_PATH = /[\\/]@sendgrid[\\/]mail[\\/]/;

type SendFn = ((...args: unknown[]) => unknown) & { [ORIGINAL]?: SendFn };
interface MailServiceClass { prototype: { send: SendFn } }

const patched = new Set<MailServiceClass["prototype"]>();

/** Every MailService prototype the app can reach: resolved from its entry points, or loaded. */
function findPrototypes(): Set<MailServiceClass["prototype"]> {
  const found = new Set<MailServiceClass["prototype"]>();
  const consider = (exported: unknown) => {
    const mod = exported as { MailService?: MailServiceClass; send?: unknown } | null;
    if (!mod) return;
    const proto = mod.MailService?.prototype ?? (typeof mod.send === "function" ? Object.getPrototypeOf(mod) : null);
    if (proto && typeof proto.send === "function" && proto !== Object.prototype) found.add(proto);
  };
  const bases = [process.argv[1] ? resolve(process.argv[1]) : null, join(process.cwd(), "__tracelab__.js")];
  for (const base of bases) {
    if (!base) continue;
    try {
      const req = createRequire(base);
      const path = req.resolve(PACKAGE);
      consider(req(path));
      const cache = req.cache;
      for (const key of Object.keys(cache)) {
        if (MODULE_PATH.test(key) && /[\\/]mail[\\/](index\.js|src[\\/]mail\.js)$/.test(key)) consider(cache[key]?.exports);
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

function record(rec: Recorder, data: Record<string, unknown>, timer: Timer, outcome: { result?: unknown; error?: unknown; failed: boolean }): void {
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
  });
  rec.submit(event, ORIGIN);
}

function patch(proto: MailServiceClass["prototype"]): void {
  const existing = proto.send;
  if (existing[ORIGINAL]) return;
  const original = existing;
  const send: SendFn = function (this: unknown, ...args: unknown[]): unknown {
    const rec = current();
    const data = args[0];
    // An array is sent as one call per message, each through this wrapper again.
    if (rec === null || !data || typeof data !== "object" || Array.isArray(data)) {
      return original.apply(this, args);
    }
    const timer = new Timer();
    let result: unknown;
    try {
      result = runSuppressingHttp(() => original.apply(this, args));
    } catch (err) {
      rec.safely(ORIGIN, () => record(rec, data as Record<string, unknown>, timer, { error: err, failed: true }));
      throw err;
    }
    if (result && typeof (result as PromiseLike<unknown>).then === "function") {
      return (result as Promise<unknown>).then(
        (value) => {
          rec.safely(ORIGIN, () => record(rec, data as Record<string, unknown>, timer, { result: value, failed: false }));
          return value;
        },
        (err: unknown) => {
          rec.safely(ORIGIN, () => record(rec, data as Record<string, unknown>, timer, { error: err, failed: true }));
          throw err;
        },
      );
    }
    rec.safely(ORIGIN, () => record(rec, data as Record<string, unknown>, timer, { result, failed: false }));
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

