"""The per-process replay report: one JSON line appended to TRACELAB_REPLAY_REPORT at exit.

`tracelab replay` sums the lines of every process it started (sdk-py, sdk-ts, the proxy):
`{"source": "sdk-py", "pid": n, "hits": [recorded event_id, ...], "misses": [{"call",
"message"}], "passthrough": ["call", ...], "faulted": n, "calls": [call_summary, ...]}`
(`faulted`: calls a fault rule answered, neither hits nor misses; `calls`: the call log below,
by `t`). Each process writes exactly one line, at
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


# -- the call log: what the run did, for the resilience report and `tracelab check` -----------
#
# Each replaying process keeps one summary per event it recorded during the replay and puts the
# list in its report line under "calls"; `tracelab replay` merges the lines' lists by `t`. The
# summaries hold no payloads (a report line stays small and holds nothing secret), only what
# the resilience report and the expectations of a spec look at.

CALL_FIELDS = ("t", "latency_ms", "kind", "target", "endpoint", "status", "status_code",
               "error_type", "replay", "fault", "fault_action", "retry_after_s",
               "llm_model", "llm_input_tokens", "llm_output_tokens", "source")


def call_summary(event: dict[str, Any]) -> dict[str, Any]:
    """The call-log entry of one recorded event (see CALL_FIELDS); never raises.

    `t`: the start in epoch milliseconds; `replay`: hit | miss | passthrough | fault (None
    outside a replay); `fault`/`fault_action`: the id and action of the fault rule applied to
    the call; `retry_after_s`: the response's `Retry-After` in seconds when it has one.
    """
    tags = event.get("tags") if isinstance(event.get("tags"), dict) else {}
    error = event.get("error") if isinstance(event.get("error"), dict) else {}
    response = event.get("response") if isinstance(event.get("response"), dict) else {}
    started = event.get("started_at")
    return {
        "t": started / 1e6 if isinstance(started, int) else None,
        "latency_ms": _number(event.get("latency_ms")),
        "kind": event.get("kind"),
        "target": event.get("target"),
        "endpoint": event.get("endpoint"),
        "status": event.get("status"),
        "status_code": event.get("status_code"),
        "error_type": error.get("type"),
        "replay": tags.get("replay"),
        "fault": tags.get("fault"),
        "fault_action": tags.get("fault.action"),
        "retry_after_s": retry_after_seconds(response.get("headers")),
        "llm_model": tags.get("llm.model"),
        "llm_input_tokens": _int(tags.get("llm.input_tokens")),
        "llm_output_tokens": _int(tags.get("llm.output_tokens")),
        "source": event.get("source"),
    }


def retry_after_seconds(headers: Any) -> float | None:
    """`Retry-After` as seconds (a delay in seconds; an HTTP date counts from now)."""
    if not isinstance(headers, dict):
        return None
    value = next((v for k, v in headers.items() if str(k).lower() == "retry-after"), None)
    if isinstance(value, list):
        value = value[0] if value else None
    if value is None:
        return None
    try:
        return max(0.0, float(str(value).strip()))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime
    import time

    try:
        return max(0.0, parsedate_to_datetime(str(value)).timestamp() - time.time())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else None


def _int(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None
