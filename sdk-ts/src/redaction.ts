/**
 * Redaction: secrets are replaced by a fixed marker before an event leaves the process.
 *
 * A line-by-line port of the Python SDK's `tracelab/sdk/redaction.py`, with two kinds of rules:
 * by *name* (headers, query parameters, JSON and form fields are judged by the words they are
 * made of, so `access_token`, `stripeToken` and `card[number]` are secrets while `max_tokens`
 * and `total_tokens` are not) and by *shape* (`shapes.ts`: `sk_live_…`, `AKIA…`, JWTs, …
 * anywhere in any string). The marker is a constant, never a hash. This module must not
 * perform I/O or know about events; it only transforms names and values.
 */

import { MARKER, TAIL_RULES, redactShapes } from "./shapes.js";

export { MARKER };

const SECRET_HEADERS = new Set([
  "authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "api-key",
  "x-amz-security-token", "ocp-apim-subscription-key", "x-goog-api-key", "stripe-key",
  "x-auth-token", "x-auth-key", "x-functions-key", "private-token", "x-vault-token",
]);
const SECRET_WORDS = new Set([
  "password", "passwd", "pwd", "secret", "token", "authorization", "apikey", "signature",
  "credential", "credentials",
]);
const SECRET_WORD_PAIRS = new Set([
  "api key", "access key", "private key", "client secret", "card number", "secret key",
  "session token",
]);
const WORD = /[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+/g;
const CACHE_LIMIT = 4096;
const MAX_DEPTH = 200;

// Name/value pairs inside free text: JSON members and key=value pairs. Used for text bodies
// and for the prefix of a truncated body, where the structure cannot be parsed whole.
const JSON_MEMBER =
  /"((?:[^"\\]|\\.){1,200})"(\s*:\s*)("(?:[^"\\]|\\.)*"|-?[\d.eE+-]+|true|false|null)/g;
const KEY_VALUE = /(?<![\w.\-[\]])([\w.\-[\]]{1,200})(=)([^&\s"',;]*)/g;
// A JSON string member left open at the very end of a cut text: `"password": "hunter2-SUP`.
const OPEN_MEMBER = /"((?:[^"\\]|\\.){1,200})"(\s*:\s*")((?:[^"\\]|\\.)*\\?)$/;

/** `X-Api-Key` -> ["x", "api", "key"]; `stripeToken` -> ["stripe", "token"]. */
export function nameWords(name: string): string[] {
  return (name.match(WORD) ?? []).map((w) => w.toLowerCase());
}

export type HeaderInput =
  | Record<string, unknown>
  | Iterable<readonly [unknown, unknown]>
  | null
  | undefined;

function unquotePlus(text: string): string {
  try {
    return decodeURIComponent(text.replace(/\+/g, " "));
  } catch {
    return text;
  }
}

/** Decides which names are secret and replaces their values by `MARKER`. */
export class Redactor {
  readonly patterns: readonly RegExp[];
  private readonly decisions = new Map<string, boolean>();

  constructor(patterns: readonly RegExp[] = []) {
    this.patterns = patterns;
  }

  isSecret(name: string): boolean {
    let decision = this.decisions.get(name);
    if (decision === undefined) {
      decision = this.judge(name);
      if (this.decisions.size >= CACHE_LIMIT) this.decisions.clear();
      this.decisions.set(name, decision);
    }
    return decision;
  }

  private judge(name: string): boolean {
    if (SECRET_HEADERS.has(name.toLowerCase())) return true;
    const words = nameWords(name);
    // `token` in `promptTokenCount` (Gemini's usage) is a counter, not a secret.
    const counter = (i: number) =>
      words[i] === "token" && (words[i + 1] === "count" || words[i + 1] === "counts");
    if (words.some((w, i) => SECRET_WORDS.has(w) && !counter(i))) return true;
    for (let i = 0; i + 1 < words.length; i++) {
      if (SECRET_WORD_PAIRS.has(`${words[i]} ${words[i + 1]}`)) return true;
    }
    return this.patterns.some((p) => {
      p.lastIndex = 0;
      return p.test(name);
    });
  }

  /** A redacted copy of headers; repeated names are joined with ", " as HTTP allows. */
  headers(items: HeaderInput): Record<string, string> {
    const out: Record<string, string> = {};
    if (items == null) return out;
    const pairs: Iterable<readonly [unknown, unknown]> =
      typeof (items as Iterable<unknown>)[Symbol.iterator] === "function"
        ? (items as Iterable<readonly [unknown, unknown]>)
        : Object.entries(items as Record<string, unknown>);
    for (const [rawName, rawValue] of pairs) {
      const name = String(rawName);
      const value = this.isSecret(name)
        ? MARKER
        : redactShapes(Array.isArray(rawValue) ? rawValue.map(String).join(", ") : String(rawValue));
      const previous = Object.prototype.hasOwnProperty.call(out, name) ? out[name] : undefined;
      out[name] = previous === undefined ? value : `${previous}, ${value}`;
    }
    return out;
  }

  /** Redacts secret query parameters, the password of `user:password@host` and shapes. */
  url(url: string): string {
    url = redactShapes(url);
    if (!url.includes("?") && !url.includes("@")) return url;
    let [base, sep, query] = partition(url, "?");
    const [q, hashSep, fragment] = partition(query, "#");
    query = q;
    const [scheme, ssep, rest] = partition(base, "://");
    if (ssep) {
      let [netloc, slash, path] = partition(rest, "/");
      const [userinfo, at, hostport] = rpartition(netloc, "@");
      if (at && userinfo.includes(":") && partition(userinfo, ":")[2] !== MARKER) {
        netloc = `${partition(userinfo, ":")[0]}:${MARKER}@${hostport}`;
      }
      base = `${scheme}://${netloc}${slash}${path}`;
    }
    if (sep) query = this.form(query);
    return `${base}${sep}${query}${hashSep}${fragment}`;
  }

  /** `a=1&password=x` -> `a=1&password=[REDACTED]`, keeping the original encoding. */
  form(text: string): string {
    text = redactShapes(text);
    const parts = text.split("&");
    let changed = false;
    for (let i = 0; i < parts.length; i++) {
      const [name, eq] = partition(parts[i], "=");
      if (eq && this.isSecret(unquotePlus(name))) {
        parts[i] = `${name}=${MARKER}`;
        changed = true;
      }
    }
    return changed ? parts.join("&") : text;
  }

  /** Redacts secret members at any depth, in place (callers pass values they own). */
  value(obj: unknown, depth = 0): unknown {
    if (depth > MAX_DEPTH) return "[TRUNCATED: nested deeper than 200 levels]";
    if (Array.isArray(obj)) {
      for (let i = 0; i < obj.length; i++) {
        const member = obj[i];
        if (member !== null && typeof member === "object") obj[i] = this.value(member, depth + 1);
      }
      return obj;
    }
    if (obj !== null && typeof obj === "object") {
      const record = obj as Record<string, unknown>;
      for (const key of Object.keys(record)) {
        const member = record[key];
        if (this.isSecret(key)) {
          if (member !== null) record[key] = MARKER;
        } else if (member !== null && typeof member === "object") {
          record[key] = this.value(member, depth + 1);
        }
      }
      return obj;
    }
    return obj;
  }

  /** Redaction of free text: JSON members and key=value pairs by name, shapes anywhere. */
  text(text: string): string {
    if (text.includes('"')) {
      text = text.replace(JSON_MEMBER, (whole: string, name: string, colon: string) =>
        this.isSecret(name) ? `"${name}"${colon}"${MARKER}"` : whole);
    }
    if (text.includes("=")) {
      text = text.replace(KEY_VALUE, (whole: string, name: string) =>
        this.isSecret(name) ? `${name}=${MARKER}` : whole);
    }
    return redactShapes(text);
  }

  /**
   * `text` for the first bytes of a longer text: also what was cut off in mid-value. A JSON
   * string left open at the end (`"password": "hunt`), a credential prefix (`sk_live_51F`,
   * `eyJhbGci`), a `Bearer` credential or a URL password at the very end are redacted even
   * though they are incomplete: the full value would have been.
   */
  cut(text: string): string {
    text = this.text(text);
    const open = OPEN_MEMBER.exec(text);
    if (open && open[3] !== MARKER && this.isSecret(open[1])) {
      text = text.slice(0, open.index + open[0].length - open[3].length) + MARKER;
    }
    const tail = TAIL_RULES.exec(text);
    if (tail) {
      const group = tail[2] !== undefined ? 2 : tail[1] !== undefined ? 1 : 0;
      const secret = tail[group];
      if (secret !== MARKER && !secret.startsWith(MARKER)) {
        const start = tail.index + (group === 0 ? 0 : tail[0].length - secret.length);
        text = text.slice(0, start) + MARKER;
      }
    }
    return text;
  }

  /** Replace secret-shaped parts of every string in a parsed JSON value, in place. */
  shapesIn(obj: unknown, depth = 0): unknown {
    if (typeof obj === "string") return redactShapes(obj);
    if (depth > MAX_DEPTH || obj === null || typeof obj !== "object") return obj;
    if (Array.isArray(obj)) {
      for (let i = 0; i < obj.length; i++) obj[i] = this.shapesIn(obj[i], depth + 1);
    } else {
      const record = obj as Record<string, unknown>;
      for (const key of Object.keys(record)) record[key] = this.shapesIn(record[key], depth + 1);
    }
    return obj;
  }
}

/** Python's str.partition: [head, sep, tail], with sep "" when absent. */
export function partition(text: string, sep: string): [string, string, string] {
  const i = text.indexOf(sep);
  return i < 0 ? [text, "", ""] : [text.slice(0, i), sep, text.slice(i + sep.length)];
}

/** Python's str.rpartition: ["", "", text] when absent. */
export function rpartition(text: string, sep: string): [string, string, string] {
  const i = text.lastIndexOf(sep);
  return i < 0 ? ["", "", text] : [text.slice(0, i), sep, text.slice(i + sep.length)];
}
