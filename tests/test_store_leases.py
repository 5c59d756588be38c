"""Store leases against a real redis-server: what makes the store's locks hold across hosts.

Two "hosts" are two lease holders with different `TRACELAB_HOME`s, so their file locks do not
exclude each other and only the lease can; a paused or killed host is a real process stopped
with SIGSTOP or killed with SIGKILL.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import redis

from conftest import free_port
from event_factory import BASE_NS, make_event
from tracelab.config import ConfigError, host_id, lease_ttl
from tracelab.server.ingest import IngestConfig, Ingester
from tracelab.store.compact import compact
from tracelab.store.layout import date_of, resolve_layout
from tracelab.store.leases import KEY_PREFIX, LeaseLost, RedisLeases
from tracelab.store.locks import FileLock, LeasedLock
from tracelab.store.query import events as stored_events
from tracelab.store.writer import TOKEN_METADATA, StoreWriter

REPO = Path(__file__).resolve().parent.parent
DAY = date_of(BASE_NS)


def lease_values(client: redis.Redis) -> dict[bytes, bytes]:
    keys = client.keys(KEY_PREFIX + "*")
    return dict(zip(keys, client.mget(keys))) if keys else {}


def data_files(layout) -> list[str]:
    return [f.path for f in layout.list_files()]


def test_a_lease_excludes_another_holder_until_released_then_the_token_grows(redis_server):
    a = RedisLeases(redis_server.url, ttl_s=5, holder="host-a")
    b = RedisLeases(redis_server.url, ttl_s=5, holder="host-b")
    try:
        first = a.lease("store\0partition")
        assert first.acquire()
        assert list(lease_values(redis_server.client()).values()) == \
            [f"host-a:{first.token}".encode()]
        other = b.lease("store\0partition")
        assert not other.acquire(blocking=False)
        assert b.lease("store\0another partition").acquire(blocking=False)
        token = first.token
        first.release()
        assert other.acquire(blocking=False)
        assert other.token > token
        first.release()  # no longer ours: releasing again must not free b's lease
        assert not a.lease("store\0partition").acquire(blocking=False)
    finally:
        a.close()
        b.close()


def test_partition_locks_of_two_homes_exclude_each_other_only_with_leases(
        redis_server, tmp_path, monkeypatch):
    monkeypatch.setenv("TRACELAB_LEASE_TTL", "5")
    store = str(tmp_path / "store")
    host_a = resolve_layout(store, home=tmp_path / "home-a", leases_url=redis_server.url)
    host_b = resolve_layout(store, home=tmp_path / "home-b", leases_url=redis_server.url)
    try:
        held = host_a.partition_lock("wf", DAY)
        assert isinstance(held, LeasedLock)
        with held:
            with held:  # re-entrant in its thread, one lease
                assert held.token is not None
            held.ensure_held()
            assert not host_b.partition_lock("wf", DAY).acquire(blocking=False)
            assert host_b.partition_lock("wf", "2024-05-02").acquire(blocking=False)
            # Flock alone (no leases) does not see another home's holder: the lease does.
            plain = resolve_layout(store, home=tmp_path / "home-b").partition_lock("wf", DAY)
            assert isinstance(plain, FileLock) and plain.token is None
            assert plain.acquire(blocking=False)
            plain.ensure_held()
            plain.release()
        second = host_b.partition_lock("wf", DAY)
        assert second.acquire(blocking=False)
        second.release()
    finally:
        host_a.leases.close()
        host_b.leases.close()


def test_renewal_keeps_a_hold_longer_than_the_ttl_alive(redis_server):
    a = RedisLeases(redis_server.url, ttl_s=0.3)
    b = RedisLeases(redis_server.url, ttl_s=0.3)
    try:
        lease = a.lease("long hold")
        lease.acquire()
        deadline = time.monotonic() + 1.5  # five TTLs
        while time.monotonic() < deadline:
            assert not b.lease("long hold").acquire(blocking=False)
            time.sleep(0.05)
        lease.ensure_held()
        assert lease.held
        a.close()  # releases it; taken again, the renewer comes back with it
        assert not lease.held
        lease.acquire()
        time.sleep(0.9)
        lease.ensure_held()
        assert not b.lease("long hold").acquire(blocking=False)
    finally:
        a.close()
        b.close()


HOLD_SCRIPT = """
import sys, time
from tracelab.store.leases import RedisLeases
lease = RedisLeases(sys.argv[1], ttl_s=0.5, holder="crashing-host").lease("crash")
lease.acquire()
print(lease.token, flush=True)
time.sleep(120)
"""


def test_a_killed_holders_lease_lapses_and_the_next_holder_gets_a_higher_token(redis_server):
    proc = subprocess.Popen([sys.executable, "-c", HOLD_SCRIPT, redis_server.url],
                            stdout=subprocess.PIPE, cwd=REPO)
    survivor = RedisLeases(redis_server.url, ttl_s=0.5, holder="survivor")
    try:
        crashed_token = int(proc.stdout.readline())
        lease = survivor.lease("crash")
        time.sleep(1.0)  # two TTLs: only the holder's renewals can keep it
        assert not lease.acquire(blocking=False)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert lease.acquire(timeout=10)
        assert lease.token > crashed_token
        assert list(lease_values(redis_server.client()).values()) == \
            [f"survivor:{lease.token}".encode()]
    finally:
        proc.kill()
        proc.wait()
        survivor.close()


PAUSED_WRITER = """
import json, sys
from tracelab.store.layout import resolve_layout
from tracelab.store.leases import LeaseLost
from tracelab.store.writer import StoreWriter

store, home, url, workflow, day = sys.argv[1:6]
writer = StoreWriter(resolve_layout(store, home=home, leases_url=url))
events = json.loads(sys.stdin.readline())
lock = writer.partition_lock(workflow, day)
lock.acquire()
print("held", lock.token, flush=True)
sys.stdin.readline()
try:
    writer.write(events)
except LeaseLost as exc:
    print("lost", exc, flush=True)
else:
    print("published", flush=True)
"""


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_writer_whose_lease_was_taken_over_raises_lease_lost_and_publishes_nothing(
        where, redis_server, tmp_path, monkeypatch, request):
    """A holder paused (SIGSTOP: a GC pause, a VM freeze) beyond its TTL loses the partition
    to another host; when it wakes up and tries to publish, it finds out and publishes no
    file, on a local disk (before the rename) and on S3 (before the one PUT)."""
    env = dict(os.environ, TRACELAB_LEASE_TTL="0.5")
    if where == "s3":
        s3 = request.getfixturevalue("s3")
        store = s3.store_uri(f"leases-{uuid.uuid4().hex}")
        env.update(s3.env)
        for name, value in s3.env.items():
            monkeypatch.setenv(name, value)
    else:
        store = str(tmp_path / "store")
    monkeypatch.setenv("TRACELAB_LEASE_TTL", "0.5")
    paused_events = [make_event("fenced", "run-a", seq=i) for i in range(50)]
    other_events = [make_event("fenced", "run-b", seq=i) for i in range(30)]
    paused = subprocess.Popen(
        [sys.executable, "-c", PAUSED_WRITER, store, str(tmp_path / "home-a"),
         redis_server.url, "fenced", DAY],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=REPO, text=True)
    layout = resolve_layout(store, home=tmp_path / "home-b", leases_url=redis_server.url)
    try:
        paused.stdin.write(json.dumps(paused_events) + "\n")
        paused.stdin.flush()
        word, paused_token = paused.stdout.readline().split()
        assert word == "held"
        paused.send_signal(signal.SIGSTOP)
        writer = StoreWriter(layout)
        report = writer.write(other_events)  # waits for the paused host's lease to lapse
        assert report.written == 30
        (taken_over,) = data_files(layout)
        token = int(taken_over.rsplit("-t", 1)[1].split(".")[0])
        assert token > int(paused_token)
        paused.send_signal(signal.SIGCONT)
        paused.stdin.write("go\n")
        paused.stdin.flush()
        answer = paused.stdout.readline()
        assert answer.startswith("lost "), answer
        assert "expired or another holder took it" in answer
        assert paused.wait(timeout=30) == 0
        assert data_files(layout) == [taken_over]
        stored = stored_events("fenced", layout=layout)
        assert sorted(stored["event_id"]) == sorted(e["event_id"] for e in other_events)
        if where == "local":  # nor any temporary file or index left behind
            directory = Path(layout.partition_dir("fenced", DAY))
            assert sorted(p.name for p in directory.iterdir()) == \
                sorted([Path(taken_over).name, "_index-" + Path(taken_over).stem + ".arrow"])
    finally:
        paused.send_signal(signal.SIGCONT)
        paused.kill()
        paused.wait()
        layout.leases.close()


@pytest.mark.parametrize("where", ["local", "s3"])
def test_files_carry_the_fencing_token_in_name_and_metadata(where, redis_server, tmp_path,
                                                            monkeypatch, request):
    if where == "s3":
        s3 = request.getfixturevalue("s3")
        for name, value in s3.env.items():
            monkeypatch.setenv(name, value)
        store = s3.store_uri(f"tokens-{uuid.uuid4().hex}")
    else:
        store = str(tmp_path / "store")
    layout = resolve_layout(store, home=tmp_path / "home", leases_url=redis_server.url)
    try:
        writer = StoreWriter(layout)
        for run in range(3):
            writer.write([make_event("tokens", f"run-{run}", seq=i) for i in range(10)])
        for path in data_files(layout):
            with layout.fs.open_input_file(path) as source:
                metadata = pq.ParquetFile(source).schema_arrow.metadata
            assert metadata[TOKEN_METADATA] == path.rsplit("-t", 1)[1][:-8].encode()
        compact(layout=layout, writer=writer)  # a merged file follows the same rules
        (path,) = data_files(layout)
        with layout.fs.open_input_file(path) as source:
            metadata = pq.ParquetFile(source).schema_arrow.metadata
        name_token = path.rsplit("-t", 1)[1].removesuffix(".parquet")
        assert metadata[TOKEN_METADATA] == name_token.encode()
        assert int(name_token) >= 4  # one token per hold: three writes, then the merge
        assert len(stored_events("tokens", layout=layout)) == 30
    finally:
        layout.leases.close()
    plain = StoreWriter(resolve_layout(str(tmp_path / "plain"), home=tmp_path / "home"))
    (written,) = plain.write([make_event("tokens")]).files
    assert "-t" not in written.rsplit("/", 1)[1]
    assert TOKEN_METADATA not in (pq.read_schema(written).metadata or {})


def test_a_dead_lease_redis_makes_the_write_fail_and_publish_nothing(tmp_path):
    layout = resolve_layout(str(tmp_path / "store"), home=tmp_path / "home",
                            leases_url=f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(redis.exceptions.ConnectionError):
        StoreWriter(layout).write([make_event("down")])
    assert data_files(layout) == []


def test_the_ingester_keeps_a_batch_pending_when_the_lease_step_fails(redis_server, tmp_path):
    """The stream's Redis is up but the leases' one is not: nothing may be acknowledged,
    nothing dead-lettered (a lease error is the store's trouble, not the events'); once
    leases work again the same entries are stored."""
    client = redis_server.client()
    events = [make_event("pending", "run-1", seq=i) for i in range(20)]
    for event in events:
        client.xadd("trace.events", {"event": json.dumps(event)})
    config = IngestConfig(redis_url=redis_server.url, consumer="host-a-0",
                          flush_interval=0.05, connect_timeout=5)
    dead_leases = resolve_layout(str(tmp_path / "store"), home=tmp_path / "home",
                                 leases_url=f"redis://127.0.0.1:{free_port()}/0")
    ingester = Ingester(config, layout=dead_leases)
    runner = threading.Thread(target=ingester.run)
    runner.start()
    try:
        deadline = time.monotonic() + 30
        while ingester.stats.reconnects < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ingester.stats.reconnects >= 2, "the write never failed"
    finally:
        ingester.request_stop()
        runner.join(timeout=30)
    assert not runner.is_alive()
    assert client.xlen("trace.events.dead") == 0
    assert client.xpending("trace.events", "tracelab-ingest")["pending"] == 20
    assert data_files(dead_leases) == []
    good = resolve_layout(str(tmp_path / "store"), home=tmp_path / "home",
                          leases_url=redis_server.url)
    done = Ingester(IngestConfig(redis_url=redis_server.url, consumer="host-a-0",
                                 flush_interval=0.05, connect_timeout=5), layout=good)
    done.run(once=True)
    good.leases.close()
    assert client.xpending("trace.events", "tracelab-ingest")["pending"] == 0
    assert sorted(stored_events("pending", layout=good)["event_id"]) == \
        sorted(e["event_id"] for e in events)


def test_host_id_and_lease_ttl_settings(monkeypatch):
    import socket

    monkeypatch.delenv("TRACELAB_HOST_ID", raising=False)
    monkeypatch.delenv("TRACELAB_LEASE_TTL", raising=False)
    assert host_id() == socket.gethostname()
    assert lease_ttl() == 30.0
    monkeypatch.setenv("TRACELAB_HOST_ID", "rack-7")
    assert host_id() == "rack-7"
    assert RedisLeases("redis://127.0.0.1:1/0").holder.startswith(f"rack-7:{os.getpid()}:")
    monkeypatch.setenv("TRACELAB_LEASE_TTL", "2.5")
    assert lease_ttl() == 2.5
    for bad in ("0", "-1", "soon", "nan", "inf"):
        monkeypatch.setenv("TRACELAB_LEASE_TTL", bad)
        with pytest.raises(ConfigError, match="TRACELAB_LEASE_TTL=.*positive number"):
            lease_ttl()


def test_commands_refuse_a_bad_lease_ttl_and_compact_says_when_it_takes_leases(
        redis_server, tmp_path, monkeypatch, capsys):
    from tracelab.cli import main

    monkeypatch.setenv("TRACELAB_HOME", str(tmp_path))
    monkeypatch.setenv("TRACELAB_LEASE_TTL", "never")
    for command in ("ingest", "compact"):  # refused before anything starts
        assert main([command, "--redis-url", redis_server.url]) == 2
        assert "TRACELAB_LEASE_TTL='never' must be a positive number" in \
            capsys.readouterr().err
    monkeypatch.setenv("TRACELAB_LEASE_TTL", "1")
    monkeypatch.setenv("TRACELAB_RETAIN", "soon")
    assert main(["ingest", "--redis-url", redis_server.url]) == 2
    assert "TRACELAB_RETAIN" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["compact", "--help"])
    assert "only a file lock on this host" in " ".join(capsys.readouterr().out.split())


def test_the_default_consumer_name_uses_the_host_id(tmp_path, monkeypatch):
    from tracelab.server.ingest import default_consumer_name

    monkeypatch.setenv("TRACELAB_HOST_ID", "host-x")
    name, lock = default_consumer_name(tmp_path)
    try:
        assert name == "ingest-host-x-0"
    finally:
        lock.release()


def test_a_crash_left_lease_is_reported_with_its_holder_on_timeout(redis_server):
    a = RedisLeases(redis_server.url, ttl_s=30, holder="stuck-host")
    b = RedisLeases(redis_server.url, ttl_s=30, holder="waiting-host")
    try:
        a.lease("busy").acquire()
        with pytest.raises(TimeoutError, match="held by stuck-host:"):
            b.lease("busy").acquire(timeout=0.2)
    finally:
        a.close()
        b.close()


def test_a_lease_checked_after_it_lapsed_is_lost_for_good(redis_server):
    """The key expired and nobody took it: still lost (the renewer could not reach Redis in
    time, say), since another holder may have come and gone meanwhile."""
    leases = RedisLeases(redis_server.url, ttl_s=5)
    try:
        lease = leases.lease("lapsed")
        lease.acquire()
        redis_server.client().delete(lease.key)  # what expiry does
        with pytest.raises(LeaseLost, match="expired or another holder took it"):
            lease.ensure_held()
        with pytest.raises(LeaseLost):
            lease.ensure_held()
        assert not lease.held
    finally:
        leases.close()


def test_an_unheld_lease_is_not_held(redis_server):
    leases = RedisLeases(redis_server.url, ttl_s=5)
    try:
        with pytest.raises(LeaseLost, match="not held"):
            leases.lease("never taken").ensure_held()
    finally:
        leases.close()


def test_a_file_gone_under_a_lost_lease_is_reported_as_the_lost_lease(redis_server, tmp_path,
                                                                      monkeypatch):
    """A holder that stalled past its TTL resumes on a stale listing: a file merged away
    meanwhile by the next holder is the lost lease's doing (retry later), not a broken store;
    under a lease still held, the same error stands as it is."""
    monkeypatch.setenv("TRACELAB_LEASE_TTL", "5")
    layout = resolve_layout(str(tmp_path / "store"), home=tmp_path / "home",
                            leases_url=redis_server.url)
    try:
        lock = layout.partition_lock("wf", DAY)
        with pytest.raises(FileNotFoundError):
            with lock:
                raise FileNotFoundError("part-1.parquet")
        with pytest.raises(LeaseLost) as caught:
            with lock:
                redis_server.client().delete(lock.lease.key)  # lapsed while stalled
                raise FileNotFoundError("part-1.parquet")
        assert isinstance(caught.value.__cause__, FileNotFoundError)
        assert lock.acquire(blocking=False)  # released all the same
        lock.release()
    finally:
        layout.leases.close()


def test_compact_with_an_unreachable_lease_redis_says_so_and_changes_nothing(tmp_path,
                                                                             monkeypatch,
                                                                             capsys):
    from tracelab.cli import main

    store = tmp_path / "store"
    writer = StoreWriter(resolve_layout(str(store), home=tmp_path / "home"))
    for run in range(2):
        writer.write([make_event("unmerged", f"run-{run}")])
    before = data_files(writer.layout)
    assert len(before) == 2
    monkeypatch.setenv("TRACELAB_HOME", str(tmp_path / "home"))
    closed = f"redis://:secret@127.0.0.1:{free_port()}/0"
    assert main(["compact", "--store", str(store), "--redis-url", closed]) == 1
    err = capsys.readouterr().err
    assert "cannot take the store's leases in Redis at redis://:***@127.0.0.1" in err
    assert "secret" not in err and "Traceback" not in err
    assert data_files(writer.layout) == before


@pytest.mark.parametrize("how", ["flag", "TRACELAB_REDIS_URL", "REDIS_URL", "none"])
def test_compact_takes_leases_in_the_redis_it_is_given(how, redis_server, tmp_path,
                                                       monkeypatch, capsys):
    from tracelab.cli import main

    store = tmp_path / "store"
    writer = StoreWriter(resolve_layout(str(store), home=tmp_path / "home-a"))
    for run in range(2):
        writer.write([make_event("merged", f"run-{run}")])
    monkeypatch.setenv("TRACELAB_HOME", str(tmp_path / "home-c"))
    monkeypatch.setenv("TRACELAB_LEASE_TTL", "5")
    for name in ("TRACELAB_REDIS_URL", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    args = ["compact", "--store", str(store)]
    if how == "flag":
        args += ["--redis-url", redis_server.url]
    elif how != "none":
        monkeypatch.setenv(how, redis_server.url)
    if how == "none":
        assert main(args) == 0
    else:  # another host holds the partition: compact waits for it, merges nothing before
        other = resolve_layout(str(store), home=tmp_path / "home-b",
                               leases_url=redis_server.url)
        held = other.partition_lock("merged", DAY)
        held.acquire()
        done: list[int] = []
        runner = threading.Thread(target=lambda: done.append(main(args)))
        runner.start()
        time.sleep(0.5)
        assert len(data_files(writer.layout)) == 2 and not done
        held.release()
        runner.join(timeout=60)
        other.leases.close()
        assert done == [0]
    (merged,) = data_files(writer.layout)
    assert ("-t" in merged.rsplit("/", 1)[1]) == (how != "none")
    assert "compacted 1 of 1 partitions" in capsys.readouterr().out


def test_a_store_named_by_path_or_file_uri_is_one_lease(redis_server, tmp_path, monkeypatch):
    monkeypatch.setenv("TRACELAB_LEASE_TTL", "5")
    store = tmp_path / "store"
    store.mkdir()
    by_path = resolve_layout(str(store), home=tmp_path / "a", leases_url=redis_server.url)
    by_uri = resolve_layout(store.as_uri() + "/", home=tmp_path / "b",
                            leases_url=redis_server.url)
    try:
        with by_path.partition_lock("wf", DAY):
            assert not by_uri.partition_lock("wf", DAY).acquire(blocking=False)
    finally:
        by_path.leases.close()
        by_uri.leases.close()
