// The Gantt timeline on a canvas: lanes by service, nested rows, colour by status, zoom and
// pan, a time axis. Only what is visible is drawn, and at most one bar per pixel per row, so
// 100,000 steps stay interactive. A call a fault rule hit (tag `fault`) keeps its status colour
// under orange hatching and an orange outline, so an injected failure never reads as the
// vendor's own; its hover names the rule and the action. A filtered view comes in as `steps`
// laid out with only the shown steps (lib/steps.ts `shownSteps`): hidden steps take no row and
// no pixel, and the view fits the shown steps' time range.
import { useCallback, useEffect, useMemo, useRef, useState } from "react";
import type { Steps } from "../lib/steps";
import { fmtMs, fmtUsd } from "../lib/format";

const ROW_H = 18;
const BAR_H = 12;
const AXIS_H = 24;
const GUTTER = 150;
const MAX_HEIGHT = 340;

const COLORS = {
  ok: "#3b82f6",
  okFn: "#6366f1",
  error: "#dc2626",
  selected: "#f59e0b",
  grid: "#e2e8f0",
  text: "#0f172a",
  muted: "#64748b",
  laneA: "#ffffff",
  laneB: "#f8fafc",
  fault: "#f97316",
};

/** Orange diagonal stripes over a transparent tile: drawn over a faulted bar's own colour. */
function faultPattern(ctx: CanvasRenderingContext2D): CanvasPattern | string {
  const tile = document.createElement("canvas");
  tile.width = 6;
  tile.height = 6;
  const t = tile.getContext("2d");
  if (!t) return COLORS.fault;
  t.strokeStyle = COLORS.fault;
  t.lineWidth = 2;
  t.beginPath();
  t.moveTo(-1, 7);
  t.lineTo(7, -1);
  t.moveTo(-1, 1);
  t.lineTo(1, -1);
  t.moveTo(5, 7);
  t.lineTo(7, 5);
  t.stroke();
  return ctx.createPattern(tile, "repeat") ?? COLORS.fault;
}

interface View {
  start: number; // ms at the left edge of the plot
  span: number; // ms across the plot
  scrollY: number; // px
}

interface Props {
  steps: Steps;
  selected: number | null;
  onSelect: (i: number) => void;
}

declare global {
  interface Window {
    __tracelab?: { timelineDrawnAt?: number; timelineSteps?: number; draws?: number };
  }
}

function niceStep(raw: number): number {
  const p = Math.pow(10, Math.floor(Math.log10(raw)));
  for (const m of [1, 2, 5, 10]) if (m * p >= raw) return m * p;
  return 10 * p;
}

/** First index in `items` (sorted by offset) whose offset >= t. */
function lowerBound(items: number[], offset: Float64Array, t: number): number {
  let lo = 0;
  let hi = items.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (offset[items[mid]] < t) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

export default function Gantt({ steps, selected, onSelect }: Props) {
  const wrap = useRef<HTMLDivElement>(null);
  const canvas = useRef<HTMLCanvasElement>(null);
  const [width, setWidth] = useState(800);
  const begin = steps.begin;
  const total = Math.max(steps.end - begin, 0.001);
  const whole = useCallback((): View => ({ start: begin, span: total * 1.02, scrollY: 0 }),
    [begin, total]);
  const [view, setView] = useState<View>(whole);
  const fitted = useRef(false);
  const drag = useRef<{ x: number; y: number; view: View; moved: boolean } | null>(null);

  const contentH = steps.rows.length * ROW_H;
  const height = Math.min(MAX_HEIGHT, AXIS_H + Math.max(contentH, ROW_H) + 2);
  const plotW = Math.max(50, width - GUTTER - 8);
  const maxScroll = Math.max(0, contentH - (height - AXIS_H));

  // Keep the whole run (or what the filters show of it) in view while it grows, until the user
  // zooms or pans.
  useEffect(() => {
    if (!fitted.current) setView((v) => ({ ...whole(), scrollY: v.scrollY }));
  }, [whole]);
  // A scroll past the last row of a smaller (filtered) layout comes back into range.
  useEffect(() => {
    setView((v) => (v.scrollY > maxScroll ? { ...v, scrollY: maxScroll } : v));
  }, [maxScroll]);

  useEffect(() => {
    const el = wrap.current;
    if (!el) return;
    const ro = new ResizeObserver(() => setWidth(el.clientWidth));
    ro.observe(el);
    setWidth(el.clientWidth);
    return () => ro.disconnect();
  }, []);

  const draw = useCallback(() => {
    const c = canvas.current;
    if (!c) return;
    const dpr = window.devicePixelRatio || 1;
    if (c.width !== Math.round(width * dpr) || c.height !== Math.round(height * dpr)) {
      c.width = Math.round(width * dpr);
      c.height = Math.round(height * dpr);
      c.style.width = `${width}px`;
      c.style.height = `${height}px`;
    }
    const ctx = c.getContext("2d");
    if (!ctx) return;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, width, height);
    ctx.font = "11px system-ui, sans-serif";
    ctx.textBaseline = "middle";
    const { start, span, scrollY } = view;
    const scale = plotW / span; // px per ms
    const x0 = GUTTER;
    const { offset, latency, status, kind, rows, lanes, fault } = steps;
    let hatch: CanvasPattern | string | null = null;
    let faultsDrawn = 0;

    // lane backgrounds and labels
    const firstRow = Math.max(0, Math.floor(scrollY / ROW_H));
    const lastRow = Math.min(rows.length - 1, Math.ceil((scrollY + height - AXIS_H) / ROW_H));
    lanes.forEach((lane, li) => {
      const y = AXIS_H + lane.firstRow * ROW_H - scrollY;
      const h = lane.rowCount * ROW_H;
      if (y + h < AXIS_H || y > height) return;
      ctx.fillStyle = li % 2 ? COLORS.laneB : COLORS.laneA;
      ctx.fillRect(0, y, width, h);
      ctx.fillStyle = COLORS.grid;
      ctx.fillRect(0, y + h - 1, width, 1);
      ctx.fillStyle = COLORS.text;
      const label = lane.service.length > 22 ? lane.service.slice(0, 21) + "…" : lane.service;
      ctx.fillText(label, 6, Math.max(y, AXIS_H) + ROW_H / 2);
    });

    // grid and axis
    const tick = niceStep(span / Math.max(2, plotW / 90));
    const firstTick = Math.ceil(start / tick) * tick;
    ctx.fillStyle = "#ffffff";
    ctx.fillRect(0, 0, width, AXIS_H);
    for (let t = firstTick; t <= start + span; t += tick) {
      const x = x0 + (t - start) * scale;
      ctx.fillStyle = COLORS.grid;
      ctx.fillRect(Math.round(x), AXIS_H - 4, 1, height);
      ctx.fillStyle = COLORS.muted;
      ctx.fillText(`+${fmtMs(t)}`, x + 3, AXIS_H / 2);
    }
    ctx.fillStyle = COLORS.grid;
    ctx.fillRect(0, AXIS_H - 1, width, 1);
    ctx.fillRect(GUTTER - 1, AXIS_H, 1, height);

    // bars
    ctx.save();
    ctx.beginPath();
    ctx.rect(x0, AXIS_H, plotW + 8, height - AXIS_H);
    ctx.clip();
    const tEnd = start + span;
    let selectedBox: [number, number, number, number] | null = null;
    for (let r = firstRow; r <= lastRow; r++) {
      const row = rows[r];
      const items = row.items;
      const y = AXIS_H + r * ROW_H - scrollY + (ROW_H - BAR_H) / 2;
      let k = lowerBound(items, offset, start - row.maxLatency);
      let lastPx = -Infinity;
      let lastColor = "";
      for (; k < items.length; k++) {
        const i = items[k];
        const s = offset[i];
        if (s > tEnd) break;
        const e = s + latency[i];
        if (e < start) continue;
        let xa = x0 + (s - start) * scale;
        let xb = x0 + (e - start) * scale;
        if (xa < x0 - 2) xa = x0 - 2;
        if (xb > x0 + plotW + 4) xb = x0 + plotW + 4;
        const w = Math.max(1, xb - xa);
        const color = status[i] === "error" ? COLORS.error
          : kind[i] === "function" ? COLORS.okFn : COLORS.ok;
        const faulted = fault[i] !== null;
        const look = faulted ? `fault:${color}` : color;
        if (i === selected) selectedBox = [xa, y, w, BAR_H];
        // skip bars that would only repaint the same pixel column in the same look
        if (xa + w <= lastPx && look === lastColor) continue;
        ctx.fillStyle = color;
        ctx.fillRect(xa, y, w, BAR_H);
        if (faulted) {
          hatch ??= faultPattern(ctx);
          ctx.fillStyle = hatch;
          ctx.fillRect(xa, y, w, BAR_H);
          ctx.strokeStyle = COLORS.fault;
          ctx.lineWidth = 2;
          ctx.strokeRect(xa, y, Math.max(w, 2), BAR_H);
          faultsDrawn++;
        }
        lastPx = Math.ceil(xa + w);
        lastColor = look;
        if (w > 60) {
          ctx.fillStyle = "#ffffff";
          const label = steps.endpoint[i];
          ctx.save();
          ctx.beginPath();
          ctx.rect(xa, y, w - 2, BAR_H);
          ctx.clip();
          ctx.fillText(label, xa + 4, y + BAR_H / 2 + 0.5);
          ctx.restore();
        }
      }
    }
    if (selectedBox) {
      ctx.strokeStyle = COLORS.selected;
      ctx.lineWidth = 2;
      const [x, y, w, h] = selectedBox;
      ctx.strokeRect(x - 1, y - 1, w + 2, h + 2);
    }
    ctx.restore();
    c.dataset.drawnFaults = String(faultsDrawn);
    c.dataset.shownSteps = String(steps.shown);
    if (steps.n > 0 && c.dataset.drawnSteps !== String(steps.n)) {
      c.dataset.drawnSteps = String(steps.n);
      const mark = (window.__tracelab ??= {});
      if (mark.timelineDrawnAt === undefined) {
        mark.timelineDrawnAt = performance.now();
        mark.timelineSteps = steps.n;
      }
      mark.draws = (mark.draws ?? 0) + 1;
    }
  }, [steps, view, width, height, plotW, selected]);

  useEffect(() => {
    const id = requestAnimationFrame(draw);
    return () => cancelAnimationFrame(id);
  }, [draw]);

  // scroll the selected step into the visible rows
  useEffect(() => {
    if (selected === null || selected >= steps.n) return;
    const r = steps.rowOf[selected];
    if (r < 0) return; // hidden by the filters
    const top = r * ROW_H;
    setView((v) => {
      const visible = height - AXIS_H;
      if (top >= v.scrollY && top + ROW_H <= v.scrollY + visible) return v;
      return { ...v, scrollY: Math.min(maxScroll, Math.max(0, top - visible / 2)) };
    });
  }, [selected, steps, height, maxScroll]);

  const hit = (clientX: number, clientY: number): number | null => {
    const c = canvas.current;
    if (!c) return null;
    const rect = c.getBoundingClientRect();
    const x = clientX - rect.left;
    const y = clientY - rect.top;
    if (x < GUTTER || y < AXIS_H) return null;
    const r = Math.floor((y - AXIS_H + view.scrollY) / ROW_H);
    const row = steps.rows[r];
    if (!row) return null;
    const scale = plotW / view.span;
    const t = view.start + (x - GUTTER) / scale;
    if (!row.items.length) return null;
    const slack = 3 / scale;
    let best: number | null = null;
    let bestLen = Infinity;
    let k = lowerBound(row.items, steps.offset, t - row.maxLatency - slack);
    for (; k < row.items.length; k++) {
      const i = row.items[k];
      const s = steps.offset[i];
      if (s > t + slack) break;
      const e = s + steps.latency[i];
      if (e + slack >= t && steps.latency[i] < bestLen) {
        best = i;
        bestLen = steps.latency[i];
      }
    }
    return best;
  };

  const zoom = (factor: number, anchorX?: number) => {
    fitted.current = true;
    setView((v) => {
      const ax = anchorX === undefined ? plotW / 2 : Math.min(plotW, Math.max(0, anchorX));
      const tAnchor = v.start + (ax / plotW) * v.span;
      const span = Math.min(total * 50, Math.max(0.0005, v.span * factor));
      return { ...v, span, start: tAnchor - (ax / plotW) * span };
    });
  };

  useEffect(() => {
    const c = canvas.current;
    if (!c) return;
    const onWheel = (e: WheelEvent) => {
      const rect = c.getBoundingClientRect();
      if (e.ctrlKey || e.metaKey) {
        e.preventDefault();
        zoom(Math.exp(e.deltaY * 0.002), e.clientX - rect.left - GUTTER);
      } else if (e.shiftKey || Math.abs(e.deltaX) > Math.abs(e.deltaY)) {
        e.preventDefault();
        fitted.current = true;
        const d = e.shiftKey ? e.deltaY : e.deltaX;
        setView((v) => ({ ...v, start: v.start + (d / plotW) * v.span }));
      } else if (maxScroll > 0) {
        e.preventDefault();
        setView((v) => ({ ...v, scrollY: Math.min(maxScroll, Math.max(0, v.scrollY + e.deltaY)) }));
      }
    };
    c.addEventListener("wheel", onWheel, { passive: false });
    return () => c.removeEventListener("wheel", onWheel);
  });

  const onPointerDown = (e: React.PointerEvent) => {
    drag.current = { x: e.clientX, y: e.clientY, view, moved: false };
    (e.target as Element).setPointerCapture?.(e.pointerId);
  };
  const onPointerMove = (e: React.PointerEvent) => {
    const d = drag.current;
    if (!d) return;
    const dx = e.clientX - d.x;
    const dy = e.clientY - d.y;
    if (!d.moved && Math.abs(dx) + Math.abs(dy) < 4) return;
    d.moved = true;
    fitted.current = true;
    setView({
      span: d.view.span,
      start: d.view.start - (dx / plotW) * d.view.span,
      scrollY: Math.min(maxScroll, Math.max(0, d.view.scrollY - dy)),
    });
  };
  const onPointerUp = (e: React.PointerEvent) => {
    const d = drag.current;
    drag.current = null;
    if (d && !d.moved) {
      const i = hit(e.clientX, e.clientY);
      if (i !== null) onSelect(i);
    }
  };
  const [hover, setHover] = useState<{ i: number; x: number; y: number } | null>(null);
  const onMove = (e: React.MouseEvent) => {
    if (drag.current) return;
    const i = hit(e.clientX, e.clientY);
    const rect = canvas.current!.getBoundingClientRect();
    setHover(i === null ? null : { i, x: e.clientX - rect.left, y: e.clientY - rect.top });
  };

  const faults = useMemo(() => steps.fault.reduce((k, f) => (f !== null ? k + 1 : k), 0), [steps.fault]);

  const fit = () => {
    fitted.current = false;
    setView(whole());
  };

  return (
    <div className="gantt" ref={wrap}>
      <div className="gantt-tools">
        <button type="button" onClick={() => zoom(0.5)} title="zoom in (ctrl+wheel)">+</button>
        <button type="button" onClick={() => zoom(2)} title="zoom out (ctrl+wheel)">-</button>
        <button type="button" onClick={fit} title="show the whole execution">Fit</button>
        <span className="muted small">
          {steps.lanes.length} lane{steps.lanes.length === 1 ? "" : "s"} · drag to pan ·
          ctrl+wheel to zoom · click a bar for its payloads
        </span>
        <span className="legend">
          <i style={{ background: COLORS.ok }} /> ok <i style={{ background: COLORS.okFn }} /> function
          <i style={{ background: COLORS.error }} /> error
          {faults > 0 && (
            <span className="legend-fault" data-testid="legend-fault"
              title="calls a fault rule failed on purpose (tag fault)">
              <i className="fault-swatch" /> ⚡ fault ({faults})
            </span>
          )}
        </span>
      </div>
      <div className="gantt-canvas-wrap">
        <canvas
          ref={canvas}
          className="gantt-canvas"
          role="img"
          aria-label={`Timeline of ${steps.shown} steps across ${steps.lanes.length} services`}
          onPointerDown={onPointerDown}
          onPointerMove={onPointerMove}
          onPointerUp={onPointerUp}
          onMouseMove={onMove}
          onMouseLeave={() => setHover(null)}
          onDoubleClick={fit}
        />
        {hover && (
          <div className="gantt-tip" style={{ left: Math.min(hover.x + 12, width - 260), top: hover.y + 14 }}>
            <div className="mono">{steps.endpoint[hover.i]}</div>
            <div className="muted small">
              {steps.service[hover.i]} → {steps.target[hover.i]} · {fmtMs(steps.latency[hover.i])} ·{" "}
              {steps.status[hover.i]}
              {steps.code[hover.i] !== null ? ` ${steps.code[hover.i]}` : ""}
            </div>
            {steps.fault[hover.i] !== null && (
              <div className="tip-fault">
                ⚡ fault: {steps.fault[hover.i]} ({steps.faultAction[hover.i] ?? "?"})
              </div>
            )}
            {steps.replay[hover.i] !== null && (
              <div className="muted small">replay {steps.replay[hover.i]}</div>
            )}
            {(steps.tokens[hover.i] !== null || steps.cost[hover.i] !== null) && (
              <div className="small" data-testid="tip-llm">
                {[steps.tokens[hover.i], steps.cost[hover.i] !== null ? fmtUsd(steps.cost[hover.i] as number) : null]
                  .filter(Boolean).join(" · ")}
              </div>
            )}
          </div>
        )}
      </div>
    </div>
  );
}
