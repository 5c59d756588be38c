"""Embedded mode: the spool folded into the store, by the recorder and by any reader."""
from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import orjson

from event_factory import make_event, make_runs, read_store_raw, spool_lines
from tracelab.store import query
from tracelab.store.spool import fold_spool, has_pending


def write_spool(home: Path, name: str, events: list[dict], tail: bytes = b"") -> Path:
    """A spool file exactly as spec/README.md ("Transport") describes it."""
    spool = home / "spool"
    spool.mkdir(parents=True, exist_ok=True)
    path = spool / name
    with open(path, "ab") as f:
        f.write(b"".join(spool_lines(events)) + tail)
    return path


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def stored_ids(home: Path) -> Counter:
    return Counter(read_store_raw(home / "store").column("event_id").to_pylist())


def test_complete_and_crashed_files_are_folded_then_removed(tracelab_home):
    done = [make_event("emb", "run-1", seq=i) for i in range(20)]
    crashed = [make_event("emb", "run-2", seq=i) for i in range(10)]
    write_spool(tracelab_home, "20240501T000000-1-aaaaaaaa.jsonl", done)
    # A writer that died mid-line: its complete lines count, the torn tail is dead-lettered.
    write_spool(tracelab_home, f"20240501T000001-{dead_pid()}-bbbbbbbb.jsonl.open", crashed,
                tail=b'{"event_id": "torn')
    assert fold_spool(tracelab_home) == 30
    assert stored_ids(tracelab_home) == Counter(e["event_id"] for e in done + crashed)
    assert [p.name for p in (tracelab_home / "spool").glob("*.jsonl*")] == []
    dead = b"".join(p.read_bytes() for p in (tracelab_home / "spool" / "dead").iterdir())
    assert b"unterminated last line" in dead and b"torn" in dead


def test_a_live_writers_file_is_folded_up_to_its_last_complete_line(tracelab_home):
    name = "20240501T000000-1-cccccccc.jsonl.open"
    first = [make_event("live", "run-1", seq=i) for i in range(5)]
    half = orjson.dumps(make_event("live", "run-1", seq=99))
    path = write_spool(tracelab_home, name, first, tail=half[:40])
    writer = os.open(path, os.O_WRONLY | os.O_APPEND)
    fcntl.flock(writer, fcntl.LOCK_EX)  # what a writer holds while it may append
    assert fold_spool(tracelab_home) == 5
    assert path.exists()  # still being written: folded, not removed
    # The writer finishes the line and appends more; only the new lines are folded.
    second = [make_event("live", "run-1", seq=i) for i in range(100, 103)]
    with open(path, "ab") as f:
        f.write(half[40:] + b"\n" + b"".join(spool_lines(second)))
    assert fold_spool(tracelab_home) == 4
    assert len(stored_ids(tracelab_home)) == 9
    # Renamed to complete by its writer: folded to the end and removed, nothing doubled.
    path.rename(path.with_suffix(""))
    os.close(writer)
    assert fold_spool(tracelab_home) == 0
    assert not path.with_suffix("").exists()
    assert max(stored_ids(tracelab_home).values()) == 1


def test_bad_lines_are_dead_lettered_and_the_rest_is_stored(tracelab_home):
    good = [make_event("bad", "run-1", seq=i) for i in range(4)]
    broken = make_event("bad", "run-1")
    broken["latency_ms"] = "slow"
    spool = tracelab_home / "spool"
    spool.mkdir(parents=True)
    lines = [orjson.dumps(good[0]), b"not json", orjson.dumps(good[1]), b"\xff\xfe",
             orjson.dumps(broken), b"[1]", orjson.dumps(good[2]), orjson.dumps(good[3])]
    (spool / "20240501T000000-1-dddddddd.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    assert fold_spool(tracelab_home) == 4
    dead = [orjson.loads(line) for line in (spool / "dead" / "20240501T000000-1-dddddddd.jsonl")
            .read_bytes().splitlines()]
    reasons = " | ".join(d["reason"] for d in dead)
    assert len(dead) == 4
    assert "not JSON" in reasons and "not UTF-8" in reasons and "latency_ms" in reasons
    assert "not a JSON object" in reasons


def test_a_reader_in_another_process_folds_what_it_finds(tracelab_home):
    events = [make_event("other", "run-7", seq=i) for i in range(12)]
    write_spool(tracelab_home, f"20240501T000000-{dead_pid()}-eeeeeeee.jsonl.open", events)
    frame = query.execution_events("run-7")
    assert len(frame) == 12
    assert not has_pending(tracelab_home)


RECORDER = textwrap.dedent("""
    import sys
    import tracelab as tl

    tl.init(workflow_name="embedded-demo", run_id="emb-run-1")

    @tl.trace
    def plan(step):
        return step * 2

    for i in range(25):
        plan(i)
    assert tl.flush(), "flush did not deliver"
    print("flushed")
    sys.stdout.flush()
    import os
    os._exit(0)  # no shutdown: the second process must see the events from flush() alone
""")


def test_recording_process_flushes_and_a_second_process_sees_the_events(tracelab_home):
    rec = subprocess.run([sys.executable, "-c", RECORDER], capture_output=True, timeout=120)
    assert rec.returncode == 0, rec.stderr.decode()
    reader = subprocess.run(
        [sys.executable, "-c", "import tracelab as tl; "
         "print(len(tl.execution('emb-run-1').events), len(tl.executions('embedded-demo').df))"],
        capture_output=True, timeout=120)
    assert reader.returncode == 0, reader.stderr.decode()
    assert reader.stdout.split() == [b"25", b"1"]


FOLDER = textwrap.dedent("""
    import sys
    from tracelab.store.spool import fold_spool
    fold_spool(sys.argv[1])
""")


def test_a_fold_killed_midway_loses_and_doubles_nothing(tracelab_home):
    events = make_runs(workflows=4, runs=50, events_per_run=100)  # 20,000 events
    # Many small files so the fold is interrupted between (and within) them.
    for i in range(0, len(events), 1000):
        write_spool(tracelab_home, f"20240501T{i // 1000:06d}-1-ffffffff.jsonl",
                    events[i:i + 1000])
    proc = subprocess.Popen([sys.executable, "-c", FOLDER, str(tracelab_home)])
    deadline = time.monotonic() + 60
    store = tracelab_home / "store" / "events"
    while time.monotonic() < deadline and proc.poll() is None:
        if store.exists() and sum(1 for _ in store.rglob("*.parquet")) >= 8:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    remaining = list((tracelab_home / "spool").glob("*.jsonl"))
    assert remaining, "the fold finished before it could be killed"
    fold_spool(tracelab_home)
    ids = stored_ids(tracelab_home)
    assert max(ids.values()) == 1
    assert set(ids) == {e["event_id"] for e in events}
    assert list((tracelab_home / "spool").glob("*.jsonl")) == []
    df = query.executions("wf-2")
    assert len(df) == 50 and set(df["events"]) == {100}
