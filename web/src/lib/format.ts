export function fmtMs(ms: number | null | undefined): string {
  if (ms === null || ms === undefined || !Number.isFinite(ms)) return "–";
  const a = Math.abs(ms);
  if (a < 1) return `${ms.toFixed(2)} ms`;
  if (a < 100) return `${ms.toFixed(1)} ms`;
  if (a < 1000) return `${Math.round(ms)} ms`;
  if (a < 60_000) return `${(ms / 1000).toFixed(2)} s`;
  const m = Math.floor(a / 60_000);
  const s = Math.round((a % 60_000) / 1000);
  return `${ms < 0 ? "-" : ""}${m}m ${s}s`;
}

export function fmtTime(iso: string | null | undefined): string {
  if (!iso) return "–";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  return d.toLocaleString(undefined, {
    year: "numeric", month: "short", day: "2-digit",
    hour: "2-digit", minute: "2-digit", second: "2-digit",
  });
}

export function fmtAgo(iso: string | null | undefined, now = Date.now()): string {
  if (!iso) return "–";
  const t = new Date(iso).getTime();
  if (Number.isNaN(t)) return iso;
  const s = Math.round((now - t) / 1000);
  if (s < 5) return "just now";
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

export function fmtCount(n: number): string {
  return n.toLocaleString("en-US");
}

export function tagsText(tags: Record<string, string> | null | undefined): string {
  if (!tags) return "";
  return Object.entries(tags)
    .map(([k, v]) => `${k}=${v}`)
    .join(" ");
}

/** Dollars with three significant digits however small (`$0.0000285`): an LLM call often
 * costs a fraction of a cent. */
export function fmtUsd(usd: number): string {
  if (!(usd > 0)) return "$0";
  const decimals = Math.max(2, 2 - Math.floor(Math.log10(usd)));
  return `$${usd.toFixed(Math.min(decimals, 20))}`;
}
