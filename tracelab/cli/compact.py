"""`tracelab compact`: merge each partition's small files into one, atomically.

Safe while an ingester runs: both take the partition's lock, and the writer's journal makes a
compaction killed halfway finish (or roll forward) the next time anyone writes there.
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


def run(args: argparse.Namespace) -> int:
    from tracelab.store.compact import compact
    from tracelab.store.layout import resolve_layout

    report = compact(args.workflow, args.date, layout=resolve_layout(args.store))
    if report.partitions == 0:
        print("nothing to compact: no matching partitions", file=sys.stderr)
        return 0
    print(f"compacted {len(report.merged)} of {report.partitions} partitions: "
          f"{report.files_before} files -> {report.files_after}, {report.events} events "
          f"rewritten, {report.duplicates_dropped} duplicates dropped")
    return 0
