"""OpenTelemetry for the API: requests traced and exported over OTLP/HTTP when
`OTEL_EXPORTER_OTLP_ENDPOINT` is set (the exporter packages come with the `server` extra)."""
from __future__ import annotations

import logging
import os
from typing import Any

from fastapi import FastAPI

log = logging.getLogger("tracelab.server")


def instrument(app: FastAPI) -> Any:
    """Trace the API with OpenTelemetry when `OTEL_EXPORTER_OTLP_ENDPOINT` is set."""
    if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return None
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        log.warning("OTEL_EXPORTER_OTLP_ENDPOINT is set but OpenTelemetry is not installed "
                    "(pip install 'tracelab[server]'): %s", exc)
        return None
    service = os.environ.get("OTEL_SERVICE_NAME") or "tracelab-api"
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider,
                                       excluded_urls="healthz,metrics")
    return provider

