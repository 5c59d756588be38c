"""`tracelab serve` as a real subprocess on a free loopback port, over a store with odd ids.

Shared by the API tests that must see the server exactly as users run it (uvicorn's own path
decoding included): ids with `/`, the fuzzing run, the token on `/metrics`.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from conftest import free_port
from event_factory import make_event

ROOT = Path(__file__).resolve().parent.parent
TRACELAB = str(Path(sys.executable).with_name("tracelab"))

# Workflow name -> run ids: slashes, percent signs, spaces, `=`, dots, non-ASCII, emoji.
ODD_RUNS = {
    "pay/ments": ["pay/run/1", "pay/run/2"],
    "日本語ワークフロー 🚀": ["実行-1", "run 🚀 2"],
    "a b%c=d.e": ["100%", "x=y.z"],
    "%2F": ["%2F", "..%2e"],
    "checkout": ["plain-1"],
}
SDK_WORKFLOW, SDK_RUN = "sdk/flow ✓", "sdk run/1"

SDK_SCRIPT = r"""
import sys, tracelab
tracelab.init(workflow_name=sys.argv[1], run_id=sys.argv[2], service_name="agent",
              tags={"env": "fuzz"})

@tracelab.trace
def refund(order):
    with tracelab.span("lookup"):
        pass
    return order

refund("o-1")
assert tracelab.flush(10)
tracelab.shutdown()
"""


def clean_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TRACELAB_", "OTEL_")) and k.lower() not in ("http_proxy",
                                                                             "https_proxy")}
    env.update(TRACELAB_HOME=str(home), NO_PROXY="127.0.0.1,localhost")
    return env


def seed_store(home: Path) -> None:
    """Runs in `ODD_RUNS` written by `StoreWriter`, plus one run recorded by the real SDK."""
    from tracelab.store.layout import resolve_layout
    from tracelab.store.writer import StoreWriter

    events = []
    for w, (workflow, runs) in enumerate(ODD_RUNS.items()):
        for r, run_id in enumerate(runs):
            for i in range(3):
                events.append(make_event(workflow, run_id, seq=w * 100 + r * 10 + i,
                                         status="error" if (r, i) == (1, 2) else "ok",
                                         tags={"env": "fuzz", "team": f"t{w}"}))
    StoreWriter(resolve_layout(str(home / "store"))).write(events)
    subprocess.run([sys.executable, "-c", SDK_SCRIPT, SDK_WORKFLOW, SDK_RUN], check=True,
                   env=clean_env(home), cwd=ROOT, timeout=60)


class Serve:
    """`tracelab serve --no-ui` on a free loopback port; stopped with SIGTERM on exit."""

    def __init__(self, home: Path, token: str | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [TRACELAB, "serve", "--no-ui", "--host", "127.0.0.1", "--port", str(self.port)]
        if token is not None:
            args += ["--token", token]
        self.proc = subprocess.Popen(args, env=clean_env(home), cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def __enter__(self) -> Serve:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"tracelab serve exited: {self.proc.communicate()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.__exit__()
        raise AssertionError("tracelab serve did not answer /healthz")

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        try:
            self.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
