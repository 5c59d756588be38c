"""`flush(timeout=T)` returns by T in embedded mode even while another process folds; what it
could not fold is folded by the next reader. The notebook's after-cell flush never stalls."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import tracelab
from tracelab.store import query

# Holds the host-wide fold lock like a long fold in another process, for at most 20 s.
HOLDER = textwrap.dedent("""
    import sys, time
    from tracelab.store.locks import FileLock
    lock = FileLock(sys.argv[1], timeout=5)
    lock.acquire()
    print("holding", flush=True)
    time.sleep(20)
""")


def hold_fold_lock(home: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER,
                             str(home / "locks" / "spool-fold.lock")], stdout=subprocess.PIPE)
    assert proc.stdout.readline() == b"holding\n"
    return proc


def record(run_id: str, n: int) -> None:
    @tracelab.trace
    def step(i: int) -> int:
        return i

    tracelab.init(workflow_name="deadline", run_id=run_id)
    for i in range(n):
        step(i)


def test_flush_returns_by_its_timeout_while_another_process_holds_the_fold_lock(
        tracelab_home):
    holder = hold_fold_lock(tracelab_home)
    try:
        record("deadline-run", 7)
        started = time.monotonic()
        delivered = tracelab.flush(timeout=1)
        # Not a speed measurement: the old flush waited for the lock (up to 120 s).
        assert time.monotonic() - started < 2.5
        assert delivered  # in the spool, durably: delivered
    finally:
        tracelab.shutdown()
        holder.kill()
        holder.wait()
    # The next reader folds what the flush could not.
    assert len(query.execution_events("deadline-run")) == 7


def test_the_notebook_after_cell_flush_does_not_wait_on_the_fold_lock(tracelab_home, capsys):
    from tracelab.notebook.magics import PostCellFlush

    hook = PostCellFlush()
    holder = hold_fold_lock(tracelab_home)
    try:
        record("cell-run", 3)
        started = time.monotonic()
        hook(None)
        assert time.monotonic() - started < 2.5  # FLUSH_TIMEOUT is 5 s; the lock was 120 s
        assert "could not deliver" not in capsys.readouterr().err
    finally:
        tracelab.shutdown()
        holder.kill()
        holder.wait()
    assert len(query.execution_events("cell-run")) == 3


def test_a_fold_past_its_deadline_stops_and_the_next_fold_finishes(tracelab_home):
    import orjson

    from event_factory import make_event
    from tracelab.store.spool import fold_spool, has_pending

    spool = tracelab_home / "spool"
    spool.mkdir(parents=True)
    events = [make_event("dl", "run-1", seq=i) for i in range(10)]
    (spool / "20240501T000000-1-aaaaaaaa.jsonl").write_bytes(
        b"".join(orjson.dumps(e) + b"\n" for e in events))
    assert fold_spool(tracelab_home, deadline=time.monotonic()) == 0  # already past: no work
    assert has_pending(tracelab_home)
    assert fold_spool(tracelab_home) == 10
    assert not has_pending(tracelab_home)
