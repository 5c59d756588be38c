"""Ingesters on several hosts sharing one store, coordinated by leases in their Redis.

Each "host" is a `tracelab ingest` process with its own `TRACELAB_HOST_ID` and its own
`TRACELAB_HOME` (so their file locks never meet: only the Redis lease keeps them apart), all
in one consumer group, all writing one `TRACELAB_STORE`: a directory, or a bucket on a real
S3-compatible server (moto on loopback). One host is killed with SIGKILL while it holds a
partition's lease (mid-flush); the other drains the stream, claims the dead host's pending
entries and waits out its lease; then every event must be stored exactly once, read through
TraceLab's query layer and by DuckDB straight from the files.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import duckdb
import pytest
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from event_factory import make_event, make_runs, publish
from test_ingest import GROUP, STREAM, group_backlog, wait_for
from tracelab.store.layout import resolve_layout
from tracelab.store.leases import KEY_PREFIX
from tracelab.store.query import events as stored_events
from tracelab.store.writer import TOKEN_METADATA, StoreWriter

REPO = Path(__file__).resolve().parent.parent
TTL = "1"


class Host:
    """One pretend host: a `tracelab ingest` process with its own id and home."""

    def __init__(self, name: str, redis_url: str, store: str, tmp: Path,
                 env: dict[str, str], *args: str) -> None:
        self.name = name
        self.log = tempfile.TemporaryFile()
        self.env = dict(os.environ, **env, TRACELAB_HOST_ID=name, TRACELAB_STORE=store,
                        TRACELAB_HOME=str(tmp / f"home-{name}"), TRACELAB_LEASE_TTL=TTL)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tracelab.cli", "ingest", "--redis-url", redis_url,
             "--batch", "100", "--flush-interval", "0.05", "--claim-idle", "1",
             "--log-interval", "1", *args],
            stdout=self.log, stderr=subprocess.STDOUT, env=self.env, cwd=REPO)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def stop(self) -> int:
        """SIGTERM, then the exit code (a clean stop writes and acknowledges what it holds)."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"{self.name} did not stop on SIGTERM:\n{self.output()}") \
                from None


def consumers(client) -> list[str]:
    try:
        return [c["name"].decode() for c in client.xinfo_consumers(STREAM, GROUP)]
    except Exception:  # noqa: BLE001 - no group yet
        return []


def freeze_while_holding_a_lease(client, host: Host) -> int:
    """SIGSTOP the process of `host` that holds a partition lease, at a moment it holds it
    (mid-flush): freeze it as soon as a lease names it, then check the lease is still its
    own (else let it go and try again). Returns the frozen pid."""
    prefix = f"{host.name}:".encode()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        keys = client.keys(KEY_PREFIX + "*")
        for key, value in zip(keys, client.mget(keys) if keys else []):
            if value is None or not value.startswith(prefix):
                continue
            pid = int(value.split(b":")[1])
            os.kill(pid, signal.SIGSTOP)
            if client.get(key) == value:
                return pid
            os.kill(pid, signal.SIGCONT)
        time.sleep(0.002)
    raise AssertionError(f"{host.name} never held a lease:\n{host.output()}")


def kill_while_holding_a_lease(client, host: Host) -> None:
    pid = freeze_while_holding_a_lease(client, host)
    host.proc.send_signal(signal.SIGKILL)  # workers die with their parent
    os.kill(pid, signal.SIGKILL)
    host.proc.wait()


def publish_slowly(client, events: list[dict], published: list[dict], pieces: int = 20,
                   until=None) -> threading.Thread:
    """Publish in pieces 50 ms apart (all of `events` over about a second, so both hosts are
    busy when one dies; or, with `until`, until it says so), appending to `published`."""
    def run() -> None:
        size = -(-len(events) // pieces)
        for start in range(0, len(events), size):
            if until is not None and until():
                return
            publish(client, events[start:start + size])
            published.extend(events[start:start + size])
            time.sleep(0.05)
    thread = threading.Thread(target=run)
    thread.start()
    return thread


def assert_exactly_once(layout, events: list[dict], duckdb_count) -> None:
    """Through the query layer, then with DuckDB on the files, then each file's token."""
    expected = sorted(e["event_id"] for e in events)
    stored = []
    for workflow in sorted({e["workflow"] for e in events}):
        stored.extend(stored_events(workflow, layout=layout)["event_id"])
    assert len(stored) == len(expected), Counter(Counter(stored).values())
    assert sorted(stored) == expected
    assert duckdb_count() == (len(expected), len(expected))
    files = layout.list_files()
    assert files
    for data_file in files:  # every writer, worker processes included, wrote under a lease
        match = re.search(r"-t(\d+)\.parquet$", data_file.path)
        assert match, data_file.path
        with layout.fs.open_input_file(data_file.path) as source:
            metadata = pq.ParquetFile(source).schema_arrow.metadata
        assert metadata[TOKEN_METADATA] == match.group(1).encode()


def local_duckdb_count(root: str):
    def count() -> tuple[int, int]:
        return duckdb.sql(
            "SELECT count(*), count(DISTINCT event_id) FROM read_parquet("
            f"'{root}/events/**/*.parquet', hive_partitioning = true)").fetchall()[0]
    return count


def s3_duckdb_count(layout):
    def count() -> tuple[int, int]:
        # No httpfs download here: pyarrow's dataset over the S3 file system, read by DuckDB.
        events = ds.dataset(layout.events_root, filesystem=layout.fs, format="parquet",
                            partitioning="hive")
        return duckdb.sql("SELECT count(*), count(DISTINCT event_id) FROM events").fetchall()[0]
    return count


def run_two_hosts_one_killed(redis_server, tmp_path, store: str, env: dict[str, str],
                             events: list[dict], compactor=None,
                             workers: bool = False) -> list[dict]:
    """Two hosts ingest `events` (with a compactor: as many as it takes for it to merge
    twice while they write), host A is killed holding a lease; returns what was published."""
    client = redis_server.client()
    published: list[dict] = []
    # With `workers`, host A runs two worker processes: each must take leases like a lone
    # ingester, and they die with their parent.
    host_a = Host("host-a", redis_server.url, store, tmp_path, env,
                  *(["--workers", "2"] if workers else []))
    host_b = Host("host-b", redis_server.url, store, tmp_path, env)
    expected = ["ingest-host-a-0-0", "ingest-host-a-0-1"] if workers else ["ingest-host-a-0"]
    expected.append("ingest-host-b-0")
    publisher = None
    try:
        wait_for(lambda: sorted(consumers(client)) == expected, 60, "both hosts in the group")
        if compactor is None:
            publisher = publish_slowly(client, events, published)
        else:  # compaction runs again and again from now until the end
            compactor.start()
            publisher = publish_slowly(client, events, published, pieces=len(events) // 50,
                                       until=compactor.merged_twice)
        kill_while_holding_a_lease(client, host_a)
        publisher.join()
        wait_for(lambda: group_backlog(client) == (0, 0), 90,
                 "host-b to drain the stream and claim host-a's pending entries")
        assert host_b.stop() == 0, host_b.output()
    finally:
        if publisher is not None:
            publisher.join()
        host_a.proc.kill()
        host_a.proc.wait()
        if host_b.proc.poll() is None:
            host_b.proc.kill()
            host_b.proc.wait()
    return published


@pytest.mark.slow
def test_two_hosts_one_killed_mid_flush_every_event_stored_once(redis_server, tmp_path):
    store = str(tmp_path / "store")
    events = make_runs(workflows=2, runs=20, events_per_run=100)  # 4,000 in 2 partitions
    run_two_hosts_one_killed(redis_server, tmp_path, store, {}, events, workers=True)
    layout = resolve_layout(store, home=tmp_path / "reader")
    assert_exactly_once(layout, events, local_duckdb_count(layout.root))


@pytest.mark.slow
def test_a_host_paused_past_its_lease_publishes_nothing_and_the_other_host_takes_over(
        redis_server, tmp_path):
    """A host frozen mid-flush (SIGSTOP: a long GC pause, a VM migration) for longer than
    the lease TTL and the claim time wakes up to find its lease gone: it publishes nothing,
    acknowledges nothing, and the entries the other host claimed meanwhile are stored once."""
    store = str(tmp_path / "store")
    events = make_runs(workflows=2, runs=10, events_per_run=100)
    client = redis_server.client()
    host_a = Host("host-a", redis_server.url, store, tmp_path, {})
    host_b = Host("host-b", redis_server.url, store, tmp_path, {})
    publisher = None
    try:
        wait_for(lambda: len(consumers(client)) == 2, 60, "both hosts in the group")
        publisher = publish_slowly(client, events, [])
        pid = freeze_while_holding_a_lease(client, host_a)
        time.sleep(3 * float(TTL))  # past the TTL and the claim time: host-b takes over
        os.kill(pid, signal.SIGCONT)
        publisher.join()
        wait_for(lambda: group_backlog(client) == (0, 0), 90, "both hosts to drain the stream")
        assert host_a.stop() == 0, host_a.output()
        assert host_b.stop() == 0, host_b.output()
    finally:
        if publisher is not None:
            publisher.join()
        for host in (host_a, host_b):
            if host.proc.poll() is None:
                host.proc.send_signal(signal.SIGCONT)
                host.proc.kill()
                host.proc.wait()
    assert "lost the store lease" in host_a.output()
    layout = resolve_layout(store, home=tmp_path / "reader")
    assert_exactly_once(layout, events, local_duckdb_count(layout.root))


class Compactor:
    """`tracelab compact` on a third host, run again and again until stopped."""

    def __init__(self, redis_url: str, store: str, tmp: Path) -> None:
        self.env = dict(os.environ, TRACELAB_HOST_ID="host-c", TRACELAB_STORE=store,
                        TRACELAB_HOME=str(tmp / "home-c"), TRACELAB_LEASE_TTL=TTL)
        self.redis_url = redis_url
        self.stop = threading.Event()
        self.outputs: list[subprocess.CompletedProcess[str]] = []
        self.thread = threading.Thread(target=self._run)

    def start(self) -> None:
        self.thread.start()

    def merged_twice(self) -> bool:
        """True once two runs have merged files (so both raced live writers)."""
        return sum(_merged(done) > 0 for done in list(self.outputs)) >= 2

    def _run(self) -> None:
        while not self.stop.is_set():
            self.outputs.append(subprocess.run(
                [sys.executable, "-m", "tracelab.cli", "compact", "--redis-url",
                 self.redis_url], env=self.env, capture_output=True, text=True, timeout=120,
                cwd=REPO))

    def finish(self) -> int:
        """Stop after the run in progress; returns how many partitions were merged."""
        self.stop.set()
        self.thread.join()
        for done in self.outputs:
            assert done.returncode == 0, done.stderr
        return sum(_merged(done) for done in self.outputs)


def _merged(done: subprocess.CompletedProcess[str]) -> int:
    """Partitions one `tracelab compact` run merged, from its summary line."""
    found = re.search(r"compacted (\d+) of", done.stdout)
    return int(found.group(1)) if found else 0


@pytest.mark.slow
def test_compaction_on_a_third_host_while_two_hosts_write_keeps_exactly_once(redis_server,
                                                                             tmp_path):
    store = str(tmp_path / "store")
    pool = make_runs(workflows=2, runs=60, events_per_run=100)  # published: what it takes
    compactor = Compactor(redis_server.url, store, tmp_path)
    try:
        events = run_two_hosts_one_killed(redis_server, tmp_path, store, {}, pool, compactor)
        merged = compactor.finish()
    finally:
        compactor.stop.set()
    assert merged >= 2, [o.stdout for o in compactor.outputs]
    layout = resolve_layout(store, home=tmp_path / "reader")
    assert_exactly_once(layout, events, local_duckdb_count(layout.root))


@pytest.mark.slow
def test_two_hosts_on_s3_one_killed_mid_flush_every_event_stored_once(redis_server, tmp_path,
                                                                      s3, monkeypatch):
    store = s3.store_uri(f"hosts-{uuid.uuid4().hex}")
    events = make_runs(workflows=2, runs=10, events_per_run=100)  # 2,000
    run_two_hosts_one_killed(redis_server, tmp_path, store, s3.env, events)
    for name, value in s3.env.items():
        monkeypatch.setenv(name, value)
    layout = resolve_layout(store, home=tmp_path / "reader")
    assert_exactly_once(layout, events, s3_duckdb_count(layout))


@pytest.mark.slow
def test_tracelab_retain_makes_a_running_ingester_delete_an_old_partition(redis_server,
                                                                          tmp_path):
    store = str(tmp_path / "store")
    old = [make_event("retained", "old-run", seq=i) for i in range(20)]  # 2024-05-01
    recent = [make_event("retained", "new-run", seq=i, started_at=time.time_ns() - i)
              for i in range(20)]
    layout = resolve_layout(store, home=tmp_path / "writer")
    StoreWriter(layout).write(old + recent)
    assert len({f.date for f in layout.list_files("retained")}) == 2
    host = Host("host-a", redis_server.url, store, tmp_path, {"TRACELAB_RETAIN": "30d"})
    try:
        wait_for(lambda: "2024-05-01" not in {f.date for f in layout.list_files("retained")},
                 30, "the ingester's daily retention", interval=0.1)
        assert host.proc.poll() is None, host.output()
    finally:
        assert host.stop() == 0, host.output()
    assert sorted(stored_events("retained", layout=layout)["event_id"]) == \
        sorted(e["event_id"] for e in recent)
