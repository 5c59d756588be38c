"""The ingester's fast decode (a compiled schema, payloads kept as text) is never looser than
`orjson.loads` + `validate()`: whatever it vouches for is valid and is stored exactly as the
full path would store it; whatever it cannot vouch for goes the full way, which stores it or
dead-letters it with the reason `validate()` gives."""
from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import orjson
import pyarrow.dataset as ds
import pytest

from event_factory import make_event, publish
from tracelab.events import MAX_EVENT_BYTES, MAX_NESTING_DEPTH, validate
from tracelab.server.ingest import _reason
from tracelab.store.schema import WireBatch, decode_wire, events_to_table

STREAM = "trace.events"


def raw(event: dict) -> bytes:
    return orjson.dumps(event)


def nested(levels: int) -> object:
    value: object = []
    for _ in range(levels - 1):
        value = [value]
    return value


def with_body(body_json: bytes, where: str = "request") -> bytes:
    """An event whose `<where>.body` is the given JSON text, spliced in as bytes."""
    event = make_event("fast", "run-1")
    event[where] = {"body": "@BODY@"}
    return raw(event).replace(b'"@BODY@"', body_json)


def replaced(event: dict, old: bytes, new: bytes) -> bytes:
    text = raw(event)
    assert old in text
    return text.replace(old, new, 1)


def streamed(chunks: object) -> dict:
    return make_event("fast", "run-1", response={
        "status_code": 200, "chunks": chunks,
        "stream": {"complete": True, "error": None, "size": 2, "truncated": False}})


BASE = make_event("fast", "run-1")
# Entries the fast path must vouch for by itself (the common shapes producers send).
FAST = {
    "plain": raw(BASE),
    "pretty-printed": json.dumps(BASE, indent=2).encode(),
    "non-ascii as UTF-8": raw(make_event("fast", "é" * 256, request={"t": "é😀"})),
    "null response, span, status code, error": raw({**BASE, "response": None, "span_id": None,
                                                    "status_code": None, "error": None}),
    "error object": raw(make_event("fast", "run-1", status="error")),
    "empty tags": raw({**BASE, "tags": {}}),
    "no optional fields": raw({k: v for k, v in BASE.items()
                               if k not in ("tags", "host", "pid", "sdk_version", "span_id",
                                            "parent_id", "status_code")}),
    "integer latency": raw({**BASE, "latency_ms": 12}),
    "ids at their limits": raw({**BASE, "event_id": "e" * 128, "endpoint": "x" * 2048}),
    "largest start": raw({**BASE, "started_at": 2**63 - 1}),
    "depth at the limit": with_body(orjson.dumps(nested(MAX_NESTING_DEPTH - 2))),
    "escaped text in a request": json.dumps(make_event(
        "fast", "run-1", request={"t": "é😀"}, response=None)).encode(),
}
# Valid entries the fast path must leave to the full path: it would drop what they carry
# (a field outside the contract, an error's extra keys) or not check it (a streamed response,
# whose field names an escape could spell).
FULL_PATH = {
    "field outside the contract": raw({**BASE, "vendor": {"x": 1}}),
    "error with more keys": raw({**BASE, "error": {"type": "E", "message": "m", "code": 7}}),
    "streamed response": raw(streamed([{"t": 1.5, "data": "hi"}])),
    "escaped text in a response": json.dumps(make_event(
        "fast", "run-1", response={"t": "é"})).encode(),
}
# Valid entries that look risky to the batch check (it may flag them; then the full path
# decides, the same way).
LOOK_RISKY = {
    "brackets in strings": with_body(orjson.dumps("{[" * 80)),
    "large exponent that fits": with_body(b"1.5e300"),
    "200-digit integer": with_body(b"1" * 200),
}
SLOW_VALID = {**FULL_PATH, **LOOK_RISKY}
INVALID = {
    "number beyond a double in a body": with_body(b"1e400"),
    "400-digit integer in a response": with_body(b"9" * 400, where="response"),
    "too deep": with_body(orjson.dumps(nested(MAX_NESTING_DEPTH - 1))),
    "invalid UTF-8 in a body": with_body(b'"a\xffb"'),
    "overlong UTF-8 in a response": with_body(b'"\xc0\xaf"', where="response"),
    "lone surrogate escape": with_body(b'"\\ud800"'),
    "request is a list": raw({**BASE, "request": []}),
    "request is null": raw({**BASE, "request": None}),
    "response is a string": raw({**BASE, "response": "ok"}),
    "response missing": raw({k: v for k, v in BASE.items() if k != "response"}),
    "malformed chunks": raw(streamed("not a list")),
    "chunks named by an escape": replaced(streamed("x"), b'"chunks"', b'"\\u0063hunks"'),
    "stream without chunks": raw(make_event("fast", "run-1", response={
        "stream": {"complete": True, "error": None, "size": 0, "truncated": False}})),
    "null tags": raw({**BASE, "tags": None}),
    "tag value not a string": raw({**BASE, "tags": {"k": 1}}),
    "empty tag key": raw({**BASE, "tags": {"": "v"}}),
    "too many tags": raw({**BASE, "tags": {f"k{i}": "v" for i in range(65)}}),
    "null host": raw({**BASE, "host": None}),
    "null pid": raw({**BASE, "pid": None}),
    "null sdk_version": raw({**BASE, "sdk_version": None}),
    "schema 1.0": replaced(BASE, b'"schema":1', b'"schema":1.0'),
    "schema true": raw({**BASE, "schema": True}),
    "boolean latency": raw({**BASE, "latency_ms": True}),
    "infinite latency": replaced(BASE, b'"latency_ms":12.5', b'"latency_ms":1e400'),
    "start beyond int64": raw({**BASE, "started_at": 2**63}),
    "run_id too long in characters": raw(make_event("fast", "é" * 257)),
    "empty event_id": raw({**BASE, "event_id": ""}),
    "event_id too long": raw({**BASE, "event_id": "e" * 129}),
    "unknown status": raw({**BASE, "status": "fine"}),
    "error without message": raw({**BASE, "error": {"type": "E"}}),
    "duplicate key, the last invalid": replaced(BASE, b'"status":"ok"',
                                                b'"status":"ok","status":"bad"'),
}


def full_path(entry: bytes) -> dict | None:
    try:
        obj = orjson.loads(entry)
    except orjson.JSONDecodeError:
        return None
    return obj if type(obj) is dict and not validate(obj) else None


def vouched(entry: bytes) -> bool:
    event = decode_wire(entry)
    return event is not None and not WireBatch([event]).unvouched


def assert_same_rows(wire_table, dict_table) -> None:
    assert wire_table.column_names == dict_table.column_names
    for name in wire_table.column_names:
        got, want = wire_table.column(name).to_pylist(), dict_table.column(name).to_pylist()
        if name in ("request", "response"):  # the producer's text: equal as JSON
            got = [None if v is None else orjson.loads(v) for v in got]
            want = [None if v is None else orjson.loads(v) for v in want]
        assert got == want, name


@pytest.mark.parametrize("entry", FAST.values(), ids=FAST.keys())
def test_common_entries_are_vouched_and_stored_as_the_full_path_would(entry):
    obj = full_path(entry)
    assert obj is not None
    event = decode_wire(entry)
    assert event is not None and vouched(entry)
    batch = WireBatch([event])
    with batch.active():
        assert_same_rows(events_to_table([event]), events_to_table([obj]))
    assert_same_rows(events_to_table([event]), events_to_table([obj]))  # no batch: same


@pytest.mark.parametrize("entry", FULL_PATH.values(), ids=FULL_PATH.keys())
def test_valid_oddities_are_left_to_the_full_path(entry):
    assert full_path(entry) is not None
    assert not vouched(entry)


@pytest.mark.parametrize("entry", LOOK_RISKY.values(), ids=LOOK_RISKY.keys())
def test_risky_looking_valid_entries_are_stored_alike_either_way(entry):
    obj = full_path(entry)
    assert obj is not None
    if vouched(entry):
        assert_same_rows(events_to_table([decode_wire(entry)]), events_to_table([obj]))


@pytest.mark.parametrize("entry", INVALID.values(), ids=INVALID.keys())
def test_invalid_entries_are_never_vouched(entry):
    assert full_path(entry) is None
    assert not vouched(entry)


def test_a_batch_flags_exactly_its_unvouched_events_and_converts_the_rest_once():
    entries = list(FAST.values()) + list(SLOW_VALID.values()) + list(INVALID.values())
    events = [decode_wire(e) or full_path(e) or {"invalid": True} for e in entries]
    batch = WireBatch(events)
    flagged = set(batch.unvouched)
    wire = [i for i, e in enumerate(events) if type(e).__name__ == "WireEvent"]
    assert flagged <= set(wire)
    assert not flagged & set(range(len(FAST)))
    first_invalid = len(FAST) + len(SLOW_VALID)
    assert {i for i in wire if i >= first_invalid} <= flagged
    good = [events[i] for i in wire if i not in flagged]
    with batch.active():
        from_batch = events_to_table(good)
    assert_same_rows(from_batch, events_to_table([full_path(entries[i]) for i in wire
                                                  if i not in flagged]))


def stored_rows(home: Path):
    root = home / "store" / "events"
    files = [str(p) for p in root.rglob("*.parquet") if not p.name.startswith(".")]
    return ds.dataset(files, format="parquet").to_table()


def test_the_ingester_dead_letters_what_the_fast_path_let_by_with_the_full_reason(
        redis_server, tracelab_home):
    client = redis_server.client()
    stored_first = make_event("fast", "run-0")
    publish(client, [stored_first])
    done = subprocess.run([sys.executable, "-m", "tracelab.cli", "ingest", "--once",
                           "--redis-url", redis_server.url], capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    good = [raw(make_event("fast", f"run-{i % 3}", seq=i)) for i in range(30)]
    # The cases share BASE's event_id: each gets its own, so each is stored once.
    good += [entry.replace(BASE["event_id"].encode(), b"%032x" % i)
             for i, entry in enumerate([*FAST.values(), *SLOW_VALID.values()])]
    bad = [INVALID[name] for name in ("number beyond a double in a body", "too deep",
                                      "invalid UTF-8 in a body", "request is a list",
                                      "malformed chunks", "null tags")]
    # Same id as an event already stored, but its payload is invalid: a dead letter, never
    # a "duplicate" (the check runs before the store's dedupe).
    bad.append(raw({**stored_first, "request": {"body": "@"}}).replace(b'"@"', b"1e400"))
    ids = {}
    for i, entry in enumerate(good + bad):
        ids[client.xadd(STREAM, {"event": entry})] = entry
        if i % 7 == 0:  # a multi-field entry: its dead letter carries every field
            ids[client.xadd(STREAM, {"event": bad[i % len(bad)], "origin": b"x"})] = \
                bad[i % len(bad)]
    done = subprocess.run([sys.executable, "-m", "tracelab.cli", "ingest", "--once",
                           "--redis-url", redis_server.url], capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    dead = client.xrange(f"{STREAM}.dead")
    dead_entries = [ids[fields[b"original_id"]] for _, fields in dead]
    assert Counter(dead_entries) == Counter(e for e in ids.values() if e in bad)
    for _, fields in dead:
        entry = ids[fields[b"original_id"]]
        raw_fields = {k[4:]: v for k, v in fields.items() if k.startswith(b"raw.")}
        assert raw_fields[b"event"] == entry
        assert fields[b"reason"].decode() == _reason(raw_fields, MAX_EVENT_BYTES)
    assert any(b"origin" in {k[4:] for k in f if k.startswith(b"raw.")} for _, f in dead)
    table = stored_rows(tracelab_home)
    by_id = Counter(table.column("event_id").to_pylist())
    want = Counter([stored_first["event_id"], *(orjson.loads(e)["event_id"] for e in good)])
    assert by_id == want
    stored = {row["event_id"]: row for row in table.to_pylist()}
    for entry in good:
        obj = orjson.loads(entry)
        row = stored[obj["event_id"]]
        assert orjson.loads(row["request"]) == obj["request"]
        response = None if row["response"] is None else orjson.loads(row["response"])
        assert response == obj["response"]
