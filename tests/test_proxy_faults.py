"""Faults in the proxies, end to end: `tracelab proxy --faults` (a chaos proxy on live traffic)
and the replay proxy (`python -m tracelab.proxy.replay --faults`), each a real mitmproxy in a
subprocess, with a real loopback HTTP server behind the chaos proxy, real clients (requests,
httpx) through them, and the recorded events read back from the embedded store.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import requests
import yaml

from tests.conftest import free_port
from tests.event_factory import make_event
from tests.test_proxy import Proxy, Upstream, proxy_env, self_signed_cert
from tests.test_replay_proxy import ReplayProxy, http_event

ROOT = Path(__file__).resolve().parents[1]
SSE_EVENTS = [f"data: {i}\n\n".encode() for i in range(5)]


class _Vendor(BaseHTTPRequestHandler):
    """/sse streams five SSE events, chunked, one write each; anything else answers JSON."""

    protocol_version = "HTTP/1.1"
    server: Vendor  # type: ignore[assignment]

    def log_message(self, *args: object) -> None:
        pass

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.seen.append(self.path)
        if self.path in ("/sse", "/sse-burst"):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            if self.path == "/sse-burst":  # every chunk and the end in one write
                self.wfile.write(b"".join(b"%x\r\n%s\r\n" % (len(data), data)
                                          for data in SSE_EVENTS) + b"0\r\n\r\n")
                return
            for data in SSE_EVENTS:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
                time.sleep(0.02)  # separate chunks on the wire, as a real stream
            self.wfile.write(b"0\r\n\r\n")
            return
        reply = vendor_reply(self.path, body)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    do_GET = do_POST = _handle


def vendor_reply(path: str, body: bytes = b"") -> bytes:
    return json.dumps({"path": path, "body": body.decode(), "ok": True}).encode()


class Vendor(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Vendor)
        self.seen: list[str] = []
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, daemon=True).start()


@pytest.fixture
def vendor() -> Iterator[Vendor]:
    server = Vendor()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def events_of(home: Path, run_id: str, workflow: str,
              monkeypatch: pytest.MonkeyPatch) -> dict[str, dict[str, Any]]:
    """The run's events from the embedded store, by endpoint (the last one of each)."""
    monkeypatch.setenv("TRACELAB_HOME", str(home))
    from tracelab.store import query

    frame = query.execution_events(run_id, workflow)
    rows = {}
    for row in frame.to_dict("records"):
        tags = row["tags"]
        row["tags"] = orjson.loads(tags) if isinstance(tags, str) else dict(tags or {})
        rows.setdefault(row["endpoint"], []).append(row)
    return rows


def session_through(url: str) -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    session.proxies = {"http": url, "https": url}
    return session


# -- the chaos proxy on live traffic ------------------------------------------------------------

LIVE_RULES = [
    {"id": "limited", "endpoint": "GET /limited", "status": 503, "retry_after": 2, "times": 1},
    {"id": "reset", "endpoint": "GET /reset", "reset": True},
    {"id": "hang", "endpoint": "GET /hang", "timeout": True},
    {"id": "hang-short", "endpoint": "GET /hang-short", "timeout": True, "timeout_s": 0.3},
    {"id": "slow", "endpoint": "GET /slow", "latency_ms": 300},
    {"id": "empty", "endpoint": "GET /empty", "empty_body": True},
    {"id": "broken", "endpoint": "GET /malformed", "malformed_body": True},
    {"id": "short", "endpoint": "GET /truncate", "truncate_after": 5},
    {"id": "cut", "target": "127.0.0.1:*", "endpoint": "GET /sse*", "stream_cut_after": 2},
    {"id": "big-refund", "endpoint": "POST /refunds", "match_body": {"$.amount": 500},
     "status": 402},
    {"id": "llm-down", "kind": "llm", "match_body": {"$.model": "gpt-4o*"}, "status": 529},
]


def test_every_action_on_live_traffic(home: Path, tmp_path: Path, vendor: Vendor,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    rules = tmp_path / "chaos.yaml"
    rules.write_text(yaml.safe_dump({"rules": LIVE_RULES}))
    proxy = Proxy(home, "--faults", str(rules), "--workflow", "chaos", "--run-id", "chaos-1")
    try:
        session = session_through(proxy.url)
        base = vendor.url

        assert session.get(f"{base}/ok").json()["ok"] is True  # no rule: untouched

        limited = session.get(f"{base}/limited")
        assert limited.status_code == 503 and limited.headers["Retry-After"] == "2"
        assert session.get(f"{base}/limited").json()["path"] == "/limited"  # times: 1

        with pytest.raises(requests.exceptions.ConnectionError):
            session.get(f"{base}/reset")
        with pytest.raises(requests.exceptions.ReadTimeout):  # the client's own timeout
            session.get(f"{base}/hang", timeout=0.5)
        with pytest.raises(requests.exceptions.ConnectionError):  # held, then dropped
            session.get(f"{base}/hang-short", timeout=30)

        began = time.monotonic()
        assert session.get(f"{base}/slow").json()["path"] == "/slow"
        assert time.monotonic() - began >= 0.3

        empty = session.get(f"{base}/empty")
        assert empty.status_code == 200 and empty.content == b""
        broken = session.get(f"{base}/malformed")
        with pytest.raises(ValueError):
            json.loads(broken.content)
        assert broken.content.startswith(vendor_reply("/malformed")[:10])
        assert session.get(f"{base}/truncate").content == vendor_reply("/truncate")[:5]

        # A stream cut after 2 chunks: both arrive, then the connection drops (requests, httpx).
        received = []
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            with session.get(f"{base}/sse", stream=True) as response:
                for chunk in response.iter_content(chunk_size=None):
                    received.append(chunk)
        assert b"".join(received) == b"".join(SSE_EVENTS[:2])
        burst = b""  # the end arrives with the chunks: still never sent
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            with session.get(f"{base}/sse-burst", stream=True) as response:
                for chunk in response.iter_content(chunk_size=None):
                    burst += chunk
        assert burst == b"".join(SSE_EVENTS[:2])
        with httpx.Client(proxy=proxy.url, trust_env=False) as client:
            got = b""
            with pytest.raises(httpx.RemoteProtocolError):
                with client.stream("GET", f"{base}/sse") as response:
                    for chunk in response.iter_raw():
                        got += chunk
            assert got == b"".join(SSE_EVENTS[:2])

        # match_body: only the refund of 500 is refused.
        assert session.post(f"{base}/refunds", json={"amount": 500}).status_code == 402
        assert session.post(f"{base}/refunds", json={"amount": 20}).status_code == 200
        # kind: an LLM call is told apart as the recording does (path and body).
        chat = f"{base}/v1/chat/completions"
        assert session.post(chat, json={"model": "gpt-4o-mini", "messages": []}).status_code \
            == 529
        assert session.post(chat, json={"model": "o3", "messages": []}).status_code == 200
    finally:
        output = proxy.stop()
    assert "injecting faults" in output

    # What the faults replaced never reached the vendor; what they changed did.
    assert "/reset" not in vendor.seen and "/hang" not in vendor.seen
    assert vendor.seen.count("/limited") == 1 and "/slow" in vendor.seen
    assert vendor.seen.count("/refunds") == 1

    events = events_of(home, "chaos-1", "chaos", monkeypatch)
    by_rule = {rule["id"]: rule for rule in LIVE_RULES}

    def faulted(endpoint: str, index: int = 0) -> dict[str, Any]:
        event = events[endpoint][index]
        rule_id = event["tags"]["fault"]
        assert json.loads(event["tags"]["fault.rule"])["id"] == rule_id
        assert by_rule[rule_id]
        return event

    assert "fault" not in events["GET /ok"][0]["tags"]
    limited_event = faulted("GET /limited")
    assert limited_event["tags"]["fault.action"] == "status"
    assert limited_event["status_code"] == 503 and limited_event["status"] == "error"
    assert "fault" not in events["GET /limited"][1]["tags"]
    reset_event = faulted("GET /reset")
    assert (reset_event["tags"]["fault.action"], reset_event["error_type"]) == \
        ("reset", "ConnectionResetError")
    hang = faulted("GET /hang")
    assert (hang["tags"]["fault.action"], hang["error_type"]) == ("timeout", "TimeoutError")
    assert faulted("GET /hang-short")["error_type"] == "TimeoutError"
    slow = faulted("GET /slow")
    assert slow["tags"]["fault.action"] == "latency" and slow["latency_ms"] >= 300
    assert slow["status"] == "ok"
    for endpoint, action in (("GET /empty", "empty_body"), ("GET /malformed", "malformed_body"),
                             ("GET /truncate", "truncate")):
        assert faulted(endpoint)["tags"]["fault.action"] == action
    for index in (0, 1):
        cut = faulted("GET /sse", index)
        assert cut["tags"]["fault.action"] == "stream_cut"
        assert cut["status"] == "error" and cut["error_type"] == "ConnectionResetError"
    assert [e["tags"].get("fault") for e in events["POST /refunds"]] == ["big-refund", None]
    chats = events["POST /v1/chat/completions"]
    assert [(e["kind"], e["tags"].get("fault")) for e in chats] == \
        [("llm", "llm-down"), ("llm", None)]


def test_faults_on_https_traffic(home: Path, tmp_path: Path) -> None:
    """Decrypted HTTPS: a status in place of the vendor, and a TLS stream cut mid-way."""
    from tracelab.proxy.runner import ensure_ca

    ca, _created = ensure_ca(home / "proxy")
    upstream = Upstream(self_signed_cert(tmp_path))
    rules = tmp_path / "chaos.yaml"
    rules.write_text(yaml.safe_dump([
        {"id": "too-many", "target": "127.0.0.1", "endpoint": "GET /limited", "status": 429,
         "retry_after": 3},
        {"id": "cut", "endpoint": "GET /sse", "stream_cut_after": 1}]))
    proxy = Proxy(home, "--faults", str(rules), "--ssl-insecure")
    try:
        session = session_through(proxy.url)
        session.verify = str(ca)
        limited = session.get(f"{upstream.url}/limited")
        assert (limited.status_code, limited.headers["Retry-After"]) == (429, "3")
        assert limited.json()["error"]["rule"] == "too-many"
        received = []
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            with session.get(f"{upstream.url}/sse", stream=True) as response:
                for chunk in response.iter_content(chunk_size=None):
                    received.append(chunk)
        assert received == [b"data: first\n\n"]
        assert session.get(f"{upstream.url}/echo").json()["path"] == "/echo"
    finally:
        proxy.stop()
        upstream.close()
    assert [seen[1] for seen in upstream.seen] == ["/sse", "/echo"]


def test_the_recorded_body_is_what_the_client_got(home: Path, tmp_path: Path, vendor: Vendor,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The event of a mangled answer stores the mangled body, not the vendor's."""
    rules = tmp_path / "chaos.json"
    rules.write_text(json.dumps([{"id": "short", "endpoint": "GET /truncate",
                                  "truncate_after": 5}]))
    proxy = Proxy(home, "--faults", str(rules), "--workflow", "chaos", "--run-id", "chaos-2")
    try:
        assert session_through(proxy.url).get(f"{vendor.url}/truncate").content == b'{"pat'
    finally:
        proxy.stop()
    (event,) = events_of(home, "chaos-2", "chaos", monkeypatch)["GET /truncate"]
    assert event["tags"]["fault"] == "short"
    from tracelab.store import query

    stored = query.event(event["event_id"]).iloc[0]
    assert orjson.loads(stored["response"])["body"] == '{"pat'


def test_a_bad_fault_file_is_refused_with_every_reason(home: Path, tmp_path: Path) -> None:
    rules = tmp_path / "bad.yaml"
    rules.write_text(yaml.safe_dump([{"endpoint": "GET /x", "status": 99, "surprise": 1},
                                     {"reset": True, "timeout": True}]))
    result = subprocess.run(
        [sys.executable, "-m", "tracelab.cli", "proxy", "--port", str(free_port()),
         "--faults", str(rules)], env=proxy_env(home), cwd=ROOT, capture_output=True,
        text=True, timeout=60)
    assert result.returncode == 2, result
    assert "status" in result.stderr and "surprise" in result.stderr
    assert "rules[1]" in result.stderr or "[1]" in result.stderr
    assert "bad.yaml" in result.stderr


# -- the replay proxy ---------------------------------------------------------------------------

def stream_event(url: str, seq: int) -> dict[str, Any]:
    event = http_event("GET", url, 200, "", seq=seq, content_type="text/event-stream")
    event["response"]["chunks"] = [{"t": float(i), "data": data.decode()}
                                   for i, data in enumerate(SSE_EVENTS[:3])]
    event["response"]["stream"] = {"complete": True, "size": 27, "truncated": False,
                                   "error": None}
    return event


@pytest.fixture
def replay(home: Path, tmp_path: Path) -> Iterator[Any]:
    started: list[ReplayProxy] = []

    def start(events: list[dict[str, Any]], rules: list[dict[str, Any]]) -> ReplayProxy:
        path = tmp_path / f"recording{len(started)}.jsonl"
        path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
        faults = tmp_path / f"faults{len(started)}.yaml"
        faults.write_text(yaml.safe_dump(rules))
        started.append(ReplayProxy(home, path, "--faults", str(faults)))
        return started[-1].ready()

    yield start
    for proxy in started:
        if proxy.proc.poll() is None:
            proxy.proc.send_signal(signal.SIGKILL)
            proxy.proc.wait()


def test_replay_a_fault_then_the_retry_gets_the_recording(home: Path, replay: Any,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    base = f"http://127.0.0.1:{free_port()}"  # nothing listens: nothing may be forwarded
    recording = [
        http_event("POST", f"{base}/v1/refunds", 200, {"id": "re_1"}, seq=0,
                   request_body={"amount": 100}),
        http_event("GET", f"{base}/v1/order", 200, {"order": "o-42", "total": 100}, seq=1),
        stream_event(f"{base}/v1/stream", 2),
        http_event("GET", f"{base}/v1/me", 200, {"user": "ada"}, seq=3),
        make_event("shop", "rec-run-1", seq=4, kind="function", target="agent",
                   endpoint="plan", request={"args": []}, response=None, tags={}),
    ]
    rules = [
        {"id": "rate-limited", "endpoint": "POST /v1/refunds", "status": 503, "retry_after": 1,
         "times": 1},
        {"id": "garbled", "endpoint": "GET /v1/order", "malformed_body": True, "nth": 1},
        {"id": "cut", "endpoint": "GET /v1/stream", "stream_cut_after": 1, "times": 1},
        {"id": "drop", "endpoint": "GET /v1/me", "reset": True, "times": 1},
        {"id": "unrecorded", "endpoint": "GET /v1/ghost", "status": 500},
    ]
    proxy = replay(recording, rules)
    session = proxy.session()

    first = session.post(f"{base}/v1/refunds", json={"amount": 100})
    assert first.status_code == 503 and first.headers["Retry-After"] == "1"
    assert session.post(f"{base}/v1/refunds", json={"amount": 100}).json() == {"id": "re_1"}

    garbled = session.get(f"{base}/v1/order")
    assert garbled.status_code == 200 and garbled.content.startswith(b'{"order"')
    with pytest.raises(ValueError):
        garbled.json()
    assert session.get(f"{base}/v1/order").json() == {"order": "o-42", "total": 100}

    received = []
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        with session.get(f"{base}/v1/stream", stream=True) as response:
            for chunk in response.iter_content(chunk_size=None):
                received.append(chunk)
    assert b"".join(received) == SSE_EVENTS[0]
    assert session.get(f"{base}/v1/stream").content == b"".join(SSE_EVENTS[:3])

    with pytest.raises(requests.exceptions.ConnectionError):
        session.get(f"{base}/v1/me")
    assert session.get(f"{base}/v1/me").json() == {"user": "ada"}

    # A status fault applies even where the recording has no such call.
    assert session.get(f"{base}/v1/ghost").status_code == 500

    (report,) = proxy.stop()
    assert report["hits"] == [recording[i]["event_id"] for i in range(4)]
    assert report["misses"] == [] and report["faulted"] == 5
    calls = report["calls"]
    assert [(c["endpoint"], c["replay"], c["fault"]) for c in calls] == [
        ("POST /v1/refunds", "fault", "rate-limited"), ("POST /v1/refunds", "hit", None),
        ("GET /v1/order", "fault", "garbled"), ("GET /v1/order", "hit", None),
        ("GET /v1/stream", "fault", "cut"), ("GET /v1/stream", "hit", None),
        ("GET /v1/me", "fault", "drop"), ("GET /v1/me", "hit", None),
        ("GET /v1/ghost", "fault", "unrecorded")]
    assert calls[0]["retry_after_s"] == 1.0 and calls[0]["status_code"] == 503
    assert calls[4]["fault_action"] == "stream_cut"
    assert calls[6]["error_type"] == "ConnectionResetError"
    assert [c["t"] for c in calls] == sorted(c["t"] for c in calls)

    events = events_of(home, "replayed-1", "shop", monkeypatch)
    first_refund = events["POST /v1/refunds"][0]
    assert first_refund["tags"]["replay"] == "fault"
    assert (first_refund["tags"]["fault"], first_refund["tags"]["fault.action"]) == \
        ("rate-limited", "status")
    assert json.loads(first_refund["tags"]["fault.rule"])["retry_after"] == 1
    assert events["POST /v1/refunds"][1]["tags"]["replay"] == "hit"
    assert events["GET /v1/stream"][0]["error_type"] == "ConnectionResetError"


def test_replay_timeout_against_a_client_timeout(home: Path, replay: Any) -> None:
    base = f"http://127.0.0.1:{free_port()}"
    proxy = replay([http_event("GET", f"{base}/v1/slow", 200, {"done": True}, seq=0)],
                   [{"id": "hang", "endpoint": "GET /v1/slow", "timeout": True, "times": 1}])
    session = proxy.session()
    with pytest.raises(requests.exceptions.ReadTimeout):
        session.get(f"{base}/v1/slow", timeout=0.5)
    assert session.get(f"{base}/v1/slow", timeout=30).json() == {"done": True}
    (report,) = proxy.stop()
    assert report["faulted"] == 1 and len(report["hits"]) == 1
    assert [c["fault_action"] for c in report["calls"]] == ["timeout", None]


def test_seeded_faults_are_identical_on_two_runs(home: Path, replay: Any) -> None:
    base = f"http://127.0.0.1:{free_port()}"
    recording = [http_event("GET", f"{base}/v1/items/{i}", 200, {"item": i}, seq=i)
                 for i in range(24)]
    rules = [{"id": "flaky", "endpoint": "GET /v1/items/*", "rate": 0.5, "seed": 7,
              "status": 500}]

    def run() -> list[int]:
        proxy = replay(recording, rules)
        session = proxy.session()
        codes = [session.get(f"{base}/v1/items/{i}").status_code for i in range(24)]
        (report,) = proxy.stop()
        assert report["faulted"] == codes.count(500)
        return codes

    first, second = run(), run()
    assert first == second
    assert 0 < first.count(500) < 24 and set(first) == {200, 500}


def test_a_call_held_when_the_proxy_stops_is_still_reported(home: Path, replay: Any) -> None:
    base = f"http://127.0.0.1:{free_port()}"
    proxy = replay([http_event("GET", f"{base}/v1/slow", 200, {"done": True}, seq=0)],
                   [{"id": "hang", "endpoint": "GET /v1/slow", "timeout": True}])
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            proxy.session().get(f"{base}/v1/slow", timeout=60)
        except requests.exceptions.RequestException as exc:
            outcome.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    time.sleep(0.5)  # the request reaches the proxy, which holds it
    (report,) = proxy.stop()
    caller.join(30)
    assert outcome and isinstance(outcome[0], requests.exceptions.ConnectionError)
    assert report["faulted"] == 1 and report["hits"] == []
    (held,) = report["calls"]
    assert (held["fault"], held["error_type"], held["replay"]) == ("hang", "TimeoutError", "fault")
