/**
 * Answering live calls from recorded ones: a queue per key, in recorded order, so a call asked
 * more often than it was recorded is a miss (never a silent repeat), and calls to different
 * endpoints may arrive in any order. Lookup is a Map get, whatever the recording's size.
 */
import { type MatchOptions, DEFAULT_OPTIONS, keyParts, canonicalJson, partDifferences } from "./matching.js";

export type RecordedEvent = Record<string, unknown>;

export interface Hit { hit: true; event: RecordedEvent }
export interface Miss { hit: false; message: string; closest: RecordedEvent | null; differences: string[] }

/** `POST api.stripe.com /v1/charges` (or `email sendgrid mail.send`). */
export function describeCall(event: RecordedEvent): string {
  const endpoint = String(event.endpoint ?? "");
  const space = endpoint.indexOf(" ");
  if ((event.kind === "http" || event.kind === "llm") && space > 0) {
    return `${endpoint.slice(0, space)} ${String(event.target ?? "")} ${endpoint.slice(space + 1)}`;
  }
  return `${String(event.kind ?? "")} ${String(event.target ?? "")} ${endpoint}`;
}

/** Only events that went out of the process are answered: calls, not spans or custom hooks. */
export function replayable(event: RecordedEvent): boolean {
  return ["http", "llm", "email", "sms"].includes(String(event.kind)) && event.request !== null;
}

export class Matcher {
  private readonly queues = new Map<string, RecordedEvent[]>();
  private readonly parts = new Map<RecordedEvent, Record<string, unknown>>();
  private readonly all: RecordedEvent[] = [];

  constructor(events: Iterable<RecordedEvent>, readonly options: MatchOptions = DEFAULT_OPTIONS) {
    for (const event of events) {
      if (!replayable(event)) continue;
      const parts = keyParts(event, options);
      const key = canonicalJson(parts);
      this.parts.set(event, parts);
      this.all.push(event);
      const queue = this.queues.get(key);
      if (queue) queue.push(event);
      else this.queues.set(key, [event]);
    }
  }

  /** The next recorded answer for `live`, or a Miss that says why. */
  take(live: RecordedEvent): Hit | Miss {
    const parts = keyParts(live, this.options);
    const queue = this.queues.get(canonicalJson(parts));
    const event = queue?.shift();
    if (event) return { hit: true, event };
    return this.explain(live, parts, queue !== undefined);
  }

  /** Recorded calls nobody asked for (yet). */
  unused(): RecordedEvent[] {
    const left = new Set<RecordedEvent>();
    for (const queue of this.queues.values()) for (const event of queue) left.add(event);
    return this.all.filter((event) => left.has(event));
  }

  private explain(live: RecordedEvent, parts: Record<string, unknown>, exhausted: boolean): Miss {
    const call = describeCall(live);
    if (exhausted) {
      const used = this.all.filter((e) => canonicalJson(this.parts.get(e)) === canonicalJson(parts)).length;
      return {
        hit: false,
        closest: null,
        differences: [],
        message: `replay miss: ${call} was recorded ${used} time(s) and every recorded answer is used`,
      };
    }
    let closest: RecordedEvent | null = null;
    let best: string[] = [];
    let bestScore = Infinity;
    for (const event of this.all) {
      const diffs = partDifferences(this.parts.get(event) ?? {}, parts);
      // A different endpoint weighs more than any number of body differences.
      const score = diffs.reduce((n, d) => n + (/^(kind|method|scheme|host|port|path|target|endpoint)\b/.test(d) ? 1000 : 1), 0);
      if (score < bestScore) {
        bestScore = score;
        closest = event;
        best = diffs;
      }
    }
    const message = closest === null
      ? `replay miss: ${call} is not in the recording (it holds no calls)`
      : `replay miss: ${call} is not in the recording; closest recorded call: ${describeCall(closest)}` +
        ` (event ${String(closest.event_id ?? "?")}), differing: ${best.join("; ")}`;
    return { hit: false, closest, differences: best, message };
  }
}
