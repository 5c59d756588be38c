/** An execution's lifecycle state as a badge: running, finished, failed or abandoned.
 *
 * The state comes from the API (its `kind: "run"` start/end events and how long the run has
 * been silent, `TRACELAB_IDLE_S`); nothing is guessed here. Runs from servers that predate
 * `state` show nothing. */

const STATES: Record<string, { css: string; title: string }> = {
  running: { css: "live", title: "no end event yet, and events landed recently" },
  finished: { css: "good-bg", title: "the run ended normally (or, without lifecycle events, went quiet)" },
  failed: { css: "bad-bg", title: "the run ended with an uncaught exception or a signal" },
  abandoned: { css: "warn", title: "the run started but never ended, and has been silent since" },
};

export function StateBadge({ state }: { state?: string }) {
  if (!state) return null;
  const known = STATES[state];
  return (
    <span className={`badge ${known ? known.css : ""}`} data-testid="state" data-state={state}
      title={known ? known.title : undefined}>
      {state}
    </span>
  );
}
