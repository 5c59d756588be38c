"""The notebook timeline of a big run: 100,000 steps through the real store, drawn with WebGL.

The run is written with `StoreWriter` (embedded mode) and opened the way a user opens it,
`tl.execution(run).timeline()`; a click is driven through the FigureWidget's own front-end
message handler (the path a click in JupyterLab takes) and must show that step's payload,
which the figure itself never carries. Speed is measured in bench/bench_timeline.py, not here.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import plotly.io as pio
import pytest

import tracelab as tl
from tracelab.notebook.timeline import WEBGL_MIN_EVENTS

N_STEPS = 100_000
BASE_NS = 1_714_521_600 * 10**9
CHOSEN = 73_421


def big_run(n: int) -> list[dict]:
    """`n` HTTP calls over three services, some overlapping, every 50th an error; each
    request body names its step so the payload panel can be checked."""
    return [{
        "event_id": f"ev-{i:06d}", "schema": 1, "workflow": "big-wf", "run_id": "big-run",
        "service": f"svc-{i % 3}", "source": "sdk-py", "kind": "http",
        "target": f"api{i % 4}.example.com", "endpoint": f"POST /v1/op{i % 7}",
        "started_at": BASE_NS + i * 1_000_000 - (i % 5) * 300_000,
        "latency_ms": 0.5 + (i % 13) * 0.7, "status": "error" if i % 50 == 0 else "ok",
        "status_code": 503 if i % 50 == 0 else 200,
        "request": {"method": "POST", "url": "https://api.example.com/v1/x", "headers": {},
                    "body": {"step": f"step-marker-{i:06d}"}},
        "response": {"status_code": 200, "headers": {}, "body": {"ok": True}},
    } for i in range(n)]


def click(widget, trace_index: int, point_index: int) -> None:
    widget.figure._handler_js2py_pointsCallback({"new": {
        "event_type": "plotly_click",
        "points": {"trace_indexes": [trace_index], "point_indexes": [point_index],
                   "xs": [0], "ys": [0]},
        "device_state": None, "selector": None}})


@pytest.fixture(scope="module")
def big_widget(tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("big") / "tracelab-home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRACELAB_HOME", str(home))
        for var in ("TRACELAB_REDIS_URL", "TRACELAB_STORE", "TRACELAB_DISABLED"):
            mp.delenv(var, raising=False)
        from tracelab.store.writer import StoreWriter
        StoreWriter().write(big_run(N_STEPS))
        widget = tl.execution("big-run").timeline()
        yield widget


def test_big_run_is_drawn_with_webgl_segments(big_widget) -> None:
    traces = big_widget.figure.data
    assert {trace.type for trace in traces} == {"scattergl"}
    points = sum(len(trace.x) for trace in traces)
    assert points == 3 * N_STEPS  # start, end, gap per step: every step drawn once
    assert sum(len(ids) for ids in big_widget.ids) == points
    assert {trace.name for trace in traces} == {"ok", "error"}
    assert sum(trace.showlegend for trace in traces) == 2  # one legend entry per status


def test_click_on_a_step_shows_that_steps_payload(big_widget) -> None:
    marker = f"step-marker-{CHOSEN:06d}"
    for index, ids in enumerate(big_widget.ids):
        hits = [p for p, event_id in enumerate(ids) if event_id == f"ev-{CHOSEN:06d}"]
        if hits:
            break
    else:
        raise AssertionError("the chosen step is not in the figure")
    assert len(hits) == 3
    for point in hits[:2]:  # the segment's start and its end both open the step
        big_widget.panel.value = ""
        click(big_widget, index, point)
        assert marker in big_widget.panel.value
        assert f"step-marker-{CHOSEN + 1:06d}" not in big_widget.panel.value


def test_payloads_are_never_embedded_in_the_figure(big_widget) -> None:
    figure_json = pio.to_json(big_widget.figure, validate=False)
    assert "step-marker-" not in figure_json and "api.example.com/v1/x" not in figure_json


def test_small_runs_keep_svg_bars(tracelab_home: Path) -> None:
    from tracelab.store.writer import StoreWriter
    StoreWriter().write(big_run(WEBGL_MIN_EVENTS - 1))
    widget = tl.execution("big-run").timeline()
    assert {trace.type for trace in widget.figure.data} == {"bar"}


def test_first_timeline_does_not_import_nbformat_until_used(tmp_path: Path) -> None:
    """The cold first timeline skips nbformat's 1 s import (jsonschema's lark grammars);
    nbformat and Plotly's renderers still work when something does use them."""
    script = """
import sys
import pandas as pd
from tracelab.notebook.timeline import execution_timeline
events = pd.DataFrame({"event_id": ["a"], "run_id": ["r"], "service": ["s"],
    "started_at": pd.to_datetime([0], utc=True), "latency_ms": [1.0], "status": ["ok"],
    "kind": ["http"], "target": ["t"], "endpoint": ["GET /"], "status_code": [200]})
execution_timeline(events, lambda event_id: {})
print("rfc3987_syntax" in sys.modules, "jsonschema" in sys.modules)
import nbformat
print(nbformat.v4.new_notebook().nbformat)
import plotly.io._renderers as renderers
print(renderers.nbformat.__version__ == nbformat.__version__)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False", "4", "True"]
