"""OpenTelemetry in and out: OTLP spans become TraceEvents (`mapping`, `receiver`), and stored
runs leave as OTLP/JSON (`mapping.events_to_otlp`, used by `tracelab export --format
otlp-json`). The protobuf classes come from `opentelemetry-proto` (the `server` extra)."""
