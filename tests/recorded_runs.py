"""Runs recorded for the recording, export/import and replay-link tests: a real subprocess
running `tracelab.init()` in embedded mode against a loopback HTTP server."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = r"""
import sys, tracelab, requests
url, workflow, run_id = sys.argv[1:4]
tracelab.init(workflow_name=workflow, service_name="agent", run_id=run_id,
              tags={"env": "test"})

@tracelab.trace
def work():
    requests.post(url + "/v1/charges", json={"amount": 4200, "password": "hunter2"},
                  headers={"Authorization": "Bearer sk_live_51HxAbCdEfGhIjKlMnOpQrSt"})
    requests.get(url + "/status/502")

work()
assert tracelab.flush(10)
tracelab.shutdown()
"""


def record_run(home: Path, url: str, workflow: str, run_id: str, *extra_argv: str,
               cwd: Path | None = None, env: dict[str, str] | None = None) -> list[str]:
    """Record one run (3 events: a span, a POST, a 502 GET); returns the argv it ran."""
    base = {k: v for k, v in os.environ.items()
            if not k.startswith("TRACELAB_") and k.lower() not in ("http_proxy", "https_proxy")}
    base.update(TRACELAB_HOME=str(home), NO_PROXY="127.0.0.1,localhost", **(env or {}))
    script = (cwd or home.parent) / "agent_script.py"
    script.write_text(SCRIPT)
    argv = [sys.executable, str(script), url, workflow, run_id, *extra_argv]
    subprocess.run(argv, check=True, env=base, cwd=cwd or home.parent, timeout=60)
    return argv
