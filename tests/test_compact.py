"""`tracelab compact` and `tracelab stats`: fewer files, the same events, exactly once."""
from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from collections import Counter

from event_factory import make_runs, read_store_raw
from tracelab.store import query
from tracelab.store.compact import compact
from tracelab.store.writer import StoreWriter


def fill(events, batches: int) -> None:
    """Write in `batches` shuffled batches, so every batch touches every partition."""
    events = list(events)
    random.Random(7).shuffle(events)
    writer = StoreWriter()
    step = len(events) // batches
    for i in range(0, len(events), step):
        writer.write(events[i:i + step])


def files(home):
    return list((home / "store" / "events").rglob("*.parquet"))


def test_compact_merges_each_partition_and_keeps_every_event(tracelab_home):
    events = make_runs(workflows=2, runs=10, events_per_run=20, days=2)
    fill(events, 8)
    before = query.executions("wf-0")
    assert len(files(tracelab_home)) == 2 * 2 * 8
    report = compact()
    assert report.files_after == 4 and report.duplicates_dropped == 0
    assert len(files(tracelab_home)) == 4
    after = query.executions("wf-0")
    assert before.equals(after)
    ids = read_store_raw(tracelab_home / "store").column("event_id").to_pylist()
    assert Counter(ids) == Counter(e["event_id"] for e in events)


def test_compact_cli_filters_and_stats(tracelab_home):
    events = make_runs(workflows=2, runs=5, events_per_run=10)
    fill(events, 5)
    out = subprocess.run([sys.executable, "-m", "tracelab.cli", "compact", "--workflow", "wf-1",
                          "--date", "2024-05-01"], capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr.decode()
    assert b"5 files -> 1" in out.stdout
    stats = subprocess.run([sys.executable, "-m", "tracelab.cli", "stats"], capture_output=True,
                           timeout=60)
    text = stats.stdout.decode()
    assert "workflows   2" in text and "executions  10" in text and "events      100" in text
    assert "files       6" in text
    bad = subprocess.run([sys.executable, "-m", "tracelab.cli", "compact", "--date", "May 1"],
                         capture_output=True, timeout=60)
    assert bad.returncode == 2 and b"YYYY-MM-DD" in bad.stderr


COMPACTOR = "from tracelab.store.compact import compact; compact()"


def test_a_compaction_killed_midway_loses_and_doubles_nothing(tracelab_home):
    events = make_runs(workflows=10, runs=10, events_per_run=40, days=2)  # 20 partitions
    fill(events, 10)
    total = len(files(tracelab_home))
    proc = subprocess.Popen([sys.executable, "-c", COMPACTOR])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if len(files(tracelab_home)) <= total - 30:
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # TraceLab's readers never double, even before anyone recovers the partition.
    assert query.store_stats()["events"] == len(events)
    counts = query.target_counts()  # cached per file: compaction must not leave stale ones
    assert int(counts["events"].sum()) == len(events)
    compact()
    assert query.target_counts().equals(counts)
    ids = read_store_raw(tracelab_home / "store").column("event_id").to_pylist()
    assert Counter(ids) == Counter(e["event_id"] for e in events)
    assert not list((tracelab_home / "store").rglob("_compaction-*"))


def test_writers_that_auto_compact_keep_small_files_few(tracelab_home):
    """What the ingester and the spool folder do: merge a partition's small files as they pile up."""
    writer = StoreWriter(auto_compact=True)
    events = make_runs(workflows=1, runs=40, events_per_run=10)
    for i in range(0, len(events), 10):  # 40 flushes into one partition
        writer.write(events[i:i + 10])
    assert len(files(tracelab_home)) < 8
    ids = read_store_raw(tracelab_home / "store").column("event_id").to_pylist()
    assert Counter(ids) == Counter(e["event_id"] for e in events)
    assert query.executions("wf-0")["events"].sum() == len(events)
