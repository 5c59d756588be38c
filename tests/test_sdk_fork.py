"""A process forked while another of its threads holds one of the SDK's locks keeps working.

The forked child has only the thread that called fork(): a lock some other thread held at that
moment would stay held forever in the child, and its next event, flush or shutdown would hang.
Each lock is re-created in the child (`os.register_at_fork`).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import RedisServer, read_stream

REPO = Path(__file__).resolve().parent.parent

# The parent's helper thread holds LOCK while the main thread forks; the child then records,
# flushes and shuts down (all through those locks) and exits normally (the exit hook too).
FORK_WHILE_HELD = """
import os, sys, threading
import tracelab
from tracelab.sdk import integrations, recorder

LOCKS = {"recorder": lambda: recorder._lock, "stats": lambda: recorder._stats._lock,
         "integrations": lambda: integrations._lock}
tracelab.init(workflow_name="fork", service_name="forked", redis_url=sys.argv[1])
held, release = threading.Event(), threading.Event()

def hold():
    with LOCKS[sys.argv[2]]():
        held.set()
        release.wait()

threading.Thread(target=hold, daemon=True).start()
held.wait()
pid = os.fork()
if pid == 0:
    with tracelab.span("in-child"):
        pass
    delivered = tracelab.flush(10)
    tracelab.shutdown()
    sys.exit(0 if delivered else 3)
release.set()
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("lock", ["recorder", "stats", "integrations"])
def test_a_child_forked_while_a_lock_is_held_records_and_exits(
        lock: str, redis_server: RedisServer, tracelab_home: Path) -> None:
    # A session of its own, so a hung child (the bug) is killed with its parent on timeout.
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(FORK_WHILE_HELD),
                             redis_server.url, lock], cwd=REPO, start_new_session=True)
    try:
        code = proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail(f"the forked child hung on the {lock} lock its parent's thread held")
    assert code == 0
    (event,) = read_stream(redis_server.client())
    assert (event["endpoint"], event["service"]) == ("in-child", "forked")
    assert event["pid"] != proc.pid
