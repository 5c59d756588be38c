// The steps as DOM text (searchable, accessible), virtualised: only the visible rows exist.
// A span's row folds its descendants away (▾/▸) and can become the view's root (⤢).
import { useEffect, useRef, useState } from "react";
import type { Steps } from "../lib/steps";
import { fmtMs } from "../lib/format";
import { ReplayBadge } from "./Payload";

const ROW_H = 26;
const OVERSCAN = 12;

interface Props {
  steps: Steps;
  rows: Int32Array; // step indices to show, in order
  selected: number | null;
  onSelect: (i: number) => void;
  collapsed?: ReadonlySet<string>; // span ids whose descendants are folded away
  onToggle?: (i: number) => void; // fold or unfold step i's descendants
  onReroot?: (i: number) => void; // show only step i and its descendants
  baseDepth?: number; // the depth shown flush left (a re-rooted view's root)
}

export default function StepTable({ steps, rows, selected, onSelect, collapsed, onToggle, onReroot,
  baseDepth = 0 }: Props) {
  const box = useRef<HTMLDivElement>(null);
  const [scrollTop, setScrollTop] = useState(0);
  const [height, setHeight] = useState(400);

  useEffect(() => {
    const el = box.current;
    if (!el) return;
    const ro = new ResizeObserver(() => setHeight(el.clientHeight));
    ro.observe(el);
    setHeight(el.clientHeight);
    return () => ro.disconnect();
  }, []);

  // keep the selected row visible
  useEffect(() => {
    const el = box.current;
    if (!el || selected === null) return;
    let pos = -1;
    for (let k = 0; k < rows.length; k++) if (rows[k] === selected) { pos = k; break; }
    if (pos < 0) return;
    const top = pos * ROW_H;
    if (top < el.scrollTop || top + ROW_H > el.scrollTop + el.clientHeight) {
      el.scrollTop = Math.max(0, top - el.clientHeight / 2);
    }
  }, [selected, rows]);

  const first = Math.max(0, Math.floor(scrollTop / ROW_H) - OVERSCAN);
  const last = Math.min(rows.length, Math.ceil((scrollTop + height) / ROW_H) + OVERSCAN);
  const items = [];
  for (let k = first; k < last; k++) {
    const i = rows[k];
    const err = steps.status[i] === "error";
    const depth = Math.max(0, steps.depth[i] - baseDepth);
    const span = steps.span[i];
    const parent = steps.size[i] > 1 && span !== null;
    const folded = parent && collapsed?.has(span!) === true;
    items.push(
      <div
        key={steps.id[i]}
        role="row"
        aria-selected={i === selected}
        data-event-id={steps.id[i]}
        className={`step-row${i === selected ? " selected" : ""}${err ? " error" : ""}`}
        style={{ top: k * ROW_H }}
        onClick={() => onSelect(i)}
      >
        <span role="cell" className="c-num muted">{k + 1}</span>
        <span role="cell" className="c-off mono">+{fmtMs(steps.offset[i])}</span>
        <span role="cell" className="c-svc" title={steps.service[i]}>{steps.service[i]}</span>
        <span role="cell" className="c-kind">{steps.kind[i]}</span>
        <span role="cell" className="c-ep mono" title={`${steps.endpoint[i]} → ${steps.target[i]}`}>
          <span style={{ paddingLeft: Math.min(depth, 12) * 14 }}>
            {parent && onToggle ? (
              <button type="button" className="fold" aria-expanded={!folded}
                aria-label={`${folded ? "expand" : "collapse"} ${steps.endpoint[i]}`}
                title={folded ? `show its ${steps.size[i] - 1} descendant steps` : "hide its descendant steps"}
                onClick={(e) => { e.stopPropagation(); onToggle(i); }}>
                {folded ? "▸" : "▾"}
              </button>
            ) : depth > 0 ? "└ " : ""}
            {steps.endpoint[i]}
          </span>
          {folded ? <span className="badge" data-testid="folded">+{steps.size[i] - 1}</span> : null}
          {steps.orphan[i] ? (
            <span className="badge warn" title="its parent span is not in this execution (yet)">
              orphan
            </span>
          ) : null}
          {steps.fault[i] !== null ? (
            <span className="badge fault" title={`fault rule ${steps.fault[i]} (${steps.faultAction[i] ?? "?"})`}>
              ⚡ fault: {steps.fault[i]}
            </span>
          ) : steps.replay[i] !== null ? (
            <ReplayBadge value={steps.replay[i]!} />
          ) : null}
          <span className="muted target"> {steps.target[i]}</span>
        </span>
        <span role="cell" className={`c-status ${err ? "bad" : "good"}`}>
          {steps.status[i]}
          {steps.code[i] !== null ? ` ${steps.code[i]}` : ""}
        </span>
        <span role="cell" className="c-lat mono">
          {fmtMs(steps.latency[i])}
          {parent && onReroot ? (
            <button type="button" className="reroot" aria-label={`re-root at ${steps.endpoint[i]}`}
              title="show only this span and its descendants"
              onClick={(e) => { e.stopPropagation(); onReroot(i); }}>⤢</button>
          ) : null}
        </span>
      </div>,
    );
  }

  const onKey = (e: React.KeyboardEvent) => {
    if (e.key !== "ArrowDown" && e.key !== "ArrowUp") return;
    e.preventDefault();
    let pos = -1;
    if (selected !== null) for (let k = 0; k < rows.length; k++) if (rows[k] === selected) { pos = k; break; }
    const next = Math.min(rows.length - 1, Math.max(0, pos + (e.key === "ArrowDown" ? 1 : -1)));
    if (rows.length) onSelect(rows[next]);
  };

  return (
    <div className="step-table" role="table" aria-label="Steps" aria-rowcount={rows.length}>
      <div className="step-head" role="row">
        <span role="columnheader" className="c-num">#</span>
        <span role="columnheader" className="c-off">start</span>
        <span role="columnheader" className="c-svc">service</span>
        <span role="columnheader" className="c-kind">kind</span>
        <span role="columnheader" className="c-ep">step → target</span>
        <span role="columnheader" className="c-status">status</span>
        <span role="columnheader" className="c-lat">latency</span>
      </div>
      <div
        className="step-body"
        ref={box}
        tabIndex={0}
        onKeyDown={onKey}
        onScroll={(e) => setScrollTop((e.target as HTMLDivElement).scrollTop)}
      >
        <div style={{ height: rows.length * ROW_H, position: "relative" }}>{items}</div>
        {rows.length === 0 && <div className="empty">No step matches.</div>}
      </div>
    </div>
  );
}
