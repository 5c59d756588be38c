"""Live notebook timelines: `tl.execution(run).timeline(live=True)` and `tl.executions(wf).live()`.

Runs grow in a real store (events written through the real `StoreWriter`, the same path the
ingester and the embedded flusher take); what the widget sends its front end is read from the
FigureWidget's own outgoing message traits (`_py2js_*`), so "only the new steps went out" is
checked on the wire, not on Python objects. The last test drives a real IPython kernel with
jupyter_client: the run grows while the kernel is idle and the kernel's iopub channel shows the
widget sending the new steps with no cell running.
"""
from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from plotly.utils import PlotlyJSONEncoder

import tracelab as tl
from event_factory import make_event
from tracelab.notebook import live as live_module
from tracelab.store.writer import StoreWriter

OUTGOING = ("_py2js_addTraces", "_py2js_restyle", "_py2js_relayout", "_py2js_update",
            "_py2js_deleteTraces", "_py2js_moveTraces", "_py2js_removeTraceProps")


def step(run_id: str, seq: int, t0: int, *, workflow: str = "live-wf", **extra: Any
         ) -> dict[str, Any]:
    """A step of a run that is happening now (recent times keep it `running`)."""
    fields = {"endpoint": f"POST /step/{seq}", **extra}
    return make_event(workflow, run_id, seq=seq, started_at=t0 + seq * 2_000_000, **fields)


def lifecycle(run_id: str, endpoint: str, when: int, *, status: str = "ok",
              workflow: str = "live-wf") -> dict[str, Any]:
    """A run start/end event as the lifecycle contract (LIVE2.md) describes it."""
    event = make_event(workflow, run_id, started_at=when, status=status, service="agent",
                       target="agent", endpoint=endpoint, kind="run", latency_ms=0.0,
                       request={}, response={} if endpoint == "start" else {"reason": "exit"},
                       status_code=None, span_id=None)
    if status == "ok":
        event.pop("error", None)
    return event


def dumped(trace: Any) -> str:
    return json.dumps(trace.to_plotly_json(), cls=PlotlyJSONEncoder, sort_keys=True)


class Wire:
    """Every message a FigureWidget sends its front end, in order: (trait, payload)."""

    def __init__(self, figure: Any) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []
        figure.observe(self._seen, names=list(OUTGOING))

    def _seen(self, change: dict[str, Any]) -> None:
        if change["new"] is not None:
            self.sent.append((change["name"], change["new"]))

    def names(self) -> list[str]:
        return [name for name, _ in self.sent]


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def writer(tracelab_home: Path) -> StoreWriter:
    return StoreWriter()


@pytest.fixture
def stopped_after() -> Iterator[list[Any]]:
    """Widgets a test started; each is stopped however the test ends."""
    started: list[Any] = []
    yield started
    for widget in started:
        widget.stop()


def click(figure: Any, trace_index: int, point_index: int) -> None:
    """What the FigureWidget's front end sends when a user clicks one bar."""
    figure._handler_js2py_pointsCallback({"new": {
        "event_type": "plotly_click",
        "points": {"trace_indexes": [trace_index], "point_indexes": [point_index],
                   "xs": [0], "ys": [0]},
        "device_state": None, "selector": None}})


def test_new_steps_are_appended_traces_and_the_drawn_ones_are_never_resent(
        writer: StoreWriter, stopped_after: list[Any]) -> None:
    t0 = time.time_ns()
    writer.write([step("run-a", i, t0, status="error" if i == 2 else "ok") for i in range(4)])
    widget = tl.execution("run-a").timeline(live=True, interval=3600)
    stopped_after.append(widget)
    figure = widget.figure
    drawn = [dumped(trace) for trace in figure.data]
    lanes = list(figure.layout.yaxis.ticktext)
    wire = Wire(figure)

    new = [step("run-a", 4, t0), step("run-a", 5, t0, status="error"),
           step("run-a", 6, t0, service="worker")]
    writer.write(new)
    assert widget.refresh() is True  # the run is still running

    assert wire.names() == ["_py2js_addTraces", "_py2js_relayout"]
    added = wire.sent[0][1]["trace_data"]
    points = sorted(text for trace in added for text in trace["hovertext"])
    assert len(points) == 3 and all("/step/" in text for text in points)
    assert {"POST /step/4", "POST /step/5", "POST /step/6"} == {
        text.split("</b>")[0].removeprefix("<b>") for text in points}
    assert [dumped(trace) for trace in figure.data[:len(drawn)]] == drawn
    assert len(figure.data) == len(drawn) + len(added)
    # lanes already drawn keep their rows; the new service gets a row after them
    assert list(figure.layout.yaxis.ticktext)[:len(lanes)] == lanes
    assert list(figure.layout.yaxis.ticktext)[len(lanes):] == ["worker"]
    # one legend entry per status: the appended traces join the existing ones' names
    legend = [t.name for t in figure.data if t.showlegend is not False]
    assert sorted(legend) == ["error", "ok"]
    assert "7 events · 2 errors" in figure.layout.title.text
    assert sum(len(ids) for ids in widget.timeline.ids) == 7
    # front ends without widgets get the static SVG, live steps included
    svg = widget._repr_mimebundle_()["image/svg+xml"]
    assert ">worker</text>" in svg and "7 events" in svg

    # a refresh with nothing new sends nothing to the front end
    before = len(wire.sent)
    widget.refresh()
    assert len(wire.sent) == before


def test_a_click_on_an_appended_step_shows_its_payload(writer: StoreWriter,
                                                      stopped_after: list[Any]) -> None:
    t0 = time.time_ns()
    writer.write([step("run-b", 0, t0)])
    widget = tl.execution("run-b").timeline(live=True, interval=3600)
    stopped_after.append(widget)
    late = step("run-b", 1, t0, endpoint="POST /late/refund")
    writer.write([late])
    widget.refresh()
    index = len(widget.figure.data) - 1
    click(widget.figure, index, 0)
    assert late["event_id"] in widget.timeline.panel.value
    assert "/late/refund" in widget.timeline.panel.value


def test_a_run_with_no_steps_yet_starts_empty_and_gets_its_axis_with_the_first_steps(
        writer: StoreWriter, stopped_after: list[Any]) -> None:
    t0 = time.time_ns()
    writer.write([lifecycle("run-c", "start", t0)])
    widget = tl.Execution("run-c", workflow="live-wf").timeline(live=True, interval=3600)
    stopped_after.append(widget)
    assert len(widget.figure.layout.annotations) == 1  # "no events recorded for this run"
    writer.write([step("run-c", 1, t0), step("run-c", 2, t0)])
    widget.refresh()
    assert len(widget.figure.layout.annotations) == 0
    assert widget.figure.layout.xaxis.title.text.startswith("ms since ")
    bases = [float(b) for trace in widget.figure.data for b in trace.base]
    assert sorted(bases) == [0.0, 2.0]  # ms since the first step, not since 1970


def test_a_filtered_live_timeline_draws_only_matching_new_steps_and_a_view_change_keeps_them(
        writer: StoreWriter, stopped_after: list[Any]) -> None:
    t0 = time.time_ns()
    writer.write([step("run-v", 0, t0, status="error"), step("run-v", 1, t0)])
    widget = tl.execution("run-v").timeline(live=True, interval=3600, status="error")
    stopped_after.append(widget)
    assert sum(len(ids) for ids in widget.timeline.ids) == 1
    late_ok, late_error = step("run-v", 2, t0), step("run-v", 3, t0, status="error")
    writer.write([late_ok, late_error])
    widget.refresh()
    shown = {str(i) for ids in widget.timeline.ids for i in ids}
    assert late_error["event_id"] in shown and late_ok["event_id"] not in shown

    widget.timeline.filter(status=None)  # the user clears the filter: the figure is redrawn
    shown = {str(i) for ids in widget.timeline.ids for i in ids}
    assert {late_ok["event_id"], late_error["event_id"]} <= shown and len(shown) == 4
    drawn = [dumped(trace) for trace in widget.figure.data]
    writer.write([step("run-v", 4, t0)])
    widget.refresh()  # appends again on top of the redrawn figure
    assert [dumped(trace) for trace in widget.figure.data[:len(drawn)]] == drawn
    assert sum(len(ids) for ids in widget.timeline.ids) == 5


def test_a_big_run_gets_its_new_steps_as_webgl_segments(writer: StoreWriter,
                                                        stopped_after: list[Any]) -> None:
    """From 2,000 steps the timeline is WebGL; live steps join it as `scattergl` segments
    (three points per step) whose clicks still name their step."""
    from tracelab.notebook.timeline import WEBGL_MIN_EVENTS

    t0 = time.time_ns()
    writer.write([step("run-big", i, t0) for i in range(WEBGL_MIN_EVENTS)])
    widget = tl.execution("run-big").timeline(live=True, interval=3600)
    stopped_after.append(widget)
    drawn = len(widget.figure.data)
    assert {t.type for t in widget.figure.data} == {"scattergl"}
    late = step("run-big", WEBGL_MIN_EVENTS, t0, status="error")
    writer.write([late])
    widget.refresh()
    added = widget.figure.data[drawn:]
    assert [t.type for t in added] == ["scattergl"] and len(added[0].x) == 3
    click(widget.figure, len(widget.figure.data) - 1, 1)
    assert late["event_id"] in widget.timeline.panel.value


def test_many_refreshes_fold_into_few_traces_without_losing_a_step(
        writer: StoreWriter, stopped_after: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(live_module, "MAX_LIVE_TRACES", 4)
    t0 = time.time_ns()
    writer.write([step("run-d", 0, t0)])
    widget = tl.execution("run-d").timeline(live=True, interval=3600)
    stopped_after.append(widget)
    drawn = [dumped(trace) for trace in widget.figure.data]
    written = [step("run-d", i, t0) for i in range(1, 12)]
    for event in written:
        writer.write([event])
        widget.refresh()
    assert len(widget.figure.data) <= len(drawn) + 4
    assert [dumped(trace) for trace in widget.figure.data[:len(drawn)]] == drawn
    shown = [str(i) for ids in widget.timeline.ids for i in ids]
    assert sorted(shown) == sorted([e["event_id"] for e in written] + [
        str(widget.timeline.ids[0][0])])
    # clicks still map to the right step after folding
    last = len(widget.figure.data) - 1
    click(widget.figure, last, 0)
    assert str(widget.timeline.ids[last][0]) in widget.timeline.panel.value


def test_on_a_running_event_loop_it_refreshes_by_itself_and_stops_when_the_run_ends(
        writer: StoreWriter) -> None:
    """The kernel's case: an asyncio task on the running loop, ticking between awaits."""
    import asyncio

    t0 = time.time_ns()
    writer.write([lifecycle("run-e", "start", t0), step("run-e", 1, t0)])

    async def scenario() -> tuple[int, bool, str, str | None]:
        widget = tl.execution("run-e").timeline(live=True, interval=0.05)
        assert widget._poller._task is not None  # on this loop, not a thread
        writer.write([step("run-e", 2, t0), step("run-e", 3, t0)])
        while sum(len(ids) for ids in widget.timeline.ids) < 3:
            await asyncio.sleep(0.02)
        writer.write([lifecycle("run-e", "end", t0 + 10_000_000, status="error")])
        for _ in range(1500):
            if not widget.running:
                break
            await asyncio.sleep(0.02)
        return (sum(len(ids) for ids in widget.timeline.ids), widget.running,
                widget.status.value, widget.state)

    steps, running, status, state = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert steps == 3
    assert running is False and state == "failed"
    assert "run failed" in status and "refresh stopped" in status


def test_without_a_running_loop_a_thread_refreshes_until_the_stop_button(writer: StoreWriter) -> None:
    t0 = time.time_ns()
    writer.write([step("run-f", 0, t0)])
    widget = tl.execution("run-f").timeline(live=True, interval=0.05)
    try:
        assert widget._poller._thread is not None
        writer.write([step("run-f", 1, t0)])
        wait_for(lambda: sum(len(ids) for ids in widget.timeline.ids) == 2, "the new step")
    finally:
        widget.button.click()  # the Stop button above the figure
    widget._poller._thread.join(timeout=10)
    assert not widget._poller._thread.is_alive()
    assert widget.button.disabled and "stopped" in widget.status.value


def test_a_failing_refresh_is_shown_and_the_widget_keeps_working(
        writer: StoreWriter, stopped_after: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """A refresh that raises is reported in the status line, never raised into the kernel."""
    t0 = time.time_ns()
    writer.write([step("run-g", 0, t0)])
    widget = tl.execution("run-g").timeline(live=True, interval=3600)
    stopped_after.append(widget)

    monkeypatch.setenv("TRACELAB_IDLE_S", "soon")  # the query layer refuses to read
    assert widget._poller._step() is True
    assert "refresh failed: ConfigError: TRACELAB_IDLE_S" in widget.status.value
    monkeypatch.delenv("TRACELAB_IDLE_S")
    writer.write([step("run-g", 1, t0)])
    assert widget._poller._step() is True
    assert sum(len(ids) for ids in widget.timeline.ids) == 2


def test_a_slow_refresh_stretches_the_wait_so_the_kernel_stays_mostly_idle() -> None:
    poller = live_module.Poller(lambda: True, 1.0, lambda exc: None)
    assert poller.wait_s == 1.0
    poller.last_tick_s = 0.6  # a refresh of a huge run took 0.6 s
    assert poller.wait_s == pytest.approx(0.6 * live_module.BACKOFF)
    poller.last_tick_s = 0.01
    assert poller.wait_s == 1.0


def test_interval_must_be_positive(writer: StoreWriter) -> None:
    writer.write([step("run-h", 0, time.time_ns())])
    with pytest.raises(ValueError, match="interval must be a positive"):
        tl.execution("run-h").timeline(live=True, interval=0)


def test_overview_appends_new_runs_and_restyles_only_a_grown_runs_trace(
        writer: StoreWriter, stopped_after: list[Any]) -> None:
    t0 = time.time_ns()
    writer.write([step("run-1", i, t0) for i in range(2)])
    writer.write([step("run-2", i, t0 + 1_000_000) for i in range(2)])
    widget = tl.executions("live-wf").live(interval=3600)
    stopped_after.append(widget)
    figure = widget.figure
    drawn = [dumped(trace) for trace in figure.data]
    wire = Wire(figure)

    writer.write([step("run-2", 30, t0 + 1_000_000)])  # run-2 grows by 58 ms
    writer.write([step("run-3", 0, t0 + 5_000_000, status="error")])  # a new run
    assert widget.refresh() is True

    assert wire.names() == ["_py2js_restyle", "_py2js_addTraces", "_py2js_relayout"]
    restyle = wire.sent[0][1]
    assert restyle["restyle_traces"] == [0] and set(restyle["restyle_data"]) == {
        "x", "customdata", "hovertext"}
    grown = next(text for text in restyle["restyle_data"]["hovertext"][0] if "run-2" in text)
    assert "3 events" in grown
    added = wire.sent[1][1]["trace_data"]
    assert [trace["name"] for trace in added] == ["error"]
    assert list(figure.layout.yaxis.ticktext) == ["run-1", "run-2", "run-3"]
    assert len(figure.data) == len(drawn) + 1
    click(figure, len(figure.data) - 1, 0)
    assert "run-3" in widget.timeline.panel.value


def test_overview_live_keeps_the_filters_it_was_made_with(
        writer: StoreWriter, stopped_after: list[Any]) -> None:
    t0 = time.time_ns()
    writer.write([step("run-1", 0, t0, status="error")])
    widget = tl.executions("live-wf", status="error").live(interval=3600)
    stopped_after.append(widget)
    writer.write([step("run-ok", 0, t0 + 1_000_000)])
    writer.write([step("run-bad", 0, t0 + 2_000_000, status="error")])
    widget.refresh()
    assert list(widget.figure.layout.yaxis.ticktext) == ["run-1", "run-bad"]


# -- a real kernel ----------------------------------------------------------------------------

KERNEL_SETUP = '''
import json
import tracelab as tl
from plotly.utils import PlotlyJSONEncoder
widget = tl.execution("kernel-live").timeline(live=True, interval=0.1)
drawn = [json.dumps(t.to_plotly_json(), cls=PlotlyJSONEncoder, sort_keys=True)
         for t in widget.figure.data]
display(widget)
print(json.dumps({"traces": len(drawn), "task": widget._poller._task is not None}))
'''

KERNEL_CHECK = '''
print(json.dumps({
    "traces": len(widget.figure.data),
    "untouched": [json.dumps(t.to_plotly_json(), cls=PlotlyJSONEncoder, sort_keys=True)
                  for t in widget.figure.data[:len(drawn)]] == drawn,
    "steps": sum(len(ids) for ids in widget.timeline.ids),
    "running": widget.running, "state": widget.state}))
'''


class Kernel:
    """A real IPython kernel (the venv's python) driven over jupyter_client's channels."""

    def __init__(self, env: dict[str, str]) -> None:
        from jupyter_client.manager import KernelManager

        self._printed: list[str] = []
        self.manager = KernelManager(kernel_name="python3")
        self.manager.start_kernel(env=env)
        self.client = self.manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=60)

    def run(self, code: str) -> dict[str, Any]:
        """Execute one cell; its last printed JSON line."""
        reply = self.client.execute_interactive(code, timeout=60, output_hook=self._hook)
        assert reply["content"]["status"] == "ok", reply["content"]
        return json.loads(self._printed[-1])

    def _hook(self, msg: dict[str, Any]) -> None:
        if msg["msg_type"] == "stream":
            self._printed.extend(line for line in msg["content"]["text"].splitlines() if line)
        elif msg["msg_type"] == "error":
            raise AssertionError("\n".join(msg["content"]["traceback"]))

    def idle_messages(self, until: Callable[[dict[str, Any]], bool],
                      timeout: float = 60) -> list[dict[str, Any]]:
        """iopub messages while no cell runs, up to the first one `until` accepts."""
        seen = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                msg = self.client.get_iopub_msg(timeout=1)
            except Exception:  # queue.Empty: nothing yet
                continue
            seen.append(msg)
            if until(msg):
                return seen
        raise AssertionError(f"no such message while idle; saw {[m['msg_type'] for m in seen]}")

    def close(self) -> None:
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)


def _update(msg: dict[str, Any], trait: str) -> Any:
    if msg["msg_type"] != "comm_msg" or msg["content"]["data"].get("method") != "update":
        return None
    return msg["content"]["data"].get("state", {}).get(trait)


def test_in_a_real_kernel_the_widget_gains_steps_while_the_kernel_is_idle(
        writer: StoreWriter, tracelab_home: Path) -> None:
    t0 = time.time_ns()
    writer.write([lifecycle("kernel-live", "start", t0), step("kernel-live", 1, t0),
                  step("kernel-live", 2, t0)])
    env = {**os.environ, "TRACELAB_HOME": str(tracelab_home),
           "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    kernel = Kernel(env)
    try:
        setup = kernel.run(KERNEL_SETUP)
        assert setup["task"] is True  # an asyncio task on the kernel's own loop

        # the run grows while the kernel is idle: no cell runs from here on
        writer.write([step("kernel-live", 3, t0, endpoint="POST /idle/one"),
                      step("kernel-live", 4, t0, endpoint="POST /idle/two", status="error")])
        seen = kernel.idle_messages(lambda m: _update(m, "_py2js_addTraces") is not None)
        assert not [m for m in seen if m["msg_type"] == "status"
                    and m["content"]["execution_state"] == "busy"]
        sent = _update(seen[-1], "_py2js_addTraces")["trace_data"]
        hover = [text for trace in sent for text in trace["hovertext"]]
        assert len(hover) == 2
        assert any("/idle/one" in text for text in hover)
        assert any("/idle/two" in text for text in hover)
        # the figure itself (its `_data`) never went out again, only the delta
        assert not [m for m in seen if m["msg_type"] == "comm_msg"
                    and "_data" in m["content"]["data"].get("state", {})]

        # the run ends: the widget says so and stops by itself, still with no cell running
        writer.write([lifecycle("kernel-live", "end", t0 + 20_000_000)])
        kernel.idle_messages(lambda m: "refresh stopped" in str(_update(m, "value") or ""))

        check = kernel.run(KERNEL_CHECK)
        assert check["traces"] == setup["traces"] + len(sent)
        assert check["untouched"] is True
        assert check["steps"] == 4
        assert check["running"] is False and check["state"] == "finished"
    finally:
        kernel.close()
