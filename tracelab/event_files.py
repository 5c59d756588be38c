"""Reading files of TraceEvents as the ingester parses them: one event, a JSON array of
events, or JSON Lines (a spool file, a recording).

One reader for `tracelab validate`, recordings (`tracelab.replay.recording`) and `tracelab
import`, so a file one of them accepts the others accept too, with the same messages. Parsing is
orjson's (what the ingester and the spool fold use): `NaN`, `Infinity`, lone surrogates and a
byte order mark are not JSON.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

from tracelab.events import MAX_EVENT_BYTES


def _json_error(data: bytes, exc: Any) -> str:
    """orjson's complaint, said so a person sees what to fix."""
    msg, pos = exc.msg, exc.pos
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as bad:
        return f"not valid JSON: the bytes are not UTF-8 (byte {bad.start + 1})"
    for word in ("NaN", "Infinity"):
        if data.startswith(word.encode(), pos):
            sign = data[pos - 1:pos].decode() if pos and data[pos - 1:pos] in b"+-" else ""
            return f"not valid JSON: {sign}{word} is not a JSON number (column {exc.colno})"
    if "surrogate" in msg:
        return (f"not valid JSON: a lone surrogate escape is not Unicode text ({msg}, "
                f"column {exc.colno})")
    return f"not valid JSON: {msg} (column {exc.colno})"


def read_events(data: bytes) -> Iterator[tuple[str, object, str | None, int | None]]:
    """Yield (where, parsed value, parse problem, size in bytes) for each event in a file.

    `where` is the line number (JSON Lines, a single event) or `[index]` (a JSON array); for a
    broken document, the line where the parser stopped. The size is the line's length when the
    event stood on a line of its own, else None (`size_problems` serializes it then).
    """
    try:
        whole = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        whole_error = exc
    else:
        if isinstance(whole, list):
            for index, item in enumerate(whole):
                yield f"[{index}]", item, None, None
        else:
            yield "1", whole, None, None
        return
    lines = data.split(b"\n")
    if not any(line.strip() for line in lines):
        return  # empty or only whitespace: no events
    first = next(line.strip() for line in lines if line.strip())
    if not (whole_error.msg == "unexpected content after document"
            or (not first.startswith(b"[")
                and ((first.startswith(b"{") and first.endswith(b"}"))
                     or any(_is_json_object(line) for line in lines)))):
        # No line is an event on its own: this is one (broken) JSON document, so report it
        # once, where the parser stopped, rather than once per line.
        yield str(whole_error.lineno), None, _json_error(data, whole_error), None
        return
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield str(number), orjson.loads(line), None, len(line.rstrip(b"\r"))
        except orjson.JSONDecodeError as exc:
            yield str(number), None, _json_error(line, exc), None


def _is_json_object(line: bytes) -> bool:
    try:
        return isinstance(orjson.loads(line), dict)
    except orjson.JSONDecodeError:
        return False


def size_problems(value: object, size: int | None) -> list[str]:
    """The size limit's problem, if `value` (`size` bytes of JSON, None: unknown) is over it."""
    if size is None:
        try:
            size = len(orjson.dumps(value))
        except (TypeError, orjson.JSONEncodeError):
            return []  # too deep to serialize: validate() reports the nesting
    if size > MAX_EVENT_BYTES:
        return [f"event: {size} bytes of JSON, over the limit of {MAX_EVENT_BYTES} "
                "(MAX_EVENT_BYTES): the ingester and the spool dead-letter it"]
    return []
