"""`tracelab.analysis.conversation` on events recorded for real: the openai and anthropic clients
(and requests/httpx for Gemini) talk to the LLM-shaped loopback server (tests/llm_wire.py) with
TraceLab on, and the events stored in a real Redis read back as conversations: roles, tool
calls with their arguments and results, the completion, whether it was streamed or not."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest
import requests
from conftest import RedisServer, read_events
from hypothesis import given, settings
from hypothesis import strategies as st
from llm_wire import ANSWER, LLMWire

from tracelab.analysis.conversation import conversation

CHAT_TOOLS = [{"type": "function", "function": {"name": n, "parameters": {"type": "object"}}}
              for n in ("lookup_order", "refund")]
# A chat history with a tool round trip already in it: what an agent sends on its second turn.
CHAT_HISTORY = [
    {"role": "system", "content": "You are a refund agent."},
    {"role": "user", "content": [{"type": "text", "text": "refund order 42"}]},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_a", "type": "function",
         "function": {"name": "lookup_order", "arguments": "{\"order\": 42}"}}]},
    {"role": "tool", "tool_call_id": "call_a", "content": "{\"total\": 12.5}"},
]


@pytest.fixture
def wire() -> Iterator[LLMWire]:
    with LLMWire() as server:
        yield server


def recorded(redis: RedisServer, wire: LLMWire) -> list[dict[str, Any]]:
    """This test's LLM events (to its wire server: an earlier test's stream closed late by
    the garbage collector may land in this test's Redis)."""
    events, _ = read_events(redis)
    return [e for e in events
            if e["kind"] == "llm" and e["request"]["url"].startswith(wire.url + "/")]


def only(redis: RedisServer, wire: LLMWire) -> dict[str, Any]:
    events = recorded(redis, wire)
    assert len(events) == 1, events
    return events[0]


def roles(conv: Any) -> list[str]:
    return [m.role for m in conv.messages]


def calls(message: Any) -> list[tuple[Any, Any, Any]]:
    return [(c.name, c.arguments, c.id) for c in message.tool_calls]


def test_openai_chat_history_with_a_tool_result(traced: RedisServer, wire: LLMWire) -> None:
    client = openai.OpenAI(base_url=wire.url + "/v1", api_key="sk-test", max_retries=0)
    client.chat.completions.create(model="gpt-4o-mini", messages=CHAT_HISTORY)
    conv = conversation(only(traced, wire))
    assert conv is not None and conv.format == "openai.chat" and not conv.streamed
    assert roles(conv) == ["system", "user", "assistant", "tool"]
    assert conv.messages[1].content == "refund order 42"
    assert calls(conv.messages[2]) == [("lookup_order", {"order": 42}, "call_a")]
    tool = conv.messages[3]
    assert (tool.tool_call_id, tool.name, tool.content) == \
        ("call_a", "lookup_order", "{\"total\": 12.5}")
    assert conv.completion is not None and conv.completion.role == "assistant"
    assert conv.completion.content == ANSWER
    assert conv.finish_reason == "stop"
    assert conv.model == "gpt-4o-mini-2024-07-18" and conv.provider == "openai-compatible"


def test_openai_chat_stream_reassembles_text(traced: RedisServer, wire: LLMWire) -> None:
    client = openai.OpenAI(base_url=wire.url + "/v1", api_key="sk-test", max_retries=0)
    for _ in client.chat.completions.create(model="gpt-4o-mini", messages=CHAT_HISTORY[:2],
                                            stream=True, stream_options={"include_usage": True}):
        pass
    conv = conversation(only(traced, wire))
    assert conv is not None and conv.streamed
    assert conv.completion is not None and conv.completion.content == ANSWER
    assert conv.completion.tool_calls == [] and conv.finish_reason == "stop"


def test_openai_chat_stream_reassembles_tool_call_deltas(traced: RedisServer,
                                                         wire: LLMWire) -> None:
    client = openai.OpenAI(base_url=wire.url + "/v1", api_key="sk-test", max_retries=0)
    with client.chat.completions.stream(model="gpt-4o-mini", messages=CHAT_HISTORY[:2],
                                        tools=CHAT_TOOLS) as stream:
        stream.get_final_completion()
    conv = conversation(only(traced, wire))
    assert conv is not None and conv.streamed and conv.tools == ["lookup_order", "refund"]
    assert conv.completion is not None and conv.completion.content is None
    assert calls(conv.completion) == [("lookup_order", {}, "call_0"), ("refund", {}, "call_1")]
    assert conv.finish_reason == "tool_calls"


def test_openai_responses_plain_and_streamed(traced: RedisServer, wire: LLMWire) -> None:
    client = openai.OpenAI(base_url=wire.url + "/v1", api_key="sk-test", max_retries=0)
    client.responses.create(model="gpt-4.1", instructions="Be brief.", input=[
        {"role": "user", "content": "refund order 42"},
        {"type": "function_call", "call_id": "call_a", "name": "lookup_order",
         "arguments": "{\"order\": 42}"},
        {"type": "function_call_output", "call_id": "call_a", "output": "12.50"}])
    with client.responses.stream(model="gpt-4.1", input="refund?", tools=[
            {"type": "function", "name": "refund", "parameters": {"type": "object"}}]) as stream:
        stream.get_final_response()
    plain, streamed = (conversation(e) for e in recorded(traced, wire))
    assert plain is not None and plain.format == "openai.responses" and not plain.streamed
    assert roles(plain) == ["system", "user", "assistant", "tool"]
    assert calls(plain.messages[2]) == [("lookup_order", {"order": 42}, "call_a")]
    assert (plain.messages[3].name, plain.messages[3].content) == ("lookup_order", "12.50")
    assert plain.completion is not None and plain.completion.content == ANSWER
    assert plain.finish_reason == "completed"
    assert streamed is not None and streamed.streamed
    assert [(m.role, m.content) for m in streamed.messages] == [("user", "refund?")]
    assert streamed.completion is not None
    assert calls(streamed.completion) == [("refund", {}, "call_0")]


def test_openai_responses_stream_cut_before_completed_uses_the_deltas() -> None:
    from llm_wire import responses_events

    events = b"".join(responses_events({"model": "gpt-4.1"})).decode()
    cut = events[:events.rindex("event: response.output_item.done")]  # the message unfinished
    event = {"kind": "llm", "tags": {"llm.provider": "openai", "llm.operation": "responses"},
             "request": {"url": "https://api.openai.com/v1/responses",
                         "body": {"model": "gpt-4.1", "input": "hi", "stream": True}},
             "response": {"status_code": 200, "body": cut, "chunks": [{"t": 1.0, "data": cut}],
                          "stream": {"complete": False, "truncated": False}}}
    conv = conversation(event)
    assert conv is not None and conv.truncated and conv.streamed
    assert conv.completion is not None and conv.completion.content == ANSWER


def test_openai_embeddings_are_not_a_conversation(traced: RedisServer, wire: LLMWire) -> None:
    client = openai.OpenAI(base_url=wire.url + "/v1", api_key="sk-test", max_retries=0)
    client.embeddings.create(model="text-embedding-3-small", input="a")
    assert conversation(only(traced, wire)) is None


ANTHROPIC_HISTORY = [
    {"role": "user", "content": "refund order 42"},
    {"role": "assistant", "content": [
        {"type": "text", "text": "Looking it up."},
        {"type": "tool_use", "id": "toolu_a", "name": "lookup_order", "input": {"order": 42}}]},
    {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_a", "is_error": True,
         "content": [{"type": "text", "text": "order service down"}]},
        {"type": "text", "text": "try again"}]},
]


def test_anthropic_tool_use_and_tool_result_blocks(traced: RedisServer, wire: LLMWire) -> None:
    client = anthropic.Anthropic(base_url=wire.url, api_key="sk-ant-test", max_retries=0)
    client.messages.create(model="claude-3-7-sonnet", max_tokens=64, system="Be kind.",
                           messages=ANTHROPIC_HISTORY)
    conv = conversation(only(traced, wire))
    assert conv is not None and conv.format == "anthropic.messages" and not conv.streamed
    assert roles(conv) == ["system", "user", "assistant", "tool", "user"]
    assistant, tool = conv.messages[2], conv.messages[3]
    assert assistant.content == "Looking it up."
    assert calls(assistant) == [("lookup_order", {"order": 42}, "toolu_a")]
    assert (tool.name, tool.content, tool.is_error) == \
        ("lookup_order", "order service down", True)
    assert conv.messages[4].content == "try again"
    assert conv.completion is not None and conv.completion.content == ANSWER
    assert conv.finish_reason == "end_turn" and conv.model == "claude-3-7-sonnet-20250219"


def test_anthropic_stream_with_tools(traced: RedisServer, wire: LLMWire) -> None:
    client = anthropic.Anthropic(base_url=wire.url, api_key="sk-ant-test", max_retries=0)
    with client.messages.stream(model="claude-3-7-sonnet", max_tokens=64,
                                messages=ANTHROPIC_HISTORY[:1],
                                tools=[{"name": n, "input_schema": {"type": "object"}}
                                       for n in ("lookup_order", "refund")]) as stream:
        stream.get_final_text()
    conv = conversation(only(traced, wire))
    assert conv is not None and conv.streamed and conv.tools == ["lookup_order", "refund"]
    assert conv.completion is not None and conv.completion.content == ANSWER
    assert calls(conv.completion) == [("lookup_order", {}, "toolu_0"), ("refund", {}, "toolu_1")]
    assert conv.finish_reason == "tool_use"


GEMINI_REQUEST = {
    "systemInstruction": {"parts": [{"text": "Be brief."}]},
    "contents": [
        {"role": "user", "parts": [{"text": "refund order 42"}]},
        {"role": "model", "parts": [{"functionCall": {"name": "lookup_order",
                                                      "args": {"order": 42}}}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "lookup_order",
                                                         "response": {"total": 12.5}}}]}]}


def test_gemini_generate_content(traced: RedisServer, wire: LLMWire) -> None:
    url = wire.url + "/v1beta/models/gemini-2.5-flash:generateContent"
    assert requests.post(url, json=GEMINI_REQUEST, timeout=5).ok
    conv = conversation(only(traced, wire))
    assert conv is not None and conv.format == "gemini.generate_content" and not conv.streamed
    assert roles(conv) == ["system", "user", "assistant", "tool"]
    assert calls(conv.messages[2]) == [("lookup_order", {"order": 42}, None)]
    assert (conv.messages[3].name, conv.messages[3].content) == ("lookup_order",
                                                                 "{\"total\":12.5}")
    assert conv.completion is not None and conv.completion.content == ANSWER
    assert conv.finish_reason == "stop" and conv.model == "gemini-2.5-flash-001"


def test_gemini_sse_stream_and_json_array(traced: RedisServer, wire: LLMWire) -> None:
    url = wire.url + "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    with httpx.Client() as client, client.stream("POST", url + "?alt=sse",
                                                 json=GEMINI_REQUEST) as response:
        list(response.iter_lines())
    body = {**GEMINI_REQUEST, "tools": [{"functionDeclarations": [{"name": "refund"}]}]}
    assert requests.post(url, json=body, timeout=5).ok
    sse, array = (conversation(e) for e in recorded(traced, wire))
    assert sse is not None and sse.streamed and sse.completion is not None
    assert sse.completion.content == ANSWER  # the words of every event joined
    assert array is not None and array.streamed and array.tools == ["refund"]
    assert array.completion is not None and calls(array.completion) == [("refund", {}, None)]


def test_events_that_are_not_llm_calls_have_no_conversation(traced: RedisServer,
                                                            wire: LLMWire) -> None:
    requests.post(wire.url + "/v1/other", json={"a": 1}, timeout=5)
    events, _ = read_events(traced)
    assert events and all(conversation(e) is None for e in events)


JSONISH = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                       lambda inner: st.lists(inner, max_size=4)
                       | st.dictionaries(st.sampled_from(
                           ["role", "content", "type", "text", "tool_calls", "function",
                            "parts", "messages", "contents", "input", "choices", "delta",
                            "candidates", "index", "name", "arguments", "output"]), inner,
                           max_size=5), max_leaves=20)


@settings(max_examples=200, deadline=None)
@given(op=st.sampled_from(["chat", "responses", "messages", "generate_content", "completions",
                           None]),
       request_body=JSONISH, response_body=JSONISH)
def test_hostile_bodies_never_raise(op: str | None, request_body: Any,
                                    response_body: Any) -> None:
    event = {"kind": "llm", "tags": {"llm.operation": op} if op else {},
             "request": {"url": "http://x/v1/chat/completions", "body": request_body},
             "response": {"body": response_body}}
    conv = conversation(event)
    assert conv is None or conv.to_dict()["format"]


def test_an_llm_span_from_opentelemetry_reads_as_a_conversation() -> None:
    """OTLP spans become OpenAI-chat-shaped bodies whatever the provider (tracelab.otlp): a
    Gemini span from OpenLLMetry is read by its body's shape, not its operation's name."""
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

    from tracelab.otlp.mapping import events_from_request

    request = trace_service_pb2.ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add()
    span.trace_id, span.span_id, span.name = b"\x01" * 16, b"\x02" * 8, "gemini.generate"
    span.start_time_unix_nano, span.end_time_unix_nano = 1_764_000_000_000_000_000, \
        1_764_000_000_500_000_000
    for key, value in {"gen_ai.system": "gemini", "gen_ai.operation.name": "generate_content",
                       "gen_ai.request.model": "gemini-2.5-flash",
                       "gen_ai.prompt.0.role": "system", "gen_ai.prompt.0.content": "Be brief.",
                       "gen_ai.prompt.1.role": "user", "gen_ai.prompt.1.content": "refund 42",
                       "gen_ai.completion.0.role": "assistant",
                       "gen_ai.completion.0.finish_reason": "stop",
                       "gen_ai.completion.0.tool_calls.0.name": "refund",
                       "gen_ai.completion.0.tool_calls.0.arguments": "{\"order\": 42}"}.items():
        attribute = span.attributes.add()
        attribute.key, attribute.value.string_value = key, value
    ((event, problem),) = list(events_from_request(request))
    assert problem is None and event["kind"] == "llm"
    conv = conversation(event)
    assert conv is not None and conv.format == "openai.chat"
    assert [(m.role, m.content) for m in conv.messages] == [("system", "Be brief."),
                                                            ("user", "refund 42")]
    assert conv.completion is not None
    assert calls(conv.completion) == [("refund", {"order": 42}, None)]
