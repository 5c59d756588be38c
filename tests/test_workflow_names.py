"""Any workflow name the contract accepts round-trips through the store, the query layer,
compaction and the partition locks, whatever the directory it is filed under."""
from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from event_factory import BASE_NS, make_event
from tracelab.events import validate
from tracelab.store import query
from tracelab.store.compact import compact
from tracelab.store.layout import (StoreLayout, decode_partition_value, encode_partition_value,
                                   resolve_layout)
from tracelab.store.locks import FileLock
from tracelab.store.writer import StoreWriter

NAMED = {
    "cjk-28": "東京都の支払い処理ワークフロー日次バッチ集計と請求書発行処理系",
    "cjk-256": "払" * 256,
    "emoji-256": "🚀" * 256,
    "ascii-256": "w" * 256,
    "slash": "pay/ments v2",
    "percent": "100% done %2F",
    "equals": "k=v&x=y",
    "spaces": "  spaced  out  ",
    "dots": "a.b.c",
    "leading-dot": ".hidden",
    "dot-dot": "..",
    "leading-underscore": "_private",
    "tilde-tail": "x~0123456789abcdef",
    "control": "tab\there\nnewline",
    "mixed-long": ("é/%=. 🚀" * 40)[:256],
}


def _lock_paths_during(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Record every lock file taken (the real lock is still taken)."""
    taken: list[Path] = []
    real = FileLock.acquire

    def acquire(self: FileLock, blocking: bool = True) -> bool:
        taken.append(self.path)
        return real(self, blocking)

    monkeypatch.setattr(FileLock, "acquire", acquire)
    return taken


def round_trip(layout: StoreLayout, name: str, taken: list[Path] | None = None) -> None:
    """Write two runs in three batches, then check every face sees exactly `name`."""
    events = [make_event(name, f"run-{r}", seq=r * 10 + i) for r in range(2) for i in range(3)]
    writer = StoreWriter(layout)
    for chunk in (events[:2], events[2:4], events[4:]):
        report = writer.write(chunk)
        assert report.written == len(chunk) and not report.rejected
    assert query.workflows(layout=layout)["workflow"].tolist() == [name]
    runs = query.executions(name, layout=layout)
    assert runs["workflow"].tolist() == [name, name]
    assert sorted(runs["run_id"]) == ["run-0", "run-1"] and runs["events"].tolist() == [3, 3]
    assert query.execution_events("run-0", layout=layout)["workflow"].tolist() == [name] * 3
    assert query.event_dict(events[0]["event_id"], layout=layout)["workflow"] == name

    directories = {p.parent.parent for p in Path(layout.events_root).rglob("*.parquet")}
    assert len(directories) == 1
    (directory,) = directories
    segment = directory.name
    assert len(segment.encode()) <= 255 and segment == f"workflow={encode_partition_value(name)}"
    if taken is not None:
        taken.clear()
    report = compact(layout=layout)
    assert report.merged == [(name, "2024-05-01")] and report.events == len(events)
    # Still one directory, one file, no empty file anywhere.
    files = list(Path(layout.events_root).rglob("*.parquet"))
    assert [f.parent.parent for f in files] == [directory]
    assert query.executions(name, layout=layout)["events"].tolist() == [3, 3]
    assert query.workflows(layout=layout)["workflow"].tolist() == [name]
    if taken is not None:
        expected = layout.partition_lock(name, "2024-05-01").path
        partition_locks = {p for p in taken if p.name.startswith("store-")}
        assert partition_locks == {expected}
    # A redelivered event lands in the same partition and is recognised.
    again = StoreWriter(layout).write(events[:1])
    assert (again.written, again.duplicates) == (0, 1)


@pytest.mark.parametrize("name", NAMED.values(), ids=NAMED.keys())
def test_named_workflow_names_round_trip(tracelab_home, monkeypatch, name):
    assert validate(make_event(name)) == []
    taken = _lock_paths_during(monkeypatch)
    round_trip(resolve_layout(), name, taken)


def _valid_name(name: str) -> bool:
    return not validate(make_event(name))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Strings that are valid Unicode (no lone surrogate: no JSON producer can send one, and the
# writer rejects such an event with its reason, see test_store_poison).
@given(st.one_of(st.text(st.characters(codec="utf-8"), min_size=1, max_size=300),
                 st.text(st.characters(min_codepoint=0x80, codec="utf-8"), min_size=20,
                         max_size=300))
       .filter(_valid_name))
def test_any_valid_workflow_name_round_trips(name):
    with tempfile.TemporaryDirectory() as tmp:
        layout = resolve_layout(f"{tmp}/store", home=tmp)
        round_trip(layout, name)


def test_a_store_written_before_the_name_column_still_reads(tracelab_home):
    """Files without the name column (older stores) are named by their directory."""
    import pyarrow.parquet as pq

    name = "legacy/wf v1"
    layout = resolve_layout()
    events = [make_event(name, "run-1", seq=i) for i in range(3)]
    StoreWriter(layout).write(events[:2])
    StoreWriter(layout).write(events[2:])
    for path in Path(layout.events_root).rglob("*.parquet"):
        table = pq.read_table(path)
        pq.write_table(table.drop_columns(["workflow_name"]), path)
        for index in path.parent.glob("_index-*"):
            index.unlink()
    assert query.workflows(layout=layout)["workflow"].tolist() == [name]
    assert query.executions(name, layout=layout)["events"].tolist() == [3]
    assert query.event_dict(events[0]["event_id"], layout=layout)["workflow"] == name
    assert compact(layout=layout).merged == [(name, "2024-05-01")]
    assert query.executions(name, layout=layout)["events"].tolist() == [3]
    (merged,) = Path(layout.events_root).rglob("*.parquet")
    assert pq.read_table(merged)["workflow_name"].to_pylist() == [name] * 3
    assert StoreWriter(layout).write(events).duplicates == 3


def test_the_original_name_is_a_column_duckdb_sees_beside_the_partition(tracelab_home):
    """DuckDB's hive partitioning hides a file column named like the partition, so the exact
    name is kept as `workflow_name`; for a name that fits, it equals the decoded directory."""
    import duckdb

    long_name = "長い名前" * 40
    for name in ("pay/ments v2", ".hidden", "_private", long_name):
        StoreWriter().write([make_event(name, "run-1", started_at=BASE_NS)])
    glob = str(tracelab_home / "store" / "events" / "**" / "*.parquet")
    rows = duckdb.connect().execute(
        f"SELECT workflow, workflow_name FROM read_parquet('{glob}', hive_partitioning=true) "
        "ORDER BY workflow_name").fetchall()
    assert rows[:3] == [(".hidden", ".hidden"), ("_private", "_private"),
                        ("pay/ments v2", "pay/ments v2")]
    assert rows[3][1] == long_name
    assert rows[3][0] == decode_partition_value(encode_partition_value(long_name))
