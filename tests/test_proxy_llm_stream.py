"""`tracelab proxy` (a real subprocess) in front of the LLM-shaped loopback server, streamed
answers: the proxy stores a streaming body's pieces with their times (`response.chunks`,
`response.stream`, as the Python SDK's streams), so its LLM stream events get `llm.ttft_ms`
from the same fold as the SDK's, and the usage of the final event even past the body cap."""
from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from conftest import RedisServer
from llm_wire import CANONICAL_USAGE, LLMWire
from test_proxy import Proxy, by_endpoint, client, home, start_proxy, wait_events  # noqa: F401

MESSAGES = [{"role": "user", "content": "refund 12.50 please"}]
TOOLS = [{"type": "function", "function": {"name": "lookup_order", "parameters": {}}},
         {"type": "function", "function": {"name": "refund", "parameters": {}}}]


@pytest.fixture
def wire() -> Iterator[LLMWire]:
    with LLMWire() as server:
        yield server


def _stream(proxy: Proxy, url: str, body: dict[str, Any]) -> bytes:
    """POST through the proxy, reading the answer piece by piece as a streaming client does."""
    with client(proxy).post(url, json=body, stream=True) as reply:
        assert reply.ok
        return b"".join(reply.iter_content(chunk_size=None))


def _llm(event: dict[str, Any]) -> dict[str, str]:
    return {k: v for k, v in event["tags"].items() if k.startswith("llm.")}


def test_proxy_streams_carry_chunks_and_ttft(redis_server: RedisServer, wire: LLMWire,
                                             start_proxy: Callable[..., Proxy]) -> None:
    proxy = start_proxy("--redis-url", redis_server.url, "--workflow", "llm-stream")
    received = {
        "POST /v1/chat/completions": _stream(proxy, wire.url + "/v1/chat/completions", {
            "model": "gpt-4o-mini", "messages": MESSAGES, "stream": True, "tools": TOOLS,
            "stream_options": {"include_usage": True}}),
        "POST /v1/messages": _stream(proxy, wire.url + "/v1/messages", {
            "model": "claude-3-7-sonnet", "max_tokens": 9, "messages": MESSAGES,
            "stream": True}),
    }
    events = by_endpoint(wait_events(redis_server, 2)[0])
    chat, messages = events["POST /v1/chat/completions"], events["POST /v1/messages"]
    for endpoint, event in events.items():
        response = event["response"]
        chunks = response["chunks"]
        assert len(chunks) > 3  # one per event the server flushed, not one blob
        assert "".join(c["data"] for c in chunks).encode() == received[endpoint]
        times = [c["t"] for c in chunks]
        assert times == sorted(times) and 0 <= times[0] and times[-1] <= event["latency_ms"]
        assert response["stream"] == {"complete": True, "error": None,
                                      "size": len(received[endpoint]), "truncated": False}
        ttft = event["tags"]["llm.ttft_ms"]
        assert re.fullmatch(r"\d+\.\d{3}", ttft)
        # the first content event's piece: after the role-only / message_start one
        assert times[0] < float(ttft) <= times[-1]
        assert float(ttft) in times
    assert {k: v for k, v in _llm(chat).items() if k != "llm.ttft_ms"} == {
        "llm.provider": "openai-compatible", "llm.operation": "chat",
        "llm.model": "gpt-4o-mini-2024-07-18", "llm.finish_reason": "tool_calls",
        "llm.tool_calls": "lookup_order,refund", **CANONICAL_USAGE}
    assert {k: v for k, v in _llm(messages).items() if k != "llm.ttft_ms"} == {
        "llm.provider": "anthropic", "llm.operation": "messages",
        "llm.model": "claude-3-7-sonnet-20250219", "llm.finish_reason": "end_turn",
        "llm.input_tokens": "120", "llm.cached_input_tokens": "100", "llm.output_tokens": "30",
        "llm.total_tokens": "150"}


def test_proxy_stream_past_the_cap_keeps_the_usage(redis_server: RedisServer, wire: LLMWire,
                                                    start_proxy: Callable[..., Proxy]) -> None:
    proxy = start_proxy("--redis-url", redis_server.url, "--workflow", "llm-stream",
                        env={"TRACELAB_MAX_BODY_BYTES": "300"})
    received = _stream(proxy, wire.url + "/v1/chat/completions", {
        "model": "gpt-4o-mini", "messages": MESSAGES, "stream": True,
        "stream_options": {"include_usage": True}})
    assert len(received) > 1000
    (event,), _ = wait_events(redis_server, 1)
    response = event["response"]
    assert sum(len(c["data"]) for c in response["chunks"]) <= 300
    assert response["stream"]["truncated"] is True
    assert response["stream"]["size"] == len(received)
    assert response["body"]["$tracelab"] == "truncated"
    assert "llm.ttft_ms" in event["tags"]
    assert {k: v for k, v in _llm(event).items() if k != "llm.ttft_ms"} == {
        "llm.provider": "openai-compatible", "llm.operation": "chat",
        "llm.model": "gpt-4o-mini-2024-07-18", "llm.finish_reason": "stop", **CANONICAL_USAGE}


class CutStream:
    """A raw HTTP/1.1 server on 127.0.0.1: an SSE chat answer (chunked) cut after two events."""

    EVENTS = [
        b'data: {"object": "chat.completion.chunk", "model": "gpt-4o-mini-2024-07-18", '
        b'"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}\n\n',
        b'data: {"object": "chat.completion.chunk", "model": "gpt-4o-mini-2024-07-18", '
        b'"choices": [{"index": 0, "delta": {"content": "Your "}}]}\n\n',
    ]

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            data = b""
            while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < self._length(data):
                piece = conn.recv(65536)
                if not piece:
                    return
                data += piece
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n")
            for event in self.EVENTS:
                conn.sendall(f"{len(event):x}\r\n".encode() + event + b"\r\n")
                time.sleep(0.02)

    @staticmethod
    def _length(data: bytes) -> int:
        for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                return int(value)
        return 0

    def close(self) -> None:
        self.sock.close()


def test_proxy_stream_cut_by_the_upstream_keeps_its_chunks(
        redis_server: RedisServer, start_proxy: Callable[..., Proxy]) -> None:
    proxy = start_proxy("--redis-url", redis_server.url, "--workflow", "llm-stream")
    upstream = CutStream()
    try:
        with pytest.raises(requests.RequestException):
            _stream(proxy, upstream.url + "/v1/chat/completions", {
                "model": "gpt-4o-mini", "messages": MESSAGES, "stream": True})
        (event,), _ = wait_events(redis_server, 1)
    finally:
        upstream.close()
    assert event["status"] == "error"
    response = event["response"]
    assert "".join(c["data"] for c in response["chunks"]).encode() == b"".join(CutStream.EVENTS)
    assert response["stream"]["complete"] is False
    assert response["stream"]["error"]["type"] == "UpstreamError"
    assert float(event["tags"]["llm.ttft_ms"]) == response["chunks"][-1]["t"]
    assert event["tags"]["llm.model"] == "gpt-4o-mini-2024-07-18"
