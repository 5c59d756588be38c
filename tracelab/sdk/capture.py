"""The one capture helper every integration calls: it builds a contract-valid TraceEvent.

Integrations only say what happened (method, URL, headers, bodies, timing, exception); this
module applies the shared rules — target and endpoint naming, the status rule, LLM detection,
redaction, body caps, span nesting — so no integration repeats them and the proxy can reuse
them too. Nothing here may raise into the traced program: callers wrap `record_*` in
`guarded()`.
"""
from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Iterable, Mapping
from itertools import chain
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from tracelab import __version__
from tracelab.config import normalize_tags
from tracelab.events import SCHEMA_VERSION, new_event_id
from tracelab.sdk.context import current_span_id
from tracelab.sdk.llm import llm_fields, path_model
from tracelab.sdk.payloads import encode_body, not_captured
from tracelab.sdk.redaction import header_pairs

if TYPE_CHECKING:
    from tracelab.sdk.recorder import Recorder

HOST = socket.gethostname()
_chain = chain.from_iterable
_DEFAULT_PORTS = {"http": "80", "https": "443", "ws": "80", "wss": "443"}
# LLM detection (the same rule in sdk-ts): a known provider host, or an LLM-style path whose
# request body looks like an LLM request (`model` plus `messages`, `input` or `prompt`). A path
# alone is not enough: `/api/surveys/42/responses` is not an LLM call. Gemini's paths name the
# model (`/v1beta/models/M:generateContent`) and its body has `contents`.
LLM_HOSTS = {
    "api.openai.com": "openai", "api.anthropic.com": "anthropic",
    "generativelanguage.googleapis.com": "google", "api.mistral.ai": "mistral",
    "api.groq.com": "groq", "api.cohere.com": "cohere", "api.cohere.ai": "cohere",
    "openrouter.ai": "openrouter", "api.together.xyz": "together", "api.together.ai": "together",
    "api.deepseek.com": "deepseek", "api.fireworks.ai": "fireworks",
    "api.perplexity.ai": "perplexity", "api.x.ai": "xai",
}
LLM_HOST_PATTERNS = (
    (re.compile(r"[a-z0-9-]+\.openai\.azure\.com"), "azure-openai"),
    (re.compile(r"bedrock-runtime(?:-fips)?\.[a-z0-9-]+\.amazonaws\.com"), "bedrock"),
    (re.compile(r"[a-z0-9-]+-aiplatform\.googleapis\.com"), "google-vertex"),
)
LLM_PATH_SUFFIXES = ("/chat/completions", "/completions", "/embeddings", "/responses",
                     "/v1/messages")
LLM_BODY_FIELDS = ("messages", "input", "prompt")
_TRUNCATED_MODEL = re.compile(r'"model":"')
_TRUNCATED_FIELDS = re.compile(r'"(?:messages|input|prompt)":')
_PID = [os.getpid()]
# The active replay session (`tracelab.replay.session.Session`), set only while a replay runs:
# it adds `replay_of` and the per-event `replay` outcome to every event built meanwhile.
replay_session: Any = None


def _refresh_pid() -> None:
    _PID[0] = os.getpid()


os.register_at_fork(after_in_child=_refresh_pid)


def error_info(exc: BaseException) -> dict[str, str]:
    try:
        message = str(exc)
    except Exception:
        message = "<str() of the exception failed>"
    return {"type": type(exc).__qualname__, "message": message[:4000]}


def build_event(
    rec: Recorder,
    *,
    kind: str,
    target: str,
    endpoint: str,
    started_at: int,
    latency_ms: float,
    status: str,
    request: dict[str, Any],
    response: dict[str, Any] | None,
    status_code: int | None = None,
    error: dict[str, str] | None = None,
    tags: Mapping[str, Any] | None = None,
    span_id: str | None = None,
    parent_id: str | None = None,
    source: str = "sdk-py",
    workflow: str | None = None,
    run_id: str | None = None,
    service: str | None = None,
    replay: bool = True,
) -> dict[str, Any]:
    """The event dict. `replay=False`: a call made before any replay session (built later,
    on the sink's thread) is never tagged or observed by one that started meanwhile."""
    config = rec.config
    merged = config.tags
    # lifecycle events are not calls
    session = replay_session if kind != "run" and replay else None
    if session is not None:
        tags = {**(tags or {}), **session.event_tags()}
    if tags:
        merged = normalize_tags({**config.tags, **tags}, origin="tags", strict=False)
    event = {
        "event_id": new_event_id(),
        "schema": SCHEMA_VERSION,
        "workflow": workflow or config.workflow,
        "run_id": run_id or config.run_id,
        "service": service or config.service,
        "source": source,
        "kind": kind,
        "target": (target or "unknown")[:512],
        "endpoint": (endpoint or "unknown")[:2048],
        "started_at": started_at,
        "latency_ms": latency_ms,
        "status": status,
        "request": request,
        "response": response,
        "status_code": status_code,
        "error": error,
        "tags": merged,
        "span_id": span_id,
        "parent_id": parent_id if parent_id is not None else current_span_id.get(),
        "host": HOST,
        "pid": _PID[0],
        "sdk_version": __version__,
    }
    if session is not None:  # the replay's call log (report line `calls`); never raises
        session.observe(event)
    return event


def http_target(scheme: str, netloc: str) -> str:
    """`api.stripe.com`, or `127.0.0.1:8080` when the port is not the scheme's default."""
    hostport = netloc.rpartition("@")[2].lower()
    host, colon, port = hostport.rpartition(":")
    if colon and "]" not in port and port == _DEFAULT_PORTS.get(scheme.lower()):
        return host
    return hostport or "unknown"


def llm_provider(host: str, path: str, request_body: Any) -> str | None:
    """The provider when this HTTP call is an LLM call (the rule above), else None."""
    host = host.lower().rstrip(".")
    provider = LLM_HOSTS.get(host)
    if provider is not None:
        return provider
    for pattern, name in LLM_HOST_PATTERNS:
        if pattern.fullmatch(host):
            return name
    if path.endswith(LLM_PATH_SUFFIXES) and _llm_shaped(request_body):
        return "anthropic" if path.endswith("/v1/messages") else "openai-compatible"
    if path_model(path) and _gemini_shaped(request_body):
        return "google"
    return None


def _gemini_shaped(body: Any) -> bool:
    """A Gemini `generateContent` request body: `contents` (the model is in the path)."""
    if isinstance(body, dict):
        if body.get("$tracelab") == "truncated" and isinstance(body.get("data"), str):
            return '"contents":' in body["data"]
        return "contents" in body
    return False


def _llm_shaped(body: Any) -> bool:
    """A stored request body with a string `model` and `messages`, `input` or `prompt`."""
    if isinstance(body, dict):
        if body.get("$tracelab") == "truncated" and isinstance(body.get("data"), str):
            data = body["data"]  # compact JSON cut at the cap: look for the members' text
            return bool(_TRUNCATED_MODEL.search(data) and _TRUNCATED_FIELDS.search(data))
        return isinstance(body.get("model"), str) and any(f in body for f in LLM_BODY_FIELDS)
    return False


def llm_tags(host: str, path: str, request_body: Any, response_body: Any,
             chunks: Any = None, fold: Any = None) -> dict[str, str] | None:
    """The canonical `llm.*` tags of an LLM call (`tracelab.sdk.llm`); None when it is not one.

    `chunks`: the response's stored stream pieces (they time `llm.ttft_ms`); `fold`: a
    `tracelab.sdk.llm.Fold` a stream tee filled while the caller read the stream.
    """
    provider = llm_provider(host, path, request_body)
    if provider is None:
        return None
    return llm_fields(provider, path, request_body, response_body, chunks, fold)


def record_http(
    rec: Recorder,
    *,
    origin: str,
    method: str,
    url: str,
    request_headers: Mapping[str, Any] | Iterable[tuple[Any, Any]] | None,
    request_body: Any,
    started_at: int,
    latency_ms: float,
    status_code: int | None = None,
    response_headers: Mapping[str, Any] | Iterable[tuple[Any, Any]] | None = None,
    response_body: Any = None,
    exc: BaseException | None = None,
    request_body_note: str | None = None,
    response_body_note: str | None = None,
    source: str = "sdk-py",
    workflow: str | None = None,
    run_id: str | None = None,
    service: str | None = None,
    kind: str | None = None,
    response_body_size: int | None = None,
    response_stream: Any = None,
) -> dict[str, Any] | None:
    """Record one HTTP event. `*_note` marks a body as deliberately not captured.

    `kind` replaces the default (`http`, or `llm` for LLM endpoints), e.g. `websocket` for a
    connection summary. `response_body_size` is the body's real size when `response_body` is
    only its first bytes (the proxy keeps a streamed body up to the cap): a truncated marker
    then reports that size. `response_stream` (a `tracelab.sdk.streams.StreamTee`) adds the
    response's `chunks` and `stream` members.

    On the caller's thread this only snapshots what happened (immutable bodies, header pairs,
    the error text, the span) into a tuple and queues it: redaction, the event dict and its
    JSON are built by the sink's thread, in batches, before anything leaves the process
    (`tracelab.sdk.sinks`). Returns None then. Calls whose building must happen now (a replay
    session observes its events as they are built; streams; bodies over `DEFER_MAX_BYTES` or
    of mutable types; a recorder wrapper that is not a `Recorder`, such as the proxy's
    `Tagged`, whose own `submit` adds to each event) are built here and the event is returned as built; what is submitted
    has, in addition, every echo of a redacted secret value scrubbed.
    """
    defer = replay_session is None and response_stream is None and \
        _deferrable(request_body) and _deferrable(response_body) and \
        getattr(type(rec), "defers", False)
    call = (rec.builder(build_http) if defer else -1, origin, method, url,
            _flat(request_headers), request_body, started_at, latency_ms, status_code,
            _flat(response_headers), response_body, None if exc is None else _error_pair(exc),
            request_body_note, response_body_note, source, workflow, run_id, service, kind,
            response_body_size, response_stream, current_span_id.get(),
            replay_session is not None)
    if defer:
        rec.sink.submit(call)
        return None
    event, found = build_http(rec, call)
    rec.submit(event, origin, found)
    return event


# Bodies up to this size are kept as they are until the sink's thread builds the event: a
# queued call then holds at most ~2x this much (today's serialized events hold as much).
DEFER_MAX_BYTES = 64 * 1024
_SEPARATORS = {str: "\0", bytes: b"\0"}


def _deferrable(body: Any) -> bool:
    """Immutable and small enough to be held in the queue as it is."""
    return body is None or (type(body) in (bytes, str) and len(body) <= DEFER_MAX_BYTES)


def _error_pair(exc: BaseException) -> tuple[str, str]:
    info = error_info(exc)
    return info["type"], info["message"]


def _flat(headers: Any) -> Any:
    """Header pairs as ONE string (`name\\0value\\0…`), an immutable snapshot.

    A queued call is a tuple of strings, bytes and numbers only: CPython's collector stops
    tracking such a tuple the first time it sees it, so calls waiting in the queue are never
    promoted to older generations (which would set off full collections in the traced
    program). Pairs that cannot be joined (mixed types, a NUL inside) stay a tuple of pairs.
    Mappings are read as the redactor reads them (`header_pairs`: requests'
    CaseInsensitiveDict through its internal store).
    """
    if headers is None:
        return None
    pairs: Any = headers
    if type(headers) not in (list, tuple):  # (httpx's raw headers: a list of byte pairs)
        pairs, unique = header_pairs(headers)
        if not unique:
            pairs = tuple(pairs)
    if not pairs:
        return ()
    sep: Any = b"\0" if type(next(iter(pairs))[0]) is bytes else "\0"
    try:
        flat = sep.join(_chain(pairs))
    except TypeError:
        return tuple(pairs)
    if flat.count(sep) == 2 * len(pairs) - 1:
        return flat
    return tuple(pairs)


def _pairs(flat: Any) -> Any:
    """The header pairs `_flat` joined."""
    sep = _SEPARATORS.get(type(flat))
    if sep is None:
        return flat
    parts = iter(flat.split(sep))
    return zip(parts, parts)


def build_http(rec: Recorder, call: tuple[Any, ...]) -> tuple[dict[str, Any], set[str]]:
    """The redacted event of one call snapshotted by `record_http`, and the secret values
    found (scrubbed from echoes when it is serialized). Runs on the sink's thread."""
    (_key, _origin, method, url, request_headers, request_body, started_at, latency_ms,
     status_code, response_headers, response_body, error, request_body_note,
     response_body_note, source, workflow, run_id, service, kind, response_body_size,
     response_stream, parent_id, replaying) = call
    config, redactor = rec.config, rec.redactor
    request_headers, response_headers = _pairs(request_headers), _pairs(response_headers)
    parts = urlsplit(url)
    method = method.upper()
    found: set[str] = set()  # secret values redacted here, scrubbed from echoes on submit
    req_headers, req_type = redactor.headers(request_headers, found)
    capture, cap = config.capture_payloads, config.max_body_bytes
    req_body: Any
    if not capture:
        req_body = _OFF
    elif request_body_note:
        req_body = not_captured(request_body_note)
    else:
        req_body = encode_body(request_body, req_type, redactor, cap, found)
    request = {"method": method, "url": redactor.url(url, found), "headers": req_headers,
               "body": req_body}
    response = None
    if status_code is not None:
        resp_headers, resp_type = redactor.headers(response_headers, found)
        if not capture:
            resp_body: Any = _OFF
        elif response_body_note:
            resp_body = not_captured(response_body_note)
        else:
            resp_body = encode_body(response_body, resp_type, redactor, cap, found)
            if response_body_size is not None and isinstance(resp_body, dict) \
                    and resp_body.get("$tracelab") == "truncated":
                resp_body["size"] = max(resp_body["size"], response_body_size)
        response = {"status_code": status_code, "headers": resp_headers, "body": resp_body}
        if response_stream is not None and capture:
            response.update(response_stream.members(redactor, found))
    path = parts.path or "/"
    # LLM fields from the body as received: redaction blanks secret-looking members (Gemini's
    # `promptTokenCount`), and token counts are not payload (kept with capture off too).
    llm_body = response_body if response_body is not None and response_stream is None \
        else response["body"] if response else None
    tags = llm_tags(parts.hostname or "", path, req_body, llm_body,
                    response.get("chunks") if response else None,
                    response_stream.llm_fold() if response_stream is not None else None)
    failed = error is not None or (status_code is not None and status_code >= 400)
    if error is not None:
        error = {"type": error[0], "message": error[1]}
    event = build_event(
        rec, kind=kind or ("llm" if tags else "http"),
        target=http_target(parts.scheme, parts.netloc), endpoint=f"{method} {path}",
        started_at=started_at, latency_ms=latency_ms,
        status="error" if failed else "ok", request=request, response=response,
        status_code=status_code, error=error, tags=tags, parent_id=parent_id,
        source=source, workflow=workflow, run_id=run_id, service=service, replay=replaying,
    )
    return event, found


_OFF = not_captured("capture_payloads is off")


class Timer:
    """Wall-clock start (epoch ns, for the contract) and monotonic duration (for latency)."""

    __slots__ = ("started_at", "_t0")

    def __init__(self) -> None:
        self.started_at = time.time_ns()
        self._t0 = time.perf_counter_ns()

    def elapsed_ms(self) -> float:
        return (time.perf_counter_ns() - self._t0) / 1e6
