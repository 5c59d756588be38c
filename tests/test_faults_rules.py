"""The fault rule format (`tracelab.replay.faults`): parsing every key (every reason for a bad
rule at once), YAML/JSON files, matching (kind, target, endpoint, match_body, nth), the
seeded `rate`/latency draws, `times`, and the `Fault` a decision gives (`response_event` for
each action, `mangle`, `body_bytes`, `tags`). The mocks applying these on a real server are in
tests/test_mocks.py.
"""
from __future__ import annotations

import base64
import json
import statistics
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tracelab.replay.faults import (RULE_KEYS, Call, Fault, FaultRule, FaultRuleError, FaultSet,
                                    load_rules, parse_rule, parse_rules)

REFUND = Call("http", "api.stripe.com", "POST /v1/refunds", {"charge": "ch_1", "amount": 100})
CHAT = Call("llm", "api.openai.com", "POST /v1/chat/completions",
            {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user"}],
             "metadata": {"tier": 2}})

VALID = [
    {"status": 500},
    {"kind": "llm", "target": "api.openai.com", "endpoint": "POST /v1/*", "reset": True},
    {"method": "post", "path": "/v1/charges", "timeout": True, "timeout_s": 2.5},
    {"method": "GET", "latency_ms": 10},
    {"path": "/v1/*", "latency_ms": {"uniform": [5, 50]}},
    {"latency_ms": {"lognormal": {"median_ms": 100, "p99_ms": 2000}}, "empty_body": True},
    {"match_body": {"$.model": "gpt-4o*", "$.messages[0].role": "user"}, "malformed_body": True},
    {"nth": 2, "stream_cut_after": 0},
    {"nth": [1, 3], "truncate_after": 10, "rate": 0.5, "seed": 7, "times": 3},
    {"status": 429, "body": {"error": "slow down"}, "headers": {"X-A": "b"}, "retry_after": 2},
    {"status": 503, "body": "down", "id": "outage"},
    {"status": 200, "body": None},
]


@pytest.mark.parametrize("rule", VALID)
def test_every_key_valid_round_trips(rule: dict[str, Any]) -> None:
    parsed = parse_rule(rule)
    again = parse_rule(parsed.definition())
    assert again.definition() == parsed.definition()
    out = parsed.to_dict()
    assert out["matched"] == 0 and out["applied"] == 0 and out["action"] == parsed.action
    assert parse_rule(out).definition() == parsed.definition()  # the admin API's own output


INVALID = [
    ({"kind": "", "status": 500}, "rule.kind: must be a non-empty string"),
    ({"target": 5, "status": 500}, "rule.target: must be a non-empty string"),
    ({"endpoint": ["POST /x"], "status": 500}, "rule.endpoint: must be a non-empty string"),
    ({"endpoint": "POST /x", "method": "GET", "status": 500}, "exclude each other"),
    ({"method": "FETCH", "status": 500}, "rule.method: must be one of"),
    ({"path": "v1", "status": 500}, "rule.path: must start with '/'"),
    ({"path": "", "status": 500}, "rule.path: must be a non-empty glob"),
    ({"match_body": {}, "status": 500}, "rule.match_body: must be a non-empty object"),
    ({"match_body": "$.model", "status": 500}, "rule.match_body: must be a non-empty object"),
    ({"match_body": {"model": "x"}, "status": 500}, "a JSON path starts with '$'"),
    ({"match_body": {"$.a[": "x"}, "status": 500}, "cannot read the JSON path"),
    ({"nth": 0, "status": 500}, "rule.nth: must be an integer >= 1"),
    ({"nth": [], "status": 500}, "rule.nth: must be an integer >= 1"),
    ({"nth": [1, "2"], "status": 500}, "rule.nth: must be an integer >= 1"),
    ({"nth": True, "status": 500}, "rule.nth: must be an integer >= 1"),
    ({"rate": 1.5, "status": 500}, "rule.rate: must be a number from 0 to 1"),
    ({"rate": "0.5", "status": 500}, "rule.rate: must be a number from 0 to 1"),
    ({"seed": "abc", "status": 500}, "rule.seed: must be an integer"),
    ({"seed": 1.5, "status": 500}, "rule.seed: must be an integer"),
    ({"times": 0, "status": 500}, "rule.times: must be a positive integer"),
    ({"latency_ms": -5}, "rule.latency_ms: must be a number from 0 to"),
    ({"latency_ms": float("nan")}, "rule.latency_ms: must be a number"),
    ({"latency_ms": 700_000}, "rule.latency_ms: must be a number from 0 to"),
    ({"latency_ms": {"uniform": [50, 5]}}, "rule.latency_ms.uniform: must be [a, b]"),
    ({"latency_ms": {"uniform": [5]}}, "rule.latency_ms.uniform: must be [a, b]"),
    ({"latency_ms": {"lognormal": {"median_ms": 100}}}, "rule.latency_ms.lognormal: must be"),
    ({"latency_ms": {"lognormal": {"median_ms": 100, "p99_ms": 50}}},
     "rule.latency_ms.lognormal: must be"),
    ({"latency_ms": {"normal": [1, 2]}}, "rule.latency_ms: must be a number of ms"),
    ({"latency_ms": 0}, "rule: no effect"),
    ({"endpoint": "POST /x"}, "rule: no effect"),
    ({"status": 9}, "rule.status: must be an integer HTTP status"),
    ({"status": "500"}, "rule.status: must be an integer HTTP status"),
    ({"body": {"a": 1}, "reset": True}, "rule.body: only makes sense with 'status'"),
    ({"headers": {"a": "b"}, "reset": True}, "rule.headers: only makes sense with 'status'"),
    ({"status": 500, "headers": {"a": 1}}, "rule.headers: must be an object of string"),
    ({"retry_after": 1, "reset": True}, "rule.retry_after: only makes sense with 'status'"),
    ({"status": 429, "retry_after": -1}, "rule.retry_after: must be whole seconds"),
    ({"status": 429, "retry_after": 1.5}, "rule.retry_after: must be whole seconds"),
    ({"status": 429, "retry_after": 1, "headers": {"retry-after": "2"}},
     "'headers' already has a Retry-After"),
    ({"reset": "yes"}, "rule.reset: must be true or false"),
    ({"timeout": 1}, "rule.timeout: must be true or false"),
    ({"empty_body": "true"}, "rule.empty_body: must be true or false"),
    ({"malformed_body": None}, "rule.malformed_body: must be true or false"),
    ({"reset": True, "timeout_s": 5}, "rule.timeout_s: only makes sense with 'timeout': true"),
    ({"timeout": True, "timeout_s": 0}, "rule.timeout_s: must be a number of seconds"),
    ({"stream_cut_after": -1}, "rule.stream_cut_after: must be an integer >= 0"),
    ({"truncate_after": "10"}, "rule.truncate_after: must be an integer >= 0"),
    ({"status": 500, "reset": True}, "status, reset exclude each other"),
    ({"empty_body": True, "truncate_after": 3}, "empty_body, truncate_after exclude each other"),
    ({"id": "a/b", "status": 500}, "rule.id: must be a non-empty string without '/'"),
    ({"status": 500, "colour": "red"}, "rule: unknown key(s) 'colour'"),
]


@pytest.mark.parametrize(("rule", "reason"), INVALID)
def test_every_key_invalid_says_why(rule: dict[str, Any], reason: str) -> None:
    with pytest.raises(FaultRuleError) as err:
        parse_rule(rule)
    assert any(reason in e for e in err.value.errors), err.value.errors


def test_every_reason_is_listed_at_once() -> None:
    with pytest.raises(FaultRuleError) as err:
        parse_rules([{"status": 500},
                     {"kind": 1, "nth": 0, "rate": 2, "times": 0, "status": 9, "reset": "x",
                      "match_body": {"model": 1}, "stream_cut_after": -2, "colour": 1}])
    errors = err.value.errors
    for where in ("rules[1]: unknown key(s) 'colour'", "rules[1].kind", "rules[1].nth",
                  "rules[1].rate", "rules[1].times", "rules[1].status", "rules[1].reset",
                  "rules[1].match_body", "rules[1].stream_cut_after"):
        assert any(e.startswith(where) for e in errors), (where, errors)
    assert not any(e.startswith("rules[0]") for e in errors)
    assert str(err.value) == "; ".join(errors)


def test_rule_collections() -> None:
    assert len(parse_rules({"rules": [{"status": 500}, {"reset": True}]})) == 2
    assert len(parse_rules({"status": 500})) == 1
    assert parse_rules(None) == [] and parse_rules([]) == []
    for bad, reason in (({"rules": {"status": 500}}, "'rules' must be a list"),
                        ({"rules": [], "extra": 1}, "unknown key(s) 'extra' next to 'rules'"),
                        ([{"id": "x", "reset": True}, {"id": "x", "status": 500}],
                         "duplicate rule id(s): x"),
                        ([1], "rules[0]: must be an object")):
        with pytest.raises(FaultRuleError, match=reason.replace("(", r"\(").replace(")", r"\)")
                           .replace("[", r"\[").replace("]", r"\]")):
            parse_rules(bad)


_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-3, 700), st.floats(-1, 2),
                    st.text(max_size=8), st.lists(st.integers(0, 5), max_size=3),
                    st.dictionaries(st.sampled_from(["$.a", "uniform", "x", "$.b[0]"]),
                                    st.integers(0, 5), max_size=2))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from([*RULE_KEYS, "colour"]), _VALUES, max_size=6))
def test_parser_accepts_or_explains(rule: dict[str, Any]) -> None:
    """Any object: a rule that round-trips, or FaultRuleError with located reasons only."""
    try:
        parsed = parse_rule(rule)
    except FaultRuleError as exc:
        assert exc.errors and all(e.startswith("rule") for e in exc.errors)
        return
    assert parse_rule(parsed.definition()).definition() == parsed.definition()
    assert parsed.action in ("latency", "status", "reset", "timeout", "empty_body",
                             "malformed_body", "stream_cut", "truncate", "grpc_status")


# -- files ----------------------------------------------------------------------------------

YAML_RULES = """\
rules:
  - id: stripe-429
    target: api.stripe.com
    endpoint: "POST /v1/refunds"
    status: 429
    retry_after: 1
    times: 2
  - kind: llm
    match_body: {"$.model": "gpt-4o*"}
    latency_ms: {uniform: [1, 2]}
"""


def test_yaml_and_json_files(tmp_path: Path) -> None:
    yml = tmp_path / "faults.yaml"
    yml.write_text(YAML_RULES)
    rules = load_rules(yml)
    assert [r.id for r in rules][0] == "stripe-429" and rules[1].kind == "llm"
    assert [r.definition() for r in load_rules(str(yml))] == \
        [r.definition() for r in load_rules("@" + str(yml))]
    js = tmp_path / "faults.json"
    js.write_text(json.dumps([r.definition() for r in rules]))
    assert [r.definition() for r in load_rules(js)] == [r.definition() for r in rules]
    assert load_rules(json.dumps({"status": 500, "id": "t"}))[0].id == "t"
    assert load_rules("- {reset: true, id: y}\n")[0].action == "reset"
    assert load_rules(rules[0].definition())[0].id == "stripe-429"
    empty = tmp_path / "empty.yml"
    empty.write_text("")
    assert load_rules(empty) == [] and load_rules("") == []


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("- {status: 9, rate: 3}\n- {reset: maybe}\n")
    with pytest.raises(FaultRuleError) as err:
        load_rules(bad)
    assert [e.split(": ", 2)[1] for e in err.value.errors] == \
        ["rules[0].rate", "rules[0].status", "rules[1].reset"]
    assert all(e.startswith(str(bad) + ": ") for e in err.value.errors)
    broken_json = tmp_path / "broken.json"
    broken_json.write_text("[{")
    with pytest.raises(FaultRuleError, match="broken.json: not JSON"):
        load_rules(broken_json)
    broken_yaml = tmp_path / "broken.yml"
    broken_yaml.write_text("- {status: [\n")
    with pytest.raises(FaultRuleError, match="broken.yml: not YAML"):
        load_rules(broken_yaml)
    with pytest.raises(FaultRuleError, match="missing.yaml: cannot read"):
        load_rules(tmp_path / "missing.yaml")
    with pytest.raises(FaultRuleError, match="missing.json: cannot read"):
        load_rules("@" + str(tmp_path / "missing.json"))
    with pytest.raises(FaultRuleError, match="fault rules: neither JSON nor YAML"):
        load_rules("{status: [")
    with pytest.raises(FaultRuleError, match="'chaos.txt' is no file"):
        load_rules("chaos.txt")


# -- matching -------------------------------------------------------------------------------

def _hits(rule: dict[str, Any], call: Call) -> bool:
    return FaultSet(parse_rules(rule)).decide_call(call) is not None


@pytest.mark.parametrize(("match", "call", "hit"), [
    ({}, REFUND, True),
    ({"kind": "http"}, REFUND, True),
    ({"kind": "llm"}, REFUND, False),
    ({"kind": "*"}, CHAT, True),
    ({"target": "api.stripe.com"}, REFUND, True),
    ({"target": "*.stripe.com"}, REFUND, True),
    ({"target": "api.openai.com"}, REFUND, False),
    ({"target": "127.0.0.1"}, Call("http", "127.0.0.1:9100", "GET /"), True),
    ({"target": "127.0.0.1:9100"}, Call("http", "127.0.0.1:9100", "GET /"), True),
    ({"target": "127.0.0.1:9101"}, Call("http", "127.0.0.1:9100", "GET /"), False),
    ({"target": "smtp:*"}, Call("email", "smtp:mail.example.com", "sendmail"), True),
    ({"endpoint": "POST /v1/refunds"}, REFUND, True),
    ({"endpoint": "POST /v1/*"}, REFUND, True),
    ({"endpoint": "* /v1/*"}, REFUND, True),
    ({"endpoint": "GET /v1/*"}, REFUND, False),
    ({"endpoint": "SendEmail"}, Call("email", "aws:ses", "SendEmail"), True),
    ({"method": "POST"}, REFUND, True),
    ({"method": "get"}, REFUND, False),
    ({"path": "/v1/*"}, REFUND, True),
    ({"method": "POST", "path": "/v1/ref*"}, REFUND, True),
    ({"method": "POST", "path": "/v2/*"}, REFUND, False),
    ({"match_body": {"$.model": "gpt-4o*"}}, CHAT, True),
    ({"match_body": {"$.model": "gpt-3*"}}, CHAT, False),
    ({"match_body": {"$.stream": True}}, CHAT, True),
    ({"match_body": {"$.stream": 1}}, CHAT, False),  # true is not 1
    ({"match_body": {"$.metadata.tier": 2}}, CHAT, True),
    ({"match_body": {"$.metadata.tier": 2.0}}, CHAT, True),
    ({"match_body": {"$.metadata.tier": "2"}}, CHAT, False),  # a glob only matches text
    ({"match_body": {"$.messages[0].role": "user"}}, CHAT, True),
    ({"match_body": {"$.messages[*].role": "us*"}}, CHAT, True),
    ({"match_body": {"$.messages[3].role": "user"}}, CHAT, False),
    ({"match_body": {"$.missing": None}}, CHAT, False),  # a missing path never matches
    ({"match_body": {"$.amount": 100, "$.charge": "ch_*"}}, REFUND, True),
    ({"match_body": {"$.amount": 100, "$.charge": "re_*"}}, REFUND, False),
    ({"match_body": {"$": {"charge": "ch_1", "amount": 100}}}, REFUND, True),
    ({"match_body": {"$.model": "*"}}, Call("llm", "x", "y", None), False),
])
def test_matching(match: dict[str, Any], call: Call, hit: bool) -> None:
    assert _hits({**match, "status": 500}, call) is hit


def test_nth_counts_matching_calls_of_the_rule() -> None:
    faults = FaultSet(parse_rules([{"endpoint": "POST /v1/refunds", "nth": [2, 4],
                                    "status": 500, "id": "nth"}]))
    other = Call("http", "api.stripe.com", "GET /v1/charges")
    seen = []
    for _ in range(5):
        assert faults.decide_call(other) is None  # not counted: it does not match
        seen.append(faults.decide_call(REFUND) is not None)
    assert seen == [False, True, False, True, False]
    assert faults.rules()[0].to_dict()["matched"] == 5
    assert faults.rules()[0].to_dict()["applied"] == 2


def test_times_then_next_rule_and_order() -> None:
    faults = FaultSet(parse_rules([{"id": "first", "status": 429, "times": 2},
                                   {"id": "then", "latency_ms": 5}]))
    assert [faults.decide_call(REFUND).rule_id for _ in range(4)] == \
        ["first", "first", "then", "then"]
    assert faults.decide("POST", "/v1/refunds").rule_id == "then"  # the mocks' question


def test_nth_with_times() -> None:
    faults = FaultSet(parse_rules({"nth": [1, 2, 3], "times": 2, "reset": True}))
    assert [faults.decide_call(REFUND) is not None for _ in range(4)] == \
        [True, True, False, False]


def test_times_is_exact_across_threads() -> None:
    faults = FaultSet(parse_rules({"status": 500, "times": 50}))
    got: list[Fault | None] = []

    def work() -> None:
        for _ in range(40):
            got.append(faults.decide_call(REFUND))

    threads = [threading.Thread(target=work) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(f is not None for f in got) == 50


# -- seeded draws ---------------------------------------------------------------------------

SEEDED = [{"id": "flaky", "endpoint": "POST /v1/*", "rate": 0.3, "seed": 1234,
           "latency_ms": {"uniform": [10, 500]}, "status": 503},
          {"id": "slow", "kind": "llm", "seed": 9,
           "latency_ms": {"lognormal": {"median_ms": 200, "p99_ms": 3000}}}]


def _run(rules: list[dict[str, Any]], calls: list[Call]) -> list[tuple[str, float] | None]:
    faults = FaultSet(load_rules(rules))
    out = []
    for call in calls:
        fault = faults.decide_call(call)
        out.append(None if fault is None else (fault.rule_id, fault.latency_ms))
    return out


def test_seeded_rules_give_identical_decisions_and_latencies() -> None:
    calls = [REFUND, CHAT, REFUND, REFUND, CHAT] * 40
    first, second = _run(SEEDED, calls), _run(SEEDED, calls)
    assert first == second
    flaky = [d for c, d in zip(calls, first) if c is REFUND]
    assert 0 < sum(d is not None for d in flaky) < len(flaky)
    assert len({d[1] for d in first if d is not None}) > 50  # drawn, not constant
    reseeded = _run([{**SEEDED[0], "seed": 99}, SEEDED[1]], calls)
    assert reseeded != first


def test_latency_distributions() -> None:
    fixed = FaultSet(parse_rules({"latency_ms": 25})).decide_call(REFUND)
    assert fixed is not None and fixed.latency_ms == 25 and fixed.action == "latency"
    uniform = [f.latency_ms for f in _faults({"latency_ms": {"uniform": [10, 20]}, "seed": 1})]
    assert all(10 <= v <= 20 for v in uniform) and max(uniform) - min(uniform) > 5
    lognormal = sorted(f.latency_ms for f in _faults(
        {"latency_ms": {"lognormal": {"median_ms": 100, "p99_ms": 1000}}, "seed": 3}, 4000))
    assert 85 < statistics.median(lognormal) < 115
    assert 700 < lognormal[int(0.99 * len(lognormal))] < 1400


def _faults(rule: dict[str, Any], n: int = 200) -> list[Fault]:
    faults = FaultSet(parse_rules(rule))
    out = [faults.decide_call(REFUND) for _ in range(n)]
    assert all(f is not None for f in out)
    return out  # type: ignore[return-value]


# -- the Fault ------------------------------------------------------------------------------

RECORDED = {"kind": "http", "status": "ok",
            "response": {"status_code": 200, "headers": {"Content-Length": "26"},
                         "body": {"id": "re_1", "amount": 100}}}
STREAMED = {"kind": "llm", "status": "ok",
            "response": {"status_code": 200, "headers": {"content-type": "text/event-stream"},
                         "body": "data: 1\n\ndata: 2\n\ndata: 3\n\n",
                         "chunks": [{"t": 1.0, "data": "data: 1\n\n"},
                                    {"t": 2.0, "data": "data: 2\n\n"},
                                    {"t": 3.0, "data": "data: 3\n\n"}],
                         "stream": {"complete": True, "error": None, "size": 27,
                                    "truncated": False}}}


def _fault(rule: dict[str, Any]) -> Fault:
    fault = FaultSet(parse_rules({"id": "r1", **rule})).decide_call(REFUND)
    assert fault is not None
    return fault


def test_status_event_and_body() -> None:
    fault = _fault({"status": 429, "retry_after": 2, "headers": {"X-Why": "chaos"}})
    assert fault.replaces_response and fault.headers == {"X-Why": "chaos", "Retry-After": "2"}
    event = fault.response_event(RECORDED)
    assert event["status_code"] == 429 and event["status"] == "error"
    response = event["response"]
    assert response["status_code"] == 429
    assert response["headers"] == {"content-type": "application/json", "X-Why": "chaos",
                                   "Retry-After": "2"}
    assert response["body"]["error"]["rule"] == "r1" and "r1" in response["body"]["error"]["message"]
    text = _fault({"status": 503, "body": "down"})
    assert text.body_bytes() == (b"down", "text/plain; charset=utf-8")
    assert text.response_event(None)["response"]["body"] == "down"
    obj = _fault({"status": 200, "body": [1, 2]})
    assert obj.body_bytes() == (b"[1, 2]", "application/json")
    assert obj.response_event(None)["status"] == "ok"
    assert obj.response_event(None)["response"]["body"] == [1, 2]


@pytest.mark.parametrize(("rule", "kind", "words"), [
    ({"reset": True}, "ConnectionResetError", "connection reset"),
    ({"timeout": True, "timeout_s": 3}, "TimeoutError", "timed out after 3s"),
])
def test_reset_and_timeout_events(rule: dict[str, Any], kind: str, words: str) -> None:
    fault = _fault(rule)
    assert fault.replaces_response
    event = fault.response_event(RECORDED)
    assert event["response"] is None
    assert event["error"] == {"type": kind,
                              "message": f"fault injected by TraceLab (rule r1): {words}"}
    if "timeout" in rule:
        assert fault.timeout_s == 3


def test_empty_malformed_truncate_on_a_whole_body() -> None:
    raw = json.dumps(RECORDED["response"]["body"], separators=(",", ":")).encode()
    empty = _fault({"empty_body": True}).response_event(RECORDED)
    assert empty["response"]["body"] == "" and empty["response"]["headers"]["Content-Length"] == "0"
    malformed = _fault({"malformed_body": True})
    assert not malformed.replaces_response
    body = malformed.response_event(RECORDED)["response"]["body"]
    assert body == raw[:len(raw) // 2].decode() + '{"'
    with pytest.raises(ValueError):
        json.loads(body)
    truncated = _fault({"truncate_after": 5}).response_event(RECORDED)["response"]
    assert truncated["body"] == raw[:5].decode() and truncated["headers"]["Content-Length"] == "5"
    assert RECORDED["response"]["body"] == {"id": "re_1", "amount": 100}  # a copy was changed
    assert _fault({"empty_body": True}).response_event(None)["response"]["body"] == ""


def test_mangling_a_stream_keeps_chunk_boundaries() -> None:
    truncated = _fault({"truncate_after": 12}).response_event(STREAMED)["response"]
    assert [c["data"] for c in truncated["chunks"]] == ["data: 1\n\n", "dat"]
    assert truncated["body"] == "data: 1\n\ndat" and truncated["stream"]["complete"] is True
    empty = _fault({"empty_body": True}).response_event(STREAMED)["response"]
    assert empty["chunks"] == [] and empty["body"] == ""
    malformed = _fault({"malformed_body": True}).response_event(STREAMED)["response"]
    assert "".join(c["data"] for c in malformed["chunks"]) == malformed["body"]
    assert malformed["body"].endswith('{"')


def test_stream_cut_event() -> None:
    fault = _fault({"stream_cut_after": 2})
    assert fault.cut_after_chunks == 2 and not fault.replaces_response
    response = fault.response_event(STREAMED)["response"]
    assert response["chunks"] == STREAMED["response"]["chunks"][:2]
    assert response["body"] == "data: 1\n\ndata: 2\n\n"
    assert response["stream"] == {
        "complete": False, "size": 18, "truncated": False,
        "error": {"type": "ConnectionResetError",
                  "message": "fault injected by TraceLab (rule r1): stream cut after 2 chunk(s)"}}
    whole = _fault({"stream_cut_after": 0}).response_event(RECORDED)["response"]
    assert whole["chunks"] == [] and whole["body"] == "" and whole["stream"]["error"]
    kept = _fault({"stream_cut_after": 1}).response_event(RECORDED)["response"]
    assert json.loads(kept["body"]) == RECORDED["response"]["body"]
    assert kept["stream"]["complete"] is False


def test_binary_bodies_stay_binary() -> None:
    recorded = {"response": {"status_code": 200, "headers": {},
                             "body": {"$tracelab": "binary",
                                      "base64": base64.b64encode(b"\xff\xfe\x00\x01").decode()}}}
    body = _fault({"truncate_after": 3}).response_event(recorded)["response"]["body"]
    assert body == {"$tracelab": "binary", "base64": base64.b64encode(b"\xff\xfe\x00").decode()}
    cut = _fault({"stream_cut_after": 1}).response_event(recorded)["response"]
    assert cut["chunks"][0]["encoding"] == "base64"


def test_a_recorded_error_is_left_alone() -> None:
    recorded = {"response": None, "error": {"type": "ConnectionError", "message": "x"}}
    assert _fault({"empty_body": True}).response_event(recorded) == recorded
    assert _fault({"latency_ms": 5}).response_event(RECORDED) == RECORDED


def test_mangle() -> None:
    assert _fault({"empty_body": True}).mangle(b"abc") == b""
    assert _fault({"malformed_body": True}).mangle(b"") == b'{"'
    assert _fault({"malformed_body": True}).mangle(b'{"a":1}') == b'{"a{"'
    assert _fault({"truncate_after": 2}).mangle(b"abc") == b"ab"
    assert _fault({"status": 500}).mangle(b"abc") == b"abc"


def test_tags_carry_the_rule() -> None:
    fault = _fault({"endpoint": "POST /v1/*", "status": 429, "retry_after": 1, "times": 2})
    tags = fault.tags()
    assert tags["fault"] == "r1" and tags["fault.action"] == "status"
    rule = json.loads(tags["fault.rule"])
    assert rule == {"id": "r1", "endpoint": "POST /v1/*", "status": 429, "retry_after": 1,
                    "rate": 1.0, "times": 2}
    assert " " not in tags["fault.rule"].replace("POST /v1", "")  # compact
    assert isinstance(parse_rule(rule), FaultRule)


def test_generated_ids_are_stable_and_unique() -> None:
    rule = {"endpoint": "POST /v1/*", "status": 503}
    first, second = parse_rules([rule, rule, {"id": "mine", "reset": True}])[:2]
    assert first.id.startswith("f_") and second.id == first.id + "-2"
    assert parse_rules(rule)[0].id == first.id  # the same rule, the same id, every run
    assert parse_rules({**rule, "status": 500})[0].id != first.id
    faults = FaultSet(parse_rules(rule))
    added = faults.add(parse_rules(rule))  # the mocks' POST of the same rule again
    assert added[0].id == first.id + "-2" and len(faults) == 2
    with pytest.raises(FaultRuleError, match="already exist"):
        faults.add(parse_rules({**rule, "id": first.id}))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=12), st.one_of(st.text(max_size=4), st.integers(), st.none()))
def test_match_body_paths_accept_or_explain(path: str, expected: Any) -> None:
    try:
        rule = parse_rule({"match_body": {path: expected}, "status": 500})
    except FaultRuleError as exc:
        assert all(e.startswith("rule.match_body") for e in exc.errors), exc.errors
        return
    FaultSet([rule]).decide_call(CHAT)  # matching never raises either


def test_yaml_values_that_are_not_json_are_refused() -> None:
    with pytest.raises(FaultRuleError) as err:
        load_rules("- {status: 500, body: 2024-01-01, match_body: {$.day: 2024-01-02}}\n")
    assert [e.split(": ")[1] for e in err.value.errors] == \
        ["rules[0].match_body['$.day']", "rules[0].body"]
    with pytest.raises(FaultRuleError, match="body: must be a JSON value"):
        parse_rule({"status": 500, "body": float("nan")})


def test_a_call_with_missing_parts_is_decided_not_raised() -> None:
    faults = FaultSet(parse_rules([{"target": "api.*", "reset": True}, {"status": 500}]))
    fault = faults.decide_call(Call(None, None, None, b"\x00"))  # type: ignore[arg-type]
    assert fault is not None and fault.status == 500
