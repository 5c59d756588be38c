"""The replay proxy (`python -m tracelab.proxy.replay`) on its own: real mitmproxy in a
subprocess, real clients, upstreams that are not running (a closed loopback port)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests

from tests.conftest import LoopbackHTTP, free_port
from tests.event_factory import make_event

ROOT = Path(__file__).resolve().parents[1]
RUN = "rec-run-1"


def http_event(method: str, url: str, status: int, body: Any, *, seq: int,
               request_body: Any = None, content_type: str = "application/json",
               **extra: Any) -> dict[str, Any]:
    path = "/" + url.split("://", 1)[1].split("/", 1)[1].split("?")[0]
    event = make_event("shop", RUN, seq=seq, target=url.split("://", 1)[1].split("/")[0],
                       endpoint=f"{method} {path}", status_code=status,
                       request={"method": method, "url": url, "headers": {},
                                "body": request_body},
                       response={"status_code": status,
                                 "headers": {"Content-Type": content_type,
                                             "Content-Length": "999"},
                                 "body": body}, tags={}, **extra)
    return event


class ReplayProxy:
    """The replay proxy as `tracelab replay` starts it."""

    def __init__(self, home: Path, recording: Path, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.report = recording.with_suffix(".report")
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("TRACELAB_") and k.lower() not in
               ("http_proxy", "https_proxy", "all_proxy", "no_proxy")}
        env.update(TRACELAB_HOME=str(home), TRACELAB_WORKFLOW_NAME="shop",
                   PYTHONPATH=os.pathsep.join(filter(None, (str(ROOT), env.get("PYTHONPATH")))),
                   TRACELAB_RUN_ID="replayed-1", TRACELAB_TAGS='{"replay_of": "rec-run-1"}')
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tracelab.proxy.replay", "--recording", str(recording),
             "--port", str(self.port), "--report", str(self.report), *args],
            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def ready(self) -> ReplayProxy:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"replay proxy exited: {self.proc.stdout.read()!r}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.03)
        raise AssertionError("the replay proxy did not listen within 20 s")

    def session(self, ca: Path | None = None) -> requests.Session:
        session = requests.Session()
        session.trust_env = False
        session.proxies = {"http": self.url, "https": self.url}
        if ca is not None:
            session.verify = str(ca)
        return session

    def stop(self) -> list[dict[str, Any]]:
        """Stop it as the runner does (SIGTERM) and return its report lines."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=15)
        assert self.proc.returncode == 0, self.proc.stdout.read()
        return [orjson.loads(line) for line in self.report.read_bytes().splitlines()]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def start(home: Path, tmp_path: Path) -> Iterator[Any]:
    started: list[ReplayProxy] = []

    def go(events: list[dict[str, Any]], *args: str, wait: bool = True) -> ReplayProxy:
        """Start one; `wait=False` returns at once (call `.ready()`), to start several together."""
        path = tmp_path / f"recording{len(started)}.jsonl"
        path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
        started.append(ReplayProxy(home, path, *args))
        return started[-1].ready() if wait else started[-1]

    yield go
    for proxy in started:
        if proxy.proc.poll() is None:
            proxy.proc.kill()
            proxy.proc.wait()


def closed_port() -> int:
    return free_port()  # nothing listens there: any forwarded request would be refused


def test_hits_misses_https_streams_and_the_report(home: Path, start: Any,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    port = closed_port()
    base = f"http://127.0.0.1:{port}"
    sse = http_event("GET", f"{base}/events", 200, "data: one\n\ndata: two\n\n", seq=3,
                     content_type="text/event-stream")
    sse["response"]["chunks"] = [{"t": 1.0, "data": "data: one\n\n"},
                                 {"t": 5.0, "data": "data: two\n\n"}]
    events = [
        http_event("POST", f"{base}/v1/charges", 200, {"id": "ch_1"}, seq=0,
                   request_body={"amount": 100, "currency": "eur"}),
        http_event("POST", f"{base}/v1/charges", 200, {"id": "ch_2"}, seq=1,
                   request_body={"amount": 100, "currency": "eur"}),
        http_event("GET", "https://api.example.invalid/v1/me", 200, {"user": "ada"}, seq=2),
        sse,
        http_event("GET", f"{base}/binary", 200,
                   {"$tracelab": "binary", "size": 3, "base64": "AAEC"}, seq=4,
                   content_type="application/octet-stream"),
        make_event("shop", RUN, seq=5, kind="function", target="agent", endpoint="plan",
                   request={"args": []}, response=None, tags={}),
    ]
    proxy = start(events)
    ca = home / "proxy" / "mitmproxy-ca-cert.pem"
    session = proxy.session(ca)

    # Same key twice: answered in recorded order; a third time is a miss, never a repeat.
    body = {"currency": "eur", "amount": 100}  # key order does not matter
    assert session.post(f"{base}/v1/charges", json=body).json() == {"id": "ch_1"}
    assert session.post(f"{base}/v1/charges", json=body).json() == {"id": "ch_2"}
    third = session.post(f"{base}/v1/charges", json=body)
    assert third.status_code == 502 and third.headers["X-Tracelab-Replay"] == "miss"
    assert "POST 127.0.0.1" in third.text and "/v1/charges" in third.text

    # HTTPS to a host that does not exist: the tunnel is never connected upstream.
    assert session.get("https://api.example.invalid/v1/me").json() == {"user": "ada"}

    # A recorded stream comes back whole, from its chunks; a binary body as its bytes.
    streamed = session.get(f"{base}/events")
    assert streamed.text == "data: one\n\ndata: two\n\n"
    assert streamed.headers["Content-Type"] == "text/event-stream"
    assert streamed.headers["Transfer-Encoding"] == "chunked"
    assert session.get(f"{base}/binary").content == b"\x00\x01\x02"

    # A differing body is a miss naming the JSON path that differs.
    other = session.post(f"{base}/v1/charges", json={"amount": 250, "currency": "eur"})
    assert other.status_code == 502 and "amount" in other.text

    reports = proxy.stop()
    assert len(reports) == 1
    report = reports[0]
    assert report["source"] == "proxy" and report["passthrough"] == []
    assert report["hits"] == [events[i]["event_id"] for i in (0, 1, 2, 3, 4)]
    assert [m["call"] for m in report["misses"]] == [f"POST 127.0.0.1:{port} /v1/charges"] * 2

    # The answered calls are events of the new run, tagged with their outcome.
    monkeypatch.setenv("TRACELAB_HOME", str(home))
    from tracelab.store import query

    frame = query.execution_events("replayed-1", "shop")
    outcomes = sorted(orjson.loads(t)["replay"] if isinstance(t, str) else t["replay"]
                      for t in frame["tags"])
    assert outcomes == ["hit"] * 5 + ["miss"] * 2
    assert set(frame["source"]) == {"proxy"}


def sse_event(url: str, offsets: list[float], *, failed: bool = False) -> dict[str, Any]:
    event = http_event("GET", url, 200, "", seq=0, content_type="text/event-stream")
    event["response"]["chunks"] = [{"t": t, "data": f"data: {i}\n\n"}
                                   for i, t in enumerate(offsets)]
    event["response"]["stream"] = {
        "complete": not failed, "size": 9 * len(offsets), "truncated": False,
        "error": {"type": "ChunkedEncodingError", "message": "peer closed"} if failed else None}
    return event


def test_a_stream_is_replayed_chunk_by_chunk_at_its_offsets(home: Path, start: Any) -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1/stream"
    proxy = start([sse_event(url, [0.0, 400.0, 800.0])], "--speed", "2")
    arrivals = []
    began = time.monotonic()
    with proxy.session().get(url, stream=True) as response:
        for chunk in response.iter_content(chunk_size=None):
            arrivals.append((time.monotonic() - began, chunk))
    assert [c for _t, c in arrivals] == [b"data: 0\n\n", b"data: 1\n\n", b"data: 2\n\n"]
    # Each chunk separately, none before its offset at speed 2 (200 ms apart).
    assert arrivals[1][0] - arrivals[0][0] >= 0.15 and arrivals[2][0] - arrivals[1][0] >= 0.15
    (report,) = proxy.stop()
    assert len(report["hits"]) == 1


def test_a_stream_that_failed_midway_fails_at_the_same_chunk(home: Path, start: Any,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1/stream"
    proxy = start([sse_event(url, [0.0, 1.0], failed=True)])
    received = []
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        with proxy.session().get(url, stream=True) as response:
            for chunk in response.iter_content(chunk_size=None):
                received.append(chunk)
    assert b"".join(received) == b"data: 0\n\ndata: 1\n\n"
    (report,) = proxy.stop()
    assert len(report["hits"]) == 1
    monkeypatch.setenv("TRACELAB_HOME", str(home))
    from tracelab.store import query

    events = query.execution_events("replayed-1", "shop")
    assert list(events["endpoint"]) == ["GET /v1/stream"]  # the URL asked, not the chunk server
    assert list(events["status"]) == ["error"]


def test_passthrough_forwards_and_records(home: Path, start: Any,
                                          loopback_http: LoopbackHTTP) -> None:
    proxy = start([http_event("GET", f"{loopback_http.url}/recorded", 200, {"ok": 1}, seq=0)],
                  "--on-miss", "passthrough")
    session = proxy.session()
    assert session.get(f"{loopback_http.url}/recorded").json() == {"ok": 1}
    live = session.get(f"{loopback_http.url}/echo?live=1")
    assert live.status_code == 200 and live.json()["path"] == "/echo?live=1"
    assert [seen[1] for seen in loopback_http.requests_seen] == ["/echo?live=1"]
    (report,) = proxy.stop()
    assert report["passthrough"] == [f"GET 127.0.0.1:{loopback_http.port} /echo"]
    assert report["misses"] == [] and len(report["hits"]) == 1


def test_a_call_an_sdk_already_passed_through_is_forwarded_uncounted(
        home: Path, start: Any, loopback_http: LoopbackHTTP) -> None:
    recorded = [http_event("GET", f"{loopback_http.url}/echo", 200, {"recorded": 1}, seq=0)]
    handled = {"X-Tracelab-Replay-Handled": "1"}
    proxy = start(recorded, "--on-miss", "passthrough")
    response = proxy.session().get(f"{loopback_http.url}/echo", headers=handled)
    assert response.status_code == 200 and response.json()["path"] == "/echo"  # live, not replayed
    assert "X-Tracelab-Replay-Handled" not in loopback_http.requests_seen[0][2]
    (report,) = proxy.stop()
    assert report["hits"] == [] and report["misses"] == [] and report["passthrough"] == []
    # In fail mode the header opens nothing: still answered from the recording, or refused.
    strict = start(recorded)
    assert strict.session().get(f"{loopback_http.url}/echo", headers=handled).json() == \
        {"recorded": 1}
    refused = strict.session().get(f"{loopback_http.url}/other", headers=handled)
    assert refused.status_code == 502 and len(loopback_http.requests_seen) == 1
    strict.stop()


# -- the shared matching corpus through the real proxy -------------------------------------

CORPUS = ROOT / "spec" / "matching" / "cases"


def corpus() -> list[dict[str, Any]]:
    """The HTTP cases of spec/matching/ (missing or empty fails, never skips)."""
    cases = [orjson.loads(p.read_bytes()) for p in sorted(CORPUS.glob("*.json"))]
    assert cases, f"no matching corpus in {CORPUS}"
    return [c for c in cases if isinstance(c["event"]["request"].get("url"), str)]


def sendable(entry: dict[str, Any]) -> dict[str, Any] | None:
    """A stored-shape request as raw bytes a client can send; None when the wire cannot carry
    it as stored (a space in the URL, a body that is a `$tracelab` marker)."""
    request = entry["request"]
    body = request.get("body")
    if " " in request["url"] or (isinstance(body, dict) and "$tracelab" in body):
        return None
    raw = None if body is None else body.encode() if isinstance(body, str) else orjson.dumps(body)
    return {"method": request["method"], "url": request["url"],
            "headers": request.get("headers") or {}, "body": raw}


def test_matching_corpus_through_the_proxy(home: Path, start: Any) -> None:
    from tracelab.proxy.runner import ensure_ca

    ensure_ca(home / "proxy")  # once, before the proxies start together
    groups: dict[bytes, list[dict[str, Any]]] = {}
    for case in corpus():
        groups.setdefault(orjson.dumps(case.get("options") or {}, option=orjson.OPT_SORT_KEYS),
                          []).append(case)
    runs = []
    for options_json, cases in groups.items():
        options = orjson.loads(options_json)
        plan: list[tuple[str, dict[str, Any], bool]] = []  # (case, raw request, must hit it)
        recording: list[dict[str, Any]] = []
        for case in cases:
            hits = [(e if "method" in e else sendable(e)) for e in
                    (case.get("live") or []) + [case["event"]] + (case.get("same") or [])]
            misses = [sendable(e) for e in case.get("different") or []]
            hits = [h for h in hits if h is not None]
            plan += [(case["name"], h, True) for h in hits]
            plan += [(case["name"], m, False) for m in misses if m is not None]
            for i in range(len(hits)):
                recording.append(make_event(
                    "shop", RUN, seq=len(recording), tags={}, **{
                        k: case["event"][k] for k in ("kind", "target", "endpoint", "request")},
                    response={"status_code": 200, "headers": {"Content-Type": "application/json"},
                              "body": {"case": case["name"]}}))
        args = ["--ignore", orjson.dumps(options.get("ignore", [])).decode(),
                "--headers", orjson.dumps(options.get("headers", [])).decode()]
        runs.append((start(recording, *args, wait=False), plan))
    checked = 0
    for proxy, plan in runs:
        session = proxy.ready().session(home / "proxy" / "mitmproxy-ca-cert.pem")
        plan.sort(key=lambda step: not step[2])  # every hit first: a miss may take a queue
        for name, raw, must_hit in plan:
            response = session.request(raw["method"].upper(), raw["url"], data=raw["body"],
                                       headers=raw["headers"])
            answered = response.json() if response.status_code == 200 else None
            if must_hit:
                assert answered == {"case": name}, (name, raw, response.text)
            else:
                assert answered != {"case": name}, (name, raw)
            checked += 1
        proxy.stop()
    assert checked >= 60, checked
