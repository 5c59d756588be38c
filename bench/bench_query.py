"""Query latency on a store of 1,000,000 events over 20 workflows and 10,000 runs.

Builds the store through the real writer in ingest-sized batches, with the size-tiered
merging the ingester does as it goes (so it has the files an ingester leaves), then measures TraceLab's query layer and DuckDB's raw SQL on the
same files, first as written and then after `tracelab compact`:

  executions(workflow)      target p95 <= 150 ms
  execution_events(run_id)  target p95 <= 50 ms
  event(event_id)           through the per-file event-id index, vs a full scan of the store

Then one workflow holding all 1,000,000 events (1,000 runs of 1,000 steps), read through the
notebook API as a user would: `tl.executions(wf).df` and `tl.events(wf)`, target <= 2 s each
(Phoenix users report 22 s for what its own database read in 1.6 s, phoenix #4083), beside
DuckDB reading the same rows into a DataFrame.

"cold" is the first call in the process (nothing cached); "warm" calls reuse the per-file
summaries, which are valid forever because store files never change once written.
Prints figures and ratios; never asserts on time.
Usage: python bench/bench_query.py [--events 1000000] [--keep DIR]
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import duckdb  # noqa: E402
import pyarrow.dataset as ds  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from tracelab.store import query  # noqa: E402
from tracelab.store.compact import compact  # noqa: E402
from tracelab.store.layout import resolve_layout  # noqa: E402
from tracelab.store.schema import EVENT_SCHEMA  # noqa: E402
from tracelab.store.writer import StoreWriter  # noqa: E402

WORKFLOWS = 20
RUNS = 10_000
DAYS = 7
BASE_NS = 1_714_521_600 * 10**9
DAY_NS = 86_400 * 10**9


def build(store: Path, home: Path, n_events: int, batch: int = 20_000,
          workflows: int = WORKFLOWS, runs: int = RUNS) -> float:
    """Events arrive interleaved across runs, as an ingester would see them."""
    writer = StoreWriter(resolve_layout(str(store), home=home), auto_compact=True)
    per_run = n_events // runs
    rng = random.Random(1)
    t0 = time.perf_counter()
    order = [(run, i) for i in range(per_run) for run in range(runs)]
    for start in range(0, len(order), batch):
        events = []
        for run, i in order[start:start + batch]:
            wf = run % workflows
            run_start = BASE_NS + (run * DAYS * DAY_NS) // runs
            events.append({
                "event_id": os.urandom(16).hex(), "schema": 1, "workflow": f"wf-{wf:02d}",
                "run_id": f"run-{run:05d}", "service": f"svc-{i % 4}", "source": "sdk-py",
                "kind": "http", "target": f"api{i % 6}.example.com",
                "endpoint": "POST /v1/x", "started_at": run_start + i * 50_000_000,
                "latency_ms": rng.random() * 200,
                "status": "error" if rng.random() < 0.02 else "ok",
                "status_code": 200, "span_id": os.urandom(8).hex(),
                "request": {"method": "POST", "url": "https://api.example.com/v1/x",
                            "headers": {"Content-Type": "application/json"},
                            "body": {"i": i, "text": "lorem ipsum " * 20}},
                "response": {"status_code": 200, "headers": {}, "body": {"ok": True}},
                "tags": {"env": "prod" if run % 3 else "dev", "team": f"t{wf % 4}"},
            })
        writer.write(events)
    return time.perf_counter() - t0


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) >= 2 else values[0]


def measure(label: str, store: Path, home: Path, repeats: int) -> None:
    layout = resolve_layout(str(store), home=home)
    files = layout.list_files()
    size = sum(f.size for f in files)
    print(f"\n== {label}: {len(files)} files, {size / 1e6:.0f} MB")
    rng = random.Random(2)
    wfs = [f"wf-{rng.randrange(WORKFLOWS):02d}" for _ in range(repeats)]
    runs = [f"run-{rng.randrange(RUNS):05d}" for _ in range(repeats)]

    query._CACHES.clear()
    t = time.perf_counter()
    df = query.executions(wfs[0], layout=layout)
    cold_exec = (time.perf_counter() - t) * 1000
    assert len(df) == RUNS // WORKFLOWS, len(df)
    query._CACHES.clear()
    t = time.perf_counter()
    ev = query.execution_events(runs[0], layout=layout)
    cold_events = (time.perf_counter() - t) * 1000
    assert len(ev) > 0
    it = iter(wfs)
    ours_exec = timed(lambda: query.executions(next(it), layout=layout), repeats)
    it = iter(runs)
    ours_events = timed(lambda: query.execution_events(next(it), layout=layout), repeats)

    con = duckdb.connect()
    events_root = f"{store}/events"
    glob_all = f"{events_root}/**/*.parquet"
    it = iter(wfs)

    def duck_exec() -> None:
        con.execute(
            "SELECT run_id, min(started_at), max(epoch_ns(started_at) + latency_ms * 1e6), "
            "count(*), count(*) FILTER (WHERE status = 'error'), list(DISTINCT service), "
            "list(DISTINCT target), list(DISTINCT tags) FROM read_parquet(?, "
            "hive_partitioning = true) GROUP BY run_id",
            [f"{events_root}/workflow={next(it)}/*/*.parquet"]).fetch_df()

    duck_e = timed(duck_exec, repeats)
    it = iter(runs)

    def duck_events() -> None:
        con.execute("SELECT * EXCLUDE (request, response) FROM read_parquet(?, "
                    "hive_partitioning = true) WHERE run_id = ? ORDER BY started_at",
                    [glob_all, next(it)]).fetch_df()

    duck_r = timed(duck_events, repeats)
    print(f"executions(workflow)     cold {cold_exec:7.1f} ms | warm p50 "
          f"{statistics.median(ours_exec):6.1f} p95 {p95(ours_exec):6.1f} ms (target <= 150) | "
          f"DuckDB raw p50 {statistics.median(duck_e):6.1f} p95 {p95(duck_e):6.1f} ms | "
          f"ratio ours/duckdb p95 {p95(ours_exec) / p95(duck_e):.2f}")
    print(f"execution_events(run_id) cold {cold_events:7.1f} ms | warm p50 "
          f"{statistics.median(ours_events):6.1f} p95 {p95(ours_events):6.1f} ms (target <= 50) | "
          f"DuckDB raw p50 {statistics.median(duck_r):6.1f} p95 {p95(duck_r):6.1f} ms | "
          f"ratio ours/duckdb p95 {p95(ours_events) / p95(duck_r):.2f}")
    measure_event_lookup(layout, files, con, glob_all, repeats)


def measure_event_lookup(layout, files, con, glob_all: str, repeats: int) -> None:
    """event(event_id): the index (cold = indexes not loaded yet) vs scanning every file."""
    rng = random.Random(3)
    ids = []
    for data_file in rng.sample(files, min(repeats, len(files))):
        column = pq.read_table(data_file.path, columns=["event_id"])["event_id"]
        ids.append(column[rng.randrange(len(column))].as_py())
    ids = (ids * (repeats // len(ids) + 1))[:repeats]
    rng.shuffle(ids)
    query._INDEXES.clear()
    t = time.perf_counter()
    query.event(ids[0], layout=layout)
    cold = (time.perf_counter() - t) * 1000
    it = iter(ids)
    ours = timed(lambda: query.event(next(it), layout=layout), repeats)
    it = iter(ids)

    def full_scan() -> None:  # what event() did before the index: every file's event_id
        wanted = ds.field("event_id") == next(it)
        parts = query._scan_by_file(layout, layout.list_files(), EVENT_SCHEMA.names, wanted)
        assert sum(t.num_rows for _, t in parts) >= 1

    scan = timed(full_scan, repeats)
    it = iter(ids)
    duck = timed(lambda: con.execute("SELECT * FROM read_parquet(?, hive_partitioning = true) "
                                     "WHERE event_id = ?", [glob_all, next(it)]).fetch_df(),
                 repeats)
    print(f"event(event_id)          cold {cold:7.1f} ms | warm p50 "
          f"{statistics.median(ours):6.1f} p95 {p95(ours):6.1f} ms | full scan p50 "
          f"{statistics.median(scan):6.1f} p95 {p95(scan):6.1f} ms | DuckDB raw p50 "
          f"{statistics.median(duck):6.1f} p95 {p95(duck):6.1f} ms | ratio scan/index p95 "
          f"{p95(scan) / p95(ours):.1f}")


def measure_one_workflow(work: Path, n_events: int) -> None:
    """`tl.executions(wf).df` and `tl.events(wf)` over one workflow of `n_events` events, each in
    a fresh interpreter (cold: imports done, nothing cached) and then warm in that process."""
    store, home = work / "one-store", work / "one-home"
    if not (store / "events").exists():
        seconds = build(store, home, n_events, workflows=1, runs=1_000)
        print(f"\nbuilt one workflow of {n_events:,} events (1,000 runs) in {seconds:.1f} s")
    probe = (
        "import os, time, json\n"
        "import tracelab as tl\n"
        "t = time.perf_counter(); import tracelab.store.query\n"
        "out = {'import': (time.perf_counter() - t) * 1000}\n"
        "for name, fn in (('executions', lambda: tl.executions('wf-00').df),\n"
        "                 ('events', lambda: tl.events('wf-00'))):\n"
        "    times = []\n"
        "    for _ in range(3):\n"
        "        t = time.perf_counter(); frame = fn()\n"
        "        times.append((time.perf_counter() - t) * 1000)\n"
        "    out[name] = (times, len(frame))\n"
        "print(json.dumps(out))\n")
    env = {**os.environ, "TRACELAB_STORE": str(store), "TRACELAB_HOME": str(home)}
    import json
    import subprocess
    result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                            text=True, check=True)
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    con = duckdb.connect()
    glob = f"{store}/events/**/*.parquet"
    t = time.perf_counter()
    rows = len(con.execute("SELECT * EXCLUDE (request, response) FROM read_parquet(?, "
                           "hive_partitioning = true) ORDER BY started_at", [glob]).fetch_df())
    duck = (time.perf_counter() - t) * 1000
    print(f"== one workflow, {n_events:,} events (the query layer's first import, pandas and "
          f"pyarrow, took {figures['import']:.0f} ms before these)")
    for name in ("executions", "events"):
        times, n = figures[name]
        print(f"tl.{name}(wf){'.df' if name == 'executions' else '   '} cold {times[0]:7.1f} ms |"
              f" warm {min(times[1:]):7.1f} ms | {n:,} rows (target <= 2000 ms)")
    print(f"DuckDB raw, every event without payloads into a DataFrame: {duck:7.1f} ms "
          f"({rows:,} rows) | ratio tl.events cold / DuckDB {figures['events'][0][0] / duck:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--keep", help="build (or reuse) the store in this directory")
    parser.add_argument("--only-one-workflow", action="store_true",
                        help="measure only the one-workflow tl.executions/tl.events part")
    args = parser.parse_args()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="tl-bench-query-"))
    store, home = work / "store", work / "home"
    try:
        if args.only_one_workflow:
            measure_one_workflow(work, args.events)
            return
        if not (store / "events").exists():
            seconds = build(store, home, args.events)
            print(f"built {args.events:,} events, {WORKFLOWS} workflows, {RUNS:,} runs, "
                  f"{DAYS} days in {seconds:.1f} s ({args.events / seconds:,.0f} events/s "
                  "through the writer)")
        measure("as the ingester leaves it", store, home, args.repeats)
        t = time.perf_counter()
        compact(layout=resolve_layout(str(store), home=home))
        print(f"\ncompacted in {time.perf_counter() - t:.1f} s")
        measure("after tracelab compact", store, home, args.repeats)
        measure_one_workflow(work, args.events)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
