"""spec/matching/: the shared key cases every replaying producer (sdk-py, sdk-ts, proxy) passes."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tracelab.replay.matching import MatchOptions, http_request_view, parse_ignore, request_key
from tracelab.sdk.redaction import Redactor

SPEC = Path(__file__).resolve().parent.parent / "spec" / "matching"
CASES = sorted((SPEC / "cases").glob("*.json"))
DEFAULT_CAP = 65536


def _options(case: dict[str, Any]) -> MatchOptions:
    options = case.get("options") or {}
    return MatchOptions(ignore=tuple(options.get("ignore", ())),
                        headers=tuple(options.get("headers", ())))


def test_the_corpus_is_there() -> None:
    assert (SPEC / "README.md").is_file()
    assert len(CASES) >= 20, f"spec/matching/cases is missing or nearly empty: {CASES}"


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_case(path: Path) -> None:
    case = json.loads(path.read_text(encoding="utf-8"))
    assert case["name"] == path.stem
    options = _options(case)
    assert request_key(case["event"], options) == case["key"]
    for event in case.get("same", ()):
        assert request_key(event, options) == case["key"], event
    for event in case.get("different", ()):
        assert request_key(event, options) != case["key"], event
    redactor = Redactor()
    for live in case.get("live", ()):
        view = http_request_view(live["method"], live["url"], live.get("headers"),
                                 live.get("body"), None, redactor, DEFAULT_CAP)
        assert request_key({"kind": "http", "request": view}, options) == case["key"], live


def test_the_key_is_canonical_json_of_itself() -> None:
    """Each key is compact JSON with sorted members: parsing and re-writing it changes nothing."""
    for path in CASES:
        key = json.loads(path.read_text(encoding="utf-8"))["key"]
        parsed = json.loads(key)
        assert isinstance(parsed, dict) and list(parsed) == sorted(parsed), path.stem


def test_ignore_rules() -> None:
    rules = json.loads((SPEC / "ignore-rules.json").read_text(encoding="utf-8"))
    assert rules["valid"] and rules["invalid"]
    for valid in rules["valid"]:
        assert parse_ignore(valid["rule"]) == valid["normal"]
    for invalid in rules["invalid"]:
        with pytest.raises(ValueError, match="match-ignore rule"):
            parse_ignore(invalid)
