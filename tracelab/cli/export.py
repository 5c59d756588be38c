"""`tracelab export RUN_ID [-o FILE]`: write one stored run as a recording.

A recording is JSON Lines of TraceEvents, one per line in start order (`started_at`, then
`event_id`), exactly as stored (already redacted by the SDK): it passes `tracelab validate`
and `tracelab scan`, and `tracelab import` or `tracelab replay` take it back. The default file
is `<workflow>-<run_id>.jsonl` in the working directory, characters other than letters,
digits, `.`, `_` and `-` replaced by `_`; `-o -` writes to standard output.

Exit status: 0 written, 2 when the store holds no such run or the file cannot be written.
Imports stay light: the CLI imports this module to build its parser whatever command runs.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", metavar="RUN_ID", help="the run to export")
    parser.add_argument("-o", "--output", metavar="FILE", default=None,
                        help="where to write (default: <workflow>-<run_id>.jsonl here; "
                             "- for stdout)")
    parser.add_argument("--store", help="store root or URI (default: $TRACELAB_STORE, "
                        "else $TRACELAB_HOME/store)")


def run(args: argparse.Namespace) -> int:
    import orjson

    from tracelab.replay.recording import RecordingError, export_run, run_events, start_order
    from tracelab.store.layout import resolve_layout

    layout = resolve_layout(args.store)
    try:
        if args.output == "-":
            events = run_events(args.run_id, layout=layout)
            for event in start_order(events):
                sys.stdout.buffer.write(orjson.dumps(event) + b"\n")
            sys.stdout.flush()
            print(f"exported {len(events)} events of run {args.run_id!r}", file=sys.stderr)
            return 0
        path = export_run(args.run_id, Path(args.output) if args.output else None,
                          layout=layout)
    except (KeyError, RecordingError) as exc:
        message = exc.args[0] if exc.args else str(exc)
        print(f"tracelab export: {message}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"tracelab export: cannot write {args.output}: {exc.strerror or exc}",
              file=sys.stderr)
        return 2
    lines = sum(1 for line in path.read_bytes().splitlines() if line.strip())
    print(f"exported {lines} events of run {args.run_id!r} to {path}", file=sys.stderr)
    return 0
