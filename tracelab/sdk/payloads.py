"""Turning bodies and arbitrary Python values into JSON-safe, redacted, size-capped payloads.

The shapes (plain JSON, text, and the `$tracelab` markers for binary, truncated and
not-captured bodies) are the contract in spec/README.md, shared with the TypeScript SDK and
the proxy. Redaction always happens before truncation, so a cut never exposes a secret: an
over-cap JSON body is parsed, redacted, serialised compactly and then cut; an over-cap text is
redacted, cut, and what the cut left half-visible at the end is redacted too (`Redactor.cut`).
"""
from __future__ import annotations

import base64
import datetime as _dt
import enum
import reprlib
import uuid
from collections.abc import Mapping
from typing import Any

import orjson

from tracelab.events import MAX_NESTING_DEPTH, nests_within
from tracelab.sdk.redaction import Redactor, may_hold_shapes, redact_shapes

_JSON_START = frozenset(b"{[")
_WHITESPACE = b" \t\r\n"
_MAX_VALUE_DEPTH = 12
_WALK_ALWAYS_BRACKETS = 200  # Redactor.value's depth limit
_MAX_ITEMS = 200
# How deep a body may nest: the event is level 1, `request`/`response` level 2, so a body has
# `MAX_NESTING_DEPTH - 2` levels; two more are left for producers that wrap bodies (the
# proxy's WebSocket messages). Deeper parts become markers, or every validator downstream
# (ingester, spool fold) would dead-letter the whole event.
BODY_MAX_DEPTH = MAX_NESTING_DEPTH - 4
_DEEPER_THAN_BODY_MAX = b"\n" + b"  " * BODY_MAX_DEPTH
# An over-cap JSON body up to this size is parsed, redacted, then cut; a larger one is cut as
# text (parsing megabytes for a 64 KiB excerpt would cost the traced call too much).
_PARSE_OVER_CAP_BYTES = 4 * 1024 * 1024
# Text past the cap that is redacted with the kept part, so a value straddling the cap
# is matched whole before the cut.
_MARGIN = 4096
_repr = reprlib.Repr()
_repr.maxstring = 1000
_repr.maxother = 1000
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 50


def not_captured(reason: str) -> dict[str, Any]:
    return {"$tracelab": "not_captured", "reason": reason}


def binary(data: bytes) -> dict[str, Any]:
    return {"$tracelab": "binary", "size": len(data),
            "base64": base64.b64encode(data).decode("ascii")}


def truncated(size: int, encoding: str, data: str) -> dict[str, Any]:
    return {"$tracelab": "truncated", "size": size, "encoding": encoding, "data": data}


def _utf8_prefix(raw: bytes, cap: int) -> str | None:
    """The first `cap` bytes as text, or None when the bytes are not UTF-8 (binary)."""
    head = raw[:cap]
    try:
        return head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start >= len(head) - 3 and exc.reason == "unexpected end of data":
            return head[: exc.start].decode("utf-8", errors="strict")
        return None


def encode_body(data: Any, content_type: str | None, redactor: Redactor, cap: int,
                found: set[str] | None = None) -> Any:
    """A body as the contract stores it: JSON value, text, or a `$tracelab` marker."""
    if data is None:
        return None
    if isinstance(data, str):
        raw = data.encode("utf-8", errors="surrogatepass")
    elif isinstance(data, (bytes, bytearray, memoryview)):
        raw = bytes(data)
    else:
        return not_captured(f"body is a {type(data).__name__} (stream or file), not read on the "
                            "caller's behalf")
    size = len(raw)
    if size == 0:
        return None
    ctype = (content_type or "").lower()
    first = raw.lstrip(_WHITESPACE)[:1]
    if (size <= cap or size <= _PARSE_OVER_CAP_BYTES) and \
            ("json" in ctype or (first and first[0] in _JSON_START)):
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
        else:
            brackets = raw.count(b"[") + raw.count(b"{")
            parsed = _redact_json(_within_depth(parsed, brackets), raw, brackets, redactor,
                                  found)
            if size <= cap:
                return parsed
            return _cut_json(parsed, size, redactor, cap, found) or \
                truncated(size, "text", redactor.cut(_head(raw, cap) or "", found))
    if size > cap:
        if _utf8_prefix(raw, cap) is None:
            return truncated(size, "base64", base64.b64encode(raw[:cap]).decode("ascii"))
        # Redact before cutting: a value straddling the cap is matched whole (the margin),
        # and `cut` catches one cut off at the margin's end.
        return truncated(size, "text", _cut_text(redactor.text(_head(raw, cap + _MARGIN), found),
                                                 redactor, cap, found))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return binary(raw)
    if "x-www-form-urlencoded" in ctype:
        return redactor.form(text, found)
    return redactor.text(text, found)


def _redact_json(parsed: Any, raw: bytes, brackets: int, redactor: Redactor,
                 found: set[str] | None) -> Any:
    """A parsed JSON body (fitted by `_within_depth`) with secret names and secret-shaped
    strings redacted; `brackets`: how many `[` and `{` its text holds."""
    # The name pre-check (~10 scans of the bytes) costs more than walking a body of a few
    # dozen containers, whatever its size (an LLM answer is long text in few containers), so
    # those are walked directly. The walk changes nothing the pre-check would have let through
    # unless a body nests deeper than the walk's limit, which needs more brackets than
    # `_WALK_ALWAYS_BRACKETS`.
    if b"\\u" in raw:
        # An escape can hide a name or a shape from a search of the bytes: search orjson's
        # output instead, which escapes only quotes, backslashes and control characters
        # (JSON from Python's json module escapes every non-ASCII character). Within
        # `BODY_MAX_DEPTH` (`_within_depth`), well inside orjson's own nesting limit.
        raw = orjson.dumps(parsed)
    if brackets <= _WALK_ALWAYS_BRACKETS or \
            redactor.may_hold_secrets(raw):
        parsed = redactor.value(parsed, found)
    if may_hold_shapes(raw):
        parsed = redactor.shapes_in(parsed, found)
    return parsed


def _within_depth(parsed: Any, brackets: int) -> Any:
    """`parsed` with whatever nests deeper than `BODY_MAX_DEPTH` replaced by a marker.

    Cheap for ordinary bodies: a body with fewer brackets than the limit cannot be too deep,
    and for the rest orjson's indented output (C speed) shows the depth: a line indented by
    `2 * BODY_MAX_DEPTH` spaces exists only under a non-empty container that deep.
    """
    if brackets <= BODY_MAX_DEPTH:
        return parsed
    try:
        indented = orjson.dumps(parsed, option=orjson.OPT_INDENT_2)
    except orjson.JSONEncodeError:  # deeper than orjson's own limit (254)
        return _limit_depth(parsed, BODY_MAX_DEPTH)
    if _DEEPER_THAN_BODY_MAX not in indented:
        return parsed
    return _limit_depth(parsed, BODY_MAX_DEPTH)


def _limit_depth(value: Any, room: int) -> Any:
    """`value` fitted into `room` levels; a container that does not fit becomes a marker."""
    if not isinstance(value, (dict, list)):
        return value
    if room <= 1:
        if nests_within(value, 1):
            return value
        return not_captured(f"nested deeper than {BODY_MAX_DEPTH} levels (the contract allows "
                            f"{MAX_NESTING_DEPTH} for the whole event)")
    if isinstance(value, dict):
        return {key: _limit_depth(member, room - 1) for key, member in value.items()}
    return [_limit_depth(member, room - 1) for member in value]


def _head(raw: bytes, limit: int) -> str | None:
    """The first `limit` bytes as text (a partial character at the end dropped)."""
    head = _utf8_prefix(raw, limit)
    return head if head is not None else raw[:limit].decode("utf-8", errors="ignore")


def _cut_text(text: str, redactor: Redactor, cap: int, found: set[str] | None) -> str:
    """Redacted `text` cut to `cap` UTF-8 bytes, with what the cut left half-visible redacted."""
    data = redactor.cut(_utf8_prefix(text.encode("utf-8", errors="surrogatepass"), cap) or "",
                        found)
    encoded = data.encode("utf-8", errors="surrogatepass")
    return data if len(encoded) <= cap else (_utf8_prefix(encoded, cap) or "")


def _cut_json(parsed: Any, size: int, redactor: Redactor, cap: int,
              found: set[str] | None) -> dict[str, Any] | None:
    """An over-cap JSON body, already redacted, serialised compactly and cut (spec/redaction)."""
    try:
        compact = orjson.dumps(parsed)
    except (TypeError, orjson.JSONEncodeError):
        return None
    return truncated(size, "text", _cut_text(compact.decode("utf-8"), redactor, cap, found))


def to_jsonable(value: Any, redactor: Redactor, cap: int, depth: int = 0) -> Any:
    """Any Python value as JSON-safe data: containers kept, secrets redacted by key, the rest repr'd.

    Used for function arguments and return values, hook payloads and AWS parameters, where
    the values are the caller's own objects: never mutated, never asked for more than a repr.
    """
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        if len(value) > cap:
            return truncated(len(value.encode("utf-8", errors="surrogatepass")), "text",
                             _cut_text(redactor.text(value[:cap + _MARGIN]), redactor, cap, None))
        return redact_shapes(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return encode_body(value, None, redactor, cap)
    if depth >= _MAX_VALUE_DEPTH:
        return _safe_repr(value)
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for i, (key, member) in enumerate(value.items()):
            if i >= _MAX_ITEMS:
                out["$tracelab.more"] = f"{len(value) - _MAX_ITEMS} more items"
                break
            key = key if isinstance(key, str) else str(key)
            out[key] = "[REDACTED]" if redactor.is_secret(key) and member is not None else \
                to_jsonable(member, redactor, cap, depth + 1)
        return out
    if isinstance(value, (list, tuple, set, frozenset)):
        items = list(value)[:_MAX_ITEMS]
        return [to_jsonable(v, redactor, cap, depth + 1) for v in items]
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, (uuid.UUID, enum.Enum)):
        return str(value.value if isinstance(value, enum.Enum) else value)
    return _safe_repr(value)


def _safe_repr(value: Any) -> str:
    try:
        return _repr.repr(value)
    except Exception as exc:  # a user's __repr__ may raise; the trace must not
        return f"<{type(value).__name__} (repr failed: {type(exc).__name__})>"
