// Talking to the TraceLab API (same origin: the UI's server forwards /api).

export interface Workflow {
  workflow: string;
  executions: number;
  events: number;
  errors: number;
  first_event: string | null;
  last_event: string | null;
}

export interface ExecutionSummary {
  workflow: string;
  run_id: string;
  started_at: string;
  ended_at: string;
  started_at_ns: number;
  ended_at_ns: number;
  duration_ms: number;
  events: number;
  errors: number;
  status: "ok" | "error";
  services: string[];
  targets: string[];
  tags: Record<string, string>;
  /** Kept for old clients: `state === "running"`. */
  active: boolean;
  /** The run's lifecycle state (from its `kind: run` start/end events and its idle time). */
  state?: "running" | "finished" | "failed" | "abandoned";
  /** Only in an execution's detail: the run this one replays (its `replay_of` tag). */
  replay_of?: string | null;
  /** Only in an execution's detail: the runs tagged `replay_of` this one, oldest first. */
  replays?: string[];
}

export interface EventRow {
  event_id: string;
  started_at: number;
  offset_ms: number;
  latency_ms: number;
  status: string;
  status_code: number | null;
  service: string;
  source: string;
  kind: string;
  target: string;
  endpoint: string;
  span_id: string | null;
  parent_id: string | null;
  error?: { type: string | null; message: string | null };
  tags: Record<string, string>;
  llm_cost_usd?: number | null;
}

export interface DictColumn {
  values: (string | null)[];
  codes: number[];
}

export interface EventColumns {
  count: number;
  offset_ms: number[];
  event_id: string[];
  latency_ms: number[];
  status: DictColumn;
  status_code: (number | null)[];
  service: DictColumn;
  source: DictColumn;
  kind: DictColumn;
  target: DictColumn;
  endpoint: DictColumn;
  span_id: (string | null)[];
  parent_id: (string | null)[];
  error_type: DictColumn;
  error_message: (string | null)[];
  tags: (string | null)[];
  llm_cost_usd?: (number | null)[];
}

export interface ExecutionDetail {
  execution: ExecutionSummary;
  t0_ns: string;
  events: EventColumns;
}

export interface DiffResult {
  a: ExecutionSummary;
  b: ExecutionSummary;
  summary: string;
  columns: string[];
  rows: Record<string, unknown>[];
}

/** How a compare row pairs the two runs: an aligned pair (`same` / `changed`: status or status
 * code differ) or a step only run A has (`only_a`, removed in B) or only run B has (`only_b`,
 * inserted in B). */
export type CompareChange = "same" | "changed" | "only_a" | "only_b";

/** One row of `GET /api/executions/{a}/compare/{b}` (`tracelab.analysis.compare`); deltas are
 * B minus A, null when a side is missing or has no such number. */
export interface CompareRow {
  a_event_id: string | null;
  b_event_id: string | null;
  change: CompareChange;
  kind: string;
  target: string;
  endpoint: string;
  span_path: string;
  status_a: string | null;
  status_b: string | null;
  status_code_a: number | null;
  status_code_b: number | null;
  duration_a: number | null;
  duration_b: number | null;
  duration_delta: number | null;
  tokens_a: number | null;
  tokens_b: number | null;
  tokens_delta: number | null;
  cost_a: number | null;
  cost_b: number | null;
  cost_delta: number | null;
  started_ms_a: number | null;
  started_ms_b: number | null;
}

export interface CompareSummary {
  a: string;
  b: string;
  steps_a: number;
  steps_b: number;
  same: number;
  changed: number;
  only_a: number;
  only_b: number;
  duration_delta: number;
  tokens_delta: number;
  cost_delta: number;
}

export interface CompareResult {
  summary: CompareSummary;
  rows: CompareRow[];
}

export class ApiError extends Error {
  constructor(
    public status: number,
    message: string,
  ) {
    super(message);
  }
}

const TOKEN_KEY = "tracelab.token";
type AuthListener = () => void;
const authListeners = new Set<AuthListener>();

export function getToken(): string | null {
  try {
    return window.localStorage.getItem(TOKEN_KEY);
  } catch {
    return null;
  }
}

export function setToken(token: string | null): void {
  try {
    if (token) window.localStorage.setItem(TOKEN_KEY, token);
    else window.localStorage.removeItem(TOKEN_KEY);
  } catch {
    /* storage unavailable: the token lives for this page only */
  }
}

export function onAuthRequired(listener: AuthListener): () => void {
  authListeners.add(listener);
  return () => authListeners.delete(listener);
}

export async function api<T>(path: string, signal?: AbortSignal): Promise<T> {
  const headers: Record<string, string> = { Accept: "application/json" };
  const token = getToken();
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(path, { headers, signal });
  if (!response.ok) {
    let detail = response.statusText;
    try {
      const body = await response.json();
      detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    } catch {
      /* not JSON */
    }
    if (response.status === 401) authListeners.forEach((l) => l());
    throw new ApiError(response.status, detail);
  }
  return (await response.json()) as T;
}

export const enc = encodeURIComponent;

export function streamUrl(): string {
  const token = getToken();
  return token ? `/api/stream?token=${enc(token)}` : "/api/stream";
}

// The execution page's data is requested as soon as the script runs (before React renders),
// so the big fetch overlaps the app's start-up; the page takes the promise once.
const prefetched = new Map<string, Promise<unknown>>();

export function prefetch(path: string): void {
  const p = api<unknown>(path);
  p.catch(() => undefined); // the page that takes it reports errors
  prefetched.set(path, p);
}

export function takePrefetched<T>(path: string): Promise<T> | null {
  const p = prefetched.get(path);
  if (!p) return null;
  prefetched.delete(path);
  return p as Promise<T>;
}
