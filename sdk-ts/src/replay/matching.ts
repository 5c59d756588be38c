/**
 * The replay key: which recorded call answers a live one. A port of the Python SDK's
 * `tracelab/replay/matching.py` that reproduces its key text byte for byte (canonical JSON:
 * keys sorted by code point, compact, numbers as JavaScript writes them); both are tested
 * against the shared corpus `spec/matching/`, so a recording made by one SDK is matched the
 * same way by the other and by the replay proxy.
 *
 * The key reads the request as STORED (redacted, bodies encoded by the payload rules): the
 * live request is turned into that shape first (`httpRequestView` in capture.ts), so a
 * recording holding `[REDACTED]` matches the live call carrying the secret.
 */
import { httpTarget, llmProvider } from "../capture.js";

/** What the key leaves out (`ignore` rules) and which request headers it adds (`headers`). */
export interface MatchOptions {
  /** `body:$.metadata.request_id`, `query:ts`, `header:x-req-id`. */
  readonly ignore: readonly string[];
  /** Header names added to the key (compared lower-case). */
  readonly headers: readonly string[];
}

export const DEFAULT_OPTIONS: MatchOptions = Object.freeze({ ignore: [], headers: [] });

/** Top-level members of an LLM request body that do not change the answer. */
export const LLM_IGNORED_FIELDS: ReadonlySet<string> = new Set([
  "user", "stream_options", "metadata", "store", "safety_identifier", "prompt_cache_key",
]);
const DEFAULT_PORTS: Record<string, number> = { http: 80, https: 443, ws: 80, wss: 443 };
const STAR = Symbol("*");
type Step = string | number | typeof STAR;
const GONE = Symbol("gone");
const PATH_TOKEN = /\.([^.[\]]+)|\[(\*|\d+)\]|\['((?:[^'\\]|\\.)*)'\]|\["((?:[^"\\]|\\.)*)"\]/y;
const BOUNDARY = /^[0-9A-Za-z'()+_,./:=?-]{1,70}$/;
const BOUNDARY_PARAM = /boundary\s*=\s*(?:"([^"]{1,70})"|([^\s;,"]{1,70}))/gi;
const MAX_SHOWN = 60;

function isRecord(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

// -- ordering and canonical JSON -------------------------------------------------------------

/** UTF-16 code units reordered so that comparing them compares code points. */
const unit = (u: number): number => (u >= 0xd800 && u <= 0xdfff ? u + 0x2000 : u >= 0xe000 ? u - 0x800 : u);

/** Strings compared by code point (Python's order), not by UTF-16 unit. */
export function compareCodePoints(a: string, b: string): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const x = a.charCodeAt(i);
    const y = b.charCodeAt(i);
    if (x !== y) return unit(x) - unit(y);
  }
  return a.length - b.length;
}

function comparePairs(a: readonly string[], b: readonly string[]): number {
  return compareCodePoints(a[0], b[0]) || compareCodePoints(a[1], b[1]);
}

/** Compact JSON, object keys sorted by code point, numbers as JavaScript writes them. */
export function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map((v) => canonicalJson(v === undefined ? null : v)).join(",")}]`;
  if (isRecord(value)) {
    const keys = Object.keys(value).filter((k) => value[k] !== undefined).sort(compareCodePoints);
    return `{${keys.map((k) => `${JSON.stringify(k)}:${canonicalJson(value[k])}`).join(",")}}`;
  }
  return JSON.stringify(value ?? null) ?? "null";
}

// -- ignore rules ------------------------------------------------------------------------------

/** The rule in its normal form (`header:` names lower-cased); throws when malformed. */
export function parseIgnore(rule: string): string {
  if (typeof rule !== "string") {
    throw new Error(`match-ignore rule ${JSON.stringify(rule)}: expected a string such as 'body:$.metadata.request_id', 'query:ts' or 'header:x-request-id'`);
  }
  const m = /^(body|query|header):([\s\S]*)$/.exec(rule.trim());
  if (!m) {
    throw new Error(`match-ignore rule ${JSON.stringify(rule)}: expected 'body:$.json.path', 'query:NAME' or 'header:NAME' (e.g. 'body:$.metadata.request_id', 'query:ts', 'header:x-request-id')`);
  }
  const part = m[1];
  const arg = m[2].trim();
  if (!arg) throw new Error(`match-ignore rule ${JSON.stringify(rule)}: the ${part} name is empty`);
  if (part === "body") {
    parsePath(arg, rule);
    return `body:${arg}`;
  }
  return part === "header" ? `header:${arg.toLowerCase()}` : `query:${arg}`;
}

function parsePath(path: string, rule: string): Step[] {
  if (!path.startsWith("$")) {
    throw new Error(`match-ignore rule ${JSON.stringify(rule)}: a body path starts with '$' (e.g. 'body:$.metadata.request_id')`);
  }
  const steps: Step[] = [];
  let at = 1;
  while (at < path.length) {
    PATH_TOKEN.lastIndex = at;
    const m = PATH_TOKEN.exec(path);
    if (!m) {
      throw new Error(`match-ignore rule ${JSON.stringify(rule)}: cannot read the JSON path at ${JSON.stringify(path.slice(at))}; use .name, [0], [*] or ['name']`);
    }
    const [, name, index, quoted1, quoted2] = m;
    if (name !== undefined) steps.push(name === "*" ? STAR : name);
    else if (index !== undefined) steps.push(index === "*" ? STAR : Number(index));
    else if (quoted1 !== undefined) steps.push(quoted1.replace(/\\([\s\S])/g, "$1"));
    else {
      try { // ["name"] is a JSON string: \uXXXX escapes work
        steps.push(JSON.parse(`"${quoted2}"`) as string);
      } catch {
        throw new Error(`match-ignore rule ${JSON.stringify(rule)}: ${path.slice(at, PATH_TOKEN.lastIndex)} is not a JSON string`);
      }
    }
    at = PATH_TOKEN.lastIndex;
  }
  return steps;
}

interface Rules {
  body: Step[][];
  query: Set<string>;
  headers: string[];
}

function rulesOf(options: MatchOptions): Rules {
  const body: Step[][] = [];
  const query = new Set<string>();
  const ignored = new Set<string>();
  for (const rule of options.ignore) {
    const normal = parseIgnore(rule);
    const i = normal.indexOf(":");
    const part = normal.slice(0, i);
    const arg = normal.slice(i + 1);
    if (part === "body") body.push(parsePath(arg, rule));
    else if (part === "query") query.add(arg);
    else ignored.add(arg);
  }
  const names = [...new Set(options.headers.map((h) => h.trim().toLowerCase()).filter((h) => h && !ignored.has(h)))];
  return { body, query, headers: names.sort(compareCodePoints) };
}

/** A copy of `value` without what `steps` points at. */
function drop(value: unknown, steps: readonly Step[]): unknown {
  if (!steps.length) return GONE;
  const [step, ...rest] = steps;
  if (isRecord(value)) {
    let names: string[];
    if (step === STAR) names = Object.keys(value);
    else if (typeof step === "string" && Object.prototype.hasOwnProperty.call(value, step)) names = [step];
    else return value;
    const out: Record<string, unknown> = { ...value };
    for (const name of names) {
      const kept = drop(out[name], rest);
      if (kept === GONE) delete out[name];
      else out[name] = kept;
    }
    return out;
  }
  if (Array.isArray(value)) {
    let indexes: number[];
    if (step === STAR) indexes = value.map((_, i) => i);
    else if (typeof step === "number" && step < value.length) indexes = [step];
    else return value;
    const out = [...value];
    const gone = new Set<number>();
    for (const i of indexes) {
      const kept = drop(out[i], rest);
      if (kept === GONE) gone.add(i);
      else out[i] = kept;
    }
    return gone.size ? out.filter((_, i) => !gone.has(i)) : out;
  }
  return value;
}

// -- URLs and forms as Python reads them -------------------------------------------------------

/** `%XX` sequences decoded as UTF-8 (invalid bytes replaced), other text as it is. */
function unquote(text: string): string {
  if (!text.includes("%")) return text;
  return text.replace(/(?:%[0-9A-Fa-f]{2})+/g, (run) => Buffer.from(run.replace(/%/g, ""), "hex").toString("utf8"));
}

/** `urllib.parse.parse_qsl(text, keep_blank_values=True)`. */
function parseQsl(text: string): Array<[string, string]> {
  const out: Array<[string, string]> = [];
  for (const pair of text.split("&")) {
    if (!pair) continue;
    const i = pair.indexOf("=");
    const name = i < 0 ? pair : pair.slice(0, i);
    const value = i < 0 ? "" : pair.slice(i + 1);
    out.push([unquote(name.replace(/\+/g, " ")), unquote(value.replace(/\+/g, " "))]);
  }
  return out;
}

interface SplitUrl { scheme: string; netloc: string; path: string; query: string; hostname: string; port: number | null }

/** `urllib.parse.urlsplit` with `.hostname` and `.port` (an invalid port is null). */
function urlsplit(raw: string): SplitUrl {
  // Python strips leading C0 controls and spaces only, and drops tabs and newlines anywhere.
  const url = raw.replace(/^[\x00-\x20]+/, "").replace(/[\t\r\n]/g, "");
  let rest = url;
  let scheme = "";
  const s = /^([A-Za-z][A-Za-z0-9+.-]*):/.exec(rest);
  if (s) {
    scheme = s[1].toLowerCase();
    rest = rest.slice(s[0].length);
  }
  let netloc = "";
  if (rest.startsWith("//")) {
    const end = rest.slice(2).search(/[/?#]/);
    netloc = end < 0 ? rest.slice(2) : rest.slice(2, 2 + end);
    rest = end < 0 ? "" : rest.slice(2 + end);
  }
  const hash = rest.indexOf("#");
  if (hash >= 0) rest = rest.slice(0, hash);
  const q = rest.indexOf("?");
  const path = q < 0 ? rest : rest.slice(0, q);
  const query = q < 0 ? "" : rest.slice(q + 1);
  const hostinfo = netloc.slice(netloc.lastIndexOf("@") + 1);
  let hostname: string;
  let portText: string;
  const open = hostinfo.indexOf("[");
  if (open >= 0) {
    const bracketed = hostinfo.slice(open + 1);
    const close = bracketed.indexOf("]");
    hostname = close < 0 ? bracketed : bracketed.slice(0, close);
    const after = close < 0 ? "" : bracketed.slice(close + 1);
    const colon = after.indexOf(":");
    portText = colon < 0 ? "" : after.slice(colon + 1);
  } else {
    const colon = hostinfo.indexOf(":");
    hostname = colon < 0 ? hostinfo : hostinfo.slice(0, colon);
    portText = colon < 0 ? "" : hostinfo.slice(colon + 1);
  }
  let port: number | null = null;
  if (/^[0-9]+$/.test(portText) && Number(portText) <= 65535) port = Number(portText);
  return { scheme, netloc, path, query, hostname: hostname.toLowerCase(), port };
}

// -- bodies ------------------------------------------------------------------------------------

function header(headers: Record<string, unknown>, name: string): string | null {
  const values = Object.entries(headers).filter(([k]) => k.toLowerCase() === name).map(([, v]) => String(v));
  return values.length ? values.join(", ") : null;
}

function closingBoundaries(text: string): string[] {
  const found: string[] = [];
  for (let line of text.split("\n")) {
    if (line.endsWith("\r")) line = line.slice(0, -1);
    line = line.replace(/[ \t]+$/, "");
    if (line.length >= 5 && line.startsWith("--") && line.endsWith("--")) {
      const middle = line.slice(2, -2);
      if (BOUNDARY.test(middle) && /[0-9A-Za-z]/.test(middle)) found.push(middle);
    }
  }
  return found;
}

function byLengthThenText(boundaries: Iterable<string>): string[] {
  return [...new Set(boundaries)].sort((a, b) => b.length - a.length || compareCodePoints(a, b));
}

function withoutBoundaries(text: string, boundaries: Iterable<string>): string {
  let out = text;
  for (const boundary of byLengthThenText(boundaries)) {
    out = out.split(`--${boundary}`).join("--");
    out = out.split(`boundary="${boundary}"`).join('boundary=""');
  }
  return out;
}

function headerBoundaries(contentType: string): string[] {
  return [...contentType.matchAll(BOUNDARY_PARAM)].map((m) => m[1] ?? m[2]);
}

function stripBoundaries(text: string, contentType: string): string {
  if (!contentType.toLowerCase().startsWith("multipart/")) return text;
  return withoutBoundaries(text, [...headerBoundaries(contentType), ...closingBoundaries(text)]);
}

function markerWithoutBoundaries(marker: Record<string, unknown>, contentType: string): Record<string, unknown> {
  if (marker.$tracelab === "binary" && typeof marker.base64 === "string") {
    // Not a marker we wrote (not strict base64): matched as it is.
    if (marker.base64.length % 4 !== 0 || !/^[A-Za-z0-9+/]*={0,2}$/.test(marker.base64)) return marker;
    let raw = Buffer.from(marker.base64, "base64");
    for (const boundary of byLengthThenText(headerBoundaries(contentType))) {
      const needle = Buffer.from(`--${boundary}`, "utf8");
      const pieces: Buffer[] = [];
      let at = 0;
      for (let i = raw.indexOf(needle); i >= 0; i = raw.indexOf(needle, at)) {
        pieces.push(raw.subarray(at, i), Buffer.from("--"));
        at = i + needle.length;
      }
      pieces.push(raw.subarray(at));
      raw = Buffer.concat(pieces);
    }
    return { ...marker, size: raw.length, base64: raw.toString("base64") };
  }
  if (marker.$tracelab === "truncated" && typeof marker.data === "string" && marker.encoding === "text") {
    return { ...marker, data: stripBoundaries(marker.data, contentType) };
  }
  return marker;
}

/** The body's key: null, {"json": v}, {"text": s} or {"form": [[name, value], ...]}. */
function httpBody(body: unknown, contentType: string | null, rules: Rules): unknown {
  const ctype = contentType ?? "";
  const lowered = ctype.toLowerCase();
  let canonical: Record<string, unknown> | null;
  if (body === null || body === undefined) canonical = null;
  else if (typeof body === "string" && lowered.includes("x-www-form-urlencoded")) {
    canonical = { form: parseQsl(body).map(([k, v]) => [k, v]).sort(comparePairs) };
  } else if (typeof body === "string") canonical = { text: stripBoundaries(body, ctype) };
  else if (lowered.startsWith("multipart/") && isRecord(body)) canonical = { json: markerWithoutBoundaries(body, ctype) };
  else canonical = { json: body };
  for (const steps of rules.body) {
    if (!steps.length) return GONE;
    if (canonical === null) continue;
    if ("form" in canonical) {
      if (steps.length === 1) {
        const name = steps[0];
        canonical = { form: (canonical.form as string[][]).filter((f) => name !== STAR && f[0] !== name) };
      }
    } else if ("json" in canonical) {
      canonical = { json: drop(canonical.json, steps) };
    }
  }
  return canonical;
}

function applyBodyRules(value: unknown, rules: Rules): unknown {
  let out = value;
  for (const steps of rules.body) {
    out = drop(out, steps);
    if (out === GONE) break;
  }
  return out;
}

function sortedAddresses(value: unknown): unknown {
  if (Array.isArray(value)) return value.map((v) => String(v)).sort(compareCodePoints);
  return typeof value === "string" ? [value] : value ?? null;
}

/** A mail body with MIME boundaries found by their closers, in every string of it (SES keeps a raw message in `params`). */
function emailBody(body: unknown): unknown {
  if (typeof body === "string") return body.includes("--") ? withoutBoundaries(body, closingBoundaries(body)) : body;
  if (Array.isArray(body)) return body.map(emailBody);
  if (isRecord(body)) return Object.fromEntries(Object.entries(body).map(([k, v]) => [k, emailBody(v)]));
  return body;
}

function withoutGone(parts: Record<string, unknown>): Record<string, unknown> {
  for (const [k, v] of Object.entries(parts)) if (v === GONE) delete parts[k];
  return parts;
}

// -- the key -----------------------------------------------------------------------------------

/** The key as an object (what `requestKey` serialises); a miss diffs these. */
export function keyParts(event: Record<string, unknown>, options: MatchOptions = DEFAULT_OPTIONS): Record<string, unknown> {
  const rules = rulesOf(options);
  const kind = String(event.kind || "");
  const request = isRecord(event.request) ? event.request : {};
  if (typeof request.url === "string" && typeof request.method === "string") return httpParts(event, kind, request, rules);
  const target = String(event.target || "");
  const endpoint = String(event.endpoint || "");
  if (kind === "email") {
    const body = "body" in request ? request.body : request.params ?? null;
    return withoutGone({
      kind: "email", target, endpoint,
      from: request.from ?? null, to: sortedAddresses(request.to),
      cc: sortedAddresses(request.cc), bcc: sortedAddresses(request.bcc),
      subject: request.subject ?? null,
      body: applyBodyRules(emailBody(body ?? null), rules),
    });
  }
  if (kind === "sms") {
    return withoutGone({ kind: "sms", target, endpoint, to: request.to ?? null, from: request.from ?? null,
      body: applyBodyRules(request.body ?? null, rules) });
  }
  return withoutGone({ kind, target, endpoint, request: applyBodyRules(request, rules) });
}

function httpParts(event: Record<string, unknown>, kind: string, request: Record<string, unknown>, rules: Rules): Record<string, unknown> {
  const split = urlsplit(request.url as string);
  let host = split.hostname.replace(/\.+$/, "");
  let port = split.port;
  if (!host) {
    const target = String(event.target || "");
    let tail = "";
    if ((target.match(/:/g) ?? []).length === 1) {
      const i = target.lastIndexOf(":");
      host = target.slice(0, i);
      tail = target.slice(i + 1);
    } else host = target;
    host = (host || target).toLowerCase();
    port = /^[0-9]+$/.test(tail) ? Number(tail) : null;
  }
  if (port === null) port = DEFAULT_PORTS[split.scheme] ?? null;
  const path = split.path || "/";
  let body = request.body ?? null;
  const llm = llmProvider(host, path, body) !== null;
  if (llm && isRecord(body) && !("$tracelab" in body)) {
    const picked: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(body)) if (!LLM_IGNORED_FIELDS.has(k)) picked[k] = v;
    body = picked;
  }
  const query = parseQsl(split.query).filter(([k]) => !rules.query.has(k)).sort(comparePairs);
  const headers = isRecord(request.headers) ? request.headers : {};
  const parts: Record<string, unknown> = {
    kind: llm ? "llm" : ["http", "llm", ""].includes(kind) ? "http" : kind,
    method: (request.method as string).toUpperCase(),
    scheme: split.scheme, host, port, path,
    query: query.map(([k, v]) => [k, v]),
    body: httpBody(body, header(headers, "content-type"), rules),
  };
  if (rules.headers.length) {
    const chosen: Record<string, unknown> = {};
    for (const name of rules.headers) chosen[name] = header(headers, name);
    parts.headers = chosen;
  }
  return withoutGone(parts);
}

/** The one key of a call (a TraceEvent, or the same shape without timing). */
export function requestKey(event: Record<string, unknown>, options: MatchOptions = DEFAULT_OPTIONS): string {
  return canonicalJson(keyParts(event, options));
}

// -- describing calls and their differences ----------------------------------------------------

/** `POST api.stripe.com /v1/charges` for HTTP, `<target> <endpoint>` for the rest. */
export function describe(event: Record<string, unknown>): string {
  const request = event.request;
  if (isRecord(request) && typeof request.url === "string" && typeof request.method === "string") {
    const split = urlsplit(request.url);
    const host = split.netloc ? httpTarget(split.scheme, split.netloc) : String(event.target || "unknown");
    return `${request.method.toUpperCase()} ${host} ${split.path || "/"}`;
  }
  return `${String(event.target || "unknown")} ${String(event.endpoint || "unknown")}`;
}

/** A string as Python's `repr` writes it (the Python matcher's messages use it). */
export function pyRepr(text: string): string {
  const quote = text.includes("'") && !text.includes('"') ? '"' : "'";
  let out = quote;
  for (const ch of text) {
    const cp = ch.codePointAt(0) as number;
    if (ch === "\\" || ch === quote) out += `\\${ch}`;
    else if (ch === "\n") out += "\\n";
    else if (ch === "\r") out += "\\r";
    else if (ch === "\t") out += "\\t";
    else if (ch !== " " && /^[\p{C}\p{Z}]$/u.test(ch)) {
      out += cp < 0x100 ? `\\x${cp.toString(16).padStart(2, "0")}`
        : cp < 0x10000 ? `\\u${cp.toString(16).padStart(4, "0")}` : `\\U${cp.toString(16).padStart(8, "0")}`;
    } else out += ch;
  }
  return out + quote;
}

/** At most MAX_SHOWN code points of a value, as the Python matcher shows it. */
function show(value: unknown): string {
  const text = [...(typeof value === "string" ? pyRepr(value) : canonicalJson(value))];
  return text.length <= MAX_SHOWN ? text.join("") : `${text.slice(0, MAX_SHOWN - 1).join("")}…`;
}

function memberPath(path: string, name: string): string {
  return /^[A-Za-z_$][\p{L}\p{N}_$]*$/u.test(name) ? `${path}.${name}` : `${path}[${canonicalJson(name)}]`;
}

/** `$.items[0].qty: 3 != 2` (live first), `$.note: missing in the live call`. */
export function jsonDifferences(live: unknown, recorded: unknown, path = "$", out: string[] = []): string[] {
  if (isRecord(live) && isRecord(recorded)) {
    for (const name of [...new Set([...Object.keys(live), ...Object.keys(recorded)])].sort(compareCodePoints)) {
      const where = memberPath(path, name);
      if (!(name in live)) out.push(`${where}: missing in the live call`);
      else if (!(name in recorded)) out.push(`${where}: not in the recording`);
      else jsonDifferences(live[name], recorded[name], where, out);
    }
  } else if (Array.isArray(live) && Array.isArray(recorded)) {
    for (let i = 0; i < Math.min(live.length, recorded.length); i++) jsonDifferences(live[i], recorded[i], `${path}[${i}]`, out);
    if (live.length !== recorded.length) out.push(`${path}: ${live.length} items != ${recorded.length} items`);
  } else if (canonicalJson(live) !== canonicalJson(recorded)) {
    out.push(`${path}: ${show(live)} != ${show(recorded)}`);
  }
  return out;
}

function pairsDifferences(label: string, live: string[][], recorded: string[][]): string[] {
  const grouped = (pairs: string[][]) => {
    const out = new Map<string, string[]>();
    for (const [name, value] of pairs) out.set(name, [...(out.get(name) ?? []), value]);
    return out;
  };
  const a = grouped(live);
  const b = grouped(recorded);
  const out: string[] = [];
  for (const name of [...new Set([...a.keys(), ...b.keys()])].sort(compareCodePoints)) {
    const x = a.get(name);
    const y = b.get(name);
    if (!x) out.push(`${label} ${name}: missing in the live call`);
    else if (!y) out.push(`${label} ${name}: not in the recording`);
    else if (canonicalJson(x) !== canonicalJson(y)) {
      out.push(`${label} ${name}: ${show(x.length === 1 ? x[0] : x)} != ${show(y.length === 1 ? y[0] : y)}`);
    }
  }
  return out;
}

function textDifference(label: string, liveText: string, recordedText: string): string {
  const live = [...liveText]; // code points, as Python counts characters
  const recorded = [...recordedText];
  let at = 0;
  while (at < live.length && at < recorded.length && live[at] === recorded[at]) at++;
  const start = Math.max(0, at - 20);
  return `${label}: differs at character ${at}: ${show(live.slice(start, start + 40).join(""))} != ` +
    `${show(recorded.slice(start, start + 40).join(""))} (lengths ${live.length} and ${recorded.length})`;
}

const PART_ORDER = ["kind", "method", "scheme", "host", "port", "path", "query", "headers", "target", "endpoint",
  "from", "to", "cc", "bcc", "subject", "body", "request"];

const order = (part: string): number => (PART_ORDER.includes(part) ? PART_ORDER.indexOf(part) : 99);

/** Which parts of two keys (`keyParts`) differ, part by part, live value first. */
export function differences(live: Record<string, unknown>, recorded: Record<string, unknown>): string[] {
  const out: string[] = [];
  const parts = [...new Set([...Object.keys(live), ...Object.keys(recorded)])]
    .sort((x, y) => order(x) - order(y));
  for (const part of parts) {
    const a = live[part] ?? null;
    const b = recorded[part] ?? null;
    if (canonicalJson(a) === canonicalJson(b)) continue;
    const body = part === "body" || part === "request";
    if (part === "query") out.push(...pairsDifferences("query", (a ?? []) as string[][], (b ?? []) as string[][]));
    else if (part === "headers") {
      const x = (isRecord(a) ? a : {}) as Record<string, unknown>;
      const y = (isRecord(b) ? b : {}) as Record<string, unknown>;
      for (const name of [...new Set([...Object.keys(x), ...Object.keys(y)])].sort(compareCodePoints)) {
        if (canonicalJson(x[name] ?? null) !== canonicalJson(y[name] ?? null)) {
          out.push(`header ${name}: ${show(x[name] ?? null)} != ${show(y[name] ?? null)}`);
        }
      }
    }
    else if (body && isRecord(a) && isRecord(b) && "method" in live && Object.keys(a).length === 1 &&
      canonicalJson(Object.keys(a)) === canonicalJson(Object.keys(b))) {
      const form = Object.keys(a)[0];
      if (form === "json") out.push(...jsonDifferences(a.json, b.json).map((d) => `${part} ${d}`));
      else if (form === "form") out.push(...pairsDifferences("body field", a.form as string[][], b.form as string[][]));
      else out.push(textDifference(part, String(a.text), String(b.text)));
    } else if (body && ((isRecord(a) && isRecord(b)) || (Array.isArray(a) && Array.isArray(b)))) {
      out.push(...jsonDifferences(a, b).map((d) => `${part} ${d}`));
    } else if (body && typeof a === "string" && typeof b === "string") {
      out.push(textDifference(part, a, b));
    } else if (body && (a === null) !== (b === null)) {
      out.push(`${part}: ${a === null ? "none in the live call" : show(a)} != ${b === null ? "none in the recording" : show(b)}`);
    } else {
      out.push(`${part}: ${show(a)} != ${show(b)}`);
    }
  }
  return out;
}

/** Where a call sits, to find candidates for the closest recorded call. */
export function locator(parts: Record<string, unknown>): string {
  return "method" in parts
    ? canonicalJson([parts.kind, parts.method, parts.host, parts.port, parts.path])
    : canonicalJson([parts.kind, parts.target, parts.endpoint]);
}

export function site(parts: Record<string, unknown>): string {
  return "method" in parts ? canonicalJson(["http", parts.host]) : canonicalJson(["call", parts.target]);
}
