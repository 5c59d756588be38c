"""httpx: patched at `Client.send` and `AsyncClient.send`, the methods every request goes through.

`get`, `post`, `request` and `stream` all end in `send`, so patching it (and not the transport)
records one event per call the application makes, whatever transport is mounted, with the
headers the auth flow added. A streamed response (`client.stream(...)`, `send(stream=True)`,
hence the OpenAI and Anthropic clients with `stream=True`) is never read on the caller's
behalf: its byte stream is replaced by a tee that hands each piece on as the transport yields
it (`iter_raw`, `iter_bytes`, `iter_lines`, their `aiter_*` forms and `read()` all read it),
and the event is recorded when the stream ends (tracelab/sdk/streams.py). A request body that
is a stream (generators, files, multipart uploads) is recorded as not captured.
"""
from __future__ import annotations

import weakref
from collections.abc import AsyncIterator, Iterator
from typing import Any

from tracelab.sdk.capture import Timer, record_http
from tracelab.sdk.context import http_suppressed
from tracelab.sdk.integrations._patching import patch, unpatch
from tracelab.sdk.recorder import Recorder, current
from tracelab.sdk.streams import StreamTee

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


def _decoder(headers: Any) -> Any:
    """Our own content decoder (the caller's response keeps its own), so the tee records the
    bytes the caller gets from `iter_bytes`; None for an identity body."""
    encodings = [v.strip().lower() for v in headers.get_list("content-encoding", split_commas=True)]
    encodings = [v for v in encodings if v and v != "identity"]
    if not encodings:
        return None
    from httpx._decoders import SUPPORTED_DECODERS, MultiDecoder

    decoders = [SUPPORTED_DECODERS[v]() for v in encodings]
    return decoders[0] if len(decoders) == 1 else MultiDecoder(children=decoders)


class _Teed:
    """Shared by the sync and async tees: pieces to the tee, decoded as the caller gets them."""

    def __init__(self, inner: Any, tee: StreamTee, decoder: Any) -> None:
        self._inner, self._tee, self._decoder = inner, tee, decoder

    def _add(self, piece: bytes) -> None:
        self._tee.add(self._decoded(piece))

    def _end(self) -> None:
        if self._decoder is not None:
            self._tee.add(self._decoded(b"", flush=True))
        self._tee.end(True)

    def _decoded(self, piece: bytes, flush: bool = False) -> bytes:
        if self._decoder is None:
            return piece
        try:
            return bytes(self._decoder.flush() if flush else self._decoder.decode(piece))
        except Exception:  # the caller's own decoder will say so; stop storing
            self._decoder = None
            return b""


def _tee_classes() -> tuple[type, type]:
    import httpx

    class SyncTee(_Teed, httpx.SyncByteStream):
        def __iter__(self) -> Iterator[bytes]:
            pieces = iter(self._inner)
            while True:
                try:
                    piece = next(pieces)
                except StopIteration:
                    self._end()
                    return
                except BaseException as exc:
                    self._tee.end(False, exc)
                    raise
                self._add(piece)
                yield piece

        def close(self) -> None:
            self._tee.abandon()
            self._inner.close()

    class AsyncTee(_Teed, httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            pieces = self._inner.__aiter__()
            while True:
                try:
                    piece = await pieces.__anext__()
                except StopAsyncIteration:
                    self._end()
                    return
                except BaseException as exc:
                    self._tee.end(False, exc)
                    raise
                self._add(piece)
                yield piece

        async def aclose(self) -> None:
            self._tee.abandon()
            await self._inner.aclose()

    return SyncTee, AsyncTee


_TEES: list[tuple[type, type]] = []


def _record_stream(rec: Recorder, request: Any, seen: dict[str, Any], timer: Timer,
                   tee: StreamTee) -> None:
    """The event of a streamed response, once its stream ended (`tee` says how)."""
    body = getattr(request, "_content", None)
    record_http(rec, origin=ORIGIN, method=request.method, url=str(request.url),
                request_headers=request.headers.raw,
                request_body=body if isinstance(body, bytes) else None,
                request_body_note=None if isinstance(body, bytes)
                else f"streamed upload ({type(request.stream).__name__})",
                started_at=timer.started_at, latency_ms=timer.elapsed_ms(),
                status_code=seen["status_code"], response_headers=seen["headers"],
                response_body=bytes(tee.body), response_body_size=tee.size,
                response_stream=tee, exc=tee.error)


def _tee(rec: Recorder, request: Any, response: Any, timer: Timer, asynchronous: bool) -> bool:
    """Replace `response.stream` by a tee; False when it cannot be (then recorded at once)."""
    if not _TEES:
        _TEES.append(_tee_classes())
    sync_tee, async_tee = _TEES[0]
    if isinstance(getattr(response, "_content", None), bytes):
        return False
    # Only what the event needs: the tee must not keep the Response alive (GC ends it).
    seen = {"status_code": response.status_code, "headers": response.headers.raw}
    tee = StreamTee(timer._t0, rec.config.max_body_bytes,
                    lambda tee: rec.safely(ORIGIN, _record_stream, rec, request, seen, timer, tee))
    decoder = _decoder(response.headers)
    response.stream = (async_tee if asynchronous else sync_tee)(response.stream, tee, decoder)
    weakref.finalize(response, tee.abandon)
    return True


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
    if stream and rec.safely(ORIGIN, _tee, rec, _request_of(args, kwargs), response, timer,
                             False):
        return response
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
    if stream and rec.safely(ORIGIN, _tee, rec, _request_of(args, kwargs), response, timer,
                             True):
        return response
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
