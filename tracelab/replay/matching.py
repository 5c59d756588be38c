"""Matching live calls to recorded ones: the one key function, the queues, and miss explanations.

A replay is only trustworthy when the same call gets the same key at record and at replay
time, in every producer (this SDK, sdk-ts, the proxy). So there is exactly one key function,
`request_key`, and it works on the request as *stored* in a TraceEvent (redacted, bodies
encoded by `tracelab.sdk.payloads`): a live call is first turned into that shape with the
SDK's own capture code (`http_request_view`), so a recording holding `[REDACTED]` matches the
live call carrying the secret. The key is a canonical JSON text (keys sorted by code point,
numbers written as JavaScript writes them) that sdk-ts reproduces byte for byte;
spec/matching/ pins it with shared cases.

`Matcher` answers calls in recorded order with a queue per key (a dict lookup per call,
however big the recording) and fails closed: a key asked more often than it was recorded is a
miss, never a silent repeat. Only on a miss does it look for the closest recorded calls and
say which parts differ, VCR.py style, with JSON bodies diffed by path.
"""
from __future__ import annotations

import base64
import math
import re
import threading
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from functools import lru_cache
from itertools import islice
from typing import Any
from urllib.parse import SplitResult, parse_qsl, urlsplit

import orjson

from tracelab.sdk.capture import http_target, llm_provider
from tracelab.sdk.payloads import encode_body, not_captured
from tracelab.sdk.redaction import Redactor, scrub

__all__ = [
    "LLM_IGNORED_FIELDS", "Hit", "MatchOptions", "Matcher", "Miss", "canonical_json", "describe",
    "differences", "http_request_view", "js_number", "json_differences", "key_parts",
    "parse_ignore", "request_key",
]

# Top-level members of an LLM request body that do not change the answer: who is asking and
# how the client wants bookkeeping done. Everything else (model, messages, tools, sampling
# parameters, `stream`, response_format, …) is matched.
LLM_IGNORED_FIELDS = frozenset({
    "user", "stream_options", "metadata", "store", "safety_identifier", "prompt_cache_key",
})
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_MAX_SAFE_INTEGER = 2**53 - 1
_RULE = re.compile(r"\A(body|query|header):(.*)\Z", re.S)
_PATH_TOKEN = re.compile(
    r"\.([^.\[\]]+)|\[(\*|\d+)\]|\['((?:[^'\\]|\\.)*)'\]|\[\"((?:[^\"\\]|\\.)*)\"\]")
_BOUNDARY_CHARS = r"[0-9A-Za-z'()+_,./:=?-]{1,70}"
_BOUNDARY = re.compile(_BOUNDARY_CHARS)
_ALNUM = re.compile(r"[0-9A-Za-z]")
_BOUNDARY_PARAM = re.compile(r"""boundary\s*=\s*(?:"([^"]{1,70})"|([^\s;,"]{1,70}))""", re.I)
_MAX_DIFFERENCES = 12
_MAX_CANDIDATES = 32
_SHOWN_CHARS = 60
_STAR = object()


# -- options and ignore rules ------------------------------------------------------------------

@dataclass(frozen=True)
class MatchOptions:
    """What the key leaves out (`ignore` rules) and which request headers it adds (`headers`)."""

    ignore: tuple[str, ...] = ()
    headers: tuple[str, ...] = ()


def parse_ignore(rule: str) -> str:
    """The rule in its normal form (`header:` names lower-cased); ValueError when malformed.

    `body:$.a.b[0]['c d'][*]` (a JSON path into the body; `$` is the whole body), `query:NAME`
    and `header:NAME`.
    """
    if not isinstance(rule, str):
        raise ValueError(f"match-ignore rule {rule!r}: expected a string such as "
                         "'body:$.metadata.request_id', 'query:ts' or 'header:x-request-id'")
    text = rule.strip()
    m = _RULE.match(text)
    if m is None:
        raise ValueError(f"match-ignore rule {rule!r}: expected 'body:$.json.path', "
                         "'query:NAME' or 'header:NAME' (e.g. 'body:$.metadata.request_id', "
                         "'query:ts', 'header:x-request-id')")
    part, arg = m.group(1), m.group(2).strip()
    if not arg:
        raise ValueError(f"match-ignore rule {rule!r}: the {part} name is empty")
    if part == "body":
        _parse_path(arg, rule)
        return f"body:{arg}"
    if part == "header":
        return f"header:{arg.lower()}"
    return f"query:{arg}"


def _parse_path(path: str, rule: str) -> tuple[Any, ...]:
    """`$.a[0][*]['b.c']` -> ("a", 0, _STAR, "b.c"); ValueError naming the bad position."""
    if not path.startswith("$"):
        raise ValueError(f"match-ignore rule {rule!r}: a body path starts with '$' "
                         "(e.g. 'body:$.metadata.request_id')")
    steps: list[Any] = []
    at = 1
    while at < len(path):
        m = _PATH_TOKEN.match(path, at)
        if m is None:
            raise ValueError(f"match-ignore rule {rule!r}: cannot read the JSON path at "
                             f"{path[at:]!r}; use .name, [0], [*] or ['name']")
        name, index, quoted1, quoted2 = m.groups()
        if name is not None:
            steps.append(_STAR if name == "*" else name)
        elif index is not None:
            steps.append(_STAR if index == "*" else int(index))
        elif quoted1 is not None:
            steps.append(re.sub(r"\\(.)", r"\1", quoted1))
        else:
            try:  # ["name"] is a JSON string: \uXXXX escapes work
                steps.append(orjson.loads(f'"{quoted2}"'))
            except orjson.JSONDecodeError:
                raise ValueError(f"match-ignore rule {rule!r}: {path[at:m.end()]} is not a JSON "
                                 "string") from None
        at = m.end()
    return tuple(steps)


@dataclass(frozen=True)
class _Rules:
    body: tuple[tuple[Any, ...], ...]
    query: frozenset[str]
    ignored_headers: frozenset[str]
    headers: tuple[str, ...]


@lru_cache(maxsize=64)
def _rules(options: MatchOptions) -> _Rules:
    body, query, ignored = [], set(), set()
    for rule in options.ignore:
        normal = parse_ignore(rule)
        part, _, arg = normal.partition(":")
        if part == "body":
            body.append(_parse_path(arg, rule))
        elif part == "query":
            query.add(arg)
        else:
            ignored.add(arg)
    names = sorted({h.strip().lower() for h in options.headers if h.strip()} - ignored)
    return _Rules(tuple(body), frozenset(query), frozenset(ignored), tuple(names))


def _drop(value: Any, steps: tuple[Any, ...]) -> Any:
    """A copy of `value` without what `steps` points at (shared where nothing changes)."""
    if not steps:
        return _GONE
    step, rest = steps[0], steps[1:]
    if isinstance(value, dict):
        if step is _STAR:
            names = list(value)
        elif isinstance(step, str) and step in value:
            names = [step]
        else:
            return value
        out = dict(value)
        for name in names:
            kept = _drop(out[name], rest)
            if kept is _GONE:
                del out[name]
            else:
                out[name] = kept
        return out
    if isinstance(value, list):
        if step is _STAR:
            indexes = range(len(value))
        elif isinstance(step, int) and step < len(value):
            indexes = range(step, step + 1)
        else:
            return value
        out_list = list(value)
        gone = set()
        for i in indexes:
            kept = _drop(out_list[i], rest)
            if kept is _GONE:
                gone.add(i)
            else:
                out_list[i] = kept
        return [v for i, v in enumerate(out_list) if i not in gone] if gone else out_list
    return value


_GONE = object()


# -- canonical JSON --------------------------------------------------------------------------

def js_number(value: float) -> str:
    """A number as JavaScript's `String(n)` / `JSON.stringify` writes it (shortest digits)."""
    if not math.isfinite(value):
        return "null"
    if value == 0:
        return "0"
    sign = "-" if value < 0 else ""
    digits_tuple = Decimal(repr(abs(value))).normalize().as_tuple()
    digits = "".join(map(str, digits_tuple.digits))
    k = len(digits)
    n = int(digits_tuple.exponent) + k
    if k <= n <= 21:
        text = digits + "0" * (n - k)
    elif 0 < n <= 21:
        text = f"{digits[:n]}.{digits[n:]}"
    elif -6 < n <= 0:
        text = "0." + "0" * -n + digits
    else:
        e = n - 1
        mantissa = digits if k == 1 else f"{digits[0]}.{digits[1:]}"
        text = f"{mantissa}e{'+' if e >= 0 else '-'}{abs(e)}"
    return sign + text


def _numbers_as_js(value: Any) -> Any:
    """`value` with every number that JSON.stringify would write differently pre-rendered."""
    kind = type(value)
    if kind is dict:
        return {k: _numbers_as_js(v) for k, v in value.items()}
    if kind is list or kind is tuple:
        return [_numbers_as_js(v) for v in value]
    if kind is float:
        if value.is_integer() and abs(value) <= _MAX_SAFE_INTEGER:
            return int(value)
        return orjson.Fragment(js_number(value))
    if kind is int and abs(value) > _MAX_SAFE_INTEGER:
        return orjson.Fragment(js_number(float(value)))
    return value


def canonical_json(value: Any) -> str:
    """Compact JSON, object keys sorted by code point, numbers as JavaScript writes them."""
    return orjson.dumps(_numbers_as_js(value), default=repr,
                        option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS).decode("utf-8")


# -- the key ---------------------------------------------------------------------------------

def request_key(event: Mapping[str, Any], options: MatchOptions = MatchOptions()) -> str:
    """The match key of a stored (or live, same shape) call: a canonical JSON text.

    Equal keys answer each other. See spec/matching/README.md for the exact parts per kind.
    """
    return canonical_json(key_parts(event, options))


def key_parts(event: Mapping[str, Any], options: MatchOptions = MatchOptions()) -> dict[str, Any]:
    """The key as a dict (what `request_key` serialises); `Matcher` diffs these on a miss."""
    rules = _rules(options)
    kind = str(event.get("kind") or "")
    request = event.get("request")
    request = request if isinstance(request, dict) else {}
    if isinstance(request.get("url"), str) and isinstance(request.get("method"), str):
        return _http_parts(event, kind, request, rules)
    target, endpoint = str(event.get("target") or ""), str(event.get("endpoint") or "")
    if kind == "email":
        body = request["body"] if "body" in request else request.get("params")
        parts: dict[str, Any] = {
            "kind": "email", "target": target, "endpoint": endpoint,
            "from": request.get("from"), "to": _sorted_addresses(request.get("to")),
            "cc": _sorted_addresses(request.get("cc")),
            "bcc": _sorted_addresses(request.get("bcc")),
            "subject": request.get("subject"),
            "body": _apply_body_rules(_email_body(body), rules),
        }
    elif kind == "sms":
        parts = {"kind": "sms", "target": target, "endpoint": endpoint, "to": request.get("to"),
                 "from": request.get("from"), "body": _apply_body_rules(request.get("body"), rules)}
    else:
        if kind == "grpc":  # messages and their type; not metadata, nor stream offsets (timing)
            request = {k: request[k] for k in ("type", "message", "messages") if k in request}
            if isinstance(request.get("messages"), list):
                request["messages"] = [{k: v for k, v in m.items() if k != "t"}
                                       if isinstance(m, dict) else m for m in request["messages"]]
        parts = {"kind": kind, "target": target, "endpoint": endpoint,
                 "request": _apply_body_rules(request, rules)}
    return {k: v for k, v in parts.items() if v is not _GONE}


def _split(url: str) -> SplitResult:
    """`urlsplit`, or for a URL it refuses (an unbalanced `[` host) the whole URL as the path:
    one odd recorded event must not stop a replay, and it still matches only itself."""
    try:
        return urlsplit(url)
    except ValueError:
        return SplitResult("", "", url, "", "")


def _http_parts(event: Mapping[str, Any], kind: str, request: dict[str, Any],
                rules: _Rules) -> dict[str, Any]:
    url = request["url"]
    split = _split(url)
    scheme = split.scheme.lower()
    host = (split.hostname or "").rstrip(".")
    try:
        port = split.port
    except ValueError:
        port = None
    if not host:  # a relative URL: the host is the event's target
        target = str(event.get("target") or "")
        host, _, tail = target.rpartition(":") if target.count(":") == 1 else (target, "", "")
        host = (host or target).lower()
        port = int(tail) if tail.isdigit() else None
    if port is None:
        port = _DEFAULT_PORTS.get(scheme)
    path = split.path or "/"
    body = request.get("body")
    llm = llm_provider(host, path, body) is not None
    if llm and isinstance(body, dict) and "$tracelab" not in body:
        body = {k: v for k, v in body.items() if k not in LLM_IGNORED_FIELDS}
    query = sorted((k, v) for k, v in parse_qsl(split.query, keep_blank_values=True)
                   if k not in rules.query)
    headers = request.get("headers") if isinstance(request.get("headers"), dict) else {}
    parts: dict[str, Any] = {
        "kind": "llm" if llm else ("http" if kind in ("http", "llm", "") else kind),
        "method": request["method"].upper(), "scheme": scheme, "host": host, "port": port,
        "path": path, "query": [list(pair) for pair in query],
        "body": _http_body(body, _header(headers, "content-type"), rules),
    }
    if rules.headers:
        parts["headers"] = {name: _header(headers, name) for name in rules.headers}
    return {k: v for k, v in parts.items() if v is not _GONE}


def _header(headers: Mapping[str, Any], name: str) -> str | None:
    values = [str(v) for k, v in headers.items() if isinstance(k, str) and k.lower() == name]
    return ", ".join(values) if values else None


def _http_body(body: Any, content_type: str | None, rules: _Rules) -> Any:
    """The body's key: null, {"json": v}, {"text": s} or {"form": [[name, value], …]}."""
    ctype = content_type or ""
    lowered = ctype.lower()
    if body is None:
        canonical: Any = None
    elif isinstance(body, str) and "x-www-form-urlencoded" in lowered:
        fields = parse_qsl(body, keep_blank_values=True)
        canonical = {"form": sorted([k, v] for k, v in fields)}
    elif isinstance(body, str):
        canonical = {"text": _strip_boundaries(body, ctype)}
    elif lowered.startswith("multipart/") and isinstance(body, dict):
        canonical = {"json": _marker_without_boundaries(body, ctype)}
    else:
        canonical = {"json": body}
    for steps in rules.body:
        if not steps:
            return _GONE
        if canonical is None:
            continue
        if "form" in canonical:
            if len(steps) == 1:
                name = steps[0]
                canonical = {"form": [f for f in canonical["form"]
                                      if name is not _STAR and f[0] != name]}
        elif "json" in canonical:
            canonical = {"json": _drop(canonical["json"], steps)}
    return canonical


def _apply_body_rules(value: Any, rules: _Rules) -> Any:
    for steps in rules.body:
        value = _drop(value, steps)
        if value is _GONE:
            break
    return value


def _sorted_addresses(value: Any) -> Any:
    if isinstance(value, list):
        return sorted((str(v) for v in value), key=str)
    return [value] if isinstance(value, str) else value


def _closing_boundaries(text: str) -> list[str]:
    """Boundaries whose closing delimiter line (`--BOUNDARY--`) is in the text.

    Lines are split at `\n`, one trailing `\r` and trailing spaces/tabs are dropped; a
    boundary is 1-70 of RFC 2046's characters (no space), at least one a letter or digit.
    """
    found = []
    for line in text.split("\n"):
        line = line.removesuffix("\r").rstrip(" \t")
        if len(line) >= 5 and line.startswith("--") and line.endswith("--"):
            middle = line[2:-2]
            if _BOUNDARY.fullmatch(middle) and _ALNUM.search(middle):
                found.append(middle)
    return found


def _without_boundaries(text: str, boundaries: Iterable[str]) -> str:
    """`--B` -> `--` and `boundary="B"` -> `boundary=""` for each boundary, longest first."""
    for boundary in sorted(set(boundaries), key=lambda b: (-len(b), b)):
        text = text.replace("--" + boundary, "--")
        text = text.replace(f'boundary="{boundary}"', 'boundary=""')
    return text


def _header_boundaries(content_type: str) -> list[str]:
    return [m.group(1) or m.group(2) for m in _BOUNDARY_PARAM.finditer(content_type)]


def _strip_boundaries(text: str, content_type: str) -> str:
    """A multipart text body with its (random) boundaries removed: `--abc123` -> `--`."""
    if not content_type.lower().startswith("multipart/"):
        return text
    return _without_boundaries(text, _header_boundaries(content_type) + _closing_boundaries(text))


def _email_body(body: Any) -> Any:
    """A mail body (no Content-Type is stored) with MIME boundaries found by their closers,
    in every string of it (SES keeps a raw message inside its `params`)."""
    if isinstance(body, str):
        return _without_boundaries(body, _closing_boundaries(body)) if "--" in body else body
    if isinstance(body, dict):
        return {name: _email_body(value) for name, value in body.items()}
    if isinstance(body, list):
        return [_email_body(value) for value in body]
    return body


def _marker_without_boundaries(marker: dict[str, Any], content_type: str) -> dict[str, Any]:
    """A binary or truncated multipart body's marker with the boundaries stripped from it."""
    kind = marker.get("$tracelab")
    if kind == "binary" and isinstance(marker.get("base64"), str):
        try:
            raw = base64.b64decode(marker["base64"], validate=True)
        except ValueError:  # binascii.Error: not a marker we wrote; matched as it is
            return marker
        for boundary in sorted(set(_header_boundaries(content_type)), key=lambda b: (-len(b), b)):
            raw = raw.replace(b"--" + boundary.encode("utf-8"), b"--")
        return {**marker, "size": len(raw), "base64": base64.b64encode(raw).decode("ascii")}
    if kind == "truncated" and isinstance(marker.get("data"), str):
        if marker.get("encoding") == "text":
            return {**marker, "data": _strip_boundaries(marker["data"], content_type)}
    return marker


# -- the live request, in the stored shape -----------------------------------------------------

def http_request_view(method: str, url: str, headers: Any, body: bytes | str | None,
                      content_type: str | None, redactor: Redactor, max_body_bytes: int, *,
                      capture_payloads: bool = True,
                      body_note: str | None = None) -> dict[str, Any]:
    """A live HTTP request as the SDK would store it: `{"method", "url", "headers", "body"}`.

    The same calls as `tracelab.sdk.capture.record_http` (header, URL and body redaction, body
    encoding with the cap), plus the scrub of echoed secrets the recorder applies on submit,
    so the key of this view equals the key of the recorded event. `content_type` defaults to
    the Content-Type header; `body_note` marks a body the SDK does not read (a streamed upload).
    """
    found: set[str] = set()
    stored_headers, header_type = redactor.headers(headers, found)
    if not capture_payloads:
        stored_body: Any = not_captured("capture_payloads is off")
    elif body_note:
        stored_body = not_captured(body_note)
    else:
        stored_body = encode_body(body, content_type if content_type is not None else header_type,
                                  redactor, max_body_bytes, found)
    view = {"method": method.upper(), "url": redactor.url(url, found), "headers": stored_headers,
            "body": stored_body}
    return scrub(view, found) if found else view


# -- describing calls ------------------------------------------------------------------------

def describe(event: Mapping[str, Any]) -> str:
    """`POST api.stripe.com /v1/charges` for HTTP, `<target> <endpoint>` for the rest."""
    request = event.get("request")
    if isinstance(request, dict) and isinstance(request.get("url"), str) \
            and isinstance(request.get("method"), str):
        split = _split(request["url"])
        host = http_target(split.scheme, split.netloc) if split.netloc else \
            str(event.get("target") or "unknown")
        return f"{request['method'].upper()} {host} {split.path or '/'}"
    return f"{event.get('target') or 'unknown'} {event.get('endpoint') or 'unknown'}"


def _locator(parts: Mapping[str, Any]) -> tuple[Any, ...]:
    if "method" in parts:
        return (parts["kind"], parts["method"], parts["host"], parts["port"], parts["path"])
    return (parts["kind"], parts["target"], parts["endpoint"])


def _site(parts: Mapping[str, Any]) -> tuple[Any, ...]:
    return ("http", parts["host"]) if "method" in parts else ("call", parts["target"])


# -- explaining a miss -----------------------------------------------------------------------

def _show(value: Any) -> str:
    text = canonical_json(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 1] + "…"


def _member_path(path: str, name: str) -> str:
    return f"{path}.{name}" if re.fullmatch(r"[A-Za-z_$][\w$]*", name) else \
        f"{path}[{canonical_json(name)}]"


def json_differences(live: Any, recorded: Any, path: str = "$",
                     out: list[str] | None = None) -> list[str]:
    """`$.items[0].qty: 2 != 3`, `$.note: missing in the live call` (live first)."""
    out = [] if out is None else out
    if isinstance(live, dict) and isinstance(recorded, dict):
        for name in sorted(set(live) | set(recorded)):
            where = _member_path(path, name)
            if name not in live:
                out.append(f"{where}: missing in the live call")
            elif name not in recorded:
                out.append(f"{where}: not in the recording")
            else:
                json_differences(live[name], recorded[name], where, out)
    elif isinstance(live, list) and isinstance(recorded, list):
        for i in range(min(len(live), len(recorded))):
            json_differences(live[i], recorded[i], f"{path}[{i}]", out)
        if len(live) != len(recorded):
            out.append(f"{path}: {len(live)} items != {len(recorded)} items")
    elif canonical_json(live) != canonical_json(recorded):
        out.append(f"{path}: {_show(live)} != {_show(recorded)}")
    return out


def _pairs_differences(label: str, live: list[list[str]], recorded: list[list[str]]) -> list[str]:
    def grouped(pairs: list[list[str]]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for name, value in pairs:
            out.setdefault(name, []).append(value)
        return out

    a, b = grouped(live), grouped(recorded)
    out = []
    for name in sorted(set(a) | set(b)):
        if name not in a:
            out.append(f"{label} {name}: missing in the live call")
        elif name not in b:
            out.append(f"{label} {name}: not in the recording")
        elif a[name] != b[name]:
            shown = [_show(v[0] if len(v) == 1 else v) for v in (a[name], b[name])]
            out.append(f"{label} {name}: {shown[0]} != {shown[1]}")
    return out


def _text_difference(label: str, live: str, recorded: str) -> str:
    at = next((i for i, (x, y) in enumerate(zip(live, recorded)) if x != y),
              min(len(live), len(recorded)))
    start = max(0, at - 20)
    return (f"{label}: differs at character {at}: {_show(live[start:start + 40])} != "
            f"{_show(recorded[start:start + 40])} (lengths {len(live)} and {len(recorded)})")


def differences(live: Mapping[str, Any], recorded: Mapping[str, Any]) -> list[str]:
    """Which parts of two keys (`key_parts`) differ, part by part, live value first."""
    out: list[str] = []
    for part in sorted(set(live) | set(recorded), key=lambda p: _PART_ORDER.get(p, 99)):
        a, b = live.get(part), recorded.get(part)
        if canonical_json(a) == canonical_json(b):
            continue
        if part == "query":
            out += _pairs_differences("query", a or [], b or [])
        elif part == "headers":
            out += [f"header {name}: {_show(a.get(name))} != {_show(b.get(name))}"
                    for name in sorted(set(a or {}) | set(b or {}))
                    if (a or {}).get(name) != (b or {}).get(name)]
        elif part in ("body", "request") and isinstance(a, dict) and isinstance(b, dict) \
                and "method" in live and set(a) == set(b) and len(a) == 1:
            form = next(iter(a))
            if form == "json":
                out += [_body_label(d, part) for d in json_differences(a["json"], b["json"])]
            elif form == "form":
                out += _pairs_differences("body field", a["form"], b["form"])
            else:
                out.append(_text_difference(part, a["text"], b["text"]))
        elif part in ("body", "request") and isinstance(a, (dict, list)) \
                and isinstance(b, type(a)):
            out += [_body_label(d, part) for d in json_differences(a, b)]
        elif part in ("body", "request") and isinstance(a, str) and isinstance(b, str):
            out.append(_text_difference(part, a, b))
        elif part in ("body", "request") and (a is None) != (b is None):
            out.append(f"{part}: {'none in the live call' if a is None else _show(a)} != "
                       f"{'none in the recording' if b is None else _show(b)}")
        else:
            out.append(f"{part}: {_show(a)} != {_show(b)}")
    return out


def _body_label(difference: str, part: str) -> str:
    return f"{part} {difference}"


_PART_ORDER = {name: i for i, name in enumerate((
    "kind", "method", "scheme", "host", "port", "path", "query", "headers", "target", "endpoint",
    "from", "to", "cc", "bcc", "subject", "body", "request"))}


# -- the matcher -----------------------------------------------------------------------------

@dataclass
class Hit:
    """The recorded event that answers the call."""

    event: dict[str, Any]


@dataclass
class Miss:
    """No recorded answer is left for this call; `message` says why, naming the closest one."""

    message: str
    closest: dict[str, Any] | None
    differences: list[str] = field(default_factory=list)


class Matcher:
    """Recorded calls by key, each key a queue in recorded order; thread-safe, O(1) per call.

    `events` are the calls that may be answered (in start order); the caller leaves out what
    is never answered from a recording (e.g. `@trace` function spans).
    """

    def __init__(self, events: Iterable[dict[str, Any]],
                 options: MatchOptions = MatchOptions()) -> None:
        _rules(options)  # a bad ignore rule fails here, before any call is made
        self.options = options
        self._events: list[dict[str, Any]] = []
        self._parts: list[dict[str, Any]] = []
        self._queues: dict[str, deque[int]] = {}
        self._indexes: dict[str, list[int]] = {}
        self._by_locator: dict[tuple[Any, ...], list[int]] = {}
        self._by_site: dict[tuple[Any, ...], list[int]] = {}
        self._taken: set[int] = set()
        self._lock = threading.Lock()
        for event in events:
            parts = key_parts(event, options)
            key = canonical_json(parts)
            index = len(self._events)
            self._events.append(event)
            self._parts.append(parts)
            self._queues.setdefault(key, deque()).append(index)
            self._indexes.setdefault(key, []).append(index)
            self._by_locator.setdefault(_locator(parts), []).append(index)
            self._by_site.setdefault(_site(parts), []).append(index)

    def __len__(self) -> int:
        return len(self._events)

    def take(self, live: Mapping[str, Any]) -> Hit | Miss:
        """The next recorded answer for `live` (same shape as a stored event), or a Miss."""
        parts = key_parts(live, self.options)
        key = canonical_json(parts)
        with self._lock:
            queue = self._queues.get(key)
            if queue:
                index = queue.popleft()
                self._taken.add(index)
                return Hit(self._events[index])
            taken = set(self._taken)
        return self._miss(live, parts, key, taken)

    def peek(self, live: Mapping[str, Any]) -> Hit | Miss:
        """What `take(live)` would return now, without consuming the recorded answer.

        A fault that changes the recorded answer (an empty or cut body) answers with it but
        must leave it in place: the retry that follows gets the recorded answer intact.
        """
        parts = key_parts(live, self.options)
        key = canonical_json(parts)
        with self._lock:
            queue = self._queues.get(key)
            if queue:
                return Hit(self._events[queue[0]])
            taken = set(self._taken)
        return self._miss(live, parts, key, taken)

    def unused(self) -> list[dict[str, Any]]:
        """Recorded events no call has taken, in recorded order."""
        with self._lock:
            taken = set(self._taken)
        return [event for i, event in enumerate(self._events) if i not in taken]

    def _miss(self, live: Mapping[str, Any], parts: dict[str, Any], key: str,
              taken: set[int]) -> Miss:
        call = describe(live)
        same = self._indexes.get(key)
        if same:
            event = self._events[same[-1]]
            times = "once" if len(same) == 1 else f"{len(same)} times"
            message = (f"replay miss: {call} was recorded {times} and every recorded answer is "
                       f"used (last: event {event.get('event_id')}); a call made more often "
                       "than recorded is a miss, never a repeat")
            return Miss(message, event, [])
        if not self._events:
            return Miss(f"replay miss: {call}: the recording has no calls to answer from",
                        None, [])
        best: tuple[tuple[int, int, int], int, list[str]] | None = None
        for index in self._candidates(parts, taken):
            found = differences(parts, self._parts[index])
            rank = (len(found), index in taken, index)
            if best is None or rank < best[0]:
                best = (rank, index, found)
        assert best is not None
        _, index, found = best
        event = self._events[index]
        shown = found[:_MAX_DIFFERENCES]
        if len(found) > len(shown):
            shown.append(f"… and {len(found) - len(shown)} more")
        used = " (already used)" if index in taken else ""
        message = (f"replay miss: no recorded call matches {call}; closest recorded call: event "
                   f"{event.get('event_id')} {describe(event)}{used}; differs in "
                   f"(live != recorded): " + "; ".join(shown))
        return Miss(message, event, found)

    def _candidates(self, parts: dict[str, Any], taken: set[int]) -> list[int]:
        """Recorded calls worth comparing: same method+host+path, else same host, else any;
        at most `_MAX_CANDIDATES`, those not yet used first."""
        group = self._by_locator.get(_locator(parts)) or self._by_site.get(_site(parts)) or \
            range(len(self._events))
        fresh = list(islice((i for i in group if i not in taken), _MAX_CANDIDATES))
        if len(fresh) < _MAX_CANDIDATES:
            fresh += islice((i for i in group if i in taken), _MAX_CANDIDATES - len(fresh))
        return fresh
