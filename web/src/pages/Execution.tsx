import { useCallback, useDeferredValue, useEffect, useMemo, useRef, useState } from "react";
import { Link, useNavigate, useParams } from "react-router";
import { api, ApiError, enc, takePrefetched, type EventRow, type ExecutionDetail, type ExecutionSummary } from "../lib/api";
import { appendRows, filterSteps, fromColumns, type Steps } from "../lib/steps";
import { fmtCount, fmtMs, fmtTime, tagsText } from "../lib/format";
import { useLive } from "../lib/live";
import Gantt from "../components/Gantt";
import StepTable from "../components/StepTable";
import SidePanel from "../components/SidePanel";

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
  const [text, setText] = useState("");
  const [errorsOnly, setErrorsOnly] = useState(false);
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

  // live: new steps of this run are appended; a big batch (summary only) triggers a refetch
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

  const deferredText = useDeferredValue(text);
  const rows = useMemo(
    () => (state ? filterSteps(state.steps, deferredText, errorsOnly) : new Int32Array(0)),
    [state, deferredText, errorsOnly],
  );
  const matches = useMemo(() => {
    if (!state || rows === state.steps.order) return null;
    const m = new Uint8Array(state.steps.n);
    for (const i of rows) m[i] = 1;
    return m;
  }, [state, rows]);

  if (error) {
    return (
      <main className="page">
        <nav className="crumbs"><Link to="/">Workflows</Link></nav>
        <h1>Execution {runId}</h1>
        <div className="error-box">{error.status === 404 ? `Not found: ${error.message}` : error.message}</div>
      </main>
    );
  }
  if (!state) return <main className="page"><div className="muted">Loading {runId}…</div></main>;
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
          {summary.active && <span className="badge live" title="events landed in the last 30 s">running</span>}
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
        <Gantt steps={steps} selected={selected} onSelect={setSelected} matches={matches} />
        <div className="toolbar">
          <input type="search" placeholder="filter steps: endpoint, target, service, status, id" value={text}
            onChange={(e) => setText(e.target.value)} aria-label="Filter steps" />
          <label><input type="checkbox" checked={errorsOnly} onChange={(e) => setErrorsOnly(e.target.checked)} /> errors only</label>
          <span className="muted small">{fmtCount(rows.length)} of {fmtCount(steps.n)} steps</span>
        </div>
        <StepTable steps={steps} rows={rows} selected={selected} onSelect={setSelected} />
      </div>
      {selectedId && <SidePanel eventId={selectedId} onClose={() => setSelected(null)} />}
    </main>
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
