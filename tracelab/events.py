"""The TraceEvent contract (schema 1): its shape, its limits, and the check every event passes.

This module owns the one typed definition of a TraceEvent (`TraceEvent`), the contract's
constants, `validate()` / `ensure_valid()`, and the id helpers producers use. The same rules are
written as JSON Schema in `spec/trace-event.schema.json` and documented in `spec/README.md`;
`tests/test_events.py` runs the shared examples in `spec/examples/` through both, so a change
here needs the same change there.

It is imported by the SDK's hot path and by the ingester for every event, so it must stay cheap:
standard library only (never jsonschema, pydantic, pandas, pyarrow …), no work at import time
beyond defining constants, and `validate()` is hand-written with a fast path for valid events.
"""
import math
import os
import random
import sys
import types
import uuid
from pathlib import Path
from typing import Any, Literal, Required, TypedDict

SCHEMA_VERSION = 1

REQUIRED_FIELDS: tuple[str, ...] = (
    "event_id", "schema", "workflow", "run_id", "service", "source", "kind", "target",
    "endpoint", "started_at", "latency_ms", "status", "request", "response",
)
OPTIONAL_FIELDS: tuple[str, ...] = (
    "span_id", "parent_id", "status_code", "error", "tags", "host", "pid", "sdk_version",
)

MAX_ID_CHARS = 128          # event_id, span_id, parent_id
MAX_NAME_CHARS = 256        # workflow, run_id, service, source, kind
MAX_TARGET_CHARS = 512
MAX_ENDPOINT_CHARS = 2048
MAX_TAGS = 64
MAX_TAG_KEY_CHARS = 128
MAX_TAG_VALUE_CHARS = 1024
# Integers land in the store's int64 columns; anything larger could not be written.
MAX_INT64 = 2**63 - 1
MAX_STATUS_CODE = 999
# How deep an event may nest: the event object itself is depth 1, and each object or array
# inside it adds one (`{"request": {"body": [1]}}` is depth 3). Serializers refuse deeper
# data at different depths (orjson at 254, others far lower or on the stack), so the limit
# sits well below all of them: an event that passes `validate()` can be written anywhere.
MAX_NESTING_DEPTH = 64
# The largest serialized event (UTF-8 JSON bytes) a transport carries: a spool line or a Redis
# entry. 4 MiB is the ingester's long-standing `--max-event-bytes` default; with bodies capped
# at 64 KiB by default an ordinary event is a few KiB, so the limit is only ever met by raised
# body caps or huge function arguments, which the SDK then shrinks to markers. It bounds what
# one event costs a batch in memory and an Arrow row, far below Redis's 512 MB bulk limit.
MAX_EVENT_BYTES = 4 * 1024 * 1024

STATUSES = ("ok", "error")
# A streamed response's chunk holds UTF-8 text ("text", the default) or base64 (spec/README.md).
CHUNK_ENCODINGS = ("text", "base64")

NAME_FIELDS: tuple[str, ...] = ("workflow", "run_id", "service", "source", "kind")


class ErrorInfo(TypedDict):
    """What an interaction raised: the exception's type name and its message."""

    type: str
    message: str


class TraceEvent(TypedDict, total=False):
    """One interaction with the outside world. Lengths count Unicode code points.

    Required (must be present; `response` may be null):
      event_id    1-128 chars, unique: the dedupe key (`new_event_id()`)
      schema      exactly 1 (`SCHEMA_VERSION`)
      workflow    1-256 chars, the logical group (TRACELAB_WORKFLOW_NAME)
      run_id      1-256 chars, one execution (TRACELAB_RUN_ID, else `new_run_id()` per init)
      service     1-256 chars, the emitting service: the lane in the timeline
      source      1-256 chars: "sdk-py", "sdk-ts", "proxy", "otlp", ...
      kind        1-256 chars: "http", "llm", "email", "sms", "function", "custom", ...
      target      1-512 chars, the external system: host[:port], "smtp:<host>", "aws:ses", ...
      endpoint    1-2048 chars, the operation: "POST /v1/charges" (no query), "SendEmail", ...
      started_at  integer epoch nanoseconds UTC, 0 <= n <= 2**63-1
      latency_ms  finite number >= 0 (int or float; never a bool)
      status      "ok" or "error"
      request     object: method, url, headers, body ... (redacted, bodies capped)
      response    object or null (null when no response arrived); a streamed response also
                  has `chunks` ([{"t": ms >= 0, "data": str, "encoding"?: "text"|"base64"}])
                  and `stream` ({"complete": bool, "error": ErrorInfo|null, "size": int >= 0,
                  "truncated": bool}); `stream` needs `chunks` (spec/README.md "Streams")

    Optional (absent, or for the nullable ones also null):
      span_id, parent_id  string or null, <= 128 chars (`new_span_id()`)
      status_code         integer 0-999 or null
      error               {"type": str, "message": str} or null
      tags                object of string -> string: <= 64 entries, keys 1-128 chars,
                          values <= 1024 chars
      host, sdk_version   string
      pid                 integer, 0 <= n <= 2**63-1

    Any other top-level field is allowed and kept by the store.

    Limits on the whole event: it nests at most `MAX_NESTING_DEPTH` (64) levels, the event
    object being level 1 and each object or array inside adding one (checked by `validate()`);
    serialized, it is at most `MAX_EVENT_BYTES` (4 MiB) of UTF-8 JSON, a transport limit (the
    SDK shrinks bodies to markers to stay under it; ingest and spool dead-letter larger ones).
    """

    event_id: Required[str]
    schema: Required[Literal[1]]
    workflow: Required[str]
    run_id: Required[str]
    service: Required[str]
    source: Required[str]
    kind: Required[str]
    target: Required[str]
    endpoint: Required[str]
    started_at: Required[int]
    latency_ms: Required[float]
    status: Required[Literal["ok", "error"]]
    request: Required[dict[str, Any]]
    response: Required[dict[str, Any] | None]
    span_id: str | None
    parent_id: str | None
    status_code: int | None
    error: ErrorInfo | None
    tags: dict[str, str]
    host: str
    pid: int
    sdk_version: str


class InvalidEvent(ValueError):
    """An event that breaks the contract; `.problems` lists what is wrong, one string each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid TraceEvent: " + "; ".join(self.problems))


# Ids need uniqueness, not secrecy: a per-process generator seeded from the OS (and re-seeded
# in a forked child, so parent and child never share a sequence). `os.urandom` on every event
# would be a syscall that releases the GIL on the traced program's hot path; each release
# wakes the SDK's sink thread only for the app to take the GIL straight back, a context switch
# per call that also starves the sink (measured: 0.98 switches a call, ~25 µs).
_ids = random.Random(os.urandom(32))


def _reseed_ids() -> None:
    _ids.seed(os.urandom(32))


os.register_at_fork(after_in_child=_reseed_ids)


def new_event_id() -> str:
    """A fresh event id: 32 lowercase hex characters (128 random bits)."""
    return "%032x" % _ids.getrandbits(128)


def new_span_id() -> str:
    """A fresh span id: 16 lowercase hex characters (64 random bits), as in W3C trace context."""
    return "%016x" % _ids.getrandbits(64)


def new_run_id() -> str:
    """A fresh run id: a random UUID4 string."""
    return str(uuid.uuid4())


def schema_path() -> Path:
    """Where `trace-event.schema.json` is: packaged next to this module, else the repo's `spec/`."""
    here = Path(__file__).resolve().parent
    candidates = (
        here / "spec" / "trace-event.schema.json",
        here.parent / "spec" / "trace-event.schema.json",
    )
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        "trace-event.schema.json not found (looked in "
        + ", ".join(str(c) for c in candidates) + ")"
    )


_INF = math.inf


def validate(obj: object) -> list[str]:
    """Return what is wrong with `obj` as a TraceEvent, one readable string per problem.

    An empty list means valid. Each string starts with the field it is about, e.g.
    ``"started_at: expected an integer (epoch nanoseconds), got str"``.
    """
    # Fast path: one chain of cheap checks that every valid event passes. It may reject a valid
    # oddity (a str subclass, say); `_problems` is the authority and decides then.
    if type(obj) is dict:
        get = obj.get
        if (
            type(v := get("event_id")) is str and 0 < len(v) <= MAX_ID_CHARS
            and type(v := get("schema")) is int and v == SCHEMA_VERSION
            and type(v := get("workflow")) is str and 0 < len(v) <= MAX_NAME_CHARS
            and type(v := get("run_id")) is str and 0 < len(v) <= MAX_NAME_CHARS
            and type(v := get("service")) is str and 0 < len(v) <= MAX_NAME_CHARS
            and type(v := get("source")) is str and 0 < len(v) <= MAX_NAME_CHARS
            and type(v := get("kind")) is str and 0 < len(v) <= MAX_NAME_CHARS
            and type(v := get("target")) is str and 0 < len(v) <= MAX_TARGET_CHARS
            and type(v := get("endpoint")) is str and 0 < len(v) <= MAX_ENDPOINT_CHARS
            and type(v := get("started_at")) is int and 0 <= v <= MAX_INT64
            and ((t := type(v := get("latency_ms"))) is float or t is int) and 0 <= v < _INF
            and ((v := get("status")) == "ok" or v == "error")
            and type(get("request")) is dict
            and ((t := type(v := get("response"))) is dict
                 and ("chunks" not in v and "stream" not in v or _stream_ok(v))
                 or (t is type(None) and "response" in obj))
            and ((v := get("span_id")) is None or (type(v) is str and len(v) <= MAX_ID_CHARS))
            and ((v := get("parent_id")) is None or (type(v) is str and len(v) <= MAX_ID_CHARS))
            and ((v := get("status_code")) is None
                 or (type(v) is int and 0 <= v <= MAX_STATUS_CODE))
            and ((v := get("error")) is None
                 or (type(v) is dict and type(v.get("type")) is str
                     and type(v.get("message")) is str))
            and ((v := get("tags", _ABSENT)) is _ABSENT or (type(v) is dict and _tags_ok(v)))
            and ((v := get("host", _ABSENT)) is _ABSENT or type(v) is str)
            and ((v := get("sdk_version", _ABSENT)) is _ABSENT or type(v) is str)
            and ((v := get("pid", _ABSENT)) is _ABSENT
                 or (type(v) is int and 0 <= v <= MAX_INT64))
            and _members_nest_within(obj, MAX_NESTING_DEPTH - 1)
        ):
            return []
    return _problems(obj)


def ensure_valid(obj: object) -> dict[str, Any]:
    """Return `obj` unchanged when it is a valid TraceEvent, else raise `InvalidEvent`."""
    problems = validate(obj)
    if problems:
        raise InvalidEvent(problems)
    return obj  # type: ignore[return-value]  # validate() proved it is a dict


_ABSENT: Any = object()
_SCALARS = frozenset((str, int, float, bool, type(None)))


_CONTRACT_FIELDS = frozenset(REQUIRED_FIELDS + OPTIONAL_FIELDS)


def _members_nest_within(event: dict[str, Any], depth: int) -> bool:
    """The fast path's depth check, `depth` levels below the event: only members that can nest
    are walked (`tags` is already known to be flat, the other contract fields scalars), and
    the members of `request` and `response` inline, which keeps it cheap for the ingester."""
    scalars = _SCALARS
    for field in ("request", "response"):
        value = event.get(field)
        if type(value) is dict:
            for member in value.values():
                if type(member) not in scalars and not nests_within(member, depth - 1):
                    return False
        elif not nests_within(value, depth):
            return False
    if not nests_within(event.get("error"), depth):
        return False
    if not _CONTRACT_FIELDS.issuperset(event):
        for field in event.keys() - _CONTRACT_FIELDS:
            if not nests_within(event[field], depth):
                return False
    return True


def nests_within(value: object, depth: int) -> bool:
    """True when `value` nests at most `depth` levels: an object or array counts one level
    plus its deepest member, anything else zero. Walks at most `depth` levels down, so it is
    safe on data of any depth (no recursion error), and it looks only at containers."""
    if type(value) in _SCALARS:
        return True
    if isinstance(value, dict):
        members: Any = value.values()
    elif isinstance(value, (list, tuple)):
        members = value
    else:
        return True
    if depth < 1:
        return False
    scalars = _SCALARS
    for member in members:
        if type(member) not in scalars and not nests_within(member, depth - 1):
            return False
    return True


def _stream_ok(response: dict[str, Any]) -> bool:
    """The fast path's check of a streamed response's `chunks` and `stream` (spec/README.md)."""
    chunks, stream = response.get("chunks"), response.get("stream", _ABSENT)
    if type(chunks) is not list:
        return False
    for chunk in chunks:
        if not (type(chunk) is dict and type(chunk.get("data")) is str
                and ((t := type(v := chunk.get("t"))) is float or t is int) and 0 <= v < _INF
                and ((e := chunk.get("encoding", _ABSENT)) is _ABSENT or e in CHUNK_ENCODINGS)):
            return False
    if stream is _ABSENT:
        return True
    if type(stream) is not dict:
        return False
    error = stream.get("error", _ABSENT)
    return (type(stream.get("complete")) is bool and type(stream.get("truncated")) is bool
            and type(v := stream.get("size")) is int and 0 <= v <= MAX_INT64
            and (error is None or (type(error) is dict and type(error.get("type")) is str
                                   and type(error.get("message")) is str)))


def _tags_ok(tags: dict[Any, Any]) -> bool:
    if len(tags) > MAX_TAGS:
        return False
    for key, value in tags.items():
        if not (type(key) is str and 0 < len(key) <= MAX_TAG_KEY_CHARS
                and type(value) is str and len(value) <= MAX_TAG_VALUE_CHARS):
            return False
    return True


# ---- the slow path: find every problem and say it clearly ------------------------------------

def _type_name(value: object) -> str:
    if value is None:
        return "null"
    return type(value).__name__


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _short(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "…")


def _check_string(problems: list[str], field: str, value: object, min_len: int,
                  max_len: int | None) -> None:
    if not isinstance(value, str):
        problems.append(f"{field}: expected a string, got {_type_name(value)}")
    elif len(value) < min_len:
        problems.append(f"{field}: must not be empty")
    elif max_len is not None and len(value) > max_len:
        problems.append(f"{field}: too long ({len(value)} chars, max {max_len})")


def _check_int(problems: list[str], field: str, value: object, what: str, low: int,
               high: int) -> None:
    if not _is_int(value):
        problems.append(f"{field}: expected {what}, got {_type_name(value)}")
    elif not low <= value <= high:  # type: ignore[operator]
        problems.append(f"{field}: out of range, must be {low}..{high}, got {value}")


def _check_tags(problems: list[str], tags: object) -> None:
    if not isinstance(tags, dict):
        problems.append(f"tags: expected an object of string -> string, got {_type_name(tags)}")
        return
    if len(tags) > MAX_TAGS:
        problems.append(f"tags: too many entries ({len(tags)}, max {MAX_TAGS})")
    for key, value in tags.items():
        if not isinstance(key, str):
            problems.append(f"tags: key {key!r} is not a string")
            continue
        where = f"tags[{_short(key)}]"
        if not key:
            problems.append("tags: a key must not be empty")
        elif len(key) > MAX_TAG_KEY_CHARS:
            problems.append(f"{where}: key too long ({len(key)} chars, max {MAX_TAG_KEY_CHARS})")
        if not isinstance(value, str):
            problems.append(f"{where}: expected a string value, got {_type_name(value)}")
        elif len(value) > MAX_TAG_VALUE_CHARS:
            problems.append(
                f"{where}: value too long ({len(value)} chars, max {MAX_TAG_VALUE_CHARS})")


def _check_error(problems: list[str], error: object) -> None:
    if not isinstance(error, dict):
        problems.append(
            f"error: expected an object {{type, message}} or null, got {_type_name(error)}")
        return
    for key in ("type", "message"):
        if key not in error:
            problems.append(f"error.{key}: required field is missing")
        elif not isinstance(error[key], str):
            problems.append(f"error.{key}: expected a string, got {_type_name(error[key])}")


def _check_stream(problems: list[str], response: dict[str, Any]) -> None:
    """`response.chunks` and `response.stream` (which needs `chunks`), each in its shape."""
    if "chunks" not in response:
        problems.append("response.chunks: required with response.stream (a streamed response)")
    chunks = response.get("chunks", [])
    if not isinstance(chunks, list):
        problems.append(f"response.chunks: expected an array, got {_type_name(chunks)}")
        chunks = []
    for i, chunk in enumerate(chunks):
        where = f"response.chunks[{i}]"
        if not isinstance(chunk, dict):
            problems.append(f"{where}: expected an object {{t, data}}, got {_type_name(chunk)}")
            continue
        t = chunk.get("t")
        if not isinstance(t, (int, float)) or isinstance(t, bool):
            problems.append(f"{where}.t: expected a number (ms since the request started), "
                            f"got {_type_name(t)}")
        elif not (math.isfinite(t) and t >= 0):
            problems.append(f"{where}.t: must be a finite number >= 0, got {t}")
        if not isinstance(chunk.get("data"), str):
            problems.append(f"{where}.data: expected a string, got {_type_name(chunk.get('data'))}")
        if "encoding" in chunk and chunk["encoding"] not in CHUNK_ENCODINGS:
            problems.append(f"{where}.encoding: expected 'text' or 'base64', "
                            f"got {chunk['encoding']!r}"[:200])
    if "stream" not in response:
        return
    stream = response["stream"]
    if not isinstance(stream, dict):
        problems.append(f"response.stream: expected an object, got {_type_name(stream)}")
        return
    for key in ("complete", "truncated"):
        if key not in stream:
            problems.append(f"response.stream.{key}: required field is missing")
        elif not isinstance(stream[key], bool):
            problems.append(f"response.stream.{key}: expected true or false, "
                            f"got {_type_name(stream[key])}")
    if "size" not in stream:
        problems.append("response.stream.size: required field is missing")
    else:
        _check_int(problems, "response.stream.size", stream["size"], "an integer (bytes)",
                   0, MAX_INT64)
    if "error" not in stream:
        problems.append("response.stream.error: required field is missing (null when none)")
    elif stream["error"] is not None:
        inner: list[str] = []
        _check_error(inner, stream["error"])
        problems.extend("response.stream." + problem for problem in inner)


def _problems(obj: object) -> list[str]:
    if not isinstance(obj, dict):
        return [f"event: expected a JSON object, got {_type_name(obj)}"]
    problems: list[str] = []
    missing = [field for field in REQUIRED_FIELDS if field not in obj]
    problems.extend(f"{field}: required field is missing" for field in missing)

    def present(field: str) -> bool:
        return field in obj

    if present("event_id"):
        _check_string(problems, "event_id", obj["event_id"], 1, MAX_ID_CHARS)
    if present("schema"):
        value = obj["schema"]
        if not _is_int(value):
            problems.append(f"schema: expected the integer {SCHEMA_VERSION}, "
                            f"got {_type_name(value)}")
        elif value != SCHEMA_VERSION:
            problems.append(f"schema: unsupported version {value}, expected {SCHEMA_VERSION}")
    for field in NAME_FIELDS:
        if present(field):
            _check_string(problems, field, obj[field], 1, MAX_NAME_CHARS)
    if present("target"):
        _check_string(problems, "target", obj["target"], 1, MAX_TARGET_CHARS)
    if present("endpoint"):
        _check_string(problems, "endpoint", obj["endpoint"], 1, MAX_ENDPOINT_CHARS)
    if present("started_at"):
        _check_int(problems, "started_at", obj["started_at"],
                   "an integer (epoch nanoseconds)", 0, MAX_INT64)
    if present("latency_ms"):
        value = obj["latency_ms"]
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            problems.append(f"latency_ms: expected a number (milliseconds), "
                            f"got {_type_name(value)}")
        elif not math.isfinite(value):
            problems.append(f"latency_ms: must be a finite number, got {value}")
        elif value < 0:
            problems.append(f"latency_ms: must be >= 0, got {value}")
    if present("status"):
        value = obj["status"]
        if not isinstance(value, str):
            problems.append(f"status: expected 'ok' or 'error', got {_type_name(value)}")
        elif value not in STATUSES:
            problems.append(f"status: expected 'ok' or 'error', got {_short(value)}")
    if present("request") and not isinstance(obj["request"], dict):
        problems.append(f"request: expected an object, got {_type_name(obj['request'])}")
    if present("response") and not (obj["response"] is None
                                     or isinstance(obj["response"], dict)):
        problems.append(f"response: expected an object or null, "
                        f"got {_type_name(obj['response'])}")
    elif present("response") and obj["response"] is not None and \
            ("chunks" in obj["response"] or "stream" in obj["response"]):
        _check_stream(problems, obj["response"])

    for field in ("span_id", "parent_id"):
        value = obj.get(field)
        if value is not None:
            _check_string(problems, field, value, 0, MAX_ID_CHARS)
    if obj.get("status_code") is not None:
        _check_int(problems, "status_code", obj["status_code"], "an integer or null",
                   0, MAX_STATUS_CODE)
    if obj.get("error") is not None:
        _check_error(problems, obj["error"])
    if present("tags"):
        _check_tags(problems, obj["tags"])
    for field in ("host", "sdk_version"):
        if present(field):
            _check_string(problems, field, obj[field], 0, None)
    if present("pid"):
        _check_int(problems, "pid", obj["pid"], "an integer", 0, MAX_INT64)
    if not nests_within(obj, MAX_NESTING_DEPTH):
        problems.append(f"event: nested deeper than {MAX_NESTING_DEPTH} levels (the event "
                        "object is level 1, each object or array inside adds one)")
    return problems


class _EventsModule(types.ModuleType):
    """This module, callable: `tl.events(workflow, ...)` is the notebook's events query.

    `tl.events` names both the contract (this module, bound on the package by `import
    tracelab`, whose SDK imports it) and the query users expect beside `tl.executions`;
    calling the module runs `tracelab.store.query.events`, so `tl.events("wf")` and
    `from tracelab.events import validate` both work. The query is imported on the call,
    keeping pandas and pyarrow off the SDK's import path.
    """

    def __call__(self, workflow: str, *args: Any, **kwargs: Any) -> Any:
        from tracelab.store.query import events as query_events

        return query_events(workflow, *args, **kwargs)


if __name__ in sys.modules:  # not when loaded from its file alone (a spec, no import)
    sys.modules[__name__].__class__ = _EventsModule
