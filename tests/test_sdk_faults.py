"""Tracing never breaks the traced program: dead, hung or restarted Redis, broken capture code,
hostile bodies, bad configuration."""
from __future__ import annotations

import os
import signal
import time
import warnings
from pathlib import Path

import pytest
import requests
from conftest import LoopbackHTTP, RedisServer, free_port, read_events, read_stream

import tracelab
from tracelab.config import ConfigError
from tracelab.events import validate

# A call is "unaffected" when it is nowhere near the sink's socket timeouts (1-2 s): this
# checks that nothing blocks on Redis, it is not a speed measurement (that is bench/).
NOT_BLOCKED_S = 0.5


def _wait_for(predicate, timeout: float = 15.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def _timed_calls(url: str, n: int) -> float:
    slowest = 0.0
    for _ in range(n):
        start = time.perf_counter()
        assert requests.get(f"{url}/echo").status_code == 200
        slowest = max(slowest, time.perf_counter() - start)
    return slowest


@pytest.fixture
def short_retry(monkeypatch: pytest.MonkeyPatch, tracelab_home: Path) -> None:
    monkeypatch.setenv("TRACELAB_RETRY_SECONDS", "0.5")


def test_redis_stopped_mid_run_then_restarted(redis_server: RedisServer, loopback_http: LoopbackHTTP,
                                              short_retry: None) -> None:
    tracelab.init(workflow_name="faults", redis_url=redis_server.url)
    try:
        _timed_calls(loopback_http.url, 5)
        assert tracelab.flush(5.0)
        assert len(read_stream(redis_server.client())) == 5

        redis_server.stop()
        slowest = _timed_calls(loopback_http.url, 50)
        assert slowest < NOT_BLOCKED_S, f"a call took {slowest:.3f}s with Redis down"
        start = time.monotonic()
        assert tracelab.flush(1.0) is False  # cannot deliver, but returns by its timeout
        assert time.monotonic() - start < 2.0
        assert _wait_for(lambda: tracelab.stats()["dropped_by_reason"].get("redis_unavailable", 0) >= 50)

        redis_server.start()  # same port: the sink reconnects by itself
        _timed_calls(loopback_http.url, 5)
        assert _wait_for(lambda: len(read_stream(redis_server.client())) >= 5)
        read_events(redis_server)  # flushes, and checks every event against the contract
    finally:
        tracelab.shutdown(timeout=1.0)


def test_hung_redis_never_blocks_the_app(redis_server: RedisServer, loopback_http: LoopbackHTTP,
                                         short_retry: None) -> None:
    tracelab.init(workflow_name="faults", redis_url=redis_server.url)
    assert redis_server.proc is not None
    os.kill(redis_server.proc.pid, signal.SIGSTOP)  # accepts connections, never answers
    try:
        slowest = _timed_calls(loopback_http.url, 30)
        assert slowest < NOT_BLOCKED_S
        start = time.monotonic()
        assert tracelab.flush(0.5) is False
        assert time.monotonic() - start < 1.5
    finally:
        os.kill(redis_server.proc.pid, signal.SIGCONT)
        tracelab.shutdown(timeout=1.0)


def test_full_queue_drops_and_counts(loopback_http: LoopbackHTTP, short_retry: None,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACELAB_QUEUE_SIZE", "5")
    tracelab.init(workflow_name="faults", redis_url=f"redis://127.0.0.1:{free_port()}/0")
    try:
        before = tracelab.stats()["dropped"]
        _timed_calls(loopback_http.url, 40)
        assert tracelab.stats()["dropped"] > before
    finally:
        tracelab.shutdown(timeout=0.5)


def test_capture_code_that_raises_is_counted_not_felt(traced: RedisServer, loopback_http: LoopbackHTTP,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from tracelab.sdk.integrations import requests as integration

    def explode(*args: object, **kwargs: object) -> None:
        raise RuntimeError("bug in capture")

    monkeypatch.setattr(integration, "record_http", explode)
    before = tracelab.stats()["errors_by_origin"].get("requests", 0)
    assert requests.get(f"{loopback_http.url}/echo").json()["method"] == "GET"
    assert tracelab.stats()["errors_by_origin"]["requests"] == before + 1


def test_binary_huge_and_invalid_utf8_bodies(traced: RedisServer, loopback_http: LoopbackHTTP) -> None:
    requests.get(f"{loopback_http.url}/binary")
    requests.get(f"{loopback_http.url}/big", params={"n": "300000"})
    requests.post(f"{loopback_http.url}/upload", data=b"caf\xe9 \xff\xfe not utf-8",
                  headers={"Content-Type": "text/plain"})
    requests.post(f"{loopback_http.url}/upload", data=b"\x00" * 200_000)
    (binary, big, latin, huge_upload), _ = read_events(traced)
    assert binary["response"]["body"]["$tracelab"] == "binary"
    assert binary["response"]["body"]["size"] == 1024
    assert big["response"]["body"] == {"$tracelab": "truncated", "size": 300000,
                                       "encoding": "text", "data": "x" * 65536}
    assert latin["request"]["body"]["$tracelab"] == "binary"
    assert huge_upload["request"]["body"]["$tracelab"] == "truncated"
    assert huge_upload["request"]["body"]["size"] == 200_000


def test_tags_env_that_is_not_json_warns_and_keeps_going(monkeypatch: pytest.MonkeyPatch,
                                                          tracelab_home: Path) -> None:
    monkeypatch.setenv("TRACELAB_TAGS", "team=payments")
    with pytest.warns(UserWarning, match="TRACELAB_TAGS is not valid JSON"):
        config = tracelab.init(workflow_name="faults")
    try:
        assert config is not None
        assert not [k for k in config.tags if not k.startswith("command.")]
    finally:
        tracelab.shutdown()


def test_tags_env_values_become_strings(monkeypatch: pytest.MonkeyPatch, tracelab_home: Path) -> None:
    monkeypatch.setenv("TRACELAB_TAGS", '{"team": "payments", "tier": 2}')
    config = tracelab.init(workflow_name="faults")
    try:
        assert config is not None and {k: v for k, v in config.tags.items()
                                        if not k.startswith("command.")} == \
            {"team": "payments", "tier": "2"}
    finally:
        tracelab.shutdown()


def test_bad_numeric_env_values_fall_back_with_a_warning(monkeypatch: pytest.MonkeyPatch,
                                                         tracelab_home: Path) -> None:
    monkeypatch.setenv("TRACELAB_QUEUE_SIZE", "lots")
    with pytest.warns(UserWarning, match="TRACELAB_QUEUE_SIZE='lots' is not an integer"):
        config = tracelab.init(workflow_name="faults")
    try:
        assert config is not None and config.queue_size == 10000
    finally:
        tracelab.shutdown()


def test_missing_workflow_names_the_env_var(tracelab_home: Path) -> None:
    with pytest.raises(ConfigError, match="TRACELAB_WORKFLOW_NAME"):
        tracelab.init()


def test_disabled_turns_everything_into_no_ops(monkeypatch: pytest.MonkeyPatch, tracelab_home: Path,
                                               loopback_http: LoopbackHTTP) -> None:
    monkeypatch.setenv("TRACELAB_DISABLED", "1")
    original_send = requests.Session.__dict__["send"]
    assert tracelab.init(workflow_name="faults") is None
    assert requests.Session.__dict__["send"] is original_send
    requests.get(f"{loopback_http.url}/echo")
    assert tracelab.flush() is True and tracelab.stats()["active"] is False
    assert not (tracelab_home / "spool").exists()


def test_second_init_reconfigures_without_double_patching(redis_server: RedisServer,
                                                          loopback_http: LoopbackHTTP,
                                                          tracelab_home: Path) -> None:
    tracelab.init(workflow_name="first", redis_url=redis_server.url)
    patched = requests.Session.__dict__["send"]
    tracelab.init(workflow_name="second", redis_url=redis_server.url, run_id="run-2")
    try:
        assert requests.Session.__dict__["send"] is patched
        requests.get(f"{loopback_http.url}/echo")
        (event,), _ = read_events(redis_server)
        assert (event["workflow"], event["run_id"]) == ("second", "run-2")
    finally:
        tracelab.shutdown()


def test_embedded_mode_spools_valid_json_lines(loopback_http: LoopbackHTTP, tracelab_home: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import orjson

    import tracelab.sdk.recorder as recorder

    monkeypatch.setattr(recorder, "_fold_spool", lambda *_: None)  # look at the raw spool
    tracelab.init(workflow_name="embedded")
    requests.get(f"{loopback_http.url}/echo")
    assert tracelab.flush(5.0)
    (open_file,) = (tracelab_home / "spool").glob("*.jsonl.open")
    tracelab.shutdown()
    (done,) = (tracelab_home / "spool").glob("*.jsonl")
    assert not open_file.exists() and f"-{os.getpid()}-" in done.name
    events = [orjson.loads(line) for line in done.read_bytes().splitlines()]
    assert all(validate(event) == [] for event in events)
    assert [(e["kind"], e["endpoint"]) for e in events] == [
        ("run", "start"), ("http", "GET /echo"), ("run", "end")]
    assert tracelab.stats()["spooled"] >= 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
