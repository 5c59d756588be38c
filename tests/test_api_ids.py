"""Ids with `/`, `%`, spaces and non-ASCII reach their workflow, execution, event and diff.

Real HTTP against `tracelab serve` (uvicorn decodes `%2F` before routing, which TestClient
would not show), ids percent-encoded the way the web UI's `encodeURIComponent` does.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from api_serve import ODD_RUNS, SDK_RUN, SDK_WORKFLOW, Serve, seed_store


def enc(value: str) -> str:
    """`encodeURIComponent`: everything but unreserved characters escaped, `/` included."""
    return quote(value, safe="-_.!~*'()")


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("api-ids") / "home"
    seed_store(home)
    return home


@pytest.fixture(scope="module")
def api(home) -> Iterator[httpx.Client]:
    with Serve(home) as server, httpx.Client(base_url=server.url, timeout=20) as client:
        yield client


ALL_RUNS = {**ODD_RUNS, SDK_WORKFLOW: [SDK_RUN]}


def test_every_workflow_name_is_listed_as_written(api):
    names = {w["workflow"] for w in api.get("/api/workflows").json()["workflows"]}
    assert set(ALL_RUNS) <= names


@pytest.mark.parametrize("workflow", sorted(ALL_RUNS))
def test_executions_of_an_odd_workflow(api, workflow):
    r = api.get(f"/api/workflows/{enc(workflow)}/executions")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["workflow"] == workflow
    assert sorted(x["run_id"] for x in body["executions"]) == sorted(ALL_RUNS[workflow])


@pytest.mark.parametrize("workflow,run_id",
                         [(w, r) for w, runs in sorted(ALL_RUNS.items()) for r in runs])
def test_execution_and_its_events_by_odd_run_id(api, workflow, run_id):
    r = api.get(f"/api/executions/{enc(run_id)}")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["execution"]["run_id"] == run_id
    assert body["execution"]["workflow"] == workflow
    scoped = api.get(f"/api/executions/{enc(run_id)}", params={"workflow": workflow})
    assert scoped.status_code == 200 and scoped.json()["execution"]["run_id"] == run_id
    event_id = body["events"][0]["event_id"]
    event = api.get(f"/api/events/{enc(event_id)}")
    assert event.status_code == 200 and event.json()["run_id"] == run_id


def test_diff_between_runs_with_slashes(api):
    a, b = ODD_RUNS["pay/ments"]
    r = api.get(f"/api/executions/{enc(a)}/diff/{enc(b)}")
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["a"]["run_id"], body["b"]["run_id"]) == (a, b)
    assert body["rows"]


def test_sdk_recorded_run_with_slash_and_non_ascii(api):
    body = api.get(f"/api/executions/{enc(SDK_RUN)}").json()
    assert body["execution"]["workflow"] == SDK_WORKFLOW
    assert [e["endpoint"] for e in body["events"]][:1] == ["refund"]


def test_encoded_percent_is_not_decoded_twice(api):
    # run "%2F" (three characters) is sent as %252F; it must not become "/"
    r = api.get(f"/api/workflows/{enc('%2F')}/executions")
    assert r.status_code == 200 and r.json()["workflow"] == "%2F"
    assert api.get(f"/api/executions/{enc('..%2e')}").json()["execution"]["run_id"] == "..%2e"
    # an unencoded slash still splits the path: that is a different (unknown) route
    assert api.get("/api/workflows/pay/ments/executions").status_code == 404
    missing = api.get(f"/api/executions/{enc('pay/run/3')}")
    assert missing.status_code == 404 and missing.json() == {
        "detail": "unknown run_id 'pay/run/3'"}
