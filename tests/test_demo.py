"""`tracelab demo`: the sample refund agent recorded against the mocks, in embedded mode, in the
demo's own home (never the user's store); then the store holds the expected workflow, errors exactly where
faults were injected, and events of kinds http, llm, email and sms. One test also checks the
serving half (API and UI answer with the recorded workflow, Ctrl-C stops it).
"""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import requests

from conftest import free_port

ROOT = Path(__file__).resolve().parents[1]


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TRACELAB_", "MOCK_"))}
    env["TRACELAB_HOME"] = str(home)
    return env


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    home = tmp_path_factory.mktemp("demo") / "home"
    done = subprocess.run(
        [sys.executable, "-m", "tracelab.cli", "demo", "--no-serve", "--home", str(home),
         "--mocks-base-port", "0"],
        cwd=ROOT, env=_env(home), capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stdout + done.stderr
    return home, done.stdout


def _store(home: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    from tracelab.store import query
    from tracelab.store.layout import resolve_layout

    layout = resolve_layout(None, home)
    runs = query.executions("refund-agent", layout=layout)
    events = query.events("refund-agent", layout=layout)
    return runs, events


def test_demo_records_the_refund_agent(recorded: tuple[Path, str]) -> None:
    home, out = recorded
    assert "recorded 6 executions of workflow 'refund-agent'" in out
    assert "notebooks/quickstart.ipynb" in out
    runs, events = _store(home)
    assert len(runs) == 6
    scenario = {r["run_id"]: dict(r["tags"])["scenario"] for r in runs.to_dict("records")}
    faults = {r["run_id"]: dict(r["tags"])["faults"] for r in runs.to_dict("records")}
    assert sorted(scenario.values()) == sorted(["refund", "new-order", "llm-rate-limited",
                                                "stripe-flaky", "sms-outage", "escalation"])
    # errors exactly where faults were injected
    for row in runs.to_dict("records"):
        injected = faults[row["run_id"]] != "none"
        assert (row["status"] == "error") == injected, row
        assert (row["errors"] > 0) == injected, row

    assert {"http", "llm", "email", "sms", "function"} <= set(events["kind"])
    by_run = {run_id: frame for run_id, frame in events.groupby("run_id")}
    rid = {v: k for k, v in scenario.items()}

    happy = by_run[rid["refund"]]
    assert set(happy["status"]) == {"ok"}
    assert {"POST /v1/charges", "POST /v1/refunds", "POST /v1/chat/completions",
            "messages.create", "POST /v3/mail/send"} <= set(happy["endpoint"])
    assert set(happy[happy["kind"] == "email"]["target"]) == {"sendgrid", "aws:ses"}
    # every vendor call is nested under a @trace step
    spans = set(happy["span_id"].dropna())
    assert happy[happy["kind"] != "function"]["parent_id"].isin(spans).all()

    llm = by_run[rid["llm-rate-limited"]].query("kind == 'llm'").sort_values("started_at")
    assert list(llm["status"]) == ["error", "error", "ok"]
    assert list(llm["status_code"].astype(int)) == [429, 429, 200]

    stripe = by_run[rid["stripe-flaky"]].query("endpoint == 'POST /v1/refunds'") \
        .sort_values("started_at")
    assert list(stripe["status"]) == ["error", "error", "ok"]
    assert pd.isna(stripe["status_code"].iloc[0])  # the reset: no response at all
    assert stripe["status_code"].iloc[1] == 503

    sms = by_run[rid["sms-outage"]].query("kind == 'sms'")
    assert len(sms) == 4 and set(sms["status"]) == {"error"}  # given up after 4 attempts

    # SendGrid (traced by the agent's register_hook) fails at a seeded rate 0.5: the same
    # two failures then a success on every run of the demo
    sendgrid = by_run[rid["escalation"]].query("target == 'sendgrid'").sort_values("started_at")
    assert list(sendgrid["status"]) == ["error", "error", "ok"]
    assert set(sendgrid["kind"]) == {"email"}
    assert "POST /v1/refunds" not in set(by_run[rid["escalation"]]["endpoint"])


def test_demo_serves_api_and_ui(tmp_path: Path) -> None:
    home = tmp_path / "home"
    api, ui = free_port(), free_port()
    env = _env(home)
    env["TRACELAB_STORE"] = str(tmp_path / "users-store")  # the demo serves its own store
    proc = subprocess.Popen(
        [sys.executable, "-m", "tracelab.cli", "demo", "--runs", "2", "--home", str(home),
         "--port", str(api), "--ui-port", str(ui), "--mocks-base-port", "0"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 90
        workflows = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                workflows = requests.get(f"http://127.0.0.1:{api}/api/workflows",
                                         timeout=2).json()["workflows"]
                break
            except requests.RequestException:
                time.sleep(0.2)
        assert workflows, proc.stdout.read() if proc.poll() is not None else "no API"
        assert workflows[0]["workflow"] == "refund-agent" and workflows[0]["executions"] == 2
        assert requests.get(f"http://127.0.0.1:{ui}/", timeout=5).status_code == 200
        assert "tracelab_executions_stored 2.0" in requests.get(
            f"http://127.0.0.1:{api}/metrics", timeout=5).text
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    output = proc.stdout.read()
    assert code == 0, output
    assert "Where to look:" in output and f"http://127.0.0.1:{ui}" in output


def test_demo_refuses_bad_flags(tmp_path: Path) -> None:
    bad = subprocess.run([sys.executable, "-m", "tracelab.cli", "demo", "--runs", "0"],
                         cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2 and "out of range" in bad.stderr


def test_demo_records_into_its_own_home_never_the_users_store(tmp_path: Path) -> None:
    """Without --home: $TRACELAB_HOME/demo, whatever TRACELAB_STORE says; the user's store and
    spool stay untouched, and the summary says where the runs are."""
    user_home, user_store = tmp_path / "home", tmp_path / "my-store"
    env = _env(user_home)
    env["TRACELAB_STORE"] = str(user_store)
    done = subprocess.run(
        [sys.executable, "-m", "tracelab.cli", "demo", "--no-serve", "--runs", "1",
         "--mocks-base-port", "0"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stdout + done.stderr
    demo_home = (user_home / "demo").resolve()
    assert "ignoring TRACELAB_STORE" in done.stderr
    assert f"recorded 1 executions of workflow 'refund-agent' (0 with errors) in " \
        f"{demo_home / 'store'}" in done.stdout
    assert f"TRACELAB_HOME={demo_home} tracelab serve" in done.stdout
    assert not user_store.exists()
    assert sorted(p.name for p in user_home.iterdir()) == ["demo"]
    runs, _events = _store(demo_home)
    assert len(runs) == 1


def test_demo_leaves_a_recording_that_replays_with_the_mocks_stopped(
        recorded: tuple[Path, str]) -> None:
    """The demo exports its first clean run into `<home>/recordings/` and prints the export and
    replay commands; the file validates, holds no secret, and the printed replay command (the
    mocks are stopped: the demo has exited) runs the agent again with 0 misses."""
    home, out = recorded
    runs, _events = _store(home)
    first_clean = runs.sort_values("started_at").query("status == 'ok'")["run_id"].iloc[0]
    path = home / "recordings" / f"refund-agent-{first_clean}.jsonl"
    assert path.is_file(), out
    assert f"tracelab export {first_clean} -o {path}" in out
    tool = [sys.executable, "-m", "tracelab.cli"]
    for check in ("validate", "scan"):
        done = subprocess.run([*tool, check, str(path)], cwd=ROOT, env=_env(home),
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, (check, done.stdout + done.stderr)
    replay = shlex.split(next(line for line in out.splitlines() if "3. replay" in line)
                         .split("3. replay", 1)[1])
    assignments = [word for word in replay if "=" in word and not word.startswith("/")]
    env = _env(home) | dict(word.split("=", 1) for word in assignments)
    assert env["TRACELAB_HOME"] == str(home)
    command = replay[len(assignments):]
    assert command == ["tracelab", "replay", str(path)]
    done = subprocess.run([*tool, *command[1:]], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr.strip().splitlines()[-1] == \
        "replayed 6/6 calls, 0 misses, 0 unused recordings"
