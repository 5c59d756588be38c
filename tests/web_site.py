"""The web UI served by a real `tracelab serve` (or `tracelab up`, with its ingester) subprocess
on free loopback ports, for the browser tests of the compare page and the live view; and the
README screenshots those tests take when `TRACELAB_SCREENSHOTS=<dir>` is set (never otherwise,
so a normal run leaves the checkout clean)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from api_serve import clean_env
from conftest import free_port
from event_factory import make_event

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = "TRACELAB_SCREENSHOTS"


@contextmanager
def serve_ui(home: Path, *, redis_url: str | None = None,
             env: dict[str, str] | None = None) -> Iterator[str]:
    """The UI's base URL. With `redis_url`, `tracelab up` (ingester + API + UI in one
    process) consumes the Redis stream into `home`'s store; else `tracelab serve`."""
    api_port, ui_port, otlp_port = free_port(), free_port(), free_port()
    argv = [sys.executable, "-m", "tracelab.cli", "up" if redis_url else "serve",
            "--port", str(api_port), "--ui-port", str(ui_port), "--otlp-port", str(otlp_port)]
    if redis_url:
        argv += ["--redis-url", redis_url]
    full_env = clean_env(home) | {"TRACELAB_STREAM_POLL": "0.25"} | (env or {})
    home.mkdir(parents=True, exist_ok=True)
    log_path = home.parent / f"serve-{ui_port}.log"
    with open(log_path, "w+b") as log:
        proc = subprocess.Popen(argv, cwd=ROOT, env=full_env, stdout=log,
                                stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{ui_port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                assert proc.poll() is None, f"tracelab exited: {log_path.read_text()}"
                try:
                    if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, f"no answer: {log_path.read_text()}"
                time.sleep(0.1)
            yield base
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def screenshot(page: Any, name: str, **kwargs: Any) -> None:
    """Save `page` as `<$TRACELAB_SCREENSHOTS>/<name>` when that variable is set."""
    folder = os.environ.get(SCREENSHOTS)
    if folder:
        target = Path(folder) if Path(folder).is_absolute() else ROOT / folder
        target.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(target / name), **kwargs)


def step(workflow: str, run_id: str, seq: int, *, kind: str, target: str, endpoint: str,
         t0: int, at_ms: float, latency_ms: float, parent: str | None = None,
         status: str = "ok", status_code: int | None = 200, request: dict | None = None,
         response: dict | None = None, tags: dict[str, str] | None = None,
         **extra: Any) -> dict[str, Any]:
    """One contract event of a hand-made run, `at_ms` after `t0` (epoch ns)."""
    event = make_event(workflow, run_id, seq=seq, started_at=t0 + int(at_ms * 1e6),
                       status=status, service="agent", target=target, kind=kind,
                       endpoint=endpoint, latency_ms=latency_ms, parent_id=parent,
                       status_code=status_code, tags=tags or {"env": "demo"}, **extra)
    if request is not None:
        event["request"] = request
    if response is not None:
        event["response"] = response
    if status == "ok":
        event.pop("error", None)
    return event
