"""The mocks' fault layer: an ASGI middleware applying `tracelab.replay.faults` rules.

`FaultMiddleware` sits in front of each mock vendor app. It serves the admin API (never
faulted itself) and applies the first firing rule to each request:

- `latency_ms` first (an `asyncio.sleep`: other requests go on meanwhile);
- `status`: answered here, the vendor app is not called; without a rule `body`, the body is
  the vendor's own error shape for that status (`error_body`);
- `reset`: the TCP connection is dropped with a reset (SO_LINGER 0), no response;
- `timeout`: no answer for `timeout_s`, or until the client gives up, then the drop;
- `empty_body`, `malformed_body`, `truncate_after`: the vendor app answers, its whole body is
  collected and rewritten (`Fault.mangle`), `content-length` set to the new size;
- `stream_cut_after: N`: the vendor app's first N non-empty body messages are sent (the
  response goes out chunked, without `content-length`), then the connection is closed before
  the end: the client reads N chunks, then a body cut short.

A rule with `match_body` needs the request body: it is read before deciding, parsed (JSON, or
a form body as an object of strings) for the rule, and handed on to the vendor app unchanged.
The target a rule sees is the request's `Host` header; the kind is the mock's (`llm` for
the OpenAI mock, `http` for the others).

Admin API: `GET /__tracelab/faults` lists rules with `matched`/`applied` counters; `POST` adds
a rule, a list of rules or `{"rules": [...]}`; `PUT` replaces them all; `DELETE` removes all;
`DELETE /__tracelab/faults/{id}` removes one, `GET` shows one; `GET /__tracelab/health`
answers 200. A refused rule gets a 422 with every reason in `errors`. At start, `MOCK_FAULTS`
holds rules as JSON (or YAML), or `@/path/to/rules.json`.
"""
from __future__ import annotations

import asyncio
import json
import socket
import struct
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl

from tracelab.replay.faults import Call, Fault, FaultRuleError, FaultSet, parse_rules

ADMIN_PREFIX = "/__tracelab"
FAULTS_PATH = ADMIN_PREFIX + "/faults"
HEALTH_PATH = ADMIN_PREFIX + "/health"
TRANSPORT_KEY = "tracelab.transport"  # scope["extensions"] key set by `uvicorn_protocol()`

ErrorBody = Callable[[int, str], tuple[bytes, str]]
Send = Callable[[dict], Awaitable[None]]
Receive = Callable[[], Awaitable[dict]]


def default_error_body(status: int, path: str) -> tuple[bytes, str]:
    body = {"error": {"status": status, "message": f"fault injected by TraceLab ({status})"}}
    return json.dumps(body).encode(), "application/json"


async def _respond(send: Send, status: int, body: bytes, content_type: str,
                   headers: Mapping[str, str] | None = None) -> None:
    raw = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
    for k, v in (headers or {}).items():
        if k.lower() not in ("content-length", "content-type"):
            raw.append((k.lower().encode("latin-1"), v.encode("latin-1")))
        elif k.lower() == "content-type":
            raw[0] = (b"content-type", v.encode("latin-1"))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _json(send: Send, status: int, obj: Any) -> None:
    await _respond(send, status, json.dumps(obj).encode(), "application/json")


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return b"".join(chunks)


def _replaying(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands the already-read body on to the app, then the real one."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def again() -> dict:
        return pending.pop() if pending else await receive()

    return again


def _header(scope: dict, name: bytes) -> str:
    for key, value in scope.get("headers") or []:
        if key.lower() == name:
            return value.decode("latin-1")
    return ""


def _parsed_body(raw: bytes, content_type: str) -> Any:
    """The request body as a rule's `match_body` sees it: JSON, a form as an object, text."""
    if not raw:
        return None
    if "application/x-www-form-urlencoded" in content_type.lower():
        return dict(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")


async def _wait_disconnect(receive: Receive, seconds: float) -> None:
    async def wait() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    try:
        await asyncio.wait_for(wait(), seconds)
    except asyncio.TimeoutError:
        pass


def _transport(scope: dict) -> asyncio.Transport | None:
    return (scope.get("extensions") or {}).get(TRANSPORT_KEY)


async def _drop(scope: dict, receive: Receive, send: Send) -> None:
    """Close the connection with a TCP reset and no response."""
    transport = _transport(scope)
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:  # SO_LINGER 0: close() sends RST instead of FIN
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        transport.abort()
        await _wait_disconnect(receive, 2.0)  # let the server see the connection is gone
        return
    # Not under `uvicorn_protocol()`: break the response half-way, which every server turns
    # into a closed connection (the client sees an incomplete response).
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"1000"), (b"connection", b"close")]})
    raise ConnectionResetError("fault injected by TraceLab: connection reset")


class _StreamCut(Exception):
    """Raised into the vendor app from `send` when the stream is to be cut."""


def _without_length(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [(k, v) for k, v in headers if k.lower() != b"content-length"]


async def _mangled(app: Any, fault: Fault, scope: dict, receive: Receive, send: Send) -> None:
    """The app's answer with its whole body rewritten by `fault.mangle`."""
    start: dict | None = None
    parts: list[bytes] = []

    async def collect(message: dict) -> None:
        nonlocal start
        if message["type"] == "http.response.start":
            start = message
            return
        if message["type"] != "http.response.body":
            await send(message)
            return
        parts.append(message.get("body", b""))
        if message.get("more_body"):
            return
        assert start is not None
        body = fault.mangle(b"".join(parts))
        headers = _without_length(list(start.get("headers") or []))
        headers.append((b"content-length", str(len(body)).encode()))
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    await app(scope, receive, collect)


async def _cut(app: Any, fault: Fault, scope: dict, receive: Receive, send: Send) -> None:
    """The app's answer, its first N non-empty body messages, then the connection closed."""
    keep = fault.cut_after_chunks or 0
    sent = 0

    async def cutting(message: dict) -> None:
        nonlocal sent
        if message["type"] == "http.response.start":
            headers = _without_length(list(message.get("headers") or []))
            await send({**message, "headers": headers})
            return
        if message["type"] != "http.response.body":
            await send(message)
            return
        data = message.get("body", b"")
        if data and sent < keep:
            sent += 1
            await send({"type": "http.response.body", "body": data, "more_body": True})
        if sent >= keep or not message.get("more_body"):
            raise _StreamCut

    try:
        await app(scope, receive, cutting)
    except _StreamCut:
        pass
    transport = _transport(scope)
    if transport is not None:
        transport.close()  # what was sent is flushed first, then FIN: no chunked terminator
        await _wait_disconnect(receive, 2.0)  # the server then knows the response was cut
        return
    raise ConnectionResetError(fault.message)


class FaultMiddleware:
    """ASGI middleware: serves the admin API and applies the first firing rule to a request."""

    def __init__(self, app: Any, faults: FaultSet | None = None, *, name: str = "mock",
                 error_body: ErrorBody = default_error_body, kind: str = "http") -> None:
        self.app = app
        self.faults = faults if faults is not None else FaultSet.from_env()
        self.name = name
        self.kind = kind
        self.error_body = error_body

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path") or "/"
        if path.startswith(ADMIN_PREFIX + "/"):
            await self._admin(scope, receive, send, path)
            return
        body = None
        if self.faults.needs_body:
            raw = await _read_body(receive)
            receive = _replaying(raw, receive)
            body = _parsed_body(raw, _header(scope, b"content-type"))
        call = Call(self.kind, _header(scope, b"host"), f"{scope['method'].upper()} {path}", body)
        fault = self.faults.decide_call(call)
        if fault is None:
            await self.app(scope, receive, send)
            return
        await self._apply(fault, scope, receive, send, path)

    async def _apply(self, fault: Fault, scope: dict, receive: Receive, send: Send,
                     path: str) -> None:
        if fault.latency_ms > 0:
            await asyncio.sleep(fault.latency_ms / 1000.0)
        action = fault.action
        if action == "latency":
            await self.app(scope, receive, send)
        elif action == "status":
            assert fault.status is not None
            if fault.rule.has_body:
                body, ctype = fault.body_bytes()
            else:
                body, ctype = self.error_body(fault.status, path)
            await _read_body(receive)
            await _respond(send, fault.status, body, ctype, fault.headers)
        elif action == "reset":
            await _drop(scope, receive, send)
        elif action == "timeout":  # never answer; drop the connection when the hold ends
            await _wait_disconnect(receive, fault.timeout_s)
            await _drop(scope, receive, send)
        elif action == "stream_cut":
            await _cut(self.app, fault, scope, receive, send)
        else:  # empty_body, malformed_body, truncate
            await _mangled(self.app, fault, scope, receive, send)

    async def _admin(self, scope: dict, receive: Any, send: Any, path: str) -> None:
        method = scope["method"]
        if path == HEALTH_PATH:
            await _json(send, 200, {"status": "ok", "mock": self.name,
                                    "faults": len(self.faults.rules())})
            return
        if path == FAULTS_PATH:
            if method == "GET":
                await _json(send, 200, {"rules": [r.to_dict() for r in self.faults.rules()]})
                return
            if method == "DELETE":
                await _json(send, 200, {"removed": self.faults.clear()})
                return
            if method in ("POST", "PUT"):
                await self._set_rules(method, receive, send)
                return
            await _json(send, 405, {"detail": f"{method} not allowed on {FAULTS_PATH}; "
                                              "use GET, POST, PUT or DELETE"})
            return
        if path.startswith(FAULTS_PATH + "/"):
            await self._one_rule(method, path[len(FAULTS_PATH) + 1:], send)
            return
        await _json(send, 404, {"detail": f"unknown TraceLab admin path {path}; see "
                                          f"{FAULTS_PATH} and {HEALTH_PATH}"})

    async def _set_rules(self, method: str, receive: Any, send: Any) -> None:
        raw = await _read_body(receive)
        try:
            data = json.loads(raw or b"null")
        except ValueError as exc:
            await _json(send, 422, {"detail": f"body is not JSON: {exc}",
                                    "errors": [f"body is not JSON: {exc}"]})
            return
        try:
            rules = parse_rules(data)
            if method == "POST":
                self.faults.add(rules)
            else:
                self.faults.replace(rules)
        except FaultRuleError as exc:
            await _json(send, 422, {"detail": "invalid fault rule: " + str(exc),
                                    "errors": exc.errors})
            return
        await _json(send, 201 if method == "POST" else 200,
                    {"rules": [r.to_dict() for r in rules]})

    async def _one_rule(self, method: str, rule_id: str, send: Any) -> None:
        if method == "DELETE":
            if self.faults.remove(rule_id):
                await _json(send, 200, {"removed": 1})
            else:
                await _json(send, 404, {"detail": f"no fault rule with id {rule_id!r}"})
            return
        if method == "GET":
            for rule in self.faults.rules():
                if rule.id == rule_id:
                    await _json(send, 200, rule.to_dict())
                    return
            await _json(send, 404, {"detail": f"no fault rule with id {rule_id!r}"})
            return
        await _json(send, 405, {"detail": f"{method} not allowed; use GET or DELETE"})


def uvicorn_protocol() -> type:
    """uvicorn's h11 protocol, exposing each connection's transport to the app in
    `scope["extensions"]["tracelab.transport"]` so `reset` can send a real TCP reset."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class ResettableH11Protocol(H11Protocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            inner = self.app

            async def app(scope: dict, receive: Any, send: Any) -> None:
                scope.setdefault("extensions", {})[TRANSPORT_KEY] = transport
                await inner(scope, receive, send)

            self.app = app

    return ResettableH11Protocol
