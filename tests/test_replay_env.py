"""TRACELAB_REPLAY activation: a real subprocess whose init() replays for the whole process and
appends its one report line at exit (the protocol `tracelab replay` sums)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

import tracelab
from conftest import LoopbackHTTP
from tracelab.replay.recording import run_events, write_recording

SCRIPT = """
import requests, tracelab
tracelab.init()
print(requests.get(URL + "/echo?a=1", timeout=5).json()["path"])
try:
    requests.get(URL + "/echo?a=2", timeout=5)
except requests.ConnectionError as exc:
    print("MISS", exc)
"""


def run_replaying(tmp_path: Path, home: Path, recording: Path, url: str, *, ok: bool = True,
                  **extra: str) -> tuple[subprocess.CompletedProcess[str], list[dict]]:
    report = tmp_path / "report.jsonl"
    env = {**os.environ, "TRACELAB_HOME": str(home), "TRACELAB_REPLAY": str(recording),
           "TRACELAB_REPLAY_REPORT": str(report), "TRACELAB_WORKFLOW_NAME": "checkout",
           "TRACELAB_RUN_ID": "replay-run", "TRACELAB_TAGS": json.dumps({"replay_of": "orig-e"}),
           **extra}
    done = subprocess.run([sys.executable, "-c", f"URL = {url!r}\n" + SCRIPT], env=env,
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode == 0) is ok, done.stderr
    lines = [json.loads(line) for line in report.read_text().splitlines()] \
        if report.exists() else []
    return done, lines


@pytest.fixture
def recording(tracelab_home: Path, tmp_path: Path) -> tuple[Path, str]:
    server = LoopbackHTTP()
    try:
        tracelab.init("checkout", run_id="orig-e")
        requests.get(f"{server.url}/echo?a=1", timeout=5)
        tracelab.flush()
        tracelab.shutdown()
    finally:
        server.close()
    return write_recording(run_events("orig-e"), tmp_path / "rec.jsonl"), server.url


def test_env_replay_answers_and_reports_one_line(recording: tuple[Path, str], tmp_path: Path,
                                                 tracelab_home: Path) -> None:
    path, url = recording
    done, lines = run_replaying(tmp_path, tracelab_home, path, url)
    out = done.stdout.splitlines()
    assert out[0] == "/echo?a=1"
    assert out[1].startswith("MISS ") and "query" in out[1]
    (line,) = lines
    (original,) = run_events("orig-e")
    assert line["source"] == "sdk-py" and line["pid"] > 0
    assert line["hits"] == [original["event_id"]] and line["passthrough"] == []
    assert [m["call"] for m in line["misses"]] == [f"GET {url[7:]} /echo"]
    events = run_events("replay-run")
    assert [e["tags"]["replay"] for e in events] == ["hit", "miss"]
    assert {e["tags"]["replay_of"] for e in events} == {"orig-e"}


def test_an_unreadable_recording_fails_every_call_closed(tmp_path: Path,
                                                         tracelab_home: Path) -> None:
    server = LoopbackHTTP()
    try:
        missing = tmp_path / "no-such-recording.jsonl"
        done, lines = run_replaying(tmp_path, tracelab_home, missing, server.url, ok=False)
        assert server.requests_seen == []  # nothing left the machine
    finally:
        server.close()
    assert "requests.exceptions.ConnectionError: replay not possible" in done.stderr
    assert "no-such-recording.jsonl" in done.stderr
    (line,) = lines
    assert line["hits"] == [] and "replay not possible" in line["misses"][0]["message"]


def test_record_mode_sends_live_and_marks_the_event_new(recording: tuple[Path, str],
                                                        tmp_path: Path,
                                                        tracelab_home: Path) -> None:
    path, _url = recording
    server = LoopbackHTTP()
    try:
        with tracelab.replay(str(path), on_miss="record") as r:
            assert requests.get(f"{server.url}/echo?new=1", timeout=5).status_code == 200
        assert len(server.requests_seen) == 1
    finally:
        server.close()
    (event,) = run_events(r.run_id)
    assert event["tags"]["replay"] == "passthrough" and event["tags"]["replay.new"] == "true"
