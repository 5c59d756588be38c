"""Ingest throughput: `tracelab ingest` beside a bare Python consumer, on the same entries.

Publishes N events of about 1 KB to a private redis-server, then drains them twice through two
consumer groups created at id 0:

  (a) bare: XREADGROUP 2,000 at a time, JSON-decode each entry, XACK: the floor any Python
      consumer pays;
  (b) tracelab: the real ingester (read, validate, dedupe, write zstd Parquet durably, ack),
      one process (`--workers 1`), run in this process;
  (c) `tracelab ingest --once --workers auto` (one worker process per CPU, one group), run as
      the command, rate from its own summary (first read of any worker to the last write).

All are timed from first read to drained; (c) also prints its wall clock from launch (process
start-up included). Prints the rates and the ratios to (a) (target >= 0.6). Never asserts on
time. Usage: python bench/bench_ingest.py [--events 200000] [--redis-url URL] [--workers N|auto]
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tracelab.server.ingest import IngestConfig, Ingester  # noqa: E402
from tracelab.store.layout import resolve_layout  # noqa: E402

STREAM = "bench.events"


def start_redis(workdir: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--dir", str(workdir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            redis.Redis.from_url(url).ping()
            return proc, url
        except redis.exceptions.ConnectionError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


def make_event(i: int, base_ns: int) -> bytes:
    run = i // 100
    event = {
        "event_id": os.urandom(16).hex(), "schema": 1, "workflow": f"bench-{run % 4}",
        "run_id": f"run-{run:06d}", "service": f"svc-{i % 5}", "source": "sdk-py",
        "kind": "http", "target": "api.example.com", "endpoint": "POST /v1/items",
        "started_at": base_ns + i * 1000, "latency_ms": 3.5 + (i % 17), "status": "ok",
        "status_code": 200, "span_id": os.urandom(8).hex(), "parent_id": None,
        "request": {"method": "POST", "url": "https://api.example.com/v1/items",
                    "headers": {"Content-Type": "application/json", "User-Agent": "bench/1"},
                    "body": {"item": i, "text": "lorem ipsum dolor sit amet " * 12}},
        "response": {"status_code": 200, "headers": {"Content-Type": "application/json"},
                     "body": {"id": f"it_{i}", "ok": True, "note": "x" * 200}},
        "tags": {"env": "bench", "team": "core"}, "host": "bench", "pid": 1, "sdk_version": "0",
    }
    return orjson.dumps(event)


def publish(client: redis.Redis, n: int) -> int:
    base_ns = time.time_ns() - 3_600 * 10**9
    total_bytes = 0
    pipe = client.pipeline(transaction=False)
    for i in range(n):
        raw = make_event(i, base_ns)
        total_bytes += len(raw)
        pipe.xadd(STREAM, {"event": raw})
        if i % 2000 == 1999:
            pipe.execute()
    pipe.execute()
    return total_bytes


def bare_consumer(url: str) -> tuple[int, float]:
    client = redis.Redis.from_url(url)
    client.xgroup_create(STREAM, "bare", id="0")
    count, first = 0, None
    while True:
        reply = client.xreadgroup("bare", "c1", {STREAM: ">"}, count=2000, block=100)
        if first is None:
            first = time.perf_counter()
        if not reply or not reply[0][1]:
            break
        entries = reply[0][1]
        for _, fields in entries:
            orjson.loads(fields[b"event"])
        client.xack(STREAM, "bare", *[e[0] for e in entries])
        count += len(entries)
    return count, time.perf_counter() - first


def tracelab_ingest(url: str, store: Path, home: Path) -> tuple[int, float, object]:
    config = IngestConfig(redis_url=url, stream=STREAM, group="tracelab", consumer="bench",
                          log_interval=3600)
    ingester = Ingester(config, layout=resolve_layout(str(store), home=home))
    stats = ingester.run(once=True)
    return stats.stored, (stats.last_flush or 0) - (stats.first_read or 0), stats


def workers_cli(url: str, store: Path, home: Path, workers: str) -> tuple[int, float, float]:
    """`tracelab ingest --once --workers N` as a command: (stored, seconds from first read
    to drained by its summary, wall seconds from launch until it exits)."""
    env = dict(os.environ, TRACELAB_HOME=str(home))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "tracelab.cli", "ingest", "--once",
                           "--redis-url", url, "--stream", STREAM, "--group", "workers",
                           "--store", str(store), "--log-interval", "3600",
                           "--workers", workers],
                          capture_output=True, env=env, cwd=ROOT, check=True)
    wall = time.perf_counter() - t0
    found = re.search(r"(\d+) stored.*; ([\d.]+) s, ", proc.stdout.decode())
    assert found, proc.stdout.decode() + proc.stderr.decode()
    return int(found.group(1)), float(found.group(2)), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--redis-url", help="use this Redis instead of a private one")
    parser.add_argument("--workers", default="auto",
                        help="--workers for run (c) (default auto: one per CPU)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tl-bench-ingest-"))
    proc = None
    try:
        url = args.redis_url
        if url is None:
            proc, url = start_redis(work)
        client = redis.Redis.from_url(url)
        client.delete(STREAM)
        t0 = time.perf_counter()
        total_bytes = publish(client, args.events)
        print(f"published {args.events:,} events, {total_bytes / args.events:,.0f} bytes each, "
              f"in {time.perf_counter() - t0:.1f} s")
        n_bare, t_bare = bare_consumer(url)
        n_tl, t_tl, stats = tracelab_ingest(url, work / "store", work / "home")
        rate_bare, rate_tl = n_bare / t_bare, n_tl / t_tl
        files = list((work / "store").rglob("*.parquet"))
        size = sum(f.stat().st_size for f in files)
        print(f"bare consumer   : {n_bare:,} events in {t_bare:.2f} s = {rate_bare:,.0f} ev/s")
        print(f"tracelab ingest --workers 1   : {n_tl:,} events in {t_tl:.2f} s = "
              f"{rate_tl:,.0f} ev/s ({len(files)} files, {size / 1e6:.1f} MB zstd Parquet, "
              f"{total_bytes / max(size, 1):.1f}x smaller than the JSON)")
        print(f"ratio tracelab/bare, --workers 1    = {rate_tl / rate_bare:.2f}  (target >= 0.60)")
        n_w, t_w, wall_w = workers_cli(url, work / "store-w", work / "home-w", args.workers)
        print(f"tracelab ingest --workers {args.workers:<4}: {n_w:,} events in {t_w:.2f} s = "
              f"{n_w / t_w:,.0f} ev/s ({wall_w:.2f} s wall from launch, start-up and the "
              f"final merge included = {n_w / wall_w:,.0f} ev/s; {os.cpu_count()} CPUs)")
        print(f"ratio tracelab/bare, --workers {args.workers:<4} = {n_w / t_w / rate_bare:.2f}  "
              "(target >= 0.60)")
        client.delete(STREAM)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
