"""Contract-valid TraceEvents for store, query and ingest tests, built without the SDK."""
from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import orjson

DAY_NS = 86_400 * 1_000_000_000
# 2024-05-01T00:00:00Z: a fixed day so partitions are predictable.
BASE_NS = 1_714_521_600 * 1_000_000_000


def make_event(workflow: str = "checkout", run_id: str = "run-1", *, seq: int = 0,
               started_at: int | None = None, status: str = "ok", service: str = "api",
               target: str = "api.stripe.com", tags: dict[str, str] | None = None,
               body_bytes: int = 0, **extra: Any) -> dict[str, Any]:
    """One valid HTTP event; `extra` keyword fields are added as-is (outside the contract)."""
    event: dict[str, Any] = {
        "event_id": os.urandom(16).hex(),
        "schema": 1,
        "workflow": workflow,
        "run_id": run_id,
        "service": service,
        "source": "sdk-py",
        "kind": "http",
        "target": target,
        "endpoint": "POST /v1/charges",
        "started_at": BASE_NS + seq * 1_000_000 if started_at is None else started_at,
        "latency_ms": 12.5,
        "status": status,
        "status_code": 500 if status == "error" else 200,
        "request": {"method": "POST", "url": f"https://{target}/v1/charges",
                    "headers": {"Content-Type": "application/json"},
                    "body": {"amount": 100 + seq, "pad": "x" * body_bytes}},
        "response": {"status_code": 500 if status == "error" else 200, "headers": {},
                     "body": {"id": f"ch_{seq}"}},
        "span_id": os.urandom(8).hex(),
        "parent_id": None,
        "tags": tags if tags is not None else {"env": "test"},
        "host": "box", "pid": 4242, "sdk_version": "0.1.0",
    }
    if status == "error":
        event["error"] = {"type": "HTTPError", "message": "500 Server Error"}
    event.update(extra)
    return event


def make_runs(workflows: int = 1, runs: int = 10, events_per_run: int = 10, *,
              body_bytes: int = 0, days: int = 1, error_every: int = 0) -> list[dict[str, Any]]:
    """Events for `runs` runs per workflow, each run's events spread over `days` UTC days."""
    out = []
    for w in range(workflows):
        for r in range(runs):
            for i in range(events_per_run):
                day = (i * days) // events_per_run
                status = "error" if error_every and (r * events_per_run + i) % error_every == 0 \
                    else "ok"
                out.append(make_event(
                    f"wf-{w}", f"wf{w}-run-{r:04d}", seq=r * 1000 + i, status=status,
                    started_at=BASE_NS + day * DAY_NS + r * 10_000_000 + i * 1_000_000,
                    service=f"svc-{i % 3}", body_bytes=body_bytes,
                    tags={"env": "prod" if r % 2 else "dev", "team": f"t{w}"}))
    return out


def publish(client: Any, events: list[dict[str, Any]], stream: str = "trace.events",
            chunk: int = 1000) -> None:
    """XADD each event with field `event`, pipelined like a real publisher."""
    for start in range(0, len(events), chunk):
        pipe = client.pipeline(transaction=False)
        for event in events[start:start + chunk]:
            pipe.xadd(stream, {"event": orjson.dumps(event)})
        pipe.execute()


def spool_lines(events: list[dict[str, Any]]) -> Iterator[bytes]:
    for event in events:
        yield orjson.dumps(event) + b"\n"


def read_store_raw(store_root: Any) -> Any:
    """The events table read straight with pyarrow (hive partitions), not through TraceLab."""
    from pathlib import Path

    import pyarrow.dataset as ds

    root = Path(store_root) / "events"
    if not any(not p.name.startswith(".") for p in root.rglob("*.parquet")):
        import pyarrow as pa
        return pa.table({"event_id": pa.array([], pa.string()),
                         "workflow": pa.array([], pa.string()),
                         "run_id": pa.array([], pa.string())})
    for attempt in range(5):  # a concurrent merge may remove a file between listing and read
        try:
            return ds.dataset(str(root), format="parquet", partitioning="hive").to_table(
                columns=["event_id", "workflow", "run_id", "status"])
        except FileNotFoundError:
            if attempt == 4:
                raise
    raise AssertionError("unreachable")
