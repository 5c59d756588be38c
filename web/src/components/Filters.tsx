// The execution page's filter bar. Filters HIDE what does not match, in the Gantt and the step
// table alike. Every part lives in the URL's query string (q, kind, target, status, min_ms, llm,
// fold, root), so a filtered, collapsed or re-rooted view is a link that opens as it was.
import { useCallback, useEffect, useMemo, useRef, useState } from "react";
import { useSearchParams } from "react-router";
import { NO_FILTER, valueCounts, type StepFilter, type Steps } from "../lib/steps";
import { fmtCount } from "../lib/format";

/** The most values a kind/target/status list offers (the rest: type in the search box). */
const MAX_CHOICES = 200;

function parse(params: URLSearchParams): StepFilter {
  const min = params.get("min_ms");
  const minMs = min !== null && min.trim() !== "" && Number.isFinite(Number(min)) ? Number(min) : null;
  return {
    text: params.get("q") ?? "",
    kinds: params.getAll("kind"),
    targets: params.getAll("target"),
    statuses: params.getAll("status"),
    minMs,
    llmTools: params.get("llm") === "1",
    collapsed: params.getAll("fold"),
    root: params.get("root") || null,
  };
}

function write(params: URLSearchParams, f: StepFilter): URLSearchParams {
  const out = new URLSearchParams(params);
  for (const key of ["q", "kind", "target", "status", "min_ms", "llm", "fold", "root"]) out.delete(key);
  if (f.text) out.set("q", f.text);
  f.kinds.forEach((v) => out.append("kind", v));
  f.targets.forEach((v) => out.append("target", v));
  f.statuses.forEach((v) => out.append("status", v));
  if (f.minMs !== null) out.set("min_ms", String(f.minMs));
  if (f.llmTools) out.set("llm", "1");
  f.collapsed.forEach((v) => out.append("fold", v));
  if (f.root) out.set("root", f.root);
  return out;
}

export type UpdateFilter = (patch: Partial<StepFilter>, opts?: { push?: boolean }) => void;

/** The filter in the URL, and a setter: a re-root is a new history entry (the browser's Back
 * goes back to the wider view); every other change replaces the current one. */
export function useStepFilter(): [StepFilter, UpdateFilter] {
  const [params, setParams] = useSearchParams();
  const key = params.toString();
  const filter = useMemo(() => parse(new URLSearchParams(key)), [key]);
  const update = useCallback<UpdateFilter>((patch, opts) => {
    setParams((p) => write(p, { ...parse(p), ...patch }), { replace: !opts?.push });
  }, [setParams]);
  return [filter, update];
}

/** A span's subtree folded or unfolded: the `fold` list gains or loses its span id. */
export function toggled(collapsed: string[], span: string): string[] {
  return collapsed.includes(span) ? collapsed.filter((s) => s !== span) : [...collapsed, span];
}

interface PickProps {
  label: string;
  counts: [string, number][];
  chosen: string[];
  onChange: (values: string[]) => void;
}

/** Any-of choice over one column's values, each with its step count; open until a click
 * elsewhere or Escape (several values are picked in one go). */
function Pick({ label, counts, chosen, onChange }: PickProps) {
  const box = useRef<HTMLDetailsElement>(null);
  useEffect(() => {
    const close = (e: Event) => {
      const el = box.current;
      if (!el?.open) return;
      if (e instanceof KeyboardEvent ? e.key === "Escape" : !el.contains(e.target as Node)) el.open = false;
    };
    document.addEventListener("pointerdown", close);
    document.addEventListener("keydown", close);
    return () => {
      document.removeEventListener("pointerdown", close);
      document.removeEventListener("keydown", close);
    };
  }, []);
  const known = new Set(counts.map(([v]) => v));
  const all: [string, number][] = [...counts.slice(0, MAX_CHOICES), ...chosen.filter((v) => !known.has(v)).map((v): [string, number] => [v, 0])];
  const summary = chosen.length === 0 ? "all" : chosen.length <= 2 ? chosen.join(", ") : `${chosen.length} chosen`;
  return (
    <details ref={box} className={`pick${chosen.length ? " on" : ""}`} data-testid={`pick-${label}`}>
      <summary>{label}: {summary}</summary>
      <div className="pick-list">
        {all.map(([value, count]) => (
          <label key={value} className="small">
            <input type="checkbox" aria-label={`${label} ${value}`} checked={chosen.includes(value)}
              onChange={(e) => onChange(e.target.checked ? [...chosen, value] : chosen.filter((v) => v !== value))} />{" "}
            <span className="mono">{value || "(none)"}</span> <span className="muted">{fmtCount(count)}</span>
          </label>
        ))}
        {counts.length > MAX_CHOICES && (
          <div className="muted small">{fmtCount(counts.length - MAX_CHOICES)} more: use the search box</div>
        )}
        {chosen.length > 0 && <button type="button" onClick={() => onChange([])}>any {label}</button>}
      </div>
    </details>
  );
}

interface BarProps {
  steps: Steps;
  filter: StepFilter;
  update: UpdateFilter;
  shown: number;
}

export default function FilterBar({ steps, filter, update, shown }: BarProps) {
  const kinds = useMemo(() => valueCounts(steps.kind), [steps.kind]);
  const targets = useMemo(() => valueCounts(steps.target), [steps.target]);
  const statuses = useMemo(() => valueCounts(steps.status), [steps.status]);
  // typed fields answer each key at once; the URL follows (and a Back or a link sets them)
  const [text, setText] = useState(filter.text);
  const [min, setMin] = useState(filter.minMs === null ? "" : String(filter.minMs));
  useEffect(() => setText(filter.text), [filter.text]);
  useEffect(() => {
    setMin((m) => (Number(m) === filter.minMs && m.trim() !== "" ? m : filter.minMs === null ? "" : String(filter.minMs)));
  }, [filter.minMs]);
  const narrowed = filter.text !== "" || filter.kinds.length + filter.targets.length + filter.statuses.length > 0
    || filter.minMs !== null || filter.llmTools || filter.collapsed.length > 0;

  return (
    <div className="toolbar filters" role="search" aria-label="Step filters">
      <input type="search" placeholder="filter steps: endpoint, target, service, status, id" value={text}
        onChange={(e) => { setText(e.target.value); update({ text: e.target.value }); }} aria-label="Filter steps" />
      <Pick label="kind" counts={kinds} chosen={filter.kinds} onChange={(v) => update({ kinds: v })} />
      <Pick label="target" counts={targets} chosen={filter.targets} onChange={(v) => update({ targets: v })} />
      <Pick label="status" counts={statuses} chosen={filter.statuses} onChange={(v) => update({ statuses: v })} />
      <label className="small">
        slower than{" "}
        <input type="number" min={0} step="any" className="min-ms" value={min} aria-label="Slower than (ms)"
          onChange={(e) => {
            setMin(e.target.value);
            const v = e.target.value.trim();
            update({ minMs: v !== "" && Number.isFinite(Number(v)) ? Number(v) : null });
          }} /> ms
      </label>
      <label className="small">
        <input type="checkbox" checked={filter.llmTools} onChange={(e) => update({ llmTools: e.target.checked })} />{" "}
        LLM &amp; tools only
      </label>
      {narrowed && (
        <button type="button" onClick={() => { setText(""); setMin(""); update({ ...NO_FILTER, root: filter.root }); }}>
          Clear filters
        </button>
      )}
      <span className="muted small" data-testid="shown-count">{fmtCount(shown)} of {fmtCount(steps.n)} steps</span>
    </div>
  );
}
