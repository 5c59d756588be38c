#!/usr/bin/env python
"""Replay cost: a `requests` call answered from a recording vs a live loopback call, and the
demo agent's runs replayed vs run live against the mocks. Same machine, same run.

(a) per call: one process, embedded mode (a temporary TRACELAB_HOME), a real
    `ThreadingHTTPServer` on 127.0.0.1 answering a small JSON body. Variants:

      live          a plain `requests.get` to the loopback server, TraceLab not loaded
      live+trace    the same call recorded by `tracelab.init()` (the cost replay also pays:
                    the replayed call is recorded in the new run)
      replay-10     answered inside `with tracelab.replay(recording):`, a recording of 10 events
      replay-10000  the same, a recording of 10,000 events (calls spread over all of them)

    A recorded answer is used once, so the 10-event recording is replayed in sessions of 10
    calls; opening a session (loading and indexing the recording) is outside the timed calls.
    Both recordings are the same live-recorded event cloned with distinct paths. Matching is a
    dict lookup on the call's key, so replay-10000 / replay-10 should be ~1.

(b) the demo: `tracelab demo --no-serve --home TMP --runs R` records R runs of
    examples/refund_agent.py (one process per run); each is then run live again against the
    mocks (`refund_agent.py --scenario S --runs 1`, recorded into another home) and replayed
    with `tracelab replay RUN_ID` (the recorded command) with the mocks stopped. Wall time per
    run, each a fresh Python process either way; the faulty runs' live time includes their
    retry backoff, which replay at speed 0 does not wait.

Prints medians and ratios; never asserts timing.

    .venv/bin/python bench/bench_replay.py                       # 5,000 calls, 6 demo runs
    .venv/bin/python bench/bench_replay.py --calls 1000 --runs 2  # a quick look
"""
from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
WORKFLOW = "bench-replay"
TEMPLATE = "tmplpath"
BODY = b'{"id": "item", "price": 1290, "currency": "usd", "stock": 3}'
SCENARIOS = ("refund", "new-order", "llm-rate-limited", "stripe-flaky", "sms-outage",
             "escalation")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *args: Any) -> None:
        pass


def _us(seconds: list[float]) -> float:
    return statistics.median(seconds) * 1e6


def _timed_calls(get: Any, urls: list[str]) -> list[float]:
    times = []
    for url in urls:
        start = time.perf_counter()
        get(url).content
        times.append(time.perf_counter() - start)
    return times


def _recordings(base: str, home: Path) -> dict[int, Any]:
    """One live-recorded GET, cloned into recordings of 10 and 10,000 events."""
    import orjson
    import requests

    import tracelab
    from tracelab.events import new_event_id
    from tracelab.replay.recording import load_recording, run_events, write_recording

    tracelab.init(workflow_name=WORKFLOW, run_id="bench-template")
    requests.get(f"{base}/item/{TEMPLATE}").content
    tracelab.flush()
    template = next(e for e in run_events("bench-template") if e["kind"] == "http")
    text = orjson.dumps(template).decode()
    recordings = {}
    for size in (10, 10_000):
        events = []
        for i in range(size):
            event = orjson.loads(text.replace(TEMPLATE, f"p{i:05d}"))
            event.update(event_id=new_event_id(), run_id=f"bench-{size}",
                         started_at=template["started_at"] + i * 1000)
            events.append(event)
        path = write_recording(events, home / f"bench-{size}.jsonl")
        recordings[size] = load_recording(path)
    return recordings


def bench_calls(calls: int) -> None:
    import requests

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["TRACELAB_HOME"] = tmp
        for key in ("TRACELAB_REDIS_URL", "TRACELAB_STORE", "TRACELAB_REPLAY"):
            os.environ.pop(key, None)
        _timed_calls(requests.get, [f"{base}/item/p{i % 10:05d}" for i in range(200)])
        live = _timed_calls(requests.get, [f"{base}/item/p{i % 10:05d}" for i in range(calls)])

        import tracelab

        recordings = _recordings(base, Path(tmp))
        traced = _timed_calls(requests.get, [f"{base}/item/p{i % 10:05d}" for i in range(calls)])
        results: dict[str, list[float]] = {"live": live, "live+trace": traced}
        rng = random.Random(0)
        for size, recording in recordings.items():
            per_session = min(size, calls)
            times: list[float] = []
            misses = 0
            while len(times) < calls:
                items = rng.sample(range(size), per_session)
                with tracelab.replay(recording) as rep:
                    times += _timed_calls(requests.get, [f"{base}/item/p{i:05d}" for i in items])
                misses += len(rep.misses)
            results[f"replay-{size}"] = times[:calls]
            if misses:
                print(f"  replay-{size}: {misses} misses (the figures are not replays)")
        tracelab.shutdown()
    server.shutdown()

    print(f"\n(a) one requests.get, median of {calls:,} calls (µs per call)")
    for name, times in results.items():
        p90 = statistics.quantiles(times, n=10)[-1] * 1e6
        print(f"  {name:<13} {_us(times):8.1f}   p90 {p90:8.1f}")
    r10, r10k = _us(results["replay-10"]), _us(results["replay-10000"])
    print(f"  replay-10000 / replay-10    {r10k / r10:.2f}   (the match does not grow with the "
          "recording when ~1)")
    print(f"  replay-10 / live            {r10 / _us(live):.2f}")
    print(f"  replay-10 / live+trace      {r10 / _us(traced):.2f}")


def _clean_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRACELAB_", "MOCK_"))}
    env["TRACELAB_HOME"] = str(home)
    return env


def _wall(argv: list[str], env: dict[str, str]) -> tuple[float, int, str]:
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True)
    return time.perf_counter() - start, done.returncode, done.stderr


def bench_demo(runs: int) -> None:
    from tracelab.cli.mocks import MockServers, ports_for

    tool = [sys.executable, "-m", "tracelab.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        demo_home, live_home = Path(tmp) / "demo", Path(tmp) / "live"
        start = time.perf_counter()
        done = subprocess.run([*tool, "demo", "--no-serve", "--home", str(demo_home),
                               "--runs", str(runs), "--mocks-base-port", "0"],
                              cwd=REPO, env=_clean_env(demo_home), capture_output=True,
                              text=True)
        demo_wall = time.perf_counter() - start
        if done.returncode != 0:
            print(f"(b) tracelab demo failed:\n{done.stdout}{done.stderr}")
            return
        urls = dict(re.findall(r"(\w+) (http://127\.0\.0\.1:\d+)",
                               done.stdout.split("mock vendors up:", 1)[1].splitlines()[0]))
        recorded = re.findall(r"^  (\S+)\s+(?:ok|error)\s.*scenario=(\S+)$", done.stdout,
                              re.MULTILINE)
        mock_env = {f"MOCK_{name.upper()}_URL": url for name, url in urls.items()}

        servers = MockServers(ports_for(None, 0), host="127.0.0.1", faults_text="",
                              log_level="warning").start()
        live: dict[str, float] = {}
        try:
            env = _clean_env(live_home) | {f"MOCK_{n.upper()}_URL": u
                                           for n, u in servers.urls.items()}
            for _run_id, scenario in recorded:
                seconds, code, _err = _wall([sys.executable, "examples/refund_agent.py",
                                            "--scenario", scenario, "--runs", "1"], env)
                live[scenario] = seconds if code == 0 else float("nan")
        finally:
            servers.stop()

        replayed: dict[str, tuple[float, str]] = {}
        for run_id, scenario in recorded:  # mocks stopped: nothing to answer but the recording
            seconds, code, err = _wall([*tool, "replay", run_id],
                                       _clean_env(demo_home) | mock_env)
            summary = err.strip().splitlines()[-1] if err.strip() else "?"
            replayed[scenario] = (seconds if code == 0 else float("nan"), summary)

    print(f"\n(b) the demo agent, {len(recorded)} runs (wall seconds per run, each a fresh "
          f"process; `tracelab demo` itself took {demo_wall:.1f} s)")
    print(f"  {'scenario':<18} {'live':>6} {'replay':>7} {'replay/live':>12}   replay summary")
    for _run_id, scenario in recorded:
        seconds, summary = replayed[scenario]
        print(f"  {scenario:<18} {live[scenario]:6.2f} {seconds:7.2f} "
              f"{seconds / live[scenario]:12.2f}   {summary}")
    total_live = sum(live.values())
    total_replay = sum(s for s, _ in replayed.values())
    print(f"  {'all':<18} {total_live:6.2f} {total_replay:7.2f} "
          f"{total_replay / total_live:12.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=5000,
                        help="timed calls per variant in (a) (default 5,000; at most 10,000)")
    parser.add_argument("--runs", type=int, default=6,
                        help="demo runs in (b) (default 6: one per scenario; 0 skips (b))")
    args = parser.parse_args()
    if not 10 <= args.calls <= 10_000:
        parser.error("--calls must be between 10 and 10,000")
    if args.runs:
        bench_demo(args.runs)
    bench_calls(args.calls)
    return 0


if __name__ == "__main__":
    sys.exit(main())
