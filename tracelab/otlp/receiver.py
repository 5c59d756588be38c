"""The OTLP/HTTP receiver: `POST /v1/traces` (protobuf or JSON, optionally gzip), and
`/v1/metrics`, `/v1/logs` answered 200 and dropped.

Spans become TraceEvents (`mapping.events_from_request`), each checked by
`tracelab.events.validate()` as SDK events are, and are published where every other producer
publishes: the Redis stream the ingester reads (the in-process ingester's under `tracelab up`,
else `TRACELAB_REDIS_URL`), or the embedded-mode spool of the store's home, which the query
layer folds in before answering. The SDK's own sinks do the writing, so ingest, notebook and
UI need nothing new. The answer is sent once the events are written: a 200 means stored (or
in the stream), a 503 asks the exporter to retry.

OTLP semantics: a body that does not parse is a 400 and nothing of it is kept; spans that
do not make valid events are refused and counted in `partialSuccess.rejectedSpans` with the
first reason, while the rest of the request is kept. The answer is encoded like the request.
"""
from __future__ import annotations

import base64
import dataclasses
import logging
import threading
import zlib
from typing import Any

import orjson
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response

from tracelab.otlp.mapping import events_from_request

log = logging.getLogger("tracelab.otlp")

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
# The largest body accepted, compressed or not (the OpenTelemetry Collector's default is 20
# MiB for the compressed body; a decompression bomb stops here).
MAX_BODY_BYTES = 64 * 1024 * 1024
FLUSH_SECONDS = 10.0


class BadRequest(ValueError):
    """The body is not an OTLP export request: answered 400."""


class Publisher:
    """Writes events through one SDK sink (Redis stream or spool), created on first use."""

    def __init__(self, layout: Any, ingester: Any = None, registry: Any = None) -> None:
        self.layout = layout
        self.ingester = ingester
        self._sink: Any = None
        self._lock = threading.Lock()
        self.spans: Any = None
        if registry is not None:  # the API's /metrics
            from prometheus_client import Counter

            self.spans = Counter("tracelab_otlp_spans", "OTLP spans received, by outcome "
                                 "(stored, refused: not a valid event, failed: not written)",
                                 ["outcome"], registry=registry)

    def count(self, outcome: str, n: int) -> None:
        if self.spans is not None and n:
            self.spans.labels(outcome=outcome).inc(n)

    def _make_sink(self) -> Any:
        from tracelab.config import resolve_sdk_config
        from tracelab.sdk.sinks import RedisStreamSink, SpoolSink
        from tracelab.sdk.stats import SDKStats

        config = resolve_sdk_config("otlp", "otlp", run_id="otlp", integrations=())
        config = dataclasses.replace(config, home=self.layout.home)
        ingest = getattr(self.ingester, "config", None)
        if ingest is not None:
            config = dataclasses.replace(config, redis_url=ingest.redis_url,
                                         stream=ingest.stream)
        return RedisStreamSink(config, SDKStats()) if config.redis_url \
            else SpoolSink(config, SDKStats())

    def publish(self, events: list[dict[str, Any]]) -> bool:
        """Submit and wait until written; False when the destination did not take them."""
        with self._lock:
            if self._sink is None:
                self._sink = self._make_sink()
            sink = self._sink
        ok = all([sink.submit(orjson.dumps(event)) for event in events])
        return sink.flush(FLUSH_SECONDS) and ok

    def close(self) -> None:
        with self._lock:
            if self._sink is not None:
                self._sink.close()
                self._sink = None


def _inflate(body: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise BadRequest(f"unsupported Content-Encoding {encoding!r} (use gzip or none)")
    wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    try:
        inflater = zlib.decompressobj(wbits)
        data = inflater.decompress(body, MAX_BODY_BYTES)
        if inflater.unconsumed_tail:
            raise BadRequest(f"body larger than {MAX_BODY_BYTES} bytes once decompressed")
        return data + inflater.flush()
    except zlib.error as exc:
        raise BadRequest(f"body is not valid {encoding}: {exc}") from None


def _hex_ids_to_base64(node: Any) -> None:
    """OTLP/JSON spells trace and span ids in hex; protobuf's JSON mapping wants base64."""
    if isinstance(node, list):
        for item in node:
            _hex_ids_to_base64(item)
        return
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        if key in ("traceId", "spanId", "parentSpanId", "trace_id", "span_id",
                   "parent_span_id") and isinstance(value, str):
            try:
                node[key] = base64.b64encode(bytes.fromhex(value)).decode()
            except ValueError:
                raise BadRequest(f"{key} {value[:40]!r} is not hex") from None
        else:
            _hex_ids_to_base64(value)


def parse(body: bytes, content_type: str, message: Any) -> Any:
    """Fill `message` (a protobuf class instance) from a protobuf or OTLP/JSON body."""
    from google.protobuf import json_format
    from google.protobuf.message import DecodeError

    if content_type == JSON:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"body is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise BadRequest("body is not a JSON object")
        _hex_ids_to_base64(data)
        try:
            json_format.ParseDict(data, message, ignore_unknown_fields=True)
        except (json_format.ParseError, ValueError, TypeError, RecursionError) as exc:
            raise BadRequest(f"body is not an OTLP JSON export request: {exc}") from None
        return message
    try:
        message.ParseFromString(body)
    except (DecodeError, ValueError, RecursionError) as exc:
        raise BadRequest(f"body is not an OTLP protobuf export request: {exc}") from None
    return message


def _content_type(request: Request) -> str | None:
    value = request.headers.get("content-type", PROTOBUF).split(";")[0].strip().lower()
    return value if value in (PROTOBUF, JSON) else None


def _answer(message: Any, content_type: str, status: int = 200) -> Response:
    from google.protobuf import json_format

    if content_type == JSON:
        return Response(orjson.dumps(json_format.MessageToDict(message)), status_code=status,
                        media_type=JSON)
    return Response(message.SerializeToString(), status_code=status, media_type=PROTOBUF)


def _status(code: int, text: str, content_type: str) -> Response:
    """An error answer as OTLP says: a `google.rpc.Status` in the request's encoding."""
    from google.rpc import status_pb2

    return _answer(status_pb2.Status(code=code, message=text[:1000]), content_type,
                   {3: 400, 14: 503}.get(code, 400))


async def _body(request: Request, content_type: str) -> bytes | Response:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            return _status(3, f"body larger than {MAX_BODY_BYTES} bytes", content_type)
    try:
        return _inflate(bytes(body), request.headers.get("content-encoding", ""))
    except BadRequest as exc:
        return _status(3, str(exc), content_type)


def router(publisher: Publisher) -> APIRouter:
    """The OTLP/HTTP routes, outside `/api` and its OpenAPI document."""
    from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
    from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

    # Outside the OpenAPI document: OTLP's contract is its .proto (and OTLP/JSON's mapping of
    # it), which JSON Schema cannot state as protobuf's parser reads it.
    api = APIRouter(tags=["otlp"], include_in_schema=False)

    @api.post("/v1/traces", response_class=Response)
    async def traces(request: Request) -> Response:
        """OTLP/HTTP traces: every span becomes a TraceEvent (`source: otlp`)."""
        content_type = _content_type(request)
        if content_type is None:
            return Response(b"use Content-Type application/x-protobuf or application/json",
                            status_code=415, media_type="text/plain")
        body = await _body(request, content_type)
        if isinstance(body, Response):
            return body
        try:
            export = parse(body, content_type, trace_service_pb2.ExportTraceServiceRequest())
        except BadRequest as exc:
            return _status(3, str(exc), content_type)
        events, reasons = [], []
        for event, reason in events_from_request(export):
            if event is not None:
                events.append(event)
            else:
                reasons.append(reason)
        publisher.count("refused", len(reasons))
        if reasons:
            log.warning("OTLP: %d span(s) refused, first: %s", len(reasons), reasons[0])
        if events:
            import anyio

            if not await anyio.to_thread.run_sync(publisher.publish, events):
                publisher.count("failed", len(events))
                return _status(14, "could not write the events (Redis or the spool is "
                               "unavailable); retry", content_type)
            publisher.count("stored", len(events))
        answer = trace_service_pb2.ExportTraceServiceResponse()
        if reasons:
            answer.partial_success.rejected_spans = len(reasons)
            answer.partial_success.error_message = reasons[0][:1000]
        return _answer(answer, content_type)

    def dropping(response_type: Any) -> Any:
        def dropped(request: Request) -> Response:
            """Accepted and dropped: TraceLab keeps traces only."""
            return _answer(response_type(), _content_type(request) or PROTOBUF)
        return dropped

    for path, response_type in (("/v1/metrics", metrics_service_pb2.ExportMetricsServiceResponse),
                                ("/v1/logs", logs_service_pb2.ExportLogsServiceResponse)):
        api.add_api_route(path, dropping(response_type), methods=["POST"],
                          response_class=Response, name=path.strip("/").replace("/", "_"))
    return api


def mount(app: FastAPI, publisher: Publisher, dependencies: list[Any] | None = None) -> None:
    """Add the OTLP routes to `app` (guarded like `/api` when a token is set: exporters send
    it with `OTEL_EXPORTER_OTLP_HEADERS=Authorization=Bearer%20<token>`)."""
    app.include_router(router(publisher), dependencies=dependencies or [])
    app.state.otlp = publisher


def create_otlp_app(publisher: Publisher, dependencies: list[Any] | None = None) -> FastAPI:
    """A bare app with the OTLP routes only: what `tracelab serve --otlp-port` listens with,
    sharing the API's publisher."""
    app = FastAPI(title="TraceLab OTLP receiver", docs_url=None, redoc_url=None,
                  openapi_url=None)
    mount(app, publisher, dependencies)
    return app
