"""Retention (`tracelab retain`, `TRACELAB_RETAIN`): exactly the executions that started
before the cutoff go, whole, beside live writers; `/metrics` counters never go down.

Everything runs on real files (and a real moto S3 server for the object-store case), the
CLI and a concurrent writer in real subprocesses, `/metrics` through the real API app.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from event_factory import BASE_NS, DAY_NS, make_event
from tracelab.config import ConfigError
from tracelab.store import query
from tracelab.store.layout import StoreLayout, resolve_layout
from tracelab.store.retention import (DAILY_NAME, META_DIR, TALLY_NAME, parse_age, retain,
                                      run_daily, start_daily)
from tracelab.store.writer import StoreWriter

ROOT = Path(__file__).resolve().parent.parent
HOUR_NS = 3_600 * 1_000_000_000
BASE = datetime.fromtimestamp(BASE_NS / 1e9, tz=timezone.utc)  # 2024-05-01T00:00Z
ODD = "wf/ü%2F" + "x" * 249  # 256 characters: non-ASCII, `/`, `%`, a shortened directory


def at(day: float, hour: float = 0.0) -> int:
    return BASE_NS + int(day * DAY_NS) + int(hour * HOUR_NS)


def run_events(workflow: str, run_id: str, times: list[int], *, lifecycle: bool = True,
               target: str = "api.stripe.com") -> list[dict]:
    """A run's steps at `times`, wrapped in start/end lifecycle events like the SDK's."""
    steps = [make_event(workflow, run_id, started_at=t, target=target,
                        status="error" if i == 1 else "ok") for i, t in enumerate(times)]
    if not lifecycle:
        return steps
    start = make_event(workflow, run_id, started_at=times[0], kind="run", target="svc",
                       endpoint="start")
    end = make_event(workflow, run_id, started_at=times[-1], kind="run", target="svc",
                     endpoint="end")
    return [start, *steps, end]


def stored(layout: StoreLayout, workflow: str | None = None) -> dict[str, set[str]]:
    """run_id -> event ids stored (lifecycle events included), read straight from the files."""
    files = [f.path for f in layout.list_files(workflow)]
    table = query.read_table(layout, files, ["run_id", "event_id"])
    out: dict[str, set[str]] = {}
    for run_id, event_id in zip(table["run_id"].to_pylist(), table["event_id"].to_pylist()):
        out.setdefault(run_id, set()).add(event_id)
    return out


def by_run(events: list[dict]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for e in events:
        out.setdefault(e["run_id"], set()).add(e["event_id"])
    return out


def cli_env(extra: dict | None = None) -> dict[str, str]:
    """This environment without any Redis (unless `extra` names one): flock-only runs."""
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "TRACELAB_REDIS_URL")}
    return {**env, **(extra or {})}


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tracelab.cli", "retain", *args],
                          capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env=cli_env(env))


# -- the age syntax --------------------------------------------------------------------------

def test_parse_age_units_and_clear_errors():
    assert parse_age("30d") == timedelta(days=30)
    assert parse_age("12h") == timedelta(hours=12)
    assert parse_age("90m") == timedelta(minutes=90)
    assert parse_age("3600s") == timedelta(hours=1)
    assert parse_age("2w") == timedelta(days=14)
    for bad in ("30", "d", "30x", "-3d", "1.5d", "3 d", "", "0d", "30D", "9" * 30 + "w"):
        with pytest.raises(ValueError) as info:
            parse_age(bad)
        assert "30d, 12h, 90m, 3600s, 2w" in str(info.value) or "at most" in str(info.value)


@pytest.mark.parametrize("value", ["30", "0d", "-3d", "30days"])
def test_bad_older_than_exits_2_with_a_clear_message(tracelab_home, value):
    out = cli(f"--older-than={value}")
    assert out.returncode == 2
    assert "--older-than" in out.stderr and repr(value) in out.stderr
    assert "30d, 12h, 90m, 3600s, 2w" in out.stderr
    assert "Traceback" not in out.stderr


def test_bad_tracelab_retain_is_a_clear_error(tracelab_home, monkeypatch):
    monkeypatch.setenv("TRACELAB_RETAIN", "monthly")
    with pytest.raises(ConfigError, match=r"TRACELAB_RETAIN: 'monthly' is not an age"):
        start_daily(resolve_layout(), threading.Event())
    monkeypatch.delenv("TRACELAB_RETAIN")
    assert start_daily(resolve_layout(), threading.Event()) is None


# -- what goes -------------------------------------------------------------------------------

def test_deletes_only_the_executions_that_started_before_the_cutoff(tracelab_home):
    runs = {
        "r0": [at(0, 1), at(0, 2)],
        "r1": [at(1, 5)],
        "r2": [at(3, 10), at(3, 11)],        # the cutoff's day, started before it
        "r3": [at(3, 13), at(3, 14)],        # the cutoff's day, started after it
        "r4": [at(4, 1), at(4, 2), at(5, 1)],
    }
    events = [e for run_id, times in runs.items() for e in run_events("wf", run_id, times)]
    StoreWriter().write(events)
    layout = resolve_layout()
    report = retain(timedelta(days=2), now=BASE + timedelta(days=5, hours=12))
    assert report.cutoff == BASE + timedelta(days=3, hours=12)
    assert report.executions == 3 and report.events == 5  # steps, as stats and /metrics count
    assert sorted(report.partitions_deleted) == [("wf", "2024-05-01"), ("wf", "2024-05-02")]
    assert report.partitions_rewritten == [("wf", "2024-05-04")]
    assert stored(layout) == {k: v for k, v in by_run(events).items() if k in ("r3", "r4")}
    assert not (Path(layout.partition_dir("wf", "2024-05-01"))).exists()
    assert set(query.executions("wf", layout=layout)["run_id"]) == {"r3", "r4"}
    assert retain(timedelta(days=2), now=BASE + timedelta(days=5, hours=12)).executions == 0
    paris = timezone(timedelta(hours=2))  # any zone: the cutoff's day is a UTC day
    report = retain(timedelta(hours=1), now=(BASE + timedelta(days=4)).astimezone(paris),
                    dry_run=True)  # cutoff 05-04 23:00 UTC, 05-05 01:00 in Paris
    assert report.cutoff == BASE + timedelta(days=3, hours=23) and report.executions == 1
    assert (report.partitions_rewritten, report.partitions_deleted) == \
        ([("wf", "2024-05-04")], [])


def test_a_run_straddling_the_cutoff_goes_whole_from_every_partition(tracelab_home):
    old = run_events("wf", "old", [at(1, 23), at(2, 3), at(3, 8), at(4, 0.5)])
    new = run_events("wf", "new", [at(2, 1), at(3, 9)])
    writer = StoreWriter()
    writer.write(old[:3])  # several files per partition, the old run in several of them
    writer.write(new + old[3:])
    layout = resolve_layout()
    report = retain(timedelta(days=3), now=BASE + timedelta(days=5))  # cutoff: day 2, 00:00
    assert report.executions == 1
    assert report.partitions_deleted == [("wf", "2024-05-02")]
    assert sorted(report.partitions_rewritten) == [("wf", "2024-05-03"), ("wf", "2024-05-04"),
                                                   ("wf", "2024-05-05")]
    assert stored(layout) == by_run(new)
    (row,) = query.executions("wf", layout=layout).to_dict("records")
    assert row["run_id"] == "new" and row["events"] == 2 and row["state"] == "finished"
    # the rewritten files are plain, journal-free, and each has its event index
    names = [p.name for p in Path(layout.events_root).rglob("*") if p.is_file()]
    assert not [n for n in names if n.startswith(("_compaction-", "."))]
    assert len([n for n in names if n.startswith("_index-")]) == \
        len([n for n in names if n.endswith(".parquet")])


def test_workflow_option_limits_it_to_one_odd_workflow(tracelab_home):
    now = time.time_ns()  # the CLI cuts off at the real clock
    events = (run_events(ODD, "odd-old", [now - 10 * DAY_NS, now - DAY_NS])
              + run_events(ODD, "odd-new", [now - DAY_NS])
              + run_events("other", "other-old", [now - 10 * DAY_NS]))
    StoreWriter().write(events)
    layout = resolve_layout()
    out = cli("--older-than", "1w", "--workflow", ODD)
    assert out.returncode == 0, out.stderr
    assert "deleted 1 executions" in out.stdout and "1 partitions removed, 1 rewritten" \
        in out.stdout
    assert stored(layout) == by_run([e for e in events if e["run_id"] != "odd-old"])
    assert set(query.executions(ODD, layout=layout)["run_id"]) == {"odd-new"}


def test_the_cli_keeps_recent_runs_and_says_when_there_is_nothing(tracelab_home):
    now = time.time_ns()
    events = run_events("wf", "old", [now - 10 * DAY_NS]) + run_events("wf", "fresh", [now])
    StoreWriter().write(events)
    out = cli("--older-than", "1w")
    assert out.returncode == 0, out.stderr
    assert "deleted 1 executions started before" in out.stdout
    assert stored(resolve_layout()) == by_run([e for e in events if e["run_id"] == "fresh"])
    again = cli("--older-than", "1w")
    assert again.returncode == 0 and "nothing to delete" in again.stderr


def test_dry_run_deletes_nothing_and_says_what_it_would(tracelab_home):
    events = run_events("wf", "old", [at(0, 1), at(3, 1)]) + run_events("wf", "new", [at(3, 2)])
    StoreWriter().write(events)
    layout = resolve_layout()
    before = sorted(p for p in Path(layout.root).rglob("*"))
    out = cli("--older-than", "2d", "--dry-run")
    assert out.returncode == 0, out.stderr
    assert "would delete 2 executions" in out.stdout
    assert "2 partitions removed, 0 rewritten" in out.stdout  # 2024 is long before now
    assert sorted(p for p in Path(layout.root).rglob("*")) == before
    report = retain(timedelta(days=2), now=BASE + timedelta(days=4), dry_run=True)
    assert (report.executions, report.events, report.dry_run) == (1, 2, True)
    assert stored(layout) == by_run(events)


RETAINER = ("from datetime import datetime, timedelta, timezone; "
            "from tracelab.store.retention import retain; "
            "retain(timedelta(days=2), now=datetime(2024, 5, 6, 12, tzinfo=timezone.utc))")


def test_a_retention_killed_midway_is_finished_by_the_next_run(tracelab_home):
    events = []
    for w in range(4):  # each old run straddles into two kept days beside a new run
        for r in range(3):
            events += run_events(f"wf-{w}", f"old-{w}-{r}", [at(r, 1), at(3, 14), at(4, 3)])
        events += run_events(f"wf-{w}", f"new-{w}", [at(3, 13), at(4, 1)])
    writer = StoreWriter()
    writer.write(events[::2])
    writer.write(events[1::2])
    layout = resolve_layout()
    root = Path(layout.events_root)
    before = {p.name for p in root.rglob("*.parquet")}
    proc = subprocess.Popen([sys.executable, "-c", RETAINER], cwd=ROOT)
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        if {p.name for p in root.rglob("*.parquet")} != before:
            break
        time.sleep(0.002)
    proc.kill()
    proc.wait()
    rows = query.read_table(layout, [f.path for f in layout.list_files()], ["event_id"])
    ids = rows["event_id"].to_pylist()
    assert len(ids) == len(set(ids))  # TraceLab's readers never double, even before recovery
    retain(timedelta(days=2), now=datetime(2024, 5, 6, 12, tzinfo=timezone.utc))
    assert stored(layout) == by_run([e for e in events if e["run_id"].startswith("new-")])
    assert not list(root.rglob("_compaction-*"))


# -- the property ----------------------------------------------------------------------------

RUN = st.tuples(st.integers(0, 6), st.floats(0, 23.9), st.lists(st.floats(0, 60), min_size=0,
                                                                  max_size=3))


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(runs=st.lists(RUN, min_size=1, max_size=6), cutoff_day=st.integers(0, 7),
       cutoff_hour=st.sampled_from([0.0, 0.5, 6.0, 12.25, 23.9]), split=st.booleans())
def test_exactly_the_runs_that_started_before_the_cutoff_are_gone(runs, cutoff_day,
                                                                  cutoff_hour, split):
    events, starts = [], {}
    for i, (day, hour, later) in enumerate(runs):
        start = at(day, hour)
        times = [start] + sorted(start + int(h * HOUR_NS) for h in later)
        starts[f"run-{i}"] = start
        events += run_events("wf", f"run-{i}", times, lifecycle=bool(i % 2))
    with tempfile.TemporaryDirectory() as tmp:
        layout = resolve_layout(f"{tmp}/store", home=tmp)
        writer = StoreWriter(layout)
        if split:  # several files per partition
            writer.write(events[::2])
        writer.write(events)
        cutoff = BASE + timedelta(days=cutoff_day, hours=cutoff_hour)
        report = retain(timedelta(days=1), layout=layout, now=cutoff + timedelta(days=1))
        cutoff_ns = (cutoff - BASE) // timedelta(microseconds=1) * 1000 + BASE_NS
        kept = {r for r, s in starts.items() if s >= cutoff_ns}
        assert report.executions == len(starts) - len(kept)
        assert stored(layout) == {r: ids for r, ids in by_run(events).items() if r in kept}


# -- beside a live writer --------------------------------------------------------------------

LIVE_WRITER = r"""
import json, os, sys, time
sys.path.insert(0, "tests")
from event_factory import BASE_NS, DAY_NS, make_event
from tracelab.store import compact
from tracelab.store.writer import StoreWriter

compact.TIER_FILES = 2  # merge at every second file: retention races with merges all along
store, home, log, stop = sys.argv[1:5]
from tracelab.store.layout import resolve_layout
writer = StoreWriter(resolve_layout(store, home=home), auto_compact=True, compact_at=2)
i = 0
while not os.path.exists(stop) or i < 6:
    # a new run on the cutoff's day (after it) and the next day: must survive;
    # a late batch into an old day: deleted whole or kept whole, never in part
    new = [make_event("wf", f"live-{i}", started_at=BASE_NS + 3 * DAY_NS + 13 * 3600 * 10**9 + i),
           make_event("wf", f"live-{i}", started_at=BASE_NS + 4 * DAY_NS + i)]
    late = [make_event("wf", f"late-{i}", started_at=BASE_NS + DAY_NS + i + j) for j in range(3)]
    writer.write(new)
    writer.write(late)
    with open(log, "a") as f:
        f.write(json.dumps({"new": [e["event_id"] for e in new],
                            "late": [e["event_id"] for e in late]}) + "\n")
    i += 1
"""


def test_a_live_writer_in_another_process_loses_nothing_new(tracelab_home, tmp_path):
    """The writer merges its small files as it goes (auto_compact), so retention's rewrites
    race with the writer's writes and merges in the same partitions."""
    layout = resolve_layout()
    old = [run_events("wf", f"old-{i}", [at(i % 3, 1), at(3, 2), at(4, 3)]) for i in range(6)]
    writer = StoreWriter()
    for batch in old:
        writer.write(batch)
    log, stop = tmp_path / "written.jsonl", tmp_path / "stop"
    proc = subprocess.Popen([sys.executable, "-c", LIVE_WRITER, layout.root, str(tracelab_home),
                             str(log), str(stop)], cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while not (log.exists() and log.read_text().count("\n") >= 2):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        now = BASE + timedelta(days=5, hours=12)
        reports = []
        first = log.read_text().count("\n")
        while len(reports) < 3 or log.read_text().count("\n") < first + 12:  # overlap
            assert proc.poll() is None and time.monotonic() < deadline
            reports.append(retain(timedelta(days=2), now=now))
        stop.touch()
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert sum(r.executions for r in reports) >= 6
    all_ids = query.read_table(layout, [f.path for f in layout.list_files()],
                               ["event_id"])["event_id"].to_pylist()
    assert len(all_ids) == len(set(all_ids))  # the writer's own merges ran too: no double
    ids = set(all_ids)
    batches = [json.loads(line) for line in log.read_text().splitlines()]
    assert batches and all(set(b["new"]) <= ids for b in batches)
    for b in batches:  # each late batch (one file) is whole or gone
        assert len(set(b["late"]) & ids) in (0, 3)
    assert not any(r.startswith("old-") for r in stored(layout))


def test_a_partition_changed_while_retention_waits_for_its_lock_is_read_again(tracelab_home):
    """Retention reads a partition only once it holds its lock: files merged by a writer
    that held the lock first are not rewritten from a stale read (which would double rows)."""
    from tracelab.store.compact import compact

    old = run_events("wf", "old", [at(0, 1), at(3, 1)])
    new = run_events("wf", "new", [at(3, 2), at(3, 3)])
    writer = StoreWriter()
    writer.write(old)
    writer.write(new)  # day 4 holds two files, the old run's rows in one of them
    lock = writer.partition_lock("wf", "2024-05-04")
    reports: list = []
    with lock:
        worker = threading.Thread(target=lambda: reports.append(
            retain(timedelta(days=2), now=BASE + timedelta(days=4))))
        worker.start()
        worker.join(0.5)  # not an assertion: gives retention time to reach the lock
        assert compact("wf", "2024-05-04", writer=writer).files_after == 1
    worker.join(60)
    assert not worker.is_alive() and reports[0].executions == 1
    layout = resolve_layout()
    rows = query.read_table(layout, [f.path for f in layout.list_files()], ["event_id"])
    assert sorted(rows["event_id"].to_pylist()) == sorted(e["event_id"] for e in new)


def test_with_a_redis_url_retention_waits_for_another_hosts_lease(tmp_path, redis_server):
    """Two hosts (own TRACELAB_HOME, so their flocks never meet; own host id) share a store:
    `retain --redis-url` takes the partition's lease, so it reads the partition only after the
    other host, holding the lease, merged its files."""
    from tracelab.store.compact import compact

    store = str(tmp_path / "store")
    host_a = resolve_layout(store, home=tmp_path / "home-a", leases_url=redis_server.url)
    old = run_events("wf", "old", [at(0, 1), at(3, 1)])
    new = run_events("wf", "new", [at(3, 2), at(3, 3)])
    writer = StoreWriter(host_a)
    writer.write(old)
    writer.write(new)
    lock = writer.partition_lock("wf", "2024-05-04")
    env = cli_env({"TRACELAB_HOME": str(tmp_path / "home-b"), "TRACELAB_HOST_ID": "host-b",
                   "TRACELAB_STORE": store})
    with lock:
        assert lock.token is not None  # a lease, not only a flock
        proc = subprocess.Popen([sys.executable, "-m", "tracelab.cli", "retain",
                                 "--older-than", "1d", "--redis-url", redis_server.url],
                                cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
        client = redis_server.client()
        mine = int(client.get("tracelab:lease-token"))
        deadline = time.monotonic() + 60
        while int(client.get("tracelab:lease-token")) == mine:  # host b's first lease
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        try:
            proc.wait(0.5)  # not an assertion: time to reach this partition's lease
        except subprocess.TimeoutExpired:
            pass
        assert proc.poll() is None  # it waits for the lease this host holds
        assert compact("wf", "2024-05-04", layout=host_a, writer=writer).files_after == 1
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "deleted 2 executions" in out
    assert stored(host_a) == {}  # 2024 is long before now: both runs go, each row once
    host_a.leases.close()


# -- /metrics stays monotonic ----------------------------------------------------------------

def _target_events(url: str) -> dict[tuple, float]:
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url + "/metrics", timeout=30).text
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in ("tracelab_target_events_total", "tracelab_events_stored"):
                out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_metrics_target_events_never_decrease_across_a_retain(tracelab_home, monkeypatch):
    from test_api import UvicornThread
    from tracelab.server import metrics
    from tracelab.server.app import create_app

    monkeypatch.setattr(metrics, "WORKLOAD_TTL", 0.0)  # every scrape computes afresh
    monkeypatch.delenv("TRACELAB_API_TOKEN", raising=False)
    events = (run_events("wf", "old", [at(0, 1), at(0, 2), at(3, 1)])
              + run_events("wf", "new", [at(3, 2), at(3, 3)], target="api.openai.com"))
    StoreWriter().write(events)
    layout = resolve_layout()
    app = create_app(layout.root, poll_interval=0.1)
    stripe_ok = ("tracelab_target_events_total",
                 (("status", "ok"), ("target", "api.stripe.com")))
    with UvicornThread(app) as server:
        before = _target_events(server.url)
        assert before[("tracelab_events_stored", ())] == 5
        assert before[stripe_ok] == 2
        retain(timedelta(days=2), now=BASE + timedelta(days=4))
        after = _target_events(server.url)
        assert after[("tracelab_events_stored", ())] == 2  # the gauge shows the deletion
        assert {k: v for k, v in after.items() if k[0] != "tracelab_events_stored"} == \
            {k: v for k, v in before.items() if k[0] != "tracelab_events_stored"}
        StoreWriter().write(run_events("wf", "newer", [at(3, 5)]))
        later = _target_events(server.url)
        assert later[stripe_ok] == before[stripe_ok] + 1
    tally = json.loads((Path(layout.root) / META_DIR / TALLY_NAME).read_text())
    assert len(tally["files"]) == 2  # the day-1 file deleted, the day-4 file rewritten


def test_the_tally_settles_and_never_counts_a_live_file(tracelab_home, monkeypatch):
    from tracelab.store import retention

    StoreWriter().write(run_events("wf", "old", [at(0, 1), at(0, 2)]))
    layout = resolve_layout()
    retain(timedelta(days=1), now=BASE + timedelta(days=3))
    expected = {("api.stripe.com", "ok"): 1, ("api.stripe.com", "error"): 1}
    assert retention.deleted_counts(layout, []) == expected
    tally_path = Path(layout.root) / META_DIR / TALLY_NAME
    (path,) = json.loads(tally_path.read_text())["files"]
    live = [f"{layout.root}/{path}"]  # as if the file were still there
    assert retention.deleted_counts(layout, live) == {}
    assert retention.deleted_counts(layout, [], listed_before=live) is None
    monkeypatch.setattr(retention, "SETTLE_SECONDS", -1.0)
    retain(timedelta(days=1), now=BASE + timedelta(days=3))
    tally = json.loads(tally_path.read_text())
    assert tally["files"] == {} and retention.deleted_counts(layout, []) == expected


# -- TRACELAB_RETAIN: once a day per store ---------------------------------------------------

def test_the_daily_run_happens_once_a_day_per_store(tracelab_home):
    layout = resolve_layout()
    StoreWriter().write(run_events("wf", "a", [at(0, 1)]))
    day = BASE + timedelta(days=5, hours=1)
    first = run_daily(layout, timedelta(days=2), now=day)
    assert first is not None and first.executions == 1
    StoreWriter().write(run_events("wf", "b", [at(0, 2)]))
    assert run_daily(layout, timedelta(days=2), now=day + timedelta(hours=20)) is None
    assert set(stored(layout)) == {"b"}  # the second call that day did nothing
    marker = json.loads((Path(layout.root) / META_DIR / DAILY_NAME).read_text())
    assert marker["day"] == "2024-05-06"
    again = run_daily(layout, timedelta(days=2), now=day + timedelta(days=1))
    assert again is not None and again.executions == 1 and stored(layout) == {}


def test_start_daily_runs_in_a_thread_until_stopped(tracelab_home, monkeypatch):
    monkeypatch.setenv("TRACELAB_RETAIN", "30d")
    now = time.time_ns()
    events = run_events("wf", "ancient", [now - 40 * DAY_NS]) + run_events("wf", "today", [now])
    StoreWriter().write(events)
    layout = resolve_layout()
    stop = threading.Event()
    thread = start_daily(layout, stop)
    assert thread is not None and thread.daemon
    try:
        deadline = time.monotonic() + 30
        while "ancient" in stored(layout):
            assert thread.is_alive() and time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert set(stored(layout)) == {"today"}
    assert (Path(layout.root) / META_DIR / DAILY_NAME).exists()


# -- object storage --------------------------------------------------------------------------

def test_retention_and_its_markers_on_object_storage(s3, monkeypatch, tmp_path):
    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    layout = resolve_layout(s3.store_uri(f"retain-{uuid.uuid4().hex}"), home=tmp_path)
    assert not layout.is_local
    events = run_events("wf", "old", [at(0, 1), at(2, 1)]) + run_events("wf", "new", [at(2, 2)])
    StoreWriter(layout).write(events)
    report = run_daily(layout, timedelta(days=1), now=BASE + timedelta(days=3))
    assert report is not None and report.executions == 1
    assert stored(layout) == by_run([e for e in events if e["run_id"] == "new"])
    assert run_daily(layout, timedelta(days=1), now=BASE + timedelta(days=3, hours=1)) is None
    from tracelab.store import retention

    assert sum(retention.deleted_counts(layout, [f.path for f in layout.list_files()])
               .values()) == 2
    assert Counter(f.date for f in layout.list_files()) == Counter({"2024-05-03": 1})
