"""Where store files live: the root, the hive partitions, and which files are live.

The store root is `TRACELAB_STORE` (a path or any URI `pyarrow.fs` understands: `file://`,
`s3://`, `gs://`, ...) or else `$TRACELAB_HOME/store`. Every file operation goes through the
`pyarrow.fs.FileSystem` resolved here, so object storage plugs in without touching the writer's
logic. This module names and lists files; it never writes a data file (that is `writer`) and
reads one only to name a shortened partition (below).

Layout (readable by DuckDB, Spark or pandas with hive partitioning):

    <root>/events/workflow=<wf>/date=<YYYY-MM-DD>/<part>.parquet
    <root>/events/workflow=<wf>/date=<YYYY-MM-DD>/_index-<part>.arrow   (see `event_index`)

The directory is only a place: the exact workflow name is the `workflow_name` column of every
file. Partition values are percent-encoded like hive does, so `a/b` is stored as `a%2Fb` and
read back as `a/b` by DuckDB and pyarrow alike. A name whose encoding does not fit in one
directory name gets a stable shortened form (a readable prefix, `~`, a hash); the files under
such a directory are named by their `workflow_name` column, never by decoding the directory.
A compaction in progress leaves a `_compaction-*.json` journal beside the files; files it
names as replaced are not live once the merged file exists (see `compact`).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from tracelab.config import env_str, tracelab_home
from tracelab.store.locks import FileLock, LeasedLock

if TYPE_CHECKING:
    from tracelab.store.leases import RedisLeases

EVENTS_TABLE = "events"
DATA_SUFFIX = ".parquet"
JOURNAL_PREFIX = "_compaction-"
INDEX_PREFIX = "_index-"
INDEX_SUFFIX = ".arrow"
# The exact workflow name inside every data file. Not `workflow`: DuckDB and pyarrow let the
# hive directory value silently replace a file column of the partition's own name.
NAME_COLUMN = "workflow_name"
# ext4 and most file systems cap one path component at 255 bytes.
_MAX_SEGMENT_BYTES = 240
_MAX_VALUE_BYTES = _MAX_SEGMENT_BYTES - len("workflow=")
_PREFIX_CHARS = 64
_PREFIX_BYTES = 120
_HASH_TAIL = re.compile(r"~[0-9a-f]{16}")
_NS_PER_DAY = 86_400 * 1_000_000_000


def encode_partition_value(value: str) -> str:
    """Hive-style percent-encoding; a value too long for a directory gets a shortened form.

    A workflow name may be 256 characters of anything, which does not fit in one directory
    name once encoded; such names keep a readable prefix (whole characters only, so it
    decodes cleanly) plus a hash of the whole name, so nothing is rejected. Values that fit are
    encoded exactly as before, so stores written by earlier versions keep their directories.
    Raises UnicodeEncodeError for a string that is not valid Unicode (a lone surrogate).
    """
    encoded = quote(value, safe=" ")  # ASCII out: characters are bytes
    if len(encoded) <= _MAX_VALUE_BYTES:
        return encoded
    digest = hashlib.sha256(value.encode("utf-8")).hexdigest()[:16]
    prefix: list[str] = []
    size = 0
    for char in value[:_PREFIX_CHARS]:
        piece = quote(char, safe=" ")
        if size + len(piece) > _PREFIX_BYTES:
            break
        prefix.append(piece)
        size += len(piece)
    return f"{''.join(prefix)}~{digest}"


def decode_partition_value(segment: str) -> str:
    return unquote(segment)


def is_shortened(segment: str) -> bool:
    """True when an encoded value may be a shortened form, whose decoding is not the name."""
    return len(segment) >= 17 and _HASH_TAIL.fullmatch(segment, len(segment) - 17) is not None


def index_path(data_path: str) -> str:
    """Where the event-id index of one data file lives (beside it, hidden from readers)."""
    directory, name = data_path.rsplit("/", 1)
    return f"{directory}/{INDEX_PREFIX}{name[:-len(DATA_SUFFIX)]}{INDEX_SUFFIX}"


_DAY_CACHE: dict[int, str] = {}


def date_of(started_at_ns: int) -> str:
    """The UTC calendar day (`YYYY-MM-DD`) an event belongs to, from its start time."""
    day = started_at_ns // _NS_PER_DAY
    text = _DAY_CACHE.get(day)
    if text is None:
        text = datetime.fromtimestamp(day * 86_400, tz=timezone.utc).strftime("%Y-%m-%d")
        if len(_DAY_CACHE) < 100_000:
            _DAY_CACHE[day] = text
    return text


@dataclass(frozen=True)
class DataFile:
    """One live Parquet file of the events table."""

    path: str
    workflow: str
    date: str
    size: int
    # The file's event-id index, when one was listed beside it.
    index: str | None = None

    @property
    def directory(self) -> str:
        return self.path.rsplit("/", 1)[0]


@dataclass(frozen=True)
class StoreLayout:
    """A resolved store: its file system, its root inside it, the local home for locks, and
    the Redis leases that make those locks hold across hosts (None: one host, flock only)."""

    fs: pafs.FileSystem
    root: str
    home: Path
    uri: str = ""
    _local: bool = field(default=False, repr=False)
    leases: RedisLeases | None = field(default=None, repr=False, compare=False)

    @property
    def is_local(self) -> bool:
        """True when files are on this machine's disk, where fsync and rename mean something."""
        return self._local

    @property
    def events_root(self) -> str:
        return f"{self.root}/{EVENTS_TABLE}"

    def workflow_dir(self, workflow: str) -> str:
        return f"{self.events_root}/workflow={encode_partition_value(workflow)}"

    def partition_dir(self, workflow: str, date: str) -> str:
        return f"{self.workflow_dir(workflow)}/date={date}"

    def lock(self, name: str, timeout: float | None = 60.0) -> FileLock | LeasedLock:
        """The lock for `name` within this store (keyed by the store's root): host-wide, and
        with leases also store-wide (every host that names the store alike).

        Either kind has `acquire`/`release`, is a re-entrant context manager, and offers
        `ensure_held()` (raises `leases.LeaseLost` once the lease is gone) and `token`.
        """
        # Local stores by their absolute root (a path and its file:// URI are one store).
        where = self.root if self._local else (self.uri or self.root).rstrip("/")
        scope = f"{where}\0{name}"
        key = hashlib.sha256(scope.encode()).hexdigest()[:24]
        flock = FileLock(self.home / "locks" / f"store-{key}.lock", timeout=timeout)
        if self.leases is None:
            return flock
        return LeasedLock(flock, self.leases.lease(scope))

    def partition_lock(self, workflow: str, date: str) -> FileLock | LeasedLock:
        return self.lock(f"partition\0{workflow}\0{date}")

    def list_files(self, workflow: str | None = None) -> list[DataFile]:
        """Live data files, optionally for one workflow, sorted by path.

        Temporary files (leading dot) and files a finished-but-not-cleaned compaction replaced
        are left out, so a reader never sees an event twice.
        """
        if workflow is None:
            return self._list(self.events_root, recursive=True)[0]
        files = self._list(self.workflow_dir(workflow), recursive=True)[0]
        return [f for f in files if f.workflow == workflow]

    def list_partition(self, workflow: str, date: str) -> tuple[list[DataFile], list[str]]:
        """Live data files of one partition, and the compaction journals lying in it."""
        files, journals = self.list_dir(self.partition_dir(workflow, date))
        return [f for f in files if f.workflow == workflow], journals

    def list_dir(self, directory: str) -> tuple[list[DataFile], list[str]]:
        """Live data files of one partition directory, whatever their names, and its journals."""
        return self._list(directory, recursive=False)

    def _list(self, base: str, recursive: bool) -> tuple[list[DataFile], list[str]]:
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(base, recursive=recursive,
                                                            allow_not_found=True))
        except FileNotFoundError:
            return [], []
        found: list[tuple[str, int]] = []
        journals: list[str] = []
        indexes: set[str] = set()
        for info in infos:
            if info.type != pafs.FileType.File:
                continue
            name = info.base_name
            if name.startswith(JOURNAL_PREFIX) and name.endswith(".json"):
                journals.append(info.path)
            elif name.startswith(INDEX_PREFIX) and name.endswith(INDEX_SUFFIX):
                indexes.add(info.path)
            elif not name.startswith((".", "_")) and name.endswith(DATA_SUFFIX):
                found.append((info.path, info.size or 0))
        files: list[DataFile] = []
        for path, size in found:
            parsed = self._parse(path)
            if parsed is None:
                continue
            index = index_path(path)
            files.append(DataFile(path, parsed[0], parsed[1], size,
                                  index if index in indexes else None))
        if journals:
            replaced = self._replaced_by_journals(journals, {f.path for f in files})
            files = [f for f in files if f.path not in replaced]
        files.sort(key=lambda f: f.path)
        return files, journals

    def parse_partition(self, path: str) -> tuple[str, str] | None:
        """(encoded workflow segment decoded, date) of a path in the events table.

        For a shortened directory the first element is not the workflow's name: listings name
        files by their `workflow_name` column instead (`DataFile.workflow`).
        """
        parts = path[len(self.events_root) + 1:].split("/")
        if len(parts) != 3 or not parts[0].startswith("workflow=") \
                or not parts[1].startswith("date="):
            return None
        return decode_partition_value(parts[0][len("workflow="):]), parts[1][len("date="):]

    def _parse(self, path: str) -> tuple[str, str] | None:
        """(workflow name, date) of a data file: its own name column when its directory is a
        shortened form, else the decoded directory (exact for names that fit). None when the
        file vanished while being looked at (a compaction removed it)."""
        parsed = self.parse_partition(path)
        if parsed is None:
            return None
        segment = path[len(self.events_root) + 1:].split("/", 1)[0][len("workflow="):]
        if not is_shortened(segment):
            return parsed
        try:
            name = _stored_name(self, path)
        except FileNotFoundError:
            return None
        return (name if name is not None else parsed[0]), parsed[1]

    def _replaced_by_journals(self, journals: list[str], present: set[str]) -> set[str]:
        replaced: set[str] = set()
        for journal in journals:
            entry = read_journal(self.fs, journal)
            if entry is None:
                continue
            directory = journal.rsplit("/", 1)[0]
            if f"{directory}/{entry['new']}" in present:
                replaced.update(f"{directory}/{name}" for name in entry["old"])
        return replaced


_NAMES: dict[tuple[str, str], str | None] = {}
_NAMES_MAX = 100_000
_NAMES_LOCK = threading.Lock()


def _stored_name(layout: StoreLayout, path: str) -> str | None:
    """The `workflow_name` a data file holds (None for files older than the column).

    Data files never change once written, so the answer is remembered by path.
    """
    key = (layout.uri or layout.root, path)
    with _NAMES_LOCK:
        if key in _NAMES:
            return _NAMES[key]
    name = None
    try:
        with layout.fs.open_input_file(path) as source:
            parquet = pq.ParquetFile(source)
            if NAME_COLUMN in parquet.schema_arrow.names and parquet.metadata.num_row_groups:
                column = parquet.read_row_group(0, columns=[NAME_COLUMN]).column(0)
                name = column[0].as_py() if len(column) else None
    except FileNotFoundError:
        raise
    except (OSError, ValueError):  # unreadable now: named by its directory, asked again later
        return None
    with _NAMES_LOCK:
        if len(_NAMES) >= _NAMES_MAX:
            _NAMES.clear()
        _NAMES[key] = name
    return name


def read_journal(fs: pafs.FileSystem, path: str) -> dict | None:
    """A compaction journal's `{"new": name, "old": [names]}`, or None if unreadable."""
    try:
        with fs.open_input_stream(path) as stream:
            entry = json.loads(stream.read())
        if isinstance(entry.get("new"), str) and isinstance(entry.get("old"), list):
            return entry
    except (OSError, ValueError, AttributeError):
        pass
    return None


def resolve_layout(store: str | None = None, home: Path | str | None = None, *,
                   leases_url: str | None = None) -> StoreLayout:
    """The store named by the argument, else `TRACELAB_STORE`, else `$TRACELAB_HOME/store`.

    With `leases_url` (a Redis URL) every store lock is also a lease in that Redis, held by
    `TRACELAB_HOST_ID` for `TRACELAB_LEASE_TTL` seconds (see `leases`): what lets writers on
    several hosts share one store. Hosts must name the store alike (same URI or path), since
    a lease's name includes it.
    """
    home_path = Path(home).expanduser() if home is not None else tracelab_home()
    target = store or env_str("TRACELAB_STORE")
    leases = None
    if leases_url:
        from tracelab.store.leases import RedisLeases

        leases = RedisLeases(leases_url)
    if target and "://" in target:
        from tracelab.store.objectstore import filesystem_from_uri  # s3:// from the env
        fs, root = filesystem_from_uri(target)
        local = isinstance(fs, pafs.LocalFileSystem)
        if local:
            root = os.path.abspath(root)
        return StoreLayout(fs, root.rstrip("/"), home_path, uri=target, _local=local,
                           leases=leases)
    root_path = Path(target).expanduser() if target else home_path / "store"
    root = os.path.abspath(root_path)
    return StoreLayout(pafs.LocalFileSystem(), root, home_path, uri=root, _local=True,
                       leases=leases)
