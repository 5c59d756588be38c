"""Where store files live: the root, the hive partitions, and which files are live.

The store root is `TRACELAB_STORE` (a path or any URI `pyarrow.fs` understands: `file://`,
`s3://`, `gs://`, ...) or else `$TRACELAB_HOME/store`. Every file operation goes through the
`pyarrow.fs.FileSystem` resolved here, so object storage plugs in without touching the writer's
logic. This module only names and lists files; it never writes a data file (that is `writer`)
and never reads one (that is `query`).

Layout (readable by DuckDB, Spark or pandas with hive partitioning):

    <root>/events/workflow=<wf>/date=<YYYY-MM-DD>/<part>.parquet

Partition values are percent-encoded like hive does, so `a/b` is stored as `a%2Fb` and read
back as `a/b` by DuckDB and pyarrow alike. A compaction in progress leaves a
`_compaction-*.json` journal beside the files; files it names as replaced are not live once
the merged file exists (see `compact`).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote, unquote

import pyarrow.fs as pafs

from tracelab.config import env_str, tracelab_home
from tracelab.store.locks import FileLock

EVENTS_TABLE = "events"
DATA_SUFFIX = ".parquet"
JOURNAL_PREFIX = "_compaction-"
# ext4 and most file systems cap one path component at 255 bytes.
_MAX_SEGMENT_BYTES = 240
_NS_PER_DAY = 86_400 * 1_000_000_000


def encode_partition_value(value: str) -> str:
    """Hive-style percent-encoding; absurdly long values get a stable shortened form.

    A workflow name may be 256 characters of anything, which does not fit in one directory
    name once encoded; such names keep a readable prefix plus a hash, so nothing is rejected.
    """
    encoded = quote(value, safe=" ")
    if len(encoded.encode()) <= _MAX_SEGMENT_BYTES - len("workflow="):
        return encoded
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    prefix = quote(value[:64], safe=" ")[:120]
    return f"{prefix}~{digest}"


def decode_partition_value(segment: str) -> str:
    return unquote(segment)


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


@dataclass(frozen=True)
class StoreLayout:
    """A resolved store: its file system, its root inside it, and the local home for locks."""

    fs: pafs.FileSystem
    root: str
    home: Path
    uri: str = ""
    _local: bool = field(default=False, repr=False)

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

    def lock(self, name: str, timeout: float | None = 60.0) -> FileLock:
        """A host-wide lock for `name` within this store (keyed by the store's root)."""
        key = hashlib.sha256(f"{self.uri or self.root}\0{name}".encode()).hexdigest()[:24]
        return FileLock(self.home / "locks" / f"store-{key}.lock", timeout=timeout)

    def partition_lock(self, workflow: str, date: str) -> FileLock:
        return self.lock(f"partition\0{workflow}\0{date}")

    def list_files(self, workflow: str | None = None) -> list[DataFile]:
        """Live data files, optionally for one workflow, sorted by path.

        Temporary files (leading dot) and files a finished-but-not-cleaned compaction replaced
        are left out, so a reader never sees an event twice.
        """
        base = self.events_root if workflow is None else self.workflow_dir(workflow)
        return self._list(base, recursive=True)[0]

    def list_partition(self, workflow: str, date: str) -> tuple[list[DataFile], list[str]]:
        """Live data files of one partition, and the compaction journals lying in it."""
        return self._list(self.partition_dir(workflow, date), recursive=False)

    def _list(self, base: str, recursive: bool) -> tuple[list[DataFile], list[str]]:
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(base, recursive=recursive,
                                                            allow_not_found=True))
        except FileNotFoundError:
            return [], []
        files: list[DataFile] = []
        journals: list[str] = []
        present: set[str] = set()
        for info in infos:
            if info.type != pafs.FileType.File:
                continue
            name = info.base_name
            if name.startswith(JOURNAL_PREFIX) and name.endswith(".json"):
                journals.append(info.path)
                continue
            if name.startswith((".", "_")) or not name.endswith(DATA_SUFFIX):
                continue
            parsed = self.parse_partition(info.path)
            if parsed is None:
                continue
            present.add(info.path)
            files.append(DataFile(info.path, parsed[0], parsed[1], info.size or 0))
        if journals:
            replaced = self._replaced_by_journals(journals, present)
            files = [f for f in files if f.path not in replaced]
        files.sort(key=lambda f: f.path)
        return files, journals

    def parse_partition(self, path: str) -> tuple[str, str] | None:
        parts = path[len(self.events_root) + 1:].split("/")
        if len(parts) != 3 or not parts[0].startswith("workflow=") \
                or not parts[1].startswith("date="):
            return None
        return decode_partition_value(parts[0][len("workflow="):]), parts[1][len("date="):]

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


def resolve_layout(store: str | None = None, home: Path | str | None = None) -> StoreLayout:
    """The store named by the argument, else `TRACELAB_STORE`, else `$TRACELAB_HOME/store`."""
    home_path = Path(home).expanduser() if home is not None else tracelab_home()
    target = store or env_str("TRACELAB_STORE")
    if target and "://" in target:
        fs, root = pafs.FileSystem.from_uri(target)
        local = isinstance(fs, pafs.LocalFileSystem)
        if local:
            root = os.path.abspath(root)
        return StoreLayout(fs, root.rstrip("/"), home_path, uri=target, _local=local)
    root_path = Path(target).expanduser() if target else home_path / "store"
    root = os.path.abspath(root_path)
    return StoreLayout(pafs.LocalFileSystem(), root, home_path, uri=root, _local=True)
