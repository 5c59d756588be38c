"""The shared LLM-fields corpus spec/llm/cases/ (also read by sdk-ts/test/llm-corpus.test.mjs):
request, response or SSE chunks -> the expected `llm.*` tags, identical in both SDKs. And the
stream reader's properties: however a stream is cut into pieces, the same tags come out."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tracelab.sdk.capture import llm_tags
from tracelab.sdk.llm import MAX_EVENT_CHARS, SSEScanner, StreamScanner, fold_response

CASES_DIR = Path(__file__).resolve().parent.parent / "spec" / "llm" / "cases"
CASES = [json.loads(p.read_text()) for p in sorted(CASES_DIR.glob("*.json"))]
STREAMED = [c for c in CASES if c.get("chunks")]


def test_the_corpus_is_there() -> None:
    assert len(CASES) >= 15 and len(STREAMED) >= 4
    for path in CASES_DIR.glob("*.json"):
        assert json.loads(path.read_text())["name"] == path.stem


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_case(case: dict[str, Any]) -> None:
    got = llm_tags(case["host"], case["path"], case["request"], case.get("response"),
                   case.get("chunks"))
    assert got == case["expected"], case["description"]


@settings(max_examples=60, deadline=None)
@given(case=st.sampled_from(STREAMED), cuts=st.lists(st.integers(min_value=0), max_size=12))
def test_any_cut_of_a_stream_gives_the_same_fields(case: dict[str, Any],
                                                  cuts: list[int]) -> None:
    text = "".join(c["data"] for c in case["chunks"])
    points = sorted({0, len(text), *(c % (len(text) + 1) for c in cuts)})
    pieces = [{"t": float(i), "data": text[a:b]}
              for i, (a, b) in enumerate(zip(points, points[1:]))]
    got = llm_tags(case["host"], case["path"], case["request"], None, pieces)
    expected = dict(case["expected"])
    assert got is not None
    assert float(got.pop("llm.ttft_ms", -1)) >= 0 or "llm.ttft_ms" not in expected
    expected.pop("llm.ttft_ms", None)
    assert got == expected


@settings(max_examples=60, deadline=None)
@given(case=st.sampled_from(STREAMED), size=st.integers(min_value=1, max_value=64))
def test_the_tee_scanner_reads_bytes_cut_anywhere(case: dict[str, Any], size: int) -> None:
    raw = "".join(c["data"] for c in case["chunks"]).encode()
    scanner = StreamScanner()
    for at in range(0, len(raw), size):  # cuts inside multi-byte characters too
        scanner.add(raw[at:at + size], float(at))
    fold = scanner.fold()
    assert fold is not None
    tags = fold.tags()
    tags.pop("llm.ttft_ms")
    assert tags.items() <= case["expected"].items()


def test_a_stream_that_is_not_sse_is_dropped_at_once() -> None:
    scanner = StreamScanner()
    scanner.add(b'{"a": 1}\n\n', 1.0)
    scanner.add(b"data: {}\n\n", 2.0)
    assert scanner.fold() is None
    binary = StreamScanner()
    binary.add(b"\xff\xfe\x00", 1.0)
    assert binary.fold() is None


def test_an_endless_line_stops_the_scanner() -> None:
    sse = SSEScanner()
    sse.feed("data: " + "x" * MAX_EVENT_CHARS)
    sse.feed("\n\n")
    assert sse.dead and sse.events == 0


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["model", "usage", "choices", "delta", "type", "message", "candidates",
                         "usageMetadata", "response", "output", "content", "parts", "index",
                         "finish_reason", "tool_calls", "function", "name", "prompt_tokens",
                         "input_tokens", "status", "item", "content_block", "functionCall",
                         "id", "output_index", "stop_reason", "finishReason"]),
        inner, max_size=5),
    max_leaves=30)


@settings(max_examples=200, deadline=None)
@given(response=JSON, events=st.lists(JSON, max_size=5))
def test_any_json_gives_string_tags_and_never_raises(response: Any, events: list[Any]) -> None:
    request = {"model": "m", "messages": []}
    for body, chunks in ((response, None), (None, [
            {"t": float(i), "data": f"data: {json.dumps(e)}\n\n"} for i, e in enumerate(events)])):
        fields = fold_response(body, chunks).tags()  # no exception to swallow here
        assert all(isinstance(v, str) for v in fields.values())
        tags = llm_tags("api.openai.com", "/v1/chat/completions", request, body, chunks)
        assert tags is not None and fields.items() <= tags.items()
