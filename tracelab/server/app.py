"""The HTTP API: `create_app()` builds the FastAPI app that `tracelab serve` runs.

Every answer comes from the query layer (`tracelab.store.query`); this module only shapes it
as JSON. Routes (all under `/api`, bearer-protected when a token is set):

- `GET /api/workflows`: one row per workflow (executions, events, errors, first/last event);
- `GET /api/workflows/{wf}/executions`: runs newest first, filtered by `status`, `since`,
  `until`, `tag=key:value` (repeatable), paged by `limit` and an opaque `cursor`;
- `GET /api/executions/{run_id}`: the execution and its events without payloads
  (`shape=columns` gives the events column-wise, dictionary-encoded: what the web UI reads);
- `GET /api/events/{event_id}`: one event with its request and response, as the contract JSON;
- `GET /api/executions/{a}/diff/{b}`: `tracelab.analysis.diff.diff_executions` as JSON rows;
- `GET /api/stream`: Server-Sent Events `workflow`, `execution`, `events` as data lands.

Outside `/api`: `/healthz`, `/metrics` (Prometheus, `tracelab_` names, including executions per
workflow and events, errors and latency quantiles per target), `/docs`, `/openapi.json`.
Unknown ids are a JSON 404, bad parameters a JSON 422. With `OTEL_EXPORTER_OTLP_ENDPOINT` set,
requests are traced with OpenTelemetry and exported over OTLP/HTTP.

Live updates poll cheaply: one watcher per app lists the store's files (and the embedded
spool) every `poll_interval` seconds while someone listens; only when the listing changed does
it ask the query layer for the changed workflows' runs and read the new files' narrow columns.
"""
from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import math
import os
import threading
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from tracelab import __version__
from tracelab.store import query
from tracelab.store.layout import StoreLayout, resolve_layout

log = logging.getLogger("tracelab.server")

# Events of a run sent inline by the stream per change; beyond this the client refetches.
STREAM_EVENTS_INLINE = 2000
# Up to this many steps per side, the diff also compares request/response bodies.
DIFF_PAYLOAD_STEPS = 20_000
# A run whose last event ended this recently is shown as running.
ACTIVE_SECONDS = 30.0
# /metrics: per-target and per-workflow figures are recomputed at most this often; latency
# quantiles cover events started in the last LATENCY_WINDOW seconds, the newest
# LATENCY_SAMPLE of them per target.
WORKLOAD_TTL = 10.0
LATENCY_WINDOW = 3600.0
LATENCY_SAMPLE = 10_000
LATENCY_QUANTILES = (0.5, 0.95, 0.99)
# Columns of the execution view (no payloads); `shape=columns` dictionary-encodes these.
_DICT_COLUMNS = ("status", "service", "source", "kind", "target", "endpoint", "error_type")
_EVENT_COLUMNS = ("event_id", "started_at", "latency_ms", "status", "status_code", "service",
                  "source", "kind", "target", "endpoint", "span_id", "parent_id", "error_type",
                  "error_message", "tags")


class ORJSONResponse(JSONResponse):
    """JSON via orjson: numpy scalars and big lists serialise fast; NaN becomes null."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY, default=_default)


def _default(value: Any) -> Any:
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# -- shaping query results ------------------------------------------------------------------

def _iso(ts: Any) -> str | None:
    if ts is None or (isinstance(ts, float) and math.isnan(ts)) or ts is pd.NaT:
        return None
    return pd.Timestamp(ts).isoformat().replace("+00:00", "Z")


def _workflow_row(row: dict) -> dict:
    return {
        "workflow": row["workflow"], "executions": int(row["executions"]),
        "events": int(row["events"]), "errors": int(row["errors"]),
        "first_event": _iso(row["first_event"]), "last_event": _iso(row["last_event"]),
    }


def _execution_row(row: dict, now_ns: int | None = None) -> dict:
    now_ns = time.time_ns() if now_ns is None else now_ns
    started = pd.Timestamp(row["started_at"])
    ended = pd.Timestamp(row["ended_at"])
    return {
        "workflow": row["workflow"], "run_id": row["run_id"],
        "started_at": _iso(started), "ended_at": _iso(ended),
        "started_at_ns": int(started.value), "ended_at_ns": int(ended.value),
        "duration_ms": float(row["duration_ms"]), "events": int(row["events"]),
        "errors": int(row["errors"]), "status": row["status"],
        "services": list(row["services"]), "targets": list(row["targets"]),
        "tags": dict(row["tags"] or {}),
        "active": now_ns - int(ended.value) < ACTIVE_SECONDS * 1e9,
    }


def _summary_from_events(frame: pd.DataFrame) -> dict:
    """An execution's summary from its events (the same numbers as `query.executions`)."""
    start_ns = frame["started_at"].astype("int64")
    end_ns = start_ns + (frame["latency_ms"] * 1e6).round().astype("int64")
    errors = int((frame["status"] == "error").sum())
    tags: dict[str, str] = {}
    for text in sorted(t for t in frame["tags"].dropna().unique()):
        tags.update(orjson.loads(text))
    workflows = sorted(frame["workflow"].unique())
    first, last = int(start_ns.min()), int(end_ns.max())
    return _execution_row({
        "workflow": workflows[0] if len(workflows) == 1 else ",".join(workflows),
        "run_id": frame["run_id"].iloc[0],
        "started_at": pd.Timestamp(first, unit="ns", tz="UTC"),
        "ended_at": pd.Timestamp(last, unit="ns", tz="UTC"),
        "duration_ms": (last - first) / 1e6, "events": len(frame), "errors": errors,
        "status": "error" if errors else "ok",
        "services": sorted(frame["service"].dropna().unique()),
        "targets": sorted(frame["target"].dropna().unique()), "tags": tags,
    })


def _events_table(frame: pd.DataFrame) -> pa.Table:
    table = pa.Table.from_pandas(frame[[c for c in _EVENT_COLUMNS if c in frame.columns]],
                                 preserve_index=False)
    if "status_code" in table.column_names:  # pandas made it float to hold nulls
        i = table.column_names.index("status_code")
        table = table.set_column(i, "status_code", pc.cast(table["status_code"], pa.int32()))
    return table


def _event_rows(table: pa.Table, t0_ns: int) -> list[dict]:
    """Events as contract-like objects (no payloads), plus `offset_ms` from the run's start."""
    cols = {name: table[name].to_pylist() for name in _EVENT_COLUMNS if name in table.column_names}
    starts = pc.cast(table["started_at"], pa.int64()).to_pylist()
    rows = []
    for i, start in enumerate(starts):
        row: dict[str, Any] = {name: values[i] for name, values in cols.items()}
        row["started_at"] = start
        row["offset_ms"] = (start - t0_ns) / 1e6
        error_type, error_message = row.pop("error_type", None), row.pop("error_message", None)
        if error_type is not None or error_message is not None:
            row["error"] = {"type": error_type, "message": error_message}
        tags = row.get("tags")
        row["tags"] = orjson.loads(tags) if tags else {}
        rows.append(row)
    return rows


def _event_columns(table: pa.Table, t0_ns: int) -> dict[str, Any]:
    """Events column-wise: numbers as arrays, repetitive strings as {values, codes}."""
    starts = pc.cast(table["started_at"], pa.int64())
    out: dict[str, Any] = {
        "count": table.num_rows,
        "offset_ms": pc.divide(pc.cast(pc.subtract(starts, t0_ns), pa.float64()),
                               1e6).to_pylist(),
    }
    for name in _EVENT_COLUMNS:
        if name == "started_at" or name not in table.column_names:
            continue
        column = table[name]
        if name in _DICT_COLUMNS:
            encoded = pc.dictionary_encode(column).combine_chunks()
            out[name] = {"values": encoded.dictionary.to_pylist(),
                         "codes": encoded.indices.fill_null(-1).to_pylist()}
        else:
            out[name] = column.to_pylist()
    return out


# -- parameters -----------------------------------------------------------------------------

def _time_param(value: str | None, name: str) -> Any:
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return int(text)
    try:
        ts = query.to_timestamp(text, name)
        return int(ts.as_unit("ns").value)
    except (ValueError, OverflowError) as exc:
        if isinstance(exc, OverflowError) or "Out of bounds" in str(exc):
            raise HTTPException(422, detail=f"{name}={value!r} is outside the time range "
                                "the store can hold (years 1678-2261)") from None
        raise HTTPException(422, detail=str(exc)) from None


def _tag_params(values: list[str] | None) -> dict[str, str] | None:
    if not values:
        return None
    tags = {}
    for item in values:
        sep = ":" if ":" in item else "=" if "=" in item else None
        key, _, value = item.partition(sep) if sep else ("", "", "")
        if not key:
            raise HTTPException(422, detail=f"tag={item!r} must be key:value, e.g. env:prod")
        tags[key] = value
    return tags


def _encode_cursor(started_ns: int, run_id: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([started_ns, run_id])).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[int, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        started_ns, run_id = orjson.loads(raw)
        if not isinstance(started_ns, int) or not isinstance(run_id, str):
            raise ValueError
        return started_ns, run_id
    except (ValueError, TypeError, orjson.JSONDecodeError):
        raise HTTPException(422, detail=f"cursor={cursor!r} is not a cursor this API "
                            "returned (take next_cursor from the previous page)") from None


def _not_found(exc: KeyError) -> HTTPException:
    message = exc.args[0] if exc.args else str(exc)
    return HTTPException(404, detail=str(message))


# -- the live watcher -----------------------------------------------------------------------

class StoreWatcher:
    """Notices new data in the store and tells every subscriber (one queue each).

    Polls only while someone is subscribed. A poll lists files (store and spool); if the set
    of live files is unchanged it stops there.
    """

    def __init__(self, layout: StoreLayout, poll_interval: float) -> None:
        self.layout = layout
        self.poll_interval = poll_interval
        self.subscribers: set[asyncio.Queue] = set()
        self._task: asyncio.Task | None = None
        self._paths: set[str] | None = None
        self._runs: dict[tuple[str, str], int] = {}
        self._workflows: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()
        self.polls = 0
        self.changes = 0

    def subscribe(self) -> asyncio.Queue:
        q: asyncio.Queue = asyncio.Queue(maxsize=256)
        self.subscribers.add(q)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop())
        return q

    def unsubscribe(self, q: asyncio.Queue) -> None:
        self.subscribers.discard(q)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        for q in list(self.subscribers):
            self._put(q, None)

    async def _loop(self) -> None:
        while self.subscribers:
            try:
                messages = await asyncio.to_thread(self.poll)
            except Exception as exc:  # a bad poll must not end the stream
                log.warning("live update poll failed: %s", exc)
                messages = []
            for message in messages:
                for q in list(self.subscribers):
                    self._put(q, message)
            await asyncio.sleep(self.poll_interval)

    @staticmethod
    def _put(q: asyncio.Queue, message: Any) -> None:
        try:
            q.put_nowait(message)
        except asyncio.QueueFull:  # a slow client: drop the backlog, tell it to refetch
            while not q.empty():
                q.get_nowait()
            q.put_nowait(("resync", {}))

    def poll(self) -> list[tuple[str, dict]]:
        """One look at the store; the messages to send (none on the first look)."""
        with self._lock:
            self.polls += 1
            from tracelab.store.spool import fold_if_pending

            fold_if_pending(self.layout)
            files = self.layout.list_files()
            paths = {f.path for f in files}
            if self._paths is None:
                self._paths = paths
                self._baseline()
                return []
            if paths == self._paths:
                return []
            new_files = [f for f in files if f.path not in self._paths]
            self._paths = paths
            self.changes += 1
            return self._changes(new_files)

    def _baseline(self) -> None:
        frame = query.workflows(layout=self.layout)
        for row in frame.to_dict("records"):
            self._workflows[row["workflow"]] = (int(row["executions"]), int(row["events"]))
            runs = query.executions(row["workflow"], layout=self.layout)
            for run_id, count in zip(runs["run_id"], runs["events"]):
                self._runs[(row["workflow"], run_id)] = int(count)

    def _changes(self, new_files: list) -> list[tuple[str, dict]]:
        messages: list[tuple[str, dict]] = []
        changed = sorted({f.workflow for f in new_files})
        if not changed:
            return messages
        workflows = {r["workflow"]: r for r in query.workflows(layout=self.layout)
                     .to_dict("records")}
        now_ns = time.time_ns()
        for wf in changed:
            row = workflows.get(wf)
            if row is None:
                continue
            counts = (int(row["executions"]), int(row["events"]))
            if self._workflows.get(wf) != counts:
                self._workflows[wf] = counts
                messages.append(("workflow", _workflow_row(row)))
            runs = query.executions(wf, layout=self.layout)
            grown: dict[str, dict] = {}
            for record in runs.to_dict("records"):
                key = (wf, record["run_id"])
                if self._runs.get(key) != int(record["events"]):
                    self._runs[key] = int(record["events"])
                    grown[record["run_id"]] = _execution_row(record, now_ns)
            if not grown:
                continue
            for summary in grown.values():
                messages.append(("execution", summary))
            paths = [f.path for f in new_files if f.workflow == wf]
            try:
                table = query.read_table(
                    self.layout, paths, ["run_id", *_EVENT_COLUMNS],
                    filter=ds.field("run_id").isin(list(grown)))
            except FileNotFoundError:  # compacted away meanwhile: clients refetch
                continue
            for run_id, summary in grown.items():
                part = table.filter(pc.equal(table["run_id"], run_id))
                if part.num_rows == 0 or part.num_rows > STREAM_EVENTS_INLINE:
                    continue
                part = part.sort_by([("started_at", "ascending"), ("event_id", "ascending")])
                messages.append(("events", {
                    "workflow": wf, "run_id": run_id, "t0_ns": str(summary["started_at_ns"]),
                    "events": _event_rows(part, summary["started_at_ns"]),
                }))
        return messages


# -- metrics --------------------------------------------------------------------------------

class _Metrics:
    def __init__(self, layout: StoreLayout, watcher: StoreWatcher, ingester: Any) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("tracelab_api_requests", "API requests served",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("tracelab_api_request_duration_seconds",
                                 "API request latency (streams excluded)", ["method", "route"],
                                 registry=self.registry,
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
        self.stream_clients = Gauge("tracelab_stream_clients",
                                    "Server-Sent Events clients connected",
                                    registry=self.registry)
        self.stream_clients.set_function(lambda: len(watcher.subscribers))
        self.registry.register(_StoreCollector(layout, ingester))
        self.registry.register(_WorkloadCollector(layout))


class _WorkloadCollector:
    """Per-workflow and per-target figures from the query layer, cached for WORKLOAD_TTL.

    `tracelab_workflow_executions{workflow}`, `tracelab_target_events_total{target,status}`
    (events stored; a step without a target counts as target="") and
    `tracelab_target_latency_ms{target,quantile}` over the last hour's events.
    """

    def __init__(self, layout: StoreLayout) -> None:
        self.layout = layout
        self._lock = threading.Lock()
        self._cached: tuple[float, list] | None = None

    def describe(self) -> list:
        return []

    def collect(self) -> Iterable[Any]:
        with self._lock:
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] >= WORKLOAD_TTL:
                self._cached = (now, self._families())
            families = self._cached[1]
        yield from families

    def _families(self) -> list:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        executions = GaugeMetricFamily("tracelab_workflow_executions",
                                       "Executions stored per workflow", labels=["workflow"])
        events = CounterMetricFamily("tracelab_target_events", "Events stored per target and "
                                     "status", labels=["target", "status"])
        latency = GaugeMetricFamily("tracelab_target_latency_ms", "Latency quantiles per "
                                    "target over events started in the last hour (ms)",
                                    labels=["target", "quantile"])
        try:
            flows = query.workflows(layout=self.layout)
            for row in flows.to_dict("records"):
                executions.add_metric([row["workflow"]], int(row["executions"]))
            counts = query.target_counts(layout=self.layout)
            for row in counts.to_dict("records"):
                events.add_metric([row["target"] or "", row["status"] or ""],
                                  int(row["events"]))
            for target, values in self._latency(flows).items():
                for q, value in zip(LATENCY_QUANTILES, values):
                    latency.add_metric([target, str(q)], value)
        except Exception as exc:
            log.warning("per-target metrics for /metrics failed: %s", exc)
        return [executions, events, latency]

    def _latency(self, flows: pd.DataFrame) -> dict[str, list[float]]:
        """Quantiles of `latency_ms` per target over the recent events of every workflow."""
        if flows.empty:
            return {}
        since = pd.Timestamp.now(tz="UTC") - pd.Timedelta(seconds=LATENCY_WINDOW)
        frames = []
        for row in flows.to_dict("records"):
            if row["last_event"] is None or pd.Timestamp(row["last_event"]) < since:
                continue
            frame = query.events(row["workflow"], since=since, layout=self.layout)
            if not frame.empty:
                frames.append(frame[["target", "started_at", "latency_ms"]])
        if not frames:
            return {}
        frame = pd.concat(frames, ignore_index=True).dropna(subset=["latency_ms"])
        frame["target"] = frame["target"].fillna("")
        frame = frame.sort_values("started_at").groupby("target").tail(LATENCY_SAMPLE)
        table = frame.groupby("target")["latency_ms"].quantile(list(LATENCY_QUANTILES)) \
            .unstack()
        return {str(t): [float(v) for v in values] for t, values in
                zip(table.index, table.to_numpy())}


class _StoreCollector:
    """Store and ingest figures computed at scrape time through the query layer."""

    def __init__(self, layout: StoreLayout, ingester: Any) -> None:
        self.layout = layout
        self.ingester = ingester
        self._last_read: tuple[float, int] | None = None

    def describe(self) -> list:
        return []

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        try:
            stats = query.store_stats(layout=self.layout)
        except Exception as exc:
            log.warning("store stats for /metrics failed: %s", exc)
            stats = None
        if stats is not None:
            for name, key, text in (
                    ("tracelab_events_stored", "events", "Events in the store"),
                    ("tracelab_executions_stored", "executions", "Executions in the store"),
                    ("tracelab_workflows_stored", "workflows", "Workflows in the store"),
                    ("tracelab_store_files", "files", "Live data files in the store"),
                    ("tracelab_store_bytes", "bytes", "Bytes of live data files")):
                yield GaugeMetricFamily(name, text, value=stats[key])
        ingester = self.ingester
        if ingester is None:
            return
        s = ingester.stats
        for name, value, text in (
                ("tracelab_ingest_entries_read", s.read, "Stream entries read by the ingester"),
                ("tracelab_ingest_events_stored", s.stored, "Events the ingester stored"),
                ("tracelab_ingest_duplicates", s.duplicates, "Redelivered events dropped"),
                ("tracelab_ingest_dead_letters", s.dead, "Entries sent to the dead stream"),
                ("tracelab_ingest_flushes", s.flushes, "Store writes by the ingester")):
            yield CounterMetricFamily(name, text, value=value)
        now = time.monotonic()
        rate = 0.0
        if self._last_read is not None and now > self._last_read[0]:
            rate = (s.read - self._last_read[1]) / (now - self._last_read[0])
        self._last_read = (now, s.read)
        yield GaugeMetricFamily("tracelab_ingest_rate", "Entries read per second since the "
                                "previous scrape", value=rate)
        lag = _ingest_lag(ingester)
        if lag is not None:
            yield GaugeMetricFamily("tracelab_ingest_lag", "Stream entries not yet delivered "
                                    "to the consumer group, plus those pending", value=lag)


def _ingest_lag(ingester: Any) -> float | None:
    try:
        import redis

        client = redis.Redis.from_url(ingester.config.redis_url, socket_timeout=0.5,
                                      socket_connect_timeout=0.5)
        try:
            for group in client.xinfo_groups(ingester.config.stream):
                name = group.get("name")
                name = name.decode() if isinstance(name, bytes) else name
                if name == ingester.config.group:
                    return float((group.get("lag") or 0) + (group.get("pending") or 0))
        finally:
            client.close()
    except Exception:
        return None
    return None


class _MetricsMiddleware:
    """Counts and times every HTTP request by route template (pure ASGI, streams pass through)."""

    def __init__(self, app: Any, metrics: _Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = {"code": 500}

        async def _send(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, _send)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "GET")
            self.metrics.requests.labels(method, template, str(status["code"])).inc()
            if template != "/api/stream":
                self.metrics.latency.labels(method, template).observe(
                    time.perf_counter() - began)


# -- OpenTelemetry ---------------------------------------------------------------------------

def _instrument(app: FastAPI) -> Any:
    """Trace the API with OpenTelemetry when `OTEL_EXPORTER_OTLP_ENDPOINT` is set."""
    if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return None
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        log.warning("OTEL_EXPORTER_OTLP_ENDPOINT is set but OpenTelemetry is not installed "
                    "(pip install 'tracelab[server]'): %s", exc)
        return None
    service = os.environ.get("OTEL_SERVICE_NAME") or "tracelab-api"
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider,
                                       excluded_urls="healthz,metrics")
    return provider


# -- the app --------------------------------------------------------------------------------

def create_app(store: str | StoreLayout | None = None, token: str | None = None, *,
               poll_interval: float | None = None, ingester: Any = None) -> FastAPI:
    """The API app over one store (a root path, URI or layout; default: the configured one).

    `token` (default `$TRACELAB_API_TOKEN`) makes every `/api` route require
    `Authorization: Bearer <token>` (or `?token=` for EventSource, which cannot send headers).
    `ingester`, when the ingester runs in this process (`tracelab up`), adds its figures to
    `/metrics`.
    """
    layout = store if isinstance(store, StoreLayout) else resolve_layout(store)
    token = token if token is not None else (os.environ.get("TRACELAB_API_TOKEN") or None)
    if poll_interval is None:
        try:
            poll_interval = float(os.environ.get("TRACELAB_STREAM_POLL", "1.0"))
        except ValueError:
            poll_interval = 1.0
    watcher = StoreWatcher(layout, max(0.05, poll_interval))
    shutting_down = asyncio.Event()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        shutting_down.set()
        await watcher.stop()
        provider = getattr(_app.state, "otel_provider", None)
        if provider is not None:
            provider.shutdown()

    app = FastAPI(
        title="TraceLab API", version=__version__, lifespan=lifespan,
        default_response_class=ORJSONResponse,
        description="Workflows, executions and events recorded by TraceLab. Every answer is "
                    "read from the Parquet store through the query layer.",
    )
    app.state.layout = layout
    app.state.watcher = watcher
    app.state.token = token
    metrics = _Metrics(layout, watcher, ingester)
    app.state.metrics = metrics

    bearer = HTTPBearer(auto_error=False, description="`tracelab serve --token T` or "
                        "TRACELAB_API_TOKEN; EventSource clients may pass ?token=T")

    def require_token(request: Request,
                      credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if token is None:
            return
        given = credentials.credentials if credentials is not None else \
            request.query_params.get("token")
        if given is None or not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPException(401, detail="missing or wrong bearer token: send "
                                "'Authorization: Bearer <token>'",
                                headers={"WWW-Authenticate": "Bearer"})

    api = [Depends(require_token)]

    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict:
        """Liveness: the process answers and the store root is known."""
        return {"status": "ok", "version": __version__, "store": layout.uri or layout.root}

    @app.get("/metrics", tags=["ops"], response_class=Response)
    def metrics_route() -> Response:
        """Prometheus metrics, all named `tracelab_…`."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/api/workflows", tags=["workflows"], dependencies=api)
    def list_workflows() -> dict:
        """Every workflow: executions, events, errors, first and last event time."""
        frame = query.workflows(layout=layout)
        return {"workflows": [_workflow_row(r) for r in frame.to_dict("records")]}

    @app.get("/api/workflows/{workflow}/executions", tags=["executions"], dependencies=api)
    def list_executions(
        workflow: str,
        status: str | None = Query(None, pattern="^(ok|error)$",
                                   description="`ok` or `error` (any event errored)"),
        since: str | None = Query(None, description="runs started at or after: ISO 8601 or "
                                  "epoch nanoseconds"),
        until: str | None = Query(None, description="runs started before: ISO 8601 or epoch "
                                  "nanoseconds"),
        tag: list[str] | None = Query(None, description="`key:value`; repeat to require "
                                      "several tags"),
        limit: int = Query(100, ge=1, le=1000, description="page size"),
        cursor: str | None = Query(None, description="`next_cursor` of the previous page"),
    ) -> dict:
        """Runs of one workflow, newest first, filtered and paged."""
        if not layout.list_files(workflow) and workflow not in set(
                query.workflows(layout=layout)["workflow"]):
            raise HTTPException(404, detail=f"unknown workflow {workflow!r}")
        after = _decode_cursor(cursor) if cursor else None
        try:
            frame = query.executions(workflow, since=_time_param(since, "since"),
                                     until=_time_param(until, "until"), status=status,
                                     tags=_tag_params(tag), layout=layout)
        except ValueError as exc:
            raise HTTPException(422, detail=str(exc)) from None
        records = frame.to_dict("records")
        now_ns = time.time_ns()
        rows = []
        for record in records:
            if after is not None:
                # newest first, ties by run_id: keep rows strictly after the cursor's row
                started = int(pd.Timestamp(record["started_at"]).value)
                if started > after[0] or (started == after[0] and record["run_id"] <= after[1]):
                    continue
            rows.append(record)
            if len(rows) > limit:
                break
        more = len(rows) > limit
        rows = rows[:limit]
        items = [_execution_row(r, now_ns) for r in rows]
        next_cursor = _encode_cursor(items[-1]["started_at_ns"], items[-1]["run_id"]) \
            if more and items else None
        return {"workflow": workflow, "executions": items, "next_cursor": next_cursor}

    @app.get("/api/executions/{run_id}", tags=["executions"], dependencies=api)
    def get_execution(
        run_id: str,
        workflow: str | None = Query(None, description="only this workflow's events (a run "
                                     "id reused by two workflows)"),
        shape: str = Query("rows", pattern="^(rows|columns)$",
                           description="`rows` (objects) or `columns` (arrays, "
                           "dictionary-encoded strings; compact for big runs)"),
    ) -> Response:
        """One execution and its events in start order, without payloads."""
        try:
            frame = query.execution_events(run_id, workflow, layout=layout)
        except KeyError as exc:
            raise _not_found(exc) from None
        summary = _summary_from_events(frame)
        table = _events_table(frame)
        t0 = summary["started_at_ns"]
        events = _event_columns(table, t0) if shape == "columns" else _event_rows(table, t0)
        return ORJSONResponse({"execution": summary, "t0_ns": str(t0), "events": events})

    @app.get("/api/events/{event_id}", tags=["events"], dependencies=api)
    def get_event(event_id: str) -> Response:
        """One event with its request and response payloads, as the contract JSON."""
        try:
            event = query.event_dict(event_id, layout=layout)
        except KeyError as exc:
            raise _not_found(exc) from None
        return ORJSONResponse(event)

    @app.get("/api/executions/{a}/diff/{b}", tags=["executions"], dependencies=api)
    def diff(a: str, b: str) -> Response:
        """Step-by-step differences between two executions (`diff_executions`): one row per
        aligned step, `change` = added / removed / changed / same; request and response
        bodies are compared field by field for runs of up to 20,000 steps."""
        frames = []
        for run_id in (a, b):
            try:
                frame = query.execution_events(run_id, layout=layout)
            except KeyError as exc:
                raise _not_found(exc) from None
            workflows = frame["workflow"].unique()
            if len(frame) <= DIFF_PAYLOAD_STEPS and len(workflows) == 1:
                frame = query.events(workflows[0], run_id=run_id, payloads=True, layout=layout)
            frames.append(frame)
        try:
            from tracelab.analysis.diff import diff_executions
        except ImportError as exc:
            raise HTTPException(501, detail=f"diff is not available in this install: {exc}") \
                from None
        result = diff_executions(frames[0], frames[1], a_label=a, b_label=b)
        rows = orjson.loads(result.to_json(orient="records", date_format="iso",
                                           default_handler=str)) if len(result) else []
        summary = result.summary() if hasattr(result, "summary") else ""
        return ORJSONResponse({
            "a": _summary_from_events(frames[0]), "b": _summary_from_events(frames[1]),
            "summary": summary, "columns": [str(c) for c in result.columns], "rows": rows,
        })

    @app.get("/api/stream", tags=["live"], dependencies=api,
             response_class=StreamingResponse,
             responses={200: {"content": {"text/event-stream": {}},
                              "description": "Server-Sent Events"}})
    async def stream(request: Request) -> StreamingResponse:
        """Server-Sent Events as data lands: `workflow` (a workflow's new counts), `execution`
        (a run's new summary), `events` (a run's new events, no payloads; past 2,000 at once
        only the `execution` message is sent and clients refetch), `resync` (refetch
        everything), plus a `hello` on connect and comment heartbeats."""
        q = watcher.subscribe()

        async def body() -> AsyncIterator[bytes]:
            try:
                yield _sse("hello", {"version": __version__,
                                     "poll_interval": watcher.poll_interval})
                while not shutting_down.is_set():
                    try:
                        message = await asyncio.wait_for(q.get(), timeout=15.0)
                    except asyncio.TimeoutError:
                        yield b": keep-alive\n\n"
                        continue
                    if message is None:
                        break
                    yield _sse(*message)
            finally:
                watcher.unsubscribe(q)

        return StreamingResponse(body(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache",
                                          "X-Accel-Buffering": "no"})

    app.add_middleware(_MetricsMiddleware, metrics=metrics)
    app.state.otel_provider = _instrument(app)
    return app


def _sse(event: str, data: Any) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(
        data, option=orjson.OPT_SERIALIZE_NUMPY, default=_default) + b"\n\n"
