"""Latency statistics of events grouped by any columns: count, errors, percentiles.

Pure pandas, like `diff.py`, so the server can answer the same question the same way.
"""
from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from tracelab.store.query import LIFECYCLE_KIND

LATENCY_COLUMNS = ["count", "errors", "error_rate", "mean", "p50", "p90", "p95", "p99", "max"]
_QUANTILES = {"p50": 0.5, "p90": 0.9, "p95": 0.95, "p99": 0.99}


def latency_table(events: pd.DataFrame, by: str | Sequence[str] = "target") -> pd.DataFrame:
    """One row per group of `by` (a column or list of columns), slowest p95 first.

    Columns: the `by` columns, then count, errors, error_rate, mean, p50, p90, p95, p99, max
    of `latency_ms`. Raises ValueError naming the unknown column and listing the known ones.
    Steps only: run lifecycle events (`kind: "run"`, latency 0) are left out if present.
    """
    keys = [by] if isinstance(by, str) else list(by)
    if not keys:
        raise ValueError("by= needs at least one column, such as 'target' or ['service', 'kind']")
    unknown = [k for k in keys if k not in events.columns]
    if unknown:
        known = ", ".join(c for c in events.columns) or "(no events, so no columns)"
        raise ValueError(f"cannot group latencies by {unknown[0]!r}: not an event column; "
                         f"known columns: {known}")
    if "kind" in events.columns:
        events = events[events["kind"] != LIFECYCLE_KIND]
    if events.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in [*keys, *LATENCY_COLUMNS]})
    frame = events[keys].copy()
    frame["latency_ms"] = events["latency_ms"].astype(float)
    frame["_error"] = (events["status"] == "error").astype("int64")
    grouped = frame.groupby(keys, dropna=False, sort=True, observed=True)
    out = grouped["latency_ms"].agg(["count", "mean", "max"])
    out["errors"] = grouped["_error"].sum()
    quantiles = grouped["latency_ms"].quantile(list(_QUANTILES.values())).unstack(-1)
    for name, q in _QUANTILES.items():
        out[name] = quantiles[q]
    out["error_rate"] = out["errors"] / out["count"]
    out = out[LATENCY_COLUMNS].sort_values("p95", ascending=False, kind="stable")
    return out.reset_index()
