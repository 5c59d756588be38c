"""Redis passwords never reach a terminal: one masking helper, used by `up`, `proxy` and the
notebook's `%tracelab`; `tracelab up` run for real against a real redis-server."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from conftest import free_port
from tracelab.config import url_without_password

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("url", "shown"), [
    ("redis://:secret@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
    ("redis://default:s3cr@t@redis:6379/1", "redis://default:***@redis:6379/1"),
    ("rediss://ghp_token123@cache.example:6380", "rediss://***@cache.example:6380"),
    ("unix:///run/redis.sock?db=0&password=hunter2", "unix:///run/redis.sock?db=0&password=***"),
    ("redis://cache:6379/0?Token=abc&db=2#frag", "redis://cache:6379/0?Token=***&db=2#frag"),
    ("redis://localhost:6379/0", "redis://localhost:6379/0"),
    ("redis://[::1]:6379", "redis://[::1]:6379"),
    ("http://[unclosed", "<unparseable URL>"),
])
def test_url_without_password(url: str, shown: str) -> None:
    assert url_without_password(url) == shown


_secret = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.~!$",
                  min_size=8, max_size=40)


@given(user=st.sampled_from(["", "default", "app"]), password=_secret,
       host=st.sampled_from(["127.0.0.1", "redis", "[::1]"]), port=st.integers(1, 65535))
def test_the_password_never_survives(user: str, password: str, host: str, port: int) -> None:
    shown = url_without_password(f"redis://{user}:{password}@{host}:{port}/0")
    assert password not in shown
    assert shown == f"redis://{user}:***@{host}:{port}/0"


def test_notebook_status_masks_the_password() -> None:
    from tracelab.notebook.magics import _redis_state

    state = _redis_state(f"redis://:hunter2-notebook@127.0.0.1:{free_port()}/0")
    assert state.startswith("UNREACHABLE at redis://:***@127.0.0.1:")
    assert "hunter2-notebook" not in state


@pytest.fixture
def redis_with_password(tmp_path: Path) -> Iterator[int]:
    """A real redis-server on a free loopback port that wants the password 'the-real-one'."""
    port = free_port()
    proc = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind",
         "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp_path),
         "--requirepass", "the-real-one"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port, password="the-real-one", socket_timeout=0.5)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def test_up_never_prints_the_redis_password(redis_with_password: int, tmp_path: Path) -> None:
    """A wrong password: the AUTH fails, and `up` warns about the URL and says what it reads."""
    secret = "s3cret-do-not-print"
    prefix = f"redis://:***@127.0.0.1:{redis_with_password}/0"
    url = f"redis://:{secret}@127.0.0.1:{redis_with_password}/0"
    log = tmp_path / "up.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACELAB_")}
    env.update(TRACELAB_HOME=str(tmp_path / "home"), PYTHONUNBUFFERED="1")
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tracelab.cli", "up", "--no-ui", "--port", str(free_port()),
             "--redis-url", url], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while (proc.poll() is None and time.monotonic() < deadline
                   and "TraceLab API on" not in log.read_text()):
                time.sleep(0.1)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    output = log.read_text()
    assert f"Redis at {prefix} does not answer yet" in output
    assert f"of Redis {prefix}" in output
    assert secret not in output
