"""Prometheus figures for `/metrics`, all named `tracelab_…`.

`Metrics` holds the registry; `MetricsMiddleware` counts and times requests by route template;
the collectors compute store, per-workflow, per-target and ingest figures at scrape time
through the query layer (per-target figures cached for `WORKLOAD_TTL`).
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

import pandas as pd

from tracelab.server.live import StoreWatcher
from tracelab.store import query, retention
from tracelab.store.layout import StoreLayout

log = logging.getLogger("tracelab.server")

# Per-target and per-workflow figures are recomputed at most this often; latency quantiles
# cover events started in the last LATENCY_WINDOW seconds, the newest LATENCY_SAMPLE of them
# per target.
WORKLOAD_TTL = 10.0
LATENCY_WINDOW = 3600.0
LATENCY_SAMPLE = 10_000
LATENCY_QUANTILES = (0.5, 0.95, 0.99)


class Metrics:
    """The app's Prometheus registry: request counters, stream clients, store and workload
    figures, and the ingester's when it runs in this process (`tracelab up`)."""

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
    (steps stored plus those retention deleted, so a deletion is never a counter reset; a
    step without a target counts as target="") and
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
        events = CounterMetricFamily("tracelab_target_events", "Events recorded per target "
                                     "and status (stored plus deleted by retention)",
                                     labels=["target", "status"])
        latency = GaugeMetricFamily("tracelab_target_latency_ms", "Latency quantiles per "
                                    "target over events started in the last hour (ms)",
                                    labels=["target", "quantile"])
        try:
            flows = query.workflows(layout=self.layout)
            for row in flows.to_dict("records"):
                executions.add_metric([row["workflow"]], int(row["executions"]))
            for (target, status), value in sorted(self._target_totals().items()):
                events.add_metric([target, status], value)
            for target, values in self._latency(flows).items():
                for q, value in zip(LATENCY_QUANTILES, values):
                    latency.add_metric([target, str(q)], value)
        except Exception as exc:
            log.warning("per-target metrics for /metrics failed: %s", exc)
        return [executions, events, latency]

    def _target_totals(self) -> dict[tuple[str, str], int]:
        """Steps per (target, status): stored now plus deleted by retention, so the counter
        never goes down. The files are listed before and after counting the stored steps;
        retention's tally, read after, counts only files no longer live. When retention
        deleted a file between the two listings (it is unknown whether the count saw it),
        count again."""
        for attempt in range(5):
            before = {f.path for f in self.layout.list_files()}
            counts = query.target_counts(layout=self.layout)
            live = {f.path for f in self.layout.list_files()}
            deleted = retention.deleted_counts(self.layout, live, listed_before=before)
            if deleted is not None:
                break
        else:
            deleted = retention.deleted_counts(self.layout, live) or {}
        totals = dict(deleted)
        for row in counts.to_dict("records"):
            key = (row["target"] or "", row["status"] or "")
            totals[key] = totals.get(key, 0) + int(row["events"])
        return totals

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


def _ingest_lag(ingester: Any) -> int | None:
    """The ingester's backlog through the one helper its own log line uses (`stream_backlog`);
    None when Redis cannot say. A short-timeout client, so a scrape never hangs on Redis."""
    import redis

    from tracelab.server.ingest import stream_backlog

    config = ingester.config
    try:
        client = redis.Redis.from_url(config.redis_url, socket_timeout=0.5,
                                      socket_connect_timeout=0.5)
    except (ValueError, redis.exceptions.RedisError):
        return None
    try:
        return stream_backlog(client, config.stream, config.group)
    finally:
        client.close()


class MetricsMiddleware:
    """Counts and times every HTTP request by route template (pure ASGI, streams pass through)."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
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

