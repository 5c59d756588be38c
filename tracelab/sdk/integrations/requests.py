"""requests: patched at `Session.send`, the one method every request (and redirect hop) goes through.

Patching `send` rather than `request` means custom transport adapters and prepared requests
are traced too. A `stream=True` response is never read on the caller's behalf: urllib3's
reading calls on its `raw` (`read`, `read1`, `read_chunked`: `iter_content`, `iter_lines`,
`.content` and direct `raw.read` all end there) are wrapped on that one object to tee what the
caller reads, and the event is recorded when the stream ends (tracelab/sdk/streams.py).
"""
from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import Any

from tracelab.sdk.capture import Timer, record_http
from tracelab.sdk.context import http_suppressed
from tracelab.sdk.integrations._patching import patch, unpatch
from tracelab.sdk.recorder import Recorder, current
from tracelab.sdk.streams import StreamTee

ORIGIN = "requests"


def _request_body(request: Any) -> tuple[Any, str | None]:
    """The request body to record, or None and why it is not (a streamed upload)."""
    body = request.body
    if body is not None and not isinstance(body, (bytes, str)):
        return None, f"streamed upload ({type(body).__name__})"
    return body, None


def _record(rec: Recorder, request: Any, response: Any, timer: Timer, stream: bool,
            exc: BaseException | None) -> None:
    body, request_note = _request_body(request)
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
                request_headers=request.headers, request_body=body,
                request_body_note=request_note, started_at=timer.started_at,
                latency_ms=timer.elapsed_ms(), status_code=status_code,
                response_headers=response_headers, response_body=response_body,
                response_body_note=response_note, exc=exc)


def _record_stream(rec: Recorder, request: Any, response: Any, timer: Timer,
                   tee: StreamTee) -> None:
    """The event of a streamed response, once its stream ended (`tee` says how)."""
    body, request_note = _request_body(request)
    record_http(rec, origin=ORIGIN, method=request.method or "GET", url=request.url or "",
                request_headers=request.headers, request_body=body,
                request_body_note=request_note, started_at=timer.started_at,
                latency_ms=timer.elapsed_ms(),
                status_code=response["status_code"], response_headers=response["headers"],
                response_body=bytes(tee.body), response_body_size=tee.size,
                response_stream=tee, exc=tee.error)


class _RawTee:
    """urllib3's reading calls on one response's `raw`, wrapped to hand each piece to a tee.

    Instance attributes shadow the class's methods on that object only; `stream()` and
    `readinto()` call `self.read`/`self.read_chunked` and so go through them, and `read_chunked`
    never calls `read`, so nothing is counted twice. `close()` before the end abandons it.
    """

    def __init__(self, raw: Any, tee: StreamTee) -> None:
        self.raw, self.tee, self.reading = raw, tee, 0
        self.read, self.close = raw.read, raw.close
        self.read1, self.read_chunked = getattr(raw, "read1", None), getattr(raw, "read_chunked",
                                                                             None)
        raw.read, raw.close = self.teed_read, self.teed_close
        if callable(self.read1):
            raw.read1 = self.teed_read1
        if callable(self.read_chunked):
            raw.read_chunked = self.teed_read_chunked

    def finished(self) -> bool:
        """The body has been read to its end (what `stream()` itself checks)."""
        try:
            return bool(self.raw.closed) and not len(getattr(self.raw, "_decoded_buffer", b""))
        except Exception:
            return False

    def teed_read(self, *args: Any, **kwargs: Any) -> Any:
        return self._call(self.read, args, kwargs)

    def teed_read1(self, *args: Any, **kwargs: Any) -> Any:
        return self._call(self.read1, args, kwargs)

    def _call(self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        self.reading += 1
        try:
            data = fn(*args, **kwargs)
        except BaseException as exc:
            self.tee.end(False, exc)
            raise
        finally:
            self.reading -= 1
        if isinstance(data, (bytes, bytearray)):
            self.tee.add(data)
            amt = args[0] if args else kwargs.get("amt")
            if (not data and amt != 0) or (amt is None and fn is self.read) or self.finished():
                self.tee.end(True)
        return data

    def teed_read_chunked(self, *args: Any, **kwargs: Any) -> Iterator[bytes]:
        pieces = self.read_chunked(*args, **kwargs)
        while True:
            self.reading += 1
            try:
                data = next(pieces)
            except StopIteration:
                self.tee.end(True)
                return
            except BaseException as exc:
                self.tee.end(False, exc)
                raise
            finally:
                self.reading -= 1
            self.tee.add(data)
            yield data

    def teed_close(self, *args: Any, **kwargs: Any) -> Any:
        if not self.reading:  # urllib3 closing inside a read: that read says how it ended
            self.tee.abandon()
        return self.close(*args, **kwargs)


def _tee(rec: Recorder, request: Any, response: Any, timer: Timer) -> bool:
    """Tee `response.raw` to record the stream as the caller reads it; False when this
    response cannot be teed (then it is recorded at once, as not captured)."""
    raw = getattr(response, "raw", None)
    if response.request is not request or raw is None or \
            not callable(getattr(raw, "read", None)) or getattr(response, "_content", False):
        return False
    # Only what the event needs: the tee must not keep the Response alive (GC ends it).
    seen = {"status_code": response.status_code, "headers": response.headers}
    tee = StreamTee(timer._t0, rec.config.max_body_bytes,
                    lambda tee: rec.safely(ORIGIN, _record_stream, rec, request, seen, timer, tee))
    _RawTee(raw, tee)
    weakref.finalize(response, tee.abandon)
    return True


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
    if kwargs.get("stream") and rec.safely(ORIGIN, _tee, rec, request, response, timer):
        return response
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
