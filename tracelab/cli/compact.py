"""`tracelab compact`: merge each partition's small files into one, atomically.

Safe while an ingester runs: both take the partition's lock, and the writer's journal makes a
compaction killed halfway finish (or roll forward) the next time anyone writes there. With a
Redis URL (`--redis-url`, else TRACELAB_REDIS_URL, else REDIS_URL) the lock is also a lease in
that Redis, the one ingesters on every host take, so it is safe beside ingesters on other
hosts too; without one it is a file lock that only excludes writers on this host.
"""
from __future__ import annotations

import argparse
import re
import sys


def _date(text: str) -> str:
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a date: use YYYY-MM-DD")
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workflow", help="only this workflow's partitions")
    parser.add_argument("--date", type=_date, help="only this UTC day (YYYY-MM-DD)")
    parser.add_argument("--store", help="store root or URI (default: $TRACELAB_STORE, "
                        "else $TRACELAB_HOME/store)")
    parser.add_argument("--redis-url", help="take each partition's lease in this Redis, the "
                        "one the ingesters read from, so ingesters on other hosts wait "
                        "(default: $TRACELAB_REDIS_URL, else $REDIS_URL; with none of them, "
                        "only a file lock on this host: safe beside ingesters on this host "
                        "only)")


def run(args: argparse.Namespace) -> int:
    import redis

    from tracelab.config import ConfigError, redis_url_if_known, url_without_password
    from tracelab.store.compact import compact
    from tracelab.store.layout import resolve_layout
    from tracelab.store.locks import LockTimeout

    url = redis_url_if_known(args.redis_url)
    try:
        layout = resolve_layout(args.store, leases_url=url)
    except ConfigError as exc:
        print(f"tracelab compact: {exc}", file=sys.stderr)
        return 2
    try:
        report = compact(args.workflow, args.date, layout=layout)
    except redis.exceptions.RedisError as exc:
        print(f"tracelab compact: cannot take the store's leases in Redis at "
              f"{url_without_password(url or '')} ({exc}); the partitions not merged yet were "
              "left as they were", file=sys.stderr)
        return 1
    except LockTimeout as exc:
        print(f"tracelab compact: {exc}", file=sys.stderr)
        return 1
    finally:
        if layout.leases is not None:
            layout.leases.close()
    if report.partitions == 0:
        print("nothing to compact: no matching partitions", file=sys.stderr)
        return 0
    print(f"compacted {len(report.merged)} of {report.partitions} partitions: "
          f"{report.files_before} files -> {report.files_after}, {report.events} events "
          f"rewritten, {report.duplicates_dropped} duplicates dropped")
    if report.lease_lost:
        print(f"tracelab compact: lost the lease of {len(report.lease_lost)} partitions "
              "mid-merge (Redis too slow, or this process paused longer than "
              "TRACELAB_LEASE_TTL); they were left as they were: run again", file=sys.stderr)
        return 1
    return 0
