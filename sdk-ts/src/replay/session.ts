/**
 * The replay session of this process, set up by `init()` when `tracelab replay` (or a test)
 * exports `TRACELAB_REPLAY`: the recording's matcher, what to do on a miss, the speed, and the
 * counts written to `TRACELAB_REPLAY_REPORT` (one JSON line per flush and at exit, each with
 * what happened since the previous line, so the CLI can sum them).
 *
 * It fails closed: a recording that cannot be read makes every call a miss naming the reason,
 * never a live call.
 */
import { appendFileSync, readFileSync } from "node:fs";
import { DEFAULT_OPTIONS, describe, type MatchOptions, parseIgnore } from "./matching.js";
import { type Hit, Matcher, type Miss, type RecordedEvent, replayable } from "./matcher.js";

export type OnMiss = "fail" | "passthrough" | "record";

export interface ReplayReport {
  source: "sdk-ts";
  pid: number;
  hits: string[];
  misses: Array<{ call: string; message: string }>;
  passthrough: string[];
}

function warn(message: string): void {
  try {
    process.emitWarning(message, { type: "TraceLabReplayWarning" });
  } catch {
    // a warning must never break the app
  }
}

/** Parse a recording file: JSON Lines of TraceEvents (or one JSON array), in start order. */
export function loadRecording(path: string): RecordedEvent[] {
  const text = readFileSync(path, "utf8");
  let events: RecordedEvent[];
  if (text.trimStart().startsWith("[")) {
    events = JSON.parse(text) as RecordedEvent[];
  } else {
    events = [];
    text.split("\n").forEach((line, i) => {
      if (!line.trim()) return;
      try {
        events.push(JSON.parse(line) as RecordedEvent);
      } catch (err) {
        throw new Error(`${path}:${i + 1}: not a JSON line (${(err as Error).message})`);
      }
    });
  }
  if (!Array.isArray(events) || events.some((e) => e === null || typeof e !== "object" || Array.isArray(e))) {
    throw new Error(`${path}: expected TraceEvents (JSON objects)`);
  }
  // started_at may exceed a double's precision: compare the digits, not the numbers.
  const startText = (e: RecordedEvent) => String(e.started_at ?? "").padStart(24, "0");
  return events.map((e, i) => [e, i] as const).sort(([a, i], [b, j]) => {
    const x = startText(a);
    const y = startText(b);
    if (x !== y) return x < y ? -1 : 1;
    const ida = String(a.event_id ?? "");
    const idb = String(b.event_id ?? "");
    return ida !== idb ? (ida < idb ? -1 : 1) : i - j;
  }).map(([e]) => e);
}

function jsonList(name: string): string[] {
  const raw = process.env[name];
  if (!raw) return [];
  try {
    const value = JSON.parse(raw) as unknown;
    if (Array.isArray(value)) return value.map(String);
  } catch {
    // reported below
  }
  warn(`${name}=${JSON.stringify(raw)} is not a JSON list of strings; ignoring it`);
  return [];
}

export class ReplaySession {
  private matcher: Matcher | null = null;
  private loadError: string | null = null;
  private pending: ReplayReport;
  private reports = 0;

  constructor(
    readonly source: string,
    readonly onMiss: OnMiss,
    readonly speed: number,
    readonly options: MatchOptions,
    readonly reportPath: string | null,
  ) {
    this.pending = this.emptyReport();
    try {
      this.matcher = new Matcher(loadRecording(source).filter(replayable), options);
    } catch (err) {
      this.loadError = `the recording ${source} could not be loaded: ${(err as Error)?.message ?? String(err)}`;
      warn(`TraceLab replay: ${this.loadError}; every call is a miss`);
    }
  }

  private emptyReport(): ReplayReport {
    return { source: "sdk-ts", pid: process.pid, hits: [], misses: [], passthrough: [] };
  }

  /** Answer `live` (a stored-shape call) from the recording, counting the outcome. */
  take(live: RecordedEvent): Hit | Miss {
    const outcome: Hit | Miss = this.matcher
      ? this.matcher.take(live)
      : { hit: false, closest: null, differences: [], message: `replay miss: ${describe(live)}: ${this.loadError}` };
    if (outcome.hit) this.pending.hits.push(String(outcome.event.event_id ?? ""));
    else if (this.onMiss === "fail") this.pending.misses.push({ call: describe(live), message: outcome.message });
    else this.pending.passthrough.push(describe(live));
    return outcome;
  }

  unused(): RecordedEvent[] {
    return this.matcher ? this.matcher.unused() : [];
  }

  /** How long to wait before answering a recorded call: its latency scaled by the speed. */
  delayMs(recordedLatencyMs: unknown): number {
    const ms = Number(recordedLatencyMs);
    return this.speed > 0 && Number.isFinite(ms) && ms > 0 ? ms / this.speed : 0;
  }

  /**
   * Append what happened since the last report line (always one line at exit, even an empty
   * one, so the CLI knows this process replayed). Synchronous: it runs in `exit` too.
   */
  writeReport(final: boolean): void {
    if (!this.reportPath) return;
    const r = this.pending;
    if (!final && !r.hits.length && !r.misses.length && !r.passthrough.length) return;
    if (final && this.reports > 0 && !r.hits.length && !r.misses.length && !r.passthrough.length) return;
    this.pending = this.emptyReport();
    try {
      appendFileSync(this.reportPath, `${JSON.stringify(r)}\n`);
      this.reports++;
    } catch (err) {
      warn(`TraceLab replay: could not write the report ${this.reportPath}: ${(err as Error)?.message}`);
    }
  }
}

let session: ReplaySession | null = null;
let configuredFrom: string | null = null;
let exitHook = false;

/** The session described by the environment (`TRACELAB_REPLAY` ...), made once per recording path. */
export function startReplayFromEnv(): ReplaySession | null {
  const source = process.env.TRACELAB_REPLAY || null;
  if (source === configuredFrom) return session;
  session?.writeReport(true);
  configuredFrom = source;
  session = null;
  if (!source) return null;
  const rawMode = (process.env.TRACELAB_REPLAY_ON_MISS || "fail").trim().toLowerCase();
  let onMiss: OnMiss = "fail";
  if (rawMode === "passthrough" || rawMode === "record") onMiss = rawMode;
  else if (rawMode !== "fail") warn(`TRACELAB_REPLAY_ON_MISS=${JSON.stringify(rawMode)} is not fail, passthrough or record; using fail`);
  const rawSpeed = process.env.TRACELAB_REPLAY_SPEED;
  let speed = rawSpeed ? Number(rawSpeed) : 0;
  if (!Number.isFinite(speed) || speed < 0) {
    warn(`TRACELAB_REPLAY_SPEED=${JSON.stringify(rawSpeed)} is not a number >= 0; using 0`);
    speed = 0;
  }
  const ignore: string[] = [];
  for (const rule of jsonList("TRACELAB_REPLAY_IGNORE")) {
    try {
      ignore.push(parseIgnore(rule));
    } catch (err) {
      warn(`TRACELAB_REPLAY_IGNORE: ${(err as Error).message}; ignoring that rule`);
    }
  }
  const headers = jsonList("TRACELAB_REPLAY_HEADERS").map((h) => h.toLowerCase());
  const options = ignore.length || headers.length ? { ignore, headers } : DEFAULT_OPTIONS;
  session = new ReplaySession(source, onMiss, speed, options, process.env.TRACELAB_REPLAY_REPORT || null);
  if (!exitHook) {
    exitHook = true;
    process.on("exit", () => session?.writeReport(true));
  }
  return session;
}

/** The active replay session, or null when this process is not replaying. */
export function replaySession(): ReplaySession | null {
  return session;
}
