"""gRPC through the proxy: one `kind: grpc` event per call, messages decoded without a `.proto`.

A flow is a gRPC call when it is HTTP/2 and its request's content type is `application/grpc`
or `application/grpc+<codec>` (gRPC-Web, HTTP/1 with its trailers inside the body, stays an
`http` event). Its request and response bodies are streamed through `GrpcFrames` (both ways:
a bidirectional call whose client waits for an answer before its next message would stall
behind a buffered request), which passes every byte on unchanged and splits the gRPC
length-prefixed frames out of the stream as they arrive, noting each message's offset in ms
from the request's start.

The event has the shape of the SDK's gRPC integration (`tracelab.sdk.integrations.grpc`):
`target` host:port, `endpoint` `/package.Service/Method`, `status_code` the number in the
`grpc-status` trailer (or header, for a trailers-only answer), `tags.grpc.status` its name,
status `error` for any non-OK code with `error.type` the code name and `error.message` the
(percent-decoded) `grpc-message`. The differences come from the wire: there is no type
name (`type` is null) and message keys are field numbers. Each message is decoded by
mitmproxy's own protobuf parser (`mitmproxy.contentviews.grpc.ProtoParser`, the gRPC content
view's; frames decompressed with its `parse_grpc_messages` per `grpc-encoding`) into
`{"<field number>": value}`: varints as integers (the top bit set: a negative int64, as
negative int32/int64 are sent), fixed32/fixed64 as unsigned integers, length-delimited values
as text when they are UTF-8 without control characters, else as a nested message when they
parse as one, else as the binary marker; a repeated field number gives a list. The wire
cannot say whether a call streams: one message is stored as `message`, any other count as
`messages`, a list of `{"t", "message"}` (`complete` says whether the stream ended with a
status). Bodies are capped and redacted like the SDK's (field-name rules cannot apply to
numbers; value patterns do); metadata follows `TRACELAB_GRPC_METADATA`, auth metadata always
redacted. An answer without `grpc-status` gets the code a gRPC client makes of its HTTP
status (502 -> UNAVAILABLE, ...); a call that got no answer the proxy's error.

Plaintext gRPC (an insecure channel, HTTP/2 with prior knowledge, "h2c") comes through the
proxy's CONNECT tunnel too: mitmproxy 11 would relay it as raw TCP, because a gRPC server
speaks first (its SETTINGS frame) and mitmproxy takes a server greeting for a non-HTTP
protocol; `h2c_layer` makes that tunnel an HTTP/2 layer on both sides instead.
"""
from __future__ import annotations

import time
import unicodedata
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import orjson

from tracelab.sdk.capture import build_event, error_info
from tracelab.sdk.payloads import binary, encode_body, not_captured

if TYPE_CHECKING:
    from mitmproxy import http

    from tracelab.sdk.recorder import Recorder

# What a client makes of an HTTP status without grpc-status (grpc/doc/http-grpc-status-mapping.md).
_HTTP_CODES = {400: 13, 401: 16, 403: 7, 404: 12, 429: 14, 502: 14, 503: 14, 504: 14}
_FRAME_HEADER = 5
_SLACK = 4096  # kept beyond the body cap, so an over-long list is seen as such (as the SDK)
# Headers of the gRPC protocol itself, not the application's metadata.
_PROTOCOL_HEADERS = frozenset(("content-type", "te", "user-agent", "content-length"))


def is_grpc(flow: http.HTTPFlow) -> bool:
    """An HTTP/2 request with a gRPC content type (not gRPC-Web)."""
    request = flow.request
    ctype = request.headers.get("content-type", "").lower()
    return request.http_version == "HTTP/2.0" and ctype.startswith("application/grpc") \
        and not ctype.startswith("application/grpc-web")


@dataclass
class Frame:
    """One gRPC message as sent: its offset (ms from the call's start) and its frame bytes."""

    t: float
    data: bytes


@dataclass
class GrpcFrames:
    """A `Message.stream` callable: passes every chunk on unchanged and keeps the gRPC frames
    it carries while they add up to at most `limit` bytes (and a little more, so an over-long
    list is seen as such, as the SDK does); the frames past that are counted, their bytes
    skipped as they pass (never buffered)."""

    started: float
    limit: int
    frames: list[Frame] = field(default_factory=list)
    count: int = 0
    seen: int = 0  # bytes of all frames so far, kept or not
    pending: bytearray = field(default_factory=bytearray)  # a frame still arriving
    skip: int = 0  # bytes left of a frame that is not kept

    def __call__(self, chunk: bytes) -> bytes:
        data = memoryview(chunk)
        while data:
            if self.skip:
                step = min(self.skip, len(data))
                self.skip -= step
                data = data[step:]
                continue
            self.pending += data
            data = self._split()
        return chunk

    def _split(self) -> memoryview:
        """Take the complete frames out of `pending`; what follows a frame that is not kept
        is handed back (after its bytes are skipped)."""
        while len(self.pending) >= _FRAME_HEADER:
            size = _FRAME_HEADER + int.from_bytes(self.pending[1:_FRAME_HEADER], "big")
            if self.seen + size > self.limit + _SLACK:
                self.count += 1
                self.seen += size
                rest = memoryview(bytes(self.pending[size:]))
                self.skip = max(0, size - len(self.pending))
                self.pending.clear()
                return rest
            if len(self.pending) < size:
                break
            self.count += 1
            self.seen += size
            self.frames.append(Frame(round((time.time() - self.started) * 1000, 3),
                                     bytes(self.pending[:size])))
            del self.pending[:size]
        return memoryview(b"")

    @property
    def whole(self) -> bool:
        """No frame was left half-way (the stream ended on a frame boundary)."""
        return not self.pending and not self.skip


def frames_of(data: bytes | None, started: float, at: float | None, limit: int) -> GrpcFrames:
    """The frames of a body read whole (or the kept head of a streamed one): all at `at`."""
    frames = GrpcFrames(started, limit)
    frames(data or b"")
    for frame in frames.frames:
        frame.t = round(((at or time.time()) - started) * 1000, 3)
    return frames


def call_view(flow: http.HTTPFlow) -> dict[str, Any]:
    """What a fault rule matches a live gRPC call on: kind, target, endpoint (no body: the
    messages have not been read when the fault is decided)."""
    request = flow.request
    return {"kind": "grpc", "target": f"{request.host}:{request.port}",
            "endpoint": request.path.split("?", 1)[0], "request": {}}


_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _h2_settings_first(data: bytes) -> bool:
    """The bytes start with an HTTP/2 SETTINGS frame on stream 0 (a server's first frame)."""
    return len(data) >= 9 and data[3] == 0x04 and data[5:9] == bytes(4)


def h2c_layer(nextlayer: Any) -> None:
    """A `next_layer` hook for plaintext HTTP/2 with prior knowledge in a tunnel.

    mitmproxy decides on the first bytes of either side. When the server spoke first (an
    HTTP/2 SETTINGS frame, as a gRPC server does) it chose a raw TCP relay; when the client
    did (the HTTP/2 preface, `PRI * HTTP/2.0`) it chose HTTP/1, which fails on that line.
    Either way the tunnel becomes an HTTP/2 layer on both sides; with only the preface's
    start, the decision waits for more bytes. Ignored hosts and TLS tunnels are left alone."""
    from mitmproxy.proxy import layers
    from mitmproxy.proxy.layers.http import HTTPMode

    chosen, context = nextlayer.layer, nextlayer.context
    if context.client.alpn or not isinstance(chosen, (layers.TCPLayer, layers.HttpLayer)) \
            or (isinstance(chosen, layers.TCPLayer) and chosen.flow is None):
        return
    sent = nextlayer.data_client()
    if not _H2_PREFACE.startswith(sent[:len(_H2_PREFACE)]):
        return
    h2 = len(sent) >= len(_H2_PREFACE) or _h2_settings_first(nextlayer.data_server())
    if not h2 and not (isinstance(chosen, layers.HttpLayer) and sent):
        return
    if context.layers and context.layers[-1] is chosen:
        context.layers.pop()  # layers add themselves to the stack when made
    if not h2:
        nextlayer.layer = None  # the preface's start: ask again with more bytes
        return
    context.client.alpn = context.server.alpn = b"h2"
    nextlayer.layer = layers.HttpLayer(context, HTTPMode.transparent)


# -- decoding -----------------------------------------------------------------------------------

def decode_message(data: bytes) -> Any:
    """One protobuf message as `{"<field number>": value}`, through mitmproxy's parser; the
    binary marker when the bytes are no protobuf message."""
    from mitmproxy.contentviews.grpc import ProtoParser

    try:
        fields = ProtoParser(data).root_fields
    except ValueError:
        return binary(data)
    return _fields_json(fields)


def _fields_json(fields: list[Any]) -> dict[str, Any]:
    grouped: dict[str, list[Any]] = {}
    for item in fields:
        grouped.setdefault(str(item.tag), []).append(_field_value(item))
    return {key: values[0] if len(values) == 1 else values for key, values in grouped.items()}


def _field_value(item: Any) -> Any:
    from mitmproxy.contentviews.grpc import ProtoParser

    wire, types = ProtoParser.WireTypes, ProtoParser.DecodedTypes
    if item.wire_type == wire.varint:
        if item.wire_value.bit_length() == 64:
            return item.decode_as(types.int64)
        return item.wire_value
    if item.wire_type != wire.len_delimited:
        return item.wire_value  # fixed32 / fixed64: unsigned, as mitmproxy reads them
    data: bytes = item.wire_value
    if not data:
        return ""
    text = _printable(data)
    if text is not None:
        return text
    try:
        return _fields_json(item.decode_as(types.message))
    except Exception:  # no message (mitmproxy's parser raises ValueError or struct.error)
        return binary(data)


def _printable(data: bytes) -> str | None:
    """The bytes as text when they are UTF-8 without control characters (tab, CR, LF aside):
    a nested message almost always has one (its first field's key or length byte)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if any(unicodedata.category(c) == "Cc" and c not in "\t\n\r" for c in text):
        return None
    return text


def messages(frames: GrpcFrames, encoding: str | None) -> list[dict[str, Any]]:
    """The kept frames as `{"t", "message"}`, decompressed (mitmproxy's gRPC framing)."""
    from mitmproxy.contentviews.grpc import parse_grpc_messages

    out = []
    for frame in frames.frames:
        try:
            (_compressed, payload), = parse_grpc_messages(frame.data, encoding or "identity")
            message = decode_message(payload)
        except ValueError:
            message = binary(frame.data[_FRAME_HEADER:])
        out.append({"t": frame.t, "message": message})
    return out


# -- the event ----------------------------------------------------------------------------------

def _metadata(headers: Any) -> list[tuple[str, str]]:
    """The application's metadata: pseudo-headers, the protocol's and `grpc-*` left out."""
    if headers is None:
        return []
    return [(name, value) for name, value in headers.items(multi=True)
            if not name.startswith(":") and name.lower() not in _PROTOCOL_HEADERS
            and not name.lower().startswith("grpc-")]


def _messages_view(rec: Recorder, frames: GrpcFrames, encoding: str | None, ok: bool,
                   found: set[str]) -> dict[str, Any]:
    """`{"type": null, "message"}` for one message, `{"type": null, "messages": [...]}` for
    any other count (none for a failed call without messages), capped and redacted; the
    messages left out past the body cap are counted in `dropped`."""
    timed = messages(frames, encoding)
    out: dict[str, Any] = {"type": None}
    if frames.count == 1:
        key, value = "message", timed[0]["message"] if timed else None
    elif frames.count or ok:
        key, value = "messages", timed
    else:
        return out
    config = rec.config
    if frames.count > len(timed):
        out["dropped"] = frames.count - len(timed)
    if not config.capture_payloads:
        out[key] = not_captured("capture_payloads is off")
        return out
    if frames.count == 1 and not timed:
        out[key] = not_captured(f"a message over the body cap ({config.max_body_bytes} bytes)")
        return out
    encoded = encode_body(orjson.dumps(value), "application/json", rec.redactor,
                          config.max_body_bytes, found)
    out[key] = value if encoded is None else encoded
    return out


def status_of(flow: http.HTTPFlow) -> tuple[int | None, str | None, str | None]:
    """(code number, code name, message) from the trailers, a trailers-only answer's headers,
    or the HTTP status of an answer without grpc-status; Nones when there is no answer."""
    response = flow.response
    if response is None:
        return None, None, None
    for headers in (response.trailers, response.headers):
        if headers is not None and "grpc-status" in headers:
            try:
                number = int(headers["grpc-status"])
            except ValueError:
                number = 2
            message = unquote(headers.get("grpc-message", "")) or None
            return number, _name(number), message
    if response.status_code != 200:
        number = _HTTP_CODES.get(response.status_code, 2)
        return number, _name(number), f"HTTP {response.status_code} without grpc-status"
    return None, None, None


def _name(number: int) -> str:
    from tracelab.replay.faults import GRPC_NAMES

    return GRPC_NAMES.get(number, f"CODE_{number}")


def record_grpc(rec: Recorder, flow: http.HTTPFlow, exc: BaseException | None,
                identity: dict[str, Any], origin: str) -> None:
    """Build and submit the call's `kind: grpc` event (`rec` may be the addon's `Tagged`)."""
    from tracelab.sdk.integrations.grpc import metadata_view

    request, response = flow.request, flow.response
    started = request.timestamp_start
    end = (response.timestamp_end if response is not None else None) or time.time()
    number, name, details = status_of(flow)
    ok = number == 0 and exc is None
    cap = rec.config.max_body_bytes
    found: set[str] = set()
    sent = request.stream if isinstance(request.stream, GrpcFrames) else \
        frames_of(request.raw_content, started, request.timestamp_end, cap)
    view = _messages_view(rec, sent, request.headers.get("grpc-encoding"), True, found)
    view["metadata"] = metadata_view(_metadata(request.headers), rec.redactor, found)
    answer: dict[str, Any] | None = None
    if response is not None:
        got = response.stream if isinstance(response.stream, GrpcFrames) else \
            frames_of(_kept(response), started, response.timestamp_end, cap)
        answer = {"status_code": number,
                  **_messages_view(rec, got, response.headers.get("grpc-encoding"),
                                   number == 0, found)}
        if "messages" in answer:
            answer["complete"] = number is not None and exc is None and got.whole
        initial, trailing = response.headers, response.trailers
        if trailing is None and "grpc-status" in initial:  # trailers-only: headers are trailers
            initial, trailing = None, initial
        answer["metadata"] = metadata_view(_metadata(initial), rec.redactor, found)
        answer["trailing_metadata"] = metadata_view(_metadata(trailing), rec.redactor, found)
        if details:
            answer["details"] = rec.redactor.text(details, found)
    error = None
    if not ok:
        if name is not None and number != 0:
            error = {"type": name, "message": rec.redactor.text(details, found) if details
                     else name}
        elif exc is not None:
            error = error_info(exc)
        else:
            error = {"type": "UNKNOWN", "message": "the response ended without a grpc-status"}
    call = call_view(flow)
    event = build_event(
        rec, kind="grpc", target=call["target"], endpoint=call["endpoint"],
        started_at=int(started * 1e9),
        latency_ms=max(0.0, (end - started) * 1000), status="ok" if ok else "error",
        request=view, response=answer, status_code=number, error=error,
        tags={"grpc.status": name} if name else None, source="proxy", **identity)
    rec.submit(event, origin, found)


def _kept(response: http.Response) -> bytes | None:
    """A response body not streamed through `GrpcFrames` (a fault's stream cut, or read
    whole): the bytes the addon kept of it."""
    tap = response.stream
    kept = getattr(tap, "kept", None)
    if kept is not None:
        return bytes(kept)
    return response.raw_content
