"""`tracelab import FILE...`: load recordings (JSON Lines or a JSON array of events) into the store.

Every event is checked as the ingester checks it (`tracelab.events.validate()`) and stored
once: the store dedupes by `event_id`, so importing the same file twice stores it once.
Each rejected event is one line, `FILE:LINE: reason`, then a summary
`imported N events from F files: S stored, D duplicates, R rejected`.

Exit status: 0 when every event was stored or already there, 1 when any was rejected (the
valid ones are stored regardless), 2 when a file cannot be read.
Imports stay light: the CLI imports this module to build its parser whatever command runs.
"""
from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE",
                        help="recordings: JSON Lines of events, or a JSON array of events")
    parser.add_argument("--store", help="store root or URI (default: $TRACELAB_STORE, "
                        "else $TRACELAB_HOME/store)")
    parser.add_argument("--redis-url", help="Redis whose partition leases coordinate with "
                        "ingesters on other hosts (default: $TRACELAB_REDIS_URL, else "
                        "$REDIS_URL; without one, host-wide file locks only)")


def run(args: argparse.Namespace) -> int:
    from tracelab.replay.recording import import_recordings
    from tracelab.config import redis_url_if_known
    from tracelab.store.layout import resolve_layout

    layout = resolve_layout(args.store, leases_url=redis_url_if_known(args.redis_url))
    report = import_recordings(args.files, layout=layout)
    for where, reason in report.unreadable:
        print(f"tracelab import: {where}: {reason}", file=sys.stderr)
    for where, reason in report.rejected:
        print(f"{where}: rejected: {reason}")
    total = report.stored + report.duplicates + len(report.rejected)
    print(f"imported {total} event{'s' if total != 1 else ''} from {report.files} "
          f"file{'s' if report.files != 1 else ''}: {report.stored} stored, "
          f"{report.duplicates} duplicate{'s' if report.duplicates != 1 else ''}, "
          f"{len(report.rejected)} rejected")
    if report.unreadable:
        return 2
    return 1 if report.rejected else 0
