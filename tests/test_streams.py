"""Streamed responses recorded as the caller reads them (tracelab/sdk/streams.py), against a real
HTTP server on loopback that streams chunked bodies and SSE with pauses between pieces."""
from __future__ import annotations

import asyncio
import json
import threading
import time
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests

import tracelab

from conftest import RedisServer, read_events

SSE = [b"data: one\n\n", b"data: two\n\n", b"data: three\n\n"]
STRIPE_KEY = "sk_live_51H8xQ2eZvKYlo2C0aBcDeFgHiJkLmNoPq"
GATE_SECONDS = 10.0


class _StreamingHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    gate: threading.Event
    gate_opened: list[bool]

    def log_message(self, *args: Any) -> None:
        pass

    def _start(self, content_type: str = "text/event-stream") -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        if self.path == "/gzip":
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _end(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def do_GET(self) -> None:
        path = self.path.partition("?")[0]
        if path == "/sse":
            self._start()
            for piece in SSE:
                self._chunk(piece)
                time.sleep(0.02)
            self._end()
        elif path == "/gated":
            # The second piece is sent only once the client said it has the first: a client
            # (or a tee) that reads ahead never gets the first piece, and the gate times out.
            self._start()
            self._chunk(b"data: first\n\n")
            self.gate_opened.append(self.gate.wait(GATE_SECONDS))
            self._chunk(b"data: second\n\n")
            self._end()
        elif path == "/cut":
            self._start()
            self._chunk(b"data: before\n\n")
            time.sleep(0.02)
            self.wfile.write(b"40\r\npartial")  # a chunk announced, then the connection dies
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
        elif path == "/split-secret":
            self._start("text/plain")
            self._chunk(f"key={STRIPE_KEY[:12]}".encode())
            time.sleep(0.02)
            self._chunk(f"{STRIPE_KEY[12:]} end".encode())
            self._end()
        elif path == "/gzip":
            # One gzip stream sent in pieces: the tee records what the caller gets, decoded.
            self._start()
            packer = zlib.compressobj(wbits=31)
            for piece in SSE:
                self._chunk(packer.compress(piece) + packer.flush(zlib.Z_SYNC_FLUSH))
                time.sleep(0.02)
            self._chunk(packer.flush())
            self._end()
        elif path.startswith("/big/"):
            pieces = int(path.rsplit("/", 1)[1])
            self._start("text/plain")
            for i in range(pieces):
                self._chunk(b"%04d" % i + b"x" * 96)
            self._end()
        else:
            self.send_error(404)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        request = json.loads(self.rfile.read(length) or b"{}")
        self._start()
        if self.path.endswith("/v1/messages"):
            self._anthropic_stream(request)
            return
        for word in ("Hel", "lo"):
            delta = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
                     "model": request.get("model", "gpt-4o-mini"),
                     "choices": [{"index": 0, "delta": {"content": word},
                                  "finish_reason": None}]}
            self._chunk(b"data: " + json.dumps(delta).encode() + b"\n\n")
            time.sleep(0.02)
        self._chunk(b"data: [DONE]\n\n")
        self._end()


    def _anthropic_stream(self, request: dict) -> None:
        """Anthropic's Messages streaming format: named SSE events, text in deltas."""
        model = request.get("model", "claude-sonnet-4-5")
        events = [("message_start", {"type": "message_start", "message": {
                      "id": "msg_1", "type": "message", "role": "assistant", "content": [],
                      "model": model, "stop_reason": None, "stop_sequence": None,
                      "usage": {"input_tokens": 5, "output_tokens": 1}}}),
                  ("content_block_start", {"type": "content_block_start", "index": 0,
                                           "content_block": {"type": "text", "text": ""}})]
        events += [("content_block_delta", {"type": "content_block_delta", "index": 0,
                                            "delta": {"type": "text_delta", "text": word}})
                   for word in ("Hel", "lo")]
        events += [("content_block_stop", {"type": "content_block_stop", "index": 0}),
                   ("message_delta", {"type": "message_delta",
                                      "delta": {"stop_reason": "end_turn",
                                                "stop_sequence": None},
                                      "usage": {"output_tokens": 2}}),
                   ("message_stop", {"type": "message_stop"})]
        for name, data in events:
            self._chunk(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
            time.sleep(0.01)
        self._end()


@pytest.fixture
def streaming_server() -> Iterator[tuple[str, threading.Event, list[bool]]]:
    gate, opened = threading.Event(), []
    handler = type("Handler", (_StreamingHandler,), {"gate": gate, "gate_opened": opened})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", gate, opened
    gate.set()
    server.shutdown()
    server.server_close()


@pytest.fixture
def small_cap(redis_server: RedisServer, tracelab_home: Path) -> Iterator[RedisServer]:
    tracelab.init(workflow_name="streams", redis_url=redis_server.url, max_body_bytes=1000)
    try:
        yield redis_server
    finally:
        tracelab.shutdown()


def joined(event: dict[str, Any]) -> str:
    return "".join(c["data"] for c in event["response"]["chunks"])


def assert_offsets(event: dict[str, Any]) -> None:
    offsets = [c["t"] for c in event["response"]["chunks"]]
    assert offsets == sorted(offsets) and all(t >= 0 for t in offsets)
    assert offsets[-1] <= event["latency_ms"]


def test_requests_iter_lines_sse_recorded_chunk_by_chunk(traced: RedisServer,
                                                          streaming_server: Any) -> None:
    url, _gate, _opened = streaming_server
    with requests.get(f"{url}/sse", stream=True, timeout=10) as response:
        lines = [line for line in response.iter_lines() if line]
    assert lines == [b"data: one", b"data: two", b"data: three"]
    (event,) = read_events(traced)[0]
    assert event["status"] == "ok"
    assert event["response"]["stream"] == {"complete": True, "error": None,
                                           "size": sum(map(len, SSE)), "truncated": False}
    assert joined(event) == b"".join(SSE).decode()
    assert event["response"]["body"] == b"".join(SSE).decode()
    assert len(event["response"]["chunks"]) == 3  # the server's pauses separate the pieces
    assert_offsets(event)


def test_the_caller_gets_each_piece_before_the_next_is_sent(traced: RedisServer,
                                                            streaming_server: Any) -> None:
    url, gate, opened = streaming_server
    got = []
    with requests.get(f"{url}/gated", stream=True, timeout=30) as response:
        for line in response.iter_lines():
            if line:
                got.append(line)
                gate.set()  # the server sends piece 2 only now
    with httpx.Client() as client, client.stream("GET", f"{url}/gated") as streamed:
        gate.clear()
        for line in streamed.iter_lines():
            if line:
                got.append(line.encode())
                gate.set()
    assert got == [b"data: first", b"data: second"] * 2
    assert opened == [True, True]  # neither tee read ahead of its caller
    events, _ = read_events(traced)
    assert [joined(e) for e in events] == ["data: first\n\ndata: second\n\n"] * 2


def test_httpx_sync_stream_and_async_aiter(traced: RedisServer, streaming_server: Any) -> None:
    url, _gate, _opened = streaming_server
    with httpx.Client() as client, client.stream("GET", f"{url}/sse") as streamed:
        assert [piece for piece in streamed.iter_bytes()] == SSE

    async def read_async() -> tuple[list[bytes], list[str]]:
        async with httpx.AsyncClient() as client:
            async with client.stream("GET", f"{url}/sse") as one:
                pieces = [piece async for piece in one.aiter_bytes()]
            async with client.stream("GET", f"{url}/sse") as two:
                lines = [line async for line in two.aiter_lines() if line]
        return pieces, lines

    pieces, lines = asyncio.run(read_async())
    assert pieces == SSE and lines == ["data: one", "data: two", "data: three"]
    events, _ = read_events(traced)
    assert len(events) == 3
    for event in events:
        assert event["response"]["stream"]["complete"] is True
        assert [c["data"].encode() for c in event["response"]["chunks"]] == SSE
        assert_offsets(event)


def test_openai_client_streaming_chat_completion(traced: RedisServer,
                                                 streaming_server: Any) -> None:
    import openai

    url, _gate, _opened = streaming_server
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-proj-abcdefghijklmnopqrstuvwx12")
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream
                   if chunk.choices)
    assert text == "Hello"
    (event,) = read_events(traced)[0]
    assert event["kind"] == "llm" and event["endpoint"] == "POST /v1/chat/completions"
    # The client stops at `[DONE]` and closes the response before the HTTP body's end: all
    # of the data is recorded, and the stream says it was closed before its end.
    assert event["status"] == "ok" and event["response"]["stream"]["error"] is None
    assert joined(event).endswith("data: [DONE]\n\n")
    assert '"content": "Hel"' in event["response"]["chunks"][0]["data"]


def test_anthropic_client_streaming_message(traced: RedisServer, streaming_server: Any) -> None:
    import anthropic

    url, _gate, _opened = streaming_server
    client = anthropic.Anthropic(base_url=url, api_key="sk-ant-api03-abcdefghijklmnopqrstuvwxyz")
    stream = client.messages.create(
        model="claude-sonnet-4-5", max_tokens=16, stream=True,
        messages=[{"role": "user", "content": "hi"}])
    text = "".join(event.delta.text for event in stream
                   if event.type == "content_block_delta")
    assert text == "Hello"
    (event,) = read_events(traced)[0]
    assert event["kind"] == "llm" and event["endpoint"] == "POST /v1/messages"
    assert event["tags"]["llm.provider"] == "anthropic"
    assert event["status"] == "ok" and event["response"]["stream"]["error"] is None
    recorded = joined(event)
    assert recorded.count("event: content_block_delta") == 2
    assert recorded.rstrip().endswith('data: {"type": "message_stop"}')
    assert len(event["response"]["chunks"]) >= 2
    assert "sk-ant-api03" not in json.dumps(event)


def test_a_stream_cut_by_the_server_keeps_the_chunks_before_the_error(
        traced: RedisServer, streaming_server: Any) -> None:
    url, _gate, _opened = streaming_server
    got = []
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        with requests.get(f"{url}/cut", stream=True, timeout=10) as response:
            for piece in response.iter_content(chunk_size=None):
                got.append(piece)
    with pytest.raises(httpx.RemoteProtocolError):
        with httpx.Client() as client, client.stream("GET", f"{url}/cut") as streamed:
            for piece in streamed.iter_bytes():
                got.append(piece)
    assert got[0] == b"data: before\n\n"
    events, _ = read_events(traced)
    assert len(events) == 2
    for event in events:
        assert event["status"] == "error" and event["error"] is not None
        stream = event["response"]["stream"]
        assert stream["complete"] is False and stream["error"] == event["error"]
        assert event["response"]["chunks"][0]["data"] == "data: before\n\n"


def test_a_caller_that_stops_early_and_closes_is_recorded_incomplete(
        traced: RedisServer, streaming_server: Any) -> None:
    url, _gate, _opened = streaming_server
    with requests.get(f"{url}/big/50", stream=True, timeout=10) as response:
        first = next(response.iter_content(chunk_size=100))
    with httpx.Client() as client, client.stream("GET", f"{url}/big/50") as streamed:
        first_httpx = next(streamed.iter_raw())
    assert first.startswith(b"0000") and first_httpx.startswith(b"0000")
    events, _ = read_events(traced)
    assert len(events) == 2
    for event in events:
        assert event["status"] == "ok"
        stream = event["response"]["stream"]
        assert stream == {"complete": False, "error": None, "size": stream["size"],
                          "truncated": False}
        assert 100 <= stream["size"] < 5000
        assert joined(event).startswith("0000")


def test_an_unread_response_dropped_by_the_caller_is_recorded_when_collected(
        traced: RedisServer, streaming_server: Any) -> None:
    import gc

    url, _gate, _opened = streaming_server
    response = requests.get(f"{url}/sse", stream=True, timeout=10)
    del response
    gc.collect()
    (event,) = read_events(traced)[0]
    assert event["response"]["stream"]["complete"] is False
    assert event["response"]["chunks"] == [] and event["response"]["stream"]["size"] == 0


def test_a_stream_over_the_cap_is_read_through_and_marked_truncated(
        small_cap: RedisServer, streaming_server: Any) -> None:
    url, _gate, _opened = streaming_server
    with requests.get(f"{url}/big/30", stream=True, timeout=10) as response:
        body = b"".join(response.iter_content(chunk_size=None))
    with httpx.Client() as client, client.stream("GET", f"{url}/big/30") as streamed:
        assert streamed.read() == body
    assert len(body) == 3000 and body.endswith(b"0029" + b"x" * 96)
    events, _ = read_events(small_cap)
    for event in events:
        stream = event["response"]["stream"]
        assert stream == {"complete": True, "error": None, "size": 3000, "truncated": True}
        assert len(joined(event).encode()) == 1000 and body.decode().startswith(joined(event))
        assert event["response"]["body"]["$tracelab"] == "truncated"
        assert event["response"]["body"]["size"] == 3000


def test_a_secret_split_across_two_chunks_is_redacted(traced: RedisServer,
                                                       streaming_server: Any) -> None:
    url, _gate, _opened = streaming_server
    with requests.get(f"{url}/split-secret", stream=True, timeout=10) as response:
        pieces = list(response.iter_content(chunk_size=None))
    assert b"".join(pieces) == f"key={STRIPE_KEY} end".encode()
    events, raw = read_events(traced)
    (event,) = events
    assert STRIPE_KEY[:12].encode() not in raw.replace(b"key=[REDACTED]", b"")
    assert STRIPE_KEY[12:].encode() not in raw
    assert joined(event) == "key=[REDACTED] end"
    assert len(event["response"]["chunks"]) == 2


def test_a_compressed_stream_is_recorded_as_the_caller_reads_it(
        traced: RedisServer, streaming_server: Any) -> None:
    url, _gate, _opened = streaming_server
    with requests.get(f"{url}/gzip", stream=True, timeout=10) as response:
        assert b"".join(response.iter_content(chunk_size=None)) == b"".join(SSE)
    with httpx.Client() as client, client.stream("GET", f"{url}/gzip") as streamed:
        assert b"".join(streamed.iter_bytes()) == b"".join(SSE)
    events, _ = read_events(traced)
    assert len(events) == 2
    for event in events:
        assert joined(event) == b"".join(SSE).decode()
        assert event["response"]["stream"]["size"] == len(b"".join(SSE))


def test_a_byte_by_byte_reader_is_recorded_in_at_most_max_chunks_pieces(
        traced: RedisServer, streaming_server: Any) -> None:
    from tracelab.sdk.streams import MAX_CHUNKS

    url, _gate, _opened = streaming_server
    with requests.get(f"{url}/big/50", stream=True, timeout=10) as response:
        body = b"".join(response.iter_content(chunk_size=1))
    (event,) = read_events(traced)[0]
    assert len(body) == 5000 and joined(event) == body.decode()
    assert len(event["response"]["chunks"]) == MAX_CHUNKS  # the rest joined to the last one


def test_a_failing_stream_capture_never_reaches_the_caller(
        traced: RedisServer, streaming_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import capture_broken
    from tracelab.sdk.integrations import httpx as httpx_integration
    from tracelab.sdk.integrations import requests as requests_integration

    url, _gate, _opened = streaming_server
    with capture_broken(monkeypatch, requests_integration, "_record_stream"):
        with requests.get(f"{url}/sse", stream=True, timeout=10) as response:
            assert list(response.iter_content(chunk_size=None)) == SSE
    with capture_broken(monkeypatch, httpx_integration, "_record_stream"):
        with httpx.Client() as client, client.stream("GET", f"{url}/sse") as streamed:
            assert list(streamed.iter_bytes()) == SSE
    with capture_broken(monkeypatch, httpx_integration, "_tee"):
        with httpx.Client() as client, client.stream("GET", f"{url}/sse") as streamed:
            assert list(streamed.iter_bytes()) == SSE
    assert read_events(traced)[0][0]["response"]["body"]["$tracelab"] == "not_captured"


def test_async_openai_client_streaming_chat_completion(traced: RedisServer,
                                                       streaming_server: Any) -> None:
    import openai

    url, _gate, _opened = streaming_server

    async def chat() -> str:
        client = openai.AsyncOpenAI(base_url=f"{url}/v1",
                                    api_key="sk-proj-abcdefghijklmnopqrstuvwx12")
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True)
        text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream
                        if chunk.choices])
        await client.close()
        return text

    assert asyncio.run(chat()) == "Hello"
    (event,) = read_events(traced)[0]
    assert event["kind"] == "llm" and event["response"]["stream"]["error"] is None
    assert [c["data"] for c in event["response"]["chunks"]][-1] == "data: [DONE]\n\n"
    assert "sk-proj-abcdefghijklmnop" not in json.dumps(event)
