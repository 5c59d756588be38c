/**
 * Answering live calls from recorded ones (the Python `Matcher`, ported): a queue per key in
 * recorded order, so a call asked more often than it was recorded is a miss (never a silent
 * repeat) and calls to different endpoints may arrive in any order. A lookup is one Map get,
 * whatever the recording's size; only a miss looks for the closest recorded call.
 */
import {
  canonicalJson, DEFAULT_OPTIONS, describe, differences, keyParts, locator, type MatchOptions, site,
} from "./matching.js";

export type RecordedEvent = Record<string, unknown>;

export interface Hit { hit: true; event: RecordedEvent }
export interface Miss { hit: false; message: string; closest: RecordedEvent | null; differences: string[] }

const MAX_DIFFERENCES = 12;
const MAX_CANDIDATES = 32;

/** Events answered from a recording: calls that left the process, not spans. */
export function replayable(event: RecordedEvent): boolean {
  return ["http", "llm", "email", "sms"].includes(String(event.kind)) && event.request !== null && typeof event.request === "object";
}

function push<K, V>(map: Map<K, V[]>, key: K, value: V): void {
  const list = map.get(key);
  if (list) list.push(value);
  else map.set(key, [value]);
}

export class Matcher {
  private readonly events: RecordedEvent[] = [];
  private readonly parts: Array<Record<string, unknown>> = [];
  private readonly queues = new Map<string, number[]>();
  private readonly indexes = new Map<string, number[]>();
  private readonly byLocator = new Map<string, number[]>();
  private readonly bySite = new Map<string, number[]>();
  private readonly taken = new Set<number>();

  constructor(events: Iterable<RecordedEvent>, readonly options: MatchOptions = DEFAULT_OPTIONS) {
    for (const event of events) {
      const parts = keyParts(event, options);
      const key = canonicalJson(parts);
      const index = this.events.length;
      this.events.push(event);
      this.parts.push(parts);
      push(this.queues, key, index);
      push(this.indexes, key, index);
      push(this.byLocator, locator(parts), index);
      push(this.bySite, site(parts), index);
    }
  }

  get size(): number {
    return this.events.length;
  }

  /** The next recorded answer for `live` (same shape as a stored event), or a Miss. */
  take(live: RecordedEvent): Hit | Miss {
    const parts = keyParts(live, this.options);
    const key = canonicalJson(parts);
    const queue = this.queues.get(key);
    if (queue && queue.length) {
      const index = queue.shift() as number;
      this.taken.add(index);
      return { hit: true, event: this.events[index] };
    }
    return this.miss(live, parts, key);
  }

  /** Recorded events no call has taken, in recorded order. */
  unused(): RecordedEvent[] {
    return this.events.filter((_, i) => !this.taken.has(i));
  }

  private miss(live: RecordedEvent, parts: Record<string, unknown>, key: string): Miss {
    const call = describe(live);
    const same = this.indexes.get(key);
    if (same && same.length) {
      const event = this.events[same[same.length - 1]];
      const times = same.length === 1 ? "once" : `${same.length} times`;
      return {
        hit: false, closest: event, differences: [],
        message: `replay miss: ${call} was recorded ${times} and every recorded answer is used ` +
          `(last: event ${String(event.event_id)}); a call made more often than recorded is a miss, never a repeat`,
      };
    }
    if (!this.events.length) {
      return { hit: false, closest: null, differences: [], message: `replay miss: ${call}: the recording has no calls to answer from` };
    }
    let best: { rank: [number, number, number]; index: number; found: string[] } | null = null;
    for (const index of this.candidates(parts)) {
      const found = differences(parts, this.parts[index]);
      const rank: [number, number, number] = [found.length, this.taken.has(index) ? 1 : 0, index];
      if (best === null || rank[0] < best.rank[0] || (rank[0] === best.rank[0] &&
        (rank[1] < best.rank[1] || (rank[1] === best.rank[1] && rank[2] < best.rank[2])))) {
        best = { rank, index, found };
      }
    }
    const { index, found } = best as { index: number; found: string[] };
    const event = this.events[index];
    const shown = found.slice(0, MAX_DIFFERENCES);
    if (found.length > shown.length) shown.push(`… and ${found.length - shown.length} more`);
    const used = this.taken.has(index) ? " (already used)" : "";
    return {
      hit: false, closest: event, differences: found,
      message: `replay miss: no recorded call matches ${call}; closest recorded call: event ` +
        `${String(event.event_id)} ${describe(event)}${used}; differs in (live != recorded): ${shown.join("; ")}`,
    };
  }

  /** Same method+host+path, else same host, else any; at most MAX_CANDIDATES, unused ones first. */
  private candidates(parts: Record<string, unknown>): number[] {
    const byLocator = this.byLocator.get(locator(parts));
    const bySite = this.bySite.get(site(parts));
    const group = byLocator && byLocator.length ? byLocator
      : bySite && bySite.length ? bySite : this.events.map((_, i) => i);
    const fresh = group.filter((i) => !this.taken.has(i)).slice(0, MAX_CANDIDATES);
    if (fresh.length < MAX_CANDIDATES) {
      fresh.push(...group.filter((i) => this.taken.has(i)).slice(0, MAX_CANDIDATES - fresh.length));
    }
    return fresh;
  }
}
