"""The events table's columns, and the one conversion from contract events to Arrow.

Flat, typed columns for everything list, aggregate and timeline queries touch; JSON text for
what they never touch (`request`, `response`) and for what has no fixed shape (`tags`, and
`extra`, which keeps every top-level field outside the contract so nothing is dropped).
`workflow` and `date` are the hive partition, which is how DuckDB, Spark and pyarrow all
expect them; the exact workflow name is also kept in every file as `workflow_name`, because a
directory name cannot hold every name (length, and readers that would decode it) and a file
column named `workflow` would be hidden by the partition value in DuckDB and pyarrow.
"""
from __future__ import annotations

from collections.abc import Sequence
from operator import itemgetter
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

TIMESTAMP = pa.timestamp("ns", tz="UTC")

EVENT_SCHEMA = pa.schema([
    ("event_id", pa.string()),
    ("run_id", pa.string()),
    ("started_at", TIMESTAMP),
    ("latency_ms", pa.float64()),
    ("status", pa.string()),
    ("status_code", pa.int32()),
    ("service", pa.string()),
    ("source", pa.string()),
    ("kind", pa.string()),
    ("target", pa.string()),
    ("endpoint", pa.string()),
    ("span_id", pa.string()),
    ("parent_id", pa.string()),
    ("error_type", pa.string()),
    ("error_message", pa.string()),
    ("tags", pa.string()),
    ("host", pa.string()),
    ("pid", pa.int64()),
    ("sdk_version", pa.string()),
    ("schema", pa.int16()),
    ("extra", pa.string()),
    ("request", pa.string()),
    ("response", pa.string()),
    ("workflow_name", pa.string()),
])

PAYLOAD_COLUMNS = ("request", "response")
PARTITION_COLUMNS = ("workflow", "date")
LIGHT_COLUMNS = tuple(n for n in EVENT_SCHEMA.names if n not in PAYLOAD_COLUMNS)
# Dictionary encoding pays off only for columns with few distinct values.
DICTIONARY_COLUMNS = ["workflow_name", "run_id", "status", "service", "source", "kind",
                      "target", "endpoint", "error_type", "tags", "host", "sdk_version"]

CONTRACT_FIELDS = frozenset({
    "event_id", "schema", "workflow", "run_id", "service", "source", "kind", "target",
    "endpoint", "started_at", "latency_ms", "status", "request", "response", "span_id",
    "parent_id", "status_code", "error", "tags", "host", "pid", "sdk_version",
})

_dumps = orjson.dumps


def _json_or_none(value: Any) -> bytes | None:
    return None if value is None else _dumps(value)


def _extra(event: dict) -> bytes | None:
    error = event.get("error")
    if event.keys() <= CONTRACT_FIELDS and (error is None or len(error) <= 2):
        return None
    keys = event.keys() - CONTRACT_FIELDS
    # An error object with more than {type, message} keeps its full form in `extra`.
    if isinstance(error, dict) and error.keys() - {"type", "message"}:
        keys = set(keys) | {"error"}
    if not keys:
        return None
    return _dumps({k: event[k] for k in sorted(keys)})


_REQUIRED = ("event_id", "run_id", "started_at", "latency_ms", "status", "service", "source",
             "kind", "target", "endpoint", "schema")
_OPTIONAL = ("status_code", "span_id", "parent_id", "host", "pid", "sdk_version")
_required = itemgetter(*_REQUIRED)


# Many events carry the same few tag sets; their sorted JSON text is remembered (bounded).
_TAGS_TEXT: dict[tuple, bytes] = {}
_TAGS_TEXT_MAX = 4096
_TAGS_TEXT_MAX_BYTES = 512


def _tags_text(tags: Any) -> bytes | None:
    """`tags` as JSON text with sorted keys, None for none; the same bytes as `_dumps`."""
    if not tags:
        return None
    try:
        key = tuple(tags.items())
        text = _TAGS_TEXT.get(key)
    except (AttributeError, TypeError):  # not a dict of hashables: no caching
        return _dumps(tags, option=orjson.OPT_SORT_KEYS)
    if text is None:
        text = _dumps(tags, option=orjson.OPT_SORT_KEYS)
        if len(text) <= _TAGS_TEXT_MAX_BYTES:
            if len(_TAGS_TEXT) >= _TAGS_TEXT_MAX:
                _TAGS_TEXT.clear()
            _TAGS_TEXT[key] = text
    return text


def events_to_table(events: Sequence[dict]) -> pa.Table:
    """Arrow table for contract-valid events; raises on a value Arrow cannot hold.

    Built column-wise from Python values because that is the cheapest way from decoded JSON to
    Arrow (`itemgetter` + `zip` transpose the required fields in C; Arrow's own JSON reader was
    measured slower here). Rows are sorted by (run_id, started_at) so a run's events sit
    together and row-group statistics can skip the rest.
    """
    columns = {**_flat_columns_from_python(events), **_json_text_columns(events)}
    arrays = [columns[f.name] for f in EVENT_SCHEMA]
    table = pa.Table.from_arrays(arrays, schema=EVENT_SCHEMA)
    order = pc.sort_indices(table, sort_keys=[("run_id", "ascending"),
                                              ("started_at", "ascending")])
    return table.take(order)


def _json_text(values: list[bytes | None]) -> pa.Array:
    """A string column from orjson output, which is always valid UTF-8: built as binary and
    viewed as string, so Arrow does not validate it a second time."""
    return pa.array(values, type=pa.binary()).view(pa.string())


def _json_text_columns(events: Sequence[dict]) -> dict[str, pa.Array]:
    dumps = _dumps
    fields = CONTRACT_FIELDS
    request = [dumps(e["request"]) for e in events]
    response = [None if (r := e.get("response")) is None else dumps(r) for e in events]
    tags = [_tags_text(e.get("tags")) for e in events]
    # The common case (nothing outside the contract, a plain or absent error) without a call.
    extra = [None if e.keys() <= fields and ((err := e.get("error")) is None or len(err) <= 2)
             else _extra(e) for e in events]
    return {"request": _json_text(request), "response": _json_text(response),
            "tags": _json_text(tags), "extra": _json_text(extra)}


def _flat_columns_from_python(events: Sequence[dict]) -> dict[str, pa.Array]:
    required = dict(zip(_REQUIRED, zip(*map(_required, events))))
    optional = {k: [e.get(k) for e in events] for k in _OPTIONAL}
    errors = [e.get("error") for e in events]
    if any(errors):
        error_type = [err.get("type") if type(err) is dict else None for err in errors]
        error_message = [err.get("message") if type(err) is dict else None for err in errors]
    else:
        error_type = error_message = [None] * len(events)
    values = {**required, **optional, "error_type": error_type, "error_message": error_message,
              "workflow_name": [e["workflow"] for e in events]}
    return {name: pa.array(values[name], type=EVENT_SCHEMA.field(name).type) for name in values}


def row_to_event(row: dict, workflow: str) -> dict:
    """Rebuild the contract event from one stored row (payloads and `extra` included)."""
    event: dict[str, Any] = {
        "event_id": row["event_id"], "schema": row["schema"], "workflow": workflow,
        "run_id": row["run_id"], "service": row["service"], "source": row["source"],
        "kind": row["kind"], "target": row["target"], "endpoint": row["endpoint"],
        "started_at": row["started_at"], "latency_ms": row["latency_ms"],
        "status": row["status"],
        "request": orjson.loads(row["request"]) if row.get("request") is not None else {},
        "response": orjson.loads(row["response"]) if row.get("response") is not None else None,
    }
    for key in ("span_id", "parent_id", "status_code", "host", "pid", "sdk_version"):
        if row.get(key) is not None:
            event[key] = row[key]
    if row.get("error_type") is not None or row.get("error_message") is not None:
        event["error"] = {"type": row.get("error_type"), "message": row.get("error_message")}
    if row.get("tags") is not None:
        event["tags"] = orjson.loads(row["tags"])
    if row.get("extra") is not None:
        event.update(orjson.loads(row["extra"]))
    return event
