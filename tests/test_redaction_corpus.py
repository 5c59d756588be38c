"""The shared redaction corpus (spec/redaction/cases) through the Python SDK's redaction.

The same cases run in sdk-ts and (a few) through the real proxy in test_proxy.py: one contract
for every producer. A missing or empty corpus is a failure, never a skip.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tracelab.sdk.payloads import encode_body, to_jsonable
from tracelab.sdk.redaction import Redactor

CORPUS = Path(__file__).resolve().parent.parent / "spec" / "redaction" / "cases"
DEFAULT_CAP = 65536
WHATS = {"headers", "url", "body", "text", "cut", "value"}


def load_cases() -> list[dict[str, Any]]:
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(CORPUS.glob("*.json"))]


def run_case(case: dict[str, Any], redactor: Redactor | None = None) -> Any:
    """What the Python SDK stores for the case's input."""
    redactor = redactor or Redactor()
    what, given = case["what"], case["input"]
    if what == "headers":
        return redactor.headers(given)[0]
    if what == "url":
        return redactor.url(given)
    if what == "body":
        return encode_body(given.encode("utf-8"), case.get("content_type"), redactor,
                           case.get("max_body_bytes", DEFAULT_CAP))
    if what == "text":
        return redactor.text(given)
    if what == "cut":
        return redactor.cut(given)
    if what == "value":
        return to_jsonable(given, redactor, DEFAULT_CAP)
    raise AssertionError(f"unknown what {what!r}")


def test_corpus_is_present_and_well_formed() -> None:
    cases = load_cases()
    assert len(cases) >= 30, f"the redaction corpus at {CORPUS} is missing or nearly empty"
    for path, case in zip(sorted(CORPUS.glob("*.json")), cases):
        assert case["name"] == path.stem
        assert case["what"] in WHATS, path
        assert {"input", "expected", "description"} <= case.keys(), path
    assert {c["what"] for c in cases} == WHATS


@pytest.mark.parametrize("case", load_cases(), ids=lambda c: c["name"])
def test_corpus_case(case: dict[str, Any]) -> None:
    assert run_case(case) == case["expected"]


@pytest.mark.parametrize("case", [c for c in load_cases() if c["what"] not in ("body", "cut")],
                         ids=lambda c: c["name"])
def test_corpus_case_is_stable_when_redacted_again(case: dict[str, Any]) -> None:
    """Redacting an already redacted value changes nothing: markers never match a rule.

    (Bodies are left out: their output is a stored BODY, not an input of the same kind.)
    """
    again = dict(case, input=case["expected"])
    assert run_case(again) == case["expected"]
