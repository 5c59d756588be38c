"""Live updates: one `StoreWatcher` per app notices new data and feeds `/api/stream`.

The watcher reads; it never writes. A poll lists the store's data files (a directory listing,
no file is opened) every `poll_interval` seconds while someone listens; only when the listing
changed does it ask the query layer for the changed workflows' runs and read the new files'
narrow columns. In embedded mode a poll first folds the spool when it holds unfolded events
(`fold_within`: never waits for the fold lock, stops by the poll interval), so a run recorded
with no Redis shows up live with only the web UI open; nothing else folds it when no one
queries (a program's `flush()` folds, its exit does not, to keep exits cheap). It never
compacts.

An `execution` message goes out when a run's step count or its `state` changes: when its
`end` event lands, and when a running run goes idle past `TRACELAB_IDLE_S` (noticed on a poll
even when no file changed, from the runs already known, without reading anything). Lifecycle
events (`kind: "run"`) are never sent as steps in `events` messages.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import orjson
import pandas as pd
import pyarrow.compute as pc
import pyarrow.dataset as ds

from tracelab.config import idle_seconds
from tracelab.server.shapes import (
    EVENT_COLUMNS,
    event_rows,
    execution_row,
    json_default,
    workflow_row,
)
from tracelab.store import query
from tracelab.store.layout import StoreLayout

log = logging.getLogger("tracelab.server")

# Events of a run sent inline by the stream per change; beyond this the client refetches.
STREAM_EVENTS_INLINE = 2000


class StoreWatcher:
    """Notices new data in the store and tells every subscriber (one queue each).

    Polls only while someone is subscribed. A poll lists the store's files; if the set of live
    files is unchanged it stops there.
    """

    def __init__(self, layout: StoreLayout, poll_interval: float) -> None:
        self.layout = layout
        self.poll_interval = poll_interval
        self.subscribers: set[asyncio.Queue] = set()
        self._task: asyncio.Task | None = None
        self._paths: set[str] | None = None
        # per run: (steps, state) last told; running runs' newest event end, for idle checks
        self._runs: dict[tuple[str, str], tuple[int, str]] = {}
        self._running: dict[tuple[str, str], int] = {}
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
            self._fold_spool()
            files = self.layout.list_files()
            paths = {f.path for f in files}
            if self._paths is None:
                self._paths = paths
                self._baseline()
                return []
            if paths == self._paths:
                return self._idle_changes()
            new_files = [f for f in files if f.path not in self._paths]
            self._paths = paths
            self.changes += 1
            return self._changes(new_files) + self._idle_changes()

    def _fold_spool(self) -> None:
        """Embedded mode: move spooled events into the store, within one poll interval."""
        from tracelab.store.spool import fold_within, has_pending

        home = self.layout.home
        try:
            if has_pending(home):
                fold_within(home, time.monotonic() + self.poll_interval)
        except Exception as exc:  # the stream answers from what is stored
            log.warning("live update could not fold the spool at %s: %s", home, exc)

    def _baseline(self) -> None:
        frame = query.workflows(layout=self.layout)
        for row in frame.to_dict("records"):
            self._workflows[row["workflow"]] = (int(row["executions"]), int(row["events"]))
            runs = query.executions(row["workflow"], layout=self.layout)
            for record in runs.to_dict("records"):
                self._note((row["workflow"], record["run_id"]), record)

    def _note(self, key: tuple[str, str], record: dict) -> bool:
        """Remember a run's steps and state; True when either changed since last told."""
        told = (int(record["events"]), str(record["state"]))
        if record["state"] == "running":
            self._running[key] = int(pd.Timestamp(record["ended_at"]).value)
        else:
            self._running.pop(key, None)
        if self._runs.get(key) == told:
            return False
        self._runs[key] = told
        return True

    def _idle_changes(self) -> list[tuple[str, dict]]:
        """Runs that went idle past `TRACELAB_IDLE_S` since the last look (no file changed):
        their new state, recomputed by the query layer from its cached summaries."""
        if not self._running:
            return []
        deadline = time.time_ns() - idle_seconds() * 1e9
        stale = sorted({wf for (wf, _), last in self._running.items() if last <= deadline})
        messages: list[tuple[str, dict]] = []
        for wf in stale:
            for record in query.executions(wf, layout=self.layout).to_dict("records"):
                if self._note((wf, record["run_id"]), record):
                    messages.append(("execution", execution_row(record)))
        return messages

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
                messages.append(("workflow", workflow_row(row)))
            runs = query.executions(wf, layout=self.layout)
            grown: dict[str, dict] = {}
            for record in runs.to_dict("records"):
                if self._note((wf, record["run_id"]), record):
                    grown[record["run_id"]] = execution_row(record, now_ns)
            if not grown:
                continue
            for summary in grown.values():
                messages.append(("execution", summary))
            paths = [f.path for f in new_files if f.workflow == wf]
            try:
                table = query.read_table(
                    self.layout, paths, ["run_id", *EVENT_COLUMNS],
                    filter=ds.field("run_id").isin(list(grown))
                    & (ds.field("kind") != query.LIFECYCLE_KIND))
            except FileNotFoundError:  # compacted away meanwhile: clients refetch
                continue
            for run_id, summary in grown.items():
                part = table.filter(pc.equal(table["run_id"], run_id))
                if part.num_rows == 0 or part.num_rows > STREAM_EVENTS_INLINE:
                    continue
                part = part.sort_by([("started_at", "ascending"), ("event_id", "ascending")])
                messages.append(("events", {
                    "workflow": wf, "run_id": run_id, "t0_ns": str(summary["started_at_ns"]),
                    "events": event_rows(part, summary["started_at_ns"]),
                }))
        return messages



def sse(event: str, data: Any) -> bytes:
    """One Server-Sent Events message."""
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(
        data, option=orjson.OPT_SERIALIZE_NUMPY, default=json_default) + b"\n\n"
