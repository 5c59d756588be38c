"""Ingest throughput: `tracelab ingest` beside a bare Python consumer, on the same entries.

Publishes N events of about 1.2 KB to a private redis-server, then drains them through one
consumer group each (all created at id 0), in this order every round:

  (a) bare: XREADGROUP 2,000 at a time, JSON-decode each entry, XACK: the floor any Python
      consumer pays;
  (b) the real ingester with its default settings (read, validate, dedupe, write zstd Parquet
      durably, ack), run in this process so its time can be split by phase: read, decode +
      validate (main thread; the batch-wide payload check on the write thread), Arrow build,
      Parquet write, fsync, the rest of the write (dedupe, event index, rename), ack;
  (c) `tracelab ingest --once` as a command with its defaults (one worker, partition leases in
      the Redis it reads from), rate from its own summary (first read to last write);
  (d) `tracelab ingest --once --workers auto` (one worker process per core, capped at 8).

Every rate is timed from first read to drained and compared with (a) of the same round (the
machine may be shared: only ratios measured side by side count). `--rounds R` repeats the
whole comparison and prints the medians.

`--ingesters 1,2,4` instead runs N `tracelab ingest` processes in one group against one store,
as N hosts would (each its own TRACELAB_HOST_ID and TRACELAB_HOME, one TRACELAB_STORE, leases
in the one Redis): the entries are published first, the group is created at the end of the
stream, the N ingesters start and join it, then `XGROUP SETID ... 0` hands them the whole
backlog at once; the rate is entries / (SETID until the group has every entry acknowledged).
Start-up and the merge of small files once idle are outside the timing. `--s3` adds the same
on a moto S3 server (`tests/s3_server.py`), the store in a bucket.

Never asserts on time. Usage:
  python bench/bench_ingest.py [--events 200000] [--rounds 3] [--workers auto]
  python bench/bench_ingest.py --ingesters 1,2,4 [--s3] [--events 200000]
"""
from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pyarrow.compute as pc
import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import tracelab.server.ingest as ingest_module  # noqa: E402
import tracelab.store.writer as writer_module  # noqa: E402
from tracelab.server.ingest import IngestConfig, Ingester  # noqa: E402
from tracelab.store.layout import resolve_layout  # noqa: E402

STREAM = "bench.events"
TARGET = 0.60


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


def bare_consumer(url: str, group: str) -> tuple[int, float]:
    client = redis.Redis.from_url(url)
    client.xgroup_create(STREAM, group, id="0")
    count, first = 0, None
    while True:
        reply = client.xreadgroup(group, "c1", {STREAM: ">"}, count=2000, block=100)
        if first is None:
            first = time.perf_counter()
        if not reply or not reply[0][1]:
            break
        entries = reply[0][1]
        for _, fields in entries:
            orjson.loads(fields[b"event"])
        client.xack(STREAM, group, *[e[0] for e in entries])
        count += len(entries)
    return count, time.perf_counter() - first


class Split:
    """Time spent per phase, by wrapping the functions that do each (patched for the run
    only): wall seconds, and CPU seconds of the thread doing it (wall includes waiting for
    Redis, the disk and the GIL; CPU does not, so it is what load on the machine changes
    least). Phases on the main thread and on the write thread overlap in time, so they do not
    add up to the elapsed time."""

    PHASES = {
        "read": "XREADGROUP replies received and parsed (main thread)",
        "decode+validate": "entries decoded and checked (main thread)",
        "payload check": "the batch-wide payload check, RE2 in Arrow (write thread)",
        "arrow": "Arrow table of the batch built, partitions' rows taken (write thread)",
        "parquet": "Parquet encoded and written (write thread, outside the GIL)",
        "fsync": "fsync of files and directories (write thread)",
        "write other": "rest of the durable write: dedupe, event index, rename (write thread)",
        "ack": "dead letters and XACK (main thread)",
    }

    def __init__(self) -> None:
        self.wall: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)
        self._undo: list[tuple[Any, str, Any]] = []

    def wrap(self, owner: Any, name: str, phase: str) -> None:
        original = None if owner is None else getattr(owner, name, None)
        if original is None:  # an older ingester (the bench also times the code before)
            return
        wall, cpu = self.wall, self.cpu

        def timed(*args: Any, **kwargs: Any) -> Any:
            start, start_cpu = time.perf_counter(), time.thread_time()
            try:
                return original(*args, **kwargs)
            finally:
                wall[phase] += time.perf_counter() - start
                cpu[phase] += time.thread_time() - start_cpu

        setattr(owner, name, timed)
        self._undo.append((owner, name, original))

    @contextmanager
    def patched(self) -> Iterator[Split]:
        self.wrap(Ingester, "_receive", "read")
        self.wrap(Ingester, "_take", "decode+validate")
        self.wrap(getattr(ingest_module, "WireBatch", None), "__init__", "batch table")
        self.wrap(pc, "match_substring_regex", "payload check")
        self.wrap(ingest_module, "_write_or_isolate", "write total")
        self.wrap(writer_module, "_to_table", "arrow")
        self.wrap(writer_module, "_write_parquet", "parquet")
        self.wrap(os, "fsync", "fsync")
        self.wrap(Ingester, "_ack", "ack")
        self.wrap(Ingester, "_publish_dead", "ack")
        self._wrap_merge()
        try:
            yield self
        finally:
            for owner, name, original in reversed(self._undo):
                setattr(owner, name, original)
            self._undo.clear()
            for seconds in (self.wall, self.cpu):
                known = sum(seconds[p] for p in ("arrow", "parquet", "fsync"))
                seconds["write other"] = max(0.0, seconds.pop("write total", 0) - known)
                # The batch's table is Arrow build too, less the payload check inside it.
                seconds["arrow"] += max(0.0, seconds.pop("batch table", 0)
                                        - seconds["payload check"])

    def _wrap_merge(self) -> None:
        """The merge of small files once the stream is drained is outside the timed span:
        count the CPU it costs the whole process, to leave it out of the CPU per event."""
        original = Ingester._compact_batch

        def timed(ingester: Ingester) -> Any:
            start = process_cpu()
            try:
                return original(ingester)
            finally:
                self.merge_cpu += process_cpu() - start

        self.merge_cpu = 0.0
        Ingester._compact_batch = timed  # type: ignore[method-assign]
        self._undo.append((Ingester, "_compact_batch", original))

    def line(self, kind: str) -> str:
        seconds = self.wall if kind == "wall" else self.cpu
        return ", ".join(f"{phase} {seconds.get(phase, 0.0):.2f}" for phase in self.PHASES)


def tracelab_in_process(url: str, store: Path, home: Path, group: str
                        ) -> tuple[int, float, Split]:
    config = IngestConfig(redis_url=url, stream=STREAM, group=group, consumer="bench",
                          log_interval=3600)
    ingester = Ingester(config, layout=resolve_layout(str(store), home=home))
    with Split().patched() as split:
        stats = ingester.run(once=True)
    return stats.stored, (stats.last_flush or 0) - (stats.first_read or 0), split


def tracelab_cli(url: str, store: Path, home: Path, group: str, *extra: str
                 ) -> tuple[int, float, float]:
    """`tracelab ingest --once [extra]` as a command: (stored, seconds from first read to
    drained by its summary, wall seconds from launch until it exits)."""
    env = dict(os.environ, TRACELAB_HOME=str(home))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "tracelab.cli", "ingest", "--once",
                           "--redis-url", url, "--stream", STREAM, "--group", group,
                           "--store", str(store), "--log-interval", "3600", *extra],
                          capture_output=True, env=env, cwd=ROOT, check=True)
    wall = time.perf_counter() - t0
    found = re.search(r"(\d+) stored.*; ([\d.]+) s, ", proc.stdout.decode())
    assert found, proc.stdout.decode() + proc.stderr.decode()
    return int(found.group(1)), float(found.group(2)), wall


def process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def one_round(url: str, work: Path, n: int, workers: str, index: int) -> dict[str, float]:
    client = redis.Redis.from_url(url)
    client.delete(STREAM)
    t0 = time.perf_counter()
    total_bytes = publish(client, n)
    print(f"\nround {index}: published {n:,} events, {total_bytes / n:,.0f} bytes each, "
          f"in {time.perf_counter() - t0:.1f} s")
    cpu = process_cpu()
    n_bare, t_bare = bare_consumer(url, f"bare-{index}")
    cpu_bare = process_cpu() - cpu
    bare = n_bare / t_bare
    print(f"  (a) bare XREADGROUP+decode loop  : {n_bare:,} in {t_bare:.2f} s = {bare:,.0f} ev/s")
    store = work / f"store-{index}"
    cpu = process_cpu()
    n_b, t_b, split = tracelab_in_process(url, store, work / f"home-{index}", f"tl-{index}")
    cpu_b = process_cpu() - cpu - split.merge_cpu
    files = list(store.rglob("*.parquet"))
    size = sum(f.stat().st_size for f in files)
    print(f"  (b) ingester, defaults, in-process: {n_b:,} in {t_b:.2f} s = {n_b / t_b:,.0f} ev/s"
          f" = {n_b / t_b / bare:.2f}x bare ({len(files)} files, {size / 1e6:.1f} MB zstd "
          f"Parquet, {total_bytes / max(size, 1):.0f}x smaller than the JSON)")
    print(f"      time split, wall s: {split.line('wall')}")
    print(f"      time split, CPU s : {split.line('cpu')}")
    print(f"      CPU of this process per event: bare {cpu_bare / n_bare * 1e6:.1f} µs, "
          f"ingester {cpu_b / n_b * 1e6:.1f} µs (all threads, the final merge left out) = "
          f"{cpu_bare / n_bare / (cpu_b / n_b):.2f}x")
    n_c, t_c, wall_c = tracelab_cli(url, work / f"store-c-{index}", work / f"home-c-{index}",
                                    f"cli-{index}")
    print(f"  (c) tracelab ingest --once        : {n_c:,} in {t_c:.2f} s = {n_c / t_c:,.0f} ev/s"
          f" = {n_c / t_c / bare:.2f}x bare ({wall_c:.1f} s wall from launch)")
    n_d, t_d, wall_d = tracelab_cli(url, work / f"store-d-{index}", work / f"home-d-{index}",
                                    f"workers-{index}", "--workers", workers)
    print(f"  (d) ... --workers {workers:<15}: {n_d:,} in {t_d:.2f} s = {n_d / t_d:,.0f} ev/s"
          f" = {n_d / t_d / bare:.2f}x bare ({wall_d:.1f} s wall from launch)")
    client.delete(STREAM)
    for path in work.glob(f"*-{index}"):
        shutil.rmtree(path, ignore_errors=True)
    return {"bare": bare, "b": n_b / t_b, "c": n_c / t_c, "d": n_d / t_d,
            "cpu ratio": cpu_bare / n_bare / (cpu_b / n_b),
            **{f"wall {k}": v for k, v in split.wall.items()},
            **{f"cpu {k}": v for k, v in split.cpu.items()}}


def compare(url: str, work: Path, n: int, rounds: int, workers: str) -> None:
    print(f"{cores()} cores ({os.cpu_count()} CPUs), load average "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    results = [one_round(url, work, n, workers, i + 1) for i in range(rounds)]

    def med(key: str) -> float:
        return statistics.median(r.get(key, 0.0) for r in results)

    def ratio(key: str) -> float:
        return statistics.median(r[key] / r["bare"] for r in results)

    print(f"\nmedians of {rounds} round(s), ratios taken per round against (a):")
    print(f"  bare loop                         : {med('bare'):,.0f} ev/s")
    for key, label in (("b", "ingester, defaults, in-process"),
                       ("c", "tracelab ingest (defaults)"),
                       ("d", f"tracelab ingest --workers {workers}")):
        print(f"  {label:<34}: {med(key):,.0f} ev/s = {ratio(key):.2f}x bare "
              f"(target >= {TARGET:.2f})")
    for kind in ("wall", "cpu"):
        print(f"  time split of (b), {kind} s: " + ", ".join(
            f"{phase} {med(f'{kind} {phase}'):.2f}" for phase in Split.PHASES))
    print(f"  CPU per event, bare / ingester (b): {med('cpu ratio'):.2f}x")
    for phase, what in Split.PHASES.items():
        print(f"    {phase:<16} {what}")


# ---- several ingesters, one group, one store (issue 17) -------------------------------------

def drained(client: redis.Redis, group: str) -> bool:
    """True once the group has been handed every entry and acknowledged them all."""
    last = client.xinfo_stream(STREAM)["last-generated-id"]
    for info in client.xinfo_groups(STREAM):
        if info["name"] in (group, group.encode()):
            return info["last-delivered-id"] == last and int(info["pending"]) == 0
    return False


def count_stored(store: str, env: dict[str, str]) -> tuple[int, int]:
    """(rows, distinct event ids) in the store's live files, read with pyarrow alone."""
    script = ("import sys, pyarrow.dataset as ds\n"
              "from tracelab.store.layout import resolve_layout\n"
              "layout = resolve_layout(sys.argv[1])\n"
              "files = [f.path for f in layout.list_files()]\n"
              "t = ds.dataset(files, filesystem=layout.fs, format='parquet').to_table(\n"
              "    columns=['event_id'])\n"
              "print(t.num_rows, len(set(t.column('event_id').to_pylist())))\n")
    out = subprocess.run([sys.executable, "-c", script, store], capture_output=True,
                         env=env, cwd=ROOT, check=True)
    rows, distinct = out.stdout.split()
    return int(rows), int(distinct)


def several(url: str, work: Path, n: int, counts: list[int], store_for: Callable[[int], str],
            env: dict[str, str], label: str) -> dict[int, float]:
    """Rates of N ingesters (N in `counts`), each N on a fresh store and group."""
    client = redis.Redis.from_url(url, decode_responses=True)
    client.delete(STREAM)
    t0 = time.perf_counter()
    total_bytes = publish(redis.Redis.from_url(url), n - 1)
    last = make_event(n, time.time_ns())  # added after each SETID: wakes blocked readers
    print(f"\n{label}: published {n:,} events, {total_bytes / n:,.0f} bytes each, in "
          f"{time.perf_counter() - t0:.1f} s; {cores()} cores, load average "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    rates = {}
    for count in counts:
        group = f"hosts-{count}-{uuid.uuid4().hex[:6]}"
        client.xgroup_create(STREAM, group, id="$")
        store = store_for(count)
        procs = []
        for host in range(count):
            home = work / f"home-{group}-{host}"
            host_env = dict(env, TRACELAB_HOST_ID=f"bench-host-{host}",
                            TRACELAB_HOME=str(home), TRACELAB_STORE=store)
            with open(work / f"{group}-{host}.log", "wb") as log:
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "tracelab.cli", "ingest", "--redis-url", url,
                     "--stream", STREAM, "--group", group, "--log-interval", "3600"],
                    stdout=log, stderr=subprocess.STDOUT, env=host_env, cwd=ROOT))
        try:
            deadline = time.monotonic() + 120
            while len(client.xinfo_consumers(STREAM, group)) < count:
                if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                    raise RuntimeError(f"the ingesters did not all join: see {work}/*.log")
                time.sleep(0.05)
            start = time.perf_counter()
            client.xgroup_setid(STREAM, group, "0")
            wake = client.xadd(STREAM, {"event": last})
            while not drained(client, group):
                if any(p.poll() is not None for p in procs):
                    raise RuntimeError(f"an ingester exited: see {work}/{group}-*.log")
                time.sleep(0.02)
            elapsed = time.perf_counter() - start
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(timeout=60)
        client.xdel(STREAM, wake)  # the next count adds its own
        rows, distinct = count_stored(store, env)
        rates[count] = n / elapsed
        print(f"  {count} ingester(s): {n:,} in {elapsed:.2f} s = {n / elapsed:,.0f} ev/s"
              f" ({rates[count] / rates[counts[0]]:.2f}x {counts[0]}); stored {rows:,} rows, "
              f"{distinct:,} distinct{'' if rows == distinct == n else '  <-- NOT exactly once'}")
    client.delete(STREAM)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--redis-url", help="use this Redis instead of a private one")
    parser.add_argument("--workers", default="auto",
                        help="--workers for run (d) (default auto: one per core, at most 8)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat the comparison and print medians (default 1)")
    parser.add_argument("--ingesters", help="comma-separated counts of ingester processes "
                        "(e.g. 1,2,4): the several-hosts bench instead of the comparison")
    parser.add_argument("--s3", action="store_true",
                        help="with --ingesters: also with the store on a moto S3 server")
    parser.add_argument("--s3-events", type=int,
                        help="events for the S3 runs (default: --events)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tl-bench-ingest-"))
    proc = None
    try:
        url = args.redis_url
        if url is None:
            proc, url = start_redis(work)
        if args.ingesters is None:
            compare(url, work, args.events, args.rounds, args.workers)
            return
        counts = [int(c) for c in args.ingesters.split(",")]
        several(url, work, args.events, counts, lambda c: str(work / f"store-{c}"),
                dict(os.environ), "local store")
        if args.s3:
            sys.path.insert(0, str(ROOT / "tests"))
            from s3_server import moto_s3

            with moto_s3(bucket="bench") as endpoint:
                several(url, work, args.s3_events or args.events, counts,
                        lambda c: endpoint.store_uri(f"run-{c}-{uuid.uuid4().hex[:6]}"),
                        dict(os.environ, **endpoint.env), f"S3 store (moto at {endpoint.url})")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
