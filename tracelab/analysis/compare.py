"""Comparing two runs step by step: `tl.compare(a, b)`, `Execution.compare` and the API.

Steps are aligned by longest common subsequence over `(kind, target, endpoint, span path)`
(the span path is the chain of enclosing spans' endpoints), so an inserted retry or a removed
call shifts nothing after it. Aligned pairs whose status or status code differ are `changed`;
the rest are `same`; unaligned steps are `only_a` / `only_b`. Each row carries the duration,
token and cost deltas (B minus A).

Pure pandas (no IPython, Plotly): the notebook and the server share this module. The figure
lives in `tracelab.notebook.compare`.
"""
from __future__ import annotations

import difflib
import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from tracelab.analysis.cost import cost_of, tag_int

COLUMNS = ["a_event_id", "b_event_id", "change", "kind", "target", "endpoint", "span_path",
           "status_a", "status_b", "status_code_a", "status_code_b",
           "duration_a", "duration_b", "duration_delta",
           "tokens_a", "tokens_b", "tokens_delta", "cost_a", "cost_b", "cost_delta",
           "started_ms_a", "started_ms_b"]
CHANGES = ("same", "changed", "only_a", "only_b")
Key = tuple[str, str, str, tuple[str, ...]]


@dataclass
class Side:
    """One run to compare: its label (run id or file name) and its events in start order."""

    label: str
    events: list[dict]


def load_side(source: Any, *, layout: Any = None) -> Side:
    """A run id, an `Execution`, a `Recording`, a recording file path or a list of events.

    Raises `RecordingError` (a ValueError) naming the source when it is none of them.
    """
    from tracelab.replay.recording import Recording, load_recording, run_events, start_order

    if isinstance(source, Recording):
        return Side(source.run_id or source.source, source.events)
    if isinstance(source, (str, Path)):
        recording = load_recording(source, layout=layout)
        label = recording.run_id if recording.source.startswith("run:") else Path(source).name
        return Side(label or str(source), recording.events)
    run_id = getattr(source, "run_id", None)
    if isinstance(run_id, str):  # an Execution
        return Side(run_id, run_events(run_id, layout=layout))
    if isinstance(source, Sequence) and all(isinstance(e, Mapping) for e in source):
        return Side("events", start_order([dict(e) for e in source]))
    raise TypeError(f"compare() takes a run id, an Execution, a recording or its file, "
                    f"not {type(source).__name__}")


def _span_paths(events: list[dict]) -> list[tuple[str, ...]]:
    """For each event, the endpoints of its enclosing spans, outermost first."""
    by_span = {e["span_id"]: e for e in events if e.get("span_id")}
    paths = []
    for event in events:
        path: list[str] = []
        seen: set[str] = set()
        parent = event.get("parent_id")
        while parent and parent in by_span and parent not in seen:
            seen.add(parent)
            path.append(str(by_span[parent].get("endpoint") or ""))
            parent = by_span[parent].get("parent_id")
        paths.append(tuple(reversed(path)))
    return paths


def _keys(events: list[dict]) -> list[Key]:
    return [(str(e.get("kind") or ""), str(e.get("target") or ""), str(e.get("endpoint") or ""),
             path) for e, path in zip(events, _span_paths(events))]


def align(a: Sequence[Key], b: Sequence[Key]) -> list[tuple[int | None, int | None]]:
    """Index pairs of a longest common subsequence of `a` and `b`, plus the unmatched ones
    (`(i, None)`, `(None, j)`) in order. The common prefix and suffix are matched first, so
    mostly-equal runs cost linear time whatever their length."""
    start = 0
    while start < min(len(a), len(b)) and a[start] == b[start]:
        start += 1
    end_a, end_b = len(a), len(b)
    while end_a > start and end_b > start and a[end_a - 1] == b[end_b - 1]:
        end_a, end_b = end_a - 1, end_b - 1
    pairs: list[tuple[int | None, int | None]] = [(i, i) for i in range(start)]
    matcher = difflib.SequenceMatcher(None, a[start:end_a], b[start:end_b], autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            pairs.extend((start + i1 + k, start + j1 + k) for k in range(i2 - i1))
        else:
            pairs.extend((start + i, None) for i in range(i1, i2))
            pairs.extend((None, start + j) for j in range(j1, j2))
    pairs.extend((end_a + k, end_b + k) for k in range(len(a) - end_a))
    return pairs


def _tokens(tags: Mapping[str, Any]) -> float:
    counts = [tag_int(tags.get(f"llm.{k}_tokens")) for k in ("input", "output")]
    found = [c for c in counts if c is not None]
    return float(sum(found)) if found else float("nan")


def _facts(event: dict | None, origin: int) -> dict[str, Any]:
    if event is None:
        return {"event_id": None, "status": None, "status_code": None,
                "duration": float("nan"), "tokens": float("nan"), "cost": float("nan"),
                "started_ms": float("nan")}
    tags = event.get("tags") or {}
    cost = cost_of(tags)[0] if tags else None
    latency = event.get("latency_ms")
    return {"event_id": event.get("event_id"), "status": event.get("status"),
            "status_code": event.get("status_code"),
            "duration": float(latency) if latency is not None else float("nan"),
            "tokens": _tokens(tags), "cost": float("nan") if cost is None else float(cost),
            "started_ms": (int(event.get("started_at") or origin) - origin) / 1e6}


def _frame(a: Side, b: Side) -> pd.DataFrame:
    keys_a, keys_b = _keys(a.events), _keys(b.events)
    origin_a = min((int(e.get("started_at") or 0) for e in a.events), default=0)
    origin_b = min((int(e.get("started_at") or 0) for e in b.events), default=0)
    rows = []
    for i, j in align(keys_a, keys_b):
        fa = _facts(a.events[i] if i is not None else None, origin_a)
        fb = _facts(b.events[j] if j is not None else None, origin_b)
        kind, target, endpoint, path = keys_a[i] if i is not None else keys_b[j]  # type: ignore
        if i is None:
            change = "only_b"
        elif j is None:
            change = "only_a"
        elif fa["status"] != fb["status"] or fa["status_code"] != fb["status_code"]:
            change = "changed"
        else:
            change = "same"
        rows.append({
            "a_event_id": fa["event_id"], "b_event_id": fb["event_id"], "change": change,
            "kind": kind, "target": target, "endpoint": endpoint, "span_path": " > ".join(path),
            "status_a": fa["status"], "status_b": fb["status"],
            "status_code_a": fa["status_code"], "status_code_b": fb["status_code"],
            "duration_a": fa["duration"], "duration_b": fb["duration"],
            "tokens_a": fa["tokens"], "tokens_b": fb["tokens"],
            "cost_a": fa["cost"], "cost_b": fb["cost"],
            "started_ms_a": fa["started_ms"], "started_ms_b": fb["started_ms"]})
    frame = pd.DataFrame(rows, columns=[c for c in COLUMNS if not c.endswith("_delta")])
    for what in ("duration", "tokens", "cost"):
        frame[f"{what}_delta"] = frame[f"{what}_b"] - frame[f"{what}_a"]
    for column in ("status_code_a", "status_code_b"):
        frame[column] = pd.array(frame[column], dtype="Int64")
    return frame[COLUMNS]


class Comparison:
    """Two runs aligned step by step: `.df` (one row per aligned pair or one-sided step),
    `.summary()` (counts and totals), `.timeline()` (side-by-side figure), `.to_dict()`."""

    def __init__(self, a: Side, b: Side) -> None:
        self.a, self.b = a.label, b.label
        self.df = _frame(a, b)

    def summary(self) -> dict[str, Any]:
        """Steps per side, rows per change, and total duration/token/cost deltas (B - A)."""
        counts = self.df["change"].value_counts()
        out: dict[str, Any] = {"a": self.a, "b": self.b,
                               "steps_a": int(self.df["a_event_id"].notna().sum()),
                               "steps_b": int(self.df["b_event_id"].notna().sum())}
        out.update({change: int(counts.get(change, 0)) for change in CHANGES})
        for what in ("duration", "tokens", "cost"):
            total = self.df[f"{what}_b"].sum() - self.df[f"{what}_a"].sum()
            out[f"{what}_delta"] = float(total)
        return out

    def summary_line(self) -> str:
        s = self.summary()
        return (f"compare {s['a']} → {s['b']}: {s['steps_a']} vs {s['steps_b']} steps; "
                f"{s['same']} same, {s['changed']} changed, {s['only_a']} only in A, "
                f"{s['only_b']} only in B; duration {s['duration_delta']:+.1f} ms, "
                f"tokens {s['tokens_delta']:+.0f}, cost {s['cost_delta']:+.6f} USD")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the summary and the rows (NaN and NA as None)."""
        rows = self.df.astype(object).where(self.df.notna(), None).to_dict("records")
        return {"summary": self.summary(), "rows": rows}

    def timeline(self) -> Any:
        """The two runs' timelines one above the other, aligned pairs linked by a line."""
        from tracelab.notebook.compare import comparison_figure

        return comparison_figure(self)

    def __repr__(self) -> str:
        return self.summary_line() + "\n" + repr(self.df)

    def _repr_html_(self) -> str:
        return f"<p>{html.escape(self.summary_line())}</p>" + (self.df._repr_html_() or "")


@dataclass
class CompareRow:
    """One row of `Comparison.df` as the API serves it (missing values as null)."""

    a_event_id: str | None
    b_event_id: str | None
    change: str
    kind: str
    target: str
    endpoint: str
    span_path: str
    status_a: str | None
    status_b: str | None
    status_code_a: int | None
    status_code_b: int | None
    duration_a: float | None
    duration_b: float | None
    duration_delta: float | None
    tokens_a: float | None
    tokens_b: float | None
    tokens_delta: float | None
    cost_a: float | None
    cost_b: float | None
    cost_delta: float | None
    started_ms_a: float | None
    started_ms_b: float | None


@dataclass
class CompareSummary:
    """`Comparison.summary()`: steps per side, rows per change, total deltas (B - A)."""

    a: str
    b: str
    steps_a: int
    steps_b: int
    same: int
    changed: int
    only_a: int
    only_b: int
    duration_delta: float
    tokens_delta: float
    cost_delta: float


@dataclass
class CompareResult:
    """The API's answer: the summary and the rows, in alignment order."""

    summary: CompareSummary
    rows: list[CompareRow]


def compare_stored_runs(a: str, b: str, *, layout: Any = None) -> CompareResult:
    """Two run ids of the store (never files: what the server reads), as `CompareResult`."""
    from tracelab.replay.recording import run_events

    sides = [Side(run_id, run_events(run_id, layout=layout)) for run_id in (a, b)]
    found = Comparison(*sides).to_dict()
    return CompareResult(CompareSummary(**found["summary"]),
                         [CompareRow(**row) for row in found["rows"]])


def compare(a: Any, b: Any, *, layout: Any = None) -> Comparison:
    """Align run `a` with run `b` (each a run id, an `Execution`, a recording or its file)."""
    return Comparison(load_side(a, layout=layout), load_side(b, layout=layout))
