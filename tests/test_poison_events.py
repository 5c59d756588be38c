"""A poison event never stops the line: spool fold and ingester dead-letter it and go on."""
from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import orjson

from event_factory import make_event, publish, read_store_raw
from tracelab.events import MAX_NESTING_DEPTH
from tracelab.store.spool import fold_spool

STREAM, GROUP = "trace.events", "tracelab-ingest"


def poison_line() -> bytes:
    """A contract-shaped event whose body nests 300 levels: JSON parses it (orjson reads up to
    1024), but no serializer writes it back (orjson stops at 254)."""
    event = make_event("poison", "run-p")
    head = orjson.dumps(event)[:-1]
    return head + b',"deep":' + b"[" * 300 + b"]" * 300 + b"}"


def stored(home: Path) -> Counter:
    return Counter(read_store_raw(home / "store").column("event_id").to_pylist())


def test_spool_poison_line_is_dead_lettered_whole_and_the_next_fold_works(tracelab_home):
    good = [make_event("poison", "run-1", seq=i) for i in range(6)]
    spool = tracelab_home / "spool"
    spool.mkdir(parents=True)
    poison = poison_line()
    lines = [orjson.dumps(e) for e in good[:3]] + [poison] + [orjson.dumps(e) for e in good[3:]]
    (spool / "20240501T000000-1-aaaaaaaa.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    assert fold_spool(tracelab_home) == 6
    assert set(stored(tracelab_home)) == {e["event_id"] for e in good}
    dead = [orjson.loads(line) for line in
            (spool / "dead" / "20240501T000000-1-aaaaaaaa.jsonl").read_bytes().splitlines()]
    assert len(dead) == 1
    assert f"nested deeper than {MAX_NESTING_DEPTH} levels" in dead[0]["reason"]
    assert dead[0]["line"].encode() == poison  # as read, not re-serialized
    assert dead[0]["offset"] == sum(len(line) + 1 for line in lines[:3])
    # The line is not stuck: the file is gone and the next fold takes new files as usual.
    assert list(spool.glob("*.jsonl*")) == []
    later = [make_event("poison", "run-2", seq=i) for i in range(3)]
    (spool / "20240501T000001-1-bbbbbbbb.jsonl").write_bytes(
        b"".join(orjson.dumps(e) + b"\n" for e in later))
    assert fold_spool(tracelab_home) == 3
    assert len(stored(tracelab_home)) == 9


def ingest_once(redis_url: str) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run([sys.executable, "-m", "tracelab.cli", "ingest", "--redis-url",
                           redis_url, "--once"], capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc


def test_ingester_acks_a_poison_entry_to_the_dead_stream_and_never_rereads_it(redis_server,
                                                                               tracelab_home):
    client = redis_server.client()
    good = [make_event("poison", "run-1", seq=i) for i in range(10)]
    publish(client, good[:5])
    poison = poison_line()
    poison_id = client.xadd(STREAM, {"event": poison})
    publish(client, good[5:])
    first = ingest_once(redis_server.url)
    assert b"10 stored" in first.stdout and b"1 dead letters" in first.stdout
    assert set(stored(tracelab_home)) == {e["event_id"] for e in good}
    dead = client.xrange(f"{STREAM}.dead")
    assert len(dead) == 1
    fields = dead[0][1]
    assert fields[b"original_id"] == poison_id
    assert f"nested deeper than {MAX_NESTING_DEPTH} levels".encode() in fields[b"reason"]
    assert fields[b"raw.event"] == poison
    assert client.xpending(STREAM, GROUP)["pending"] == 0
    # A restart finds nothing to re-read: the poison was acknowledged once, for good.
    again = ingest_once(redis_server.url)
    assert b"ingested 0 entries" in again.stdout
    assert len(client.xrange(f"{STREAM}.dead")) == 1
    assert len(stored(tracelab_home)) == 10
