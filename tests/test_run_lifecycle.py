"""Run lifecycle events (`kind: run`, endpoint `start` / `end`): the contract in spec/README.md.

Real processes end in real ways here: a script that calls `tracelab.init()` and then exits,
raises, is sent SIGTERM, calls `shutdown()` or switches runs, recording to a real redis-server
and to the embedded spool; `tracelab proxy` as a user starts it, stopped by SIGTERM and by
Ctrl-C. Events are read raw (the Redis stream, the spool's JSON lines), not through the query
layer, so these tests hold the SDK to the contract by themselves.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests

from tests.conftest import LoopbackHTTP, RedisServer, free_port
from tracelab.events import validate
from tracelab.replay.recording import load_recording, write_recording
from tracelab.store.spool import list_spool

ROOT = Path(__file__).resolve().parent.parent
SECRET = "hunter2-very-secret-value"
Reader = Callable[[], list[dict[str, Any]]]


# -- where the events land ------------------------------------------------------------------

def _stream_events(server: RedisServer) -> list[dict[str, Any]]:
    return [orjson.loads(fields[b"event"])
            for _id, fields in server.client().xrange("trace.events")]


def _spool_events(home: Path) -> list[dict[str, Any]]:
    events = []
    for spool in list_spool(home):
        events.extend(orjson.loads(line) for line in spool.path.read_bytes().splitlines()
                      if line.strip())
    return events


@pytest.fixture(params=["redis", "spool"])
def sink(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[dict[str, str], Reader]]:
    """(environment for the child, reader of every event it published), per sink."""
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACELAB_")}
    env.update(TRACELAB_HOME=str(home), PYTHONPATH=str(ROOT), TRACELAB_WORKFLOW_NAME="lc",
               TRACELAB_SERVICE_NAME="agent")
    if request.param == "spool":
        yield env, lambda: _spool_events(home)
        return
    server = RedisServer(tmp_path)
    server.start()
    try:
        env["TRACELAB_REDIS_URL"] = server.url
        yield env, lambda: _stream_events(server)
    finally:
        server.stop()


def _script(body: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(body)]


def _run(body: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_script(body), env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def _lifecycle(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for event in events:
        assert validate(event) == [], event
    return [e for e in events if e["kind"] == "run"]


def _check_pair(start: dict[str, Any], end: dict[str, Any], source: str = "sdk-py") -> None:
    """What every start/end pair shares, per the contract table."""
    assert (start["endpoint"], end["endpoint"]) == ("start", "end")
    for event in (start, end):
        assert event["kind"] == "run"
        assert event["target"] == event["service"]
        assert event["latency_ms"] == 0
        assert event["request"] == {}
        assert event["source"] == source
        assert event.get("parent_id") is None
    for key in ("workflow", "run_id", "service", "tags", "host", "pid", "sdk_version"):
        assert start[key] == end[key], key
    assert start["status"] == "ok"
    assert start["response"] == {}
    assert start.get("error") is None
    assert start["started_at"] <= end["started_at"]


# -- the SDK: how a program ends ------------------------------------------------------------

def test_normal_exit_publishes_start_and_end_exit_around_the_steps(sink) -> None:
    env, read = sink
    done = _run("""
        import tracelab
        tracelab.init(run_id="run-exit", tags={"team": "a"})
        with tracelab.span("plan"):
            pass
    """, env)
    assert done.returncode == 0, done.stderr
    events = read()
    start, end = _lifecycle(events)
    _check_pair(start, end)
    assert start["run_id"] == "run-exit" and start["service"] == "agent"
    assert start["tags"]["team"] == "a"
    assert end["status"] == "ok" and end["response"] == {"reason": "exit"}
    assert end.get("error") is None
    (step,) = [e for e in events if e["kind"] != "run"]
    assert start["started_at"] <= step["started_at"] <= end["started_at"]


def test_uncaught_exception_ends_the_run_in_error_and_the_traceback_still_prints(sink) -> None:
    env, read = sink
    done = _run(f"""
        import sys, tracelab
        def mine(kind, value, tb):
            print("previous hook saw", kind.__name__, file=sys.stderr)
            sys.__excepthook__(kind, value, tb)
        sys.excepthook = mine
        tracelab.init(run_id="run-crash")
        raise LookupError("no fare for password={SECRET}")
    """, env)
    assert done.returncode == 1
    assert "previous hook saw LookupError" in done.stderr  # the program's own hook, chained
    assert "Traceback (most recent call last)" in done.stderr
    assert f"LookupError: no fare for password={SECRET}" in done.stderr  # untouched output
    events = read()
    start, end = _lifecycle(events)
    _check_pair(start, end)
    assert end["status"] == "error"
    assert end["response"] == {"reason": "exception"}
    assert end["error"]["type"] == "LookupError"
    assert end["error"]["message"].startswith("no fare for password=")
    assert SECRET not in orjson.dumps(events).decode()  # redacted like any error message


def test_sigterm_publishes_end_signal_and_the_process_still_dies_of_sigterm(sink) -> None:
    env, read = sink
    proc = subprocess.Popen(_script("""
        import time, tracelab
        tracelab.init(run_id="run-term")
        print("ready", flush=True)
        time.sleep(60)
    """), env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == -signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    start, end = _lifecycle(read())
    _check_pair(start, end)
    assert end["status"] == "error"
    assert end["response"] == {"reason": "signal", "signal": "SIGTERM"}
    assert end["error"] == {"type": "Signal", "message": "SIGTERM"}


def test_a_programs_own_sigterm_handler_is_left_alone(sink) -> None:
    env, read = sink
    proc = subprocess.Popen(_script("""
        import signal, sys, time, tracelab
        signal.signal(signal.SIGTERM, lambda *a: sys.exit(3))
        tracelab.init(run_id="run-own-handler")
        print("ready", flush=True)
        time.sleep(60)
    """), env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 3  # the program's handler ran, not TraceLab's
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    start, end = _lifecycle(read())
    assert end["response"] == {"reason": "exit"}


def test_init_outside_the_main_thread_installs_no_sigterm_handler(sink) -> None:
    env, read = sink
    done = _run("""
        import signal, threading, tracelab
        worker = threading.Thread(target=tracelab.init, kwargs={"run_id": "run-thread"})
        worker.start(); worker.join()
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
        tracelab.shutdown()
    """, env)
    assert done.returncode == 0, done.stderr
    start, end = _lifecycle(read())
    assert end["response"] == {"reason": "shutdown"}


def test_explicit_shutdown_ends_once(sink) -> None:
    env, read = sink
    done = _run("""
        import tracelab
        tracelab.init(run_id="run-shutdown")
        tracelab.shutdown()
        tracelab.shutdown()
    """, env)
    assert done.returncode == 0, done.stderr
    start, end = _lifecycle(read())  # the exit adds no second end
    _check_pair(start, end)
    assert end["status"] == "ok" and end["response"] == {"reason": "shutdown"}


def test_reinit_same_run_publishes_nothing_another_run_ends_the_first(sink) -> None:
    env, read = sink
    done = _run("""
        import tracelab
        tracelab.init(run_id="run-a")
        tracelab.init(run_id="run-a", tags={"again": "yes"})
        tracelab.init(run_id="run-b")
    """, env)
    assert done.returncode == 0, done.stderr
    runs = [(e["run_id"], e["endpoint"], e["response"].get("reason"))
            for e in _lifecycle(read())]
    assert runs == [("run-a", "start", None), ("run-a", "end", "new_run"),
                    ("run-b", "start", None), ("run-b", "end", "exit")]


def test_a_forked_child_does_not_end_its_parents_run(sink) -> None:
    env, read = sink
    done = _run("""
        import os, tracelab
        tracelab.init(run_id="run-fork")
        pid = os.fork()
        if pid == 0:
            import sys; sys.exit(0)  # a normal exit: the child's atexit hooks run
        os.waitpid(pid, 0)
    """, env)
    assert done.returncode == 0, done.stderr
    lifecycle = _lifecycle(read())
    assert [(e["endpoint"], e["pid"]) for e in lifecycle] == [("start", lifecycle[0]["pid"]),
                                                             ("end", lifecycle[0]["pid"])]


# -- the SDK in this process: never felt by the program -------------------------------------

def test_a_failing_lifecycle_is_counted_never_raised(tracelab_home: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import tracelab
    from tracelab.sdk import lifecycle

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("lifecycle bug")

    monkeypatch.setattr(lifecycle, "_publish", broken)
    errors = tracelab.stats()["integrations"].get(lifecycle.ORIGIN, {}).get("errors", 0)
    assert tracelab.init("lc", run_id="run-broken") is not None
    assert tracelab.shutdown() is True
    assert tracelab.stats()["integrations"][lifecycle.ORIGIN]["errors"] == errors + 2


# -- replay: lifecycle events are never expected calls --------------------------------------

def test_a_recordings_lifecycle_events_are_not_expected_calls(tmp_path: Path,
                                                              loopback_http: LoopbackHTTP) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACELAB_")}
    env.update(PYTHONPATH=str(ROOT), TRACELAB_HOME=str(tmp_path / "rec-home"))
    program = f"""
        import requests, tracelab
        tracelab.init("lc")
        requests.get("{loopback_http.url}/ok")
        tracelab.shutdown()  # the end is built while the replay session is still active
    """
    done = _run(program, {**env, "TRACELAB_RUN_ID": "run-rec"})
    assert done.returncode == 0, done.stderr
    recorded = _spool_events(tmp_path / "rec-home")
    assert [e["kind"] for e in recorded] == ["run", "http", "run"]
    path = write_recording(recorded, tmp_path / "run.jsonl")

    recording = load_recording(path)
    assert [e["kind"] for e in recording.events] == ["http"]
    assert (recording.run_id, recording.workflow) == ("run-rec", "lc")
    assert recording.command is not None  # read from the start event's tags as well

    report = tmp_path / "report.jsonl"
    done = _run(program, {**env, "TRACELAB_HOME": str(tmp_path / "replay-home"),
                          "TRACELAB_RUN_ID": "run-replay", "TRACELAB_REPLAY": str(path),
                          "TRACELAB_REPLAY_REPORT": str(report)})
    assert done.returncode == 0, done.stderr
    (line,) = [orjson.loads(raw) for raw in report.read_bytes().splitlines()]
    assert len(line["hits"]) == 1 and line["misses"] == []
    assert [call["kind"] for call in line["calls"]] == ["http"]
    replayed = _lifecycle(_spool_events(tmp_path / "replay-home"))
    assert [e["endpoint"] for e in replayed] == ["start", "end"]


# -- the proxy ------------------------------------------------------------------------------

class _Proxy:
    """`tracelab proxy` in a subprocess on a free loopback port, recording to Redis."""

    def __init__(self, home: Path, redis_url: str) -> None:
        self.port = free_port()
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("TRACELAB_") and k.lower() not in
               ("http_proxy", "https_proxy", "all_proxy", "no_proxy")}
        env.update(TRACELAB_HOME=str(home), PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tracelab.cli", "proxy", "--port", str(self.port),
             "--redis-url", redis_url, "--run-id", "proxy-run"],
            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            assert self.proc.poll() is None, self.proc.stdout.read() if self.proc.stdout else ""
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                assert time.monotonic() < deadline, "tracelab proxy did not listen within 30 s"
                time.sleep(0.05)

    def stop(self, signum: int) -> int:
        self.proc.send_signal(signum)
        try:
            return self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


@pytest.mark.parametrize(("signum", "reason", "status"), [
    (signal.SIGTERM, {"reason": "signal", "signal": "SIGTERM"}, "error"),
    (signal.SIGINT, {"reason": "exit"}, "ok"),
])
def test_the_proxy_starts_its_run_when_listening_and_ends_it_when_stopped(
        tmp_path: Path, redis_server: RedisServer, loopback_http: LoopbackHTTP,
        signum: int, reason: dict[str, str], status: str) -> None:
    proxy = _Proxy(tmp_path / "home", redis_server.url)
    try:
        answer = requests.get(f"{loopback_http.url}/ok", timeout=10,
                              proxies={"http": f"http://127.0.0.1:{proxy.port}"})
        assert answer.status_code == 200
    finally:
        assert proxy.stop(signum) == 0  # a clean stop either way, as documented
    events = _stream_events(redis_server)
    start, end = _lifecycle(events)
    _check_pair(start, end, source="proxy")
    assert (start["workflow"], start["run_id"], start["service"]) == ("proxy", "proxy-run", "proxy")
    assert end["response"] == reason and end["status"] == status
    (step,) = [e for e in events if e["kind"] != "run"]
    assert step["source"] == "proxy" and start["pid"] == step["pid"]
    assert start["started_at"] <= step["started_at"] <= end["started_at"]
