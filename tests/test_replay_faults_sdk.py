"""Faults in the Python SDK's in-process replay: `tracelab.replay(..., faults=...)`.

Each recording is made live against a real loopback server, which is then stopped: every
answer in the replay comes from the recording or from a fault, never from the network. A
faulted call must not consume its recorded answer (the agent's retry gets it), must raise the
HTTP library's own exception for a reset or a timeout, and must be recorded with the fault's
tags and counted in the report line's `calls` and `faulted`.
"""
from __future__ import annotations

import asyncio
import json
import os
import smtplib
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import requests

import tracelab
from conftest import LoopbackHTTP, RedisServer, read_events
from tracelab.replay.faults import FaultRuleError, FaultSet
from tracelab.replay.recording import run_events, write_recording

ECHO = {"method": "POST", "path": "/v1/refunds", "body": '{"amount": 100}'}


def record(calls: Callable[[str], Any], run_id: str = "orig-1") -> str:
    """Run `calls(url)` live against a fresh loopback server under init(); return its URL
    (the server is stopped: a live call to it would now be refused)."""
    server = LoopbackHTTP()
    try:
        tracelab.init("refunds", run_id=run_id)
        calls(server.url)
        tracelab.flush()
        tracelab.shutdown()
    finally:
        server.close()
    return server.url


def refund(url: str) -> None:
    assert requests.post(f"{url}/v1/refunds", json={"amount": 100}, timeout=5).json() == ECHO


@pytest.fixture(autouse=True)
def _clean(tracelab_home: Path) -> Iterator[None]:
    yield
    tracelab.shutdown()


# -- the three HTTP clients, one shape: (status, body bytes) or the library's exception -------

def via_requests(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    got = requests.post(f"{url}/v1/refunds", json={"amount": 100}, timeout=timeout)
    return got.status_code, got.content


def via_httpx(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    with httpx.Client(timeout=timeout) as client:
        got = client.post(f"{url}/v1/refunds", json={"amount": 100})
        return got.status_code, got.content


def via_httpx_async(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    async def run() -> tuple[int, bytes]:
        async with httpx.AsyncClient(timeout=timeout) as client:
            got = await client.post(f"{url}/v1/refunds", json={"amount": 100})
            return got.status_code, got.content

    return asyncio.run(run())


CLIENTS = {"requests": via_requests, "httpx": via_httpx, "httpx-async": via_httpx_async}
RESET = {"requests": requests.ConnectionError, "httpx": httpx.ReadError,
         "httpx-async": httpx.ReadError}
TIMEOUT = {"requests": requests.exceptions.ReadTimeout, "httpx": httpx.ReadTimeout,
           "httpx-async": httpx.ReadTimeout}
RECORDED = orjson.dumps(ECHO)  # the stored JSON body, as the replay sends it back


def faulted_events(run_id: str) -> list[dict[str, Any]]:
    return [e for e in run_events(run_id) if e["tags"].get("fault")]


@pytest.mark.parametrize("name", CLIENTS)
def test_a_429_with_retry_after_then_the_retry_gets_the_recorded_answer(name: str) -> None:
    url = record(refund)
    call = CLIENTS[name]
    rule = {"id": "stripe-429", "endpoint": "POST /v1/refunds", "status": 429,
            "retry_after": 2, "times": 1}
    with tracelab.replay("orig-1", faults=[rule]) as r:
        status, body = call(url)
        assert status == 429 and json.loads(body)["error"]["rule"] == "stripe-429"
        assert call(url) == (200, RECORDED)  # the recording was not consumed by the fault
        assert r.faulted == [{"call": f"POST {url[7:]} /v1/refunds", "fault": "stripe-429",
                              "action": "status"}]
        assert len(r.hits) == 1 and r.misses == [] and r.unused == []
    events = run_events(r.run_id)
    assert [e["tags"]["replay"] for e in events] == ["fault", "hit"]
    tags = events[0]["tags"]
    assert tags["fault"] == "stripe-429" and tags["fault.action"] == "status"
    assert json.loads(tags["fault.rule"])["retry_after"] == 2
    assert events[0]["status_code"] == 429
    headers = {k.lower(): v for k, v in events[0]["response"]["headers"].items()}
    assert headers["retry-after"] == "2"
    assert "fault" not in events[1]["tags"]
    log = r.calls
    assert [(c["replay"], c["fault"], c["status_code"]) for c in log] == [
        ("fault", "stripe-429", 429), ("hit", None, 200)]
    assert log[0]["retry_after_s"] == 2.0 and log[0]["fault_action"] == "status"
    report = r.session.report()
    assert report["faulted"] == 1 and report["calls"] == log


@pytest.mark.parametrize("name", CLIENTS)
def test_reset_raises_the_librarys_own_connection_error(name: str) -> None:
    url = record(refund)
    with tracelab.replay("orig-1", faults={"endpoint": "POST /v1/refunds", "reset": True,
                                           "times": 1}) as r:
        with pytest.raises(RESET[name], match="fault injected by TraceLab"):
            CLIENTS[name](url)
        assert CLIENTS[name](url) == (200, RECORDED)
    (event,) = faulted_events(r.run_id)
    assert event["status"] == "error" and event["tags"]["fault.action"] == "reset"
    assert event["tags"]["replay"] == "fault" and len(r.faulted) == 1


@pytest.mark.parametrize("name", CLIENTS)
def test_timeout_waits_the_clients_own_timeout_and_raises_its_timeout_error(name: str) -> None:
    url = record(refund)
    with tracelab.replay("orig-1", faults={"endpoint": "POST /v1/refunds", "timeout": True,
                                           "timeout_s": 600, "times": 1}) as r:
        with pytest.raises(TIMEOUT[name]) as caught:
            CLIENTS[name](url, timeout=0.2)  # the client gives up long before the fault's 600 s
        assert "read timeout=0.2s" in str(caught.value)
        assert CLIENTS[name](url) == (200, RECORDED)
    (event,) = faulted_events(r.run_id)
    assert event["tags"]["fault.action"] == "timeout" and event["status"] == "error"


@pytest.mark.parametrize("name", CLIENTS)
@pytest.mark.parametrize("action,expected", [
    ({"empty_body": True}, b""),
    ({"malformed_body": True}, RECORDED[:len(RECORDED) // 2] + b'{"'),
    ({"truncate_after": 7}, RECORDED[:7]),
])
def test_body_faults_change_the_recorded_answer_without_consuming_it(
        name: str, action: dict[str, Any], expected: bytes) -> None:
    url = record(refund)
    with tracelab.replay("orig-1", faults={"endpoint": "POST /v1/refunds", "times": 1,
                                           **action}) as r:
        assert CLIENTS[name](url) == (200, expected)
        assert CLIENTS[name](url) == (200, RECORDED)
        assert r.unused == [] and len(r.hits) == 1 and len(r.faulted) == 1
    if "malformed_body" in action:
        with pytest.raises(ValueError):
            json.loads(expected)


def test_a_body_fault_on_an_unrecorded_call_is_a_normal_miss() -> None:
    url = record(refund)
    with tracelab.replay("orig-1", faults={"endpoint": "*", "empty_body": True}) as r:
        with pytest.raises(requests.ConnectionError, match="replay miss"):
            requests.get(f"{url}/not-recorded", timeout=5)
        assert r.faulted == [] and len(r.misses) == 1
        assert via_requests(url) == (200, b"")  # the recorded call still gets the fault


def test_status_and_reset_apply_to_calls_the_recording_does_not_hold() -> None:
    url = record(refund)
    with tracelab.replay("orig-1", faults=[{"endpoint": "GET /health", "status": 503}]) as r:
        assert requests.get(f"{url}/health", timeout=5).status_code == 503
        assert r.misses == [] and len(r.faulted) == 1 and len(r.unused) == 1


@pytest.mark.parametrize("name", CLIENTS)
def test_latency_alone_answers_from_the_recording_and_consumes_it(name: str) -> None:
    url = record(refund)
    with tracelab.replay("orig-1", faults={"endpoint": "POST /v1/refunds",
                                           "latency_ms": 20}) as r:
        assert CLIENTS[name](url) == (200, RECORDED)
        with pytest.raises((requests.ConnectionError, httpx.ConnectError), match="replay miss"):
            CLIENTS[name](url)  # consumed: a second call misses
        assert len(r.hits) == 1 and r.faulted == [] and r.unused == []
    first = run_events(r.run_id)[0]
    assert first["tags"]["replay"] == "hit" and first["tags"]["fault.action"] == "latency"
    assert first["latency_ms"] >= 20  # the fault's wait is part of the call


def test_rules_match_llm_calls_by_kind_and_request_body() -> None:
    def chat(url: str) -> None:
        for model in ("gpt-4o-mini", "small-model"):
            requests.post(f"{url}/v1/chat/completions", timeout=5,
                          json={"model": model, "messages": [{"role": "user", "content": "hi"}]})

    url = record(chat)
    rule = {"id": "gpt-down", "kind": "llm", "match_body": {"$.model": "gpt-4o*"},
            "status": 503}
    with tracelab.replay("orig-1", faults=rule) as r:
        codes = [requests.post(f"{url}/v1/chat/completions", timeout=5,
                               json={"model": model,
                                     "messages": [{"role": "user", "content": "hi"}]}
                               ).status_code for model in ("gpt-4o-mini", "small-model")]
    assert codes == [503, 200]
    assert [(c["kind"], c["fault"]) for c in r.calls] == [("llm", "gpt-down"), ("llm", None)]


# -- streams ---------------------------------------------------------------------------------

SSE = [{"t": 1, "data": "data: one\n\n"}, {"t": 2, "data": "data: two\n\n"},
       {"t": 3, "data": "data: end\n\n"}]


def sse_recording(tmp_path: Path) -> tuple[Path, str]:
    url = record(lambda u: requests.get(f"{u}/stream", timeout=5))
    (event,) = run_events("orig-1")
    event["response"]["chunks"] = SSE
    event["response"]["stream"] = {"complete": True, "error": None, "truncated": False,
                                   "size": sum(len(c["data"]) for c in SSE)}
    return write_recording([event], tmp_path / "sse.jsonl"), url


def read_requests(url: str) -> list[bytes]:
    seen: list[bytes] = []
    try:
        with requests.get(f"{url}/stream", stream=True, timeout=5) as got:
            for chunk in got.iter_content(chunk_size=None):
                seen.append(chunk)
    except requests.exceptions.ChunkedEncodingError as exc:
        seen.append(type(exc))  # type: ignore[arg-type]
    return seen


def read_httpx(url: str) -> list[bytes]:
    seen: list[bytes] = []
    try:
        with httpx.Client() as client, client.stream("GET", f"{url}/stream") as got:
            for chunk in got.iter_raw():
                seen.append(chunk)
    except httpx.ReadError as exc:
        seen.append(type(exc))  # type: ignore[arg-type]
    return seen


def read_httpx_async(url: str) -> list[bytes]:
    async def run() -> list[bytes]:
        seen: list[bytes] = []
        try:
            async with httpx.AsyncClient() as client:
                async with client.stream("GET", f"{url}/stream") as got:
                    async for chunk in got.aiter_raw():
                        seen.append(chunk)
        except httpx.ReadError as exc:
            seen.append(type(exc))  # type: ignore[arg-type]
        return seen

    return asyncio.run(run())


@pytest.mark.parametrize("read,error", [(read_requests, requests.exceptions.ChunkedEncodingError),
                                        (read_httpx, httpx.ReadError),
                                        (read_httpx_async, httpx.ReadError)])
def test_stream_cut_fails_the_recorded_stream_after_n_chunks(
        tmp_path: Path, read: Callable[[str], list[Any]], error: type) -> None:
    path, url = sse_recording(tmp_path)
    with tracelab.replay(str(path), faults={"endpoint": "GET /stream", "stream_cut_after": 1,
                                            "times": 1}) as r:
        assert read(url) == [b"data: one\n\n", error]
        assert read(url) == [b"data: one\n\n", b"data: two\n\n", b"data: end\n\n"]
        assert r.unused == [] and len(r.faulted) == 1
    (event,) = faulted_events(r.run_id)
    assert event["tags"]["fault.action"] == "stream_cut"


def test_stream_cut_before_the_first_chunk_of_a_whole_body() -> None:
    url = record(refund)
    with tracelab.replay("orig-1", faults={"endpoint": "POST /v1/refunds",
                                           "stream_cut_after": 0}) as r:
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            via_requests(url)
        with pytest.raises(httpx.ReadError):
            via_httpx(url)
        with pytest.raises(httpx.ReadError):
            via_httpx_async(url)
        assert len(r.faulted) == 3 and len(r.unused) == 1


# -- determinism, rule files, the environment --------------------------------------------------

def test_seeded_rate_faults_are_identical_on_two_replays(tmp_path: Path) -> None:
    def twenty(url: str) -> None:
        for i in range(20):
            requests.get(f"{url}/echo?i={i}", timeout=5)

    url = record(twenty)
    rules = tmp_path / "faults.yaml"
    rules.write_text("- id: flaky\n  endpoint: GET /echo\n  rate: 0.5\n  seed: 7\n"
                     "  status: 503\n  latency_ms: {uniform: [0, 5]}\n")

    def run() -> list[int]:
        with tracelab.replay("orig-1", faults=str(rules)) as r:
            codes = [requests.get(f"{url}/echo?i={i}", timeout=5).status_code
                     for i in range(20)]
        assert len(faulted_events(r.run_id)) == codes.count(503) == len(r.faulted)
        return codes

    first = run()
    assert run() == first
    assert 0 < first.count(503) < 20 and set(first) == {200, 503}


def test_a_faultset_is_used_as_is_and_bad_rules_refuse_to_start() -> None:
    record(refund)
    with pytest.raises(FaultRuleError) as caught:
        tracelab.replay("orig-1", faults=[{"status": 99, "bogus": 1}])
    assert len(caught.value.errors) >= 2
    from tracelab.replay.session import active

    assert active() is None
    faults = FaultSet.load([{"id": "x", "endpoint": "POST /v1/refunds", "status": 500}])
    with tracelab.replay("orig-1", faults=faults) as r:
        assert r.session.faults is faults


def test_bad_rules_in_the_environment_fail_every_call_closed(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from tracelab.replay.engine import _session_from_env

    recording = tmp_path / "r.jsonl"
    recording.write_text("")
    monkeypatch.setenv("TRACELAB_REPLAY", str(recording))
    monkeypatch.setenv("TRACELAB_REPLAY_FAULTS", '[{"status": 99}]')
    session = _session_from_env()
    assert session.setup_error and "rules[0].status" in session.setup_error


AGENT = """
import requests, tracelab
tracelab.init("refunds")
url = {url!r}
first = requests.post(url + "/v1/refunds", json={{"amount": 100}}, timeout=5)
second = requests.post(url + "/v1/refunds", json={{"amount": 100}}, timeout=5)
print(first.status_code, second.status_code)
"""


def test_the_report_line_of_a_process_replaying_with_faults_from_the_environment(
        tmp_path: Path, tracelab_home: Path) -> None:
    url = record(refund)
    recording = tmp_path / "refund.jsonl"
    write_recording(run_events("orig-1"), recording)
    rules = tmp_path / "faults.json"
    rules.write_text(json.dumps([{"id": "rl", "status": 429, "retry_after": 1, "times": 1}]))
    report = tmp_path / "report.jsonl"
    env = {**os.environ, "TRACELAB_REPLAY": str(recording), "TRACELAB_REPLAY_FAULTS": f"@{rules}",
           "TRACELAB_REPLAY_REPORT": str(report), "TRACELAB_HOME": str(tracelab_home)}
    done = subprocess.run([sys.executable, "-c", AGENT.format(url=url)], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["429", "200"]
    (line,) = [orjson.loads(x) for x in report.read_bytes().splitlines()]
    assert line["faulted"] == 1 and len(line["hits"]) == 1 and line["misses"] == []
    assert [(c["replay"], c["fault"], c["status_code"], c["endpoint"]) for c in line["calls"]] \
        == [("fault", "rl", 429, "POST /v1/refunds"), ("hit", None, 200, "POST /v1/refunds")]


def test_resilience_of_a_replay_is_a_dataframe_of_the_call_log() -> None:
    url = record(refund)
    with tracelab.replay("orig-1", faults={"id": "rl", "status": 429, "times": 2}) as r:
        codes = [via_requests(url)[0] for _ in range(3)]
    assert codes == [429, 429, 200]
    frame = r.resilience
    assert list(frame["fault"]) == ["rl"] and list(frame["outcome"]) == ["recovered"]
    assert list(frame["attempts"]) == [3]


# -- smtplib, boto3, hooks -----------------------------------------------------------------

def test_smtplib_status_reset_and_timeout(traced: RedisServer, tmp_path: Path) -> None:
    from test_replay_mail_smtp import SHOP, _Server

    server = _Server()
    try:
        with smtplib.SMTP("127.0.0.1", server.port) as smtp:
            smtp.sendmail(SHOP, ["ada@example.test"], "Subject: hi\r\n\r\nhello\r\n")
        events, _ = read_events(traced)
    finally:
        server.stop()
    recording = write_recording(events, tmp_path / "smtp.jsonl")

    def send(timeout: float | None = None) -> Any:
        kwargs = {"timeout": timeout} if timeout else {}
        with smtplib.SMTP("127.0.0.1", server.port, **kwargs) as smtp:
            return smtp.sendmail(SHOP, ["ada@example.test"], "Subject: hi\r\n\r\nhello\r\n")

    rules = [{"id": "busy", "kind": "email", "status": 450, "times": 1},
             {"id": "drop", "kind": "email", "reset": True, "times": 1},
             {"id": "hang", "kind": "email", "timeout": True, "timeout_s": 600, "times": 1}]
    with tracelab.replay(str(recording), faults=rules) as r:
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            send()
        assert refused.value.smtp_code == 450
        with pytest.raises(smtplib.SMTPServerDisconnected, match="fault injected"):
            send()
        with pytest.raises(smtplib.SMTPServerDisconnected, match="timed out") as hung:
            send(timeout=0.2)
        assert isinstance(hung.value.__context__, TimeoutError)
        assert send() == {}  # the recorded answer, still there
        assert [f["fault"] for f in r.faulted] == ["busy", "drop", "hang"]
        assert r.unused == [] and len(r.hits) == 1
    replayed, _ = read_events(traced)
    sends = [e for e in replayed if e.get("tags", {}).get("replay")]
    assert [e["tags"]["replay"] for e in sends] == ["fault", "fault", "fault", "hit"]
    assert [e["tags"].get("fault") for e in sends] == ["busy", "drop", "hang", None]


def test_boto3_ses_status_reset_and_timeout(traced: RedisServer, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from botocore.exceptions import ClientError, ConnectionClosedError, ReadTimeoutError
    from test_replay_mail_ses import _stop
    from test_integration_boto3 import _SESStandIn, client, url_of

    for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION",
                "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    server = _SESStandIn()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = url_of(server)

    def send() -> str:
        return client("sesv2", url).send_email(
            FromEmailAddress="shop@example.test", Destination={"ToAddresses": ["a@b.test"]},
            Content={"Simple": {"Subject": {"Data": "s"}, "Body": {"Text": {"Data": "b"}}}},
        )["MessageId"]

    try:
        recorded_id = send()
        events, _ = read_events(traced)
    finally:
        _stop(server)
    recording = write_recording(events, tmp_path / "ses.jsonl")
    rules = [{"id": "slow-down", "endpoint": "SendEmail", "status": 429, "retry_after": 3,
              "times": 1},
             {"id": "drop", "endpoint": "SendEmail", "reset": True, "times": 1},
             {"id": "hang", "endpoint": "SendEmail", "timeout": True, "timeout_s": 0.1,
              "times": 1}]
    with tracelab.replay(str(recording), faults=rules) as r:
        with pytest.raises(ClientError) as throttled:
            send()
        assert throttled.value.response["Error"]["Code"] == "Throttling"
        meta = throttled.value.response["ResponseMetadata"]
        assert meta["HTTPStatusCode"] == 429 and meta["HTTPHeaders"]["Retry-After"] == "3"
        with pytest.raises(ConnectionClosedError, match="fault injected"):
            send()
        with pytest.raises(ReadTimeoutError, match="fault injected"):
            send()
        assert send() == recorded_id
        assert len(r.faulted) == 3 and r.unused == []
    tags = [e["tags"] for e in read_events(traced)[0] if e["tags"].get("replay")]
    assert [t.get("fault") for t in tags] == ["slow-down", "drop", "hang", None]


def test_hooked_calls_get_reset_and_status(tmp_path: Path) -> None:
    calls: list[str] = []

    class Ledger:
        def charge(self, amount: int) -> dict[str, Any]:
            calls.append("live")
            return {"ok": True, "amount": amount}

    tracelab.init("hooks", run_id="orig-1")
    def describe(self: Ledger, amount: int) -> dict[str, Any]:
        return {"service": "ledger", "endpoint": "charge", "request": {"amount": amount}}

    handle = tracelab.register_hook(Ledger, "charge", describe,
                                    replay=lambda event: event["response"])
    assert Ledger().charge(5) == {"ok": True, "amount": 5}
    tracelab.flush()
    tracelab.shutdown()
    rules = [{"id": "down", "target": "ledger", "reset": True, "times": 1},
             {"id": "busy", "target": "ledger", "status": 503, "body": {"busy": True},
              "times": 1}]
    with tracelab.replay("orig-1", faults=rules) as r:
        with pytest.raises(ConnectionResetError, match="fault injected"):
            Ledger().charge(5)
        busy = Ledger().charge(5)
        assert busy["status_code"] == 503 and busy["body"] == {"busy": True}
        Ledger().charge(5)  # the recorded answer, still there
        assert calls == ["live"] and len(r.faulted) == 2 and r.unused == []
    handle.remove()


def test_twilio_status_reset_and_timeout(traced: RedisServer, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import ssl

    from twilio.base.exceptions import TwilioRestException
    from test_integration_twilio import _issue_certificates, _TwilioStandIn, twilio_client

    ca_path, cert_path, key_path = _issue_certificates(tmp_path)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert_path, key_path)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca_path))
    for var in ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_EDGE", "TWILIO_REGION"):
        monkeypatch.delenv(var, raising=False)
    server = _TwilioStandIn(tls)
    server.ca_path = ca_path  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_port

    def send() -> str:
        client = twilio_client(server, port=port)
        return client.messages.create(to="+15558675310", from_="+15017122661",
                                      body="Your code is 123456").sid

    try:
        recorded_sid = send()
        events, _ = read_events(traced)
    finally:
        server.shutdown()
        server.server_close()
    recording = write_recording(events, tmp_path / "sms.jsonl")
    rules = [{"id": "busy", "kind": "sms", "status": 429, "retry_after": 1, "times": 1},
             {"id": "drop", "kind": "sms", "reset": True, "times": 1},
             {"id": "hang", "kind": "sms", "timeout": True, "timeout_s": 0.1, "times": 1}]
    with tracelab.replay(str(recording), faults=rules) as r:
        with pytest.raises(TwilioRestException) as busy:
            send()
        assert busy.value.status == 429 and "fault injected" in busy.value.msg
        with pytest.raises(requests.exceptions.ConnectionError, match="fault injected"):
            send()
        with pytest.raises(requests.exceptions.ReadTimeout, match="fault injected"):
            send()
        assert send() == recorded_sid
        assert [f["fault"] for f in r.faulted] == ["busy", "drop", "hang"] and r.unused == []
    sends = [e for e in read_events(traced)[0] if e["tags"].get("replay")]
    assert [e["tags"].get("fault") for e in sends] == ["busy", "drop", "hang", None]
    assert sends[0]["status_code"] == 429


def test_async_hooked_calls_get_latency_and_timeout() -> None:
    class Ledger:
        async def charge(self, amount: int) -> dict[str, Any]:
            return {"ok": True, "amount": amount}

    def describe(self: Ledger, amount: int) -> dict[str, Any]:
        return {"service": "ledger", "endpoint": "charge", "request": {"amount": amount}}

    tracelab.init("hooks", run_id="orig-1")
    handle = tracelab.register_hook(Ledger, "charge", describe,
                                    replay=lambda event: "replayed")
    asyncio.run(Ledger().charge(5))
    asyncio.run(Ledger().charge(5))
    tracelab.flush()
    tracelab.shutdown()
    rules = [{"id": "hang", "target": "ledger", "timeout": True, "timeout_s": 0.05,
              "times": 1},
             {"id": "slow", "target": "ledger", "latency_ms": 30}]
    try:
        with tracelab.replay("orig-1", faults=rules) as r:
            with pytest.raises(TimeoutError, match="fault injected"):
                asyncio.run(Ledger().charge(5))
            assert asyncio.run(Ledger().charge(5)) == "replayed"
            assert asyncio.run(Ledger().charge(5)) == "replayed"
            assert [f["fault"] for f in r.faulted] == ["hang"] and len(r.hits) == 2
    finally:
        handle.remove()
    assert [(c["replay"], c["fault_action"]) for c in r.calls] == [
        ("fault", "timeout"), ("hit", "latency"), ("hit", "latency")]
    assert all(c["latency_ms"] >= 30 for c in r.calls[1:])
