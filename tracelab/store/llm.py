"""LLM calls in the query layer: token and cost columns, computed when the store is read.

Nothing priced is stored. Per-file run summaries keep token sums per (model, provider) for a
run's LLM calls (tags never change once written, so those sums are valid forever); prices are
applied to them at query time with the table in effect (`tracelab.analysis.cost`), so a
corrected price table fixes old runs at the next query. Events frames get each call's cost from
its tags the same way, and `llm_calls_frame` turns an events frame into one row per LLM call.

An LLM call is an event whose tags carry `llm.provider`, `llm.model` or a token count. A call
that reported no token counts adds no tokens and no cost; a run's cost is unknown (NaN) when
one of its calls reported tokens for a model the price table does not list.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from tracelab.analysis import cost

LLM_MARK = '"llm.'  # every stored tag text of an LLM call holds it (tags are compact JSON)
_MEMO_LIMIT = 200_000  # tags texts priced per price table before the memo starts over
_CALL_KEYS = ("llm.provider", "llm.model", "llm.input_tokens", "llm.output_tokens",
              "llm.total_tokens")

LLM_GROUP = pa.struct([
    ("model", pa.string()), ("provider", pa.string()), ("reported", pa.bool_()),
    ("calls", pa.int64()), ("usage_calls", pa.int64()), ("input", pa.int64()),
    ("cached", pa.int64()), ("output", pa.int64()), ("tokens", pa.int64()),
    ("reported_cost", pa.float64()),
])
LLM_GROUPS = pa.list_(LLM_GROUP)

LLM_CALL_COLUMNS = ["run_id", "event_id", "started_at", "service", "provider", "model",
                    "operation", "input_tokens", "cached_input_tokens", "output_tokens",
                    "reasoning_tokens", "total_tokens", "cost_usd", "cost_source", "latency_ms",
                    "ttft_ms", "finish_reason", "tool_calls", "status"]


@dataclass(frozen=True)
class Usage:
    """One call's numbers from its tags (no prices)."""

    model: str | None
    provider: str | None
    input: int
    cached: int
    output: int
    tokens: int
    has_usage: bool
    reported_cost: float | None


def tags_of(text: Any) -> dict[str, Any]:
    """A stored tags value (JSON text) as a dict; {} for anything else."""
    if isinstance(text, Mapping):
        return dict(text)
    if not isinstance(text, (str, bytes)):
        return {}
    try:
        parsed = orjson.loads(text)
    except orjson.JSONDecodeError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def usage_of(tags: Mapping[str, Any]) -> Usage | None:
    """The call's numbers, or None when the tags are not an LLM call's."""
    if not any(tags.get(k) not in (None, "") for k in _CALL_KEYS):
        return None
    input_tokens = cost.tag_int(tags.get("llm.input_tokens"))
    output_tokens = cost.tag_int(tags.get("llm.output_tokens"))
    total = cost.tag_int(tags.get("llm.total_tokens"))
    has_usage = input_tokens is not None or output_tokens is not None
    tokens = (input_tokens or 0) + (output_tokens or 0) if has_usage else (total or 0)
    return Usage(cost.tag_str(tags.get("llm.model")), cost.tag_str(tags.get("llm.provider")),
                 input_tokens or 0, cost.tag_int(tags.get("llm.cached_input_tokens")) or 0,
                 output_tokens or 0, tokens, has_usage, cost.tag_float(tags.get(cost.COST_TAG)))


# -- per-file run summaries ----------------------------------------------------------------

def summarise_groups(run_ids: pa.Array | pa.ChunkedArray, tags: pa.Array | pa.ChunkedArray,
                     runs: list[str]) -> pa.Array:
    """For each of `runs`, its LLM calls in these rows summed per (model, provider,
    provider-reported cost or not): one list of LLM_GROUP per run."""
    mask = pc.fill_null(pc.match_substring(tags, LLM_MARK), False)
    by_run: dict[str, dict[tuple, list]] = {}
    if pc.any(mask).as_py():
        pairs = pa.table({"run_id": pc.filter(run_ids, mask), "tags": pc.filter(tags, mask)}) \
            .group_by(["run_id", "tags"], use_threads=False).aggregate([("tags", "count")])
        for run_id, text, n in zip(pairs["run_id"].to_pylist(), pairs["tags"].to_pylist(),
                                   pairs["tags_count"].to_pylist()):
            usage = usage_of(tags_of(text))
            if usage is None:
                continue
            key = (usage.model, usage.provider, usage.reported_cost is not None)
            acc = by_run.setdefault(run_id, {}).setdefault(key, [0, 0, 0, 0, 0, 0, 0.0])
            acc[0] += n
            acc[1] += n if usage.has_usage else 0
            acc[2] += n * usage.input
            acc[3] += n * usage.cached
            acc[4] += n * usage.output
            acc[5] += n * usage.tokens
            acc[6] += n * (usage.reported_cost or 0.0)
    rows = []
    for run in runs:
        groups = by_run.get(run, {})
        rows.append([{"model": m, "provider": p, "reported": r, "calls": a[0],
                      "usage_calls": a[1], "input": a[2], "cached": a[3], "output": a[4],
                      "tokens": a[5], "reported_cost": a[6] if r else None}
                     for (m, p, r), a in groups.items()])
    return pa.array(rows, LLM_GROUPS)


def run_totals(run_ids: pa.ChunkedArray | pa.Array, groups: pa.ChunkedArray | pa.Array,
               wanted: list[str]) -> tuple[list[int], list[float]]:
    """Tokens and USD per wanted run from the summaries' groups, priced now; NaN cost when a
    call reported tokens for a model without a price."""
    values = groups.combine_chunks() if isinstance(groups, pa.ChunkedArray) else groups
    tokens = dict.fromkeys(wanted, 0)
    usd: dict[str, float] = dict.fromkeys(wanted, 0.0)
    flat = pc.list_flatten(values)
    if len(flat):
        parents = pc.list_parent_indices(values)
        owners = pc.take(run_ids, parents).to_pylist()
        prices = cost.current_prices()
        for run, group in zip(owners, flat.to_pylist()):
            if run not in tokens:
                continue
            tokens[run] += group["tokens"]
            if group["reported"]:
                usd[run] += group["reported_cost"] or 0.0
                continue
            if not group["usage_calls"]:
                continue
            price = prices.price_for(group["model"], group["provider"]) \
                if group["model"] else None
            if price is None:
                usd[run] = float("nan")
            else:
                usd[run] += price.cost(group["input"], group["output"], group["cached"])
    return [tokens[r] for r in wanted], [usd[r] for r in wanted]


# -- events frames -------------------------------------------------------------------------

def add_cost_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """`llm_cost_usd` (NaN when unknown or not an LLM call) and `llm_cost_source` (`provider`,
    `table:<date>` or None), computed once per distinct tags text and price table."""
    if "tags" not in frame.columns:
        return frame
    prices = cost.current_prices()
    memo = prices.memo
    usd: dict[str, float] = {}
    source: dict[str, str] = {}
    for text in frame["tags"].unique():
        if not isinstance(text, str) or LLM_MARK not in text:
            continue
        if text not in memo:
            if len(memo) > _MEMO_LIMIT:
                memo.clear()
            memo[text] = prices.cost_of(tags_of(text))
        found = memo[text]
        if found[0] is not None:
            usd[text], source[text] = found
    if not usd:
        frame["llm_cost_usd"] = pd.Series(float("nan"), index=frame.index, dtype="float64")
        frame["llm_cost_source"] = pd.Series(None, index=frame.index, dtype=object)
        return frame
    frame["llm_cost_usd"] = frame["tags"].map(usd).astype("float64")
    sources = frame["tags"].map(source).astype(object)
    frame["llm_cost_source"] = sources.where(sources.notna(), None)
    return frame


def frame_totals(frame: pd.DataFrame) -> tuple[int, float]:
    """A run's LLM tokens and USD from its events frame (the numbers `executions` gives)."""
    if frame.empty or "tags" not in frame.columns:
        return 0, 0.0
    if "llm_cost_usd" not in frame.columns:
        frame = add_cost_columns(frame.copy())
    tokens, usd = 0, 0.0
    for text, price in zip(frame["tags"], frame["llm_cost_usd"]):
        usage = usage_of(tags_of(text)) if isinstance(text, str) and LLM_MARK in text else None
        if usage is None:
            continue
        tokens += usage.tokens
        if price == price:  # not NaN
            usd += float(price)
        elif usage.has_usage:
            usd = float("nan")
    return tokens, usd


def _names(value: Any) -> list[str]:
    return [n.strip() for n in value.split(",") if n.strip()] if isinstance(value, str) else []


def llm_calls_frame(events: pd.DataFrame) -> pd.DataFrame:
    """One row per LLM call of an events frame (the columns of LLM_CALL_COLUMNS)."""
    if events.empty or "tags" not in events.columns:
        return _empty_calls()
    if "llm_cost_usd" not in events.columns:
        events = add_cost_columns(events.copy())
    rows = []
    for record in events.to_dict("records"):
        text = record.get("tags")
        if not isinstance(text, str) or LLM_MARK not in text:
            continue
        tags = tags_of(text)
        if usage_of(tags) is None:
            continue
        cost_usd = record.get("llm_cost_usd")
        rows.append({
            "run_id": record["run_id"], "event_id": record["event_id"],
            "started_at": record["started_at"], "service": record.get("service"),
            "provider": cost.tag_str(tags.get("llm.provider")),
            "model": cost.tag_str(tags.get("llm.model")),
            "operation": cost.tag_str(tags.get("llm.operation")),
            "input_tokens": cost.tag_int(tags.get("llm.input_tokens")),
            "cached_input_tokens": cost.tag_int(tags.get("llm.cached_input_tokens")),
            "output_tokens": cost.tag_int(tags.get("llm.output_tokens")),
            "reasoning_tokens": cost.tag_int(tags.get("llm.reasoning_tokens")),
            "total_tokens": cost.tag_int(tags.get("llm.total_tokens")),
            "cost_usd": cost_usd, "cost_source": record.get("llm_cost_source"),
            "latency_ms": record.get("latency_ms"),
            "ttft_ms": cost.tag_float(tags.get("llm.ttft_ms")),
            "finish_reason": cost.tag_str(tags.get("llm.finish_reason")),
            "tool_calls": _names(tags.get("llm.tool_calls")),
            "status": record.get("status"),
        })
    if not rows:
        return _empty_calls()
    frame = pd.DataFrame(rows, columns=LLM_CALL_COLUMNS)
    return _typed(frame)


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    for name in ("run_id", "event_id", "service", "provider", "model", "operation",
                 "cost_source", "finish_reason", "status"):
        column = frame[name].astype(object)
        frame[name] = column.where(column.notna(), None)
    for name in ("input_tokens", "cached_input_tokens", "output_tokens", "reasoning_tokens",
                 "total_tokens"):
        frame[name] = frame[name].astype("Int64")
    for name in ("cost_usd", "latency_ms", "ttft_ms"):
        frame[name] = pd.to_numeric(frame[name], errors="coerce").astype("float64")
    return frame


def _empty_calls() -> pd.DataFrame:
    frame = pd.DataFrame({c: pd.Series(dtype=object) for c in LLM_CALL_COLUMNS})
    frame["started_at"] = pd.Series(dtype="datetime64[ns, UTC]")
    return _typed(frame)
