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

import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from operator import attrgetter, itemgetter
from typing import Annotated, Any, Literal

import msgspec
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from msgspec import UNSET, Meta, Raw, UnsetType

from tracelab.events import (MAX_ENDPOINT_CHARS, MAX_ID_CHARS, MAX_INT64, MAX_NAME_CHARS,
                             MAX_NESTING_DEPTH, MAX_STATUS_CODE, MAX_TAG_KEY_CHARS,
                             MAX_TAG_VALUE_CHARS, MAX_TAGS, MAX_TARGET_CHARS)

log = logging.getLogger("tracelab.store")

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


def events_to_table(events: Sequence[dict | WireEvent]) -> pa.Table:
    """Arrow table for contract-valid events; raises on a value Arrow cannot hold.

    Events are dicts (decoded JSON) or `WireEvent`s (the ingester's fast decode), in any mix.
    Dicts are built column-wise from Python values because that is the cheapest way from
    decoded JSON to Arrow (`itemgetter` + `zip` transpose the required fields in C); a
    `WireEvent`'s payloads are already JSON text, so they are never parsed or re-serialized.
    Rows are sorted by (run_id, started_at) so a run's events sit together and row-group
    statistics can skip the rest.
    """
    wire = [e for e in events if type(e) is WireEvent]
    if not wire:
        table = _table(_dict_columns(events))
    elif len(wire) == len(events):
        return _wire_table(wire)
    else:
        dicts = [e for e in events if type(e) is not WireEvent]
        table = pa.concat_tables([_table(_dict_columns(dicts)), _wire_table(wire)])
    return table.take(pc.sort_indices(table, sort_keys=_SORT_KEYS))


def _table(columns: dict[str, pa.Array]) -> pa.Table:
    return pa.Table.from_arrays([columns[f.name] for f in EVENT_SCHEMA], schema=EVENT_SCHEMA)


def _dict_columns(events: Sequence[dict]) -> dict[str, pa.Array]:
    return {**_flat_columns_from_python(events), **_json_text_columns(events)}


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


# ---- the ingester's fast decode: a compiled schema, payloads kept as JSON text --------------

_Id = Annotated[str, Meta(min_length=1, max_length=MAX_ID_CHARS)]
_Name = Annotated[str, Meta(min_length=1, max_length=MAX_NAME_CHARS)]
_OptionalId = Annotated[str, Meta(max_length=MAX_ID_CHARS)] | None
_Count = Annotated[int, Meta(ge=0, le=MAX_INT64)]
_Tags = Annotated[dict[Annotated[str, Meta(min_length=1, max_length=MAX_TAG_KEY_CHARS)],
                       Annotated[str, Meta(max_length=MAX_TAG_VALUE_CHARS)]],
                  Meta(max_length=MAX_TAGS)]


class _WireError(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    type: str
    message: str


class WireEvent(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """A TraceEvent as `decode_wire` vouches for it: every top-level field checked against
    the contract by a compiled schema (msgspec, in C), `request` and `response` kept as the
    producer's JSON text (`msgspec.Raw`), which the store holds as text anyway.

    Stricter than `validate()`, never looser: anything it cannot decode (an unknown top-level
    field, an error object with more than {type, message}, a wrong type) goes to the full
    path. What a skip over the payload text does not check (UTF-8 inside strings, numbers
    beyond a double, nesting depth, the shape of a streamed response, that `request` is an
    object) is checked for a whole batch at once by `WireBatch`. Instances are acyclic, so
    the cyclic GC need not track them (`gc=False`). `event["event_id"]` reads a field as on
    a dict (for the writer), in C.
    """

    event_id: _Id
    schema: Literal[1]
    workflow: _Name
    run_id: _Name
    service: _Name
    source: _Name
    kind: _Name
    target: Annotated[str, Meta(min_length=1, max_length=MAX_TARGET_CHARS)]
    endpoint: Annotated[str, Meta(min_length=1, max_length=MAX_ENDPOINT_CHARS)]
    started_at: _Count
    latency_ms: Annotated[float, Meta(ge=0, le=sys.float_info.max)]
    status: Literal["ok", "error"]
    request: Raw
    response: Raw
    span_id: _OptionalId = None
    parent_id: _OptionalId = None
    status_code: Annotated[int, Meta(ge=0, le=MAX_STATUS_CODE)] | None = None
    error: _WireError | None = None
    tags: Raw | UnsetType = UNSET
    host: str | UnsetType = UNSET
    pid: _Count | UnsetType = UNSET
    sdk_version: str | UnsetType = UNSET

    __getitem__ = object.__getattribute__


_decode_wire = msgspec.json.Decoder(WireEvent).decode


def decode_wire(raw: bytes) -> WireEvent | None:
    """The entry as a `WireEvent`, or None when the fast decode cannot vouch for it (then
    `orjson.loads` + `validate()` decide, and say why when it is invalid)."""
    try:
        return _decode_wire(raw)
    except Exception:  # noqa: BLE001 - any failure is the full path's to judge
        return None


# What a skip over JSON text lets through that orjson.loads + validate() refuse, as one RE2
# pattern per column (run by Arrow, outside the GIL). Each may match valid text (then the
# full path decides, slower but the same): a value that is not an object; a number whose
# integer part has 200+ digits or whose exponent has 3+ digits (a double overflows at
# ~1.8e308, which orjson refuses); as many brackets as the nesting limit (the event is one
# level, so its payload may nest MAX_NESTING_DEPTH - 1, and nesting never exceeds the
# brackets); and in a response, the names of a streamed response's fields, which have
# their own shape, or a `\u` escape that could spell them.
_NUMBER_RISK = r"[:,\[]\s*-?(?:\d{200}|\d+(?:\.\d*)?[eE][-+]?\d{3})"
_DEPTH_RISK = r"(?:[^\[{]*[\[{]){%d}" % MAX_NESTING_DEPTH
_REQUEST_RISK = "|".join((r"^[^{]", _NUMBER_RISK, _DEPTH_RISK))
_RESPONSE_RISK = "|".join((_REQUEST_RISK, "chunks", "stream", r"\\u"))

_BATCH: ContextVar[WireBatch | None] = ContextVar("tracelab_wire_batch", default=None)


class WireBatch:
    """One ingest batch's `WireEvent`s as Arrow rows, built once, and what they still need.

    Building the table of the whole batch at once, sorted as the store wants it, is the
    cheapest conversion (the writer would otherwise build and sort one per partition), and
    the payload and tags checks run on its columns. `unvouched` lists the indices (in the
    list given) of the events whose text might not pass `validate()`; the caller decides
    those the full way. Within `active()`, `events_to_table` takes a WireEvent's row from
    this table instead of converting it.
    """

    def __init__(self, events: Sequence[dict | WireEvent]) -> None:
        where = [i for i, e in enumerate(events) if type(e) is WireEvent]
        self.unvouched: list[int] = []
        self._rows: dict[int, int] = {}
        self._order = np.empty(0, dtype=np.int64)
        self.table: pa.Table | None = None
        if not where:
            return
        wire = [events[i] for i in where]
        try:
            flagged: set[int] = set()
            columns = _wire_columns(wire, flagged)
            risky = pc.or_kleene(pc.match_substring_regex(columns["request"], _REQUEST_RISK),
                                 pc.match_substring_regex(columns["response"], _RESPONSE_RISK))
            flagged.update(pc.indices_nonzero(pc.fill_null(risky, False)).to_pylist())
            table = _table(columns)
            order = pc.sort_indices(table, sort_keys=_SORT_KEYS).to_numpy()
        except Exception as exc:  # noqa: BLE001 - e.g. a batch too large for one column
            log.warning("the batch's events take the full path: %s: %.300s",
                        type(exc).__name__, exc)
            self.unvouched = where
            return
        self.table, self._order = table, order
        self._rows = {id(e): row for row, e in enumerate(wire)}
        self.unvouched = [where[i] for i in sorted(flagged)]

    @contextmanager
    def active(self) -> Iterator[WireBatch]:
        token = _BATCH.set(self)
        try:
            yield self
        finally:
            _BATCH.reset(token)

    def take(self, events: Sequence[WireEvent]) -> pa.Table | None:
        """The rows of `events`, in the store's order; None when one is not from this batch."""
        rows = self._rows
        if self.table is None:
            return None
        try:
            wanted = [rows[id(e)] for e in events]
        except KeyError:
            return None
        chosen = np.zeros(len(self._order), dtype=bool)
        chosen[wanted] = True
        return self.table.take(self._order[chosen[self._order]])


_SORT_KEYS = [("run_id", "ascending"), ("started_at", "ascending")]


def _wire_table(events: Sequence[WireEvent]) -> pa.Table:
    """The events' rows, sorted: from the active `WireBatch`, else converted here."""
    batch = _BATCH.get()
    table = batch.take(events) if batch is not None else None
    if table is not None:
        return table
    flagged: set[int] = set()
    columns = _wire_columns(events, flagged)
    if flagged:  # only a WireBatch's caller may decide these; here they cannot be stored
        raise ValueError(f"{len(flagged)} event(s) with malformed tags or payload text")
    table = _table(columns)
    return table.take(pc.sort_indices(table, sort_keys=_SORT_KEYS))


def _raw_text(raws: Sequence[Raw], flagged: set[int], null_text: bool = False) -> pa.Array:
    """JSON texts as one string column, copied once (a join, not one object per row).

    `null_text` makes the text `null` a null, as `_json_text_columns` stores a null response.
    Rows that are not UTF-8 are added to `flagged` and nulled (Arrow checks the whole column
    at once, SIMD; Python finds the culprits only when it fails).
    """
    lengths = np.fromiter(map(len, raws), dtype=np.int64, count=len(raws))
    offsets = np.zeros(len(raws) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    column = pa.Array.from_buffers(pa.large_binary(), len(raws),
                                   [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(raws))])
    mask = pc.equal(column, b"null") if null_text else None
    try:
        text = column.cast(pa.large_string())
    except pa.ArrowInvalid:
        bad = [i for i, raw in enumerate(raws) if not _is_utf8(bytes(raw))]
        flagged.update(bad)
        invalid = np.zeros(len(raws), dtype=bool)
        invalid[bad] = True
        mask = pa.array(invalid) if mask is None else pc.or_(mask, pa.array(invalid))
        text = pc.if_else(mask, pa.scalar(None, pa.large_binary()), column
                          ).cast(pa.large_string())
        mask = None
    if mask is not None:
        text = pc.if_else(mask, pa.scalar(None, pa.large_string()), text)
    return text.cast(pa.string())


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# Tags arrive as JSON text; the store keeps them with sorted keys. Most events carry one of a
# few tag sets, so the text as it came maps to the stored text (checked against the contract
# once, when first seen). Bounded like `_TAGS_TEXT`.
_TAGS_BY_RAW: dict[bytes, bytes | None] = {}
_decode_tags = msgspec.json.Decoder(_Tags).decode
_INVALID = b""


def _tags_column(events: Sequence[WireEvent], flagged: set[int]) -> pa.Array:
    texts: list[bytes | None] = []
    known = _TAGS_BY_RAW
    for index, raw in enumerate(map(_get_tags, events)):
        if raw is UNSET:
            texts.append(None)
            continue
        key = bytes(raw)
        text = known.get(key, _INVALID)
        if text is _INVALID:
            try:
                tags = _decode_tags(key)
            except Exception:  # noqa: BLE001 - not tags by the contract: the full path says why
                flagged.add(index)
                texts.append(None)
                continue
            text = _dumps(tags, option=orjson.OPT_SORT_KEYS) if tags else None
            if len(key) <= _TAGS_TEXT_MAX_BYTES:
                if len(known) >= _TAGS_TEXT_MAX:
                    known.clear()
                known[key] = text
        texts.append(text)
    return _json_text(texts)


_get_request = attrgetter("request")
_get_response = attrgetter("response")
_get_tags = attrgetter("tags")
_WIRE_FLAT = ("event_id", "run_id", "started_at", "latency_ms", "status", "service", "source",
              "kind", "target", "endpoint", "schema", "status_code", "span_id", "parent_id",
              "host", "pid", "sdk_version", "workflow")
_wire_flat = attrgetter(*_WIRE_FLAT)
_ABSENT_AS_NULL = ("host", "pid", "sdk_version")


def _wire_columns(events: Sequence[WireEvent], flagged: set[int]) -> dict[str, pa.Array]:
    """The events table's columns from `WireEvent`s: flat fields transposed in C, tags and
    payloads as their text, no `extra` (a WireEvent has no field outside the contract).
    Events whose tags or payload text fail a check are added to `flagged` (by index)."""
    values: dict[str, Any] = dict(zip(_WIRE_FLAT, zip(*map(_wire_flat, events))))
    for name in _ABSENT_AS_NULL:
        if UNSET in values[name]:
            values[name] = [None if v is UNSET else v for v in values[name]]
    values["workflow_name"] = values.pop("workflow")
    errors = [e.error for e in events]
    if any(errors):
        values["error_type"] = [None if err is None else err.type for err in errors]
        values["error_message"] = [None if err is None else err.message for err in errors]
    else:
        values["error_type"] = values["error_message"] = [None] * len(events)
    columns = {name: pa.array(values[name], type=EVENT_SCHEMA.field(name).type)
               for name in values}
    columns["request"] = _raw_text(list(map(_get_request, events)), flagged)
    columns["response"] = _raw_text(list(map(_get_response, events)), flagged, null_text=True)
    columns["tags"] = _tags_column(events, flagged)
    columns["extra"] = pa.nulls(len(events), pa.string())
    return columns


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
