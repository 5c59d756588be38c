"""Cancelled and cut-short calls: exactly one event each, and the app sees what it sees without us.

The Python half of issue 18 (the TypeScript SDK's aborts): a `requests` or `httpx` call whose
socket another thread shuts down while a loopback server never answers, an asyncio task
cancelled mid-call, an httpx stream closed before its body is read or left early (a `with
client.stream(...)` block exited by `break` or by an exception), a stream cut mid-body from
another thread, and a stream dropped unclosed. Each scenario runs twice, first without TraceLab
and then traced, and must end the same way for the app (same result, or the same exception type
and message, raised from the library's own frame); the traced run must record exactly one event
(never zero, never two) with the status and error that ended the call.
"""
from __future__ import annotations

import asyncio
import gc
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import requests

import tracelab

from conftest import RedisServer, raised_in_library, read_events

PARTIAL_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100000\r\n\r\n"
                b"first piece ")


class _Silent:
    """A loopback server that reads each request and then never answers (`partial`: it sends
    the headers and the first piece of a 100000-byte body, and nothing more)."""

    def __init__(self, partial: bool) -> None:
        self.partial = partial
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.arrived = threading.Condition()
        self.peers: list[tuple[str, int]] = []
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, peer = self.listener.accept()
            except OSError:
                return
            self.conns.append(conn)
            data = b""
            while b"\r\n\r\n" not in data:
                piece = conn.recv(65536)
                if not piece:
                    break
                data += piece
            if self.partial:
                conn.sendall(PARTIAL_HEAD)
            with self.arrived:
                self.peers.append(peer)
                self.arrived.notify_all()

    def wait_for(self, n: int) -> tuple[str, int]:
        """The client address of the `n`th request (1-based), once it has arrived."""
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.peers) >= n, timeout=10)
            return self.peers[n - 1]

    def close(self) -> None:
        self.listener.close()
        for conn in self.conns:
            conn.close()


@contextmanager
def silent(partial: bool = False) -> Iterator[_Silent]:
    server = _Silent(partial)
    try:
        yield server
    finally:
        server.close()


def _client_socket(peer: tuple[str, int]) -> socket.socket:
    """The client's end of the connection the server sees from `peer`: the one handle another
    thread has on a call in flight (neither library offers a cancel)."""
    for obj in gc.get_objects():
        if isinstance(obj, socket.socket):
            try:
                if obj.getsockname() == peer:
                    return obj
            except OSError:
                continue
    raise AssertionError(f"no client socket bound to {peer}")


@contextmanager
def shut_down_from_another_thread(server: _Silent, nth: int) -> Iterator[None]:
    """Once the server holds its `nth` request (and sent what it sends), another thread shuts
    that client socket down, as an app cancelling a call from a watchdog thread would."""
    def cancel() -> None:
        _client_socket(server.wait_for(nth)).shutdown(socket.SHUT_RDWR)

    thread = threading.Thread(target=cancel)
    thread.start()
    try:
        yield
    finally:
        thread.join(10)


def _outcome(scenario: Callable[[], Any]) -> tuple[Any, ...]:
    """What the app got: ("ok", value), or the exception's type, message and whether it was
    raised from the library's own frame (not from TraceLab's wrapper)."""
    try:
        return ("ok", scenario())
    except BaseException as exc:  # CancelledError included: it is the outcome under test
        return (f"{type(exc).__module__}.{type(exc).__qualname__}", str(exc),
                raised_in_library(exc))


def _both(server: RedisServer, scenario: Callable[[], Any]) -> tuple[tuple[Any, ...], list[dict[str, Any]]]:
    """Run `scenario` without TraceLab, then traced; both outcomes must be equal. Returns the
    outcome and the traced run's events."""
    plain = _outcome(scenario)
    tracelab.init(workflow_name=f"cancel-{uuid.uuid4().hex[:8]}", service_name="cancel",
                  redis_url=server.url)
    try:
        traced = _outcome(scenario)
        gc.collect()  # a stream dropped unclosed ends when it is collected
        events, _ = read_events(server)
    finally:
        tracelab.shutdown()
    assert traced == plain
    return traced, events


def _one(events: list[dict[str, Any]], endpoint: str) -> dict[str, Any]:
    """The only event of the call, failing on zero or two."""
    found = [e for e in events if e["endpoint"] == endpoint]
    assert len(found) == 1, [(e["endpoint"], e["status"], e["error"]) for e in events]
    return found[0]


def test_requests_call_cut_from_another_thread(redis_server: RedisServer,
                                               tracelab_home: Any) -> None:
    def scenario() -> Any:
        with silent() as server, shut_down_from_another_thread(server, 1):
            return requests.get(f"{server.url}/requests-cut", timeout=10)

    outcome, events = _both(redis_server, scenario)
    assert outcome[:2] == ("requests.exceptions.ConnectionError", "('Connection aborted.', "
                           "RemoteDisconnected('Remote end closed connection without response'))")
    assert outcome[2] is True
    event = _one(events, "GET /requests-cut")
    assert (event["status"], event["status_code"], event["response"]) == ("error", None, None)
    assert event["error"] == {"type": "ConnectionError", "message": outcome[1]}


def test_requests_stream_closed_early_and_cut_mid_body(redis_server: RedisServer,
                                                      tracelab_home: Any) -> None:
    def scenario() -> Any:
        with silent(partial=True) as server:
            early = requests.get(f"{server.url}/requests-closed", stream=True, timeout=10)
            early.close()
            cut = requests.get(f"{server.url}/requests-cut-body", stream=True, timeout=10)
            with shut_down_from_another_thread(server, 2):
                return early.status_code, cut.content

    outcome, events = _both(redis_server, scenario)
    assert outcome[0] == "requests.exceptions.ChunkedEncodingError"
    assert "IncompleteRead(12 bytes read, 99988 more expected)" in outcome[1]
    closed = _one(events, "GET /requests-closed")
    assert (closed["status"], closed["status_code"], closed["error"]) == ("ok", 200, None)
    assert closed["response"]["stream"] == {"complete": False, "error": None, "size": 0,
                                            "truncated": False}
    cut = _one(events, "GET /requests-cut-body")
    assert (cut["status"], cut["status_code"]) == ("error", 200)
    # urllib3's error, which requests re-raises to the app as ChunkedEncodingError
    assert cut["error"]["type"] == "ProtocolError"
    assert "IncompleteRead(12 bytes read, 99988 more expected)" in cut["error"]["message"]
    assert cut["response"]["stream"]["complete"] is False


def test_httpx_call_cut_from_another_thread(redis_server: RedisServer,
                                            tracelab_home: Any) -> None:
    def scenario() -> Any:
        with silent() as server, httpx.Client(timeout=10) as client, \
                shut_down_from_another_thread(server, 1):
            return client.get(f"{server.url}/httpx-cut")

    outcome, events = _both(redis_server, scenario)
    assert outcome == ("httpx.RemoteProtocolError",
                       "Server disconnected without sending a response.", True)
    event = _one(events, "GET /httpx-cut")
    assert (event["status"], event["status_code"], event["response"]) == ("error", None, None)
    assert event["error"] == {"type": "RemoteProtocolError", "message": outcome[1]}


def test_httpx_async_call_cancelled(redis_server: RedisServer, tracelab_home: Any) -> None:
    async def call(server: _Silent) -> Any:
        async with httpx.AsyncClient(timeout=10) as client:
            task = asyncio.create_task(client.get(f"{server.url}/httpx-cancelled"))
            await asyncio.get_running_loop().run_in_executor(None, server.wait_for, 1)
            task.cancel()
            return await task

    def scenario() -> Any:
        with silent() as server:
            return asyncio.run(call(server))

    outcome, events = _both(redis_server, scenario)
    assert outcome[:2] == ("asyncio.exceptions.CancelledError", "")
    event = _one(events, "GET /httpx-cancelled")
    assert (event["status"], event["status_code"]) == ("error", None)
    assert event["error"] == {"type": "CancelledError", "message": ""}


def test_httpx_streams_closed_or_left_early(redis_server: RedisServer,
                                            tracelab_home: Any) -> None:
    def scenario() -> Any:
        with silent(partial=True) as server, httpx.Client(timeout=10) as client:
            closed = client.send(client.build_request("GET", f"{server.url}/closed"), stream=True)
            closed.close()  # before reading anything
            with client.stream("GET", f"{server.url}/left") as left:
                for _piece in left.iter_bytes():
                    break  # the block is left after the first piece
            client.send(client.build_request("GET", f"{server.url}/dropped"), stream=True)
            try:
                with client.stream("GET", f"{server.url}/raised"):
                    raise KeyError("left the block")
            except KeyError as exc:
                raised = str(exc)
            return closed.status_code, left.status_code, raised

    outcome, events = _both(redis_server, scenario)
    assert outcome == ("ok", (200, 200, "'left the block'"))
    read = {"/closed": 0, "/left": 12, "/dropped": 0, "/raised": 0}
    for path, size in read.items():
        event = _one(events, f"GET {path}")
        assert (event["status"], event["status_code"], event["error"]) == ("ok", 200, None), path
        assert event["response"]["stream"] == {"complete": False, "error": None, "size": size,
                                               "truncated": False}, path


def test_httpx_stream_cut_mid_body_from_another_thread(redis_server: RedisServer,
                                                       tracelab_home: Any) -> None:
    def scenario() -> Any:
        with silent(partial=True) as server, httpx.Client(timeout=10) as client:
            with client.stream("GET", f"{server.url}/httpx-cut-body") as response, \
                    shut_down_from_another_thread(server, 1):
                return response.read()

    outcome, events = _both(redis_server, scenario)
    message = ("peer closed connection without sending complete message body "
               "(received 12 bytes, expected 100000)")
    assert outcome == ("httpx.RemoteProtocolError", message, True)
    event = _one(events, "GET /httpx-cut-body")
    assert (event["status"], event["status_code"]) == ("error", 200)
    assert event["error"] == {"type": "RemoteProtocolError", "message": message}
    assert event["response"]["stream"]["complete"] is False
    assert event["response"]["stream"]["size"] == 12
