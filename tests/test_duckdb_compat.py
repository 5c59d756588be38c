"""The store is plain hive-partitioned Parquet: DuckDB agrees with TraceLab's query layer."""
from __future__ import annotations

import duckdb

from event_factory import make_runs
from tracelab.store import query
from tracelab.store.writer import StoreWriter


def test_duckdb_reads_the_same_counts_as_the_query_layer(tracelab_home):
    events = make_runs(workflows=3, runs=20, events_per_run=15, days=2, error_every=11)
    writer = StoreWriter()
    for i in range(0, len(events), 170):
        writer.write(events[i:i + 170])
    glob = str(tracelab_home / "store" / "events" / "**" / "*.parquet")
    con = duckdb.connect()
    con.execute(f"CREATE VIEW ev AS SELECT * FROM read_parquet('{glob}', hive_partitioning=true)")
    assert con.execute("SELECT count(*) FROM ev").fetchone()[0] == len(events)
    assert con.execute("SELECT count(DISTINCT event_id) FROM ev").fetchone()[0] == len(events)
    per_workflow = dict(con.execute(
        "SELECT workflow, count(DISTINCT run_id) FROM ev GROUP BY workflow").fetchall())
    ours = query.workflows().set_index("workflow")
    assert per_workflow == {wf: int(n) for wf, n in ours["executions"].items()}
    for workflow in per_workflow:
        duck = {run: (n, err) for run, n, err in con.execute(
            "SELECT run_id, count(*), count(*) FILTER (WHERE status = 'error') FROM ev "
            "WHERE workflow = ? GROUP BY run_id", [workflow]).fetchall()}
        df = query.executions(workflow)
        assert duck == {r: (int(n), int(e)) for r, n, e in
                        zip(df["run_id"], df["events"], df["errors"])}
    # Tags stay queryable from outside too, as JSON text.
    prod = con.execute("SELECT count(DISTINCT run_id) FROM ev "
                       "WHERE json_extract_string(tags, '$.env') = 'prod'").fetchone()[0]
    assert prod == sum(len(query.executions(wf, tags={"env": "prod"})) for wf in per_workflow)
    started = con.execute("SELECT typeof(started_at) FROM ev LIMIT 1").fetchone()[0]
    assert started.startswith("TIMESTAMP")
    # The exact name kept in the files does not clash with the hive partition, and agrees.
    assert con.execute("SELECT count(*) FROM ev WHERE workflow_name IS DISTINCT FROM workflow"
                       ).fetchone()[0] == 0
