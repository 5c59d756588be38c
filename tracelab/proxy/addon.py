"""The mitmproxy addon that turns each proxied flow into a TraceEvent (`source: proxy`).

It owns the mapping from mitmproxy's flows to `tracelab.sdk.capture.record_http` arguments,
and nothing else: redaction, body caps, LLM detection, the status rule and the sinks (Redis
or the embedded spool) are the SDK's, set up once per process by `tracelab.init` (the runner
does that). The addon must never change what the client or the upstream sees, except for
removing the `X-Tracelab-*` override headers.

What becomes an event:

- An HTTP request/response (HTTP/1 or HTTP/2, decrypted HTTPS or plain): one `http` event
  (`llm` for LLM endpoints), recorded after the response has been handed to mitmproxy for
  sending, so recording never delays the client.
- A request that fails without an upstream response (refused, reset, TLS failure, a stream
  cut short): one event with `status: error`, `response: null` when nothing arrived, and
  `error: {type: "UpstreamError", message: <mitmproxy's error text>}`. The client gets
  mitmproxy's normal error response (502), untouched. A refused CONNECT (HTTPS tunnel) is
  recorded the same way, as `CONNECT /`. mitmproxy sets no upstream read timeout: when a
  client gives up on a silent upstream, the event says so (`ClientDisconnected`), with the
  time waited as `latency_ms`.
- Streamed responses (Server-Sent Events, NDJSON and the like, any response without a
  Content-Length, and any body larger than the body cap) are forwarded chunk by chunk as they
  arrive; the addon keeps a copy of the first `max_body_bytes` only, so the event's body is the
  usual JSON/text value, or a `truncated` marker carrying the full size. A streaming content
  type sent without a content encoding also gets `response.chunks` (each piece with `t`, ms
  since the request started) and `response.stream`, as the SDK's streams (`ChunkTap`), so an
  LLM stream gets `llm.ttft_ms`.
- A gRPC call (HTTP/2, `application/grpc*`): ONE `kind: grpc` event, its messages decoded
  without a `.proto` (keys are field numbers), its status from the `grpc-status` trailer;
  both bodies are streamed through the proxy (`tracelab.proxy.grpc` has the details).
- A WebSocket connection: ONE event per connection (`kind: websocket`), recorded when it
  closes. `request` is the upgrade request, `response` the 101 answer whose `body` summarises
  the connection: `messages` and `bytes` counted per direction (`from_client`,
  `from_server`), the `first` messages in order (at most `tracelab_websocket_messages`, default
  10, each `{from, type, at_ms, content}` with content cut to 4 KiB; JSON text is stored as
  JSON, so secret fields are redacted like any body) and the close code, reason and side.
  `latency_ms` is the connection's lifetime; the status is `error` when mitmproxy saw an error
  or the close code is not a normal one (1000, 1001, 1005).

Faults (`tracelab proxy --faults FILE`, a chaos proxy): with a `FaultSet`, each HTTP request
is matched against the rules once it has been read (`Call` from the flow: kind `http`/`llm` by
the recording's rule, target `host[:port]`, endpoint `METHOD /path`, the body as it would be
stored) and the fault is applied by `tracelab.proxy.faults`; the flow's event carries
`Fault.tags()` (`fault`, `fault.action`, `fault.rule`).

Per-request overrides: a client may send `X-Tracelab-Workflow`, `X-Tracelab-Run-Id` and
`X-Tracelab-Service`; they set that event's workflow, run id and service and are removed
before the request is forwarded, so the upstream never sees them.
"""
from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson

from tracelab.proxy import grpc
from tracelab.sdk.capture import http_target, llm_tags, record_http
from tracelab.sdk.recorder import Recorder, current
from tracelab.sdk.streams import StreamTee

if TYPE_CHECKING:
    from mitmproxy import http

    from tracelab.replay.faults import FaultSet

ORIGIN = "proxy"
OVERRIDE_HEADERS = {"workflow": "X-Tracelab-Workflow", "run_id": "X-Tracelab-Run-Id",
                    "service": "X-Tracelab-Service"}
_METADATA_KEY = "tracelab.overrides"
_RECORDED_KEY = "tracelab.recorded"
FAULT_KEY = "tracelab.fault"  # flow.metadata: the `Fault` applied to the flow
_GRPC_FAULT_KEY = "tracelab.fault.grpc"  # the fault decided for a gRPC call, to be applied
_MAX_OVERRIDE_CHARS = 256  # the contract's limit for workflow, run_id and service
# Content types whose bodies are produced over time: buffering them would stall the client.
STREAMING_CONTENT_TYPES = (
    "text/event-stream", "application/x-ndjson", "application/ndjson", "application/jsonl",
    "application/x-jsonlines", "application/stream+json", "multipart/x-mixed-replace",
    "application/grpc",
)
_NORMAL_CLOSE_CODES = frozenset((1000, 1001, 1005))
_WS_MESSAGE_BYTES = 4096
_CONNECT_HINT = " If you plan to redirect requests away from this server"


class UpstreamError(Exception):
    """What mitmproxy reported when the upstream could not answer (its own error text)."""


class ClientDisconnected(Exception):
    """The client went away (e.g. its own timeout) before the flow completed."""


class WebSocketError(Exception):
    """A WebSocket connection that ended with an error or an abnormal close code."""


class BodyTap:
    """A `Response.stream` callable: passes every chunk through unchanged, keeps the first bytes.

    `limit` is one byte more than the body cap, so a body longer than the cap is seen as such
    by the SDK's encoder (which then writes a `truncated` marker with `size`, the real size).
    """

    __slots__ = ("kept", "size", "limit")

    def __init__(self, limit: int) -> None:
        self.kept = bytearray()
        self.size = 0
        self.limit = limit

    def __call__(self, chunk: bytes) -> bytes:
        self.size += len(chunk)
        room = self.limit - len(self.kept)
        if room > 0 and chunk:
            self.kept += chunk[:room]
        return chunk

    @property
    def complete(self) -> bool:
        return self.size == len(self.kept)


class ChunkTap(BodyTap):
    """A `BodyTap` for a streaming content type that also keeps the pieces with their times.

    The pieces go to a `tracelab.sdk.streams.StreamTee` (the Python SDK's stream record), so the
    event gets `response.chunks` and `response.stream` as the SDK's streams do, and an SSE
    stream is folded event by event: an LLM stream gets `llm.ttft_ms` and its usage, even past
    the cap. Only for bodies sent without a content encoding (the pieces are what the client
    gets). `t` counts from the request's start (`started`, epoch seconds, mitmproxy's clock).
    """

    __slots__ = ("tee",)

    def __init__(self, limit: int, cap: int, started: float) -> None:
        super().__init__(limit)
        elapsed_ns = max(0, int((time.time() - started) * 1e9))
        self.tee = StreamTee(time.perf_counter_ns() - elapsed_ns, cap, lambda _tee: None)

    def __call__(self, chunk: bytes) -> bytes:
        self.tee.add(chunk)
        return super().__call__(chunk)


@dataclass
class WebSocketSummary:
    """What one WebSocket connection did: per-direction counts and its first messages."""

    keep: int
    started: float = field(default_factory=time.time)
    messages: dict[str, int] = field(default_factory=lambda: {"from_client": 0, "from_server": 0})
    bytes: dict[str, int] = field(default_factory=lambda: {"from_client": 0, "from_server": 0})
    first: list[dict[str, Any]] = field(default_factory=list)

    def add(self, from_client: bool, is_text: bool, content: bytes, timestamp: float) -> None:
        side = "from_client" if from_client else "from_server"
        self.messages[side] += 1
        self.bytes[side] += len(content)
        if len(self.first) < self.keep:
            self.first.append({"from": "client" if from_client else "server",
                               "type": "text" if is_text else "binary",
                               "at_ms": round((timestamp - self.started) * 1000, 3),
                               "content": _message_content(content, is_text)})


def _message_content(content: bytes, is_text: bool) -> Any:
    """A message as a body would be stored: JSON as JSON, text as text, binary as base64."""
    size = len(content)
    head = content[:_WS_MESSAGE_BYTES]
    if is_text:
        if size <= _WS_MESSAGE_BYTES and head.lstrip()[:1] in (b"{", b"["):
            try:
                return orjson.loads(head)
            except orjson.JSONDecodeError:
                pass
        text = head.decode("utf-8", errors="ignore")
        if size <= _WS_MESSAGE_BYTES:
            return text
        return {"$tracelab": "truncated", "size": size, "encoding": "text", "data": text}
    encoded = base64.b64encode(head).decode("ascii")
    if size <= _WS_MESSAGE_BYTES:
        return {"$tracelab": "binary", "size": size, "base64": encoded}
    return {"$tracelab": "truncated", "size": size, "encoding": "base64", "data": encoded}


def redact_messages(first: list[dict[str, Any]], rec: Recorder) -> None:
    """Text messages get the text rules (JSON ones get the body rules when the summary is
    encoded); a message cut at 4 KiB gets the rules for a cut text, in place."""
    redactor = rec.redactor
    for message in first:
        content = message["content"]
        if isinstance(content, str):
            message["content"] = redactor.text(content)
        elif isinstance(content, dict) and content.get("$tracelab") == "truncated" \
                and content.get("encoding") == "text":
            content["data"] = redactor.cut(content["data"])


def should_stream(response: http.Response, cap: int) -> bool:
    """Forward this body as it arrives: a streaming type, an unknown length, or above the cap."""
    headers = response.headers
    if headers.get("content-type", "").lower().startswith(STREAMING_CONTENT_TYPES):
        return True
    length = headers.get("content-length")
    if length is None:
        return True  # chunked or close-delimited: the server produces it as it goes
    try:
        return int(length) > cap
    except ValueError:
        return False


def _may_have_body(flow: http.HTTPFlow) -> bool:
    status = flow.response.status_code if flow.response is not None else 0
    return status >= 200 and status not in (204, 304) and flow.request.method != "HEAD"


def _later(fn: Callable[..., None], *args: Any) -> None:
    """Run `fn` after the current hook returns, so mitmproxy sends the response first."""
    try:
        asyncio.get_running_loop().call_soon(fn, *args)
    except RuntimeError:  # no loop (called outside mitmproxy): record right away
        fn(*args)


def _kept_bytes() -> int:
    """How many body bytes an event keeps: the body cap, 0 without payloads or recording."""
    rec = current()
    return rec.config.max_body_bytes if rec is not None and rec.config.capture_payloads else 0


def _content(message: http.Message) -> bytes | None:
    """The body as the application sees it (decompressed); the raw bytes if that fails."""
    raw = message.raw_content
    if raw and "content-encoding" in message.headers:
        return message.get_content(strict=False)
    return raw


def _decoded(data: bytes, content_encoding: str | None) -> bytes:
    if not content_encoding or not data:
        return data
    from mitmproxy.net import encoding

    try:
        return encoding.decode(data, content_encoding)
    except ValueError:
        return data


def flow_view(flow: http.HTTPFlow, rec: Recorder | None) -> dict[str, Any]:
    """The live request in the stored event shape: kind, target, endpoint and `request` as
    the recording would store it (same redaction, same body encoding)."""
    from tracelab.replay.matching import http_request_view
    from tracelab.sdk.redaction import Redactor

    request = flow.request
    redactor = rec.redactor if rec is not None else Redactor(())
    cap = rec.config.max_body_bytes if rec is not None else 64 * 1024
    body = request.get_content(strict=False) if request.raw_content else None
    view = http_request_view(request.method, request.url, request.headers.fields, body,
                             request.headers.get("content-type"), redactor, cap)
    parts = urlsplit(request.url)
    path = parts.path or "/"
    kind = "llm" if llm_tags(parts.hostname or "", path, view.get("body"), None) else "http"
    return {"kind": kind, "target": http_target(parts.scheme, parts.netloc),
            "endpoint": f"{request.method.upper()} {path}", "request": view}


class Tagged:
    """The recorder, with tags added to each event it submits, and each submitted event shown
    to `observe` (the replay proxy's call log)."""

    def __init__(self, rec: Recorder, tags: dict[str, str],
                 observe: Callable[[dict[str, Any]], None] | None = None) -> None:
        self._rec = rec
        self._tags = tags
        self._observe = observe

    def __getattr__(self, name: str) -> Any:
        return getattr(self._rec, name)

    def submit(self, event: dict[str, Any], origin: str, found: set[str] | None = None) -> None:
        event["tags"] = {**(event.get("tags") or {}), **self._tags}
        if self._observe is not None:
            self._observe(event)
        self._rec.submit(event, origin, found)


class TraceLabAddon:
    """mitmproxy addon: one TraceEvent per HTTP flow, failed flow and WebSocket connection."""

    def __init__(self, websocket_messages: int = 10, faults: FaultSet | None = None) -> None:
        self.websocket_messages = websocket_messages
        self.faults = faults
        self._websockets: dict[str, WebSocketSummary] = {}
        self._held: set[http.HTTPFlow] = set()

    # -- mitmproxy lifecycle ----------------------------------------------------------------
    def load(self, loader: Any) -> None:
        loader.add_option(
            "tracelab_websocket_messages", int, self.websocket_messages,
            "How many first messages of each WebSocket connection TraceLab keeps in its event.")

    def configure(self, updated: set[str]) -> None:
        if "tracelab_websocket_messages" in updated:
            from mitmproxy import ctx

            self.websocket_messages = max(0, ctx.options.tracelab_websocket_messages)

    def next_layer(self, nextlayer: Any) -> None:
        """Plaintext gRPC in a CONNECT tunnel: HTTP/2, not a TCP relay (`grpc.h2c_layer`)."""
        rec = current()
        if rec is not None:
            rec.safely(ORIGIN, grpc.h2c_layer, nextlayer)
        else:
            grpc.h2c_layer(nextlayer)

    # -- HTTP ---------------------------------------------------------------------------------
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        """Take the override headers off before anything is forwarded (even a streamed body)."""
        headers = flow.request.headers
        overrides: dict[str, str] = {}
        for key, name in OVERRIDE_HEADERS.items():
            if name in headers:
                value = ", ".join(headers.get_all(name)).strip()
                del headers[name]
                if value:
                    overrides[key] = value[:_MAX_OVERRIDE_CHARS]
        if overrides:
            flow.metadata[_METADATA_KEY] = overrides
        if grpc.is_grpc(flow) and self.stream_grpc_request(flow):
            flow.request.stream = grpc.GrpcFrames(flow.request.timestamp_start, _kept_bytes())

    def stream_grpc_request(self, flow: http.HTTPFlow) -> bool:
        """Stream this gRPC request upstream as it comes (a bidirectional call waiting for an
        answer before its next message needs it), unless a fault is to be applied to it: the
        `request` hook of a streamed request comes after it went upstream, so the fault is
        decided here (on the call's `grpc` view: kind, target, endpoint; no body) and the
        request is read whole for `request` to apply it."""
        if self.faults is None:
            return True
        fault = self.decide(flow, grpc.call_view(flow))
        if fault is None:
            return True
        flow.metadata[_GRPC_FAULT_KEY] = fault
        return False

    async def request(self, flow: http.HTTPFlow) -> None:
        """The chaos proxy: decide and apply a fault before anything goes upstream."""
        if self.faults is None or flow.response is not None or flow.error is not None:
            return
        fault = flow.metadata.pop(_GRPC_FAULT_KEY, None) if grpc.is_grpc(flow) \
            else self.decide(flow)
        if fault is not None:
            await self.apply_fault(flow, fault)

    async def apply_fault(self, flow: http.HTTPFlow, fault: Any, upstream: bool = True) -> bool:
        """`tracelab.proxy.faults.before_upstream`, keeping track of the flows it holds (a
        proxy stopped meanwhile still records them, see `done`)."""
        from tracelab.proxy.faults import before_upstream

        self._held.add(flow)
        try:
            return await before_upstream(flow, fault, upstream)
        except asyncio.CancelledError:
            # A hook cancelled while it holds the flow (its connection went away, the proxy
            # shutting down) may get no error hook: record the flow as `done` would (once).
            self._record_held(flow)
            raise
        finally:
            self._held.discard(flow)

    def done(self) -> None:
        """Stopping: a faulted flow still held (latency, timeout) is recorded as it stands."""
        for flow in list(self._held):
            self._record_held(flow)
        self._held.clear()

    def _record_held(self, flow: http.HTTPFlow) -> None:
        rec = current()
        if rec is not None:
            rec.safely(ORIGIN, self._record_flow, rec, flow, None)

    def decide(self, flow: http.HTTPFlow, view: dict[str, Any] | None = None) -> Any:
        """The fault for this flow (None: none, or no fault set); a failure of ours is counted
        and never breaks the proxied call."""
        if self.faults is None:
            return None
        from tracelab.proxy.faults import call_of

        rec = current()
        faults = self.faults

        def decide() -> Any:
            return faults.decide_call(call_of(view if view is not None else flow_view(flow, rec)))

        if rec is not None:
            return rec.safely(ORIGIN, decide)
        try:
            return decide()
        except Exception:
            return None

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        from tracelab.proxy import faults as proxy_faults

        rec = current()
        response = flow.response
        if response is None or not _may_have_body(flow):
            return
        cap = _kept_bytes()
        if grpc.is_grpc(flow):
            response.stream = grpc.GrpcFrames(flow.request.timestamp_start, cap)
        elif rec is not None and (response.stream
                                  or should_stream(response, rec.config.max_body_bytes)):
            headers = response.headers
            if headers.get("content-type", "").lower().startswith(STREAMING_CONTENT_TYPES) \
                    and headers.get("content-encoding", "identity").strip().lower() \
                    in ("identity", ""):
                response.stream = ChunkTap(cap + 1, cap, flow.request.timestamp_start)
            else:
                response.stream = BodyTap(cap + 1)
        proxy_faults.on_response_headers(flow, proxy_faults.flow_fault(flow), cap + 1)

    def response(self, flow: http.HTTPFlow) -> None:
        if flow.websocket is not None:
            return  # recorded once, when the connection ends
        from tracelab.proxy import faults as proxy_faults

        proxy_faults.on_response(flow, proxy_faults.flow_fault(flow))
        rec = current()
        if rec is not None:
            _later(rec.safely, ORIGIN, self._record_flow, rec, flow, None)

    def error(self, flow: http.HTTPFlow) -> None:
        if flow.websocket is not None:
            return  # websocket_end records it, with the error
        rec = current()
        if rec is not None and flow.error is not None:
            message = flow.error.msg
            kind = ClientDisconnected if message.startswith("Client disconnected") else \
                UpstreamError
            _later(rec.safely, ORIGIN, self._record_flow, rec, flow, kind(message))

    def http_connect_error(self, flow: http.HTTPFlow) -> None:
        """A CONNECT that mitmproxy answered itself, because the upstream was unreachable."""
        rec = current()
        if rec is None:
            return
        response = flow.response
        message = (flow.error.msg if flow.error is not None
                   else response.get_text(strict=False) if response is not None else "")
        message = (message or "CONNECT failed").split(_CONNECT_HINT)[0]
        _later(rec.safely, ORIGIN, self._record_connect_error, rec, flow, message)

    # -- WebSocket ----------------------------------------------------------------------------
    def websocket_start(self, flow: http.HTTPFlow) -> None:
        self._websockets[flow.id] = WebSocketSummary(self.websocket_messages)

    def websocket_message(self, flow: http.HTTPFlow) -> None:
        summary = self._websockets.get(flow.id)
        if summary is None or flow.websocket is None:
            return
        message = flow.websocket.messages[-1]
        summary.add(message.from_client, message.is_text, message.content, message.timestamp)

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        summary = self._websockets.pop(flow.id, None)
        rec = current()
        if rec is not None and summary is not None:
            _later(rec.safely, ORIGIN, self._record_websocket, rec, flow, summary)

    # -- building events ----------------------------------------------------------------------
    @staticmethod
    def _identity(flow: http.HTTPFlow) -> dict[str, Any]:
        return flow.metadata.get(_METADATA_KEY) or {}

    def event_tags(self, flow: http.HTTPFlow) -> dict[str, str]:
        """Tags added to the flow's event: the applied fault's."""
        fault = flow.metadata.get(FAULT_KEY)
        return dict(fault.tags()) if fault is not None else {}

    def observe(self, event: dict[str, Any]) -> None:
        """Called with every HTTP event this addon submits (the replay proxy keeps a log)."""

    def _record_flow(self, rec: Recorder, flow: http.HTTPFlow,
                     exc: BaseException | None) -> None:
        if flow.metadata.get(_RECORDED_KEY):
            return  # a cut stream may end in both the response and the error hook
        flow.metadata[_RECORDED_KEY] = True
        from tracelab.proxy.faults import fault_error, flow_fault

        fault = flow_fault(flow)
        if fault is not None:
            exc = fault_error(fault) or exc
        rec = Tagged(rec, self.event_tags(flow), self.observe)  # type: ignore[assignment]
        if grpc.is_grpc(flow):
            grpc.record_grpc(rec, flow, exc, self._identity(flow), ORIGIN)
            return
        request, response = flow.request, flow.response
        end = (response.timestamp_end if response is not None else None) or time.time()
        kwargs: dict[str, Any] = {}
        if response is not None:
            tap = response.stream
            if isinstance(tap, ChunkTap):
                tap.tee.end(exc is None, exc)
                kwargs["response_stream"] = tap.tee
            if isinstance(tap, BodyTap):
                body = bytes(tap.kept)
                if tap.complete:
                    body = _decoded(body, response.headers.get("content-encoding"))
                else:
                    kwargs["response_body_size"] = tap.size
            else:
                body = _content(response)
            kwargs.update(status_code=response.status_code,
                          response_headers=response.headers.fields, response_body=body)
        record_http(
            rec, origin=ORIGIN, method=request.method, url=request.url,
            request_headers=request.headers.fields,
            request_body=None if request.stream else _content(request),
            request_body_note="streamed through the proxy" if request.stream else None,
            started_at=int(request.timestamp_start * 1e9),
            latency_ms=max(0.0, (end - request.timestamp_start) * 1000),
            exc=exc, source="proxy", **self._identity(flow), **kwargs)

    def _record_connect_error(self, rec: Recorder, flow: http.HTTPFlow, message: str) -> None:
        request = flow.request
        record_http(
            rec, origin=ORIGIN, method="CONNECT", url=f"https://{request.host}:{request.port}/",
            request_headers=request.headers.fields, request_body=None,
            started_at=int(request.timestamp_start * 1e9),
            latency_ms=max(0.0, (time.time() - request.timestamp_start) * 1000),
            exc=UpstreamError(message), source="proxy", **self._identity(flow))

    def _record_websocket(self, rec: Recorder, flow: http.HTTPFlow,
                          summary: WebSocketSummary) -> None:
        request, response, ws = flow.request, flow.response, flow.websocket
        assert response is not None and ws is not None
        end = ws.timestamp_end or time.time()
        closed_by = None if ws.closed_by_client is None else (
            "client" if ws.closed_by_client else "server")
        redact_messages(summary.first, rec)
        body = {"messages": summary.messages, "bytes": summary.bytes, "first": summary.first,
                "close_code": ws.close_code, "close_reason": ws.close_reason or None,
                "closed_by": closed_by}
        exc: BaseException | None = None
        if flow.error is not None:
            exc = WebSocketError(flow.error.msg)
        elif ws.close_code is not None and ws.close_code not in _NORMAL_CLOSE_CODES:
            exc = WebSocketError(f"closed with code {ws.close_code}"
                                 + (f": {ws.close_reason}" if ws.close_reason else ""))
        scheme = "wss" if request.scheme == "https" else "ws"
        record_http(
            rec, origin=ORIGIN, method=request.method,
            url=f"{scheme}://{request.url.split('://', 1)[1]}",
            request_headers=request.headers.fields, request_body=None,
            started_at=int(request.timestamp_start * 1e9),
            latency_ms=max(0.0, (end - request.timestamp_start) * 1000),
            status_code=response.status_code,
            response_headers=response.headers.fields,
            response_body=orjson.dumps(body), exc=exc, source="proxy", kind="websocket",
            **self._identity(flow))
