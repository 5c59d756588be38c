"""`tracelab replay`'s verdict, report summing and the environment its command gets."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.event_factory import make_event
from tracelab.replay.runner import tally_reports, verdict

ROOT = Path(__file__).resolve().parents[1]
CALLS = ["e1", "e2", "e3"]


def line(source: str, hits: list[str], misses: int = 0, passthrough: int = 0) -> bytes:
    return orjson.dumps({"source": source, "pid": 1, "hits": hits,
                         "misses": [{"call": "GET h /x", "message": "m"}] * misses,
                         "passthrough": ["GET h /y"] * passthrough})


def test_report_lines_are_summed_and_a_call_answered_twice_counts_once() -> None:
    tally = tally_reports([line("sdk-py", ["e1", "e2"]), b"", b'{"source": "sdk-ts", "hi',
                           line("proxy", ["e2", "not-recorded"], misses=2, passthrough=1)], CALLS)
    assert tally.summary == "replayed 2/3 calls, 2 misses, 1 unused recordings"
    assert tally.reports == ["sdk-py", "proxy"] and tally.passthrough == ["GET h /y"]


@settings(max_examples=200, deadline=None)
@given(command=st.one_of(st.none(), st.integers(-64, 255)), misses=st.integers(0, 3),
       hits=st.sets(st.sampled_from(CALLS)), reported=st.booleans())
def test_one_verdict_exit_zero_only_for_a_clean_run(command: int | None, misses: int,
                                                    hits: set[str], reported: bool) -> None:
    tally = tally_reports([line("proxy", sorted(hits), misses=misses)], CALLS)
    code, reason = verdict(command, tally, proxy_reported=reported)
    assert (code == 0) == (command == 0 and misses == 0 and reported)
    assert (reason == "ok") == (code == 0)
    if command not in (None, 0):  # the command's own status, 128+N for a signal
        assert code == (128 - command if command < 0 else command)
    elif command == 0 and misses:
        assert code == 1 and f"{misses} calls missed" in reason
    assert tally.unused == len(CALLS) - len(hits)


def test_the_command_gets_the_replay_environment(tmp_path: Path) -> None:
    recording = tmp_path / "rec.jsonl"
    recording.write_bytes(orjson.dumps(make_event("shop", "orig-run", tags={})) + b"\n")
    names = ["TRACELAB_REPLAY", "TRACELAB_REPLAY_ON_MISS", "TRACELAB_REPLAY_SPEED",
             "TRACELAB_REPLAY_IGNORE", "TRACELAB_REPLAY_HEADERS", "TRACELAB_REPLAY_REPORT",
             "TRACELAB_WORKFLOW_NAME", "TRACELAB_RUN_ID", "TRACELAB_TAGS", "HTTP_PROXY",
             "HTTPS_PROXY", "http_proxy", "https_proxy", "NO_PROXY", "no_proxy",
             "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS", "CURL_CA_BUNDLE",
             "NODE_USE_ENV_PROXY"]
    dump = f"import json, os; json.dump({{k: os.environ.get(k) for k in {names!r}}}, " \
           "open('env.json', 'w'))"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACELAB_")}
    env.update(TRACELAB_HOME=str(tmp_path / "home"), NO_PROXY="127.0.0.1", no_proxy="localhost",
               TRACELAB_TAGS='{"team": "payments"}',
               PYTHONPATH=os.pathsep.join(filter(None, (str(ROOT), env.get("PYTHONPATH")))))
    result = subprocess.run(
        [sys.executable, "-m", "tracelab.cli", "replay", str(recording), "--speed", "1.5",
         "--on-miss", "passthrough", "--match-ignore", "query:ts", "--match-headers",
         "X-Tenant", "--workflow", "shop-replay", "--run-id", "new-run", "--",
         sys.executable, "-c", dump], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines()[-1] == \
        "replayed 0/1 calls, 0 misses, 1 unused recordings"
    seen = json.loads((tmp_path / "env.json").read_text())
    proxy = seen["HTTP_PROXY"]
    assert proxy.startswith("http://127.0.0.1:")
    assert seen["HTTPS_PROXY"] == seen["http_proxy"] == seen["https_proxy"] == proxy
    assert seen["NO_PROXY"] is None and seen["no_proxy"] is None
    ca = tmp_path / "home" / "proxy" / "mitmproxy-ca-cert.pem"
    assert seen["SSL_CERT_FILE"] == seen["REQUESTS_CA_BUNDLE"] == seen["NODE_EXTRA_CA_CERTS"] \
        == seen["CURL_CA_BUNDLE"] == str(ca)
    assert seen["NODE_USE_ENV_PROXY"] == "1"
    assert seen["TRACELAB_REPLAY"] == str(recording)
    assert (seen["TRACELAB_REPLAY_ON_MISS"], seen["TRACELAB_REPLAY_SPEED"]) == ("passthrough", "1.5")
    assert json.loads(seen["TRACELAB_REPLAY_IGNORE"]) == ["query:ts"]
    assert json.loads(seen["TRACELAB_REPLAY_HEADERS"]) == ["x-tenant"]
    assert seen["TRACELAB_REPLAY_REPORT"].endswith("report.jsonl")
    assert (seen["TRACELAB_WORKFLOW_NAME"], seen["TRACELAB_RUN_ID"]) == ("shop-replay", "new-run")
    assert json.loads(seen["TRACELAB_TAGS"]) == {"team": "payments", "replay_of": "orig-run"}

