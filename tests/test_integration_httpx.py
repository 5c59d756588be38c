"""httpx integration: real sync and async clients against a real HTTP server on loopback."""
from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

import tracelab
from tracelab.sdk.context import suppress_http
from tracelab.sdk.integrations import httpx as httpx_integration

from conftest import (RedisServer, capture_broken, free_port, raised_in_library, read_events,
                      run_late_import)

API_KEY = "sk-live-query-4f9a1c"
BEARER = "bearer-secret-77aa10"
RESPONSE_TOKEN = "resp-token-0b1c2d"
PASSWORD = "hunter2-body-secret"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass

    def _reply(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip() or b"0", 16)
                chunk = self.rfile.read(size)
                self.rfile.readline()
                if size == 0:
                    return b"".join(chunks)
                chunks.append(chunk)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def do_GET(self) -> None:
        path = self.path.partition("?")[0]
        if path == "/ok":
            body = {"hello": "world", "access_token": RESPONSE_TOKEN}
            self._reply(200, json.dumps(body).encode())
        elif path == "/fail":
            self._reply(503, b'{"error": "overloaded"}')
        elif path == "/stream":
            self._reply(200, b"line one\nline two\n", "text/plain")
        else:
            self._reply(404, b"not found", "text/plain")

    def do_POST(self) -> None:
        body = self._read_body()
        self._reply(200, body or b"{}", self.headers.get("Content-Type") or "application/json")


@pytest.fixture(scope="module")
def http_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def of_kind(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["kind"] == kind]


def test_sync_get_nested_in_span_and_redacted(traced: RedisServer, http_server: str) -> None:
    with httpx.Client() as client, tracelab.span("agent-step") as step:
        response = client.get(f"{http_server}/ok", params={"api_key": API_KEY, "q": "weather"},
                              headers={"Authorization": f"Bearer {BEARER}", "X-Trace": "1"})
    assert response.json()["access_token"] == RESPONSE_TOKEN  # the app sees the real body

    events, raw = read_events(traced)
    [event] = of_kind(events, "http")
    port = http_server.rsplit(":", 1)[1]
    assert event["target"] == f"127.0.0.1:{port}"
    assert event["endpoint"] == "GET /ok"
    assert (event["status"], event["status_code"], event["error"]) == ("ok", 200, None)
    assert event["parent_id"] == step.span_id
    assert event["request"]["url"].endswith("/ok?api_key=[REDACTED]&q=weather")
    assert event["request"]["headers"]["Authorization"] == "[REDACTED]"
    assert event["request"]["headers"]["X-Trace"] == "1"
    assert event["response"]["body"] == {"hello": "world", "access_token": "[REDACTED]"}
    for secret in (API_KEY, BEARER, RESPONSE_TOKEN):
        assert secret.encode() not in raw


def test_sync_post_json_and_http_error_status(traced: RedisServer, http_server: str) -> None:
    with httpx.Client() as client:
        echoed = client.post(f"{http_server}/echo", json={"user": "ada", "password": PASSWORD})
        failed = client.get(f"{http_server}/fail")
    assert echoed.json()["password"] == PASSWORD
    assert failed.status_code == 503

    events, raw = read_events(traced)
    assert [e["endpoint"] for e in events] == ["POST /echo", "GET /fail"]
    post, fail = events
    assert post["request"]["body"] == {"user": "ada", "password": "[REDACTED]"}
    assert post["response"]["body"] == {"user": "ada", "password": "[REDACTED]"}
    assert (post["status"], post["status_code"]) == ("ok", 200)
    assert (fail["status"], fail["status_code"], fail["error"]) == ("error", 503, None)
    assert fail["response"]["body"] == {"error": "overloaded"}
    assert PASSWORD.encode() not in raw


def test_refused_connection_is_an_error_and_reraised(traced: RedisServer) -> None:
    closed = free_port()
    with httpx.Client() as client, pytest.raises(httpx.ConnectError) as caught:
        client.get(f"http://127.0.0.1:{closed}/nothing-here")
    assert raised_in_library(caught.value)

    events, _ = read_events(traced)
    [event] = events
    assert event["endpoint"] == "GET /nothing-here"
    assert event["target"] == f"127.0.0.1:{closed}"
    assert (event["status"], event["status_code"], event["response"]) == ("error", None, None)
    assert event["error"]["type"] == "ConnectError"


def test_async_client_nests_per_task(traced: RedisServer, http_server: str) -> None:
    @tracelab.trace
    async def fetch(path: str) -> int:
        async with httpx.AsyncClient() as client:
            return (await client.get(f"{http_server}{path}")).status_code

    async def main() -> list[int]:
        return await asyncio.gather(fetch("/ok"), fetch("/fail"))

    assert asyncio.run(main()) == [200, 503]

    events, _ = read_events(traced)
    spans = {e["request"]["args"]["path"]: e for e in of_kind(events, "function")}
    calls = {e["endpoint"]: e for e in of_kind(events, "http")}
    assert len(calls) == 2 and len(spans) == 2
    assert calls["GET /ok"]["parent_id"] == spans["/ok"]["span_id"]
    assert calls["GET /fail"]["parent_id"] == spans["/fail"]["span_id"]
    assert (calls["GET /ok"]["status"], calls["GET /ok"]["status_code"]) == ("ok", 200)
    assert (calls["GET /fail"]["status"], calls["GET /fail"]["status_code"]) == ("error", 503)


def test_async_refused_connection(traced: RedisServer) -> None:
    closed = free_port()

    async def main() -> None:
        async with httpx.AsyncClient() as client:
            await client.post(f"http://127.0.0.1:{closed}/v1/send", json={"a": 1})

    with pytest.raises(httpx.ConnectError) as caught:
        asyncio.run(main())
    assert raised_in_library(caught.value)
    events, _ = read_events(traced)
    [event] = events
    assert (event["endpoint"], event["status"], event["error"]["type"]) == \
        ("POST /v1/send", "error", "ConnectError")
    assert event["request"]["body"] == {"a": 1}


def test_streams_are_never_read_for_the_caller(traced: RedisServer, http_server: str) -> None:
    def upload() -> Iterator[bytes]:
        yield b"part one,"
        yield b"part two"

    with httpx.Client() as client:
        with client.stream("GET", f"{http_server}/stream") as streamed:
            assert not streamed.is_stream_consumed  # TraceLab did not read it
            assert streamed.read() == b"line one\nline two\n"
        uploaded = client.post(f"{http_server}/echo", content=upload(),
                               headers={"Content-Type": "text/plain"})
    assert uploaded.text == "part one,part two"

    async def async_stream() -> bytes:
        async with httpx.AsyncClient() as client:
            request = client.build_request("GET", f"{http_server}/stream")
            response = await client.send(request, stream=True)
            try:
                assert not response.is_stream_consumed
                return await response.aread()
            finally:
                await response.aclose()

    assert asyncio.run(async_stream()) == b"line one\nline two\n"

    events, _ = read_events(traced)
    sync_stream, upload_event, async_event = events
    for event in (sync_stream, async_event):
        assert event["endpoint"] == "GET /stream"
        assert event["status_code"] == 200
        assert event["response"]["body"] == "line one\nline two\n"  # teed as the caller read it
        assert event["response"]["stream"]["complete"] is True
    assert upload_event["request"]["body"]["$tracelab"] == "not_captured"
    assert upload_event["response"]["body"] == "part one,part two"


def test_suppressed_http_is_not_recorded(traced: RedisServer, http_server: str) -> None:
    with httpx.Client() as client:
        with suppress_http():
            client.get(f"{http_server}/ok")
        client.get(f"{http_server}/fail")
    events, _ = read_events(traced)
    assert [e["endpoint"] for e in events] == ["GET /fail"]


def test_httpx_imported_after_init_is_traced(redis_server: RedisServer, http_server: str,
                                             tracelab_home: Any) -> None:
    events, _ = run_late_import(redis_server, ("httpx",), f"""
        import httpx
        assert httpx.get({http_server + '/ok'!r}).status_code == 200
        """)
    [event] = events
    assert (event["workflow"], event["endpoint"], event["status_code"]) == \
        ("late-import", "GET /ok", 200)


def test_failing_capture_is_counted_never_felt(traced: RedisServer, http_server: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    with capture_broken(monkeypatch, httpx_integration, "record_http"):
        assert httpx.get(f"{http_server}/ok").status_code == 200
