// The steps of one execution, column-wise, with the layout the Gantt and the table share:
// tree order (parents before their children), depth, orphans, lanes by service, rows; and the
// filters that hide steps (kind, target, status, text, duration, LLM-and-tools, collapsed spans,
// a re-rooted view) in both views at once.
import type { DictColumn, EventColumns, EventRow } from "./api";

export interface Steps {
  n: number;
  id: string[];
  offset: Float64Array; // ms from the execution's start
  latency: Float64Array; // ms
  status: string[];
  code: (number | null)[];
  service: string[];
  kind: string[];
  target: string[];
  endpoint: string[];
  span: (string | null)[];
  parent: (string | null)[];
  errorType: (string | null)[];
  errorMessage: (string | null)[];
  fault: (string | null)[]; // the fault rule's id (tag `fault`): a call TraceLab failed on purpose
  faultAction: (string | null)[]; // tag `fault.action`: status, reset, timeout, latency, ...
  replay: (string | null)[]; // tag `replay`: hit | miss | passthrough | fault
  tokens: (string | null)[]; // an LLM call's tokens (tags llm.*_tokens), as the hover shows them
  llm: Uint8Array; // 1: an LLM call by its tags (llm.provider, llm.model or a token count)
  cost: (number | null)[]; // an LLM call's USD cost, priced by the query layer (llm_cost_usd)
  // derived
  depth: Int32Array;
  orphan: Uint8Array; // parent_id set but no such span in this run
  order: Int32Array; // tree order: the table's row -> step index
  pos: Int32Array; // step index -> its position in `order`
  size: Int32Array; // steps in the subtree of each step, itself included: order[pos..pos+size)
  parentOf: Int32Array; // step index -> its parent's step index, -1 for a root or an orphan
  byStart: Int32Array; // step indices by start (stable)
  spanIndex: Map<string, number>; // span id -> the (first) step carrying it
  rowOf: Int32Array; // step index -> Gantt row (-1: hidden by the filters)
  lanes: Lane[];
  rows: GanttRow[];
  begin: number; // ms: the first shown start (0 for the whole execution)
  end: number; // ms: the last shown end
  shown: number; // steps laid out in `rows` (n unless filtered)
}

export interface Lane {
  service: string;
  firstRow: number;
  rowCount: number;
}

export interface GanttRow {
  lane: number;
  items: number[]; // step indices sorted by offset
  maxLatency: number;
}

export const MAX_ROWS_PER_LANE = 40;

function decode(col: DictColumn | undefined, n: number): string[] {
  const out = new Array<string>(n);
  if (!col) return out.fill("");
  const { values, codes } = col;
  for (let i = 0; i < n; i++) {
    const c = codes[i];
    out[i] = c >= 0 ? (values[c] ?? "") : "";
  }
  return out;
}

function decodeNullable(col: DictColumn | undefined, n: number): (string | null)[] {
  const out = new Array<string | null>(n);
  if (!col) return out.fill(null);
  for (let i = 0; i < n; i++) {
    const c = col.codes[i];
    out[i] = c >= 0 ? col.values[c] : null;
  }
  return out;
}

/** The tags the timeline reads, per step. */
interface StepTags {
  fault: string | null;
  faultAction: string | null;
  replay: string | null;
  tokens: string | null;
  llm: boolean;
}

const NO_TAGS: StepTags = { fault: null, faultAction: null, replay: null, tokens: null, llm: false };

/** The tags that make a step an LLM call, as the query layer counts them (store/llm.py). */
const LLM_CALL_KEYS = ["llm.provider", "llm.model", "llm.input_tokens", "llm.output_tokens", "llm.total_tokens"];

function str(v: unknown): string | null {
  return v === null || v === undefined ? null : String(v);
}

function stepTags(tags: Record<string, unknown> | null | undefined): StepTags {
  if (!tags) return NO_TAGS;
  return { fault: str(tags["fault"]), faultAction: str(tags["fault.action"]), replay: str(tags["replay"]),
    tokens: tokensText(tags), llm: LLM_CALL_KEYS.some((k) => tags[k] !== undefined && tags[k] !== null) };
}

/** `120 in (100 cached) · 30 out tokens`, from the canonical llm.* tags; null for other calls. */
export function tokensText(tags: Record<string, unknown>): string | null {
  const input = str(tags["llm.input_tokens"]);
  const cached = str(tags["llm.cached_input_tokens"]);
  const output = str(tags["llm.output_tokens"]);
  const parts: string[] = [];
  if (input !== null) parts.push(`${input} in${cached !== null && cached !== "0" ? ` (${cached} cached)` : ""}`);
  if (output !== null) parts.push(`${output} out`);
  return parts.length ? `${parts.join(" · ")} tokens` : null;
}

/** Each step's tags from the column of JSON texts, each distinct text parsed once. */
function tagColumns(texts: (string | null)[] | undefined, n: number) {
  const fault = new Array<string | null>(n).fill(null);
  const faultAction = new Array<string | null>(n).fill(null);
  const replay = new Array<string | null>(n).fill(null);
  const tokens = new Array<string | null>(n).fill(null);
  const llm = new Uint8Array(n);
  if (!texts) return { fault, faultAction, replay, tokens, llm };
  const parsed = new Map<string, StepTags>();
  for (let i = 0; i < n; i++) {
    const text = texts[i];
    if (!text) continue;
    let t = parsed.get(text);
    if (!t) {
      try {
        const value: unknown = JSON.parse(text);
        t = typeof value === "object" && value !== null ? stepTags(value as Record<string, unknown>) : NO_TAGS;
      } catch {
        t = NO_TAGS;
      }
      parsed.set(text, t);
    }
    fault[i] = t.fault;
    faultAction[i] = t.faultAction;
    replay[i] = t.replay;
    tokens[i] = t.tokens;
    llm[i] = t.llm ? 1 : 0;
  }
  return { fault, faultAction, replay, tokens, llm };
}

type Raw = Omit<Steps, "depth" | "orphan" | "order" | "pos" | "size" | "parentOf" | "byStart" | "spanIndex"
  | "rowOf" | "lanes" | "rows" | "begin" | "end" | "shown">;
type Packed = Pick<Steps, "rowOf" | "lanes" | "rows" | "begin" | "end" | "shown">;
type Tree = Omit<Steps, keyof Packed>;

export function fromColumns(c: EventColumns): Steps {
  const n = c.count;
  const raw: Raw = {
    n,
    id: c.event_id,
    offset: Float64Array.from(c.offset_ms),
    latency: Float64Array.from(c.latency_ms),
    status: decode(c.status, n),
    code: c.status_code,
    service: decode(c.service, n),
    kind: decode(c.kind, n),
    target: decode(c.target, n),
    endpoint: decode(c.endpoint, n),
    span: c.span_id,
    parent: c.parent_id,
    errorType: decodeNullable(c.error_type, n),
    errorMessage: c.error_message,
    ...tagColumns(c.tags, n),
    cost: Array.from({ length: n }, (_, i) => c.llm_cost_usd?.[i] ?? null),
  };
  return layout(raw);
}

/** Steps with live rows appended (ids already present are skipped); `shift` moves the new
 * rows' offsets onto this execution's time origin. */
export function appendRows(s: Steps, rows: EventRow[], shift: number): Steps {
  const known = new Set(s.id);
  const fresh = rows.filter((r) => !known.has(r.event_id));
  if (fresh.length === 0) return s;
  const n = s.n + fresh.length;
  const freshTags = fresh.map((r) => stepTags(r.tags));
  const offset = new Float64Array(n);
  offset.set(s.offset);
  const latency = new Float64Array(n);
  latency.set(s.latency);
  fresh.forEach((r, i) => {
    offset[s.n + i] = r.offset_ms + shift;
    latency[s.n + i] = r.latency_ms;
  });
  const raw: Raw = {
    n,
    id: [...s.id, ...fresh.map((r) => r.event_id)],
    offset,
    latency,
    status: [...s.status, ...fresh.map((r) => r.status)],
    code: [...s.code, ...fresh.map((r) => r.status_code)],
    service: [...s.service, ...fresh.map((r) => r.service)],
    kind: [...s.kind, ...fresh.map((r) => r.kind)],
    target: [...s.target, ...fresh.map((r) => r.target)],
    endpoint: [...s.endpoint, ...fresh.map((r) => r.endpoint)],
    span: [...s.span, ...fresh.map((r) => r.span_id)],
    parent: [...s.parent, ...fresh.map((r) => r.parent_id)],
    errorType: [...s.errorType, ...fresh.map((r) => r.error?.type ?? null)],
    errorMessage: [...s.errorMessage, ...fresh.map((r) => r.error?.message ?? null)],
    fault: [...s.fault, ...freshTags.map((t) => t.fault)],
    faultAction: [...s.faultAction, ...freshTags.map((t) => t.faultAction)],
    replay: [...s.replay, ...freshTags.map((t) => t.replay)],
    tokens: [...s.tokens, ...freshTags.map((t) => t.tokens)],
    llm: Uint8Array.from([...s.llm, ...freshTags.map((t) => (t.llm ? 1 : 0))]),
    cost: [...s.cost, ...fresh.map((r) => r.llm_cost_usd ?? null)],
  };
  return layout(raw);
}

function layout(raw: Raw): Steps {
  const n = raw.n;
  const { offset } = raw;
  // start order (stable by original index)
  const byStart = new Int32Array(n);
  for (let i = 0; i < n; i++) byStart[i] = i;
  byStart.sort((a, b) => offset[a] - offset[b] || a - b);

  // nesting: span id -> step
  const spanIndex = new Map<string, number>();
  for (let i = 0; i < n; i++) {
    const sp = raw.span[i];
    if (sp && !spanIndex.has(sp)) spanIndex.set(sp, i);
  }
  const parentOf = new Int32Array(n).fill(-1);
  const orphan = new Uint8Array(n);
  const children = new Map<number, number[]>();
  for (const i of byStart) {
    const p = raw.parent[i];
    if (!p) continue;
    const pi = spanIndex.get(p);
    if (pi === undefined || pi === i) {
      orphan[i] = 1;
      continue;
    }
    parentOf[i] = pi;
    let list = children.get(pi);
    if (!list) children.set(pi, (list = []));
    list.push(i);
  }
  // tree order by iterative DFS; roots (and orphans) in start order; cycles broken
  const order = new Int32Array(n);
  const depth = new Int32Array(n);
  const seen = new Uint8Array(n);
  let k = 0;
  const stack: number[] = [];
  const visit = (root: number) => {
    stack.push(root);
    depth[root] = 0;
    while (stack.length) {
      const i = stack.pop()!;
      if (seen[i]) continue;
      seen[i] = 1;
      order[k++] = i;
      const kids = children.get(i);
      if (kids) {
        for (let j = kids.length - 1; j >= 0; j--) {
          const c = kids[j];
          if (!seen[c]) {
            depth[c] = depth[i] + 1;
            stack.push(c);
          }
        }
      }
    }
  };
  for (const i of byStart) if (parentOf[i] < 0 && !seen[i]) visit(i);
  for (const i of byStart) if (!seen[i]) { orphan[i] = 1; parentOf[i] = -1; visit(i); } // cycles

  // a subtree is contiguous in preorder: its size says where it ends (a cycle's broken link is
  // no parent, so sizes add up along the tree the DFS walked)
  const pos = new Int32Array(n);
  for (let p = 0; p < n; p++) pos[order[p]] = p;
  const size = new Int32Array(n).fill(1);
  for (let p = n - 1; p >= 0; p--) {
    const i = order[p];
    const q = parentOf[i];
    if (q >= 0 && depth[i] === depth[q] + 1) size[q] += size[i];
  }
  const tree: Tree = { ...raw, depth, orphan, order, pos, size, parentOf, byStart, spanIndex };
  return { ...tree, ...pack(tree, null) };
}

/** Lanes by service (in order of first appearance) and rows packed greedily per lane, of the
 * steps `visible` keeps (all when null): the Gantt of a filtered view has no empty rows. */
function pack(t: Tree, visible: Uint8Array | null): Packed {
  const n = t.n;
  const { offset, latency, service, parentOf, byStart } = t;
  const laneOf = new Map<string, number>();
  const laneRowsEnd: number[][] = [];
  const laneService: string[] = [];
  const localRow = new Int32Array(n);
  let shown = 0;
  for (const i of byStart) {
    if (visible && !visible[i]) continue;
    shown++;
    const svc = service[i];
    let lane = laneOf.get(svc);
    if (lane === undefined) {
      lane = laneService.length;
      laneOf.set(svc, lane);
      laneService.push(svc);
      laneRowsEnd.push([]);
    }
    const ends = laneRowsEnd[lane];
    const p = parentOf[i];
    let r = p >= 0 && (!visible || visible[p]) && service[p] === svc ? localRow[p] + 1 : 0;
    const start = offset[i];
    while (r < ends.length && ends[r] > start) r++;
    if (r >= MAX_ROWS_PER_LANE) r = MAX_ROWS_PER_LANE - 1;
    while (ends.length <= r) ends.push(-Infinity);
    ends[r] = Math.max(ends[r], start + latency[i]);
    localRow[i] = r;
  }
  const lanes: Lane[] = [];
  const rows: GanttRow[] = [];
  laneService.forEach((svc, lane) => {
    const count = Math.max(1, laneRowsEnd[lane].length);
    lanes.push({ service: svc, firstRow: rows.length, rowCount: count });
    for (let r = 0; r < count; r++) rows.push({ lane, items: [], maxLatency: 0 });
  });
  const rowOf = new Int32Array(n).fill(-1);
  let begin = Infinity;
  let end = 0;
  for (const i of byStart) {
    if (visible && !visible[i]) continue;
    const g = lanes[laneOf.get(service[i])!].firstRow + localRow[i];
    rowOf[i] = g;
    const row = rows[g];
    row.items.push(i);
    if (latency[i] > row.maxLatency) row.maxLatency = latency[i];
    const e = offset[i] + latency[i];
    if (e > end) end = e;
    if (offset[i] < begin) begin = offset[i];
  }
  begin = !visible || begin === Infinity ? 0 : begin;
  if (visible && end <= begin) end = begin + 0.001;
  return { rowOf, lanes, rows, begin, end, shown };
}

/** What the filter bar asks for; every part is kept in the page's URL (see Filters.tsx). */
export interface StepFilter {
  text: string; // in the endpoint, target, service, kind, status, id, error, fault, replay
  kinds: string[]; // any of these kinds (none: all)
  targets: string[];
  statuses: string[];
  minMs: number | null; // latency above this many ms (0 or null: no threshold)
  llmTools: boolean; // LLM calls and tools only
  collapsed: string[]; // span ids whose descendants are hidden
  root: string | null; // only this span and its descendants
}

export const NO_FILTER: StepFilter = {
  text: "", kinds: [], targets: [], statuses: [], minMs: null, llmTools: false, collapsed: [],
  root: null,
};

/** Kinds the "LLM and tools" switch keeps: model calls, and the functions an agent runs as its
 * tools (traced functions, `tool` steps); a step whose tags make it an LLM call counts too. The
 * notebook's timeline keeps the same (tracelab/notebook/view.py). */
export const LLM_TOOL_KINDS = new Set(["llm", "tool", "function"]);

export interface Selection {
  rows: Int32Array; // the table's rows: step indices in tree order
  visible: Uint8Array | null; // 1 = shown; null: every step is
  root: number | null; // the step the view is re-rooted at
  rootMissing: boolean; // `root` names a span this execution does not have (yet)
}

function haystack(s: Steps, i: number): string {
  return `${s.endpoint[i]}\u0000${s.target[i]}\u0000${s.service[i]}\u0000${s.kind[i]}\u0000${s.status[i]}\u0000${s.code[i] ?? ""}\u0000${s.id[i]}\u0000${s.errorMessage[i] ?? ""}\u0000${s.fault[i] !== null ? `fault ${s.fault[i]} ${s.faultAction[i] ?? ""}` : ""}\u0000${s.replay[i] ? `replay ${s.replay[i]}` : ""}`.toLowerCase();
}

/** The steps a filter keeps, in tree order: one pass over the execution, skipping a collapsed
 * span's subtree (contiguous in tree order) and walking only the re-rooted subtree. */
export function selectSteps(s: Steps, f: StepFilter): Selection {
  const q = f.text.trim().toLowerCase();
  const kinds = f.kinds.length ? new Set(f.kinds) : null;
  const targets = f.targets.length ? new Set(f.targets) : null;
  const statuses = f.statuses.length ? new Set(f.statuses) : null;
  const collapsed = f.collapsed.length ? new Set(f.collapsed) : null;
  const minMs = f.minMs ? f.minMs : null;
  let from = 0;
  let to = s.n;
  let root: number | null = null;
  if (f.root) {
    const r = s.spanIndex.get(f.root);
    if (r === undefined) return { rows: new Int32Array(0), visible: new Uint8Array(s.n), root: null, rootMissing: true };
    root = r;
    from = s.pos[r];
    to = from + s.size[r];
  }
  if (!q && !kinds && !targets && !statuses && minMs === null && !f.llmTools && !collapsed && root === null) {
    return { rows: s.order, visible: null, root: null, rootMissing: false };
  }
  const out: number[] = [];
  const visible = new Uint8Array(s.n);
  for (let k = from; k < to; k++) {
    const i = s.order[k];
    if (collapsed && s.size[i] > 1) {
      const sp = s.span[i];
      if (sp && collapsed.has(sp)) k += s.size[i] - 1; // its descendants: the next size-1 rows
    }
    if (kinds && !kinds.has(s.kind[i])) continue;
    if (targets && !targets.has(s.target[i])) continue;
    if (statuses && !statuses.has(s.status[i])) continue;
    if (minMs !== null && !(s.latency[i] > minMs)) continue;
    if (f.llmTools && !LLM_TOOL_KINDS.has(s.kind[i]) && !s.llm[i]) continue;
    if (q && !haystack(s, i).includes(q)) continue;
    out.push(i);
    visible[i] = 1;
  }
  return { rows: Int32Array.from(out), visible, root, rootMissing: false };
}

/** The Gantt's steps: the execution with only the selection's steps laid out in rows. */
export function shownSteps(s: Steps, visible: Uint8Array | null): Steps {
  return visible ? { ...s, ...pack(s, visible) } : s;
}

/** Each value of a column with how many steps have it, most common first. */
export function valueCounts(values: string[]): [string, number][] {
  const counts = new Map<string, number>();
  for (const v of values) counts.set(v, (counts.get(v) ?? 0) + 1);
  return [...counts.entries()].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
}
