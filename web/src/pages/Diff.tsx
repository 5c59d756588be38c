import { useEffect, useState } from "react";
import { Link, useParams } from "react-router";
import { api, ApiError, enc, type DiffResult, type ExecutionSummary } from "../lib/api";
import { fmtCount, fmtMs, fmtTime } from "../lib/format";
import { pretty } from "../components/Payload";

const KIND_COLUMNS = ["change", "diff", "status", "kind", "op"];

function Side({ label, x }: { label: string; x: ExecutionSummary }) {
  return (
    <div className="diff-side">
      <div className="muted small">{label}</div>
      <Link className="mono" to={`/executions/${enc(x.run_id)}`}>{x.run_id}</Link>
      <div className="small">
        <span className={x.status === "error" ? "bad" : "good"}>{x.status}</span> · {fmtTime(x.started_at)} ·{" "}
        {fmtMs(x.duration_ms)} · {fmtCount(x.events)} steps · {fmtCount(x.errors)} errors
      </div>
    </div>
  );
}

function cell(v: unknown): string {
  if (v === null || v === undefined) return "";
  if (typeof v === "string") return v;
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toFixed(3);
  return pretty(v);
}

export default function Diff() {
  const { a = "", b = "" } = useParams();
  const [diff, setDiff] = useState<DiffResult | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [onlyChanges, setOnlyChanges] = useState(true);

  useEffect(() => {
    const ctl = new AbortController();
    setDiff(null);
    setError(null);
    api<DiffResult>(`/api/executions/${enc(a)}/diff/${enc(b)}`, ctl.signal)
      .then(setDiff)
      .catch((e) => !ctl.signal.aborted && setError(e instanceof ApiError ? e.message : String(e)));
    return () => ctl.abort();
  }, [a, b]);

  const kindCol = diff?.columns.find((c) => KIND_COLUMNS.includes(c));
  const shownRows = !diff ? [] : onlyChanges && kindCol
    ? diff.rows.filter((r) => cell(r[kindCol]) !== "same") : diff.rows;
  return (
    <main className="page">
      <nav className="crumbs"><Link to="/">Workflows</Link>{diff && <> / <Link to={`/workflows/${enc(diff.a.workflow)}`}>{diff.a.workflow}</Link></>} / diff</nav>
      <h1>Diff</h1>
      {error && <div className="error-box">{error}</div>}
      {!diff && !error && <div className="muted">Loading…</div>}
      {diff && (
        <>
          <div className="diff-head">
            <Side label="A" x={diff.a} />
            <Side label="B" x={diff.b} />
          </div>
          {diff.summary && <p className="mono small">{diff.summary}</p>}
          {kindCol && (
            <label className="toolbar"><input type="checkbox" checked={onlyChanges}
              onChange={(e) => setOnlyChanges(e.target.checked)} /> only differences</label>
          )}
          {shownRows.length === 0 ? (
            <div className="empty">No differences.</div>
          ) : (
            <table className="grid diff">
              <thead><tr>{diff.columns.map((c) => <th key={c}>{c}</th>)}</tr></thead>
              <tbody>
                {shownRows.map((r, k) => (
                  <tr key={k} className={kindCol ? `diff-${cell(r[kindCol]).toLowerCase()}` : ""}>
                    {diff.columns.map((c) => <td key={c} className="mono small">{cell(r[c])}</td>)}
                  </tr>
                ))}
              </tbody>
            </table>
          )}
        </>
      )}
    </main>
  );
}
