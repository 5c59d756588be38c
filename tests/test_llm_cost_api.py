"""The API reads the same query layer: executions and execution summaries carry LLM tokens and
cost, events their cost and its source (a real uvicorn on loopback)."""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import free_port
from event_factory import make_event
from test_llm_cost import A_CALL, AS_OF, llm_event
from tracelab.store.writer import StoreWriter


@pytest.fixture
def api(tracelab_home: Path, monkeypatch) -> Iterator[httpx.Client]:
    import uvicorn

    from tracelab.server.app import create_app

    StoreWriter().write([llm_event("run-a", 0, "gpt-4o-2024-08-06", 1000, 200, cached=400),
                         make_event("agent", "run-a", seq=1),
                         llm_event("run-a", 2, "gpt-4o-2024-08-06", 1000, 200, cached=400),
                         llm_event("run-b", 3, "house-llama", 50, 5)])
    monkeypatch.delenv("TRACELAB_API_TOKEN", raising=False)
    app = create_app(str(tracelab_home / "store"), poll_interval=0.1)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on",
                                           timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_executions_and_events_carry_llm_tokens_and_cost(api) -> None:
    runs = {r["run_id"]: r for r in api.get("/api/workflows/agent/executions").json()[
        "executions"]}
    assert runs["run-a"]["llm_tokens"] == 2400
    assert runs["run-a"]["llm_cost_usd"] == pytest.approx(2 * A_CALL)
    assert runs["run-b"]["llm_tokens"] == 55 and runs["run-b"]["llm_cost_usd"] is None
    body = api.get("/api/executions/run-a").json()
    assert body["execution"]["llm_tokens"] == 2400
    assert body["execution"]["llm_cost_usd"] == pytest.approx(2 * A_CALL)
    costs = [(e["llm_cost_usd"], e["llm_cost_source"]) for e in body["events"]]
    assert costs[1] == (None, None)
    assert costs[0][0] == pytest.approx(A_CALL) and costs[0][1] == f"table:{AS_OF}"
    columns = api.get("/api/executions/run-a", params={"shape": "columns"}).json()["events"]
    assert columns["llm_cost_usd"][0] == pytest.approx(A_CALL) and columns["llm_cost_usd"][1] \
        is None
    assert api.get("/api/executions/run-b").json()["execution"]["llm_cost_usd"] is None
