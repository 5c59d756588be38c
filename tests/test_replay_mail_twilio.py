"""twilio replay: record `messages.create` through the loopback Twilio stand-in, stop it, replay.

The client reaches the stand-in through twilio's own proxy setting, as in
tests/test_integration_twilio.py. During the replay the stand-in is shut down (a real request
would be refused), twilio still builds the recorded MessageInstance / ApiResponse and raises
the recorded `TwilioRestException` itself, and a changed number is the error a refused
connection gives at twilio's HTTP layer: requests' `ConnectionError`, naming the difference.
"""
from __future__ import annotations

import os
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
from twilio.base.exceptions import TwilioRestException

import tracelab

from conftest import RedisServer, read_events
from test_integration_twilio import (ACCOUNT_SID, AUTH_TOKEN, INVALID_NUMBER,
                                     _issue_certificates, _TwilioStandIn, twilio_client)


@pytest.fixture
def stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[_TwilioStandIn]:
    ca_path, cert_path, key_path = _issue_certificates(tmp_path)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert_path, key_path)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca_path))
    for var in ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_EDGE", "TWILIO_REGION"):
        monkeypatch.delenv(var, raising=False)
    server = _TwilioStandIn(tls)
    server.ca_path = ca_path  # type: ignore[attr-defined]
    server.running = True  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        if server.running:  # type: ignore[attr-defined]
            _stop(server)


def _stop(server: _TwilioStandIn) -> None:
    server.shutdown()
    server.server_close()
    server.running = False  # type: ignore[attr-defined]


def _workload(server: _TwilioStandIn, port: int, to: str = "+15558675310") -> dict[str, Any]:
    """What the app does: an SMS, one with http info, one to a number Twilio rejects."""
    client = twilio_client(server, port=port)
    out: dict[str, Any] = {}
    message = client.messages.create(to=to, from_="+15017122661", body="Your code is 123456")
    out["sms"] = (message.sid, message.status, message.to, message.date_created)
    info = client.api.v2010.accounts(ACCOUNT_SID).messages.create_with_http_info(
        to=to, from_="+15017122661", body="hi", status_callback="https://example.test/cb")
    out["info"] = (info.status_code, info.data.sid)
    try:
        client.messages.create(to=INVALID_NUMBER, from_="+15017122661", body="hello")
    except TwilioRestException as exc:
        out["rejected"] = (exc.status, exc.code, exc.msg)
    return out


def _record(traced: RedisServer, server: _TwilioStandIn,
            path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    live = _workload(server, server.server_port)
    assert live["rejected"][:2] == (400, 21211)
    events, _ = read_events(traced)
    assert [e["kind"] for e in events] == ["sms", "sms", "sms"]
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    return live, events


def _new_events(traced: RedisServer, recorded: list[dict[str, Any]]) -> list[dict[str, Any]]:
    events, _ = read_events(traced)
    old = {e["event_id"] for e in recorded}
    return [e for e in events if e["event_id"] not in old]


def test_replay_builds_the_recorded_messages_with_no_server(
        traced: RedisServer, stand_in: _TwilioStandIn, tmp_path: Path) -> None:
    recording = tmp_path / "sms.jsonl"
    live, recorded = _record(traced, stand_in, recording)
    port, seen = stand_in.server_port, len(stand_in.seen)
    _stop(stand_in)

    with tracelab.replay(str(recording)) as session:
        replayed = _workload(stand_in, port)
    assert replayed == live  # sid, status, parsed date, 201, and twilio's own error message
    assert list(session.misses) == [] and list(session.unused) == []
    assert len(stand_in.seen) == seen

    new = _new_events(traced, recorded)
    assert [(e["kind"], e["status"], e["status_code"]) for e in new] == \
        [("sms", "ok", None), ("sms", "ok", 201), ("sms", "error", 400)]
    assert [e["tags"].get("replay") for e in new] == ["hit", "hit", "hit"]
    assert [e["response"] for e in new] == [e["response"] for e in recorded]


def test_changed_number_is_a_refused_connection(traced: RedisServer, stand_in: _TwilioStandIn,
                                                tmp_path: Path) -> None:
    recording = tmp_path / "sms.jsonl"
    _, recorded = _record(traced, stand_in, recording)
    port = stand_in.server_port
    _stop(stand_in)

    with tracelab.replay(str(recording)) as session:
        with pytest.raises(requests.exceptions.ConnectionError) as caught:
            _workload(stand_in, port, to="+15550009999")
    message = str(caught.value)
    assert "+15550009999" in message and "+15558675310" in message
    assert len(session.misses) == 1

    [missed] = _new_events(traced, recorded)
    assert (missed["kind"], missed["status"], missed["error"]["type"]) == \
        ("sms", "error", "ConnectionError")
    assert missed["tags"].get("replay") == "miss"


def test_create_async_is_answered_from_the_recording(
        redis_server: RedisServer, tracelab_home: Any, stand_in: _TwilioStandIn,
        tmp_path: Path) -> None:
    """create_async over aiohttp: recorded live, then replayed with the stand-in stopped."""
    recording = tmp_path / "sms-async.jsonl"
    script = f"""
import asyncio, sys, tracelab
from aiohttp import ClientSession
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client
tracelab.init(workflow_name="async-sms", redis_url={redis_server.url!r})

class ProxiedAsyncTwilioHttpClient(AsyncTwilioHttpClient):
    def __init__(self, proxy_url):
        super().__init__(proxy_url=proxy_url, pool_connections=False)
        self.session = ClientSession(proxy=proxy_url)

async def notify(to):
    http_client = ProxiedAsyncTwilioHttpClient("http://127.0.0.1:{stand_in.server_port}")
    client = Client({ACCOUNT_SID!r}, {AUTH_TOKEN!r}, http_client=http_client)
    try:
        message = await client.messages.create_async(to=to, from_="+15017122661", body="async")
        return message.sid
    finally:
        await http_client.session.close()

if sys.argv[1] == "record":
    print(asyncio.run(notify("+15558675310")))
else:
    import aiohttp
    with tracelab.replay({str(recording)!r}):
        print(asyncio.run(notify("+15558675310")))
        try:
            asyncio.run(notify("+15550009999"))
        except aiohttp.ClientConnectionError as exc:
            print("miss:", exc)
assert tracelab.flush(5.0)
tracelab.shutdown()
"""
    env = {**os.environ, "SSL_CERT_FILE": str(stand_in.ca_path)}  # type: ignore[attr-defined]
    cwd = Path(__file__).resolve().parent.parent
    recorded = subprocess.run([sys.executable, "-c", script, "record"], check=True, timeout=60,
                              env=env, cwd=cwd, capture_output=True, text=True).stdout.split()
    events, _ = read_events(redis_server)
    recording.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    _stop(stand_in)
    seen = len(stand_in.seen)

    out = subprocess.run([sys.executable, "-c", script, "replay"], check=True, timeout=60,
                         env=env, cwd=cwd, capture_output=True, text=True).stdout.splitlines()
    assert out[0] == recorded[0]
    assert out[1].startswith("miss:") and "+15550009999" in out[1]
    assert len(stand_in.seen) == seen


def test_passthrough_sends_only_the_unrecorded_sms(traced: RedisServer,
                                                  stand_in: _TwilioStandIn,
                                                  tmp_path: Path) -> None:
    recording = tmp_path / "sms.jsonl"
    live, recorded = _record(traced, stand_in, recording)
    stand_in.seen.clear()
    with tracelab.replay(str(recording), on_miss="passthrough") as session:
        client = twilio_client(stand_in)
        hit = client.messages.create(to="+15558675310", from_="+15017122661",
                                     body="Your code is 123456")
        sent = client.messages.create(to="+15550009999", from_="+15017122661", body="new")
    assert hit.sid == live["sms"][0]
    assert sent.status == "queued"
    assert [seen["form"]["To"] for seen in stand_in.seen] == ["+15550009999"]
    assert len(session.passthrough) == 1  # the HTTP beneath is not counted a second time
    assert [e["tags"].get("replay") for e in _new_events(traced, recorded)] == \
        ["hit", "passthrough"]


def test_a_recorded_refused_connection_is_refused_again(traced: RedisServer,
                                                        stand_in: _TwilioStandIn,
                                                        tmp_path: Path) -> None:
    from conftest import free_port

    closed = free_port()
    with pytest.raises(requests.exceptions.ConnectionError):
        twilio_client(stand_in, port=closed).messages.create(to="+15558675310",
                                                             from_="+15017122661", body="hi")
    events, _ = read_events(traced)
    recording = tmp_path / "refused.jsonl"
    recording.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    with tracelab.replay(str(recording)) as session:
        with pytest.raises(requests.exceptions.ConnectionError) as caught:
            twilio_client(stand_in, port=closed).messages.create(to="+15558675310",
                                                                 from_="+15017122661", body="hi")
    assert "ProxyError" in str(caught.value) and "replayed from the recording" in str(caught.value)
    assert len(session.hits) == 1 and stand_in.seen == []
