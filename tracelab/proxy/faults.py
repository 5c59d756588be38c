"""Applying a fault (`tracelab.replay.faults.Fault`) to a mitmproxy flow.

The rule format and the decision (which call gets which fault) belong to
`tracelab.replay.faults`; this module only knows how to make mitmproxy do what a decided
`Fault` says, for the recording proxy (`tracelab proxy --faults`, live traffic) and the replay
proxy alike:

- in the `request` hook (the request is read, nothing was sent upstream): the fault's
  `latency_ms` first (`await asyncio.sleep`: mitmproxy awaits async hooks, other flows go on);
  then `status` answers in place of the upstream, `grpc_status` with a gRPC trailers-only
  answer (the addon reads a faulted gRPC request whole, see `stream_grpc_request`), `reset`
  kills the flow (the client's connection is dropped without an answer), `timeout` holds the
  request for `timeout_s`, or until the client gives up, then kills it;
- in `responseheaders`: `empty_body`, `malformed_body` and `truncate` turn streaming off for
  this response (its body must be whole to be rewritten); `stream_cut` streams it through
  `StreamCut`, which passes the first N body chunks as they come from the upstream and then
  drops the client's connection (mitmproxy 11 cannot kill a flow in transit, mitmproxy#4711,
  so the cut closes the client's transport, which flushes what was sent and sends nothing
  more: the client sees a body cut short, never its end);
- in `response`: the mangling actions rewrite the (decoded) body with `Fault.mangle`.

The event recorded for a faulted flow carries `Fault.tags()`, and, for the actions that make
the call fail, the error the fault stands for (`ConnectionResetError`, `TimeoutError`)
instead of mitmproxy's own error text.
"""
from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from tracelab.proxy.addon import FAULT_KEY, BodyTap

if TYPE_CHECKING:
    from mitmproxy import http

    from tracelab.replay.faults import Call, Fault

MANGLING = frozenset(("empty_body", "malformed_body", "truncate"))
_UPSTREAM_KEY = "tracelab.fault.upstream"  # the response side is still to be applied
_HOLD_POLL_S = 0.01  # how soon a client that gave up is noticed
# grpc-message is percent-encoded, printable ASCII but "%" sent as is (gRPC's PROTOCOL-HTTP2).
_GRPC_MESSAGE_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


def flow_fault(flow: http.HTTPFlow) -> Fault | None:
    """The fault applied to this flow, if any."""
    return flow.metadata.get(FAULT_KEY)


def call_of(view: dict[str, Any]) -> Call:
    """What a rule matches against, from the live request in the stored event shape."""
    from tracelab.replay.faults import Call

    request = view.get("request") or {}
    return Call(kind=view["kind"], target=view["target"], endpoint=view["endpoint"],
                body=request.get("body"))


def fault_error(fault: Fault) -> BaseException | None:
    """The exception the recorded event shows for a fault that makes the call fail (the
    types `Fault.response_event` uses in a replay), None for the others."""
    kind = {"reset": ConnectionResetError, "stream_cut": ConnectionResetError,
            "timeout": TimeoutError}.get(fault.action)
    return kind(fault.message) if kind is not None else None


def status_response(fault: Fault) -> http.Response:
    """The answer of a `status` fault: its status, body and headers (Retry-After included)."""
    from mitmproxy import http as mhttp

    body, content_type = fault.body_bytes()
    headers = {"Content-Type": content_type, **fault.headers}
    return mhttp.Response.make(fault.status or 500, body, headers)


def grpc_status_response(fault: Fault) -> http.Response:
    """The answer of a `grpc_status` fault: a gRPC trailers-only response (HTTP 200, the
    status and its percent-encoded details in the headers, no message)."""
    from urllib.parse import quote

    from mitmproxy import http as mhttp

    from tracelab.replay.faults import GRPC_CODES

    details = fault.details if fault.details is not None else fault.message
    return mhttp.Response.make(200, b"", {
        "content-type": "application/grpc",
        "grpc-status": str(fault.grpc_status or GRPC_CODES["UNKNOWN"]),
        "grpc-message": quote(details, safe=_GRPC_MESSAGE_SAFE)})


def set_response(flow: http.HTTPFlow, response: http.Response) -> None:
    """Answer without upstream; a HEAD answer carries no body (it would desync the
    client's connection), nor do 1xx, 204 and 304 answers."""
    if flow.request.method.upper() == "HEAD" or response.status_code < 200 \
            or response.status_code in (204, 304):
        response.content = b""
    flow.response = response
    flow.is_replay = "response"


async def before_upstream(flow: http.HTTPFlow, fault: Fault, upstream: bool = True) -> bool:
    """The request-side part of a fault (latency, then status/reset/timeout); True when the
    flow got its answer (or its end) from the fault, so nothing else must answer it.

    `upstream`: the answer will come from the upstream, so the response-side actions
    (mangling, stream cut) are applied to it here; the replay proxy passes False, it answers
    with `Fault.response_event` of the recorded answer instead."""
    flow.metadata[FAULT_KEY] = fault
    if upstream:
        flow.metadata[_UPSTREAM_KEY] = True
    if fault.latency_ms > 0:
        await asyncio.sleep(fault.latency_ms / 1000)
    if fault.action == "status":
        set_response(flow, status_response(fault))
        return True
    if fault.action == "grpc_status":
        set_response(flow, grpc_status_response(fault))
        return True
    if fault.action == "timeout":
        await hold(flow, fault.timeout_s)
    if fault.action in ("reset", "timeout"):
        if flow.killable:
            flow.kill()
        return True
    return False


async def hold(flow: http.HTTPFlow, seconds: float) -> None:
    """Wait `seconds`, or less when the client closes its side first (its own timeout)."""
    from mitmproxy.connection import ConnectionState

    deadline = time.monotonic() + max(0.0, seconds)
    while (left := deadline - time.monotonic()) > 0:
        if not flow.client_conn.state & ConnectionState.CAN_READ:
            return
        await asyncio.sleep(min(_HOLD_POLL_S, left))


def on_response_headers(flow: http.HTTPFlow, fault: Fault | None, keep: int) -> None:
    """The response-side set-up: buffer the body to be rewritten, or stream it to its cut.

    `keep` is how many body bytes the recording keeps (its `BodyTap` limit)."""
    response = flow.response
    if fault is None or response is None or not flow.metadata.get(_UPSTREAM_KEY):
        return
    if fault.action in MANGLING:
        response.stream = False
    elif fault.action == "stream_cut":
        response.stream = StreamCut(fault.cut_after_chunks or 0, keep, flow)


def on_response(flow: http.HTTPFlow, fault: Fault | None) -> None:
    """Rewrite a whole body for the mangling actions (the decoded body; re-encoded as sent)."""
    response = flow.response
    if fault is None or fault.action not in MANGLING or response is None \
            or not flow.metadata.get(_UPSTREAM_KEY) \
            or isinstance(response.stream, BodyTap) or not may_have_body(flow):
        return
    response.content = fault.mangle(response.get_content(strict=False) or b"")


def may_have_body(flow: http.HTTPFlow) -> bool:
    status = flow.response.status_code if flow.response is not None else 0
    return status >= 200 and status not in (204, 304) and flow.request.method != "HEAD"


class StreamCut(BodyTap):
    """A `Response.stream` callable that passes `after` body chunks, then drops the client.

    The chunks passed are kept (up to `limit`) for the recorded event like any streamed body.
    The client's transport is closed right after the last chunk passed was written (on the
    next loop turn) and, at the latest, when the next chunk or the end of the body arrives,
    before anything of it is written.
    """

    __slots__ = ("after", "passed", "flow", "cut")

    def __init__(self, after: int, limit: int, flow: http.HTTPFlow) -> None:
        super().__init__(limit)
        self.after = max(0, after)
        self.passed = 0
        self.flow = flow
        self.cut = False

    def __call__(self, chunk: bytes) -> bytes | list[bytes]:
        if self.cut or self.passed >= self.after:
            self.drop()
            return []
        if not chunk:  # the end of the body, before the Nth chunk: it never reaches the client
            self.drop()
            return []
        self.passed += 1
        if self.passed >= self.after:
            try:
                asyncio.get_running_loop().call_soon(self.drop)
            except RuntimeError:
                self.drop()
        return super().__call__(chunk)

    def drop(self) -> None:
        """Close the client's connection: what was written is flushed, nothing more is sent."""
        if self.cut:
            return
        self.cut = True
        drop_client(self.flow)


def drop_client(flow: http.HTTPFlow) -> None:
    """Close the transport of the flow's client connection (through mitmproxy's proxyserver)."""
    from mitmproxy import ctx

    server = ctx.master.addons.get("proxyserver")
    handler = getattr(server, "connections", {}).get(flow.client_conn.id)
    transport = handler.transports.get(flow.client_conn) if handler is not None else None
    writer = transport.writer if transport is not None else None
    if writer is not None and not writer.is_closing():
        writer.close()
