"""The writer: durable, atomic, zstd, and never the same event_id twice."""
from __future__ import annotations

import json

import pyarrow.parquet as pq

from event_factory import BASE_NS, DAY_NS, make_event, read_store_raw
from tracelab.store import query
from tracelab.store.layout import encode_partition_value, resolve_layout
from tracelab.store.writer import StoreWriter


def test_layout_is_hive_partitioned_zstd_parquet(tracelab_home):
    events = [make_event("pay/ments v2", "run-1", seq=i) for i in range(3)]
    events.append(make_event("pay/ments v2", "run-1", started_at=BASE_NS + DAY_NS))
    report = StoreWriter().write(events)
    assert report.written == 4 and len(report.files) == 2
    paths = sorted((tracelab_home / "store" / "events").rglob("*.parquet"))
    assert [p.parent.name for p in paths] == ["date=2024-05-01", "date=2024-05-02"]
    assert paths[0].parent.parent.name == "workflow=pay%2Fments v2"
    meta = pq.ParquetFile(paths[0]).metadata
    assert meta.row_group(0).column(0).compression == "ZSTD"
    assert "workflow" not in pq.read_schema(paths[0]).names  # it is the partition
    raw = read_store_raw(tracelab_home / "store")
    assert set(raw.column("workflow").to_pylist()) == {"pay/ments v2"}
    assert not list((tracelab_home / "store").rglob(".*.tmp"))


def test_duplicates_are_dropped_within_a_batch_across_batches_and_writers(tracelab_home):
    events = [make_event("dup", "run-1", seq=i) for i in range(50)]
    first = StoreWriter().write(events[:30] + events[:5])
    assert (first.written, first.duplicates) == (30, 5)
    # Another writer (another ingester process) sees the first one's files.
    second = StoreWriter().write(events)
    assert (second.written, second.duplicates) == (20, 30)
    ids = read_store_raw(tracelab_home / "store").column("event_id").to_pylist()
    assert sorted(ids) == sorted(e["event_id"] for e in events)


def test_fields_outside_the_contract_are_kept(tracelab_home):
    event = make_event("extra", "run-1", vendor={"trace": "abc"}, attempt=3,
                       error={"type": "Timeout", "message": "slow", "retryable": True},
                       status="error")
    StoreWriter().write([event])
    stored = json.loads(query.event(event["event_id"])["extra"].iloc[0])
    assert stored == {"vendor": {"trace": "abc"}, "attempt": 3,
                      "error": {"type": "Timeout", "message": "slow", "retryable": True}}
    assert query.event_dict(event["event_id"])["error"]["retryable"] is True


def test_long_workflow_names_get_a_stable_short_partition(tracelab_home):
    name = "w" * 256
    assert len(encode_partition_value(name)) < 240
    assert encode_partition_value(name) == encode_partition_value(name)
    report = StoreWriter().write([make_event(name, "run-1")])
    assert report.written == 1 and not report.rejected


def test_store_uri_through_pyarrow_fs(tmp_path, tracelab_home, monkeypatch):
    root = tmp_path / "elsewhere"
    monkeypatch.setenv("TRACELAB_STORE", root.as_uri())  # file:///...
    layout = resolve_layout()
    assert layout.uri.startswith("file://") and layout.root == str(root)
    events = [make_event("uri", "run-1", seq=i) for i in range(5)]
    StoreWriter(layout).write(events)
    assert read_store_raw(root).num_rows == 5
    assert len(query.execution_events("run-1")) == 5


def test_interrupted_compaction_is_finished_by_the_next_writer(tracelab_home):
    """The on-disk state a kill leaves after the journal but before the old files are gone."""
    writer = StoreWriter()
    events = [make_event("jr", "run-1", seq=i) for i in range(10)]
    writer.write(events[:5])
    writer.write(events[5:])
    layout = writer.layout
    old = [f.path for f in layout.list_files("jr")]
    merged = query.read_table(layout, old)
    directory = layout.partition_dir("jr", "2024-05-01")
    # Reproduce the crash point: merged file renamed in, old files still there, journal left.
    w2 = StoreWriter(layout)
    w2._write_local(f"{directory}/part-merged.parquet", merged)
    w2.put_bytes(f"{directory}/_compaction-x.json", json.dumps(
        {"new": "part-merged.parquet", "tmp": ".gone.tmp",
         "old": [p.rsplit("/", 1)[1] for p in old]}).encode())
    # Readers already skip the replaced files: no double.
    assert [f.path.rsplit("/", 1)[1] for f in layout.list_files("jr")] == ["part-merged.parquet"]
    assert query.executions("jr")["events"].tolist() == [10]
    # The next write to the partition finishes the job.
    StoreWriter(layout).write([make_event("jr", "run-1", seq=99)])
    names = sorted(p.name for p in (tracelab_home / "store" / "events").rglob("*"))
    assert not [n for n in names if n.startswith("_compaction")]
    assert read_store_raw(tracelab_home / "store").num_rows == 11


def test_a_writers_cached_ids_see_other_writers_files_and_compactions(tracelab_home):
    """The writer skips the full listing only while a partition holds exactly the files it
    knows; another writer's file, or a compaction, must still be seen."""
    from tracelab.store.compact import compact

    events = [make_event("cache", "run-1", seq=i) for i in range(40)]
    a, b = StoreWriter(), StoreWriter()
    assert a.write(events[:10]).written == 10
    assert a.write(events[:10]).duplicates == 10          # cached, nothing new on disk
    assert b.write(events[10:20]).written == 10           # a file `a` does not know
    again = a.write(events[:25])
    assert (again.written, again.duplicates) == (5, 20)
    compact("cache")                                      # files replaced behind `a`'s back
    again = a.write(events[:30])
    assert (again.written, again.duplicates) == (5, 25)
    ids = read_store_raw(tracelab_home / "store").column("event_id").to_pylist()
    assert sorted(ids) == sorted(e["event_id"] for e in events[:30])


def test_tags_are_stored_as_sorted_json_whatever_their_order(tracelab_home):
    from tracelab.store.schema import events_to_table

    events = [make_event("tags", "run-1", seq=i, tags=tags) for i, tags in enumerate(
        [{"b": "2", "a": "1"}, {"a": "1", "b": "2"}, {"b": "2", "a": "1"}, {"x": "é"}])]
    events.append(make_event("tags", "run-1", seq=9))
    events[-1].pop("tags", None)
    by_id = dict(zip(*(events_to_table(events).column(c).to_pylist()
                       for c in ("event_id", "tags"))))
    assert [by_id[e["event_id"]] for e in events] == [
        '{"a":"1","b":"2"}', '{"a":"1","b":"2"}', '{"a":"1","b":"2"}', '{"x":"é"}', None]
