"""Execution `state` from the run lifecycle events, and lifecycle events kept out of steps.

Lifecycle events are crafted here to the contract (`kind: "run"`, endpoint `start` / `end`)
and written through the real `StoreWriter`, so these tests do not depend on the SDK that
publishes them. Old runs sit on 2024-05-01 (idle for years); recent ones are stamped now.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api_serve import ROOT, Serve
from conftest import free_port
from event_factory import BASE_NS, make_event
from web_site import serve_ui
from tracelab.config import ConfigError
from tracelab.events import validate
from tracelab.notebook.latency import latency_table
from tracelab.server.live import StoreWatcher
from tracelab.server.shapes import execution_row, summary_from_events
from tracelab.store import query
from tracelab.store.layout import resolve_layout
from tracelab.store.writer import StoreWriter

S = 1_000_000_000


def lifecycle(workflow: str, run_id: str, endpoint: str, started_at: int, *,
              status: str = "ok", reason: str = "exit", service: str = "agent",
              **extra: Any) -> dict[str, Any]:
    """A run `start` or `end` event exactly as the lifecycle contract describes it."""
    event = make_event(workflow, run_id, started_at=started_at, status="ok", service=service,
                       target=service, kind="run", endpoint=endpoint, latency_ms=0,
                       request={}, response={} if endpoint == "start" else {"reason": reason})
    for key in ("status_code", "span_id", "parent_id", "error"):
        event.pop(key, None)
    event["status"] = status
    if status == "error":
        event["error"] = ({"type": "Signal", "message": "SIGTERM"} if reason == "signal"
                          else {"type": "RuntimeError", "message": "boom"})
    event.update(extra)
    assert validate(event) == [], validate(event)
    return event


def steps(workflow: str, run_id: str, first_ns: int, n: int = 2, *, error_at: int = -1,
          service: str = "agent") -> list[dict[str, Any]]:
    return [make_event(workflow, run_id, started_at=first_ns + i * 10_000_000,
                       status="error" if i == error_at else "ok", service=service)
            for i in range(n)]


def old_run(run_id: str, *, start: bool = True, end: str | None = "ok", step_error: bool = False,
            workflow: str = "life") -> list[dict[str, Any]]:
    t0 = BASE_NS
    events = steps(workflow, run_id, t0 + S, error_at=0 if step_error else -1)
    if start:
        events.insert(0, lifecycle(workflow, run_id, "start", t0))
    if end is not None:
        events.append(lifecycle(workflow, run_id, "end", t0 + 5 * S, status=end,
                                reason="exit" if end == "ok" else "exception"))
    return events


def recent_run(run_id: str, *, start: bool = True, end: str | None = None,
               workflow: str = "life", age_s: float = 2.0) -> list[dict[str, Any]]:
    t0 = time.time_ns() - int(age_s * S)
    events = steps(workflow, run_id, t0 + 1_000_000)
    if start:
        events.insert(0, lifecycle(workflow, run_id, "start", t0))
    if end is not None:
        events.append(lifecycle(workflow, run_id, "end", t0 + 100_000_000, status=end,
                                reason="shutdown" if end == "ok" else "signal"))
    return events


@pytest.fixture
def runs(tracelab_home: Path) -> dict[str, list[dict[str, Any]]]:
    """One run per state and per kind of evidence, split over two writes."""
    made = {
        "finished": old_run("finished"),
        "failed": old_run("failed", end="error"),
        "abandoned": old_run("abandoned", end=None),
        "legacy-old": old_run("legacy-old", start=False, end=None, step_error=True),
        "running": recent_run("running"),
        "legacy-recent": recent_run("legacy-recent", start=False),
        "ended-now": recent_run("ended-now", end="ok"),
        "killed-now": recent_run("killed-now", end="error"),
        "only-start": [lifecycle("life", "only-start", "start", time.time_ns() - S)],
    }
    events = [e for run in made.values() for e in run]
    writer = StoreWriter()
    assert writer.write(events[::2]).written + writer.write(events[1::2]).written \
        == len(events)
    return made


EXPECTED = {"finished": "finished", "failed": "failed", "abandoned": "abandoned",
            "legacy-old": "finished", "running": "running", "legacy-recent": "running",
            "ended-now": "finished", "killed-now": "failed", "only-start": "running"}


def test_every_state_from_lifecycle_events_and_idle_time(runs):
    df = query.executions("life").set_index("run_id")
    assert df["state"].to_dict() == EXPECTED
    assert set(query.RUN_STATES) == set(EXPECTED.values())
    # a failed run is an error even when none of its steps errored
    assert df.loc["failed", "status"] == "error" and df.loc["failed", "errors"] == 0
    assert df.loc["killed-now", "status"] == "error"
    assert df.loc["finished", "status"] == "ok" and df.loc["abandoned", "status"] == "ok"
    assert df.loc["legacy-old", "status"] == "error" and df.loc["legacy-old", "errors"] == 1
    assert list(query.executions("life", status="error").sort_values("run_id")["run_id"]) \
        == ["failed", "killed-now", "legacy-old"]
    assert list(query.executions("life").columns) == query.EXECUTION_COLUMNS
    assert list(query.executions("no-such-workflow").columns) == query.EXECUTION_COLUMNS


def test_counts_are_steps_and_the_span_is_the_runs_real_one(runs):
    df = query.executions("life").set_index("run_id")
    assert df.loc["finished", "events"] == 2 and df.loc["only-start", "events"] == 0
    assert df.loc["finished", "started_at"] == pd.Timestamp(BASE_NS, unit="ns", tz="UTC")
    assert df.loc["finished", "ended_at"] == pd.Timestamp(BASE_NS + 5 * S, unit="ns", tz="UTC")
    assert df.loc["finished", "duration_ms"] == 5000.0
    # the lifecycle event's target is the service itself: not an external system
    assert df.loc["finished", "targets"] == ["api.stripe.com"]
    assert df.loc["finished", "services"] == ["agent"]
    wf = query.workflows().set_index("workflow").loc["life"]
    assert wf["executions"] == len(EXPECTED) and wf["events"] == 2 * (len(EXPECTED) - 1)
    assert wf["errors"] == 1
    assert query.store_stats()["events"] == 2 * (len(EXPECTED) - 1)
    counts = query.target_counts()
    assert set(counts["target"]) == {"api.stripe.com"}


def test_frames_of_events_hold_steps_only(runs):
    assert set(query.events("life")["kind"]) == {"http"}
    assert len(query.events("life", payloads=True)) == 2 * (len(EXPECTED) - 1)
    lifecycle_rows = query.events("life", kind="run")
    assert set(lifecycle_rows["endpoint"]) == {"start", "end"}
    assert len(lifecycle_rows) == sum(1 for r in runs.values() for e in r if e["kind"] == "run")
    frame = query.execution_events("finished")
    assert list(frame["kind"]) == ["http", "http"]
    only_start = query.execution_events("only-start")
    assert only_start.empty and "kind" in only_start.columns
    assert only_start.attrs["execution"]["state"] == "running"
    assert query.llm_calls("life").empty
    with pytest.raises(KeyError, match="no-such-run"):
        query.execution_events("no-such-run")


def test_latencies_are_steps_only(runs):
    table = latency_table(query.events("life"), by="target")
    assert list(table["target"]) == ["api.stripe.com"]
    assert table["count"].iloc[0] == 2 * (len(EXPECTED) - 1)
    # even given a frame that holds lifecycle rows, they are not steps
    mixed = pd.concat([query.events("life"), query.events("life", kind="run")])
    assert latency_table(mixed, by="kind")["kind"].tolist() == ["http"]


def test_idle_threshold_comes_from_tracelab_idle_s(tracelab_home, monkeypatch):
    StoreWriter().write(recent_run("quiet", age_s=120) + recent_run("plain", start=False,
                                                                    age_s=120))
    assert query.executions("life").set_index("run_id")["state"].to_dict() == {
        "quiet": "running", "plain": "running"}
    monkeypatch.setenv("TRACELAB_IDLE_S", "60")
    assert query.executions("life").set_index("run_id")["state"].to_dict() == {
        "quiet": "abandoned", "plain": "finished"}
    monkeypatch.setenv("TRACELAB_IDLE_S", "3600.5")
    assert set(query.executions("life")["state"]) == {"running"}
    for bad in ("soon", "0", "-5", "nan", "inf"):
        monkeypatch.setenv("TRACELAB_IDLE_S", bad)
        with pytest.raises(ConfigError, match="TRACELAB_IDLE_S"):
            query.executions("life")
        with pytest.raises(ConfigError, match="TRACELAB_IDLE_S"):
            query.execution_events("quiet")


def test_a_run_shared_by_processes_runs_until_every_start_has_its_end(tracelab_home,
                                                                        monkeypatch):
    now = time.time_ns()
    StoreWriter().write([lifecycle("life", "shared", "start", now - 3 * S, service="agent"),
                         lifecycle("life", "shared", "start", now - 3 * S, service="proxy"),
                         lifecycle("life", "shared", "end", now - 2 * S, service="agent")])
    assert query.executions("life")["state"].tolist() == ["running"]
    monkeypatch.setenv("TRACELAB_IDLE_S", "1")
    assert query.executions("life")["state"].tolist() == ["abandoned"]
    StoreWriter().write([lifecycle("life", "shared", "end", now - S, service="proxy",
                                   reason="shutdown")])
    assert query.executions("life")["state"].tolist() == ["finished"]


def test_summary_from_events_agrees_with_executions(runs):
    listed = {r["run_id"]: execution_row(r) for r in query.executions("life").to_dict("records")}
    for run_id in EXPECTED:
        one = summary_from_events(query.execution_events(run_id))
        assert one == listed[run_id], run_id
        payloads = summary_from_events(query.events("life", run_id=run_id, payloads=True))
        assert payloads == listed[run_id], run_id
        assert one["active"] is (one["state"] == "running")


def test_notebook_shows_the_state(runs):
    import tracelab as tl

    runs_html = tl.executions("life")._repr_html_()
    assert '3 <span class="tl-state tl-state-finished"' in runs_html
    assert '<span class="tl-state tl-state-abandoned"' in runs_html
    assert "<th>state</th>" in runs_html
    assert '<span class="tl-state tl-state-failed"' in tl.execution("failed")._repr_html_()
    # a run that has only started (no step yet) still shows, with its state
    assert '<span class="tl-state tl-state-running"' in tl.execution("only-start")._repr_html_()
    html = tl.execution("running", workflow="life")._repr_html_()
    assert '<span class="tl-state tl-state-running"' in html and "2 events" in html
    assert tl.executions("life").latencies()["count"].sum() == 2 * (len(EXPECTED) - 1)


def test_watcher_tells_the_new_state_when_the_end_lands_and_never_sends_lifecycle_steps(
        tracelab_home, monkeypatch):
    layout = resolve_layout()
    StoreWriter().write(recent_run("live", age_s=5) + recent_run("idle", age_s=5))
    watcher = StoreWatcher(layout, poll_interval=0.1)
    assert watcher.poll() == []  # the baseline
    end = lifecycle("life", "live", "end", time.time_ns(), reason="exit")
    step = make_event("life", "live", started_at=time.time_ns() - 1_000_000)
    StoreWriter().write([end, step])
    messages = watcher.poll()
    executions = [m for kind, m in messages if kind == "execution"]
    assert [(m["run_id"], m["state"], m["active"], m["events"]) for m in executions] \
        == [("live", "finished", False, 3)]
    sent = [e for kind, m in messages if kind == "events" for e in m["events"]]
    assert [e["event_id"] for e in sent] == [step["event_id"]]
    # no file changes, but a running run went idle: told without new data
    monkeypatch.setenv("TRACELAB_IDLE_S", "2")
    idle = watcher.poll()
    assert [(k, m["run_id"], m["state"]) for k, m in idle] == [("execution", "idle",
                                                                 "abandoned")]
    assert watcher.poll() == []


def test_end_alone_is_an_execution_message_without_step_rows(tracelab_home):
    StoreWriter().write(recent_run("quiet-end", age_s=1))
    watcher = StoreWatcher(resolve_layout(), poll_interval=0.1)
    watcher.poll()
    StoreWriter().write([lifecycle("life", "quiet-end", "end", time.time_ns(), status="error",
                                   reason="signal", response={"reason": "signal",
                                                              "signal": "SIGTERM"})])
    messages = watcher.poll()
    assert [k for k, _ in messages] == ["execution"]
    assert messages[0][1]["state"] == "failed" and messages[0][1]["status"] == "error"


# -- the API, as `tracelab serve` runs it ---------------------------------------------------

@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[httpx.Client]:
    home = tmp_path_factory.mktemp("state") / "home"
    layout = resolve_layout(str(home / "store"))
    made = [old_run(r, **kw) for r, kw in (
        ("finished", {}), ("failed", {"end": "error"}), ("abandoned", {"end": None}),
        ("legacy-old", {"start": False, "end": None}))]
    made += [recent_run("running"), recent_run("ended-now", end="ok")]
    StoreWriter(layout).write([e for run in made for e in run])
    with Serve(home) as server, httpx.Client(base_url=server.url, timeout=20) as client:
        yield client


API_EXPECTED = {"finished": "finished", "failed": "failed", "abandoned": "abandoned",
                "legacy-old": "finished", "running": "running", "ended-now": "finished"}


def test_api_execution_objects_carry_state_and_active_from_it(served):
    listed = served.get("/api/workflows/life/executions").json()["executions"]
    assert {x["run_id"]: x["state"] for x in listed} == API_EXPECTED
    assert {x["run_id"] for x in listed if x["active"]} == {"running"}
    by_id = {x["run_id"]: x for x in listed}
    for run_id, state in API_EXPECTED.items():
        for shape in ("rows", "columns"):
            body = served.get(f"/api/executions/{run_id}", params={"shape": shape}).json()
            one = body["execution"]
            assert one["state"] == state and one["active"] is (state == "running")
            for key in ("started_at_ns", "ended_at_ns", "events", "errors", "status"):
                assert one[key] == by_id[run_id][key], (run_id, key)
        rows = served.get(f"/api/executions/{run_id}").json()["events"]
        assert [e["kind"] for e in rows] == ["http", "http"]
    finished = by_id["finished"]
    assert finished["ended_at_ns"] - finished["started_at_ns"] == 5 * S
    diff = served.get("/api/executions/finished/diff/failed").json()
    assert (diff["a"]["state"], diff["b"]["state"]) == ("finished", "failed")
    assert all(r.get("kind_a", "http") != "run" for r in diff["rows"])
    compare = served.get("/api/executions/finished/compare/failed").json()
    assert "run" not in str([p.get("kind") for p in compare.get("pairs", [])])
    stats = served.get("/api/workflows").json()["workflows"][0]
    assert stats["events"] == 2 * len(API_EXPECTED)


# -- the state rule, against a reference reading of the contract -----------------------------

def reference_state(starts: int, ends: int, end_errors: int, idle: bool) -> str:
    if not idle and ends < max(starts, 1):
        return "running"
    if end_errors:
        return "failed"
    if ends >= starts:
        return "finished"
    return "abandoned"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3), st.booleans(), st.booleans()),
                min_size=1, max_size=8))
def test_run_states_follow_the_contract(cases):
    now = time.time_ns()
    starts, ends, errs, last = [], [], [], []
    for n_start, n_end, errored, idle in cases:
        starts.append(n_start)
        ends.append(n_end)
        errs.append(1 if errored and n_end else 0)
        last.append(now - (700 if idle else 10) * S)
    got = query.run_states(starts, ends, errs, last, now_ns=now, idle_s=600)
    want = [reference_state(s, e, x, now - t >= 600 * S)
            for s, e, x, t in zip(starts, ends, errs, last)]
    assert list(got) == want
    for s, e, x, state in zip(starts, ends, errs, want):
        if e == 0 and s == 0:  # no lifecycle at all: recency decides, never failed/abandoned
            assert state in ("running", "finished")
        if x:
            assert state in ("running", "failed")


# -- the executions page: a state badge per run, updated live ---------------------------------

@pytest.fixture(scope="module")
def ui(tmp_path_factory) -> Iterator[dict]:
    """`tracelab serve` with the built web UI over runs in every state, polled every 0.25 s."""
    from test_web_ui import build_ui

    build_ui()
    home = tmp_path_factory.mktemp("state-ui") / "home"
    layout = resolve_layout(str(home / "store"))
    made = [old_run("finished"), old_run("failed", end="error"), old_run("abandoned", end=None),
            recent_run("running")]
    StoreWriter(layout).write([e for run in made for e in run])
    with serve_ui(home) as base:
        yield {"base": base, "layout": layout}


@pytest.fixture(scope="module")
def page(ui) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    from test_web_ui import CHROMIUM, CHROMIUM_ARGS

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page()
        page.set_default_timeout(15_000)
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        yield page
        browser.close()
        assert errors == []


def test_executions_page_shows_each_runs_state_and_the_end_landing(ui, page):
    page.goto(ui["base"] + "/workflows/life")
    page.get_by_text("● live").wait_for()
    badge = "tr[data-run-id='{}'] [data-testid='state']"
    for run_id, state in (("finished", "finished"), ("failed", "failed"),
                          ("abandoned", "abandoned"), ("running", "running")):
        assert page.locator(badge.format(run_id)).inner_text() == state
    StoreWriter(ui["layout"]).write([lifecycle("life", "running", "end", time.time_ns())])
    page.wait_for_selector(badge.format("running") + "[data-state='finished']",
                           timeout=20_000)
    assert page.locator("tr[data-run-id]").count() == 4


def test_serve_refuses_a_bad_idle_setting(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACELAB_")}
    env.update(TRACELAB_HOME=str(tmp_path), TRACELAB_IDLE_S="ten minutes")
    done = subprocess.run([sys.executable, "-m", "tracelab.cli", "serve", "--no-ui", "--port",
                           str(free_port())], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode != 0
    assert "TRACELAB_IDLE_S='ten minutes' must be a positive number" in done.stderr
