"""End to end: an agent using the real openai and anthropic clients (streamed and not) and
Gemini's REST API against the LLM-shaped loopback server, recorded by the SDK in a subprocess;
`tl.llm_calls`, `Execution.llm` and the executions frame then price its calls from the shipped
table, and a TRACELAB_PRICES file written afterwards prices the unknown model."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from llm_wire import LLMWire

import tracelab as tl
from tracelab.analysis import cost

ROOT = Path(__file__).resolve().parent.parent
AS_OF = cost.shipped_table()["as_of"]
# Every answer: 120 input tokens of which 100 cached, 30 output (tests/llm_wire.py USAGE).
MINI = (20 * 0.15 + 100 * 0.075 + 30 * 0.60) / 1e6
SONNET = (20 * 3.00 + 100 * 0.30 + 30 * 15.00) / 1e6
EMBED = 8 * 0.02 / 1e6

AGENT = r"""
import sys, anthropic, openai, requests, tracelab
url = sys.argv[1]
tracelab.init(workflow_name="agent", service_name="agent", run_id="wire-run")
client = openai.OpenAI(base_url=url + "/v1", api_key="sk-test", max_retries=0)
ask = [{"role": "user", "content": "refund order 42"}]
client.chat.completions.create(model="gpt-4o-mini", messages=ask)
with client.chat.completions.stream(model="gpt-4o-mini", messages=ask, tools=[
        {"type": "function", "function": {"name": "refund", "parameters": {"type": "object"}}}],
        stream_options={"include_usage": True}) as stream:
    stream.get_final_completion()
claude = anthropic.Anthropic(base_url=url, api_key="sk-ant-test", max_retries=0)
with claude.messages.stream(model="claude-3-7-sonnet", max_tokens=64, messages=ask) as s:
    s.get_final_text()
client.embeddings.create(model="text-embedding-3-small", input="a")
requests.post(url + "/v1beta/models/house-llm-7b:generateContent",
              json={"contents": [{"role": "user", "parts": [{"text": "hi"}]}]})
assert tracelab.flush(10)
tracelab.shutdown()
"""


def test_llm_calls_of_a_recorded_agent_are_priced(tracelab_home: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("TRACELAB_") and k.lower() not in ("http_proxy", "https_proxy")}
    env.update(TRACELAB_HOME=str(tracelab_home), NO_PROXY="127.0.0.1,localhost")
    with LLMWire() as wire:
        subprocess.run([sys.executable, "-c", AGENT, wire.url], check=True, env=env, cwd=ROOT,
                       timeout=60)
    calls = tl.llm_calls("agent")
    assert list(calls["operation"]) == ["chat", "chat", "messages", "embeddings",
                                        "generate_content"]
    chat, streamed, claude, embed, gemini = (calls.iloc[i] for i in range(5))
    for row in (chat, streamed, claude, gemini):
        assert (row["input_tokens"], row["cached_input_tokens"], row["output_tokens"]) \
            == (120, 100, 30)
    for row in (chat, streamed, claude, embed):
        assert row["cost_source"] == f"table:{AS_OF}"
    assert chat["cost_usd"] == pytest.approx(MINI) and streamed["cost_usd"] == pytest.approx(MINI)
    assert claude["cost_usd"] == pytest.approx(SONNET)
    assert embed["cost_usd"] == pytest.approx(EMBED)
    assert gemini["model"] == "house-llm-7b-001"  # Gemini's modelVersion
    assert math.isnan(gemini["cost_usd"]) and gemini["cost_source"] is None  # no price
    assert streamed["tool_calls"] == ["refund"] and streamed["finish_reason"] == "tool_calls"
    assert streamed["ttft_ms"] > 0 and claude["ttft_ms"] > 0 and math.isnan(chat["ttft_ms"])
    assert (calls["latency_ms"] > 0).all()
    assert tl.execution("wire-run").llm["event_id"].tolist() == calls["event_id"].tolist()
    row = tl.executions("agent").df.set_index("run_id").loc["wire-run"]
    assert row["llm_tokens"] == 4 * 150 + 8
    assert math.isnan(row["llm_cost_usd"])  # one call has no price: no total, not a wrong one

    prices = tmp_path / "prices.yaml"
    prices.write_text("as_of: '2031-01-02'\nmodels:\n"
                      "  house-llm-7b: {match: 'house-llm-7b(-\\d{3})?', input: 1.0,"
                      " cached_input: 0.5, output: 2.0}\n")
    monkeypatch.setenv("TRACELAB_PRICES", str(prices))
    house = (20 * 1.0 + 100 * 0.5 + 30 * 2.0) / 1e6
    repriced = tl.llm_calls("agent").iloc[4]
    assert repriced["cost_usd"] == pytest.approx(house)
    assert repriced["cost_source"] == "table:2031-01-02"
    row = tl.executions("agent").df.set_index("run_id").loc["wire-run"]
    assert row["llm_cost_usd"] == pytest.approx(2 * MINI + SONNET + EMBED + house)
