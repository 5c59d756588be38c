"""Deleting old executions: `tracelab retain --older-than 30d` and `TRACELAB_RETAIN`.

An execution is older than the limit when it STARTED before the cutoff (now minus the limit),
so retention never leaves half an execution behind:

- a partition whose whole day ends at or before the cutoff holds only events that started
  before it, hence only events of old executions: its files are deleted
  (`StoreWriter.drop_files`);
- an old execution that goes on past the cutoff also has rows in kept partitions: the files
  holding them are rewritten without those rows through `StoreWriter.replace` (journalled like
  compaction, so a crash at any point is finished by the next writer of the partition).

Kept partitions are cleaned before whole partitions go, so a run killed halfway can be run
again: the old executions are still known from the partitions not deleted yet. Every change to
a partition happens under `partition_lock` (host-wide flock, plus the Redis lease when the
layout has leases), and what a partition holds is listed again under that lock: an event a live
writer adds while retention runs is in a file that is kept whole or deleted whole.

`/metrics` counters never go down: before a file goes, its steps per (target, status) are
recorded in `<root>/_meta/retention-deleted.json` (under the store-wide lock `retention-tally`).
A recorded file counts as deleted only once it is no longer live, so a reader that lists the
live files and then reads the tally counts every event exactly once (`deleted_counts`).
Entries older than a day are folded into settled totals by the next retention run.
"""
from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from tracelab.config import ConfigError, env_str, host_id
from tracelab.store.layout import NAME_COLUMN, DataFile, StoreLayout, resolve_layout
from tracelab.store.query import LIFECYCLE_KIND, read_table
from tracelab.store.writer import StoreWriter

log = logging.getLogger("tracelab.retention")

META_DIR = "_meta"
TALLY_NAME = "retention-deleted.json"
DAILY_NAME = "retention-daily.json"
TALLY_LOCK = "retention-tally"
DAILY_LOCK = "retention-daily"
# How often the daily thread asks whether today's run is done (cheap: one small read).
DAILY_CHECK_SECONDS = 3600.0
# A tally entry is folded into the totals this long after its file was deleted: by then no
# reader still holds a listing made before the deletion.
SETTLE_SECONDS = 86_400.0

_AGE = re.compile(r"([0-9]+)([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3_600, "d": 86_400, "w": 604_800}
_AGE_HELP = "a positive whole number and a unit: s, m, h, d or w (30d, 12h, 90m, 3600s, 2w)"
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
CountKey = tuple[str, str]


def parse_age(text: str) -> timedelta:
    """`30d`, `12h`, `90m`, `3600s`, `2w` as a timedelta; anything else a ValueError saying
    what is accepted (zero too: `0d` would delete everything at once)."""
    match = _AGE.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"{text!r} is not an age: use {_AGE_HELP}")
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds == 0:
        raise ValueError(f"{text!r} is zero: use {_AGE_HELP}")
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise ValueError(f"{text!r} is too long an age: use at most "
                         f"{timedelta.max.days}d") from None


def retain_setting() -> timedelta | None:
    """`TRACELAB_RETAIN` (same syntax as `--older-than`), None when unset; a bad value is a
    ConfigError naming the variable, since it would otherwise delete too much or nothing."""
    raw = env_str("TRACELAB_RETAIN")
    if raw is None:
        return None
    try:
        return parse_age(raw)
    except ValueError as exc:
        raise ConfigError(f"TRACELAB_RETAIN: {exc}") from None


@dataclass
class RetentionReport:
    """What `retain` deleted (or, with `dry_run`, would delete)."""

    cutoff: datetime
    dry_run: bool = False
    executions: int = 0
    events: int = 0
    files: int = 0
    partitions_deleted: list[tuple[str, str]] = field(default_factory=list)
    partitions_rewritten: list[tuple[str, str]] = field(default_factory=list)


def _utc(now: datetime | None) -> datetime:
    """`now` in UTC (naive times are taken as UTC), the clock when None: days are UTC days."""
    if now is None:
        return datetime.now(timezone.utc)
    return now.replace(tzinfo=timezone.utc) if now.tzinfo is None \
        else now.astimezone(timezone.utc)


def retain(older_than: timedelta, workflow: str | None = None, *,
           layout: StoreLayout | None = None, writer: StoreWriter | None = None,
           now: datetime | None = None, dry_run: bool = False) -> RetentionReport:
    """Delete every execution (of `workflow`, or all) that started before `now - older_than`."""
    layout = layout or (writer.layout if writer is not None else resolve_layout())
    writer = writer or StoreWriter(layout)
    now = _utc(now)
    try:
        cutoff = now - older_than
    except OverflowError:
        cutoff = datetime.min.replace(tzinfo=timezone.utc)
    report = RetentionReport(cutoff, dry_run)
    if cutoff <= _EPOCH:
        return report
    cutoff_ns = (cutoff - _EPOCH) // timedelta(microseconds=1) * 1_000
    if not dry_run:
        writer.recover_all()
        _settle(layout)
    by_workflow: dict[str, dict[tuple[str, str], list[DataFile]]] = {}
    for data_file in layout.list_files(workflow):
        by_workflow.setdefault(data_file.workflow, {}).setdefault(
            (data_file.date, data_file.directory), []).append(data_file)
    cutoff_day = cutoff.strftime("%Y-%m-%d")
    for name in sorted(by_workflow):
        _retain_workflow(layout, writer, name, by_workflow[name], cutoff_ns, cutoff_day,
                         report)
    return report


def _retain_workflow(layout: StoreLayout, writer: StoreWriter, workflow: str,
                     partitions: dict[tuple[str, str], list[DataFile]], cutoff_ns: int,
                     cutoff_day: str, report: RetentionReport) -> None:
    old_runs: set[str] = set()
    for (day, directory) in partitions:
        if day < cutoff_day:
            old_runs.update(_run_ids(layout, workflow, directory))
        elif day == cutoff_day:
            before = ds.field("started_at") < pa.scalar(cutoff_ns, pa.timestamp("ns", "UTC"))
            old_runs.update(_run_ids(layout, workflow, directory, before))
    if not old_runs:
        return
    report.executions += len(old_runs)
    wanted = pa.array(sorted(old_runs), pa.string())
    # Kept partitions first: while old partitions exist, a rerun still knows the old runs.
    for (day, directory) in sorted(partitions):
        if day >= cutoff_day and _run_ids(layout, workflow, directory,
                                          ds.field("run_id").isin(wanted)):
            _rewrite(layout, writer, workflow, day, directory, wanted, report)
    for (day, directory) in sorted(partitions):
        if day < cutoff_day:
            _drop(layout, writer, workflow, day, directory, report)


def _run_ids(layout: StoreLayout, workflow: str, directory: str,
             where: pc.Expression | None = None) -> set[str]:
    """Run ids of a partition's rows (matching `where`), read without its lock: a writer's
    merge may remove a listed file before it is read, so the listing is taken again then."""
    for attempt in range(5):
        paths = [f.path for f in _live(layout, workflow, directory)]
        if not paths:
            return set()
        try:
            column = read_table(layout, paths, ["run_id"], where)["run_id"]
        except FileNotFoundError:
            if attempt == 4:
                raise
            continue
        return {r for r in pc.unique(column).to_pylist() if r is not None}
    return set()


def _live(layout: StoreLayout, workflow: str, directory: str) -> list[DataFile]:
    """The partition's files as they are now (called under its lock)."""
    return [f for f in layout.list_dir(directory)[0] if f.workflow == workflow]


def _drop(layout: StoreLayout, writer: StoreWriter, workflow: str, day: str, directory: str,
          report: RetentionReport) -> None:
    """Delete a whole partition that holds only events older than the cutoff."""
    with writer.partition_lock(workflow, day):
        if not report.dry_run:
            writer.recover(workflow, day, directory)
        files = _live(layout, workflow, directory)
        if not files:
            return
        counts: dict[str, Counter] = {}
        for data_file in files:
            table = read_table(layout, [data_file.path], ["kind", "target", "status"])
            counts[data_file.path] = _step_counts(table)
            report.events += sum(counts[data_file.path].values())
        report.files += len(files)
        report.partitions_deleted.append((workflow, day))
        if report.dry_run:
            return
        _record(layout, counts)
        writer.drop_files(workflow, day, [f.path for f in files])
        if layout.is_local:
            try:
                os.rmdir(directory)  # only when empty; writers recreate it under this lock
            except OSError:
                pass
    log.info("retention deleted %s %s: %d files", workflow, day, len(files))


def _rewrite(layout: StoreLayout, writer: StoreWriter, workflow: str, day: str,
             directory: str, wanted: pa.Array, report: RetentionReport) -> None:
    """Remove the rows of old executions from a kept partition, file by file, atomically."""
    with writer.partition_lock(workflow, day):
        if not report.dry_run:
            writer.recover(workflow, day, directory)
        kept: list[pa.Table] = []
        counts: dict[str, Counter] = {}
        for data_file in _live(layout, workflow, directory):
            table = read_table(layout, [data_file.path])
            old = pc.fill_null(pc.is_in(table["run_id"], value_set=wanted), False)
            removed = table.filter(old)
            if removed.num_rows == 0:
                continue
            counts[data_file.path] = _step_counts(removed)
            kept.append(table.filter(pc.invert(old)))
            report.events += sum(counts[data_file.path].values())
        if not counts:
            return
        report.files += len(counts)
        report.partitions_rewritten.append((workflow, day))
        if report.dry_run:
            return
        _record(layout, counts)
        table = pa.concat_tables(kept)
        if table.num_rows == 0:
            writer.drop_files(workflow, day, list(counts))
            return
        names = table[NAME_COLUMN]  # rows of files older than the name column
        if names.null_count:
            table = table.set_column(table.schema.get_field_index(NAME_COLUMN), NAME_COLUMN,
                                     pc.coalesce(names, pa.scalar(workflow, pa.string())))
        table = table.sort_by([("run_id", "ascending"), ("started_at", "ascending")])
        writer.replace(workflow, day, table, list(counts))
    log.info("retention rewrote %s %s: %d files", workflow, day, len(counts))


def _step_counts(table: pa.Table) -> Counter:
    """Steps (lifecycle events left out, as `query.target_counts` does) per (target, status)."""
    steps = table.filter(pc.invert(pc.fill_null(pc.equal(table["kind"], LIFECYCLE_KIND),
                                                False)))
    out: Counter = Counter()
    if steps.num_rows == 0:
        return out
    grouped = steps.group_by(["target", "status"], use_threads=False) \
        .aggregate([("kind", "count", pc.CountOptions(mode="all"))])
    for target, status, n in zip(grouped["target"].to_pylist(), grouped["status"].to_pylist(),
                                 grouped["kind_count"].to_pylist()):
        out[(target or "", status or "")] += n
    return out


# -- the tally of deleted events (what keeps /metrics monotonic) ---------------------------

def _meta_path(layout: StoreLayout, name: str) -> str:
    return f"{layout.root}/{META_DIR}/{name}"


def _relative(layout: StoreLayout, path: str) -> str:
    """A data file's path below the store root, so a moved store keeps its tally."""
    return path[len(layout.root) + 1:] if path.startswith(layout.root + "/") else path


def _read_json(layout: StoreLayout, name: str) -> dict | None:
    """A metadata file's object; None when it does not exist or is not one."""
    path = _meta_path(layout, name)
    if layout.fs.get_file_info(path).type == pafs.FileType.NotFound:
        return None
    try:
        with layout.fs.open_input_stream(path) as stream:
            value = json.loads(stream.read())
    except FileNotFoundError:
        return None
    except ValueError:
        log.warning("ignoring the unreadable %s", path)
        return None
    return value if isinstance(value, dict) else None


def _write_json(layout: StoreLayout, name: str, value: dict) -> None:
    """Replace a small metadata file whole, through the writer (the one code that writes
    store files): atomic on a disk and on object storage alike."""
    data = json.dumps(value, separators=(",", ":"), sort_keys=True).encode()
    StoreWriter(layout).put_bytes(_meta_path(layout, name), data)


def _load_tally(layout: StoreLayout) -> dict:
    tally = _read_json(layout, TALLY_NAME) or {}
    settled = tally.get("settled") if isinstance(tally.get("settled"), list) else []
    files = tally.get("files") if isinstance(tally.get("files"), dict) else {}
    return {"settled": settled, "files": files}


def _record(layout: StoreLayout, counts: dict[str, Counter]) -> None:
    """Record the steps of files about to be deleted (or rewritten without some rows), before
    anything is deleted: a crash afterwards leaves the files live, and live files never count
    as deleted. Recording a path again replaces its entry (a rerun after a crash)."""
    with layout.lock(TALLY_LOCK):
        tally = _load_tally(layout)
        at = time.time()
        for path, counter in counts.items():
            tally["files"][_relative(layout, path)] = {
                "at": at, "counts": [[t, s, n] for (t, s), n in sorted(counter.items())]}
        _write_json(layout, TALLY_NAME, tally)


def _settle(layout: StoreLayout) -> None:
    """Fold entries older than SETTLE_SECONDS into the totals (files that are gone) or drop
    them (files still there: a run that crashed before deleting; it will be done again)."""
    with layout.lock(TALLY_LOCK):
        tally = _load_tally(layout)
        horizon = time.time() - SETTLE_SECONDS
        settled = _counter(tally["settled"])
        changed = False
        for path, entry in list(tally["files"].items()):
            if not isinstance(entry, dict) or entry.get("at", 0) < horizon:
                changed = True
                del tally["files"][path]
                full = f"{layout.root}/{path}"
                if isinstance(entry, dict) and \
                        layout.fs.get_file_info(full).type == pafs.FileType.NotFound:
                    settled.update(_counter(entry.get("counts", [])))
        if changed:
            tally["settled"] = [[t, s, n] for (t, s), n in sorted(settled.items())]
            _write_json(layout, TALLY_NAME, tally)


def _counter(rows: Iterable) -> Counter:
    out: Counter = Counter()
    for row in rows:
        if isinstance(row, list) and len(row) == 3:
            out[(str(row[0]), str(row[1]))] += int(row[2])
    return out


def deleted_counts(layout: StoreLayout, live: Iterable[str],
                   listed_before: Iterable[str] | None = None) -> dict[CountKey, int] | None:
    """Steps retention deleted, per (target, status) ("" for none), given the live data files
    a reader counted as stored: a recorded file that is still live is not deleted (yet).

    List the live files, count them, list again (`live`), then call this: stored + deleted
    never goes down. With `listed_before` (the first listing), None when a file retention
    recorded vanished between the two listings: whether the count saw it is unknown, so the
    caller counts again."""
    tally = _load_tally(layout)
    live_relative = {_relative(layout, p) for p in live}
    if listed_before is not None:
        vanished = {_relative(layout, p) for p in listed_before} - live_relative
        if vanished & set(tally["files"]):
            return None
    total = _counter(tally["settled"])
    for path, entry in tally["files"].items():
        if path not in live_relative and isinstance(entry, dict):
            total.update(_counter(entry.get("counts", [])))
    return dict(total)


# -- TRACELAB_RETAIN: once a day per store --------------------------------------------------

def run_daily(layout: StoreLayout, older_than: timedelta, *,
              now: datetime | None = None) -> RetentionReport | None:
    """Run `retain` unless it already ran today (UTC) on this store; None when it did.

    The day is claimed in `<root>/_meta/retention-daily.json` under the store-wide lock
    `retention-daily` (the Redis lease too when the layout has leases), before the run, so N
    ingesters on N hosts run it once between them; a run that fails is not retried that day.
    """
    now = _utc(now)
    today = now.strftime("%Y-%m-%d")
    with layout.lock(DAILY_LOCK):
        marker = _read_json(layout, DAILY_NAME) or {}
        if marker.get("day") == today:
            return None
        _write_json(layout, DAILY_NAME, {"day": today, "host": host_id(),
                                         "older_than_s": older_than.total_seconds(),
                                         "at": now.isoformat()})
    report = retain(older_than, layout=layout, now=now)
    log.info("daily retention (older than %s): %d executions, %d events deleted",
             older_than, report.executions, report.events)
    return report


def start_daily(layout: StoreLayout, stop: threading.Event) -> threading.Thread | None:
    """A daemon thread applying `TRACELAB_RETAIN` once a day until `stop` is set; None when
    the variable is unset. A bad value raises ConfigError here, before anything starts."""
    older_than = retain_setting()
    if older_than is None:
        return None

    def loop() -> None:
        while not stop.is_set():
            try:
                run_daily(layout, older_than)
            except Exception as exc:  # noqa: BLE001 - retention must never stop the ingester
                log.warning("daily retention failed: %s", exc)
            stop.wait(DAILY_CHECK_SECONDS)

    thread = threading.Thread(target=loop, name="tracelab-retention", daemon=True)
    thread.start()
    return thread
