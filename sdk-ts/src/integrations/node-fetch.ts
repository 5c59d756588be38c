/**
 * `node-fetch` (v2 and v3): traced where every node-fetch request goes through, Node's
 * `http.request` / `https.request`, and only for calls made by node-fetch itself.
 *
 * node-fetch v3 is an ES module whose exports cannot be replaced after import, but it looks up
 * `http.request` on Node's module object at call time, so wrapping that covers both versions,
 * however the app imported it. The wrapper checks, by the caller's stack (a few frames), that
 * the request comes from node-fetch; any other `http.request` caller passes straight through,
 * untouched. Bodies are observed as they pass (request `write`/`end`, response `data`), never
 * read on the caller's behalf; a compressed response is decompressed from our copy.
 */
import http, { type ClientRequest, type IncomingMessage } from "node:http";
import https from "node:https";
import { syncBuiltinESMExports } from "node:module";
import * as zlib from "node:zlib";
import { recordHttp } from "../capture.js";
import { httpSuppressed } from "../context.js";
import { Timer } from "../ids.js";
import { CapturedBytes, keepBytes } from "../payloads.js";
import { current, type Recorder } from "../recorder.js";
import { ByteCollector } from "./http-common.js";
import { trackPending } from "./pending.js";

export const ORIGIN = "node-fetch";
const ORIGINAL = Symbol.for("tracelab.nodeFetch.original");
const FROM_NODE_FETCH = /[\\/]node-fetch[\\/]/;
// Keep compressed bytes up to this multiple of the cap, to decompress them afterwards.
const COMPRESSED_FACTOR = 4;

type RequestFn = typeof http.request;
type Wrapped = RequestFn & { [ORIGINAL]?: RequestFn };
type Module = { request: RequestFn };

function calledFromNodeFetch(wrapper: (...args: never[]) => unknown): boolean {
  const holder: { stack?: string } = {};
  const limit = Error.stackTraceLimit;
  try {
    Error.stackTraceLimit = 6;
    Error.captureStackTrace(holder, wrapper);
  } finally {
    Error.stackTraceLimit = limit;
  }
  return FROM_NODE_FETCH.test(holder.stack ?? "");
}

function requestUrl(args: unknown[], req: ClientRequest, defaultProtocol: string): string {
  const first = args[0];
  if (typeof first === "string") return first;
  if (first instanceof URL) return first.href;
  const opts = (first ?? {}) as Record<string, unknown>;
  if (typeof opts.href === "string") return opts.href;
  const protocol = (opts.protocol as string) || defaultProtocol;
  const host = (opts.hostname as string) || (opts.host as string) || req.host || "localhost";
  const port = opts.port ? `:${String(opts.port)}` : "";
  return `${protocol}//${host.includes(":") && !host.startsWith("[") ? `[${host}]` : host}${port}${req.path ?? "/"}`;
}

function chunkBytes(chunk: unknown, encoding?: unknown): Uint8Array | null {
  if (chunk === null || chunk === undefined) return null;
  if (typeof chunk === "string") return Buffer.from(chunk, (typeof encoding === "string" ? encoding : "utf8") as BufferEncoding);
  if (chunk instanceof Uint8Array) return chunk;
  return null;
}

function rawHeaderPairs(raw: string[]): Array<[string, string]> {
  const out: Array<[string, string]> = [];
  for (let i = 0; i + 1 < raw.length; i += 2) out.push([raw[i], raw[i + 1]]);
  return out;
}

function requestHeaderPairs(req: ClientRequest): Array<[string, string]> {
  const names = typeof req.getRawHeaderNames === "function" ? req.getRawHeaderNames() : req.getHeaderNames();
  const out: Array<[string, string]> = [];
  for (const name of names) {
    const value = req.getHeader(name);
    if (value === undefined) continue;
    out.push([name, Array.isArray(value) ? value.join(", ") : String(value)]);
  }
  return out;
}

function decompress(encoding: string, data: Buffer, maxOutputLength: number): Buffer | null {
  const options = { maxOutputLength, finishFlush: zlib.constants.Z_SYNC_FLUSH };
  try {
    switch (encoding) {
      case "gzip":
      case "x-gzip":
        return zlib.gunzipSync(data, options);
      case "deflate":
        try {
          return zlib.inflateSync(data, options);
        } catch {
          return zlib.inflateRawSync(data, options);
        }
      case "br":
        return zlib.brotliDecompressSync(data, { maxOutputLength });
      default:
        return null;
    }
  } catch {
    return null;
  }
}

function observe(rec: Recorder, req: ClientRequest, args: unknown[], defaultProtocol: string): void {
  const timer = new Timer();
  const cap = rec.config.maxBodyBytes;
  const url = requestUrl(args, req, defaultProtocol);
  const method = req.method || "GET";
  const sent = new ByteCollector(keepBytes(cap, null));
  let keep = keepBytes(cap, null);
  let recorded = false;
  let headersSent: Array<[string, string]> | null = null;
  let res: IncomingMessage | null = null;
  let received: ByteCollector | null = null;
  let untrack: () => void = () => undefined;

  const origWrite = req.write;
  const origEnd = req.end;
  req.write = function (this: ClientRequest, chunk: unknown, ...rest: unknown[]): boolean {
    rec.safely(ORIGIN, () => {
      const bytes = chunkBytes(chunk, rest[0]);
      if (bytes) sent.add(bytes);
    });
    return (origWrite as (...a: unknown[]) => boolean).call(this, chunk, ...rest);
  } as typeof req.write;
  req.end = function (this: ClientRequest, chunk?: unknown, ...rest: unknown[]): ClientRequest {
    rec.safely(ORIGIN, () => {
      if (typeof chunk !== "function") {
        const bytes = chunkBytes(chunk, rest[0]);
        if (bytes) sent.add(bytes);
      }
    });
    return (origEnd as (...a: unknown[]) => ClientRequest).call(this, chunk, ...rest);
  } as typeof req.end;

  const record = (error: unknown, note: string | null): void => {
    if (recorded) return;
    recorded = true;
    untrack();
    rec.safely(ORIGIN, () => {
      let responseBody: unknown = null;
      let responseNote = note;
      if (res && received && !note) {
        const encoding = String(res.headers["content-encoding"] ?? "identity").toLowerCase().trim();
        if (encoding === "identity" || encoding === "") {
          responseBody = received.result(true);
        } else if (received.total > keep * COMPRESSED_FACTOR) {
          responseNote = `${encoding}-compressed response of ${received.total} bytes: over the capture limit`;
        } else {
          const plain = decompress(encoding, Buffer.from(received.head()), HARD_OUTPUT);
          if (plain === null) responseNote = `${encoding}-compressed response could not be decompressed`;
          else responseBody = new CapturedBytes(plain.subarray(0, keep), plain.length, true);
        }
      }
      const requestHeaders = headersSent ?? rec.safely(ORIGIN, () => requestHeaderPairs(req)) ?? null;
      recordHttp(rec, {
        origin: ORIGIN,
        method,
        url,
        requestHeaders,
        requestBody: sent.total ? sent.result(true) : null,
        startedAt: timer.startedAt,
        latencyMs: timer.elapsedMs(),
        statusCode: res ? res.statusCode ?? 0 : null,
        responseHeaders: res ? rawHeaderPairs(res.rawHeaders) : null,
        responseBody,
        responseBodyNote: responseNote,
        error: error === undefined ? undefined : error,
      });
    });
  };

  req.prependListener("error", (err: Error) => record(err, null));
  req.on("response", (response: IncomingMessage) => {
    rec.safely(ORIGIN, () => {
      res = response;
      headersSent = requestHeaderPairs(req);
      const compressed = !["identity", ""].includes(String(response.headers["content-encoding"] ?? "").toLowerCase().trim());
      keep = keepBytes(cap, String(response.headers["content-type"] ?? ""));
      received = new ByteCollector(compressed ? keep * COMPRESSED_FACTOR + 1 : keep);
      const collector = received;
      untrack = trackPending(() => record(undefined, "response body not read to its end before flush()"));
      if (!rec.config.capturePayloads || /text\/event-stream/i.test(String(response.headers["content-type"] ?? ""))) {
        response.once("end", () => record(undefined, rec.config.capturePayloads
          ? "streamed response (text/event-stream): not read on the caller's behalf" : null));
      } else {
        response.on("data", (chunk: Buffer) => collector.add(chunk));
        response.once("end", () => record(undefined, null));
      }
      response.once("error", (err: Error) => record(err, "response body failed while being read"));
      response.once("close", () => {
        if (!response.readableEnded) record(undefined, "response body not read to its end");
      });
    });
  });
}

const HARD_OUTPUT = 32 * 1024 * 1024;

function wrap(module: Module, defaultProtocol: string): void {
  const existing = module.request as Wrapped;
  if (existing[ORIGINAL]) return;
  const original = existing;
  const wrapped = function request(this: unknown, ...args: unknown[]): ClientRequest {
    const rec = current();
    if (rec === null || httpSuppressed() || !calledFromNodeFetch(wrapped)) {
      return (original as (...a: unknown[]) => ClientRequest).apply(this, args);
    }
    const req = (original as (...a: unknown[]) => ClientRequest).apply(this, args);
    rec.safely(ORIGIN, () => observe(rec, req, args, defaultProtocol));
    return req;
  } as Wrapped;
  wrapped[ORIGINAL] = original;
  module.request = wrapped;
}

function unwrap(module: Module): void {
  const existing = module.request as Wrapped;
  if (existing[ORIGINAL]) module.request = existing[ORIGINAL] as RequestFn;
}

function sync(): void {
  try {
    syncBuiltinESMExports();
  } catch {
    // older Node: named ESM imports of http keep the original, node-fetch uses the default
  }
}

/** Wrap `http.request` and `https.request` (idempotent); a no-op for non-node-fetch callers. */
export function install(): boolean {
  wrap(http as unknown as Module, "http:");
  wrap(https as unknown as Module, "https:");
  sync();
  return true;
}

export function uninstall(): void {
  unwrap(http as unknown as Module);
  unwrap(https as unknown as Module);
  sync();
}
