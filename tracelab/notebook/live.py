"""Live timelines: `tl.execution(run).timeline(live=True)` and `tl.executions(wf).live()`.

A live timeline is the ordinary Gantt (built once by `tracelab.notebook.timeline`) plus a poller
that asks the query layer what is new every `interval` seconds and sends only that to the
front end: new steps become traces appended to the existing FigureWidget (`Plotly.addTraces`),
a new lane or a new title is a layout delta, and the traces already drawn are never re-sent.
For the overview, a run that grew has its one bar restyled and a new run is an appended bar.

Why an asyncio task: ipykernel runs the kernel on an asyncio event loop and serves comm
messages between cells from it, so a task created on that loop runs exactly while the kernel
is idle and touches the widgets from the thread that owns them. Outside a running loop (a plain
script) a daemon thread ticks instead. A run's timeline stops by itself once the query layer
says the run is `finished`, `failed` or `abandoned` (the `state` column of
`tl.executions(wf).df`; a store without that column keeps refreshing until `.stop()`).
"""
from __future__ import annotations

import asyncio
import html
import threading
import time
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from tracelab.notebook import timeline as tlv
from tracelab.notebook.repr import esc, format_ms
from tracelab.store import query

LIVE_INTERVAL_S = 1.0
FINAL_STATES = frozenset({"finished", "failed", "abandoned"})
# Each refresh that brings steps appends its own traces; past this many appended traces they
# are folded into one set (one addTraces of the live steps, one deleteTraces of the old ones),
# so a long run never leaves Plotly with thousands of traces.
MAX_LIVE_TRACES = 48


# A refresh holds the kernel's loop while it runs (0.1-0.25 s at 100,000 steps): the wait
# before the next one is at least this many times the last one's duration, so the kernel
# stays idle at least 3/4 of the time however big the run.
BACKOFF = 3.0


class Poller:
    """Calls `tick()` every `interval` seconds until `stop()` or until `tick()` returns False.

    On the running asyncio loop (a kernel's) when there is one, else on a daemon thread. A tick
    that raises is reported through `on_error` and the polling goes on. A slow tick stretches
    the wait after it (`BACKOFF`).
    """

    def __init__(self, tick: Callable[[], bool], interval: float,
                 on_error: Callable[[BaseException], None]) -> None:
        if not interval > 0:
            raise ValueError(f"interval must be a positive number of seconds, not {interval!r}")
        self.interval = float(interval)
        self._tick = tick
        self._on_error = on_error
        self._stopped = threading.Event()
        self._task: asyncio.Task | None = None
        self._thread: threading.Thread | None = None
        self.last_tick_s = 0.0

    @property
    def wait_s(self) -> float:
        """Seconds until the next tick: the interval, or longer after a slow tick."""
        return max(self.interval, BACKOFF * self.last_tick_s)

    @property
    def running(self) -> bool:
        return not self._stopped.is_set()

    def start(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._thread = threading.Thread(target=self._run_thread, daemon=True,
                                            name="tracelab-live")
            self._thread.start()
        else:
            self._task = loop.create_task(self._run_task())

    def stop(self) -> None:
        self._stopped.set()
        if self._task is not None and not self._task.done():
            self._task.cancel()

    def _step(self) -> bool:
        started = time.perf_counter()
        try:
            return bool(self._tick())
        except Exception as exc:  # a failing refresh is shown, never raised into the kernel
            self._on_error(exc)
            return True
        finally:
            self.last_tick_s = time.perf_counter() - started

    async def _run_task(self) -> None:
        while not self._stopped.is_set():
            await asyncio.sleep(self.wait_s)
            if self._stopped.is_set() or not self._step():
                break
        self._stopped.set()

    def _run_thread(self) -> None:
        while not self._stopped.wait(self.wait_s):
            if not self._step():
                break
        self._stopped.set()


class LiveWidget(tlv.StaticSvgFallback, widgets.VBox):
    """A status line with a Stop button above a `TimelineWidget` that a `Poller` keeps fresh.

    `.stop()` (or the button, or closing the widget) ends the refresh; `.refresh()` runs one
    refresh now, which is what the poller calls.
    """

    def __init__(self, timeline: tlv.TimelineWidget, interval: float) -> None:
        self.timeline = timeline
        self.status = widgets.HTML()
        self.button = widgets.Button(description="Stop", icon="stop",
                                     layout=widgets.Layout(width="90px"))
        self.button.on_click(lambda _: self.stop())
        self.refreshes = 0
        self.error: BaseException | None = None
        super().__init__(children=[widgets.HBox([self.button, self.status]), timeline])
        self._poller = Poller(self._tick, interval, self._failed)
        self._say(f"live · refreshing every {interval:g} s")

    @property
    def figure(self) -> Any:
        return self.timeline.figure

    @property
    def running(self) -> bool:
        return self._poller.running

    def start(self) -> LiveWidget:
        self._poller.start()
        return self

    def stop(self, reason: str = "stopped") -> None:
        """Stop refreshing; the figure keeps what it has."""
        was_running = self._poller.running
        self._poller.stop()
        self.button.disabled = True
        if was_running:
            self._say(reason)

    def close(self) -> None:
        self.stop()
        super().close()

    def refresh(self) -> bool:
        """Bring the figure up to date once; False once there is nothing more to wait for."""
        raise NotImplementedError

    def _tick(self) -> bool:
        more = self.refresh()
        self.refreshes += 1
        if not more:
            self.stop(self._done_reason())
        return more

    def _done_reason(self) -> str:
        return "stopped"

    def _failed(self, exc: BaseException) -> None:
        self.error = exc
        self._say(f"refresh failed: {type(exc).__name__}: {exc}")

    def _say(self, text: str) -> None:
        self.status.value = f'<span class="tl-dim">{esc(text)}</span>'

    def static_svg(self) -> str:
        return self.timeline.static_svg()



def run_state(workflow: str, run_id: str) -> str | None:
    """The run's `state` from the query layer, or None when the store does not say."""
    runs = query.executions(workflow)
    if "state" not in runs.columns:
        return None
    row = runs[runs["run_id"] == run_id]
    return None if row.empty else str(row["state"].iloc[0])


class LiveExecution(LiveWidget):
    """The Gantt of one run that gains the run's new steps as they land in the store.

    `view` (filters, `collapsed`, `root`) is the timeline's own: a new step the view hides is
    not drawn, and when the view changes (its controls redraw the figure) the redraw holds
    every step seen so far.
    """

    def __init__(self, run_id: str, workflow: str | None, events: pd.DataFrame,
                 load_event: tlv.Loader, *, interval: float = LIVE_INTERVAL_S,
                 **view: Any) -> None:
        self.run_id = run_id
        self.workflow = workflow
        self.state: str | None = None
        timeline = tlv.execution_timeline(events, load_event, **view)
        self._seen = set(events["event_id"].astype(str)) if len(events) else set()
        self._t0 = int(tlv._ns(events["started_at"]).min()) if len(events) else None
        latency = events["latency_ms"].to_numpy(dtype=float, na_value=0.0) if len(events) \
            else np.zeros(0)
        rel = (tlv._ns(events["started_at"]) - self._t0) / 1e6 if len(events) else np.zeros(0)
        self._span = float((rel + latency).max()) if len(events) else 0.0
        self._errors = int((events["status"] == "error").sum()) if len(events) else 0
        self.timeline = timeline
        self._adopt()
        super().__init__(timeline, interval)

    def _adopt(self) -> None:
        """Take the figure as drawn now as the base the live steps are appended to: at the
        start, and again after the timeline redrew it (a view change redraws every step)."""
        figure = self.timeline.figure
        self._base_traces = len(figure.data)
        self._labels = list(self.timeline._static["labels"])
        self._live = []
        self._webgl = any(getattr(t, "type", None) == "scattergl" for t in figure.data)
        self._drawn = tuple(figure.data)
        run = getattr(self.timeline, "_run", None)
        if run is not None and run.n:
            self._t0 = run.t0

    def refresh(self) -> bool:
        data = self.figure.data
        if len(data) != len(self._drawn) or any(a is not b for a, b in zip(data, self._drawn)):
            self._adopt()  # the timeline redrew itself (its view changed)
        try:
            events = query.execution_events(self.run_id, workflow=self.workflow)
        except KeyError:  # nothing recorded yet
            events = pd.DataFrame()
        if self.workflow is None and len(events):
            self.workflow = str(events["workflow"].iloc[0])
        if len(events) > len(self._seen):  # the store dedupes, so a new step adds a row
            # in Arrow: pandas' isin on Arrow strings loops in Python (0.5 s at 100k steps)
            ids = pa.array(events["event_id"].to_numpy(dtype=object), pa.string())
            seen = pa.array(list(self._seen), pa.string())
            fresh = ~pc.is_in(ids, value_set=seen).to_numpy(zero_copy_only=False)
            if fresh.any():
                self._append(events.reset_index(drop=True), fresh)
        summary = events.attrs.get("execution")
        if isinstance(summary, dict) and "state" in summary:
            self.state = str(summary["state"])
        else:  # a query layer that does not summarise the run along with its steps
            self.state = run_state(self.workflow, self.run_id) if self.workflow else None
        shown = f"live · {len(self._seen):,} steps"
        self._say(shown + (f" · run {self.state}" if self.state else ""))
        return self.state not in FINAL_STATES

    def _done_reason(self) -> str:
        return f"run {self.state} · {len(self._seen):,} steps · refresh stopped" \
            if self.state in FINAL_STATES else "stopped"

    def _shown(self, events: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Which of the run's steps the timeline's view keeps, their depths and hovers.

        A view-aware timeline is handed the whole run so far, so that its own redraws (a
        filter changed) include the live steps; a plain one keeps everything."""
        run_type = getattr(tlv, "_Run", None)
        if run_type is not None and hasattr(self.timeline, "_view"):
            run = run_type(events)
            self.timeline._run = run
            view = self.timeline._view()
            return view.keep, view.depth, run.hover
        depth, orphan = tlv.span_depths(
            events["span_id"] if "span_id" in events else [None] * len(events),
            events["parent_id"] if "parent_id" in events else [None] * len(events))
        tags = tlv.tag_columns(events["tags"].tolist() if "tags" in events
                               else [None] * len(events),
                               (tlv.FAULT_TAG, tlv.FAULT_ACTION_TAG, tlv.REPLAY_TAG,
                                *tlv.LLM_TOKEN_TAGS))
        return np.ones(len(events), dtype=bool), depth, tlv._event_hover(events, orphan, tags)

    def _append(self, events: pd.DataFrame, fresh: np.ndarray) -> None:
        keep, depth_all, hover_all = self._shown(events)
        self._seen.update(events.loc[fresh, "event_id"].astype(str).tolist())
        self._errors = int((events["status"] == "error").sum())
        drawn = fresh & keep
        new = events[drawn].reset_index(drop=True)
        first_steps = self._t0 is None
        if not len(new):
            return
        start_ns = tlv._ns(new["started_at"])
        if first_steps:
            self._t0 = int(start_ns.min())
        rel = (start_ns - self._t0) / 1e6
        latency = new["latency_ms"].to_numpy(dtype=float, na_value=0.0)
        end = rel + latency
        self._span = max(self._span, float(end.max()))
        local_y, local_labels = tlv.assign_lanes(new["service"].to_numpy(dtype=object),
                                                 depth_all[drawn], rel, end)
        lanes_before = len(self._labels)
        lane_of = np.array([self._lane(label) for label in local_labels], dtype=np.int32)
        width = np.maximum(latency, max(self._span, 1.0) * tlv._MIN_BAR_FRACTION)
        tags = tlv.tag_columns(new["tags"].tolist() if "tags" in new else [None] * len(new),
                               (tlv.FAULT_TAG,))
        columns = {
            "status": new["status"].to_numpy(dtype=object),
            "faulted": pd.notna(tags[tlv.FAULT_TAG]).astype(bool),
            "rel": rel, "width": width, "y": lane_of[local_y], "latency": latency,
            "hover": hover_all[drawn],
            "ids": new["event_id"].astype(str).to_numpy(dtype=object),
        }
        self._live.append(columns)
        self._webgl = self._webgl or len(self._seen) >= tlv.WEBGL_MIN_EVENTS
        self._add(columns)
        if self._appended() > MAX_LIVE_TRACES:
            self._fold()
        self._relayout(new_lanes=len(self._labels) != lanes_before, first_steps=first_steps)
        self._grow_static(columns)
        self._drawn = tuple(self.figure.data)
        if isinstance(getattr(self.timeline, "shown", None), int):  # the view's step count
            self.timeline.shown += len(new)
        sync = getattr(self.timeline, "_sync_controls", None)
        if callable(sync):
            sync()

    def _lane(self, label: str) -> int:
        if label not in self._labels:
            self._labels.append(label)
        return self._labels.index(label)

    def _traces(self, c: dict[str, Any]) -> tuple[list[dict[str, Any]], list[np.ndarray]]:
        if self._webgl:
            return tlv.segment_traces(c["status"], c["faulted"], c["rel"], c["width"], c["y"],
                                      c["hover"], c["latency"], c["ids"])
        plain = ~c["faulted"]
        values = {"base": c["rel"], "x": c["width"], "y": c["y"], "hovertext": c["hover"],
                  "customdata": c["latency"], "text": c["rel"]}
        options = {"hovertemplate": tlv._EVENT_HOVER, "textposition": "none"}
        traces, ids = tlv._status_traces(pd.Series(c["status"][plain], dtype=object),
                                         {k: v[plain] for k, v in values.items()},
                                         c["ids"][plain], **options)
        if c["faulted"].any():
            traces.append(tlv._fault_trace(c["status"][c["faulted"]],
                                           {k: v[c["faulted"]] for k, v in values.items()},
                                           **options))
            ids.append(c["ids"][c["faulted"]])
        return traces, ids

    def _add(self, columns: dict[str, Any]) -> None:
        """Append the traces of these steps; the legend keeps one entry per status."""
        traces, ids = self._traces(columns)
        named = {t.name for t in self.figure.data if getattr(t, "showlegend", None) is not False}
        for trace in traces:
            trace["legendgroup"] = trace["name"]
            trace["showlegend"] = trace["name"] not in named
            named.add(trace["name"])
        first = len(self.figure.data)
        self.figure.add_traces(traces)
        self.timeline.ids.extend(ids)
        for index in range(first, len(self.figure.data)):
            self.figure.data[index].on_click(self.timeline._on_click_for(index))

    def _appended(self) -> int:
        return len(self.figure.data) - self._base_traces

    def _fold(self) -> None:
        """Replace the appended traces by one set holding every live step."""
        folded = {key: np.concatenate([c[key] for c in self._live]) for key in self._live[0]}
        self._live = [folded]
        old = len(self.figure.data)
        self._add(folded)
        keep = list(range(self._base_traces)) + list(range(old, len(self.figure.data)))
        self.figure.data = [self.figure.data[i] for i in keep]
        self.timeline.ids[:] = [self.timeline.ids[i] for i in keep]
        for index in range(self._base_traces, len(self.figure.data)):
            self.figure.data[index]._click_callbacks.clear()
            self.figure.data[index].on_click(self.timeline._on_click_for(index))

    def _relayout(self, *, new_lanes: bool, first_steps: bool) -> None:
        title = (f"run {self.run_id} · {len(self._seen):,} events · {self._errors:,} errors · "
                 f"{format_ms(self._span)} · live")
        self.timeline.title = title
        update: dict[str, Any] = {"title.text": html.escape(title, quote=False)}
        if new_lanes:
            layout = tlv._layout(title, len(self._labels), self._labels, {})
            update.update({"height": layout["height"],
                           "yaxis.tickvals": layout["yaxis"]["tickvals"],
                           "yaxis.ticktext": layout["yaxis"]["ticktext"]})
        if first_steps:
            started = pd.Timestamp(self._t0, unit="ns", tz="UTC")
            update["xaxis.title.text"] = \
                f"ms since {started:%Y-%m-%d %H:%M:%S.%f}"[:-3] + " UTC"
        self.figure.plotly_relayout(update)
        if first_steps:
            self.figure.layout.annotations = ()  # "no events recorded for this run"

    def _grow_static(self, c: dict[str, Any]) -> None:
        """Keep the static SVG fallback in step with the figure."""
        static = self.timeline._static
        status = c["status"].copy()
        status[c["faulted"]] = tlv.FAULT_TRACE
        static["labels"] = list(self._labels)
        for key, values in (("rel", c["rel"]), ("width", c["width"]), ("y", c["y"]),
                            ("status", status)):
            static[key] = np.concatenate([np.asarray(static[key]), values])


class LiveExecutions(LiveWidget):
    """The overview Gantt of a workflow's runs: a new run is an appended bar, a run that grew
    has its bar restyled in place (that trace's widths and hover only)."""

    def __init__(self, workflow: str, runs: pd.DataFrame,
                 fetch: Callable[[], pd.DataFrame], *, interval: float = LIVE_INTERVAL_S) -> None:
        self.workflow = workflow
        self._fetch = fetch
        timeline = tlv.executions_timeline(runs, workflow)
        self._rows = {str(r["run_id"]): r for r in runs.head(tlv.MAX_OVERVIEW_RUNS)
                      .to_dict("records")}
        self._where: dict[str, tuple[int, int]] = {
            str(run_id): (t, p) for t, ids in enumerate(timeline.ids)
            for p, run_id in enumerate(ids.tolist())}
        self._lanes = len(self._rows)
        self._labels = list(timeline._static["labels"])
        timeline._pick = lambda run_id: tlv.run_summary_html(self._rows[run_id])
        super().__init__(timeline, interval)

    def refresh(self) -> bool:
        runs = self._fetch()
        added, changed = [], []
        for row in runs.to_dict("records"):
            run_id = str(row["run_id"])
            if run_id not in self._rows:
                added.append(row)
            elif _run_changed(self._rows[run_id], row):
                changed.append(row)
            self._rows[run_id] = row
        by_trace: dict[int, list[dict[str, Any]]] = {}
        for row in changed:
            by_trace.setdefault(self._where[str(row["run_id"])][0], []).append(row)
        for index, rows in by_trace.items():
            self._restyle(index, rows)
        if added:
            self._add(sorted(added, key=lambda r: r["started_at"]))
        running = int((runs["state"] == "running").sum()) if "state" in runs else None
        self._say(f"live · {len(self._rows):,} runs" +
                  (f" · {running} running" if running is not None else ""))
        return True

    def _restyle(self, index: int, rows: list[dict[str, Any]]) -> None:
        """Grown runs of one trace: their bars' widths, hovers and colours, sent as that
        trace's restyle (`Plotly.restyle` of one trace index; the others are not sent)."""
        trace = self.figure.data[index]
        x = np.array(trace.x, dtype=float)
        customdata = np.array(trace.customdata, dtype=float)
        hover = np.array(trace.hovertext, dtype=object)
        color = trace.marker.color
        colors = np.full(len(x), color, dtype=object) if isinstance(color, str) \
            else np.asarray(color, dtype=object).copy()
        for row in rows:
            point = self._where[str(row["run_id"])][1]
            duration = float(row["duration_ms"] or 0.0)
            x[point] = max(duration, x[point])
            customdata[point] = duration
            hover[point] = _run_hover(row)
            colors[point] = tlv.STATUS_COLORS.get(str(row["status"]), tlv.OTHER_COLOR)
        update: dict[str, Any] = {"x": [x], "customdata": [customdata], "hovertext": [hover]}
        if len(set(colors.tolist())) > 1 or colors[0] != color:
            update["marker.color"] = [colors]
        self.figure.plotly_restyle(update, trace_indexes=[index])

    def _add(self, rows: list[dict[str, Any]]) -> None:
        frame = pd.DataFrame(rows)
        n = len(frame)
        y = np.arange(self._lanes, self._lanes + n, dtype=np.int32)
        self._lanes += n
        run_ids = frame["run_id"].astype(str).to_numpy(dtype=object)
        self._labels += [r if len(r) <= 28 else r[:27] + "…" for r in run_ids]
        base = pd.DatetimeIndex(frame["started_at"]).tz_convert("UTC").tz_localize(None) \
            .strftime("%Y-%m-%d %H:%M:%S.%f").to_numpy(dtype=object)
        duration = frame["duration_ms"].to_numpy(dtype=float, na_value=0.0)
        hover = np.array([_run_hover(r) for r in rows], dtype=object)
        traces, ids = tlv._status_traces(
            frame["status"], {"base": base, "x": np.maximum(duration, 1.0), "y": y,
                              "hovertext": hover, "customdata": duration},
            run_ids, hovertemplate="%{hovertext}<br>%{customdata:.1f} ms<extra></extra>")
        named = {t.name for t in self.figure.data}
        for trace in traces:
            trace["legendgroup"] = trace["name"]
            trace["showlegend"] = trace["name"] not in named
        first = len(self.figure.data)
        self.figure.add_traces(traces)
        self.timeline.ids.extend(ids)
        for offset, trace_ids in enumerate(ids):
            index = first + offset
            self.figure.data[index].on_click(self.timeline._on_click_for(index))
            for point, run_id in enumerate(trace_ids.tolist()):
                self._where[str(run_id)] = (index, point)
        layout = tlv._layout("", self._lanes, self._labels, {})
        self.figure.plotly_relayout({"height": layout["height"],
                                   "yaxis.tickvals": layout["yaxis"]["tickvals"],
                                   "yaxis.ticktext": layout["yaxis"]["ticktext"]})
        if self.figure.layout.annotations:
            self.figure.layout.annotations = ()  # "no executions"


def _run_changed(old: dict[str, Any], new: dict[str, Any]) -> bool:
    return any(old.get(k) != new.get(k) for k in ("events", "errors", "duration_ms", "status",
                                                  "state"))


def _run_hover(row: dict[str, Any]) -> str:
    """The overview bar's hover, as `executions_timeline` writes it (plus the state)."""
    started = pd.Timestamp(row["started_at"]).tz_convert("UTC").strftime("%Y-%m-%d %H:%M:%S")
    state = f" · {tlv._plotly_text(row['state'])}" if row.get("state") else ""
    return (f"<b>{tlv._plotly_text(row['run_id'])}</b><br>{row['events']} events · "
            f"{row['errors']} errors{state}<br>started {started}")

