"""httpx: patched at `Client.send` and `AsyncClient.send`, the methods every request goes through.

`get`, `post`, `request` and `stream` all end in `send`, so patching it (and not the transport)
records one event per call the application makes, whatever transport is mounted, with the
headers the auth flow added. A streamed response (`client.stream(...)`, `send(stream=True)`)
is never read on the caller's behalf, and neither is a request body that is a stream
(generators, files, multipart uploads): both are recorded as not captured.
"""
from __future__ import annotations

from typing import Any

from tracelab.sdk.capture import Timer, record_http
from tracelab.sdk.context import http_suppressed
from tracelab.sdk.integrations._patching import patch, unpatch
from tracelab.sdk.recorder import Recorder, current

ORIGIN = "httpx"
_STREAMED_RESPONSE = "streamed response (stream=True): not read on the caller's behalf"


def _request_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return args[0] if args else kwargs.get("request")


def _record(rec: Recorder, request: Any, response: Any, timer: Timer, stream: bool,
            exc: BaseException | None) -> None:
    latency_ms = timer.elapsed_ms()
    # httpx keeps `_content` only for bodies it holds in memory; anything else is a stream
    # that would be consumed (or is being consumed) by the transport.
    body = getattr(request, "_content", None)
    request_note = None
    if not isinstance(body, bytes):
        body = None
        request_note = f"streamed upload ({type(request.stream).__name__})"
    status_code = response_headers = response_body = response_note = None
    if response is not None:
        status_code = response.status_code
        response_headers = response.headers.raw
        content = getattr(response, "_content", None)
        if stream or not isinstance(content, bytes):
            response_note = _STREAMED_RESPONSE
        else:
            response_body = content
    record_http(rec, origin=ORIGIN, method=request.method, url=str(request.url),
                request_headers=request.headers.raw, request_body=body,
                request_body_note=request_note, started_at=timer.started_at,
                latency_ms=latency_ms, status_code=status_code,
                response_headers=response_headers, response_body=response_body,
                response_body_note=response_note, exc=exc)


def _send(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    rec = current()
    if rec is None or http_suppressed():
        return wrapped(*args, **kwargs)
    timer = Timer()
    stream = bool(kwargs.get("stream"))
    try:
        response = wrapped(*args, **kwargs)
    except BaseException as exc:
        rec.safely(ORIGIN, _record, rec, _request_of(args, kwargs), None, timer, stream, exc)
        raise
    rec.safely(ORIGIN, _record, rec, _request_of(args, kwargs), response, timer, stream, None)
    return response


async def _send_async(wrapped: Any, instance: Any, args: tuple[Any, ...],
                      kwargs: dict[str, Any]) -> Any:
    rec = current()
    if rec is None or http_suppressed():
        return await wrapped(*args, **kwargs)
    timer = Timer()
    stream = bool(kwargs.get("stream"))
    try:
        response = await wrapped(*args, **kwargs)
    except BaseException as exc:
        rec.safely(ORIGIN, _record, rec, _request_of(args, kwargs), None, timer, stream, exc)
        raise
    rec.safely(ORIGIN, _record, rec, _request_of(args, kwargs), response, timer, stream, None)
    return response


def install() -> None:
    import httpx

    patch(httpx.Client, "send", _send)
    patch(httpx.AsyncClient, "send", _send_async)


def uninstall() -> None:
    import sys

    module = sys.modules.get("httpx")
    if module is not None:
        unpatch(module.Client, "send")
        unpatch(module.AsyncClient, "send")
