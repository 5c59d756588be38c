"""Timeline build time and widget-state size for one execution of 10,000 and 100,000 events,
ours vs `px.timeline`, and the cold first timeline of a fresh interpreter.

Ours is the whole `.timeline()` widget (lanes, nesting, hover text, FigureWidget, payload
panel; WebGL segments from 2,000 events on); `px.timeline` gets the same DataFrame with
start/end columns, lanes by service and colour by status, and builds a plain `go.Figure`. Both
are called once cold (imports, Plotly's first-use caches) and then `--repeats` times,
interleaved; the ratio is of the warm medians. Target: ours <= 0.4x px.timeline.
The widget state is what the FigureWidget sends to the front end for the figure: its JSON plus
its binary buffers, without the plotly.js bundle every FigureWidget carries (px.timeline's
figure is put in a FigureWidget to be measured the same way).
The cold part runs each in a new interpreter (pandas imported and the data made beforehand,
as in a kernel that loaded its data): target ours <= 1.5x px.timeline.

Then the notebook API on the 1M-event store of `bench/bench_query.py` (its `build` makes it):
`tl.executions(wf)` and `tl.execution(run_id).events`, cold and warm.
Prints figures and ratios; never asserts on time.
Usage: python bench/bench_timeline.py [--events 10000,100000] [--repeats 9]
                                      [--store-events 1000000] [--keep DIR] [--skip-store]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import pandas as pd  # noqa: E402

from bench_query import RUNS, WORKFLOWS, build  # noqa: E402  (the 1M-event store builder)

BASE_NS = 1_714_521_600 * 10**9


def one_execution(n_events: int, seed: int = 7) -> list[dict]:
    """An agent run: `@trace` steps (spans), each with a few HTTP/LLM calls under it, some of
    them concurrent, over four services; about 3% errors."""
    rng = random.Random(seed)
    events: list[dict] = []
    t = BASE_NS
    step = 0
    while len(events) < n_events:
        service = f"svc-{step % 4}"
        span_id = os.urandom(8).hex()
        children = min(rng.randint(3, 12), n_events - len(events) - 1)
        child_t = t + 200_000
        child_events = []
        for c in range(max(children, 0)):
            latency = rng.expovariate(1 / 40.0)
            concurrent = c % 4 == 3
            start = child_t - (int(latency * 5e5) if concurrent else 0)
            error = rng.random() < 0.03
            child_events.append({
                "event_id": os.urandom(16).hex(), "schema": 1, "workflow": "bench-timeline",
                "run_id": "bench-run", "service": service, "source": "sdk-py", "kind": "http",
                "target": f"api{c % 6}.example.com", "endpoint": f"POST /v1/op{c % 5}",
                "started_at": start, "latency_ms": latency,
                "status": "error" if error else "ok", "status_code": 503 if error else 200,
                "span_id": os.urandom(8).hex(), "parent_id": span_id,
                "request": {"method": "POST", "url": "https://api.example.com/v1/x",
                            "headers": {}, "body": {"c": c}},
                "response": {"status_code": 200, "headers": {}, "body": {"ok": True}},
            })
            child_t = start + int(latency * 1e6) + 100_000
        span_latency = (child_t - t) / 1e6 + 0.5
        events.append({
            "event_id": os.urandom(16).hex(), "schema": 1, "workflow": "bench-timeline",
            "run_id": "bench-run", "service": service, "source": "sdk-py", "kind": "function",
            "target": "agent", "endpoint": f"step_{step % 9}", "started_at": t,
            "latency_ms": span_latency, "status": "ok", "span_id": span_id,
            "request": {"args": {"step": step}}, "response": {"return": None},
        })
        events.extend(child_events)
        t += int(span_latency * 1e6) + 300_000
        step += 1
    return events[:n_events]


def once(fn) -> float:
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1000


def timed(fn, repeats: int) -> tuple[float, list[float]]:
    t = time.perf_counter()
    fn()
    cold = (time.perf_counter() - t) * 1000
    warm = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        warm.append((time.perf_counter() - t) * 1000)
    return cold, warm


def widget_state_bytes(figure) -> int:
    """Bytes a FigureWidget sends to the front end for its figure: its state's JSON and binary
    buffers, less the plotly.js bundle (`_esm`, about 5 MB, the same for every figure)."""
    from ipywidgets.widgets.widget import _remove_buffers

    state = {k: v for k, v in figure.get_state().items() if k not in ("_esm", "_css")}
    state, _, buffers = _remove_buffers(state)
    return len(json.dumps(state, default=str)) + sum(memoryview(b).nbytes for b in buffers)


def bench_timeline(n_events: int, repeats: int, work: Path) -> None:
    from tracelab.store import query
    from tracelab.store.layout import resolve_layout
    from tracelab.store.writer import StoreWriter

    layout = resolve_layout(str(work / f"timeline-store-{n_events}"),
                            home=work / "timeline-home")
    StoreWriter(layout).write(one_execution(n_events))
    events = query.execution_events("bench-run", layout=layout)
    print(f"== timeline of one execution: {len(events):,} events, "
          f"{events['service'].nunique()} services, {int((events['status'] == 'error').sum())} "
          "errors")

    import plotly.express as px
    import plotly.graph_objects as go

    from tracelab.notebook.timeline import execution_timeline

    frame = events.copy()
    frame["ended_at"] = frame["started_at"] + pd.to_timedelta(frame["latency_ms"], unit="ms")
    built: dict[str, object] = {}

    def ours() -> None:
        widget = execution_timeline(events, lambda event_id: {})
        built["ours"] = widget.figure

    def theirs() -> None:
        built["px"] = px.timeline(frame, x_start="started_at", x_end="ended_at", y="service",
                                  color="status",
                                  hover_data=["endpoint", "status_code", "latency_ms"])

    ours_cold, px_cold = once(ours), once(theirs)
    ours_warm, px_warm = [], []
    for _ in range(repeats):  # interleaved, so a noisy neighbour slows both alike
        ours_warm.append(once(ours))
        px_warm.append(once(theirs))
    ours_med, px_med = statistics.median(ours_warm), statistics.median(px_warm)
    ours_state = widget_state_bytes(built["ours"])
    px_state = widget_state_bytes(go.FigureWidget(built["px"]))
    print(f"ours  .timeline() widget  cold {ours_cold:7.1f} ms | warm median {ours_med:6.1f} ms "
          f"(min {min(ours_warm):.1f}) | widget state {ours_state / 1e6:6.2f} MB "
          f"({len(built['ours'].data)} {built['ours'].data[0].type} traces)")
    print(f"px.timeline go.Figure     cold {px_cold:7.1f} ms | warm median {px_med:6.1f} ms "
          f"(min {min(px_warm):.1f}) | widget state {px_state / 1e6:6.2f} MB "
          f"({len(built['px'].data)} {built['px'].data[0].type} traces)")
    print(f"ratio ours/px.timeline warm median {ours_med / px_med:.2f}x (target <= 0.4x); "
          f"cold {ours_cold / px_cold:.2f}x; widget state {ours_state / px_state:.2f}x")


COLD_SCRIPT = """
import sys, time
sys.path.insert(0, {bench!r})
import pandas as pd
from bench_timeline import one_execution
events = pd.DataFrame(one_execution({n}))
events["started_at"] = pd.to_datetime(events["started_at"], utc=True)
events["tags"] = None
t = time.perf_counter()
if {ours!r}:
    from tracelab.notebook.timeline import execution_timeline
    execution_timeline(events, lambda event_id: {{}})
else:
    import plotly.express as px
    events["ended_at"] = events["started_at"] + pd.to_timedelta(events["latency_ms"], unit="ms")
    px.timeline(events, x_start="started_at", x_end="ended_at", y="service", color="status",
                hover_data=["endpoint", "status_code", "latency_ms"])
print((time.perf_counter() - t) * 1000)
"""


def bench_cold(n_events: int, repeats: int) -> None:
    """The first timeline of a fresh interpreter (imports included), each in a new process."""
    def run(ours: bool) -> float:
        script = COLD_SCRIPT.format(bench=str(ROOT / "bench"), n=n_events, ours=ours)
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             check=True, cwd=ROOT)
        return float(out.stdout.split()[-1])

    ours_ms, px_ms = [], []
    for _ in range(repeats):
        ours_ms.append(run(True))
        px_ms.append(run(False))
    ours_med, px_med = statistics.median(ours_ms), statistics.median(px_ms)
    print(f"\n== cold first timeline, fresh interpreter, {n_events:,} events, median of "
          f"{repeats}")
    print(f"ours  .timeline() widget  {ours_med:7.1f} ms | px.timeline {px_med:7.1f} ms | "
          f"ratio {ours_med / px_med:.2f}x (target <= 1.5x)")


def bench_store(n_events: int, repeats: int, work: Path) -> None:
    store, home = work / "store", work / "home"
    if not (store / "events").exists():
        seconds = build(store, home, n_events)
        print(f"\nbuilt {n_events:,} events ({WORKFLOWS} workflows, {RUNS:,} runs) with "
              f"bench_query.build in {seconds:.1f} s")
    os.environ["TRACELAB_STORE"] = str(store)
    os.environ["TRACELAB_HOME"] = str(home)
    import tracelab as tl
    from tracelab.store import query

    files = query.resolve_layout().list_files()
    print(f"\n== notebook API on the query benchmark's store: {len(files)} files, "
          f"{sum(f.size for f in files) / 1e6:.0f} MB")
    rng = random.Random(3)
    wfs = iter([f"wf-{rng.randrange(WORKFLOWS):02d}" for _ in range(repeats + 1)])
    runs = iter([f"run-{rng.randrange(RUNS):05d}" for _ in range(repeats + 1)])
    query._CACHES.clear()
    exec_cold, exec_warm = timed(lambda: tl.executions(next(wfs)).df, repeats)
    query._CACHES.clear()
    ev_cold, ev_warm = timed(lambda: tl.execution(next(runs)).events, repeats)
    for label, cold, warm in (("tl.executions(wf).df", exec_cold, exec_warm),
                              ("tl.execution(run_id).events", ev_cold, ev_warm)):
        print(f"{label:28s} cold {cold:7.1f} ms | warm median {statistics.median(warm):6.1f} "
              f"ms, max {max(warm):6.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", default="10000,100000",
                        help="comma-separated run sizes for the timeline part")
    parser.add_argument("--cold-events", type=int, default=1000)
    parser.add_argument("--cold-repeats", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--store-events", type=int, default=1_000_000)
    parser.add_argument("--keep", help="build (or reuse) the 1M-event store in this directory "
                        "(same layout as bench_query.py --keep)")
    parser.add_argument("--skip-store", action="store_true", help="only the timeline part")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="tl-bench-timeline-"))
    try:
        for n_events in (int(n) for n in args.events.split(",")):
            bench_timeline(n_events, args.repeats, scratch)
        bench_cold(args.cold_events, args.cold_repeats)
        if not args.skip_store:
            bench_store(args.store_events, args.repeats,
                        Path(args.keep) if args.keep else scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
