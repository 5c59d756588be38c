/**
 * Interactions that have started but may never finish on their own (a response whose body the
 * caller never reads). `flush()` and `shutdown()` record them as they stand, so nothing the app
 * did is silently missing from the trace.
 */
const pending = new Set<() => void>();

/** Register a finisher; call the returned function once the interaction is recorded. */
export function trackPending(finish: () => void): () => void {
  pending.add(finish);
  return () => {
    pending.delete(finish);
  };
}

/** Record every pending interaction now (each finisher removes itself). */
export function finishPending(): void {
  for (const finish of [...pending]) {
    pending.delete(finish);
    try {
      finish();
    } catch {
      // a finisher records through Recorder.safely; nothing may escape into flush()
    }
  }
}
