"""OTLP in: opentelemetry-sdk's own exporter sending to a real `tracelab serve`.

One server (embedded store) takes spans as OpenLLMetry (gen_ai.*, current and deprecated
names), OpenInference (llm.*) and HTTP instrumentations (old and new semantic conventions)
make them; they must land as TraceEvents with the canonical `llm.*` tags, span ids and
workflow. JSON and gzip too, metrics/logs answered 200 and dropped, a malformed body or span
refused without losing anything else, and the Redis stream used when configured.
"""
from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.trace import SpanKind, Status, StatusCode

from conftest import RedisServer, read_stream
from otlp_serve import OtlpServe, export_protobuf, otlp_json, post_json, record_spans

RESOURCE = {"service.name": "support-agent", "service.namespace": "ns",
            "tracelab.workflow": "otel-agent"}


def build_agent(tracer: Any) -> None:
    """One agent step holding the spans instrumentations make for LLM and HTTP calls."""
    with tracer.start_as_current_span("agent.step"):
        with tracer.start_as_current_span("chat claude", kind=SpanKind.CLIENT) as span:
            span.set_attributes({
                "gen_ai.operation.name": "chat", "gen_ai.provider.name": "anthropic",
                "gen_ai.request.model": "claude-sonnet-4", "gen_ai.response.model":
                "claude-sonnet-4-20250514", "gen_ai.usage.input_tokens": 120,
                "gen_ai.usage.output_tokens": 30, "gen_ai.usage.cache_read.input_tokens": 100,
                "gen_ai.response.finish_reasons": ["end_turn"],
                "server.address": "api.anthropic.com", "server.port": 443,
                "gen_ai.input.messages": '[{"role": "user", "parts": [{"type": "text", '
                                         '"content": "Where is order 7?"}]}]'})
        with tracer.start_as_current_span("openai.chat", kind=SpanKind.CLIENT) as span:
            span.set_attributes({  # OpenLLMetry's older, deprecated names
                "gen_ai.system": "OpenAI", "gen_ai.request.model": "gpt-4o",
                "gen_ai.usage.prompt_tokens": 12, "gen_ai.usage.completion_tokens": 5,
                "gen_ai.prompt.0.role": "user", "gen_ai.prompt.0.content": "hi",
                "gen_ai.completion.0.role": "assistant", "gen_ai.completion.0.content": "hello",
                "gen_ai.completion.0.finish_reason": "stop"})
        with tracer.start_as_current_span("ChatCompletion") as span:
            span.set_attributes({  # OpenInference
                "openinference.span.kind": "LLM", "llm.model_name": "gpt-4o-mini",
                "llm.provider": "openai", "llm.token_count.prompt": 11,
                "llm.token_count.completion": 7, "llm.token_count.total": 18,
                "llm.input_messages.0.message.role": "user",
                "llm.input_messages.0.message.content": "refund order 7",
                "llm.output_messages.0.message.role": "assistant",
                "llm.output_messages.0.message.tool_calls.0.tool_call.function.name":
                    "lookup_order",
                "llm.output_messages.0.message.tool_calls.1.tool_call.function.name":
                    "refund"})
            span.add_event("First Token Stream Event")
        with tracer.start_as_current_span("GET", kind=SpanKind.CLIENT) as span:
            span.set_attributes({  # HTTP, current semantic conventions
                "http.request.method": "GET", "url.full": "https://shop.example.com/orders/7",
                "server.address": "shop.example.com", "server.port": 443,
                "http.response.status_code": 404,
                "http.request.header.authorization": ["Bearer sk-secret-123"]})
            span.set_status(Status(StatusCode.ERROR))
        with tracer.start_as_current_span("HTTP POST", kind=SpanKind.CLIENT) as span:
            span.set_attributes({  # HTTP, the old conventions
                "http.method": "POST", "http.url": "http://pay.internal:8080/charge",
                "net.peer.name": "pay.internal", "net.peer.port": 8080,
                "http.status_code": 201})


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OtlpServe]:
    with OtlpServe(tmp_path_factory.mktemp("otlp") / "home") as running:
        yield running


@pytest.fixture(scope="module")
def landed(server: OtlpServe) -> dict[str, dict[str, Any]]:
    spans = record_spans(RESOURCE, build_agent)
    assert export_protobuf(server.otlp_url, spans) == SpanExportResult.SUCCESS
    run_id = format(spans[0].context.trace_id, "032x")
    rows = server.execution(run_id)
    assert len(rows) == len(spans)
    by_name = {}
    for span in spans:
        event_id = f"otlp-{run_id}-{format(span.context.span_id, '016x')}"
        by_name[span.name] = server.event(event_id)
    return by_name


def test_genai_span_lands_as_llm_event_with_canonical_tags(landed):
    event = landed["chat claude"]
    step = landed["agent.step"]
    assert (event["kind"], event["source"], event["status"]) == ("llm", "otlp", "ok")
    assert (event["workflow"], event["service"]) == ("otel-agent", "support-agent")
    assert event["run_id"] == step["run_id"] and len(event["run_id"]) == 32
    assert event["parent_id"] == step["span_id"] and step.get("parent_id") is None
    assert event["target"] == "api.anthropic.com"
    assert {k: v for k, v in event["tags"].items() if k.startswith("llm.")} == {
        "llm.provider": "anthropic", "llm.model": "claude-sonnet-4-20250514",
        "llm.operation": "chat", "llm.input_tokens": "120", "llm.output_tokens": "30",
        "llm.cached_input_tokens": "100", "llm.total_tokens": "150",
        "llm.finish_reason": "end_turn"}
    assert event["request"]["body"]["messages"] == [
        {"role": "user", "content": "Where is order 7?"}]
    assert step["kind"] == "function" and step["endpoint"] == "agent.step"


def test_deprecated_genai_names_map_to_the_same_tags(landed):
    event = landed["openai.chat"]
    tags = event["tags"]
    assert (event["kind"], event["target"]) == ("llm", "openai")  # no host: the provider
    assert (tags["llm.provider"], tags["llm.model"]) == ("openai", "gpt-4o")
    assert (tags["llm.input_tokens"], tags["llm.output_tokens"], tags["llm.total_tokens"]) == \
        ("12", "5", "17")
    assert tags["llm.finish_reason"] == "stop"
    assert event["response"]["body"]["choices"][0]["message"] == {
        "role": "assistant", "content": "hello"}


def test_openinference_span_lands_as_llm_event(landed):
    event = landed["ChatCompletion"]
    tags = event["tags"]
    assert event["kind"] == "llm"
    assert (tags["llm.provider"], tags["llm.model"]) == ("openai", "gpt-4o-mini")
    assert (tags["llm.input_tokens"], tags["llm.output_tokens"], tags["llm.total_tokens"]) == \
        ("11", "7", "18")
    assert tags["llm.tool_calls"] == "lookup_order,refund"
    assert 0 <= float(tags["llm.ttft_ms"]) <= event["latency_ms"]
    assert event["request"]["body"]["messages"][0]["content"] == "refund order 7"
    # the counters stay readable in the kept attributes (not taken for secrets)
    assert event["request"]["attributes"]["llm.token_count.prompt"] == 11


def test_http_spans_old_and_new_conventions(landed):
    new, old = landed["GET"], landed["HTTP POST"]
    assert (new["kind"], new["target"], new["endpoint"]) == \
        ("http", "shop.example.com", "GET /orders/7")
    assert (new["status"], new["status_code"]) == ("error", 404)
    assert new["request"]["url"] == "https://shop.example.com/orders/7"
    assert "sk-secret-123" not in str(new)
    assert (old["kind"], old["target"], old["endpoint"], old["status"], old["status_code"]) \
        == ("http", "pay.internal:8080", "POST /charge", "ok", 201)


def test_json_and_gzip_on_the_api_port(server):
    spans = record_spans({"service.name": "json-svc"}, lambda t: t.start_span(
        "embed", attributes={"openinference.span.kind": "EMBEDDING",
                             "embedding.model_name": "text-embedding-3-small",
                             "llm.token_count.prompt": 4}).end())
    answer = post_json(server.url, otlp_json(spans), gzipped=True)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/json")
    run_id = format(spans[0].context.trace_id, "032x")
    [row] = server.execution(run_id)
    event = server.event(row["event_id"])
    assert (event["workflow"], event["kind"]) == ("json-svc", "llm")
    assert event["tags"]["llm.operation"] == "embeddings"
    assert event["tags"]["llm.model"] == "text-embedding-3-small"


def test_json_without_a_workflow_attribute_uses_the_namespace(server):
    spans = record_spans({"service.name": "svc", "service.namespace": "team-ns"},
                         lambda t: t.start_span("work").end())
    assert post_json(server.otlp_url, otlp_json(spans)).status_code == 200
    [row] = server.execution(format(spans[0].context.trace_id, "032x"))
    event = server.event(row["event_id"])
    assert (event["workflow"], event["kind"], event["target"]) == \
        ("team-ns", "function", "test.agent")


@pytest.mark.parametrize("path", ["/v1/metrics", "/v1/logs"])
@pytest.mark.parametrize("ctype,body", [("application/x-protobuf", b""),
                                        ("application/json", b'{"resourceMetrics": []}')])
def test_metrics_and_logs_are_answered_200_and_dropped(server, path, ctype, body):
    for url in (server.url, server.otlp_url):
        answer = httpx.post(url + path, content=body, headers={"Content-Type": ctype})
        assert answer.status_code == 200, answer.text


def good_trace(spans: list[dict[str, Any]]) -> str:
    return next(s["traceId"] for s in spans if s["name"] == "good")


def test_malformed_bodies_are_400_and_lose_nothing_else(server):
    kept = record_spans({"service.name": "kept"}, lambda t: t.start_span("first").end())
    assert export_protobuf(server.otlp_url, kept) == SpanExportResult.SUCCESS
    for ctype, body in (("application/x-protobuf", b"\xff\xff\xff not protobuf"),
                        ("application/json", b"{not json"),
                        ("application/json", b'{"resourceSpans": [{"scopeSpans": [{"spans": '
                                             b'[{"traceId": "zz"}]}]}]}')):
        answer = httpx.post(server.otlp_url + "/v1/traces", content=body,
                            headers={"Content-Type": ctype})
        assert answer.status_code == 400, (body, answer.text)
    gz = httpx.post(server.otlp_url + "/v1/traces", content=b"not gzip",
                    headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert gz.status_code == 400
    assert httpx.post(server.otlp_url + "/v1/traces", content=b"x",
                      headers={"Content-Type": "text/plain"}).status_code == 415
    # a request with one span that cannot be an event: refused and counted, the other kept
    body = otlp_json(record_spans({"service.name": "mixed"}, lambda t: (
        t.start_span("good").end(), t.start_span("bad").end())))
    spans = body["resourceSpans"][0]["scopeSpans"][0]["spans"]
    bad = next(s for s in spans if s["name"] == "bad")
    bad["traceId"] = ""  # no run id
    worse = {**bad, "traceId": good_trace(spans), "spanId": "", "name": "no span id"}
    spans.append(worse)
    answer = post_json(server.otlp_url, body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["partialSuccess"]["rejectedSpans"] == "2"
    good = next(s for s in spans if s["name"] == "good")
    assert [r["endpoint"] for r in server.execution(good["traceId"])] == ["good"]
    assert [r["endpoint"] for r in server.execution(
        format(kept[0].context.trace_id, "032x"))] == ["first"]
    assert server.proc.poll() is None
    metrics = httpx.get(server.url + "/metrics").text
    counted = {line.split("}")[0].split('"')[1]: float(line.split()[-1])
               for line in metrics.splitlines() if line.startswith("tracelab_otlp_spans_total{")}
    assert counted["refused"] >= 1 and counted["stored"] >= 2


def test_the_same_span_sent_twice_is_stored_once(server):
    spans = record_spans({"service.name": "twice"}, lambda t: t.start_span("once").end())
    for _ in range(2):
        assert export_protobuf(server.otlp_url, spans) == SpanExportResult.SUCCESS
    assert len(server.execution(format(spans[0].context.trace_id, "032x"))) == 1


def test_spans_go_to_the_redis_stream_when_configured(tmp_path: Path,
                                                      redis_server: RedisServer):
    env = {"TRACELAB_REDIS_URL": redis_server.url}
    with OtlpServe(tmp_path / "home", env) as running:
        spans = record_spans(RESOURCE, build_agent)
        assert export_protobuf(running.otlp_url, spans) == SpanExportResult.SUCCESS
    events = read_stream(redis_server.client())
    assert len(events) == len(spans)
    assert sorted(e["kind"] for e in events) == ["function", "http", "http", "llm", "llm", "llm"]
    llm = [e for e in events if e["kind"] == "llm"]
    assert {e["tags"]["llm.model"] for e in llm} == {
        "claude-sonnet-4-20250514", "gpt-4o", "gpt-4o-mini"}
    assert all(e["source"] == "otlp" and e["workflow"] == "otel-agent" for e in events)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["resourceSpans", "scopeSpans", "spans", "resource", "attributes",
                         "traceId", "spanId", "name", "key", "value", "stringValue",
                         "intValue", "startTimeUnixNano", "status", "code", "kind"]) | st.text(),
        inner, max_size=4), max_leaves=20)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(st.binary(max_size=200).map(lambda b: ("application/x-protobuf", b)),
                      JSON_VALUES.map(lambda v: ("application/json", orjson.dumps(v)))))
def test_any_body_is_answered_never_crashes(server, body):
    ctype, raw = body
    answer = httpx.post(server.otlp_url + "/v1/traces", content=raw,
                        headers={"Content-Type": ctype}, timeout=30)
    assert answer.status_code in (200, 400), (raw, answer.text)


def test_with_a_token_the_receiver_wants_it(tmp_path: Path):
    spans = record_spans({"service.name": "guarded"}, lambda t: t.start_span("x").end())
    auth = {"Authorization": "Bearer otlp-secret-1"}
    with OtlpServe(tmp_path / "home", extra=("--token", "otlp-secret-1")) as running:
        for url in (running.url, running.otlp_url):
            assert export_protobuf(url, spans) == SpanExportResult.FAILURE
            assert export_protobuf(url, spans, auth) == SpanExportResult.SUCCESS
        trace_id = format(spans[0].context.trace_id, "032x")
        rows = httpx.get(f"{running.url}/api/executions/{trace_id}", headers=auth).json()
    assert [r["endpoint"] for r in rows["events"]] == ["x"]


def test_default_port_busy_is_a_warning_and_zero_disables(tmp_path: Path):
    """The default port (TRACELAB_OTLP_PORT here, 4318 unset) busy: serve starts, warns."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    busy = holder.getsockname()[1]
    try:
        with OtlpServe(tmp_path / "home", env={"TRACELAB_OTLP_PORT": str(busy)},
                       otlp_port=False) as running:
            assert httpx.get(running.url + "/healthz").status_code == 200
    finally:
        holder.close()
    with OtlpServe(tmp_path / "home", env={"TRACELAB_OTLP_PORT": str(busy)},
                   otlp_port=False) as default:
        spans = record_spans({"service.name": "dflt"}, lambda t: t.start_span("d").end())
        assert export_protobuf(f"http://127.0.0.1:{busy}", spans) == SpanExportResult.SUCCESS
    with OtlpServe(tmp_path / "home", extra=("--otlp-port", "0"), otlp_port=False) as disabled:
        assert httpx.get(disabled.url + "/healthz").status_code == 200
    assert f"warning: no OTLP receiver on port {busy}" in running.output
    assert f"OTLP/HTTP receiver on http://127.0.0.1:{busy}/v1/traces" in default.output
    assert "OTLP/HTTP receiver" not in disabled.output


def test_tracelab_up_publishes_to_its_ingester_stream(tmp_path: Path, redis_server: RedisServer):
    """Under `tracelab up` the spans go to the ingester's stream and land in the store."""
    spans = record_spans(RESOURCE, build_agent)
    with OtlpServe(tmp_path / "home", command="up",
                   extra=("--redis-url", redis_server.url, "--stream", "otlp.events")) as up:
        assert export_protobuf(up.otlp_url, spans) == SpanExportResult.SUCCESS
        assert len(read_stream(redis_server.client(), "otlp.events")) == len(spans)
        trace_id = format(spans[0].context.trace_id, "032x")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            answer = httpx.get(f"{up.url}/api/executions/{trace_id}")
            if answer.status_code == 200 and len(answer.json()["events"]) == len(spans):
                break
            time.sleep(0.2)
        assert {r["kind"] for r in answer.json()["events"]} == {"function", "llm", "http"}


def test_a_span_too_large_for_the_transport_is_refused_alone(server):
    def build(tracer: Any) -> None:
        tracer.start_span("small").end()
        tracer.start_span("huge", attributes={f"blob.{i}": "x" * 60_000
                                              for i in range(80)}).end()

    spans = record_spans({"service.name": "sizes"}, build)
    answer = post_json(server.otlp_url, otlp_json(spans), gzipped=True)
    assert answer.status_code == 200, answer.text
    assert answer.json()["partialSuccess"]["rejectedSpans"] == "1"
    assert "larger than" in answer.json()["partialSuccess"]["errorMessage"]
    rows = server.execution(format(spans[0].context.trace_id, "032x"))
    assert [r["endpoint"] for r in rows] == ["small"]
