import { useCallback, useDeferredValue, useEffect, useMemo, useRef, useState } from "react";
import { Link, useNavigate, useParams } from "react-router";
import { api, ApiError, enc, takePrefetched, type EventRow, type ExecutionDetail, type ExecutionSummary } from "../lib/api";
import { appendRows, fromColumns, selectSteps, shownSteps, type Selection, type Steps } from "../lib/steps";
import { fmtCount, fmtMs, fmtTime, tagsText } from "../lib/format";
import { useLive } from "../lib/live";
import Gantt from "../components/Gantt";
import StepTable from "../components/StepTable";
import SidePanel from "../components/SidePanel";
import { StateBadge } from "../components/StateBadge";
import FilterBar, { toggled, useStepFilter, type UpdateFilter } from "../components/Filters";

interface State {
  summary: ExecutionSummary;
  t0: bigint;
  steps: Steps;
}

export default function Execution() {
  const { runId = "" } = useParams();
  const navigate = useNavigate();
  const [state, setState] = useState<State | null>(null);
  const [error, setError] = useState<{ status: number; message: string } | null>(null);
  const [selected, setSelected] = useState<number | null>(null);
  const [filter, update] = useStepFilter();
  const [others, setOthers] = useState<ExecutionSummary[]>([]);
  const pending = useRef<number | null>(null);

  const load = useCallback(() => {
    const ctl = new AbortController();
    const url = `/api/executions/${enc(runId)}?shape=columns`;
    (takePrefetched<ExecutionDetail>(url) ?? api<ExecutionDetail>(url, ctl.signal))
      .then((d) => {
        performance.mark("tracelab:execution-fetched");
        const steps = fromColumns(d.events);
        performance.mark("tracelab:execution-laid-out");
        setState({ summary: d.execution, t0: BigInt(d.t0_ns), steps });
        setError(null);
      })
      .catch((e) => {
        if (ctl.signal.aborted) return;
        setError(e instanceof ApiError ? { status: e.status, message: e.message }
          : { status: 0, message: String(e) });
      });
    return () => ctl.abort();
  }, [runId]);

  useEffect(() => {
    setState(null);
    setSelected(null);
    return load();
  }, [load]);

  const workflow = state?.summary.workflow;
  useEffect(() => {
    if (!workflow) return;
    api<{ executions: ExecutionSummary[] }>(`/api/workflows/${enc(workflow)}/executions?limit=50`)
      .then((p) => setOthers(p.executions.filter((x) => x.run_id !== runId)), () => setOthers([]));
  }, [workflow, runId]);

  // live: new steps of this run are appended (and go through the filters like the rest); a big
  // batch (summary only) triggers a refetch
  useLive("events", (m: { run_id: string; t0_ns: string; events: EventRow[] }) => {
    if (m.run_id !== runId) return;
    setState((s) => {
      if (!s) {
        load();
        return s;
      }
      const shift = Number(BigInt(m.t0_ns) - s.t0) / 1e6;
      const steps = appendRows(s.steps, m.events, shift);
      return steps === s.steps ? s : { ...s, steps };
    });
  });
  useLive("execution", (x: ExecutionSummary) => {
    if (x.run_id !== runId) return;
    setState((s) => (s ? { ...s, summary: { ...s.summary, ...x, events: Math.max(x.events, s.steps.n) } } : s));
    if (pending.current !== null) window.clearTimeout(pending.current);
    pending.current = window.setTimeout(() => {
      pending.current = null;
      setState((s) => {
        if (!s || s.steps.n < x.events) load();
        return s;
      });
    }, 1500);
  });
  useLive("resync", () => load());
  useEffect(() => () => { if (pending.current !== null) window.clearTimeout(pending.current); }, []);

  // the filters hide steps in both views: one pass picks the table's rows, and the Gantt lays
  // out only those (a typed key answers first; the 100k-step pass follows, deferred)
  const deferred = useDeferredValue(filter);
  const steps0 = state?.steps;
  const sel = useMemo(() => (steps0 ? selectSteps(steps0, deferred) : null), [steps0, deferred]);
  const gantt = useMemo(() => (steps0 && sel ? shownSteps(steps0, sel.visible) : null), [steps0, sel]);
  const collapsed = useMemo(() => new Set(filter.collapsed), [filter.collapsed]);

  if (error) {
    return (
      <main className="page">
        <nav className="crumbs"><Link to="/">Workflows</Link></nav>
        <h1>Execution {runId}</h1>
        <div className="error-box">{error.status === 404 ? `Not found: ${error.message}` : error.message}</div>
      </main>
    );
  }
  if (!state || !sel || !gantt) return <main className="page"><div className="muted">Loading {runId}…</div></main>;
  const { summary, steps } = state;
  const selectedId = selected !== null && selected < steps.n ? steps.id[selected] : null;
  const errors = Math.max(summary.errors, 0);

  return (
    <main className={`page execution${selectedId ? " with-side" : ""}`}>
      <div className="exec-main">
        <nav className="crumbs">
          <Link to="/">Workflows</Link> / <Link to={`/workflows/${enc(summary.workflow)}`}>{summary.workflow}</Link> /{" "}
          <span className="mono">{summary.run_id}</span>
        </nav>
        <div className="exec-head">
          <h1 className="mono">{summary.run_id}</h1>
          <span className={`badge ${summary.status === "error" ? "bad-bg" : "good-bg"}`}>{summary.status}</span>
          <StateBadge state={summary.state} />
          <span className="muted">{fmtTime(summary.started_at)}</span>
          <span>· {fmtMs(Math.max(summary.duration_ms, steps.end))}</span>
          <span>· {fmtCount(steps.n)} steps</span>
          <span className={errors ? "bad" : ""}>· {fmtCount(errors)} errors</span>
          {tagsText(summary.tags) && <span className="mono small">· {tagsText(summary.tags)}</span>}
          {others.length > 0 && (
            <select aria-label="Compare with another execution" value=""
              onChange={(e) => e.target.value && navigate(`/diff/${enc(runId)}/${enc(e.target.value)}`)}>
              <option value="">Diff with…</option>
              {others.map((o) => (
                <option key={o.run_id} value={o.run_id}>{o.run_id} ({o.status}, {fmtTime(o.started_at)})</option>
              ))}
            </select>
          )}
        </div>
        <ReplayLinks summary={summary} />
        <FilterBar steps={steps} filter={filter} update={update} shown={sel.rows.length} />
        <RootBar steps={steps} sel={sel} root={filter.root} update={update} />
        <Gantt steps={gantt} selected={selected} onSelect={setSelected} />
        <StepTable steps={steps} rows={sel.rows} selected={selected} onSelect={setSelected}
          collapsed={collapsed} baseDepth={sel.root !== null ? steps.depth[sel.root] : 0}
          onToggle={(i) => steps.span[i] && update({ collapsed: toggled(filter.collapsed, steps.span[i]!) })}
          onReroot={(i) => steps.span[i] && update({ root: steps.span[i] }, { push: true })} />
      </div>
      {selectedId && selected !== null && (
        <SidePanel eventId={selectedId} onClose={() => setSelected(null)}
          onReroot={steps.size[selected] > 1 && steps.span[selected] && steps.span[selected] !== filter.root
            ? () => update({ root: steps.span[selected] }, { push: true }) : undefined} />
      )}
    </main>
  );
}

/** Where a re-rooted view stands: the path from the execution down to its root span, each step
 * of it a way back up, and "whole execution" to leave the re-rooted view. */
function RootBar({ steps, sel, root, update }: { steps: Steps; sel: Selection; root: string | null;
  update: UpdateFilter }) {
  if (!root) return null;
  const back = (
    <button type="button" onClick={() => update({ root: null }, { push: true })}>← whole execution</button>
  );
  if (sel.root === null) {
    return (
      <div className="root-bar small" data-testid="root-bar">
        {back} <span className="bad">span <span className="mono">{root}</span> is not in this execution (yet)</span>
      </div>
    );
  }
  const path: number[] = [];
  for (let i = steps.parentOf[sel.root]; i >= 0 && path.length < 64; i = steps.parentOf[i]) path.unshift(i);
  return (
    <div className="root-bar small" data-testid="root-bar">
      {back}
      <span className="muted"> re-rooted at </span>
      {path.map((i) => (
        <span key={i}>
          <button type="button" className="link" title={`re-root at ${steps.endpoint[i]}`}
            onClick={() => update({ root: steps.span[i] }, { push: true })}>{steps.endpoint[i]}</button>
          {" › "}
        </span>
      ))}
      <b className="mono" data-testid="root-name">{steps.endpoint[sel.root]}</b>
    </div>
  );
}

/** A replay links to the run it replays and to the diff of the two; the original lists its replays. */
function ReplayLinks({ summary }: { summary: ExecutionSummary }) {
  const { replay_of: original, replays = [] } = summary;
  if (!original && replays.length === 0) return null;
  const self = summary.run_id;
  return (
    <div className="replay-links small">
      {original && (
        <div data-testid="replay-of">
          replay of <Link className="mono" to={`/executions/${enc(original)}`}>{original}</Link>
          {" · "}<Link to={`/diff/${enc(original)}/${enc(self)}`}>diff with the original</Link>
        </div>
      )}
      {replays.length > 0 && (
        <div data-testid="replays">
          replays:{" "}
          {replays.map((r, i) => (
            <span key={r}>
              {i > 0 && ", "}
              <Link className="mono" to={`/executions/${enc(r)}`}>{r}</Link>{" "}
              (<Link to={`/diff/${enc(self)}/${enc(r)}`} aria-label={`diff with ${r}`}>diff</Link>)
            </span>
          ))}
        </div>
      )}
    </div>
  );
}
