"""The HTTP API on a real uvicorn (loopback, free port) over a store recorded through the SDK.

The store is recorded by subprocesses running `tracelab.init()` in embedded mode against a
loopback vendor API, so the SDK never records the test's own calls to the API.
"""
from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import LoopbackHTTP, free_port

ROOT = Path(__file__).resolve().parent.parent
HOSTILE = "<img src=x onerror=alert(1)>"

RECORD_SCRIPT = r"""
import sys, tracelab, requests
url, run_id, mode = sys.argv[1:4]
tracelab.init(workflow_name="checkout", service_name="shop-api", run_id=run_id,
              tags={"env": "test", "mode": mode})

@tracelab.trace
def checkout():
    requests.post(url + "/v1/charges", json={"amount": 4200, "currency": "usd",
                  "note": "<img src=x onerror=alert(1)>"},
                  headers={"Authorization": "Bearer sk_live_SECRET"})
    if mode == "error":
        requests.get(url + "/status/402")
    if mode == "live":
        requests.post(url + "/v1/refunds", json={"charge": "ch_1"})
    requests.post(url + "/v1/emails", json={"to": "a@example.com"})

checkout()
assert tracelab.flush(10)
tracelab.shutdown()
"""


def record(home: Path, url: str, run_id: str, mode: str = "ok") -> None:
    """Record one execution of workflow `checkout` through the SDK (embedded mode)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("TRACELAB_") and k.lower() not in ("http_proxy", "https_proxy")}
    env.update(TRACELAB_HOME=str(home), NO_PROXY="127.0.0.1,localhost")
    subprocess.run([sys.executable, "-c", RECORD_SCRIPT, url, run_id, mode], check=True,
                   env=env, cwd=ROOT, timeout=60)


class UvicornThread:
    """A real uvicorn serving `app` on a free loopback port, in a thread."""

    def __init__(self, app) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_level="warning", lifespan="on",
                                                    timeout_graceful_shutdown=1))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> UvicornThread:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def vendor() -> Iterator[LoopbackHTTP]:
    server = LoopbackHTTP()
    yield server
    server.close()


@pytest.fixture(scope="module")
def home(tmp_path_factory, vendor) -> Path:
    home = tmp_path_factory.mktemp("api") / "home"
    record(home, vendor.url, "run-ok", "ok")
    time.sleep(0.01)
    record(home, vendor.url, "run-err", "error")
    return home


@pytest.fixture(scope="module")
def api(home) -> Iterator[httpx.Client]:
    from tracelab.server.app import create_app

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRACELAB_HOME", str(home))
        mp.delenv("TRACELAB_API_TOKEN", raising=False)
        mp.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
        app = create_app(str(home / "store"), poll_interval=0.1)
    with UvicornThread(app) as server, httpx.Client(base_url=server.url, timeout=10) as client:
        yield client


def test_workflows(api):
    r = api.get("/api/workflows")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    (wf,) = [w for w in r.json()["workflows"] if w["workflow"] == "checkout"]
    assert wf["executions"] == 2
    assert wf["events"] == 7  # run-ok: span + 2 calls; run-err: span + 3 calls
    assert wf["errors"] == 1
    assert wf["last_event"].endswith("Z")


def user_tags(tags: dict) -> dict:
    """The tags the run was given, without the `command.*` tags the SDK adds itself."""
    return {k: v for k, v in tags.items() if not k.startswith("command.")}


def test_executions_filters_and_paging(api):
    r = api.get("/api/workflows/checkout/executions")
    assert r.status_code == 200
    runs = r.json()["executions"]
    assert [x["run_id"] for x in runs] == ["run-err", "run-ok"]  # newest first
    err = runs[0]
    assert err["status"] == "error" and err["errors"] == 1 and err["events"] == 4
    assert err["services"] == ["shop-api"]
    assert user_tags(err["tags"]) == {"env": "test", "mode": "error"}
    assert err["duration_ms"] > 0 and err["started_at_ns"] <= err["ended_at_ns"]

    def ids(**params):
        r = api.get("/api/workflows/checkout/executions", params=params)
        assert r.status_code == 200, r.text
        return [x["run_id"] for x in r.json()["executions"]]

    assert ids(status="error") == ["run-err"]
    assert ids(status="ok") == ["run-ok"]
    assert ids(tag="mode:ok") == ["run-ok"]
    assert ids(tag=["env:test", "mode:error"]) == ["run-err"]
    assert ids(tag="env:prod") == []
    assert ids(since="2200-01-01T00:00:00Z") == []
    assert ids(until=str(err["started_at_ns"])) == ["run-ok"]
    assert ids(since=runs[0]["started_at"]) == ["run-err"]

    first = api.get("/api/workflows/checkout/executions", params={"limit": 1}).json()
    assert [x["run_id"] for x in first["executions"]] == ["run-err"]
    assert first["next_cursor"]
    second = api.get("/api/workflows/checkout/executions",
                     params={"limit": 1, "cursor": first["next_cursor"]}).json()
    assert [x["run_id"] for x in second["executions"]] == ["run-ok"]
    assert second["next_cursor"] is None


@pytest.mark.parametrize("params", [
    {"status": "broken"}, {"limit": 0}, {"limit": "many"}, {"since": "not a time"},
    {"until": "yesterday-ish"}, {"since": "2023-02-30T00:00:00Z"}, {"tag": "no-separator"},
    {"tag": ":value"},
])
def test_bad_parameters_are_json_422(api, params):
    r = api.get("/api/workflows/checkout/executions", params=params)
    assert r.status_code == 422, (params, r.text)
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert isinstance(body["detail"], str) and body["detail"]
    assert set(body) <= {"detail", "errors"}


def test_validation_errors_name_each_field(api):
    body = api.get("/api/workflows/checkout/executions",
                   params={"limit": "many", "status": "broken"}).json()
    assert isinstance(body["detail"], str) and "limit" in body["detail"]
    assert {tuple(e["loc"]) for e in body["errors"]} == {("query", "limit"), ("query", "status")}
    assert all(isinstance(e["msg"], str) and isinstance(e["type"], str) for e in body["errors"])


def test_times_beyond_the_store_are_clamped_not_rejected(api):
    def ids(**params):
        r = api.get("/api/workflows/checkout/executions", params=params)
        assert r.status_code == 200, r.text
        return sorted(x["run_id"] for x in r.json()["executions"])

    assert ids(since="2999-01-01T00:00:00Z") == []
    assert ids(until="0001-01-01T00:00:00+05:00") == []
    assert ids(since="0001-01-01T00:00:00Z", until="9999-12-31T23:59:59Z") == ["run-err", "run-ok"]
    assert ids(since="-" + "9" * 25) == ["run-err", "run-ok"]
    assert ids(until="9" * 25) == ["run-err", "run-ok"]


def test_unknown_cursor_is_no_such_page(api):
    r = api.get("/api/workflows/checkout/executions", params={"cursor": "garbage"})
    assert r.status_code == 404 and "next_cursor" in r.json()["detail"]


def test_unknown_ids_are_json_404(api):
    for path in ("/api/workflows/nope/executions", "/api/executions/no-such-run",
                 "/api/events/no-such-event", "/api/executions/run-ok/diff/no-such-run",
                 "/api/no-such-route"):
        r = api.get(path)
        assert r.status_code == 404, path
        assert r.headers["content-type"].startswith("application/json"), path
        assert "detail" in r.json()
    assert "no-such-run" in api.get("/api/executions/no-such-run").json()["detail"]
    assert api.get("/api/executions/run-ok", params={"shape": "xml"}).status_code == 422


def test_execution_has_events_without_payloads(api):
    r = api.get("/api/executions/run-err")
    assert r.status_code == 200
    body = r.json()
    assert body["execution"]["run_id"] == "run-err" and body["execution"]["events"] == 4
    events = body["events"]
    assert [e["endpoint"] for e in events] == ["checkout", "POST /v1/charges",
                                               "GET /status/402", "POST /v1/emails"]
    span = events[0]
    # offsets count from the run's real start (its lifecycle start event, when recorded)
    t0 = body["execution"]["started_at_ns"]
    assert span["kind"] == "function" and span["offset_ms"] == (span["started_at"] - t0) / 1e6
    assert span["started_at"] >= t0
    assert all(e["parent_id"] == span["span_id"] for e in events[1:])
    assert events[2]["status"] == "error" and events[2]["status_code"] == 402
    assert all("request" not in e and "response" not in e for e in events)
    assert all(isinstance(e["started_at"], int) for e in events)

    columns = api.get("/api/executions/run-err", params={"shape": "columns"}).json()["events"]
    assert columns["count"] == 4 and len(columns["event_id"]) == 4
    endpoint = columns["endpoint"]
    assert [endpoint["values"][c] for c in endpoint["codes"]][1] == "POST /v1/charges"
    assert "request" not in columns


def test_event_has_payloads_redacted(api):
    events = api.get("/api/executions/run-ok").json()["events"]
    charge = next(e for e in events if e["endpoint"] == "POST /v1/charges")
    r = api.get(f"/api/events/{charge['event_id']}")
    assert r.status_code == 200
    event = r.json()
    assert event["request"]["body"]["note"] == HOSTILE
    assert event["request"]["headers"]["Authorization"] == "[REDACTED]"
    assert event["response"]["status_code"] == 200
    assert event["workflow"] == "checkout" and event["schema"] == 1
    assert b"sk_live_SECRET" not in r.content


def test_diff(api):
    r = api.get("/api/executions/run-ok/diff/run-err")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["a"]["run_id"] == "run-ok" and body["b"]["run_id"] == "run-err"
    changes = {(row["endpoint"], row["change"]) for row in body["rows"]}
    assert ("GET /status/402", "added") in changes
    assert ("POST /v1/charges", "same") in changes


def test_healthz_docs_openapi_metrics(api):
    health = api.get("/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    docs = api.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    paths = api.get("/openapi.json").json()["paths"]
    for path in ("/api/workflows", "/api/workflows/{workflow}/executions",
                 "/api/executions/{run_id}", "/api/events/{event_id}",
                 "/api/executions/{a}/diff/{b}", "/api/stream", "/healthz"):
        assert path in paths, path
    api.get("/api/executions/no-such-run")
    metrics = api.get("/metrics")
    assert metrics.status_code == 200
    text = metrics.text
    assert 'tracelab_api_requests_total{method="GET",route="/api/executions/{run_id}",' \
           'status="404"}' in text
    assert "tracelab_api_request_duration_seconds_bucket" in text
    assert "tracelab_events_stored 7.0" in text
    assert "tracelab_executions_stored 2.0" in text
    names = [line.split("{")[0].split(" ")[0] for line in text.splitlines()
             if line and not line.startswith("#")]
    assert names and all(n.startswith("tracelab_") for n in names)


def _samples(text: str, name: str) -> dict[tuple, float]:
    """Samples of one metric from the Prometheus text, keyed by their sorted label pairs."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                out[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def test_metrics_per_workflow_and_target(api, home):
    import pandas as pd

    from tracelab.store import query
    from tracelab.store.layout import resolve_layout

    text = api.get("/metrics").text
    assert _samples(text, "tracelab_workflow_executions") == {(("workflow", "checkout"),): 2.0}
    frame = query.events("checkout", layout=resolve_layout(str(home / "store")))
    assert len(frame) == 7
    vendor_target = frame.loc[frame["kind"] == "http", "target"].iloc[0]
    # run-ok: checkout() + charge + email; run-err: checkout() + charge + 402 + email
    expected = {(("status", "ok"), ("target", "__main__")): 2.0,
                (("status", "ok"), ("target", vendor_target)): 4.0,
                (("status", "error"), ("target", vendor_target)): 1.0}
    assert _samples(text, "tracelab_target_events_total") == expected
    latency = _samples(text, "tracelab_target_latency_ms")
    assert {dict(k)["quantile"] for k in latency} == {"0.5", "0.95", "0.99"}
    for target, group in frame.groupby("target"):
        for q in (0.5, 0.95, 0.99):
            got = latency[(("quantile", str(q)), ("target", target))]
            assert got == pytest.approx(float(group["latency_ms"].quantile(q)))
    assert pd.Series(list(latency.values())).gt(0).all()
    # cached between scrapes: a second scrape within the TTL answers the same figures
    assert _samples(api.get("/metrics").text, "tracelab_target_events_total") == expected


def _read_sse(lines, want, timeout: float) -> list[tuple[str, dict]]:
    """SSE messages from an iterator of lines until `want(messages)` is true (or timeout)."""
    messages: list[tuple[str, dict]] = []
    event, deadline = None, time.monotonic() + timeout
    for line in lines:
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            messages.append((event, json.loads(line[6:])))
            if want(messages):
                return messages
        if time.monotonic() > deadline:
            break
    return messages


def test_stream_sends_new_executions_and_events(api, home, vendor):
    with api.stream("GET", "/api/stream", timeout=httpx.Timeout(30)) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.iter_lines()
        assert next(lines) == "event: hello"
        next(lines), next(lines)
        # let the watcher take its baseline before recording
        time.sleep(0.5)
        threading.Thread(target=record, args=(home, vendor.url, "run-live", "live")).start()

        def done(messages):
            return any(kind == "events" and m["run_id"] == "run-live" for kind, m in messages)

        messages = _read_sse(lines, done, timeout=30)
    kinds = {kind for kind, _ in messages}
    assert {"workflow", "execution", "events"} <= kinds, messages
    execution = next(m for k, m in messages if k == "execution" and m["run_id"] == "run-live")
    assert execution["workflow"] == "checkout" and execution["events"] == 4
    events = next(m for k, m in messages if k == "events")["events"]
    assert "POST /v1/refunds" in [e["endpoint"] for e in events]
    assert all("request" not in e for e in events)


def test_token_mode(home):
    from tracelab.server.app import create_app

    app = create_app(str(home / "store"), token="s3cret-token")
    with UvicornThread(app) as server, httpx.Client(base_url=server.url, timeout=10) as c:
        r = c.get("/api/workflows")
        assert r.status_code == 401 and r.json()["detail"]
        assert r.headers["www-authenticate"] == "Bearer"
        assert c.get("/api/workflows", headers={"Authorization": "Bearer wrong"}
                     ).status_code == 401
        assert c.get("/api/events/x").status_code == 401  # before any 404 leaks existence
        ok = c.get("/api/workflows", headers={"Authorization": "Bearer s3cret-token"})
        assert ok.status_code == 200 and ok.json()["workflows"]
        with c.stream("GET", "/api/stream", params={"token": "s3cret-token"}) as s:
            assert s.status_code == 200
        assert c.get("/healthz").status_code == 200
        assert c.get("/docs").status_code == 200
        spec = c.get("/openapi.json").json()
        assert "HTTPBearer" in spec["components"]["securitySchemes"]


def test_opentelemetry_exports_when_endpoint_is_set(home, monkeypatch):
    received: list[str] = []

    class Collector(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            received.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    collector = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT",
                           f"http://127.0.0.1:{collector.server_address[1]}")
        from tracelab.server.app import create_app

        app = create_app(str(home / "store"))
        assert app.state.otel_provider is not None
        with UvicornThread(app) as server:
            assert httpx.get(server.url + "/api/workflows").status_code == 200
            assert app.state.otel_provider.force_flush(10_000)
        assert "/v1/traces" in received
    finally:
        collector.shutdown()
        collector.server_close()


def test_serve_busy_port_and_bad_flag_are_one_line(home):
    busy = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    try:
        port = busy.server_address[1]
        env = {**os.environ, "TRACELAB_HOME": str(home)}
        r = subprocess.run([sys.executable, "-m", "tracelab.cli", "serve", "--port", str(port),
                            "--no-ui"], capture_output=True, text=True, env=env, timeout=30)
        assert r.returncode == 1
        assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
        assert f"port {port}" in r.stderr and "already in use" in r.stderr
        r = subprocess.run([sys.executable, "-m", "tracelab.cli", "serve", "--port", "http"],
                           capture_output=True, text=True, env=env, timeout=30)
        assert r.returncode == 2 and "Traceback" not in r.stderr
        assert "--port: 'http' is not a port number" in r.stderr
    finally:
        busy.server_close()


def test_up_ingests_and_serves(redis_server, tmp_path, vendor):
    """`tracelab up`: events sent to Redis by the SDK land in the store and show in the API."""
    home = tmp_path / "home"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACELAB_")}
    env.update(TRACELAB_HOME=str(home))
    proc = subprocess.Popen([sys.executable, "-m", "tracelab.cli", "up", "--port", str(port),
                             "--no-ui", "--redis-url", redis_server.url],
                            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_http(base + "/healthz", proc)
        script = ("import sys, tracelab, requests\n"
                  f"tracelab.init(workflow_name='svc-mode', run_id='svc-1', "
                  f"redis_url={redis_server.url!r})\n"
                  f"requests.post({vendor.url!r} + '/v1/charges', json={{'amount': 1}})\n"
                  "assert tracelab.flush(10)\ntracelab.shutdown()\n")
        subprocess.run([sys.executable, "-c", script], check=True, env=env, cwd=ROOT,
                       timeout=60)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            names = [w["workflow"] for w in httpx.get(base + "/api/workflows").json()["workflows"]]
            if "svc-mode" in names:
                break
            time.sleep(0.2)
        assert "svc-mode" in names
        # the in-process ingester writes under partition leases in its Redis, as `tracelab
        # ingest` does (another host may write the same store): the token is in every name
        files = list((home / "store" / "events").rglob("part-*.parquet"))
        assert files and all("-t" in f.name for f in files), files
        # the ingester stores the call and the run's lifecycle start and end; the store's
        # gauge counts steps only
        wanted = ("tracelab_ingest_events_stored_total 3.0", "tracelab_ingest_lag 0.0",
                  "tracelab_events_stored 1.0")
        deadline = time.monotonic() + 10  # the entry is acknowledged just after it is stored
        while time.monotonic() < deadline:
            metrics = httpx.get(base + "/metrics").text
            if all(w in metrics for w in wanted):
                break
            time.sleep(0.2)
        for w in wanted:
            assert w in metrics
    finally:
        proc.terminate()
        try:
            out, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
    assert proc.returncode == 0, err
    assert "Traceback" not in err


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.communicate()}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} did not answer")


def test_up_refuses_a_bad_retention_setting_before_serving(redis_server, tmp_path):
    """`tracelab up` applies TRACELAB_RETAIN like `tracelab ingest`: a bad value is one clear
    line and exit 2 before anything listens, never a daily thread failing in silence."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACELAB_")}
    env.update(TRACELAB_HOME=str(tmp_path / "home"), TRACELAB_RETAIN="thirty days")
    r = subprocess.run([sys.executable, "-m", "tracelab.cli", "up", "--port", str(free_port()),
                        "--no-ui", "--redis-url", redis_server.url], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "TRACELAB_RETAIN" in r.stderr and "Traceback" not in r.stderr
