"""`tracelab validate FILE...`: check files of TraceEvents as the ingester would take them.

A FILE holds one JSON event (pretty-printed or not), a JSON array of events, or JSON Lines (one
event per line, blank lines ignored: the spool, a recording); `-` reads standard input.

Each event is parsed as the ingester and the spool parse it, with orjson (so `NaN`,
`Infinity`, a lone surrogate such as `"\\ud800"`, a number out of range or a byte order mark
is not JSON), must be at most `MAX_EVENT_BYTES` of JSON, and is checked twice: by
`tracelab.events.validate()` (what the ingester runs) and against the JSON Schema
`trace-event.schema.json` shipped in the package (`--schema FILE` for another). A schema
problem about a field `validate()` already named is not repeated; any other ends in
`(JSON Schema)`. Without the `jsonschema` package one line on standard error says so and
`validate()` alone decides.

Every invalid event is one line, `FILE:LINE: problem; problem` (for an array element,
`FILE:[INDEX]:`, counted from 0), then a summary. Exit status: 0 when every event is valid,
1 when any is invalid (or not JSON), 2 when a file or the `--schema` cannot be read.

Imports stay light: the CLI imports this module to build its parser whatever command runs.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tracelab.event_files import read_events, size_problems
from tracelab.events import validate

Checker = Callable[[object], list[str]]

_SCHEMA_MESSAGE_CHARS = 160


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "files", nargs="+", metavar="FILE",
        help="a file holding one JSON event, a JSON array of events, or JSON Lines (one event "
             "per line); - for stdin",
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true",
        help="print only the invalid events, not the summary",
    )
    parser.add_argument(
        "--schema", metavar="FILE", default=None,
        help="check against this JSON Schema instead of the shipped trace-event.schema.json",
    )


# -- parsing, as the ingester does ----------------------------------------------------------

# -- the JSON Schema ------------------------------------------------------------------------

class SchemaUnusable(Exception):
    """`--schema` (or the shipped schema) cannot be read or is not a JSON Schema."""


def schema_checker(schema_file: str | None) -> Checker | None:
    """A function listing an event's JSON Schema problems, or None without `jsonschema`."""
    import orjson

    from tracelab.events import schema_path

    try:
        import jsonschema
    except ImportError:
        if schema_file is not None:
            raise SchemaUnusable("--schema needs the jsonschema package: pip install "
                                 "jsonschema") from None
        return None
    path = Path(schema_file) if schema_file is not None else schema_path()
    try:
        schema = orjson.loads(path.read_bytes())
        validator_class = jsonschema.validators.validator_for(schema)
        validator_class.check_schema(schema)
    except OSError as exc:
        raise SchemaUnusable(f"cannot read the schema {path}: {exc.strerror or exc}") from None
    except orjson.JSONDecodeError as exc:
        raise SchemaUnusable(f"the schema {path} is not JSON: {exc}") from None
    except jsonschema.SchemaError as exc:
        raise SchemaUnusable(f"{path} is not a valid JSON Schema: {exc.message}") from None
    validator = validator_class(schema)

    def check(value: object) -> list[str]:
        return sorted(_schema_problem(error) for error in validator.iter_errors(value))

    return check


def _schema_problem(error: Any) -> str:
    where = ""
    for part in error.absolute_path:
        where += f"[{part}]" if isinstance(part, int) else (f".{part}" if where else str(part))
    message = error.message
    if error.validator == "required" and not where:
        where = message.partition(" is a required property")[0].strip("'\"")
        message = "required field is missing"
    if len(message) > _SCHEMA_MESSAGE_CHARS:
        message = message[:_SCHEMA_MESSAGE_CHARS - 1] + "…"
    return f"{where or 'event'}: {message} (JSON Schema)"


def _field(problem: str) -> str:
    """The top-level field a problem is about: `tags[k]: …` -> `tags`, `error.type: …` -> `error`."""
    head = problem.partition(":")[0]
    for mark in ".[":
        head = head.partition(mark)[0]
    return head


def problems_of(value: object, size: int | None, check_schema: Checker | None) -> list[str]:
    """`validate()`'s problems, the size limit's, then the schema's about other fields."""
    problems = validate(value) + size_problems(value, size)
    if check_schema is not None:
        named = {_field(p) for p in problems}
        if "event" not in named:
            problems += [p for p in check_schema(value) if _field(p) not in named]
    return problems


# -- the command ----------------------------------------------------------------------------

def _read(name: str) -> bytes:
    if name == "-":
        return sys.stdin.buffer.read()
    with open(name, "rb") as handle:
        return handle.read()


def run(args: argparse.Namespace) -> int:
    out = sys.stdout
    try:
        check_schema = schema_checker(args.schema)
    except SchemaUnusable as exc:
        print(f"tracelab validate: {exc}", file=sys.stderr)
        return 2
    if check_schema is None:
        print("tracelab validate: the jsonschema package is not installed: checking with "
              "tracelab.events.validate() only, not against the JSON Schema (pip install "
              "jsonschema)", file=sys.stderr)
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
        for where, value, parse_problem, size in read_events(data):
            checked += 1
            problems = [parse_problem] if parse_problem else problems_of(value, size,
                                                                         check_schema)
            if problems:
                invalid += 1
                out.write(f"{label}:{where}: {'; '.join(problems)}\n")
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
