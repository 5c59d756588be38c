"""A real S3-compatible server on loopback for the object-store tests and bench.

`moto_server` (moto in server mode) speaks the S3 wire protocol over HTTP, so the code under test
talks to it exactly as it would talk to AWS, MinIO or any other S3-compatible store: nothing of
TraceLab is faked, only the vendor's service is replaced by a local one.
"""
from __future__ import annotations

import http.client
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import boto3

from conftest import free_port

ACCESS_KEY = "tracelab-test"
SECRET_KEY = "tracelab-test-secret"
REGION = "us-east-1"


@dataclass
class S3Endpoint:
    """Where the loopback S3 server listens and the environment a client needs to reach it."""

    url: str
    bucket: str
    env: dict[str, str] = field(default_factory=dict)

    def store_uri(self, prefix: str) -> str:
        """The `TRACELAB_STORE` value of a store under `prefix` in this endpoint's bucket."""
        return f"s3://{self.bucket}/{prefix.strip('/')}"

    def client(self):  # type: ignore[no-untyped-def]
        """A boto3 S3 client on this endpoint (to inspect the bucket beside the code under test)."""
        return boto3.client(
            "s3", endpoint_url=self.url, region_name=REGION,
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
        )


def _moto_server_binary() -> str:
    """`moto_server` from this interpreter's environment first (the venv), then PATH."""
    local = Path(sys.executable).with_name("moto_server")
    if local.exists():
        return str(local)
    found = shutil.which("moto_server")
    if found is None:
        raise RuntimeError('moto_server is not installed: run `make install` (moto[server])')
    return found


def _wait_until_answering(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited with {proc.returncode} before answering")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError:
            return  # any HTTP answer means the server is up
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"moto_server did not answer on {url} within {timeout_s}s")


@contextmanager
def moto_s3(bucket: str = "tracelab") -> Iterator[S3Endpoint]:
    """Start `moto_server` on a free 127.0.0.1 port, create `bucket`, stop the server on exit."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [_moto_server_binary(), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        _wait_until_answering(url, proc)
        endpoint = S3Endpoint(url=url, bucket=bucket, env={
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION,
            "TRACELAB_S3_ENDPOINT": url,
        })
        endpoint.client().create_bucket(Bucket=bucket)
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


Predicate = Callable[[str, str, int], bool]


def parquet_upload(method: str, path: str, body_bytes: int) -> bool:
    """A request carrying (part of) a data file's bytes: PutObject or UploadPart of `*.parquet`."""
    return method == "PUT" and body_bytes > 0 and urlsplit(path).path.endswith(".parquet")


def never(method: str, path: str, body_bytes: int) -> bool:
    """Stall nothing: the proxy only records the requests (`StallingProxy.requests`)."""
    return False


def parquet_delete(method: str, path: str, body_bytes: int) -> bool:
    """The deletion of a data file (what finishing a compaction's journal does)."""
    return method == "DELETE" and urlsplit(path).path.endswith(".parquet")


class StallingProxy:
    """An HTTP proxy on loopback in front of an S3 endpoint that freezes one chosen request.

    Every request is relayed to the upstream server except the first one `stall_on` selects:
    of that one only the headers and half the body reach the server (nothing of a request
    without a body), then the proxy holds it (`stalled` is set) until `stop()`. A test
    points a writer at `url`, waits for `stalled`, and then has the writer exactly where it
    wants it: in the middle of an upload or just before a deletion, to look at the bucket from
    outside or to kill the writer right there.
    Requests `lose_answer_to` selects (every one, retries too) reach the server whole but
    their answer is lost: the connection drops, as on a timeout after the upload.
    """

    def __init__(self, upstream: S3Endpoint, stall_on: Predicate,
                 lose_answer_to: Predicate | None = None) -> None:
        self.upstream = urlsplit(upstream.url)
        self.stall_on = stall_on
        self.lose_answer_to = lose_answer_to or never
        self.stalled = threading.Event()
        self.stalled_request: tuple[str, str] | None = None
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request seen
        self._release = threading.Event()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", free_port()), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def env(self, endpoint: S3Endpoint) -> dict[str, str]:
        """`endpoint.env` with the S3 endpoint pointed at this proxy."""
        return {**endpoint.env, "TRACELAB_S3_ENDPOINT": self.url}

    def __enter__(self) -> StallingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()

    def _claim_stall(self, method: str, path: str, body_bytes: int) -> bool:
        with self._lock:
            self.requests.append((method, path))
            if self.stalled_request is not None or not self.stall_on(method, path, body_bytes):
                return False
            self.stalled_request = (method, path)
            return True

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        chunk = self.rfile.read(size + 2)[:size]
                        if size == 0:
                            break
                        chunks.append(chunk)
                    return b"".join(chunks)
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _relay(self) -> None:
                body = self._body()
                upstream = http.client.HTTPConnection(proxy.upstream.hostname or "127.0.0.1",
                                                      proxy.upstream.port, timeout=60)
                upstream.putrequest(self.command, self.path, skip_host=True,
                                    skip_accept_encoding=True)
                for name, value in self.headers.items():
                    if name.lower() not in ("expect", "connection", "transfer-encoding",
                                            "content-length"):
                        upstream.putheader(name, value)
                upstream.putheader("Content-Length", str(len(body)))
                if proxy._claim_stall(self.command, self.path, len(body)):
                    if body:  # a request without a body would be whole with its headers
                        upstream.endheaders()
                        upstream.send(body[:len(body) // 2])
                    proxy.stalled.set()
                    proxy._release.wait()
                    upstream.close()
                    self.close_connection = True
                    return
                upstream.endheaders()
                upstream.send(body)
                response = upstream.getresponse()
                data = response.read()
                if proxy.lose_answer_to(self.command, self.path, len(body)):
                    upstream.close()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.send_response_only(response.status, response.reason)
                for name, value in response.getheaders():
                    if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(name, value)
                length = response.getheader("Content-Length") if self.command == "HEAD" \
                    else str(len(data))
                self.send_header("Content-Length", length or "0")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                upstream.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

        return Handler
