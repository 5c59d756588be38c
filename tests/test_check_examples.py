"""examples/ci: its spec passes against its committed recording with the real sample agent, and
the deliberately fragile agent (`--no-retry`) fails the rate-limit case; the workflow file
runs `tracelab check` on it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CI = ROOT / "examples" / "ci"


def check(*args: str, home: Path, cwd: Path = ROOT,
          **extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TRACELAB_", "GITHUB_", "MOCK_")) and k.lower() not in
           ("http_proxy", "https_proxy", "all_proxy")}
    # PATH as a user's shell has it, without the venv: `tracelab check` puts its own
    # interpreter's folder first, so the spec's `python ../refund_agent.py` finds TraceLab.
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if p != str(Path(sys.executable).parent))
    env["TRACELAB_HOME"] = str(home)
    env.update(extra)
    return subprocess.run([sys.executable, "-m", "tracelab.cli", "check", *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=300)


def test_the_example_spec_passes_and_the_fragile_agent_fails_its_rate_limit_case(
        tmp_path: Path) -> None:
    done = check("examples/ci", "--junit", str(tmp_path / "junit.xml"), home=tmp_path / "home")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1] == \
        "tracelab check: passed: 2 cases, 2 passed, 0 failed, 0 errors"

    # The fragile agent, as the README shows it: the same spec, REFUND_AGENT_NO_RETRY=1.
    fragile = check("examples/ci", home=tmp_path / "home", REFUND_AGENT_NO_RETRY="1")
    out = fragile.stdout
    assert fragile.returncode == 1, out + fragile.stderr
    assert out.splitlines()[0].startswith("PASS  refund happy path")  # no fault, no retry needed
    assert "FAIL  refund survives a Stripe rate limit" in out
    for expected in ["      unused: 4 recorded calls were never made (at most 0)",
                     "        unused: POST 127.0.0.1:9100 /v1/refunds",
                     "      calls.must_include: no call 'POST 127.0.0.1:9100 /v1/refunds' was made",
                     "        - recorded #6: sms twilio messages.create  (not made in the replay)"]:
        assert expected in out.splitlines(), (expected, out)


def test_the_workflow_installs_tracelab_and_runs_check_on_the_example() -> None:
    workflow = yaml.safe_load((CI / ".github" / "workflows" / "tracelab.yml").read_text())
    steps = workflow["jobs"]["replay-specs"]["steps"]
    runs = [step.get("run", "") for step in steps]
    assert any(r.startswith("pip install \".[proxy]\"") for r in runs)
    assert "tracelab check examples/ci --junit tracelab-junit.xml" in runs
    assert (CI / "recordings" / "refund.jsonl").is_file()


def free_base_port() -> int:
    """A base port with the five mock ports after it free right now, below the kernel's
    ephemeral range for the reason `conftest.free_port` gives."""
    import random
    import socket

    from conftest import _ephemeral_low

    for _ in range(50):
        base = random.randrange(10_000, max(10_001, _ephemeral_low() - 5))
        socks = []
        try:
            for port in range(base, base + 5):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise AssertionError("no five free consecutive ports")


def test_update_against_mocks_records_the_real_agent_then_replays_it(tmp_path: Path) -> None:
    base = free_base_port()
    [happy, _rate_limited] = yaml.safe_load((CI / "tracelab.yaml").read_text())
    text = yaml.safe_dump([{**happy, "recording": "new/refund.jsonl",
                            "command": happy["command"].replace(
                                "../refund_agent.py", str(ROOT / "examples" / "refund_agent.py"))}],
                          sort_keys=False)
    text = text.replace("127.0.0.1:9100", f"127.0.0.1:{base}").replace(
        "127.0.0.1:9104", f"127.0.0.1:{base + 4}")
    (tmp_path / "tracelab.yaml").write_text(text)
    plain = check("--against-mocks", home=tmp_path / "home", cwd=tmp_path)
    assert plain.returncode == 2 and "--against-mocks only goes with --update" in plain.stderr
    done = check("--update", "--against-mocks", "--mocks-base-port", str(base),
                 home=tmp_path / "home", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[0].startswith("PASS  refund happy path")
    assert "recording updated" in done.stdout
    recording = (tmp_path / "new" / "refund.jsonl").read_text()
    assert f'"target":"127.0.0.1:{base}","endpoint":"POST /v1/refunds"' in recording
    # The mocks are gone: answered from the new recording. The agent is pointed where it
    # recorded (on the default ports, 9100-9104, the agent's defaults, nothing is needed).
    from tracelab.mocks import VENDORS

    urls = {f"MOCK_{name.upper()}_URL": f"http://127.0.0.1:{vendor.port(base)}"
            for name, vendor in VENDORS.items()}
    again = check(home=tmp_path / "home", cwd=tmp_path, **urls)
    assert again.returncode == 0, again.stdout + again.stderr
