"""The resilience report's rules (tracelab/replay/resilience.py) over hand-made call logs: the
shape `call_summary` gives each recorded event of a replay."""
from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from tracelab.replay.resilience import COLUMNS, OUTCOMES, analyse, format_report, \
    resilience_frame

REFUND = ("http", "api.stripe.com", "POST /v1/refunds")
CHAT = ("llm", "api.openai.com", "POST /v1/chat/completions")


def call(t: float, what: tuple[str, str, str] = REFUND, *, latency: float = 10.0,
         code: int | None = 200, fault: str | None = None, action: str | None = None,
         retry_after: float | None = None, error: str | None = None) -> dict[str, Any]:
    failed = error is not None or (code is not None and code >= 400)
    return {"t": t, "latency_ms": latency, "kind": what[0], "target": what[1],
            "endpoint": what[2], "status": "error" if failed else "ok", "status_code": code,
            "error_type": error, "replay": "fault" if fault else "hit", "fault": fault,
            "fault_action": action, "retry_after_s": retry_after, "source": "sdk-py"}


def rate_limited(t: float, rule: str = "stripe-429", retry_after: float | None = 1.0
                 ) -> dict[str, Any]:
    return call(t, code=429, fault=rule, action="status", retry_after=retry_after)


def test_a_retry_that_waits_for_retry_after_recovers_and_honours_it() -> None:
    rows = analyse([call(0, CHAT), rate_limited(100), call(1150), call(1300, CHAT)])
    assert rows == [{
        "fault": "stripe-429", "action": "status", "call": "http api.stripe.com POST /v1/refunds",
        "t": 100, "retried": True, "attempts": 2, "faults": 1, "first_retry_after_ms": 1040.0,
        "retry_after_s": 1.0, "honoured_retry_after": True, "outcome": "recovered",
        "time_lost_ms": 1050.0}]


def test_a_retry_earlier_than_retry_after_is_not_honoured() -> None:
    [row] = analyse([rate_limited(0), call(60)])
    assert row["outcome"] == "recovered" and row["retried"] is True
    assert row["first_retry_after_ms"] == 50.0
    assert row["honoured_retry_after"] is False
    assert row["time_lost_ms"] == 60.0


def test_retry_after_is_judged_on_every_faulted_attempt_that_asked() -> None:
    # The first wait is long enough, the second is not: not honoured.
    [row] = analyse([rate_limited(0), rate_limited(1100), call(1200)])
    assert row["honoured_retry_after"] is False and row["attempts"] == 3


def test_a_fault_without_retry_after_has_no_honoured_verdict() -> None:
    [row] = analyse([call(0, code=None, fault="reset", action="reset",
                          error="ConnectionResetError"), call(20)])
    assert row["retry_after_s"] is None and row["honoured_retry_after"] is None
    assert row["outcome"] == "recovered"


def test_no_retry_and_the_run_carries_on_is_ignored() -> None:
    rows = analyse([rate_limited(0), call(50, CHAT), call(90, CHAT)], exit_code=0)
    assert [(r["outcome"], r["retried"], r["attempts"], r["time_lost_ms"],
             r["first_retry_after_ms"], r["honoured_retry_after"]) for r in rows] == [
        ("ignored", False, 1, 0.0, None, None)]


def test_a_latency_only_fault_the_agent_waits_out_is_ignored() -> None:
    [row] = analyse([call(0, CHAT, latency=800, fault="slow", action="latency"),
                     call(900)])
    assert row["outcome"] == "ignored" and row["action"] == "latency"


def test_retries_that_never_succeed_give_up() -> None:
    [row] = analyse([rate_limited(0), rate_limited(1100), rate_limited(2200)])
    assert (row["outcome"], row["retried"], row["attempts"], row["faults"]) == \
        ("gave_up", True, 3, 3)
    assert row["time_lost_ms"] == 0.0


def test_a_retry_that_fails_without_a_fault_still_counts_as_an_attempt() -> None:
    [row] = analyse([rate_limited(0), call(1100, code=None, error="ReplayMiss")])
    assert (row["outcome"], row["attempts"], row["faults"]) == ("gave_up", 2, 1)


def test_no_retry_then_the_run_fails_is_gave_up() -> None:
    assert analyse([rate_limited(0)], exit_code=1)[0]["outcome"] == "gave_up"
    assert analyse([rate_limited(0)], exit_code=0)[0]["outcome"] == "ignored"
    assert analyse([rate_limited(0)])[0]["outcome"] == "ignored"
    # A later call that failed without a fault: the agent fell over.
    later = call(40, ("function", "agent", "refund"), code=None, error="KeyError")
    assert analyse([rate_limited(0), later])[0]["outcome"] == "gave_up"
    # A later call that failed because of another fault is not the agent's failure.
    other = call(40, CHAT, code=503, fault="openai-503", action="status")
    rows = analyse([rate_limited(0), other, call(60, CHAT)])
    assert [(r["fault"], r["outcome"]) for r in rows] == [
        ("stripe-429", "ignored"), ("openai-503", "recovered")]


def test_consecutive_faults_on_one_call_fold_into_one_episode() -> None:
    log = [rate_limited(0), rate_limited(1020), call(1500, CHAT), rate_limited(2040),
           call(3100), call(3300)]
    [row] = analyse(log)
    assert (row["attempts"], row["faults"], row["outcome"], row["time_lost_ms"]) == \
        (4, 3, "recovered", 3100.0)
    assert row["first_retry_after_ms"] == 1010.0 and row["honoured_retry_after"] is True


def test_a_fault_after_recovery_is_a_new_episode_and_rows_follow_the_start_order() -> None:
    log = [call(5000), rate_limited(3000, rule="second"), rate_limited(0, rule="first"),
           call(1100), call(2000, CHAT, code=503, fault="chat", action="status")]
    rows = analyse(log)  # unsorted on purpose: merged from several processes
    assert [(r["fault"], r["outcome"], r["attempts"]) for r in rows] == [
        ("first", "recovered", 2), ("chat", "ignored", 1), ("second", "recovered", 2)]


def test_a_log_without_faults_has_no_rows_and_the_frame_keeps_its_columns() -> None:
    assert analyse([call(0), call(10, CHAT)]) == []
    frame = resilience_frame([])
    assert list(frame.columns) == list(COLUMNS) and frame.empty
    frame = resilience_frame([rate_limited(0), call(1100)])
    assert frame.loc[0, "outcome"] == "recovered" and frame.loc[0, "attempts"] == 2


def test_the_printed_report_names_each_fault_and_what_the_agent_did() -> None:
    rows = analyse([rate_limited(0), call(1100), rate_limited(2000, rule="early"), call(2100),
                    call(3000, CHAT, code=None, fault="reset", action="reset",
                         error="ConnectionResetError"), call(3100, code=None, error="X")])
    assert format_report(rows).splitlines() == [
        "resilience: 3 injected faults: 2 recovered, 1 gave up",
        "  http api.stripe.com POST /v1/refunds: fault stripe-429 (status): recovered after 2 "
        "attempts, 1100 ms lost; first retry 1090 ms after the failure; Retry-After 1 s honoured",
        "  http api.stripe.com POST /v1/refunds: fault early (status): recovered after 2 "
        "attempts, 100 ms lost; first retry 90 ms after the failure; Retry-After 1 s NOT "
        "honoured",
        "  llm api.openai.com POST /v1/chat/completions: fault reset (reset): gave up: no "
        "retry, and the run then failed"]
    assert format_report([]) == "resilience: no fault was injected (no rule matched a call)"
    folded = analyse([rate_limited(0), rate_limited(1100), call(2200)])
    assert format_report(folded).splitlines()[0] == \
        "resilience: 2 injected faults in 1 episode: 1 recovered"
    ignored = analyse([rate_limited(0)])
    assert format_report(ignored).endswith("ignored: no retry, the run carried on; "
                                           "Retry-After 1 s no retry to honour it")


KEYS = st.sampled_from([REFUND, CHAT, ("smtp", "mail.example", "sendmail")])
CALLS = st.lists(st.builds(
    lambda t, what, faulted, code: call(t, what, code=code,
                                        fault="r" if faulted else None,
                                        action="status" if faulted else None),
    st.integers(0, 10_000), KEYS, st.booleans(), st.sampled_from([200, 429, 500, None])),
    max_size=25)


@given(CALLS, st.sampled_from([None, 0, 1]))
def test_every_faulted_call_lands_in_exactly_one_row(log: list[dict[str, Any]],
                                                     exit_code: int | None) -> None:
    rows = analyse(log, exit_code)
    assert sum(r["faults"] for r in rows) == sum(1 for c in log if c["fault"])
    for row in rows:
        assert row["outcome"] in OUTCOMES
        assert row["attempts"] >= row["faults"] >= 1
        assert row["retried"] == (row["attempts"] > 1)
        assert row["time_lost_ms"] >= 0
        assert (row["outcome"] == "recovered") or row["time_lost_ms"] == 0
    assert [r["t"] for r in rows] == sorted(r["t"] for r in rows)
