"""`tracelab up`: service mode in one command, the ingester (Redis -> store) and `serve`.

The ingester runs in a thread of this process, so `/metrics` also reports its rate and lag;
SIGINT/SIGTERM stop both (the ingester writes and acknowledges what it holds first).
"""
from __future__ import annotations

import argparse
import sys

from tracelab.cli.serve import add_arguments as _add_serve_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _add_serve_arguments(parser)
    parser.add_argument("--redis-url", help="Redis to ingest from (default: "
                        "$TRACELAB_REDIS_URL, else $REDIS_URL, else redis://localhost:6379/0)")
    parser.add_argument("--stream", default=None,
                        help="stream to consume (default: $TRACELAB_STREAM or trace.events)")
    parser.add_argument("--group", default="tracelab-ingest", help="consumer group")


def run(args: argparse.Namespace) -> int:
    import logging
    import threading

    import uvicorn  # noqa: F401  # the `server` extra, checked before anything starts
    from tracelab.config import (DEFAULT_STREAM, ConfigError, env_str, redis_url_for_server,
                                 url_without_password)
    from tracelab.cli.serve import serve
    from tracelab.server.ingest import IngestConfig, Ingester
    from tracelab.store.layout import resolve_layout
    from tracelab.store.retention import start_daily

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = IngestConfig(redis_url=redis_url_for_server(args.redis_url),
                          stream=args.stream or env_str("TRACELAB_STREAM") or DEFAULT_STREAM,
                          group=args.group)
    shown_url = url_without_password(config.redis_url)
    try:
        import redis

        redis.Redis.from_url(config.redis_url, socket_connect_timeout=1).ping()
    except Exception as exc:
        print(f"tracelab up: warning: Redis at {shown_url} does not answer yet ({exc}); "
              "the ingester keeps retrying", file=sys.stderr)
    print(f"TraceLab ingester: stream {config.stream!r} (group {config.group!r}) of Redis "
          f"{shown_url}", flush=True)
    # The in-process ingester coordinates like `tracelab ingest`: leases in its Redis (other
    # hosts may write the same store) and TRACELAB_RETAIN once a day.
    retention_stop = threading.Event()
    try:
        layout = resolve_layout(args.store, leases_url=config.redis_url)
        start_daily(layout, retention_stop)
    except ConfigError as exc:
        print(f"tracelab up: {exc}", file=sys.stderr)
        return 2
    ingester = Ingester(config, layout=layout)
    failure: list[BaseException] = []
    stop_serving: list = []

    def ingest() -> None:
        try:
            ingester.run()
        except BaseException as exc:  # reported below; serving stops with it
            failure.append(exc)
            for stop in stop_serving:
                stop()

    thread = threading.Thread(target=ingest, name="tracelab-ingest", daemon=True)
    try:
        code = serve(args, ingester=ingester, name="up",
                     on_ready=lambda stop: (stop_serving.append(stop), thread.start()))
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(exc.code.replace("tracelab:", "tracelab up:", 1), file=sys.stderr)
            return 1
        raise
    finally:
        retention_stop.set()
        ingester.request_stop()
        if thread.is_alive():
            thread.join(timeout=10)
    if failure:
        print(f"tracelab up: the ingester stopped: {failure[0]}", file=sys.stderr)
        return 1
    return code
