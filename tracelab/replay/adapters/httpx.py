"""httpx replay: `HTTPTransport.handle_request` / `AsyncHTTPTransport.handle_async_request`.

The SDK records at `Client.send` / `AsyncClient.send`, above the transport, so answering in
the default transports leaves the recording wrapper in charge: a replayed response is recorded
like a live one (a transport the application mounts itself is its own business and is not
touched). The answer is an `httpx.Response` with the recorded status, headers and body
as a byte stream, so `read()`, `iter_bytes()`, `aiter_lines()` and `client.stream(...)` behave
as usual. A recorded stream yields its chunks at their recorded offsets (speed > 0; the async
transport sleeps with asyncio, never blocking the loop), and one that failed mid-way raises
`httpx.ReadError` at the same chunk. A miss raises `httpx.ConnectError` with the matcher's
explanation; nothing is sent.

Faults (see tracelab/replay/session.py): a `status` fault is a response like any other, a
`stream_cut` a recorded stream failing mid-way (`httpx.ReadError`); `reset` raises
`httpx.ReadError` (the connection dropped before the response), and `timeout` waits the
fault's `timeout_s` (or the request's own read timeout, if shorter; asyncio.sleep in the async
transport) and raises `httpx.ReadTimeout`.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from http import HTTPStatus
from typing import Any

import httpx

from tracelab.replay.session import (
    HANDLED_HEADER,
    Outcome,
    Session,
    active,
    answer_chunks,
    body_bytes,
    clear_outcome,
    hang_seconds,
    recorded_headers,
    stream_error,
    take_view,
    timed_chunks,
    vendor_went_live,
)
from tracelab.sdk.integrations._patching import patch, unpatch


def live_view(request: Any) -> dict[str, Any]:
    """The request in the stored shape (same helpers as the SDK's httpx capture)."""
    from tracelab.replay.session import recorder
    from tracelab.replay.matching import http_request_view

    rec = recorder()
    body = getattr(request, "_content", None)
    note = None
    if not isinstance(body, bytes):
        note, body = f"streamed upload ({type(request.stream).__name__})", None
    view = http_request_view(request.method, str(request.url), request.headers.raw, body, None,
                             rec.redactor, rec.config.max_body_bytes,
                             capture_payloads=rec.config.capture_payloads, body_note=note)
    return {"kind": "http", "request": view}


def _failure(error: dict[str, Any] | None) -> str:
    error = error or {}
    return f"{error.get('type', 'Error')}: {error.get('message', 'stream failed')} (replayed)"


def _read_timeout(request: Any) -> float | None:
    """The request's read timeout (httpx puts the client's in the request's extensions)."""
    timeout = request.extensions.get("timeout") if hasattr(request, "extensions") else None
    read = timeout.get("read") if isinstance(timeout, dict) else None
    return float(read) if isinstance(read, (int, float)) else None


def _timeout(outcome: Outcome, request: Any, waited: float) -> Exception:
    message = outcome.fault.message if outcome.fault is not None else "timed out"
    return httpx.ReadTimeout(f"{message} (read timeout={waited:g}s)", request=request)


def _recorded_reply(outcome: Outcome, request: Any) -> dict[str, Any]:
    """The recorded response dict; a call recorded without one fails the same way again (a
    `reset` fault: `httpx.ReadError`, the connection dropped before the response)."""
    event = outcome.event or {}
    response = event.get("response")
    if outcome.fault is not None and outcome.fault.action == "reset":
        raise httpx.ReadError(outcome.fault.message, request=request)
    if not isinstance(response, dict) or not isinstance(response.get("status_code"), int):
        error = event.get("error") or {}
        raise httpx.ConnectError(f"{error.get('type', 'Error')}: "
                                 f"{error.get('message', 'no reply')} (replayed from the "
                                 f"recording)", request=request)
    return response


def _response(response: dict[str, Any], request: Any, stream: Any) -> Any:
    status = response["status_code"]
    try:
        reason = HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        reason = b""
    return httpx.Response(status, headers=recorded_headers(response), stream=stream,
                          request=request,
                          extensions={"http_version": b"HTTP/1.1", "reason_phrase": reason})


def _latency(event: dict[str, Any]) -> float:
    latency = event.get("latency_ms")
    return float(latency) if isinstance(latency, (int, float)) else 0.0


def _recorded_above(client: type) -> bool:
    """Whether the SDK's `send` wrapper will record this call (and take its `replay` tag)."""
    from tracelab.sdk.integrations._patching import is_patched
    from tracelab.sdk.recorder import current

    return current() is not None and is_patched(client, "send")


def _handle(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    session = active()
    if session is None:
        return wrapped(*args, **kwargs)
    if vendor_went_live():
        return _live(session, args[0] if args else kwargs["request"], wrapped, args, kwargs)
    if _recorded_above(httpx.Client):
        return _answer(session, wrapped, args, kwargs)
    try:
        return _answer(session, wrapped, args, kwargs)
    finally:
        clear_outcome()


def _answer(session: Session, wrapped: Any, args: tuple[Any, ...],
            kwargs: dict[str, Any]) -> Any:
    request = args[0] if args else kwargs["request"]
    outcome = take_view(session, live_view, request)
    session.pause(outcome)
    if outcome.fault is not None and outcome.fault.action == "timeout":
        import time

        waited = hang_seconds(outcome, _read_timeout(request))
        time.sleep(waited)
        raise _timeout(outcome, request, waited)
    if outcome.hit:
        response = _recorded_reply(outcome, request)
        chunks = answer_chunks(response)
        if chunks is None:
            session.wait_until(outcome.started, _latency(outcome.event or {}))
            return _response(response, request,
                             httpx.ByteStream(body_bytes(response.get("body"))))
        return _response(response, request, _SyncChunks(session, outcome, chunks,
                                                        stream_error(response)))
    if not outcome.passthrough:
        raise httpx.ConnectError(outcome.message, request=request)
    return _live(session, request, wrapped, args, kwargs)


async def _handle_async(wrapped: Any, instance: Any, args: tuple[Any, ...],
                        kwargs: dict[str, Any]) -> Any:
    session = active()
    if session is None:
        return await wrapped(*args, **kwargs)
    if vendor_went_live():
        return await _live_async(session, args[0] if args else kwargs["request"], wrapped,
                                 args, kwargs)
    if _recorded_above(httpx.AsyncClient):
        return await _answer_async(session, wrapped, args, kwargs)
    try:
        return await _answer_async(session, wrapped, args, kwargs)
    finally:
        clear_outcome()


async def _answer_async(session: Session, wrapped: Any, args: tuple[Any, ...],
                        kwargs: dict[str, Any]) -> Any:
    request = args[0] if args else kwargs["request"]
    outcome = take_view(session, live_view, request)
    if outcome.pause_ms > 0:
        await asyncio.sleep(outcome.pause_ms / 1000.0)
    if outcome.fault is not None and outcome.fault.action == "timeout":
        waited = hang_seconds(outcome, _read_timeout(request))
        await asyncio.sleep(waited)
        raise _timeout(outcome, request, waited)
    if outcome.hit:
        response = _recorded_reply(outcome, request)
        chunks = answer_chunks(response)
        if chunks is None:
            delay = session.delay(outcome.started, _latency(outcome.event or {}))
            if delay > 0:
                await asyncio.sleep(delay)
            return _response(response, request,
                             httpx.ByteStream(body_bytes(response.get("body"))))
        return _response(response, request, _AsyncChunks(session, outcome, chunks,
                                                         stream_error(response)))
    if not outcome.passthrough:
        raise httpx.ConnectError(outcome.message, request=request)
    return await _live_async(session, request, wrapped, args, kwargs)


async def _live_async(session: Session, request: Any, wrapped: Any, args: tuple[Any, ...],
                      kwargs: dict[str, Any]) -> Any:
    if not session.proxied:
        return await wrapped(*args, **kwargs)
    request.headers[HANDLED_HEADER] = "1"  # the replay proxy forwards it untouched
    try:
        return await wrapped(*args, **kwargs)
    finally:
        del request.headers[HANDLED_HEADER]


def _live(session: Session, request: Any, wrapped: Any, args: tuple[Any, ...],
          kwargs: dict[str, Any]) -> Any:
    if not session.proxied:
        return wrapped(*args, **kwargs)
    request.headers[HANDLED_HEADER] = "1"  # the replay proxy forwards it untouched
    try:
        return wrapped(*args, **kwargs)
    finally:
        del request.headers[HANDLED_HEADER]


class _SyncChunks(httpx.SyncByteStream):
    """A recorded stream as httpx's sync byte stream: timed chunks, then the recorded end."""

    def __init__(self, session: Session, outcome: Outcome, chunks: list[tuple[float, bytes]],
                 error: dict[str, Any] | None) -> None:
        self.session, self.outcome, self.chunks, self.error = session, outcome, chunks, error

    def __iter__(self) -> Iterator[bytes]:
        for data in timed_chunks(self.session, self.outcome, self.chunks):
            if data:
                yield data
        if self.error is not None:
            raise httpx.ReadError(_failure(self.error))

    def close(self) -> None:
        pass


class _AsyncChunks(httpx.AsyncByteStream):
    """The async twin of `_SyncChunks` (sleeps with asyncio)."""

    def __init__(self, session: Session, outcome: Outcome, chunks: list[tuple[float, bytes]],
                 error: dict[str, Any] | None) -> None:
        self.session, self.outcome, self.chunks, self.error = session, outcome, chunks, error

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for offset, data in self.chunks:
            delay = self.session.delay(self.outcome.started, offset)
            if delay > 0:
                await asyncio.sleep(delay)
            if data:
                yield data
        if self.error is not None:
            raise httpx.ReadError(_failure(self.error))

    async def aclose(self) -> None:
        pass


def install() -> None:
    patch(httpx.HTTPTransport, "handle_request", _handle)
    patch(httpx.AsyncHTTPTransport, "handle_async_request", _handle_async)


def uninstall() -> None:
    import sys

    module = sys.modules.get("httpx")
    if module is not None:
        unpatch(module.HTTPTransport, "handle_request")
        unpatch(module.AsyncHTTPTransport, "handle_async_request")
