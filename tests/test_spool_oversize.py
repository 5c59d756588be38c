"""Event size: a spool line of any size is stored or dead-lettered whole, never split, and the
SDK keeps what it writes under MAX_EVENT_BYTES by shrinking bodies to markers."""
from __future__ import annotations

from pathlib import Path

import orjson
import requests

import tracelab
from event_factory import make_event
from tracelab.events import MAX_EVENT_BYTES
from tracelab.store.spool import CHUNK_BYTES, fold_spool


def stored_events(home: Path) -> dict[str, dict]:
    """Every stored step with its payloads, read straight from the Parquet files (the run's
    lifecycle events, `kind: run`, left out)."""
    import pyarrow.dataset as ds

    rows = ds.dataset(str(home / "store" / "events"), format="parquet",
                      partitioning="hive").to_table().to_pylist()
    out = {}
    for row in rows:
        if row.get("kind") == "run":
            continue
        for column in ("request", "response", "tags"):
            value = row.get(column)
            row[column] = orjson.loads(value) if value else None
        out[row["event_id"]] = row
    return out


def test_a_9_mb_line_is_dead_lettered_whole_and_its_neighbours_stored(tracelab_home):
    spool = tracelab_home / "spool"
    spool.mkdir(parents=True)
    before, after = make_event("big", "run-1", seq=1), make_event("big", "run-1", seq=2)
    huge = orjson.dumps(make_event("big", "run-1", seq=3, body_bytes=9_000_000))
    fits = make_event("big", "run-1", seq=4, body_bytes=3_000_000)  # under the limit
    assert len(huge) > CHUNK_BYTES > MAX_EVENT_BYTES
    lines = [orjson.dumps(before), huge, orjson.dumps(fits), orjson.dumps(after)]
    name = "20240501T000000-1-aaaaaaaa.jsonl"
    (spool / name).write_bytes(b"\n".join(lines) + b"\n")
    assert fold_spool(tracelab_home) == 3
    events = stored_events(tracelab_home)
    assert set(events) == {before["event_id"], after["event_id"], fits["event_id"]}
    assert events[fits["event_id"]]["request"] == fits["request"]  # stored whole
    dead = [orjson.loads(line) for line in (spool / "dead" / name).read_bytes().splitlines()]
    assert len(dead) == 1, [d["reason"] for d in dead]  # one record: the line was not split
    assert dead[0]["reason"] == (f"oversized: {len(huge)} bytes, the limit is "
                                 f"{MAX_EVENT_BYTES} (MAX_EVENT_BYTES)")
    assert dead[0]["line"].encode() == huge
    assert dead[0]["offset"] == len(lines[0]) + 1
    assert not (spool / name).exists()


def test_sdk_event_with_huge_function_args_and_tags_is_shrunk_not_dropped(tracelab_home):
    tracelab.init(workflow_name="huge", run_id="huge-run")
    before = tracelab.stats()  # the counters are per process, across inits
    try:
        @tracelab.trace(tags={"big": "t" * (5 << 20)})
        def ingest(*chunks: str) -> int:
            return len(chunks)

        chunk = "a" * 60_000  # under the 64 KiB body cap each, 6 MB together
        assert ingest(*[chunk] * 100) == 100
        assert ingest("small") == 1
        assert tracelab.flush(30)
        stats = tracelab.stats()
    finally:
        tracelab.shutdown()
    assert stats["shrunk"] - before["shrunk"] == 1
    assert stats["dropped"] == before["dropped"]
    events = sorted(stored_events(tracelab_home).values(), key=lambda e: e["started_at"])
    assert len(events) == 2
    big, small = events
    assert big["status"] == "ok" and big["endpoint"].endswith("ingest")
    assert big["response"] == {"return": 100}
    args = big["request"]["args"]
    assert args["$tracelab"] == "truncated" and args["size"] > 6_000_000
    assert args["data"].startswith('{"chunks":["aaaa')
    assert big["tags"]["big"] == "t" * 1024  # the contract's longest tag value
    assert small["request"]["args"] == {"chunks": ["small"]}


def test_sdk_http_event_with_an_unserializably_deep_body_is_kept(tracelab_home, loopback_http):
    tracelab.init(workflow_name="deep", run_id="deep-run")
    before = tracelab.stats()
    try:
        body = b"[" * 300 + b"]" * 300  # parses (orjson reads 1024 deep), cannot be written
        response = requests.post(f"{loopback_http.url}/echo", data=body,
                                 headers={"Content-Type": "application/json"})
        assert response.status_code == 200
        assert tracelab.flush(30)
        stats = tracelab.stats()
    finally:
        tracelab.shutdown()
    assert stats["dropped"] == before["dropped"]
    [event] = stored_events(tracelab_home).values()
    assert event["status_code"] == 200 and event["endpoint"] == "POST /echo"
    deepest = event["request"]["body"]
    while isinstance(deepest, list):
        [deepest] = deepest
    assert deepest["$tracelab"] == "not_captured"
    assert event["response"]["body"]["path"] == "/echo"  # the rest is intact


def test_sdk_http_event_with_a_body_deeper_than_the_contract_is_stored(tracelab_home,
                                                                       loopback_http):
    """A body orjson can write but the contract forbids (65..254 levels) is cut to a marker at
    the limit by the SDK; before, the whole event was dead-lettered by the fold."""
    from tracelab.events import MAX_NESTING_DEPTH, nests_within
    from tracelab.sdk.payloads import BODY_MAX_DEPTH

    tracelab.init(workflow_name="deep", run_id="deep-100")
    try:
        body = b'{"a":' * 100 + b"1" + b"}" * 100
        response = requests.post(f"{loopback_http.url}/echo", data=body,
                                 headers={"Content-Type": "application/json"})
        assert response.status_code == 200
        assert tracelab.flush(30)
    finally:
        tracelab.shutdown()
    assert not (tracelab_home / "spool" / "dead").exists()
    [event] = stored_events(tracelab_home).values()
    assert event["endpoint"] == "POST /echo"
    node = event["request"]["body"]
    for _ in range(BODY_MAX_DEPTH - 1):
        node = node["a"]
    assert node["$tracelab"] == "not_captured" and "nested deeper" in node["reason"]
    assert nests_within(event["request"], MAX_NESTING_DEPTH - 1)
