"""The HTTP API: `create_app()` builds the FastAPI app that `tracelab serve` runs.

Every answer comes from the query layer (`tracelab.store.query`); this module only shapes it
as JSON (`shapes.py`). Routes (all under `/api`, bearer-protected when a token is set):

- `GET /api/workflows`: one row per workflow (executions, events, errors, first/last event);
- `GET /api/workflows/{wf}/executions`: runs newest first, filtered by `status`, `since`,
  `until`, `tag=key:value` (repeatable), paged by `limit` and an opaque `cursor`;
- `GET /api/executions/{run_id}`: the execution and its events without payloads
  (`shape=columns` gives the events column-wise, dictionary-encoded: what the web UI reads);
  the execution names the run it replays (`replay_of`, from its tag) and its own `replays`;
- `GET /api/events/{event_id}`: one event with its request and response, as the contract JSON;
- `GET /api/events/{event_id}/conversation`: an LLM call's messages, tool calls, completion;
- `GET /api/executions/{a}/diff/{b}`: `tracelab.analysis.diff.diff_executions` as JSON rows;
- `GET /api/executions/{a}/compare/{b}`: `tracelab.analysis.compare` (what `tl.compare` gives);
- `GET /api/stream`: Server-Sent Events `workflow`, `execution`, `events` as data lands
  (`live.py`).

Ids are path segments percent-encoded by the client: `pay%2Fments` is `pay/ments` (`ids.py`).
Outside `/api`: the OTLP/HTTP receiver (`/v1/traces`, `tracelab.otlp.receiver`), `/healthz`,
`/metrics` (Prometheus, `metrics.py`; token-protected too when a token is set), `/docs`, `/openapi.json`. Every error is `{"detail": str}` (plus `errors` on a
422), declared in the OpenAPI document (`errors.py`); a 404 names the id, never a server path.
With `OTEL_EXPORTER_OTLP_ENDPOINT` set, requests are traced with OpenTelemetry (`otel.py`).
"""
from __future__ import annotations

import asyncio
import base64
import hmac
import os
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pandas as pd
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import Response, StreamingResponse
from fastapi.security import APIKeyQuery, HTTPAuthorizationCredentials, HTTPBearer

from tracelab import __version__
from tracelab.analysis.compare import CompareResult, compare_stored_runs
from tracelab.analysis.conversation import Conversation, conversation
from tracelab.analysis.diff import diff_executions
from tracelab.otlp.receiver import Publisher, mount
from tracelab.replay.recording import REPLAY_OF_TAG, replays_of
from tracelab.server import errors
from tracelab.server.ids import RawPathIds, path_id
from tracelab.server.live import StoreWatcher, sse
from tracelab.server.metrics import Metrics, MetricsMiddleware
from tracelab.server.otel import instrument
from tracelab.server.shapes import (
    ORJSONResponse,
    event_columns,
    event_rows,
    events_table,
    execution_row,
    summary_from_events,
    workflow_row,
)
from tracelab.store import query
from tracelab.store.layout import StoreLayout, resolve_layout

# Up to this many steps per side, the diff also compares request/response bodies.
DIFF_PAYLOAD_STEPS = 20_000


# -- parameters -----------------------------------------------------------------------------

# `since` / `until`: an RFC 3339 date-time or epoch nanoseconds, as the OpenAPI document says.
TIME_SCHEMA = {"anyOf": [{"type": "string", "format": "date-time"},
                         {"type": "string", "pattern": "^-?[0-9]{1,30}$"}]}
_EPOCH_NS = re.compile(r"-?[0-9]{1,30}")
_MIN_NS, _MAX_NS = pd.Timestamp.min.value, pd.Timestamp.max.value


def _time_param(value: str | None, name: str) -> int | None:
    """Epoch nanoseconds from a time parameter. A time beyond what the store can hold (years
    1677-2262) is clamped to its edge: `since=9999-01-01T00:00:00Z` matches nothing."""
    if value is None:
        return None
    if _EPOCH_NS.fullmatch(value):
        return min(max(int(value), _MIN_NS), _MAX_NS)
    try:
        ts = pd.Timestamp(value)
    except (ValueError, OverflowError):
        ts = pd.NaT
    if ts is pd.NaT:
        raise HTTPException(422, detail=f"{name}={value!r} is not a time: use an RFC 3339 "
                            "date-time such as '2024-05-01T12:00:00Z', or epoch nanoseconds")
    if ts.tzinfo is None:
        ts = ts.tz_localize("UTC")
    try:
        return int(ts.as_unit("ns").value)
    except (ValueError, OverflowError):  # pandas' OutOfBoundsDatetime is a ValueError
        return _MAX_NS if ts.year > 1970 else _MIN_NS


# `tag`: a non-empty key, then `:` (the key has no `:`) or `=` (the key has no `:` or `=`).
TAG_SCHEMA = {"type": "array",
              "items": {"type": "string", "pattern": "^(?:[^:]+:[\\s\\S]*|[^:=]+=[^:]*)$"}}


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
        # a cursor names a page, like an id: one this API did not hand out is not found
        raise HTTPException(404, detail=f"cursor={cursor!r} is not a cursor this API "
                            "returned (take next_cursor from the previous page)") from None


def _auth(token: str | None) -> list[Any]:
    """The dependencies guarding `/api` and `/metrics`: none without a token; with one, a
    bearer header or (for EventSource, which cannot send headers) a `?token=` query, declared
    as two alternative security schemes in the OpenAPI document."""
    if token is None:
        return []
    bearer = HTTPBearer(auto_error=False, scheme_name="HTTPBearer",
                        description="`tracelab serve --token T` or TRACELAB_API_TOKEN")
    in_query = APIKeyQuery(name="token", auto_error=False, scheme_name="TokenQuery",
                           description="the same token as a query parameter, for EventSource "
                           "clients, which cannot send headers")
    expected = token.encode()

    def require_token(credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
                      query_token: str | None = Depends(in_query)) -> None:
        given = credentials.credentials if credentials is not None else query_token
        if given is None or not hmac.compare_digest(given.encode(), expected):
            raise HTTPException(401, detail="missing or wrong bearer token: send "
                                "'Authorization: Bearer <token>'",
                                headers={"WWW-Authenticate": "Bearer"})

    return [Depends(require_token)]


def create_app(store: str | StoreLayout | None = None, token: str | None = None, *,
               poll_interval: float | None = None, ingester: Any = None) -> FastAPI:
    """The API app over one store (a root path, URI or layout; default: the configured one).

    `token` (default `$TRACELAB_API_TOKEN`) makes every `/api` route and `/metrics` require
    `Authorization: Bearer <token>` (or `?token=` for EventSource, which cannot send headers).
    `ingester`, when the ingester runs in this process (`tracelab up`), adds its figures to
    `/metrics`.
    """
    layout = store if isinstance(store, StoreLayout) else resolve_layout(store)
    token = token if token is not None else (os.environ.get("TRACELAB_API_TOKEN") or None)
    if poll_interval is None:
        try:
            poll_interval = float(os.environ.get("TRACELAB_STREAM_POLL", "0.25"))
        except ValueError:
            poll_interval = 0.25
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
                    "read from the Parquet store through the query layer. Ids in paths are "
                    "percent-encoded (`pay%2Fments` is `pay/ments`); every error is "
                    "`{\"detail\": \"...\"}` (plus `errors` on a 422).",
    )
    errors.install(app)
    app.state.layout = layout
    app.state.watcher = watcher
    app.state.token = token
    metrics = Metrics(layout, watcher, ingester)
    app.state.metrics = metrics

    guard = _auth(token)
    auth_errors = (401,) if token is not None else ()

    def route(path: str, *statuses: int, **kwargs: Any) -> Callable:
        """`app.get` for a guarded route, declaring its error statuses with the one model."""
        return app.get(path, dependencies=guard,
                       responses=errors.error_responses(*auth_errors, *statuses), **kwargs)

    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict:
        """Liveness: the process answers (and, without a token, which store it reads)."""
        body = {"status": "ok", "version": __version__}
        if token is None:
            body["store"] = layout.uri or layout.root
        return body

    @route("/metrics", tags=["ops"], response_class=Response,
           response_description="Prometheus text format")
    def metrics_route() -> Response:
        """Prometheus metrics, all named `tracelab_…`."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @route("/api/workflows", tags=["workflows"])
    def list_workflows() -> dict:
        """Every workflow: executions, events, errors, first and last event time."""
        frame = query.workflows(layout=layout)
        return {"workflows": [workflow_row(r) for r in frame.to_dict("records")]}

    @route("/api/workflows/{workflow}/executions", 404, 422, tags=["executions"])
    def list_executions(
        workflow: str,
        status: str | None = Query(None, pattern="^(ok|error)$",
                                   description="`ok` or `error` (any event errored)"),
        since: str | None = Query(None, json_schema_extra=TIME_SCHEMA,
                                  description="runs started at or after: an RFC 3339 "
                                  "date-time or epoch nanoseconds"),
        until: str | None = Query(None, json_schema_extra=TIME_SCHEMA,
                                  description="runs started before: an RFC 3339 date-time "
                                  "or epoch nanoseconds"),
        tag: list[str] | None = Query(None, json_schema_extra=TAG_SCHEMA,
                                      description="`key:value` (or `key=value` when the key "
                                      "has no `:`); repeat to require several tags"),
        limit: int = Query(100, ge=1, le=1000, description="page size"),
        cursor: str | None = Query(None, description="`next_cursor` of the previous page (an "
                                   "unknown cursor is a 404: no such page)"),
    ) -> dict:
        """Runs of one workflow (its name percent-encoded), newest first, filtered and paged."""
        workflow = path_id(workflow)
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
        items = [execution_row(r, now_ns) for r in rows]
        next_cursor = _encode_cursor(items[-1]["started_at_ns"], items[-1]["run_id"]) \
            if more and items else None
        return {"workflow": workflow, "executions": items, "next_cursor": next_cursor}

    def run_events(run_id: str, workflow: str | None = None) -> pd.DataFrame:
        try:
            return query.execution_events(run_id, workflow, layout=layout)
        except KeyError:  # the query layer's message names the store: not for clients
            where = f" in workflow {workflow!r}" if workflow is not None else ""
            raise HTTPException(404, detail=f"unknown run_id {run_id!r}{where}") from None

    @route("/api/executions/{run_id}", 404, 422, tags=["executions"])
    def get_execution(
        run_id: str,
        workflow: str | None = Query(None, description="only this workflow's events (a run "
                                     "id reused by two workflows)"),
        shape: str = Query("rows", pattern="^(rows|columns)$",
                           description="`rows` (objects) or `columns` (arrays, "
                           "dictionary-encoded strings; compact for big runs)"),
    ) -> Response:
        """One execution (its run id percent-encoded) and its events in start order, without
        payloads."""
        run_id = path_id(run_id)
        frame = run_events(run_id, workflow)
        summary = summary_from_events(frame)
        summary["replay_of"] = summary["tags"].get(REPLAY_OF_TAG)
        summary["replays"] = replays_of(run_id, layout=layout)
        table = events_table(frame)
        t0 = summary["started_at_ns"]
        events = event_columns(table, t0) if shape == "columns" else event_rows(table, t0)
        return ORJSONResponse({"execution": summary, "t0_ns": str(t0), "events": events})

    @route("/api/events/{event_id}", 404, 422, tags=["events"])
    def get_event(event_id: str) -> Response:
        """One event with its request and response payloads, as the contract JSON."""
        event_id = path_id(event_id)
        try:
            event = query.event_dict(event_id, layout=layout)
        except KeyError:
            raise HTTPException(404, detail=f"unknown event_id {event_id!r}") from None
        return ORJSONResponse(event)

    @route("/api/events/{event_id}/conversation", 404, 422, tags=["events"],
           response_model=Conversation)
    def get_conversation(event_id: str) -> Conversation:
        """An LLM call read as a conversation (`tracelab.analysis.conversation`): messages by
        role, tool calls and their results, the completion. 404 for another kind of event."""
        event_id = path_id(event_id)
        try:
            event = query.event_dict(event_id, layout=layout)
        except KeyError:
            raise HTTPException(404, detail=f"unknown event_id {event_id!r}") from None
        found = conversation(event)
        if found is None:
            raise HTTPException(404, detail=f"event {event_id!r} is not an LLM conversation "
                                f"(kind {event.get('kind')!r}): read it at /api/events/{{id}}")
        return found

    @route("/api/executions/{a}/diff/{b}", 404, 422, tags=["executions"])
    def diff(a: str, b: str) -> Response:
        """Step-by-step differences between two executions (`diff_executions`): one row per
        aligned step, `change` = added / removed / changed / same; request and response
        bodies are compared field by field for runs of up to 20,000 steps."""
        a, b = path_id(a), path_id(b)
        frames = []
        for run_id in (a, b):
            frame = run_events(run_id)
            workflows = frame["workflow"].unique()
            if len(frame) <= DIFF_PAYLOAD_STEPS and len(workflows) == 1:
                frame = query.events(workflows[0], run_id=run_id, payloads=True, layout=layout)
            frames.append(frame)
        result = diff_executions(frames[0], frames[1], a_label=a, b_label=b)
        rows = orjson.loads(result.to_json(orient="records", date_format="iso",
                                           default_handler=str)) if len(result) else []
        summary = result.summary() if hasattr(result, "summary") else ""
        return ORJSONResponse({
            "a": summary_from_events(frames[0]), "b": summary_from_events(frames[1]),
            "summary": summary, "columns": [str(c) for c in result.columns], "rows": rows,
        })

    @route("/api/executions/{a}/compare/{b}", 404, 422, tags=["executions"])
    def compare_runs(a: str, b: str) -> CompareResult:
        """Two executions aligned step by step (`tracelab.analysis.compare`, as `tl.compare`):
        `change` = same / changed / only_a / only_b, with duration, token and cost deltas."""
        a, b = path_id(a), path_id(b)
        for run_id in (a, b):
            run_events(run_id)  # 404 naming the unknown run
        return compare_stored_runs(a, b, layout=layout)

    @app.get("/api/stream", tags=["live"], dependencies=guard,
             response_class=StreamingResponse,
             responses={200: {"content": {"text/event-stream": {}},
                              "description": "Server-Sent Events"},
                        **errors.error_responses(*auth_errors)})
    async def stream(request: Request) -> StreamingResponse:
        """Server-Sent Events as data lands: `workflow` (a workflow's new counts), `execution`
        (a run's new summary), `events` (a run's new events, no payloads; past 2,000 at once
        only the `execution` message is sent and clients refetch), `resync` (refetch
        everything), plus a `hello` on connect and comment heartbeats."""
        q = watcher.subscribe()

        async def body() -> AsyncIterator[bytes]:
            try:
                yield sse("hello", {"version": __version__,
                                    "poll_interval": watcher.poll_interval})
                while not shutting_down.is_set():
                    try:
                        message = await asyncio.wait_for(q.get(), timeout=15.0)
                    except asyncio.TimeoutError:
                        yield b": keep-alive\n\n"
                        continue
                    if message is None:
                        break
                    yield sse(*message)
            finally:
                watcher.unsubscribe(q)

        return StreamingResponse(body(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache",
                                          "X-Accel-Buffering": "no"})

    # OTLP/HTTP (`POST /v1/traces`, `/v1/metrics`, `/v1/logs`): spans in as events
    app.state.otlp_guard = guard
    mount(app, Publisher(layout, ingester, metrics.registry), guard)

    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(RawPathIds)
    app.state.otel_provider = instrument(app)
    return app
