/** Counters the SDK keeps about itself, so drops and failures are visible instead of silent. */

export interface StatsSnapshot {
  captured: number;
  published: number;
  spooled: number;
  dropped: number;
  dropped_by_reason: Record<string, number>;
  /** Events recorded with a part cut to a marker to fit the contract's limits ("depth", "size"). */
  cut_by_reason: Record<string, number>;
  errors: number;
  errors_by_origin: Record<string, number>;
  last_error: string | null;
  integrations: Record<string, { captured: number; errors: number }>;
  [extra: string]: unknown;
}

function sum(counts: Record<string, number>): number {
  return Object.values(counts).reduce((a, b) => a + b, 0);
}

export class SDKStats {
  captured = 0;
  published = 0;
  spooled = 0;
  readonly dropped: Record<string, number> = {};
  readonly errors: Record<string, number> = {};
  readonly cut: Record<string, number> = {};
  readonly byOrigin: Record<string, { captured: number; errors: number }> = {};
  lastError: string | null = null;

  private origin(name: string): { captured: number; errors: number } {
    return (this.byOrigin[name] ??= { captured: 0, errors: 0 });
  }

  countCaptured(origin: string): void {
    this.captured += 1;
    this.origin(origin).captured += 1;
  }

  countError(origin: string, message: string): void {
    this.errors[origin] = (this.errors[origin] ?? 0) + 1;
    this.origin(origin).errors += 1;
    this.lastError = `${origin}: ${message}`.slice(0, 500);
  }

  countDropped(reason: string, n = 1): void {
    this.dropped[reason] = (this.dropped[reason] ?? 0) + n;
  }

  countCut(reason: string): void {
    this.cut[reason] = (this.cut[reason] ?? 0) + 1;
  }

  countDelivered(sink: string, n: number): void {
    if (sink === "redis") this.published += n;
    else this.spooled += n;
  }

  snapshot(extra: Record<string, unknown> = {}): StatsSnapshot {
    return {
      captured: this.captured,
      published: this.published,
      spooled: this.spooled,
      dropped: sum(this.dropped),
      dropped_by_reason: { ...this.dropped },
      cut_by_reason: { ...this.cut },
      errors: sum(this.errors),
      errors_by_origin: { ...this.errors },
      last_error: this.lastError,
      integrations: Object.fromEntries(Object.entries(this.byOrigin).map(([k, v]) => [k, { ...v }])),
      ...extra,
    };
  }
}

/** Describe anything thrown, for counters and logs, without ever throwing itself. */
export function describeError(err: unknown): string {
  try {
    if (err instanceof Error) return `${err.name}: ${err.message}`;
    return String(err);
  } catch {
    return "<unprintable error>";
  }
}
