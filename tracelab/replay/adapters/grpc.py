"""gRPC replay: calls on traced channels answered from the recording, sync and aio.

The SDK's interceptor (tracelab/sdk/integrations/grpc.py) asks this module first while a
replay is active (`install()` switches that on, even when recording is off), so a replayed
call is recorded by the same code as a live one. The live call is keyed in the stored shape
(`request_view`: kind `grpc`, target, endpoint and the request's messages; metadata and
stream offsets are not part of the key). Answers are rebuilt from the recorded full type
names through protobuf's default descriptor pool, so the application must have imported its
`_pb2` modules (it has, to make the call). Unary and streaming responses are replayed at
their recorded latency and message offsets (speed > 0); a streamed request is read to its end
before the answer (interactive bidi streams get their answers after the last request).

A miss raises the library's own error (`grpc.RpcError`, for aio `grpc.aio.AioRpcError`) with
UNAVAILABLE and the matcher's explanation; nothing is sent. Faults: `grpc_status` (a code and
optional details), `latency_ms`, `reset` (UNAVAILABLE), `timeout` (waits, then
DEADLINE_EXCEEDED) and an HTTP `status` (mapped to its gRPC code as gRPC does); a faulted call
does not consume its recording.
"""
from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

from tracelab.replay.session import Outcome, Session, hang_seconds, take_view

# gRPC's own mapping of an HTTP status to a code (doc/http-grpc-status-mapping.md).
_HTTP_TO_GRPC = {400: "INTERNAL", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
                 404: "UNIMPLEMENTED", 429: "UNAVAILABLE", 502: "UNAVAILABLE",
                 503: "UNAVAILABLE", 504: "UNAVAILABLE"}


class _Unrebuildable(ValueError):
    """A recorded message that cannot become a protobuf message again."""


@dataclass
class Answer:
    """What the replay says a call returns (`code` a `grpc.StatusCode`)."""

    code: Any
    details: str | None = None
    response: Any = None
    messages: list[tuple[float, Any]] = field(default_factory=list)
    initial: tuple[tuple[str, Any], ...] | None = None
    trailing: tuple[tuple[str, Any], ...] | None = None
    outcome: Outcome | None = None
    wait_ms: float = 0.0  # the recorded latency (unary answers)
    hang_s: float = 0.0   # a timeout fault's wait

    @property
    def ok(self) -> bool:
        return self.code.value[0] == 0


def _status(name_or_number: Any) -> Any:
    import grpc

    for code in grpc.StatusCode:
        if code.value[0] == name_or_number or code.name == name_or_number:
            return code
    return grpc.StatusCode.UNKNOWN


def live_view(target: str, method: str, metadata: Any, message: Any,
              timed: list[tuple[float, Any]] | None) -> dict[str, Any]:
    """The live call in the stored shape (the SDK's own `request_view`)."""
    from tracelab.replay.session import recorder
    from tracelab.sdk.integrations.grpc import request_view

    return {"kind": "grpc", "target": target, "endpoint": method,
            "request": request_view(recorder(), metadata, message, timed)}


def rebuild(type_name: Any, value: Any) -> Any:
    """A recorded message as its protobuf class (from the default descriptor pool)."""
    from google.protobuf import descriptor_pool, json_format, message_factory

    if not isinstance(type_name, str):
        raise _Unrebuildable("the recording has no message type")
    if not isinstance(value, dict) or "$tracelab" in value:
        kind = value.get("$tracelab") if isinstance(value, dict) else type(value).__name__
        raise _Unrebuildable(f"the recorded {type_name} was not kept whole ({kind})")
    try:
        descriptor = descriptor_pool.Default().FindMessageTypeByName(type_name)
    except KeyError:
        raise _Unrebuildable(f"message type {type_name} is unknown here (import its _pb2 "
                             "module)") from None
    try:
        return json_format.ParseDict(value, message_factory.GetMessageClass(descriptor)(),
                                     ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise _Unrebuildable(f"the recorded {type_name} does not parse back: {exc}") from None


def _metadata(recorded: Any) -> tuple[tuple[str, Any], ...] | None:
    """Recorded metadata back as pairs; redacted and unrecorded values are left out."""
    from tracelab.sdk.integrations.grpc import NOT_RECORDED
    from tracelab.sdk.redaction import MARKER

    if not isinstance(recorded, dict):
        return None
    pairs = []
    for name, value in recorded.items():
        for one in value if isinstance(value, list) else [value]:
            if not isinstance(one, str) or one in (MARKER, NOT_RECORDED):
                continue
            pairs.append((name, base64.b64decode(one) if name.endswith("-bin") else one))
    return tuple(pairs)


def _answer(outcome: Outcome, timeout: Any, stream: bool) -> Answer | None:
    """The answer for a decided call; None: run it live (passthrough)."""
    import grpc

    if outcome.passthrough:
        return None
    if not outcome.hit:
        return Answer(grpc.StatusCode.UNAVAILABLE, outcome.message, outcome=outcome)
    fault = outcome.fault
    if fault is not None and fault.action == "reset":
        return Answer(grpc.StatusCode.UNAVAILABLE, fault.message, outcome=outcome)
    if fault is not None and fault.action == "timeout":
        return Answer(grpc.StatusCode.DEADLINE_EXCEEDED, fault.message, outcome=outcome,
                      hang_s=hang_seconds(outcome, timeout))
    event = outcome.event or {}
    response = event.get("response")
    if fault is not None and fault.action == "status":
        code = _status(_HTTP_TO_GRPC.get(int(fault.status or 500), "UNKNOWN"))
        return Answer(code, f"{fault.message}: HTTP status {fault.status}", outcome=outcome)
    error = event.get("error") if isinstance(event.get("error"), dict) else {}
    if not isinstance(response, dict) or not isinstance(response.get("status_code"), int):
        return Answer(grpc.StatusCode.UNAVAILABLE, f"{error.get('type', 'Error')}: "
                      f"{error.get('message', 'no reply')} (replayed from the recording)",
                      outcome=outcome)
    answer = Answer(_status(response["status_code"]),
                    response.get("details") or error.get("message"), outcome=outcome,
                    initial=_metadata(response.get("metadata")),
                    trailing=_metadata(response.get("trailing_metadata")))
    latency = event.get("latency_ms")
    answer.wait_ms = float(latency) if isinstance(latency, (int, float)) else 0.0
    try:
        if stream:
            messages = response.get("messages")
            if isinstance(messages, dict):  # a marker: cut at the cap, or not captured
                rebuild(response.get("type"), messages)
            for item in messages if isinstance(messages, list) else []:
                item = item if isinstance(item, dict) else {}
                t = item.get("t")
                answer.messages.append((float(t) if isinstance(t, (int, float)) else 0.0,
                                        rebuild(response.get("type"), item.get("message"))))
        elif answer.ok:
            answer.response = rebuild(response.get("type"), response.get("message"))
    except _Unrebuildable as exc:
        return Answer(grpc.StatusCode.INTERNAL, f"replay could not rebuild the answer of "
                      f"{outcome.call}: {exc}", outcome=outcome)
    return answer


def _decide(session: Session, target: str, details: Any, message: Any,
            timed: list[tuple[float, Any]] | None, capture: Any, stream: bool) -> Answer | None:
    method = details.method.decode() if isinstance(details.method, bytes) else \
        str(details.method)
    outcome = take_view(session, live_view, target, method, details.metadata, message, timed)
    if capture is not None:
        capture.outcome = outcome
    else:
        from tracelab.replay.session import clear_outcome

        clear_outcome()  # no event will take the tag
    try:
        return _answer(outcome, details.timeout, stream)
    except Exception as exc:  # a TraceLab failure: the call fails closed, explained
        import grpc

        return Answer(grpc.StatusCode.UNAVAILABLE, f"replay failed to answer {outcome.call}: "
                      f"{type(exc).__name__}: {exc}", outcome=outcome)


# -- sync --------------------------------------------------------------------------------------

def _rpc_error_classes() -> tuple[type, type, type]:
    import grpc

    class Replayed(grpc.Call, grpc.Future):
        """A finished unary call answered by the replay (what `future()` and `with_call`
        give the caller)."""

        def __init__(self, answer: Answer) -> None:
            self._answer = answer

        def initial_metadata(self) -> Any:
            return self._answer.initial

        def trailing_metadata(self) -> Any:
            return self._answer.trailing

        def code(self) -> Any:
            return self._answer.code

        def details(self) -> Any:
            return self._answer.details

        def debug_error_string(self) -> str:
            return f"replayed by TraceLab: {self._answer.details}"

        def is_active(self) -> bool:
            return False

        def time_remaining(self) -> Any:
            return None

        def cancel(self) -> bool:
            return False

        def cancelled(self) -> bool:
            return False

        def running(self) -> bool:
            return False

        def done(self) -> bool:
            return True

        def add_callback(self, callback: Any) -> bool:
            return False

        def add_done_callback(self, fn: Any) -> None:
            fn(self)

        def result(self, timeout: Any = None) -> Any:
            return self._answer.response

        def exception(self, timeout: Any = None) -> Any:
            return None

        def traceback(self, timeout: Any = None) -> Any:
            return None

    class ReplayedError(Replayed, grpc.RpcError):
        """A replayed call that ended with a non-OK status: raised, as grpc raises its own."""

        def __str__(self) -> str:
            return (f"<replayed RPC that terminated with:\n\tstatus = {self._answer.code}\n"
                    f"\tdetails = \"{self._answer.details}\"\n>")

        __repr__ = __str__

        def result(self, timeout: Any = None) -> Any:
            raise self

        def exception(self, timeout: Any = None) -> Any:
            return self

    class ReplayedStream(Replayed, grpc.RpcError):
        """A replayed streaming response: the recorded messages at their offsets, then the
        recorded status (raised when not OK), as grpc's own iterator does."""

        def __init__(self, answer: Answer, session: Session) -> None:
            super().__init__(answer)
            self._session, self._cancelled = session, False
            self._messages = iter(answer.messages)

        def __iter__(self) -> Iterator[Any]:
            return self

        def __next__(self) -> Any:
            if self._cancelled:
                raise self
            item = next(self._messages, None)
            if item is None:
                if self._answer.ok:
                    raise StopIteration
                raise self
            outcome = self._answer.outcome
            if outcome is not None:
                self._session.wait_until(outcome.started, item[0])
            return item[1]

        next = __next__

        def __str__(self) -> str:
            return (f"<replayed stream that terminated with:\n\tstatus = {self._answer.code}\n"
                    f"\tdetails = \"{self._answer.details}\"\n>")

        def cancel(self) -> bool:
            if self._cancelled:
                return False
            self._cancelled = True
            self._answer.code = grpc.StatusCode.CANCELLED
            self._answer.details = "Locally cancelled by application!"
            return True

        def cancelled(self) -> bool:
            return self._cancelled

        def result(self, timeout: Any = None) -> Any:
            if not self._answer.ok:
                raise self
            return None

        def exception(self, timeout: Any = None) -> Any:
            return None if self._answer.ok else self

    return Replayed, ReplayedError, ReplayedStream


_CLASSES: list[tuple[type, type, type]] = []


def _classes() -> tuple[type, type, type]:
    if not _CLASSES:
        _CLASSES.append(_rpc_error_classes())
    return _CLASSES[0]


def sync_call(session: Session, target: str, details: Any, request: Any, stream_request: bool,
              stream_response: bool, capture: Any) -> tuple[Any, Any]:
    """(the replayed call, the request): a finished `grpc.Call`/`Future` or a response
    iterator; None to run the call live with the request (a streamed one read into a list).
    Waits like the recorded call did (speed > 0) and like its fault."""
    timed = [(0.0, m) for m in request] if stream_request else None
    if timed is not None:
        request = [m for _t, m in timed]
    answer = _decide(session, target, details, None if stream_request else request, timed,
                     capture, stream_response)
    if answer is None:
        return None, iter(request) if stream_request else request
    outcome = answer.outcome
    if outcome is not None:
        session.pause(outcome)
        if answer.hang_s:
            time.sleep(answer.hang_s)
        elif outcome.hit and outcome.fault is None and not stream_response:
            session.wait_until(outcome.started, answer.wait_ms)
    replayed, replayed_error, replayed_stream = _classes()
    if stream_response:
        return replayed_stream(answer, session), request
    return (replayed(answer) if answer.ok else replayed_error(answer)), request


# -- aio ---------------------------------------------------------------------------------------

def _aio_classes() -> tuple[type, type]:
    import grpc
    import grpc.aio

    def error(answer: Answer) -> grpc.aio.AioRpcError:
        return grpc.aio.AioRpcError(answer.code, grpc.aio.Metadata(*(answer.initial or ())),
                                    grpc.aio.Metadata(*(answer.trailing or ())),
                                    answer.details, "replayed by TraceLab")

    class Base:
        def __init__(self, decide: Any) -> None:
            self._task = asyncio.ensure_future(decide())
            self._cancelled = False

        async def _get(self) -> Answer:
            return await asyncio.shield(self._task)

        def cancel(self) -> bool:
            if self._task.done():
                return False
            self._cancelled = True
            self._task.cancel()
            return True

        def cancelled(self) -> bool:
            return self._cancelled

        def done(self) -> bool:
            return self._task.done()

        def add_done_callback(self, callback: Any) -> None:
            self._task.add_done_callback(lambda _t: callback(self))

        def time_remaining(self) -> Any:
            return None

        async def initial_metadata(self) -> Any:
            return grpc.aio.Metadata(*((await self._get()).initial or ()))

        async def trailing_metadata(self) -> Any:
            return grpc.aio.Metadata(*((await self._get()).trailing or ()))

        async def code(self) -> Any:
            return (await self._get()).code

        async def details(self) -> Any:
            return (await self._get()).details

        async def debug_error_string(self) -> str:
            return "replayed by TraceLab"

        async def wait_for_connection(self) -> None:
            return None

        async def write(self, request: Any) -> None:
            raise NotImplementedError("a replayed call takes its requests as an iterator")

        async def done_writing(self) -> None:
            raise NotImplementedError("a replayed call takes its requests as an iterator")

        _done_writing_flag = False  # grpc's write() checks it; the requests are read lazily

    class Unary(Base, grpc.aio.UnaryUnaryCall, grpc.aio.StreamUnaryCall):
        def __await__(self) -> Any:
            answer = yield from self._get().__await__()
            if not answer.ok:
                raise error(answer)
            return answer.response

    class Stream(Base, grpc.aio.UnaryStreamCall, grpc.aio.StreamStreamCall):
        def __init__(self, decide: Any, session: Session) -> None:
            super().__init__(decide)
            self._session = session
            self._iterator: AsyncIterator[Any] | None = None

        async def _messages(self) -> AsyncIterator[Any]:
            answer = await self._get()
            outcome = answer.outcome
            for t, message in answer.messages:
                if outcome is not None:
                    delay = self._session.delay(outcome.started, t)
                    if delay > 0:
                        await asyncio.sleep(delay)
                yield message
            if not answer.ok:
                raise error(answer)

        def __aiter__(self) -> AsyncIterator[Any]:
            if self._iterator is None:
                self._iterator = self._messages()
            return self._iterator

        async def read(self) -> Any:
            from grpc.aio import EOF

            try:
                return await self.__aiter__().__anext__()
            except StopAsyncIteration:
                return EOF

    return Unary, Stream


_AIO_CLASSES: list[tuple[type, type]] = []


async def _consume(request: Any) -> list[tuple[float, Any]]:
    timed: list[tuple[float, Any]] = []
    if hasattr(request, "__aiter__"):
        async for message in request:
            timed.append((0.0, message))
    else:
        timed.extend((0.0, m) for m in request or ())
    return timed


async def _live_answer(continuation: Any, details: Any, requests: list[Any],
                       stream_response: bool) -> Answer:
    """A passthrough of a streamed request, already read: sent live, its answer buffered."""
    import grpc.aio

    call = await continuation(details, iter(requests))
    answer = Answer(grpc.StatusCode.OK)
    try:
        if stream_response:
            async for message in call:
                answer.messages.append((0.0, message))
        else:
            answer.response = await call
    except grpc.aio.AioRpcError:
        pass
    answer.code, answer.details = await call.code(), await call.details()
    answer.initial = tuple(await call.initial_metadata() or ())
    answer.trailing = tuple(await call.trailing_metadata() or ())
    return answer


async def aio_call(session: Session, target: str, details: Any, request: Any,
                   stream_request: bool, stream_response: bool, capture: Any,
                   continuation: Any) -> Any:
    """The replayed aio call, or None to run it live (a passthrough of a unary request).

    A streamed request is read inside the call (so `write()`/`done_writing()` work), then
    decided; its passthrough is sent live from within and buffered."""
    if not _AIO_CLASSES:
        _AIO_CLASSES.append(_aio_classes())
    unary, stream = _AIO_CLASSES[0]
    answer = None
    if not stream_request:
        answer = _decide(session, target, details, request, None, capture, stream_response)
        if answer is None:
            return None

    async def decided() -> Answer:
        nonlocal answer
        if answer is None:
            timed = await _consume(request)
            answer = _decide(session, target, details, None, timed, capture, stream_response)
            if answer is None:
                return await _live_answer(continuation, details, [m for _t, m in timed],
                                          stream_response)
        outcome = answer.outcome
        if outcome is not None:
            pause = outcome.pause_ms / 1000.0 + answer.hang_s
            if not pause and outcome.hit and outcome.fault is None and not stream_response:
                pause = session.delay(outcome.started, answer.wait_ms)
            if pause > 0:
                await asyncio.sleep(pause)
        return answer

    return stream(decided, session) if stream_response else unary(decided)


def install() -> None:
    from tracelab.sdk.integrations import grpc as integration

    integration.enable("replay")


def uninstall() -> None:
    import sys

    integration = sys.modules.get("tracelab.sdk.integrations.grpc")
    if integration is not None:
        integration.disable("replay")
