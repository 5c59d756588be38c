#!/usr/bin/env python
"""Live latency: a traced call returning in the agent -> its event on the API's SSE stream.

Everything real, on loopback: a `ThreadingHTTPServer` the agent calls; the agent a separate
Python process with the SDK (`tracelab.init()`, `requests.get`), which prints the wall clock
(`time.time_ns()`) right after each call returns; `tracelab serve --no-ui` as a subprocess
(uvicorn); this process reads `GET /api/stream` and notes when each call's event arrives in
an `events` message. Latency = arrival - return, same host clock. The agent waits a random
0.2-0.6 s between calls so the calls land at every phase of the periodic stages.

Modes, each with its own TRACELAB_HOME and every setting at its default:

  redis         the SDK publishes to a real `redis-server`; `tracelab ingest` (a subprocess)
                writes the store. Stages: SDK sink flush (TRACELAB_FLUSH_INTERVAL, 0.1 s) ->
                ingester batch (--flush-interval, 0.25 s after the batch's oldest event) ->
                SSE watcher poll (TRACELAB_STREAM_POLL, 0.25 s).
  embedded      no server: the SDK appends to the spool; the spool reaches the store when the
                agent calls `tracelab.flush()`, when a reader asks the query layer, or on the
                SSE watcher's next poll (it folds a pending spool). Here a live notebook
                timeline reads too. Stages: spool write (0.1 s) -> the first of the widget's
                refresh (1 s) or the watcher's poll (0.25 s) folds -> SSE watcher poll (0.25 s).
  embedded-bare the same with no other reader: only the SSE watcher, which folds the pending
                spool at each poll. Stages: spool write (0.1 s) -> watcher poll (0.25 s).

In `redis` and `embedded` a live notebook timeline of the run
(`tl.Execution(run, workflow=wf).timeline(live=True)`, interval 1 s, on a thread of this
process) is open too, and its "notebook" row times each call's step being sent to the widget's
front end (the `Plotly.addTraces` message).

Prints p50, p95 and max per mode and the bounding stages, and how many calls arrived inline in
an `events` message (the rest arrived as the run's `execution` summary, on which the web UI
refetches). Never asserts timing.

    .venv/bin/python bench/bench_live.py               # 40 calls per mode (about a minute)
    .venv/bin/python bench/bench_live.py --calls 15 --modes redis,embedded --refresh-steps 0

Then (unless `--refresh-steps 0`) what one refresh of a live timeline costs the kernel on a
100,000-step run, with nothing new and with one new step.
"""
from __future__ import annotations

import argparse
import http.server
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
import redis
import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WORKFLOW = "bench-live"
MODES = ("redis", "embedded", "embedded-bare")

AGENT = textwrap.dedent('''
    import random, sys, time
    import requests
    import tracelab

    url, calls, run_id = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    redis_url = sys.argv[4] if len(sys.argv) > 4 else None
    tracelab.init(workflow_name="bench-live", service_name="agent", run_id=run_id,
                  redis_url=redis_url)
    session = requests.Session()
    session.trust_env = False
    random.seed(7)
    for i in range(calls):
        time.sleep(random.uniform(0.2, 0.6))
        session.get(f"{url}/bench/{i}").raise_for_status()
        print(i, time.time_ns(), flush=True)
    tracelab.shutdown()
''')


class Quiet(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (requests.ConnectionError, redis.exceptions.ConnectionError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not come up within {timeout:g} s")


def start_redis(workdir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--dir", str(workdir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    wait_until(lambda: redis.Redis.from_url(url).ping(), "redis-server")
    return proc, url


class Stream(threading.Thread):
    """Reads `/api/stream`; `seen[i]` = when call i's event first arrived (time_ns).

    Call i is the run's (i+1)-th step (the calls are sequential). It arrives inline in an
    `events` message, or, when the watcher sends only the run's `execution` summary (its
    events were over the inline cap or compacted away meanwhile), as the first summary that
    counts i+1 steps: that is when a client (the web UI) refetches and shows it.
    """

    def __init__(self, api: str) -> None:
        super().__init__(daemon=True)
        self.response = requests.get(f"{api}/api/stream", stream=True, timeout=(5, None))
        self.response.raise_for_status()
        self.seen: dict[int, int] = {}
        self.inline: set[int] = set()
        self.hello = threading.Event()

    def run(self) -> None:
        event = None
        try:
            for line in self.response.iter_lines():
                now = time.time_ns()
                if line.startswith(b"event: "):
                    event = line[7:].decode()
                elif line.startswith(b"data: "):
                    if event == "hello":
                        self.hello.set()
                    elif event == "events":
                        for row in orjson.loads(line[6:])["events"]:
                            endpoint = str(row.get("endpoint") or "")
                            if "/bench/" in endpoint:
                                i = int(endpoint.rsplit("/bench/", 1)[1].split("?")[0])
                                self.inline.add(i)
                                self.seen.setdefault(i, now)
                    elif event == "execution":
                        data = orjson.loads(line[6:])
                        if data.get("workflow") == WORKFLOW:
                            for i in range(int(data.get("events") or 0)):
                                self.seen.setdefault(i, now)
        except (requests.RequestException, AttributeError, ValueError):
            return  # the response was closed

    def close(self) -> None:
        self.response.close()


def stop(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Result:
    mode: str
    where: str              # "SSE" (GET /api/stream) or "notebook" (the live widget)
    latencies: list[float]  # ms, of the calls whose event arrived
    made: int               # calls made
    inline: int | None = None  # SSE: arrived inline in an `events` message


class Drawn:
    """When the live widget sent each call's step to its front end (an appended trace)."""

    def __init__(self) -> None:
        self.seen: dict[int, int] = {}

    def note(self, change: dict) -> None:
        now = time.time_ns()
        for trace in (change["new"] or {}).get("trace_data", ()):
            for text in trace.get("hovertext", ()):
                match = re.search(r"/bench/(\d+)", str(text))
                if match:
                    self.seen.setdefault(int(match.group(1)), now)


def run_mode(mode: str, calls: int, vendor: str) -> list[Result]:
    """One mode: what the SSE stream saw, and (unless `embedded-bare`) the live widget."""
    work = Path(tempfile.mkdtemp(prefix=f"tl-bench-live-{mode}-"))
    home = work / "home"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("TRACELAB_") and k.lower() not in ("http_proxy", "https_proxy")}
    env.update({"TRACELAB_HOME": str(home), "NO_PROXY": "127.0.0.1,localhost"})
    tracelab_cmd = [sys.executable, "-m", "tracelab.cli"]
    procs: list[subprocess.Popen] = []
    stream = widget = None
    drawn = Drawn()
    run_id = f"live-{mode}-{os.getpid()}"
    try:
        agent_args = [vendor, str(calls), run_id]
        if mode == "redis":
            redis_proc, redis_url = start_redis(work)
            procs.append(redis_proc)
            procs.append(subprocess.Popen([*tracelab_cmd, "ingest", "--redis-url", redis_url],
                                          env=env, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
            agent_args.append(redis_url)
        port = free_port()
        procs.append(subprocess.Popen(
            [*tracelab_cmd, "serve", "--no-ui", "--port", str(port), "--otlp-port", "0"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        api = f"http://127.0.0.1:{port}"
        wait_until(lambda: requests.get(f"{api}/api/workflows", timeout=2).ok, "tracelab serve")
        stream = Stream(api)
        stream.start()
        stream.hello.wait(10)
        if mode != "embedded-bare":
            os.environ["TRACELAB_HOME"] = str(home)  # a live notebook timeline of the run
            import tracelab as tl

            widget = tl.Execution(run_id, workflow=WORKFLOW).timeline(live=True, interval=1.0)
            widget.figure.observe(drawn.note, names=["_py2js_addTraces"])
        agent = subprocess.run([sys.executable, "-c", AGENT, *agent_args], env=env,
                               capture_output=True, text=True, timeout=calls * 2 + 60)
        if agent.returncode != 0:
            raise RuntimeError(f"the agent failed: {agent.stderr[-2000:]}")
        returned = {int(i): int(t) for i, t in (line.split() for line in
                                                agent.stdout.splitlines())}
        deadline = time.monotonic() + (5 if mode == "embedded-bare" else 15)
        while len(stream.seen) < len(returned) and time.monotonic() < deadline:
            time.sleep(0.1)
        while widget is not None and len(drawn.seen) < len(returned) \
                and time.monotonic() < deadline:
            time.sleep(0.1)
        results = [Result(mode, "SSE", [(stream.seen[i] - t) / 1e6
                                        for i, t in returned.items() if i in stream.seen],
                          len(returned), len(stream.inline & set(returned)))]
        if widget is not None:
            results.append(Result(mode, "notebook", [(drawn.seen[i] - t) / 1e6
                                                     for i, t in returned.items()
                                                     if i in drawn.seen], len(returned)))
        return results
    finally:
        if widget is not None:
            widget.stop()
        if stream is not None:
            stream.close()
        for proc in reversed(procs):
            stop(proc)
        shutil.rmtree(work, ignore_errors=True)


BOUNDS = {
    ("redis", "SSE"): "SDK flush 0.1 s + ingester batch wait 0.25 s + SSE poll up to 0.25 s",
    ("redis", "notebook"): "SDK flush 0.1 s + ingester batch wait 0.25 s + widget refresh up "
                           "to 1 s",
    ("embedded", "SSE"): "spool write 0.1 s + the first fold (SSE poll or widget) + SSE poll, "
                         "each up to 0.25 s",
    ("embedded", "notebook"): "spool write 0.1 s + widget refresh (it folds) up to 1 s",
    ("embedded-bare", "SSE"): "spool write 0.1 s + SSE watcher poll (it folds) up to 0.25 s",
}


def bench_refresh(steps: int, repeats: int = 5) -> None:
    """What one refresh of a live timeline costs the kernel on a run of `steps` steps (written
    through the real StoreWriter): with nothing new, and with one new step."""
    home = Path(tempfile.mkdtemp(prefix="tl-bench-live-refresh-"))
    os.environ["TRACELAB_HOME"] = str(home)
    try:
        import tracelab as tl
        from tracelab.store.writer import StoreWriter

        writer = StoreWriter()
        t0 = time.time_ns()

        def event(i: int) -> dict:
            return {"event_id": os.urandom(16).hex(), "schema": 1, "workflow": WORKFLOW,
                    "run_id": "big", "service": "agent", "source": "sdk-py", "kind": "http",
                    "target": "api.example.com", "endpoint": f"GET /bench/{i}",
                    "started_at": t0 + i * 1_000, "latency_ms": 1.0, "status": "ok",
                    "request": {}, "response": {}}

        writer.write([event(i) for i in range(steps)])
        widget = tl.execution("big").timeline(live=True, interval=3600)
        widget.stop()
        idle, grown = [], []
        for k in range(repeats):
            started = time.perf_counter()
            widget.refresh()
            idle.append(time.perf_counter() - started)
            writer.write([event(steps + k)])
            started = time.perf_counter()
            widget.refresh()
            grown.append(time.perf_counter() - started)
        print(f"\none refresh of a {steps:,}-step live timeline (median of {repeats}): "
              f"{statistics.median(idle) * 1000:,.0f} ms with nothing new, "
              f"{statistics.median(grown) * 1000:,.0f} ms with one new step "
              "(every step's endpoint distinct, the worst case for hover texts; the next refresh "
              "waits max(interval, 3 x this))")
    finally:
        shutil.rmtree(home, ignore_errors=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=40, help="traced calls per mode (default 40)")
    parser.add_argument("--modes", default=",".join(MODES),
                        help=f"comma-separated, of {', '.join(MODES)} (default all)")
    parser.add_argument("--refresh-steps", type=int, default=100_000,
                        help="also time one refresh of a live timeline of this many steps "
                        "(default 100,000; 0 skips)")
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(modes) - set(MODES))
    if unknown or not modes:
        parser.error(f"--modes takes {', '.join(MODES)}; not {', '.join(unknown) or 'nothing'}")
    if args.calls < 2:
        parser.error("--calls must be at least 2")
    if args.refresh_steps < 0:
        parser.error("--refresh-steps must be 0 (skip) or more")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    vendor = f"http://127.0.0.1:{server.server_address[1]}"
    print(f"call returns in the agent -> its event on GET /api/stream; {args.calls} calls per "
          "mode, 0.2-0.6 s apart, default settings\n")
    print(f"{'mode':<14} {'seen on':<9} {'seen':>7} {'inline':>6} {'p50 ms':>9} {'p95 ms':>9} "
          f"{'max ms':>9}  bounded by")
    try:
        for mode in modes:
            for r in run_mode(mode, args.calls, vendor):
                if r.latencies:
                    p50, p95 = statistics.median(r.latencies), percentile(r.latencies, 0.95)
                    figures = f"{p50:>9,.0f} {p95:>9,.0f} {max(r.latencies):>9,.0f}"
                else:
                    figures = f"{'-':>9} {'-':>9} {'-':>9}"
                inline = "" if r.inline is None else str(r.inline)
                print(f"{r.mode:<14} {r.where:<9} {len(r.latencies):>3}/{r.made:<3} {inline:>6} "
                      f"{figures}  {BOUNDS[r.mode, r.where]}", flush=True)
    finally:
        server.shutdown()
        server.server_close()
    if args.refresh_steps:
        bench_refresh(args.refresh_steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
