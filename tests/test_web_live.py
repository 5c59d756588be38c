"""The web UI while runs happen, in headless Chromium: `tracelab up` (its ingester consuming a
real redis-server's stream, the API, the UI) as a subprocess, contract events published to the
stream as producers do; and a 100,000-step run written through the real `StoreWriter` on the
execution page."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import RedisServer
from event_factory import publish
from test_web_ui import Watched, _chromium_is_there, browser, build_ui, watched  # noqa: F401
from tracelab.store.layout import resolve_layout
from tracelab.store.writer import StoreWriter
from web_big import WORKFLOW as BIG_WORKFLOW, big_run
from web_site import screenshot, serve_ui, step

pytestmark = [pytest.mark.timeout(180)]
WF, RUN = "support-agent", "live-1"


def lifecycle(endpoint: str, t0: int, at_ms: float, *, status: str = "ok") -> dict[str, Any]:
    """A `kind: run` start or end event of run `RUN` (the contract in spec/README.md)."""
    event = step(WF, RUN, 0, kind="run", target="agent", endpoint=endpoint, t0=t0,
                 at_ms=at_ms, latency_ms=0, status=status, status_code=None, request={},
                 response={} if endpoint == "start" else {"reason": "exit"})
    del event["span_id"], event["parent_id"]
    return event


def turns(t0: int, first: int, count: int) -> list[dict[str, Any]]:
    """Turns `first`… of the run, 4 steps each: a `turn` span holding an LLM call, a ticket
    lookup and a reply (turn 2's reply fails)."""
    out = []
    for k in range(first, first + count):
        at, seq, span = 5 + 700 * k, 1 + 4 * k, f"turn-{k}"
        out.append(step(WF, RUN, seq, kind="function", target="agent", endpoint="turn",
                        t0=t0, at_ms=at, latency_ms=640, status_code=None, span_id=span))
        for i, (kind, service, target, endpoint, ms) in enumerate([
                ("llm", "agent", "api.openai.com", "POST /v1/chat/completions", 380.0),
                ("http", "helpdesk", "helpdesk.internal", f"GET /tickets/{k}", 60.0),
                ("http", "helpdesk", "helpdesk.internal", f"POST /tickets/{k}/reply", 90.0)]):
            failed = k == 2 and i == 2
            event = step(WF, RUN, seq + 1 + i, kind=kind, target=target, endpoint=endpoint,
                         t0=t0, at_ms=at + 5 + [0, 390, 460][i], latency_ms=ms, parent=span,
                         status="error" if failed else "ok", status_code=503 if failed else 200)
            event["service"] = service
            out.append(event)
    return out


def wait_for_run(base: str, steps: int) -> None:
    """The ingester has stored the run's first steps (the API answers through the UI server)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        answer = httpx.get(f"{base}/api/executions/{RUN}", timeout=5)
        if answer.status_code == 200 and answer.json()["execution"]["events"] >= steps:
            return
        time.sleep(0.1)
    raise AssertionError(f"run {RUN} not stored with {steps} steps within 30 s")


def test_a_run_grows_on_its_open_page_and_its_badge_turns_finished(tmp_path: Path,
                                                                   redis_server: RedisServer,
                                                                   watched):
    build_ui()
    client = redis_server.client()
    t0 = time.time_ns() - 5 * 10**9  # recent: running until its end lands
    with serve_ui(tmp_path / "home", redis_url=redis_server.url) as base:
        publish(client, [lifecycle("start", t0, 0), *turns(t0, 0, 1)])
        wait_for_run(base, 4)
        page = watched.page
        page.goto(f"{base}/executions/{RUN}")
        page.wait_for_selector("canvas.gantt-canvas[data-drawn-steps='4']")
        badge = page.get_by_test_id("state")
        badge.wait_for()
        assert badge.inner_text() == "running"
        page.evaluate("window.__notReloaded = true")

        publish(client, turns(t0, 1, 2))
        page.wait_for_selector("canvas.gantt-canvas[data-drawn-steps='12']", timeout=30_000)
        page.locator(".step-row", has_text="POST /tickets/2/reply").wait_for()
        assert badge.inner_text() == "running"
        screenshot(page, "live.png", clip={"x": 0, "y": 0, "width": 1400, "height": 640})

        publish(client, [lifecycle("end", t0, 700 * 3)])
        page.wait_for_function(
            "() => document.querySelector('[data-testid=state]')?.textContent === 'finished'",
            timeout=30_000)
        assert page.locator("canvas.gantt-canvas[data-drawn-steps='12']").count() == 1
        assert page.evaluate("window.__notReloaded") is True


def test_a_100k_step_run_on_the_execution_page(tmp_path: Path, watched):
    build_ui()
    home = tmp_path / "home"
    StoreWriter(resolve_layout(str(home / "store"))).write(big_run("big-run", 100_000))
    with serve_ui(home) as base:
        page = watched.page
        page.goto(f"{base}/executions/big-run")
        page.wait_for_selector("canvas.gantt-canvas[data-drawn-steps='100000']",
                               timeout=60_000)
        page.get_by_role("link", name=BIG_WORKFLOW, exact=True).wait_for()
        assert "100,000 steps" in page.locator(".exec-head").inner_text()
        zoom_in = page.get_by_role("button", name="+", exact=True)
        for _ in range(9):  # from 9.6 hours to about a minute: tasks, calls and errors apart
            zoom_in.click()
        page.locator(".step-row", has_text="parse_page").first.wait_for()
        screenshot(page, "big-run.png")
