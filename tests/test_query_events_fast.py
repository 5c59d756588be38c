"""`query.events` drops lifecycle rows through the sort's `take`, not in the scan (issue 16):
the frames must be exactly what filtering `kind != "run"` in the scan gave (same rows, order,
columns, dtypes), with and without lifecycle rows, for every filter and limit."""
from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from event_factory import BASE_NS, DAY_NS, make_event
from tracelab.store import llm as llm_columns
from tracelab.store import query
from tracelab.store.layout import NAME_COLUMN, resolve_layout
from tracelab.store.schema import EVENT_SCHEMA, LIGHT_COLUMNS
from tracelab.store.writer import StoreWriter


def lifecycle(workflow: str, run_id: str, endpoint: str, started_at: int) -> dict:
    event = make_event(workflow, run_id, started_at=started_at, service="agent",
                       target="agent", kind="run", endpoint=endpoint, latency_ms=0,
                       request={}, response={})
    for key in ("status_code", "span_id", "parent_id", "error"):
        event.pop(key, None)
    return event


@pytest.fixture
def store(tracelab_home):
    """`mixed`: runs with lifecycle rows over several files and two days, same start times on
    purpose (ties broken by event_id); `plain`: steps only; `life`: lifecycle rows only."""
    writer = StoreWriter()
    batches: list[list[dict]] = [[], [], []]
    for r in range(6):
        run, t0 = f"run-{r}", BASE_NS + r * 3_600 * 10**9 + (DAY_NS if r >= 4 else 0)
        batches[r % 3].append(lifecycle("mixed", run, "start", t0))
        for i in range(5):
            batches[(r + i) % 3].append(make_event(
                "mixed", run, seq=i, started_at=t0 + (i // 2) * 1_000_000,
                status="error" if (r + i) % 4 == 0 else "ok",
                service="api" if i % 2 else "worker", tags={"env": "prod" if r % 2 else "dev"}))
        batches[(r + 1) % 3].append(lifecycle("mixed", run, "end", t0 + 10**9))
    for i, batch in enumerate(batches):
        batch += [make_event("plain", f"p-{i}", seq=j, started_at=BASE_NS + j * 1_000_000)
                  for j in range(4)]
        writer.write(batch)
    StoreWriter().write([lifecycle("life", "l-1", "start", BASE_NS),
                         lifecycle("life", "l-1", "end", BASE_NS + 10**9)])


def scan_filtered(workflow: str, *, kind: str | None = None, limit: int | None = None,
                  payloads: bool = False, **filters: str) -> pd.DataFrame:
    """What `events` returned when `kind != "run"` was part of the scan's filter."""
    layout = resolve_layout()
    files = layout.list_files(workflow)
    expression = ds.field("kind") != "run" if kind is None else ds.field("kind") == kind
    for name, value in filters.items():
        expression = expression & (ds.field(name) == value)
    columns = EVENT_SCHEMA.names if payloads else LIGHT_COLUMNS
    tables = []
    for data_file, table in query._scan_by_file(layout, files, columns, filter=expression):
        if table.num_rows:
            workflow_col = pa.array([data_file.workflow] * table.num_rows, pa.string())
            if NAME_COLUMN in table.column_names:
                workflow_col = pa.compute.coalesce(table[NAME_COLUMN], workflow_col)
                table = table.drop_columns([NAME_COLUMN])
            table = table.append_column("workflow", workflow_col)
            tables.append(table.append_column(
                "date", pa.array([data_file.date] * table.num_rows, pa.string())))
    if not tables:
        return query._empty_events(columns)
    table = pa.concat_tables(tables).sort_by([("started_at", "ascending"),
                                              ("event_id", "ascending")])
    if limit is not None:
        table = table.slice(0, limit)
    frame = table.to_pandas()
    if frame.empty:
        return query._empty_events(columns)
    first = ["event_id", "workflow", "run_id"]
    return llm_columns.add_cost_columns(frame[first + [c for c in frame.columns
                                                       if c not in first]])


CASES = [
    {}, {"limit": 0}, {"limit": 1}, {"limit": 7}, {"limit": 1000}, {"status": "error"},
    {"status": "ok", "limit": 3}, {"service": "api"}, {"service": "agent"}, {"kind": "run"},
    {"kind": "http"}, {"kind": "run", "limit": 1}, {"target": "agent"}, {"payloads": True},
    {"payloads": True, "limit": 5}, {"run_id": "run-4"},
]


@pytest.mark.parametrize("workflow", ["mixed", "plain", "life", "nope"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items())
                         or "all")
def test_events_are_what_the_scan_filter_gave(store, workflow, case):
    got = query.events(workflow, **case)
    want = scan_filtered(workflow, **case)
    assert list(got.columns) == list(want.columns)
    assert list(got.dtypes) == list(want.dtypes)
    pd.testing.assert_frame_equal(got.reset_index(drop=True), want.reset_index(drop=True),
                                  check_exact=True)
    if workflow == "mixed" and not case:
        assert len(got) == 30 and not (got["kind"] == "run").any()


def test_lifecycle_rows_out_whatever_the_order_and_limit(store):
    every = query.events("mixed")
    assert every["started_at"].is_monotonic_increasing
    assert query.events("mixed", limit=4).equals(every.head(4))
    both = pd.concat([every, query.events("mixed", kind="run")])
    assert len(both) == 42 and both["event_id"].is_unique
    assert query.events("life").empty


def test_a_null_kind_is_dropped_as_the_scan_filter_dropped_it():
    table = pa.table({"event_id": ["b", "a", "c", "d"], "run_id": ["r"] * 4,
                      "started_at": pa.array([2, 1, 1, 3], pa.timestamp("ns", tz="UTC")),
                      "kind": ["http", None, "run", "http"], "tags": [None] * 4})

    class File:
        workflow, date = "wf", "2024-05-01"

    frame = query._events_frame([(File(), table)], sort=True, steps_only=True)
    assert list(frame["event_id"]) == ["b", "d"]
    unsorted = query._events_frame([(File(), table)], sort=False, steps_only=True)
    assert list(unsorted["event_id"]) == ["b", "d"]
    assert len(query._events_frame([(File(), table)], sort=True)) == 4
