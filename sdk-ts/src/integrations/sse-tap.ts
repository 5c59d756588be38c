/**
 * A streamed (`text/event-stream`) fetch answer read on the caller's behalf, as the caller reads
 * it: the body is wrapped in a stream that pulls from the original only when the caller pulls,
 * so nothing is read ahead or buffered for anybody, and each piece is also fed to the SSE fold
 * of `../llm.ts` (usage from the final event, finish reason, tool names, `llm.ttft_ms`). What is
 * kept is bounded: the first `cap` bytes of the body and the fold's own bounded state. `done` is
 * called once: when the stream ends, fails or is cancelled (the body kept is then marked cut),
 * or at `flush()`/`shutdown()` for a stream still unfinished then (recorded as read so far;
 * later pieces still pass to the caller, untapped).
 */
import { Fold, SSEScanner } from "../llm.js";
import { CapturedBytes } from "../payloads.js";
import { ByteCollector } from "./http-common.js";
import { trackPending } from "./pending.js";

/** How the tapped stream ended: its capped bytes, the fold of its events, and any failure. */
export interface TapResult {
  body: CapturedBytes;
  fold: Fold;
  error: unknown;
}

/** The pieces seen so far, with the time (ms since the request's start) each was read. */
class StreamTap {
  private readonly collector: ByteCollector;
  private readonly decoder = new TextDecoder();
  private readonly scanner = new SSEScanner();

  constructor(cap: number, private readonly elapsedMs: () => number) {
    this.collector = new ByteCollector(cap);
  }

  add(chunk: Uint8Array): void {
    this.collector.add(chunk);
    if (!this.scanner.dead) this.scanner.feed(this.decoder.decode(chunk, { stream: true }), this.elapsedMs());
  }

  end(complete: boolean, error: unknown): TapResult {
    const t = this.elapsedMs();
    if (!this.scanner.dead) this.scanner.feed(this.decoder.decode(), t);
    return { body: this.collector.result(complete), fold: this.scanner.end(t), error };
  }
}

/**
 * `body` wrapped so that every piece the caller reads is also tapped; `done` gets the result
 * once. Tap failures are swallowed: the caller's pieces pass through unchanged whatever happens.
 */
export function tapStream(body: ReadableStream<Uint8Array>, cap: number, elapsedMs: () => number,
  done: (result: TapResult) => void): ReadableStream<Uint8Array> {
  const reader = body.getReader();
  const tap = new StreamTap(cap, elapsedMs);
  let finished = false;
  const finish = (complete: boolean, error: unknown): void => {
    if (finished) return;
    finished = true;
    untrack();
    try {
      done(tap.end(complete, error));
    } catch {
      // tracing never breaks the traced program
    }
  };
  // flush() and shutdown() record a stream still unfinished as it stands
  const untrack = trackPending(() => finish(false, undefined));
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      let step: ReadableStreamReadResult<Uint8Array>;
      try {
        step = await reader.read();
      } catch (err) {
        finish(false, err);
        controller.error(err);
        return;
      }
      if (step.done) {
        finish(true, undefined);
        controller.close();
        return;
      }
      try {
        if (!finished) tap.add(step.value);
      } catch {
        // a piece the tap cannot read: the caller still gets it
      }
      controller.enqueue(step.value);
    },
    cancel(reason) {
      finish(false, undefined);
      return reader.cancel(reason);
    },
  }, { highWaterMark: 0 });
}

/**
 * A Response like `response` whose body is `body`: same status, headers, `url` and
 * `redirected`, so the caller sees the answer it would have had.
 */
export function withBody(response: Response, body: ReadableStream<Uint8Array>): Response {
  const answer = new Response(body, { status: response.status, statusText: response.statusText, headers: response.headers });
  Object.defineProperty(answer, "url", { value: response.url });
  Object.defineProperty(answer, "redirected", { value: response.redirected });
  return answer;
}
