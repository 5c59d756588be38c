"""A faulted call on the notebook timeline: its own hatched "fault" trace, the rule and action in
the hover, and the rule pretty-printed in the payload panel; a normal call shows none of it.

The run is written to a real store (`StoreWriter`, embedded mode) with the tags a fault rule
leaves on a call (`Fault.tags()` plus `replay=fault`), read back through `tl.execution`, and the
bars are clicked through the FigureWidget's own front-end message handler.
"""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import tracelab as tl
from event_factory import make_event
from tracelab.notebook.timeline import FAULT_COLOR, FAULT_TRACE, fault_html
from test_notebook_api import HOSTILE, click

RULE = {"id": "stripe-429", "target": "api.stripe.com", "endpoint": "POST /v1/refunds",
        "status": 429, "retry_after": 1, "times": 2}


def fault_tags(rule: dict[str, Any], action: str, **extra: str) -> dict[str, str]:
    """The tags a fault rule leaves on the call it hit (CHAOS.md section 1, `Fault.tags()`)."""
    return {"fault": str(rule["id"]), "fault.action": action,
            "fault.rule": json.dumps(rule, separators=(",", ":")), **extra}


def faulted_run(run_id: str = "chaos-1", rule: dict[str, Any] = RULE) -> list[dict[str, Any]]:
    """A replayed run: a hit, the faulted refund (429 from the rule), the retry answered from
    the recording, and a plain call."""
    events = [
        make_event("chaos", run_id, seq=0, tags={"replay": "hit"}),
        make_event("chaos", run_id, seq=1, status="error", endpoint="POST /v1/refunds",
                   status_code=429, tags=fault_tags(rule, "status", replay="fault")),
        make_event("chaos", run_id, seq=2, endpoint="POST /v1/refunds",
                   tags={"replay": "hit"}),
        make_event("chaos", run_id, seq=3, tags={"env": "test"}),
    ]
    events[1]["response"] = {"status_code": 429, "headers": {"Retry-After": "1"},
                             "body": {"error": "rate limited"}}
    return events


def write(events: list[dict[str, Any]]) -> None:
    from tracelab.store.writer import StoreWriter

    StoreWriter().write(events)


def trace_names(widget) -> list[str]:
    return [trace.name for trace in widget.figure.data]


def test_faulted_call_gets_its_own_marked_trace_and_hover(tracelab_home: Path) -> None:
    events = faulted_run()
    write(events)
    widget = tl.execution("chaos-1").timeline()
    names = trace_names(widget)
    assert FAULT_TRACE in names
    fault_index = names.index(FAULT_TRACE)
    fault = widget.figure.data[fault_index]
    assert list(widget.ids[fault_index]) == [events[1]["event_id"]]
    assert fault.marker.pattern.shape == "/" and fault.marker.line.color == FAULT_COLOR
    assert "fault: stripe-429 (status)" in fault.hovertext[0]
    assert "replay fault" in fault.hovertext[0]
    others = [str(t) for i, trace in enumerate(widget.figure.data) if i != fault_index
              for t in trace.hovertext]
    assert len(others) == 3 and not any("fault:" in t for t in others)
    assert any("replay hit" in t for t in others)
    # the other bars keep their status traces, the faulted one is in none of them
    assert sum(len(trace.x) for trace in widget.figure.data) == 4
    svg = widget.static_svg()
    ET.fromstring(svg)
    assert f'fill="{FAULT_COLOR}"' in svg


def test_clicking_the_faulted_bar_shows_the_rule_and_a_normal_one_does_not(
        tracelab_home: Path) -> None:
    events = faulted_run()
    write(events)
    widget = tl.execution("chaos-1").timeline()
    names = trace_names(widget)
    click(widget, names.index(FAULT_TRACE), 0)
    panel = widget.panel.value
    assert "Fault injected by TraceLab" in panel
    assert "rule <code>stripe-429</code>" in panel and "action <code>status</code>" in panel
    assert "replay <code>fault</code>" in panel
    assert "&quot;retry_after&quot;: 1,\n" in panel  # the rule, pretty-printed
    assert panel.index("Fault injected") < panel.index("Request")  # its own section, first
    assert events[1]["event_id"] in panel and "rate limited" in panel
    click(widget, names.index("ok"), 0)
    assert "Fault injected" not in widget.panel.value and "Request" in widget.panel.value


def test_fault_section_escapes_the_rule_and_tolerates_bad_tags() -> None:
    hostile = {**RULE, "id": HOSTILE, "body": HOSTILE}
    html = fault_html({"tags": fault_tags(hostile, "status")})
    assert HOSTILE not in html and "&lt;img src=x" in html
    assert fault_html({"tags": {"fault": "r1", "fault.rule": "{not json"}}).count("{not json") == 1
    assert fault_html({"tags": json.dumps({"replay": "hit"})}) == ""
    assert fault_html({"tags": None}) == "" and fault_html({}) == ""


def test_the_tags_the_fault_engine_leaves_are_what_the_panel_reads() -> None:
    from tracelab.replay.faults import Call, FaultSet, parse_rules

    fault = FaultSet(parse_rules(RULE)).decide_call(
        Call("http", "api.stripe.com", "POST /v1/refunds", {"amount": 100}))
    assert fault is not None
    html = fault_html({"tags": {**fault.tags(), "replay": "fault"}})
    assert "rule <code>stripe-429</code>" in html and "action <code>status</code>" in html
    assert "&quot;retry_after&quot;: 1," in html and "replay <code>fault</code>" in html
