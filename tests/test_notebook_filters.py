"""Filters, collapsed spans and re-rooting in the notebook timeline.

Runs are written through the real store (`StoreWriter`, embedded mode) and opened as a user
opens them, `tl.execution(run).timeline(...)`. What a view hides must be GONE from the
figure's data (no trace point, no hover text, no id), in the SVG-bar path and in the WebGL
path, whether asked by keyword, by method or through the ipywidgets controls; the same
FigureWidget is redrawn in place. The pure rules in `tracelab.notebook.view` are checked
against a plain-Python reading of them with hypothesis.
"""
from __future__ import annotations

from collections.abc import Iterator
import re
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.io as pio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tracelab as tl
from tracelab.notebook.timeline import WEBGL_MIN_EVENTS
from tracelab.notebook.view import SpanTree, StepFilter, step_view
from test_jupyterlab_browser import CHROMIUM, jupyter_lab  # noqa: F401  (a fixture)

BASE_NS = 1_714_521_600 * 10**9
RUN = "agent-run"


def step(i: int, *, kind: str = "http", target: str = "api.example.com",
         endpoint: str = "GET /v1/items", latency: float = 5.0, status: str = "ok",
         span: str | None = None, parent: str | None = None, tags: dict | None = None,
         run_id: str = RUN) -> dict:
    return {
        "event_id": f"ev-{i:06d}", "schema": 1, "workflow": "agent-wf", "run_id": run_id,
        "service": "agent", "source": "sdk-py", "kind": kind, "target": target,
        "endpoint": endpoint, "started_at": BASE_NS + i * 1_000_000, "latency_ms": latency,
        "status": status, "status_code": 500 if status == "error" else 200,
        "request": {"body": {"marker": f"payload-marker-{i:06d}"}},
        "response": {"body": {"ok": status == "ok"}},
        "span_id": span, "parent_id": parent, **({"tags": tags} if tags else {}),
    }


def agent_run() -> list[dict]:
    """An agent span holding an LLM call and two tool spans (each with HTTP calls inside), a
    proxied LLM call known only by its tags, and top-level HTTP calls."""
    llm_tags = {"llm.provider": "openai", "llm.model": "gpt-4o", "llm.input_tokens": "12",
                "llm.output_tokens": "3"}
    return [
        step(0, kind="function", target="agent", endpoint="run_agent", latency=90.0,
             span="s-agent"),
        step(1, kind="llm", target="api.openai.com", endpoint="chat.completions gpt-4o",
             latency=40.0, span="s-llm", parent="s-agent", tags=llm_tags),
        step(2, kind="function", target="tools", endpoint="lookup_order", latency=30.0,
             span="s-tool-a", parent="s-agent"),
        step(3, endpoint="GET /orders/7", latency=12.0, span="s-http-3", parent="s-tool-a"),
        step(4, endpoint="GET /customers/7", latency=3.0, status="error", span="s-http-4",
             parent="s-tool-a"),
        step(5, kind="function", target="tools", endpoint="refund", latency=20.0,
             span="s-tool-b", parent="s-agent"),
        step(6, target="payments.example.com", endpoint="POST /refunds", latency=15.0,
             status="error", span="s-http-6", parent="s-tool-b"),
        step(7, target="api.openai.com", endpoint="POST /v1/chat/completions", latency=25.0,
             span="s-http-7", tags=llm_tags),
        step(8, target="cdn.example.com", endpoint="GET /logo.png", latency=0.5),
        step(9, target="payments.example.com", endpoint="GET /Refunds/status", latency=8.0),
    ]


def write(events: list[dict]) -> None:
    from tracelab.store.writer import StoreWriter
    StoreWriter().write(events)


@pytest.fixture
def agent(tracelab_home: Path) -> Iterator[list[dict]]:
    events = agent_run()
    write(events)
    yield events


def shown_ids(widget) -> list[str]:
    """Every event id the figure's traces carry, once each (WebGL repeats them per point)."""
    ids = [str(i) for ids in widget.ids for i in ids]
    return sorted(set(ids))


def figure_points(widget) -> int:
    return sum(len(trace.x) for trace in widget.figure.data)


def hover_text(widget) -> str:
    parts = []
    for trace in widget.figure.data:
        if trace.hovertext is not None:
            parts.extend(str(t) for t in trace.hovertext)
        parts.append(str(trace.hovertemplate))
    return " ".join(parts)


def click(widget, event_id: str) -> None:
    """A front-end click on that event's bar, through the FigureWidget's own handler."""
    for index, ids in enumerate(widget.ids):
        hits = [p for p, e in enumerate(ids) if str(e) == event_id]
        if hits:
            widget.figure._handler_js2py_pointsCallback({"new": {
                "event_type": "plotly_click",
                "points": {"trace_indexes": [index], "point_indexes": [hits[0]],
                           "xs": [0], "ys": [0]},
                "device_state": None, "selector": None}})
            return
    raise AssertionError(f"{event_id} is not drawn")


def ids_where(events: list[dict], keep) -> list[str]:
    return sorted(e["event_id"] for e in events if keep(e))


FILTERS = [
    ({"kind": "function"}, lambda e: e["kind"] == "function"),
    ({"kind": ["llm", "function"]}, lambda e: e["kind"] in ("llm", "function")),
    ({"target": "payments.example.com"}, lambda e: e["target"] == "payments.example.com"),
    ({"status": "error"}, lambda e: e["status"] == "error"),
    ({"text": "refund"}, lambda e: "refund" in e["endpoint"].lower()),
    ({"min_duration_ms": 15}, lambda e: e["latency_ms"] > 15),
    ({"llm_and_tools": True},
     lambda e: e["kind"] in ("llm", "function") or "tags" in e),
    ({"status": "error", "text": "/customers"},
     lambda e: e["status"] == "error" and "/customers" in e["endpoint"]),
]


@pytest.mark.parametrize(("kwargs", "keep"), FILTERS,
                         ids=[str(kwargs)[:40] for kwargs, _keep in FILTERS])
def test_filter_keywords_hide_non_matching_steps(agent: list[dict], kwargs, keep) -> None:
    widget = tl.execution(RUN).timeline(**kwargs)
    expected = ids_where(agent, keep)
    assert expected and len(expected) < len(agent)
    assert shown_ids(widget) == expected
    assert figure_points(widget) == len(expected)  # the hidden rows are not in the data
    text = hover_text(widget)
    shown_endpoints = {e["endpoint"] for e in agent if e["event_id"] in expected}
    for event in agent:
        if event["endpoint"] not in shown_endpoints:
            assert f"<b>{event['endpoint']}</b>" not in text
    assert f"{len(expected)} of {len(agent)} events" in widget.title
    assert widget.shown == len(expected)


def test_llm_and_tools_only_keeps_llm_calls_by_kind_or_tags_and_tool_spans(
        agent: list[dict]) -> None:
    widget = tl.execution(RUN).timeline(llm_and_tools=True)
    assert shown_ids(widget) == ["ev-000000", "ev-000001", "ev-000002", "ev-000005",
                                 "ev-000007"]


def test_a_filter_matching_nothing_says_so(agent: list[dict]) -> None:
    widget = tl.execution(RUN).timeline(text="no-such-endpoint")
    assert figure_points(widget) == 0 and shown_ids(widget) == []
    assert widget.figure.layout.annotations[0].text == "no step matches this view"


def test_controls_refilter_the_same_figure_in_place(agent: list[dict]) -> None:
    widget = tl.execution(RUN).timeline()
    figure = widget.figure
    assert widget.children[0] is figure and widget.children[2] is widget.controls
    assert widget.controls.layout.order == "-1"  # drawn above the figure
    assert figure_points(widget) == len(agent)
    widget.control["status"].value = ["error"]
    assert widget.figure is figure
    assert shown_ids(widget) == ["ev-000004", "ev-000006"]
    widget.control["text"].value = "refunds"
    assert shown_ids(widget) == ["ev-000006"]
    assert widget.filters == StepFilter.of(status="error", text="refunds")
    widget.control["status"].value = []
    assert shown_ids(widget) == ["ev-000006", "ev-000009"]  # case-insensitive text
    widget.control["min_duration_ms"].value = 10.0
    assert shown_ids(widget) == ["ev-000006"]
    widget.control["clear"].click()
    assert figure_points(widget) == len(agent) and not widget.filters.active
    assert widget.control["text"].value == "" and widget.control["min_duration_ms"].value == 0
    widget.control["llm_and_tools"].value = True
    widget.control["kind"].value = ["llm"]
    assert shown_ids(widget) == ["ev-000001"]
    assert "1 of 10 steps shown" in widget.control["info"].value
    widget.filter(kind=None, llm_and_tools=False, target="cdn.example.com")
    assert widget.control["target"].value == ["cdn.example.com"]  # controls follow the API
    assert shown_ids(widget) == ["ev-000008"]


def test_a_click_after_refiltering_opens_the_right_payload(agent: list[dict]) -> None:
    widget = tl.execution(RUN).timeline()
    widget.filter(status="error")
    click(widget, "ev-000006")
    assert "payload-marker-000006" in widget.panel.value
    assert "payload-marker-000004" not in widget.panel.value


def test_collapsed_span_hides_its_descendants_and_expands_again(agent: list[dict]) -> None:
    widget = tl.execution(RUN).timeline(collapsed=["s-agent"])
    assert shown_ids(widget) == ["ev-000000", "ev-000007", "ev-000008", "ev-000009"]
    assert "collapsed: 6 nested steps hidden" in hover_text(widget)
    widget.expand("s-agent")
    assert shown_ids(widget) == sorted(e["event_id"] for e in agent)
    assert "collapsed:" not in hover_text(widget)
    widget.collapse("ev-000002")  # a span's event id names it too
    assert widget.collapsed == ("s-tool-a",)
    assert "ev-000003" not in shown_ids(widget) and "ev-000004" not in shown_ids(widget)
    assert "ev-000002" in shown_ids(widget) and "ev-000006" in shown_ids(widget)


def test_collapse_button_toggles_the_clicked_span(agent: list[dict]) -> None:
    widget = tl.execution(RUN).timeline()
    fold = widget.control["collapse"]
    assert fold.disabled  # nothing clicked yet
    click(widget, "ev-000008")  # a plain call: nothing nested to fold
    assert fold.disabled
    click(widget, "ev-000005")
    assert not fold.disabled and fold.description == "collapse span"
    fold.click()
    assert "ev-000006" not in shown_ids(widget) and "ev-000005" in shown_ids(widget)
    assert fold.description == "expand span"
    fold.click()
    assert "ev-000006" in shown_ids(widget)
    widget.collapse("s-agent").collapse("s-tool-b")
    widget.control["expand_all"].click()
    assert widget.collapsed == () and figure_points(widget) == len(agent)


def front_end_click(widget, event_id: str, **keys: bool) -> None:
    """A click as JupyterLab sends it: the FigureWidget's synced message trait is set (with
    the modifier keys held), Plotly dispatches it to the traces, then clears it."""
    for index, ids in enumerate(widget.ids):
        hits = [p for p, e in enumerate(ids) if str(e) == event_id]
        if hits:
            widget.figure._js2py_pointsCallback = {
                "event_type": "plotly_click",
                "points": {"trace_indexes": [index], "point_indexes": [hits[0]],
                           "xs": [0], "ys": [0]},
                "device_state": {"alt": False, "ctrl": False, "meta": False, "shift": False,
                                 "button": 0, "buttons": 1, **keys},
                "selector": None}
            return
    raise AssertionError(f"{event_id} is not drawn")


def test_shift_click_on_a_span_bar_collapses_and_expands_it(agent: list[dict]) -> None:
    widget = tl.execution(RUN).timeline()
    front_end_click(widget, "ev-000002")  # a plain click only shows the payload
    assert "payload-marker-000002" in widget.panel.value and widget.collapsed == ()
    assert "shift-click: collapse" in hover_text(widget)
    front_end_click(widget, "ev-000002", shift=True)
    assert widget.collapsed == ("s-tool-a",)
    assert "ev-000003" not in shown_ids(widget) and "ev-000004" not in shown_ids(widget)
    assert "collapsed: 2 nested steps hidden" in hover_text(widget)
    outlined = [(str(i), w) for trace in widget.figure.data if trace.name == "ok"
                for i, w in zip(widget.ids[list(widget.figure.data).index(trace)],
                                np.atleast_1d(trace.marker.line.width)) if w]
    assert outlined == [("ev-000002", 2.5)]  # the collapsed span's bar is outlined
    front_end_click(widget, "ev-000002", alt=True)
    assert widget.collapsed == () and "ev-000004" in shown_ids(widget)
    front_end_click(widget, "ev-000008", shift=True)  # nothing nested: nothing to fold
    assert widget.collapsed == () and figure_points(widget) == len(agent)


def test_reroot_shows_one_span_and_a_way_back(agent: list[dict]) -> None:
    widget = tl.execution(RUN).timeline(root="s-tool-a")
    assert shown_ids(widget) == ["ev-000002", "ev-000003", "ev-000004"]
    labels = list(widget.figure.layout.yaxis.ticktext)
    assert labels[0] == "agent"  # the root is the top level of the view, not 1 deep
    assert widget.control["whole_run"].disabled is False
    widget.control["whole_run"].click()
    assert widget.root is None and figure_points(widget) == len(agent)
    click(widget, "ev-000005")
    widget.control["reroot"].click()
    assert widget.root == "s-tool-b"
    assert shown_ids(widget) == ["ev-000005", "ev-000006"]
    widget.filter(status="error")  # filters apply inside the re-rooted view
    assert shown_ids(widget) == ["ev-000006"]
    widget.reroot(None)
    assert shown_ids(widget) == ["ev-000004", "ev-000006"]


def test_root_or_collapsed_naming_no_span_is_an_error(agent: list[dict]) -> None:
    with pytest.raises(ValueError, match="'nope' is not a span of this run"):
        tl.execution(RUN).timeline(root="nope")
    with pytest.raises(ValueError, match="not a span"):
        tl.execution(RUN).timeline(collapsed=["ev-999999"])
    with pytest.raises(TypeError, match="unknown filter"):
        tl.execution(RUN).timeline().filter(colour="red")


def test_static_fallback_draws_the_view(agent: list[dict]) -> None:
    widget = tl.execution(RUN).timeline(status="error")
    svg = widget._repr_mimebundle_()["image/svg+xml"]
    assert svg.count('fill="#E45756"') == 2 and 'fill="#4C78A8"' not in svg


def test_no_controls_when_asked(agent: list[dict]) -> None:
    widget = tl.execution(RUN).timeline(controls=False, kind="llm")
    assert widget.controls is None and len(widget.children) == 2
    assert shown_ids(widget) == ["ev-000001"]


# -- the WebGL path -------------------------------------------------------------------------

def big_run(n_spans: int, children: int) -> list[dict]:
    """`n_spans` function spans in a row, each holding `children` HTTP calls; every 10th call
    an error, every 4th to a second target."""
    events, i = [], 0
    for s in range(n_spans):
        events.append(step(i, kind="function", target="tools", endpoint=f"tool_{s % 5}",
                           latency=children * 1.0, span=f"span-{s}", run_id="big"))
        i += 1
        for c in range(children):
            events.append(step(i, endpoint=f"GET /items/{c % 7}", latency=0.5 + c % 3,
                               status="error" if c % 10 == 0 else "ok",
                               target="b.example.com" if c % 4 == 0 else "a.example.com",
                               parent=f"span-{s}", run_id="big"))
            i += 1
    return events


@pytest.fixture(scope="module")
def big_events(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[dict]]:
    home = tmp_path_factory.mktemp("filters") / "tracelab-home"
    events = big_run(300, 19)  # 6,000 steps
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRACELAB_HOME", str(home))
        for var in ("TRACELAB_REDIS_URL", "TRACELAB_STORE", "TRACELAB_DISABLED"):
            mp.delenv(var, raising=False)
        write(events)
        yield events


def webgl_ids(widget) -> list[str]:
    for ids in widget.ids:
        assert len(ids) % 3 == 0 and (ids[0::3] == ids[1::3]).all()
    return sorted(str(i) for ids in widget.ids for i in ids[0::3])


def test_big_run_filters_hide_steps_in_the_webgl_figure(big_events: list[dict]) -> None:
    assert len(big_events) >= 3 * WEBGL_MIN_EVENTS
    widget = tl.execution("big").timeline(target="a.example.com")
    expected = ids_where(big_events, lambda e: e["target"] == "a.example.com")
    assert len(expected) >= WEBGL_MIN_EVENTS
    assert {trace.type for trace in widget.figure.data} == {"scattergl"}
    assert webgl_ids(widget) == expected
    assert figure_points(widget) == 3 * len(expected)
    figure = widget.figure
    widget.control["status"].value = ["error"]  # few left: SVG bars, same FigureWidget
    expected = ids_where(big_events, lambda e: e["target"] == "a.example.com"
                         and e["status"] == "error")
    assert widget.figure is figure
    assert {trace.type for trace in figure.data} == {"bar"}
    assert shown_ids(widget) == expected and figure_points(widget) == len(expected)
    widget.control["status"].value = []
    widget.control["text"].value = "/items/3"
    expected = ids_where(big_events, lambda e: e["target"] == "a.example.com"
                         and "/items/3" in e["endpoint"])
    assert shown_ids(widget) == expected


def test_big_run_collapse_and_reroot_on_the_webgl_path(big_events: list[dict]) -> None:
    widget = tl.execution("big").timeline(collapsed=[f"span-{s}" for s in range(0, 300, 2)])
    hidden = {f"span-{s}" for s in range(0, 300, 2)}
    expected = ids_where(big_events, lambda e: e["parent_id"] not in hidden)
    assert len(expected) >= WEBGL_MIN_EVENTS
    assert {trace.type for trace in widget.figure.data} == {"scattergl"}
    assert webgl_ids(widget) == expected
    assert "collapsed: 19 nested steps hidden" in hover_text(widget)
    widget.expand_all()
    assert figure_points(widget) == 3 * len(big_events)
    widget.reroot("span-42")
    assert shown_ids(widget) == ids_where(
        big_events, lambda e: "span-42" in (e["span_id"], e["parent_id"]))
    click(widget, "ev-000841")  # span 42's first call: 42 * 20 + 1
    assert "payload-marker-000841" in widget.panel.value


def test_big_run_payloads_stay_lazy_after_refiltering(big_events: list[dict]) -> None:
    widget = tl.execution("big").timeline(min_duration_ms=1)
    assert {trace.type for trace in widget.figure.data} == {"scattergl"}
    widget.filter(min_duration_ms=None, status="ok")
    figure_json = pio.to_json(widget.figure, validate=False)
    assert "payload-marker-" not in figure_json
    first = ids_where(big_events, lambda e: e["status"] == "ok")[5]
    click(widget, first)
    assert f"payload-marker-{first[3:]}" in widget.panel.value


# -- the controls in a real JupyterLab ----------------------------------------------------------

def test_controls_hide_bars_in_jupyterlab(jupyter_lab: str, tmp_path: Path) -> None:
    """JupyterLab in headless Chromium: the `%%tracelab_record` cell's timeline shows its
    controls above the figure; typing into the endpoint filter hides the other bars, and
    clearing it brings them back (the front end's own widgets, through the kernel)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1500, "height": 1000})
        try:
            page.goto(jupyter_lab)
            page.get_by_text(re.compile(r"Python 3 \(ipykernel\) \| Idle")).wait_for(
                timeout=60_000)
            page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
            page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
            bars = page.locator(".js-plotly-plot .barlayer .point")
            bars.first.wait_for(timeout=90_000)
            assert bars.count() == 8
            text = page.locator("input[placeholder='contains …']")
            figure_box = page.locator(".js-plotly-plot").first.bounding_box()
            text_box = text.bounding_box()
            assert text_box is not None and figure_box is not None
            assert text_box["y"] < figure_box["y"]  # the controls sit above the figure
            text.fill("/status")
            text.press("Enter")
            page.wait_for_function(
                "document.querySelectorAll('.js-plotly-plot .barlayer .point').length === 1",
                timeout=30_000)
            info = page.get_by_text("1 of 8 steps shown")
            info.wait_for(timeout=30_000)
            page.screenshot(path=str(tmp_path / "filtered.png"), full_page=True)
            page.get_by_role("button", name="clear filters").click()
            page.wait_for_function(
                "document.querySelectorAll('.js-plotly-plot .barlayer .point').length === 8",
                timeout=30_000)
        except Exception:
            page.screenshot(path=str(tmp_path / "jupyterlab.png"), full_page=True)
            print("screenshot:", tmp_path / "jupyterlab.png")
            raise
        finally:
            browser.close()


# -- the pure rules, property-based -----------------------------------------------------------

KINDS = ["http", "llm", "function", "email"]
TARGETS = ["a", "b", "c"]


@st.composite
def runs(draw) -> pd.DataFrame:
    """A random run: some steps are spans, each step's parent an earlier span (or none, or a
    span that is missing from the run)."""
    n = draw(st.integers(1, 40))
    rows, spans = [], []
    for i in range(n):
        parent = draw(st.sampled_from([None, "missing", *spans])) if spans or i % 3 else None
        span = f"s{i}" if draw(st.booleans()) else None
        if span:
            spans.append(span)
        rows.append({"event_id": f"e{i}", "kind": draw(st.sampled_from(KINDS)),
                     "target": draw(st.sampled_from(TARGETS)),
                     "status": draw(st.sampled_from(["ok", "error"])),
                     "endpoint": draw(st.sampled_from(["GET /A", "post /b", "chat", "x"])),
                     "latency_ms": draw(st.sampled_from([0.0, 1.0, 5.0, 12.5, 100.0])),
                     "span_id": span, "parent_id": parent,
                     "tags": draw(st.sampled_from([None, '{"llm.model":"m"}', '{"k":"v"}']))})
    return pd.DataFrame(rows)


def ancestors(frame: pd.DataFrame, row: int) -> list[str]:
    by_span = {s: i for i, s in reversed(list(enumerate(frame["span_id"]))) if isinstance(s, str)}
    out, parent = [], frame["parent_id"].iloc[row]
    while parent in by_span and parent not in out:
        out.append(parent)
        parent = frame["parent_id"].iloc[by_span[parent]]
    return out


filters = st.builds(
    StepFilter.of, kind=st.none() | st.lists(st.sampled_from(KINDS), max_size=2),
    target=st.none() | st.sampled_from(TARGETS), status=st.none() | st.sampled_from(["error"]),
    text=st.sampled_from(["", "a", "/B", "chat"]),
    min_duration_ms=st.sampled_from([None, 0, 1.0, 12.5]), llm_and_tools=st.booleans())


@settings(max_examples=150, deadline=None)
@given(frame=runs(), rule=filters)
def test_filter_mask_is_the_plain_reading_of_each_rule(frame: pd.DataFrame,
                                                       rule: StepFilter) -> None:
    def keeps(row: dict) -> bool:
        return ((rule.kind is None or row["kind"] in rule.kind)
                and (rule.target is None or row["target"] == next(iter(rule.target)))
                and (rule.status is None or row["status"] in rule.status)
                and rule.text.lower() in row["endpoint"].lower()
                and (not rule.min_duration_ms or row["latency_ms"] > rule.min_duration_ms)
                and (not rule.llm_and_tools or row["kind"] in ("llm", "function")
                     or row["tags"] == '{"llm.model":"m"}'))
    assert rule.mask(frame).tolist() == [keeps(r) for r in frame.to_dict("records")]


@settings(max_examples=150, deadline=None)
@given(frame=runs(), data=st.data())
def test_collapse_hides_exactly_the_descendants_and_reroot_keeps_the_subtree(
        frame: pd.DataFrame, data) -> None:
    tree = SpanTree.of(frame["span_id"], frame["parent_id"])
    spans = [s for s in frame["span_id"] if isinstance(s, str)]
    if not spans:
        assert step_view(frame, tree).keep.all()
        return
    folded = data.draw(st.lists(st.sampled_from(spans), max_size=3, unique=True))
    view = step_view(frame, tree, collapsed=folded)
    expected = [not set(ancestors(frame, i)) & set(folded) for i in range(len(frame))]
    assert view.keep.tolist() == expected
    assert step_view(frame, tree, collapsed=[]).keep.all()  # expanded again: everything
    root = data.draw(st.sampled_from(spans))
    root_row = spans_first_row(frame, root)
    view = step_view(frame, tree, root=root)
    expected = [i == root_row or root in ancestors(frame, i) for i in range(len(frame))]
    assert view.keep.tolist() == expected
    assert view.depth[root_row] == 0
    assert (view.depth[np.flatnonzero(view.keep)] >= 0).all()


def spans_first_row(frame: pd.DataFrame, span: str) -> int:
    return int(frame.index[frame["span_id"] == span][0])
