"""Aligning two executions step by step: what was added, removed or changed.

Pure pandas on purpose: the notebook (`Execution.diff`) and the server's diff endpoint both call
`diff_executions`, so this module must not import IPython, ipywidgets or Plotly.

Steps are aligned by their order within `(target, endpoint)`: the second `POST /v1/charges` of
run A is compared with the second `POST /v1/charges` of run B, whatever else happened between
them. That survives inserted retries and reordered independent calls, which a plain
position-by-position comparison does not.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson
import pandas as pd

KEY = ["target", "endpoint"]
DIFF_COLUMNS = ["step", "change", "kind", "target", "endpoint", "occurrence",
                "status_a", "status_b", "status_code_a", "status_code_b",
                "latency_ms_a", "latency_ms_b", "latency_delta_ms", "body_fields",
                "event_id_a", "event_id_b"]
_SIDE_COLUMNS = ["event_id", "kind", "status", "status_code", "latency_ms", "rel_ms",
                 "request", "response"]
_MISSING = object()
_MAX_DEPTH = 12
_MAX_LIST = 100
_MAX_FIELDS = 20


class ExecutionDiff(pd.DataFrame):
    """The DataFrame `diff_executions` returns; its repr starts with a one-line summary."""

    @property
    def _constructor(self) -> type[ExecutionDiff]:
        return ExecutionDiff

    def summary(self) -> str:
        """One line: how many steps each side had and how many were added/removed/changed."""
        a, b = self.attrs.get("a", "A"), self.attrs.get("b", "B")
        if not set(DIFF_COLUMNS) <= set(self.columns):  # a selection of columns
            return f"diff {a} → {b}: {len(self)} rows"
        counts = self["change"].value_counts()
        n_a = int(self["event_id_a"].notna().sum())
        n_b = int(self["event_id_b"].notna().sum())
        changed = self[self["change"] == "changed"]
        why = []
        if len(changed):
            status = int((changed["status_a"] != changed["status_b"]).sum())
            codes = int(_differs(changed["status_code_a"], changed["status_code_b"]).sum())
            bodies = int(changed["body_fields"].map(bool).sum())
            why = [f"{n} {what}" for n, what in ((status, "status"), (codes, "status code"),
                                                  (bodies, "body")) if n]
        delta = (self["latency_ms_b"].sum(min_count=1) or 0) - (self["latency_ms_a"].sum(
            min_count=1) or 0)
        line = (f"diff {a} → {b}: {n_a} vs {n_b} steps; {counts.get('added', 0)} added, "
                f"{counts.get('removed', 0)} removed, {counts.get('changed', 0)} changed")
        if why:
            line += f" ({', '.join(why)})"
        line += f", {counts.get('same', 0)} same; total latency {_signed(delta)} ms"
        return line

    def __repr__(self) -> str:
        return self.summary() + "\n" + super().__repr__()

    def _repr_html_(self) -> str | None:
        import html

        table = super()._repr_html_()
        return f"<p>{html.escape(self.summary())}</p>" + (table or "")


def _signed(value: float) -> str:
    if value != value:  # NaN: nothing to add up
        return "+0.0"
    return f"{value:+.1f}"


def _differs(a: pd.Series, b: pd.Series) -> pd.Series:
    """Element-wise "not equal", where two missing values are equal."""
    both_missing = a.isna() & b.isna()
    return ~both_missing & (a.astype(object) != b.astype(object))


def _prepare(events: pd.DataFrame) -> pd.DataFrame:
    frame = events.copy()
    for column in (*KEY, "event_id", "kind", "status", "request", "response"):
        if column not in frame:
            frame[column] = None
    for column in ("status_code", "latency_ms"):
        if column not in frame:
            frame[column] = np.nan
    if "started_at" in frame and len(frame):
        started = pd.to_datetime(frame["started_at"], utc=True)
        frame = frame.assign(_t=started).sort_values(["_t", "event_id"], kind="stable")
        frame["rel_ms"] = (frame["_t"] - frame["_t"].min()).dt.total_seconds() * 1000.0
    else:
        frame["rel_ms"] = np.arange(len(frame), dtype=float)
    frame = frame.reset_index(drop=True)
    frame[KEY] = frame[KEY].fillna("")
    frame["occurrence"] = frame.groupby(KEY, sort=False).cumcount()
    return frame[[*KEY, "occurrence", *_SIDE_COLUMNS]]


def _as_json(value: Any) -> Any:
    if isinstance(value, (str, bytes)):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
    if value is None or (isinstance(value, float) and value != value):
        return None
    return value


def _flatten(value: Any, prefix: str, out: dict[str, Any], depth: int = 0) -> None:
    if depth < _MAX_DEPTH and isinstance(value, Mapping) and value and "$tracelab" not in value:
        for key, item in value.items():
            _flatten(item, f"{prefix}.{key}", out, depth + 1)
    elif depth < _MAX_DEPTH and isinstance(value, list) and value and len(value) <= _MAX_LIST:
        for index, item in enumerate(value):
            _flatten(item, f"{prefix}[{index}]", out, depth + 1)
    else:
        out[prefix] = value


def _body_part(message: Any, side: str) -> tuple[str, Any]:
    """What counts as the body of a request/response: `body` if it has one, else all of it
    but its headers (a function span's `args` and `return`)."""
    message = _as_json(message)
    if isinstance(message, Mapping):
        if "body" in message:
            return f"{side}.body", message["body"]
        return side, {k: v for k, v in message.items() if k != "headers"}
    return side, message


def body_fields(a_request: Any, a_response: Any, b_request: Any, b_response: Any) -> list[str]:
    """Dotted paths of the body fields that differ between two steps (at most 20, then `…`)."""
    paths: list[str] = []
    for side, a_msg, b_msg in (("request", a_request, b_request),
                               ("response", a_response, b_response)):
        prefix, a_body = _body_part(a_msg, side)
        _, b_body = _body_part(b_msg, side)
        if a_body == b_body:
            continue
        flat_a: dict[str, Any] = {}
        flat_b: dict[str, Any] = {}
        _flatten(a_body, prefix, flat_a)
        _flatten(b_body, prefix, flat_b)
        for path in sorted(flat_a.keys() | flat_b.keys()):
            if flat_a.get(path, _MISSING) != flat_b.get(path, _MISSING):
                paths.append(path)
    if len(paths) > _MAX_FIELDS:
        paths = paths[:_MAX_FIELDS] + [f"… {len(paths) - _MAX_FIELDS} more"]
    return paths


def diff_executions(a_events: pd.DataFrame, b_events: pd.DataFrame, *, a_label: str = "A",
                    b_label: str = "B") -> ExecutionDiff:
    """One row per aligned step of two executions, in time order.

    `change` is `added` (only in B), `removed` (only in A), `changed` (status, status code or
    a body field differs) or `same`; `latency_delta_ms` is B minus A. Body fields are compared
    when the frames carry `request`/`response` columns (JSON text or objects), else
    `body_fields` is empty.
    """
    a, b = _prepare(a_events), _prepare(b_events)
    merged = a.merge(b, on=[*KEY, "occurrence"], how="outer", suffixes=("_a", "_b"),
                     indicator=True, sort=False)
    only_a = (merged["_merge"] == "left_only").to_numpy()
    only_b = (merged["_merge"] == "right_only").to_numpy()
    both = ~(only_a | only_b)
    fields: list[list[str]] = [[] for _ in range(len(merged))]
    has_payloads = (a["request"].notna().any() or a["response"].notna().any()) and \
        (b["request"].notna().any() or b["response"].notna().any())
    if has_payloads:
        columns = [merged[c].to_numpy() for c in
                   ("request_a", "response_a", "request_b", "response_b")]
        for i in np.flatnonzero(both):
            fields[i] = body_fields(columns[0][i], columns[1][i], columns[2][i], columns[3][i])
    status_changed = both & _differs(merged["status_a"], merged["status_b"]).to_numpy()
    code_changed = both & _differs(merged["status_code_a"], merged["status_code_b"]).to_numpy()
    body_changed = np.array([bool(f) for f in fields], dtype=bool)
    change = np.where(only_a, "removed", np.where(
        only_b, "added", np.where(status_changed | code_changed | body_changed,
                                  "changed", "same")))
    out = pd.DataFrame({
        "change": change,
        "kind": merged["kind_b"].where(merged["kind_b"].notna(), merged["kind_a"]),
        "target": merged["target"], "endpoint": merged["endpoint"],
        "occurrence": merged["occurrence"].astype("int64"),
        "status_a": merged["status_a"], "status_b": merged["status_b"],
        "status_code_a": pd.array(merged["status_code_a"], dtype="Int64"),
        "status_code_b": pd.array(merged["status_code_b"], dtype="Int64"),
        "latency_ms_a": merged["latency_ms_a"].astype(float),
        "latency_ms_b": merged["latency_ms_b"].astype(float),
        "body_fields": fields,
        "event_id_a": merged["event_id_a"], "event_id_b": merged["event_id_b"],
        "_order": merged["rel_ms_a"].where(merged["rel_ms_a"].notna(), merged["rel_ms_b"]),
    })
    out["latency_delta_ms"] = out["latency_ms_b"] - out["latency_ms_a"]
    out = out.sort_values(["_order", "occurrence"], kind="stable").reset_index(drop=True)
    out["step"] = np.arange(len(out))
    result = ExecutionDiff(out[DIFF_COLUMNS])
    result.attrs.update(a=a_label, b=b_label)
    return result
