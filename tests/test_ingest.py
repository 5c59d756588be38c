"""`tracelab ingest` against a real redis-server: crashes, splits, dead letters, signals."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest

from event_factory import make_event, make_runs, publish, read_store_raw

STREAM = "trace.events"
GROUP = "tracelab-ingest"


def start_ingest(redis_url: str | None, *args: str, env: dict | None = None
                 ) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "tracelab.cli", "ingest", *args]
    if redis_url is not None:
        cmd[4:4] = ["--redis-url", redis_url]
    # Logs go to files, not pipes nobody drains, so a chatty ingester never blocks on them.
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                            env=env or dict(os.environ))
    proc.log = log  # type: ignore[attr-defined]
    return proc


def output(proc: subprocess.Popen[bytes]) -> str:
    proc.log.seek(0)  # type: ignore[attr-defined]
    return proc.log.read().decode(errors="replace")  # type: ignore[attr-defined]


def run_ingest_once(redis_url: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run([sys.executable, "-m", "tracelab.cli", "ingest", "--redis-url",
                           redis_url, "--once", *args], capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc


def wait_for(predicate, timeout: float, what: str, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def group_backlog(client) -> tuple[int, int]:
    """(lag, pending) of the ingest group."""
    for group in client.xinfo_groups(STREAM):
        if group["name"] in (GROUP, GROUP.encode()):
            return int(group.get("lag") or 0), int(group["pending"])
    return -1, -1


def acked(client) -> int:
    """Entries the group has delivered and had acknowledged (so they are in the store)."""
    for group in client.xinfo_groups(STREAM):
        if group["name"] in (GROUP, GROUP.encode()):
            return int(group.get("entries-read") or 0) - int(group["pending"])
    return 0


def assert_exactly_once(home: Path, events: list[dict]) -> None:
    table = read_store_raw(home / "store")
    ids = table.column("event_id").to_pylist()
    counts = Counter(ids)
    doubled = [i for i, n in counts.items() if n > 1]
    missing = {e["event_id"] for e in events} - set(counts)
    assert not doubled, f"{len(doubled)} events stored twice"
    assert not missing, f"{len(missing)} events missing"
    assert len(ids) == len(events)


def assert_executions(events: list[dict]) -> None:
    import tracelab as tl

    expected = Counter((e["workflow"], e["run_id"]) for e in events)
    for workflow in {e["workflow"] for e in events}:
        df = tl.executions(workflow).df
        assert df["run_id"].is_unique
        got = dict(zip(df["run_id"], df["events"]))
        want = {run: n for (wf, run), n in expected.items() if wf == workflow}
        assert got == want


@pytest.mark.slow
def test_kill_9_mid_stream_then_restart_stores_every_event_exactly_once(redis_server,
                                                                        tracelab_home):
    events = make_runs(workflows=3, runs=100, events_per_run=100)  # 30,000 over 300 runs
    client = redis_server.client()
    publish(client, events)
    first = start_ingest(redis_server.url, "--batch", "200", "--flush-interval", "0.2")
    try:
        wait_for(lambda: acked(client) >= 5000, 60, "a few thousand events stored")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    lag, pending = group_backlog(client)
    assert lag + pending > 0, "the ingester finished before it could be killed"
    # Same host, default consumer name: the restart finds its own pending entries first.
    done = run_ingest_once(redis_server.url, "--batch", "2000")
    assert b"stored" in done.stdout
    assert group_backlog(client) == (0, 0)
    assert_exactly_once(tracelab_home, events)
    assert_executions(events)


@pytest.mark.slow
def test_two_ingesters_one_killed_the_other_finishes_its_work(redis_server, tracelab_home):
    events = make_runs(workflows=2, runs=100, events_per_run=100)  # 20,000
    client = redis_server.client()
    publish(client, events)
    common = ["--batch", "200", "--flush-interval", "0.2", "--claim-idle", "1"]
    victim = start_ingest(redis_server.url, "--consumer", "a", *common)
    survivor = start_ingest(redis_server.url, "--consumer", "b", *common, "--log-interval", "0.5")
    try:
        # Both must have joined the group (read at least once) before the kill: on a loaded
        # machine the survivor alone can store thousands before the victim has started.
        wait_for(lambda: acked(client) >= 3000 and len(client.xinfo_consumers(STREAM, GROUP)) == 2,
                 60, "a few thousand events stored, both ingesters reading")
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        wait_for(lambda: group_backlog(client) == (0, 0), 90,
                 "the survivor to drain the stream and claim the victim's pending entries")
    finally:
        victim.kill()
        survivor.send_signal(signal.SIGTERM)
        try:
            rc = survivor.wait(timeout=10)
        except subprocess.TimeoutExpired:
            survivor.kill()
            raise AssertionError("ingester did not exit within 10 s of SIGTERM") from None
    assert rc == 0
    log = output(survivor)
    assert "ev/s" in log and "backlog" in log  # one line per interval with rate and lag
    consumers = {c["name"]: c for c in client.xinfo_consumers(STREAM, GROUP)}
    assert set(consumers) == {b"a", b"b"}
    assert_exactly_once(tracelab_home, events)
    assert_executions(events)


def test_malformed_entries_become_dead_letters_and_valid_ones_are_stored(redis_server,
                                                                         tracelab_home,
                                                                         monkeypatch):
    client = redis_server.client()
    good = [make_event("dl", f"run-{i % 3}", seq=i) for i in range(60)]
    missing = make_event("dl", "run-x")
    del missing["run_id"]
    mistyped = make_event("dl", "run-x", started_at="yesterday")
    oversized = make_event("dl", "run-x", body_bytes=20_000)
    bad = {
        "no 'event' field": {"payload": b"{}"},
        "not JSON": {"event": b"{this is not json"},
        "not a JSON object": {"event": b"[1, 2, 3]"},
        "not UTF-8": {"event": b"\xff\xfe\x00garbage"},
        "run_id": {"event": orjson.dumps(missing)},
        "started_at": {"event": orjson.dumps(mistyped)},
        "oversized": {"event": orjson.dumps(oversized)},
    }
    ids = {}
    for i, (reason, fields) in enumerate(bad.items()):
        publish(client, good[i * 8:(i + 1) * 8])
        ids[reason] = client.xadd(STREAM, fields)
    publish(client, good[56:])
    # The Redis URL comes from the environment when there is no flag.
    monkeypatch.setenv("TRACELAB_REDIS_URL", redis_server.url)
    proc = subprocess.run([sys.executable, "-m", "tracelab.cli", "ingest", "--once",
                           "--max-event-bytes", "10000"], capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()
    dead = client.xrange(f"{STREAM}.dead")
    assert len(dead) == len(bad)
    by_original = {fields[b"original_id"]: fields for _, fields in dead}
    for reason, entry_id in ids.items():
        fields = by_original[entry_id]
        assert reason.encode() in fields[b"reason"], (reason, fields[b"reason"])
        for key, value in bad[reason].items():
            assert fields[b"raw." + key.encode()] == value
    assert group_backlog(client) == (0, 0)
    assert_exactly_once(tracelab_home, good)


def test_sigterm_writes_what_it_holds_acknowledges_and_exits_0(redis_server, tracelab_home):
    client = redis_server.client()
    events = [make_event("term", f"run-{i % 5}", seq=i) for i in range(1000)]
    proc = start_ingest(redis_server.url, "--flush-interval", "60", "--batch", "100000")
    try:
        publish(client, events)
        wait_for(lambda: group_backlog(client) == (0, 1000), 30, "the ingester to read them")
        assert read_store_raw(tracelab_home / "store").num_rows == 0  # held, not yet written
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=10)
    finally:
        proc.kill()
    assert rc == 0, output(proc)
    assert group_backlog(client) == (0, 0)
    assert_exactly_once(tracelab_home, events)


def test_a_quiet_stream_still_lands_by_the_flush_interval(redis_server, tracelab_home):
    client = redis_server.client()
    proc = start_ingest(redis_server.url)  # default --flush-interval 0.25
    try:
        wait_for(lambda: client.exists(STREAM), 30, "the consumer group (MKSTREAM)")
        event = make_event("quiet", "run-1")
        publish(client, [event])
        wait_for(lambda: read_store_raw(tracelab_home / "store").num_rows == 1, 5,
                 "a lone event to be flushed by the interval")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


def test_group_created_at_0_so_earlier_events_are_not_skipped(redis_server, tracelab_home):
    client = redis_server.client()
    events = [make_event("early", "run-1", seq=i) for i in range(10)]
    publish(client, events)  # before any group exists
    run_ingest_once(redis_server.url)
    assert_exactly_once(tracelab_home, events)
    # A second --once over the same data stores nothing twice.
    client.xgroup_setid(STREAM, GROUP, "0")
    out = run_ingest_once(redis_server.url)
    assert b"10 duplicates dropped" in out.stdout
    assert_exactly_once(tracelab_home, events)


@pytest.mark.slow
def test_survives_a_redis_restart(redis_server, tracelab_home):
    client = redis_server.client()
    before = [make_event("restart", "run-1", seq=i) for i in range(300)]
    after = [make_event("restart", "run-2", seq=i) for i in range(300)]
    proc = start_ingest(redis_server.url, "--flush-interval", "0.2")
    try:
        publish(client, before)
        wait_for(lambda: read_store_raw(tracelab_home / "store").num_rows == 300, 30,
                 "the first events")
        redis_server.stop()
        time.sleep(0.5)  # let the ingester notice the outage (not a timing assertion)
        redis_server.start()
        client = redis_server.client()
        publish(client, after)
        wait_for(lambda: read_store_raw(tracelab_home / "store").num_rows == 600, 60,
                 "the events published after the restart")
        assert proc.poll() is None, "the ingester died with Redis"
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=10)
    assert rc == 0
    assert_exactly_once(tracelab_home, before + after)


def test_bad_flags_are_refused_with_a_clear_message(tracelab_home):
    proc = subprocess.run([sys.executable, "-m", "tracelab.cli", "ingest", "--batch", "0"],
                          capture_output=True, timeout=30)
    assert proc.returncode == 2
    assert b"--batch" in proc.stderr and b"at least 1" in proc.stderr


def child_pids(pid: int) -> list[int]:
    """Live processes whose parent is `pid` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_kill_9_of_a_multi_worker_ingest_then_restart_stores_every_event_exactly_once(
        redis_server, tracelab_home):
    events = make_runs(workflows=3, runs=100, events_per_run=100)  # 30,000 over 300 runs
    client = redis_server.client()
    publish(client, events)
    first = start_ingest(redis_server.url, "--workers", "2", "--batch", "200",
                         "--flush-interval", "0.2")
    try:
        workers = wait_for(lambda: len(child_pids(first.pid)) >= 2 and child_pids(first.pid),
                           60, "two worker processes")
        wait_for(lambda: acked(client) >= 5000, 60, "a few thousand events stored")
        consumers = {c["name"] for c in client.xinfo_consumers(STREAM, GROUP)}
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # The workers die with the command: nothing keeps consuming under names the restart reuses.
    wait_for(lambda: not any(alive(pid) for pid in workers), 10, "the workers to die with it")
    lag, pending = group_backlog(client)
    assert lag + pending > 0, "the ingester finished before it could be killed"
    assert len(consumers) == 2 and all(name.endswith((b"-0", b"-1")) for name in consumers)
    # Same host, same default base name: each restarted worker finds its own pending entries.
    done = run_ingest_once(redis_server.url, "--workers", "2", "--batch", "2000")
    assert b"stored" in done.stdout and b"(2 workers)" in done.stdout
    assert group_backlog(client) == (0, 0)
    assert {c["name"] for c in client.xinfo_consumers(STREAM, GROUP)} == consumers
    assert_exactly_once(tracelab_home, events)
    assert_executions(events)


def test_sigterm_reaches_every_worker_which_writes_and_acknowledges(redis_server,
                                                                    tracelab_home):
    client = redis_server.client()
    events = [make_event("term-w", f"run-{i % 5}", seq=i) for i in range(1000)]
    proc = start_ingest(redis_server.url, "--workers", "2", "--flush-interval", "60",
                        "--batch", "100000")
    try:
        wait_for(lambda: len(client.xinfo_consumers(STREAM, GROUP)) == 2
                 if client.exists(STREAM) else False, 60, "both workers to join the group")
        publish(client, events)
        wait_for(lambda: group_backlog(client) == (0, 1000), 30, "the workers to read them")
        assert read_store_raw(tracelab_home / "store").num_rows == 0  # held, not yet written
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=10)
    finally:
        proc.kill()
    assert rc == 0, output(proc)
    assert group_backlog(client) == (0, 0)
    assert_exactly_once(tracelab_home, events)


def test_workers_flag(redis_server, tracelab_home):
    proc = subprocess.run([sys.executable, "-m", "tracelab.cli", "ingest", "--workers", "0"],
                          capture_output=True, timeout=30)
    assert proc.returncode == 2 and b"--workers" in proc.stderr
    client = redis_server.client()
    events = [make_event("auto", f"run-{i % 7}", seq=i) for i in range(3000)]
    publish(client, events)
    done = run_ingest_once(redis_server.url, "--workers", "auto", "--batch", "500")
    assert b"3000 stored" in done.stdout
    assert group_backlog(client) == (0, 0)
    assert_exactly_once(tracelab_home, events)


def test_workers_auto_is_one_per_core_at_most_8(monkeypatch):
    from tracelab.cli import ingest as cli_ingest

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    assert cli_ingest._workers("auto") == 8
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert cli_ingest._workers("auto") == 2
    assert cli_ingest._workers("12") == 12  # an explicit count is the user's call


def test_a_batch_is_written_once_its_entries_reach_batch_bytes(redis_server, tracelab_home):
    from tracelab.server.ingest import IngestConfig, Ingester

    client = redis_server.client()
    events = [make_event("bytes", "run-1", seq=i, body_bytes=1000) for i in range(40)]
    publish(client, events)
    size = sum(len(orjson.dumps(e)) for e in events)
    common = dict(redis_url=redis_server.url, batch=100_000, flush_interval=60, read_count=5,
                  log_interval=3600)
    capped = Ingester(IngestConfig(group="capped", consumer="c", batch_bytes=size // 4,
                                   **common)).run(once=True)
    assert capped.stored == 40 and capped.flushes >= 4
    whole = Ingester(IngestConfig(group="whole", consumer="w", **common)).run(once=True)
    assert whole.stored == 0 and whole.duplicates == 40 and whole.flushes == 1
    assert_exactly_once(tracelab_home, events)
