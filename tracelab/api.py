"""The notebook face of the query layer: `tl.workflows()`, `tl.executions(wf)`, `tl.execution(id)`.

Thin on purpose: every number comes from `tracelab.store.query`, and these objects only give
it a DataFrame-first shape that the notebook issue grows (timelines, latencies, diffs).
"""
from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from tracelab.store import query


def workflows() -> pd.DataFrame:
    """One row per workflow in the store: executions, events, errors, first and last event."""
    return query.workflows()


class Executions:
    """The executions of one workflow; `.df` is the DataFrame, one row per run, newest first."""

    def __init__(self, workflow: str, df: pd.DataFrame) -> None:
        self.workflow = workflow
        self.df = df

    def __len__(self) -> int:
        return len(self.df)

    def events(self) -> pd.DataFrame:
        """Every event of these runs (no payloads), in start order."""
        frame = query.events(self.workflow)
        return frame[frame["run_id"].isin(set(self.df["run_id"]))].reset_index(drop=True)

    def latest(self) -> Execution:
        """The newest execution; KeyError when there is none."""
        if self.df.empty:
            raise KeyError(f"workflow {self.workflow!r} has no executions")
        return execution(self.df["run_id"].iloc[0], workflow=self.workflow)

    def __repr__(self) -> str:
        errors = int((self.df["status"] == "error").sum()) if len(self.df) else 0
        return f"<Executions {self.workflow!r}: {len(self.df)} runs, {errors} with errors>"

    def _repr_html_(self) -> str:
        return f"<p>{self!r}</p>" + self.df.head(20).to_html(index=False)


class Execution:
    """One run: `.events` (DataFrame, no payloads) and `.summary` (its executions row)."""

    def __init__(self, run_id: str, events: pd.DataFrame) -> None:
        self.run_id = run_id
        self.events = events

    @property
    def workflow(self) -> str:
        return str(self.events["workflow"].iloc[0])

    @property
    def summary(self) -> pd.Series:
        frame = query.executions(self.workflow)
        return frame[frame["run_id"] == self.run_id].iloc[0]

    def payload(self, event_id: str) -> dict:
        """One event of this run with its request and response, as the contract JSON."""
        return query.event_dict(event_id)

    def __repr__(self) -> str:
        errors = int((self.events["status"] == "error").sum())
        return f"<Execution {self.run_id!r}: {len(self.events)} events, {errors} errors>"

    def _repr_html_(self) -> str:
        return f"<p>{self!r}</p>" + self.events.head(50).to_html(index=False)


def executions(workflow: str, since: query.TimeLike | None = None,
               until: query.TimeLike | None = None, status: str | None = None,
               tags: Mapping[str, str] | None = None, limit: int | None = None) -> Executions:
    """The runs of `workflow`, filtered like `query.executions`."""
    return Executions(workflow, query.executions(workflow, since=since, until=until,
                                                 status=status, tags=tags, limit=limit))


def execution(run_id: str, workflow: str | None = None) -> Execution:
    """One run by id; KeyError naming it when the store has no event of it."""
    return Execution(run_id, query.execution_events(run_id, workflow=workflow))
