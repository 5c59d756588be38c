"""The canonical `llm.*` tags, end to end: the real openai and anthropic clients (and plain
requests/httpx for Gemini) talk to the LLM-shaped loopback server (tests/llm_wire.py) with
TraceLab on, and the events stored in a real Redis carry the same normalised fields whether the
answer came as one JSON body or as an SSE stream."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest
import requests
from conftest import RedisServer, read_events
from llm_wire import ANSWER, CANONICAL_USAGE, LLMWire

ANTHROPIC_CANONICAL = {"llm.input_tokens": "120", "llm.cached_input_tokens": "100",
                       "llm.output_tokens": "30", "llm.total_tokens": "150"}
CHAT_TOOLS = [{"type": "function", "function": {"name": n, "parameters": {"type": "object"}}}
              for n in ("lookup_order", "refund")]
MESSAGES = [{"role": "user", "content": "refund 12.50 please"}]


@pytest.fixture
def wire() -> Iterator[LLMWire]:
    with LLMWire() as server:
        yield server


def llm_events(redis: RedisServer) -> list[dict[str, Any]]:
    events, _ = read_events(redis)
    llm = [e for e in events if e["kind"] == "llm"]
    for event in llm:  # only the llm.* tags (the run's command tags are not ours)
        event["tags"] = {k: v for k, v in event["tags"].items() if k.startswith("llm.")}
    return llm


def only(redis: RedisServer) -> dict[str, Any]:
    events = llm_events(redis)
    assert len(events) == 1, events
    return events[0]


def test_openai_chat_completion(traced: RedisServer, wire: LLMWire) -> None:
    client = openai.OpenAI(base_url=wire.url + "/v1", api_key="sk-test", max_retries=0)
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert reply.choices[0].message.content == ANSWER
    assert only(traced)["tags"] == {
        "llm.provider": "openai-compatible", "llm.operation": "chat",
        "llm.model": "gpt-4o-mini-2024-07-18", "llm.finish_reason": "stop", **CANONICAL_USAGE}


def test_openai_chat_stream_usage_from_the_final_chunk_and_ttft(traced: RedisServer,
                                                                wire: LLMWire) -> None:
    client = openai.OpenAI(base_url=wire.url + "/v1", api_key="sk-test", max_retries=0)
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True,
                                            stream_options={"include_usage": True})
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == ANSWER
    event = only(traced)
    tags = dict(event["tags"])
    ttft = float(tags.pop("llm.ttft_ms"))
    assert tags == {"llm.provider": "openai-compatible", "llm.operation": "chat",
                    "llm.model": "gpt-4o-mini-2024-07-18", "llm.finish_reason": "stop",
                    **CANONICAL_USAGE}
    # the first content chunk is the second piece: after the role-only one
    assert ttft == event["response"]["chunks"][1]["t"]
    assert 0 < ttft <= event["latency_ms"]


def test_async_openai_chat_stream(traced: RedisServer, wire: LLMWire) -> None:
    import asyncio

    async def main() -> str:
        client = openai.AsyncOpenAI(base_url=wire.url + "/v1", api_key="sk-test", max_retries=0)
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True,
            stream_options={"include_usage": True})
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        await client.close()
        return text

    assert asyncio.run(main()) == ANSWER
    tags = dict(only(traced)["tags"])
    assert float(tags.pop("llm.ttft_ms")) > 0
    assert tags == {"llm.provider": "openai-compatible", "llm.operation": "chat",
                    "llm.model": "gpt-4o-mini-2024-07-18", "llm.finish_reason": "stop",
                    **CANONICAL_USAGE}


def test_openai_chat_stream_tool_names_from_the_deltas(traced: RedisServer,
                                                       wire: LLMWire) -> None:
    client = openai.OpenAI(base_url=wire.url + "/v1", api_key="sk-test", max_retries=0)
    with client.chat.completions.stream(model="gpt-4o-mini", messages=MESSAGES,
                                        tools=CHAT_TOOLS) as stream:
        final = stream.get_final_completion()
    assert [c.function.name for c in final.choices[0].message.tool_calls] == \
        ["lookup_order", "refund"]
    tags = only(traced)["tags"]
    assert tags["llm.tool_calls"] == "lookup_order,refund"
    assert tags["llm.finish_reason"] == "tool_calls"
    assert "llm.input_tokens" not in tags  # no include_usage: the API sends no usage
    assert float(tags["llm.ttft_ms"]) > 0


def test_openai_responses_plain_and_streamed(traced: RedisServer, wire: LLMWire) -> None:
    client = openai.OpenAI(base_url=wire.url + "/v1", api_key="sk-test", max_retries=0)
    assert client.responses.create(model="gpt-4.1", input="hi").output_text == ANSWER
    with client.responses.stream(model="gpt-4.1", input="refund?", tools=[
            {"type": "function", "name": "refund", "parameters": {"type": "object"}}]) as stream:
        stream.get_final_response()
    plain, streamed = llm_events(traced)
    expected = {"llm.provider": "openai-compatible", "llm.operation": "responses",
                "llm.model": "gpt-4.1-2025-04-14", "llm.finish_reason": "completed",
                **CANONICAL_USAGE}
    assert plain["tags"] == expected
    tags = dict(streamed["tags"])
    assert float(tags.pop("llm.ttft_ms")) > 0
    assert tags == {**expected, "llm.tool_calls": "refund"}


def test_openai_embeddings(traced: RedisServer, wire: LLMWire) -> None:
    client = openai.OpenAI(base_url=wire.url + "/v1", api_key="sk-test", max_retries=0)
    client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert only(traced)["tags"] == {
        "llm.provider": "openai-compatible", "llm.operation": "embeddings",
        "llm.model": "text-embedding-3-small", "llm.input_tokens": "8", "llm.total_tokens": "8"}


def test_anthropic_messages_input_tokens_include_cached(traced: RedisServer,
                                                        wire: LLMWire) -> None:
    client = anthropic.Anthropic(base_url=wire.url, api_key="sk-ant-test", max_retries=0)
    reply = client.messages.create(model="claude-3-7-sonnet", max_tokens=64, messages=MESSAGES)
    assert reply.content[0].text == ANSWER
    assert only(traced)["tags"] == {
        "llm.provider": "anthropic", "llm.operation": "messages",
        "llm.model": "claude-3-7-sonnet-20250219", "llm.finish_reason": "end_turn",
        **ANTHROPIC_CANONICAL}


def test_anthropic_stream_with_tools(traced: RedisServer, wire: LLMWire) -> None:
    client = anthropic.Anthropic(base_url=wire.url, api_key="sk-ant-test", max_retries=0)
    with client.messages.stream(model="claude-3-7-sonnet", max_tokens=64, messages=MESSAGES,
                                tools=[{"name": n, "input_schema": {"type": "object"}}
                                       for n in ("lookup_order", "refund")]) as stream:
        assert stream.get_final_text() == ANSWER
    event = only(traced)
    tags = dict(event["tags"])
    assert 0 < float(tags.pop("llm.ttft_ms")) <= event["latency_ms"]
    assert tags == {"llm.provider": "anthropic", "llm.operation": "messages",
                    "llm.model": "claude-3-7-sonnet-20250219", "llm.finish_reason": "tool_use",
                    "llm.tool_calls": "lookup_order,refund", **ANTHROPIC_CANONICAL}


GEMINI = {"llm.provider": "google", "llm.operation": "generate_content",
          "llm.model": "gemini-2.5-flash-001", "llm.finish_reason": "stop", **CANONICAL_USAGE}
GEMINI_REQUEST = {"contents": [{"role": "user", "parts": [{"text": "refund?"}]}]}


def test_gemini_generate_content_with_requests(traced: RedisServer, wire: LLMWire) -> None:
    url = wire.url + "/v1beta/models/gemini-2.5-flash:generateContent"
    assert requests.post(url, json=GEMINI_REQUEST, timeout=5).ok
    assert only(traced)["tags"] == GEMINI


def test_gemini_sse_stream_with_httpx(traced: RedisServer, wire: LLMWire) -> None:
    url = wire.url + "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    body = {**GEMINI_REQUEST, "tools": [{"functionDeclarations": [{"name": "refund"}]}]}
    with httpx.Client() as client, client.stream("POST", url, json=body) as response:
        assert sum(1 for line in response.iter_lines() if line.startswith("data:")) == 1
    tags = dict(only(traced)["tags"])
    assert float(tags.pop("llm.ttft_ms")) > 0
    assert tags == {**GEMINI, "llm.tool_calls": "refund"}


def test_gemini_stream_as_a_json_array(traced: RedisServer, wire: LLMWire) -> None:
    url = wire.url + "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    assert len(requests.post(url, json=GEMINI_REQUEST, timeout=5).json()) > 1
    assert only(traced)["tags"] == GEMINI


def test_a_long_stream_keeps_its_final_usage_past_the_body_cap(
        redis_server: RedisServer, tracelab_home: Any, wire: LLMWire) -> None:
    import tracelab

    tracelab.init(workflow_name="wf", redis_url=redis_server.url, max_body_bytes=256)
    try:
        with requests.post(wire.url + "/v1/chat/completions", stream=True, timeout=5, json={
                "model": "gpt-4o-mini", "messages": MESSAGES, "stream": True,
                "stream_options": {"include_usage": True}}) as response:
            assert b"[DONE]" in b"".join(response.iter_content(64))
        event = only(redis_server)
    finally:
        tracelab.shutdown()
    assert event["response"]["stream"]["truncated"] is True
    tags = event["tags"]
    assert {k: tags[k] for k in CANONICAL_USAGE} == CANONICAL_USAGE
    assert tags["llm.finish_reason"] == "stop"
    assert float(tags["llm.ttft_ms"]) > 0
