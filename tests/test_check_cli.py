"""`tracelab check` end to end: a run recorded by a real program against a real loopback
server (then stopped), specs run through the real CLI in a subprocess, the JUnit file parsed,
the GitHub output read back, and `--update` re-recording live."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import LoopbackHTTP

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable

AGENT = textwrap.dedent("""\
    import sys

    import requests

    import tracelab

    base, flags = sys.argv[1], sys.argv[2:]
    tracelab.init(workflow_name="check-agent", service_name="agent")
    requests.get(base + "/echo?order=7")
    if "--skip-post" not in flags:
        requests.post(base + "/echo", json={"qty": 2})
    requests.post(base + "/v1/chat/completions",
                  json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
    tracelab.shutdown()
    sys.exit(3 if "--exit-3" in flags else 0)
""")


def env_for(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TRACELAB_", "GITHUB_")) and k.lower() not in
           ("http_proxy", "https_proxy", "all_proxy", "no_proxy")}
    env.update(TRACELAB_HOME=str(home), NO_PROXY="127.0.0.1,localhost",
               PATH=os.pathsep.join([str(Path(PYTHON).parent), env.get("PATH", "")]),
               PYTHONPATH=os.pathsep.join(filter(None, (str(ROOT), env.get("PYTHONPATH")))),
               **extra)
    return env


def tracelab(cwd: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "tracelab.cli", *args], cwd=cwd,
                          env=env_for(cwd / "home", **extra), capture_output=True, text=True,
                          timeout=180)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A folder with agent.py and rec.jsonl, recorded live from a server that is gone since."""
    folder = tmp_path_factory.mktemp("check")
    (folder / "agent.py").write_text(AGENT)
    server = LoopbackHTTP()
    try:
        subprocess.run([PYTHON, "agent.py", server.url], cwd=folder, check=True, timeout=60,
                       env=env_for(folder / "rec-home", TRACELAB_RUN_ID="recorded-run"))
    finally:
        server.close()
    exported = subprocess.run([PYTHON, "-m", "tracelab.cli", "export", "recorded-run", "-o",
                               "rec.jsonl"], cwd=folder, env=env_for(folder / "rec-home"),
                              capture_output=True, text=True, timeout=60)
    assert exported.returncode == 0, exported.stderr
    yield folder, server.url.removeprefix("http://")


def spec_text(target: str, *cases: tuple[str, str]) -> str:
    """Cases (name, extra agent flags) with every expectation the clean agent meets."""
    out = []
    for name, flags in cases:
        out.append(textwrap.dedent(f"""\
            - name: {name}
              recording: rec.jsonl
              command: python agent.py http://{target} {flags}
              expect:
                exit_code: 0
                misses: 0
                unused: 0
                errors: 0
                calls:
                  same_as_recording: true
                  must_include: ["POST {target} /echo"]
                  must_not_include: ["DELETE {target} *"]
                  max_per_target: {{"{target}": 3}}
                budgets: {{duration_ms: 120000, llm_tokens: 100, llm_cost_usd: 0.01}}
            """))
    return "".join(out)


def test_passing_and_failing_cases_junit_annotations_summary_and_exit_codes(
        recorded: tuple[Path, str], tmp_path: Path) -> None:
    folder, target = recorded
    spec = folder / "tracelab.yaml"
    spec.write_text(spec_text(target, ("clean agent", ""),
                              ("agent that drops a call", "--skip-post --exit-3")))
    summary = tmp_path / "summary.md"
    done = tracelab(folder, "check", "--junit", str(tmp_path / "junit.xml"),
                    GITHUB_ACTIONS="true", GITHUB_STEP_SUMMARY=str(summary),
                    GITHUB_WORKSPACE=str(folder))
    out = done.stdout
    assert done.returncode == 1, (out, done.stderr)
    lines = out.splitlines()
    assert lines[0].startswith("PASS  clean agent")
    assert lines[1].startswith("FAIL  agent that drops a call")
    for expected in [
            "      exit_code: the command exited with status 3, expected 0",
            "      unused: 1 recorded calls were never made (at most 0)",
            f"        unused: POST {target} /echo",
            "      calls.same_as_recording: the calls are 1 edits away from the recording "
            "(tolerance 0)",
            f"        - recorded #2: POST {target} /echo  (not made in the replay)",
            f"      calls.must_include: no call 'POST {target} /echo' was made"]:
        assert expected in lines, (expected, out)
    assert "tracelab check: FAILED: 2 cases, 1 passed, 1 failed, 0 errors" in lines

    root = ET.parse(tmp_path / "junit.xml").getroot()
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("2", "1", "0")
    clean, drift = root.findall("testsuite/testcase")
    assert clean.get("name") == "clean agent" and list(clean.iter("failure")) == []
    failures = {f.get("type"): f.text or "" for f in drift.iter("failure")}
    assert set(failures) == {"exit_code", "unused", "calls.same_as_recording",
                             "calls.must_include"}
    assert f"- recorded #2: POST {target} /echo  (not made in the replay)" in \
        failures["calls.same_as_recording"]
    assert (drift.get("file"), drift.get("line")) == ("tracelab.yaml", "15")

    annotations = [line for line in lines if line.startswith("::error ")]
    assert len(annotations) == 4
    assert annotations[0].startswith("::error file=tracelab.yaml,line=15,title=agent that "
                                     "drops a call%3A exit_code::exit_code: the command exited")
    table = summary.read_text()
    assert "| clean agent | tracelab.yaml:1 | ✅ pass |" in table
    assert "| agent that drops a call | tracelab.yaml:15 | ❌ fail | exit_code:" in table

    only_clean = tracelab(folder, "check", "-k", "CLEAN", "--junit", str(tmp_path / "j2.xml"))
    assert only_clean.returncode == 0, only_clean.stdout + only_clean.stderr
    assert only_clean.stdout.splitlines()[-1] == \
        "tracelab check: passed: 1 cases, 1 passed, 0 failed, 0 errors"
    assert ET.parse(tmp_path / "j2.xml").getroot().get("tests") == "1"


def test_an_invalid_recording_or_unknown_key_exits_2(recorded: tuple[Path, str],
                                                     tmp_path: Path) -> None:
    folder, target = recorded
    (tmp_path / "bad.jsonl").write_text('{"not": "an event"}\n')
    (tmp_path / "tracelab.yaml").write_text(
        f"- name: broken recording\n  recording: bad.jsonl\n  command: python -c pass\n")
    done = tracelab(tmp_path, "check", "--junit", "out.xml")
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout.startswith("ERROR broken recording: recording ")
    assert ET.parse(tmp_path / "out.xml").getroot().find("testsuite/testcase/error") is not None
    (tmp_path / "tracelab.yaml").write_text(spec_text(target, ("x", "")).replace(
        "    unused: 0", "    unused: 0\n    tolerance: 1"))
    done = tracelab(tmp_path, "check", str(tmp_path))
    assert done.returncode == 2
    assert "cases[0].expect.tolerance: unknown key" in done.stdout
    (tmp_path / "tracelab.yaml").write_text(
        f"- name: no such command\n  recording: {folder / 'rec.jsonl'}\n"
        "  command: tracelab-no-such-agent --go\n")
    done = tracelab(tmp_path, "check")
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout.startswith("ERROR no such command: the command could not be started: "
                                  "tracelab-no-such-agent --go")


def test_update_keeps_a_passing_run_and_never_a_failing_one(recorded: tuple[Path, str],
                                                            tmp_path: Path) -> None:
    folder, _target = recorded
    shutil.copy(folder / "agent.py", tmp_path / "agent.py")
    old = (folder / "rec.jsonl").read_bytes()
    (tmp_path / "rec.jsonl").write_bytes(old)
    server = LoopbackHTTP()
    try:
        live = server.url.removeprefix("http://")
        (tmp_path / "tracelab.yaml").write_text(spec_text(live, ("fragile", "--skip-post")))
        refused = tracelab(tmp_path, "check", "--update")
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "recording not updated: the new run failed its expectations" in refused.stdout
        assert (tmp_path / "rec.jsonl").read_bytes() == old
        seen = len(server.requests_seen)
        assert seen == 2  # it did run live: GET /echo and the LLM call

        (tmp_path / "tracelab.yaml").write_text(spec_text(live, ("clean", "")))
        kept = tracelab(tmp_path, "check", "--update")
        assert kept.returncode == 0, kept.stdout + kept.stderr
        assert f"recording updated: {tmp_path / 'rec.jsonl'}" in kept.stdout
        new = (tmp_path / "rec.jsonl").read_bytes()
        assert new != old and live.encode() in new and len(server.requests_seen) == seen + 3

        # No command in the case: the one the recording holds is run again, live.
        (tmp_path / "tracelab.yaml").write_text(spec_text(live, ("clean", "")).replace(
            f"  command: python agent.py http://{live} \n", ""))
        assert "command" not in (tmp_path / "tracelab.yaml").read_text()
        recorded_again = tracelab(tmp_path, "check", "--update")
        assert recorded_again.returncode == 0, recorded_again.stdout + recorded_again.stderr
        assert len(server.requests_seen) == seen + 6
        assert (tmp_path / "rec.jsonl").read_bytes() != new
    finally:
        server.close()
    again = tracelab(tmp_path, "check")  # the new recording replays with the server gone
    assert again.returncode == 0, again.stdout + again.stderr
