"""`tracelab demo`: the five-minute tour, in embedded mode (no Redis, no Docker, no accounts).

1. starts the mock vendors (`tracelab mocks`) in this process, on 127.0.0.1:9100-9104
   (`--mocks-base-port 0` picks free ports);
2. runs the sample customer-support refund agent (`examples/refund_agent.py`) against them as
   a child process: `--runs` executions of the workflow `refund-agent`, some under injected
   faults (rate limits, resets, an SMS outage), recorded into the demo's own home,
   `$TRACELAB_HOME/demo` (default `~/.tracelab/demo`; `--home DIR` for another), never into
   your store: `TRACELAB_STORE` and `TRACELAB_REDIS_URL` are ignored; one agent process per
   run (`--scenario NAME`), so each run's recorded command replays exactly that run;
3. exports the first clean run as a recording, `<home>/recordings/<workflow>-<run_id>.jsonl`,
   and prints the commands that export and replay it (replay needs no network, no mocks);
4. serves what was recorded (that home's store only): the API on :8000 and the web UI on :3000
   (`tracelab serve`'s own code), with the mocks still up, until Ctrl-C. `--no-serve` stops
   after recording.

It prints where to look, and the notebook to open (`notebooks/quickstart.ipynb`).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from tracelab.listen import port_number

WORKFLOW = "refund-agent"
NOTEBOOK = "notebooks/quickstart.ipynb"
DEFAULT_RUNS = 6
# The agent's tickets in its own order (examples/refund_agent.py SCENARIOS); run i is
# SCENARIOS[i % 6], as the agent's `--runs N` does.
SCENARIOS = ("refund", "new-order", "llm-rate-limited", "stripe-flaky", "sms-outage",
             "escalation")


def agent_path() -> Path | None:
    """`examples/refund_agent.py` of the checkout this package runs from."""
    for base in (Path(__file__).resolve().parents[1], Path.cwd()):
        candidate = base / "examples" / "refund_agent.py"
        if candidate.is_file():
            return candidate
    return None


def demo_home(flag: str | None) -> Path:
    """`--home`, else `$TRACELAB_HOME/demo`, else `~/.tracelab/demo`: a home of its own, so the
    demo's runs never mix with the user's recordings."""
    from tracelab.config import tracelab_home

    home = Path(flag).expanduser() if flag else tracelab_home() / "demo"
    return home.resolve()


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"{text!r} is out of range (1-1000)")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-serve", action="store_true",
                        help="record the runs, print the summary and exit (no API/UI)")
    parser.add_argument("--runs", type=positive, default=DEFAULT_RUNS,
                        help=f"executions of the sample agent to record (default {DEFAULT_RUNS}: "
                             "one per scenario, some under injected faults)")
    parser.add_argument("--home", default=None,
                        help="the demo's TRACELAB_HOME, where it records and what it serves "
                             "(default: $TRACELAB_HOME/demo, else ~/.tracelab/demo; never your "
                             "own store)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address for the API, UI and mocks (default 127.0.0.1)")
    parser.add_argument("--port", type=port_number, default=8000, help="API port (default 8000)")
    parser.add_argument("--ui-port", type=port_number, default=3000,
                        help="web UI port (default 3000)")
    parser.add_argument("--mocks-base-port", type=port_number, default=9100,
                        help="first mock port (default 9100; 0 picks free ports)")
    parser.add_argument("--log-level", default="warning",
                        choices=["critical", "error", "warning", "info", "debug"])


def _summary(home: Path) -> tuple[str, int, int]:
    from tracelab.store import query
    from tracelab.store.layout import resolve_layout

    layout = resolve_layout(None, home)
    runs = query.executions(WORKFLOW, layout=layout)
    if runs is None or len(runs) == 0:
        return "no executions were recorded", 0, 0
    failed = int((runs["status"] == "error").sum())
    lines = [f"recorded {len(runs)} executions of workflow {WORKFLOW!r} "
             f"({failed} with errors) in {layout.root}"]
    for row in runs.sort_values("started_at").to_dict("records"):
        tags = dict(row.get("tags") or {})
        lines.append(f"  {row['run_id']}  {row['status']:<5}  {int(row['events']):>3} events  "
                     f"{int(row['errors']):>2} errors  scenario={tags.get('scenario', '?')}")
    return "\n".join(lines), len(runs), failed


def _recording(home: Path, mock_urls: dict[str, str]) -> str:
    """Export the first clean run into `<home>/recordings/` and say how to export and replay.

    `mock_urls` (only when the mocks were on free ports) are put in front of the replay
    command: the agent recorded its calls to those ports, and the match key holds the port.
    """
    from tracelab.replay.recording import RecordingError, default_path, export_run
    from tracelab.store import query
    from tracelab.store.layout import resolve_layout

    layout = resolve_layout(None, home)
    runs = query.executions(WORKFLOW, layout=layout).sort_values("started_at")
    clean = runs[runs["status"] == "ok"]
    if len(clean) == 0:
        return "\n(no run without errors to export as a recording)"
    run_id = str(clean["run_id"].iloc[0])
    path = home / "recordings" / default_path(WORKFLOW, run_id)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        export_run(run_id, path, layout=layout)
    except (RecordingError, OSError) as exc:
        return f"\n(could not export run {run_id}: {exc})"
    urls = "".join(f"MOCK_{name.upper()}_URL={url} " for name, url in mock_urls.items())
    home_env = shlex.quote(f"TRACELAB_HOME={home}")
    return "\n".join([
        "",
        f"Recorded, exported, ready to replay: run {run_id} is in {path}",
        "  1. record  done: each run above is the agent's command run under TraceLab",
        f"  2. export  {home_env} tracelab export {run_id} -o {shlex.quote(str(path))}",
        f"  3. replay  {home_env} {urls}tracelab replay {shlex.quote(str(path))}",
        "     runs the recorded command again, every vendor call answered from the file: no "
        "network, no mocks, no API keys (`0 misses` in its last line)",
    ])


def run(args: argparse.Namespace) -> int:
    from tracelab.replay.faults import FaultRuleError
    from tracelab.cli.mocks import MockServers, ports_for

    home = demo_home(args.home)
    home.mkdir(parents=True, exist_ok=True)
    os.environ["TRACELAB_HOME"] = str(home)
    if os.environ.pop("TRACELAB_REDIS_URL", None):
        print("tracelab demo: ignoring TRACELAB_REDIS_URL: the demo records in embedded mode",
              file=sys.stderr)
    if os.environ.pop("TRACELAB_STORE", None):
        print(f"tracelab demo: ignoring TRACELAB_STORE: the demo keeps its store in {home}",
              file=sys.stderr)
    missing = [name for name in ("stripe", "sendgrid", "openai", "twilio", "boto3")
               if importlib.util.find_spec(name) is None]
    if missing:
        print(f"tracelab demo: the sample agent drives the real vendor SDKs; missing: "
              f"{', '.join(missing)} (install the dev extra: make install, or pip install -e "
              "'.[all]')", file=sys.stderr)
        return 1
    agent = agent_path()
    if agent is None:
        print("tracelab demo: the sample agent examples/refund_agent.py was not found; run "
              "the demo from a clone of the TraceLab repository", file=sys.stderr)
        return 1
    if not args.no_serve and args.port == args.ui_port and args.port != 0:
        print("tracelab demo: --port and --ui-port are the same", file=sys.stderr)
        return 2

    try:
        mocks = MockServers(ports_for(None, args.mocks_base_port), host=args.host,
                            faults_text="", log_level=args.log_level)
    except FaultRuleError as exc:  # not reachable with faults_text="", kept for clarity
        print(f"tracelab demo: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:
        print(f"{exc.code} (or use --mocks-base-port 0)".replace("tracelab mocks:",
                                                                  "tracelab demo:"),
              file=sys.stderr)
        return 1
    mocks.start()
    try:
        print("TraceLab demo: mock vendors up: " +
              ", ".join(f"{n} {u}" for n, u in mocks.urls.items()), flush=True)
        env = {k: v for k, v in os.environ.items()
               if k not in ("TRACELAB_REDIS_URL", "TRACELAB_STORE", "TRACELAB_RUN_ID",
                            "TRACELAB_WORKFLOW_NAME", "TRACELAB_SERVICE_NAME", "TRACELAB_TAGS",
                            "TRACELAB_DISABLED", "MOCK_FAULTS")}
        env["TRACELAB_HOME"] = str(home)
        env.update({f"MOCK_{name.upper()}_URL": url for name, url in mocks.urls.items()})
        env["PYTHONUNBUFFERED"] = "1"
        print(f"TraceLab demo: recording {args.runs} runs of the sample refund agent "
              f"({agent}) into the demo's own home {home}", flush=True)
        for i in range(args.runs):
            code = subprocess.call([sys.executable, str(agent), "--scenario",
                                    SCENARIOS[i % len(SCENARIOS)], "--runs", "1",
                                    "--base-port", str(args.mocks_base_port or 9100)], env=env)
            if code != 0:
                print(f"tracelab demo: the sample agent exited with {code}", file=sys.stderr)
                return 1
        from tracelab.store.spool import fold_spool

        fold_spool(home)
        text, count, _failed = _summary(home)
        print(text, flush=True)
        if count == 0:
            return 1
        print(_recording(home, mocks.urls if args.mocks_base_port == 0 else {}), flush=True)
        if args.no_serve:
            print(f"\nLook at them: `TRACELAB_HOME={home} tracelab serve`, then "
                  f"http://127.0.0.1:3000 ; in Jupyter (`TRACELAB_HOME={home} jupyter lab`): "
                  f"`import tracelab as tl; tl.executions({WORKFLOW!r})`; the notebook tour: "
                  f"{NOTEBOOK}", flush=True)
            return 0
        return _serve(args, home, mocks.urls)
    finally:
        mocks.stop()


def _serve(args: argparse.Namespace, home: Path, mock_urls: dict[str, str]) -> int:
    from tracelab.cli.serve import serve

    serve_args = argparse.Namespace(host=args.host, port=args.port, ui_port=args.ui_port,
                                    no_ui=False, token=None, store=str(home / "store"),
                                    log_level=args.log_level)
    shown = f"[{args.host}]" if ":" in args.host else args.host

    def ready(_stop: Any) -> None:
        print("\n".join([
            "",
            "Where to look:",
            f"  web UI     http://{shown}:{args.ui_port}   -> workflow {WORKFLOW!r}: runs with "
            "errors are the fault-injected ones; click a run for its timeline, a step for "
            "its request/response",
            f"  API        http://{shown}:{args.port}/docs (Swagger), "
            f"http://{shown}:{args.port}/metrics (Prometheus)",
            f"  notebook   jupyter lab {NOTEBOOK}   (with TRACELAB_HOME={home}: "
            f"tl.executions({WORKFLOW!r}).timeline())",
            "  mocks      " + ", ".join(f"{n} {u}" for n, u in mock_urls.items()) +
            "  (fault rules: <url>/__tracelab/faults)",
            "Ctrl-C stops everything.",
        ]), flush=True)

    try:
        return serve(serve_args, name="demo", on_ready=ready)
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(exc.code.replace("tracelab:", "tracelab demo:", 1), file=sys.stderr)
            return 1
        raise
