"""Merging a partition's small files into one, keeping every event exactly once.

The ingester writes one file per partition per flush, so a busy day leaves thousands of small
files that slow every scan. Compaction reads a partition's live files (through the query
layer), drops any duplicate `event_id` defensively, sorts by run and start time so a run's
rows share row groups, and hands the result to `StoreWriter.replace`, whose journal makes the
swap atomic for TraceLab's readers and recoverable after a crash. It all happens under the
partition's lock, which with leases (a layout resolved with a Redis URL) holds across hosts,
so a merge never races an ingester on another host; a merge whose lease was lost publishes
nothing and the partition is left for the next run.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from tracelab.store.layout import (DATA_SUFFIX, INDEX_PREFIX, INDEX_SUFFIX, NAME_COLUMN,
                                   StoreLayout, resolve_layout)
from tracelab.store.leases import LeaseLost
from tracelab.store.query import read_table
from tracelab.store.writer import StoreWriter

log = logging.getLogger("tracelab.compact")

STALE_TEMP_SECONDS = 3600
# Size-tiered merging of small files (what writers do on their own after each write):
# files fall in tiers of 4x size from 256 KiB; eight files in one tier become one file of the
# next tier, so each event is rewritten O(log n) times, never once per flush.
TIER_BASE_BYTES = 256 * 1024
TIER_FACTOR = 4
TIER_FILES = 8
TIER_MAX_BYTES = 512 * 1024 * 1024


@dataclass
class CompactionReport:
    partitions: int = 0
    files_before: int = 0
    files_after: int = 0
    events: int = 0
    duplicates_dropped: int = 0
    merged: list[tuple[str, str]] = field(default_factory=list)
    # Partitions left as they were because the lease was lost mid-merge (run again).
    lease_lost: list[tuple[str, str]] = field(default_factory=list)


def compact(workflow: str | None = None, date: str | None = None, *, min_files: int = 2,
            layout: StoreLayout | None = None,
            writer: StoreWriter | None = None) -> CompactionReport:
    """Merge every partition (or those of one workflow / one date) that has `min_files`+ files."""
    layout = layout or resolve_layout()
    writer = writer or StoreWriter(layout)
    report = CompactionReport()
    writer.recover_all()
    # A partition is a workflow name (the files' own, never a decoded directory) and a day in
    # the directory its files are really in; both the lock and the merged file follow them.
    partitions: dict[tuple[str, str, str], int] = {}
    for data_file in layout.list_files(workflow):
        if date is None or data_file.date == date:
            key = (data_file.workflow, data_file.date, data_file.directory)
            partitions[key] = partitions.get(key, 0) + 1
    for (wf, day, directory), count in sorted(partitions.items()):
        report.partitions += 1
        report.files_before += count
        if count < min_files:
            report.files_after += count
            continue
        try:
            with writer.partition_lock(wf, day):
                writer.recover(wf, day, directory)
                files = [f for f in layout.list_dir(directory)[0] if f.workflow == wf]
                if len(files) < min_files:  # another compaction got here first
                    report.files_after += len(files)
                    continue
                events, dropped = _merge(writer, wf, day, [f.path for f in files])
                report.duplicates_dropped += dropped
                report.events += events
                report.files_after += 1
                report.merged.append((wf, day))
                _remove_leftovers(layout, directory)
        except LeaseLost as exc:
            log.warning("left %s %s as it was: %s", wf, day, exc)
            report.files_after += count
            report.lease_lost.append((wf, day))
            continue
        log.info("compacted %s %s: %d files -> 1 (%d events)", wf, day, len(files), events)
    return report


def compact_tiered(writer: StoreWriter, workflow: str, date: str) -> int:
    """Merge one partition's small files tier by tier; returns how many merges it made.

    Cheap enough to run after every write: it only lists the partition unless a tier is full.
    """
    layout = writer.layout
    merges = 0
    with writer.partition_lock(workflow, date):
        files, _ = layout.list_partition(workflow, date)
        tiers: dict[int, list[str]] = {}
        for data_file in files:
            if data_file.size < TIER_MAX_BYTES:
                tier, size = 0, TIER_BASE_BYTES
                while data_file.size >= size:
                    tier, size = tier + 1, size * TIER_FACTOR
                tiers.setdefault(tier, []).append(data_file.path)
        for tier in sorted(tiers):
            if len(tiers[tier]) >= TIER_FILES:
                _merge(writer, workflow, date, tiers[tier])
                merges += 1
    return merges


def _merge(writer: StoreWriter, workflow: str, date: str, paths: list[str]) -> tuple[int, int]:
    """Replace `paths` by one sorted, deduplicated file; returns (events, duplicates dropped)."""
    if not paths:
        return 0, 0
    table = read_table(writer.layout, paths)
    # Rows of files older than the name column get the name they were read under.
    names = table[NAME_COLUMN]
    if names.null_count:
        table = table.set_column(table.schema.get_field_index(NAME_COLUMN), NAME_COLUMN,
                                 pc.coalesce(names, pa.scalar(workflow, pa.string())))
    deduped = _dedupe(table)
    deduped = deduped.sort_by([("run_id", "ascending"), ("started_at", "ascending")])
    writer.replace(workflow, date, deduped, paths)
    return deduped.num_rows, table.num_rows - deduped.num_rows


def _dedupe(table: pa.Table) -> pa.Table:
    """Keep the first row of each event_id (there should be none to drop)."""
    if table.num_rows == 0:
        return table
    indices = pa.table({"event_id": table["event_id"],
                        "i": pa.array(range(table.num_rows), pa.int64())})
    first = indices.group_by("event_id", use_threads=False).aggregate([("i", "min")])["i_min"]
    if len(first) == table.num_rows:
        return table
    return table.take(first)


def _remove_leftovers(layout: StoreLayout, directory: str) -> None:
    """Temporary files a killed writer left behind are invisible but take space, and so do
    event indexes whose data file is gone (a crash between writing the two)."""
    if not layout.is_local:
        return
    now = time.time()
    try:
        names = set(os.listdir(directory))
    except FileNotFoundError:
        return
    for name in names:
        path = os.path.join(directory, name)
        try:
            if name.startswith(".") and name.endswith(".tmp"):
                if now - os.stat(path).st_mtime > STALE_TEMP_SECONDS:
                    os.unlink(path)
            elif name.startswith(INDEX_PREFIX) and name.endswith(INDEX_SUFFIX):
                data = name[len(INDEX_PREFIX):-len(INDEX_SUFFIX)] + DATA_SUFFIX
                if data not in names and f".{data}.tmp" not in names \
                        and now - os.stat(path).st_mtime > STALE_TEMP_SECONDS:
                    os.unlink(path)
        except FileNotFoundError:
            pass
