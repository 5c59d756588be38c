"""Shaping query-layer answers into the API's JSON: rows, summaries, column-wise events.

Shared by the routes (`app.py`) and the live watcher (`live.py`) so a run looks the same whether
it was fetched or streamed.
"""
from __future__ import annotations

import math
from typing import Any

import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from fastapi.responses import JSONResponse

from tracelab.store.llm import frame_totals
from tracelab.store.query import LIFECYCLE_KIND, run_states

# Columns of the execution view (no payloads); `shape=columns` dictionary-encodes these.
DICT_COLUMNS = ("status", "service", "source", "kind", "target", "endpoint", "error_type")
EVENT_COLUMNS = ("event_id", "started_at", "latency_ms", "status", "status_code", "service",
                 "source", "kind", "target", "endpoint", "span_id", "parent_id", "error_type",
                 "error_message", "tags")
# Computed by the query layer at read time (not file columns): sent when the frame has them.
COST_COLUMNS = ("llm_cost_usd", "llm_cost_source")


class ORJSONResponse(JSONResponse):
    """JSON via orjson: numpy scalars and big lists serialise fast; NaN becomes null."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY, default=json_default)


def json_default(value: Any) -> Any:
    """What orjson cannot serialise itself: pandas timestamps, sets, numpy-like values."""
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")



def iso(ts: Any) -> str | None:
    if ts is None or (isinstance(ts, float) and math.isnan(ts)) or ts is pd.NaT:
        return None
    return pd.Timestamp(ts).isoformat().replace("+00:00", "Z")


def workflow_row(row: dict) -> dict:
    return {
        "workflow": row["workflow"], "executions": int(row["executions"]),
        "events": int(row["events"]), "errors": int(row["errors"]),
        "first_event": iso(row["first_event"]), "last_event": iso(row["last_event"]),
    }


def execution_row(row: dict, now_ns: int | None = None) -> dict:
    """A query-layer execution row as the API's execution object.

    `state` is the query layer's (as of when the row was computed); `active` is kept for old
    clients and means exactly `state == "running"`. `now_ns` is accepted for old callers and
    no longer used: no time is guessed here.
    """
    started = pd.Timestamp(row["started_at"])
    ended = pd.Timestamp(row["ended_at"])
    return {
        "workflow": row["workflow"], "run_id": row["run_id"],
        "started_at": iso(started), "ended_at": iso(ended),
        "started_at_ns": int(started.value), "ended_at_ns": int(ended.value),
        "duration_ms": float(row["duration_ms"]), "events": int(row["events"]),
        "errors": int(row["errors"]), "status": row["status"],
        "services": list(row["services"]), "targets": list(row["targets"]),
        "tags": dict(row["tags"] or {}),
        "llm_tokens": int(row.get("llm_tokens") or 0),
        "llm_cost_usd": None if pd.isna(row.get("llm_cost_usd")) else float(row["llm_cost_usd"]),
        "state": row["state"],
        "active": row["state"] == "running",
    }


def summary_from_events(frame: pd.DataFrame, execution: dict | None = None) -> dict:
    """An execution's summary from its events (the same numbers as `query.executions`).

    The steps alone cannot tell a run's lifecycle (its start/end events are not in the frame),
    so the query layer's own row for the run is used when given, or when the frame carries it
    (`frame.attrs["execution"]`, set by `query.execution_events` and `query.events(run_id=)`).
    Without it, the summary is computed from the steps and the state from their recency.
    """
    execution = execution if execution is not None else frame.attrs.get("execution")
    if execution is not None:
        return execution_row(execution)
    if "kind" in frame.columns:
        frame = frame[frame["kind"] != LIFECYCLE_KIND]
    start_ns = frame["started_at"].astype("int64")
    end_ns = start_ns + (frame["latency_ms"] * 1e6).round().astype("int64")
    errors = int((frame["status"] == "error").sum())
    tags: dict[str, str] = {}
    for text in sorted(t for t in frame["tags"].dropna().unique()):
        tags.update(orjson.loads(text))
    workflows = sorted(frame["workflow"].unique())
    first, last = int(start_ns.min()), int(end_ns.max())
    llm_tokens, llm_cost_usd = frame_totals(frame)
    return execution_row({
        "workflow": workflows[0] if len(workflows) == 1 else ",".join(workflows),
        "run_id": frame["run_id"].iloc[0],
        "started_at": pd.Timestamp(first, unit="ns", tz="UTC"),
        "ended_at": pd.Timestamp(last, unit="ns", tz="UTC"),
        "duration_ms": (last - first) / 1e6, "events": len(frame), "errors": errors,
        "status": "error" if errors else "ok", "state": run_states(0, 0, 0, last)[()],
        "services": sorted(frame["service"].dropna().unique()),
        "targets": sorted(frame["target"].dropna().unique()), "tags": tags,
        "llm_tokens": llm_tokens, "llm_cost_usd": llm_cost_usd,
    })


def events_table(frame: pd.DataFrame) -> pa.Table:
    table = pa.Table.from_pandas(frame[[c for c in (*EVENT_COLUMNS, *COST_COLUMNS)
                                        if c in frame.columns]],
                                 preserve_index=False)
    if "status_code" in table.column_names:  # pandas made it float to hold nulls
        i = table.column_names.index("status_code")
        table = table.set_column(i, "status_code", pc.cast(table["status_code"], pa.int32()))
    return table


def event_rows(table: pa.Table, t0_ns: int) -> list[dict]:
    """Events as contract-like objects (no payloads), plus `offset_ms` from the run's start."""
    cols = {name: table[name].to_pylist() for name in (*EVENT_COLUMNS, *COST_COLUMNS)
            if name in table.column_names}
    starts = pc.cast(table["started_at"], pa.int64()).to_pylist()
    rows = []
    for i, start in enumerate(starts):
        row: dict[str, Any] = {name: values[i] for name, values in cols.items()}
        row["started_at"] = start
        row["offset_ms"] = (start - t0_ns) / 1e6
        error_type, error_message = row.pop("error_type", None), row.pop("error_message", None)
        if error_type is not None or error_message is not None:
            row["error"] = {"type": error_type, "message": error_message}
        tags = row.get("tags")
        row["tags"] = orjson.loads(tags) if tags else {}
        rows.append(row)
    return rows


def event_columns(table: pa.Table, t0_ns: int) -> dict[str, Any]:
    """Events column-wise: numbers as arrays, repetitive strings as {values, codes}."""
    starts = pc.cast(table["started_at"], pa.int64())
    out: dict[str, Any] = {
        "count": table.num_rows,
        "offset_ms": pc.divide(pc.cast(pc.subtract(starts, t0_ns), pa.float64()),
                               1e6).to_pylist(),
    }
    for name in (*EVENT_COLUMNS, *COST_COLUMNS):
        if name == "started_at" or name not in table.column_names:
            continue
        column = table[name]
        if name in DICT_COLUMNS:
            encoded = pc.dictionary_encode(column).combine_chunks()
            out[name] = {"values": encoded.dictionary.to_pylist(),
                         "codes": encoded.indices.fill_null(-1).to_pylist()}
        else:
            out[name] = column.to_pylist()
    return out

