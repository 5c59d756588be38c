"""Which row group of which file holds an event id, without reading the store's event ids.

`event(event_id)` is asked once per click in the UI and the notebook. Rows are sorted by run
(so a run's events share row groups), which leaves every row group's min/max `event_id`
spanning almost the whole id space: Parquet statistics cannot prune. So every data file gets a
small sidecar, `_index-<part>.arrow` beside it (Arrow IPC; the leading `_` hides it from
DuckDB, Spark and pyarrow), written by the writer with the file and by compaction with the
merged file: the 64-bit FNV-1a hashes of the file's event ids, sorted, each with its row group,
plus the name and size of the data file it describes. A lookup hashes the id, binary-searches each
file's index (cached by path: files never change) and reads only the row groups that may hold
it. An index that is missing, unreadable or describes another file (name or size) is not
trusted: that file
is scanned, so a lost or stale index costs time, never a wrong answer. A hash collision only
costs reading one more row group, since the row is always checked against the real id.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_SCHEMA = pa.schema([("hash", pa.uint64()), ("row_group", pa.int32())])
_SIZE_KEY = b"tracelab.data_size"
_NAME_KEY = b"tracelab.data_name"


def id_hashes(ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """FNV-1a (64-bit) of each id's UTF-8 bytes, vectorised over the column with numpy."""
    chunks = ids.chunks if isinstance(ids, pa.ChunkedArray) else [ids]
    parts = [_hash_chunk(chunk) for chunk in chunks]
    return np.concatenate(parts) if parts else np.empty(0, np.uint64)


def _hash_chunk(chunk: pa.Array) -> np.ndarray:
    n = len(chunk)
    if n == 0:
        return np.empty(0, np.uint64)
    binary = chunk.cast(pa.binary())
    _, offsets_buffer, data_buffer = binary.buffers()
    offsets = np.frombuffer(offsets_buffer, np.int32, count=n + 1, offset=binary.offset * 4)
    data = np.frombuffer(data_buffer, np.uint8) if data_buffer is not None \
        else np.zeros(1, np.uint8)
    starts = offsets[:-1].astype(np.int64)
    lengths = offsets[1:] - offsets[:-1]
    hashes = np.full(n, _FNV_OFFSET, np.uint64)
    if lengths.min() == lengths.max():  # the common case: ids of one length, one matrix
        width = int(lengths[0])
        matrix = data[starts[0]:starts[0] + n * width].reshape(n, width)
        for j in range(width):
            hashes ^= matrix[:, j]
            hashes *= _FNV_PRIME
        return hashes
    for j in range(int(lengths.max())):
        live = np.nonzero(lengths > j)[0]
        hashes[live] = (hashes[live] ^ data[starts[live] + j]) * _FNV_PRIME
    return hashes


def id_hash(event_id: str) -> np.uint64:
    return id_hashes(pa.array([event_id], pa.string()))[0]


def build(event_ids: pa.Array | pa.ChunkedArray, row_group_size: int, data_name: str,
          data_size: int) -> bytes:
    """The index of the data file `data_name` (base name) of `data_size` bytes whose rows
    carry `event_ids` in this order, `row_group_size` rows to a row group."""
    hashes = id_hashes(event_ids)
    groups = (np.arange(len(hashes), dtype=np.int64) // row_group_size).astype(np.int32)
    order = np.argsort(hashes, kind="stable")
    table = pa.table([pa.array(hashes[order]), pa.array(groups[order])],
                     schema=_SCHEMA.with_metadata({_SIZE_KEY: str(data_size).encode(),
                                                   _NAME_KEY: data_name.encode()}))
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


class FileIndex:
    """One data file's index, loaded: sorted hashes and their row groups."""

    __slots__ = ("hashes", "groups", "data_name", "data_size")

    def __init__(self, hashes: np.ndarray, groups: np.ndarray, data_name: str,
                 data_size: int) -> None:
        self.hashes = hashes
        self.groups = groups
        self.data_name = data_name
        self.data_size = data_size

    def describes(self, data_path: str, data_size: int) -> bool:
        """True when this is the index of that very file (not a copy, not a leftover)."""
        return self.data_size == data_size and data_path.rsplit("/", 1)[-1] == self.data_name

    def row_groups(self, hashed: np.uint64) -> list[int]:
        """Row groups that may hold an id with this hash (empty: the file does not)."""
        lo = int(np.searchsorted(self.hashes, hashed, side="left"))
        hi = int(np.searchsorted(self.hashes, hashed, side="right"))
        return sorted({int(g) for g in self.groups[lo:hi]})


def load(data: bytes) -> FileIndex | None:
    """Parse an index; None when it is not one (truncated by a crash, foreign, ...)."""
    try:
        table = pa.ipc.open_file(pa.py_buffer(data)).read_all()
        metadata = table.schema.metadata or {}
        size = int(metadata[_SIZE_KEY])
        name = metadata[_NAME_KEY].decode()
        if table.schema.remove_metadata() != _SCHEMA:
            return None
        hashes = table.column("hash").to_numpy()
        groups = table.column("row_group").to_numpy()
    except (pa.ArrowException, KeyError, ValueError, OSError):
        return None
    if len(hashes) > 1 and not bool(np.all(hashes[1:] >= hashes[:-1])):
        return None
    return FileIndex(hashes, groups, name, size)
