"""The streams part of the contract: validate() on `response.chunks` / `response.stream`,
checked against the shared example and the JSON Schema's verdict."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from tracelab.events import validate

SPEC = Path(__file__).resolve().parent.parent / "spec"
EXAMPLE = json.loads((SPEC / "examples" / "valid" / "http-stream-sse.json").read_text())
SCHEMA = Draft202012Validator(json.loads((SPEC / "trace-event.schema.json").read_text()))


def changed(change: Any) -> dict[str, Any]:
    event = copy.deepcopy(EXAMPLE)
    change(event["response"])
    return event


@pytest.mark.parametrize(("change", "problem"), [
    (lambda r: r["chunks"][0].update(t="5"),
     "response.chunks[0].t: expected a number (ms since the request started), got str"),
    (lambda r: r["chunks"][0].update(t=-0.5),
     "response.chunks[0].t: must be a finite number >= 0, got -0.5"),
    (lambda r: r["chunks"][1].pop("data"),
     "response.chunks[1].data: expected a string, got null"),
    (lambda r: r["chunks"][1].update(encoding="hex"),
     "response.chunks[1].encoding: expected 'text' or 'base64', got 'hex'"),
    (lambda r: r.update(chunks={"t": 1}), "response.chunks: expected an array, got dict"),
    (lambda r: r["stream"].pop("truncated"),
     "response.stream.truncated: required field is missing"),
    (lambda r: r["stream"].update(complete=1),
     "response.stream.complete: expected true or false, got int"),
    (lambda r: r["stream"].update(size=-1),
     "response.stream.size: out of range, must be 0..9223372036854775807, got -1"),
    (lambda r: r["stream"].update(error={"type": "E"}),
     "response.stream.error.message: required field is missing"),
    (lambda r: r.pop("chunks"),
     "response.chunks: required with response.stream (a streamed response)"),
])
def test_each_stream_problem_is_named_once(change: Any, problem: str) -> None:
    event = changed(change)
    assert validate(event) == [problem]
    assert list(SCHEMA.iter_errors(event)), "the JSON Schema let it through"


@pytest.mark.parametrize("change", [
    lambda r: None,
    lambda r: r.pop("stream"),  # chunks alone: a complete stream
    lambda r: r.update(chunks=[]),
    lambda r: r["chunks"][0].update(encoding="text", t=0),
    lambda r: r["stream"].update(error={"type": "ReadError", "message": "peer closed"}),
])
def test_valid_stream_shapes_pass_both(change: Any) -> None:
    event = changed(change)
    assert validate(event) == []
    assert list(SCHEMA.iter_errors(event)) == []
