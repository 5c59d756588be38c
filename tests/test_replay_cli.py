"""`tracelab replay` end to end: a run recorded by a real program against a real loopback
server, the server stopped, then the command (curl, Python) run again through the real CLI
in a subprocess, answered from the recording by the SDK and the replay proxy."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import LoopbackHTTP
from tests.event_factory import make_event

ROOT = Path(__file__).resolve().parents[1]
RECORDED_RUN = "agent-run-1"

AGENT = textwrap.dedent("""\
    import sys

    import requests

    import tracelab

    tracelab.init("replay-agent")
    base = sys.argv[1]
    print(requests.get(base + "/echo?order=7").json()["path"])
    print(requests.post(base + "/echo", json={"qty": 2}).json()["body"])
    tracelab.shutdown()
""")


def env_for(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("TRACELAB_") and k.lower() not in
           ("http_proxy", "https_proxy", "all_proxy", "no_proxy")}
    env.update(TRACELAB_HOME=str(home), NO_PROXY="127.0.0.1,localhost",
               PYTHONPATH=os.pathsep.join(filter(None, (str(ROOT), env.get("PYTHONPATH")))),
               **extra)
    return env


def replay(home: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tracelab.cli", "replay", *args],
                          env=env_for(home), cwd=cwd, capture_output=True, text=True, timeout=120)


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def recorded(home: Path, tmp_path: Path) -> dict[str, Any]:
    """A run of the agent against a loopback server, which is stopped afterwards."""
    agent = tmp_path / "agent.py"
    agent.write_text(AGENT)
    server = LoopbackHTTP()
    try:
        out = subprocess.run([sys.executable, str(agent), server.url], cwd=tmp_path,
                             env=env_for(home, TRACELAB_RUN_ID=RECORDED_RUN),
                             capture_output=True, text=True, timeout=60)
    finally:
        server.close()
    assert out.returncode == 0, out.stderr
    return {"url": server.url, "agent": agent, "stdout": out.stdout}


def new_run(home: Path, monkeypatch: pytest.MonkeyPatch, workflow: str) -> tuple[str, Any]:
    """The one execution of `workflow` tagged replay_of, and its events."""
    monkeypatch.setenv("TRACELAB_HOME", str(home))
    from tracelab.store import query

    runs = query.executions(workflow)
    replayed = runs[runs["run_id"] != RECORDED_RUN]
    assert len(replayed) == 1, runs
    row = replayed.iloc[0]
    tags = row["tags"] if isinstance(row["tags"], dict) else orjson.loads(row["tags"])
    assert tags["replay_of"] == RECORDED_RUN
    return str(row["run_id"]), query.execution_events(str(row["run_id"]), workflow)


def test_curl_is_answered_from_the_recording_and_an_unrecorded_url_refused(
        home: Path, recorded: dict[str, Any], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    curl = shutil.which("curl")
    assert curl, "curl is a test dependency (Debian package curl)"
    url = recorded["url"]
    script = (f"{curl} -sS -o hit.json '{url}/echo?order=7' && "
              f"{curl} -sS -D miss.headers -o miss.txt '{url}/never-recorded'")
    result = replay(home, RECORDED_RUN, "--", "sh", "-c", script, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert last_line(result.stderr) == "replayed 1/2 calls, 1 misses, 1 unused recordings"
    assert "1 calls missed the recording" in result.stderr
    assert orjson.loads((tmp_path / "hit.json").read_bytes())["path"] == "/echo?order=7"
    headers = (tmp_path / "miss.headers").read_text()
    assert headers.startswith("HTTP/1.1 502") and "X-Tracelab-Replay: miss" in headers
    miss = (tmp_path / "miss.txt").read_text()
    assert "GET 127.0.0.1" in miss and "/never-recorded" in miss and "/echo" in miss
    run_id, events = new_run(home, monkeypatch, "replay-agent")
    assert sorted(events["endpoint"]) == ["GET /echo", "GET /never-recorded"]


def test_python_agent_replayed_with_the_server_down(home: Path, recorded: dict[str, Any],
                                                    tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    result = replay(home, RECORDED_RUN, "--run-id", "replay-run-7", "--", sys.executable,
                    str(recorded["agent"]), recorded["url"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == recorded["stdout"]
    assert last_line(result.stderr) == "replayed 2/2 calls, 0 misses, 0 unused recordings"
    run_id, events = new_run(home, monkeypatch, "replay-agent")
    assert run_id == "replay-run-7"
    # Each call once in the new run, whoever answered it (the SDK in-process or the proxy).
    assert sorted(events["endpoint"]) == ["GET /echo", "POST /echo"]


def test_the_recorded_command_is_the_default(home: Path, recorded: dict[str, Any],
                                             tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = replay(home, RECORDED_RUN, cwd=elsewhere)  # runs in the recorded cwd
    assert result.returncode == 0, result.stderr
    assert result.stdout == recorded["stdout"]
    assert last_line(result.stderr) == "replayed 2/2 calls, 0 misses, 0 unused recordings"


def test_a_failing_command_fails_the_replay_with_its_own_status(
        home: Path, recorded: dict[str, Any], tmp_path: Path) -> None:
    result = replay(home, RECORDED_RUN, "--", sys.executable, "-c", "raise SystemExit(3)",
                    cwd=tmp_path)
    assert result.returncode == 3
    assert "the command exited with status 3" in result.stderr
    assert last_line(result.stderr) == "replayed 0/2 calls, 0 misses, 2 unused recordings"


def test_passthrough_sends_a_miss_live(home: Path, recorded: dict[str, Any], tmp_path: Path,
                                       loopback_http: LoopbackHTTP,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    curl = shutil.which("curl")
    assert curl
    result = replay(home, RECORDED_RUN, "--on-miss", "passthrough", "--", curl, "-sS",
                    "-o", "live.json", f"{loopback_http.url}/echo?live=1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert [seen[1] for seen in loopback_http.requests_seen] == ["/echo?live=1"]
    assert orjson.loads((tmp_path / "live.json").read_bytes())["path"] == "/echo?live=1"
    assert last_line(result.stderr) == "replayed 0/2 calls, 0 misses, 2 unused recordings"
    _run_id, events = new_run(home, monkeypatch, "replay-agent")
    tags = [t if isinstance(t, dict) else orjson.loads(t) for t in events["tags"]]
    assert [t["replay"] for t in tags] == ["passthrough"]


def test_python_passthrough_goes_live_once(home: Path, recorded: dict[str, Any], tmp_path: Path,
                                           loopback_http: LoopbackHTTP,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK runs the unrecorded call live through the replay proxy, which forwards it without
    recording or counting it again: one passthrough, one event."""
    agent = tmp_path / "mixed.py"
    agent.write_text(textwrap.dedent("""\
        import sys

        import requests

        import tracelab

        tracelab.init("replay-agent")
        print(requests.get(sys.argv[1] + "/echo?order=7").json()["path"])
        print(requests.get(sys.argv[2] + "/echo?fresh=1").json()["path"])
    """))
    result = replay(home, RECORDED_RUN, "--on-miss", "passthrough", "--", sys.executable,
                    str(agent), recorded["url"], loopback_http.url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "/echo?order=7\n/echo?fresh=1\n"
    assert last_line(result.stderr) == "replayed 1/2 calls, 0 misses, 1 unused recordings"
    assert [seen[1] for seen in loopback_http.requests_seen] == ["/echo?fresh=1"]
    _run_id, events = new_run(home, monkeypatch, "replay-agent")
    tags = sorted((t if isinstance(t, dict) else orjson.loads(t))["replay"]
                  for t in events["tags"])
    assert tags == ["hit", "passthrough"] and set(events["source"]) == {"sdk-py"}


def test_bad_input_is_exit_2_with_a_sentence(home: Path, tmp_path: Path) -> None:
    unknown = replay(home, "no-such-run", "--", "true", cwd=tmp_path)
    assert unknown.returncode == 2 and "no-such-run" in unknown.stderr
    recording = tmp_path / "no-command.jsonl"
    recording.write_bytes(orjson.dumps(make_event("shop", "r1", tags={})) + b"\n")
    no_command = replay(home, str(recording), cwd=tmp_path)
    assert no_command.returncode == 2
    assert "holds no command" in no_command.stderr and "-- python agent.py" in no_command.stderr
    bad_rule = replay(home, str(recording), "--match-ignore", "nonsense", "--", "true",
                      cwd=tmp_path)
    assert bad_rule.returncode == 2 and "nonsense" in bad_rule.stderr


def test_https_to_a_host_that_does_not_exist_needs_no_network(home: Path, tmp_path: Path) -> None:
    """curl trusts the replay proxy's CA from the environment (CURL_CA_BUNDLE: curl ignores
    SSL_CERT_FILE); the recorded host is never resolved nor connected."""
    curl = shutil.which("curl")
    assert curl
    event = make_event("shop", "https-run", tags={}, target="api.example.invalid",
                       endpoint="GET /v1/me",
                       request={"method": "GET", "url": "https://api.example.invalid/v1/me",
                                "headers": {}, "body": None},
                       response={"status_code": 200, "headers": {"Content-Type": "application/json"},
                                 "body": {"user": "ada"}})
    recording = tmp_path / "https.jsonl"
    recording.write_bytes(orjson.dumps(event) + b"\n")
    result = replay(home, str(recording), "--", curl, "-sS", "https://api.example.invalid/v1/me",
                    cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert orjson.loads(result.stdout) == {"user": "ada"}
    assert last_line(result.stderr) == "replayed 1/1 calls, 0 misses, 0 unused recordings"
