"""`tracelab stats`: what the store holds, in one glance (folding any spool first)."""
from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", help="store root or URI (default: $TRACELAB_STORE, "
                        "else $TRACELAB_HOME/store)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    from tracelab.store.layout import resolve_layout
    from tracelab.store.query import store_stats

    layout = resolve_layout(args.store)
    stats = store_stats(layout=layout)
    if args.json:
        print(json.dumps({"store": layout.uri or layout.root, **stats}))
        return 0
    print(f"store       {layout.uri or layout.root}")
    for key in ("workflows", "executions", "events", "files", "bytes"):
        print(f"{key:<11} {stats[key]:,}")
    return 0
