"""`tracelab validate FILE...`: check TraceEvent JSON files against the contract.

Each FILE holds one JSON event (pretty-printed or not) or JSON Lines (one event per line, blank
lines ignored, as in the embedded spool); `-` reads standard input. Every invalid event is
reported as `FILE:LINE: problem; problem`, then a summary. Exit status: 0 when every event is
valid, 1 when any is invalid (or not JSON), 2 when a file cannot be read.

Imports stay light (standard library and `tracelab.events`): the CLI imports this module to
build its parser even when another command runs.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator

from tracelab.events import validate


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "files", nargs="+", metavar="FILE",
        help="a file holding one JSON event or JSON Lines (one event per line); - for stdin",
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true",
        help="print only the invalid events, not the summary",
    )


def _json_error(exc: ValueError) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"not valid JSON: {exc.msg} (column {exc.colno})"
    return f"not valid JSON: {exc}"  # e.g. UnicodeDecodeError: the bytes are not UTF-8


def _documents(data: bytes) -> Iterator[tuple[int, object, str | None]]:
    """Yield (line number, parsed value, parse problem) for each event in a file's bytes."""
    try:
        whole_file = json.loads(data)
    except ValueError as exc:
        whole_file_error = exc
    else:
        yield 1, whole_file, None
        return
    lines = data.split(b"\n")
    if not any(line.strip() for line in lines):
        return  # empty or only whitespace: no events
    if not (getattr(whole_file_error, "msg", "") == "Extra data"
            or any(_is_json_object(line) for line in lines)):
        # No line is an event on its own: this is one (broken) JSON document, so report it
        # once, where the parser stopped, rather than once per line.
        yield getattr(whole_file_error, "lineno", 1), None, _json_error(whole_file_error)
        return
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line), None
        except ValueError as exc:
            yield number, None, _json_error(exc)


def _is_json_object(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def _read(name: str) -> bytes:
    if name == "-":
        return sys.stdin.buffer.read()
    with open(name, "rb") as handle:
        return handle.read()


def run(args: argparse.Namespace) -> int:
    out = sys.stdout
    checked = invalid = unreadable = 0
    for name in args.files:
        try:
            data = _read(name)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            print(f"tracelab validate: cannot read {name}: {reason}", file=sys.stderr)
            unreadable += 1
            continue
        label = "<stdin>" if name == "-" else name
        for lineno, value, parse_problem in _documents(data):
            checked += 1
            problems = [parse_problem] if parse_problem else validate(value)
            if problems:
                invalid += 1
                out.write(f"{label}:{lineno}: {'; '.join(problems)}\n")
    if not args.quiet:
        files = len(args.files) - unreadable
        summary = (f"{checked} event{'s' if checked != 1 else ''} in {files} "
                   f"file{'s' if files != 1 else ''}: {checked - invalid} valid, {invalid} invalid")
        if unreadable:
            summary += f", {unreadable} file{'s' if unreadable != 1 else ''} unreadable"
        print(summary, file=out)
    if unreadable:
        return 2
    return 1 if invalid else 0
