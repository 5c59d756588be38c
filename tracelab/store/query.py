"""The only code that reads store files; every face (notebook, API, tests) asks through here.

Executions are computed here rather than kept as a second table, so they are right by
construction however a run's events were split over batches, files and days. What makes that
fast is that store files never change once written: each file's per-run summary (first start,
last end, step and error counts, lifecycle start / end / errored-end counts, services,
targets, tags) is computed once from the narrow columns and cached
by path for the life of the process; a query lists the files (cheap), summarises only files it
has not seen, and forgets files that compaction removed.

Payload columns (`request`, `response`) are read only by `event()` and `events(payloads=True)`.
Before answering, readers fold any spool files that embedded-mode recorders left behind, so a
second process sees what the first one recorded.

LLM cost is never stored: events frames get `llm_cost_usd`/`llm_cost_source` and executions
`llm_tokens`/`llm_cost_usd` from the tags with the price table in effect (`store.llm`).

Run lifecycle events (`kind: "run"`, endpoint `start` / `end`) are not steps: every frame of
events leaves them out (unless `events(kind="run")` asks for them), `events`/`errors` count
steps only, and they only feed an execution's `state` and its real start and end times.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from datetime import date as date_type, datetime
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from tracelab.config import idle_seconds
from tracelab.store import event_index
from tracelab.store import llm as llm_columns
from tracelab.store.layout import NAME_COLUMN, DataFile, StoreLayout, resolve_layout
from tracelab.store.schema import EVENT_SCHEMA, LIGHT_COLUMNS, TIMESTAMP, row_to_event

TimeLike = str | datetime | date_type | pd.Timestamp | int | float

EXECUTION_COLUMNS = ["workflow", "run_id", "started_at", "ended_at", "duration_ms", "events",
                     "errors", "status", "state", "services", "targets", "tags", "llm_tokens",
                     "llm_cost_usd"]
# An execution's `state`; see `run_states`.
RUN_STATES = ("running", "finished", "failed", "abandoned")
# The `kind` of the run lifecycle events (endpoint `start` / `end`): not steps.
LIFECYCLE_KIND = "run"
# Computed from each event's tags when read: a corrected price table fixes old events.
LLM_EVENT_COLUMNS = ["llm_cost_usd", "llm_cost_source"]
WORKFLOW_COLUMNS = ["workflow", "executions", "events", "errors", "first_event", "last_event"]
_SUMMARY_SOURCE = ["run_id", "started_at", "latency_ms", "status", "service", "kind", "target",
                   "endpoint", "tags"]
_NOT_LIFECYCLE = ds.field("kind") != LIFECYCLE_KIND


# -- low-level reading (also used by the writer's dedupe index and by compaction) ----------

def read_table(layout: StoreLayout, paths: Sequence[str], columns: Sequence[str] | None = None,
               filter: pc.Expression | None = None) -> pa.Table:
    """Read some columns of some data files as one Arrow table."""
    if not paths:
        names = list(columns) if columns is not None else EVENT_SCHEMA.names
        return EVENT_SCHEMA.empty_table().select(names)
    dataset = ds.dataset(list(paths), schema=EVENT_SCHEMA, format="parquet",
                         filesystem=layout.fs)
    return dataset.to_table(columns=list(columns) if columns is not None else None,
                            filter=filter)


def _scan_by_file(layout: StoreLayout, files: Sequence[DataFile], columns: Sequence[str],
                  filter: pc.Expression | None = None) -> list[tuple[DataFile, pa.Table]]:
    """Read files in one multi-threaded scan, keeping which rows came from which file."""
    by_path = {f.path: f for f in files}
    dataset = ds.dataset(list(by_path), schema=EVENT_SCHEMA, format="parquet",
                         filesystem=layout.fs)
    batches: dict[str, list[pa.RecordBatch]] = {}
    for tagged in dataset.scanner(columns=list(columns), filter=filter).scan_batches():
        batches.setdefault(tagged.fragment.path, []).append(tagged.record_batch)
    schema = EVENT_SCHEMA.empty_table().select(list(columns)).schema
    return [(by_path[p], pa.Table.from_batches(b, schema=schema)) for p, b in batches.items()]


# -- per-file run summaries -----------------------------------------------------------------

class _SummaryCache:
    """Per-run summaries of the live files of one store, kept per workflow.

    Updated from a listing: files not seen before are summarised, files gone (compacted away)
    are dropped. A workflow's query lists and summarises only that workflow's files.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tables: dict[str, pa.Table] = {}
        self.files: dict[str, set[str]] = {}

    def current(self, layout: StoreLayout, files: list[DataFile],
                workflow: str | None) -> pa.Table:
        by_workflow: dict[str, list[DataFile]] = {}
        for data_file in files:
            by_workflow.setdefault(data_file.workflow, []).append(data_file)
        if workflow is not None:
            by_workflow.setdefault(workflow, [])
        with self.lock:
            if workflow is None:
                for gone in set(self.tables) - set(by_workflow):
                    del self.tables[gone], self.files[gone]
            for name, wf_files in by_workflow.items():
                self._update(layout, name, wf_files)
            tables = [self.tables[name] for name in sorted(by_workflow)]
        return pa.concat_tables(tables) if tables else _SUMMARY_SCHEMA.empty_table()

    def _update(self, layout: StoreLayout, workflow: str, files: list[DataFile]) -> None:
        live = {f.path for f in files}
        known = self.files.get(workflow, set())
        table = self.tables.get(workflow, _SUMMARY_SCHEMA.empty_table())
        if not known <= live:
            table = table.filter(pc.is_in(table["file"], value_set=pa.array(sorted(live),
                                                                            pa.string())))
            known = known & live
        new = [f for f in files if f.path not in known]
        if new:
            table = pa.concat_tables([table, _summarise(layout, new)]).combine_chunks()
            known = known | {f.path for f in new}
        self.tables[workflow] = table
        self.files[workflow] = known


_SUMMARY_SCHEMA = pa.schema([
    ("file", pa.string()), ("workflow", pa.string()), ("run_id", pa.string()),
    ("first_ns", pa.int64()), ("last_ns", pa.int64()), ("events", pa.int64()),
    ("errors", pa.int64()), ("starts", pa.int64()),
    ("ends", pa.int64()), ("end_errors", pa.int64()), ("services", pa.list_(pa.string())),
    ("targets", pa.list_(pa.string())), ("tags", pa.list_(pa.string())),
    ("llm", llm_columns.LLM_GROUPS),
])


def _summarise(layout: StoreLayout, files: list[DataFile]) -> pa.Table:
    if not files:
        return _SUMMARY_SCHEMA.empty_table()
    parts = []
    for data_file, table in _scan_by_file(layout, files, _SUMMARY_SOURCE):
        if table.num_rows == 0:
            continue
        start = pc.cast(table["started_at"], pa.int64())
        latency_ns = pc.cast(pc.round(pc.multiply(table["latency_ms"], 1e6)), pa.int64(),
                             safe=False)
        end = pc.add(start, latency_ns)
        is_run = pc.fill_null(pc.equal(table["kind"], LIFECYCLE_KIND), False)
        is_error = pc.fill_null(pc.equal(table["status"], "error"), False)
        is_end = pc.and_(is_run, pc.fill_null(pc.equal(table["endpoint"], "end"), False))

        def count(mask: pa.ChunkedArray) -> pa.ChunkedArray:
            return pc.cast(mask, pa.int64())

        grouped = pa.table({
            "run_id": table["run_id"], "s": start, "e": end,
            "step": count(pc.invert(is_run)),
            "err": count(pc.and_(is_error, pc.invert(is_run))),
            "start": count(pc.and_(is_run, pc.fill_null(pc.equal(table["endpoint"], "start"),
                                                        False))),
            "end": count(is_end), "end_err": count(pc.and_(is_end, is_error)),
            "service": table["service"],
            # a lifecycle event's target is the service itself, not an external system
            "target": pc.if_else(is_run, pa.scalar(None, pa.string()), table["target"]),
            "tags": table["tags"],
        }).group_by("run_id", use_threads=False).aggregate([
            ("s", "min"), ("e", "max"), ("step", "sum"), ("err", "sum"),
            ("start", "sum"), ("end", "sum"), ("end_err", "sum"),
            ("service", "distinct"), ("target", "distinct"),
            ("tags", "distinct", pc.CountOptions(mode="only_valid")),
        ])
        n = grouped.num_rows
        parts.append(pa.table([
            pa.array([data_file.path] * n, pa.string()),
            pa.array([data_file.workflow] * n, pa.string()),
            grouped["run_id"], grouped["s_min"], grouped["e_max"], grouped["step_sum"],
            grouped["err_sum"], grouped["start_sum"], grouped["end_sum"],
            grouped["end_err_sum"], grouped["service_distinct"], grouped["target_distinct"],
            grouped["tags_distinct"],
            llm_columns.summarise_groups(table["run_id"], table["tags"],
                                         grouped["run_id"].to_pylist()),
        ], schema=_SUMMARY_SCHEMA))
    return pa.concat_tables(parts) if parts else _SUMMARY_SCHEMA.empty_table()


_CACHES: dict[str, _SummaryCache] = {}
_CACHES_LOCK = threading.Lock()


def _summaries(layout: StoreLayout, workflow: str | None = None) -> pa.Table:
    """Summaries of the live files (of one workflow, or all), retrying once if compaction
    removed a file between listing and reading."""
    with _CACHES_LOCK:
        cache = _CACHES.setdefault(layout.uri or layout.root, _SummaryCache())
    for attempt in range(3):
        files = layout.list_files(workflow)
        try:
            return cache.current(layout, files, workflow)
        except FileNotFoundError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


# -- helpers --------------------------------------------------------------------------------

def _layout(layout: StoreLayout | None) -> StoreLayout:
    layout = layout or resolve_layout()
    from tracelab.store.spool import fold_if_pending

    fold_if_pending(layout)
    return layout


def to_timestamp(value: TimeLike, name: str) -> pd.Timestamp:
    """A UTC timestamp from what a notebook user would type; naive times are taken as UTC."""
    try:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            ts = pd.Timestamp(int(value), unit="ns", tz="UTC")
        else:
            ts = pd.Timestamp(value)
    except (ValueError, TypeError, OverflowError) as exc:
        raise ValueError(f"{name}={value!r} is not a time: use an ISO string such as "
                         f"'2024-05-01T12:00:00Z', a datetime, or epoch nanoseconds") from exc
    if ts is pd.NaT:
        raise ValueError(f"{name}={value!r} is not a time")
    try:  # the store's times are int64 nanoseconds: years 1677 to 2262
        ts = ts.as_unit("ns")
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"{name}={value!r} is out of range: times go from 1677 to 2262") \
            from exc
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _check_status(status: str | None) -> None:
    if status is not None and status not in ("ok", "error"):
        raise ValueError(f"status={status!r} is not a status: use 'ok' or 'error'")


def _check_limit(limit: int | None) -> None:
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
        raise ValueError(f"limit={limit!r} must be a non-negative integer")


def _check_tags(tags: Mapping[str, str] | None) -> dict[str, str]:
    if tags is None:
        return {}
    if not isinstance(tags, Mapping):
        raise ValueError(f"tags={tags!r} must be a mapping such as {{'env': 'prod'}}")
    return {str(k): str(v) for k, v in tags.items()}


def _merge_tags(tag_jsons: list[str] | None) -> dict[str, str]:
    merged: dict[str, str] = {}
    for text in sorted(t for t in tag_jsons or () if t is not None):
        merged.update(orjson.loads(text))
    return merged


def _empty(columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})


def _ns_to_utc(values: pa.Array | pa.ChunkedArray) -> pd.Series:
    return pd.Series(pc.cast(values, TIMESTAMP).to_pandas()).dt.tz_convert("UTC")


# -- public query API -----------------------------------------------------------------------

def workflows(*, layout: StoreLayout | None = None) -> pd.DataFrame:
    """One row per workflow: executions, events and errors (steps), first and last event
    time (lifecycle events included)."""
    layout = _layout(layout)
    table = _summaries(layout)
    if table.num_rows == 0:
        return _empty(WORKFLOW_COLUMNS)
    per_run = table.group_by(["workflow", "run_id"], use_threads=False).aggregate(
        [("events", "sum"), ("errors", "sum"), ("first_ns", "min"), ("last_ns", "max")])
    per_wf = per_run.group_by("workflow", use_threads=False).aggregate([
        ("run_id", "count"), ("events_sum", "sum"), ("errors_sum", "sum"),
        ("first_ns_min", "min"), ("last_ns_max", "max")]).sort_by("workflow")
    return pd.DataFrame({
        "workflow": per_wf["workflow"].to_pylist(),
        "executions": per_wf["run_id_count"].to_numpy(),
        "events": per_wf["events_sum_sum"].to_numpy(),
        "errors": per_wf["errors_sum_sum"].to_numpy(),
        "first_event": _ns_to_utc(per_wf["first_ns_min_min"]),
        "last_event": _ns_to_utc(per_wf["last_ns_max_max"]),
    })


def run_states(starts: Any, ends: Any, end_errors: Any, last_ns: Any, *,
               now_ns: int | None = None, idle_s: float | None = None) -> np.ndarray:
    """Each run's `state` from its lifecycle event counts and its newest event's end.

    `failed`: an `end` event errored; `finished`: every `start` has its `end`, or the run has
    no lifecycle event at all (imports, OTLP, older SDKs) and is idle; `running`: a start is
    still open (or there is no lifecycle at all) and the newest event is less than `idle_s`
    (default `TRACELAB_IDLE_S`) old; `abandoned`: a start is still open and the run is idle.
    Counting starts and ends keeps a run shared by several processes (each publishing its
    own start and end) running until the last of them ends.
    """
    starts, ends, end_errors, last = (np.asarray(v, dtype=np.int64)
                                      for v in (starts, ends, end_errors, last_ns))
    idle_s = idle_seconds() if idle_s is None else idle_s
    now_ns = time.time_ns() if now_ns is None else now_ns
    recent = (now_ns - last) < idle_s * 1e9
    open_ = ends < np.maximum(starts, 1)
    return np.select([recent & open_, end_errors > 0, ~open_ | (starts == 0)],
                     ["running", "failed", "finished"], "abandoned").astype(object)


def _group_runs(table: pa.Table) -> pa.Table:
    """Per-file summaries merged into one row per run."""
    return table.group_by("run_id", use_threads=False).aggregate([
        ("first_ns", "min"), ("last_ns", "max"), ("events", "sum"), ("errors", "sum"),
        ("starts", "sum"), ("ends", "sum"), ("end_errors", "sum")])


def _failed(runs: pa.Table) -> pa.ChunkedArray:
    """A run's `status` is `error` when a step errored or its end event did."""
    return pc.or_(pc.greater(runs["errors_sum"], 0), pc.greater(runs["end_errors_sum"], 0))


def executions(workflow: str, since: TimeLike | None = None, until: TimeLike | None = None,
               status: str | None = None, tags: Mapping[str, str] | None = None,
               limit: int | None = None, *, layout: StoreLayout | None = None) -> pd.DataFrame:
    """One row per run of `workflow`, newest first.

    `since`/`until` bound the run's first start (`since <= started_at < until`); `status` is
    `ok` or `error` (error when any step errored or the run failed); `tags` keeps runs
    carrying every given tag; `limit` keeps the newest N after filtering. An unknown workflow
    has no runs. `events`/`errors` count steps; `started_at`/`ended_at` span the lifecycle
    events too; `state` is one of `RUN_STATES` (see `run_states`), as of this call.
    """
    _check_status(status)
    _check_limit(limit)
    wanted_tags = _check_tags(tags)
    since_ts = to_timestamp(since, "since") if since is not None else None
    until_ts = to_timestamp(until, "until") if until is not None else None
    idle_s = idle_seconds()
    layout = _layout(layout)
    table = _summaries(layout, workflow)
    if table.num_rows == 0:
        return _empty(EXECUTION_COLUMNS)
    runs = _group_runs(table)
    first = runs["first_ns_min"]
    keep = None
    if since_ts is not None:
        keep = pc.greater_equal(first, since_ts.value)
    if until_ts is not None:
        cond = pc.less(first, until_ts.value)
        keep = cond if keep is None else pc.and_(keep, cond)
    if status is not None:
        cond = _failed(runs) if status == "error" else pc.invert(_failed(runs))
        keep = cond if keep is None else pc.and_(keep, cond)
    if keep is not None:
        runs = runs.filter(keep)
    runs = runs.sort_by([("first_ns_min", "descending"), ("run_id", "ascending")])
    run_ids = runs["run_id"].to_pylist()
    tag_texts = _distinct_per_run(table, "tags")
    run_tags = [_merge_tags(tag_texts.get(r)) for r in run_ids]
    if wanted_tags:
        mask = [all(t.get(k) == v for k, v in wanted_tags.items()) for t in run_tags]
        runs = runs.filter(pa.array(mask, pa.bool_()))
        run_tags = [t for t, m in zip(run_tags, mask) if m]
        run_ids = [r for r, m in zip(run_ids, mask) if m]
    if limit is not None:
        runs = runs.slice(0, limit)
        run_tags = run_tags[:limit]
        run_ids = run_ids[:limit]
    if runs.num_rows == 0:
        return _empty(EXECUTION_COLUMNS)
    return _execution_frame(table, runs, workflow, run_ids, run_tags, idle_s)


def _execution_frame(table: pa.Table, runs: pa.Table, workflow: str, run_ids: list[str],
                     run_tags: list[dict[str, str]], idle_s: float) -> pd.DataFrame:
    first_ns = runs["first_ns_min"].to_numpy()
    last_ns = runs["last_ns_max"].to_numpy()
    services = _distinct_per_run(table, "services")
    targets = _distinct_per_run(table, "targets")
    llm_tokens, llm_cost = llm_columns.run_totals(table["run_id"], table["llm"], run_ids)
    return pd.DataFrame({
        "workflow": workflow,
        "run_id": run_ids,
        "started_at": _ns_to_utc(runs["first_ns_min"]),
        "ended_at": _ns_to_utc(runs["last_ns_max"]),
        "duration_ms": (last_ns - first_ns) / 1e6,
        "events": runs["events_sum"].to_numpy(),
        "errors": runs["errors_sum"].to_numpy(),
        "status": ["error" if f else "ok" for f in _failed(runs).to_pylist()],
        "state": run_states(runs["starts_sum"], runs["ends_sum"], runs["end_errors_sum"],
                            last_ns, idle_s=idle_s),
        "services": [sorted(services.get(r, ())) for r in run_ids],
        "targets": [sorted(targets.get(r, ())) for r in run_ids],
        "tags": run_tags,
        "llm_tokens": pd.Series(llm_tokens, dtype="int64"),
        "llm_cost_usd": pd.Series(llm_cost, dtype="float64"),
    })


def execution_summary(run_id: str, workflow: str | None = None, *,
                      layout: StoreLayout | None = None) -> dict[str, Any]:
    """One run's row of `executions()` as a dict (the same computation, from the same cached
    summaries), across every workflow that holds the run unless `workflow` is given (then
    `workflow` names them all, joined by commas). KeyError naming the run when it is unknown.
    """
    idle_s = idle_seconds()
    return _summary_of(_run_summaries(_layout(layout), run_id, workflow), run_id, idle_s)


def _summary_of(hits: pa.Table, run_id: str, idle_s: float) -> dict[str, Any]:
    names = sorted(set(hits["workflow"].to_pylist()))
    tags = _merge_tags(_distinct_per_run(hits, "tags").get(run_id))
    frame = _execution_frame(hits, _group_runs(hits), ",".join(names), [run_id], [tags],
                             idle_s)
    return frame.iloc[0].to_dict()


def _plain(summary: dict[str, Any]) -> dict[str, Any]:
    """A summary with JSON-ready values (times as ISO text, numpy scalars as Python ones):
    pyarrow writes a frame's `attrs` into the schema metadata as JSON."""
    out: dict[str, Any] = {}
    for key, value in summary.items():
        if isinstance(value, pd.Timestamp):
            value = value.isoformat()
        elif isinstance(value, np.generic):
            value = value.item()
        out[key] = value
    return out


def _run_summaries(layout: StoreLayout, run_id: str, workflow: str | None) -> pa.Table:
    table = _summaries(layout, workflow)
    hits = table.filter(pc.equal(table["run_id"], run_id))
    if hits.num_rows == 0:
        where = f" in workflow {workflow!r}" if workflow is not None else ""
        raise KeyError(f"unknown run_id {run_id!r}: the store at {layout.uri or layout.root} "
                       f"holds no event of it{where}")
    return hits


def _distinct_per_run(table: pa.Table, column: str) -> dict[str, list[str]]:
    """Distinct values of a list column per run, merged across the run's files."""
    values = table[column].combine_chunks()
    flat = pc.list_flatten(values)
    if len(flat) == 0:
        return {}
    parents = pc.list_parent_indices(values)
    exploded = pa.table({"run_id": pc.take(table["run_id"], parents), "v": flat})
    grouped = exploded.group_by("run_id", use_threads=False).aggregate(
        [("v", "distinct", pc.CountOptions(mode="only_valid"))])
    return dict(zip(grouped["run_id"].to_pylist(), grouped["v_distinct"].to_pylist()))


def execution_events(run_id: str, workflow: str | None = None, *,
                     layout: StoreLayout | None = None) -> pd.DataFrame:
    """Every step of one run in start order, without payload columns (no lifecycle events).

    `frame.attrs["execution"]` holds the run's `execution_summary` (state, real start and
    end), which the steps alone cannot tell. Raises KeyError naming the run when the store
    holds no event of it; a run with lifecycle events only has an empty frame.
    """
    idle_s = idle_seconds()
    layout = _layout(layout)
    hits = _run_summaries(layout, run_id, workflow)
    paths = set(hits["file"].to_pylist())
    files = [f for f in layout.list_files() if f.path in paths]
    parts = _scan_by_file(layout, files, LIGHT_COLUMNS,
                          filter=(ds.field("run_id") == run_id) & _NOT_LIFECYCLE)
    frame = _events_frame(parts, sort=True)
    if frame.empty:
        frame = _empty_events(LIGHT_COLUMNS)
    frame.attrs["execution"] = _plain(_summary_of(hits, run_id, idle_s))
    return frame


def _empty_events(columns: Sequence[str]) -> pd.DataFrame:
    return _empty(["event_id", "workflow", "run_id", *(c for c in columns if c != NAME_COLUMN
                                                       and c not in ("event_id", "run_id")),
                   *LLM_EVENT_COLUMNS])


def _events_frame(parts: list[tuple[DataFile, pa.Table]], sort: bool,
                  limit: int | None = None, steps_only: bool = False) -> pd.DataFrame:
    """The scanned parts as one frame (workflow and date columns added, the LLM cost columns
    computed), in (started_at, event_id) order when `sort`, at most `limit` rows.

    `steps_only` drops lifecycle rows exactly as the scan filter `kind != "run"` would (a
    null kind is dropped too), but through the one `take` the sort does anyway: filtering in
    the scan copies every column of every batch even when nothing is dropped (issue 16).
    """
    tables = []
    for data_file, table in parts:
        if table.num_rows:
            # The exact name stored in the file wins; files older than it are named by the
            # directory they are in. (pa.repeat: no Python list of num_rows strings.)
            workflow: pa.ChunkedArray | pa.Array = pa.repeat(
                pa.scalar(data_file.workflow, pa.string()), table.num_rows)
            if NAME_COLUMN in table.column_names:
                workflow = pc.coalesce(table[NAME_COLUMN], workflow)
                table = table.drop_columns([NAME_COLUMN])
            table = table.append_column("workflow", workflow)
            tables.append(table.append_column(
                "date", pa.repeat(pa.scalar(data_file.date, pa.string()), table.num_rows)))
    if not tables:
        return pd.DataFrame()
    table = pa.concat_tables(tables)
    keep = None
    if steps_only:
        steps = pc.not_equal(table["kind"], LIFECYCLE_KIND).combine_chunks()
        if steps.null_count or not pc.all(steps).as_py():
            keep = steps
    if sort:
        order = pc.sort_indices(table, [("started_at", "ascending"), ("event_id", "ascending")])
        if keep is not None:
            order = order.filter(keep.take(order))
        if limit is not None:
            order = order.slice(0, limit)
        table = table.take(order)
    else:
        if keep is not None:
            table = table.filter(keep)
        if limit is not None:
            table = table.slice(0, limit)
    frame = table.to_pandas()
    first = ["event_id", "workflow", "run_id"]
    return llm_columns.add_cost_columns(frame[first + [c for c in frame.columns
                                                       if c not in first]])


def event(event_id: str, *, layout: StoreLayout | None = None) -> pd.DataFrame:
    """One event as a one-row DataFrame, payload columns (JSON text) included.

    Found through each file's event-id index (see `event_index`): only the row groups that
    may hold the id are read; files without a trustworthy index are scanned.
    Raises KeyError naming the event id when the store does not hold it.
    """
    layout = _layout(layout)
    for attempt in range(3):  # compaction may remove a file between listing and reading
        try:
            frame = _find_event(layout, layout.list_files(), event_id)
            break
        except FileNotFoundError:
            if attempt == 2:
                raise
    if frame.empty:
        raise KeyError(f"unknown event_id {event_id!r}: the store at "
                       f"{layout.uri or layout.root} does not hold it")
    return frame


def _find_event(layout: StoreLayout, files: list[DataFile], event_id: str) -> pd.DataFrame:
    hashed = event_index.id_hash(event_id)
    wanted = ds.field("event_id") == event_id
    candidates: list[tuple[DataFile, list[int]]] = []
    unindexed: list[DataFile] = []
    for data_file, index in _file_indexes(layout, files):
        if index is None:
            unindexed.append(data_file)
        elif groups := index.row_groups(hashed):
            candidates.append((data_file, groups))
    for data_file, groups in candidates:
        try:
            table = _read_row_groups(layout, data_file, groups, wanted)
        except (pa.ArrowInvalid, IndexError):  # an index that does not fit its file
            table = None
        if table is None or table.num_rows == 0:  # a hash collision, or a wrong index
            table = read_table(layout, [data_file.path], filter=wanted)
        if table.num_rows:
            return _events_frame([(data_file, table)], sort=False, limit=1)
    if unindexed:
        parts = _scan_by_file(layout, unindexed, EVENT_SCHEMA.names, filter=wanted)
        return _events_frame(parts, sort=False, limit=1)
    return pd.DataFrame()


def _read_row_groups(layout: StoreLayout, data_file: DataFile, groups: list[int],
                     filter: pc.Expression) -> pa.Table:
    fragment = ds.ParquetFileFormat().make_fragment(data_file.path, layout.fs,
                                                    row_groups=groups)
    return fragment.to_table(schema=EVENT_SCHEMA, filter=filter)


_INDEXES: dict[str, dict[str, event_index.FileIndex | None]] = {}
_INDEXES_LOCK = threading.Lock()


def _file_indexes(layout: StoreLayout, files: list[DataFile]
                  ) -> list[tuple[DataFile, event_index.FileIndex | None]]:
    """Each file with its loaded index, or None when it has none that describes it.

    Loaded once per file and process (files and their indexes never change); an index that
    names another file or size is stale and never used.
    """
    with _INDEXES_LOCK:
        cache = _INDEXES.setdefault(layout.uri or layout.root, {})
        live = {f.path for f in files}
        for gone in [p for p in cache if p not in live]:
            del cache[gone]
    out: list[tuple[DataFile, event_index.FileIndex | None]] = []
    for data_file in files:
        if data_file.index is None:
            out.append((data_file, None))
            continue
        if data_file.path not in cache:
            try:
                with layout.fs.open_input_stream(data_file.index) as stream:
                    loaded = event_index.load(stream.read())
            except OSError:  # gone or unreadable right now: scan the file this time
                out.append((data_file, None))
                continue
            with _INDEXES_LOCK:
                cache[data_file.path] = loaded
        index = cache.get(data_file.path)
        out.append((data_file, index if index is not None
                    and index.describes(data_file.path, data_file.size) else None))
    return out


def event_dict(event_id: str, *, layout: StoreLayout | None = None) -> dict[str, Any]:
    """The stored event rebuilt as the contract JSON object, fields outside the contract too."""
    frame = event(event_id, layout=layout)
    row = frame.iloc[0].to_dict()
    row["started_at"] = int(frame["started_at"].iloc[0].value)
    row = {k: (None if _is_missing(v) else v) for k, v in row.items()}
    for key in ("status_code", "pid", "schema"):
        if row.get(key) is not None:
            row[key] = int(row[key])
    return row_to_event(row, frame["workflow"].iloc[0])


def _is_missing(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def events(workflow: str, since: TimeLike | None = None, until: TimeLike | None = None, *,
           run_id: str | None = None, status: str | None = None, kind: str | None = None,
           service: str | None = None, target: str | None = None,
           tags: Mapping[str, str] | None = None, limit: int | None = None,
           payloads: bool = False, layout: StoreLayout | None = None) -> pd.DataFrame:
    """Events of one workflow in start order, filtered; payload columns only if asked for.

    `since`/`until` bound each event's own start, so day partitions outside them are skipped.
    Lifecycle events (`kind="run"`) are not steps: left out unless `kind="run"` asks for them.
    With `run_id`, `frame.attrs["execution"]` holds that run's `execution_summary`.
    """
    _check_status(status)
    _check_limit(limit)
    wanted_tags = _check_tags(tags)
    since_ts = to_timestamp(since, "since") if since is not None else None
    until_ts = to_timestamp(until, "until") if until is not None else None
    layout = _layout(layout)
    files = layout.list_files(workflow)
    if since_ts is not None:
        files = [f for f in files if f.date >= since_ts.strftime("%Y-%m-%d")]
    if until_ts is not None:
        files = [f for f in files if f.date <= until_ts.strftime("%Y-%m-%d")]
    conditions = []
    if since_ts is not None:
        conditions.append(ds.field("started_at") >= pa.scalar(since_ts.value, TIMESTAMP))
    if until_ts is not None:
        conditions.append(ds.field("started_at") < pa.scalar(until_ts.value, TIMESTAMP))
    for name, value in (("run_id", run_id), ("status", status), ("kind", kind),
                        ("service", service), ("target", target)):
        if value is not None:
            conditions.append(ds.field(name) == value)
    # kind=None drops lifecycle rows in _events_frame, not in the scan (see steps_only)
    if wanted_tags:
        matching = _matching_tag_values(layout, files, wanted_tags)
        conditions.append(ds.field("tags").isin(matching))
    expression = None
    for cond in conditions:
        expression = cond if expression is None else expression & cond
    columns = EVENT_SCHEMA.names if payloads else LIGHT_COLUMNS
    idle_s = idle_seconds() if run_id is not None else None
    parts = _scan_by_file(layout, files, columns, filter=expression) if files else []
    frame = _events_frame(parts, sort=True, limit=limit, steps_only=kind is None)
    if frame.empty:
        frame = _empty_events(columns)
    if idle_s is not None:
        summaries = _summaries(layout, workflow)
        hits = summaries.filter(pc.equal(summaries["run_id"], run_id))
        if hits.num_rows:
            frame.attrs["execution"] = _plain(_summary_of(hits, run_id, idle_s))
    return frame


def llm_calls(workflow: str, since: TimeLike | None = None, until: TimeLike | None = None,
              *, run_id: str | None = None, layout: StoreLayout | None = None
              ) -> pd.DataFrame:
    """One row per LLM call of `workflow` (or of one run) in start order: tokens, cost and
    its source (priced now), latency, time to first token; see `llm.LLM_CALL_COLUMNS`."""
    return llm_columns.llm_calls_frame(events(workflow, since, until, run_id=run_id,
                                              layout=layout))


def _matching_tag_values(layout: StoreLayout, files: list[DataFile],
                         wanted: dict[str, str]) -> list[str]:
    """The distinct stored tag texts that carry every wanted tag (few, so decoding is cheap)."""
    if not files:
        return []
    distinct = pc.unique(read_table(layout, [f.path for f in files], ["tags"])["tags"])
    out = []
    for text in distinct.to_pylist():
        if text is None:
            continue
        tags = orjson.loads(text)
        if all(tags.get(k) == v for k, v in wanted.items()):
            out.append(text)
    return out


TARGET_COLUMNS = ["target", "status", "events"]
_TARGET_SCHEMA = pa.schema([("target", pa.string()), ("status", pa.string()),
                           ("events", pa.int64())])
_TARGET_COUNTS: dict[str, dict[str, pa.Table]] = {}
_TARGET_LOCK = threading.Lock()


def target_counts(*, layout: StoreLayout | None = None) -> pd.DataFrame:
    """Steps stored per target and status (`target` null for steps without one); lifecycle
    events are not counted.

    Reads only the `target` and `status` columns; each file's counts are cached by path (files
    never change), so a call lists the files and reads only those it has not seen.
    """
    layout = _layout(layout)
    with _TARGET_LOCK:
        cache = _TARGET_COUNTS.setdefault(layout.uri or layout.root, {})
    for attempt in range(3):
        files = layout.list_files()
        try:
            with _TARGET_LOCK:
                live = {f.path for f in files}
                for gone in set(cache) - live:
                    del cache[gone]
                new = [f for f in files if f.path not in cache]
                if new:
                    for data_file, table in _scan_by_file(layout, new, ["target", "status"],
                                                          filter=_NOT_LIFECYCLE):
                        grouped = table.group_by(["target", "status"], use_threads=False) \
                            .aggregate([("status", "count", pc.CountOptions(mode="all"))])
                        cache[data_file.path] = pa.table(
                            [grouped["target"], grouped["status"], grouped["status_count"]],
                            schema=_TARGET_SCHEMA)
                    for data_file in new:  # files with no rows
                        cache.setdefault(data_file.path, _TARGET_SCHEMA.empty_table())
                tables = [cache[p] for p in sorted(live)]
            break
        except FileNotFoundError:
            if attempt == 2:
                raise
    if not tables:
        return _empty(TARGET_COLUMNS)
    table = pa.concat_tables(tables)
    if table.num_rows == 0:
        return _empty(TARGET_COLUMNS)
    total = table.group_by(["target", "status"], use_threads=False) \
        .aggregate([("events", "sum")]).sort_by([("target", "ascending"),
                                                 ("status", "ascending")])
    return pd.DataFrame({"target": total["target"].to_pylist(),
                         "status": total["status"].to_pylist(),
                         "events": total["events_sum"].to_numpy()})


def store_stats(*, layout: StoreLayout | None = None) -> dict[str, int]:
    """Counts for `tracelab stats`: workflows, executions, events (steps, as everywhere in
    the query layer: lifecycle events are not counted), files, bytes."""
    layout = _layout(layout)
    files = layout.list_files()
    table = _summaries(layout)
    runs = table.group_by(["workflow", "run_id"], use_threads=False).aggregate([]) \
        if table.num_rows else table
    return {
        "workflows": len({f.workflow for f in files}),
        "executions": runs.num_rows,
        "events": int(pc.sum(table["events"]).as_py() or 0) if table.num_rows else 0,
        "files": len(files),
        "bytes": sum(f.size for f in files),
    }
