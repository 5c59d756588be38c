"""Which steps of one execution a timeline shows: filters, collapsed spans and a re-rooted view.

Pure functions over the events DataFrame of one run (the columns of `Execution.events`), kept
apart from the widget so the rules can be tested on their own. A step that does not match is
HIDDEN (gone from the figure's data), never only dimmed: on a 100,000-step run a highlight
still leaves the eye to find the few steps that matter.

The rules, all combined with AND:
- filters: kind, target and status each one value or several (any of them); `text` a
  case-insensitive substring of the endpoint; `min_duration_ms` keeps steps whose latency is
  strictly above it (None or 0: no threshold); `llm_and_tools` keeps LLM calls and tool steps;
- a collapsed span hides every step nested under it (at any depth), not the span itself;
- a re-rooted view keeps one span and the steps nested under it.

Nesting comes from `span_id`/`parent_id` (`@trace` spans, OTLP spans). Depths are measured on
the whole run, so a step whose parent is hidden by a filter keeps its indentation.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import orjson
import pandas as pd

MAX_DEPTH = 64  # nesting levels followed; a cycle in broken data stops here
# An LLM call: kind "llm", or tags an LLM call carries (what tracelab.store.llm counts as one).
LLM_KINDS = frozenset({"llm"})
# Tool steps: `@trace`/`span()` functions (an agent's tools) and OTLP `execute_tool` spans,
# which TraceLab stores as kind "function"; "tool" for producers that name them so.
TOOL_KINDS = frozenset({"function", "tool"})


def _names(value: str | Iterable[str] | None) -> frozenset[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return frozenset({value})
    names = frozenset(str(v) for v in value)
    return names or None


@dataclass(frozen=True)
class StepFilter:
    """What a timeline keeps; every field left at its default keeps everything."""

    kind: frozenset[str] | None = None
    target: frozenset[str] | None = None
    status: frozenset[str] | None = None
    text: str = ""
    min_duration_ms: float | None = None
    llm_and_tools: bool = False

    @classmethod
    def of(cls, *, kind: str | Iterable[str] | None = None,
           target: str | Iterable[str] | None = None,
           status: str | Iterable[str] | None = None, text: str | None = None,
           min_duration_ms: float | None = None, llm_and_tools: bool = False) -> StepFilter:
        """A filter from the timeline's keyword arguments (a string or several per field)."""
        return cls(kind=_names(kind), target=_names(target), status=_names(status),
                   text=text or "", min_duration_ms=_threshold(min_duration_ms),
                   llm_and_tools=bool(llm_and_tools))

    def changed(self, **changes: Any) -> StepFilter:
        """This filter with some fields replaced, normalised as `of` does."""
        current = {"kind": self.kind, "target": self.target, "status": self.status,
                   "text": self.text, "min_duration_ms": self.min_duration_ms,
                   "llm_and_tools": self.llm_and_tools}
        unknown = set(changes) - set(current)
        if unknown:
            raise TypeError(f"unknown filter {sorted(unknown)}; filters: {sorted(current)}")
        return StepFilter.of(**{**current, **changes})

    @property
    def active(self) -> bool:
        return self != StepFilter()

    def mask(self, events: pd.DataFrame) -> np.ndarray:
        """True for each step this filter keeps."""
        n = len(events)
        keep = np.ones(n, dtype=bool)
        if not n:
            return keep
        for name, wanted in (("kind", self.kind), ("target", self.target),
                             ("status", self.status)):
            if wanted is not None:
                keep &= _column(events, name).isin(wanted).to_numpy()
        if self.text:
            keep &= _column(events, "endpoint").fillna("").astype(str).str.contains(
                self.text, case=False, regex=False).to_numpy(dtype=bool)
        if self.min_duration_ms is not None:
            latency = pd.to_numeric(_column(events, "latency_ms"), errors="coerce")
            keep &= (latency > self.min_duration_ms).to_numpy(dtype=bool)
        if self.llm_and_tools:
            keep &= llm_or_tool(events)
        return keep


def _threshold(value: float | None) -> float | None:
    if value is None:
        return None
    number = float(value)
    if number != number:
        raise ValueError("min_duration_ms is NaN; give a number of milliseconds or None")
    return number if number > 0 else None


def _column(events: pd.DataFrame, name: str) -> pd.Series:
    if name in events:
        return events[name].reset_index(drop=True)
    return pd.Series([None] * len(events), dtype=object)


def llm_or_tool(events: pd.DataFrame) -> np.ndarray:
    """True for LLM calls (kind llm, or tags naming a provider, model or token counts: the
    rule `tracelab.store.llm` counts calls by) and tool steps (kind function or tool)."""
    from tracelab.store.llm import usage_of

    kind = _column(events, "kind")
    keep = np.array(kind.isin(LLM_KINDS | TOOL_KINDS), dtype=bool)
    tags = _column(events, "tags")
    try:
        codes, uniques = pd.factorize(tags)
    except TypeError:  # dicts (unhashable): their JSON text
        codes, uniques = pd.factorize(tags.map(_tags_text))
    if len(uniques):
        llm = np.array([usage_of(tags_of(u)) is not None for u in uniques] + [False])
        keep |= llm[codes]  # code -1 (no tags) reads the trailing False
    return keep


def _tags_text(value: Any) -> str | None:
    if isinstance(value, Mapping):
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    return value if isinstance(value, str) else None


def tags_of(value: Any) -> dict[str, Any]:
    """An event's tags as a dict: the store keeps JSON text, a loaded event has a dict."""
    if isinstance(value, Mapping):
        return dict(value)
    if not isinstance(value, (str, bytes)) or not value:
        return {}
    try:
        parsed = orjson.loads(value)
    except orjson.JSONDecodeError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


# -- the span tree ----------------------------------------------------------------------------

@dataclass(frozen=True)
class SpanTree:
    """Each step's parent row (-1 at the top level) and which steps name a missing parent.

    An orphan names a parent that is not among the run's steps (still running, or lost): it is
    drawn at the top level, never dropped. A repeated span id: its first step is the span.
    """

    parent: np.ndarray
    orphan: np.ndarray
    _spans: np.ndarray = field(repr=False)  # each distinct span id ...
    _rows: np.ndarray = field(repr=False)   # ... and the row of its first step

    @classmethod
    def of(cls, span_id: Sequence[Any], parent_id: Sequence[Any]) -> SpanTree:
        spans, parents = pd.Series(span_id, dtype=object), pd.Series(parent_id, dtype=object)
        n = len(spans)
        codes, uniques = pd.factorize(pd.concat([spans, parents], ignore_index=True))
        span_code, parent_code = codes[:n], codes[n:]
        position = np.full(len(uniques) + 1, -1, dtype=np.int64)
        has_span = np.flatnonzero(span_code >= 0)
        position[span_code[has_span[::-1]]] = has_span[::-1]
        parent = np.where(parent_code >= 0, position[parent_code], -1)
        parent[parent == np.arange(n)] = -1
        orphan = (parent_code >= 0) & (parent < 0)
        named = np.unique(span_code[has_span])
        return cls(parent=parent, orphan=orphan,
                   _spans=np.asarray(uniques, dtype=object)[named], _rows=position[named])

    @cached_property
    def span_row(self) -> dict[str, int]:
        """Row of each span id (built on first use: most timelines never need it)."""
        return dict(zip(self._spans.astype(str).tolist(), self._rows.tolist()))

    def depth(self) -> np.ndarray:
        """How many spans each step is nested under."""
        depth = np.zeros(len(self.parent), dtype=np.int64)
        current = self.parent.copy()
        for _ in range(MAX_DEPTH):
            nested = np.flatnonzero(current >= 0)
            if not len(nested):
                break
            depth[nested] += 1
            current[nested] = self.parent[current[nested]]
        return depth

    def under(self, roots: np.ndarray) -> np.ndarray:
        """True for each step nested (at any depth) under a row where `roots` is True."""
        out = np.zeros(len(self.parent), dtype=bool)
        if not roots.any():
            return out
        current = self.parent.copy()
        for _ in range(MAX_DEPTH):
            live = np.flatnonzero(current >= 0)
            if not len(live):
                break
            out[live] |= roots[current[live]]
            current[live] = self.parent[current[live]]
        return out

    def has_children(self) -> np.ndarray:
        """True for each step that some other step names as its parent."""
        out = np.zeros(len(self.parent), dtype=bool)
        out[self.parent[self.parent >= 0]] = True
        return out


def span_row(events: pd.DataFrame, tree: SpanTree, ref: str) -> int:
    """The row of the span `ref` names: a span id, or the event id of a step that is a span.

    ValueError when it names neither, so a mistyped `root=` or `collapsed=` says so instead of
    quietly showing the whole run."""
    row = tree.span_row.get(str(ref))
    if row is not None:
        return row
    if "event_id" in events and "span_id" in events:
        hits = np.flatnonzero(events["event_id"].astype(str).to_numpy() == str(ref))
        if len(hits):
            span = events["span_id"].iloc[int(hits[0])]
            if span is not None and span == span and str(span) in tree.span_row:
                return tree.span_row[str(span)]
    raise ValueError(f"{ref!r} is not a span of this run (give a span_id, or the event_id of "
                     "a step that has one; see .events[['event_id', 'span_id', 'parent_id']])")


@dataclass(frozen=True)
class View:
    """What one timeline shows: `keep` per step, its depth below the view's root, and per
    collapsed span shown how many steps it hides."""

    keep: np.ndarray
    depth: np.ndarray
    hidden_under: dict[int, int]


def step_view(events: pd.DataFrame, tree: SpanTree, filters: StepFilter = StepFilter(), *,
              collapsed: Iterable[str] = (), root: str | None = None,
              depth: np.ndarray | None = None) -> View:
    """The steps shown for these filters, collapsed spans and root (see the module doc)."""
    n = len(events)
    depth = tree.depth() if depth is None else depth
    keep = filters.mask(events)
    if root is not None:
        row = span_row(events, tree, root)
        onehot = np.zeros(n, dtype=bool)
        onehot[row] = True
        keep &= onehot | tree.under(onehot)
        depth = np.maximum(depth - depth[row], 0)
    rows = sorted({span_row(events, tree, ref) for ref in collapsed})
    hidden_under: dict[int, int] = {}
    if rows:
        folded = np.zeros(n, dtype=bool)
        folded[rows] = True
        hidden = tree.under(folded)
        for row in rows:
            if keep[row] and not hidden[row]:
                one = np.zeros(n, dtype=bool)
                one[row] = True
                hidden_under[row] = int((tree.under(one) & keep).sum())
        keep &= ~hidden
    return View(keep=keep, depth=depth, hidden_under=hidden_under)


__all__ = ["LLM_KINDS", "TOOL_KINDS", "SpanTree", "StepFilter", "View", "llm_or_tool",
           "span_row", "step_view"]
