"""`tracelab proxy` end to end: the real command in a subprocess, real loopback upstreams
(HTTPS with a self-signed certificate made here, plain HTTP, HTTP/2, SSE, WebSocket), real
clients (curl, requests, websocket-client) trusting the CA that `--print-ca` prints, and the
events read back from a real redis-server or, in embedded mode, through `tl.executions`.
"""
from __future__ import annotations

import datetime as dt
import gzip
import ipaddress
import json
import os
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests

from conftest import RedisServer, TCPAcceptor, free_port
from tracelab.events import validate

ROOT = Path(__file__).resolve().parent.parent
SECRET = "Bearer PROXY-SECRET-TOKEN-123"


# -- upstreams ------------------------------------------------------------------------------

def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1/localhost signed by its own key: (cert.pem, key.pem)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tracelab-test-upstream")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "upstream-cert.pem", directory / "upstream-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class _UpstreamHandler(BaseHTTPRequestHandler):
    """Routes: /echo (anything else too) answers what it got; /sse streams two events, the
    second only once the test released it; /big-stream sends 200,000 bytes in chunks;
    /gzip and /gzip-stream a gzip-compressed JSON body, with a length or chunked."""

    protocol_version = "HTTP/1.1"
    server: Upstream  # type: ignore[assignment]

    def log_message(self, *args: object) -> None:
        pass

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.seen.append((self.command, self.path, dict(self.headers), body))
        if self.path == "/sse":
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self._chunk(b"data: first\n\n")
            self.server.release.wait(10)
            self._chunk(b'data: {"last": true}\n\n')
            self.server.last_sent.set()
            self._chunk(b"")
        elif self.path.startswith("/gzip"):
            packed = gzip.compress(b'{"compressed": true}')
            streamed = self.path == "/gzip-stream"
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Encoding", "gzip")
            if streamed:
                self.send_header("Transfer-Encoding", "chunked")
            else:
                self.send_header("Content-Length", str(len(packed)))
            self.end_headers()
            if streamed:
                self._chunk(packed)
                self._chunk(b"")
            else:
                self.wfile.write(packed)
        elif self.path == "/big-stream":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for _ in range(4):
                self._chunk(b"y" * 50_000)
            self._chunk(b"")
        else:
            reply = json.dumps({"method": self.command, "path": self.path,
                                "body": body.decode("utf-8", "replace")}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

    do_GET = do_POST = do_PUT = do_DELETE = _handle


class Upstream(ThreadingHTTPServer):
    """A real HTTP/1.1 server on 127.0.0.1 in a thread, HTTPS when given a certificate."""

    daemon_threads = True

    def __init__(self, cert: tuple[Path, Path] | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _UpstreamHandler)
        self.seen: list[tuple[str, str, dict[str, str], bytes]] = []
        self.release, self.last_sent = threading.Event(), threading.Event()
        if cert is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*cert)
            # The handshake then happens in the handler's thread, not in the accept loop.
            self.socket = context.wrap_socket(self.socket, server_side=True,
                                              do_handshake_on_connect=False)
        self.port = self.server_address[1]
        self.url = f"{'https' if cert else 'http'}://127.0.0.1:{self.port}"
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client refusing our self-signed certificate is part of the tests

    def close(self) -> None:
        self.release.set()
        self.shutdown()
        self.server_close()


class H2Upstream(TCPAcceptor):
    """A TLS server that speaks nothing but HTTP/2 (ALPN h2), built on the `h2` package."""

    def __init__(self, cert: tuple[Path, Path]) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(*cert)
        self.context.set_alpn_protocols(["h2"])
        self.served: list[dict[str, str]] = []
        super().__init__()

    def _serve(self, raw: socket.socket) -> None:
        import h2.config
        import h2.connection
        import h2.events

        try:
            with self.context.wrap_socket(raw, server_side=True) as tls:
                if tls.selected_alpn_protocol() != "h2":
                    return
                conn = h2.connection.H2Connection(
                    h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
                conn.initiate_connection()
                tls.sendall(conn.data_to_send())
                headers: dict[int, dict[str, str]] = {}
                while data := tls.recv(65536):
                    for event in conn.receive_data(data):
                        if isinstance(event, h2.events.RequestReceived):
                            headers[event.stream_id] = dict(event.headers)
                        elif isinstance(event, h2.events.DataReceived):
                            conn.acknowledge_received_data(event.flow_controlled_length,
                                                           event.stream_id)
                        elif isinstance(event, h2.events.StreamEnded):
                            request = headers.pop(event.stream_id)
                            self.served.append(request)
                            body = json.dumps({"protocol": "HTTP/2",
                                               "path": request[":path"]}).encode()
                            conn.send_headers(event.stream_id, [
                                (":status", "200"), ("content-type", "application/json"),
                                ("content-length", str(len(body)))])
                            conn.send_data(event.stream_id, body, end_stream=True)
                    tls.sendall(conn.data_to_send())
        except (OSError, ssl.SSLError):
            return

    def close(self) -> None:
        self.sock.close()


class WebSocketEcho(TCPAcceptor):
    """A plain-TCP WebSocket server (wsproto) that sends every message back."""

    @staticmethod
    def _serve(conn: socket.socket) -> None:
        from wsproto import ConnectionType, WSConnection
        from wsproto.events import (AcceptConnection, BytesMessage, CloseConnection, Ping,
                                    Request, TextMessage)

        ws = WSConnection(ConnectionType.SERVER)
        with conn:
            while True:
                data = conn.recv(65536)
                ws.receive_data(data or None)
                for event in ws.events():
                    if isinstance(event, Request):
                        conn.sendall(ws.send(AcceptConnection()))
                    elif isinstance(event, (TextMessage, BytesMessage)):
                        conn.sendall(ws.send(type(event)(data=event.data)))
                    elif isinstance(event, Ping):
                        conn.sendall(ws.send(event.response()))
                    elif isinstance(event, CloseConnection):
                        conn.sendall(ws.send(event.response()))
                        return
                if not data:
                    return

    def close(self) -> None:
        self.sock.close()


# -- the proxy under test -------------------------------------------------------------------

class Proxy:
    """`tracelab proxy` as a user starts it, in a subprocess on a free loopback port."""

    def __init__(self, home: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = proxy_env(home, env)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tracelab.cli", "proxy", "--port", str(self.port), *args],
            env=self.env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"tracelab proxy exited: {self.proc.stdout.read()!r}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.03)
        raise AssertionError("tracelab proxy did not start listening within 20 s")

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.stdout.read().decode() if self.proc.stdout else ""


def proxy_env(home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("TRACELAB_") and k.lower() not in
           ("http_proxy", "https_proxy", "all_proxy", "no_proxy")}
    env.update(TRACELAB_HOME=str(home), PYTHONPATH=str(ROOT), **(extra or {}))
    return env


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def ca(home: Path) -> Path:
    """The proxy's CA certificate, from `tracelab proxy --print-ca` (its last line)."""
    out = subprocess.run([sys.executable, "-m", "tracelab.cli", "proxy", "--print-ca"],
                         env=proxy_env(home), cwd=ROOT, capture_output=True, text=True,
                         timeout=60, check=True).stdout
    return Path(out.strip().splitlines()[-1])


@pytest.fixture
def start_proxy(home: Path) -> Iterator[Callable[..., Proxy]]:
    started: list[Proxy] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Proxy:
        started.append(Proxy(home, *args, env=env))
        return started[-1]

    yield start
    for proxy in started:
        proxy.stop()


@pytest.fixture(scope="module")
def upstream_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed_cert(tmp_path_factory.mktemp("upstream-tls"))


@pytest.fixture
def https_upstream(upstream_cert: tuple[Path, Path]) -> Iterator[Upstream]:
    server = Upstream(upstream_cert)
    yield server
    server.close()


@pytest.fixture
def http_upstream() -> Iterator[Upstream]:
    server = Upstream()
    yield server
    server.close()


def client(proxy: Proxy, ca: Path | None = None) -> requests.Session:
    """requests going through the proxy and nothing from the environment."""
    session = requests.Session()
    session.trust_env = False
    session.proxies = {"http": proxy.url, "https": proxy.url}
    session.verify = str(ca) if ca else True
    return session


def curl(proxy: Proxy, ca: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--noproxy", "", "-x", proxy.url, "--cacert", str(ca), *args, url],
        capture_output=True, text=True, timeout=30, env={"PATH": os.environ["PATH"]})


def wait_events(server: RedisServer, count: int, *, timeout: float = 10.0
                ) -> tuple[list[dict[str, Any]], bytes]:
    """Poll the stream until `count` steps arrived (the proxy publishes in the background),
    check each event against the contract, and return the steps (the run's lifecycle events,
    `kind: run`, left out) with the stream's raw bytes."""
    deadline = time.monotonic() + timeout
    while True:
        raw = [fields[b"event"] for _id, fields in server.client().xrange("trace.events")]
        events = [orjson.loads(item) for item in raw]
        steps = [event for event in events if event["kind"] != "run"]
        if len(steps) >= count or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(steps) == count, [e["endpoint"] for e in steps]
    for event in events:
        assert validate(event) == [], event
        assert event["source"] == "proxy"
    return steps, b"\n".join(raw)


def by_endpoint(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {event["endpoint"]: event for event in events}


# -- acceptance 1: HTTPS with curl and requests, CA from --print-ca, Authorization redacted ------

def test_print_ca_makes_a_private_ca_and_ends_with_its_path(home: Path, ca: Path) -> None:
    assert ca == home / "proxy" / "mitmproxy-ca-cert.pem"
    assert b"BEGIN CERTIFICATE" in ca.read_bytes()
    key = home / "proxy" / "mitmproxy-ca.pem"
    assert b"PRIVATE KEY" in key.read_bytes()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    again = subprocess.run([sys.executable, "-m", "tracelab.cli", "proxy", "--print-ca"],
                           env=proxy_env(home), cwd=ROOT, capture_output=True, text=True,
                           timeout=60)
    assert again.returncode == 0
    assert again.stdout.strip().splitlines()[-1] == str(ca)  # the same CA, not a new one
    for hint in ("--cacert", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "NODE_EXTRA_CA_CERTS"):
        assert hint in again.stdout


def test_https_through_curl_and_requests(redis_server: RedisServer, ca: Path,
                                         start_proxy: Callable[..., Proxy],
                                         https_upstream: Upstream) -> None:
    proxy = start_proxy("--ssl-insecure", "--redis-url", redis_server.url, "--workflow", "tls-wf")
    url = https_upstream.url

    got = curl(proxy, ca, f"{url}/curl/get?q=1", "-H", f"Authorization: {SECRET}")
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["path"] == "/curl/get?q=1"
    got = curl(proxy, ca, f"{url}/curl/post", "-H", f"Authorization: {SECRET}",
               "-H", "Content-Type: application/json", "--data", '{"amount": 42}')
    assert got.returncode == 0, got.stderr
    session = client(proxy, ca)
    assert session.get(f"{url}/requests/get", headers={"Authorization": SECRET}).json()[
        "method"] == "GET"
    reply = session.post(f"{url}/requests/post", json={"password": "hunter2", "item": "book"},
                         headers={"Authorization": SECRET})
    assert reply.status_code == 200 and json.loads(reply.json()["body"])["item"] == "book"

    events, raw = wait_events(redis_server, 4)
    found = by_endpoint(events)
    assert set(found) == {"GET /curl/get", "POST /curl/post", "GET /requests/get",
                          "POST /requests/post"}
    for event in events:
        assert event["workflow"] == "tls-wf" and event["service"] == "proxy"
        assert event["target"] == f"127.0.0.1:{https_upstream.port}"
        assert event["status"] == "ok" and event["status_code"] == 200
        assert event["request"]["url"].startswith(f"{url}/")
        assert event["request"]["headers"][_name(event["request"]["headers"], "authorization")] \
            == "[REDACTED]"
        assert event["response"]["body"]["method"] == event["request"]["method"]
    assert found["GET /curl/get"]["request"]["url"] == f"{url}/curl/get?q=1"
    assert found["POST /curl/post"]["request"]["body"] == {"amount": 42}
    assert found["POST /requests/post"]["request"]["body"] == {"password": "[REDACTED]",
                                                               "item": "book"}
    assert b"PROXY-SECRET-TOKEN" not in raw and b"hunter2" not in raw
    # Redaction is for the record only: the upstream got the real credentials.
    for _method, _path, headers, _body in https_upstream.seen:
        assert headers.get("Authorization") == SECRET


def _name(headers: dict[str, str], wanted: str) -> str:
    return next(name for name in headers if name.lower() == wanted)


# -- acceptance 2: plain HTTP, HTTP/2, SSE, WebSocket, refused upstream --------------------

def test_plain_http_and_failing_upstreams(redis_server: RedisServer, ca: Path,
                                          start_proxy: Callable[..., Proxy],
                                          http_upstream: Upstream) -> None:
    proxy = start_proxy("--redis-url", redis_server.url)
    session = client(proxy)
    assert session.put(f"{http_upstream.url}/items/7", data="plain text").json()["body"] == \
        "plain text"
    for path in ("/gzip", "/gzip-stream"):
        assert session.get(f"{http_upstream.url}{path}").json() == {"compressed": True}
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
        with pytest.raises(requests.exceptions.ReadTimeout):
            session.get(f"http://127.0.0.1:{silent.getsockname()[1]}/silent", timeout=0.5)
        wait_events(redis_server, 4)  # recorded while the silent upstream still holds on
    closed = free_port()
    refused = session.get(f"http://127.0.0.1:{closed}/nobody-home")
    assert refused.status_code == 502  # mitmproxy's own error page
    tunnel = curl(proxy, ca, f"https://127.0.0.1:{closed}/nobody-home-tls")
    assert tunnel.returncode != 0

    events, _ = wait_events(redis_server, 6)
    found = by_endpoint(events)
    ok = found["PUT /items/7"]
    assert ok["status"] == "ok" and ok["request"]["body"] == "plain text"
    assert ok["response"]["body"]["path"] == "/items/7"
    for path in ("/gzip", "/gzip-stream"):  # stored as the client saw it: decompressed
        assert found[f"GET {path}"]["response"]["body"] == {"compressed": True}
    timed_out = found["GET /silent"]  # the client gave up: mitmproxy reports the disconnect
    assert timed_out["status"] == "error" and timed_out["response"] is None
    assert timed_out["error"] == {"type": "ClientDisconnected", "message": "Client disconnected."}
    assert timed_out["latency_ms"] >= 400
    for endpoint in ("GET /nobody-home", "CONNECT /"):
        failed = found[endpoint]
        assert failed["status"] == "error" and failed["response"] is None
        assert failed["target"] == f"127.0.0.1:{closed}"
        assert failed["error"]["type"] == "UpstreamError"
        assert "refused" in failed["error"]["message"].lower() or \
            "connect call failed" in failed["error"]["message"].lower()


def test_http2_upstream(redis_server: RedisServer, ca: Path, upstream_cert: tuple[Path, Path],
                        start_proxy: Callable[..., Proxy]) -> None:
    server = H2Upstream(upstream_cert)
    try:
        proxy = start_proxy("--ssl-insecure", "--redis-url", redis_server.url)
        got = curl(proxy, ca, f"https://127.0.0.1:{server.port}/h2/hello", "--http2",
                   "-w", "\n%{http_version}")
        assert got.returncode == 0, got.stderr
        body, client_version = got.stdout.rsplit("\n", 1)
        assert json.loads(body) == {"protocol": "HTTP/2", "path": "/h2/hello"}
        assert client_version == "2"
        assert [r[":path"] for r in server.served] == ["/h2/hello"]  # it only speaks h2
        (event,), _ = wait_events(redis_server, 1)
        assert event["endpoint"] == "GET /h2/hello" and event["status_code"] == 200
        assert event["response"]["body"] == {"protocol": "HTTP/2", "path": "/h2/hello"}
    finally:
        server.close()


def test_sse_is_forwarded_as_it_streams_and_recorded(redis_server: RedisServer, ca: Path,
                                                      start_proxy: Callable[..., Proxy],
                                                      https_upstream: Upstream) -> None:
    proxy = start_proxy("--ssl-insecure", "--redis-url", redis_server.url)
    with client(proxy, ca).get(f"{https_upstream.url}/sse", stream=True, timeout=15) as reply:
        chunks = reply.iter_content(chunk_size=None)
        first = next(chunks)
        # The server holds the last event back until we say so: the first one came through
        # the proxy while the response was still open.
        assert first.startswith(b"data: first") and not https_upstream.last_sent.is_set()
        https_upstream.release.set()
        rest = b"".join(chunks)
    assert first + rest == b'data: first\n\ndata: {"last": true}\n\n'
    big = client(proxy, ca).get(f"{https_upstream.url}/big-stream")
    assert len(big.content) == 200_000

    events, _ = wait_events(redis_server, 2)
    found = by_endpoint(events)
    sse = found["GET /sse"]
    assert sse["status"] == "ok"
    assert sse["response"]["headers"][_name(sse["response"]["headers"], "content-type")] == \
        "text/event-stream"
    assert sse["response"]["body"] == 'data: first\n\ndata: {"last": true}\n\n'
    body = found["GET /big-stream"]["response"]["body"]
    assert body["$tracelab"] == "truncated" and body["size"] == 200_000
    assert body["encoding"] == "text" and body["data"] == "y" * 65536


def test_websocket_echo_is_one_event_per_connection(redis_server: RedisServer,
                                                    start_proxy: Callable[..., Proxy]) -> None:
    import websocket

    server = WebSocketEcho()
    try:
        proxy = start_proxy("--redis-url", redis_server.url)
        conn = websocket.create_connection(
            f"ws://127.0.0.1:{server.port}/chat?room=1", timeout=10,
            http_proxy_host="127.0.0.1", http_proxy_port=proxy.port, proxy_type="http",
            http_no_proxy=["no-proxy.invalid"])
        conn.send("hello")
        assert conn.recv() == "hello"
        conn.send('{"access_token": "WS-SECRET-1", "n": 2}')
        assert json.loads(conn.recv())["n"] == 2
        conn.send_binary(b"\x00\x01\x02")
        assert conn.recv() == b"\x00\x01\x02"
        conn.send("auth password=WS-SECRET-2 key sk_live_51FAKEtracelabExample0000000000")
        conn.recv()
        conn.send('{"note": "x", "password": "WS-SECRET-3' + "p" * 5000 + '"}')  # over 4 KiB
        conn.recv()
        conn.close()
        (event,), raw = wait_events(redis_server, 1)
    finally:
        server.close()
    assert event["kind"] == "websocket" and event["status"] == "ok"
    assert event["endpoint"] == "GET /chat" and event["status_code"] == 101
    assert event["request"]["url"] == f"ws://127.0.0.1:{server.port}/chat?room=1"
    summary = event["response"]["body"]
    assert summary["messages"] == {"from_client": 5, "from_server": 5}
    assert summary["close_code"] == 1000 and summary["closed_by"] == "client"
    first = [(m["from"], m["type"], m["content"]) for m in summary["first"]]
    assert first == [
        ("client", "text", "hello"), ("server", "text", "hello"),
        ("client", "text", {"access_token": "[REDACTED]", "n": 2}),
        ("server", "text", {"access_token": "[REDACTED]", "n": 2}),
        ("client", "binary", {"$tracelab": "binary", "size": 3, "base64": "AAEC"}),
        ("server", "binary", {"$tracelab": "binary", "size": 3, "base64": "AAEC"}),
        ("client", "text", "auth password=[REDACTED] key [REDACTED]"),
        ("server", "text", "auth password=[REDACTED] key [REDACTED]"),
    ] + [(side, "text", {"$tracelab": "truncated", "size": 5040, "encoding": "text",
                         "data": '{"note": "x", "password": "[REDACTED]'})
         for side in ("client", "server")]
    for secret in (b"WS-SECRET-1", b"WS-SECRET-2", b"WS-SECRET-3", b"sk_live_51FAKE"):
        assert secret not in raw


# -- acceptance 3: workflow from the environment and from override headers ------------------

def test_workflow_from_env_and_override_headers(redis_server: RedisServer,
                                                start_proxy: Callable[..., Proxy],
                                                http_upstream: Upstream) -> None:
    proxy = start_proxy(env={"TRACELAB_WORKFLOW_NAME": "env-wf", "TRACELAB_RUN_ID": "env-run",
                             "TRACELAB_SERVICE_NAME": "env-svc",
                             "TRACELAB_REDIS_URL": redis_server.url})
    session = client(proxy)
    session.get(f"{http_upstream.url}/from-env")
    session.get(f"{http_upstream.url}/from-headers", headers={
        "X-Tracelab-Workflow": "hdr-wf", "X-Tracelab-Run-Id": "hdr-run",
        "X-Tracelab-Service": "hdr-svc"})

    events, _ = wait_events(redis_server, 2)
    found = by_endpoint(events)
    env_event, hdr_event = found["GET /from-env"], found["GET /from-headers"]
    assert (env_event["workflow"], env_event["run_id"], env_event["service"]) == \
        ("env-wf", "env-run", "env-svc")
    assert (hdr_event["workflow"], hdr_event["run_id"], hdr_event["service"]) == \
        ("hdr-wf", "hdr-run", "hdr-svc")
    for _method, _path, headers, _body in http_upstream.seen:
        assert not [name for name in headers if name.lower().startswith("x-tracelab-")]
    assert not [name for name in hdr_event["request"]["headers"]
                if name.lower().startswith("x-tracelab-")]


# -- upstream TLS: verified by default, --upstream-ca, failure recorded as an error ----------

def test_upstream_tls_failure_is_an_error_and_upstream_ca_fixes_it(
        redis_server: RedisServer, ca: Path, upstream_cert: tuple[Path, Path],
        start_proxy: Callable[..., Proxy], https_upstream: Upstream) -> None:
    strict = start_proxy("--redis-url", redis_server.url)
    got = curl(strict, ca, f"{https_upstream.url}/untrusted", "-w", "%{http_code}")
    assert got.stdout.endswith("502"), (got.stdout, got.stderr)
    trusting = start_proxy("--redis-url", redis_server.url, "--upstream-ca",
                           str(upstream_cert[0]))
    got = curl(trusting, ca, f"{https_upstream.url}/trusted")
    assert got.returncode == 0 and json.loads(got.stdout)["path"] == "/trusted", got.stderr

    events, _ = wait_events(redis_server, 2)
    found = by_endpoint(events)
    failed = found["GET /untrusted"]
    assert failed["status"] == "error" and failed["response"] is None
    assert "certificate" in failed["error"]["message"].lower()
    assert found["GET /trusted"]["status"] == "ok"


# -- acceptance 4: embedded mode shows up in tl.executions ----------------------------------

def test_embedded_mode_events_show_up_in_executions(home: Path, tracelab_home: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    start_proxy: Callable[..., Proxy],
                                                    http_upstream: Upstream) -> None:
    monkeypatch.setenv("TRACELAB_HOME", str(home))
    proxy = start_proxy("--workflow", "embedded-wf", "--run-id", "emb-run-1")
    session = client(proxy)
    for path in ("/one", "/two", "/three"):
        session.get(f"{http_upstream.url}{path}")
    proxy.stop()  # a clean stop delivers the queue and completes the spool file

    import tracelab as tl

    executions = tl.executions("embedded-wf").df
    assert list(executions["run_id"]) == ["emb-run-1"]
    assert executions.iloc[0]["events"] == 3
    events = tl.executions("embedded-wf").events()
    assert sorted(events["endpoint"]) == ["GET /one", "GET /three", "GET /two"]
    assert set(events["source"]) == {"proxy"}


# -- the command line ------------------------------------------------------------------------

def _tracelab_proxy(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tracelab.cli", "proxy", *args],
                          env=proxy_env(home), cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("args, says", [
    (("--port", "http"), "--port: 'http' is not a port number"),
    (("--port", "70000"), "--port: '70000' is not a port number"),
    (("--upstream-ca", "/nonexistent/ca.pem"), "--upstream-ca /nonexistent/ca.pem: no such file"),
    (("--no-such-flag",), "unrecognized arguments: --no-such-flag"),
])
def test_bad_flags_give_one_clear_line(home: Path, args: tuple[str, ...], says: str) -> None:
    result = _tracelab_proxy(home, *args)
    assert result.returncode == 2
    assert says in result.stderr and "Traceback" not in result.stderr


def test_busy_port_gives_one_clear_line(home: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        result = _tracelab_proxy(home, "--port", str(port))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"tracelab proxy: cannot listen on 127.0.0.1:{port}: the port is already in use "
        "(another proxy?); stop it or pick another --port")


# -- the shared redaction corpus (spec/redaction) through the real proxy ----------------------

REDACTION_CORPUS = ROOT / "spec" / "redaction" / "cases"


def corpus_case(name: str) -> dict[str, Any]:
    """One case of the shared corpus; a missing case fails (never skips) the test."""
    assert REDACTION_CORPUS.is_dir() and any(REDACTION_CORPUS.glob("*.json")), REDACTION_CORPUS
    return json.loads((REDACTION_CORPUS / f"{name}.json").read_text(encoding="utf-8"))


class _MirrorHandler(BaseHTTPRequestHandler):
    """Answers with the request's own body and Content-Type: what was sent comes back."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def _handle(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Type", self.headers.get("Content-Type") or "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _handle


@pytest.fixture
def mirror() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _MirrorHandler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


BODY_CASES = ("body-json-every-shape", "body-json-near-misses", "body-form", "body-text",
              "body-json-key-by-shape")
HEADER_CASES = ("headers-shapes-in-harmless-headers", "headers-names-any-case")


def test_redaction_corpus_through_the_proxy(redis_server: RedisServer, mirror: str,
                                            start_proxy: Callable[..., Proxy]) -> None:
    proxy = start_proxy("--redis-url", redis_server.url)
    session = client(proxy)
    for name in BODY_CASES:
        case = corpus_case(name)
        headers = {"Content-Type": case["content_type"]} if "content_type" in case else {}
        session.post(f"{mirror}/{name}", data=case["input"].encode(), headers=headers)
    for name in HEADER_CASES:
        session.get(f"{mirror}/{name}", headers=corpus_case(name)["input"])
    url_case = corpus_case("url-shape-in-query-value")
    path = url_case["input"].split("googleapis.com", 1)[1]
    session.get(f"{mirror}{path}")
    events, raw = wait_events(redis_server, len(BODY_CASES) + len(HEADER_CASES) + 1)
    seen = by_endpoint(events)
    for name in BODY_CASES:
        event = seen[f"POST /{name}"]
        expected = corpus_case(name)["expected"]
        assert event["request"]["body"] == expected, name
        assert event["response"]["body"] == expected, name
    for name in HEADER_CASES:
        recorded = {k.lower(): v for k, v in seen[f"GET /{name}"]["request"]["headers"].items()}
        for header, value in corpus_case(name)["expected"].items():
            assert recorded[header.lower()] == value, (name, header)
    assert seen[f"GET {path.split('?')[0]}"]["request"]["url"] == \
        url_case["expected"].replace("https://maps.googleapis.com", mirror)
    for secret in ("sk_live_51FAKE", "sk-proj-FAKE", "ghp_FAKE", "AKIAIOSFODNN7EXAMPLE",
                   "eyJzdWIi", "AIzaSyFAKE", "hunter2"):
        assert secret.encode() not in raw, secret


def test_over_cap_bodies_are_redacted_before_the_cut_by_the_proxy(
        redis_server: RedisServer, mirror: str, start_proxy: Callable[..., Proxy]) -> None:
    case = corpus_case("body-truncated-json-redacted-before-cut")
    cap = case["max_body_bytes"]
    proxy = start_proxy("--redis-url", redis_server.url,
                        env={"TRACELAB_MAX_BODY_BYTES": str(cap)})
    session = client(proxy)
    session.post(f"{mirror}/big", data=case["input"].encode(),
                 headers={"Content-Type": case["content_type"]})
    cut_in_half = b'{"user": "ada", "password": "hunter2-SUPER-SECRET-AND-THEN-SOME"}'
    session.post(f"{mirror}/cut", data=cut_in_half, headers={"Content-Type": "application/json"})
    events, raw = wait_events(redis_server, 2)
    big, cut = by_endpoint(events)["POST /big"], by_endpoint(events)["POST /cut"]
    # The request arrives whole: exactly the corpus's answer (parsed, redacted, then cut).
    assert big["request"]["body"] == case["expected"]
    # A response is streamed through, keeping only the first cap+1 bytes: redacted as text,
    # and a secret value that the cut halves is still redacted.
    body = big["response"]["body"]
    assert body["$tracelab"] == "truncated" and body["size"] == len(case["input"].encode())
    assert body["data"] == '{"password": "[REDACTED]", "filler": "x'
    assert cut["response"]["body"]["data"] == '{"user": "ada", "password": "[REDACTED]'
    assert cut["request"]["body"]["data"] == '{"user":"ada","password":"[REDACTED]"}'
    assert b"hunter" not in raw
