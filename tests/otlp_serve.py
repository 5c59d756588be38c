"""`tracelab serve` with its OTLP receiver on a free loopback port, and the spans tests send it.

Spans are made by opentelemetry-sdk's own tracer and collected in memory, then sent by
opentelemetry-sdk's own OTLP/HTTP exporter (protobuf), or encoded as OTLP/JSON by the SDK's
own encoder (hex ids, as the OTLP spec spells them).
"""
from __future__ import annotations

import base64
import gzip
import subprocess
from pathlib import Path
from typing import Any

import httpx
import orjson

from api_serve import ROOT, TRACELAB, Serve, clean_env
from conftest import free_port


class OtlpServe(Serve):
    """`tracelab serve --no-ui --otlp-port P` over `home` (without `--otlp-port` when
    `otlp_port` is false), extra environment and arguments allowed."""

    def __init__(self, home: Path, env: dict[str, str] | None = None,
                 extra: tuple[str, ...] = (), otlp_port: bool = True,
                 command: str = "serve") -> None:
        self.port, self.otlp_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.otlp_url = f"http://127.0.0.1:{self.otlp_port}"
        args = [TRACELAB, command, "--no-ui", "--host", "127.0.0.1", "--port", str(self.port),
                *(("--otlp-port", str(self.otlp_port)) if otlp_port else ()), *extra]
        self.proc = subprocess.Popen(args, env={**clean_env(home), **(env or {})}, cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        try:
            self.output = self.proc.communicate(timeout=15)[0]
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.output = self.proc.communicate()[0]

    def execution(self, run_id: str) -> list[dict[str, Any]]:
        answer = httpx.get(f"{self.url}/api/executions/{run_id}", timeout=30)
        assert answer.status_code == 200, answer.text
        return answer.json()["events"]

    def event(self, event_id: str) -> dict[str, Any]:
        answer = httpx.get(f"{self.url}/api/events/{event_id}", timeout=30)
        assert answer.status_code == 200, answer.text
        return answer.json()


def record_spans(resource: dict[str, Any], build: Any) -> list[Any]:
    """Finished spans of `build(tracer)`, made by opentelemetry-sdk, kept in memory."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create(resource))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    build(provider.get_tracer("test.agent", "1.0"))
    provider.shutdown()
    return list(memory.get_finished_spans())


def export_protobuf(url: str, spans: list[Any], headers: dict[str, str] | None = None) -> Any:
    """Send with opentelemetry-sdk's OTLP/HTTP exporter; its result (SUCCESS or FAILURE)."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    exporter = OTLPSpanExporter(endpoint=f"{url}/v1/traces", timeout=30, headers=headers)
    try:
        return exporter.export(spans)
    finally:
        exporter.shutdown()


def otlp_json(spans: list[Any]) -> dict[str, Any]:
    """The spans as OTLP/JSON: the SDK's protobuf encoding, ids turned to hex."""
    from google.protobuf import json_format
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    data = json_format.MessageToDict(encode_spans(spans))

    def hexify(node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                hexify(item)
        elif isinstance(node, dict):
            for key, value in node.items():
                if key in ("traceId", "spanId", "parentSpanId"):
                    node[key] = base64.b64decode(value).hex()
                else:
                    hexify(value)

    hexify(data)
    return data


def post_json(url: str, body: dict[str, Any], *, gzipped: bool = False) -> httpx.Response:
    raw = orjson.dumps(body)
    headers = {"Content-Type": "application/json"}
    if gzipped:
        raw, headers["Content-Encoding"] = gzip.compress(raw), "gzip"
    return httpx.post(f"{url}/v1/traces", content=raw, headers=headers, timeout=30)
