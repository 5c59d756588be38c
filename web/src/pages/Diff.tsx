// Two runs compared step by step: `GET /api/executions/{a}/compare/{b}` aligns their steps
// (longest common subsequence over kind, target, endpoint and span path), so an inserted retry
// or a removed call shifts nothing after it. Each aligned pair shows its status and its
// duration, token and cost deltas; the steps only one run has are marked inserted / removed.
// The older field-level body diff (`GET /api/executions/{a}/diff/{b}`) stays reachable: per
// changed pair (its differing body fields, A beside B) and as a whole table (`?view=fields`).
import { useCallback, useEffect, useMemo, useRef, useState } from "react";
import { Link, useParams, useSearchParams } from "react-router";
import {
  api, ApiError, enc, type CompareChange, type CompareResult, type CompareRow, type DiffResult,
  type ExecutionDetail, type ExecutionSummary,
} from "../lib/api";
import { fmtCount, fmtMs, fmtTime, fmtUsd } from "../lib/format";
import { pretty } from "../components/Payload";
import "./Diff.css";

/** What a row is called on the page: B is read as the new version of A. */
const LABEL: Record<CompareChange, string> = {
  same: "same", changed: "changed", only_a: "removed", only_b: "inserted",
};
const MARK: Record<CompareChange, string> = { same: "=", changed: "~", only_a: "−", only_b: "+" };
/** Rows drawn at first (and per "show more"): a 100,000-step comparison stays responsive. */
const PAGE_ROWS = 1000;

function errorText(e: unknown): string {
  return e instanceof ApiError ? e.message : String(e);
}

function Side({ label, runId, x }: { label: string; runId: string; x: ExecutionSummary | null }) {
  return (
    <div className="diff-side" data-testid={`side-${label.toLowerCase()}`}>
      <div className="muted small">{label}</div>
      <Link className="mono" to={`/executions/${enc(runId)}`}>{runId}</Link>
      {x && (
        <div className="small">
          <span className={x.status === "error" ? "bad" : "good"}>{x.status}</span>
          {x.state && <span className={`badge cmp-state-${x.state}`}>{x.state}</span>} · {fmtTime(x.started_at)} ·{" "}
          {fmtMs(x.duration_ms)} · {fmtCount(x.events)} steps · {fmtCount(x.errors)} errors
        </div>
      )}
    </div>
  );
}

function signed(value: number | null, fmt: (v: number) => string): string {
  if (value === null || !Number.isFinite(value)) return "";
  if (value === 0) return "±0";
  return (value > 0 ? "+" : "−") + fmt(Math.abs(value));
}

/** A delta cell: red when B costs more (slower, more tokens, dearer), green when less. */
function Delta({ value, fmt, title }: { value: number | null; fmt: (v: number) => string; title?: string }) {
  const tone = value === null || value === 0 || !Number.isFinite(value) ? "" : value > 0 ? "bad" : "good";
  return <td className={`num mono small ${tone}`} title={title}>{signed(value, fmt)}</td>;
}

function statusText(status: string | null, code: number | null): string {
  if (status === null) return "–";
  return code === null ? status : `${status} ${code}`;
}

const tokens = (v: number) => fmtCount(Math.round(v));
const usd = (v: number) => fmtUsd(v);

function Summary({ s }: { s: CompareResult["summary"] }) {
  return (
    <p className="cmp-summary" data-testid="compare-summary">
      <span className="mono">{fmtCount(s.steps_a)}</span> vs <span className="mono">{fmtCount(s.steps_b)}</span> steps ·{" "}
      <span className="cmp-badge cmp-same">{fmtCount(s.same)} same</span>{" "}
      <span className="cmp-badge cmp-changed">{fmtCount(s.changed)} changed</span>{" "}
      <span className="cmp-badge cmp-removed">{fmtCount(s.only_a)} removed</span>{" "}
      <span className="cmp-badge cmp-inserted">{fmtCount(s.only_b)} inserted</span> · duration{" "}
      <b className="mono">{signed(s.duration_delta, fmtMs) || "±0"}</b> · tokens{" "}
      <b className="mono">{signed(s.tokens_delta, tokens) || "±0"}</b> · cost{" "}
      <b className="mono">{signed(s.cost_delta, usd) || "±0"}</b>
    </p>
  );
}

type Obj = Record<string, unknown>;

/** The value at a dotted path of the old diff (`response.body.items[0].sku`) in an event;
 * a JSON text met on the way is read as JSON, as the diff did. */
function valueAt(event: Obj, path: string): unknown {
  let value: unknown = event;
  for (const part of path.match(/\[\d+\]|[^.[\]]+/g) ?? []) {
    if (typeof value === "string") {
      try {
        value = JSON.parse(value);
      } catch {
        return undefined;
      }
    }
    if (value === null || typeof value !== "object") return undefined;
    value = part.startsWith("[") ? (value as unknown[])[Number(part.slice(1, -1))] : (value as Obj)[part];
  }
  return value;
}

function shown(value: unknown): string {
  return value === undefined ? "(absent)" : pretty(value);
}

/** The field-level body diff of one aligned pair, from the old diff route (fetched once per
 * page), with each differing field's value in A and in B. */
function PairFields({ row, oldDiff, fieldsHref }: {
  row: CompareRow; oldDiff: () => Promise<DiffResult>; fieldsHref: string;
}) {
  const [found, setFound] = useState<{ fields: string[] | null; a: Obj; b: Obj } | null>(null);
  const [error, setError] = useState<string | null>(null);
  useEffect(() => {
    const ctl = new AbortController();
    Promise.all([
      oldDiff(),
      api<Obj>(`/api/events/${enc(row.a_event_id!)}`, ctl.signal),
      api<Obj>(`/api/events/${enc(row.b_event_id!)}`, ctl.signal),
    ]).then(([diff, a, b]) => {
      const same = diff.rows.find((r) => r.event_id_a === row.a_event_id && r.event_id_b === row.b_event_id);
      const fields = same && Array.isArray(same.body_fields) ? (same.body_fields as string[]) : null;
      setFound({ fields, a, b });
    }).catch((e) => !ctl.signal.aborted && setError(errorText(e)));
    return () => ctl.abort();
  }, [row, oldDiff]);
  if (error) return <div className="error-box">{error}</div>;
  if (!found) return <div className="muted small">Loading the body diff…</div>;
  if (found.fields === null) {
    return (
      <div className="muted small">The field-level diff pairs these two steps differently;
        see the <Link to={fieldsHref}>field-level diff of all steps</Link>.</div>
    );
  }
  if (found.fields.length === 0) {
    return <div className="muted small">No request or response body field differs: only the status.</div>;
  }
  return (
    <table className="kv cmp-fields-table" data-testid="body-fields">
      <thead><tr><th>field</th><th>A</th><th>B</th></tr></thead>
      <tbody>
        {found.fields.map((path) => path.startsWith("…") ? (
          <tr key={path}><td colSpan={3} className="muted small">{path}</td></tr>
        ) : (
          <tr key={path}>
            <th className="mono small">{path}</th>
            <td><pre className="code small">{shown(valueAt(found.a, path))}</pre></td>
            <td><pre className="code small">{shown(valueAt(found.b, path))}</pre></td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

const COLUMNS = 10;

function CompareLine({ row, open, onToggle, oldDiff, fieldsHref }: {
  row: CompareRow; open: boolean; onToggle: () => void; oldDiff: () => Promise<DiffResult>;
  fieldsHref: string;
}) {
  const label = LABEL[row.change];
  const pair = row.a_event_id !== null && row.b_event_id !== null;
  return (
    <>
      <tr className={`cmp-row cmp-${label}`} data-change={label}>
        <td><span className={`cmp-badge cmp-${label}`}><b>{MARK[row.change]}</b> {label}</span></td>
        <td className="small">{row.kind}</td>
        <td>
          <div className="mono small">{row.endpoint}</div>
          <div className="muted small">{row.target}{row.span_path && <> · in {row.span_path}</>}</div>
        </td>
        <td className="mono small">
          <span className={row.status_a === "error" ? "bad" : ""}>{statusText(row.status_a, row.status_code_a)}</span>
          {" → "}
          <span className={row.status_b === "error" ? "bad" : ""}>{statusText(row.status_b, row.status_code_b)}</span>
        </td>
        <td className="num mono small">{fmtMs(row.duration_a)}</td>
        <td className="num mono small">{fmtMs(row.duration_b)}</td>
        <Delta value={row.duration_delta} fmt={fmtMs} />
        <Delta value={row.tokens_delta} fmt={tokens}
          title={row.tokens_a !== null || row.tokens_b !== null ? `${row.tokens_a ?? "–"} → ${row.tokens_b ?? "–"} tokens` : undefined} />
        <Delta value={row.cost_delta} fmt={usd} />
        <td>
          {pair && row.change === "changed" && (
            <button type="button" className="copy" aria-expanded={open} onClick={onToggle}>
              {open ? "hide body diff" : "body diff"}
            </button>
          )}
        </td>
      </tr>
      {open && (
        <tr className="cmp-fields-row">
          <td colSpan={COLUMNS}><PairFields row={row} oldDiff={oldDiff} fieldsHref={fieldsHref} /></td>
        </tr>
      )}
    </>
  );
}

function CompareTable({ result, oldDiff, fieldsHref }: {
  result: CompareResult; oldDiff: () => Promise<DiffResult>; fieldsHref: string;
}) {
  const [onlyChanges, setOnlyChanges] = useState(false);
  const [limit, setLimit] = useState(PAGE_ROWS);
  const [open, setOpen] = useState<Set<number>>(new Set());
  const rows = useMemo(() => result.rows.map((row, index) => ({ row, index }))
    .filter(({ row }) => !onlyChanges || row.change !== "same"), [result, onlyChanges]);
  const toggle = useCallback((index: number) => setOpen((was) => {
    const next = new Set(was);
    if (!next.delete(index)) next.add(index);
    return next;
  }), []);
  return (
    <>
      <label className="toolbar"><input type="checkbox" checked={onlyChanges}
        onChange={(e) => setOnlyChanges(e.target.checked)} /> only differences</label>
      {rows.length === 0 ? (
        <div className="empty">No differences.</div>
      ) : (
        <table className="grid compare" data-testid="compare">
          <thead>
            <tr>
              <th></th><th>kind</th><th>step</th><th>status A → B</th><th className="num">A</th>
              <th className="num">B</th><th className="num">Δ duration</th><th className="num">Δ tokens</th>
              <th className="num">Δ cost</th><th></th>
            </tr>
          </thead>
          <tbody>
            {rows.slice(0, limit).map(({ row, index }) => (
              <CompareLine key={index} row={row} open={open.has(index)} onToggle={() => toggle(index)}
                oldDiff={oldDiff} fieldsHref={fieldsHref} />
            ))}
          </tbody>
        </table>
      )}
      {rows.length > limit && (
        <div className="more">
          <button type="button" onClick={() => setLimit(limit + PAGE_ROWS)}>
            show {fmtCount(Math.min(PAGE_ROWS, rows.length - limit))} more of {fmtCount(rows.length - limit)}
          </button>
        </div>
      )}
    </>
  );
}

const KIND_COLUMNS = ["change", "diff", "status", "kind", "op"];

function cell(v: unknown): string {
  if (v === null || v === undefined) return "";
  if (typeof v === "string") return v;
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toFixed(3);
  return pretty(v);
}

/** The whole field-level diff (`/diff` route): steps paired by order within target and
 * endpoint, `body_fields` naming the request/response fields that differ. */
function FieldsTable({ diff }: { diff: DiffResult }) {
  const [onlyChanges, setOnlyChanges] = useState(true);
  const kindCol = diff.columns.find((c) => KIND_COLUMNS.includes(c));
  const shownRows = onlyChanges && kindCol ? diff.rows.filter((r) => cell(r[kindCol]) !== "same") : diff.rows;
  return (
    <>
      {diff.summary && <p className="mono small">{diff.summary}</p>}
      {kindCol && (
        <label className="toolbar"><input type="checkbox" checked={onlyChanges}
          onChange={(e) => setOnlyChanges(e.target.checked)} /> only differences</label>
      )}
      {shownRows.length === 0 ? (
        <div className="empty">No differences.</div>
      ) : (
        <table className="grid diff" data-testid="field-diff">
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
  );
}

export default function Diff() {
  const { a = "", b = "" } = useParams();
  const [search] = useSearchParams();
  const fieldsView = search.get("view") === "fields";
  const [result, setResult] = useState<CompareResult | null>(null);
  const [fields, setFields] = useState<DiffResult | null>(null);
  const [sides, setSides] = useState<(ExecutionSummary | null)[]>([null, null]);
  const [error, setError] = useState<string | null>(null);
  const diffPromise = useRef<Promise<DiffResult> | null>(null);

  const oldDiff = useCallback(() => {
    diffPromise.current ??= api<DiffResult>(`/api/executions/${enc(a)}/diff/${enc(b)}`);
    return diffPromise.current;
  }, [a, b]);

  useEffect(() => {
    diffPromise.current = null;
    const ctl = new AbortController();
    setResult(null);
    setFields(null);
    setError(null);
    setSides([null, null]);
    const fail = (e: unknown) => !ctl.signal.aborted && setError(errorText(e));
    if (fieldsView) {
      oldDiff().then((d) => !ctl.signal.aborted && (setFields(d), setSides([d.a, d.b]))).catch(fail);
    } else {
      api<CompareResult>(`/api/executions/${enc(a)}/compare/${enc(b)}`, ctl.signal).then(setResult).catch(fail);
      [a, b].forEach((runId, i) => {
        api<ExecutionDetail>(`/api/executions/${enc(runId)}?shape=columns`, ctl.signal)
          .then((d) => setSides((was) => was.map((x, k) => (k === i ? d.execution : x))))
          .catch(() => undefined); // the comparison itself reports an unknown run
      });
    }
    return () => ctl.abort();
  }, [a, b, fieldsView, oldDiff]);

  const here = `/diff/${enc(a)}/${enc(b)}`;
  const workflow = sides[0]?.workflow;
  return (
    <main className="page">
      <nav className="crumbs">
        <Link to="/">Workflows</Link>{workflow && <> / <Link to={`/workflows/${enc(workflow)}`}>{workflow}</Link></>} / compare
      </nav>
      <h1>Compare</h1>
      <div className="diff-head">
        <Side label="A" runId={a} x={sides[0]} />
        <Side label="B" runId={b} x={sides[1]} />
      </div>
      <div className="toolbar small" role="tablist">
        {fieldsView
          ? <><Link to={here} role="tab">aligned steps</Link><b role="tab" aria-selected>field-level diff</b></>
          : <><b role="tab" aria-selected>aligned steps</b><Link to={`${here}?view=fields`} role="tab">field-level diff</Link></>}
      </div>
      {error && <div className="error-box">{error}</div>}
      {!error && !(fieldsView ? fields : result) && <div className="muted">Loading…</div>}
      {fieldsView && fields && <FieldsTable diff={fields} />}
      {!fieldsView && result && (
        <>
          <Summary s={result.summary} />
          <CompareTable result={result} oldDiff={oldDiff} fieldsHref={`${here}?view=fields`} />
        </>
      )}
    </main>
  );
}
