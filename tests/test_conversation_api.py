"""`GET /api/events/{event_id}/conversation` on a real uvicorn over a store recorded by a
subprocess: an agent using the real openai and anthropic clients (embedded mode) against the
LLM-shaped loopback server (tests/llm_wire.py), plus one plain HTTP call and an embeddings call
(LLM, but no conversation)."""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from llm_wire import ANSWER, LLMWire
from test_api import ROOT, UvicornThread

# The agent's second turn: a tool round trip in the history, the answer streamed with tools;
# then the same through Anthropic, an embeddings call, Gemini with a model no price table
# knows, and a call that is no LLM at all.
LLM_AGENT = r"""
import sys, anthropic, openai, requests, tracelab
url, run_id = sys.argv[1:3]
tracelab.init(workflow_name="agent", service_name="agent", run_id=run_id)
client = openai.OpenAI(base_url=url + "/v1", api_key="sk-test", max_retries=0)
history = [
    {"role": "system", "content": "You are a refund agent."},
    {"role": "user", "content": "refund order 42"},
    {"role": "assistant", "content": None, "tool_calls": [{"id": "call_a", "type": "function",
        "function": {"name": "lookup_order", "arguments": "{\"order\": 42}"}}]},
    {"role": "tool", "tool_call_id": "call_a", "content": "{\"total\": 12.5}"},
]
client.chat.completions.create(model="gpt-4o-mini", messages=history)
with client.chat.completions.stream(model="gpt-4o-mini", messages=history, tools=[
        {"type": "function", "function": {"name": "refund", "parameters": {"type": "object"}}}],
        stream_options={"include_usage": True}) as stream:
    stream.get_final_completion()
claude = anthropic.Anthropic(base_url=url, api_key="sk-ant-test", max_retries=0)
with claude.messages.stream(model="claude-3-7-sonnet", max_tokens=64, system="Be kind.",
                            messages=[{"role": "user", "content": "hello <b>there</b>"}]) as s:
    s.get_final_text()
client.embeddings.create(model="text-embedding-3-small", input="a")
requests.post(url + "/v1beta/models/acme-llm:generateContent",  # a model with no price
              json={"contents": [{"role": "user", "parts": [{"text": "hi"}]}]})
requests.post(url + "/not-llm", json={"a": 1})
assert tracelab.flush(10)
tracelab.shutdown()
"""


def record_llm_run(home: Path, url: str, run_id: str) -> None:
    """Record one run of the LLM agent above through the SDK (embedded mode)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("TRACELAB_") and k.lower() not in ("http_proxy", "https_proxy")}
    env.update(TRACELAB_HOME=str(home), NO_PROXY="127.0.0.1,localhost")
    subprocess.run([sys.executable, "-c", LLM_AGENT, url, run_id], check=True, env=env,
                   cwd=ROOT, timeout=60)


@pytest.fixture(scope="module")
def api(tmp_path_factory) -> Iterator[tuple[httpx.Client, list[dict]]]:
    from tracelab.server.app import create_app

    home = tmp_path_factory.mktemp("conv") / "home"
    with LLMWire() as wire:
        record_llm_run(home, wire.url, "llm-run")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("TRACELAB_API_TOKEN", raising=False)
        mp.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
        app = create_app(str(home / "store"), poll_interval=0.1)
    with UvicornThread(app) as server, httpx.Client(base_url=server.url, timeout=10) as client:
        events = client.get("/api/executions/llm-run").json()["events"]
        yield client, events


def ids(events: list[dict], endpoint: str) -> list[str]:
    return [e["event_id"] for e in events if e["endpoint"] == endpoint]


def test_a_chat_call_with_its_tool_round_trip(api) -> None:
    client, events = api
    plain, streamed = ids(events, "POST /v1/chat/completions")
    r = client.get(f"/api/events/{plain}/conversation")
    assert r.status_code == 200, r.text
    conv = r.json()
    assert conv["format"] == "openai.chat" and conv["streamed"] is False
    assert [m["role"] for m in conv["messages"]] == ["system", "user", "assistant", "tool"]
    assert conv["messages"][2]["tool_calls"] == [
        {"name": "lookup_order", "arguments": {"order": 42}, "id": "call_a"}]
    assert conv["messages"][3]["name"] == "lookup_order"
    assert conv["completion"]["content"] == ANSWER and conv["finish_reason"] == "stop"
    r = client.get(f"/api/events/{streamed}/conversation")
    conv = r.json()
    assert conv["streamed"] is True and conv["tools"] == ["refund"]
    assert [c["name"] for c in conv["completion"]["tool_calls"]] == ["refund"]
    assert conv["finish_reason"] == "tool_calls"


def test_an_anthropic_stream(api) -> None:
    client, events = api
    (event_id,) = ids(events, "POST /v1/messages")
    conv = client.get(f"/api/events/{event_id}/conversation").json()
    assert conv["format"] == "anthropic.messages" and conv["provider"] == "anthropic"
    assert [(m["role"], m["content"]) for m in conv["messages"]] == \
        [("system", "Be kind."), ("user", "hello <b>there</b>")]
    assert conv["completion"]["content"] == ANSWER and conv["finish_reason"] == "end_turn"


def test_not_an_llm_conversation_or_unknown_is_a_clear_404(api) -> None:
    client, events = api
    (http_call,) = ids(events, "POST /not-llm")
    (embeddings,) = ids(events, "POST /v1/embeddings")
    for event_id, kind in ((http_call, "http"), (embeddings, "llm")):
        r = client.get(f"/api/events/{event_id}/conversation")
        assert r.status_code == 404
        assert r.json()["detail"].startswith(f"event {event_id!r} is not an LLM conversation "
                                             f"(kind {kind!r})")
    r = client.get("/api/events/no-such-event/conversation")
    assert r.status_code == 404 and r.json() == {"detail": "unknown event_id 'no-such-event'"}


def test_the_route_and_its_model_are_in_the_openapi_document(api) -> None:
    client, _ = api
    doc = client.get("/openapi.json").json()
    route = doc["paths"]["/api/events/{event_id}/conversation"]["get"]
    assert route["responses"]["200"]["content"]["application/json"]["schema"] == \
        {"$ref": "#/components/schemas/Conversation"}
    assert {"404", "422"} <= set(route["responses"])
    assert {"Conversation", "Message", "ToolCall"} <= set(doc["components"]["schemas"])
