"""The span -> event mapping under arbitrary attributes (hypothesis): a span with a trace id,
a span id and a time in the store's range always becomes a valid event, whatever its
attributes hold; the names the mapping reads are drawn often, with values of every type."""
from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from tracelab.events import validate
from tracelab.otlp.mapping import events_from_request

NAMES = [
    "gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.system", "gen_ai.request.model",
    "gen_ai.response.model", "gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens",
    "gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens",
    "gen_ai.response.finish_reasons", "gen_ai.input.messages", "gen_ai.output.messages",
    "gen_ai.prompt.0.role", "gen_ai.prompt.0.content", "gen_ai.completion.0.tool_calls.0.name",
    "gen_ai.completion.0", "gen_ai.completion.x.y", "openinference.span.kind", "llm.model_name",
    "llm.provider", "llm.token_count.prompt", "llm.token_count.total",
    "llm.input_messages.0.message", "llm.input_messages.0.message.role",
    "llm.output_messages.0.message.tool_calls.0.tool_call.function.name",
    "llm.output_messages.0.message.tool_calls", "llm.output_messages.1.message.contents",
    "input.value", "output.value", "http.request.method", "http.method", "url.full",
    "http.url", "server.address", "server.port", "net.peer.port", "url.path", "url.query",
    "http.response.status_code", "http.status_code", "http.request.header.authorization",
    "http.response.header.x", "error.type", "tracelab.event",
]
SCALARS = (st.text(max_size=30) | st.integers(-(2**63), 2**63 - 1) | st.booleans()
           | st.floats(allow_nan=False, allow_infinity=False)
           | st.sampled_from(["LLM", "EMBEDDING", "chat", "GET", "[{\"role\": 1}]", "{}",
                              "[1, {\"parts\": 5}]", "x" * 2000]))
VALUES = SCALARS | st.lists(st.text(max_size=10) | st.integers(-5, 5), max_size=3)


def _set(target: Any, value: Any) -> None:
    if isinstance(value, list):
        for item in value:
            _set(target.array_value.values.add(), item)
    elif isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, int):
        target.int_value = value
    elif isinstance(value, float):
        target.double_value = value
    else:
        target.string_value = value


@settings(max_examples=300, deadline=None)
@given(attrs=st.dictionaries(st.sampled_from(NAMES) | st.text(min_size=1, max_size=20),
                             VALUES, max_size=12),
       resource=st.dictionaries(st.sampled_from(["service.name", "service.namespace",
                                                 "tracelab.workflow"]),
                                st.text(max_size=300), max_size=3),
       kind=st.integers(0, 5), status=st.integers(0, 2), name=st.text(max_size=50),
       start=st.integers(0, 2**63 - 1), length=st.integers(0, 10**12))
def test_any_attributes_make_a_valid_event(attrs, resource, kind, status, name, start,
                                           length):
    request = trace_service_pb2.ExportTraceServiceRequest()
    spans = request.resource_spans.add()
    for key, value in resource.items():
        kv = spans.resource.attributes.add()
        kv.key = key
        _set(kv.value, value)
    span = spans.scope_spans.add().spans.add()
    span.trace_id, span.span_id, span.name, span.kind = b"\x01" * 16, b"\x02" * 8, name, kind
    span.start_time_unix_nano = start
    span.end_time_unix_nano = min(start + length, 2**64 - 1)
    span.status.code = status
    for key, value in attrs.items():
        kv = span.attributes.add()
        kv.key = key
        _set(kv.value, value)
    [(event, reason)] = list(events_from_request(request))
    assert reason is None
    assert validate(event) == []
