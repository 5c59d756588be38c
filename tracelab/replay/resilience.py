"""The resilience report: what an agent did about each fault injected into its replay.

Input is the replay's call log: the `call_summary` dicts (tracelab/replay/report.py) every
replaying process put in its report line, one per event it recorded. Nothing else is needed,
so the same rows come out of `tracelab replay`, `tracelab.replay(...)` and a notebook. The
rules, exactly:

- A call's **key** is its (kind, target, endpoint); `call` shows it as "KIND target endpoint".
  A later call with the same key is taken to be a retry of it: the log holds no payloads, so a
  deliberate second identical call cannot be told from a retry.
- A **faulted call** is one whose `fault` is set (the id of the rule applied to it). A
  **success** is a call that is not faulted, whose status is not "error" and whose HTTP status,
  if any, is below 400. A faulted call never counts as a success, not even a latency-only one.
- Calls are taken in order of `t` (start). An **episode** starts at a faulted call whose key
  has no open episode. Every later call with that key joins it as one more attempt: a faulted
  one (consecutive faults on the same call fold into one episode and one row), a failed one,
  or the first success, which closes the episode. One row per episode, in order of its start.
- `attempts`: the calls in the episode, the first faulted one and the success included.
  `retried`: attempts > 1. `faults`: how many of the attempts were faulted.
- `first_retry_after_ms`: from the end (`t + latency_ms`) of the episode's first call to the
  start of its second; None without a retry.
- `retry_after_s`: the `Retry-After` the first faulted call's response asked for (None when
  it asked for none). `honoured_retry_after`: None when no faulted attempt that asked for a
  Retry-After was followed by another attempt; else whether every such next attempt started
  no earlier than asked, measured from the end of the asking call, with `SLACK_MS` of slack
  for the clocks of the processes that timed them.
- `outcome`: `recovered` when the episode ended with a success; otherwise `gave_up` when the
  agent retried, when the run then ended with an error (`exit_code` given and not 0) or when a
  later call that is not faulted failed (any key; the call log's "later" is "ends after the
  first faulted call ends"); otherwise `ignored`: no retry, and the run carried on as if
  nothing happened (the expected outcome of a latency-only fault).
- `time_lost_ms`: from the start of the first faulted call to the start of the success when
  `recovered`, 0 otherwise.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

SLACK_MS = 50.0
OUTCOMES = ("recovered", "gave_up", "ignored")
COLUMNS = ("fault", "action", "call", "t", "retried", "attempts", "faults",
           "first_retry_after_ms", "retry_after_s", "honoured_retry_after", "outcome",
           "time_lost_ms")


def call_label(call: Mapping[str, Any]) -> str:
    """"KIND target endpoint" of a call-log entry: "http api.stripe.com POST /v1/refunds"."""
    return " ".join(str(call.get(k) or "-") for k in ("kind", "target", "endpoint"))


def is_success(call: Mapping[str, Any]) -> bool:
    """Not faulted, status not "error", HTTP status (if any) below 400."""
    code = call.get("status_code")
    return (not call.get("fault") and call.get("status") != "error"
            and not (isinstance(code, int) and code >= 400))


def _start(call: Mapping[str, Any]) -> float:
    t = call.get("t")
    return float(t) if isinstance(t, (int, float)) else 0.0


def _end(call: Mapping[str, Any]) -> float:
    latency = call.get("latency_ms")
    return _start(call) + (float(latency) if isinstance(latency, (int, float)) else 0.0)


def _key(call: Mapping[str, Any]) -> tuple[Any, Any, Any]:
    return call.get("kind"), call.get("target"), call.get("endpoint")


@dataclass
class _Episode:
    attempts: list[Mapping[str, Any]] = field(default_factory=list)
    recovered: bool = False

    def row(self, later_errors: bool, exit_code: int | None) -> dict[str, Any]:
        first = self.attempts[0]
        retried = len(self.attempts) > 1
        if self.recovered:
            outcome = "recovered"
        elif retried or later_errors or exit_code not in (None, 0):
            outcome = "gave_up"
        else:
            outcome = "ignored"
        return {
            "fault": first.get("fault"),
            "action": first.get("fault_action"),
            "call": call_label(first),
            "t": first.get("t"),
            "retried": retried,
            "attempts": len(self.attempts),
            "faults": sum(1 for c in self.attempts if c.get("fault")),
            "first_retry_after_ms": (_start(self.attempts[1]) - _end(first)) if retried
            else None,
            "retry_after_s": first.get("retry_after_s"),
            "honoured_retry_after": self._honoured(),
            "outcome": outcome,
            "time_lost_ms": _start(self.attempts[-1]) - _start(first) if self.recovered
            else 0.0,
        }

    def _honoured(self) -> bool | None:
        verdicts = [_start(after) - _end(asking) >= asked * 1000 - SLACK_MS
                    for asking, after in zip(self.attempts, self.attempts[1:])
                    if asking.get("fault")
                    and isinstance(asked := asking.get("retry_after_s"), (int, float))]
        return all(verdicts) if verdicts else None


def analyse(calls: Iterable[Mapping[str, Any]], exit_code: int | None = None
            ) -> list[dict[str, Any]]:
    """One row per fault episode (see the module docstring for every rule), in order.

    `exit_code`: the command's exit status, when known; a failing run turns an unretried
    fault into `gave_up`.
    """
    ordered = sorted((c for c in calls if isinstance(c, Mapping)),
                     key=lambda c: (c.get("t") is None, _start(c)))
    episodes: list[_Episode] = []
    open_by_key: dict[tuple[Any, Any, Any], _Episode] = {}
    for call in ordered:
        key = _key(call)
        episode = open_by_key.get(key)
        if episode is None:
            if not call.get("fault"):
                continue
            episode = open_by_key[key] = _Episode()
            episodes.append(episode)
        episode.attempts.append(call)
        if is_success(call):
            episode.recovered = True
            del open_by_key[key]
    rows = []
    for episode in episodes:
        first_end = _end(episode.attempts[0])
        later_errors = any(not c.get("fault") and c.get("status") == "error"
                           and _end(c) > first_end for c in ordered)
        rows.append(episode.row(later_errors, exit_code))
    return rows


def resilience_frame(calls: Iterable[Mapping[str, Any]], exit_code: int | None = None
                     ) -> pd.DataFrame:
    """`analyse` as a DataFrame (the columns of COLUMNS, also when no fault was injected)."""
    import pandas as pd

    return pd.DataFrame(analyse(calls, exit_code), columns=list(COLUMNS))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _ms(value: Any) -> str:
    return f"{value:.0f} ms" if isinstance(value, (int, float)) else "?"


def _line(row: Mapping[str, Any]) -> str:
    head = f"  {row.get('call')}: fault {row.get('fault')} ({row.get('action')})"
    attempts = row.get("attempts") or 1
    parts: list[str] = []
    outcome = row.get("outcome")
    if outcome == "recovered":
        parts.append(f"recovered after {attempts} attempts, {_ms(row.get('time_lost_ms'))} lost")
    elif outcome == "gave_up":
        parts.append(f"gave up after {attempts} attempts" if row.get("retried")
                     else "gave up: no retry, and the run then failed")
    else:
        parts.append("ignored: no retry, the run carried on")
    if row.get("retried"):
        parts.append(f"first retry {_ms(row.get('first_retry_after_ms'))} after the failure")
    asked = row.get("retry_after_s")
    honoured = row.get("honoured_retry_after")
    if asked is not None:
        said = {True: "honoured", False: "NOT honoured", None: "no retry to honour it"}
        parts.append(f"Retry-After {asked:g} s {said.get(honoured, honoured)}")
    return f"{head}: {'; '.join(parts)}"


def format_report(rows: Sequence[Mapping[str, Any]]) -> str:
    """The report `tracelab replay --faults` prints: a count line (faults, episodes when some
    folded, outcomes), then one line per row."""
    if not rows:
        return "resilience: no fault was injected (no rule matched a call)"
    counts = {o: sum(1 for r in rows if r.get("outcome") == o) for o in OUTCOMES}
    tally = ", ".join(f"{n} {o.replace('_', ' ')}" for o, n in counts.items() if n)
    faults = sum(int(r.get("faults") or 1) for r in rows)
    head = _count(faults, "injected fault")
    if faults != len(rows):
        head += f" in {_count(len(rows), 'episode')}"
    lines = [f"resilience: {head}: {tally}"]
    lines.extend(_line(row) for row in rows)
    return "\n".join(lines)
