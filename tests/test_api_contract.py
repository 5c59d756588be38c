"""The API as its OpenAPI document says, against `tracelab serve` on loopback.

- no security declared without a token; with one, the HTTPBearer scheme (or `?token=`) on every
  `/api` operation and on `/metrics`, which then answers 401 without it;
- every error body is the one `Error` model the document declares, for each error status;
- 404s name the id, never the store's path; `/healthz` hides the path when a token is set;
- the ingester's lag on `/metrics` comes from `stream_backlog` (absent when Redis cannot say);
- the server never imports the notebook package; the live watcher never folds the spool.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jsonschema
import pytest

from api_serve import ROOT, Serve, clean_env, seed_store
from event_factory import make_event

TOKEN = "contract-token-42"
ERROR_STATUSES = {"400", "401", "404", "422"}


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("api-contract") / "home"
    seed_store(home)
    return home


@pytest.fixture(scope="module")
def open_api(home) -> Iterator[httpx.Client]:
    with Serve(home) as server, httpx.Client(base_url=server.url, timeout=20) as client:
        yield client


@pytest.fixture(scope="module")
def token_api(home) -> Iterator[httpx.Client]:
    with Serve(home, token=TOKEN) as server, httpx.Client(base_url=server.url,
                                                          timeout=20) as client:
        yield client


def _operations(spec: dict) -> Iterator[tuple[str, dict]]:
    for path, item in spec["paths"].items():
        for method, op in item.items():
            yield f"{method.upper()} {path}", op


def test_no_token_declares_no_security(open_api):
    spec = open_api.get("/openapi.json").json()
    assert "securitySchemes" not in spec.get("components", {})
    for name, op in _operations(spec):
        assert "security" not in op, name
        assert all(p["name"].lower() != "authorization" for p in op.get("parameters", [])), name
        assert "401" not in op["responses"], name


def test_token_declares_bearer_scheme_everywhere_it_is_enforced(token_api):
    spec = token_api.get("/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    assert schemes["HTTPBearer"] == {"type": "http", "scheme": "bearer",
                                     "description": schemes["HTTPBearer"]["description"]}
    assert schemes["TokenQuery"]["in"] == "query" and schemes["TokenQuery"]["name"] == "token"
    guarded = {name for name, op in _operations(spec) if op.get("security")}
    assert guarded == {name for name, _ in _operations(spec)
                       if name.split()[1].startswith("/api/") or name == "GET /metrics"}
    for name, op in _operations(spec):
        if name in guarded:
            assert op["security"] == [{"HTTPBearer": []}, {"TokenQuery": []}], name
            assert "401" in op["responses"], name
        assert all(p["name"].lower() != "authorization" for p in op.get("parameters", [])), name
    # and the server enforces exactly that
    for name in guarded:
        path = name.split()[1].format(workflow="checkout", run_id="plain-1", event_id="x",
                                      a="plain-1", b="plain-1")
        r = token_api.get(path)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", name
    for name in {n for n, _ in _operations(spec)} - guarded:
        assert token_api.get(name.split()[1]).status_code == 200, name


def test_metrics_needs_the_token(token_api):
    r = token_api.get("/metrics")
    assert r.status_code == 401 and r.json() == {
        "detail": "missing or wrong bearer token: send 'Authorization: Bearer <token>'"}
    assert "tracelab_" not in r.text
    assert token_api.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
    ok = token_api.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200 and "tracelab_workflow_executions" in ok.text


def test_healthz_hides_the_store_path_when_a_token_is_set(token_api, open_api, home):
    assert str(home) not in token_api.get("/healthz").text
    assert open_api.get("/healthz").json()["store"] == str(home / "store")


def _error_schema(spec: dict) -> dict:
    return {**spec["components"]["schemas"]["Error"], "components": spec["components"]}


def test_every_error_operation_declares_the_one_error_model(open_api, token_api):
    for client in (open_api, token_api):
        spec = client.get("/openapi.json").json()
        for name, op in _operations(spec):
            declared = ERROR_STATUSES & set(op["responses"])
            if op.get("parameters"):
                assert "422" in declared, name
            if "{" in name:
                assert "404" in declared, name
            for status in declared:
                schema = op["responses"][status]["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/Error"}, (name, status)


@pytest.mark.parametrize("path,params,status", [
    ("/api/workflows/no-such/executions", {}, 404),
    ("/api/executions/no-such-run", {}, 404),
    ("/api/executions/plain-1", {"workflow": "nope"}, 404),
    ("/api/events/no-such-event", {}, 404),
    ("/api/executions/plain-1/diff/no-such-run", {}, 404),
    ("/api/no-such-route", {}, 404),
    ("/api/workflows/checkout/executions", {"cursor": "bad"}, 404),
    ("/api/workflows/checkout/executions", {"limit": "x", "status": "maybe"}, 422),
    ("/api/workflows/checkout/executions", {"since": "soon"}, 422),
    ("/api/workflows/checkout/executions", {"tag": "nosep"}, 422),
    ("/api/executions/plain-1", {"shape": "xml"}, 422),
])
def test_error_bodies_match_the_declared_model_and_name_no_path(open_api, home, path, params,
                                                               status):
    spec = open_api.get("/openapi.json").json()
    r = open_api.get(path, params=params)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    jsonschema.validate(r.json(), _error_schema(spec))
    assert isinstance(r.json()["detail"], str)
    for leak in (str(home), "/store", ".parquet"):
        assert leak not in r.text, r.text


def test_401_matches_the_declared_model(token_api):
    spec = token_api.get("/openapi.json").json()
    r = token_api.get("/api/workflows")
    jsonschema.validate(r.json(), _error_schema(spec))


def test_ingest_lag_comes_from_stream_backlog(redis_server, home):
    """Lag unknown to Redis (an entry deleted mid-group) is no gauge, not a made-up 0."""
    import redis as redis_py

    from tracelab.server.app import create_app
    from tracelab.server.ingest import IngestConfig, Ingester
    from tracelab.store.layout import resolve_layout
    from test_api import UvicornThread

    client = redis_server.client()
    ids = [client.xadd("trace.events", {"event": b"{}"}) for _ in range(5)]
    client.xgroup_create("trace.events", "tracelab-ingest", id="0")
    layout = resolve_layout(str(home / "store"), home=str(home))
    ingester = Ingester(IngestConfig(redis_url=redis_server.url, consumer="c1"), layout=layout)
    app = create_app(layout, token=None, ingester=ingester)
    with UvicornThread(app) as server:
        assert "tracelab_ingest_lag 5.0" in httpx.get(server.url + "/metrics").text
        client.xdel("trace.events", ids[2])
        assert redis_py.Redis.from_url(redis_server.url).xinfo_groups(
            "trace.events")[0]["lag"] is None
        text = httpx.get(server.url + "/metrics").text
        assert "tracelab_ingest_entries_read_total" in text
        assert "tracelab_ingest_lag" not in text


IMPORT_SCRIPT = r"""
import sys, threading, time, httpx, uvicorn
from tracelab.server.app import create_app
app = create_app(sys.argv[1])
server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=int(sys.argv[2]),
                                       log_level="warning"))
threading.Thread(target=server.run, daemon=True).start()
while not server.started:
    time.sleep(0.02)
base = f"http://127.0.0.1:{sys.argv[2]}"
for path in ("/api/workflows", "/api/workflows/checkout/executions",
             "/api/executions/plain-1", "/api/executions/plain-1/diff/x%3Dy.z", "/metrics"):
    assert httpx.get(base + path, timeout=30).status_code == 200, path
server.should_exit = True
print(sorted(m for m in sys.modules if m.startswith(("tracelab.notebook", "IPython",
                                                     "ipywidgets", "plotly"))))
"""


def test_server_never_imports_the_notebook_stack(home):
    from conftest import free_port

    r = subprocess.run([sys.executable, "-c", IMPORT_SCRIPT, str(home / "store"),
                        str(free_port())], capture_output=True, text=True, timeout=120,
                       env=clean_env(home), cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"


def test_live_watcher_folds_a_pending_spool_on_its_poll(tmp_path):
    """Embedded mode: a poll folds what the spool holds, so its run streams with no reader."""
    from tracelab.server.live import StoreWatcher
    from tracelab.store.layout import resolve_layout
    from tracelab.store.writer import StoreWriter

    home = tmp_path / "home"
    layout = resolve_layout(str(home / "store"), home=str(home))
    StoreWriter(layout).write([make_event("live", "run-1", seq=0)])
    watcher = StoreWatcher(layout, poll_interval=0.05)
    assert watcher.poll() == []  # the baseline
    spool = home / "spool"
    spool.mkdir(parents=True, exist_ok=True)
    lines = b"".join(__import__("orjson").dumps(make_event("live", "run-2", seq=i)) + b"\n"
                     for i in range(3))
    (spool / f"{time.time_ns()}-{os.getpid()}.jsonl").write_bytes(lines)
    messages = watcher.poll()
    assert ("execution", "run-2") in {(kind, m.get("run_id")) for kind, m in messages}
    assert watcher.poll() == []  # folded once, streamed once
