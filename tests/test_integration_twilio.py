"""twilio integration: the real twilio client against a loopback stand-in of the Messages API.

The client is reached through twilio's own documented proxy setting,
`TwilioHttpClient(proxy={"https": ...})`: the stand-in is an HTTPS proxy that answers the
CONNECT for `api.twilio.com:443`, terminates TLS with a certificate for `api.twilio.com`
issued by a throwaway test CA (trusted through requests' `REQUESTS_CA_BUNDLE`), and speaks
enough of `POST /2010-04-01/Accounts/{sid}/Messages.json`. Nothing in twilio is patched or
rewritten by the test: the request it sends is the one it would send to Twilio.
"""
from __future__ import annotations

import base64
import datetime as dt
import json
import os
import socketserver
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twilio.base.exceptions import TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

import tracelab
from tracelab.sdk.integrations import twilio as twilio_integration

from conftest import (RedisServer, capture_broken, free_port, raised_in_library, read_events,
                      run_late_import)

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "twilio-auth-token-c0ffee1234"
INVALID_NUMBER = "+15005550001"  # Twilio's magic test number for "invalid To"
TWILIO_HOST = "api.twilio.com"


def _issue_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a certificate for api.twilio.com signed by it (PEM files)."""
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "TraceLab test CA")])
    ca_cert = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, TWILIO_HOST)]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(TWILIO_HOST)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256()))
    ca_path, cert_path, key_path = (directory / "ca.pem", directory / "twilio.pem",
                                    directory / "twilio.key")
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return ca_path, cert_path, key_path


class _TwilioStandIn(ThreadingHTTPServer):
    def __init__(self, tls: ssl.SSLContext) -> None:
        super().__init__(("127.0.0.1", 0), _TwilioHandler)
        self.tls = tls
        self.seen: list[dict[str, Any]] = []  # one entry per Messages API request
        self.connects: list[str] = []


class _TwilioHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _TwilioStandIn

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_CONNECT(self) -> None:
        """Accept the tunnel, then serve the requests inside it over TLS on this connection."""
        self.server.connects.append(self.path)
        if self.path != f"{TWILIO_HOST}:443":
            self.send_error(403, "this stand-in only tunnels to api.twilio.com")
            return
        self.send_response(200, "Connection established")
        self.end_headers()
        self.wfile.flush()
        tls = self.server.tls.wrap_socket(self.connection, server_side=True)
        self.connection = self.request = tls
        self.rfile = tls.makefile("rb")
        self.wfile = socketserver._SocketWriter(tls)  # type: ignore[attr-defined]
        self.close_connection = False  # the CONNECT came as HTTP/1.0: keep the tunnel open

    def _json(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        form = {k: v[0] for k, v in parse_qs(body).items()}
        self.server.seen.append({"path": self.path, "form": form,
                                 "authorization": self.headers.get("Authorization", "")})
        expected_auth = "Basic " + base64.b64encode(f"{ACCOUNT_SID}:{AUTH_TOKEN}".encode()).decode()
        if self.headers.get("Authorization") != expected_auth:
            self._json(401, {"code": 20003, "message": "Authenticate", "status": 401})
        elif self.path != f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json":
            self._json(404, {"code": 20404, "message": "not found", "status": 404})
        elif form.get("To") == INVALID_NUMBER:
            self._json(400, {"code": 21211, "status": 400,
                             "message": f"The 'To' number {INVALID_NUMBER} is not a valid phone "
                                        "number.",
                             "more_info": "https://www.twilio.com/docs/errors/21211"})
        else:
            sid = f"SM{len(self.server.seen):032x}"
            self._json(201, {
                "sid": sid, "account_sid": ACCOUNT_SID, "to": form.get("To"),
                "from": form.get("From"), "body": form.get("Body"), "status": "queued",
                "num_segments": "1", "num_media": "0", "direction": "outbound-api",
                "api_version": "2010-04-01", "price": None, "price_unit": "USD",
                "error_code": None, "error_message": None,
                "date_created": "Thu, 01 May 2025 12:00:00 +0000",
                "date_updated": "Thu, 01 May 2025 12:00:00 +0000", "date_sent": None,
                "uri": f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{sid}.json",
            })


@pytest.fixture(scope="module")
def twilio_server(
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[_TwilioStandIn, Path]]:
    ca_path, cert_path, key_path = _issue_certificates(tmp_path_factory.mktemp("twilio-tls"))
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert_path, key_path)
    server = _TwilioStandIn(tls)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, ca_path
    server.shutdown()
    server.server_close()


@pytest.fixture
def stand_in(twilio_server: tuple[_TwilioStandIn, Path],
             monkeypatch: pytest.MonkeyPatch) -> _TwilioStandIn:
    server, ca_path = twilio_server
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca_path))  # requests' own trust setting
    for var in ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_EDGE", "TWILIO_REGION"):
        monkeypatch.delenv(var, raising=False)
    server.seen.clear()
    server.connects.clear()
    return server


def twilio_client(server: _TwilioStandIn, port: int | None = None) -> Client:
    proxy = f"http://127.0.0.1:{port or server.server_port}"
    http_client = TwilioHttpClient(proxy={"https": proxy}, timeout=10)
    return Client(ACCOUNT_SID, AUTH_TOKEN, http_client=http_client)


def assert_no_token(raw: bytes) -> None:
    assert AUTH_TOKEN.encode() not in raw
    assert base64.b64encode(f"{ACCOUNT_SID}:{AUTH_TOKEN}".encode()) not in raw


def test_messages_create_is_one_sms_event(traced: RedisServer, stand_in: _TwilioStandIn) -> None:
    client = twilio_client(stand_in)
    requests_before = tracelab.stats()["integrations"].get("requests", {}).get("captured", 0)
    with tracelab.span("notify-customer") as step:
        message = client.messages.create(to="+15558675310", from_="+15017122661",
                                         body="Your code is 123456")
    assert (message.status, message.to) == ("queued", "+15558675310")
    assert stand_in.connects == [f"{TWILIO_HOST}:443"]
    assert stand_in.seen[0]["form"] == {"To": "+15558675310", "From": "+15017122661",
                                        "Body": "Your code is 123456"}

    events, raw = read_events(traced)
    assert sorted(e["kind"] for e in events) == ["function", "sms"]  # no "http" from requests
    [event] = [e for e in events if e["kind"] == "sms"]
    assert (event["target"], event["endpoint"]) == ("twilio", "messages.create")
    assert (event["status"], event["status_code"], event["error"]) == ("ok", None, None)
    assert event["parent_id"] == step.span_id
    assert event["request"] == {"to": "+15558675310", "from": "+15017122661",
                                "body": "Your code is 123456", "account_sid": ACCOUNT_SID}
    response = event["response"]
    assert (response["sid"], response["status"]) == (message.sid, "queued")
    assert response["date_created"] == "2025-05-01T12:00:00+00:00"
    assert_no_token(raw)
    assert tracelab.stats()["integrations"].get("requests", {}).get("captured", 0) == requests_before


def test_create_with_http_info_reports_the_status_code(traced: RedisServer,
                                                       stand_in: _TwilioStandIn) -> None:
    client = twilio_client(stand_in)
    reply = client.api.v2010.accounts(ACCOUNT_SID).messages.create_with_http_info(
        to="+15558675311", from_="+15017122661", body="hi",
        status_callback="https://example.test/cb")
    assert reply.status_code == 201

    events, raw = read_events(traced)
    [event] = events
    assert (event["kind"], event["endpoint"], event["status"], event["status_code"]) == \
        ("sms", "messages.create", "ok", 201)
    assert event["request"]["status_callback"] == "https://example.test/cb"
    assert event["response"]["sid"] == reply.data.sid
    assert_no_token(raw)


def test_rejected_number_is_an_error_with_its_status(traced: RedisServer,
                                                     stand_in: _TwilioStandIn) -> None:
    client = twilio_client(stand_in)
    with pytest.raises(TwilioRestException) as caught:
        client.messages.create(to=INVALID_NUMBER, from_="+15017122661", body="hello")
    assert (caught.value.status, caught.value.code) == (400, 21211)
    assert raised_in_library(caught.value)

    events, raw = read_events(traced)
    [event] = events
    assert (event["kind"], event["status"], event["status_code"]) == ("sms", "error", 400)
    assert event["error"]["type"] == "TwilioRestException"
    assert "not a valid phone number" in event["error"]["message"]
    assert "\x1b[" not in event["error"]["message"]  # never the terminal-coloured form
    assert event["response"]["code"] == 21211
    assert_no_token(raw)


def test_unreachable_proxy_is_an_error_and_reraised(traced: RedisServer,
                                                    stand_in: _TwilioStandIn) -> None:
    import requests

    client = twilio_client(stand_in, port=free_port())
    with pytest.raises(requests.exceptions.ConnectionError) as caught:
        client.messages.create(to="+15558675310", from_="+15017122661", body="hello")
    assert raised_in_library(caught.value)

    events, raw = read_events(traced)
    [event] = events  # one sms event, no http event from requests
    assert (event["kind"], event["status"], event["status_code"], event["response"]) == \
        ("sms", "error", None, None)
    assert event["error"]["type"] == "ProxyError"
    assert_no_token(raw)


def test_twilio_imported_after_init_is_traced(redis_server: RedisServer, tracelab_home: Any,
                                              stand_in: _TwilioStandIn) -> None:
    events, raw = run_late_import(redis_server, ("twilio", "requests"), f"""
        from twilio.http.http_client import TwilioHttpClient
        from twilio.rest import Client
        client = Client({ACCOUNT_SID!r}, {AUTH_TOKEN!r}, http_client=TwilioHttpClient(
            proxy={{"https": "http://127.0.0.1:{stand_in.server_port}"}}, timeout=10))
        client.messages.create(to="+15558675310", from_="+15017122661", body="late")
        """)
    [event] = events
    assert (event["workflow"], event["kind"], event["request"]["body"]) == \
        ("late-import", "sms", "late")
    assert_no_token(raw)


def test_create_async_is_traced(redis_server: RedisServer, tracelab_home: Any,
                                twilio_server: tuple[_TwilioStandIn, Path],
                                stand_in: _TwilioStandIn) -> None:
    # twilio 9.13's AsyncTwilioHttpClient stores its documented `proxy_url` setting but never
    # hands it to aiohttp, so the subclass below (twilio's documented extension point for
    # proxies, advanced-examples/custom-http-client.md) gives its aiohttp session that proxy.
    # The URL is not touched: the request still goes to https://api.twilio.com, TLS-verified.
    # A fresh interpreter, because aiohttp reads SSL_CERT_FILE once, when it is imported.
    _, ca_path = twilio_server
    script = f"""
import asyncio, tracelab
from aiohttp import ClientSession
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client
tracelab.init(workflow_name="async-sms", redis_url={redis_server.url!r})

class ProxiedAsyncTwilioHttpClient(AsyncTwilioHttpClient):
    def __init__(self, proxy_url):
        super().__init__(proxy_url=proxy_url, pool_connections=False)
        self.session = ClientSession(proxy=proxy_url)

@tracelab.trace
async def notify():
    http_client = ProxiedAsyncTwilioHttpClient("http://127.0.0.1:{stand_in.server_port}")
    client = Client({ACCOUNT_SID!r}, {AUTH_TOKEN!r}, http_client=http_client)
    try:
        message = await client.messages.create_async(to="+15558675310", from_="+15017122661",
                                                     body="async hello")
        try:
            await client.messages.create_async(to={INVALID_NUMBER!r}, from_="+1501", body="x")
        except Exception as exc:
            assert type(exc).__name__ == "TwilioRestException", exc
        else:
            raise AssertionError("the invalid number was accepted")
        return message.sid
    finally:
        await http_client.session.close()

assert asyncio.run(notify()).startswith("SM")
assert tracelab.flush(5.0)
tracelab.shutdown()
"""
    env = {**os.environ, "SSL_CERT_FILE": str(ca_path)}
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60, env=env,
                   cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert stand_in.connects and set(stand_in.connects) == {f"{TWILIO_HOST}:443"}
    assert [seen["form"]["Body"] for seen in stand_in.seen] == ["async hello", "x"]
    events, raw = read_events(redis_server)
    [span] = [e for e in events if e["kind"] == "function"]
    sent, rejected = [e for e in events if e["kind"] == "sms"]
    assert len(events) == 3  # no http event from aiohttp either
    assert (sent["endpoint"], sent["status"], sent["request"]["body"]) == \
        ("messages.create", "ok", "async hello")
    assert (rejected["status"], rejected["status_code"]) == ("error", 400)
    assert sent["parent_id"] == rejected["parent_id"] == span["span_id"]
    assert_no_token(raw)


def test_failing_capture_is_counted_never_felt(traced: RedisServer, stand_in: _TwilioStandIn,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    with capture_broken(monkeypatch, twilio_integration, "build_event"):
        message = twilio_client(stand_in).messages.create(to="+15558675310",
                                                          from_="+15017122661", body="still sent")
    assert message.status == "queued"
