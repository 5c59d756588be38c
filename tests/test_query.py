"""The query layer: executions right across batches and days, filters, unknown ids."""
from __future__ import annotations

import pandas as pd
import pytest

from event_factory import BASE_NS, DAY_NS, make_event
from tracelab.store import query
from tracelab.store.writer import StoreWriter


@pytest.fixture
def store(tracelab_home):
    """Two runs of `shop` split over three writes and two UTC days, plus another workflow."""
    writer = StoreWriter()
    a = [make_event("shop", "run-a", seq=i, started_at=BASE_NS + i * 1_000_000,
                    service="api" if i % 2 else "worker", tags={"env": "prod"})
         for i in range(6)]
    a.append(make_event("shop", "run-a", seq=6, started_at=BASE_NS + DAY_NS + 5_000_000,
                        status="error", target="smtp:mail", tags={"env": "prod"}))
    b = [make_event("shop", "run-b", seq=i, started_at=BASE_NS + 3_600 * 10**9 + i * 10**6,
                    tags={"env": "dev"}) for i in range(4)]
    other = [make_event("other", "run-o", seq=i) for i in range(3)]
    writer.write(a[:3] + b[:2])
    writer.write(a[3:] + other)
    StoreWriter().write(b[2:])  # a second writer, like a second ingester
    return {"a": a, "b": b, "other": other}


def test_executions_are_right_across_batches_files_and_days(store):
    df = query.executions("shop")
    assert list(df["run_id"]) == ["run-b", "run-a"]  # newest first
    a = df.set_index("run_id").loc["run-a"]
    assert a["events"] == 7 and a["errors"] == 1 and a["status"] == "error"
    assert a["started_at"] == pd.Timestamp(BASE_NS, unit="ns", tz="UTC")
    assert a["ended_at"] == pd.Timestamp(BASE_NS + DAY_NS + 5_000_000 + 12_500_000, unit="ns",
                                         tz="UTC")
    assert a["duration_ms"] == pytest.approx((DAY_NS + 17_500_000) / 1e6)
    assert a["services"] == ["api", "worker"]
    assert a["targets"] == ["api.stripe.com", "smtp:mail"]
    assert a["tags"] == {"env": "prod"}
    b = df.set_index("run_id").loc["run-b"]
    assert b["events"] == 4 and b["status"] == "ok" and b["errors"] == 0
    assert str(df["started_at"].dt.tz) == "UTC"


def test_execution_filters(store):
    assert list(query.executions("shop", status="error")["run_id"]) == ["run-a"]
    assert list(query.executions("shop", status="ok")["run_id"]) == ["run-b"]
    assert list(query.executions("shop", tags={"env": "dev"})["run_id"]) == ["run-b"]
    assert query.executions("shop", tags={"env": "qa"}).empty
    since = pd.Timestamp(BASE_NS + 60 * 10**9, unit="ns", tz="UTC")
    assert list(query.executions("shop", since=since)["run_id"]) == ["run-b"]
    assert list(query.executions("shop", until="2024-05-01T00:30:00Z")["run_id"]) == ["run-a"]
    assert list(query.executions("shop", limit=1)["run_id"]) == ["run-b"]
    assert query.executions("no-such-workflow").empty
    with pytest.raises(ValueError, match="status='broken'"):
        query.executions("shop", status="broken")
    with pytest.raises(ValueError, match="since='not a time'"):
        query.executions("shop", since="not a time")


def test_execution_events_have_no_payloads_and_come_in_order(store):
    frame = query.execution_events("run-a")
    assert len(frame) == 7
    assert "request" not in frame.columns and "response" not in frame.columns
    assert frame["started_at"].is_monotonic_increasing
    assert set(frame["date"]) == {"2024-05-01", "2024-05-02"}
    assert (frame["workflow"] == "shop").all()
    assert "latency_ms" in frame.columns


def test_event_has_payloads_and_round_trips_the_contract(tracelab_home):
    event = make_event("rt", "run-1", status="error", custom_field={"kept": [1, 2]})
    StoreWriter().write([event])
    frame = query.event(event["event_id"])
    assert len(frame) == 1 and frame["request"].iloc[0].startswith("{")
    back = query.event_dict(event["event_id"])
    assert back == {k: v for k, v in event.items() if v is not None}


def test_unknown_ids_raise_key_error_naming_them(store):
    with pytest.raises(KeyError, match="run-nope"):
        query.execution_events("run-nope")
    with pytest.raises(KeyError, match="deadbeef"):
        query.event("deadbeef")


def test_events_filters_and_workflows(store):
    assert len(query.events("shop")) == 11
    assert len(query.events("shop", since="2024-05-02")) == 1
    assert len(query.events("shop", run_id="run-b")) == 4
    assert len(query.events("shop", status="error")) == 1
    assert len(query.events("shop", tags={"env": "dev"})) == 4
    assert len(query.events("shop", service="worker")) == 3
    assert len(query.events("shop", limit=2)) == 2
    assert "request" in query.events("shop", payloads=True).columns
    wf = query.workflows().set_index("workflow")
    assert wf.loc["shop", "executions"] == 2 and wf.loc["shop", "events"] == 11
    assert wf.loc["other", "events"] == 3


def test_notebook_objects(store):
    import tracelab as tl

    runs = tl.executions("shop")
    assert list(runs.df["run_id"]) == ["run-b", "run-a"] and len(runs) == 2
    run = tl.execution("run-a")
    assert len(run.events) == 7
    assert "2 runs" in repr(runs) and "7 events" in repr(run)
    assert set(tl.workflows()["workflow"]) == {"shop", "other"}
    with pytest.raises(KeyError, match="ghost"):
        tl.execution("ghost")


def test_empty_store_answers_empty(tracelab_home):
    assert query.workflows().empty
    assert query.executions("x").empty
    assert query.events("x").empty


def test_times_outside_the_stores_range_are_a_clear_error(store):
    """Times are int64 nanoseconds (1677-2262): a far date is a ValueError, never an overflow."""
    wf = query.workflows()["workflow"].iloc[0]
    with pytest.raises(ValueError, match="out of range: times go from 1677 to 2262"):
        query.executions(wf, since="2999-01-01")
    with pytest.raises(ValueError, match="is not a time"):
        query.events(wf, until="next tuesday")
