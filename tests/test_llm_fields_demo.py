"""The demo's sample agent streams its LLM decision: run for real against the mocks (their own
processes, on free ports) into an embedded store, its llm event has the time to first token and
the token counts from the stream's final usage chunk."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_refund_agent_records_ttft_and_tokens_of_its_streamed_answer(tmp_path: Path) -> None:
    from tracelab.store import query
    from tracelab.store.layout import resolve_layout

    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRACELAB_", "MOCK_"))}
    env["TRACELAB_HOME"] = str(tmp_path / "home")
    done = subprocess.run([sys.executable, "examples/refund_agent.py", "--start-mocks",
                           "--base-port", "0", "--scenario", "refund", "--runs", "1"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    events = query.events("refund-agent", layout=resolve_layout(None, tmp_path / "home"))
    llm = events[events["kind"] == "llm"].to_dict("records")
    assert len(llm) == 1
    event = llm[0]
    tags = event["tags"] if isinstance(event["tags"], dict) else json.loads(event["tags"])
    assert {k: tags[k] for k in ("llm.provider", "llm.operation", "llm.model",
                                 "llm.finish_reason")} == {
        "llm.provider": "openai-compatible", "llm.operation": "chat",
        "llm.model": "gpt-4o-mini", "llm.finish_reason": "stop"}
    inputs, outputs = int(tags["llm.input_tokens"]), int(tags["llm.output_tokens"])
    assert inputs > 0 and outputs > 0 and int(tags["llm.total_tokens"]) == inputs + outputs
    assert 0 < float(tags["llm.ttft_ms"]) <= event["latency_ms"]
