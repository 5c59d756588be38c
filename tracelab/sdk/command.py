"""The command that started a run, recorded in tags so a replay can run it again.

`init()` adds three tags to every event (so the execution has them too):
`command.argv` (JSON text of the argument list), `command.cwd` and `command.executable`
(`sys.argv`, `os.getcwd()`, `sys.executable`). A command line is where secrets are typed
(`--api-key sk_live_…`, `--password=hunter2`, `redis://:pw@host`), so every argument is
redacted like any other free text: by shape anywhere, by name for `--name=value` and for the
value after a `--name` flag whose name is secret, and URL query values by name.

Tags are capped at `MAX_TAG_VALUE_CHARS`: an argv that does not fit keeps its first whole
arguments and ends with `TRUNCATED`, which `parse_argv` reports, so a cut command line is never
mistaken for the real one. Tags the user set (init's `tags`, `TRACELAB_TAGS`) win, and the
command tags are added only while the event stays within `MAX_TAGS`.
"""
from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from tracelab.events import MAX_TAG_VALUE_CHARS, MAX_TAGS
from tracelab.sdk.redaction import MARKER, Redactor

ARGV_TAG = "command.argv"
CWD_TAG = "command.cwd"
EXECUTABLE_TAG = "command.executable"
TRUNCATED = "[TRUNCATED]"
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s\"']+")


def unicode_text(value: object) -> str:
    """`value` as valid Unicode: bytes an OS gave as surrogate escapes (a non-UTF-8 file name
    in argv or the working directory) become U+FFFD, so the event can still be JSON."""
    text = str(value)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that is no escaped byte
        raw = text.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "replace")


def redact_argv(argv: Sequence[str], redactor: Redactor | None = None) -> list[str]:
    """The arguments with secrets replaced by the redaction marker."""
    redactor = redactor or Redactor()
    out: list[str] = []
    secret_next = False
    for arg in argv:
        arg = unicode_text(arg)
        if secret_next:
            out.append(MARKER)
            secret_next = False
            continue
        if arg.startswith("-") and "=" not in arg and len(arg) > 1:
            secret_next = redactor.is_secret(arg.lstrip("-"))
        name, eq, value = arg.partition("=")
        if eq and name.startswith("-") and redactor.is_secret(name.lstrip("-")):
            out.append(f"{name}={MARKER}")
            continue
        text = redactor.text(arg)
        if "://" in text:
            text = _URL.sub(lambda m: redactor.url(m.group(0)), text)
        out.append(text)
    return out


def argv_text(argv: Sequence[str], limit: int = MAX_TAG_VALUE_CHARS) -> str:
    """JSON text of `argv` within `limit` characters: whole arguments, then `TRUNCATED`."""
    text = orjson.dumps(list(argv)).decode()
    if len(text) <= limit:
        return text
    kept: list[str] = []
    for arg in argv:
        if len(orjson.dumps([*kept, arg, TRUNCATED]).decode()) > limit:
            break
        kept.append(arg)
    return orjson.dumps([*kept, TRUNCATED]).decode()


def parse_argv(text: Any) -> tuple[list[str] | None, bool]:
    """(argv, truncated) from a `command.argv` tag; argv is None unless it is whole."""
    if isinstance(text, list):
        value: Any = text
    else:
        try:
            value = orjson.loads(text) if isinstance(text, str) else None
        except orjson.JSONDecodeError:
            return None, False
    if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
        return None, False
    if value and value[-1] == TRUNCATED:
        return None, True
    return value, False


def command_tags(redactor: Redactor | None = None) -> dict[str, str]:
    """This process's command as tags (empty parts left out); never raises."""
    redactor = redactor or Redactor()
    tags: dict[str, str] = {}
    try:
        tags[ARGV_TAG] = argv_text(redact_argv(list(getattr(sys, "argv", None) or []), redactor))
    except Exception:  # noqa: BLE001 - recording the command must never break init()
        pass
    try:
        tags[CWD_TAG] = redactor.text(unicode_text(os.getcwd()))[:MAX_TAG_VALUE_CHARS]
    except Exception:  # noqa: BLE001 - a deleted working directory, for one
        pass
    if getattr(sys, "executable", None):
        tags[EXECUTABLE_TAG] = unicode_text(sys.executable)[:MAX_TAG_VALUE_CHARS]
    return tags


def with_command(tags: Mapping[str, str], redactor: Redactor | None = None) -> dict[str, str]:
    """`tags` plus the command tags it lacks, as long as the total stays within MAX_TAGS."""
    merged = dict(tags)
    for key, value in command_tags(redactor).items():
        if key not in merged and len(merged) < MAX_TAGS:
            merged[key] = value
    return merged
