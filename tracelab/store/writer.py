"""The only code that creates, replaces or deletes store files.

Exactly-once rests on three rules kept here:

1. A file becomes visible only whole: it is written under a hidden temporary name, fsynced,
   renamed into place and its directory fsynced (on object storage it is serialized in
   memory and sent in one PUT, which is already atomic).
2. An event's partition is a function of the event itself (`workflow`, UTC day of
   `started_at`), so a redelivered event always lands in the partition that already holds it.
   Before writing, under that partition's lock, the writer checks the partition's
   `event_id`s and drops any already stored. The ids are cached per partition and refreshed
   from the file listing, so another ingester's or a compaction's files are seen. The lock is
   host-wide (flock), and store-wide when the layout has leases: then `ensure_held()` is
   called right before each publish (rename or PUT), and a writer whose lease lapsed or was
   taken over raises `LeaseLost` having published nothing. The lease's fencing token is in
   the file's name (`-t<token>`) and its Parquet metadata (`tracelab.lease_token`).
3. Replacing files (compaction) is journalled: merged file under a temporary name, journal,
   rename, delete the old files, delete the journal. A crash at any step is finished by the
   next writer that locks the partition; readers use the journal to skip replaced files.
"""
from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from tracelab.store import event_index
from tracelab.store.layout import (DATA_SUFFIX, JOURNAL_PREFIX, StoreLayout, date_of,
                                   index_path, read_journal, resolve_layout)
from tracelab.store.locks import FileLock, LeasedLock
from tracelab.store.schema import DICTIONARY_COLUMNS, events_to_table

log = logging.getLogger("tracelab.store")

# The Parquet key-value metadata naming the lease token a file was published under.
TOKEN_METADATA = b"tracelab.lease_token"
ROW_GROUP_SIZE = 16_384
# Min/max statistics only where a filter can use them; on JSON text they cost and never help.
STATISTICS_COLUMNS = ["run_id", "started_at", "latency_ms", "status", "status_code", "service",
                      "source", "kind", "target", "endpoint", "span_id", "error_type", "host"]
PartitionKey = tuple[str, str]


@dataclass
class WriteReport:
    """What one `write()` did: stored rows, dropped duplicates, events Arrow could not hold."""

    written: int = 0
    duplicates: int = 0
    rejected: list[tuple[dict, str]] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    def add(self, other: WriteReport) -> None:
        self.written += other.written
        self.duplicates += other.duplicates
        self.rejected.extend(other.rejected)
        self.files.extend(other.files)


@dataclass
class _PartitionIds:
    files: set[str] = field(default_factory=set)
    ids: set[str] = field(default_factory=set)


class StoreWriter:
    """Writes contract-valid events into the store, durably and without duplicates."""

    def __init__(self, layout: StoreLayout | None = None, *, cached_partitions: int = 64,
                 auto_compact: bool = False, compact_at: int = 8) -> None:
        """`auto_compact` merges a partition's small files once it holds `compact_at` files
        (see `compact.compact_tiered`); long-running writers (the ingester, the spool folder)
        turn it on. Partitions written since the last `compact_touched()` are remembered, so
        a busy writer can raise `compact_at` and catch up when it is idle."""
        self.layout = layout or resolve_layout()
        self.auto_compact = auto_compact
        self.compact_at = compact_at
        self._touched: set[PartitionKey] = set()
        self._writer_id = uuid.uuid4().hex[:12]
        self._seq = 0
        self._ids: OrderedDict[PartitionKey, _PartitionIds] = OrderedDict()
        self._cached_partitions = cached_partitions
        self._locks: dict[PartitionKey, FileLock | LeasedLock] = {}

    # -- public API -------------------------------------------------------------------------

    def partition_lock(self, workflow: str, date: str) -> FileLock | LeasedLock:
        """The partition's lock, shared by every caller in this process (flock is per fd)."""
        key = (workflow, date)
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = self.layout.partition_lock(workflow, date)
        return lock

    def write(self, events: Sequence[dict]) -> WriteReport:
        """Store events not stored yet; returns only once they are durable.

        Events must already be valid by the contract. One that still cannot be stored (Arrow
        cannot hold it, orjson cannot serialize its payload, its workflow cannot name a
        directory) is returned in `rejected` with the reason; the others are written
        regardless. One bad event never makes this raise.
        """
        report = WriteReport()
        groups: dict[PartitionKey, list[int]] = {}
        seen: set[str] = set()
        for index, event in enumerate(events):
            try:
                event_id = event["event_id"]
                key = (event["workflow"], date_of(event["started_at"]))
                if key not in groups:
                    self.layout.partition_dir(*key)  # a name that cannot be a path fails here
                duplicate = event_id in seen
            except Exception as exc:  # noqa: BLE001 - whatever it is, it is this event's
                report.rejected.append((event, _reason("cannot be partitioned", exc)))
                continue
            if duplicate:
                report.duplicates += 1
                continue
            seen.add(event_id)
            groups.setdefault(key, []).append(index)
        for key, indices in groups.items():
            report.add(self._write_partition(key, [events[i] for i in indices]))
        return report

    def replace(self, workflow: str, date: str, table: pa.Table, old_paths: Iterable[str]) -> str:
        """Atomically swap `old_paths` of one partition for one file holding `table`.

        The new file goes in the directory the old files are in (the partition's directory
        when there are none), which is not always the one `workflow` encodes to today: a store
        written by an older version may file a long name elsewhere. The caller holds
        `partition_lock(workflow, date)`; the journal makes a crash at any point recoverable
        with neither loss nor double.
        """
        key = (workflow, date)
        old_paths = list(old_paths)
        directories = {p.rsplit("/", 1)[0] for p in old_paths}
        if len(directories) > 1:
            raise ValueError(f"files of several directories cannot be merged: {directories}")
        directory = directories.pop() if directories else self.layout.partition_dir(*key)
        old_names = [p.rsplit("/", 1)[1] for p in old_paths]
        journal = f"{directory}/{JOURNAL_PREFIX}{uuid.uuid4().hex[:12]}.json"
        with self.partition_lock(workflow, date) as lock:
            new_name = self._new_name(lock.token)
            tmp_name = f".{new_name}.tmp"
            table = _with_token(table, lock.token)
            if self.layout.is_local:
                self._write_local(f"{directory}/{tmp_name}", table,
                                  final=f"{directory}/{new_name}")
            # The journal is the commit point (a crash after it rolls forward): published
            # only under the lease; a lost lease leaves nothing but temporary files.
            try:
                lock.ensure_held()
            except BaseException:
                self._discard(f"{directory}/{tmp_name}", index_path(f"{directory}/{new_name}"))
                raise
            self.put_bytes(journal, json.dumps(
                {"new": new_name, "tmp": tmp_name, "old": old_names,
                 "workflow": workflow}).encode())
            if self.layout.is_local:
                os.rename(f"{directory}/{tmp_name}", f"{directory}/{new_name}")
                _fsync_dir(directory)
            else:  # on failure the journal stays: the PUT may have landed unanswered
                self._write_remote(f"{directory}/{new_name}", table, lock)
            self._finish_journal(journal)
            ids = self._ids.get(key)
            if ids is not None:
                replaced = {f"{directory}/{name}" for name in old_names}
                ids.files = (ids.files - replaced) | {f"{directory}/{new_name}"}
        return f"{directory}/{new_name}"

    def recover(self, workflow: str, date: str, directory: str | None = None) -> None:
        """Finish any compaction a crash interrupted in this partition (or in `directory`,
        the place its files really are, for stores filed by an older version)."""
        with self.partition_lock(workflow, date):
            if directory is None:
                _, journals = self.layout.list_partition(workflow, date)
            else:
                _, journals = self.layout.list_dir(directory)
            for journal in journals:
                self._finish_journal(journal)

    def recover_all(self) -> int:
        """Finish every interrupted compaction in the store; returns how many were found.

        Until this runs, TraceLab's readers already skip replaced files, but an outside reader
        (DuckDB, Spark) would see both the merged file and the files it replaced. Each journal
        is finished under the lock of the workflow it names (older journals: of the name its
        directory's files carry), the lock every writer of that partition takes.
        """
        journals = [f for f in self.layout.fs.get_file_info(pafs.FileSelector(
            self.layout.events_root, recursive=True, allow_not_found=True))
            if f.type == pafs.FileType.File and f.base_name.startswith(JOURNAL_PREFIX)]
        for info in journals:
            parsed = self.layout.parse_partition(info.path)
            if parsed is None:
                continue
            directory = info.path.rsplit("/", 1)[0]
            entry = read_journal(self.layout.fs, info.path)
            workflow = entry.get("workflow") if entry is not None else None
            if not isinstance(workflow, str):
                files, _ = self.layout.list_dir(directory)
                workflow = files[0].workflow if files else parsed[0]
            self.recover(workflow, parsed[1], directory)
        return len(journals)

    def drop_files(self, workflow: str, date: str, paths: Iterable[str]) -> None:
        """Delete data files of one partition, each with its event index (retention).

        Under the partition's lock, so no writer or compaction of the partition is midway;
        each data file goes before its index (an index alone is an invisible leftover that
        compaction removes). The lease is checked first: a holder that lost it deletes nothing.
        """
        key = (workflow, date)
        lock = self.partition_lock(workflow, date)
        with lock:
            lock.ensure_held()
            directories = set()
            for path in paths:
                self._delete(path)
                self._delete(index_path(path))
                directories.add(path.rsplit("/", 1)[0])
            if self.layout.is_local:
                for directory in directories:
                    _fsync_dir(directory)
            self._ids.pop(key, None)  # the deleted ids must not count as stored any more

    # -- internals --------------------------------------------------------------------------

    def _write_partition(self, key: PartitionKey, events: list[dict]) -> WriteReport:
        report = WriteReport()
        with self.partition_lock(*key) as lock:
            known = self._known_ids(key)
            keep = [i for i, e in enumerate(events) if e["event_id"] not in known]
            report.duplicates += len(events) - len(keep)
            if not keep:
                return report
            if len(keep) < len(events):
                events = [events[i] for i in keep]
            table, rejected = _to_table(events)
            report.rejected.extend(rejected)
            if table is None or table.num_rows == 0:
                return report
            path = f"{self.layout.partition_dir(*key)}/{self._new_name(lock.token)}"
            table = _with_token(table, lock.token)
            if self.layout.is_local:
                self._write_local(path, table, atomic=True, lock=lock)
            else:
                self._write_remote(path, table, lock)
            entry = self._ids[key]
            entry.files.add(path)
            if rejected:
                entry.ids.update(table.column("event_id").to_pylist())
            else:  # every event is in the table: their ids are already Python strings
                entry.ids.update([e["event_id"] for e in events])
            report.written += table.num_rows
            report.files.append(path)
            self._touched.add(key)
            if self.auto_compact and len(entry.files) >= self.compact_at:
                self._compact_stored(key)
        return report

    def _compact_stored(self, key: PartitionKey) -> int:
        """Merge a partition's small files (after a write, or when idle); returns how many
        merges. What was written is stored by then, so a lease lost meanwhile only postpones
        the merge (to the next write or idle pass): it is not the caller's failure."""
        from tracelab.store.compact import compact_tiered

        if self.layout.leases is None:
            return compact_tiered(self, *key)
        from tracelab.store.leases import LeaseLost

        try:
            return compact_tiered(self, *key)
        except LeaseLost as exc:
            self._touched.add(key)
            log.warning("merge of %s %s postponed: %s", key[0], key[1], exc)
            return 0

    @property
    def has_uncompacted(self) -> bool:
        """True when partitions were written since the last `compact_touched()`."""
        return bool(self._touched)

    def compact_touched(self) -> int:
        """Merge small files in the partitions written since the last call (when idle)."""
        touched, self._touched = self._touched, set()
        return sum(self._compact_stored(key) for key in sorted(touched))

    def _known_ids(self, key: PartitionKey) -> set[str]:
        """The partition's stored event ids, refreshed against its current file listing."""
        entry = self._ids.get(key)
        if entry is not None and self._unchanged_local(key, entry):
            self._ids.move_to_end(key)
            return entry.ids
        files, journals = self.layout.list_partition(*key)
        if journals:
            for journal in journals:
                self._finish_journal(journal)
            files, _ = self.layout.list_partition(*key)
        live = {f.path for f in files}
        entry = self._ids.get(key)
        if entry is None or not entry.files <= live:
            entry = _PartitionIds()
        new = sorted(live - entry.files)
        if new:
            from tracelab.store.query import read_table  # pandas: only when there is reading

            ids = read_table(self.layout, new, ["event_id"]).column("event_id")
            entry.ids.update(ids.to_pylist())
            entry.files.update(new)
        self._ids[key] = entry
        self._ids.move_to_end(key)
        while len(self._ids) > self._cached_partitions:
            self._ids.popitem(last=False)
        return entry.ids

    def _unchanged_local(self, key: PartitionKey, entry: _PartitionIds) -> bool:
        """True when a local partition holds exactly the data files the cache knows and no
        journal: one `listdir` instead of a full listing (the common case of a writer alone
        in its partitions). Anything else, including any doubt, takes the full path."""
        if not self.layout.is_local:
            return False
        directory = self.layout.partition_dir(*key)
        try:
            names = os.listdir(directory)
        except OSError:
            return False
        data = set()
        for name in names:
            if name.startswith(JOURNAL_PREFIX):
                return False
            if not name.startswith((".", "_")) and name.endswith(DATA_SUFFIX):
                data.add(f"{directory}/{name}")
        return data == entry.files

    def _new_name(self, token: int | None = None) -> str:
        """`part-<stamp>-<writer>-<seq>[-t<lease token>].parquet`: unique without any
        coordination, and naming the fencing token it was published under, if any."""
        self._seq += 1
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        fence = "" if token is None else f"-t{token}"
        return f"part-{stamp}-{self._writer_id}-{self._seq:06d}{fence}{DATA_SUFFIX}"

    def _write_local(self, path: str, table: pa.Table, atomic: bool = False,
                     final: str | None = None,
                     lock: FileLock | LeasedLock | None = None) -> None:
        """Write `path` durably (under a temporary name first when `atomic`, renamed into
        place once `lock.ensure_held()` passes), and the event index of the file that will
        be live at `final` (default: `path`)."""
        directory, name = path.rsplit("/", 1)
        _makedirs_durable(directory)
        target = f"{directory}/.{name}.tmp" if atomic else path
        _write_parquet(table, target)
        fd = os.open(target, os.O_RDONLY)
        try:
            os.fsync(fd)
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        self._write_index(final or path, table, size)
        if atomic:
            if lock is not None:
                try:
                    lock.ensure_held()
                except BaseException:
                    self._discard(target, index_path(final or path))
                    raise
            os.rename(target, path)
        _fsync_dir(directory)

    def _write_remote(self, path: str, table: pa.Table,
                      lock: FileLock | LeasedLock | None = None) -> None:
        """Serialize the file in memory, check the lease, then send it in one PUT: nothing
        slow sits between the check and the publish."""
        sink = pa.BufferOutputStream()
        _write_parquet(table, sink)
        data = sink.getvalue()
        if lock is not None:
            lock.ensure_held()
        if self.layout.fs.type_name != "s3":  # S3 has no directories: no marker objects
            self.layout.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with self.layout.fs.open_output_stream(path) as out:
            out.write(data)
        self._write_index(path, table, data.size)

    def _write_index(self, data_path: str, table: pa.Table, data_size: int) -> None:
        """The event-id index beside a data file (see `event_index`). Not fsynced and never
        fatal: a lost or torn index only makes `event()` scan that file."""
        path = index_path(data_path)
        try:
            data = event_index.build(table.column("event_id"), ROW_GROUP_SIZE,
                                     data_path.rsplit("/", 1)[1], data_size)
            if self.layout.is_local:
                directory, name = path.rsplit("/", 1)
                tmp = f"{directory}/.{name}.tmp"
                with open(tmp, "wb") as f:
                    f.write(data)
                os.rename(tmp, path)
            else:
                with self.layout.fs.open_output_stream(path) as out:
                    out.write(data)
        except Exception as exc:  # noqa: BLE001 - the data file is what must not fail
            log.warning("could not write the event index %s: %s", path, exc)

    def put_bytes(self, path: str, data: bytes) -> None:
        """Replace one small file whole (a compaction journal, retention's bookkeeping under
        `_meta/`): temporary name, fsync and rename on a disk; one PUT on object storage."""
        directory, name = path.rsplit("/", 1)
        if self.layout.is_local:
            _makedirs_durable(directory)
            tmp = f"{directory}/.{name}.tmp"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, path)
            _fsync_dir(directory)
        else:
            with self.layout.fs.open_output_stream(path) as out:
                out.write(data)

    def _delete(self, path: str) -> None:
        try:
            self.layout.fs.delete_file(path)
        except FileNotFoundError:
            pass

    def _discard(self, *paths: str) -> None:
        """Remove what a publish that will not happen left behind (best effort: a leftover
        temporary file is invisible and `compact` removes it later)."""
        for path in paths:
            try:
                self._delete(path)
            except OSError as exc:
                log.warning("could not remove %s: %s", path, exc)

    def _finish_journal(self, journal: str) -> None:
        fs = self.layout.fs
        directory = journal.rsplit("/", 1)[0]
        entry = read_journal(fs, journal)
        if entry is not None:
            new_path = f"{directory}/{entry['new']}"
            tmp_path = f"{directory}/{entry.get('tmp', '')}"
            if entry.get("tmp") and _exists(fs, tmp_path) and not _exists(fs, new_path):
                fs.move(tmp_path, new_path)
            if _exists(fs, new_path):
                for name in entry["old"]:
                    self._delete(f"{directory}/{name}")
                    self._delete(index_path(f"{directory}/{name}"))
        self._delete(journal)
        if self.layout.is_local:
            _fsync_dir(directory)


_CHUNK = 1024


def _to_table(events: list[dict]) -> tuple[pa.Table | None, list[tuple[dict, str]]]:
    """Convert in one go; if that fails, chunk by chunk, then event by event in a failing
    chunk, so one event that cannot be stored is rejected and never takes the batch down."""
    try:
        return events_to_table(events), []
    except Exception:  # noqa: BLE001 - narrowed below, event by event
        pass
    tables: list[pa.Table] = []
    rejected: list[tuple[dict, str]] = []
    for start in range(0, len(events), _CHUNK):
        chunk = events[start:start + _CHUNK]
        try:
            tables.append(events_to_table(chunk))
            continue
        except Exception:  # noqa: BLE001
            pass
        for event in chunk:
            try:
                tables.append(events_to_table([event]))
            except Exception as exc:  # noqa: BLE001 - this event's own problem
                rejected.append((event, _reason("cannot be stored", exc)))
    if not tables:
        return None, rejected
    table = pa.concat_tables(tables).combine_chunks()
    return table.sort_by([("run_id", "ascending"), ("started_at", "ascending")]), rejected


def _with_token(table: pa.Table, token: int | None) -> pa.Table:
    """`table` carrying the lease token in its schema metadata, which Parquet keeps as the
    file's key-value metadata (no data is copied)."""
    if token is None:
        return table
    metadata = dict(table.schema.metadata or {})
    metadata[TOKEN_METADATA] = str(token).encode()
    return table.replace_schema_metadata(metadata)


def _reason(what: str, exc: BaseException) -> str:
    """A short, always-printable reason (an exception's text may quote a huge value)."""
    try:
        detail = str(exc)
    except Exception:  # noqa: BLE001 - an exception whose text cannot be made
        detail = "(no message)"
    text = f"{what}: {type(exc).__name__}: {detail}"
    return text if len(text) <= 500 else text[:497] + "..."


def _write_parquet(table: pa.Table, where: str | pa.NativeFile) -> None:
    pq.write_table(table, where, compression="zstd", compression_level=1,
                   use_dictionary=DICTIONARY_COLUMNS, row_group_size=ROW_GROUP_SIZE,
                   write_statistics=STATISTICS_COLUMNS)


def _exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _makedirs_durable(directory: str) -> None:
    """Create missing directories and fsync each parent, so the new entries survive a crash."""
    if os.path.isdir(directory):
        return
    missing = []
    current = directory
    while not os.path.isdir(current):
        missing.append(current)
        current = os.path.dirname(current)
    os.makedirs(directory, exist_ok=True)
    for created in reversed(missing):
        _fsync_dir(os.path.dirname(created))
