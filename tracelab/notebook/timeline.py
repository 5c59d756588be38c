"""Gantt timelines: a Plotly FigureWidget of bars beside a payload panel, in one ipywidget.

Owns the figure (lanes, bars, hover, click-to-inspect) and its static fallback. Reads nothing
from the store itself: callers pass the events and a function that loads one event's payload.

Why bars and not `px.timeline`: a handful of `go.Bar` traces (one per status) with `base=` start
times carry numpy arrays straight into the figure, where `px.timeline` builds a trace per colour
through a DataFrame pipeline and date arithmetic; `bench/bench_timeline.py` measures both.
The execution timeline's axis is milliseconds since the run's first event, which is what one
reads when debugging a run; the overview of many executions uses a date axis.

A call that a fault rule hit (tag `fault` = the rule id, `fault.action`, `fault.rule` = the
rule as compact JSON; see `tracelab.replay.faults.Fault.tags`) is drawn in its own "fault"
trace, hatched with an orange outline, so an injected failure never reads as the vendor's own
error; its hover names the rule and action and the payload panel opens with the rule.
"""
from __future__ import annotations

import html
import importlib.util
import math
import sys
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import ipywidgets as widgets
import numpy as np
import orjson
import pandas as pd
import plotly.graph_objects as go

from tracelab.notebook.repr import (
    box, esc, format_ms, join_names, llm_usage_text, payload_html, placeholder_html, pretty,
    status_html,
)
from tracelab.notebook.view import (SpanTree, StepFilter, View, span_row, step_view,
                                    tags_of)

STATUS_COLORS = {"ok": "#4C78A8", "error": "#E45756"}
OTHER_COLOR = "#9E9E9E"
COLLAPSED_COLOR = "#222222"  # the outline of a collapsed span's bar
FAULT_COLOR = "#F58518"
FAULT_TRACE = "fault"  # the trace (and legend entry) holding every faulted call
FAULT_TAG, FAULT_ACTION_TAG, FAULT_RULE_TAG, REPLAY_TAG = \
    "fault", "fault.action", "fault.rule", "replay"
# An LLM call's hover shows its tokens (these tags) and its cost (the events frame's
# `llm_cost_usd`, priced at query time by tracelab.analysis.cost) when it has them.
LLM_TOKEN_TAGS = ("llm.input_tokens", "llm.cached_input_tokens", "llm.output_tokens")
COST_COLUMN = "llm_cost_usd"
MAX_SUBROWS = 8          # concurrent calls in one lane spread over at most this many rows
MAX_OVERVIEW_RUNS = 1000  # the overview Gantt shows the newest runs, one row each
FIGURE_WIDTH = 760
PANEL_WIDTH = "400px"
_MIN_BAR_FRACTION = 0.002  # zero-latency calls still get a clickable sliver
_SVG_WIDTH = 900
_SVG_LABEL_WIDTH = 170
_SVG_ROW = 18

WEBGL_MIN_EVENTS = 2000  # from this many events on, WebGL line segments instead of SVG bars
MAX_HOVER_TRACES = 400   # WebGL: a trace per distinct hover text up to this many, then per point
_SEGMENT_WIDTH = 9       # px: a WebGL segment as thick as a bar

Loader = Callable[[str], Mapping[str, Any]]


class _DeferredModule(types.ModuleType):
    """Stands in `sys.modules` for a module not yet imported; the first attribute it lacks
    imports the real module, which then replaces it there and fills it in."""

    def __getattr__(self, attr: str) -> Any:
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        real = importlib.import_module(self.__name__)
        vars(self).update({k: v for k, v in vars(real).items() if k != "__spec__"})
        return getattr(real, attr)


def _defer_import(name: str) -> None:
    """Put a stand-in for `name` in `sys.modules` that imports it on first real use.

    Why: Plotly's widget module imports `nbformat` when it loads (for `fig.show()`'s mime
    renderer), and nbformat's jsonschema compiles some 40 `lark` grammars (rfc3987_syntax)
    while importing: about 1.1 s of a kernel's first timeline, for a module the widget never
    uses. `importlib.util.LazyLoader` does not help: importing a module already in
    `sys.modules` reads its `__spec__`, which makes LazyLoader load it at once.
    """
    if name in sys.modules:
        return
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return
    if spec is None:
        return
    module = _DeferredModule(name)
    module.__spec__ = spec
    sys.modules[name] = module


# -- lanes ------------------------------------------------------------------------------------

def _ns(values: pd.Series) -> np.ndarray:
    return pd.DatetimeIndex(values).as_unit("ns").asi8


def span_depths(span_id: Sequence[Any], parent_id: Sequence[Any]) -> tuple[np.ndarray,
                                                                            np.ndarray]:
    """Nesting depth of each event under `@trace` spans, and which events are orphans.

    An orphan names a parent that is not among the run's events (still running, or lost): it
    is drawn at the top level and says so in its hover, never dropped.
    """
    tree = SpanTree.of(span_id, parent_id)
    return tree.depth(), tree.orphan


def _pack(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Sub-row per interval (given in start order) so that overlapping intervals don't overlap.

    Only clusters of mutually overlapping calls need first-fit packing: a call that starts
    after everything before it has ended frees every row, and a cluster of two is rows 0 and 1.
    """
    n = len(starts)
    out = np.zeros(n, dtype=np.int64)
    if n < 2:
        return out
    running_end = np.maximum.accumulate(ends)
    opens = np.ones(n, dtype=bool)
    opens[1:] = starts[1:] >= running_end[:-1]
    if opens.all():
        return out
    cluster = np.cumsum(opens) - 1
    first = np.flatnonzero(opens)
    position = np.arange(n) - first[cluster]
    size = np.bincount(cluster)
    small = size[cluster] <= 2
    out[small] = position[small]
    for c in np.flatnonzero(size > 2).tolist():
        lo, hi = first[c], first[c] + size[c]
        out[lo:hi] = _first_fit(starts[lo:hi].tolist(), ends[lo:hi].tolist())
    return out


def _first_fit(starts: list[float], ends: list[float]) -> list[int]:
    rows: list[int] = []
    row_ends: list[float] = []
    for start, end in zip(starts, ends):
        for k, row_end in enumerate(row_ends):
            if row_end <= start:
                row_ends[k] = end
                rows.append(k)
                break
        else:
            if len(row_ends) < MAX_SUBROWS:
                row_ends.append(end)
                rows.append(len(row_ends) - 1)
            else:  # too many at once: share the row that frees first
                k = row_ends.index(min(row_ends))
                row_ends[k] = max(row_ends[k], end)
                rows.append(k)
    return rows


def assign_lanes(service: np.ndarray, depth: np.ndarray, start: np.ndarray,
                 end: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Row of each event and the rows' labels: services in order of first appearance, each
    with its nested depths below it, and extra rows only where calls overlap."""
    codes, services = pd.factorize(pd.Series(service).fillna("?"), sort=False)
    sub = np.zeros(len(codes), dtype=np.int64)
    group = codes.astype(np.int64) * 1024 + np.minimum(depth, 1023)
    order = np.lexsort((start, group))
    sorted_group = group[order]
    bounds = np.flatnonzero(np.diff(sorted_group)) + 1
    for chunk in np.split(order, bounds):
        if len(chunk) > 1:
            sub[chunk] = _pack(start[chunk], end[chunk])
    lane_key = group * MAX_SUBROWS + sub
    keys, y = np.unique(lane_key, return_inverse=True)
    labels = []
    for key in keys.tolist():
        g, s = divmod(key, MAX_SUBROWS)
        svc, d = divmod(g, 1024)
        label = str(services[svc]) if d == 0 else f"{services[svc]} ›{'›' * (d - 1)} {d}"
        labels.append(label + (f" ({s + 1})" if s else ""))
    return y.reshape(-1).astype(np.int32), labels


# -- tags -------------------------------------------------------------------------------------



def tag_columns(tags: Sequence[Any], names: Sequence[str]) -> dict[str, np.ndarray]:
    """One object array per tag name (None where the event lacks it), each distinct tags text
    parsed once: a run repeats the same few tag sets over thousands of events."""
    n = len(tags)
    out = {name: np.full(n, None, dtype=object) for name in names}
    if not n:
        return out
    try:
        codes, uniques = pd.factorize(pd.Series(tags, dtype=object))
    except TypeError:  # dicts (unhashable): factorize their JSON text instead
        codes, uniques = pd.factorize(pd.Series([_tags_key(v) for v in tags], dtype=object))
    for code, text in enumerate(uniques):
        parsed = tags_of(text)
        present = [name for name in names if parsed.get(name) is not None]
        if present:
            rows = codes == code
            for name in present:
                out[name][rows] = str(parsed[name])
    return out


def _tags_key(value: Any) -> str | None:
    if isinstance(value, Mapping):
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    return value if isinstance(value, str) else None


def fault_html(event: Mapping[str, Any]) -> str:
    """The payload panel's fault section (empty for a call no fault rule hit): which rule,
    which action, and the rule itself pretty-printed, as injected."""
    tags = tags_of(event.get("tags"))
    rule_id = tags.get(FAULT_TAG)
    if rule_id is None:
        return ""
    rule_text = tags.get(FAULT_RULE_TAG)
    if isinstance(rule_text, (Mapping, list)):
        rule = pretty(rule_text)
    elif not rule_text:
        rule = "(rule not recorded)"
    else:
        try:
            rule = pretty(orjson.loads(rule_text))
        except (orjson.JSONDecodeError, TypeError):
            rule = str(rule_text)
    replay = tags.get(REPLAY_TAG)
    facts = [f"rule <code>{esc(rule_id)}</code>",
             f"action <code>{esc(tags.get(FAULT_ACTION_TAG, '?'))}</code>"]
    if replay is not None:
        facts.append(f"replay <code>{esc(replay)}</code>")
    return box(f'<div class="tl-fault" style="border-left:3px solid {FAULT_COLOR};'
               f'padding-left:6px;margin-bottom:8px">'
               f'<div class="tl-head">⚡ Fault injected by TraceLab</div>'
               f"<div>{' · '.join(facts)}</div>"
               f'<div class="tl-dim">fault rule</div><pre>{esc(rule)}</pre></div>')


# -- the widget -------------------------------------------------------------------------------

def _missing(value: Any) -> bool:
    """None, pandas' NA, or NaN (what `pd.factorize` turns a None into)."""
    return value is None or value is pd.NA or value != value


def _plotly_text(value: Any) -> str:
    """User text made safe for Plotly's hover, which reads `<b>`-style tags and entities."""
    return "" if value is None or value is pd.NA or value != value else \
        html.escape(str(value), quote=False)


def combination_text(columns: Sequence[pd.Series],
                     render: Callable[..., str]) -> np.ndarray:
    """`render(*values)` for every row, called once per distinct combination of the columns.

    Hover text repeats a lot (a run has few distinct endpoint/target/status combinations), so
    the strings are made per combination and spread by index: thousands of events cost a
    handful of Python calls.
    """
    n = len(columns[0])
    combined = np.zeros(n, dtype=np.int64)
    codes_per_column, uniques_per_column = [], []
    for column in columns:
        codes, uniques = pd.factorize(column, use_na_sentinel=False)
        codes_per_column.append(codes)
        uniques_per_column.append(np.asarray(uniques, dtype=object))
        combined = pd.factorize(combined * max(len(uniques), 1) + codes)[0]
    _, first, inverse = np.unique(combined, return_index=True, return_inverse=True)
    values = [u[c[first]] for c, u in zip(codes_per_column, uniques_per_column)]
    texts = np.array([render(*row) for row in zip(*values)] or [""], dtype=object)
    return texts[inverse.reshape(-1)]


class StaticSvgFallback:
    """Mixin for a widget with `static_svg()`: the SVG goes beside the widget in the display
    data, so a notebook saved and opened without a kernel (GitHub, nbviewer) still shows it."""

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        data = super()._repr_mimebundle_(**kwargs) or {}  # type: ignore[misc]
        try:
            data["image/svg+xml"] = self.static_svg()  # type: ignore[attr-defined]
        except Exception:  # a static fallback must never break the live display
            pass
        return data


class TimelineWidget(StaticSvgFallback, widgets.HBox):
    """A FigureWidget (first child) and a payload panel (second child).

    Clicking a bar fills the panel. Front ends without widgets (nbconvert, GitHub, VS Code
    without the widget manager) get the static SVG that `_repr_mimebundle_` adds.
    """

    def __init__(self, figure: go.FigureWidget, panel: widgets.HTML, *, ids: list[np.ndarray],
                 pick: Callable[[str], str], static: dict[str, Any], title: str) -> None:
        super().__init__(children=[figure, panel],
                         layout=widgets.Layout(flex_flow="row wrap", align_items="flex-start"))
        self.figure = figure
        self.panel = panel
        self.title = title
        self.ids = ids  # event (or run) ids per trace, in point order: ids[trace][point]
        self._pick = pick
        self._static = static
        self._bind_clicks()

    def _bind_clicks(self) -> None:
        for index, trace in enumerate(self.figure.data):
            trace.on_click(self._on_click_for(index))

    def _on_click_for(self, index: int) -> Callable[..., None]:
        def on_click(trace: Any, points: Any, state: Any) -> None:
            # Plotly calls every trace's callback on a click, most of them with no points.
            if points.point_inds:
                self.select(str(self.ids[index][points.point_inds[0]]))
        return on_click

    def select(self, item_id: str) -> None:
        """Show one event (or run) in the panel, as a click on its bar does."""
        self.panel.value = placeholder_html(f"loading {item_id} …")
        try:
            self.panel.value = self._pick(item_id)
        except Exception as exc:  # the panel reports it; the widget keeps working
            self.panel.value = box(f'<div class="tl-err">could not load {esc(item_id)}: '
                                   f"{esc(type(exc).__name__)}: {esc(exc)}</div>")

    def static_svg(self) -> str:
        return static_svg(**self._static, title=self.title)


    def __repr__(self) -> str:
        return f"<Timeline {self.title}: interactive in JupyterLab, static SVG elsewhere>"


def _make_widget(figure: go.FigureWidget, *, ids: list[np.ndarray],
                 pick: Callable[[str], str], static: dict[str, Any], title: str,
                 hint: str) -> TimelineWidget:
    return TimelineWidget(figure, _panel(hint), ids=ids, pick=pick, static=static,
                          title=title)


def _panel(hint: str) -> widgets.HTML:
    return widgets.HTML(value=placeholder_html(hint),
                        layout=widgets.Layout(width=PANEL_WIDTH, max_height="560px",
                                              overflow="auto", padding="0 0 0 8px"))


def _figure(traces: list[dict[str, Any]], layout: dict[str, Any]) -> go.FigureWidget:
    _defer_import("nbformat")  # before Plotly's widget module first loads
    try:
        # The arrays are built here and known valid: skip Plotly's per-property validation,
        # the biggest single cost of building a large figure, then turn it back on.
        figure = go.FigureWidget(data=traces, layout=layout, _validate=False)
    except TypeError:
        return go.FigureWidget(data=traces, layout=layout)
    figure._validate = True
    for trace in figure.data:
        trace._validate = True
    figure.layout._validate = True
    return figure


# A small explicit template: Plotly's default one is deep-copied into every figure, which
# costs more than all the bars of a 10,000-event run.
_TEMPLATE = {"layout": {
    "font": {"family": "-apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif",
             "size": 12, "color": "#2a3f5f"},
    "hoverlabel": {"align": "left"},
    "paper_bgcolor": "white", "plot_bgcolor": "white",
    "xaxis": {"gridcolor": "#EBF0F8", "linecolor": "#C8D4E3", "zeroline": False},
    "yaxis": {"linecolor": "#C8D4E3"},
}}


def _layout(title: str, n_lanes: int, labels: list[str], xaxis: dict[str, Any]) -> dict[str, Any]:
    height = int(min(900, max(260, 110 + 22 * n_lanes)))
    return {
        "title": {"text": html.escape(title, quote=False), "font": {"size": 14}, "x": 0.01},
        "width": FIGURE_WIDTH, "height": height, "barmode": "overlay", "bargap": 0.25,
        "hovermode": "closest", "dragmode": "zoom", "clickmode": "event",
        "margin": {"l": 10, "r": 10, "t": 60, "b": 45},
        "legend": {"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 1,
                   "xanchor": "right"},
        "template": _TEMPLATE,
        "xaxis": {"showgrid": True, **xaxis},
        "yaxis": {"tickmode": "array", "tickvals": list(range(n_lanes)),
                  "ticktext": [html.escape(t, quote=False) for t in labels],
                  "autorange": "reversed", "fixedrange": True, "automargin": True,
                  "showgrid": False},
    }


def _status_traces(status: pd.Series, columns: dict[str, np.ndarray], ids: np.ndarray,
                   **trace_options: Any) -> tuple[list[dict[str, Any]], list[np.ndarray]]:
    codes, uniques = pd.factorize(status.fillna("?"))
    present = [str(u) for u in uniques]
    names = [s for s in ("ok", "error") if s in present]
    names += sorted(set(present) - {"ok", "error"})
    traces, trace_ids = [], []
    for name in names:
        mask = codes == present.index(name)
        traces.append({**trace_options,
            "type": "bar", "orientation": "h", "name": name, "width": 0.8,
            "marker": {"color": STATUS_COLORS.get(name, OTHER_COLOR), "line": {"width": 0}},
            **{key: values[mask] for key, values in columns.items()},
        })
        trace_ids.append(ids[mask])
    return traces, trace_ids


class _Run:
    """One run's per-step arrays, computed once; every view of the run draws a subset."""

    def __init__(self, events: pd.DataFrame) -> None:
        events = events.reset_index(drop=True)
        n = len(events)
        self.events, self.n = events, n
        self.run_id = str(events["run_id"].iloc[0]) if n and "run_id" in events else "?"
        start_ns = _ns(events["started_at"]) if n else np.zeros(0, dtype=np.int64)
        self.t0 = int(start_ns.min()) if n else 0
        self.rel = (start_ns - self.t0) / 1e6
        self.latency = events["latency_ms"].to_numpy(dtype=float, na_value=0.0) if n \
            else np.zeros(0)
        self.tree = SpanTree.of(events["span_id"] if "span_id" in events else [None] * n,
                                events["parent_id"] if "parent_id" in events else [None] * n)
        self.depth = self.tree.depth()
        self.has_children = self.tree.has_children()
        self.service = events["service"].to_numpy(dtype=object) if n else np.zeros(0, object)
        self.status = events["status"].to_numpy(dtype=object) if n else np.zeros(0, object)
        self.tags = tag_columns(events["tags"].tolist() if "tags" in events else [None] * n,
                                (FAULT_TAG, FAULT_ACTION_TAG, REPLAY_TAG, *LLM_TOKEN_TAGS))
        self.faulted = pd.notna(self.tags[FAULT_TAG]).astype(bool)
        self.hover = _event_hover(events, self.tree.orphan, self.tags) if n \
            else np.zeros(0, dtype=object)
        self.ids = events["event_id"].to_numpy(dtype=object) if n else np.zeros(0, object)
        self.span_ids = events["span_id"].to_numpy(dtype=object) if "span_id" in events \
            else np.full(n, None, dtype=object)
        self.started = pd.Timestamp(self.t0, unit="ns", tz="UTC") if n else None

    def span_id(self, ref: str) -> str:
        """The span id `ref` names (a span id, or the event id of a step that is a span)."""
        return str(self.span_ids[span_row(self.events, self.tree, ref)])

    def row_of_event(self, event_id: str) -> int | None:
        hits = np.flatnonzero(self.ids == event_id)
        return int(hits[0]) if len(hits) else None


def _draw(run: _Run, view: View, title: str | None) -> tuple[
        list[dict[str, Any]], list[np.ndarray], dict[str, Any], dict[str, Any], str]:
    """Traces, their ids, layout, static-SVG inputs and title for the steps `view` keeps.

    Times stay measured from the run's first step whatever is hidden, so a step reads the
    same `+ms` in every view; lanes are packed again over the steps shown only."""
    idx = np.flatnonzero(view.keep)
    shown = len(idx)
    rel, latency = run.rel[idx], run.latency[idx]
    end = rel + latency
    span = float(end.max()) if shown else 0.0
    extent = span - float(rel.min()) if shown else 0.0
    y, labels = assign_lanes(run.service[idx], view.depth[idx], rel, end)
    width = np.maximum(latency, max(extent, 1.0) * _MIN_BAR_FRACTION)
    status = run.status[idx]
    faulted = run.faulted[idx]
    ids = run.ids[idx]
    hover = run.hover[idx]
    spans = np.flatnonzero(run.has_children[idx])
    if len(spans):
        hover = hover.copy()
        hover[spans] = hover[spans] + _EXPANDED_HINT
        for row, count in view.hidden_under.items():
            at = int(np.searchsorted(idx, row))
            hover[at] = run.hover[row] + _COLLAPSED_HINT.format(count=count)
    columns = {"base": rel, "x": width, "y": y, "hovertext": hover, "customdata": latency,
               "text": rel}
    options = {"hovertemplate": _EVENT_HOVER, "textposition": "none"}
    plain = ~faulted
    if shown >= WEBGL_MIN_EVENTS:
        traces, trace_ids = segment_traces(status, faulted, rel, width, y, hover, latency, ids)
    else:
        traces, trace_ids = _status_traces(
            pd.Series(status[plain], dtype=object),
            {key: values[plain] for key, values in columns.items()}, ids[plain], **options)
        if faulted.any():
            traces.append(_fault_trace(status[faulted],
                                       {key: values[faulted] for key, values in columns.items()},
                                       **options))
            trace_ids.append(ids[faulted])
        _outline_collapsed(traces, trace_ids, run.ids[list(view.hidden_under)])
    errors = int((status == "error").sum())
    count = f"{shown:,} events" if shown == run.n else f"{shown:,} of {run.n:,} events"
    title = title or f"run {run.run_id} · {count} · {errors:,} errors · {format_ms(span)}"
    axis_title = (f"ms since {run.started:%Y-%m-%d %H:%M:%S.%f}"[:-3] + " UTC") \
        if run.started is not None else "ms"
    layout = _layout(title, len(labels), labels, {"title": {"text": axis_title}})
    layout["annotations"] = [] if shown else [{
        "text": "no events recorded for this run" if not run.n else "no step matches this view",
        "showarrow": False, "xref": "paper", "yref": "paper", "x": 0.5, "y": 0.5}]
    static_status = status.copy()
    static_status[faulted] = FAULT_TRACE
    static = {"labels": labels, "rel": rel, "width": width, "y": y, "status": static_status,
              "axis": "ms"}
    return traces, trace_ids, layout, static, title


_EXPANDED_HINT = "<br><i>▾ shift-click: collapse</i>"
_COLLAPSED_HINT = ("<br><b>▸ collapsed: {count:,} nested steps hidden</b> · "
                   "<i>shift-click: expand</i>")


def _outline_collapsed(traces: list[dict[str, Any]], trace_ids: list[np.ndarray],
                       collapsed: np.ndarray) -> None:
    """Give the bars of collapsed spans a dark outline (the fault trace keeps its own)."""
    if not len(collapsed):
        return
    for trace, ids in zip(traces, trace_ids):
        folded = np.isin(ids, collapsed)
        if trace["name"] != FAULT_TRACE and folded.any():
            trace["marker"] = {**trace["marker"], "line": {
                "width": np.where(folded, 2.5, 0.0), "color": COLLAPSED_COLOR}}


class ExecutionTimeline(TimelineWidget):
    """The Gantt of one execution with its view controls: filters that hide steps, collapsed
    spans and a re-rooted view, changed by keyword, by method or by the controls above the
    figure; every change redraws the same FigureWidget in place (its traces replaced, its
    payloads still loaded only on click).

    A click shows a step's payload; a shift- or alt-click on a span's bar collapses or
    expands it (once Plotly has dispatched the click: a redraw inside the dispatch would pull
    the traces from under it). The controls are the third child, drawn first (CSS `order`),
    so `children[0]` stays the figure and `children[1]` the payload panel; `.control` names
    them, `.shown` counts the steps drawn.
    """

    def __init__(self, run: _Run, load_event: Loader, *, filters: StepFilter,
                 collapsed: Iterable[str], root: str | None, controls: bool,
                 title: str | None) -> None:
        self._run = run
        self._filters = filters
        self._root = None if root is None else run.span_id(root)
        self._collapsed = tuple(dict.fromkeys(run.span_id(ref) for ref in collapsed))
        self._fixed_title = title
        self.selected: str | None = None
        self._quiet = False
        self._pending_toggle: str | None = None
        view = self._view()
        self.shown = int(view.keep.sum())
        traces, trace_ids, layout, static, shown_title = _draw(run, view, title)

        def pick(event_id: str) -> str:
            event = load_event(event_id)
            return fault_html(event) + payload_html(event)

        hint = ("Click a bar to see that call's request and response here; shift-click a "
                "span's bar to collapse or expand it.")
        if controls:
            hint += " A clicked span can also be collapsed or made the view's root above."
        panel = _panel(hint)
        super().__init__(_figure(traces, layout), panel, ids=trace_ids, pick=pick,
                         static=static, title=shown_title)
        self.figure.observe(self._after_points, names="_js2py_pointsCallback")
        self.controls: widgets.Box | None = None
        self.control: dict[str, widgets.DOMWidget] = {}
        if controls:
            self.controls = self._build_controls()
            self.children = (*self.children, self.controls)
            self._sync_controls()

    # -- state --------------------------------------------------------------------------------

    @property
    def filters(self) -> StepFilter:
        return self._filters

    @property
    def collapsed(self) -> tuple[str, ...]:
        """Span ids whose nested steps are hidden."""
        return self._collapsed

    @property
    def root(self) -> str | None:
        """The span id the view is rooted at (None: the whole run)."""
        return self._root

    def _view(self) -> View:
        return step_view(self._run.events, self._run.tree, self._filters,
                         collapsed=self._collapsed, root=self._root, depth=self._run.depth)

    def filter(self, **changes: Any) -> ExecutionTimeline:
        """Change some filters (`kind=`, `target=`, `status=`, `text=`, `min_duration_ms=`,
        `llm_and_tools=`; None or empty clears one) and redraw."""
        self._filters = self._filters.changed(**changes)
        return self.refresh()

    def clear_filters(self) -> ExecutionTimeline:
        self._filters = StepFilter()
        return self.refresh()

    def collapse(self, span: str) -> ExecutionTimeline:
        """Hide the steps nested under `span` (a span id, or the event id of a span)."""
        span_id = self._run.span_id(span)
        if span_id not in self._collapsed:
            self._collapsed = (*self._collapsed, span_id)
        return self.refresh()

    def expand(self, span: str) -> ExecutionTimeline:
        """Show again the steps nested under `span`."""
        span_id = self._run.span_id(span)
        self._collapsed = tuple(s for s in self._collapsed if s != span_id)
        return self.refresh()

    def toggle(self, span: str) -> ExecutionTimeline:
        span_id = self._run.span_id(span)
        return self.expand(span_id) if span_id in self._collapsed else self.collapse(span_id)

    def expand_all(self) -> ExecutionTimeline:
        self._collapsed = ()
        return self.refresh()

    def reroot(self, span: str | None) -> ExecutionTimeline:
        """Show only `span` and the steps nested under it; None goes back to the whole run."""
        self._root = None if span is None else self._run.span_id(span)
        return self.refresh()

    def refresh(self) -> ExecutionTimeline:
        """Redraw the figure for the current view, in place."""
        view = self._view()
        traces, trace_ids, layout, static, title = _draw(self._run, view, self._fixed_title)
        self.shown = int(view.keep.sum())
        figure = self.figure
        with figure.batch_update():
            figure.data = ()
        figure.add_traces(traces)
        with figure.batch_update():
            figure.update_layout(layout, overwrite=True)
        self.ids, self._static, self.title = trace_ids, static, title
        self._bind_clicks()
        self._sync_controls()
        return self

    def select(self, item_id: str) -> None:
        self.selected = item_id
        super().select(item_id)
        self._sync_controls()

    def _on_click_for(self, index: int) -> Callable[..., None]:
        def on_click(trace: Any, points: Any, state: Any) -> None:
            if not points.point_inds:
                return
            event_id = str(self.ids[index][points.point_inds[0]])
            if state is not None and (state.shift or state.alt):
                self._pending_toggle = event_id
            self.select(event_id)
        return on_click

    def _after_points(self, change: dict[str, Any]) -> None:
        """Plotly clears the click message once every trace has had it: toggle then."""
        if change["new"] or self._pending_toggle is None:
            return
        event_id, self._pending_toggle = self._pending_toggle, None
        self.selected = event_id
        span = self._selected_span()
        if span is not None:
            self.toggle(span)

    def _selected_span(self) -> str | None:
        """The clicked step's span id when it has nested steps, else None."""
        row = None if self.selected is None else self._run.row_of_event(self.selected)
        if row is None or not self._run.has_children[row]:
            return None
        return str(self._run.span_ids[row])

    # -- controls -----------------------------------------------------------------------------

    def _build_controls(self) -> widgets.Box:
        events = self._run.events

        def values(name: str, chosen: frozenset[str] | None) -> list[str]:
            present = events[name].dropna().unique() if name in events else []
            return sorted({str(value) for value in present} | set(chosen or ()))

        def tags(name: str, chosen: frozenset[str] | None) -> widgets.TagsInput:
            return widgets.TagsInput(value=[], allowed_tags=values(name, chosen),
                                     allow_duplicates=False, description=name,
                                     placeholder=f"any {name}", tooltip=f"only these {name}s",
                                     layout=widgets.Layout(width="auto",
                                                           margin="2px 12px 2px 0"))

        f = self._filters
        self._kind, self._target, self._status = (tags("kind", f.kind),
                                                  tags("target", f.target),
                                                  tags("status", f.status))
        self._text = widgets.Text(description="endpoint", placeholder="contains …",
                                  continuous_update=False, layout=widgets.Layout(width="32%"))
        self._min_ms = widgets.FloatText(description="over ms", value=0.0, step=10,
                                         tooltip="hide steps not longer than this (0: off)",
                                         layout=widgets.Layout(width="18%"))
        self._llm = widgets.Checkbox(description="LLM & tools only", indent=False,
                                     layout=widgets.Layout(width="auto"))
        self._clear = widgets.Button(description="clear filters", icon="times",
                                     layout=widgets.Layout(width="auto"))
        self._fold = widgets.Button(description="collapse / expand span", icon="compress",
                                    tooltip="hide or show the steps nested under the "
                                            "clicked span", layout=widgets.Layout(width="auto"))
        self._unfold = widgets.Button(description="expand all", icon="expand",
                                      layout=widgets.Layout(width="auto"))
        self._reroot = widgets.Button(description="re-root here", icon="sitemap",
                                      tooltip="show only the clicked span and what it holds",
                                      layout=widgets.Layout(width="auto"))
        self._whole = widgets.Button(description="whole run", icon="arrow-up",
                                     layout=widgets.Layout(width="auto"))
        self._info = widgets.HTML()
        self.control = {"kind": self._kind, "target": self._target, "status": self._status,
                        "text": self._text, "min_duration_ms": self._min_ms,
                        "llm_and_tools": self._llm, "clear": self._clear,
                        "collapse": self._fold, "expand_all": self._unfold,
                        "reroot": self._reroot, "whole_run": self._whole, "info": self._info}
        for control, name in ((self._kind, "kind"), (self._target, "target"),
                              (self._status, "status"), (self._text, "text"),
                              (self._min_ms, "min_duration_ms"),
                              (self._llm, "llm_and_tools")):
            control.observe(self._on_control(name), names="value")
        self._clear.on_click(lambda _: self.clear_filters())
        self._fold.on_click(lambda _: self._on_fold())
        self._unfold.on_click(lambda _: self.expand_all())
        self._reroot.on_click(lambda _: self._on_reroot())
        self._whole.on_click(lambda _: self.reroot(None))
        row = widgets.Layout(flex_flow="row wrap", align_items="center", width="100%")
        return widgets.VBox(
            [widgets.HBox([self._kind, self._target, self._status], layout=row),
             widgets.HBox([self._text, self._min_ms, self._llm, self._clear], layout=row),
             widgets.HBox([self._fold, self._unfold, self._reroot, self._whole, self._info],
                          layout=row)],
            layout=widgets.Layout(width="100%", order="-1", margin="0 0 6px 0"))

    def _on_control(self, name: str) -> Callable[[dict[str, Any]], None]:
        def on_change(change: dict[str, Any]) -> None:
            if not self._quiet:
                value = change["new"]
                self.filter(**{name: list(value) if isinstance(value, (list, tuple))
                               else value})
        return on_change

    def _on_fold(self) -> None:
        span = self._selected_span()
        if span is not None:
            self.toggle(span)

    def _on_reroot(self) -> None:
        span = self._selected_span()
        if span is not None:
            self.reroot(span)

    def _sync_controls(self) -> None:
        """Show the current view in the controls without their observers redrawing again."""
        if self.controls is None:
            return
        f = self._filters
        self._quiet = True
        try:
            self._kind.value = sorted(f.kind or ())
            self._target.value = sorted(f.target or ())
            self._status.value = sorted(f.status or ())
            self._text.value = f.text
            self._min_ms.value = f.min_duration_ms or 0.0
            self._llm.value = f.llm_and_tools
        finally:
            self._quiet = False
        span = self._selected_span()
        self._fold.disabled = self._reroot.disabled = span is None
        self._fold.description = "expand span" if span in self._collapsed else "collapse span"
        self._whole.disabled = self._root is None
        self._unfold.disabled = not self._collapsed
        self._clear.disabled = not f.active
        facts = [f"{self.shown:,} of {self._run.n:,} steps shown"]
        if self._collapsed:
            facts.append(f"{len(self._collapsed)} span(s) collapsed")
        if self._root is not None:
            facts.append(f"rooted at span <code>{esc(self._root)}</code>")
        self._info.value = f'<span class="tl-dim">{" · ".join(facts)}</span>'


def execution_timeline(events: pd.DataFrame, load_event: Loader, *,
                       title: str | None = None,
                       kind: str | Iterable[str] | None = None,
                       target: str | Iterable[str] | None = None,
                       status: str | Iterable[str] | None = None,
                       text: str | None = None,
                       min_duration_ms: float | None = None,
                       llm_and_tools: bool = False,
                       collapsed: Iterable[str] = (),
                       root: str | None = None,
                       controls: bool = True) -> ExecutionTimeline:
    """The Gantt of one execution: lanes per service, nested spans below their parent, a bar
    per event from its start for its latency, coloured by status; a click shows the payload.

    Filters HIDE the steps that do not match (see `tracelab.notebook.view`): `kind`, `target`,
    `status` (one value or several), `text` (in the endpoint, any case), `min_duration_ms`
    (latency strictly above), `llm_and_tools` (LLM calls and function/tool steps).
    `collapsed` spans hide what is nested under them; `root` shows one span and its nested
    steps. Spans are named by span id or by their event id. `controls=False` leaves out the
    ipywidgets controls above the figure. A `root` or `collapsed` naming no span of the run is
    a ValueError."""
    filters = StepFilter.of(kind=kind, target=target, status=status, text=text,
                            min_duration_ms=min_duration_ms, llm_and_tools=llm_and_tools)
    return ExecutionTimeline(_Run(events), load_event, filters=filters, collapsed=collapsed,
                             root=root, controls=controls, title=title)


_EVENT_HOVER = "%{hovertext}<br>%{customdata:.1f} ms at +%{text:.1f} ms<extra></extra>"
_SEGMENT_HOVER = "<br>%{customdata:.1f} ms at +%{text:.1f} ms<extra></extra>"


def _interleave(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """`first[0], second[0], NaN, first[1], …`: segments that WebGL draws as one polyline,
    broken at every NaN."""
    out = np.full((len(first), 3), np.nan)
    out[:, 0], out[:, 1] = first, second
    return out.reshape(-1)


def segment_traces(status: np.ndarray, faulted: np.ndarray, rel: np.ndarray,
                   width: np.ndarray, y: np.ndarray, hover: np.ndarray, latency: np.ndarray,
                   ids: np.ndarray) -> tuple[list[dict[str, Any]], list[np.ndarray]]:
    """WebGL (`scattergl`) traces for a big run: each event a thick horizontal segment.

    Why: Plotly's SVG bars make one DOM node per event and stall the browser in the tens of
    thousands; a `scattergl` trace draws its segments in one WebGL call. Only numbers travel
    per point (binary arrays in the widget state): events that share their hover text (few
    distinct texts in a run) get one trace whose hover template carries the text, so the text
    is sent once per group, not once per point; past `MAX_HOVER_TRACES` texts it is per point.
    Every per-point array is 1-D numeric, which the widget sends as a binary buffer (Plotly
    turns any other array into a Python list first). A trace's ids are per point (three
    points per event), so a click maps straight back to its event.
    """
    group = np.where(faulted, FAULT_TRACE,
                     pd.Series(status, dtype=object).fillna("?").astype(str).to_numpy())
    names = [s for s in ("ok", "error") if s in set(group.tolist())]
    names += sorted(set(group.tolist()) - {"ok", "error", FAULT_TRACE})
    names += [FAULT_TRACE] if faulted.any() else []
    text_codes, texts = pd.factorize(pd.Series(hover, dtype=object), use_na_sentinel=False)
    per_text = len(texts) <= MAX_HOVER_TRACES
    traces, trace_ids = [], []
    for name in names:
        in_group = group == name
        color = FAULT_COLOR if name == FAULT_TRACE else STATUS_COLORS.get(name, OTHER_COLOR)
        codes = np.unique(text_codes[in_group]) if per_text else [None]
        for k, code in enumerate(codes):
            idx = np.flatnonzero(in_group & (text_codes == code) if per_text else in_group)
            trace: dict[str, Any] = {
                "type": "scattergl", "mode": "lines", "name": name, "legendgroup": name,
                "showlegend": k == 0, "line": {"color": color, "width": _SEGMENT_WIDTH},
                "x": _interleave(rel[idx], rel[idx] + width[idx]),
                "y": _interleave(y[idx], y[idx]).astype(np.float32),
                "customdata": _interleave(latency[idx], latency[idx]).astype(np.float32),
                "text": _interleave(rel[idx], rel[idx]).astype(np.float32),  # hover only
            }
            if per_text:  # '%' escaped so user text never reads as a template field
                trace["hovertemplate"] = str(texts[code]).replace("%", "&#37;") + _SEGMENT_HOVER
            else:
                trace["hovertext"] = np.repeat(hover[idx], 3)
                trace["hovertemplate"] = "%{hovertext}" + _SEGMENT_HOVER
            traces.append(trace)
            trace_ids.append(np.repeat(ids[idx], 3))
    return traces, trace_ids


def _fault_trace(status: np.ndarray, columns: dict[str, np.ndarray],
                 **trace_options: Any) -> dict[str, Any]:
    """The faulted calls: their status colour, hatched, with an orange outline."""
    colors = np.array([STATUS_COLORS.get(str(s), OTHER_COLOR) for s in status], dtype=object)
    return {**trace_options,
            "type": "bar", "orientation": "h", "name": FAULT_TRACE, "width": 0.8,
            "marker": {"color": colors, "line": {"width": 2, "color": FAULT_COLOR},
                       "pattern": {"shape": "/", "fgcolor": FAULT_COLOR, "fillmode": "overlay",
                                   "solidity": 0.4}},
            **columns}


def _event_hover(events: pd.DataFrame, orphan: np.ndarray,
                 tags: Mapping[str, np.ndarray]) -> np.ndarray:
    """The text part of each bar's hover; latency and start are numbers in the template."""
    n = len(events)

    def column(name: str) -> pd.Series:
        return events[name] if name in events else pd.Series([None] * n)

    def render(endpoint: Any, kind: Any, target: Any, status: Any, code: Any,
               is_orphan: bool, fault: Any = None, action: Any = None,
               replay: Any = None, tokens_in: Any = None, cached: Any = None,
               tokens_out: Any = None, cost: Any = None) -> str:
        code_text = "—" if code is None or code is pd.NA or code != code else str(int(code))
        text = (f"<b>{_plotly_text(endpoint)}</b><br>{_plotly_text(kind)} → "
                f"{_plotly_text(target)}<br>status {_plotly_text(status)} · code {code_text}")
        if not _missing(fault):
            text += (f"<br><b>⚡ fault: {_plotly_text(fault)} "
                     f"({_plotly_text('?' if _missing(action) else action)})</b>")
        if not _missing(replay):
            text += f"<br>replay {_plotly_text(replay)}"
        usage = llm_usage_text({name: value for name, value in zip(
            LLM_TOKEN_TAGS, (tokens_in, cached, tokens_out)) if not _missing(value)},
            None if _missing(cost) else cost)
        if usage:
            text += f"<br>{_plotly_text(usage)}"
        return text + ("<br><i>parent span not recorded</i>" if is_orphan else "")

    tagged = [pd.Series(tags[name]) for name in (FAULT_TAG, FAULT_ACTION_TAG, REPLAY_TAG)]
    llm = [pd.Series(tags[name]) for name in LLM_TOKEN_TAGS]
    llm.append(pd.Series(events[COST_COLUMN].to_numpy(dtype=object)) if COST_COLUMN in events
               else pd.Series([None] * n, dtype=object))
    if not any(series.notna().any() for series in llm):
        llm = []  # no LLM call: fewer columns to combine
    if not llm and not any(series.notna().any() for series in tagged):
        tagged = []  # a run that is neither replayed nor faulted: fewer columns to combine
    return combination_text([column("endpoint"), column("kind"), column("target"),
                             column("status"), column("status_code"), pd.Series(orphan),
                             *tagged, *llm], render)


def executions_timeline(runs: pd.DataFrame, workflow: str,
                        describe_run: Callable[[str], str] | None = None) -> TimelineWidget:
    """The overview Gantt: one bar per execution on a date axis, coloured by status, with
    counts in the hover; a click shows the run's summary (or `describe_run(run_id)`)."""
    runs = runs.head(MAX_OVERVIEW_RUNS)
    n = len(runs)
    start_ns = _ns(runs["started_at"]) if n else np.zeros(0, dtype=np.int64)
    t0 = int(start_ns.min()) if n else 0
    rel = (start_ns - t0) / 1e6
    duration = runs["duration_ms"].to_numpy(dtype=float, na_value=0.0) if n else np.zeros(0)
    span = float((rel + duration).max()) if n else 0.0
    width = np.maximum(duration, max(span, 1.0) * _MIN_BAR_FRACTION)
    order = np.argsort(start_ns, kind="stable")
    y = np.empty(n, dtype=np.int32)
    y[order] = np.arange(n, dtype=np.int32)
    run_ids = runs["run_id"].astype(str).to_numpy(dtype=object) if n else np.zeros(0, object)
    labels = [run_ids[i] if len(run_ids[i]) <= 28 else run_ids[i][:27] + "…" for i in order]
    status = runs["status"] if n else pd.Series([], dtype=object)
    base = pd.DatetimeIndex(runs["started_at"]).tz_convert("UTC").tz_localize(None) \
        .strftime("%Y-%m-%d %H:%M:%S.%f").to_numpy(dtype=object) if n \
        else np.zeros(0, dtype=object)
    hover = np.array([
        f"<b>{_plotly_text(r)}</b><br>{e} events · {x} errors<br>started {b[:19]}"
        for r, e, x, b in zip(run_ids, runs["events"].tolist(), runs["errors"].tolist(), base)],
        dtype=object)
    traces, trace_ids = _status_traces(
        status, {"base": base, "x": width, "y": y, "hovertext": hover, "customdata": duration},
        run_ids, hovertemplate="%{hovertext}<br>%{customdata:.1f} ms<extra></extra>")
    errors = int((status == "error").sum())
    more = "" if len(runs) < MAX_OVERVIEW_RUNS else f" (newest {MAX_OVERVIEW_RUNS:,})"
    title = f"{workflow}: {n:,} executions{more} · {errors:,} with errors"
    layout = _layout(title, n, labels, {"type": "date", "title": {"text": "UTC"}})
    if not n:
        layout["annotations"] = [{"text": "no executions", "showarrow": False,
                                  "xref": "paper", "yref": "paper", "x": 0.5, "y": 0.5}]
    figure = _figure(traces, layout)
    by_id = {str(r["run_id"]): r for r in runs.to_dict("records")}

    def pick(run_id: str) -> str:
        if describe_run is not None:
            return describe_run(run_id)
        return run_summary_html(by_id[run_id])

    started = pd.Timestamp(t0, unit="ns", tz="UTC") if n else None
    static = {"labels": labels, "rel": rel, "width": width, "y": y,
              "status": status.to_numpy(dtype=object),
              "axis": f"ms since {started:%Y-%m-%d %H:%M:%S} UTC" if started else "ms"}
    return _make_widget(figure, ids=trace_ids, pick=pick, static=static, title=title,
                        hint="Click a bar to see that execution's summary here.")


def run_summary_html(run: Mapping[str, Any]) -> str:
    run_id = str(run.get("run_id"))
    return box(
        f'<div class="tl-head">run <code>{esc(run_id)}</code></div>'
        f"<div>{status_html(run.get('status'))} · {esc(run.get('events'))} events · "
        f"{esc(run.get('errors'))} errors · {format_ms(run.get('duration_ms'))}</div>"
        f'<div class="tl-dim">started {esc(run.get("started_at"))}</div>'
        f"<div>services: {join_names(run.get('services') or [])}</div>"
        f"<div>targets: {join_names(run.get('targets') or [])}</div>"
        f"<div>tags: <code>{esc(run.get('tags') or {})}</code></div>"
        f"<div class=\"tl-dim\">open it: <code>tl.execution({esc(repr(run_id))})"
        f".timeline()</code></div>")


# -- static fallback --------------------------------------------------------------------------

def static_svg(*, labels: list[str], rel: np.ndarray, width: np.ndarray, y: np.ndarray,
               status: np.ndarray, axis: str, title: str) -> str:
    """The same Gantt as a plain SVG image, bars merged per pixel so its size stays bounded."""
    plot_w = _SVG_WIDTH - _SVG_LABEL_WIDTH - 20
    n_lanes = max(len(labels), 1)
    top, bottom = 30, 34
    height = top + n_lanes * _SVG_ROW + bottom
    span = float((rel + width).max()) if len(rel) else 1.0
    scale = plot_w / max(span, 1e-9)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{_SVG_WIDTH}" '
             f'height="{height}" font-family="sans-serif" font-size="11">',
             '<rect width="100%" height="100%" fill="white"/>',
             f'<text x="4" y="16" font-size="13">{esc(title)}</text>']
    for lane, label in enumerate(labels):
        ly = top + lane * _SVG_ROW
        parts.append(f'<text x="{_SVG_LABEL_WIDTH - 6}" y="{ly + 13}" text-anchor="end">'
                     f"{esc(label[:30])}</text>")
    x0 = np.floor(rel * scale).astype(np.int64)
    x1 = np.maximum(x0 + 1, np.ceil((rel + width) * scale).astype(np.int64))
    for name in pd.unique(status):
        mask = status == name
        color = FAULT_COLOR if name == FAULT_TRACE else STATUS_COLORS.get(str(name), OTHER_COLOR)
        order = np.lexsort((x0[mask], y[mask]))
        lanes, starts, ends = y[mask][order], x0[mask][order], x1[mask][order]
        rects = []
        cur = None
        for lane, a, b in zip(lanes.tolist(), starts.tolist(), ends.tolist()):
            if cur is not None and cur[0] == lane and a <= cur[2]:
                cur[2] = max(cur[2], b)
                continue
            if cur is not None:
                rects.append(cur)
            cur = [lane, a, b]
        if cur is not None:
            rects.append(cur)
        parts.extend(
            f'<rect x="{_SVG_LABEL_WIDTH + a}" y="{top + lane * _SVG_ROW + 3}" width="{b - a}" '
            f'height="{_SVG_ROW - 6}" fill="{color}"/>' for lane, a, b in rects)
    axis_y = top + n_lanes * _SVG_ROW + 4
    parts.append(f'<line x1="{_SVG_LABEL_WIDTH}" y1="{axis_y}" x2="{_SVG_LABEL_WIDTH + plot_w}" '
                 f'y2="{axis_y}" stroke="#999"/>')
    for k in range(6):
        value = span * k / 5
        tx = _SVG_LABEL_WIDTH + plot_w * k / 5
        parts.append(f'<text x="{tx:.0f}" y="{axis_y + 14}" text-anchor="middle">'
                     f"{_tick(value)}</text>")
    parts.append(f'<text x="{_SVG_LABEL_WIDTH + plot_w / 2:.0f}" y="{axis_y + 28}" '
                 f'text-anchor="middle" fill="#666">{esc(axis)}</text></svg>')
    return "".join(parts)


def _tick(ms: float) -> str:
    if not math.isfinite(ms):
        return ""
    return f"{ms:,.0f}" if ms >= 10 else f"{ms:.1f}"
