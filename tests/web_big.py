"""A 100,000-step agent run for the web UI's big-run test, built fast (no per-event payload
beyond a small request) and written through the real `StoreWriter`."""
from __future__ import annotations

import os
from typing import Any

from event_factory import BASE_NS

WORKFLOW = "research-agent"
# One task: a span, then its calls in order (kind, service, target, endpoint, ms).
TASK = [("llm", "planner", "api.openai.com", "POST /v1/chat/completions", 900.0),
        ("http", "tools", "api.search.dev", "GET /search", 120.0),
        ("http", "tools", "en.wikipedia.org", "GET /wiki", 80.0),
        ("function", "tools", "agent", "parse_page", 15.0),
        ("llm", "planner", "api.anthropic.com", "POST /v1/messages", 700.0)]


def big_run(run_id: str, steps: int, *, t0: int = BASE_NS) -> list[dict[str, Any]]:
    """`steps` events: tasks of one `task` span over repeated tool and LLM calls, every 97th
    call failing; the tasks run back to back."""
    per_task = 50
    events: list[dict[str, Any]] = []
    at = t0
    ids = os.urandom(8 * steps).hex()
    for n in range(steps):
        event_id = ids[16 * n:16 * n + 16] + f"{n:016x}"
        if n % per_task == 0:
            span = event_id[:16]
            task_at = at
            kind, service, target, endpoint, ms = ("function", "agent", "agent", "task",
                                                   0.0)
            parent, span_id = None, span
        else:
            kind, service, target, endpoint, ms = TASK[n % len(TASK)]
            parent, span_id = span, None
        status = "error" if n % 97 == 0 and parent else "ok"
        event: dict[str, Any] = {
            "event_id": event_id, "schema": 1, "workflow": WORKFLOW, "run_id": run_id,
            "service": service, "source": "sdk-py", "kind": kind, "target": target,
            "endpoint": endpoint, "started_at": at, "latency_ms": ms, "status": status,
            "status_code": (500 if status == "error" else 200) if kind != "function" else None,
            "request": {"n": n}, "response": {}, "span_id": span_id, "parent_id": parent,
            "tags": {"env": "bench"}, "host": "box", "pid": 4242, "sdk_version": "0.1.0"}
        if status == "error":
            event["error"] = {"type": "HTTPError", "message": "500 Server Error"}
        events.append(event)
        at += int(ms * 1e6) + 2_000_000
        if n % per_task == per_task - 1:  # the task span covers its calls
            events[n - per_task + 1]["latency_ms"] = (at - task_at) / 1e6
    return events
