"""The per-process replay report: one JSON line appended to TRACELAB_REPLAY_REPORT at exit.

`tracelab replay` sums the lines of every process it started (sdk-py, sdk-ts, the proxy):
`{"source": "sdk-py", "pid": n, "hits": [recorded event_id, ...], "misses": [{"call",
"message"}], "passthrough": ["call", ...]}`. Each process writes exactly one line, at
exit, so the sum never counts a call twice; the line is written with one `write()` on an
O_APPEND descriptor, so concurrent processes never interleave their lines.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson

_written: set[int] = set()


def append_line(path: str | Path, line: dict[str, Any]) -> None:
    """Append `line` as one JSON line, atomically with respect to other appenders."""
    data = orjson.dumps(line) + b"\n"
    fd = os.open(str(path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def write_at_exit(session: Any) -> None:
    """The session's line, once per process (atexit); never raises during interpreter exit."""
    path = os.environ.get("TRACELAB_REPLAY_REPORT")
    if not path or os.getpid() in _written:
        return
    _written.add(os.getpid())
    try:
        append_line(path, session.report("sdk-py"))
    except Exception:
        pass
