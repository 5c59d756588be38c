"""`tracelab ingest` against a Redis it cannot use says so within seconds and exits non-zero."""
from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from conftest import free_port


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A loopback TCP server that accepts connections and never answers a byte."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except (socket.timeout, OSError):
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()
        server.close()


def ingest(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    # The subprocess timeout is a guard against the old silent wait, not a speed check.
    return subprocess.run([sys.executable, "-m", "tracelab.cli", "ingest", "--redis-url",
                           f"redis://:s3cret@127.0.0.1:{port}/0", *args],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("once", [True, False])
def test_refused_connection_is_reported_and_exits_non_zero(tracelab_home, once):
    port = free_port()  # nothing listens: connections are refused
    proc = ingest(port, *(["--once"] if once else []), "--connect-timeout", "1")
    assert proc.returncode == 1, proc.stderr
    assert f"cannot reach Redis at redis://:***@127.0.0.1:{port}/0 within 1 s" in proc.stderr
    assert "refused" in proc.stderr.lower()
    assert "s3cret" not in proc.stderr


def test_a_server_that_never_answers_is_reported_and_exits_non_zero(tracelab_home,
                                                                      silent_server):
    proc = ingest(silent_server, "--once")  # the default --connect-timeout, 5 s
    assert proc.returncode == 1, proc.stderr
    assert f"127.0.0.1:{silent_server}/0 within 5 s" in proc.stderr
    assert "timeout" in proc.stderr.lower() or "timed out" in proc.stderr.lower()


def test_workers_check_redis_once_before_starting(tracelab_home):
    port = free_port()
    proc = ingest(port, "--workers", "2", "--connect-timeout", "1")
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.count("cannot reach Redis") == 1
