"""`GET /api/executions/{a}/compare/{b}` on a real `tracelab serve` (a subprocess on loopback)."""
from __future__ import annotations

from pathlib import Path

import httpx

from api_serve import Serve
from test_compare import runs_a_b
from tracelab.store.layout import resolve_layout
from tracelab.store.writer import StoreWriter


def test_the_route_serves_the_same_alignment_as_tl_compare(tmp_path: Path) -> None:
    home = tmp_path / "home"
    a, b = runs_a_b()
    StoreWriter(resolve_layout(str(home / "store"))).write(a + b)
    with Serve(home) as server:
        answer = httpx.get(f"{server.url}/api/executions/run-a/compare/run-b", timeout=30)
        missing = httpx.get(f"{server.url}/api/executions/run-a/compare/no-such-run",
                            timeout=30)
        schema = httpx.get(f"{server.url}/openapi.json", timeout=30).json()
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert [row["change"] for row in body["rows"]] == ["same", "same", "changed", "only_a",
                                                       "only_b", "same"]
    assert body["summary"]["changed"] == 1 and body["summary"]["only_b"] == 1
    changed = body["rows"][2]
    assert (changed["a_event_id"], changed["b_event_id"]) == (a[2]["event_id"],
                                                              b[2]["event_id"])
    assert (changed["status_code_a"], changed["status_code_b"]) == (200, 500)
    assert body["rows"][3]["b_event_id"] is None and body["rows"][3]["duration_delta"] is None
    assert body["rows"][1]["tokens_delta"] == 70.0
    assert missing.status_code == 404
    assert missing.json() == {"detail": "unknown run_id 'no-such-run'"}
    route = schema["paths"]["/api/executions/{a}/compare/{b}"]["get"]
    assert "CompareResult" in str(route["responses"]["200"])
