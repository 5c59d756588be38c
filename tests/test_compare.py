"""`tl.compare(a, b)`: runs written to the store by `StoreWriter`, a recording file as one side."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

import tracelab as tl
from event_factory import make_event
from tracelab.analysis.compare import COLUMNS, align
from tracelab.replay.recording import RecordingError, export_run
from tracelab.store.layout import resolve_layout
from tracelab.store.writer import StoreWriter

LLM_TAGS = {"llm.model": "gpt-4o-mini", "llm.provider": "openai"}


def step(run_id: str, seq: int, endpoint: str, *, status: str = "ok", latency: float = 10.0,
         tokens: tuple[int, int] | None = None, parent: str | None = None,
         span_id: str | None = None, kind: str = "http") -> dict[str, Any]:
    tags = {"env": "test"}
    if tokens is not None:
        tags |= {**LLM_TAGS, "llm.input_tokens": str(tokens[0]),
                 "llm.output_tokens": str(tokens[1])}
    extra: dict[str, Any] = {"parent_id": parent}
    if span_id:
        extra["span_id"] = span_id
    return make_event("wf", run_id, seq=seq, status=status, endpoint=endpoint, kind=kind,
                      latency_ms=latency, tags=tags, **extra)


def write(events: list[dict]) -> None:
    StoreWriter(resolve_layout()).write(events)


def runs_a_b() -> tuple[list[dict], list[dict]]:
    """B = A with one step inserted, one removed, one failing and one LLM call costlier."""
    a = [step("run-a", 0, "GET /cart"),
         step("run-a", 1, "POST /v1/chat", kind="llm", tokens=(100, 20), latency=300.0),
         step("run-a", 2, "POST /v1/charges"),
         step("run-a", 3, "POST /audit"),
         step("run-a", 4, "POST /email")]
    b = [step("run-b", 0, "GET /cart"),
         step("run-b", 1, "POST /v1/chat", kind="llm", tokens=(150, 40), latency=450.0),
         step("run-b", 2, "POST /v1/charges", status="error"),
         step("run-b", 3, "POST /v1/charges"),  # the inserted retry
         step("run-b", 4, "POST /email")]  # POST /audit removed
    return a, b


def test_inserted_removed_and_changed_steps_with_their_deltas(tracelab_home: Path) -> None:
    a, b = runs_a_b()
    write(a + b)
    result = tl.compare("run-a", tl.execution("run-b"))
    df = result.df
    assert list(df.columns) == COLUMNS
    assert list(df["change"]) == ["same", "same", "changed", "only_a", "only_b", "same"]
    by_change = {c: df[df["change"] == c] for c in ("same", "changed", "only_a", "only_b")}
    assert list(by_change["only_a"]["endpoint"]) == ["POST /audit"]
    assert list(by_change["only_b"]["endpoint"]) == ["POST /v1/charges"]
    assert by_change["only_b"]["a_event_id"].isna().all()
    changed = by_change["changed"].iloc[0]
    assert (changed["endpoint"], changed["status_a"], changed["status_b"]) == \
        ("POST /v1/charges", "ok", "error")
    assert (changed["status_code_a"], changed["status_code_b"]) == (200, 500)
    assert changed["a_event_id"] == a[2]["event_id"] and changed["b_event_id"] == b[2]["event_id"]
    llm = df[df["kind"] == "llm"].iloc[0]
    assert llm["change"] == "same"
    assert (llm["duration_delta"], llm["tokens_a"], llm["tokens_b"], llm["tokens_delta"]) == \
        (150.0, 120.0, 190.0, 70.0)
    assert llm["cost_a"] > 0 and llm["cost_delta"] == pytest.approx(llm["cost_b"] - llm["cost_a"])
    assert llm["cost_delta"] > 0
    summary = result.summary()
    assert {k: summary[k] for k in ("steps_a", "steps_b", "same", "changed", "only_a",
                                    "only_b")} == dict(steps_a=5, steps_b=5, same=3, changed=1,
                                                       only_a=1, only_b=1)
    assert summary["tokens_delta"] == 70.0 and summary["duration_delta"] == 150.0
    assert "1 changed" in result._repr_html_() and "run-a → run-b" in repr(result)
    same = tl.execution("run-a").compare("run-a").df
    assert set(same["change"]) == {"same"} and (same["duration_delta"] == 0).all()


def test_span_path_is_part_of_the_key(tracelab_home: Path) -> None:
    """The same call under a different enclosing span is not the same step."""
    a = [step("run-a", 0, "checkout", kind="function", span_id="s1"),
         step("run-a", 1, "POST /v1/charges", parent="s1")]
    b = [step("run-b", 0, "refund", kind="function", span_id="s2"),
         step("run-b", 1, "POST /v1/charges", parent="s2")]
    write(a + b)
    df = tl.compare("run-a", "run-b").df
    assert sorted(df["change"]) == ["only_a", "only_a", "only_b", "only_b"]
    assert set(df["span_path"]) == {"", "checkout", "refund"}


def test_a_recording_file_is_one_side(tracelab_home: Path, tmp_path: Path) -> None:
    a, b = runs_a_b()
    write(a + b)
    path = export_run("run-a", tmp_path / "a.jsonl")
    from_file = tl.compare(path, "run-b")
    from_store = tl.compare("run-a", "run-b")
    assert from_file.a == "a.jsonl"
    pd.testing.assert_frame_equal(from_file.df, from_store.df)
    figure = from_file.timeline()
    assert {trace.type for trace in figure.data} == {"scattergl"}
    assert "aligned pairs" in {trace.name for trace in figure.data}


def test_an_unknown_run_is_one_clear_error(tracelab_home: Path) -> None:
    write([step("run-a", 0, "GET /cart")])
    with pytest.raises(RecordingError, match="no-such-run"):
        tl.compare("run-a", "no-such-run")
    with pytest.raises(TypeError, match="run id, an Execution"):
        tl.compare("run-a", 42)


keys = st.lists(st.sampled_from([("http", "h", e, ()) for e in "abcd"]), max_size=30)


@settings(max_examples=200, deadline=None)
@given(keys, keys)
def test_align_keeps_every_step_once_in_order_and_pairs_only_equal_keys(a: list,
                                                                       b: list) -> None:
    pairs = align(a, b)
    assert [i for i, _ in pairs if i is not None] == list(range(len(a)))
    assert [j for _, j in pairs if j is not None] == list(range(len(b)))
    matched = [(i, j) for i, j in pairs if i is not None and j is not None]
    assert all(a[i] == b[j] for i, j in matched)
    assert [j for _, j in matched] == sorted(j for _, j in matched)  # a common subsequence
    if a == b:
        assert len(matched) == len(a)


def test_a_big_mostly_equal_pair_of_runs_aligns_every_common_step() -> None:
    a = [("http", "h", f"GET /{i % 7}", ()) for i in range(100_000)]
    b = a[:50_000] + [("http", "h", "POST /retry", ())] + a[50_001:]
    pairs = align(a, b)
    assert sum(1 for i, j in pairs if i is not None and j is not None) == 99_999
