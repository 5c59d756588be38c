"""Embedded mode, live: a run recorded with no Redis reaches `/api/stream`'s watcher with only
the web UI open (no notebook, no query), because a poll folds the pending spool."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from tracelab.server.live import StoreWatcher
from tracelab.store.layout import resolve_layout
from tracelab.store.spool import has_pending

AGENT = textwrap.dedent("""
    import tracelab as tl
    tl.init(workflow_name="embedded-live", run_id="emb-1", service_name="agent")

    @tl.trace
    def plan(step):
        return step * 2

    plan(1)
    plan(2)
""")


def test_a_poll_folds_the_spool_so_an_embedded_run_is_told_live(tracelab_home) -> None:
    watcher = StoreWatcher(resolve_layout(), poll_interval=0.5)
    assert watcher.poll() == []  # the baseline: an empty store
    subprocess.run([sys.executable, "-c", AGENT], check=True, timeout=60,
                   env={**os.environ, "TRACELAB_HOME": str(tracelab_home)})
    assert has_pending(tracelab_home)  # the program's exit spools, it does not fold
    messages = watcher.poll()
    executions = [m for kind, m in messages if kind == "execution"]
    assert [(m["run_id"], m["state"], m["events"]) for m in executions] == [
        ("emb-1", "finished", 2)]
    steps = [e for kind, m in messages if kind == "events" for e in m["events"]]
    assert [e["endpoint"] for e in steps] == ["plan", "plan"]
    assert not has_pending(tracelab_home)
    assert watcher.poll() == []
