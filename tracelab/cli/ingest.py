"""`tracelab ingest`: run the ingester (Redis stream -> Parquet store) from the command line.

Only argument parsing and process concerns (signals, logging, exit codes, worker processes)
live here; the ingester itself is `tracelab.server.ingest`, imported when the command runs so
that `tracelab --help` stays fast.

`--workers N` (or `auto`: one per core, at most 8) runs N ingesters as child processes, consumers
`<base>-0` … `<base>-<N-1>` of the one group, where `<base>` is `--consumer` or the default
stable name; the design already scales by several ingesters in a group, this only puts them
under one command. Each child keeps every guarantee of a lone ingester (ack after the durable
write, dedupe, claims of crashed consumers, dead letters). The parent forwards SIGTERM/SIGINT,
and the children are killed with the parent (`PR_SET_PDEATHSIG`), so `kill -9` of the command
is a `kill -9` of every worker, and a restart with the same base finds their pending entries
under the same names. With `--once`, each worker drains until the group has nothing left for
it; the parent shows one progress bar and sums the workers' summaries.

Every ingester (each worker too) takes a lease per partition in the Redis it reads from, on
top of the host's file lock, so ingesters on several hosts (each with its own
`TRACELAB_HOST_ID` and `TRACELAB_HOME`) can share one store: see `tracelab.store.leases`.
With `TRACELAB_RETAIN` set (e.g. `30d`), the command (the parent, not each worker) applies
retention once a day per store (`tracelab.store.retention.start_daily`).
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

from tracelab.events import MAX_EVENT_BYTES


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0 seconds")
    return value


# `--workers auto` starts one worker per core, at most this many: each worker holds its own
# batch in memory, its Redis connections and leases, and writes its own file per partition
# per flush, while workers writing the same partitions take turns on that partition's lock;
# past a handful they add small files, memory and Redis load, not throughput.
AUTO_WORKERS_MAX = 8


def _workers(text: str) -> int:
    if text == "auto":
        return min(_cpu_count(), AUTO_WORKERS_MAX)
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of workers or 'auto'"
                                         ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def _cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--redis-url", help="Redis to read from (default: $TRACELAB_REDIS_URL, "
                        "else $REDIS_URL, else redis://localhost:6379/0)")
    parser.add_argument("--stream", default=None,
                        help="stream to consume (default: $TRACELAB_STREAM or trace.events)")
    parser.add_argument("--group", default="tracelab-ingest", help="consumer group")
    parser.add_argument("--consumer", help="consumer name (default: ingest-<host>-<slot>, "
                        "<host> from $TRACELAB_HOST_ID else the host name; stable across "
                        "restarts on one host)")
    parser.add_argument("--batch", type=_positive_int, default=20_000,
                        help="events per write (default 20000; a batch is also written once "
                        "its entries reach 64 MiB)")
    parser.add_argument("--flush-interval", type=_positive_float, default=0.25,
                        help="write a partial batch once its oldest event waited this long "
                        "(seconds, default 0.25: a live view's latency; compaction merges "
                        "the small files a quiet stream leaves)")
    parser.add_argument("--claim-idle", type=_positive_float, default=60.0,
                        help="claim other consumers' entries pending longer than this "
                        "(seconds, default 60)")
    parser.add_argument("--dead-stream", help="where malformed entries go "
                        "(default: <stream>.dead)")
    parser.add_argument("--max-event-bytes", type=_positive_int, default=MAX_EVENT_BYTES,
                        help="larger entries are dead-lettered (default 4 MiB, the contract's "
                        "MAX_EVENT_BYTES)")
    parser.add_argument("--connect-timeout", type=_positive_float, default=5.0,
                        help="exit non-zero when Redis does not answer at start-up within "
                        "this many seconds (default 5)")
    parser.add_argument("--log-interval", type=_positive_float, default=10.0,
                        help="seconds between progress log lines (default 10)")
    parser.add_argument("--store", help="store root or URI (default: $TRACELAB_STORE, "
                        "else $TRACELAB_HOME/store); partitions are leased in the Redis "
                        "read from, for $TRACELAB_LEASE_TTL s (default 30), so ingesters on "
                        "several hosts can share one store")
    parser.add_argument("--once", action="store_true",
                        help="drain the stream with a progress bar, print a summary, exit")
    parser.add_argument("--workers", type=_workers, default=1, metavar="N|auto",
                        help="ingester processes in the group, consumers <consumer>-<i> "
                        "(auto: one per core, at most 8: each worker adds a batch in "
                        "memory, Redis connections and a file per partition per flush, and "
                        "workers on the same partitions take turns on its lock; default 1)")


def run(args: argparse.Namespace) -> int:
    from tracelab.config import ConfigError, DEFAULT_STREAM, env_str, redis_url_for_server
    from tracelab.server.ingest import IngestConfig
    from tracelab.store.layout import resolve_layout

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = IngestConfig(
        redis_url=redis_url_for_server(args.redis_url),
        stream=args.stream or env_str("TRACELAB_STREAM") or DEFAULT_STREAM,
        group=args.group, consumer=args.consumer, batch=args.batch,
        flush_interval=args.flush_interval, claim_idle=args.claim_idle,
        dead_stream=args.dead_stream, max_event_bytes=args.max_event_bytes,
        log_interval=args.log_interval, connect_timeout=args.connect_timeout,
    )
    from tracelab.store.retention import start_daily

    retention_stop = threading.Event()
    try:  # the Redis read from also holds the store's leases
        layout = resolve_layout(args.store, leases_url=config.redis_url)
        # TRACELAB_RETAIN, applied by this (parent) process only: once a day per store,
        # however many ingesters and workers share it.
        start_daily(layout, retention_stop)
    except ConfigError as exc:
        print(f"tracelab ingest: {exc}", file=sys.stderr)
        return 2
    try:
        workers = getattr(args, "workers", 1)
        if workers > 1:
            from tracelab.server.ingest import RedisUnavailable, wait_for_redis

            try:  # once here, rather than once per worker
                wait_for_redis(config.redis_url, config.connect_timeout)
            except RedisUnavailable as exc:
                print(f"tracelab ingest: {exc}", file=sys.stderr)
                return 1
            return _run_workers(config, layout, workers, args.once)
        return _run_one(config, layout, args.once, progress=args.once, summary=args.once)
    finally:
        retention_stop.set()


def _run_one(config: Any, layout: Any, once: bool, progress: bool, summary: bool,
             report: Any = None) -> int:
    """One ingester in this process; `report` (a pipe end) receives its totals."""
    from tracelab.server.ingest import Ingester, RedisUnavailable

    ingester = Ingester(config, layout=layout)
    signal.signal(signal.SIGTERM, ingester.request_stop)
    signal.signal(signal.SIGINT, ingester.request_stop)
    try:
        stats = ingester.run(once=once, progress=progress)
    except RedisUnavailable as exc:
        print(f"tracelab ingest: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"tracelab ingest: cannot write the store at {layout.root}: {exc}. "
              "Nothing was acknowledged that is not stored; fix the store and restart.",
              file=sys.stderr)
        return 1
    totals = {"read": stats.read, "stored": stats.stored, "duplicates": stats.duplicates,
              "dead": stats.dead, "first_read": stats.first_read,
              "last_flush": stats.last_flush, "started": stats.started}
    if report is not None:
        report.send(totals)
    if summary:
        _print_summary(config, [totals])
    return 0


def _print_summary(config: Any, totals: list[dict]) -> None:
    """The `--once` summary; with workers, their sums, timed from the first read of any to
    the last write of any (monotonic clocks are host-wide)."""
    read = sum(t["read"] for t in totals)
    firsts = [t["first_read"] for t in totals if t["first_read"] is not None]
    began = min(firsts) if firsts else min(t["started"] for t in totals)
    lasts = [t["last_flush"] for t in totals if t["last_flush"] is not None]
    elapsed = max(1e-9, (max(lasts) if lasts else began) - began)
    print(f"ingested {read} entries from {config.stream}: "
          f"{sum(t['stored'] for t in totals)} stored, "
          f"{sum(t['duplicates'] for t in totals)} duplicates dropped, "
          f"{sum(t['dead'] for t in totals)} dead letters ({config.dead}); "
          f"{elapsed:.2f} s, {read / elapsed:,.0f} entries/s"
          + (f" ({len(totals)} workers)" if len(totals) > 1 else ""))


def _worker_main(config: Any, store: str, home: str, once: bool, parent: int,
                 report: Any) -> None:
    """A worker process: dies with the parent, logs under its consumer name, runs one
    ingester and sends its totals back."""
    _die_with_parent(parent)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s %(name)s[{config.consumer}] %(levelname)s "
                        "%(message)s")
    from tracelab.store.layout import resolve_layout

    code = _run_one(config, resolve_layout(store, home=home, leases_url=config.redis_url),
                    once, progress=False, summary=False, report=report)
    report.close()
    sys.exit(code)


def _die_with_parent(parent: int) -> None:
    """Ask Linux to SIGKILL this process when its parent dies, so a killed command never
    leaves workers running under names its restart will reuse."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not Linux: best effort below
        pass
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def _run_workers(config: Any, layout: Any, workers: int, once: bool) -> int:
    """Run `workers` ingesters as child processes of one group and wait for them."""
    import dataclasses
    import multiprocessing
    from multiprocessing.connection import wait

    from tracelab.server.ingest import _progress_bar, default_consumer_name

    base_lock = None
    base = config.consumer
    if base is None:
        # The slot lock is held for the command's life: another command on this host picks
        # another base, and a restart after a crash gets the same one back.
        base, base_lock = default_consumer_name(layout.home)
    context = multiprocessing.get_context("spawn")  # no fork of a process with Arrow loaded
    procs: list[Any] = []
    pipes: list[Any] = []
    stopping: list[int] = []

    def forward(signum: int, _frame: Any) -> None:
        stopping.append(signum)
        for proc in procs:
            if proc.is_alive():
                try:
                    os.kill(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for index in range(workers):
        receive, send = context.Pipe(duplex=False)
        child_config = dataclasses.replace(config, consumer=f"{base}-{index}")
        proc = context.Process(target=_worker_main, name=child_config.consumer,
                               args=(child_config, layout.uri or layout.root,
                                     str(layout.home), once, os.getpid(), send))
        proc.start()
        send.close()
        procs.append(proc)
        pipes.append(receive)
    progress = _GroupProgress(config, _progress_bar) if once else None
    logging.getLogger("tracelab.ingest").info(
        "started %d workers %s-0..%d of group %s", workers, base, workers - 1, config.group)
    totals: list[dict] = []
    failed = 0
    live = {proc.sentinel: proc for proc in procs}
    while live:
        for sentinel in wait(list(live), timeout=0.5):
            proc = live.pop(sentinel)
            proc.join()
            # A worker stopped by the forwarded signal before it set up its handler had
            # nothing in hand yet: that is a clean stop too.
            if proc.exitcode != 0 and not (stopping and proc.exitcode == -signal.SIGTERM):
                failed = failed or (proc.exitcode if proc.exitcode > 0 else 1)
                if not stopping:  # one worker failed: stop the others, report it
                    print(f"tracelab ingest: worker {proc.name} exited with {proc.exitcode}; "
                          "stopping the others", file=sys.stderr)
                    forward(signal.SIGTERM, None)
        if progress is not None:
            progress.poll()
    for receive in pipes:
        try:
            if receive.poll():
                totals.append(receive.recv())
        except (EOFError, OSError):
            pass
    if progress is not None:
        progress.close()
    if base_lock is not None:
        base_lock.release()
    if failed:
        return failed
    if once and totals:
        _print_summary(config, totals)
    return 0


class _GroupProgress:
    """The `--once` progress bar of a group of workers: the group's backlog, going down."""

    def __init__(self, config: Any, make_bar: Any) -> None:
        import redis

        self._config = config
        self._client = redis.Redis.from_url(config.redis_url, socket_timeout=5,
                                            socket_connect_timeout=5)
        self._total = self._backlog()
        self._bar = make_bar(self._total)
        self._done = 0
        self._next = 0.0

    def _backlog(self) -> int | None:
        from tracelab.server.ingest import stream_backlog

        return stream_backlog(self._client, self._config.stream, self._config.group)

    def poll(self) -> None:
        if self._total is None or time.monotonic() < self._next:
            return
        self._next = time.monotonic() + 0.5
        left = self._backlog()
        if left is not None and self._total - left > self._done:
            self._bar.update(self._total - left - self._done)
            self._done = self._total - left

    def close(self) -> None:
        self._bar.close()
        self._client.close()
