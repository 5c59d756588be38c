"""`tracelab export --format otlp-json|markdown` on a run the real SDK recorded.

The run: a traced agent step making one LLM call (to the LLM-shaped loopback server) and one
HTTP call to a closed loopback port (an error). Its OTLP/JSON, posted to a real `tracelab
serve`, gives back the same calls; stripped of TraceLab's own attributes, the standard
`gen_ai.*`/`http.*` ones still give the same kinds, targets and LLM fields. The Markdown
transcript names the steps, the LLM turn (model, tokens, answer) and the error.
"""
from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from api_serve import ROOT, TRACELAB, clean_env
from conftest import free_port
from llm_wire import ANSWER, LLMWire
from otlp_serve import OtlpServe, post_json

WORKFLOW, RUN = "refund-wf", "run 42/a"

AGENT = r"""
import sys, requests, tracelab
tracelab.init(workflow_name=sys.argv[1], run_id=sys.argv[2], service_name="agent")

@tracelab.trace
def agent():
    answer = requests.post(sys.argv[3] + "/v1/chat/completions", json={
        "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "refund order 7"}]})
    try:
        requests.get(sys.argv[4] + "/orders/7", timeout=5)
    except requests.ConnectionError:
        pass
    return answer.json()["choices"][0]["message"]["content"]

agent()
assert tracelab.flush(10)
tracelab.shutdown()
"""


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("export") / "home"
    with LLMWire() as wire:
        subprocess.run([sys.executable, "-c", AGENT, WORKFLOW, RUN, wire.url,
                        f"http://127.0.0.1:{free_port()}"],
                       check=True, env=clean_env(home), cwd=ROOT, timeout=60)
    return home


def export(home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([TRACELAB, "export", RUN, *args], capture_output=True,
                          env=clean_env(home), cwd=home.parent, timeout=60)


def stored(home: Path) -> list[dict[str, Any]]:
    from tracelab.replay.recording import run_events, start_order
    from tracelab.store.layout import resolve_layout

    return start_order(run_events(RUN, layout=resolve_layout(str(home / "store"), home)))


CALL = ("kind", "target", "endpoint", "status", "status_code", "started_at", "latency_ms",
        "service", "workflow", "span_id", "parent_id", "tags", "request", "response", "error")


def test_otlp_json_reimported_gives_the_same_calls(home, tmp_path):
    done = export(home, "--format", "otlp-json")
    assert done.returncode == 0, done.stderr
    path = home.parent / "refund-wf-run_42_a.otlp.json"
    document = orjson.loads(path.read_bytes())
    spans = [s for r in document["resourceSpans"] for ss in r["scopeSpans"]
             for s in ss["spans"]]
    originals = stored(home)
    assert len(spans) == len(originals) == 3
    assert {len(s["traceId"]) for s in spans} == {32}
    strict = orjson.loads(path.read_bytes())  # protobuf's own JSON parser, unknown names refused
    for span in (s for r in strict["resourceSpans"] for ss in r["scopeSpans"] for s in ss["spans"]):
        for key in ("traceId", "spanId", "parentSpanId"):
            if key in span:
                span[key] = base64.b64encode(bytes.fromhex(span[key])).decode()
    json_format.ParseDict(strict, trace_service_pb2.ExportTraceServiceRequest())
    by_id = {s["spanId"]: s for s in spans}
    assert all(s.get("parentSpanId") in by_id for s in spans if s["name"] != "agent")

    with OtlpServe(tmp_path / "fresh") as server:
        answer = httpx.post(server.url + "/v1/traces", content=path.read_bytes(),
                            headers={"Content-Type": "application/json"}, timeout=30)
        assert answer.status_code == 200, answer.text
        back = [server.event(row["event_id"]) for row in server.execution(
            RUN.replace("/", "%2F"))]
        assert [{k: e.get(k) for k in CALL} for e in back] == \
            [{k: e.get(k) for k in CALL} for e in originals]

        # only what any OpenTelemetry producer would send: the standard attributes
        for span in spans:
            span["attributes"] = [a for a in span["attributes"]
                                  if not a["key"].startswith("tracelab.")]
        assert post_json(server.url, document).status_code == 200
        plain = [server.event(row["event_id"]) for row in server.execution(spans[0]["traceId"])]
    assert [e["kind"] for e in plain] == [e["kind"] for e in originals] == \
        ["function", "llm", "http"]
    llm_back = plain[1]["tags"]
    llm_then = originals[1]["tags"]
    for tag in ("llm.provider", "llm.model", "llm.input_tokens", "llm.output_tokens",
                "llm.cached_input_tokens", "llm.reasoning_tokens", "llm.finish_reason"):
        assert llm_back[tag] == llm_then[tag], tag
    assert plain[2]["status"] == "error" and plain[2]["endpoint"] == originals[2]["endpoint"]
    assert plain[1]["parent_id"] == plain[0]["span_id"]


def test_markdown_transcript(home):
    done = export(home, "--format", "markdown", "-o", "-")
    assert done.returncode == 0, done.stderr
    text = done.stdout.decode()
    lines = text.splitlines()
    assert lines[0] == f"# Run `{RUN}` of `{WORKFLOW}`"
    assert "- 3 steps," in text and "1 error," in text and "150 LLM tokens" in text
    rows = [line for line in lines if line.startswith("| ") and line[2].isdigit()]
    assert [row.split(" | ")[3] for row in rows] == ["function", "llm", "http"]
    assert ("**#2 LLM** `gpt-4o-mini-2024-07-18` (openai-compatible): 120 in, 30 out, "
            "100 cached, finish stop") in text
    assert "> **user**: refund order 7" in text
    assert f"> **assistant**: {ANSWER}" in text
    assert "**#3 error** `" in text and "ConnectionError" in text


def test_default_jsonl_unchanged_and_unknown_run(home):
    done = export(home, "-o", "-")
    assert [orjson.loads(line)["event_id"] for line in done.stdout.splitlines()] == \
        [e["event_id"] for e in stored(home)]
    missing = subprocess.run([TRACELAB, "export", "nope", "--format", "markdown"],
                             capture_output=True, text=True, env=clean_env(home), timeout=60)
    assert missing.returncode == 2 and "nope" in missing.stderr


def test_markdown_reads_anthropic_and_gemini_turns():
    from event_factory import make_event

    from tracelab.cli.export import markdown

    anthropic = make_event("wf", "r", seq=0, kind="llm", tags={"llm.model": "claude-x"},
                           request={"body": {"messages": [
                               {"role": "user", "content": [{"type": "text", "text": "hi"}]}]}},
                           response={"body": {"content": [{"type": "text", "text": "hello"}]}})
    gemini = make_event("wf", "r", seq=1, kind="llm", tags={"llm.model": "gemini-2.0"},
                        request={"body": {"contents": [{"role": "user",
                                                        "parts": [{"text": "bonjour"}]}]}},
                        response={"body": {}})
    text = markdown([anthropic, gemini])
    assert "> **user**: hi" in text and "> **assistant**: hello" in text
    assert "> **user**: bonjour" in text
