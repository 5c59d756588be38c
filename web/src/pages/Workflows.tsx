import { useCallback, useEffect, useState } from "react";
import { Link } from "react-router";
import { api, ApiError, enc, type Workflow } from "../lib/api";
import { fmtAgo, fmtCount, fmtTime } from "../lib/format";
import { useLive } from "../lib/live";

export default function Workflows() {
  const [rows, setRows] = useState<Workflow[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [, setTick] = useState(0);

  const load = useCallback(() => {
    api<{ workflows: Workflow[] }>("/api/workflows")
      .then((r) => {
        setRows(r.workflows);
        setError(null);
      })
      .catch((e) => setError(e instanceof ApiError ? e.message : String(e)));
  }, []);

  useEffect(() => {
    load();
    const id = window.setInterval(() => setTick((t) => t + 1), 15_000); // refresh "ago"
    return () => window.clearInterval(id);
  }, [load]);

  useLive("workflow", (w: Workflow) =>
    setRows((prev) => {
      const list = prev ? prev.filter((r) => r.workflow !== w.workflow) : [];
      return [...list, w].sort((a, b) => a.workflow.localeCompare(b.workflow));
    }),
  );
  useLive("resync", load);

  return (
    <main className="page">
      <h1>Workflows</h1>
      {error && <div className="error-box">{error}</div>}
      {rows === null && !error && <div className="muted">Loading…</div>}
      {rows && rows.length === 0 && (
        <div className="empty">
          Nothing recorded yet. Call <code>tracelab.init(workflow_name="…")</code> in your app;
          workflows appear here as soon as their first events land.
        </div>
      )}
      {rows && rows.length > 0 && (
        <table className="grid">
          <thead>
            <tr>
              <th>workflow</th>
              <th className="num">executions</th>
              <th className="num">events</th>
              <th className="num">errors</th>
              <th>last seen</th>
            </tr>
          </thead>
          <tbody>
            {rows.map((w) => (
              <tr key={w.workflow} data-workflow={w.workflow}>
                <td><Link to={`/workflows/${enc(w.workflow)}`}>{w.workflow}</Link></td>
                <td className="num">{fmtCount(w.executions)}</td>
                <td className="num">{fmtCount(w.events)}</td>
                <td className={`num ${w.errors ? "bad" : ""}`}>{fmtCount(w.errors)}</td>
                <td title={w.last_event ?? ""}>{fmtAgo(w.last_event)} <span className="muted small">{fmtTime(w.last_event)}</span></td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </main>
  );
}
