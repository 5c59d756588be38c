import { useCallback, useEffect, useMemo, useState } from "react";
import { Link, useNavigate, useParams } from "react-router";
import { api, ApiError, enc, type ExecutionSummary } from "../lib/api";
import { fmtCount, fmtMs, fmtTime, tagsText } from "../lib/format";
import { useLive } from "../lib/live";
import { StateBadge } from "../components/StateBadge";

type SortKey = "started_at_ns" | "duration_ms" | "events" | "errors" | "status" | "state" | "run_id";

interface Page {
  executions: ExecutionSummary[];
  next_cursor: string | null;
}

export default function Executions() {
  const { wf = "" } = useParams();
  const navigate = useNavigate();
  const [rows, setRows] = useState<ExecutionSummary[] | null>(null);
  const [cursor, setCursor] = useState<string | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [status, setStatus] = useState<"" | "ok" | "error">("");
  const [text, setText] = useState("");
  const [sort, setSort] = useState<{ key: SortKey; desc: boolean }>({ key: "started_at_ns", desc: true });
  const [picked, setPicked] = useState<string[]>([]);

  const base = `/api/workflows/${enc(wf)}/executions?limit=200${status ? `&status=${status}` : ""}`;
  const load = useCallback(() => {
    api<Page>(base)
      .then((p) => {
        setRows(p.executions);
        setCursor(p.next_cursor);
        setError(null);
      })
      .catch((e) => setError(e instanceof ApiError ? e.message : String(e)));
  }, [base]);

  useEffect(() => {
    setRows(null);
    load();
  }, [load]);

  const more = () => {
    if (!cursor) return;
    api<Page>(`${base}&cursor=${enc(cursor)}`).then((p) => {
      setRows((prev) => [...(prev ?? []), ...p.executions]);
      setCursor(p.next_cursor);
    }, (e) => setError(String(e)));
  };

  useLive("execution", (x: ExecutionSummary) => {
    if (x.workflow !== wf) return;
    if (status && x.status !== status) return;
    setRows((prev) => [x, ...(prev ?? []).filter((r) => r.run_id !== x.run_id)]);
    setError(null);
  });
  useLive("resync", load);

  const shown = useMemo(() => {
    if (!rows) return [];
    const q = text.trim().toLowerCase();
    const list = q
      ? rows.filter((r) => `${r.run_id} ${tagsText(r.tags)} ${r.services.join(" ")} ${r.targets.join(" ")}`
          .toLowerCase().includes(q))
      : rows.slice();
    const { key, desc } = sort;
    list.sort((a, b) => {
      const va = a[key];
      const vb = b[key];
      const c = typeof va === "number" && typeof vb === "number" ? va - vb : String(va).localeCompare(String(vb));
      return desc ? -c : c;
    });
    return list;
  }, [rows, text, sort]);

  const header = (key: SortKey, label: string, cls = "") => (
    <th className={`sortable ${cls}`} aria-sort={sort.key === key ? (sort.desc ? "descending" : "ascending") : "none"}
      onClick={() => setSort((s) => ({ key, desc: s.key === key ? !s.desc : true }))}>
      {label}{sort.key === key ? (sort.desc ? " ▾" : " ▴") : ""}
    </th>
  );

  const toggle = (id: string) =>
    setPicked((p) => (p.includes(id) ? p.filter((x) => x !== id) : [...p.slice(-1), id]));

  return (
    <main className="page">
      <nav className="crumbs"><Link to="/">Workflows</Link> / <span>{wf}</span></nav>
      <h1>{wf}</h1>
      <div className="toolbar">
        <label>status{" "}
          <select value={status} onChange={(e) => setStatus(e.target.value as "" | "ok" | "error")}>
            <option value="">all</option>
            <option value="ok">ok</option>
            <option value="error">error</option>
          </select>
        </label>
        <input type="search" placeholder="filter by run id, tag, service, target" value={text}
          onChange={(e) => setText(e.target.value)} aria-label="Filter executions" />
        <button type="button" disabled={picked.length !== 2}
          onClick={() => navigate(`/diff/${enc(picked[0])}/${enc(picked[1])}`)}>
          Diff selected ({picked.length}/2)
        </button>
      </div>
      {error && <div className="error-box">{error}</div>}
      {rows === null && !error && <div className="muted">Loading…</div>}
      {rows && (
        <table className="grid">
          <thead>
            <tr>
              <th aria-label="select for diff"></th>
              {header("status", "status")}
              {header("state", "state")}
              {header("run_id", "run")}
              {header("started_at_ns", "started")}
              {header("duration_ms", "duration", "num")}
              {header("events", "events", "num")}
              {header("errors", "errors", "num")}
              <th>services</th>
              <th>tags</th>
            </tr>
          </thead>
          <tbody>
            {shown.map((x) => (
              <tr key={x.run_id} data-run-id={x.run_id}>
                <td><input type="checkbox" checked={picked.includes(x.run_id)} onChange={() => toggle(x.run_id)}
                  aria-label={`select ${x.run_id} for diff`} /></td>
                <td><span className={`badge ${x.status === "error" ? "bad-bg" : "good-bg"}`}>{x.status}</span></td>
                <td><StateBadge state={x.state} /></td>
                <td className="mono"><Link to={`/executions/${enc(x.run_id)}`}>{x.run_id}</Link></td>
                <td title={x.started_at}>{fmtTime(x.started_at)}</td>
                <td className="num">{fmtMs(x.duration_ms)}</td>
                <td className="num">{fmtCount(x.events)}</td>
                <td className={`num ${x.errors ? "bad" : ""}`}>{fmtCount(x.errors)}</td>
                <td className="small">{x.services.join(", ")}</td>
                <td className="small mono">{tagsText(x.tags)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {rows && shown.length === 0 && <div className="empty">No execution matches.</div>}
      {cursor && <button type="button" className="more" onClick={more}>Load more</button>}
    </main>
  );
}
