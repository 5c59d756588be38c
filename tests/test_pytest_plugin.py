"""The pytest plugin (tracelab/pytest_plugin.py), used the way a user uses it: a test project in a
temporary folder, run by a real pytest subprocess that loads the plugin through its `pytest11`
entry point. The project's conftest serves a real loopback HTTP "vendor" only when asked
(AGENT_SERVE=1), so the record run talks to it and the replay runs, with nothing listening,
can only have been answered from the recording."""
from __future__ import annotations

import json
import socket
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import free_port

pytest_plugins = ["pytester"]

CONFTEST = '''
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


class Vendor(BaseHTTPRequestHandler):
    """A payments vendor: an order to look up, refunds to create."""

    def do_GET(self):
        order = self.path.rsplit("/", 1)[-1]
        self.answer(200, {"id": order, "status": "paid", "amount": 4200})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.answer(201, {"refund": "re_1", "order": body["order"], "amount": body["amount"]})

    def answer(self, status, payload):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="session", autouse=True)
def vendor():
    if os.environ.get("AGENT_SERVE") != "1":
        yield None
        return
    server = ThreadingHTTPServer(("127.0.0.1", int(os.environ["AGENT_PORT"])), Vendor)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
'''

AGENT = '''
"""A refund agent: look the order up, refund it, retry once on a 503."""
import os

import requests

BASE = f"http://127.0.0.1:{os.environ['AGENT_PORT']}"
seen = []


def refund(order_id):
    order = requests.get(f"{BASE}/orders/{order_id}", timeout=5)
    seen.append(order.status_code)
    for _attempt in range(2):
        made = requests.post(f"{BASE}/refunds", json={"order": order_id,
                                                       "amount": order.json()["amount"]},
                             timeout=5)
        seen.append(made.status_code)
        if made.status_code != 503:
            return made.json()["refund"]
    return None


def refund_quietly(order_id):
    """Swallows every connection error: only the plugin can tell the test it missed."""
    try:
        return refund(order_id)
    except requests.ConnectionError:
        return None
'''

TESTS = '''
import socket
import urllib.request

import pytest

import agent


@pytest.mark.tracelab(recording="recordings/refund.jsonl")
def test_refund(tracelab_replay):
    assert agent.refund("o-42") == "re_1"
    assert agent.seen == [200, 201]
    if tracelab_replay is not None:
        assert [e["endpoint"] for e in tracelab_replay.hits] == ["GET /orders/o-42",
                                                                  "POST /refunds"]


@pytest.mark.tracelab(recording="recordings/broken.jsonl")
def test_broken():
    agent.refund("o-42")
    assert False, "the agent's answer was wrong"


@pytest.mark.tracelab(recording="recordings/refund.jsonl")
def test_other_order():
    assert agent.refund_quietly("o-43") is None


@pytest.mark.tracelab(recording="recordings/refund.jsonl")
def test_reaches_out():
    agent.refund("o-42")
    with socket.create_server(("127.0.0.1", 0)) as local:  # loopback stays open
        socket.create_connection(local.getsockname(), timeout=3).close()
    urllib.request.urlopen("http://203.0.113.1/", timeout=3)


@pytest.mark.tracelab(recording="recordings/refund.jsonl",
                      faults="faults/refund-503.yaml")
def test_refund_survives_a_503(tracelab_replay):
    assert agent.refund("o-42") == "re_1"
    assert agent.seen == [200, 503, 201]
    assert tracelab_replay.misses == []
    assert [(f["fault"], f["action"]) for f in tracelab_replay.faulted] == [
        ("refunds-down", "status")]
    assert tracelab_replay.resilience["outcome"].tolist() == ["recovered"]
'''

FAULTS = '''
- id: refunds-down
  endpoint: "POST /refunds"
  status: 503
  times: 1
'''


# Plugins of this venv the test project has no use for; they would cost seconds per run.
QUIET = ("-p", "no:cacheprovider", "-p", "no:nbmake", "-p", "no:schemathesis",
         "-p", "no:hypothesispytest", "-p", "no:anyio")


@dataclass
class Project:
    pytester: pytest.Pytester
    monkeypatch: pytest.MonkeyPatch

    @property
    def path(self) -> Path:
        return self.pytester.path


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Project:
    """The test project; the vendor's port is fixed for the record run and every replay."""
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(agent=AGENT)
    tests = pytester.mkdir("tests")  # pytest runs from the project root, not the tests' folder
    (tests / "test_agent.py").write_text(textwrap.dedent(TESTS))
    (tests / "faults").mkdir()
    (tests / "faults" / "refund-503.yaml").write_text(FAULTS)
    monkeypatch.setenv("AGENT_PORT", str(free_port()))
    return Project(pytester, monkeypatch)


def run(project: Project, *args: str, serve: bool = False) -> pytest.RunResult:
    """pytest in a subprocess; the vendor listens only when `serve`."""
    if serve:
        project.monkeypatch.setenv("AGENT_SERVE", "1")
    else:
        project.monkeypatch.delenv("AGENT_SERVE", raising=False)
    return project.pytester.runpytest_subprocess(*QUIET, *args)


def record(project: Project) -> pytest.RunResult:
    result = run(project, "--tracelab-record", "-k", "test_refund and not 503 or broken",
                 serve=True)
    result.assert_outcomes(passed=1, failed=1)
    return result


def test_record_then_replay_with_the_vendor_gone(project: Project) -> None:
    record(project)
    recording = project.path / "tests" / "recordings" / "refund.jsonl"
    events = [json.loads(line) for line in recording.read_text().splitlines()]
    assert [(e["kind"], e["endpoint"]) for e in events] == [("http", "GET /orders/o-42"),
                                                            ("http", "POST /refunds")]
    assert events[1]["response"]["body"]["refund"] == "re_1"
    assert not (project.path / "tests" / "recordings" / "broken.jsonl").exists()

    recorded = recording.read_bytes()
    replayed = run(project, "-k", "test_refund and not 503")
    replayed.assert_outcomes(passed=1, deselected=4)
    assert recording.read_bytes() == recorded


def test_a_failed_test_never_writes_nor_replaces_its_recording(project: Project
                                                               ) -> None:
    broken = project.path / "tests" / "recordings" / "broken.jsonl"
    broken.parent.mkdir()
    broken.write_text("the recording from the last good run\n")
    record(project)
    assert broken.read_text() == "the recording from the last good run\n"
    assert (project.path / "tests" / "recordings" / "refund.jsonl").is_file()


def test_a_miss_fails_the_test_with_its_explanation(project: Project) -> None:
    record(project)
    result = run(project, "-k", "other_order")
    result.assert_outcomes(failed=1, deselected=4)
    text = result.stdout.str()
    assert "tracelab: 1 call(s) not in the recording" in text
    assert "refund.jsonl (on_miss='fail')" in text
    assert "GET 127.0.0.1" in text and "/orders/o-43" in text


def test_a_connection_beyond_loopback_is_refused_during_replay(project: Project
                                                               ) -> None:
    record(project)
    result = run(project, "-k", "reaches_out")
    result.assert_outcomes(failed=1, deselected=4)
    text = result.stdout.str()
    assert "tracelab: network blocked during replay: tried to connect to 203.0.113.1:80" in text
    assert "only loopback addresses are reachable" in text


def test_a_missing_recording_says_how_to_make_it(project: Project) -> None:
    result = run(project, "-k", "test_refund and not 503")
    result.assert_outcomes(errors=1, deselected=4)
    assert "no recording at" in result.stdout.str()
    assert "pytest --tracelab-record" in result.stdout.str()


def test_the_marker_is_documented(project: Project) -> None:
    result = project.pytester.runpytest_subprocess(*QUIET, "--markers")
    assert "@pytest.mark.tracelab(recording, faults=None, on_miss='fail'" in result.stdout.str()
    helped = project.pytester.runpytest_subprocess(*QUIET, "--help")
    assert "--tracelab-record" in helped.stdout.str()


def test_a_fault_from_the_marker_reaches_the_agent(project: Project) -> None:
    record(project)
    result = run(project, "-k", "503")
    result.assert_outcomes(passed=1, deselected=4)


def test_a_marker_mistake_is_an_error_naming_it(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_bad=textwrap.dedent('''
        import pytest

        @pytest.mark.tracelab(recording="r.jsonl", on_mis="fail")
        def test_typo():
            pass

        def test_fixture_without_marker(tracelab_replay):
            pass

        def test_unmarked_tests_are_left_alone():
            pass
    '''))
    result = pytester.runpytest_subprocess(*QUIET)
    result.assert_outcomes(errors=2, passed=1)
    text = result.stdout.str()
    assert "unknown key(s) on_mis; known: recording, faults, on_miss" in text
    assert "the tracelab_replay fixture needs @pytest.mark.tracelab(recording=...)" in text


@pytest.mark.parametrize("address, allowed", [
    (("127.0.0.1", 80), True), (("127.9.9.9", 8080), True), (("0.0.0.0", 80), True),
    (("localhost", 80), True), (("api.localhost", 443), True),
    (("::1", 80, 0, 0), True), (("::ffff:127.0.0.1", 80, 0, 0), True),
    (("203.0.113.1", 80), False), (("10.0.0.1", 6379), False), (("2001:db8::1", 443, 0, 0), False),
    (("::ffff:203.0.113.1", 80, 0, 0), False),
    (("api.stripe.com", 443), False),  # a name is refused as is, never resolved
])
def test_the_guard_lets_loopback_through_and_nothing_else(address: tuple, allowed: bool) -> None:
    from tracelab.pytest_plugin import NetworkBlocked, NetworkGuard

    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    guard = NetworkGuard("why")
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        if allowed:
            guard.check(sock, address)
            assert guard.blocked == []
        else:
            with pytest.raises(NetworkBlocked, match="network blocked during replay: tried "
                                                     "to connect to .*; why"):
                guard.check(sock, address)
            assert len(guard.blocked) == 1


def test_the_guard_wraps_connect_and_connect_ex_and_leaves_unix_sockets(tmp_path: Path) -> None:
    from tracelab.pytest_plugin import NetworkBlocked, NetworkGuard

    original = socket.socket.connect, socket.socket.connect_ex
    guard = NetworkGuard("why")
    guard.install()
    try:
        for connect in (socket.socket.connect, socket.socket.connect_ex):
            with socket.socket() as sock, pytest.raises(NetworkBlocked):
                connect(sock, ("203.0.113.1", 80))
        with socket.socket(socket.AF_UNIX) as server, socket.socket(socket.AF_UNIX) as client:
            server.bind(str(tmp_path / "s"))
            server.listen()
            client.connect(str(tmp_path / "s"))
    finally:
        guard.uninstall()
    assert (socket.socket.connect, socket.socket.connect_ex) == original
    assert guard.blocked == ["203.0.113.1:80", "203.0.113.1:80"]
