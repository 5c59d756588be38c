/**
 * Interactions that have started but may never finish on their own (a call still waiting for
 * its answer when the process exits, a response whose body the caller never reads).
 * `flush()`, `shutdown()` and the process's exit record them as they stand, so nothing the app
 * did is silently missing from the trace; `CallEnd` makes sure such a call, finishing later
 * after all, is not recorded a second time.
 */

/** When pending interactions are recorded: `flush()`, `shutdown()` or the process's exit. */
export type PendingWhen = "flush()" | "shutdown()" | "process exit";

const pending = new Set<(when: PendingWhen) => void>();

/** Register a finisher; call the returned function once the interaction is recorded. */
export function trackPending(finish: (when: PendingWhen) => void): () => void {
  pending.add(finish);
  return () => {
    pending.delete(finish);
  };
}

/** Record every pending interaction now (each finisher removes itself). */
export function finishPending(when: PendingWhen = "flush()"): void {
  for (const finish of [...pending]) {
    pending.delete(finish);
    try {
      finish(when);
    } catch {
      // a finisher records through Recorder.safely; nothing may escape into flush() or exit
    }
  }
}

/**
 * The error of a call recorded while still in flight (at `flush()`, `shutdown()` or exit):
 * the event says `error.type: "NotFinished"` rather than leaving the call out.
 */
export class NotFinished extends Error {
  constructor(when: PendingWhen) {
    super(`the call was still in flight at ${when}: recorded as not finished`);
    this.name = "NotFinished";
  }
}

/**
 * One call's end, claimed exactly once: by the call itself (its answer, error or abort,
 * whichever the integration sees first) or, while it is still going, by `flush()`,
 * `shutdown()` or the process's exit through the `unfinished` recorder it holds at that
 * moment (replaced as the call progresses).
 */
export class CallEnd {
  private ended = false;
  private unfinished: (when: PendingWhen) => void;
  private readonly untrack: () => void;

  constructor(unfinished: (when: PendingWhen) => void) {
    this.unfinished = unfinished;
    this.untrack = trackPending((when) => {
      const record = this.unfinished;
      if (this.claim()) record(when);
    });
  }

  /** True the first time only: the caller records the event. False: it is already recorded. */
  claim(): boolean {
    if (this.ended) return false;
    this.ended = true;
    this.untrack();
    return true;
  }

  /** Already recorded (or being recorded). */
  get done(): boolean {
    return this.ended;
  }

  /** What to record if the call is still going at flush/exit from now on. */
  whenUnfinished(record: (when: PendingWhen) => void): void {
    this.unfinished = record;
  }

  /** Someone else records the call at flush/exit from now on (a stream tap): stop tracking it. */
  handOver(): void {
    this.untrack();
  }
}

/** An `AbortError` as node-fetch rejects with it (its class name and message). */
export function abortError(message = "The operation was aborted."): Error {
  const error = new Error(message);
  error.name = "AbortError";
  return error;
}
