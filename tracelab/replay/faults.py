"""Fault rules: the ONE format for injected faults, in replays, the proxy and the mock vendors.

The same rule means the same thing wherever it is applied: `tracelab replay --faults FILE`
and `tracelab.replay(..., faults=...)` (a faulted call never consumes its recording, so the
agent's retry gets the recorded answer), `tracelab proxy --faults FILE` (live traffic), and
the mocks (`tracelab mocks`: `MOCK_FAULTS`, `/__tracelab/faults`). This module parses rules
and decides which call gets which fault; applying a `Fault` is the job of each of those.

A rule is an object (JSON or YAML). A file holds a list of rules, or `{rules: [...]}`:

```yaml
- id: stripe-429
  target: api.stripe.com
  endpoint: "POST /v1/refunds"
  status: 429
  retry_after: 1
  times: 2
- kind: llm
  match_body: {"$.model": "gpt-4o*", "$.stream": true}
  stream_cut_after: 3
  rate: 0.5
  seed: 7
```

Which calls a rule matches (all given keys must hold):

| key | default | meaning |
| --- | --- | --- |
| `kind` | `*` | glob on the event kind: `http`, `llm`, `email`, `sms`, `grpc`, ... |
| `target` | `*` | glob on the target: a host, or `host:port` when not the default port; a glob without a port also matches the host of a `host:port` target |
| `endpoint` | `*` | glob on the endpoint: `METHOD /path` for HTTP (no query string), the event's endpoint otherwise (`SendEmail`, `messages.create`); `*` also crosses `/` |
| `method`, `path` | - | the mocks' original keys, still valid: `method` (`GET`, `POST`, ..., or `*`) and `path` (a glob starting with `/` or a wildcard) become the endpoint glob `METHOD PATH`; not together with `endpoint` |
| `match_body` | - | object of JSON path -> expected value on the request body (as stored: parsed JSON; the mocks parse JSON and form bodies, form values are strings): `{"$.model": "gpt-4o*", "$.amount": 100}`; a string is a glob on a string value, any other value must be equal; paths as in the matcher's `body:$.path` ignore rules (`$.a.b[0]`, `['x y']`, `[*]` = any element); a missing path does not match |
| `nth` | - | an integer >= 1, or a list of them: only the Nth calls matching this rule (counted from 1, per rule) |

When a matching call gets the fault:

| key | default | meaning |
| --- | --- | --- |
| `rate` | `1` | probability (0-1) that a matching call gets the fault |
| `seed` | none (unseeded) | integer: the rule's own random generator, for the `rate` draws AND the latency draws, so the same calls in the same order get the same faults and latencies on every run |
| `times` | unlimited | apply at most this many times, then let calls through ("fail the first 2 calls") |

What happens (`latency_ms` combines with any one of the others, which exclude each other):

| key | default | effect |
| --- | --- | --- |
| `latency_ms` | `0` | wait first: a number of ms (0-600000), or `{"uniform": [a, b]}`, or `{"lognormal": {"median_ms": m, "p99_ms": p}}` (p >= m > 0; drawn per call, capped at 600000) |
| `status` | - | answer with this HTTP status (100-599) instead of the vendor/recording |
| `body` | a JSON error | with `status`: any JSON value (an object or list is sent as JSON, a string as text); the mocks use their vendor's error shape when it is not given |
| `headers` | `{}` | with `status`: response headers (string to string) |
| `retry_after` | - | with `status`: whole seconds (integer >= 0), sent as the `Retry-After` header (for 429/503) |
| `reset: true` | - | the connection is dropped (reset), no response |
| `timeout: true` | - | no answer: the call hangs for `timeout_s` seconds, or less when the client gives up first, then the connection is dropped |
| `timeout_s` | `30` | with `timeout`: seconds, more than 0, at most 3600 |
| `empty_body: true` | - | the real/recorded answer with an empty body |
| `malformed_body: true` | - | the answer's body made invalid JSON (its first half, then `{"`) |
| `stream_cut_after` | - | integer >= 0: the first N chunks of the (streamed) body are delivered, then the connection is dropped before the end |
| `truncate_after` | - | integer >= 0: the body cut to its first N bytes (the response then ends normally) |
| `grpc_status` | - | a gRPC call ends with this status: a code name (`UNAVAILABLE`, `DEADLINE_EXCEEDED`, any case) or number (1-16), instead of the recording (applied by the gRPC replay adapter) |
| `details` | the fault's message | with `grpc_status`: the status details (a string) |
| `id` | `f_<hash of the rule>` | the rule's name (the same rule gets the same id on every run; identical rules get `-2`, `-3`): tags `fault=<id>` on the faulted call's event; `DELETE /__tracelab/faults/{id}` on a mock |

Rules are tried in order; the first that matches, passes `nth`, has `times` left and whose
`rate` draw fires gives the call its `Fault`, and the rules after it are not tried (a rule
that does not fire lets the next one try). `matched` counts the calls that reached a rule and
matched it (what `nth` counts), `applied` the faults it gave. A rule with no
effect, an unknown key, a wrong type or an out-of-range value is refused with every reason at
once (`FaultRuleError.errors`, each prefixed by where: `rules[1].status: ...`, and the file name
for a file).

`load_rules(source)` reads a file (`.yaml`/`.yml`/`.json`, or `@path`), JSON or YAML text, or
already-parsed objects; `FaultSet(rules).decide_call(Call(kind, target, endpoint, body))`
gives the `Fault` (or None): its action, the latency drawn for this call, the status and
headers (`Retry-After` included), and what the appliers need: `body_bytes()` (a status
answer), `mangle(body)` (empty/malformed/truncated bytes), `response_event(recorded)` (the
recorded-event shape a replay answers with) and `tags()` (`fault`, `fault.action`,
`fault.rule` on the faulted call's event). The mocks' ASGI layer is
`tracelab.mocks.middleware`.
"""
from __future__ import annotations

import base64
import copy
import fnmatch
import hashlib
import json
import math
import os
import random
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any

ENV_VAR = "MOCK_FAULTS"
DEFAULT_TIMEOUT_S = 30.0
MAX_LATENCY_MS = 600_000.0
Z99 = NormalDist().inv_cdf(0.99)  # the standard normal's 99th percentile

METHODS = frozenset({"*", "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
MATCH_KEYS = ("kind", "target", "endpoint", "method", "path", "match_body", "nth")
WHEN_KEYS = ("rate", "seed", "times")
ACTION_KEYS = ("latency_ms", "status", "body", "headers", "retry_after", "reset", "timeout",
               "timeout_s", "empty_body", "malformed_body", "stream_cut_after",
               "truncate_after", "grpc_status", "details")
RULE_KEYS = ("id", *MATCH_KEYS, *WHEN_KEYS, *ACTION_KEYS)
# Exclusive actions, by the key that asks for it -> the Fault.action it gives.
EXCLUSIVE = {"status": "status", "reset": "reset", "timeout": "timeout",
             "empty_body": "empty_body", "malformed_body": "malformed_body",
             "stream_cut_after": "stream_cut", "truncate_after": "truncate",
             "grpc_status": "grpc_status"}
REPLACING = frozenset({"status", "reset", "timeout", "grpc_status"})
# gRPC status codes by name (grpc.StatusCode, without importing grpc): `grpc_status` takes both.
GRPC_CODES = {"OK": 0, "CANCELLED": 1, "UNKNOWN": 2, "INVALID_ARGUMENT": 3,
              "DEADLINE_EXCEEDED": 4, "NOT_FOUND": 5, "ALREADY_EXISTS": 6,
              "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8, "FAILED_PRECONDITION": 9,
              "ABORTED": 10, "OUT_OF_RANGE": 11, "UNIMPLEMENTED": 12, "INTERNAL": 13,
              "UNAVAILABLE": 14, "DATA_LOSS": 15, "UNAUTHENTICATED": 16}
GRPC_NAMES = {number: name for name, number in GRPC_CODES.items()}
MANGLING = frozenset({"empty_body", "malformed_body", "truncate"})
_OUTPUT_ONLY = frozenset({"action", "matched", "applied"})  # to_dict() keys accepted back


class FaultRuleError(ValueError):
    """Invalid rule(s); `errors` lists every reason, each prefixed by where it is."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("; ".join(errors))


@dataclass(frozen=True)
class Call:
    """What a rule matches against: one outbound call, in the stored event's terms."""

    kind: str = "http"
    target: str = ""
    endpoint: str = ""
    body: Any = None


# -- latency --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Latency:
    """A fixed latency, or a distribution drawn from the rule's generator."""

    spec: Any  # as given: a number, {"uniform": [a, b]} or {"lognormal": {...}}
    fixed: float = 0.0
    uniform: tuple[float, float] | None = None
    lognormal: tuple[float, float] | None = None  # (mu, sigma) of the log

    def draw(self, rng: random.Random) -> float:
        if self.uniform is not None:
            return rng.uniform(*self.uniform)
        if self.lognormal is not None:
            return min(MAX_LATENCY_MS, rng.lognormvariate(*self.lognormal))
        return self.fixed

    @property
    def effective(self) -> bool:
        return self.uniform is not None or self.lognormal is not None or self.fixed > 0


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and \
        math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_latency(value: Any, where: str, errors: list[str]) -> Latency | None:
    shape = ("a number of ms from 0 to 600000, {\"uniform\": [a, b]} or "
             "{\"lognormal\": {\"median_ms\": m, \"p99_ms\": p}}")
    if _is_number(value):
        if 0 <= value <= MAX_LATENCY_MS:
            return Latency(value, fixed=float(value))
        errors.append(f"{where}: must be a number from 0 to {MAX_LATENCY_MS:g}, got {value!r}")
        return None
    if isinstance(value, Mapping) and len(value) == 1 and "uniform" in value:
        bounds = value["uniform"]
        if isinstance(bounds, list) and len(bounds) == 2 and all(map(_is_number, bounds)) \
                and 0 <= bounds[0] <= bounds[1] <= MAX_LATENCY_MS:
            return Latency(copy.deepcopy(dict(value)), uniform=(float(bounds[0]),
                                                                float(bounds[1])))
        errors.append(f"{where}.uniform: must be [a, b] with 0 <= a <= b <= "
                      f"{MAX_LATENCY_MS:g} ms, got {bounds!r}")
        return None
    if isinstance(value, Mapping) and len(value) == 1 and "lognormal" in value:
        params = value["lognormal"]
        if isinstance(params, Mapping) and set(params) == {"median_ms", "p99_ms"} and \
                all(_is_number(params[k]) for k in params) and \
                0 < params["median_ms"] <= params["p99_ms"] <= MAX_LATENCY_MS:
            mu = math.log(params["median_ms"])
            sigma = (math.log(params["p99_ms"]) - mu) / Z99
            return Latency(copy.deepcopy(dict(value)), lognormal=(mu, sigma))
        errors.append(f"{where}.lognormal: must be {{\"median_ms\": m, \"p99_ms\": p}} with "
                      f"0 < m <= p <= {MAX_LATENCY_MS:g}, got {params!r}")
        return None
    errors.append(f"{where}: must be {shape}, got {value!r}")
    return None


# -- body predicates ------------------------------------------------------------------------

_MISSING = object()


def _parse_json_path(path: Any, where: str, errors: list[str]) -> tuple[Any, ...] | None:
    from tracelab.replay.matching import _parse_path

    if not isinstance(path, str):
        errors.append(f"{where}: a JSON path must be a string such as '$.model', got {path!r}")
        return None
    if not path.startswith("$"):
        errors.append(f"{where}[{path!r}]: a JSON path starts with '$', such as '$.model'")
        return None
    try:
        return _parse_path(path, f"body:{path}")
    except ValueError as exc:
        reason = str(exc).split(": ", 1)[-1]
        errors.append(f"{where}[{path!r}]: {reason}")
        return None


def _values_at(value: Any, steps: tuple[Any, ...]) -> list[Any]:
    """Every value `steps` points at (`[*]`/`.*` fan out); [] when the path is missing."""
    if not steps:
        return [value]
    step, rest = steps[0], steps[1:]
    if isinstance(step, str) or isinstance(step, int):
        if isinstance(value, dict) and isinstance(step, str) and step in value:
            return _values_at(value[step], rest)
        if isinstance(value, list) and isinstance(step, int) and -len(value) <= step < len(value):
            return _values_at(value[step], rest)
        return []
    children = value.values() if isinstance(value, dict) else value \
        if isinstance(value, list) else ()
    return [found for child in children for found in _values_at(child, rest)]


def _same(actual: Any, expected: Any) -> bool:
    if isinstance(expected, str):
        return isinstance(actual, str) and fnmatch.fnmatchcase(actual, expected)
    if isinstance(expected, bool) or isinstance(actual, bool):
        return isinstance(actual, bool) and isinstance(expected, bool) and actual is expected
    return actual == expected


# -- the rule -------------------------------------------------------------------------------

@dataclass
class FaultRule:
    """One parsed rule; `matched`/`applied` count the calls it matched and faulted."""

    kind: str = "*"
    target: str = "*"
    endpoint: str = "*"
    method: str | None = None      # legacy (mocks): kept to show the rule as it was given
    path: str | None = None
    match_body: dict[str, Any] = field(default_factory=dict)
    nth: tuple[int, ...] | None = None
    rate: float = 1.0
    seed: int | None = None
    times: int | None = None
    latency: Latency | None = None
    status: int | None = None
    body: Any = None
    has_body: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    retry_after: int | None = None
    reset: bool = False
    timeout: bool = False
    timeout_s: float = DEFAULT_TIMEOUT_S
    empty_body: bool = False
    malformed_body: bool = False
    stream_cut_after: int | None = None
    truncate_after: int | None = None
    grpc_status: int | None = None
    details: str | None = None
    id: str = ""
    auto_id: bool = False          # `id` was not given: derived from the rule's content
    matched: int = 0
    applied: int = 0
    _body_paths: tuple[tuple[tuple[Any, ...], Any], ...] = field(default=(), repr=False)
    _rng: random.Random = field(default_factory=random.Random, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        if not self.id:
            # The same rule gets the same id on every run (tags and reports compare).
            self.auto_id = True
            self.id = "f_" + hashlib.sha1(json.dumps(
                self.definition(), sort_keys=True, default=str).encode()).hexdigest()[:10]

    @property
    def action(self) -> str:
        for key, action in EXCLUSIVE.items():
            value = getattr(self, key)
            if value is not None and value is not False:
                return action
        return "latency"

    @property
    def latency_ms(self) -> float:
        """The fixed latency (0 for a distribution or none); `Fault.latency_ms` is drawn."""
        return self.latency.fixed if self.latency is not None else 0.0

    @property
    def needs_body(self) -> bool:
        return bool(self.match_body)

    def matches(self, call: Call) -> bool:
        """Whether the call is one this rule is about (`nth`/`times`/`rate` aside); a
        `grpc_status` rule is about gRPC calls only."""
        if self.grpc_status is not None and call.kind != "grpc":
            return False
        if not fnmatch.fnmatchcase(str(call.kind or ""), self.kind):
            return False
        if not self._target_matches(str(call.target or "")):
            return False
        if not fnmatch.fnmatchcase(str(call.endpoint or ""), self.endpoint):
            return False
        for steps, expected in self._body_paths:
            if not any(_same(v, expected) for v in _values_at(call.body, steps)):
                return False
        return True

    def _target_matches(self, target: str) -> bool:
        if fnmatch.fnmatchcase(target, self.target):
            return True
        host, sep, port = target.rpartition(":")
        return bool(sep and port.isdigit() and ":" not in self.target and
                    fnmatch.fnmatchcase(host, self.target))

    def definition(self) -> dict[str, Any]:
        """The rule as a rule object (what `parse_rule` takes back), without counters."""
        out: dict[str, Any] = {"id": self.id} if self.id else {}
        if self.method is not None or self.path is not None:
            out["method"] = self.method or "*"
            out["path"] = self.path or "*"
        elif self.endpoint != "*":
            out["endpoint"] = self.endpoint
        for key in ("kind", "target"):
            if getattr(self, key) != "*":
                out[key] = getattr(self, key)
        if self.match_body:
            out["match_body"] = copy.deepcopy(self.match_body)
        if self.nth is not None:
            out["nth"] = self.nth[0] if len(self.nth) == 1 else list(self.nth)
        if self.latency is not None:
            out["latency_ms"] = copy.deepcopy(self.latency.spec)
        if self.status is not None:
            out["status"] = self.status
            if self.has_body:
                out["body"] = copy.deepcopy(self.body)
            if self.headers:
                out["headers"] = dict(self.headers)
            if self.retry_after is not None:
                out["retry_after"] = self.retry_after
        for flag in ("reset", "timeout", "empty_body", "malformed_body"):
            if getattr(self, flag):
                out[flag] = True
        if self.timeout:
            out["timeout_s"] = self.timeout_s
        for key in ("stream_cut_after", "truncate_after"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.grpc_status is not None:
            out["grpc_status"] = GRPC_NAMES[self.grpc_status]
            if self.details is not None:
                out["details"] = self.details
        out["rate"] = self.rate
        if self.seed is not None:
            out["seed"] = self.seed
        if self.times is not None:
            out["times"] = self.times
        return out

    def to_dict(self) -> dict[str, Any]:
        """`definition()` plus `action` and the `matched`/`applied` counters."""
        return {**self.definition(), "action": self.action, "matched": self.matched,
                "applied": self.applied}


def _json_value(value: Any) -> bool:
    """Plain JSON (YAML can also give dates, sets, ...; NaN is not JSON either)."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


def _check_glob(obj: Mapping[str, Any], key: str, where: str, errors: list[str],
                kw: dict[str, Any]) -> None:
    if key in obj:
        value = obj[key]
        if not isinstance(value, str) or not value:
            errors.append(f"{where}.{key}: must be a non-empty string (a glob), got {value!r}")
        else:
            kw[key] = value


def _parse_match(obj: Mapping[str, Any], where: str, errors: list[str],
                 kw: dict[str, Any]) -> None:
    for key in ("kind", "target", "endpoint"):
        _check_glob(obj, key, where, errors, kw)
    legacy = "method" in obj or "path" in obj
    if legacy and "endpoint" in obj:
        errors.append(f"{where}: 'endpoint' and the older 'method'/'path' exclude each other; "
                      "give endpoint: \"METHOD /path\"")
    method, path = "*", "*"
    if "method" in obj:
        value = obj["method"]
        if not isinstance(value, str) or value.upper() not in METHODS:
            errors.append(f"{where}.method: must be one of {', '.join(sorted(METHODS))}, "
                          f"got {value!r}")
        else:
            method = kw["method"] = value.upper()
    if "path" in obj:
        value = obj["path"]
        if not isinstance(value, str) or not value:
            errors.append(f"{where}.path: must be a non-empty glob on the URL path such as "
                          f"'/v1/charges' or '/v1/*', got {value!r}")
        elif not value.startswith(("/", "*", "?", "[")):
            errors.append(f"{where}.path: must start with '/' (or a wildcard), got {value!r}")
        else:
            path = kw["path"] = value
    if legacy and "endpoint" not in obj:
        kw["endpoint"] = "*" if method == "*" and path == "*" else f"{method} {path}"
    if "match_body" in obj:
        value = obj["match_body"]
        if not isinstance(value, Mapping) or not value:
            errors.append(f"{where}.match_body: must be a non-empty object of JSON path -> "
                          f"value, such as {{\"$.model\": \"gpt-4o*\"}}, got {value!r}")
        else:
            paths = []
            for key, expected in value.items():
                steps = _parse_json_path(key, f"{where}.match_body", errors)
                if not _json_value(expected):
                    errors.append(f"{where}.match_body[{key!r}]: the expected value must be a "
                                  f"JSON value, got {expected!r}")
                elif steps is not None:
                    paths.append((steps, expected))
            kw["match_body"] = copy.deepcopy(dict(value))
            kw["_body_paths"] = tuple(paths)
    if "nth" in obj:
        value = obj["nth"]
        items = value if isinstance(value, list) else [value]
        if not items or not all(_is_int(n) and n >= 1 for n in items):
            errors.append(f"{where}.nth: must be an integer >= 1 or a non-empty list of them, "
                          f"got {value!r}")
        else:
            kw["nth"] = tuple(sorted(set(items)))


def _parse_when(obj: Mapping[str, Any], where: str, errors: list[str],
                kw: dict[str, Any]) -> None:
    if "rate" in obj:
        value = obj["rate"]
        if not _is_number(value) or not 0 <= value <= 1:
            errors.append(f"{where}.rate: must be a number from 0 to 1, got {value!r}")
        else:
            kw["rate"] = float(value)
    if obj.get("seed") is not None:
        value = obj["seed"]
        if not _is_int(value):
            errors.append(f"{where}.seed: must be an integer, got {value!r}")
        else:
            kw["seed"] = value
    if obj.get("times") is not None:
        value = obj["times"]
        if not _is_int(value) or value < 1:
            errors.append(f"{where}.times: must be a positive integer, got {value!r}")
        else:
            kw["times"] = value


def _parse_action(obj: Mapping[str, Any], where: str, errors: list[str],
                  kw: dict[str, Any]) -> None:
    if "latency_ms" in obj:
        latency = _parse_latency(obj["latency_ms"], f"{where}.latency_ms", errors)
        if latency is not None:
            kw["latency"] = latency
    has_status = "status" in obj
    if has_status:
        value = obj["status"]
        if not _is_int(value) or not 100 <= value <= 599:
            errors.append(f"{where}.status: must be an integer HTTP status from 100 to 599, "
                          f"got {value!r}")
        else:
            kw["status"] = value
    for key in ("body", "headers", "retry_after"):
        if key in obj and not has_status:
            errors.append(f"{where}.{key}: only makes sense with 'status'")
    if "body" in obj:
        if _json_value(obj["body"]):
            kw["body"], kw["has_body"] = copy.deepcopy(obj["body"]), True
        else:
            errors.append(f"{where}.body: must be a JSON value (object, list, string, number, "
                          f"true/false or null), got {obj['body']!r}")
    if "headers" in obj:
        value = obj["headers"]
        if not isinstance(value, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            errors.append(f"{where}.headers: must be an object of string to string, "
                          f"got {value!r}")
        else:
            kw["headers"] = dict(value)
    if "retry_after" in obj:
        value = obj["retry_after"]
        if not _is_int(value) or value < 0:
            errors.append(f"{where}.retry_after: must be whole seconds, an integer >= 0 "
                          f"(the Retry-After header), got {value!r}")
        elif any(k.lower() == "retry-after" for k in kw.get("headers", {})):
            errors.append(f"{where}.retry_after: 'headers' already has a Retry-After; "
                          "give one or the other")
        else:
            kw["retry_after"] = value
    for flag in ("reset", "timeout", "empty_body", "malformed_body"):
        if flag in obj:
            if not isinstance(obj[flag], bool):
                errors.append(f"{where}.{flag}: must be true or false, got {obj[flag]!r}")
            else:
                kw[flag] = obj[flag]
    if "timeout_s" in obj:
        value = obj["timeout_s"]
        if obj.get("timeout") is not True:
            errors.append(f"{where}.timeout_s: only makes sense with 'timeout': true")
        if not _is_number(value) or not 0 < value <= 3600:
            errors.append(f"{where}.timeout_s: must be a number of seconds, more than 0 and "
                          f"at most 3600, got {value!r}")
        else:
            kw["timeout_s"] = float(value)
    for key, unit in (("stream_cut_after", "chunks"), ("truncate_after", "bytes")):
        if key in obj:
            value = obj[key]
            if not _is_int(value) or value < 0:
                errors.append(f"{where}.{key}: must be an integer >= 0 ({unit} kept), "
                              f"got {value!r}")
            else:
                kw[key] = value
    _parse_grpc(obj, where, errors, kw)
    chosen = [key for key in EXCLUSIVE if key in obj and obj[key] is not None
              and obj[key] is not False]
    if len(chosen) > 1:
        errors.append(f"{where}: {', '.join(chosen)} exclude each other (one of "
                      f"{', '.join(EXCLUSIVE)}; latency_ms combines with any)")
    latency = kw.get("latency")
    if not chosen and (latency is None or not latency.effective) and \
            not any(e.startswith(f"{where}.latency_ms") for e in errors):
        errors.append(f"{where}: no effect; give at least one of latency_ms (> 0), status, "
                      "reset: true, timeout: true, empty_body: true, malformed_body: true, "
                      "stream_cut_after, truncate_after, grpc_status")


def _parse_grpc(obj: Mapping[str, Any], where: str, errors: list[str],
                kw: dict[str, Any]) -> None:
    """`grpc_status`: a code name (any case) or number 1-16; `details` only with it."""
    if "grpc_status" in obj:
        value = obj["grpc_status"]
        number = GRPC_CODES.get(value.strip().upper()) if isinstance(value, str) else \
            value if _is_int(value) else None
        if number is None or not 1 <= number <= 16:
            errors.append(f"{where}.grpc_status: must be a gRPC status code other than OK, a "
                          f"name such as 'UNAVAILABLE' or a number from 1 to 16, got {value!r}")
        else:
            kw["grpc_status"] = number
    if "details" in obj:
        if "grpc_status" not in obj:
            errors.append(f"{where}.details: only makes sense with 'grpc_status'")
        if not isinstance(obj["details"], str):
            errors.append(f"{where}.details: must be a string, got {obj['details']!r}")
        else:
            kw["details"] = obj["details"]


def parse_rule(obj: Any, where: str = "rule") -> FaultRule:
    """One rule from its object, or FaultRuleError listing everything wrong with it."""
    if not isinstance(obj, Mapping):
        raise FaultRuleError([f"{where}: must be an object, got {type(obj).__name__}"])
    errors: list[str] = []
    unknown = sorted(set(map(str, obj)) - set(RULE_KEYS) - _OUTPUT_ONLY)
    if unknown:
        errors.append(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
                      f"allowed: {', '.join(RULE_KEYS)}")
    kw: dict[str, Any] = {}
    _parse_match(obj, where, errors, kw)
    _parse_when(obj, where, errors, kw)
    _parse_action(obj, where, errors, kw)
    if "id" in obj:
        value = obj["id"]
        if not isinstance(value, str) or not value or "/" in value or len(value) > 100:
            errors.append(f"{where}.id: must be a non-empty string without '/', up to 100 "
                          f"characters, got {value!r}")
        else:
            kw["id"] = value
    if errors:
        raise FaultRuleError(errors)
    return FaultRule(**kw)


def parse_rules(obj: Any) -> list[FaultRule]:
    """Rules from a rule object, a list of them, or `{"rules": [...]}`; every error at once."""
    if isinstance(obj, Mapping) and "rules" in obj:
        extra = sorted(map(str, set(obj) - {"rules"}))
        if extra:
            raise FaultRuleError([f"unknown key(s) {', '.join(map(repr, extra))} next to "
                                  "'rules'"])
        obj = obj["rules"]
        if not isinstance(obj, list):
            raise FaultRuleError([f"'rules' must be a list, got {type(obj).__name__}"])
    if obj is None:
        return []
    items = obj if isinstance(obj, list) else [obj]
    rules, errors = [], []
    for i, item in enumerate(items):
        try:
            rules.append(parse_rule(item, f"rules[{i}]" if isinstance(obj, list) else "rule"))
        except FaultRuleError as exc:
            errors.extend(exc.errors)
    _unique_generated_ids(rules)
    ids = [r.id for r in rules]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        errors.append(f"duplicate rule id(s): {', '.join(dupes)}")
    if errors:
        raise FaultRuleError(errors)
    return rules


def _unique_generated_ids(rules: list[FaultRule], taken: Iterable[str] = ()) -> None:
    """Identical rules without an id: `f_<hash>`, then `f_<hash>-2`, `-3`, ..."""
    seen = set(taken) | {r.id for r in rules if not r.auto_id}
    for rule in rules:
        if rule.auto_id:
            base, n = rule.id.split("-")[0], 1
            while rule.id in seen:
                n += 1
                rule.id = f"{base}-{n}"
        seen.add(rule.id)


def _load_text(text: str, source: str, fmt: str | None = None) -> Any:
    """JSON or YAML text -> objects (`fmt`: "json"/"yaml" from a file's suffix, else both)."""
    import yaml

    if fmt != "yaml":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            if fmt == "json":
                raise FaultRuleError([f"{source}: not JSON: {exc}"]) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        what = "neither JSON nor YAML" if fmt is None else "not YAML"
        raise FaultRuleError([f"{source}: {what}: {' '.join(str(exc).split())}"]) from None


def _read_file(path: Path, source: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise FaultRuleError([f"{source}: cannot read {path}: {reason}"]) from None
    suffix = path.suffix.lower()
    fmt = "json" if suffix == ".json" else "yaml" if suffix in (".yaml", ".yml") else None
    return _load_text(text, source, fmt)


def _prefixed(data: Any, source: str) -> list[FaultRule]:
    try:
        return parse_rules(data)
    except FaultRuleError as exc:
        raise FaultRuleError([f"{source}: {e}" for e in exc.errors]) from None


def load_rules(source: Any) -> list[FaultRule]:
    """Rules from a file path (str or Path: `.yaml`/`.yml`/`.json`), `"@path"`, JSON or YAML
    text, or already-parsed objects (a rule, a list, `{"rules": [...]}`). Errors name the
    file they come from."""
    if isinstance(source, Path):
        return _prefixed(_read_file(source, str(source)), str(source))
    if isinstance(source, str):
        text = source.strip()
        if not text:
            return []
        if text.startswith("@"):
            path = Path(text[1:]).expanduser()
            return _prefixed(_read_file(path, str(path)), str(path))
        looks_like_path = "\n" not in text and not text.startswith(("{", "[", "-")) and (
            text.lower().endswith((".yaml", ".yml", ".json")) or os.path.isfile(text))
        if looks_like_path:
            path = Path(text).expanduser()
            return _prefixed(_read_file(path, str(path)), str(path))
        data = _load_text(text, "fault rules")
        if isinstance(data, str):
            raise FaultRuleError([f"fault rules: {text!r} is no file (cannot read it) and no "
                                  "rules (a rule object, a list of them, or {rules: [...]})"])
        return _prefixed(data, "fault rules")
    return parse_rules(source)


def parse_text(text: str, source: str = ENV_VAR) -> list[FaultRule]:
    """Rules from JSON (or YAML) text, or from a file when the text is `@path`; errors
    prefixed by `source` (the mocks' `MOCK_FAULTS` and `--faults`)."""
    text = text.strip()
    if not text:
        return []
    if text.startswith("@"):
        path = Path(text[1:]).expanduser()
        where = f"{source} ({path})"
        return _prefixed(_read_file(path, where), where)
    return _prefixed(_load_text(text, source), source)


def rules_from_env(var: str = ENV_VAR) -> list[FaultRule]:
    return parse_text(os.environ.get(var, ""), var)


# -- one decision ---------------------------------------------------------------------------

def _stored_body(data: bytes) -> Any:
    """Bytes in the stored body form: text, or the `$tracelab: binary` marker."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return {"$tracelab": "binary", "base64": base64.b64encode(data).decode("ascii")}


def _stored_chunks(pieces: list[tuple[float, bytes]]) -> list[dict[str, Any]]:
    """Pieces in the contract's `chunks` form: all text, else all base64."""
    try:
        return [{"t": t, "data": data.decode("utf-8")} for t, data in pieces]
    except UnicodeDecodeError:
        return [{"t": t, "data": base64.b64encode(data).decode("ascii"), "encoding": "base64"}
                for t, data in pieces]


def _resplit(pieces: list[tuple[float, bytes]], data: bytes) -> list[tuple[float, bytes]]:
    """`data` cut at the boundaries of `pieces` (what is left over goes in a last piece)."""
    out, at = [], 0
    for t, piece in pieces:
        if at >= len(data):
            break
        out.append((t, data[at:at + len(piece)]))
        at += len(piece)
    if at < len(data):
        out.append((pieces[-1][0] if pieces else 0.0, data[at:]))
    return out


def _set_length(headers: Any, size: int) -> None:
    if isinstance(headers, dict):
        for name in list(headers):
            if str(name).lower() == "content-length":
                headers[name] = str(size)


@dataclass
class Fault:
    """One decision for one call: what to do to it, with the values drawn for this call."""

    rule: FaultRule
    rule_id: str
    action: str
    latency_ms: float = 0.0
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    timeout_s: float = DEFAULT_TIMEOUT_S
    cut_after_chunks: int | None = None
    truncate_after_bytes: int | None = None
    grpc_status: int | None = None
    details: str | None = None

    @property
    def replaces_response(self) -> bool:
        """status, reset, timeout: no upstream/recorded answer is used."""
        return self.action in REPLACING

    @property
    def message(self) -> str:
        what = {"reset": "connection reset",
                "grpc_status": f"gRPC status {GRPC_NAMES.get(self.grpc_status or 0)}",
                "timeout": f"timed out after {self.timeout_s:g}s",
                "stream_cut": f"stream cut after {self.cut_after_chunks} chunk(s)"}
        return f"fault injected by TraceLab (rule {self.rule_id}): " + \
            what.get(self.action, self.action)

    def body_bytes(self) -> tuple[bytes, str]:
        """The body and content type of a `status` answer (default: a JSON error)."""
        if self.rule.has_body:
            value = self.rule.body
            if value is None:
                return b"", "text/plain; charset=utf-8"
            if isinstance(value, str):
                return value.encode("utf-8"), "text/plain; charset=utf-8"
            return json.dumps(value).encode("utf-8"), "application/json"
        status = self.status or 500
        error = {"error": {"status": status, "type": "tracelab_fault", "rule": self.rule_id,
                           "message": f"fault injected by TraceLab (rule {self.rule_id}): "
                                      f"status {status}"}}
        return json.dumps(error).encode("utf-8"), "application/json"

    def mangle(self, body: bytes) -> bytes:
        """The answer's body as this fault leaves it (unchanged for other actions)."""
        if self.action == "empty_body":
            return b""
        if self.action == "malformed_body":
            return body[:len(body) // 2] + b'{"'
        if self.action == "truncate" and self.truncate_after_bytes is not None:
            return body[:self.truncate_after_bytes]
        return body

    def replay_answer(self, peek: Callable[[], dict[str, Any] | None]) -> dict[str, Any] | None:
        """What a replay (the SDK's or the replay proxy's) answers this faulted call with,
        never consuming the recording: None when the call is answered as usual (a `latency`
        fault, after its wait, or a body or stream fault on a call the recording does not
        hold: a normal miss); else `response_event`, built from `peek()` (the recorded answer
        the call would get, looked at, not taken) when the fault changes that answer."""
        if self.action == "latency":
            return None
        recorded = None
        if not self.replaces_response:
            recorded = peek()
            if recorded is None:
                return None
        return self.response_event(recorded)

    def response_event(self, recorded: dict[str, Any] | None) -> dict[str, Any]:
        """The recorded-event shape a replay answers with for this faulted call."""
        if self.action == "status":
            data, content_type = self.body_bytes()
            body: Any = _stored_body(data)
            if content_type == "application/json" and data:
                body = json.loads(data)
            status = self.status or 500
            headers = {"content-type": content_type, **self.headers}
            return {"response": {"status_code": status, "headers": headers, "body": body},
                    "status_code": status, "status": "error" if status >= 400 else "ok"}
        if self.action == "grpc_status":
            code = self.grpc_status or GRPC_CODES["UNKNOWN"]
            details = self.details if self.details is not None else self.message
            return {"response": {"status_code": code, "details": details}, "status_code": code,
                    "status": "error", "error": {"type": GRPC_NAMES[code], "message": details}}
        if self.action in ("reset", "timeout"):
            kind = "ConnectionResetError" if self.action == "reset" else "TimeoutError"
            return {"response": None, "status": "error",
                    "error": {"type": kind, "message": self.message}}
        out = copy.deepcopy(dict(recorded)) if recorded is not None else \
            {"response": {"status_code": 200, "headers": {}, "body": ""}}
        response = out.get("response")
        if self.action == "latency" or not isinstance(response, dict):
            return out
        self._mangle_response(response)
        return out

    def _mangle_response(self, response: dict[str, Any]) -> None:
        from tracelab.replay.session import body_bytes, recorded_chunks

        pieces = recorded_chunks(response)
        raw = b"".join(d for _t, d in pieces) if pieces is not None else \
            body_bytes(response.get("body"))
        if self.action == "stream_cut":
            if pieces is None:
                pieces = [(0.0, raw)] if raw else []
            kept = pieces[:self.cut_after_chunks or 0]
            joined = b"".join(d for _t, d in kept)
            response["chunks"] = _stored_chunks(kept)
            response["body"] = _stored_body(joined)
            response["stream"] = {"complete": False, "size": len(joined), "truncated": False,
                                  "error": {"type": "ConnectionResetError",
                                            "message": self.message}}
            _set_length(response.get("headers"), len(joined))
            return
        new = self.mangle(raw)
        response["body"] = _stored_body(new)
        _set_length(response.get("headers"), len(new))
        if pieces is not None:
            response["chunks"] = _stored_chunks(_resplit(pieces, new))
            response["stream"] = {"complete": True, "error": None, "size": len(new),
                                  "truncated": False}

    def tags(self) -> dict[str, str]:
        """Tags of the faulted call's event: the rule id, the action, the rule (compact JSON)."""
        rule = json.dumps(self.rule.definition(), separators=(",", ":"), ensure_ascii=False)
        return {"fault": self.rule_id, "fault.action": self.action, "fault.rule": rule}


class FaultSet:
    """The live rules of one replay, proxy or mock (thread-safe); `decide_call` counts."""

    def __init__(self, rules: Iterable[FaultRule] = ()) -> None:
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = list(rules)

    @classmethod
    def from_env(cls, var: str = ENV_VAR) -> FaultSet:
        return cls(rules_from_env(var))

    @classmethod
    def load(cls, source: Any) -> FaultSet:
        """A FaultSet from anything `load_rules` takes (a FaultSet is returned as is)."""
        return source if isinstance(source, FaultSet) else cls(load_rules(source))

    def rules(self) -> list[FaultRule]:
        with self._lock:
            return list(self._rules)

    def __len__(self) -> int:
        with self._lock:
            return len(self._rules)

    @property
    def needs_body(self) -> bool:
        """Some rule looks at the request body (the mocks then read it before deciding)."""
        with self._lock:
            return any(r.needs_body for r in self._rules)

    def add(self, rules: Iterable[FaultRule]) -> list[FaultRule]:
        rules = list(rules)
        with self._lock:
            taken = {r.id for r in self._rules}
            _unique_generated_ids(rules, taken)
            clash = sorted(r.id for r in rules if r.id in taken)
            if clash:
                raise FaultRuleError([f"rule id(s) already exist: {', '.join(clash)} "
                                      "(DELETE it first, or PUT to replace all)"])
            self._rules.extend(rules)
        return rules

    def replace(self, rules: Iterable[FaultRule]) -> list[FaultRule]:
        rules = list(rules)
        with self._lock:
            self._rules = rules
        return rules

    def clear(self) -> int:
        with self._lock:
            n, self._rules = len(self._rules), []
        return n

    def remove(self, rule_id: str) -> bool:
        with self._lock:
            kept = [r for r in self._rules if r.id != rule_id]
            found = len(kept) != len(self._rules)
            self._rules = kept
        return found

    def decide_call(self, call: Call) -> Fault | None:
        """The fault for this call (the first matching rule that fires), or None."""
        with self._lock:
            for rule in self._rules:
                if not rule.matches(call):
                    continue
                rule.matched += 1
                if rule.nth is not None and rule.matched not in rule.nth:
                    continue
                if rule.times is not None and rule.applied >= rule.times:
                    continue
                if rule.rate < 1.0 and not rule._rng.random() < rule.rate:
                    continue
                rule.applied += 1
                latency = rule.latency.draw(rule._rng) if rule.latency is not None else 0.0
                return _fault(rule, latency)
        return None

    def decide(self, method: str, path: str, target: str = "") -> Fault | None:
        """The mocks' question: an HTTP request by method and URL path (query excluded)."""
        return self.decide_call(Call("http", target, f"{method.upper()} {path}"))


def _fault(rule: FaultRule, latency_ms: float) -> Fault:
    headers = dict(rule.headers)
    if rule.retry_after is not None:
        headers["Retry-After"] = str(rule.retry_after)
    return Fault(rule=rule, rule_id=rule.id, action=rule.action, latency_ms=latency_ms,
                 status=rule.status, headers=headers if rule.status is not None else {},
                 timeout_s=rule.timeout_s, cut_after_chunks=rule.stream_cut_after,
                 truncate_after_bytes=rule.truncate_after, grpc_status=rule.grpc_status,
                 details=rule.details)


__all__ = ["Call", "Fault", "FaultRule", "FaultRuleError", "FaultSet", "load_rules",
           "parse_rule", "parse_rules", "parse_text", "rules_from_env"]
