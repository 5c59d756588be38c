"""gRPC: our own client interceptor on every channel `grpc.insecure_channel`, `secure_channel`
and `grpc.aio.insecure_channel`/`secure_channel` create after `init()`.

Why an interceptor of our own rather than OpenTelemetry's: theirs records no messages and
hooks sync and aio differently. Ours is added innermost (user interceptors, e.g. retries, run
above it, so every attempt is one event) and sees all four call shapes, sync and aio, with
futures, `.with_call` and streaming iterators. One event per call (spec/README.md, "gRPC"):
kind `grpc`, target `host:port`, endpoint `/package.Service/Method`, messages as JSON
(`MessageToDict`, field names preserved) with their full type names, streamed messages as a
list with each one's offset in ms, the event recorded when the stream ends, fails, is
cancelled or is dropped. Metadata values are kept only for the names in
`TRACELAB_GRPC_METADATA` (comma-separated); auth metadata is always redacted.

The same interceptor answers calls from an active replay (tracelab/replay/adapters/grpc.py,
which switches it on with `enable("replay")`), so a replayed call is recorded exactly like a
live one. Nothing here raises into the caller: capture failures are counted.
"""
from __future__ import annotations

import asyncio
import base64
import inspect
import os
import threading
import weakref
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson

from tracelab.sdk.capture import Timer, build_event, error_info
from tracelab.sdk.integrations._patching import patch, unpatch
from tracelab.sdk.payloads import encode_body, not_captured, to_jsonable
from tracelab.sdk.recorder import Recorder, current
from tracelab.sdk.redaction import MARKER, Redactor, remember, scrub

ORIGIN = "grpc"
METADATA_ENV = "TRACELAB_GRPC_METADATA"
NOT_RECORDED = "[NOT RECORDED]"
_AUTH_WORDS = ("authorization", "auth", "token", "cookie", "api-key", "apikey", "secret",
               "password")
_FACTORIES = (("grpc", "insecure_channel"), ("grpc", "secure_channel"),
              ("grpc.aio", "insecure_channel"), ("grpc.aio", "secure_channel"))
_users: set[str] = set()  # "record" (the SDK integration) and/or "replay" (the adapter)
_lock = threading.RLock()
_tasks: set[asyncio.Task[Any]] = set()  # settling aio calls, kept until they finish


# -- what is stored ----------------------------------------------------------------------------

def target_of(target: Any) -> str:
    """`host:port` from a channel target (`dns:///host:port`, `ipv4:host:port`, `host:port`)."""
    text = target.decode() if isinstance(target, bytes) else str(target)
    for prefix in ("dns:///", "dns:", "ipv4:", "ipv6:"):
        if text.startswith(prefix):
            text = text[len(prefix):]
            break
    return text.split(",")[0] or "unknown"


def allowed_metadata() -> frozenset[str]:
    raw = os.environ.get(METADATA_ENV, "")
    return frozenset(n.strip().lower() for n in raw.split(",") if n.strip())


def _is_auth(name: str, redactor: Redactor) -> bool:
    return any(word in name for word in _AUTH_WORDS) or redactor.is_secret(name)


def metadata_view(metadata: Any, redactor: Redactor, found: set[str]) -> dict[str, Any] | None:
    """Metadata as `{name: value}` (a list for repeated names): auth names redacted, values of
    names outside `TRACELAB_GRPC_METADATA` not recorded, `-bin` values as base64."""
    if not metadata:
        return None
    allowed = allowed_metadata()
    out: dict[str, Any] = {}
    for item in metadata:
        key, value = item[0], item[1]
        name = (key.decode("latin-1") if isinstance(key, bytes) else str(key)).lower()
        text = base64.b64encode(value).decode("ascii") if isinstance(value, bytes) else str(value)
        if _is_auth(name, redactor):
            remember(found, text)
            stored: Any = MARKER
        elif name in allowed:
            stored = redactor.text(text, found)
        else:
            stored = NOT_RECORDED
        if name in out:
            previous = out[name]
            out[name] = [*previous, stored] if isinstance(previous, list) else [previous, stored]
        else:
            out[name] = stored
    return out


def type_name(message: Any) -> str | None:
    descriptor = getattr(message, "DESCRIPTOR", None)
    return getattr(descriptor, "full_name", None)


def message_json(message: Any, redactor: Redactor) -> Any:
    """A protobuf message as `MessageToDict` (field names preserved); anything else as the SDK
    stores arbitrary values."""
    if type_name(message) is not None:
        from google.protobuf import json_format

        return json_format.MessageToDict(message, preserving_proto_field_name=True)
    return to_jsonable(message, redactor, 4096)


def messages_view(rec: Any, message: Any = None, timed: list[tuple[float, Any]] | None = None,
                  found: set[str] | None = None) -> dict[str, Any]:
    """`{"type", "message"}` (one message) or `{"type", "messages": [{"t", "message"}]}`,
    the JSON through the body cap and redaction like any body."""
    config, redactor = rec.config, rec.redactor
    first = message if timed is None else (timed[0][1] if timed else None)
    out: dict[str, Any] = {"type": type_name(first)}
    if timed is None:
        value: Any = message_json(message, redactor)
    else:
        value = [{"t": t, "message": message_json(m, redactor)} for t, m in timed]
    if not config.capture_payloads:
        encoded: Any = not_captured("capture_payloads is off")
    else:
        encoded = encode_body(orjson.dumps(value, default=repr), "application/json", redactor,
                              config.max_body_bytes, found)
        if encoded is None:  # an empty message: `{}` is what MessageToDict says
            encoded = value
    out["message" if timed is None else "messages"] = encoded
    return out


def request_view(rec: Any, metadata: Any, message: Any = None,
                 timed: list[tuple[float, Any]] | None = None,
                 found: set[str] | None = None) -> dict[str, Any]:
    """The request as stored (also the replay's live view: the same key, see matching.py).

    `found` collects the secret values redacted here, to be scrubbed from the whole event."""
    found = set() if found is None else found
    view = messages_view(rec, message, timed, found)
    view["metadata"] = metadata_view(metadata, rec.redactor, found)
    return scrub(view, found) if found else view


def code_of(code: Any) -> tuple[int | None, str | None]:
    """(number, name) of a `grpc.StatusCode`, or (None, None)."""
    value = getattr(code, "value", None)
    if isinstance(value, tuple) and value and isinstance(value[0], int):
        return value[0], code.name
    return None, None


# -- one call ----------------------------------------------------------------------------------

class Capture:
    """What one call did, gathered as it happens; recorded once by `finish` (or `abandon`)."""

    def __init__(self, rec: Recorder, target: str, method: str, metadata: Any,
                 stream_request: bool, stream_response: bool) -> None:
        self.rec, self.target, self.method = rec, target, method
        self.metadata = list(metadata) if metadata else None
        self.stream_request, self.stream_response = stream_request, stream_response
        self.timer = Timer()
        self.request: Any = None
        self.requests: list[tuple[float, Any]] = []
        self.response: Any = None
        self.responses: list[tuple[float, Any]] = []
        self.outcome: Any = None  # the replay's Outcome, when a replay answered
        self._kept = [0, 0]  # protobuf bytes kept, requests and responses
        self._lock = threading.Lock()
        self.done = False

    def _keep(self, which: int, message: Any) -> bool:
        try:
            size = message.ByteSize() if type_name(message) is not None else 0
        except Exception:
            size = 0
        self._kept[which] += size
        return self._kept[which] <= self.rec.config.max_body_bytes + 4096

    def add_request(self, message: Any) -> None:
        if self._keep(0, message):
            self.requests.append((round(self.timer.elapsed_ms(), 3), message))

    def add_response(self, message: Any) -> None:
        if self._keep(1, message):
            self.responses.append((round(self.timer.elapsed_ms(), 3), message))

    def finish(self, code: Any, details: str | None, initial: Any = None, trailing: Any = None,
               exc: BaseException | None = None, complete: bool = True) -> None:
        with self._lock:
            if self.done:
                return
            self.done = True
        self.rec.safely(ORIGIN, self._record, code, details, initial, trailing, exc, complete)

    def abandon(self) -> None:
        """Dropped before its end (garbage-collected): recorded as cancelled, incomplete."""
        import grpc

        self.finish(grpc.StatusCode.CANCELLED, "abandoned before its end", complete=False)

    def _record(self, code: Any, details: str | None, initial: Any, trailing: Any,
                exc: BaseException | None, complete: bool) -> None:
        rec = self.rec
        latency_ms = self.timer.elapsed_ms()
        found: set[str] = set()
        request = request_view(rec, self.metadata, self.request,
                               self.requests if self.stream_request else None, found)
        number, name = code_of(code)
        response = None
        if number is not None:
            response = {"status_code": number}
            if self.stream_response:
                response.update(messages_view(rec, timed=self.responses, found=found))
                response["complete"] = complete
            elif self.response is not None:
                response.update(messages_view(rec, self.response, found=found))
            response["metadata"] = metadata_view(initial, rec.redactor, found)
            response["trailing_metadata"] = metadata_view(trailing, rec.redactor, found)
            if details:
                response["details"] = rec.redactor.text(str(details), found)
        ok = number == 0 and exc is None
        error = None
        if not ok:
            error = {"type": name, "message": (rec.redactor.text(str(details), found)
                                               if details else name)} if name else \
                error_info(exc) if exc is not None else {"type": "Error", "message": "no status"}
        if self.outcome is not None:
            self.outcome.retag()  # the replay's tag goes to this event, wherever it is built
        event = build_event(
            rec, kind="grpc", target=self.target, endpoint=self.method,
            started_at=self.timer.started_at, latency_ms=latency_ms,
            status="ok" if ok else "error", request=request, response=response,
            status_code=number, error=error, tags={"grpc.status": name} if name else None)
        rec.submit(event, ORIGIN, found)

    # -- from the library's objects ------------------------------------------------------------
    def finish_call(self, call: Any, exc: BaseException | None = None,
                    complete: bool = True) -> None:
        """From a finished sync `grpc.Call` (or the RpcError that is one)."""
        source = exc if exc is not None and callable(getattr(exc, "code", None)) else call
        self.finish(_get(source, "code"), _get(source, "details"),
                    _get(source, "initial_metadata"), _get(source, "trailing_metadata"),
                    exc=exc, complete=complete)

    def finish_future(self, future: Any) -> None:
        """A done callback: from a unary-response future/outcome (sync)."""
        import grpc

        if future.cancelled():
            self.finish(grpc.StatusCode.CANCELLED, "cancelled", complete=False)
            return
        exc = future.exception()
        if exc is None:
            self.response = future.result()
            self.finish_call(future)
        elif isinstance(exc, grpc.Call):
            self.finish_call(exc, exc)
        else:
            self.finish(None, None, exc=exc)


def _get(obj: Any, name: str) -> Any:
    try:
        return getattr(obj, name)()
    except Exception:
        return None


def _begin(target: str, details: Any, stream_request: bool,
           stream_response: bool) -> tuple[Capture | None, Any]:
    """The capture for this call (None: not recording) and the active replay session."""
    rec = current() if "record" in _users else None
    session = None
    if "replay" in _users:
        from tracelab.replay.session import active

        session = active()
    capture = None
    if rec is not None:
        method = details.method.decode() if isinstance(details.method, bytes) else \
            str(details.method)
        capture = rec.safely(ORIGIN, Capture, rec, target, method, details.metadata,
                             stream_request, stream_response)
    return capture, session


def _replay() -> Any:
    from tracelab.replay.adapters import grpc as adapter

    return adapter


# -- sync --------------------------------------------------------------------------------------

def _teed_requests(requests: Any, capture: Capture) -> Iterator[Any]:
    for message in requests:
        capture.add_request(message)
        yield message


class TeedStream:
    """A streaming response handed on message by message; the event once it ends.

    Forwards `grpc.Call` and `grpc.Future` (what grpc's own iterator is) to the real call.
    """

    def __init__(self, inner: Any, capture: Capture) -> None:
        self._inner, self._capture = inner, capture
        weakref.finalize(self, capture.abandon)

    def __iter__(self) -> TeedStream:
        return self

    def __next__(self) -> Any:
        import grpc

        try:
            message = next(self._inner)
        except StopIteration:
            self._capture.finish_call(self._inner)
            raise
        except grpc.RpcError as exc:
            self._capture.finish_call(self._inner, exc, complete=False)
            raise
        self._capture.add_response(message)
        return message

    next = __next__

    def cancel(self) -> bool:
        cancelled = self._inner.cancel()
        self._capture.finish_call(self._inner, complete=False)
        return cancelled

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class SyncInterceptorBase:
    """All four shapes of `grpc.intercept_channel` interceptors, for one channel's target
    (`sync_interceptor` adds grpc's interceptor classes, which grpc checks for)."""

    def __init__(self, target: str) -> None:
        self.target = target

    def _start(self, continuation: Any, details: Any, request: Any, stream: bool,
               response_stream: bool) -> tuple[Capture | None, Any]:
        """The call (answered by a replay, else made) and its capture (None: not recorded)."""
        capture, session = _begin(self.target, details, stream, response_stream)
        if capture is None and session is None:
            return None, continuation(details, request)
        if capture is not None:
            if stream:
                request = _teed_requests(request, capture)
            else:
                capture.request = request
        call = None
        if session is not None:
            call, request = _replay().sync_call(session, self.target, details, request, stream,
                                                response_stream, capture)
        if call is None:
            call = continuation(details, request)
        return capture, call

    def _unary(self, continuation: Any, details: Any, request: Any, stream: bool) -> Any:
        capture, call = self._start(continuation, details, request, stream, False)
        if capture is not None:
            try:
                call.add_done_callback(
                    lambda done: capture.rec.safely(ORIGIN, capture.finish_future, done))
            except Exception as exc:
                capture.rec.stats.count_error(ORIGIN, f"{type(exc).__name__}: {exc}")
        return call

    def _stream(self, continuation: Any, details: Any, request: Any, stream: bool) -> Any:
        capture, call = self._start(continuation, details, request, stream, True)
        return TeedStream(call, capture) if capture is not None else call

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return self._unary(continuation, details, request, False)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return self._unary(continuation, details, requests, True)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return self._stream(continuation, details, request, False)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return self._stream(continuation, details, requests, True)


_SYNC_CLASS: list[type] = []


def sync_interceptor(target: str) -> Any:
    if not _SYNC_CLASS:
        import grpc

        _SYNC_CLASS.append(type("SyncInterceptor", (
            SyncInterceptorBase, grpc.UnaryUnaryClientInterceptor,
            grpc.UnaryStreamClientInterceptor, grpc.StreamUnaryClientInterceptor,
            grpc.StreamStreamClientInterceptor), {}))
    return _SYNC_CLASS[0](target)


# -- aio ---------------------------------------------------------------------------------------

async def _teed_requests_async(requests: Any, capture: Capture) -> AsyncIterator[Any]:
    if hasattr(requests, "__aiter__"):
        async for message in requests:
            capture.add_request(message)
            yield message
    else:
        for message in requests:
            capture.add_request(message)
            yield message


async def settle(call: Any, capture: Capture) -> None:
    """Wait for a unary-response aio call to end, then record it (never raises but
    cancellation)."""
    import grpc.aio

    try:
        capture.response = await call
    except grpc.aio.AioRpcError as exc:
        capture.finish(exc.code(), exc.details(), exc.initial_metadata(),
                       exc.trailing_metadata(), exc=exc)
        return
    except asyncio.CancelledError:
        capture.finish(grpc.StatusCode.CANCELLED, "cancelled", complete=False)
        raise
    except Exception as exc:
        capture.finish(None, None, exc=exc)
        return
    try:
        capture.finish(await call.code(), await call.details(), await call.initial_metadata(),
                       await call.trailing_metadata())
    except Exception as exc:
        capture.rec.stats.count_error(ORIGIN, f"{type(exc).__name__}: {exc}")


async def _teed_responses_async(call: Any, capture: Capture) -> AsyncIterator[Any]:
    import grpc
    import grpc.aio

    try:
        async for message in call:
            capture.add_response(message)
            yield message
    except grpc.aio.AioRpcError as exc:
        capture.finish(exc.code(), exc.details(), exc.initial_metadata(),
                       exc.trailing_metadata(), exc=exc, complete=False)
        raise
    except (asyncio.CancelledError, GeneratorExit):
        capture.finish(grpc.StatusCode.CANCELLED, "cancelled", complete=False)
        raise
    try:
        capture.finish(await call.code(), await call.details(), await call.initial_metadata(),
                       await call.trailing_metadata())
    except Exception as exc:
        capture.rec.stats.count_error(ORIGIN, f"{type(exc).__name__}: {exc}")


_AIO_STREAM_CLASS: list[type] = []


def teed_aio_stream(inner: Any, capture: Capture) -> Any:
    """A streaming aio call whose responses go through the capture on their way.

    A call object (not a bare iterator), so grpc keeps using it for `code()`, `cancel()` and
    the rest even when no real call is underneath (a replayed one)."""
    if not _AIO_STREAM_CLASS:
        _AIO_STREAM_CLASS.append(_teed_aio_stream_class())
    return _AIO_STREAM_CLASS[0](inner, capture)


def _teed_aio_stream_class() -> type:
    import grpc
    import grpc.aio

    class TeedAioStream(grpc.aio.UnaryStreamCall, grpc.aio.StreamStreamCall):
        def __init__(self, inner: Any, capture: Capture) -> None:
            self._inner, self._capture = inner, capture
            self._responses: AsyncIterator[Any] | None = None
            weakref.finalize(self, capture.abandon)

        def __aiter__(self) -> AsyncIterator[Any]:
            if self._responses is None:
                self._responses = _teed_responses_async(self._inner, self._capture)
            return self._responses

        async def read(self) -> Any:
            try:
                return await self.__aiter__().__anext__()
            except StopAsyncIteration:
                return grpc.aio.EOF

        def cancel(self) -> bool:
            cancelled = bool(self._inner.cancel())
            if cancelled:
                self._capture.finish(grpc.StatusCode.CANCELLED, "cancelled", complete=False)
            return cancelled

        def cancelled(self) -> bool:
            return bool(self._inner.cancelled())

        def done(self) -> bool:
            return bool(self._inner.done())

        def add_done_callback(self, callback: Any) -> None:
            self._inner.add_done_callback(lambda _call: callback(self))

        def time_remaining(self) -> Any:
            return self._inner.time_remaining()

        async def initial_metadata(self) -> Any:
            return await self._inner.initial_metadata()

        async def trailing_metadata(self) -> Any:
            return await self._inner.trailing_metadata()

        async def code(self) -> Any:
            return await self._inner.code()

        async def details(self) -> Any:
            return await self._inner.details()

        async def debug_error_string(self) -> Any:
            return await self._inner.debug_error_string()

        async def wait_for_connection(self) -> None:
            await self._inner.wait_for_connection()

        async def write(self, request: Any) -> None:
            await self._inner.write(request)

        async def done_writing(self) -> None:
            await self._inner.done_writing()

        @property
        def _done_writing_flag(self) -> bool:  # what grpc's write() checks
            return bool(getattr(self._inner, "_done_writing_flag", False))

    return TeedAioStream


async def _aio_invoke(target: str, continuation: Any, details: Any, request: Any,
                      stream_request: bool, stream_response: bool) -> Any:
    capture, session = _begin(target, details, stream_request, stream_response)
    if capture is None and session is None:
        return await continuation(details, request)
    if capture is not None:
        if stream_request:
            request = _teed_requests_async(request, capture)
        else:
            capture.request = request
    call = None
    if session is not None:
        call = await _replay().aio_call(session, target, details, request, stream_request,
                                        stream_response, capture, continuation)
    if call is None:
        call = await continuation(details, request)
    if capture is None:
        return call
    if stream_response:
        return teed_aio_stream(call, capture)
    if stream_request:  # write() waits for this interceptor: settle beside it
        task = asyncio.ensure_future(settle(call, capture))
        _tasks.add(task)
        task.add_done_callback(_tasks.discard)
    else:
        await settle(call, capture)
    return call


def aio_interceptors(target: str) -> list[Any]:
    """One interceptor per shape (aio files each under exactly one shape)."""
    import grpc.aio

    class UnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
        async def intercept_unary_unary(self, continuation: Any, details: Any,
                                        request: Any) -> Any:
            return await _aio_invoke(target, continuation, details, request, False, False)

    class UnaryStream(grpc.aio.UnaryStreamClientInterceptor):
        async def intercept_unary_stream(self, continuation: Any, details: Any,
                                         request: Any) -> Any:
            return await _aio_invoke(target, continuation, details, request, False, True)

    class StreamUnary(grpc.aio.StreamUnaryClientInterceptor):
        async def intercept_stream_unary(self, continuation: Any, details: Any,
                                         requests: Any) -> Any:
            return await _aio_invoke(target, continuation, details, requests, True, False)

    class StreamStream(grpc.aio.StreamStreamClientInterceptor):
        async def intercept_stream_stream(self, continuation: Any, details: Any,
                                          requests: Any) -> Any:
            return await _aio_invoke(target, continuation, details, requests, True, True)

    return [UnaryUnary(), UnaryStream(), StreamUnary(), StreamStream()]


# -- the channel factories ---------------------------------------------------------------------

def _sync_channel(wrapped: Any, instance: Any, args: tuple[Any, ...],
                  kwargs: dict[str, Any]) -> Any:
    channel = wrapped(*args, **kwargs)
    try:
        import grpc

        target = args[0] if args else kwargs.get("target")
        return grpc.intercept_channel(channel, sync_interceptor(target_of(target)))
    except Exception as exc:
        from tracelab.sdk.recorder import _stats

        _stats.count_error(ORIGIN, f"channel not traced: {type(exc).__name__}: {exc}")
        return channel


def _aio_channel(wrapped: Any, instance: Any, args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> Any:
    try:
        bound = inspect.signature(wrapped).bind(*args, **kwargs)
        theirs = list(bound.arguments.get("interceptors") or ())
        bound.arguments["interceptors"] = theirs + aio_interceptors(
            target_of(bound.arguments["target"]))
        args, kwargs = bound.args, bound.kwargs
    except Exception as exc:
        from tracelab.sdk.recorder import _stats

        _stats.count_error(ORIGIN, f"channel not traced: {type(exc).__name__}: {exc}")
    return wrapped(*args, **kwargs)


def enable(user: str) -> None:
    """Patch the channel factories for `user` ("record" or "replay"); idempotent."""
    import importlib

    # Imported before taking the lock: importing grpc runs the registry's post-import hook,
    # which calls back here.
    modules = [(importlib.import_module(name), name, attr) for name, attr in _FACTORIES]
    with _lock:
        _users.add(user)
        for module, module_name, attr in modules:
            patch(module, attr, _aio_channel if module_name == "grpc.aio" else _sync_channel)


def disable(user: str) -> None:
    """`user` no longer needs the interceptor; the factories are restored when nobody does."""
    import sys

    with _lock:
        _users.discard(user)
        if _users:
            return
        for module_name, attr in _FACTORIES:
            module = sys.modules.get(module_name)
            if module is not None:
                unpatch(module, attr)


def install() -> None:
    """Patch the channel factories, once grpc is imported (the registry's post-import hook
    calls this again then; a re-`init()` before that must not import grpc for the app)."""
    import sys

    if "grpc" in sys.modules:
        enable("record")


def uninstall() -> None:
    disable("record")
