"""`tracelab scan FILE...`: find secrets left in files of events before they are committed.

A recording is public the moment it is committed. This command looks for what redaction exists
to remove, with the SDK's own rules (`tracelab.sdk.redaction`, one definition):

- secret-shaped text anywhere (`SHAPE_RULES`: `sk_live_…`, `AKIA…`, `ghp_…`, JWTs, private
  keys, `user:password@` …), in any file, JSON or not;
- in JSON (JSON Lines of TraceEvents, or one JSON array/object), members whose *name* is secret
  (`password`, `access_token`, `Authorization` …) and query parameters of URL strings with
  secret names, when their value is not the redaction marker.

Each finding is one line, `FILE:LINE: RULE: MASKED` (plus `at PATH` inside JSON), where MASKED
is the first 4 characters and the length: the secret itself is never printed. Exit status: 0
when nothing is found, 1 when something is, 2 when any file cannot be read or is not UTF-8 (the
other files are still scanned and reported).

Imports stay light: the CLI imports this module to build its parser whatever command runs.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_SHOWN_CHARS = 4
_MAX_DEPTH = 200


@dataclass(frozen=True)
class Finding:
    line: int
    rule: str
    value: str
    where: str = ""

    def render(self, file: str) -> str:
        where = f" at {self.where}" if self.where else ""
        return f"{file}:{self.line}: {self.rule}: {mask(self.value)}{where}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "files", nargs="+", metavar="FILE",
        help="files of events (JSON Lines, or a JSON array/object) or any text file",
    )
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="print only the findings, not the summary")


def mask(secret: str) -> str:
    """`sk_l… (38 chars)`: enough to find it, never enough to use it."""
    shown = secret[:_SHOWN_CHARS] if len(secret) > 2 * _SHOWN_CHARS else secret[:1]
    return f"{shown}… ({len(secret)} chars)"


def scan_text(text: str) -> list[Finding]:
    """Every finding in one file's text."""
    import orjson

    stripped = text.strip()
    if stripped[:1] in ("{", "[") and "\n" in stripped:
        try:
            document = orjson.loads(stripped)
        except orjson.JSONDecodeError:
            pass
        else:  # one (pretty-printed) JSON document: locate each finding by its text
            lines = text.splitlines()
            return [Finding(_line_of(lines, f.value), f.rule, f.value, f.where)
                    for f in _scan_json(document, "")]
    findings: list[Finding] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parsed: Any = _NOT_JSON
        if line.lstrip()[:1] in ("{", "["):
            try:
                parsed = orjson.loads(line)
            except orjson.JSONDecodeError:
                pass
        found = _scan_json(parsed, "") if parsed is not _NOT_JSON else _scan_string(line, "")
        findings.extend(Finding(number, f.rule, f.value, f.where) for f in found)
    return findings


_NOT_JSON = object()


def _scan_string(text: str, where: str) -> list[Finding]:
    from tracelab.sdk.redaction import find_shapes

    found = [Finding(0, rule, text[start:end], where) for rule, start, end in find_shapes(text)]
    if "://" in text and "?" in text:
        found.extend(_scan_query(text, where))
    return found


def _scan_query(url: str, where: str) -> Iterator[Finding]:
    from urllib.parse import parse_qsl, urlsplit

    from tracelab.sdk.redaction import MARKER

    try:
        query = urlsplit(url.strip()).query
    except ValueError:
        return
    for name, value in parse_qsl(query):
        if value and value != MARKER and _redactor().is_secret(name):
            yield Finding(0, f"secret-name:{name}", value, where)


def _scan_json(value: Any, where: str, depth: int = 0) -> list[Finding]:
    from tracelab.sdk.redaction import MARKER

    if isinstance(value, str):
        return _scan_string(value, where)
    if depth > _MAX_DEPTH:
        return []
    found: list[Finding] = []
    if isinstance(value, dict):
        for key, member in value.items():
            path = f"{where}.{key}" if where else str(key)
            if isinstance(member, (str, int, float)) and not isinstance(member, bool) \
                    and member != MARKER and member != "" and _redactor().is_secret(str(key)):
                found.append(Finding(0, f"secret-name:{key}", str(member), path))
            else:
                found.extend(_scan_json(member, path, depth + 1))
    elif isinstance(value, list):
        for i, member in enumerate(value):
            found.extend(_scan_json(member, f"{where}[{i}]", depth + 1))
    return found


def _line_of(lines: list[str], value: str) -> int:
    """The first line holding `value` as JSON writes it (1 when it cannot be placed)."""
    import orjson

    needle = orjson.dumps(value).decode()[1:-1]
    for number, line in enumerate(lines, start=1):
        if needle in line:
            return number
    return 1


_REDACTOR: list[Any] = []


def _redactor() -> Any:
    if not _REDACTOR:
        from tracelab.sdk.redaction import Redactor

        _REDACTOR.append(Redactor())
    return _REDACTOR[0]


def run(args: argparse.Namespace) -> int:
    bad = total = 0
    for name in args.files:
        try:
            text = Path(name).read_bytes().decode("utf-8")
        except OSError as exc:
            print(f"tracelab scan: cannot read {name}: {exc.strerror or exc}", file=sys.stderr)
            bad += 1
            continue
        except UnicodeDecodeError as exc:
            print(f"tracelab scan: {name} is not UTF-8 text (byte {exc.start + 1})",
                  file=sys.stderr)
            bad += 1
            continue
        for finding in scan_text(text):
            print(finding.render(name))
            total += 1
    scanned = len(args.files) - bad
    if not args.quiet:
        verdict = f"{total} possible secret(s) found" if total else "no secrets found"
        print(f"tracelab scan: {verdict} in {scanned} file(s)"
              + (f"; {bad} file(s) could not be scanned" if bad else ""), file=sys.stderr)
    if bad:
        return 2
    return 1 if total else 0
