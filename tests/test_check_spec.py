"""`tracelab check` without running anything: spec validation, the judging of a ReplayResult,
the one Verdict and what CI reads from it (JUnit XML, GitHub annotations, step summary)."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.event_factory import make_event
from tracelab.analysis.cost import cost_usd, price_table
from tracelab.cli import main
from tracelab.replay.check import CaseResult, Failure, Verdict, edit_script, evaluate
from tracelab.replay.junit import annotations, github_output, junit_xml, step_summary
from tracelab.replay.report import call_summary
from tracelab.replay.runner import ReplayResult, Tally
from tracelab.replay.spec import SpecError, call_label, load_spec, parse_cases


def write(tmp_path: Path, text: str, name: str = "tracelab.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# -- the spec format --------------------------------------------------------------------------

def test_an_unknown_key_is_refused_with_its_path_and_every_other_problem(tmp_path: Path) -> None:
    spec = write(tmp_path, """\
- name: ok
  recording: rec.jsonl
  expect:
    calls: {tolerance: 1}
- name: ok
  recording: rec.jsonl
  colour: blue
  on_miss: sometimes
  expect:
    exit_code: -1
    misses: many
    budgets: {llm_cost_usd: -2, seconds: 3}
    calls: {must_include: ["refunds"], max_per_target: {api.openai.com: 2.5}}
""")
    with pytest.raises(SpecError) as caught:
        load_spec(spec)
    errors = caught.value.errors
    expected = ["cases[0].expect.calls.tolerance: unknown key", "cases[1].name: 'ok' is used",
                "cases[1].colour: unknown key", "cases[1].on_miss: one of fail",
                "cases[1].expect.exit_code:", "cases[1].expect.misses:",
                "cases[1].expect.budgets.llm_cost_usd:", "cases[1].expect.budgets.seconds: unknown",
                "cases[1].expect.calls.must_include[0]: 'refunds'",
                "cases[1].expect.calls.max_per_target.api.openai.com:"]
    for piece in expected:
        assert any(piece in e for e in errors), (piece, errors)
    assert len(errors) == len(expected)
    assert all(e.startswith(f"{spec}: ") for e in errors)


def test_the_cli_refuses_an_invalid_spec_with_exit_2_before_running_anything(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write(tmp_path, "cases:\n  - name: a\n    recording: r.jsonl\n"
                           "    command: touch ran\n    expect: {calls: {tolerance: 1}}\n")
    junit = tmp_path / "out.xml"
    assert main(["check", str(spec), "--junit", str(junit)]) == 2
    out = capsys.readouterr().out
    assert "cases[0].expect.calls.tolerance: unknown key" in out
    assert out.strip().splitlines()[-1].startswith("tracelab check: INVALID")
    assert not (tmp_path / "ran").exists()
    error = ET.parse(junit).getroot().find("testsuite/testcase/error")
    assert error is not None and "cases[0].expect.calls.tolerance" in (error.text or "")


def test_defaults_paths_and_lines(tmp_path: Path) -> None:
    spec = write(tmp_path, "# a comment\n- name: a\n  recording: recs/a.jsonl\n\n"
                           "- name: b\n  recording: /abs/b.jsonl\n  command: python x.py --o 'a b'\n"
                           "  expect: {calls: {same_as_recording: true}}\n")
    a, b = load_spec(spec)
    assert (a.recording, a.line, a.command, a.faults, a.on_miss) == \
        (tmp_path / "recs" / "a.jsonl", 2, None, None, "fail")
    assert (a.expect.exit_code, a.expect.misses, a.expect.unused, a.expect.errors,
            a.expect.calls.tolerance) == (0, 0, None, None, None)
    assert (b.recording, b.line, b.command, b.expect.calls.tolerance) == \
        (Path("/abs/b.jsonl"), 5, ["python", "x.py", "--o", "a b"], 0)


def test_a_folder_runs_every_spec_in_it_but_not_hidden_ones(tmp_path: Path) -> None:
    from tracelab.replay.spec import discover

    write(tmp_path, "- {name: a, recording: a.jsonl}\n", "one.yaml")
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub", "- {name: b, recording: b.jsonl}\n", "two.yml")
    (tmp_path / ".github" / "workflows").mkdir(parents=True)
    write(tmp_path / ".github" / "workflows", "on: push\n", "ci.yml")
    write(tmp_path, "not a spec", "notes.txt")
    assert discover([tmp_path]) == [tmp_path / "one.yaml", tmp_path / "sub" / "two.yml"]


def test_call_labels() -> None:
    assert call_label("http", "api.stripe.com", "POST /v1/refunds") == \
        "POST api.stripe.com /v1/refunds"
    assert call_label("llm", "api.openai.com", "POST /v1/chat/completions") == \
        "POST api.openai.com /v1/chat/completions"
    assert call_label("email", "aws:ses", "SendEmail") == "email aws:ses SendEmail"


# -- edit distance ----------------------------------------------------------------------------

def levenshtein(a: list[str], b: list[str]) -> int:
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        row = [i]
        for j, y in enumerate(b, 1):
            row.append(min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = row
    return prev[-1]


@settings(max_examples=300, deadline=None)
@given(a=st.lists(st.sampled_from("ABCD"), max_size=12),
       b=st.lists(st.sampled_from("ABCD"), max_size=12))
def test_edit_script_is_the_edit_distance_and_lists_each_edit(a: list[str], b: list[str]) -> None:
    distance, edits = edit_script(a, b)
    assert distance == levenshtein(a, b)
    assert len(edits) == distance
    assert (distance == 0) == (a == b)


def test_edit_script_names_the_differing_calls() -> None:
    old = ["GET a /x", "POST a /charge", "POST b /mail"]
    new = ["GET a /x", "POST b /mail", "POST b /mail", "GET a /x"]
    distance, edits = edit_script(old, new)
    assert distance == 2
    assert edits == ["~ recorded #2: POST a /charge  ->  replay #2: POST b /mail",
                     "+ replay #4: GET a /x  (not in the recording)"]
    assert edit_script(new, old)[1] == [
        "~ recorded #2: POST b /mail  ->  replay #2: POST a /charge",
        "- recorded #4: GET a /x  (not made in the replay)"]


# -- judging a ReplayResult ---------------------------------------------------------------------

def event(seq: int, endpoint: str, target: str = "api.stripe.com", **tags: str) -> dict:
    e = make_event("shop", "rec", seq=seq, target=target, tags=dict(tags))
    e["endpoint"] = endpoint
    return e


RECORDED = [event(0, "POST /v1/charges"), event(1, "POST /v1/refunds"),
            event(2, "POST /v1/chat/completions", "api.openai.com")]


def result(calls: list[dict], command_exit: int = 0, hits: int = 3,
           duration_ms: float = 100.0) -> ReplayResult:
    tally = Tally(total=3, hits={e["event_id"] for e in RECORDED[:hits]})
    return ReplayResult(0, tally.summary, "new-run", [], command_exit=command_exit, tally=tally,
                        calls=calls, duration_ms=duration_ms)


def case_from(expect: dict) -> Any:
    return parse_cases([{"name": "c", "recording": "r.jsonl", "expect": expect}],
                       Path("/spec/tracelab.yaml"))[0]


def summaries(*events: dict) -> list[dict]:
    return [call_summary(e) for e in events]


def test_a_run_that_meets_every_expectation_has_no_failures() -> None:
    llm = event(2, "POST /v1/chat/completions", "api.openai.com", **{
        "llm.model": "gpt-4o-mini", "llm.input_tokens": "900", "llm.output_tokens": "100"})
    faulted = event(1, "POST /v1/refunds", fault="r1", **{"fault.action": "status"})
    faulted["status"] = "error"
    calls = summaries(RECORDED[0], faulted, RECORDED[1], llm)
    case = case_from({"exit_code": 0, "misses": 0, "unused": 0, "errors": 0,
                      "calls": {"same_as_recording": True,
                                "must_include": ["POST api.stripe.com /v1/refunds"],
                                "must_not_include": ["* api.stripe.com /v1/payouts*"],
                                "max_per_target": {"api.stripe.com": 3}},
                      "budgets": {"duration_ms": 1000, "llm_tokens": 1000,
                                  "llm_cost_usd": 0.001}})
    assert evaluate(case, result(calls), RECORDED) == []


def test_each_expectation_fails_with_its_evidence() -> None:
    llm = event(3, "POST /v1/chat/completions", "api.openai.com", **{
        "llm.model": "gpt-4o", "llm.input_tokens": "3000", "llm.output_tokens": "500"})
    broken = event(1, "POST /v1/payouts")
    broken["status"] = "error"
    calls = summaries(RECORDED[0], broken, broken, llm)
    case = case_from({"exit_code": 0, "unused": 0, "errors": 1,
                      "calls": {"same_as_recording": {"tolerance": 1},
                                "must_include": ["POST api.stripe.com /v1/refunds"],
                                "must_not_include": ["POST api.stripe.com /v1/payouts"],
                                "max_per_target": {"api.stripe.*": 2}},
                      "budgets": {"duration_ms": 50, "llm_tokens": 1000,
                                  "llm_cost_usd": 0.001}})
    failures = {f.expectation: f for f in evaluate(case, result(calls, command_exit=4, hits=1),
                                                   RECORDED)}
    assert set(failures) == {"exit_code", "unused", "errors", "calls.same_as_recording",
                             "calls.must_include", "calls.must_not_include",
                             "calls.max_per_target.api.stripe.*", "budgets.duration_ms",
                             "budgets.llm_tokens", "budgets.llm_cost_usd"}
    assert failures["exit_code"].message == "the command exited with status 4, expected 0"
    assert failures["unused"].evidence == ["unused: POST api.stripe.com /v1/refunds",
                                           "unused: POST api.openai.com /v1/chat/completions"]
    same = failures["calls.same_as_recording"]
    assert "2 edits away from the recording (tolerance 1)" in same.message
    assert len(same.evidence) == 2
    assert same.evidence[0].startswith("+ replay #2: POST api.stripe.com /v1/payouts")
    assert same.evidence[1].startswith("~ recorded #2: POST api.stripe.com /v1/refunds  ->  "
                                       "replay #3: POST api.stripe.com /v1/payouts")
    assert "3 calls to api.stripe.* (at most 2)" in failures["calls.max_per_target.api.stripe.*"].message
    assert failures["budgets.duration_ms"].message == "the command took 100 ms (budget 50 ms)"
    assert "3500 LLM tokens" in failures["budgets.llm_tokens"].message
    assert "$0.012500" in failures["budgets.llm_cost_usd"].message  # 3000*2.5 + 500*10 per 1M


def test_an_llm_model_without_a_price_fails_the_cost_budget_saying_so() -> None:
    llm = event(2, "POST /v1/chat/completions", "api.openai.com", **{
        "llm.model": "house-model-7b", "llm.input_tokens": "1", "llm.output_tokens": "1"})
    case = case_from({"budgets": {"llm_cost_usd": 100}})
    [failure] = evaluate(case, result(summaries(RECORDED[0], RECORDED[1], llm)), RECORDED)
    assert failure.expectation == "budgets.llm_cost_usd"
    assert "the cost is unknown: no price for model house-model-7b" in failure.message


def test_the_price_table() -> None:
    assert price_table()["as_of"]
    assert cost_usd("gpt-4o-mini", 1_000_000, 1_000_000) == pytest.approx(0.75)
    assert cost_usd("gpt-4o-mini-2024-07-18", 1_000_000, 0) == pytest.approx(0.15)
    assert cost_usd("gpt-4o-2024-08-06", 0, 1_000_000) == pytest.approx(10.0)
    assert cost_usd("unknown-model", 1, 1) is None


# -- the verdict and its renderings -------------------------------------------------------------

def verdict_of(tmp_path: Path) -> Verdict:
    spec = write(tmp_path, "- {name: good, recording: a.jsonl}\n- name: bad, drift\n"
                           "  recording: a.jsonl\n- {name: broken, recording: b.jsonl}\n")
    good, bad, broken = load_spec(spec)
    return Verdict([
        CaseResult(good, duration_s=1.5, summary="replayed 3/3 calls"),
        CaseResult(bad, [Failure("calls.same_as_recording", "1 edits away (tolerance 0)",
                                 ["- recorded #2: POST a.com /v1/x  (not made)"]),
                         Failure("exit_code", "the command exited with status 1, expected 0")],
                   duration_s=2.0),
        CaseResult(broken, error="recording b.jsonl: no such file")])


def test_one_verdict_gives_lines_junit_and_exit_code(tmp_path: Path) -> None:
    verdict = verdict_of(tmp_path)
    assert verdict.exit_code == 2
    lines = verdict.lines()
    assert lines[0].startswith("PASS  good")
    assert lines[1].startswith("FAIL  bad, drift")
    assert "      calls.same_as_recording: 1 edits away (tolerance 0)" in lines
    assert "        - recorded #2: POST a.com /v1/x  (not made)" in lines
    assert lines[-1] == "tracelab check: INVALID: 3 cases, 1 passed, 1 failed, 1 errors"
    root = junit_xml(verdict).getroot()
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("3", "1", "1")
    cases = {c.get("name"): c for c in root.iter("testcase")}
    failures = cases["bad, drift"].findall("failure")
    assert [f.get("type") for f in failures] == ["calls.same_as_recording", "exit_code"]
    assert "- recorded #2: POST a.com /v1/x" in (failures[0].text or "")
    assert cases["bad, drift"].get("line") == "2"
    assert cases["broken"].find("error") is not None and not cases["good"].findall("*[@type]")
    verdict.results.pop()
    assert verdict.exit_code == 1 and verdict.lines()[-1].startswith("tracelab check: FAILED")
    verdict.results.pop()
    assert verdict.exit_code == 0


def test_github_annotations_and_step_summary(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    verdict = verdict_of(tmp_path)
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GITHUB_WORKSPACE", raising=False)
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    monkeypatch.setenv("GITHUB_ACTIONS", "false")
    assert github_output(verdict) == [] and summary.read_text() == "earlier step\n"
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    out = github_output(verdict)
    assert out == annotations(verdict)
    assert out[0] == ("::error file=tracelab.yaml,line=2,title=bad%2C drift%3A "
                      "calls.same_as_recording::calls.same_as_recording: 1 edits away "
                      "(tolerance 0)%0A- recorded #2: POST a.com /v1/x  (not made)")
    assert out[2].startswith("::error file=tracelab.yaml,line=4,title=broken%3A invalid::")
    text = summary.read_text()
    assert text.startswith("earlier step\n### tracelab check") and step_summary(verdict) in text
    assert "| good | tracelab.yaml:1 | ✅ pass |" in text
    assert "| bad, drift | tracelab.yaml:2 | ❌ fail | calls.same_as_recording: 1 edits away " \
           "(tolerance 0)<br>exit_code:" in text


@pytest.mark.parametrize("place, path", [
    ((), "cases[0].extra"),
    (("expect",), "cases[0].expect.extra"),
    (("expect", "calls"), "cases[0].expect.calls.extra"),
    (("expect", "calls", "same_as_recording"), "cases[0].expect.calls.same_as_recording.extra"),
    (("expect", "budgets"), "cases[0].expect.budgets.extra"),
])
def test_an_unknown_key_anywhere_is_named_by_its_path(place: tuple[str, ...], path: str) -> None:
    case: dict[str, Any] = {"name": "a", "recording": "r.jsonl",
                            "expect": {"calls": {"same_as_recording": {"tolerance": 1}},
                                       "budgets": {}}}
    node = case
    for key in place:
        node = node[key]
    node["extra"] = 1
    with pytest.raises(SpecError) as caught:
        parse_cases({"cases": [case]}, Path("/s/tracelab.yaml"))
    assert [e.split(":")[0] for e in caught.value.errors] == [path]
    del node["extra"]
    with pytest.raises(SpecError) as caught:
        parse_cases({"cases": [case], "extra": 1}, Path("/s/tracelab.yaml"))
    assert [e.split(":")[0] for e in caught.value.errors] == ["extra"]


def test_a_bad_fault_rule_fails_the_spec_at_its_place() -> None:
    with pytest.raises(SpecError) as caught:
        parse_cases([{"name": "a", "recording": "r.jsonl",
                      "faults": [{"endpoint": "POST /v1/refunds", "status": 200},
                                 {"status": 99, "colour": "red"}]}], Path("/s/tracelab.yaml"))
    errors = caught.value.errors
    assert len(errors) == 2 and all(e.startswith("cases[0].faults[1]") for e in errors)
    assert any("colour" in e for e in errors) and any("status" in e and "99" in e for e in errors)


def test_fault_rules_from_a_file_beside_the_spec(tmp_path: Path) -> None:
    (tmp_path / "faults").mkdir()
    (tmp_path / "faults" / "stripe.yaml").write_text(
        "- {target: api.stripe.com, endpoint: 'POST /v1/refunds', status: 503}\n")
    spec = write(tmp_path, "- {name: a, recording: r.jsonl, faults: faults/stripe.yaml}\n"
                           "- {name: b, recording: r.jsonl, faults: faults/none.yaml}\n")
    with pytest.raises(SpecError) as caught:
        load_spec(spec)
    assert caught.value.errors == [
        f"{spec}: cases[1].faults: no such file {str(tmp_path / 'faults' / 'none.yaml')!r}"]
    spec.write_text(spec.read_text().splitlines()[0] + "\n")
    [case] = load_spec(spec)
    assert case.faults == tmp_path / "faults" / "stripe.yaml"


def test_a_summary_file_that_cannot_be_written_leaves_the_verdict_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    verdict = verdict_of(tmp_path)
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path / "no" / "such" / "dir.md"))
    assert github_output(verdict) == annotations(verdict)
    assert "cannot append to GITHUB_STEP_SUMMARY" in capsys.readouterr().err
