"""Fault injection: one rule format for the mock vendors (`tracelab mocks`) and, later, replays.

A rule is a JSON object. It matches a request by `method` (`"POST"`, or `"*"`, the default) and
`path` (a glob on the URL path, query string excluded: `"/v1/charges"`, `"/v1/*"`, `"*"`;
`*` also crosses `/`), and applies, in this order:

| key | effect |
| --- | --- |
| `latency_ms` | wait this long first (number >= 0; may combine with one of the three below) |
| `status` (+ `body`, `headers`) | answer with this HTTP status (100-599) instead of the vendor; `body` is any JSON value (an object or list is sent as JSON, a string as text); without `body` the mock sends its vendor's error shape for that status |
| `reset: true` | drop the TCP connection with a reset, no response at all |
| `timeout: true` | hold the request without answering for `timeout_s` seconds (default 30) or until the client gives up, then drop the connection |

and with:

| key | meaning |
| --- | --- |
| `rate` | probability (0-1, default 1) that a matching request gets the fault |
| `seed` | integer: the rule's own random generator, so the same requests in the same order get the same faults on every run |
| `times` | apply at most this many times, then let requests through (e.g. "fail the first 2 calls") |
| `id` | optional name (default: a generated one); `DELETE /__tracelab/faults/{id}` removes it |

Rules are tried in order; the first matching rule whose `rate` draw fires (and has `times` left)
is applied, the others are not. A rule with no effect, an unknown key, a wrong type or an
out-of-range value is refused with every reason listed (HTTP 422 from the admin API).

Admin API (served by `FaultMiddleware` in front of any ASGI app, never faulted itself):
`GET /__tracelab/faults` lists rules with `matched`/`applied` counters; `POST` adds a rule, a
list of rules or `{"rules": [...]}`; `PUT` replaces them all; `DELETE` removes all;
`DELETE /__tracelab/faults/{id}` removes one; `GET /__tracelab/health` answers 200.
At start, `MOCK_FAULTS` holds rules as JSON, or `@/path/to/rules.json`.

`FaultSet.decide(method, path)` is usable without any server (replays call it directly).
"""
from __future__ import annotations

import asyncio
import fnmatch
import json
import math
import os
import random
import socket
import struct
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

ENV_VAR = "MOCK_FAULTS"
ADMIN_PREFIX = "/__tracelab"
FAULTS_PATH = ADMIN_PREFIX + "/faults"
HEALTH_PATH = ADMIN_PREFIX + "/health"
TRANSPORT_KEY = "tracelab.transport"  # scope["extensions"] key set by `uvicorn_protocol()`

METHODS = frozenset({"*", "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
RULE_KEYS = ("id", "method", "path", "latency_ms", "status", "body", "headers", "reset",
             "timeout", "timeout_s", "rate", "seed", "times")
DEFAULT_TIMEOUT_S = 30.0
MAX_LATENCY_MS = 600_000.0

ErrorBody = Callable[[int, str], tuple[bytes, str]]


class FaultRuleError(ValueError):
    """Invalid rule(s); `errors` lists every reason, each prefixed with where it is."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("; ".join(errors))


@dataclass
class FaultRule:
    path: str
    method: str = "*"
    latency_ms: float = 0.0
    status: int | None = None
    body: Any = None
    has_body: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    reset: bool = False
    timeout: bool = False
    timeout_s: float = DEFAULT_TIMEOUT_S
    rate: float = 1.0
    seed: int | None = None
    times: int | None = None
    id: str = field(default_factory=lambda: "f_" + uuid.uuid4().hex[:10])
    matched: int = 0
    applied: int = 0
    _rng: random.Random = field(default_factory=random.Random, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    @property
    def action(self) -> str:
        if self.reset:
            return "reset"
        if self.timeout:
            return "timeout"
        if self.status is not None:
            return "status"
        return "latency"

    def matches(self, method: str, path: str) -> bool:
        return (self.method == "*" or self.method == method.upper()) and \
            fnmatch.fnmatchcase(path, self.path)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "method": self.method, "path": self.path}
        if self.latency_ms:
            out["latency_ms"] = self.latency_ms
        if self.status is not None:
            out["status"] = self.status
            if self.has_body:
                out["body"] = self.body
            if self.headers:
                out["headers"] = dict(self.headers)
        if self.reset:
            out["reset"] = True
        if self.timeout:
            out["timeout"] = True
            out["timeout_s"] = self.timeout_s
        out["rate"] = self.rate
        if self.seed is not None:
            out["seed"] = self.seed
        if self.times is not None:
            out["times"] = self.times
        out["action"] = self.action
        out["matched"] = self.matched
        out["applied"] = self.applied
        return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and \
        math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_rule(obj: Any, where: str = "rule") -> FaultRule:
    """One rule from its JSON object, or FaultRuleError listing everything wrong with it."""
    if not isinstance(obj, Mapping):
        raise FaultRuleError([f"{where}: must be a JSON object, got {type(obj).__name__}"])
    errors: list[str] = []
    unknown = sorted(set(obj) - set(RULE_KEYS) - {"action", "matched", "applied"})
    if unknown:
        errors.append(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
                      f"allowed: {', '.join(RULE_KEYS)}")
    kw: dict[str, Any] = {}

    path = obj.get("path")
    if not isinstance(path, str) or not path:
        errors.append(f"{where}.path: required, a non-empty glob on the URL path such as "
                      f"'/v1/charges' or '/v1/*' (got {path!r})")
    elif not path.startswith(("/", "*", "?", "[")):
        errors.append(f"{where}.path: must start with '/' (or a wildcard), got {path!r}")
    else:
        kw["path"] = path

    method = obj.get("method", "*")
    if not isinstance(method, str) or method.upper() not in METHODS:
        errors.append(f"{where}.method: must be one of {', '.join(sorted(METHODS))}, "
                      f"got {method!r}")
    else:
        kw["method"] = method.upper()

    if "latency_ms" in obj:
        value = obj["latency_ms"]
        if not _is_number(value) or not 0 <= value <= MAX_LATENCY_MS:
            errors.append(f"{where}.latency_ms: must be a number from 0 to {MAX_LATENCY_MS:g}, "
                          f"got {value!r}")
        else:
            kw["latency_ms"] = float(value)

    if "status" in obj:
        value = obj["status"]
        if not _is_int(value) or not 100 <= value <= 599:
            errors.append(f"{where}.status: must be an integer HTTP status from 100 to 599, "
                          f"got {value!r}")
        else:
            kw["status"] = value
    if "body" in obj:
        if "status" not in obj:
            errors.append(f"{where}.body: only makes sense with 'status'")
        kw["body"], kw["has_body"] = obj["body"], True
    if "headers" in obj:
        value = obj["headers"]
        if "status" not in obj:
            errors.append(f"{where}.headers: only makes sense with 'status'")
        if not isinstance(value, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            errors.append(f"{where}.headers: must be an object of string to string, "
                          f"got {value!r}")
        else:
            kw["headers"] = dict(value)

    for flag in ("reset", "timeout"):
        if flag in obj:
            if not isinstance(obj[flag], bool):
                errors.append(f"{where}.{flag}: must be true or false, got {obj[flag]!r}")
            else:
                kw[flag] = obj[flag]
    if "timeout_s" in obj:
        value = obj["timeout_s"]
        if not obj.get("timeout"):
            errors.append(f"{where}.timeout_s: only makes sense with 'timeout': true")
        if not _is_number(value) or not 0 < value <= 3600:
            errors.append(f"{where}.timeout_s: must be a number of seconds, more than 0 and "
                          f"at most 3600, got {value!r}")
        else:
            kw["timeout_s"] = float(value)

    chosen = [name for name in ("status", "reset", "timeout")
              if obj.get(name) is not None and obj.get(name) is not False]
    if len(chosen) > 1:
        errors.append(f"{where}: 'status', 'reset' and 'timeout' exclude each other; "
                      f"got {', '.join(chosen)}")
    if not chosen and ("latency_ms" not in obj or obj["latency_ms"] == 0):
        errors.append(f"{where}: no effect; give at least one of latency_ms (> 0), status, "
                      "reset: true, timeout: true")

    if "rate" in obj:
        value = obj["rate"]
        if not _is_number(value) or not 0 <= value <= 1:
            errors.append(f"{where}.rate: must be a number from 0 to 1, got {value!r}")
        else:
            kw["rate"] = float(value)
    if "seed" in obj and obj["seed"] is not None:
        value = obj["seed"]
        if not _is_int(value):
            errors.append(f"{where}.seed: must be an integer, got {value!r}")
        else:
            kw["seed"] = value
    if "times" in obj and obj["times"] is not None:
        value = obj["times"]
        if not _is_int(value) or value < 1:
            errors.append(f"{where}.times: must be a positive integer, got {value!r}")
        else:
            kw["times"] = value
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
    if isinstance(obj, Mapping) and "rules" in obj and "path" not in obj:
        extra = sorted(set(obj) - {"rules"})
        if extra:
            raise FaultRuleError([f"unknown key(s) {', '.join(map(repr, extra))} next to "
                                  "'rules'"])
        obj = obj["rules"]
        if not isinstance(obj, list):
            raise FaultRuleError([f"'rules' must be a list, got {type(obj).__name__}"])
    items = obj if isinstance(obj, list) else [obj]
    rules, errors = [], []
    for i, item in enumerate(items):
        try:
            rules.append(parse_rule(item, f"rules[{i}]" if isinstance(obj, list) else "rule"))
        except FaultRuleError as exc:
            errors.extend(exc.errors)
    ids = [r.id for r in rules]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        errors.append(f"duplicate rule id(s): {', '.join(dupes)}")
    if errors:
        raise FaultRuleError(errors)
    return rules


def parse_text(text: str, source: str = ENV_VAR) -> list[FaultRule]:
    """Rules from JSON text, or from a file when the text is `@path`."""
    text = text.strip()
    if not text:
        return []
    if text.startswith("@"):
        path = text[1:]
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            raise FaultRuleError([f"{source}: cannot read {path}: {exc.strerror or exc}"]) \
                from None
        source = f"{source} ({path})"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FaultRuleError([f"{source}: not JSON: {exc}"]) from None
    try:
        return parse_rules(data)
    except FaultRuleError as exc:
        raise FaultRuleError([f"{source}: {e}" for e in exc.errors]) from None


def rules_from_env(var: str = ENV_VAR) -> list[FaultRule]:
    return parse_text(os.environ.get(var, ""), var)


class FaultSet:
    """The live rules of one server (thread-safe)."""

    def __init__(self, rules: Iterable[FaultRule] = ()) -> None:
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = list(rules)

    @classmethod
    def from_env(cls, var: str = ENV_VAR) -> FaultSet:
        return cls(rules_from_env(var))

    def rules(self) -> list[FaultRule]:
        with self._lock:
            return list(self._rules)

    def add(self, rules: Iterable[FaultRule]) -> list[FaultRule]:
        rules = list(rules)
        with self._lock:
            taken = {r.id for r in self._rules}
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

    def decide(self, method: str, path: str) -> FaultRule | None:
        """The rule to apply to this request, or None. Counts matches and applications."""
        with self._lock:
            for rule in self._rules:
                if not rule.matches(method, path):
                    continue
                rule.matched += 1
                if rule.times is not None and rule.applied >= rule.times:
                    continue
                if rule.rate < 1.0 and not rule._rng.random() < rule.rate:
                    continue
                rule.applied += 1
                return rule
        return None


# -- ASGI -------------------------------------------------------------------------------------

def default_error_body(status: int, path: str) -> tuple[bytes, str]:
    body = {"error": {"status": status, "message": f"fault injected by TraceLab ({status})"}}
    return json.dumps(body).encode(), "application/json"


def _encode_body(value: Any) -> tuple[bytes, str]:
    if value is None:
        return b"", "text/plain; charset=utf-8"
    if isinstance(value, str):
        return value.encode(), "text/plain; charset=utf-8"
    return json.dumps(value).encode(), "application/json"


async def _respond(send: Callable[[dict], Awaitable[None]], status: int, body: bytes,
                   content_type: str, headers: Mapping[str, str] | None = None) -> None:
    raw = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
    for k, v in (headers or {}).items():
        if k.lower() not in ("content-length", "content-type"):
            raw.append((k.lower().encode("latin-1"), v.encode("latin-1")))
        elif k.lower() == "content-type":
            raw[0] = (b"content-type", v.encode("latin-1"))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _json(send: Callable[[dict], Awaitable[None]], status: int, obj: Any) -> None:
    await _respond(send, status, json.dumps(obj).encode(), "application/json")


async def _read_body(receive: Callable[[], Awaitable[dict]]) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return b"".join(chunks)


async def _wait_disconnect(receive: Callable[[], Awaitable[dict]], seconds: float) -> None:
    async def wait() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    try:
        await asyncio.wait_for(wait(), seconds)
    except asyncio.TimeoutError:
        pass


async def _drop(scope: dict, receive: Callable[[], Awaitable[dict]],
                send: Callable[[dict], Awaitable[None]]) -> None:
    """Close the connection with a TCP reset and no response."""
    transport = (scope.get("extensions") or {}).get(TRANSPORT_KEY)
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:  # SO_LINGER 0: close() sends RST instead of FIN
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        transport.abort()
        await _wait_disconnect(receive, 2.0)  # let the server see the connection is gone
        return
    # Not under `uvicorn_protocol()`: break the response half-way, which every server turns
    # into a closed connection (the client sees an incomplete response).
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"1000"), (b"connection", b"close")]})
    raise ConnectionResetError("fault injected by TraceLab: connection reset")


class FaultMiddleware:
    """ASGI middleware: serves the admin API and applies the first firing rule to a request."""

    def __init__(self, app: Any, faults: FaultSet | None = None, *, name: str = "mock",
                 error_body: ErrorBody = default_error_body) -> None:
        self.app = app
        self.faults = faults if faults is not None else FaultSet.from_env()
        self.name = name
        self.error_body = error_body

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path") or "/"
        if path.startswith(ADMIN_PREFIX + "/"):
            await self._admin(scope, receive, send, path)
            return
        rule = self.faults.decide(scope["method"], path)
        if rule is None:
            await self.app(scope, receive, send)
            return
        if rule.latency_ms:
            await asyncio.sleep(rule.latency_ms / 1000.0)
        action = rule.action
        if action == "latency":
            await self.app(scope, receive, send)
        elif action == "status":
            assert rule.status is not None
            if rule.has_body:
                body, ctype = _encode_body(rule.body)
            else:
                body, ctype = self.error_body(rule.status, path)
            await _read_body(receive)
            await _respond(send, rule.status, body, ctype, rule.headers)
        elif action == "reset":
            await _drop(scope, receive, send)
        else:  # timeout: never answer; drop the connection when the hold ends
            await _wait_disconnect(receive, rule.timeout_s)
            await _drop(scope, receive, send)

    async def _admin(self, scope: dict, receive: Any, send: Any, path: str) -> None:
        method = scope["method"]
        if path == HEALTH_PATH:
            await _json(send, 200, {"status": "ok", "mock": self.name,
                                    "faults": len(self.faults.rules())})
            return
        if path == FAULTS_PATH:
            if method == "GET":
                await _json(send, 200, {"rules": [r.to_dict() for r in self.faults.rules()]})
                return
            if method == "DELETE":
                await _json(send, 200, {"removed": self.faults.clear()})
                return
            if method in ("POST", "PUT"):
                raw = await _read_body(receive)
                try:
                    data = json.loads(raw or b"null")
                except ValueError as exc:
                    await _json(send, 422, {"detail": f"body is not JSON: {exc}",
                                            "errors": [f"body is not JSON: {exc}"]})
                    return
                try:
                    rules = parse_rules(data)
                    if method == "POST":
                        self.faults.add(rules)
                    else:
                        self.faults.replace(rules)
                except FaultRuleError as exc:
                    await _json(send, 422, {"detail": "invalid fault rule: " + str(exc),
                                            "errors": exc.errors})
                    return
                await _json(send, 201 if method == "POST" else 200,
                            {"rules": [r.to_dict() for r in rules]})
                return
            await _json(send, 405, {"detail": f"{method} not allowed on {FAULTS_PATH}; "
                                              "use GET, POST, PUT or DELETE"})
            return
        if path.startswith(FAULTS_PATH + "/"):
            rule_id = path[len(FAULTS_PATH) + 1:]
            if method == "DELETE":
                if self.faults.remove(rule_id):
                    await _json(send, 200, {"removed": 1})
                else:
                    await _json(send, 404, {"detail": f"no fault rule with id {rule_id!r}"})
                return
            if method == "GET":
                for rule in self.faults.rules():
                    if rule.id == rule_id:
                        await _json(send, 200, rule.to_dict())
                        return
                await _json(send, 404, {"detail": f"no fault rule with id {rule_id!r}"})
                return
            await _json(send, 405, {"detail": f"{method} not allowed; use GET or DELETE"})
            return
        await _json(send, 404, {"detail": f"unknown TraceLab admin path {path}; see "
                                          f"{FAULTS_PATH} and {HEALTH_PATH}"})


def uvicorn_protocol() -> type:
    """uvicorn's h11 protocol, exposing each connection's transport to the app in
    `scope["extensions"]["tracelab.transport"]` so `reset` can send a real TCP reset."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class ResettableH11Protocol(H11Protocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            inner = self.app

            async def app(scope: dict, receive: Any, send: Any) -> None:
                scope.setdefault("extensions", {})[TRANSPORT_KEY] = transport
                await inner(scope, receive, send)

            self.app = app

    return ResettableH11Protocol
