"""The notebook face of an LLM call: the payload panel shows the conversation (roles, tool calls
and results, the completion) with the raw JSON one click away in a <details>, and the timeline's
hover shows tokens and cost. The run is recorded by a subprocess with the real openai and
anthropic clients against the LLM-shaped loopback server (embedded mode), read back through
`tl.execution`, and bars are clicked through the FigureWidget's own front-end handler."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import tracelab as tl
from llm_wire import ANSWER, LLMWire
from test_conversation_api import record_llm_run
from test_notebook_api import click

from tracelab.notebook.repr import payload_html

# gpt-4o-mini: (120 - 100 cached) * $0.15 + 100 * $0.075 + 30 * $0.60 per million tokens
CHAT_COST = "$0.0000285"


@pytest.fixture(scope="module")
def recorded_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The LLM run recorded once for the module (a subprocess importing openai and anthropic):
    every test below only reads it."""
    home = tmp_path_factory.mktemp("conv-notebook") / "tracelab-home"
    with LLMWire() as wire:
        record_llm_run(home, wire.url, "llm-run")
    return home


@pytest.fixture
def run(recorded_home: Path, tracelab_home: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TRACELAB_HOME", str(recorded_home))
    return tl.execution("llm-run")


def bar(widget, event_id: str) -> tuple[int, int]:
    for trace_index, ids in enumerate(widget.ids):
        for point_index, value in enumerate(ids):
            if value == event_id:
                return trace_index, point_index
    raise AssertionError(f"no bar for {event_id}")


def hover(widget, event_id: str) -> str:
    trace, point = bar(widget, event_id)
    return str(widget.figure.data[trace].hovertext[point])


def event_ids(run, endpoint: str) -> list[str]:
    return run.events.loc[run.events["endpoint"] == endpoint, "event_id"].tolist()


def test_hover_shows_tokens_and_cost_only_for_llm_calls(run) -> None:
    widget = run.timeline()
    chat = event_ids(run, "POST /v1/chat/completions")[0]
    assert "120 in (100 cached) · 30 out tokens · " + CHAT_COST in hover(widget, chat)
    (claude,) = event_ids(run, "POST /v1/messages")
    assert "120 in (100 cached) · 30 out tokens · $" in hover(widget, claude)
    (plain,) = event_ids(run, "POST /not-llm")
    assert "tokens" not in hover(widget, plain) and "$" not in hover(widget, plain)


def test_hover_of_a_model_without_a_price_shows_tokens_and_no_cost(run) -> None:
    (gemini,) = event_ids(run, "POST /v1beta/models/acme-llm:generateContent")
    assert run.events.set_index("event_id").loc[gemini, "llm_cost_usd"] != \
        run.events.set_index("event_id").loc[gemini, "llm_cost_usd"]  # NaN: not priced
    text = hover(run.timeline(), gemini)
    assert "120 in (100 cached) · 30 out tokens" in text and "$" not in text


def test_clicking_an_llm_bar_shows_the_conversation_and_the_raw_json_behind_a_click(
        run) -> None:
    widget = run.timeline()
    plain, streamed = event_ids(run, "POST /v1/chat/completions")
    click(widget, *bar(widget, plain))
    html = widget.panel.value
    roles = re.findall(r'class="tl-msg tl-role-(\w+)', html)
    assert roles == ["system", "user", "assistant", "tool", "assistant"]  # + the completion
    assert "→ calls <code>lookup_order</code>" in html and "&quot;order&quot;: 42" in html
    assert "result of lookup_order (call_a)" in html
    assert f"<pre>{ANSWER}</pre>" in html and "finish: stop" in html
    conversation_at, details_at = html.index("tl-conversation"), html.index("<details")
    assert conversation_at < details_at  # the conversation first, the raw JSON folded below
    raw = html[details_at:]
    assert "Raw JSON" in raw and "Request" in raw and "&quot;messages&quot;" in raw
    click(widget, *bar(widget, streamed))
    html = widget.panel.value
    assert "streamed" in html and "tools offered: refund" in html
    assert "→ calls <code>refund</code>" in html.split("Completion")[1]


def test_payloads_in_a_conversation_stay_text(run) -> None:
    from tracelab.store import query

    (claude,) = event_ids(run, "POST /v1/messages")
    html = payload_html(query.event_dict(claude))
    assert "hello &lt;b&gt;there&lt;/b&gt;" in html and "<b>there</b>" not in html


def test_other_calls_show_the_raw_json_as_before(run) -> None:
    from tracelab.store import query

    (plain,) = event_ids(run, "POST /not-llm")
    (embeddings,) = event_ids(run, "POST /v1/embeddings")
    for event_id in (plain, embeddings):
        html = payload_html(query.event_dict(event_id))
        assert "<details" not in html and "tl-conversation" not in html
        assert '<div class="tl-head">Request</div>' in html
