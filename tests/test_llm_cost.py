"""LLM cost: the dated price table, TRACELAB_PRICES, and cost and token columns at query time."""
from __future__ import annotations

import json
import math
import os
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tracelab as tl
from event_factory import BASE_NS, make_event
from tracelab.analysis import cost
from tracelab.config import ConfigWarning
from tracelab.store import llm as llm_columns
from tracelab.store import query
from tracelab.store.writer import StoreWriter

AS_OF = cost.shipped_table()["as_of"]


def llm_event(run_id: str, seq: int, model: str, input_tokens: int | None = None,
              output_tokens: int | None = None, cached: int | None = None,
              workflow: str = "agent", **extra_tags: str) -> dict:
    tags = {"llm.provider": "openai", "llm.model": model, "llm.operation": "chat"}
    for name, value in (("llm.input_tokens", input_tokens), ("llm.output_tokens", output_tokens),
                        ("llm.cached_input_tokens", cached)):
        if value is not None:
            tags[name] = str(value)
    tags.update(extra_tags)
    event = make_event(workflow, run_id, seq=seq, target="api.openai.com", tags=tags)
    event["kind"] = "llm"
    event["endpoint"] = "POST /v1/chat/completions"
    return event


def write_prices(path, models, as_of="2031-01-02") -> str:
    path.write_text(json.dumps({"as_of": as_of, "models": models}))
    return str(path)


# -- the table -----------------------------------------------------------------------------

def test_the_shipped_table_is_dated_and_matches_dated_and_prefixed_names() -> None:
    assert AS_OF and cost.price_table()["as_of"] == AS_OF
    for model, name in [("gpt-4o-mini-2024-07-18", "gpt-4o-mini"), ("openai/gpt-4o", "gpt-4o"),
                        ("claude-3-5-sonnet@20240620", "claude-3-5-sonnet"),
                        ("us.anthropic.claude-3-5-haiku-20241022-v1:0", "claude-3-5-haiku"),
                        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
                        ("models/gemini-2.0-flash-001", "gemini-2.0-flash"),
                        ("GPT-4.1-MINI", "gpt-4.1-mini")]:
        found = cost.price_for(model)
        assert found is not None and found.name == name, model
        assert found.source == f"table:{AS_OF}"
    # Priced differently (fine-tuned, audio) or unheard of: no price rather than a wrong one.
    for model in ("ft:gpt-4o-mini-2024-07-18:acme::x1", "gpt-4o-audio-preview", "my-llama"):
        assert cost.price_for(model) is None, model


def test_cached_input_tokens_are_priced_at_the_cached_price() -> None:
    # gpt-4o: 2.50 input, 1.25 cached input, 10.00 output per 1M
    usd, source = cost.cost_of({"llm.model": "gpt-4o", "llm.input_tokens": "1000000",
                                "llm.cached_input_tokens": "400000",
                                "llm.output_tokens": "100000"})
    assert usd == pytest.approx(0.6 * 2.5 + 0.4 * 1.25 + 0.1 * 10.0)
    assert source == f"table:{AS_OF}"
    assert cost.cost_usd("gpt-4o", 1_000_000, 0) == pytest.approx(2.5)  # check.py's entry point


def test_a_cost_the_provider_reported_wins_and_unknowns_have_none() -> None:
    assert cost.cost_of({"llm.model": "my-llama", "llm.input_tokens": "10",
                         "llm.cost_usd": "0.0042"}) == (pytest.approx(0.0042), "provider")
    assert cost.cost_of({"llm.model": "my-llama", "llm.input_tokens": "10"}) == (None, None)
    assert cost.cost_of({"llm.model": "gpt-4o"}) == (None, None)  # no usage reported
    assert cost.cost_of({}) == (None, None)


# -- TRACELAB_PRICES -------------------------------------------------------------------------

def test_a_prices_file_overrides_and_extends_the_shipped_table(tmp_path, monkeypatch) -> None:
    path = write_prices(tmp_path / "prices.json", {
        "gpt-4o": {"input": 1.0, "cached_input": 0.5, "output": 2.0},
        "house-llama": {"match": "house-llama(-\\d+b)?", "input": 0.2, "output": 0.4},
    })
    monkeypatch.setenv("TRACELAB_PRICES", path)
    assert cost.cost_usd("gpt-4o", 1_000_000, 1_000_000) == pytest.approx(3.0)
    found = cost.price_for("house-llama-70b")
    assert found is not None and found.source == "table:2031-01-02"
    assert found.cached_input == 0.2  # no cached price: input price
    assert cost.price_for("gpt-4o-mini").source == f"table:{AS_OF}"  # the rest still shipped
    assert cost.price_table()["as_of"] == "2031-01-02"


def test_a_yaml_prices_file_with_a_list_of_entries(tmp_path, monkeypatch) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text("as_of: '2031-02-03'\nmodels:\n"
                    "  - name: acme-1\n    match: 'acme-1(\\.\\d+)?'\n"
                    "    input: 1\n    output: 3\n    provider: openai-compatible\n")
    monkeypatch.setenv("TRACELAB_PRICES", str(path))
    assert cost.cost_of({"llm.model": "acme-1.5", "llm.provider": "openai-compatible",
                         "llm.input_tokens": "1000", "llm.output_tokens": "1000"}) \
        == (pytest.approx(0.004), "table:2031-02-03")
    assert cost.price_for("acme-1", provider="anthropic") is None  # the entry names a provider


@pytest.mark.parametrize("content, reason", [
    ("{not json", "not JSON"),
    ('{"models": {}}', "`as_of`"),
    ('{"as_of": "2031-01-01", "models": {"x": {"input": -1, "output": 1}}}', "non-negative"),
    ('{"as_of": "2031-01-01", "models": {"x": {"input": 1}}}', "`output`"),
    ('{"as_of": "2031-01-01", "models": {"x": {"match": "(", "input": 1, "output": 1}}}',
     "not a regex"),
])
def test_a_bad_prices_file_is_reported_once_and_the_shipped_table_used(
        tmp_path, monkeypatch, content, reason) -> None:
    path = tmp_path / "prices.json"
    path.write_text(content)
    monkeypatch.setenv("TRACELAB_PRICES", str(path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cost.cost_usd("gpt-4o", 1_000_000, 0) == pytest.approx(2.5)
        assert cost.price_for("gpt-4o").source == f"table:{AS_OF}"
    messages = [str(w.message) for w in caught if issubclass(w.category, ConfigWarning)]
    assert len(messages) == 1, messages
    assert "TRACELAB_PRICES" in messages[0] and reason in messages[0] and str(path) in messages[0]


def test_a_missing_prices_file_is_reported(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TRACELAB_PRICES", str(tmp_path / "nope.json"))
    with pytest.warns(ConfigWarning, match="no such file"):
        assert cost.price_for("gpt-4o") is not None


# -- the query layer -------------------------------------------------------------------------

@pytest.fixture
def store(tracelab_home):
    """Run a: two identical gpt-4o calls (same tags text) in two writes plus an HTTP call;
    run b: an unknown model; run c: no LLM call; run d: a provider-reported cost."""
    writer = StoreWriter()
    a = [llm_event("run-a", 0, "gpt-4o-2024-08-06", 1000, 200, cached=400),
         make_event("agent", "run-a", seq=1),
         llm_event("run-a", 2, "gpt-4o-2024-08-06", 1000, 200, cached=400)]
    writer.write(a[:2])
    writer.write(a[2:] + [llm_event("run-b", 10, "house-llama", 50, 5),
                          llm_event("run-b", 11, "gpt-4o-mini", 1000, 1000)])
    StoreWriter().write([make_event("agent", "run-c", seq=20),
                         llm_event("run-d", 30, "house-llama", 10, 10, **{"llm.cost_usd": "0.5"}),
                         llm_event("run-d", 31, "gpt-4o")])  # a call with no usage reported
    return a


A_CALL = (600 * 2.5 + 400 * 1.25 + 200 * 10.0) / 1e6


def test_events_carry_their_cost_and_its_source(store) -> None:
    events = query.events("agent").set_index("run_id")
    a = events.loc["run-a"]
    assert list(a["llm_cost_usd"].round(12).fillna(-1)) == [round(A_CALL, 12), -1,
                                                            round(A_CALL, 12)]
    assert list(a["llm_cost_source"]) == [f"table:{AS_OF}", None, f"table:{AS_OF}"]
    b = events.loc["run-b"]
    assert math.isnan(b["llm_cost_usd"].iloc[0]) and b["llm_cost_source"].iloc[0] is None
    d = query.execution_events("run-d")
    assert d["llm_cost_usd"].iloc[0] == 0.5 and d["llm_cost_source"].iloc[0] == "provider"
    assert list(query.events("agent", limit=0).columns)[-2:] == ["llm_cost_usd",
                                                                  "llm_cost_source"]


def test_executions_total_tokens_and_cost(store) -> None:
    runs = query.executions("agent").set_index("run_id")
    assert runs.loc["run-a", "llm_tokens"] == 2400
    assert runs.loc["run-a", "llm_cost_usd"] == pytest.approx(2 * A_CALL)
    assert runs.loc["run-b", "llm_tokens"] == 2055
    assert math.isnan(runs.loc["run-b", "llm_cost_usd"])  # one call has no price
    assert runs.loc["run-c", "llm_tokens"] == 0 and runs.loc["run-c", "llm_cost_usd"] == 0.0
    assert runs.loc["run-d", "llm_tokens"] == 20
    assert runs.loc["run-d", "llm_cost_usd"] == pytest.approx(0.5)
    assert str(runs["llm_tokens"].dtype) == "int64"


def test_a_corrected_price_table_fixes_old_data(store, tmp_path, monkeypatch) -> None:
    before = query.executions("agent").set_index("run_id")
    assert math.isnan(before.loc["run-b", "llm_cost_usd"])
    path = tmp_path / "prices.json"
    write_prices(path, {"house-llama": {"input": 1.0, "output": 1.0}})
    monkeypatch.setenv("TRACELAB_PRICES", str(path))
    after = query.executions("agent").set_index("run_id")
    llama, mini = 55 / 1e6, (1000 * 0.15 + 1000 * 0.60) / 1e6
    assert after.loc["run-b", "llm_cost_usd"] == pytest.approx(llama + mini)
    write_prices(path, {"house-llama": {"input": 2.0, "output": 2.0}}, as_of="2031-06-01")
    os.utime(path, ns=(1, 10**18))  # a new mtime even on a coarse clock
    fixed = query.executions("agent").set_index("run_id")
    assert fixed.loc["run-b", "llm_cost_usd"] == pytest.approx(2 * llama + mini)
    events = query.execution_events("run-b")
    assert list(events["llm_cost_source"]) == ["table:2031-06-01", f"table:{AS_OF}"]


def test_llm_calls_and_execution_llm(store) -> None:
    calls = tl.llm_calls("agent")
    assert list(calls.columns) == llm_columns.LLM_CALL_COLUMNS
    assert list(calls["run_id"]) == ["run-a", "run-a", "run-b", "run-b", "run-d", "run-d"]
    first = calls.iloc[0]
    assert first["model"] == "gpt-4o-2024-08-06" and first["provider"] == "openai"
    assert (first["input_tokens"], first["cached_input_tokens"], first["output_tokens"]) \
        == (1000, 400, 200)
    assert first["cost_usd"] == pytest.approx(A_CALL)
    assert first["cost_source"] == f"table:{AS_OF}" and first["latency_ms"] == 12.5
    assert first["event_id"] == store[0]["event_id"] and first["tool_calls"] == []
    one = tl.execution("run-d").llm
    assert list(one["cost_source"]) == ["provider", None]
    assert one["input_tokens"].isna().tolist() == [False, True]
    assert tl.llm_calls("agent", run_id="run-c").empty
    assert list(tl.llm_calls("no-such").columns) == llm_columns.LLM_CALL_COLUMNS


def test_llm_calls_carry_ttft_finish_reason_and_tool_calls(tracelab_home) -> None:
    event = llm_event("run-s", 0, "claude-3-5-haiku", 120, 30, **{
        "llm.provider": "anthropic", "llm.ttft_ms": "81.5", "llm.finish_reason": "tool_use",
        "llm.tool_calls": "lookup_order,refund", "llm.reasoning_tokens": "7",
        "llm.total_tokens": "150"})
    StoreWriter().write([event])
    row = tl.execution("run-s").llm.iloc[0]
    assert row["ttft_ms"] == 81.5 and row["finish_reason"] == "tool_use"
    assert row["tool_calls"] == ["lookup_order", "refund"]
    assert row["reasoning_tokens"] == 7 and row["total_tokens"] == 150
    assert row["provider"] == "anthropic" and row["cost_usd"] == pytest.approx(
        (120 * 0.80 + 30 * 4.00) / 1e6)


_MODELS = st.sampled_from(["gpt-4o", "gpt-4o-mini", "claude-3-5-haiku", "house-llama"])
_CALL = st.tuples(st.sampled_from(["r1", "r2", "r3"]), _MODELS,
                  st.one_of(st.none(), st.integers(0, 10**6)),
                  st.one_of(st.none(), st.integers(0, 10**6)), st.integers(0, 10**6),
                  st.one_of(st.none(), st.floats(0, 5, allow_nan=False)))


@settings(max_examples=60, deadline=None)
@given(st.lists(_CALL, max_size=25))
def test_run_totals_equal_the_sum_of_each_calls_cost(calls) -> None:
    """Summing tokens per model before pricing gives each call's cost summed."""
    import pyarrow as pa

    texts, runs = [], []
    for run, model, inp, out, cached, reported in calls:
        tags = {"llm.model": model}
        if inp is not None:
            tags["llm.input_tokens"] = str(inp)
            tags["llm.cached_input_tokens"] = str(min(cached, inp))
        if out is not None:
            tags["llm.output_tokens"] = str(out)
        if reported is not None:
            tags["llm.cost_usd"] = repr(reported)
        texts.append(json.dumps(tags, separators=(",", ":")))
        runs.append(run)
    wanted = ["r1", "r2", "r3"]
    groups = llm_columns.summarise_groups(pa.array(runs, pa.string()),
                                          pa.array(texts, pa.string()), wanted)
    tokens, usd = llm_columns.run_totals(pa.array(wanted), groups, wanted)
    for i, run in enumerate(wanted):
        mine = [json.loads(t) for t, r in zip(texts, runs) if r == run]
        assert tokens[i] == sum(int(t.get("llm.input_tokens", 0)) + int(
            t.get("llm.output_tokens", 0)) for t in mine)
        costs = [cost.cost_of(t) for t in mine]
        unknown = any(c[0] is None and ("llm.input_tokens" in t or "llm.output_tokens" in t)
                      for c, t in zip(costs, mine))
        if unknown:
            assert math.isnan(usd[i])
        else:
            assert usd[i] == pytest.approx(sum(c[0] or 0.0 for c in costs), rel=1e-9, abs=1e-12)
