"""Replay specs: the YAML file of cases `tracelab check` runs, loaded and validated.

A spec is what a team commits next to its recordings, so it is checked strictly: an unknown
key, a wrong type or an out-of-range value is refused, and every problem is reported at once,
each with its path in the file (`cases[0].expect.calls.tolerance`) and the case's line.

The file holds a list of cases, or a mapping with the one key `cases` holding that list.
Relative paths (`recording`, a `faults` file) resolve from the spec file's folder, and the
`command` runs with that folder as its working directory, so a spec works wherever the
repository is checked out. "Calls" are the program's outbound calls (HTTP, LLM, email, SMS,
...; its own `@trace` spans and WebSocket summaries are not calls), written in a spec as
`METHOD target /path` or `KIND target endpoint` (`call_label`). Every key, with its default:

    - name: refund survives a Stripe rate limit   # required, unique in the file
      recording: recordings/refund.jsonl          # required: the JSON Lines recording
      command: python agent.py --order o-42       # default: the command the recording holds;
                                                  #   a string (split like a shell, no shell
                                                  #   features) or a list of arguments
      faults: []                                  # default: none; fault rules (a rule, a list,
                                                  #   {rules: [...]}) or the path of a YAML/JSON
                                                  #   file of them (tracelab.replay.faults)
      on_miss: fail                               # fail | passthrough | record (as `tracelab replay`)
      ignore: []                                  # match-ignore rules: body:$.path, query:NAME,
                                                  #   header:NAME (as `tracelab replay --match-ignore`)
      expect:
        exit_code: 0             # the command's own exit status, exactly
        misses: 0                # at most this many calls not found in the recording
        unused: null             # at most this many recorded calls never made (null: not checked)
        errors: null             # at most this many calls with status error that no fault
                                 #   caused (null: not checked)
        calls:
          same_as_recording: null   # true, or {tolerance: N}: the sequence of (kind, target,
                                    #   endpoint) is within N edits of the recording's
                                    #   (tolerance default 0; true means tolerance 0); calls a
                                    #   fault answered are left out (a retry is the recorded call)
          must_include: []          # calls that must be made and answered (an attempt a
                                    #   fault answered does not count): "POST api.stripe.com
                                    #   /v1/refunds" (METHOD target path, for HTTP and LLM
                                    #   calls) or "KIND target endpoint" ("email aws:ses
                                    #   SendEmail"); shell-style globs (*, ?, [..])
          must_not_include: []      # calls that must not even be attempted, same form
          max_per_target: {}        # target (host[:port], glob) -> at most this many calls,
                                    #   every attempt counted (faulted ones too)
        budgets:
          duration_ms: null         # the command's wall time, at most
          llm_tokens: null          # input + output tokens of every LLM call, at most
          llm_cost_usd: null        # their cost from tracelab/analysis/prices.json, at most
                                    #   (a model missing from the table fails the budget)
"""
from __future__ import annotations

import fnmatch
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tracelab.replay.runner import ON_MISS_MODES as ON_MISS
CASE_KEYS = ("name", "recording", "command", "faults", "on_miss", "ignore", "expect")
EXPECT_KEYS = ("exit_code", "misses", "unused", "errors", "calls", "budgets")
CALLS_KEYS = ("same_as_recording", "must_include", "must_not_include", "max_per_target")
BUDGET_KEYS = ("duration_ms", "llm_tokens", "llm_cost_usd")
SPEC_SUFFIXES = (".yaml", ".yml")
DEFAULT_SPEC = "tracelab.yaml"


class SpecError(ValueError):
    """A spec that cannot be run; `.errors` lists every reason, each prefixed by where."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


@dataclass
class Calls:
    tolerance: int | None = None  # same_as_recording: None = not checked
    must_include: list[str] = field(default_factory=list)
    must_not_include: list[str] = field(default_factory=list)
    max_per_target: dict[str, int] = field(default_factory=dict)


@dataclass
class Budgets:
    duration_ms: float | None = None
    llm_tokens: int | None = None
    llm_cost_usd: float | None = None


@dataclass
class Expect:
    exit_code: int = 0
    misses: int = 0
    unused: int | None = None
    errors: int | None = None
    calls: Calls = field(default_factory=Calls)
    budgets: Budgets = field(default_factory=Budgets)


@dataclass
class Case:
    """One case of a spec, its paths already resolved from the spec's folder."""

    name: str
    recording: Path
    spec: Path  # the spec file
    line: int  # the case's first line in it (1-based)
    command: list[str] | None = None  # None: the recorded command
    faults: Any = None  # what tracelab.replay.faults.load_rules takes, or None
    on_miss: str = "fail"
    ignore: list[str] = field(default_factory=list)
    expect: Expect = field(default_factory=Expect)

    @property
    def folder(self) -> Path:
        return self.spec.parent


def call_label(kind: Any, target: Any, endpoint: Any) -> str:
    """How a call is written in a spec: `METHOD target /path` for an HTTP-shaped endpoint
    (`POST /v1/refunds`, LLM calls too), `KIND target endpoint` for anything else."""
    endpoint = str(endpoint or "")
    method, _, path = endpoint.partition(" ")
    if method.isalpha() and method.isupper() and path.startswith("/"):
        return f"{method} {target} {path}"
    return f"{kind} {target} {endpoint}"


def label_matches(pattern: str, label: str) -> bool:
    return fnmatch.fnmatchcase(label, pattern)


def discover(paths: list[str | Path]) -> list[Path]:
    """The spec files to run: each file given, every .yaml/.yml under each folder given
    (hidden folders such as .github skipped), or ./tracelab.yaml when nothing is given."""
    if not paths:
        return [Path(DEFAULT_SPEC)]
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix in SPEC_SUFFIXES
                and not any(part.startswith(".") for part in p.relative_to(path).parts)))
        else:
            found.append(path)
    return found


def load_spec(path: str | Path) -> list[Case]:
    """The cases of one spec file; SpecError with every problem (`file: cases[i].key: why`)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError:
        raise SpecError([f"{path}: not UTF-8 text"]) from None
    try:
        data = yaml.safe_load(text)
        lines = _case_lines(yaml.compose(text))
    except yaml.YAMLError as exc:
        raise SpecError([f"{path}: not valid YAML: {exc}"]) from None
    errors: list[str] = []
    cases = parse_cases(data, path, lines, errors)
    if errors:
        raise SpecError([f"{path}: {e}" for e in errors])
    return cases


def _case_lines(node: Any) -> list[int]:
    if isinstance(node, yaml.MappingNode):
        node = next((v for k, v in node.value if k.value == "cases"), None)
    if isinstance(node, yaml.SequenceNode):
        return [item.start_mark.line + 1 for item in node.value]
    return []


def parse_cases(data: Any, spec: Path, lines: list[int] | None = None,
                errors: list[str] | None = None) -> list[Case]:
    """Cases from parsed YAML; problems are appended to `errors` (raised when not given)."""
    own = errors is None
    errors = [] if errors is None else errors
    if isinstance(data, dict):
        _unknown(data, ("cases",), "", errors)
        data = data.get("cases")
    if not isinstance(data, list) or not data:
        errors.append("cases: expected a non-empty list of cases (the file is that list, or "
                      "a mapping {cases: [...]})")
        data = []
    cases: list[Case] = []
    names: set[str] = set()
    for i, raw in enumerate(data):
        where = f"cases[{i}]"
        line = (lines or [])[i] if lines and i < len(lines) else 1
        case = _case(raw, where, spec, line, errors)
        if case is None:
            continue
        if case.name in names:
            errors.append(f"{where}.name: {case.name!r} is used by another case")
        names.add(case.name)
        cases.append(case)
    if own and errors:
        raise SpecError(errors)
    return cases


def _case(raw: Any, where: str, spec: Path, line: int, errors: list[str]) -> Case | None:
    if not isinstance(raw, dict):
        errors.append(f"{where}: expected a mapping with name, recording, command, expect")
        return None
    _unknown(raw, CASE_KEYS, where, errors)
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        errors.append(f"{where}.name: required, a non-empty string")
        name = f"case {where}"
    recording = raw.get("recording")
    if not isinstance(recording, str) or not recording.strip():
        errors.append(f"{where}.recording: required, the path of a recording file")
        recording = ""
    case = Case(name=name, recording=_resolve(spec, recording), spec=spec, line=line)
    case.command = _command(raw.get("command"), f"{where}.command", errors)
    case.faults = _faults(raw.get("faults"), spec, f"{where}.faults", errors)
    on_miss = raw.get("on_miss", "fail")
    if on_miss not in ON_MISS:
        errors.append(f"{where}.on_miss: one of {', '.join(ON_MISS)}, got {on_miss!r}")
    else:
        case.on_miss = on_miss
    case.ignore = _ignore(raw.get("ignore"), f"{where}.ignore", errors)
    case.expect = _expect(raw.get("expect"), f"{where}.expect", errors)
    return case


def _resolve(spec: Path, path: str) -> Path:
    candidate = Path(path).expanduser()
    return (candidate if candidate.is_absolute() else spec.parent / candidate).resolve()


def _unknown(raw: dict, known: tuple[str, ...], where: str, errors: list[str]) -> None:
    prefix = f"{where}." if where else ""
    for key in raw:
        if key not in known:
            errors.append(f"{prefix}{key}: unknown key (known: {', '.join(known)})")


def _command(raw: Any, where: str, errors: list[str]) -> list[str] | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        try:
            argv = shlex.split(raw)
        except ValueError as exc:
            errors.append(f"{where}: cannot split {raw!r}: {exc}")
            return None
    elif isinstance(raw, list) and all(isinstance(a, str) for a in raw):
        argv = list(raw)
    else:
        errors.append(f"{where}: a string or a list of strings")
        return None
    if not argv:
        errors.append(f"{where}: empty (leave it out to run the recorded command)")
        return None
    return argv


def _faults(raw: Any, spec: Path, where: str, errors: list[str]) -> Any:
    """The rules, checked now so a bad rule fails the spec before anything runs."""
    if raw is None or raw == []:
        return None
    source: Any = raw
    if isinstance(raw, str):
        source = _resolve(spec, raw)
        if not source.is_file():
            errors.append(f"{where}: no such file {str(source)!r}")
            return None
    elif not isinstance(raw, (dict, list)):
        errors.append(f"{where}: fault rules (a rule, a list, {{rules: [...]}}) or a file path")
        return None
    from tracelab.replay.faults import FaultRuleError, load_rules

    try:
        load_rules(source)
    except FaultRuleError as exc:
        errors.extend(_fault_error(e, where, raw) for e in (exc.errors or [str(exc)]))
        return None
    except (OSError, ValueError) as exc:
        errors.append(f"{where}: {exc}")
        return None
    return source


def _fault_error(error: str, where: str, raw: Any) -> str:
    """A rule's error at its place in the spec: `rules[1].status` -> `cases[0].faults[1].status`."""
    if error.startswith("rules[") and isinstance(raw, (list, dict)):
        return f"{where}{'' if isinstance(raw, list) else '.rules'}{error[len('rules'):]}"
    return f"{where}: {error}"


def _ignore(raw: Any, where: str, errors: list[str]) -> list[str]:
    from tracelab.replay.matching import parse_ignore

    if raw is None:
        return []
    if not isinstance(raw, list):
        errors.append(f"{where}: a list of rules such as 'body:$.metadata.request_id'")
        return []
    rules = []
    for i, rule in enumerate(raw):
        try:
            rules.append(parse_ignore(rule))
        except ValueError as exc:
            errors.append(f"{where}[{i}]: {exc}")
    return rules


def _mapping(raw: Any, known: tuple[str, ...], where: str, errors: list[str]) -> dict:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        errors.append(f"{where}: expected a mapping with keys {', '.join(known)}")
        return {}
    _unknown(raw, known, where, errors)
    return raw


def _count(raw: dict, key: str, where: str, errors: list[str], default: Any,
           nullable: bool = True, minimum: int = 0) -> Any:
    if key not in raw or (raw[key] is None and nullable):
        return default
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        errors.append(f"{where}.{key}: a whole number >= {minimum}, got {value!r}")
        return default
    return value


def _number(raw: dict, key: str, where: str, errors: list[str]) -> float | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        errors.append(f"{where}.{key}: a number >= 0, got {value!r}")
        return None
    return float(value)


def _expect(raw: Any, where: str, errors: list[str]) -> Expect:
    raw = _mapping(raw, EXPECT_KEYS, where, errors)
    expect = Expect()
    code = raw.get("exit_code", 0)
    if isinstance(code, bool) or not isinstance(code, int) or not 0 <= code <= 255:
        errors.append(f"{where}.exit_code: a whole number 0-255, got {code!r}")
    else:
        expect.exit_code = code
    expect.misses = _count(raw, "misses", where, errors, 0, nullable=False)
    expect.unused = _count(raw, "unused", where, errors, None)
    expect.errors = _count(raw, "errors", where, errors, None)
    expect.calls = _calls(raw.get("calls"), f"{where}.calls", errors)
    budgets = _mapping(raw.get("budgets"), BUDGET_KEYS, f"{where}.budgets", errors)
    expect.budgets = Budgets(
        duration_ms=_number(budgets, "duration_ms", f"{where}.budgets", errors),
        llm_tokens=_count(budgets, "llm_tokens", f"{where}.budgets", errors, None),
        llm_cost_usd=_number(budgets, "llm_cost_usd", f"{where}.budgets", errors))
    return expect


def _calls(raw: Any, where: str, errors: list[str]) -> Calls:
    raw = _mapping(raw, CALLS_KEYS, where, errors)
    calls = Calls()
    same = raw.get("same_as_recording")
    if same is True:
        calls.tolerance = 0
    elif isinstance(same, dict):
        _unknown(same, ("tolerance",), f"{where}.same_as_recording", errors)
        calls.tolerance = _count(same, "tolerance", f"{where}.same_as_recording", errors, 0)
    elif same not in (None, False):
        errors.append(f"{where}.same_as_recording: true, false or {{tolerance: N}}, "
                      f"got {same!r}")
    for key in ("must_include", "must_not_include"):
        setattr(calls, key, _labels(raw.get(key), f"{where}.{key}", errors))
    limits = raw.get("max_per_target")
    if isinstance(limits, dict):
        for target, limit in limits.items():
            if not isinstance(target, str) or not target:
                errors.append(f"{where}.max_per_target: {target!r}: a target (host or glob)")
            elif isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
                errors.append(f"{where}.max_per_target.{target}: a whole number >= 0, "
                              f"got {limit!r}")
            else:
                calls.max_per_target[target] = limit
    elif limits is not None:
        errors.append(f"{where}.max_per_target: a mapping of target -> count")
    return calls


def _labels(raw: Any, where: str, errors: list[str]) -> list[str]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        errors.append(f"{where}: a list of calls such as 'POST api.stripe.com /v1/refunds'")
        return []
    labels = []
    for i, label in enumerate(raw):
        if not isinstance(label, str) or len(label.split()) < 3:
            errors.append(f"{where}[{i}]: {label!r}: expected 'METHOD target /path' or "
                          "'KIND target endpoint', e.g. 'POST api.stripe.com /v1/refunds'")
        else:
            labels.append(" ".join(label.split()))
    return labels
