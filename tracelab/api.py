"""The notebook face of the query layer: `tl.workflows()`, `tl.executions(wf)`, `tl.execution(id)`,
`tl.llm_calls(wf)`.

DataFrame first, widget second: every object here is a thin shape over `tracelab.store.query`
with a `.df`/`.events` to do pandas on, a short `_repr_html_` that summarises instead of
dumping, and a `.timeline()` one call away. Plotting and HTML live in `tracelab.notebook`,
imported only when asked for, so `tl.executions(wf).df` never pays for Plotly.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from tracelab.store import query

if TYPE_CHECKING:
    from tracelab.analysis.compare import Comparison
    from tracelab.analysis.diff import ExecutionDiff
    from tracelab.notebook.live import LiveExecution, LiveExecutions
    from tracelab.notebook.timeline import TimelineWidget
    from tracelab.replay.runner import ReplayResult

_EVENT_VIEW = ["started_at", "service", "kind", "target", "endpoint", "status", "status_code",
               "latency_ms", "event_id"]
_RUN_VIEW = ["run_id", "started_at", "duration_ms", "events", "errors", "status", "state",
             "services", "targets", "tags", "llm_tokens", "llm_cost_usd"]


def workflows() -> pd.DataFrame:
    """One row per workflow in the store: workflow, executions, events, errors, first_seen,
    last_seen."""
    frame = query.workflows()
    return frame.rename(columns={"first_event": "first_seen", "last_event": "last_seen"})


class Executions:
    """The executions of one workflow; `.df` is the DataFrame, one row per run, newest first.

    `len()`, iteration and `[i]` / `["run-id"]` give `Execution` objects; `.events()`,
    `.latencies(by=...)` and `.timeline()` look at all of them at once.
    """

    def __init__(self, workflow: str, df: pd.DataFrame,
                 filters: Mapping[str, Any] | None = None) -> None:
        self.workflow = workflow
        self.df = df
        self._filters = dict(filters or {})  # what `.live()` asks the query layer again

    def __len__(self) -> int:
        return len(self.df)

    def __iter__(self) -> Iterator[Execution]:
        for run_id in self.df["run_id"].tolist() if len(self.df) else []:
            yield Execution(run_id, workflow=self.workflow)

    def __contains__(self, run_id: object) -> bool:
        return len(self.df) > 0 and run_id in set(self.df["run_id"])

    def __getitem__(self, key: int | str | slice) -> Execution | Executions:
        """`[0]` is the newest run, `[-1]` the oldest, `["run-id"]` one by id, `[:5]` a subset."""
        if isinstance(key, slice):
            return Executions(self.workflow, self.df.iloc[key].reset_index(drop=True))
        if isinstance(key, str):
            if key not in self:
                raise KeyError(f"run_id {key!r} is not among the {len(self)} executions of "
                               f"{self.workflow!r} shown here; tl.execution({key!r}) looks it "
                               "up in the whole store")
            return Execution(key, workflow=self.workflow)
        if isinstance(key, bool) or not hasattr(key, "__index__"):
            raise TypeError(f"Executions indices are positions, run ids or slices, "
                            f"not {type(key).__name__}")
        position = key.__index__()
        if not -len(self) <= position < len(self):
            raise IndexError(f"execution {position} is out of range: {self.workflow!r} has "
                             f"{len(self)} here")
        return Execution(str(self.df["run_id"].iloc[position]), workflow=self.workflow)

    def latest(self) -> Execution:
        """The newest execution; KeyError when there is none."""
        if self.df.empty:
            raise KeyError(f"workflow {self.workflow!r} has no executions")
        return self[0]  # type: ignore[return-value]

    def events(self) -> pd.DataFrame:
        """Every event of these runs (no payloads), in start order."""
        if self.df.empty:
            return query.events(self.workflow, limit=0)
        since = self.df["started_at"].min()
        frame = query.events(self.workflow, since=since)
        return frame[frame["run_id"].isin(set(self.df["run_id"]))].reset_index(drop=True)

    def latencies(self, by: str | Sequence[str] = "target") -> pd.DataFrame:
        """Latency of these runs' events per `by` (a column or list of columns): count, errors,
        error_rate, mean, p50, p90, p95, p99, max of `latency_ms`, slowest p95 first."""
        from tracelab.notebook.latency import latency_table

        return latency_table(self.events(), by)

    def timeline(self) -> TimelineWidget:
        """An overview Gantt: one bar per execution on a time axis, coloured by status."""
        from tracelab.notebook.timeline import executions_timeline

        return executions_timeline(self.df, self.workflow)

    def live(self, interval: float = 1.0) -> LiveExecutions:
        """The overview Gantt, refreshed every `interval` seconds while the kernel is idle: new
        runs appear as new bars, a growing run's bar lengthens; `.stop()` ends it."""
        from tracelab.notebook.live import LiveExecutions

        def fetch() -> pd.DataFrame:
            return query.executions(self.workflow, **self._filters)

        return LiveExecutions(self.workflow, self.df, fetch, interval=interval).start()

    def _empty_reason(self) -> str:
        known = query.workflows()["workflow"].tolist()
        if self.workflow in known:
            return "no executions match these filters"
        if not known:
            return "the store is empty: record something first (tl.init(...) or %%tracelab_record)"
        shown = ", ".join(repr(w) for w in known[:5]) + (", …" if len(known) > 5 else "")
        return f"no such workflow in the store; known workflows: {shown} (see tl.workflows())"

    def __repr__(self) -> str:
        if self.df.empty:
            return f"<Executions {self.workflow!r}: empty — {self._empty_reason()}>"
        errors = int((self.df["status"] == "error").sum())
        return f"<Executions {self.workflow!r}: {len(self.df)} runs, {errors} with errors>"

    def _repr_html_(self) -> str:
        from tracelab.notebook.repr import box, esc, frame_html, states_html

        if self.df.empty:
            return box(f'<div class="tl-head">Executions of {esc(repr(self.workflow))}: '
                       f'empty</div><div>{esc(self._empty_reason())}</div>')
        errors = int((self.df["status"] == "error").sum())
        first, last = self.df["started_at"].min(), self.df["started_at"].max()
        head = (f'<div class="tl-head">Executions of {esc(repr(self.workflow))}: '
                f"{len(self.df):,} runs, {errors:,} with errors "
                f"{states_html(self.df.get('state', ()))}</div>"
                f'<div class="tl-dim">from {esc(first)} to {esc(last)} · '
                f"<code>.df</code> for the DataFrame, <code>.timeline()</code> for the Gantt, "
                f"<code>.latencies(by='target')</code>, <code>[0]</code> for the newest run"
                f"</div>")
        columns = [c for c in _RUN_VIEW if c in self.df.columns]
        return box(head + frame_html(self.df[columns]))


class Execution:
    """One run: `.events` (DataFrame, no payloads), `.event(id)` (one event with its payloads),
    `.timeline()`, `.diff(other)`, `.llm` (its LLM calls), `.summary` (its row of
    `tl.executions(wf).df`), and for record & replay `.export(path)`, `.replay(...)`,
    `.replay_of`, `.replays`."""

    def __init__(self, run_id: str, events: pd.DataFrame | None = None, *,
                 workflow: str | None = None) -> None:
        self.run_id = run_id
        self._events = events
        self._workflow = workflow

    @property
    def events(self) -> pd.DataFrame:
        """Every event of the run in start order, without payload columns."""
        if self._events is None:
            self._events = query.execution_events(self.run_id, workflow=self._workflow)
        return self._events

    @property
    def workflow(self) -> str:
        if self._workflow is None:  # a run with no step yet: its summary names it
            self._workflow = str(self.events.attrs.get("execution", {}).get("workflow")
                                 or self.events["workflow"].iloc[0])
        return self._workflow

    @property
    def summary(self) -> pd.Series:
        frame = query.executions(self.workflow)
        return frame[frame["run_id"] == self.run_id].iloc[0]

    @property
    def llm(self) -> pd.DataFrame:
        """This run's LLM calls, one row each (the columns of `tl.llm_calls`), in start order;
        cost priced with the table in effect now."""
        from tracelab.store.llm import llm_calls_frame

        return llm_calls_frame(self.events)

    def event(self, event_id: str) -> dict[str, Any]:
        """One event of this run, with its request and response, as the contract JSON."""
        if event_id not in set(self.events["event_id"]):
            raise KeyError(f"event_id {event_id!r} is not an event of run {self.run_id!r} "
                           f"(see .events['event_id'])")
        return query.event_dict(event_id)

    def payload(self, event_id: str) -> dict[str, Any]:
        """Same as `.event(event_id)`."""
        return self.event(event_id)

    def timeline(self, live: bool = False, *, interval: float = 1.0, **view: Any
                 ) -> TimelineWidget | LiveExecution:
        """A Gantt of this run (lanes per service, spans nested under their parent); click a
        bar to see that event's request and response beside it.

        `live=True`: the widget gains the run's new steps every `interval` seconds while the
        kernel is idle (appended to the figure, never redrawn; a step `**view` hides is not
        drawn), until `.stop()` or until the run is finished, failed or abandoned.

        `**view`: the filters that hide steps (`kind=`, `target=`, `status=`, `text=`,
        `min_duration_ms=`, `llm_and_tools=`), `collapsed=` spans and `root=` (one span), as
        `tracelab.notebook.timeline.execution_timeline` takes them."""
        if live:
            from tracelab.notebook.live import LiveExecution

            self._events = None  # read the run as it is now
            try:
                events = self.events
            except KeyError:  # not recorded yet: start empty and wait for its first steps
                events = pd.DataFrame()
            return LiveExecution(self.run_id, self._workflow, events, query.event_dict,
                                 interval=interval, **view).start()
        from tracelab.notebook.timeline import execution_timeline

        return execution_timeline(self.events, query.event_dict, **view)

    def _payload_events(self) -> pd.DataFrame:
        return query.events(self.workflow, run_id=self.run_id, payloads=True)

    def diff(self, other: Execution | str) -> ExecutionDiff:
        """Step-by-step comparison with another run (an `Execution` or a run id): added,
        removed and changed steps, latency deltas, which body fields differ."""
        from tracelab.analysis.diff import diff_executions

        if isinstance(other, str):
            other = execution(other)
        if not isinstance(other, Execution):
            raise TypeError(f"diff() takes an Execution or a run id, not {type(other).__name__}")
        return diff_executions(self._payload_events(), other._payload_events(),
                               a_label=self.run_id, b_label=other.run_id)

    def compare(self, other: Any) -> Comparison:
        """`tl.compare(self, other)`: steps aligned by longest common subsequence, with status,
        duration, token and cost deltas and the steps only one run has."""
        return compare(self, other)

    def export(self, path: str | Path | None = None) -> Path:
        """Write this run as a recording (JSON Lines, start order), as `tracelab export` does;
        returns the path (default `<workflow>-<run_id>.jsonl` in the working directory)."""
        from tracelab.replay.recording import export_run

        return export_run(self.run_id, Path(path) if path is not None else None)

    def replay(self, cmd: Sequence[str] | str | None = None, **options: Any) -> ReplayResult:
        """Run `cmd` (default: the command that recorded this run) with its calls answered
        from this run, as `tracelab replay` does; `options` are `run_replay`'s (`on_miss`,
        `speed`, `ignore`, `headers`, `workflow`, `run_id`). The result holds the exit code,
        the summary line and the new run's id (`.execution`): `tl.execution(result.execution)`
        then `.diff()` it against this one."""
        try:
            from tracelab.replay.runner import run_replay
        except ImportError as exc:
            raise RuntimeError("replay is not available in this TraceLab: "
                               f"tracelab.replay.runner cannot be imported ({exc})") from exc
        if isinstance(cmd, str):
            import shlex

            cmd = shlex.split(cmd)
        return run_replay(self.run_id, cmd, **options)

    @property
    def replay_of(self) -> str | None:
        """The run this one replays (its `replay_of` tag), or None."""
        from tracelab.replay.recording import REPLAY_OF_TAG

        tags = self.events["tags"].dropna()
        for text in tags.unique():
            value = _tags_of(text).get(REPLAY_OF_TAG)
            if value:
                return str(value)
        return None

    @property
    def replays(self) -> list[str]:
        """The run ids tagged `replay_of` this run, oldest first."""
        from tracelab.replay.recording import replays_of

        return replays_of(self.run_id)

    def _counts(self) -> tuple[int, int]:
        return len(self.events), int((self.events["status"] == "error").sum())

    def __repr__(self) -> str:
        n, errors = self._counts()
        return f"<Execution {self.run_id!r}: {n} events, {errors} errors>"

    def _repr_html_(self) -> str:
        from tracelab.notebook.repr import box, esc, format_ms, frame_html, join_names, state_html

        events = self.events
        n, errors = self._counts()
        starts = pd.to_datetime(events["started_at"], utc=True)
        ends = starts + pd.to_timedelta(events["latency_ms"], unit="ms")
        duration = (ends.max() - starts.min()).total_seconds() * 1000 if n else 0.0
        head = (f'<div class="tl-head">Execution <code>{esc(self.run_id)}</code> of '
                f"{esc(repr(self.workflow))}: {n:,} events, {errors:,} errors, "
                f"{format_ms(duration)} "
                f"{state_html(events.attrs.get('execution', {}).get('state'))}</div>"
                f'<div class="tl-dim">started {esc(starts.min())} · services '
                f"{join_names(sorted(events['service'].dropna().unique()))} · targets "
                f"{join_names(sorted(events['target'].dropna().unique()))}</div>"
                f'<div class="tl-dim"><code>.events</code> for the DataFrame, '
                f"<code>.timeline()</code> for the Gantt, <code>.event(event_id)</code> for a "
                f"payload, <code>.diff(other)</code></div>")
        columns = [c for c in _EVENT_VIEW if c in events.columns]
        return box(head + frame_html(events[columns]))


def _tags_of(value: Any) -> dict[str, Any]:
    """An events row's tags (JSON text in the store) as a dict."""
    from tracelab.notebook.view import tags_of

    return tags_of(value)


def executions(workflow: str, since: query.TimeLike | None = None,
               until: query.TimeLike | None = None, status: str | None = None,
               tags: Mapping[str, str] | None = None, limit: int | None = None) -> Executions:
    """The runs of `workflow`, newest first, filtered like `query.executions`. An unknown
    workflow gives an empty `Executions` whose repr says so."""
    filters = {"since": since, "until": until, "status": status, "tags": tags, "limit": limit}
    return Executions(workflow, query.executions(workflow, **filters), filters)


def execution(run_id: str, workflow: str | None = None) -> Execution:
    """One run by id; KeyError naming it when the store has no event of it."""
    return Execution(run_id, query.execution_events(run_id, workflow=workflow),
                     workflow=workflow)


def llm_calls(workflow: str, since: query.TimeLike | None = None,
              until: query.TimeLike | None = None, run_id: str | None = None) -> pd.DataFrame:
    """One row per LLM call of `workflow` in start order: run_id, event_id, started_at,
    service, provider, model, operation, input / cached_input / output / reasoning / total
    tokens, cost_usd and cost_source (`provider` or `table:<date>`; NaN and None for a model
    without a price), latency_ms, ttft_ms, finish_reason, tool_calls (names), status."""
    return query.llm_calls(workflow, since, until, run_id=run_id)


def compare(a: Any, b: Any) -> Comparison:
    """Compare two runs, each a run id, an `Execution`, a recording or a recording file: the
    `Comparison` has `.df` (one row per aligned pair or one-sided step), `.summary()` and
    `.timeline()`."""
    from tracelab.analysis.compare import compare as compare_runs

    return compare_runs(a, b)
