"""Shared fixtures: real servers on loopback, never fakes of TraceLab's own parts."""
from __future__ import annotations

import fcntl
import hashlib
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from pathlib import Path
from typing import Any

import pytest
import redis


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now.

    Picked below the kernel's ephemeral range (`ip_local_port_range`): a port the kernel hands
    out (port 0) can be handed again, as the source port of any test's outgoing connection,
    between this check and the server's bind ("address already in use"); ports below that
    range are only ever taken by an explicit bind. Random, so parallel tests rarely pick alike.
    """
    low = _ephemeral_low()
    for _ in range(200):
        port = random.randrange(10_000, max(10_001, low))
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


@pytest.fixture(scope="session", autouse=True)
def _worker_private_dirs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Keep what tests would leave in the shared $HOME in this worker's temp dir instead.

    Under pytest-xdist two workers share one home: TraceLab's default home (`~/.tracelab`, its
    lock files and spool, for code that is given a store but no home) and IPython's profile
    (`~/.ipython`, whose history.sqlite every test kernel writes) would be written by both at
    once. Tests that need a particular TRACELAB_HOME still set their own (`tracelab_home`).
    """
    base = tmp_path_factory.mktemp("worker-home")
    patch = pytest.MonkeyPatch()
    patch.setenv("TRACELAB_HOME", str(base / "tracelab"))
    patch.setenv("IPYTHONDIR", str(base / "ipython"))
    try:
        yield
    finally:
        patch.undo()


@contextmanager
def build_lock(name: str) -> Iterator[None]:
    """Hold an exclusive `flock` named after `name` and this checkout while building.

    Two xdist workers may reach a build step (the web UI's `npm ci && npm run build`) at the
    same time; the second waits here, then finds the build done. The lock file lives in the
    system temp dir, never in the checkout; the kernel releases it if a worker dies.
    """
    checkout = hashlib.sha256(str(Path(__file__).resolve().parent.parent).encode()).hexdigest()
    path = Path(tempfile.gettempdir()) / f"tracelab-tests-{name}-{checkout[:12]}.lock"
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class TCPAcceptor:
    """A plain TCP server on loopback that hands each connection to `_serve` on a thread of
    its own (the WebSocket and HTTP/2 servers the proxy tests talk to)."""

    def __init__(self) -> None:
        import socket
        import threading

        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import threading

        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: Any) -> None:
        raise NotImplementedError


class RedisServer:
    """A real `redis-server` process on a free loopback port, stoppable and restartable."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: run `make install`")
        self.binary = binary
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir), "--protected-mode", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                redis.Redis.from_url(self.url, socket_timeout=0.5).ping()
                return
            except redis.exceptions.ConnectionError:
                time.sleep(0.02)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server for one test."""
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def tracelab_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty TRACELAB_HOME for one test, with no Redis configured (embedded mode)."""
    home = tmp_path / "tracelab-home"
    monkeypatch.setenv("TRACELAB_HOME", str(home))
    for var in ("TRACELAB_REDIS_URL", "TRACELAB_WORKFLOW_NAME", "TRACELAB_RUN_ID",
                "TRACELAB_SERVICE_NAME", "TRACELAB_TAGS", "TRACELAB_DISABLED", "TRACELAB_REDACT"):
        monkeypatch.delenv(var, raising=False)
    return home


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests talk to loopback only: never route them through a proxy from the environment."""
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    os.environ.setdefault("TRACELAB_TEST", "1")


class _LoopbackHandler(__import__("http.server").server.BaseHTTPRequestHandler):
    """A small vendor-like HTTP API on loopback; routes are chosen by path."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:  # keep test output clean
        pass

    def _reply(self, code: int, body: bytes, ctype: str = "application/json",
               headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _handle(self) -> None:
        import json
        from urllib.parse import parse_qs, urlsplit

        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.requests_seen.append((self.command, self.path, dict(self.headers), body))  # type: ignore[attr-defined]
        parts = urlsplit(self.path)
        path, query = parts.path, parse_qs(parts.query)
        if path.startswith("/status/"):
            code = int(path.rsplit("/", 1)[1])
            self._reply(code, json.dumps({"error": {"message": f"status {code}"}}).encode())
        elif path == "/binary":
            self._reply(200, bytes(range(256)) * 4, "application/octet-stream")
        elif path == "/big":
            self._reply(200, b"x" * int(query.get("n", ["200000"])[0]), "text/plain")
        elif path == "/secret":
            self._reply(200, json.dumps({"access_token": "RESP-TOKEN-SECRET-123",
                                         "user": {"password": "RESP-PASSWORD-456"}}).encode(),
                        headers={"Set-Cookie": "session=RESP-COOKIE-789"})
        elif path == "/redirect":
            self._reply(302, b"", headers={"Location": "/echo"})
        elif path == "/stream":
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Content-Length", "33")
            self.end_headers()
            self.wfile.write(b"data: one\n\ndata: two\n\ndata: end\n\n"[:33])
        elif path.endswith("/chat/completions"):
            request = json.loads(body or b"{}")
            self._reply(200, json.dumps({
                "id": "chatcmpl-1", "model": request.get("model", "gpt-test"),
                "choices": [{"message": {"role": "assistant", "content": "hi"}}],
                "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
            }).encode())
        else:
            self._reply(200, json.dumps({"method": self.command, "path": self.path,
                                         "body": body.decode("utf-8", "replace")}).encode())

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle


class LoopbackHTTP:
    """A real HTTP server on 127.0.0.1 in a thread (see `_LoopbackHandler` for its routes)."""

    def __init__(self) -> None:
        import http.server
        import threading

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _LoopbackHandler)
        self.server.daemon_threads = True
        self.server.requests_seen = []  # type: ignore[attr-defined]
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def requests_seen(self) -> list[tuple[str, str, dict[str, str], bytes]]:
        return self.server.requests_seen  # type: ignore[attr-defined]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def loopback_http() -> Iterator[LoopbackHTTP]:
    server = LoopbackHTTP()
    try:
        yield server
    finally:
        server.close()


def is_step(event: dict[str, Any]) -> bool:
    """Not a run's lifecycle event (`kind: run` start/end, one pair per `init()`'s run)."""
    return event.get("kind") != "run"


def read_stream(client: redis.Redis, stream: str = "trace.events") -> list[dict]:
    """Every step in a Redis stream, decoded, in stream order (lifecycle events left out)."""
    import orjson

    events = [orjson.loads(fields[b"event"]) for _id, fields in client.xrange(stream)]
    return [event for event in events if is_step(event)]


def read_events(server: RedisServer) -> tuple[list[dict[str, Any]], bytes]:
    """Flush, then every step in the stream (each event checked against the event contract;
    lifecycle events left out) and the stream's raw bytes, lifecycle events included (for
    secret checks)."""
    import orjson

    import tracelab
    from tracelab.events import validate

    assert tracelab.flush(timeout=5.0)
    raw = [fields[b"event"] for _id, fields in server.client().xrange("trace.events")]
    events = [orjson.loads(item) for item in raw]
    for event in events:
        assert validate(event) == [], event
    return [event for event in events if is_step(event)], b"\n".join(raw)


def raised_in_library(exc: BaseException) -> bool:
    """The traceback still ends where the library raised it, not in TraceLab's wrapper."""
    innermost = traceback.extract_tb(exc.__traceback__)[-1].filename
    return f"{os.sep}tracelab{os.sep}" not in innermost


def capture_errors(origin: str) -> int:
    """How many times an integration's capture code has failed (and been swallowed) so far."""
    import tracelab

    return tracelab.stats()["integrations"].get(origin, {}).get("errors", 0)


@contextmanager
def capture_broken(monkeypatch: pytest.MonkeyPatch, integration: ModuleType,
                   attr: str) -> Iterator[None]:
    """Inside the block, `integration.attr` (its capture code) raises; on leaving, exactly one
    capture failure must have been counted for the integration's origin."""
    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("capture bug")

    errors_before = capture_errors(integration.ORIGIN)
    monkeypatch.setattr(integration, attr, broken)
    yield
    assert capture_errors(integration.ORIGIN) == errors_before + 1


def run_late_import(server: RedisServer, not_yet_imported: tuple[str, ...], body: str,
                    env: dict[str, str] | None = None) -> tuple[list[dict[str, Any]], bytes]:
    """Run `body` in a fresh interpreter where TraceLab is initialised (workflow `late-import`)
    before any of `not_yet_imported` is, then return what it recorded, as `read_events` does."""
    script = "\n".join([
        "import sys, tracelab",
        *(f"assert {name!r} not in sys.modules, {name!r}" for name in not_yet_imported),
        f"tracelab.init(workflow_name='late-import', redis_url={server.url!r})",
        textwrap.dedent(body),
        "assert tracelab.flush(5.0)",
        "tracelab.shutdown()",
    ])
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60, env=env,
                   cwd=Path(__file__).resolve().parent.parent)
    return read_events(server)


@pytest.fixture
def traced(redis_server: RedisServer, tracelab_home: Path) -> Iterator[RedisServer]:
    """TraceLab initialised against a real Redis for one test, shut down afterwards."""
    import tracelab

    tracelab.init(workflow_name="test-wf", service_name="test-svc", redis_url=redis_server.url)
    try:
        yield redis_server
    finally:
        tracelab.shutdown()


@pytest.fixture(scope="session")
def s3() -> Iterator[Any]:
    """One real `moto_server` (S3 on loopback) for the session; each test uses its own prefix."""
    from s3_server import moto_s3

    with moto_s3() as endpoint:
        yield endpoint
