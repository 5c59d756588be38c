"""`tracelab check`: run each case of a spec as a replay and judge it against its expectations.

A case is run with `tracelab.replay.runner.run_replay` (its recording, its command in the
spec's folder, its fault rules) and the `ReplayResult` is judged by `evaluate`: one `Failure`
per expectation not met, with the evidence (the differing calls, the budget and the value).
`Verdict` is the ONE computation behind everything `tracelab check` says: the printed lines,
the JUnit XML, the GitHub annotations and step summary (`tracelab.replay.junit`) and the exit
status: 2 when a spec, a recording or a command is invalid (nothing to judge), else 1 when any
expectation failed, else 0.

`update_cases` (`tracelab check --update`) re-records a case's recording: its command runs
live in embedded mode in a temporary TRACELAB_HOME (optionally against `tracelab mocks`), the
one run it recorded is exported to a candidate file, and the cases using that recording are
judged by replaying the candidate. The recording file is replaced only when the live command
exited as expected and every one of those cases passed; a failed run's recording is dropped.
"""
from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from tracelab.replay.recording import RecordingError, export_run, load_recording, start_order
from tracelab.replay.runner import (NOT_REPLAYED_KINDS, ReplayInputError, ReplayResult, Tally,
                                    _command, replayable, run_replay)
from tracelab.replay.spec import Case, SpecError, call_label, discover, label_matches, load_spec

MAX_EVIDENCE = 20
EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


@dataclass
class Failure:
    """One expectation not met: its key in the spec, one line, and the evidence lines."""

    expectation: str
    message: str
    evidence: list[str] = field(default_factory=list)

    def text(self) -> str:
        return "\n".join([f"{self.expectation}: {self.message}", *self.evidence])


@dataclass
class CaseResult:
    case: Case
    failures: list[Failure] = field(default_factory=list)
    error: str | None = None  # the case could not be judged (invalid recording or command)
    duration_s: float = 0.0
    summary: str = ""  # the replay's own summary line
    note: str = ""  # e.g. what --update did

    @property
    def status(self) -> str:
        if self.error is not None:
            return "error"
        return "fail" if self.failures else "pass"


@dataclass
class Verdict:
    """Everything a check run found; `exit_code` and `lines()` are the verdict, once."""

    results: list[CaseResult] = field(default_factory=list)
    spec_errors: list[tuple[Path, list[str]]] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(1 for r in self.results if r.status == status)

    @property
    def exit_code(self) -> int:
        if self.spec_errors or self.count("error"):
            return EXIT_INVALID
        return EXIT_FAILED if self.count("fail") else EXIT_OK

    @property
    def headline(self) -> str:
        spec_errors = sum(len(e) for _p, e in self.spec_errors)
        parts = [f"{len(self.results)} cases", f"{self.count('pass')} passed",
                 f"{self.count('fail')} failed", f"{self.count('error') + spec_errors} errors"]
        word = {EXIT_OK: "passed", EXIT_FAILED: "FAILED", EXIT_INVALID: "INVALID"}
        return f"tracelab check: {word[self.exit_code]}: " + ", ".join(parts)

    def lines(self) -> list[str]:
        """Every line `tracelab check` prints: spec errors, each case, the headline last."""
        out = self.error_lines()
        for r in self.results:
            out.extend(case_lines(r))
        out.append(self.headline)
        return out

    def error_lines(self) -> list[str]:
        return [f"ERROR {e}" if e.startswith(str(path)) else f"ERROR {path}: {e}"
                for path, errors in self.spec_errors for e in errors]


def case_lines(r: CaseResult) -> list[str]:
    """A case's verdict line, then each failed expectation and its evidence, indented."""
    note = f"  [{r.note}]" if r.note else ""
    if r.status == "pass":
        return [f"PASS  {r.case.name}  ({r.duration_s:.1f} s){note}"]
    if r.status == "error":
        return [f"ERROR {r.case.name}: {r.error}{note}"]
    out = [f"FAIL  {r.case.name}  ({r.duration_s:.1f} s){note}"]
    for failure in r.failures:
        out.append(f"      {failure.expectation}: {failure.message}")
        out.extend(f"        {line}" for line in failure.evidence)
    return out


# -- judging one replay ------------------------------------------------------------------------

def recorded_labels(events: Sequence[Mapping[str, Any]]) -> list[str]:
    """The recording's replayable calls in start order, as spec labels."""
    return [call_label(e.get("kind"), e.get("target"), e.get("endpoint"))
            for e in start_order(events) if replayable(e)]


def outside_calls(calls: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The call log without the program's own spans (function, websocket summaries)."""
    return [c for c in calls if c.get("kind") not in NOT_REPLAYED_KINDS]


def _label(call: Mapping[str, Any]) -> str:
    return call_label(call.get("kind"), call.get("target"), call.get("endpoint"))


def edit_script(old: Sequence[str], new: Sequence[str]) -> tuple[int, list[str]]:
    """Levenshtein distance between two call sequences and the edits, as evidence lines."""
    head = 0
    while head < min(len(old), len(new)) and old[head] == new[head]:
        head += 1
    tail = 0
    while tail < min(len(old), len(new)) - head and old[-1 - tail] == new[-1 - tail]:
        tail += 1
    a, b = old[head:len(old) - tail], new[head:len(new) - tail]
    rows = [list(range(len(b) + 1))]
    for i in range(1, len(a) + 1):
        prev, row = rows[-1], [i]
        for j in range(1, len(b) + 1):
            row.append(min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1])))
        rows.append(row)
    edits: list[str] = []
    i, j = len(a), len(b)
    while i or j:
        if i and j and a[i - 1] == b[j - 1] and rows[i][j] == rows[i - 1][j - 1]:
            i, j = i - 1, j - 1
        elif i and j and rows[i][j] == rows[i - 1][j - 1] + 1:
            edits.append(f"~ recorded #{head + i}: {a[i - 1]}  ->  replay #{head + j}: "
                         f"{b[j - 1]}")
            i, j = i - 1, j - 1
        elif i and rows[i][j] == rows[i - 1][j] + 1:
            edits.append(f"- recorded #{head + i}: {a[i - 1]}  (not made in the replay)")
            i -= 1
        else:
            edits.append(f"+ replay #{head + j}: {b[j - 1]}  (not in the recording)")
            j -= 1
    return rows[-1][-1], edits[::-1]


def _cap(lines: list[str]) -> list[str]:
    if len(lines) <= MAX_EVIDENCE:
        return lines
    return [*lines[:MAX_EVIDENCE], f"... and {len(lines) - MAX_EVIDENCE} more"]


def evaluate(case: Case, result: ReplayResult, recorded: Sequence[Mapping[str, Any]],
             duration_ms: float | None = None) -> list[Failure]:
    """Every expectation of `case` not met by `result` (a `ReplayResult`), with evidence.

    `recorded`: the recording's events; `duration_ms`: the wall time measured around the
    replay, used when the result does not carry the command's own.
    """
    expect = case.expect
    failures: list[Failure] = []
    if result.command_exit != expect.exit_code:
        failures.append(Failure("exit_code", f"the command exited with status "
                                f"{result.command_exit}, expected {expect.exit_code}"))
    misses = list(result.misses or [])
    if len(misses) > expect.misses:
        failures.append(Failure("misses", f"{len(misses)} calls missed the recording (at most "
                                f"{expect.misses})", _cap([
                                    f"miss: {m.get('message') or m.get('call')}"
                                    for m in misses])))
    tally = result.tally
    if expect.unused is not None and tally is not None and tally.unused > expect.unused:
        failures.append(Failure("unused", f"{tally.unused} recorded calls were never made "
                                f"(at most {expect.unused})", _cap(_unused(recorded, tally))))
    calls = outside_calls(result.calls or [])
    if result.calls is None and _needs_calls(case):
        failures.append(Failure("calls", "the replay reported no call log to judge the "
                                "calls, errors and LLM budgets by"))
    failures.extend(_call_failures(case, calls, recorded))
    if expect.errors is not None:
        errors = [c for c in calls if c.get("status") == "error" and not c.get("fault")]
        if len(errors) > expect.errors:
            failures.append(Failure("errors", f"{len(errors)} calls failed without a fault "
                                    f"(at most {expect.errors})",
                                    _cap([_describe(c) for c in errors])))
    failures.extend(_budget_failures(case, result, calls, duration_ms))
    return failures


def _needs_calls(case: Case) -> bool:
    c, b = case.expect.calls, case.expect.budgets
    return bool(c.tolerance is not None or c.must_include or c.must_not_include or
                c.max_per_target or case.expect.errors is not None or
                b.llm_tokens is not None or b.llm_cost_usd is not None)


def _unused(recorded: Sequence[Mapping[str, Any]], tally: Tally) -> list[str]:
    hits = set(tally.hits)
    return [f"unused: {call_label(e.get('kind'), e.get('target'), e.get('endpoint'))}"
            for e in start_order(recorded) if replayable(e) and e.get("event_id") not in hits]


def _describe(call: Mapping[str, Any]) -> str:
    detail = [str(v) for v in (call.get("status_code"), call.get("error_type")) if v]
    return f"{_label(call)}" + (f"  ({', '.join(detail)})" if detail else "")


def _call_failures(case: Case, calls: list[Mapping[str, Any]],
                   recorded: Sequence[Mapping[str, Any]]) -> list[Failure]:
    spec = case.expect.calls
    failures: list[Failure] = []
    answered = [_label(c) for c in calls if not c.get("fault")]
    if spec.tolerance is not None:
        distance, edits = edit_script(recorded_labels(recorded), answered)
        if distance > spec.tolerance:
            failures.append(Failure(
                "calls.same_as_recording", f"the calls are {distance} edits away from the "
                f"recording (tolerance {spec.tolerance})", _cap(edits)))
    for pattern in spec.must_include:
        if not any(label_matches(pattern, label) for label in answered):
            failures.append(Failure("calls.must_include", f"no call {pattern!r} was made",
                                    _cap([f"made: {label}" for label in answered])))
    for pattern in spec.must_not_include:
        made = [_describe(c) for c in calls if label_matches(pattern, _label(c))]
        if made:
            failures.append(Failure("calls.must_not_include",
                                    f"{len(made)} calls {pattern!r} were made", _cap(made)))
    for target, limit in spec.max_per_target.items():
        hits = [c for c in calls if label_matches(target, str(c.get("target") or ""))]
        if len(hits) > limit:
            failures.append(Failure(f"calls.max_per_target.{target}",
                                    f"{len(hits)} calls to {target} (at most {limit})",
                                    _cap([_describe(c) for c in hits])))
    return failures


def _budget_failures(case: Case, result: ReplayResult, calls: list[Mapping[str, Any]],
                     measured_ms: float | None) -> list[Failure]:
    from tracelab.analysis.cost import cost_usd, price_table

    budgets = case.expect.budgets
    failures: list[Failure] = []
    if budgets.duration_ms is not None:
        took = measured_ms if result.duration_ms is None else result.duration_ms
        if took is not None and took > budgets.duration_ms:
            failures.append(Failure("budgets.duration_ms", f"the command took {took:.0f} ms "
                                    f"(budget {budgets.duration_ms:.0f} ms)"))
    llm = [c for c in calls if c.get("llm_input_tokens") is not None
           or c.get("llm_output_tokens") is not None or c.get("llm_model")]
    per_model: Counter[str] = Counter()
    tokens = 0
    for c in llm:
        n = (c.get("llm_input_tokens") or 0) + (c.get("llm_output_tokens") or 0)
        tokens += n
        per_model[str(c.get("llm_model"))] += n
    evidence = [f"{model}: {n} tokens" for model, n in sorted(per_model.items())]
    if budgets.llm_tokens is not None and tokens > budgets.llm_tokens:
        failures.append(Failure("budgets.llm_tokens", f"{tokens} LLM tokens in {len(llm)} "
                                f"calls (budget {budgets.llm_tokens})", evidence))
    if budgets.llm_cost_usd is not None:
        total, unknown = 0.0, set()
        for c in llm:
            cost = cost_usd(str(c.get("llm_model") or ""), c.get("llm_input_tokens") or 0,
                            c.get("llm_output_tokens") or 0)
            if cost is None:
                unknown.add(str(c.get("llm_model")))
            else:
                total += cost
        as_of = price_table().get("as_of")
        if unknown:
            failures.append(Failure("budgets.llm_cost_usd", "the cost is unknown: no price "
                                    f"for model {', '.join(sorted(unknown))} in the price "
                                    f"table of {as_of}", evidence))
        elif total > budgets.llm_cost_usd:
            failures.append(Failure("budgets.llm_cost_usd", f"the LLM calls cost "
                                    f"${total:.6f} (budget ${budgets.llm_cost_usd}, prices "
                                    f"of {as_of})", evidence))
    return failures


# -- running cases ----------------------------------------------------------------------------

@contextlib.contextmanager
def _fault_file(faults: Any) -> Iterator[str | None]:
    """The case's rules as a file path for `run_replay` (inline rules go to a temp file)."""
    if faults is None:
        yield None
    elif isinstance(faults, Path):
        yield str(faults)
    else:
        with tempfile.TemporaryDirectory(prefix="tracelab-check-") as tmp:
            path = Path(tmp) / "faults.json"
            path.write_bytes(orjson.dumps(faults))
            yield str(path)


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """The command's output (and the replay's) goes to stderr, so stdout holds only the
    verdict lines: CI logs show both, and `tracelab check > verdict.txt` stays clean."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no stdout at all: nothing to keep clean
        yield
        return
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def interpreter_path(path: str | None) -> str:
    """PATH with the folder of the interpreter running `tracelab` first, so a spec's
    `python agent.py` runs with the environment TraceLab is installed in (a venv's `tracelab`
    called without activating the venv, as tox and nox run their commands)."""
    folder = str(Path(sys.executable).parent)
    rest = [p for p in (path or "").split(os.pathsep) if p and p != folder]
    return os.pathsep.join([folder, *rest])


@contextlib.contextmanager
def _environ(extra: Mapping[str, str] | None) -> Iterator[None]:
    """`extra` in os.environ for the replay's processes (the live run's mock URLs), with
    `interpreter_path` as PATH."""
    extra = {**(extra or {}), "PATH": interpreter_path((extra or {}).get("PATH")
                                                       or os.environ.get("PATH"))}
    saved = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_case(case: Case, recording: Path | None = None,
             env: Mapping[str, str] | None = None) -> CaseResult:
    """Replay `case` and judge it; for --update, from `recording` instead of the case's own
    and with the live run's `env` additions (the command must make the same calls).

    While it runs, the process works in the spec's folder with `env` in os.environ and its
    stdout on stderr: one case at a time (the CLI's way), not from several threads."""
    source = recording or case.recording
    if not source.is_file():
        return CaseResult(case, error=f"recording {source}: no such file (record it with "
                          "`tracelab check --update`)")
    try:
        loaded = load_recording(source)
    except (RecordingError, KeyError, OSError) as exc:
        return CaseResult(case, error=f"recording {source}: {str(exc).strip(chr(34))}")
    kwargs: dict[str, Any] = {"on_miss": case.on_miss, "ignore": case.ignore}
    started = time.monotonic()
    with _fault_file(case.faults) as faults, contextlib.chdir(case.folder), \
            _environ(env), _stdout_to_stderr():
        if faults is not None:
            kwargs["faults"] = faults
        result = run_replay(str(source), case.command, **kwargs)
    took = time.monotonic() - started
    if result.tally is None and result.exit_code == 2:
        return CaseResult(case, error=result.reason or "invalid replay input", duration_s=took)
    if result.command_exit is None and result.tally is not None:
        shown = shlex.join(case.command) if case.command else "the recorded command"
        return CaseResult(case, error=f"the command could not be started: {shown}",
                          duration_s=took)
    if result.tally is None:
        return CaseResult(case, [Failure("replay", result.reason or "the replay did not run")],
                          duration_s=took)
    failures = evaluate(case, result, loaded.events, duration_ms=took * 1000)
    return CaseResult(case, failures, duration_s=took, summary=result.summary)


def select(paths: Sequence[str | Path], name: str | None = None
           ) -> tuple[list[Case], list[tuple[Path, list[str]]]]:
    """The cases of every spec under `paths` whose name contains `name` (any case if None),
    and the spec files that could not be loaded, with their reasons."""
    cases: list[Case] = []
    errors: list[tuple[Path, list[str]]] = []
    files = discover(list(paths))
    if not files:
        errors.append((Path(str(paths[0]) if paths else "."), ["no spec files (.yaml, .yml)"]))
    for path in files:
        try:
            cases.extend(load_spec(path))
        except SpecError as exc:
            errors.append((path, exc.errors))
    if name is not None:
        cases = [c for c in cases if name.lower() in c.name.lower()]
    return cases, errors


def check(paths: Sequence[str | Path], name: str | None = None,
          on_result: Callable[[CaseResult], None] | None = None) -> Verdict:
    """Run every selected case (`on_result` sees each as it ends); nothing runs when a spec
    file is invalid."""
    cases, errors = select(paths, name)
    verdict = Verdict(spec_errors=errors)
    if errors:
        return verdict
    if not cases:
        verdict.spec_errors.append((Path(str(paths[0]) if paths else "tracelab.yaml"),
                                    [f"no case matches -k {name!r}" if name else "no cases"]))
        return verdict
    for case in cases:
        verdict.results.append(run_case(case))
        if on_result is not None:
            on_result(verdict.results[-1])
    return verdict


# -- --update -------------------------------------------------------------------------------

_LIVE_DROP = ("TRACELAB_REDIS_URL", "TRACELAB_STORE", "TRACELAB_RUN_ID", "TRACELAB_DISABLED")


def live_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A live recording's environment: embedded mode in `home`, no replay, no proxy."""
    env = {k: v for k, v in os.environ.items()
           if k not in _LIVE_DROP and not k.startswith("TRACELAB_REPLAY")}
    env["TRACELAB_HOME"] = str(home)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    env["PATH"] = interpreter_path(env.get("PATH"))
    return env


def record_live(case: Case, home: Path, out: Path,
                extra_env: Mapping[str, str] | None = None) -> tuple[int | None, str | None]:
    """Run the case's command live, recording into `home`; export its one run to `out`.

    Returns (the command's exit status, None) or (status, why no recording was made).
    """
    from tracelab.store import query
    from tracelab.store.layout import resolve_layout
    from tracelab.store.spool import fold_spool

    argv: list[str] | None = case.command
    cwd: str | Path | None = case.folder
    if argv is None:  # the recorded command, in its recorded folder, as `tracelab replay` runs it
        try:
            argv, cwd = _command(None, load_recording(case.recording).command)
            cwd = cwd or case.folder
        except (RecordingError, KeyError, OSError, ReplayInputError) as exc:
            return None, f"the case has no command, and none from its recording: {exc}"
    try:
        code = subprocess.call(list(argv), env=live_env(home, extra_env), cwd=cwd,
                               stdout=2)
    except OSError as exc:
        return None, f"cannot run {argv[0]!r}: {exc.strerror or exc}"
    fold_spool(home)
    layout = resolve_layout(None, home)
    runs = []
    for workflow in query.workflows(layout=layout).get("workflow", []):
        runs.extend(str(r) for r in query.executions(str(workflow), layout=layout)["run_id"])
    if len(runs) != 1:
        return code, (f"the command recorded {len(runs)} runs; a recording holds exactly one "
                      "(did it call tracelab.init once?)")
    try:
        export_run(runs[0], out, layout=layout)
    except (RecordingError, KeyError, OSError) as exc:
        return code, f"cannot export run {runs[0]}: {exc}"
    return code, None


@contextlib.contextmanager
def _mocks(base_port: int | None) -> Iterator[dict[str, str]]:
    """`tracelab mocks` from `base_port` on, as MOCK_<VENDOR>_URL variables (None: nothing).

    Fixed ports, not free ones: the recorded targets hold the port, and a spec names them."""
    if base_port is None:
        yield {}
        return
    from tracelab.cli.mocks import MockServers, ports_for

    try:
        servers = MockServers(ports_for(None, base_port), faults_text="").start()
    except SystemExit as exc:  # a port is taken: the mocks say which
        raise SetupError(str(exc.code).replace("tracelab mocks:", "--against-mocks:")) from None
    try:
        yield {f"MOCK_{name.upper()}_URL": url for name, url in servers.urls.items()}
    finally:
        servers.stop()


class SetupError(RuntimeError):
    """`--update` cannot start (the mocks' ports are taken): exit status 2."""


def update_cases(paths: Sequence[str | Path], name: str | None = None,
                 mocks_base_port: int | None = None,
                 on_result: Callable[[CaseResult], None] | None = None) -> Verdict:
    """Re-record the recordings of the selected cases (see the module doc); the verdict judges
    the new recordings, and a recording is written only when all its cases pass.
    `mocks_base_port`: run the commands against `tracelab mocks` started on these ports."""
    cases, errors = select(paths, name)
    verdict = Verdict(spec_errors=errors)
    if errors or not cases:
        if not errors:
            verdict.spec_errors.append((Path(str(paths[0]) if paths else "tracelab.yaml"),
                                        [f"no case matches -k {name!r}" if name else "no cases"]))
        return verdict
    groups: dict[Path, list[Case]] = {}
    for case in cases:
        groups.setdefault(case.recording, []).append(case)
    with _mocks(mocks_base_port) as mock_env:
        for recording, group in groups.items():
            for result in _update_one(recording, group, mock_env):
                verdict.results.append(result)
                if on_result is not None:
                    on_result(result)
    return verdict


def _update_one(recording: Path, cases: list[Case],
                mock_env: Mapping[str, str]) -> list[CaseResult]:
    first = cases[0]
    with tempfile.TemporaryDirectory(prefix="tracelab-update-") as tmp:
        candidate = Path(tmp) / "recording.jsonl"
        shown = shlex.join(first.command) if first.command else "the recorded command"
        print(f"tracelab check: recording {recording} live: {shown}", file=sys.stderr,
              flush=True)
        code, problem = record_live(first, Path(tmp) / "home", candidate, mock_env)
        if problem is not None:
            if code is None:
                return [CaseResult(c, error=problem) for c in cases]
            return [CaseResult(c, [Failure("update", problem)], note="recording not updated")
                    for c in cases]
        results = [run_case(c, recording=candidate, env=mock_env) for c in cases]
        if code != first.expect.exit_code:
            results[0].failures.insert(0, Failure(
                "exit_code", f"the live command exited with status {code}, expected "
                f"{first.expect.exit_code}"))
        if any(r.status != "pass" for r in results):
            for r in results:
                r.note = "recording not updated: the new run failed its expectations"
            return results
        recording.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(candidate, recording)
        for r in results:
            r.note = f"recording updated: {recording}"
        return results
