"""`tracelab retain`: delete the executions that started before a limit, safely beside writers.

Whole day partitions older than the limit are deleted; rows of old executions that go on into
kept days are removed by rewriting those files (journalled like compaction). See
`tracelab.store.retention` for the rules; `TRACELAB_RETAIN` makes the ingester do this daily.
"""
from __future__ import annotations

import argparse
import sys
from datetime import timedelta


def _age(text: str) -> timedelta:
    from tracelab.store.retention import parse_age

    try:
        return parse_age(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--older-than", required=True, type=_age, metavar="AGE",
                        help="delete executions that started longer ago than this: a whole "
                        "number and a unit s, m, h, d or w (30d, 12h, 90m, 3600s, 2w)")
    parser.add_argument("--workflow", help="only this workflow's executions")
    parser.add_argument("--dry-run", action="store_true",
                        help="print what would be deleted, delete nothing")
    parser.add_argument("--redis-url", help="take a lease per partition in this Redis "
                        "(default: $TRACELAB_REDIS_URL, else $REDIS_URL); without any Redis URL "
                        "only host-wide file locks are taken, which is safe beside ingesters on "
                        "this host only")
    parser.add_argument("--store", help="store root or URI (default: $TRACELAB_STORE, "
                        "else $TRACELAB_HOME/store)")


def run(args: argparse.Namespace) -> int:
    from tracelab.config import redis_url_if_known
    from tracelab.store.layout import resolve_layout
    from tracelab.store.retention import retain

    layout = resolve_layout(args.store, leases_url=redis_url_if_known(args.redis_url))
    report = retain(args.older_than, args.workflow, layout=layout, dry_run=args.dry_run)
    cutoff = report.cutoff.strftime("%Y-%m-%dT%H:%M:%SZ")
    if report.executions == 0:
        print(f"nothing to delete: no execution started before {cutoff}", file=sys.stderr)
        return 0
    verb = "would delete" if report.dry_run else "deleted"
    print(f"{verb} {report.executions} executions started before {cutoff}: {report.events} "
          f"events in {report.files} files; {len(report.partitions_deleted)} partitions "
          f"removed, {len(report.partitions_rewritten)} rewritten")
    return 0
