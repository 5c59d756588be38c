"""The notebook face in-process: `tl.executions`, `tl.execution`, timelines, payload panel, diffs.

Runs are recorded the way a user records them (`tl.init` + `requests` against a real loopback
server, embedded mode); the timeline's click is driven through the FigureWidget's own
front-end message handler, the same path a click in JupyterLab takes.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import requests

import tracelab as tl
from conftest import LoopbackHTTP
from tracelab.analysis.diff import diff_executions
from tracelab.notebook.latency import latency_table
from tracelab.notebook.timeline import assign_lanes, span_depths

HOSTILE = "<img src=x onerror=alert(1)>"


def record_run(server: LoopbackHTTP, workflow: str, run_id: str, *, calls: int = 20,
               failing: frozenset[int] = frozenset({3, 9, 15}), extra: tuple[str, ...] = ()
               ) -> None:
    tl.init(workflow_name=workflow, service_name="agent", run_id=run_id)
    for i in range(calls):
        path = "/status/503" if i in failing else f"/orders/{i}"
        requests.post(server.url + path, json={"i": i, "note": HOSTILE})
    for path in extra:
        requests.get(server.url + path)
    assert tl.flush(timeout=10)
    tl.shutdown()


@pytest.fixture
def recorded(tracelab_home: Path, loopback_http: LoopbackHTTP) -> Iterator[LoopbackHTTP]:
    record_run(loopback_http, "refund-agent", "run-1")
    yield loopback_http


def click(widget, trace_index: int, point_index: int) -> None:
    """What the FigureWidget's front end sends when a user clicks one bar."""
    figure = widget.children[0]
    figure._handler_js2py_pointsCallback({"new": {
        "event_type": "plotly_click",
        "points": {"trace_indexes": [trace_index], "point_indexes": [point_index],
                   "xs": [0], "ys": [0]},
        "device_state": None, "selector": None}})


def test_executions_is_a_dataframe_first_collection(recorded: LoopbackHTTP) -> None:
    record_run(recorded, "refund-agent", "run-2", calls=5, failing=frozenset())
    runs = tl.executions("refund-agent")
    assert len(runs) == 2
    assert list(runs.df.columns) == ["workflow", "run_id", "started_at", "ended_at",
                                     "duration_ms", "events", "errors", "status", "state",
                                     "services", "targets", "tags", "llm_tokens",
                                     "llm_cost_usd"]
    assert runs.df["run_id"].tolist() == ["run-2", "run-1"]  # newest first
    assert [r.run_id for r in runs] == ["run-2", "run-1"]
    assert runs[0].run_id == "run-2" and runs[-1].run_id == "run-1"
    assert runs["run-1"].run_id == "run-1" and "run-1" in runs
    assert len(runs[:1]) == 1 and runs.latest().run_id == "run-2"
    assert len(runs[1].events) == 20  # lazily loaded from iteration/indexing
    with pytest.raises(KeyError, match="nope"):
        runs["nope"]
    with pytest.raises(IndexError):
        runs[5]
    events = runs.events()
    assert len(events) == 25 and "request" not in events and "response" not in events
    assert "2 runs, 1 with errors" in repr(runs) and "refund-agent" in runs._repr_html_()


def test_latencies_by_any_columns(recorded: LoopbackHTTP) -> None:
    table = tl.executions("refund-agent").latencies(by="target")
    assert list(table.columns) == ["target", "count", "errors", "error_rate", "mean", "p50",
                                   "p90", "p95", "p99", "max"]
    row = table.iloc[0]
    assert row["count"] == 20 and row["errors"] == 3 and row["error_rate"] == pytest.approx(0.15)
    assert row["p50"] <= row["p95"] <= row["max"]
    by_two = tl.executions("refund-agent").latencies(by=["service", "status_code"])
    assert set(by_two["status_code"]) == {200, 503}
    with pytest.raises(ValueError, match="'colour'.*known columns"):
        tl.executions("refund-agent").latencies(by="colour")


def test_latency_table_numbers() -> None:
    frame = pd.DataFrame({"target": ["a"] * 4 + ["b"],
                          "latency_ms": [10.0, 20.0, 30.0, 40.0, 5.0],
                          "status": ["ok", "ok", "error", "ok", "ok"]})
    table = latency_table(frame, "target").set_index("target")
    assert table.loc["a", "count"] == 4 and table.loc["a", "errors"] == 1
    assert table.loc["a", "p50"] == 25.0 and table.loc["a", "max"] == 40.0
    assert table.index.tolist() == ["a", "b"]  # slowest p95 first


def test_unknown_workflow_and_run_id(recorded: LoopbackHTTP) -> None:
    empty = tl.executions("no-such-agent")
    assert len(empty) == 0 and list(empty) == []
    assert "no such workflow" in repr(empty) and "tl.workflows()" in repr(empty)
    assert "'refund-agent'" in repr(empty) and "tl.workflows()" in empty._repr_html_()
    assert "no executions match" in repr(tl.executions("refund-agent", status="ok"))
    with pytest.raises(KeyError, match="ghost-run"):
        tl.execution("ghost-run")
    with pytest.raises(KeyError, match="not-an-event"):
        tl.execution("run-1").event("not-an-event")


def test_workflows_columns(recorded: LoopbackHTTP) -> None:
    frame = tl.workflows()
    assert list(frame.columns) == ["workflow", "executions", "events", "errors", "first_seen",
                                   "last_seen"]
    assert frame.iloc[0][["workflow", "executions", "events", "errors"]].tolist() == \
        ["refund-agent", 1, 20, 3]


def test_execution_events_event_and_repr(recorded: LoopbackHTTP) -> None:
    run = tl.execution("run-1")
    assert len(run.events) == 20 and int((run.events["status"] == "error").sum()) == 3
    event_id = run.events["event_id"].iloc[0]
    event = run.event(event_id)
    assert event["request"]["body"] == {"i": 0, "note": HOSTILE}
    assert event["response"]["status_code"] == 200
    html_repr = run._repr_html_()
    assert "run-1" in html_repr and "20 events, 3 errors" in html_repr


def test_timeline_widget_has_one_bar_per_event_and_click_fills_panel(
        recorded: LoopbackHTTP) -> None:
    run = tl.execution("run-1")
    widget = run.timeline()
    figure = widget.children[0]
    assert isinstance(figure, go.FigureWidget)
    assert sum(len(trace.x) for trace in figure.data) == 20
    by_name = {trace.name: trace for trace in figure.data}
    assert len(by_name["error"].x) == 3 and len(by_name["ok"].x) == 17
    assert all(trace.type == "bar" and trace.orientation == "h" for trace in figure.data)
    assert figure.layout.barmode == "overlay" and figure.layout.yaxis.fixedrange
    error_index = [t.name for t in figure.data].index("error")
    click(widget, error_index, 1)
    expected = run.events[run.events["status"] == "error"]["event_id"].iloc[1]
    panel = widget.children[1].value
    assert expected in panel
    assert "/status/503" in panel and "Request" in panel and "Response" in panel
    assert "status 503" in panel  # the response's status code
    assert "&lt;img src=x onerror=alert(1)&gt;" in panel and HOSTILE not in panel
    # a click that reached only the other traces leaves the panel alone
    figure._handler_js2py_pointsCallback({"new": {
        "event_type": "plotly_click", "points": {"trace_indexes": [], "point_indexes": [],
                                                 "xs": [], "ys": []}}})
    assert widget.children[1].value == panel


def test_static_fallback_is_escaped_svg(recorded: LoopbackHTTP) -> None:
    widget = tl.execution("run-1").timeline()
    bundle = widget._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    svg = bundle["image/svg+xml"]
    root = ET.fromstring(svg)  # well-formed XML
    assert root.tag.endswith("svg") and svg.count("<rect") >= 2
    assert "agent" in svg


def test_hostile_endpoint_is_escaped_in_hover_and_svg(tracelab_home: Path) -> None:
    from tracelab.notebook.timeline import execution_timeline

    events = pd.DataFrame({
        "event_id": ["e1", "e2"], "run_id": ["r", "r"],
        "started_at": pd.to_datetime([0, 5_000_000], utc=True),
        "latency_ms": [3.0, 0.0], "status": ["ok", "error"], "status_code": [200, None],
        "service": [HOSTILE, "svc"], "kind": ["http", "custom"], "target": ["t", "t"],
        "endpoint": [HOSTILE, "x"], "span_id": ["s1", "s2"], "parent_id": [None, "gone"]})
    widget = execution_timeline(events, lambda event_id: {"event_id": event_id,
                                                         "request": {"body": HOSTILE}})
    hover = " ".join(str(t) for trace in widget.figure.data for t in trace.hovertext)
    assert HOSTILE not in hover and "&lt;img" in hover
    assert "parent span not recorded" in hover  # the orphan says so, and is still drawn
    assert sum(len(trace.x) for trace in widget.figure.data) == 2
    assert HOSTILE not in widget.static_svg()
    ET.fromstring(widget.static_svg())
    widget.select("e1")
    assert HOSTILE not in widget.panel.value and "&lt;img" in widget.panel.value


def test_nested_spans_get_rows_under_their_service(tracelab_home: Path,
                                                   loopback_http: LoopbackHTTP) -> None:
    tl.init(workflow_name="nested", service_name="planner", run_id="nested-1")

    @tl.trace
    def plan() -> None:
        for i in range(3):
            requests.get(f"{loopback_http.url}/orders/{i}")

    plan()
    plan()
    assert tl.flush(timeout=10)
    tl.shutdown()
    widget = tl.execution("nested-1").timeline()
    labels = list(widget.figure.layout.yaxis.ticktext)
    assert labels == ["planner", "planner › 1"]
    ys = np.concatenate([np.asarray(trace.y) for trace in widget.figure.data])
    assert sorted(np.bincount(ys).tolist()) == [2, 6]


def test_span_depths_orphans_and_overlaps() -> None:
    depth, orphan = span_depths(["a", "b", "c", "d", None],
                                [None, "a", "b", "missing", "a"])
    assert depth.tolist() == [0, 1, 2, 0, 1]
    assert orphan.tolist() == [False, False, False, True, False]
    start = np.array([0.0, 1.0, 2.0, 10.0])
    end = np.array([5.0, 3.0, 4.0, 11.0])
    y, labels = assign_lanes(np.array(["s"] * 4, dtype=object), np.zeros(4, dtype=np.int64),
                             start, end)
    # three overlapping calls need three rows; the later call reuses the first row
    assert y.tolist() == [0, 1, 2, 0] and labels == ["s", "s (2)", "s (3)"]


def test_huge_and_binary_payloads_show_their_markers(tracelab_home: Path,
                                                     loopback_http: LoopbackHTTP) -> None:
    record_run(loopback_http, "payloads", "big-1", calls=0,
               extra=("/big?n=200000", "/binary"))
    run = tl.execution("big-1")
    widget = run.timeline()
    texts = []
    for event_id in run.events["event_id"]:
        widget.select(event_id)
        texts.append(widget.panel.value)
    joined = "\n".join(texts)
    assert "truncated by TraceLab: original size 200,000 bytes" in joined
    assert "binary body, 1,024 bytes" in joined
    assert "could not load" not in joined


def test_executions_overview_timeline(recorded: LoopbackHTTP) -> None:
    record_run(recorded, "refund-agent", "run-2", calls=4, failing=frozenset())
    widget = tl.executions("refund-agent").timeline()
    assert isinstance(widget.children[0], go.FigureWidget)
    assert sum(len(trace.x) for trace in widget.figure.data) == 2
    assert widget.figure.layout.xaxis.type == "date"
    ok_index = [t.name for t in widget.figure.data].index("ok")
    click(widget, ok_index, 0)
    assert "run-2" in widget.panel.value and "4 events" in widget.panel.value
    ET.fromstring(widget.static_svg())


def test_diff_of_two_recorded_runs(recorded: LoopbackHTTP) -> None:
    tl.init(workflow_name="refund-agent", service_name="agent", run_id="run-b")
    for i in range(20):
        path = "/status/503" if i in {3, 9} else f"/orders/{i}"  # step 15 now succeeds
        requests.post(recorded.url + path, json={"i": i, "note": "changed" if i == 0 else HOSTILE})
    requests.get(recorded.url + "/extra")  # one step more
    assert tl.flush(timeout=10)
    tl.shutdown()
    diff = tl.execution("run-1").diff("run-b")
    counts = diff["change"].value_counts().to_dict()
    # aligned by order within target+endpoint: the third /status/503 has no partner in B
    assert counts == {"same": 18, "changed": 1, "added": 2, "removed": 1}
    removed = diff[diff["change"] == "removed"].iloc[0]
    assert removed["endpoint"] == "POST /status/503" and removed["status_code_a"] == 503
    added = set(diff[diff["change"] == "added"]["endpoint"])
    assert added == {"POST /orders/15", "GET /extra"}
    changed = diff[diff["change"] == "changed"].iloc[0]
    assert changed["endpoint"] == "POST /orders/0"
    assert changed["body_fields"] == ["request.body.note", "response.body.body"]
    assert diff["latency_delta_ms"].notna().sum() == 19
    summary = repr(diff).splitlines()[0]
    assert summary.startswith("diff run-1 → run-b: 20 vs 21 steps; 2 added, 1 removed, "
                              "1 changed (1 body), 18 same")
    assert "diff run-1 → run-b" in diff._repr_html_()


def test_diff_executions_is_pure_pandas() -> None:
    def frame(rows: list[tuple[str, str, str, int, float]]) -> pd.DataFrame:
        return pd.DataFrame(rows, columns=["event_id", "target", "endpoint", "status_code",
                                           "latency_ms"]).assign(
            status=lambda f: np.where(f["status_code"] >= 500, "error", "ok"),
            started_at=lambda f: pd.to_datetime(np.arange(len(f)) * 1_000_000, utc=True))

    a = frame([("a1", "api", "GET /x", 200, 10.0), ("a2", "api", "GET /x", 200, 10.0),
               ("a3", "llm", "chat", 200, 50.0)])
    b = frame([("b1", "api", "GET /x", 200, 12.0), ("b2", "api", "GET /x", 500, 9.0)])
    diff = diff_executions(a, b, a_label="A", b_label="B")
    assert diff["change"].tolist() == ["same", "changed", "removed"]
    assert diff["latency_delta_ms"].tolist()[:2] == [2.0, -1.0]
    assert diff.summary() == ("diff A → B: 3 vs 2 steps; 0 added, 1 removed, 1 changed "
                              "(1 status, 1 status code), 1 same; total latency -49.0 ms")


# -- record & replay: .export(), .replay(), .replay_of, .replays ------------------------------

def test_export_writes_the_run_as_a_recording(recorded: LoopbackHTTP, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import orjson

    from tracelab.replay.recording import load_recording

    run = tl.execution("run-1")
    path = run.export(tmp_path / "run-1.jsonl")
    lines = [orjson.loads(x) for x in path.read_bytes().splitlines()]
    assert [e["event_id"] for e in lines] == run.events["event_id"].tolist()
    assert lines[0]["request"]["body"] == {"i": 0, "note": HOSTILE}  # with payloads
    assert load_recording(path).run_id == "run-1"
    monkeypatch.chdir(tmp_path)
    assert run.export() == Path("refund-agent-run-1.jsonl")
    assert (tmp_path / "refund-agent-run-1.jsonl").read_bytes() == path.read_bytes()


def test_replay_of_and_replays_link_a_run_and_its_replays(recorded: LoopbackHTTP,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACELAB_TAGS", '{"replay_of": "run-1"}')
    record_run(recorded, "refund-agent", "run-1-replayed", calls=2, failing=frozenset())
    assert tl.execution("run-1-replayed").replay_of == "run-1"
    assert tl.execution("run-1").replay_of is None
    assert tl.execution("run-1").replays == ["run-1-replayed"]
    assert tl.execution("run-1-replayed").replays == []


def test_replay_runs_a_command_answered_from_the_run(recorded: LoopbackHTTP,
                                                     tmp_path: Path) -> None:
    import sys

    script = tmp_path / "agent.py"
    script.write_text("import os, sys\nsys.exit(0 if os.environ['TRACELAB_REPLAY'] else 3)\n")
    result = tl.execution("run-1").replay([sys.executable, str(script)])
    assert result.command_exit == 0
    assert result.summary == "replayed 0/20 calls, 0 misses, 20 unused recordings"
    assert result.execution and result.execution != "run-1"
    bad = tl.execution("run-1").replay("true", on_miss="sometimes")
    assert bad.exit_code == 2 and "sometimes" in bad.reason
