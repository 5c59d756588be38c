"""requests replay: `HTTPAdapter.send` answered from the recording.

The SDK records at `Session.send`, above the transport adapter, so patching `HTTPAdapter.send`
leaves the recording wrapper in charge: a replayed response is recorded like a live one. The
response is built the way requests builds every response, by `HTTPAdapter.build_response`
over a urllib3 `HTTPResponse` holding the recorded body (cookies, encoding, `raw`, `stream=True`
all behave as usual). A recorded stream is released chunk by chunk at its recorded offsets
(speed > 0), and a stream that failed mid-way fails at the same chunk with urllib3's
`ProtocolError` (requests raises it as `ChunkedEncodingError`). A miss raises
`requests.ConnectionError` with the matcher's explanation; nothing is sent.

Faults (see tracelab/replay/session.py): a `status` fault is a response like any other, a
`stream_cut` a recorded stream failing mid-way (`ChunkedEncodingError`); `reset` raises
`requests.ConnectionError` over `ConnectionResetError`, as a dropped connection does, and
`timeout` waits the fault's `timeout_s` (or the call's own read timeout, if shorter) and
raises `requests.exceptions.ReadTimeout`.
"""
from __future__ import annotations

import io
from collections.abc import Iterator
from http import HTTPStatus
from typing import Any

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


def live_view(session: Session, request: Any) -> dict[str, Any]:
    """The prepared request in the stored shape (same helpers as the SDK's requests capture)."""
    from tracelab.replay.session import recorder
    from tracelab.replay.matching import http_request_view

    rec = recorder()
    body = request.body
    note = None
    if body is not None and not isinstance(body, (bytes, str)):
        note, body = f"streamed upload ({type(body).__name__})", None
    view = http_request_view(request.method or "GET", request.url or "", request.headers, body,
                             None, rec.redactor, rec.config.max_body_bytes,
                             capture_payloads=rec.config.capture_payloads, body_note=note)
    return {"kind": "http", "request": view}


def _raw_response(session: Session, outcome: Outcome, request: Any) -> Any:
    """The recorded response as the urllib3 response requests builds its own from."""
    from urllib3 import HTTPResponse
    from urllib3._collections import HTTPHeaderDict
    from urllib3.exceptions import ProtocolError

    event = outcome.event or {}
    response = event.get("response") or {}
    status = response["status_code"]
    headers = HTTPHeaderDict()
    for name, value in recorded_headers(response):
        headers.add(name, value)
    chunks = answer_chunks(response)
    error = stream_error(response)
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = ""

    class Replayed(HTTPResponse):
        """`stream()` yields the recorded chunks one by one (urllib3's `read(amt)` would
        join them), at their offsets, failing where the recorded stream failed."""

        def stream(self, amt: int | None = 2 ** 16,
                   decode_content: bool | None = None) -> Iterator[bytes]:
            if chunks is None:
                yield from super().stream(amt, decode_content)
                return
            for data in timed_chunks(session, outcome, chunks):
                if data:
                    yield data
            self._fp.close()
            if error is not None:
                raise ProtocolError(f"{error.get('type', 'Error')}: "
                                    f"{error.get('message', 'stream failed')} (replayed)")

    content = b"".join(d for _t, d in chunks) if chunks is not None else \
        body_bytes(response.get("body"))
    return Replayed(body=io.BytesIO(content), headers=headers, status=status, reason=reason,
                    preload_content=False, decode_content=False,
                    request_method=request.method, request_url=request.url)


def _send(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    session = active()
    if session is None:
        return wrapped(*args, **kwargs)
    if vendor_went_live():
        return _live(session, wrapped, args, kwargs)
    if _recorded_above():
        return _answer(session, wrapped, instance, args, kwargs)
    try:
        return _answer(session, wrapped, instance, args, kwargs)
    finally:
        clear_outcome()


def _recorded_above() -> bool:
    """Whether an SDK wrapper will record this call and take its tag: `Session.send`'s, or
    (under `suppress_http`) the vendor call's above it."""
    import requests

    from tracelab.sdk.integrations._patching import is_patched
    from tracelab.sdk.recorder import current

    return current() is not None and is_patched(requests.Session, "send")


def _answer(session: Session, wrapped: Any, instance: Any, args: tuple[Any, ...],
            kwargs: dict[str, Any]) -> Any:
    import requests

    request = args[0] if args else kwargs["request"]
    outcome = take_view(session, live_view, session, request)
    session.pause(outcome)
    if outcome.fault is not None and outcome.fault.action in ("reset", "timeout"):
        raise _fault_error(outcome, request, _read_timeout(args, kwargs))
    if outcome.hit:
        event = outcome.event or {}
        response = event.get("response")
        if not isinstance(response, dict) or not isinstance(response.get("status_code"), int):
            error = event.get("error") or {}  # recorded without a reply: the same failure
            raise requests.ConnectionError(
                f"{error.get('type', 'Error')}: {error.get('message', 'no reply')} (replayed "
                f"from the recording)", request=request)
        if answer_chunks(response) is None:
            session.wait_until(outcome.started, _latency(event))
        return instance.build_response(request, _raw_response(session, outcome, request))
    if not outcome.passthrough:
        raise requests.ConnectionError(outcome.message, request=request)
    return _live(session, wrapped, args, kwargs)


def _live(session: Session, wrapped: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if not session.proxied:
        return wrapped(*args, **kwargs)
    request = args[0] if args else kwargs["request"]
    request.headers[HANDLED_HEADER] = "1"  # the replay proxy forwards it untouched
    try:
        return wrapped(*args, **kwargs)
    finally:
        request.headers.pop(HANDLED_HEADER, None)


def _read_timeout(args: tuple[Any, ...], kwargs: dict[str, Any]) -> float | None:
    """The read timeout `send(request, stream, timeout, ...)` was given: a number, the second
    of a (connect, read) pair, or a urllib3 `Timeout`'s; None for none."""
    timeout = args[2] if len(args) > 2 else kwargs.get("timeout")
    if isinstance(timeout, tuple):
        timeout = timeout[1] if len(timeout) > 1 else None
    elif timeout is not None and not isinstance(timeout, (int, float)):
        timeout = getattr(timeout, "read_timeout", None)
    return float(timeout) if isinstance(timeout, (int, float)) else None


def _fault_error(outcome: Outcome, request: Any, read_timeout: float | None) -> Exception:
    """What requests raises for a dropped connection, or (after the hang) a read timeout."""
    import time

    import requests
    from urllib3.exceptions import ProtocolError

    fault = outcome.fault
    assert fault is not None
    if fault.action == "reset":
        return requests.ConnectionError(
            ProtocolError("Connection aborted.", ConnectionResetError(fault.message)),
            request=request)
    waited = hang_seconds(outcome, read_timeout)
    time.sleep(waited)
    return requests.exceptions.ReadTimeout(f"{fault.message} (read timeout={waited:g}s)",
                                           request=request)


def _latency(event: dict[str, Any]) -> float:
    latency = event.get("latency_ms")
    return float(latency) if isinstance(latency, (int, float)) else 0.0


def install() -> None:
    import requests.adapters

    patch(requests.adapters.HTTPAdapter, "send", _send)


def uninstall() -> None:
    import sys

    module = sys.modules.get("requests.adapters")
    if module is not None:
        unpatch(module.HTTPAdapter, "send")
