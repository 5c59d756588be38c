"""Recordings: the events of one run, as a file (JSON Lines) or straight from the store.

A recording is what replay answers from and what a team commits next to its tests, so it is
plain data: JSON Lines of TraceEvents (one per line, in start order: `started_at`, then
`event_id`), parsed with orjson and checked with `tracelab.events.validate()`; never evaluated,
never YAML. Wherever a recording is asked for, a file path or a run id in the store is
accepted (`load_recording`), so `tracelab replay RUN_ID` and `tracelab replay run.jsonl` are
the same thing.

The command that started the run rides along in the events' tags (`command.argv` as JSON
text, `command.cwd`, `command.executable`; written by `tracelab.sdk.command`), so a replay can
run it again without being told.
"""
from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from tracelab.event_files import read_events, size_problems
from tracelab.events import validate
from tracelab.sdk.command import ARGV_TAG, CWD_TAG, EXECUTABLE_TAG, parse_argv

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_SAFE_PART_CHARS = 100


class RecordingError(ValueError):
    """A recording cannot be loaded: the message says what was asked and what was found."""


@dataclass
class Recording:
    """The events of one recorded run, in start order, and what is known about the run."""

    events: list[dict]
    run_id: str | None
    workflow: str | None
    command: dict | None
    source: str


@dataclass
class ImportReport:
    """What `import_recordings` did: events stored, duplicates skipped, events rejected."""

    stored: int = 0
    duplicates: int = 0
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (file:line, reason)
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    files: int = 0


def start_order(events: Iterable[dict]) -> list[dict]:
    """Events sorted by start, then event id: the one order of a recording."""
    return sorted(events, key=lambda e: (e.get("started_at", 0), str(e.get("event_id", ""))))


def safe_name(text: str) -> str:
    """`text` fit for a file name: runs of anything but letters, digits, `.`, `_`, `-` become
    `_`; never empty, never a hidden or relative name, at most 100 characters."""
    cleaned = _UNSAFE.sub("_", text).strip(".")[:_SAFE_PART_CHARS]
    return cleaned or "_"


def command_of(events: Sequence[Mapping[str, Any]]) -> dict | None:
    """The recorded command from the first event whose tags hold one, parsed back.

    `argv` is the list of arguments, or None when it was cut to fit the tag limit (then
    `truncated` is True): an argv that is not whole must not be run again.
    """
    for event in events:
        tags = event.get("tags")
        if not isinstance(tags, Mapping) or not any(
                k in tags for k in (ARGV_TAG, CWD_TAG, EXECUTABLE_TAG)):
            continue
        argv, truncated = parse_argv(tags.get(ARGV_TAG))
        command: dict[str, Any] = {"argv": argv, "cwd": tags.get(CWD_TAG),
                                   "executable": tags.get(EXECUTABLE_TAG)}
        if truncated:
            command["truncated"] = True
        return command
    return None


def _one(values: set[str]) -> str | None:
    return next(iter(values)) if len(values) == 1 else None


def is_step(event: Mapping[str, Any]) -> bool:
    """False for a run's lifecycle event (`kind: run` start/end): never an expected call."""
    return event.get("kind") != "run"


def _recording(events: list[dict], source: str) -> Recording:
    """The steps of `events` in start order; the run's facts (run id, workflow, the command
    in the tags) are read from every event, lifecycle ones included."""
    everything = start_order(events)
    events = [event for event in everything if is_step(event)]
    return Recording(events=events,
                     run_id=_one({str(e.get("run_id")) for e in everything}),
                     workflow=_one({str(e.get("workflow")) for e in everything}),
                     command=command_of(everything), source=source)


# -- files ----------------------------------------------------------------------------------

def parse_file(path: Path) -> tuple[list[tuple[str, dict]], list[tuple[str, str]]]:
    """Every event of a file as (`file:line`, event) and every problem as (`file:line`, reason).

    The file is read as `tracelab validate` reads it (`tracelab.event_files`): JSON Lines
    (blank lines ignored), one JSON array of events (`file:[index]`) or one event; each event
    is checked as the ingester checks it: `validate()` and `MAX_EVENT_BYTES`.
    """
    good: list[tuple[str, dict]] = []
    bad: list[tuple[str, str]] = []
    for where, item, parse_problem, size in read_events(path.read_bytes()):
        problems = [parse_problem] if parse_problem else validate(item)
        if not problems:
            problems = size_problems(item, size)
        if problems:
            bad.append((f"{path}:{where}", "; ".join(problems)))
        else:
            good.append((f"{path}:{where}", item))  # type: ignore[arg-type]
    return good, bad


def _load_file(path: Path) -> Recording:
    try:
        good, bad = parse_file(path)
    except OSError as exc:
        raise RecordingError(f"cannot read the recording {path}: {exc.strerror or exc}") from None
    if bad:
        where, reason = bad[0]
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise RecordingError(f"{where}: invalid event: {reason}{more}")
    if not good:
        raise RecordingError(f"{path}: the file holds no events")
    return _recording([event for _, event in good], str(path))


# -- the store ------------------------------------------------------------------------------

def run_events(run_id: str, *, layout: Any = None) -> list[dict]:
    """Every stored event of one run, payloads included, as contract objects in start order.

    Raises KeyError naming the run when the store holds none of it.
    """
    from tracelab.store import query

    light = query.execution_events(run_id, layout=layout)
    events: list[dict] = []
    for workflow in sorted(set(light["workflow"])):
        frame = query.events(workflow, run_id=run_id, payloads=True, layout=layout)
        events.extend(_frame_events(frame))
    return start_order(events)


def _frame_events(frame: Any) -> list[dict]:
    from tracelab.store.query import _is_missing
    from tracelab.store.schema import row_to_event

    out = []
    started = frame["started_at"]
    for position, row in enumerate(frame.to_dict("records")):
        row["started_at"] = int(started.iloc[position].value)
        row = {k: (None if _is_missing(v) else v) for k, v in row.items()}
        for key in ("status_code", "pid", "schema"):
            if row.get(key) is not None:
                row[key] = int(row[key])
        out.append(row_to_event(row, row["workflow"]))
    return out


def load_recording(source: str | Path, *, layout: Any = None) -> Recording:
    """A recording from an existing file (JSON Lines, or a JSON array), else a run id in the
    store; `RecordingError` when it is neither or the file holds an invalid event."""
    path = Path(source)
    if path.is_file():
        return _load_file(path)
    if path.exists():
        raise RecordingError(f"{source}: not a file of events")
    text = str(source)
    try:
        events = run_events(text, layout=layout)
    except KeyError as exc:
        raise RecordingError(f"{text!r} is neither a recording file nor a run id in the store: "
                             f"{exc.args[0]}") from None
    return _recording(events, f"run:{text}")


def write_recording(events: Iterable[dict], path: Path) -> Path:
    """Write events as JSON Lines in start order, atomically (a reader never sees half)."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    handle = tempfile.NamedTemporaryFile("wb", dir=directory, prefix=f".{path.name}.",
                                         suffix=".tmp", delete=False)
    try:
        with handle:
            for event in start_order(events):
                handle.write(orjson.dumps(event) + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
    return path


def default_path(workflow: str, run_id: str) -> Path:
    """`<workflow>-<run_id>.jsonl` in the working directory, unsafe characters replaced."""
    return Path(f"{safe_name(workflow)}-{safe_name(run_id)}.jsonl")


def export_run(run_id: str, path: Path | None = None, *, layout: Any = None) -> Path:
    """Write one stored run as a recording; `RecordingError` for a run the store lacks."""
    try:
        events = run_events(run_id, layout=layout)
    except KeyError as exc:
        raise RecordingError(str(exc.args[0])) from None
    if path is None:
        workflows = sorted({e["workflow"] for e in events})
        path = default_path("+".join(workflows), run_id)
    return write_recording(events, Path(path))


def import_recordings(paths: Iterable[str | Path], *, layout: Any = None) -> ImportReport:
    """Store the events of recording files, each once (the writer dedupes by `event_id`).

    Invalid lines are rejected with their reason and `file:line`; the valid events of the
    same file are stored regardless.
    """
    from tracelab.store.writer import StoreWriter

    report = ImportReport()
    writer: StoreWriter | None = None
    for name in paths:
        path = Path(name)
        try:
            good, bad = parse_file(path)
        except OSError as exc:
            report.unreadable.append((str(path), f"cannot read: {exc.strerror or exc}"))
            continue
        report.files += 1
        report.rejected.extend(bad)
        if not good:
            continue
        if writer is None:
            writer = StoreWriter(layout)
        where = {id(event): place for place, event in good}
        written = writer.write([event for _, event in good])
        report.stored += written.written
        report.duplicates += written.duplicates
        report.rejected.extend((where.get(id(event), str(path)), reason)
                               for event, reason in written.rejected)
    return report


# -- replays of a run -----------------------------------------------------------------------

REPLAY_OF_TAG = "replay_of"


def replays_of(run_id: str, *, layout: Any = None) -> list[str]:
    """The run ids tagged `replay_of=<run_id>` (replays of that run), oldest first, in any
    workflow (`tracelab replay --workflow` may have named another)."""
    from tracelab.store import query

    found: list[tuple[Any, str]] = []
    for workflow in query.workflows(layout=layout)["workflow"].tolist():
        frame = query.executions(workflow, tags={REPLAY_OF_TAG: run_id}, layout=layout)
        found.extend(zip(frame["started_at"].tolist(), frame["run_id"].tolist()))
    return [run for _, run in sorted(found)]
