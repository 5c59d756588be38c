/**
 * `node-fetch` (v2 and v3): traced where every node-fetch request goes through, Node's
 * `http.request` / `https.request`, and only for calls made by node-fetch itself.
 *
 * node-fetch v3 is an ES module whose exports cannot be replaced after import, but it looks up
 * `http.request` on Node's module object at call time, so wrapping that covers both versions,
 * however the app imported it. The wrapper checks, by the caller's stack (a few frames), that
 * the request comes from node-fetch; any other `http.request` caller passes straight through,
 * untouched. Bodies are observed as they pass (request `write`/`end`, response `data`), never
 * read on the caller's behalf; a compressed response is decompressed from our copy. A
 * `text/event-stream` answer is also folded event by event as it passes (`../llm.ts`), so a
 * streamed LLM call gets its usage, finish reason, tool names and `llm.ttft_ms`.
 *
 * Each request is exactly one event, whatever ends it (see `observe`): an abort is recorded as
 * node-fetch's `AbortError`, timed to the abort, and a response read as strings
 * (`setEncoding`) is captured like Buffer chunks.
 */
import http, { type ClientRequest, type IncomingMessage } from "node:http";
import https from "node:https";
import { syncBuiltinESMExports } from "node:module";
import * as zlib from "node:zlib";
import net from "node:net";
import type { Duplex } from "node:stream";
import tls from "node:tls";
import { httpRequestView, recordHttp } from "../capture.js";
import { SSEScanner } from "../llm.js";
import { bodyBytes, chunksOf, headerPairs as responseHeaderPairs, recordReplayed, sleep, streamError } from "../replay/answer.js";
import { missError, PASSTHROUGH } from "../replay/errors.js";
import { replaySession, type ReplaySession } from "../replay/session.js";
import { ReplaySocket } from "../replay/socket.js";
import { httpSuppressed } from "../context.js";
import { Timer } from "../ids.js";
import { CapturedBytes, keepBytes } from "../payloads.js";
import { answering, type Recorder } from "../recorder.js";
import { ByteCollector } from "./http-common.js";
import { abortError, CallEnd, NotFinished } from "./pending.js";

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

/**
 * Record one node-fetch request as exactly one event, whatever ends it first: its response
 * body's end, an error on the request, an abort (node-fetch cancels with `request.abort()`,
 * which emits `abort` and `close`, and at most a "socket hang up" error), the response cut
 * short (socket destroyed mid-body), or `flush()`/exit while it is still going. No `error`
 * listener is added to the response (one would change what an unhandled error does), and
 * every listener runs inside `rec.safely`.
 */
function observe(rec: Recorder, req: ClientRequest, args: unknown[], defaultProtocol: string,
  tags: Record<string, string> | null = null): { cancel(): void } {
  const timer = new Timer();
  const cap = rec.config.maxBodyBytes;
  const url = requestUrl(args, req, defaultProtocol);
  const method = req.method || "GET";
  const sent = new ByteCollector(keepBytes(cap, null));
  let keep = keepBytes(cap, null);
  let headersSent: Array<[string, string]> | null = null;
  let res: IncomingMessage | null = null;
  let received: ByteCollector | null = null;
  let sse: SSEScanner | null = null;
  // node-fetch itself aborts a request while its response is handed over (following a
  // redirect, refusing one): that is the end of an answered hop, not the caller's abort.
  let abortedOnResponse = false;

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

  /** The event as things stand: `complete` false keeps the body read so far, marked cut. */
  const write = (error: unknown, note: string | null, complete = true): void => {
    rec.safely(ORIGIN, () => {
      let responseBody: unknown = null;
      let responseNote = note;
      if (res && received && !note) {
        const encoding = String(res.headers["content-encoding"] ?? "identity").toLowerCase().trim();
        if (encoding === "identity" || encoding === "") {
          responseBody = received.result(complete);
        } else if (received.total > keep * COMPRESSED_FACTOR) {
          responseNote = `${encoding}-compressed response of ${received.total} bytes: over the capture limit`;
        } else {
          const plain = decompress(encoding, Buffer.from(received.head()), HARD_OUTPUT);
          if (plain === null) responseNote = `${encoding}-compressed response could not be decompressed`;
          else responseBody = new CapturedBytes(plain.subarray(0, keep), plain.length, complete);
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
        responseFold: sse ? sse.end(timer.elapsedMs()) : null,
        error: error === undefined ? undefined : error,
      }, tags);
    });
  };
  // at flush()/exit: aborted already (its abort event not yet seen), or still in flight
  const end = new CallEnd((when) => (callerAborted() ? write(abortError(), null, false) : write(new NotFinished(when), null)));
  const finish = (error: unknown, note: string | null, complete = true): void => {
    if (end.claim()) write(error, note, complete);
  };
  const callerAborted = (): boolean => req.aborted && !abortedOnResponse;

  req.prependListener("error", (err: Error) => rec.safely(ORIGIN, () => {
    // an aborted request may still report "socket hang up": the abort is what ended it
    finish(callerAborted() && !res ? abortError() : err, null);
  }));
  req.once("abort", () => rec.safely(ORIGIN, () => {
    if (callerAborted()) finish(abortError(), null, false);
  }));
  req.once("close", () => rec.safely(ORIGIN, () => {
    // whatever else happened, a request closed without an answer has ended
    if (!res) finish(callerAborted() ? abortError() : new Error("request closed before a response"), null);
  }));
  req.on("response", (response: IncomingMessage) => {
    rec.safely(ORIGIN, () => {
      res = response;
      headersSent = requestHeaderPairs(req);
      process.nextTick(() => {
        if (req.aborted) abortedOnResponse = true;
      });
      const compressed = !["identity", ""].includes(String(response.headers["content-encoding"] ?? "").toLowerCase().trim());
      keep = keepBytes(cap, String(response.headers["content-type"] ?? ""));
      received = new ByteCollector(compressed ? keep * COMPRESSED_FACTOR + 1 : keep);
      const collector = received;
      end.whenUnfinished((when) => (callerAborted() ? write(abortError(), null, false)
        : write(undefined, `response body not read to its end before ${when}`)));
      // the caller (or its instrumentation) may read the body as strings (setEncoding)
      const bytesOf = (chunk: unknown): Uint8Array | null => chunkBytes(chunk, response.readableEncoding ?? "utf8");
      if (/text\/event-stream/i.test(String(response.headers["content-type"] ?? ""))) {
        // SSE: the pieces are folded as they pass, so an LLM stream gets its fields and ttft
        const scanner = new SSEScanner();
        const decoder = new TextDecoder();
        sse = scanner;
        response.on("data", (chunk: unknown) => rec.safely(ORIGIN, () => {
          const bytes = bytesOf(chunk);
          if (!bytes) return;
          collector.add(bytes);
          if (!compressed && !scanner.dead) scanner.feed(decoder.decode(bytes, { stream: true }), timer.elapsedMs());
        }));
      } else if (rec.config.capturePayloads) {
        response.on("data", (chunk: unknown) => rec.safely(ORIGIN, () => {
          const bytes = bytesOf(chunk);
          if (bytes) collector.add(bytes);
        }));
      }
      response.once("end", () => finish(undefined, null));
      response.once("close", () => rec.safely(ORIGIN, () => {
        if (response.readableEnded) return;
        const error = response.errored ?? (callerAborted() ? abortError() : null);
        if (error) finish(error, null, false);
        else finish(undefined, "response body not read to its end");
      }));
    });
  });
  return {
    cancel(): void {
      end.claim();
    },
  };
}

const HARD_OUTPUT = 32 * 1024 * 1024;

type OnCreate = (err: Error | null, socket?: Duplex) => void;

/** `args` of `http.request` with a connection we choose once the request has ended. */
function deferConnection(args: unknown[], connect: (opts: Record<string, unknown>, oncreate: OnCreate) => void): unknown[] {
  const extra = { agent: undefined, createConnection: (opts: Record<string, unknown>, oncreate: OnCreate) => { connect(opts, oncreate); } };
  const [first, second, ...rest] = args;
  if (typeof first === "string" || first instanceof URL) {
    if (second && typeof second === "object") return [first, { ...(second as object), ...extra }, ...rest];
    return [first, extra, ...(second === undefined ? [] : [second]), ...rest];
  }
  return [{ ...(first as object ?? {}), ...extra }, ...(second === undefined ? [] : [second]), ...rest];
}

/** A real connection, as the default agent would open it (passthrough of a miss). */
function liveConnection(opts: Record<string, unknown>, defaultProtocol: string): Duplex {
  if (defaultProtocol !== "https:") return net.createConnection(opts as unknown as net.NetConnectOpts);
  const host = String(opts.host ?? opts.hostname ?? "localhost");
  return tls.connect({ ...opts, servername: (opts.servername as string | undefined) ?? (net.isIP(host) ? undefined : host) } as tls.ConnectionOptions);
}

/**
 * Under replay: node-fetch's request gets no connection until it has ended; then its stored
 * shape is keyed. A hit is played back through an in-memory socket (node-fetch parses it as a
 * real response); a miss in `fail` mode fails the connection with an ECONNREFUSED-style error,
 * which node-fetch rejects as its FetchError; in `passthrough`/`record` mode the request goes
 * out on a real connection and is recorded tagged `replay=passthrough`.
 */
function replayRequest(rec: Recorder, session: ReplaySession, send: (args: unknown[]) => ClientRequest,
  args: unknown[], defaultProtocol: string): ClientRequest {
  let connection: { opts: Record<string, unknown>; oncreate: OnCreate } | null = null;
  let ended = false;
  const connected = (opts: Record<string, unknown>, oncreate: OnCreate) => {
    connection = { opts, oncreate };
    if (ended) start();
  };
  const req = send(deferConnection(args, connected));
  const timer = new Timer();
  const startMs = Date.now();
  const url = requestUrl(args, req, defaultProtocol);
  const method = req.method || "GET";
  const sent = new ByteCollector(keepBytes(rec.config.maxBodyBytes, null));
  const live = session.onMiss === "fail" ? null : rec.safely(ORIGIN, () => observe(rec, req, args, defaultProtocol, PASSTHROUGH)) ?? null;
  const origWrite = req.write;
  const origEnd = req.end;
  req.write = function (this: ClientRequest, chunk: unknown, ...rest: unknown[]): boolean {
    const bytes = chunkBytes(chunk, rest[0]);
    if (bytes) sent.add(bytes);
    return (origWrite as (...a: unknown[]) => boolean).call(this, chunk, ...rest);
  } as typeof req.write;
  req.end = function (this: ClientRequest, chunk?: unknown, ...rest: unknown[]): ClientRequest {
    if (typeof chunk !== "function") {
      const bytes = chunkBytes(chunk, rest[0]);
      if (bytes) sent.add(bytes);
    }
    const result = (origEnd as (...a: unknown[]) => ClientRequest).call(this, chunk, ...rest);
    ended = true;
    if (connection) start();
    return result;
  } as typeof req.end;

  let started = false;
  const start = () => {
    if (started || !connection) return;
    started = true;
    const { opts, oncreate } = connection;
    setImmediate(() => {
      answer(opts, oncreate).catch((err: unknown) => {
        rec.safely(ORIGIN, () => { throw err; });
        oncreate(missError(`TraceLab replay could not answer this call: ${(err as Error)?.message}`));
      });
    });
  };

  const answer = async (opts: Record<string, unknown>, oncreate: OnCreate): Promise<void> => {
    const call = {
      origin: ORIGIN, method, url, requestHeaders: requestHeaderPairs(req),
      requestBody: sent.total ? sent.result(true) : null, startedAt: timer.startedAt, latencyMs: 0,
    };
    const view = httpRequestView(rec, call);
    const outcome = session.take({ kind: view.kind, target: view.target, endpoint: view.endpoint, request: view.request });
    if (!outcome.hit && live) {
      oncreate(null, liveConnection(opts, defaultProtocol));
      return;
    }
    live?.cancel();
    if (!outcome.hit) {
      const error = missError(outcome.message);
      rec.safely(ORIGIN, () => recordHttp(rec, { ...call, latencyMs: timer.elapsedMs(), error }, { replay: "miss" }, view));
      oncreate(error);
      return;
    }
    const recorded = outcome.event;
    const response = recorded.response !== null && typeof recorded.response === "object" ? recorded.response as Record<string, unknown> : null;
    const chunks = chunksOf(response);
    if (!chunks) await sleep(session.delayMs(recorded.latency_ms));
    rec.safely(ORIGIN, () => recordReplayed(rec, ORIGIN, view, recorded, timer.startedAt, timer.elapsedMs()));
    const status = typeof recorded.status_code === "number" ? recorded.status_code : null;
    if (status === null || response === null) {
      const recordedError = recorded.error as { message?: unknown } | null;
      oncreate(Object.assign(new Error(`${String(recordedError?.message ?? "no response was recorded")} (as recorded)`), { code: "ECONNRESET" }));
      return;
    }
    const socket = new ReplaySocket();
    oncreate(null, socket);
    if ([101, 103, 204, 205, 304].includes(status) || method.toUpperCase() === "HEAD") {
      await socket.respond(status, responseHeaderPairs(response), null, null);
      return;
    }
    await socket.respond(status, responseHeaderPairs(response), chunks ? null : bodyBytes(response.body),
      chunks ? { chunks, speed: session.speed, startMs, error: streamError(response) } : null);
  };
  return req;
}

function wrap(module: Module, defaultProtocol: string): void {
  const existing = module.request as Wrapped;
  if (existing[ORIGINAL]) return;
  const original = existing;
  const wrapped = function request(this: unknown, ...args: unknown[]): ClientRequest {
    const rec = answering();
    if (rec === null || httpSuppressed() || !calledFromNodeFetch(wrapped)) {
      return (original as (...a: unknown[]) => ClientRequest).apply(this, args);
    }
    const session = replaySession();
    if (session) return replayRequest(rec, session, (a) => (original as (...x: unknown[]) => ClientRequest).apply(this, a), args, defaultProtocol);
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
