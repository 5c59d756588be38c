"""OTLP spans <-> TraceEvents.

Inbound (`events_from_request`), one event per span, `source: otlp`:

- `run_id` is the trace id (hex), `span_id`/`parent_id` the span ids (hex), `event_id`
  `otlp-<trace id>-<span id>` so a span sent twice is stored once;
- `workflow` is the resource's `tracelab.workflow`, else `service.namespace`, else
  `service.name`; `service` is `service.name`;
- `kind` is `llm` for a GenAI span (a `gen_ai.*` model call, or OpenInference's `LLM` /
  `EMBEDDING` span kind or `llm.*` model attributes), `http` for an HTTP client span, else
  `function`;
- `gen_ai.*` (current and deprecated names) and OpenInference `llm.*` attributes become the
  canonical `llm.*` tags (spec/README.md "LLM fields"); the messages, when the span carries
  them, become an OpenAI-chat-shaped request and response body (what the conversation view
  reads);
- `http.*`/`url.*`/`server.*` (old and new semantic conventions) become the request's method,
  URL and headers, and the response's status code;
- the span status is the event status (`error` also when `error.type` is set), the error
  taken from the `exception` event when there is one.

Every attribute is kept under `request.attributes` (secret-named string values redacted,
strings cut at the body cap), so nothing a span said is lost.

Outbound (`events_to_otlp`): one span per event, OTLP/JSON (hex ids, integer enums, 64-bit
integers as strings) with the standard `gen_ai.*`/`http.*` attributes any backend reads, plus
`tracelab.*` attributes carrying the event itself, so the receiver rebuilds the same calls.
Run ids and span ids that are not already W3C-shaped hex are hashed into trace/span ids.
"""
from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import orjson

from tracelab.events import MAX_EVENT_BYTES, MAX_TAG_VALUE_CHARS, SCHEMA_VERSION, validate
from tracelab.sdk.payloads import to_jsonable
from tracelab.sdk.redaction import Redactor

SOURCE = "otlp"
BODY_CAP = 64 * 1024
# OTLP enums (opentelemetry/proto/trace/v1/trace.proto)
SPAN_KIND_CLIENT = 3
STATUS_ERROR = 2
_KIND_NAMES = {0: "unspecified", 1: "internal", 2: "server", 3: "client", 4: "producer",
               5: "consumer"}

_redactor = Redactor()
_HEX32 = re.compile(r"[0-9a-f]{32}")
_HEX16 = re.compile(r"[0-9a-f]{16}")

# gen_ai.system / gen_ai.provider.name / OpenInference llm.provider -> our provider names
_PROVIDERS = {
    "gcp.gemini": "google", "gcp.vertex_ai": "google", "gcp.gen_ai": "google",
    "vertex_ai": "google", "vertexai": "google", "gemini": "google", "google_genai": "google",
    "az.ai.openai": "azure-openai", "azure.ai.openai": "azure-openai", "azure": "azure-openai",
    "azure_openai": "azure-openai", "aws.bedrock": "aws-bedrock", "mistral_ai": "mistral",
    "mistralai": "mistral",
}
# gen_ai.operation.name -> llm.operation; the ones that are LLM calls
_OPERATIONS = {"chat": "chat", "text_completion": "completions", "completion": "completions",
               "embeddings": "embeddings", "embedding": "embeddings",
               "generate_content": "generate_content"}
_NOT_LLM_OPERATIONS = {"execute_tool", "invoke_agent", "create_agent"}


# -- attribute values ---------------------------------------------------------------------------

def any_value(value: Any) -> Any:
    """A Python value from an OTLP `AnyValue` message."""
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in value.kvlist_value.values}
    if which == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    return getattr(value, which)


def attributes(items: Iterable[Any]) -> dict[str, Any]:
    """`KeyValue` messages as a dict (the last of a repeated key wins)."""
    return {kv.key: any_value(kv.value) for kv in items}


def _first(attrs: Mapping[str, Any], *names: str) -> Any:
    for name in names:
        value = attrs.get(name)
        if value is not None and value != "":
            return value
    return None


def _int(value: Any) -> int | None:
    """A count from an attribute (an int, an integral float or digits), within 0..2**62."""
    number = None
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and value.strip().isdigit() and len(value.strip()) < 20:
        number = int(value)
    return number if number is not None and 0 <= number <= 2**62 else None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


# -- LLM ----------------------------------------------------------------------------------------

def _provider(attrs: Mapping[str, Any]) -> str | None:
    value = _first(attrs, "gen_ai.provider.name", "gen_ai.system", "llm.provider", "llm.system")
    if not isinstance(value, str):
        return None
    low = value.strip().lower()
    return _PROVIDERS.get(low, low) or None


def is_llm_span(attrs: Mapping[str, Any]) -> bool:
    """A model call: OpenInference LLM/EMBEDDING spans, gen_ai spans that call a model."""
    oi_kind = str(attrs.get("openinference.span.kind", "")).upper()
    if oi_kind:
        return oi_kind in ("LLM", "EMBEDDING")
    operation = attrs.get("gen_ai.operation.name")
    if isinstance(operation, str) and operation:
        return operation not in _NOT_LLM_OPERATIONS
    return any(name in attrs for name in (
        "gen_ai.request.model", "gen_ai.response.model", "gen_ai.usage.input_tokens",
        "gen_ai.usage.prompt_tokens", "llm.model_name", "llm.token_count.prompt"))


def _indexed(attrs: Mapping[str, Any], prefix: str) -> list[dict[str, Any]]:
    """Flattened lists (`llm.input_messages.0.message.role`) as a list of nested dicts."""
    items: dict[int, dict[str, Any]] = {}
    for key, value in attrs.items():
        if not key.startswith(prefix):
            continue
        index, _, rest = key[len(prefix):].partition(".")
        if not index.isdigit() or not rest:
            continue
        node = items.setdefault(int(index), {})
        parts = rest.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}  # a deeper name wins over a shallower value
            node = node[part]
        if not isinstance(node.get(parts[-1]), dict):
            node[parts[-1]] = value
    return [items[i] for i in sorted(items)]


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, str):
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            return []
    return value if isinstance(value, list) else []


def _oi_message(node: Mapping[str, Any]) -> dict[str, Any]:
    """An OpenInference `message` node as an OpenAI chat message."""
    msg = node.get("message", node)
    if not isinstance(msg, dict):
        msg = {"content": msg}
    out: dict[str, Any] = {"role": str(msg.get("role", "user"))}
    if "content" in msg:
        out["content"] = msg["content"]
    elif isinstance(msg.get("contents"), dict):
        parts = [_dig(c, "message_content") or c for c in _ordered(msg["contents"])]
        out["content"] = "".join(str(p.get("text", "")) for p in parts if isinstance(p, dict))
    calls = [_dig(c, "tool_call") or c for c in _ordered(msg.get("tool_calls"))]
    if calls:
        out["tool_calls"] = [{"id": c.get("id", ""), "type": "function",
                              "function": {"name": _dig(c, "function", "name") or "",
                                           "arguments": _dig(c, "function", "arguments") or ""}}
                             for c in calls if isinstance(c, dict)]
    if msg.get("tool_call_id"):
        out["tool_call_id"] = msg["tool_call_id"]
    if msg.get("name"):
        out["name"] = msg["name"]
    return out


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _ordered(node: Any) -> list[Any]:
    if isinstance(node, dict):
        return [node[k] for k in sorted(node, key=lambda k: int(k) if k.isdigit() else 1 << 30)]
    return node if isinstance(node, list) else []


def _dig(node: Any, *path: str) -> Any:
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    return node


def _semconv_message(item: Mapping[str, Any]) -> dict[str, Any]:
    """A `gen_ai.input.messages` / `gen_ai.output.messages` entry (parts) as a chat message."""
    out: dict[str, Any] = {"role": item.get("role", "user")}
    texts, calls = [], []
    for part in _as_list(item.get("parts")):
        if not isinstance(part, dict):
            continue
        if part.get("type") == "text":
            texts.append(str(part.get("content", "")))
        elif part.get("type") == "tool_call":
            calls.append({"id": part.get("id", ""), "type": "function",
                          "function": {"name": part.get("name", ""),
                                       "arguments": _text(part.get("arguments", {}))}})
        elif part.get("type") == "tool_call_response":
            out["role"] = "tool"
            out["tool_call_id"] = part.get("id", "")
            texts.append(_text(part.get("response", "")))
    if "content" in item and not texts:
        texts.append(_text(item["content"]))
    out["content"] = "".join(texts)
    if calls:
        out["tool_calls"] = calls
    if item.get("finish_reason"):
        out["finish_reason"] = item["finish_reason"]
    return out


def _messages(attrs: Mapping[str, Any], side: str) -> list[dict[str, Any]]:
    """The prompt (`side="input"`) or completion (`"output"`) messages a span carries, in any
    of: OpenInference `llm.<side>_messages.N.message.*`, semconv `gen_ai.<side>.messages`
    (JSON), OpenLLMetry `gen_ai.prompt.N.*` / `gen_ai.completion.N.*`."""
    found = _indexed(attrs, f"llm.{side}_messages.")
    if found:
        return [_oi_message(node) for node in found]
    semconv = _as_list(attrs.get(f"gen_ai.{side}.messages"))
    if semconv:
        return [_semconv_message(m) for m in semconv if isinstance(m, dict)]
    legacy = _indexed(attrs, "gen_ai.prompt." if side == "input" else "gen_ai.completion.")
    out = []
    for node in legacy:
        msg = {"role": node.get("role", "user" if side == "input" else "assistant"),
               "content": node.get("content", "")}
        calls = [c for c in _ordered(node.get("tool_calls")) if isinstance(c, dict)]
        if calls:
            msg["tool_calls"] = [{"id": c.get("id", ""), "type": "function",
                                  "function": {"name": c.get("name", ""),
                                               "arguments": c.get("arguments", "")}}
                                 for c in calls]
        if node.get("finish_reason"):
            msg["finish_reason"] = node["finish_reason"]
        out.append(msg)
    return out


def llm_tags(attrs: Mapping[str, Any], started_ns: int = 0,
             span_events: Iterable[tuple[str, int]] = ()) -> dict[str, str]:
    """The canonical `llm.*` tags from `gen_ai.*` and OpenInference attributes."""
    tags: dict[str, Any] = {}
    tags["llm.provider"] = _provider(attrs)
    tags["llm.model"] = _first(attrs, "gen_ai.response.model", "llm.response.model",
                               "gen_ai.request.model", "llm.model_name", "llm.request.model",
                               "embedding.model_name")
    operation = attrs.get("gen_ai.operation.name")
    if isinstance(operation, str):
        tags["llm.operation"] = _OPERATIONS.get(operation, operation)
    elif str(attrs.get("openinference.span.kind", "")).upper() == "EMBEDDING":
        tags["llm.operation"] = "embeddings"
    elif str(attrs.get("llm.request.type", "")) in ("chat", "completion", "embedding"):
        tags["llm.operation"] = _OPERATIONS[attrs["llm.request.type"]]
    numbers = {
        "llm.input_tokens": ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens",
                             "llm.token_count.prompt", "llm.usage.prompt_tokens"),
        "llm.output_tokens": ("gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens",
                              "llm.token_count.completion", "llm.usage.completion_tokens"),
        "llm.total_tokens": ("gen_ai.usage.total_tokens", "llm.usage.total_tokens",
                             "llm.token_count.total"),
        "llm.cached_input_tokens": ("gen_ai.usage.cache_read.input_tokens",
                                    "gen_ai.usage.cache_read_input_tokens",
                                    "llm.token_count.prompt_details.cache_read"),
        "llm.reasoning_tokens": ("gen_ai.usage.reasoning.output_tokens",
                                 "gen_ai.usage.reasoning_tokens",
                                 "llm.token_count.completion_details.reasoning"),
    }
    for tag, names in numbers.items():
        tags[tag] = _int(_first(attrs, *names))
    if tags["llm.total_tokens"] is None and tags["llm.input_tokens"] is not None \
            and tags["llm.output_tokens"] is not None:
        tags["llm.total_tokens"] = tags["llm.input_tokens"] + tags["llm.output_tokens"]
    outputs = _messages(attrs, "output")
    reasons = attrs.get("gen_ai.response.finish_reasons")
    reasons = reasons if isinstance(reasons, list) else [reasons] if reasons else []
    reasons = reasons or [m["finish_reason"] for m in outputs if m.get("finish_reason")]
    if reasons:
        tags["llm.finish_reason"] = str(reasons[0]).lower()
    tools = [str(_dig(c, "function", "name")) for m in outputs
             for c in _list(m.get("tool_calls")) if _dig(c, "function", "name")]
    if tools:
        tags["llm.tool_calls"] = ",".join(tools)
    for name, at in span_events:
        if "first token" in name.lower() or name in ("gen_ai.first_token",
                                                     "llm.first_token"):
            tags["llm.ttft_ms"] = round(max(0, at - started_ns) / 1e6, 3)
            break
    return {k: str(v)[:MAX_TAG_VALUE_CHARS] for k, v in tags.items()
            if v is not None and v != ""}


def _llm_payloads(attrs: Mapping[str, Any], tags: Mapping[str, str]
                  ) -> tuple[dict[str, Any], dict[str, Any]]:
    """OpenAI-chat-shaped bodies from the messages, usage and model the span carries."""
    model = _first(attrs, "gen_ai.request.model", "llm.model_name") or tags.get("llm.model")
    request: dict[str, Any] = {"model": model} if model else {}
    inputs = _messages(attrs, "input")
    if inputs:
        request["messages"] = inputs
    elif attrs.get("input.value") is not None:
        request["input"] = _json_or_text(attrs["input.value"])
    response: dict[str, Any] = {}
    if tags.get("llm.model"):
        response["model"] = tags["llm.model"]
    outputs = _messages(attrs, "output")
    if outputs:
        response["choices"] = [
            {"index": i, "message": {k: v for k, v in m.items() if k != "finish_reason"},
             "finish_reason": m.get("finish_reason") or tags.get("llm.finish_reason")}
            for i, m in enumerate(outputs)]
    elif attrs.get("output.value") is not None:
        response["output"] = _json_or_text(attrs["output.value"])
    usage = {k: int(tags[t]) for k, t in (("prompt_tokens", "llm.input_tokens"),
                                           ("completion_tokens", "llm.output_tokens"),
                                           ("total_tokens", "llm.total_tokens")) if t in tags}
    if usage:
        response["usage"] = usage
    return request, response


def _json_or_text(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            pass
    return value


# -- HTTP -----------------------------------------------------------------------------------

def http_request(attrs: Mapping[str, Any]) -> dict[str, Any] | None:
    """Method, URL and headers from old (`http.method`, `http.url`) or new (`http.request.method`,
    `url.full`) semantic conventions; None when the span has no HTTP method."""
    method = _first(attrs, "http.request.method", "http.method")
    if not isinstance(method, str):
        return None
    url = _first(attrs, "url.full", "http.url")
    if not isinstance(url, str):
        scheme = _first(attrs, "url.scheme", "http.scheme") or "http"
        host = _first(attrs, "server.address", "net.peer.name", "http.host", "net.host.name")
        port = _first(attrs, "server.port", "net.peer.port")
        path = _first(attrs, "url.path", "http.target") or "/"
        query = attrs.get("url.query")
        netloc = f"{host}:{port}" if host and port and f":{port}" not in str(host) else host
        url = f"{scheme}://{netloc or 'unknown'}{path}" + (f"?{query}" if query else "")
    headers = {}
    for key, value in attrs.items():
        if key.startswith("http.request.header."):
            headers[key[len("http.request.header."):]] = \
                ", ".join(map(str, value)) if isinstance(value, list) else str(value)
    redacted, _ = _redactor.headers(headers)
    return {"method": method.upper(), "url": _redactor.url(url), "headers": redacted}


def _http_target(attrs: Mapping[str, Any], url: str) -> str:
    host = _first(attrs, "server.address", "net.peer.name")
    port = _first(attrs, "server.port", "net.peer.port")
    if host:
        number = _int(port)
        return f"{host}:{number}" if number and number not in (80, 443) else str(host)
    return urlsplit(url).netloc.rpartition("@")[2] or "unknown"


def _status_code(attrs: Mapping[str, Any]) -> int | None:
    code = _int(_first(attrs, "http.response.status_code", "http.status_code"))
    return code if code is not None and 0 <= code <= 999 else None


# -- spans -> events ------------------------------------------------------------------------

def _kept_attributes(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Every attribute, secret-named strings redacted (token counters are numbers: kept)."""
    out = {}
    for key, value in attrs.items():
        if key.startswith("tracelab."):
            continue
        if isinstance(value, str) and _redactor.is_secret(key):
            out[key] = "[REDACTED]"
        else:
            out[key] = to_jsonable(value, _redactor, BODY_CAP)
    return out


def _error(span: Any, attrs: Mapping[str, Any]) -> dict[str, str] | None:
    for ev in span.events:
        if ev.name == "exception":
            ea = attributes(ev.attributes)
            return {"type": str(ea.get("exception.type") or "Exception"),
                    "message": str(ea.get("exception.message") or span.status.message or "")}
    if span.status.code == STATUS_ERROR or attrs.get("error.type"):
        return {"type": str(attrs.get("error.type") or "Error"),
                "message": span.status.message or ""}
    return None


def span_to_event(span: Any, resource: Mapping[str, Any], scope: str = "") -> dict[str, Any]:
    """One TraceEvent from one OTLP `Span` message and its resource's attributes."""
    attrs = attributes(span.attributes)
    trace_id, span_id = span.trace_id.hex(), span.span_id.hex()
    if not trace_id or not span_id:  # both are required by OTLP; the event id needs them
        raise ValueError("a span needs a trace id and a span id")
    service = str(resource.get("service.name") or "unknown_service")
    workflow = str(_first(resource, "tracelab.workflow", "service.namespace", "service.name")
                   or "otlp")
    started = int(span.start_time_unix_nano)
    latency_ms = max(0, int(span.end_time_unix_nano) - started) / 1e6
    error = _error(span, attrs)
    kept = _kept_attributes(attrs)
    request: dict[str, Any] = {}
    response: dict[str, Any] | None = None
    status_code = _status_code(attrs)
    tags: dict[str, str] = {}
    http = http_request(attrs)
    if is_llm_span(attrs):
        kind = "llm"
        tags = llm_tags(attrs, started, [(e.name, int(e.time_unix_nano)) for e in span.events])
        body, answer = _llm_payloads(attrs, tags)
        # the host, as the SDK and the proxy name an LLM call's target; else the provider
        target = _http_target(attrs, http["url"]) if http is not None else \
            str(_first(attrs, "server.address") or tags.get("llm.provider") or "llm")
        endpoint = " ".join(filter(None, (tags.get("llm.operation"), tags.get("llm.model")))) \
            or span.name
        request = {**(http or {}), "body": to_jsonable(body, _redactor, BODY_CAP)}
        response = {"body": to_jsonable(answer, _redactor, BODY_CAP)}
    elif http is not None and span.kind == SPAN_KIND_CLIENT:
        kind = "http"
        request = http
        target = _http_target(attrs, http["url"])
        endpoint = f"{http['method']} {urlsplit(http['url']).path or '/'}"
        response = {"status_code": status_code} if status_code is not None else None
        if status_code is not None:
            headers = {k[len("http.response.header."):]: str(v) for k, v in attrs.items()
                       if k.startswith("http.response.header.")}
            if headers:
                response["headers"] = _redactor.headers(headers)[0]
    else:
        kind = "function"
        target = scope or service
        endpoint = span.name or "span"
    if status_code is not None and kind == "llm":
        response = {"status_code": status_code, **(response or {})}
    request["attributes"] = kept
    tags["otel.span_kind"] = _KIND_NAMES.get(span.kind, str(span.kind))
    if scope:
        tags["otel.scope"] = scope[:1024]
    event = {
        "event_id": f"otlp-{trace_id}-{span_id}",
        "schema": SCHEMA_VERSION,
        "workflow": workflow[:256],
        "run_id": trace_id,
        "service": service[:256],
        "source": SOURCE,
        "kind": kind,
        "target": (target or "unknown")[:512],
        "endpoint": (endpoint or "span")[:2048],
        "started_at": started,
        "latency_ms": latency_ms,
        "status": "error" if error is not None else "ok",
        "request": request,
        "response": response,
        "status_code": status_code,
        "error": error,
        "tags": tags,
        "span_id": span_id,
        "parent_id": span.parent_span_id.hex() or None,
    }
    return _restore(event, attrs)


def _restore(event: dict[str, Any], attrs: Mapping[str, Any]) -> dict[str, Any]:
    """A span TraceLab exported carries its event in `tracelab.*` attributes: take it back."""
    saved = attrs.get("tracelab.event")
    if not isinstance(saved, str):
        return event
    try:
        original = orjson.loads(saved)
    except orjson.JSONDecodeError:
        return event
    if not isinstance(original, dict):
        return event
    restored = {**event, **{k: v for k, v in original.items() if k != "schema"}}
    for field in ("span_id", "parent_id", "status_code", "error"):
        restored[field] = original.get(field)  # absent in the original: absent here too
    return restored


def events_from_request(request: Any) -> Iterator[tuple[dict[str, Any] | None, str | None]]:
    """Each span of an `ExportTraceServiceRequest` as (event, None) when it maps to a valid
    TraceEvent, else (None, reason). Never raises for a span's content."""
    for resource_spans in request.resource_spans:
        resource = attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            scope = scope_spans.scope.name
            for span in scope_spans.spans:
                try:
                    event = span_to_event(span, resource, scope)
                    problems = validate(event)
                    if not problems and len(orjson.dumps(event)) > MAX_EVENT_BYTES:
                        problems = [f"event larger than {MAX_EVENT_BYTES} bytes"]
                except Exception as exc:  # a hostile span is refused, never fatal
                    yield None, f"span {span.name!r}: {type(exc).__name__}: {exc}"
                    continue
                if problems:
                    yield None, f"span {span.name!r}: " + "; ".join(problems[:3])
                else:
                    yield event, None


# -- events -> OTLP/JSON --------------------------------------------------------------------

def trace_id_for(run_id: str) -> str:
    """The run id when it is already a 32-hex trace id, else a stable hash of it."""
    if _HEX32.fullmatch(run_id) and run_id != "0" * 32:
        return run_id
    return hashlib.sha256(run_id.encode()).hexdigest()[:32]


def span_id_for(value: str) -> str:
    if _HEX16.fullmatch(value) and value != "0" * 16:
        return value
    return hashlib.sha256(value.encode()).hexdigest()[:16]


def _kv(key: str, value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        wrapped = {"boolValue": value}
    elif isinstance(value, int):
        wrapped = {"intValue": str(value)}
    elif isinstance(value, float):
        wrapped = {"doubleValue": value}
    elif isinstance(value, list):
        wrapped = {"arrayValue": {"values": [_kv("", v)["value"] for v in value]}}
    else:
        wrapped = {"stringValue": str(value)}
    return {"key": key, "value": wrapped}


def _standard_attributes(event: Mapping[str, Any]) -> dict[str, Any]:
    """The semantic-convention attributes an OpenTelemetry backend shows for this event."""
    tags = event.get("tags") or {}
    request = event.get("request") if isinstance(event.get("request"), dict) else {}
    out: dict[str, Any] = {}
    if event["kind"] == "llm":
        names = {"llm.provider": "gen_ai.provider.name", "llm.model": "gen_ai.response.model",
                 "llm.operation": "gen_ai.operation.name",
                 "llm.input_tokens": "gen_ai.usage.input_tokens",
                 "llm.output_tokens": "gen_ai.usage.output_tokens",
                 "llm.cached_input_tokens": "gen_ai.usage.cache_read.input_tokens",
                 "llm.reasoning_tokens": "gen_ai.usage.reasoning.output_tokens"}
        for tag, attr in names.items():
            if tag in tags:
                value = tags[tag]
                out[attr] = int(value) if value.isdigit() else value
        if "llm.provider" in tags:
            out["gen_ai.system"] = tags["llm.provider"]
        if "llm.finish_reason" in tags:
            out["gen_ai.response.finish_reasons"] = [tags["llm.finish_reason"]]
    if isinstance(request.get("method"), str):
        out["http.request.method"] = request["method"]
    if isinstance(request.get("url"), str):
        out["url.full"] = request["url"]
    if event.get("status_code") is not None:
        out["http.response.status_code"] = event["status_code"]
    if event.get("error"):
        out["error.type"] = event["error"].get("type", "Error")
    for key, value in tags.items():
        out.setdefault(f"tracelab.tag.{key}", value)
    return out


def event_to_span(event: Mapping[str, Any]) -> dict[str, Any]:
    """One OTLP/JSON span for one TraceEvent."""
    trace_id = trace_id_for(event["run_id"])
    span_id = span_id_for(event.get("span_id") or event["event_id"])
    started = int(event["started_at"])
    ended = started + int(round(float(event["latency_ms"]) * 1e6))
    attrs = _standard_attributes(event)
    attrs.update({"tracelab.kind": event["kind"], "tracelab.target": event["target"],
                  "tracelab.event": orjson.dumps(event).decode()})
    span: dict[str, Any] = {
        "traceId": trace_id, "spanId": span_id, "name": event["endpoint"],
        "kind": SPAN_KIND_CLIENT if event["kind"] in ("http", "llm", "grpc") else 1,
        "startTimeUnixNano": str(started), "endTimeUnixNano": str(ended),
        "attributes": [_kv(k, v) for k, v in attrs.items()],
        "status": {"code": STATUS_ERROR, "message": (event.get("error") or {}).get(
            "message", "")} if event["status"] == "error" else {"code": 1},
    }
    if event.get("parent_id"):
        span["parentSpanId"] = span_id_for(event["parent_id"])
    return span


def events_to_otlp(events: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """An OTLP/JSON `ExportTraceServiceRequest`: one resource per (service, workflow)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for event in events:
        groups.setdefault((event["service"], event["workflow"]), []).append(
            event_to_span(event))
    resource_spans = []
    for (service, workflow), spans in groups.items():
        resource_spans.append({
            "resource": {"attributes": [_kv("service.name", service),
                                        _kv("tracelab.workflow", workflow)]},
            "scopeSpans": [{"scope": {"name": "tracelab"}, "spans": spans}],
        })
    return {"resourceSpans": resource_spans}
