"""`event(event_id)` goes through each file's event-id index: it reads only the file (and
row groups) that may hold the id, and a missing or stale index falls back to a scan."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from event_factory import BASE_NS, DAY_NS, make_event
from tracelab.store import query
from tracelab.store.compact import compact
from tracelab.store.layout import resolve_layout
from tracelab.store.writer import ROW_GROUP_SIZE, StoreWriter


def _data_files(home: Path) -> list[Path]:
    return sorted((home / "store" / "events").rglob("*.parquet"))


def _spoil(path: Path) -> None:
    """Make a data file unreadable while keeping its size (its index stays trusted)."""
    path.write_bytes(b"\0" * path.stat().st_size)


def _fill(home: Path) -> dict[str, list[dict]]:
    """Three workflows over two days, two batches each: 12 small files."""
    events: dict[str, list[dict]] = {}
    writer = StoreWriter()
    for w in range(3):
        name = f"wf-{w}"
        batch = [make_event(name, f"run-{w}-{i % 2}", seq=i,
                            started_at=BASE_NS + (i % 2) * DAY_NS + i) for i in range(8)]
        writer.write(batch[:4])
        writer.write(batch[4:])
        events[name] = batch
    assert len(_data_files(home)) == 12
    return events


def test_event_reads_only_the_file_that_holds_it(tracelab_home):
    events = _fill(tracelab_home)
    wanted = events["wf-1"][5]
    (target,) = [p for p in _data_files(tracelab_home) if wanted["event_id"] in
                 pq.read_table(p, columns=["event_id"])["event_id"].to_pylist()]
    for path in _data_files(tracelab_home):
        if path != target:
            _spoil(path)
    got = query.event_dict(wanted["event_id"])
    assert got["workflow"] == "wf-1" and got["request"] == wanted["request"]
    with pytest.raises(KeyError, match="unknown event_id"):
        query.event("0" * 32)  # absent everywhere: answered from the indexes alone


def test_every_event_is_found_and_unknown_ids_are_not(tracelab_home):
    events = _fill(tracelab_home)
    for batch in events.values():
        for event in batch:
            frame = query.event(event["event_id"])
            assert frame["event_id"].tolist() == [event["event_id"]]
            assert json.loads(frame["response"].iloc[0]) == event["response"]
    with pytest.raises(KeyError):
        query.event("not-stored")


def test_a_missing_or_stale_index_falls_back_to_a_scan(tracelab_home):
    events = _fill(tracelab_home)
    indexes = sorted((tracelab_home / "store" / "events").rglob("_index-*.arrow"))
    assert len(indexes) == 12
    indexes[0].unlink()                               # missing
    indexes[1].write_bytes(indexes[2].read_bytes())   # another file's (maybe the same size)
    indexes[3].write_bytes(b"torn")                   # a crash mid-write
    for batch in events.values():
        for event in batch:
            assert query.event(event["event_id"])["event_id"].iloc[0] == event["event_id"]


def test_compaction_keeps_the_index_right(tracelab_home):
    events = _fill(tracelab_home)
    query.event(events["wf-0"][0]["event_id"])        # indexes of the old files now cached
    compact()
    store = tracelab_home / "store" / "events"
    data = _data_files(tracelab_home)
    assert len(data) == 6
    indexes = sorted(store.rglob("_index-*.arrow"))
    assert sorted(p.name[len("_index-"):-len(".arrow")] for p in indexes) == \
        sorted(p.stem for p in data)
    for batch in events.values():
        for event in batch:
            assert query.event(event["event_id"])["event_id"].iloc[0] == event["event_id"]


def test_ids_in_every_row_group_of_a_large_file_are_found(tracelab_home):
    events = [make_event("big", f"run-{i % 50}", seq=i) for i in range(2 * ROW_GROUP_SIZE + 100)]
    StoreWriter().write(events)
    (path,) = _data_files(tracelab_home)
    stored = pq.read_table(path, columns=["event_id"])["event_id"].to_pylist()
    assert pq.ParquetFile(path).metadata.num_row_groups == 3
    for row in (0, ROW_GROUP_SIZE - 1, ROW_GROUP_SIZE, 2 * ROW_GROUP_SIZE + 99):
        assert query.event(stored[row])["event_id"].iloc[0] == stored[row]
    assert resolve_layout().list_files()[0].index is not None


def test_an_index_only_describes_the_file_it_was_built_for():
    import pyarrow as pa

    from tracelab.store import event_index

    data = event_index.build(pa.array(["a", "b"]), ROW_GROUP_SIZE, "part-1.parquet", 1234)
    index = event_index.load(data)
    assert index is not None and index.row_groups(event_index.id_hash("b")) == [0]
    assert index.describes("/s/events/workflow=x/date=d/part-1.parquet", 1234)
    assert not index.describes("/s/events/workflow=x/date=d/part-2.parquet", 1234)
    assert not index.describes("/s/events/workflow=x/date=d/part-1.parquet", 1235)
    assert event_index.load(data[:-8]) is None and event_index.load(b"") is None
