"""`tracelab ingest`: run the ingester (Redis stream -> Parquet store) from the command line.

Only argument parsing and process concerns (signals, logging, exit codes) live here; the
ingester itself is `tracelab.server.ingest`, imported when the command runs so that
`tracelab --help` stays fast.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys


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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--redis-url", help="Redis to read from (default: $TRACELAB_REDIS_URL, "
                        "else $REDIS_URL, else redis://localhost:6379/0)")
    parser.add_argument("--stream", default=None,
                        help="stream to consume (default: $TRACELAB_STREAM or trace.events)")
    parser.add_argument("--group", default="tracelab-ingest", help="consumer group")
    parser.add_argument("--consumer", help="consumer name (default: ingest-<host>-<slot>, "
                        "stable across restarts on one host)")
    parser.add_argument("--batch", type=_positive_int, default=5000,
                        help="events per write (default 5000)")
    parser.add_argument("--flush-interval", type=_positive_float, default=1.0,
                        help="write a partial batch once its oldest event waited this long "
                        "(seconds, default 1)")
    parser.add_argument("--claim-idle", type=_positive_float, default=60.0,
                        help="claim other consumers' entries pending longer than this "
                        "(seconds, default 60)")
    parser.add_argument("--dead-stream", help="where malformed entries go "
                        "(default: <stream>.dead)")
    parser.add_argument("--max-event-bytes", type=_positive_int, default=4 * 1024 * 1024,
                        help="larger entries are dead-lettered (default 4 MiB)")
    parser.add_argument("--log-interval", type=_positive_float, default=10.0,
                        help="seconds between progress log lines (default 10)")
    parser.add_argument("--store", help="store root or URI (default: $TRACELAB_STORE, "
                        "else $TRACELAB_HOME/store)")
    parser.add_argument("--once", action="store_true",
                        help="drain the stream with a progress bar, print a summary, exit")


def run(args: argparse.Namespace) -> int:
    from tracelab.config import DEFAULT_STREAM, env_str, redis_url_for_server
    from tracelab.server.ingest import IngestConfig, Ingester
    from tracelab.store.layout import resolve_layout

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = IngestConfig(
        redis_url=redis_url_for_server(args.redis_url),
        stream=args.stream or env_str("TRACELAB_STREAM") or DEFAULT_STREAM,
        group=args.group, consumer=args.consumer, batch=args.batch,
        flush_interval=args.flush_interval, claim_idle=args.claim_idle,
        dead_stream=args.dead_stream, max_event_bytes=args.max_event_bytes,
        log_interval=args.log_interval,
    )
    ingester = Ingester(config, layout=resolve_layout(args.store))
    signal.signal(signal.SIGTERM, ingester.request_stop)
    signal.signal(signal.SIGINT, ingester.request_stop)
    try:
        stats = ingester.run(once=args.once, progress=args.once)
    except OSError as exc:
        print(f"tracelab ingest: cannot write the store at {ingester.layout.root}: {exc}. "
              "Nothing was acknowledged that is not stored; fix the store and restart.",
              file=sys.stderr)
        return 1
    if args.once:
        began = stats.first_read or stats.started
        elapsed = max(1e-9, (stats.last_flush or began) - began)
        print(f"ingested {stats.read} entries from {config.stream}: {stats.stored} stored, "
              f"{stats.duplicates} duplicates dropped, {stats.dead} dead letters "
              f"({config.dead}); {elapsed:.2f} s, {stats.read / elapsed:,.0f} entries/s")
    return 0
