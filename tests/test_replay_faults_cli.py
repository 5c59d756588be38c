"""`tracelab replay --faults` end to end: a Python agent recorded against a real loopback server,
the server stopped, then the agent replayed through the real CLI in a subprocess with fault
rules applied either by the SDK in its process (`sdk`) or, when it runs without the SDK, by the
replay proxy its HTTP_PROXY points at (`proxy`; curl too), and the resilience report read from
what the command printed."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import LoopbackHTTP

ROOT = Path(__file__).resolve().parents[1]

# mode "retry": retries a failed refund, waiting what Retry-After asks; "eager": retries at once;
# "once": no retry, carries on; "strict": no retry, exits 1; "steps": 8 independent calls.
# With --no-sdk the agent does not load TraceLab: the replay proxy answers its calls.
AGENT = textwrap.dedent("""\
    import sys
    import time

    import requests

    sdk = "--no-sdk" not in sys.argv
    if sdk:
        import tracelab

        tracelab.init("chaos-agent")
    base, mode = sys.argv[1], sys.argv[2]
    if mode == "steps":
        print(" ".join(str(requests.get(f"{base}/step/{i}").status_code) for i in range(1, 9)))
    else:
        for attempt in range(4):
            refund = requests.post(base + "/v1/refunds", json={"order": "o-42"})
            if refund.status_code < 400 or mode not in ("retry", "eager"):
                break
            time.sleep(float(refund.headers.get("Retry-After") or 0) if mode == "retry" else 0.02)
        print("refund", refund.status_code)
        if mode == "strict" and refund.status_code >= 400:
            sys.exit(1)
        print("receipt", requests.get(base + "/v1/receipt").status_code)
    if sdk:
        tracelab.shutdown()
""")
SIDES = ("sdk", "proxy")

REFUND_429 = textwrap.dedent("""\
    - id: stripe-429
      endpoint: "POST /v1/refunds"
      status: 429
      retry_after: 1
      times: 1
""")


def env_for(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("TRACELAB_") and k.lower() not in
           ("http_proxy", "https_proxy", "all_proxy", "no_proxy")}
    env.update(TRACELAB_HOME=str(home), NO_PROXY="127.0.0.1,localhost",
               PYTHONPATH=os.pathsep.join(filter(None, (str(ROOT), env.get("PYTHONPATH")))),
               **extra)
    return env


class Recorded:
    """Two runs of the agent ("retry" and "steps") against a loopback server since stopped."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root / "home"
        self.agent = root / "agent.py"
        self.agent.write_text(AGENT)
        server = LoopbackHTTP()
        self.url = server.url
        try:
            for run_id, mode in (("refund-run", "retry"), ("steps-run", "steps")):
                out = subprocess.run([sys.executable, str(self.agent), self.url, mode],
                                     cwd=root, env=env_for(self.home, TRACELAB_RUN_ID=run_id),
                                     capture_output=True, text=True, timeout=60)
                assert out.returncode == 0, out.stderr
        finally:
            server.close()

    def faults(self, name: str, text: str) -> Path:
        path = self.root / name
        path.write_text(text)
        return path

    def replay(self, run_id: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "tracelab.cli", "replay", run_id, *args],
                              env=env_for(self.home), cwd=self.root, capture_output=True,
                              text=True, timeout=120)

    def argv(self, mode: str, side: str) -> list[str]:
        return [sys.executable, str(self.agent), self.url, mode,
                *(["--no-sdk"] if side == "proxy" else [])]

    def replay_agent(self, run_id: str, mode: str, faults: Path, side: str
                     ) -> subprocess.CompletedProcess[str]:
        return self.replay(run_id, "--faults", str(faults), "--", *self.argv(mode, side))


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    return Recorded(tmp_path_factory.mktemp("chaos"))


def test_report_lines_merge_into_one_call_log_by_start_time() -> None:
    from tracelab.replay.runner import tally_reports

    sdk = {"source": "sdk-py", "hits": ["e1"], "calls": [
        {"t": 30.0, "endpoint": "POST /v1/refunds", "fault": None},
        {"t": 10.0, "endpoint": "POST /v1/refunds", "fault": "stripe-429"}]}
    proxy = {"source": "proxy", "hits": ["e2"], "faulted": 2, "calls": [
        {"t": 20.0, "endpoint": "GET /a", "fault": "x"}, {"t": None, "endpoint": "GET /b"}]}
    old = {"source": "sdk-ts", "hits": []}  # a process that keeps no call log
    tally = tally_reports([orjson.dumps(line) for line in (sdk, proxy, old)], ["e1", "e2"])
    assert [c["endpoint"] for c in tally.calls] == [
        "POST /v1/refunds", "GET /a", "POST /v1/refunds", "GET /b"]
    assert tally.faulted == 3  # the proxy's own count, the SDK's from its call log
    assert tally.logged and len(tally.hits) == 2
    assert not tally_reports([orjson.dumps(old)], []).logged


def test_the_command_gets_the_rules_file_and_never_an_outer_replays() -> None:
    from tracelab.replay.runner import child_env

    common = dict(recording=Path("/r.jsonl"), report=Path("/rep"), on_miss="fail", speed=0.0,
                  ignore=(), headers=(), workflow="w", run_id="r", replay_of="o",
                  proxy_url="http://127.0.0.1:1", ca_cert=Path("/ca.pem"))
    outer = {"TRACELAB_REPLAY_FAULTS": "@/elsewhere.yaml", "PATH": "/bin"}
    assert child_env(outer, faults=Path("/abs/f.yaml"), **common)[
        "TRACELAB_REPLAY_FAULTS"] == "@/abs/f.yaml"
    assert "TRACELAB_REPLAY_FAULTS" not in child_env(outer, **common)


def report_of(stderr: str) -> list[str]:
    """The resilience report's lines: from its count line to the summary line."""
    lines = stderr.strip().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("resilience: "))
    return [line for line in lines[start:-1] if not line.startswith("tracelab replay: ")]


@pytest.mark.parametrize("side", SIDES)
def test_a_retrying_agent_recovers_from_a_429_and_the_report_says_so(
        recorded: Recorded, side: str) -> None:
    result = recorded.replay_agent("refund-run", "retry", recorded.faults("429.yaml", REFUND_429),
                                   side)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "refund 200\nreceipt 200\n"
    head, line = report_of(result.stderr)
    assert head == "resilience: 1 injected fault: 1 recovered"
    assert re.fullmatch(r"  http 127\.0\.0\.1:\d+ POST /v1/refunds: fault stripe-429 \(status\): "
                        r"recovered after 2 attempts, \d+ ms lost; first retry \d+ ms after the "
                        r"failure; Retry-After 1 s honoured", line), line
    # The faulted call consumed nothing: the retry got the recorded answer, all were used.
    assert result.stderr.strip().splitlines()[-1] == \
        "replayed 2/2 calls, 0 misses, 0 unused recordings"


@pytest.mark.parametrize("side", SIDES)
def test_retrying_sooner_than_retry_after_is_reported(recorded: Recorded, side: str) -> None:
    result = recorded.replay_agent("refund-run", "eager", recorded.faults("429.yaml", REFUND_429),
                                   side)
    assert result.returncode == 0, result.stderr
    [_, line] = report_of(result.stderr)
    assert "recovered after 2 attempts" in line and line.endswith("Retry-After 1 s NOT honoured")


@pytest.mark.parametrize("side", SIDES)
def test_an_agent_that_does_not_retry_is_reported(recorded: Recorded, side: str) -> None:
    faults = recorded.faults("429.yaml", REFUND_429)
    result = recorded.replay_agent("refund-run", "once", faults, side)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "refund 429\nreceipt 200\n"
    assert report_of(result.stderr) == [
        "resilience: 1 injected fault: 1 ignored",
        f"  http {recorded.url.removeprefix('http://')} POST /v1/refunds: fault stripe-429 "
        "(status): ignored: no retry, the run carried on; Retry-After 1 s no retry to honour it"]
    assert result.stderr.strip().splitlines()[-1] == \
        "replayed 1/2 calls, 0 misses, 1 unused recordings"
    failed = recorded.replay_agent("refund-run", "strict", faults, side)
    assert failed.returncode == 1, failed.stderr
    assert report_of(failed.stderr)[0] == "resilience: 1 injected fault: 1 gave up"
    assert "gave up: no retry, and the run then failed" in report_of(failed.stderr)[1]


def test_a_bad_faults_file_exits_2_with_every_reason_and_runs_nothing(
        recorded: Recorded) -> None:
    bad = recorded.faults("bad.yaml", textwrap.dedent("""\
        - endpoint: "POST /v1/refunds"
          status: 999
        - reset: true
          colour: red
    """))
    marker = recorded.root / "ran"
    result = recorded.replay("refund-run", "--faults", str(bad), "--", "touch", str(marker))
    assert result.returncode == 2, result.stderr
    assert not marker.exists()
    assert "invalid fault rules (2 errors)" in result.stderr
    reasons = [line.strip() for line in result.stderr.splitlines() if line.startswith("  ")]
    assert len(reasons) == 2, result.stderr
    assert all(r.startswith(str(bad)) for r in reasons), reasons
    assert "status" in reasons[0] and "999" in reasons[0]
    assert "colour" in reasons[1]
    missing = recorded.replay("refund-run", "--faults", str(recorded.root / "nope.yaml"), "--",
                              "touch", str(marker))
    assert missing.returncode == 2 and "nope.yaml" in missing.stderr
    assert not marker.exists()


@pytest.mark.parametrize("side", SIDES)
def test_seeded_faults_give_the_same_report_on_two_runs(recorded: Recorded, side: str) -> None:
    faults = recorded.faults("seeded.yaml", textwrap.dedent("""\
        - id: flaky
          endpoint: "GET /step/*"
          status: 503
          rate: 0.5
          seed: 7
    """))
    first, second = (recorded.replay_agent("steps-run", "steps", faults, side) for _ in range(2))
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    codes = first.stdout.split()
    assert "503" in codes and "200" in codes, codes
    assert second.stdout == first.stdout
    assert report_of(second.stderr) == report_of(first.stderr)
    assert report_of(first.stderr)[0] == \
        f"resilience: {codes.count('503')} injected faults: {codes.count('503')} ignored"


def test_curl_through_the_replay_proxy_retries_after_a_503(recorded: Recorded) -> None:
    curl = shutil.which("curl")
    assert curl, "curl is a test dependency (Debian package curl)"
    faults = recorded.faults("503.json", '[{"id": "receipt-503", "endpoint": "GET /v1/receipt",'
                             ' "status": 503, "retry_after": 1, "times": 1}]')
    result = recorded.replay("refund-run", "--faults", str(faults), "--", curl, "-sS",
                             "--retry", "2", "-o", str(recorded.root / "receipt.json"), "-w", "%{http_code}",
                             recorded.url + "/v1/receipt")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "200"
    [head, line] = report_of(result.stderr)
    assert head == "resilience: 1 injected fault: 1 recovered"
    assert "GET /v1/receipt: fault receipt-503 (status): recovered after 2 attempts" in line
    assert line.endswith("Retry-After 1 s honoured")


@pytest.mark.parametrize("side", SIDES)
def test_run_replay_returns_the_call_log_and_the_resilience_rows(
        recorded: Recorded, monkeypatch: pytest.MonkeyPatch, side: str) -> None:
    from tracelab.replay.runner import run_replay

    for name in list(os.environ):
        if name.startswith("TRACELAB_") or name.lower() in ("http_proxy", "https_proxy",
                                                           "all_proxy", "no_proxy"):
            monkeypatch.delenv(name)
    for name, value in env_for(recorded.home).items():
        monkeypatch.setenv(name, value)
    result = run_replay("refund-run", recorded.argv("retry", side),
                        faults=recorded.faults("429.yaml", REFUND_429))
    assert result.exit_code == 0, result.reason
    assert result.faulted == 1
    assert result.duration_ms is not None and result.duration_ms > 0
    outside = [c for c in result.calls or [] if c["kind"] == "http"]
    assert [(c["endpoint"], c["replay"], c["fault"]) for c in outside] == [
        ("POST /v1/refunds", "fault", "stripe-429"), ("POST /v1/refunds", "hit", None),
        ("GET /v1/receipt", "hit", None)]
    assert [c["t"] for c in result.calls] == sorted(c["t"] for c in result.calls)
    [row] = result.resilience
    assert (row["fault"], row["action"], row["outcome"], row["attempts"], row["retry_after_s"],
            row["honoured_retry_after"]) == ("stripe-429", "status", "recovered", 2, 1.0, True)
    assert row["first_retry_after_ms"] >= 950 and row["time_lost_ms"] >= row[
        "first_retry_after_ms"]
    # Without faults: no report, no TRACELAB_REPLAY_FAULTS for the command.
    plain = run_replay("refund-run", [sys.executable, "-c",
                                      "import os; assert 'TRACELAB_REPLAY_FAULTS' not in "
                                      "os.environ"])
    assert plain.command_exit == 0 and plain.resilience is None and plain.faulted == 0
