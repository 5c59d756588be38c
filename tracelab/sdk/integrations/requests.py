"""requests: patched at `Session.send`, the one method every request (and redirect hop) goes through.

Patching `send` rather than `request` means custom transport adapters and prepared requests
are traced too. A `stream=True` response is never read on the caller's behalf: its body is
recorded as not captured.
"""
from __future__ import annotations

from typing import Any

from tracelab.sdk.capture import Timer, record_http
from tracelab.sdk.context import http_suppressed
from tracelab.sdk.integrations._patching import patch, unpatch
from tracelab.sdk.recorder import Recorder, current

ORIGIN = "requests"


def _record(rec: Recorder, request: Any, response: Any, timer: Timer, stream: bool,
            exc: BaseException | None) -> None:
    body = request.body
    request_note = None
    if body is not None and not isinstance(body, (bytes, str)):
        request_note = f"streamed upload ({type(body).__name__})"
    status_code = response_headers = response_body = response_note = None
    if response is not None:
        # With redirects followed, send() returns the last hop's response; this call's own
        # exchange is the one whose request is ours (each hop records its own event).
        for candidate in getattr(response, "history", None) or ():
            if candidate.request is request:
                response = candidate
                break
        status_code = response.status_code
        response_headers = response.headers
        content = getattr(response, "_content", False)
        if stream or not getattr(response, "_content_consumed", False) \
                or not isinstance(content, bytes):
            response_note = "streamed response (stream=True): not read on the caller's behalf"
        else:
            response_body = content
    record_http(rec, origin=ORIGIN, method=request.method or "GET", url=request.url or "",
                request_headers=request.headers, request_body=None if request_note else body,
                request_body_note=request_note, started_at=timer.started_at,
                latency_ms=timer.elapsed_ms(), status_code=status_code,
                response_headers=response_headers, response_body=response_body,
                response_body_note=response_note, exc=exc)


def _send(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    rec = current()
    if rec is None or http_suppressed():
        return wrapped(*args, **kwargs)
    timer = Timer()
    try:
        response = wrapped(*args, **kwargs)
    except BaseException as exc:
        request = args[0] if args else kwargs.get("request")
        rec.safely(ORIGIN, _record, rec, request, None, timer, bool(kwargs.get("stream")), exc)
        raise
    request = args[0] if args else kwargs.get("request")
    rec.safely(ORIGIN, _record, rec, request, response, timer, bool(kwargs.get("stream")), None)
    return response


def install() -> None:
    import requests

    patch(requests.Session, "send", _send)


def uninstall() -> None:
    import sys

    module = sys.modules.get("requests")
    if module is not None:
        unpatch(module.Session, "send")
