"""Spool liveness is a lock, not a PID: a live writer's file is never deleted, even when the
PID in its name means nothing here (another container), and a dead one's always is."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import orjson

from event_factory import make_event, read_store_raw, spool_lines
from tracelab.store.spool import fold_spool, has_pending, list_spool

# A writer as spec/README.md ("Transport") describes it, in a process of its own: it locks
# its `.open` file, appends, and keeps the lock until told to finish (a line on stdin).
WRITER = textwrap.dedent("""
    import fcntl, os, sys
    path, first, second = sys.argv[1], sys.argv[2].encode(), sys.argv[3].encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, first)
    print("ready", flush=True)
    sys.stdin.readline()
    os.write(fd, second)
    os.close(fd)
""")


def unused_pid() -> int:
    """A PID no process has here, as a writer in another PID namespace would look."""
    pid = 4_000_000
    while os.path.exists(f"/proc/{pid}"):
        pid += 1
    return pid


def stored_ids(home: Path) -> Counter:
    return Counter(read_store_raw(home / "store").column("event_id").to_pylist())


def test_a_locked_file_named_with_a_foreign_pid_is_folded_but_never_deleted(tracelab_home):
    spool = tracelab_home / "spool"
    spool.mkdir(parents=True)
    path = spool / f"20240501T000000-{unused_pid()}-aaaaaaaa.jsonl.open"
    first = [make_event("live", "run-1", seq=i) for i in range(4)]
    last = make_event("live", "run-1", seq=4)
    line = orjson.dumps(last) + b"\n"
    text = b"".join(spool_lines(first)) + line[:30]  # the last line still half-written
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path), text.decode(),
                               line[30:].decode()], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE)
    try:
        assert writer.stdout.readline() == b"ready\n"
        assert [s.complete for s in list_spool(tracelab_home)] == [False]
        assert fold_spool(tracelab_home) == 4
        assert path.exists(), "the fold deleted a file its writer still holds"
        assert not (spool / "dead").exists()  # the half line was left alone, not dead-lettered
        assert fold_spool(tracelab_home) == 0 and path.exists()
        writer.stdin.write(b"done\n")
        writer.stdin.flush()
        assert writer.wait(timeout=30) == 0
    finally:
        writer.kill()
        writer.wait()
    # Lock released: the writer is gone, the file is complete, whatever the name says.
    assert has_pending(tracelab_home)
    assert fold_spool(tracelab_home) == 1
    assert not path.exists()
    assert stored_ids(tracelab_home) == Counter(e["event_id"] for e in first + [last])


def test_an_unlocked_file_named_with_a_live_pid_is_folded_and_removed(tracelab_home):
    spool = tracelab_home / "spool"
    spool.mkdir(parents=True)
    events = [make_event("gone", "run-1", seq=i) for i in range(5)]
    paths = []
    for pid, tag in ((1, "bbbbbbbb"), (os.getpid(), "cccccccc"), (os.getppid(), "dddddddd")):
        path = spool / f"20240501T000000-{pid}-{tag}.jsonl.open"
        path.write_bytes(b"".join(spool_lines(events)))
        paths.append(path)
    assert [s.complete for s in list_spool(tracelab_home)] == [True, True, True]
    assert fold_spool(tracelab_home) == 5  # the same events thrice: stored once
    assert not any(p.exists() for p in paths)
    assert stored_ids(tracelab_home) == Counter(e["event_id"] for e in events)


RECORDER = textwrap.dedent("""
    import sys
    import tracelab as tl
    from tracelab.sdk import recorder

    tl.init(workflow_name="liveness", run_id="live-run")
    @tl.trace
    def step(i):
        return i
    for i in range(3):
        step(i)
    assert recorder.current().sink.flush(10)  # written to the spool, not folded
    print("written", flush=True)
    sys.stdin.readline()
    for i in range(3, 5):
        step(i)
    tl.shutdown()
    print("closed", flush=True)
""")


def test_the_sdk_spool_writer_holds_the_lock_for_as_long_as_it_may_append(tracelab_home):
    proc = subprocess.Popen([sys.executable, "-c", RECORDER], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"written\n", proc.stderr.read().decode()
        [live] = list_spool(tracelab_home)
        assert live.path.name.endswith(".jsonl.open") and not live.complete
        assert fold_spool(tracelab_home) == 4  # the run's start and 3 steps
        assert live.path.exists()
        proc.stdin.write(b"go on\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == b"closed\n", proc.stderr.read().decode()
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        proc.wait()
    assert fold_spool(tracelab_home) == 3  # 2 steps and the run's end
    assert list_spool(tracelab_home) == []
    assert len(stored_ids(tracelab_home)) == 7
