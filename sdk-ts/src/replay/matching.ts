/**
 * The replay key: which recorded call answers a live one. A port of the Python SDK's
 * `tracelab/replay/matching.py`; both are tested against the shared corpus `spec/matching/`,
 * so a recording made by one SDK is matched the same way by the other.
 *
 * The key reads the request as STORED (redacted, bodies encoded by the payload rules): the
 * live request is turned into that shape first (`httpRequestView` in capture.ts), so a
 * recording holding `[REDACTED]` matches the live call carrying the secret.
 */

/** Options of the key: what to leave out, which headers to add. */
export interface MatchOptions {
  /** `body:$.metadata.request_id`, `query:ts`, `header:x-req-id`. */
  readonly ignore: readonly string[];
  /** Header names added to the key (compared lower-case). */
  readonly headers: readonly string[];
}

export const DEFAULT_OPTIONS: MatchOptions = Object.freeze({ ignore: [], headers: [] });

type PathStep = string | number;

/** Sampling parameters of an LLM request that are part of its key. */
const LLM_FIELDS = [
  "model", "messages", "input", "prompt", "system", "tools", "tool_choice", "functions",
  "temperature", "top_p", "top_k", "max_tokens", "max_completion_tokens", "max_output_tokens",
  "stop", "stop_sequences", "seed", "n", "presence_penalty", "frequency_penalty",
  "response_format", "stream",
];
const DEFAULT_PORTS: Record<string, string> = { http: "80", https: "443" };

/** A rule checked and normalised; throws an Error saying what a rule looks like. */
export function parseIgnore(rule: string): string {
  const m = /^(body|query|header):(.+)$/.exec(String(rule).trim());
  if (!m) {
    throw new Error(`match-ignore rule ${JSON.stringify(rule)}: expected body:$.json.path, query:NAME or header:NAME`);
  }
  const [, part, rest] = m;
  if (part === "body") {
    parseJsonPath(rest);
    return `body:${rest}`;
  }
  return `${part}:${part === "header" ? rest.toLowerCase() : rest}`;
}

/** `$.a.b[0]["c d"]` as steps; `*` matches any key or index. */
export function parseJsonPath(path: string): PathStep[] {
  if (!path.startsWith("$")) throw new Error(`JSON path ${JSON.stringify(path)} must start with $`);
  const steps: PathStep[] = [];
  const re = /\.([^.[\]]+)|\[(\d+|\*)\]|\[("(?:[^"\\]|\\.)*"|'[^']*')\]/y;
  let i = 1;
  while (i < path.length) {
    re.lastIndex = i;
    const m = re.exec(path);
    if (!m) throw new Error(`JSON path ${JSON.stringify(path)}: cannot read it at character ${i}`);
    if (m[1] !== undefined) steps.push(m[1]);
    else if (m[2] !== undefined) steps.push(m[2] === "*" ? "*" : Number(m[2]));
    else steps.push(m[3].startsWith("'") ? m[3].slice(1, -1) : JSON.parse(m[3]) as string);
    i = re.lastIndex;
  }
  return steps;
}

/** A JSON path for display: `$.items[0].qty`. */
export function formatPath(steps: readonly PathStep[]): string {
  let out = "$";
  for (const step of steps) {
    if (typeof step === "number") out += `[${step}]`;
    else if (/^[A-Za-z_][A-Za-z0-9_-]*$/.test(step)) out += `.${step}`;
    else out += `[${JSON.stringify(step)}]`;
  }
  return out;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

/** A copy of `value` without what `steps` points at. */
function without(value: unknown, steps: readonly PathStep[]): unknown {
  if (steps.length === 0) return undefined;
  const [step, ...rest] = steps;
  if (Array.isArray(value)) {
    const out: unknown[] = [];
    value.forEach((item, i) => {
      if (step === "*" || step === i) {
        const kept = without(item, rest);
        if (kept !== undefined) out.push(kept);
      } else out.push(item);
    });
    return out;
  }
  if (isRecord(value)) {
    const out: Record<string, unknown> = {};
    for (const [key, item] of Object.entries(value)) {
      if (step === "*" || step === key) {
        const kept = without(item, rest);
        if (kept !== undefined) out[key] = kept;
      } else out[key] = item;
    }
    return out;
  }
  return value;
}

/** JSON with object keys sorted, compact: one text per value. */
export function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(",")}]`;
  if (isRecord(value)) {
    const keys = Object.keys(value).sort();
    return `{${keys.map((k) => `${JSON.stringify(k)}:${canonicalJson(value[k])}`).join(",")}}`;
  }
  return JSON.stringify(value ?? null);
}

function header(headers: unknown, name: string): string | null {
  if (!isRecord(headers)) return null;
  for (const [key, value] of Object.entries(headers)) if (key.toLowerCase() === name) return String(value);
  return null;
}

function splitUrl(url: string): { scheme: string; host: string; port: string; path: string; query: string } {
  const m = /^([a-zA-Z][a-zA-Z0-9+.-]*):\/\/([^/?#]*)([^?#]*)(?:\?([^#]*))?/.exec(url);
  if (!m) {
    const p = /^([^?#]*)(?:\?([^#]*))?/.exec(url);
    return { scheme: "", host: "", port: "", path: p?.[1] || "/", query: p?.[2] ?? "" };
  }
  const scheme = m[1].toLowerCase();
  const hostport = m[2].slice(m[2].lastIndexOf("@") + 1).toLowerCase();
  let host = hostport;
  let port = "";
  const bracket = hostport.lastIndexOf("]");
  const colon = hostport.lastIndexOf(":");
  if (colon > bracket) {
    host = hostport.slice(0, colon);
    port = hostport.slice(colon + 1);
  }
  return { scheme, host, port: port || DEFAULT_PORTS[scheme] || "", path: m[3] || "/", query: m[4] ?? "" };
}

function decode(text: string): string {
  try {
    return decodeURIComponent(text.replace(/\+/g, " "));
  } catch {
    return text;
  }
}

/** `a=1&b=2` as sorted [name, value] pairs, decoded. */
function formPairs(text: string): Array<[string, string]> {
  return text.split("&").filter((p) => p !== "").map((pair) => {
    const i = pair.indexOf("=");
    return (i < 0 ? [decode(pair), ""] : [decode(pair.slice(0, i)), decode(pair.slice(i + 1))]) as [string, string];
  }).sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : a[1] < b[1] ? -1 : a[1] > b[1] ? 1 : 0));
}

/** A stored body in canonical form: JSON as is (keys sorted when serialised), form fields sorted. */
function canonicalBody(body: unknown, contentType: string | null): unknown {
  if (typeof body !== "string") return body ?? null;
  const ctype = (contentType ?? "").toLowerCase();
  if (ctype.includes("x-www-form-urlencoded")) return { $form: formPairs(body) };
  const boundary = /multipart\/[^;]*;\s*boundary="?([^";]+)"?/i.exec(contentType ?? "");
  if (boundary) return body.split(boundary[1]).join("BOUNDARY");
  return body;
}

/** The parts of a key by name, in order; `requestKey` is their canonical JSON. */
export function keyParts(event: Record<string, unknown>, options: MatchOptions = DEFAULT_OPTIONS): Record<string, unknown> {
  const kind = String(event.kind ?? "");
  const request = isRecord(event.request) ? event.request : {};
  const ignored = options.ignore.map(parseIgnore);
  const bodyPaths = ignored.filter((r) => r.startsWith("body:")).map((r) => parseJsonPath(r.slice(5)));
  const ignoredQuery = new Set(ignored.filter((r) => r.startsWith("query:")).map((r) => r.slice(6)));
  const ignoredHeaders = new Set(ignored.filter((r) => r.startsWith("header:")).map((r) => r.slice(7)));
  const stripBody = (body: unknown) => bodyPaths.reduce((acc, steps) => without(acc, steps), body);
  if ((kind === "http" || kind === "llm") && typeof request.url === "string") {
    const url = splitUrl(request.url);
    const parts: Record<string, unknown> = {
      kind: "http",
      method: String(request.method ?? "GET").toUpperCase(),
      scheme: url.scheme,
      host: url.host,
      port: url.port,
      path: url.path,
      query: formPairs(url.query).filter(([name]) => !ignoredQuery.has(name)),
    };
    const contentType = header(request.headers, "content-type");
    let body = canonicalBody(request.body, contentType);
    if (kind === "llm" && isRecord(body) && body.$tracelab === undefined) {
      const picked: Record<string, unknown> = {};
      for (const field of LLM_FIELDS) if (field in body) picked[field] = body[field];
      body = picked;
    }
    parts.body = stripBody(body);
    const headers: Record<string, string | null> = {};
    for (const name of options.headers.map((h) => h.toLowerCase()).sort()) {
      if (!ignoredHeaders.has(name)) headers[name] = header(request.headers, name);
    }
    if (Object.keys(headers).length) parts.headers = headers;
    return parts;
  }
  const rest: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(request)) if (key !== "headers") rest[key] = value;
  return { kind, target: String(event.target ?? ""), endpoint: String(event.endpoint ?? ""), request: stripBody(rest) };
}

/** The one key of a call (a TraceEvent, or the same shape without timing). */
export function requestKey(event: Record<string, unknown>, options: MatchOptions = DEFAULT_OPTIONS): string {
  return canonicalJson(keyParts(event, options));
}

const short = (value: unknown): string => {
  const text = canonicalJson(value);
  return text.length > 80 ? `${text.slice(0, 77)}...` : text;
};

/** Where two JSON values differ, as `$.path: recorded != live` lines (at most `limit`). */
export function jsonDifferences(recorded: unknown, live: unknown, prefix: PathStep[] = [], out: string[] = [], limit = 10): string[] {
  if (out.length >= limit) return out;
  if (Array.isArray(recorded) && Array.isArray(live)) {
    const n = Math.max(recorded.length, live.length);
    for (let i = 0; i < n && out.length < limit; i++) {
      if (i >= recorded.length) out.push(`${formatPath([...prefix, i])}: (absent) != ${short(live[i])}`);
      else if (i >= live.length) out.push(`${formatPath([...prefix, i])}: ${short(recorded[i])} != (absent)`);
      else jsonDifferences(recorded[i], live[i], [...prefix, i], out, limit);
    }
    return out;
  }
  if (isRecord(recorded) && isRecord(live)) {
    const keys = [...new Set([...Object.keys(recorded), ...Object.keys(live)])].sort();
    for (const key of keys) {
      if (out.length >= limit) break;
      if (!(key in live)) out.push(`${formatPath([...prefix, key])}: ${short(recorded[key])} != (absent)`);
      else if (!(key in recorded)) out.push(`${formatPath([...prefix, key])}: (absent) != ${short(live[key])}`);
      else jsonDifferences(recorded[key], live[key], [...prefix, key], out, limit);
    }
    return out;
  }
  if (canonicalJson(recorded) !== canonicalJson(live)) {
    out.push(`${formatPath(prefix)}: ${short(recorded)} != ${short(live)}`);
  }
  return out;
}

/** Which parts of two keys differ: `path: /a != /b`, `body $.items[0].qty: 2 != 3`. */
export function partDifferences(recorded: Record<string, unknown>, live: Record<string, unknown>): string[] {
  const out: string[] = [];
  const names = [...new Set([...Object.keys(recorded), ...Object.keys(live)])];
  for (const name of names) {
    const a = recorded[name];
    const b = live[name];
    if (canonicalJson(a) === canonicalJson(b)) continue;
    if ((name === "body" || name === "request") && (isRecord(a) || Array.isArray(a)) && (isRecord(b) || Array.isArray(b))) {
      for (const line of jsonDifferences(a, b)) out.push(`${name} ${line}`);
    } else {
      out.push(`${name}: ${short(a)} != ${short(b)}`);
    }
  }
  return out;
}
