"""Keeping an SDK event inside the contract's whole-event limits without dropping it.

An event over `MAX_EVENT_BYTES` serialized (a raised body cap, huge function arguments) or one
that cannot be serialized at all (nested deeper than orjson's 254 levels, say) would be
dead-lettered by the ingester or the spool fold, or dropped here. Instead its bulky parts are
replaced by the contract's `$tracelab` markers (spec/README.md, "Bodies"), biggest first,
until it fits: the interaction is still recorded, with its metadata, timing and status, and
the marker says how big the part was. This runs only for such events, never on the fast path.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tracelab.events import (MAX_EVENT_BYTES, MAX_NESTING_DEPTH, OPTIONAL_FIELDS,
                             REQUIRED_FIELDS, nests_within)
from tracelab.config import normalize_tags
from tracelab.sdk.payloads import not_captured, truncated

PREVIEW_CHARS = 1024       # what a shrunk part keeps of its JSON text
MAX_ERROR_CHARS = 16 * 1024
_CONTRACT = frozenset(REQUIRED_FIELDS + OPTIONAL_FIELDS)

Dumps = Callable[[Any], bytes]


def fit_event(event: dict[str, Any], dumps: Dumps) -> tuple[dict[str, Any], bytes] | None:
    """A shallow copy of `event` shrunk until `dumps` of it fits `MAX_EVENT_BYTES`, with its
    JSON; None only if even the bare event (every part a marker) does not fit."""
    out = dict(event)
    if isinstance(out.get("tags"), dict):
        out["tags"] = normalize_tags(out["tags"], origin="tags", strict=False)
    error = out.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str) \
            and len(error["message"]) > MAX_ERROR_CHARS:
        out["error"] = {**error, "message": error["message"][:MAX_ERROR_CHARS]}
    # Parts that may be shrunk: each member of request and response, and any extra field.
    parts: list[tuple[dict[str, Any], str, int, bytes | None]] = []
    for field in ("request", "response"):
        value = out.get(field)
        if isinstance(value, dict):
            copy = out[field] = dict(value)
            parts.extend((copy, key, 3, None) for key in copy)
    parts.extend((out, key, 2, None) for key in out if key not in _CONTRACT)
    sized = []
    for holder, key, level, _ in parts:
        value = holder[key]
        text = _try_dumps(value, dumps)
        if text is None or not nests_within(value, MAX_NESTING_DEPTH - level + 1):
            holder[key] = not_captured(_why_not(text))
        else:
            sized.append((len(text), holder, key, text))
    payload = _try_dumps(out, dumps)
    sized.sort(key=lambda item: item[0], reverse=True)
    for size, holder, key, text in sized:
        if payload is not None and len(payload) <= MAX_EVENT_BYTES:
            break
        holder[key] = _preview(size, text)
        payload = _try_dumps(out, dumps)
    if payload is None or len(payload) > MAX_EVENT_BYTES:
        for field in ("request", "response"):
            if out.get(field) is not None:
                out[field] = {"body": not_captured("event over MAX_EVENT_BYTES")}
        payload = _try_dumps(out, dumps)
    if payload is None or len(payload) > MAX_EVENT_BYTES:
        return None
    return out, payload


def _try_dumps(value: Any, dumps: Dumps) -> bytes | None:
    try:
        return dumps(value)
    except Exception:
        return None


def _why_not(text: bytes | None) -> str:
    if text is None:
        return "could not be serialized (nested too deep, or an unserializable value)"
    return f"nested deeper than the contract's {MAX_NESTING_DEPTH} levels"


def _preview(size: int, text: bytes) -> dict[str, Any]:
    """A truncated marker holding the start of the part's JSON text."""
    head = text[: PREVIEW_CHARS * 4].decode("utf-8", errors="ignore")[:PREVIEW_CHARS]
    return truncated(size, "text", head)
