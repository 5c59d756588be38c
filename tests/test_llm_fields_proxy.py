"""`tracelab proxy` (a real subprocess) in front of the LLM-shaped loopback server: the proxy
imports the SDK's `llm_tags`, so its events carry the same `llm.*` fields as the SDK's, streamed
(SSE) answers included (their `llm.ttft_ms` and chunks: tests/test_proxy_llm_stream.py)."""
from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from conftest import RedisServer
from llm_wire import CANONICAL_USAGE, LLMWire
from test_proxy import Proxy, by_endpoint, client, home, start_proxy, wait_events  # noqa: F401

MESSAGES = [{"role": "user", "content": "refund 12.50 please"}]


@pytest.fixture
def wire() -> Iterator[LLMWire]:
    with LLMWire() as server:
        yield server


def test_the_proxy_records_the_canonical_fields(redis_server: RedisServer, wire: LLMWire,
                                                start_proxy: Callable[..., Proxy]) -> None:
    proxy = start_proxy("--redis-url", redis_server.url, "--workflow", "llm-wf")
    session = client(proxy)
    with session.post(wire.url + "/v1/chat/completions", stream=True, json={
            "model": "gpt-4o-mini", "messages": MESSAGES, "stream": True,
            "stream_options": {"include_usage": True}}) as reply:
        assert b"[DONE]" in reply.content
    assert session.post(wire.url + "/v1/messages", json={
        "model": "claude-3-7-sonnet", "max_tokens": 9, "messages": MESSAGES}).ok
    assert session.post(wire.url + "/v1beta/models/gemini-2.5-flash:generateContent", json={
        "contents": [{"role": "user", "parts": [{"text": "hi"}]}]}).ok
    events, _ = wait_events(redis_server, 3)
    tags = {endpoint: {k: v for k, v in e["tags"].items() if k.startswith("llm.")}
            for endpoint, e in by_endpoint(events).items()}
    assert all(e["kind"] == "llm" for e in events)
    assert tags["POST /v1/chat/completions"].pop("llm.ttft_ms")
    assert tags["POST /v1/chat/completions"] == {
        "llm.provider": "openai-compatible", "llm.operation": "chat",
        "llm.model": "gpt-4o-mini-2024-07-18", "llm.finish_reason": "stop", **CANONICAL_USAGE}
    assert tags["POST /v1/messages"] == {
        "llm.provider": "anthropic", "llm.operation": "messages",
        "llm.model": "claude-3-7-sonnet-20250219", "llm.finish_reason": "end_turn",
        "llm.input_tokens": "120", "llm.cached_input_tokens": "100", "llm.output_tokens": "30",
        "llm.total_tokens": "150"}
    assert tags["POST /v1beta/models/gemini-2.5-flash:generateContent"] == {
        "llm.provider": "google", "llm.operation": "generate_content",
        "llm.model": "gemini-2.5-flash-001", "llm.finish_reason": "stop", **CANONICAL_USAGE}
