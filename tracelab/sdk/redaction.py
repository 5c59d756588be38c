"""Redaction: secrets are replaced by a fixed marker before an event leaves the process.

Two kinds of rules, applied everywhere a request, response or traced value can carry text:

- by *name*: headers, query parameters, JSON and form fields are judged by the words their
  names are made of, so `access_token`, `stripeToken` and `card[number]` are secrets while
  `max_tokens` and `total_tokens` (LLM usage counters people want to see) are not. Decisions
  are cached per name because the same few names repeat on every call.
- by *shape*: credential formats that secret scanners (gitleaks, detect-secrets) recognise on
  sight — `sk_live_…`, `AKIA…`, `ghp_…`, JWTs, private key blocks, `user:password@` in URLs —
  are replaced wherever they turn up, whatever the name next to them. `SHAPE_RULES` is the one
  definition; `tracelab scan` uses it too. A cheap pre-check (`_HINT_PARTS`) keeps
  text without any credential-looking prefix off the full expression.

Header values and URLs are redacted once per distinct string (a bounded LRU cache per
`Redactor`, keyed by the exact input, holding exactly what the uncached path returns plus the
secret values it found, which scrub echoes); bodies differ call to call and are not cached.

The marker is a constant, never a hash: a hash of a short secret can be brute-forced, and a
constant keeps recordings comparable. spec/redaction/ holds the examples every producer (this
SDK, sdk-ts, the proxy) is tested against.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from functools import lru_cache
from itertools import chain
from typing import Any
from urllib.parse import unquote_plus

import orjson

MARKER = "[REDACTED]"

SECRET_HEADERS = frozenset({
    "authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "api-key",
    "x-amz-security-token", "ocp-apim-subscription-key", "x-goog-api-key", "stripe-key",
    "x-auth-token", "x-auth-key", "x-functions-key", "private-token", "x-vault-token",
})
SECRET_WORDS = frozenset({
    "password", "passwd", "pwd", "secret", "token", "authorization", "apikey", "signature",
    "credential", "credentials",
})
SECRET_WORD_PAIRS = frozenset({
    ("api", "key"), ("access", "key"), ("private", "key"), ("client", "secret"),
    ("card", "number"), ("secret", "key"), ("session", "token"),
})
_WORD = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")
_CACHE_LIMIT = 4096
# Header values and URLs repeat call after call (the same Authorization, Content-Type, URL):
# their redaction is cached per exact string, up to this many of each, up to this length.
_RESULT_CACHE_SIZE = 1024
_RESULT_CACHE_CHARS = 2048
# Each default rule (SECRET_HEADERS, SECRET_WORDS, SECRET_WORD_PAIRS) contains one of these.
_SECRET_FRAGMENTS = (b"passw", b"pwd", b"secret", b"token", b"authoriz", b"signature",
                     b"credential", b"key", b"number", b"cookie")
_CONTAINERS = (dict, list)
_CONTAINER_SET = frozenset(_CONTAINERS)
_TEXT_OR_CONTAINER = (str, dict, list)
_ONLY_DICTS = {dict}
_chain = chain.from_iterable
_MIN_SCRUB_CHARS = 6  # shorter values ("1", "true") would scrub innocent text
_MAX_DEPTH = 200

# Name/value pairs inside free text: JSON members and key=value pairs. Used for text bodies and
# for the prefix of a truncated body, where the structure cannot be parsed whole.
_JSON_MEMBER = re.compile(
    r'"((?:[^"\\]|\\.){1,200})"(\s*:\s*)("(?:[^"\\]|\\.)*"|-?[\d.eE+-]+|true|false|null)')
_KEY_VALUE = re.compile(r"(?<![\w.\-\[\]])([\w.\-\[\]]{1,200})(=)([^&\s\"',;]*)")
# A JSON string member left open at the very end of a cut text: `"password": "hunter2-SUP`.
_OPEN_MEMBER = re.compile(r'"((?:[^"\\]|\\.){1,200})"(\s*:\s*")((?:[^"\\]|\\.)*\\?)\Z')
_TOKEN = "[A-Za-z0-9_.~+/=-]"

# Credential shapes: (rule id, pattern). When the pattern has a group, the group is the secret
# (the rest is context that stays); otherwise the whole match is. Patterns use only syntax that
# means the same in JavaScript (sdk-ts copies them), except `\Z` (JS: `$` without the m flag).
SHAPE_RULES: tuple[tuple[str, str], ...] = (
    ("private-key", r"-----BEGIN[ A-Z0-9_-]{0,100}PRIVATE KEY(?: BLOCK)?-----(?:[\s\S]*?"
                    r"-----END[ A-Z0-9_-]{0,100}PRIVATE KEY(?: BLOCK)?-----|[\s\S]*\Z)"),
    ("url-userinfo", r"(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]*://[^\s/?#@:\"'<>]*:"
                     r"([^\s/?#@\"'<>]+)@"),
    ("bearer", r"(?<![A-Za-z0-9])(?:[Bb]earer|BEARER|[Bb]asic|BASIC)[ \t]+"
               r"(?=[A-Za-z]*[0-9_.~+/=-])(" + _TOKEN + r"{6,})"),
    ("jwt", r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"),
    ("aws-access-key-id", r"(?<![A-Za-z0-9])(?:AKIA|ASIA|ABIA|ACCA|A3T[A-Z0-9])[A-Z0-9]{16}"
                          r"(?![A-Za-z0-9])"),
    ("stripe-key", r"(?<![A-Za-z0-9])(?:sk|rk)_(?:live|test|prod)_[A-Za-z0-9]{10,}"),
    ("stripe-webhook-secret", r"(?<![A-Za-z0-9])whsec_[A-Za-z0-9]{20,}"),
    ("anthropic-key", r"(?<![A-Za-z0-9_-])sk-ant-[A-Za-z0-9_-]{20,}"),
    ("openai-key", r"(?<![A-Za-z0-9_-])sk-[A-Za-z0-9_-]{20,}"),
    ("github-token", r"(?<![A-Za-z0-9_])gh[pousr]_[A-Za-z0-9]{20,}"),
    ("github-fine-grained-pat", r"(?<![A-Za-z0-9_])github_pat_[A-Za-z0-9_]{22,}"),
    ("gitlab-token", r"(?<![A-Za-z0-9_])glpat-[A-Za-z0-9_-]{20,}"),
    ("slack-token", r"(?<![A-Za-z0-9])xox[abpors]-[A-Za-z0-9-]{10,}"),
    ("slack-webhook", r"hooks\.slack\.com/(?:services|workflows|triggers)/([A-Za-z0-9+/]{20,})"),
    ("google-api-key", r"(?<![A-Za-z0-9_-])AIza[A-Za-z0-9_-]{30,}"),
    ("sendgrid-key", r"(?<![A-Za-z0-9])SG\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}"),
    ("huggingface-token", r"(?<![A-Za-z0-9_])hf_[A-Za-z0-9]{30,}"),
    ("npm-token", r"(?<![A-Za-z0-9_])npm_[A-Za-z0-9]{36,}"),
)
# What every rule above needs to find in the text (a superset: a hit only means "look closer"):
# one pattern per leading character, each starting with that literal character, mostly a
# rare one (`_ - . A B b`). Text of `_SPLIT_HINT_CHARS` or more is searched with each pattern
# apart, so `re` skips every other position in a tight C loop (3x faster than one alternation
# on 4 KB); shorter text with one alternation of them all (one call instead of six: 10x faster
# on an 8-character value). URL userinfo needs `://`, checked apart.
_HINT_PARTS = (
    r"_(?:live_|test_|prod_|pat_|(?<=gh[pousr]_)|(?<=hf_)|(?<=npm_)|(?<=whsec_))",
    r"-(?:----BEGIN|(?<=sk-)|(?<=glpat-)|(?<=xox[abpors]-))",
    r"\.(?:eyJ|slack\.com/|(?<=SG\.))",
    r"A(?:KIA|SIA|BIA|CCA|3T|Iza)",
    r"B(?:earer|EARER|asic|ASIC)",
    r"b(?:earer|asic)",
)
_USERINFO_HINT_PATTERN = r"://[^\s/\"]*@"
# A credential prefix at the very end of a cut text: the rest of the value was cut off.
_TAIL_RULES = re.compile(
    r"(?:(?<![A-Za-z0-9_-])(?:AKIA|ASIA|ABIA|ACCA|(?:sk|rk)_(?:live|test|prod)_|whsec_|sk-|"
    r"gh[pousr]_|github_pat_|glpat-|xox[abpors]-|AIza|SG\.|eyJ|hf_|npm_)" + _TOKEN + r"*"
    r"|(?<![A-Za-z0-9])(?:[Bb]earer|BEARER|[Bb]asic|BASIC)[ \t]+(" + _TOKEN + r"+)"
    # The lookbehind (as in `url-userinfo`) keeps the search linear: without it the URL
    # alternative is tried at every position of a long run of letters, each try scanning to
    # the end of the run.
    r"|(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]*://[^\s/?#@:\"'<>]*:([^\s/?#@\"'<>]+))\Z")


def _compile_shapes() -> tuple[re.Pattern[str], dict[str, tuple[str, int]]]:
    """One alternation of all rules, and per rule's group name: (rule id, secret group)."""
    parts: list[str] = []
    groups: dict[str, tuple[str, int]] = {}
    index = 0
    for i, (rule, pattern) in enumerate(SHAPE_RULES):
        inner = re.compile(pattern).groups
        index += 1
        groups[f"r{i}"] = (rule, index + 1 if inner else index)
        parts.append(f"(?P<r{i}>{pattern})")
        index += inner
    return re.compile("|".join(parts)), groups


SHAPES, _SHAPE_GROUPS = _compile_shapes()
_USERINFO_HINT = re.compile(_USERINFO_HINT_PATTERN).search
_USERINFO_HINT_BYTES = re.compile(_USERINFO_HINT_PATTERN.encode()).search
_HINTS = tuple(re.compile(part).search for part in _HINT_PARTS)
_HINTS_BYTES = tuple(re.compile(part.encode()).search for part in _HINT_PARTS)
_HINT_ALL = re.compile("|".join(_HINT_PARTS)).search
_HINT_ALL_BYTES = re.compile("|".join(_HINT_PARTS).encode()).search
_SPLIT_HINT_CHARS = 256
# Per rule, what any match of it contains (a superset, like the hints above). Text whose
# hints name only some rules is scanned with an alternation of those rules alone, in their
# order: a rule that cannot match anywhere in the text changes nothing in the alternation's
# result, and each rule left out saves a try at every position of the text.
_RULE_HINTS = {
    "private-key": r"-----BEGIN", "url-userinfo": _USERINFO_HINT_PATTERN,
    "bearer": r"B(?:earer|EARER|asic|ASIC)|b(?:earer|asic)", "jwt": r"\.eyJ",
    "aws-access-key-id": r"A(?:KIA|SIA|BIA|CCA|3T)", "stripe-key": r"_(?:live|test|prod)_",
    "stripe-webhook-secret": r"whsec_", "anthropic-key": r"sk-", "openai-key": r"sk-",
    "github-token": r"_(?<=gh[pousr]_)", "github-fine-grained-pat": r"_pat_",
    "gitlab-token": r"glpat-", "slack-token": r"-(?<=xox[abpors]-)",
    "slack-webhook": r"\.slack\.com/", "google-api-key": r"AIza", "sendgrid-key": r"SG\.",
    "huggingface-token": r"hf_", "npm-token": r"npm_",
}
_RULE_HINT_SEARCH = tuple(re.compile(_RULE_HINTS[rule]).search for rule, _ in SHAPE_RULES)
_SUBSET_LIMIT = 256
_SUBSETS: dict[tuple[int, ...], tuple[re.Pattern[str], dict[str, tuple[str, int]]]] = {}


def _compile_subset(indexes: tuple[int, ...]) -> tuple[re.Pattern[str],
                                                      dict[str, tuple[str, int]]]:
    """`_compile_shapes` for some rules only (in their order); cached per set of rules."""
    compiled = _SUBSETS.get(indexes)
    if compiled is None:
        if len(_SUBSETS) >= _SUBSET_LIMIT:  # hostile text must not grow it forever
            _SUBSETS.clear()
        parts: list[str] = []
        groups: dict[str, tuple[str, int]] = {}
        index = 0
        for i in indexes:
            rule, pattern = SHAPE_RULES[i]
            inner = re.compile(pattern).groups
            index += 1
            groups[f"r{i}"] = (rule, index + 1 if inner else index)
            parts.append(f"(?P<r{i}>{pattern})")
            index += inner
        compiled = _SUBSETS[indexes] = (re.compile("|".join(parts)), groups)
    return compiled


def _shapes_for(text: str) -> tuple[re.Pattern[str] | None, dict[str, tuple[str, int]]]:
    """The alternation of the rules whose hints are in `text` (all rules: `SHAPES`; none:
    None)."""
    indexes = tuple(i for i, hint in enumerate(_RULE_HINT_SEARCH) if hint(text) is not None)
    if not indexes:
        return None, {}
    if len(indexes) == len(SHAPE_RULES):
        return SHAPES, _SHAPE_GROUPS
    return _compile_subset(indexes)


def may_have_shapes(text: str) -> bool:
    """False when no credential shape can be in `text` (the cheap pre-check)."""
    if len(text) < _SPLIT_HINT_CHARS:
        if _HINT_ALL(text) is not None:
            return True
    else:
        for hint in _HINTS:
            if hint(text) is not None:
                return True
    return "@" in text and "://" in text and _USERINFO_HINT(text) is not None


def may_hold_shapes(raw: bytes) -> bool:
    """`may_have_shapes` for bytes (a raw body, before it is parsed)."""
    if len(raw) < _SPLIT_HINT_CHARS:
        if _HINT_ALL_BYTES(raw) is not None:
            return True
    else:
        for hint in _HINTS_BYTES:
            if hint(raw) is not None:
                return True
    return b"@" in raw and b"://" in raw and _USERINFO_HINT_BYTES(raw) is not None


def find_shapes(text: str) -> list[tuple[str, int, int]]:
    """(rule id, start, end) of each secret-shaped part of `text` that is not already redacted."""
    if not may_have_shapes(text):
        return []
    shapes, shape_groups = _shapes_for(text)
    if shapes is None:
        return []
    found = []
    for m in shapes.finditer(text):
        rule, group = shape_groups[m.lastgroup or ""]
        start, end = m.span(group)
        if text[start:end] != MARKER:
            found.append((rule, start, end))
    return found


def redact_shapes(text: str, found: set[str] | None = None) -> str:
    """Every secret-shaped part of `text` replaced by the marker."""
    if not may_have_shapes(text):
        return text
    shapes, shape_groups = _shapes_for(text)
    if shapes is None:
        return text

    def replace(m: re.Match[str]) -> str:
        group = shape_groups[m.lastgroup or ""][1]
        secret = m.group(group)
        if secret == MARKER:
            return m.group(0)
        remember(found, secret)
        offset = m.start()
        whole = m.group(0)
        return whole[: m.start(group) - offset] + MARKER + whole[m.end(group) - offset:]

    return shapes.sub(replace, text)


def name_words(name: str) -> list[str]:
    """`X-Api-Key` -> ['x', 'api', 'key']; `stripeToken` -> ['stripe', 'token']."""
    return [w.lower() for w in _WORD.findall(name)]


def _counts(words: list[str], i: int) -> bool:
    """`token` in `promptTokenCount`, `cachedContentTokenCount`: a counter (Gemini's usage), not
    a secret, like `prompt_tokens`."""
    return words[i] == "token" and i + 1 < len(words) and words[i + 1] in ("count", "counts")


class Redactor:
    """Decides which names are secret and replaces their values by `MARKER`."""

    def __init__(self, patterns: Iterable[re.Pattern[str]] = ()) -> None:
        self.patterns = tuple(patterns)
        self._decisions: dict[str, bool] = {}
        self._safe: set[str] = set()  # the names decided harmless, for C-level subset checks
        # Per exact input: (what the uncached path returns, the secret values it found). The
        # key holds whatever secret the input held; the result never does. Least recently
        # used entries go first, so a stream of one-off values (request ids, dates) cannot
        # grow the caches or push out for long the values that repeat.
        self._header_value = lru_cache(maxsize=_RESULT_CACHE_SIZE)(self._redact_header_value)
        self._url = lru_cache(maxsize=_RESULT_CACHE_SIZE)(self._redact_url)

    def is_secret(self, name: str) -> bool:
        decision = self._decisions.get(name)
        if decision is None:
            decision = self._judge(name)
            if len(self._decisions) >= _CACHE_LIMIT:  # hostile input must not grow it forever
                self._decisions.clear()
                self._safe.clear()
            self._decisions[name] = decision
            if not decision:
                self._safe.add(name)
        return decision

    def _judge(self, name: str) -> bool:
        if name.lower() in SECRET_HEADERS:
            return True
        words = name_words(name)
        if any(w in SECRET_WORDS and not _counts(words, i) for i, w in enumerate(words)):
            return True
        if any(pair in SECRET_WORD_PAIRS for pair in zip(words, words[1:])):
            return True
        return any(p.search(name) for p in self.patterns)

    # -- headers -------------------------------------------------------------------------
    def headers(self, items: Mapping[str, Any] | Iterable[tuple[Any, Any]] | None,
                found: set[str] | None = None) -> tuple[dict[str, str], str | None]:
        """A redacted copy and the Content-Type; repeated names are joined with ', '.

        This runs twice per HTTP call, so each value's redaction comes from a cache per exact
        (name, value) pair: Authorization, Content-Type and the like repeat call after call,
        and a miss costs what the uncached path costs. Pairs that repeat a name take
        `headers_uncached`: a shape there is looked for in the joined value, which can differ
        from the values' own redactions joined.
        """
        out: dict[str, str] = {}
        content_type = None
        if items is None:
            return out, None
        pairs, unique = header_pairs(items)
        if not unique:
            pairs = list(pairs)
        cached = self._header_value
        found_here: list[tuple[str, ...]] = []
        for name, value in pairs:
            if type(name) is not str:
                name = name.decode("latin-1") if isinstance(name, bytes) else str(name)
            if type(value) is not str:
                value = value.decode("latin-1") if isinstance(value, bytes) else str(value)
            if len(value) <= _RESULT_CACHE_CHARS:
                redacted, secrets = cached(name, value)
            else:
                redacted, secrets = self._redact_header_value(name, value)
            if secrets:
                found_here.append(secrets)
            if content_type is None and len(name) == 12 and name.lower() == "content-type" \
                    and not self.is_secret(name):
                content_type = value
            out[name] = redacted
        if not unique and len(out) < len(pairs):  # type: ignore[arg-type]
            return self.headers_uncached(pairs, found)
        if found is not None:
            for secrets in found_here:
                found.update(secrets)
        return out, content_type

    def _redact_header_value(self, name: str, value: str) -> tuple[str, tuple[str, ...]]:
        """One header's redacted value and the secret values found in it (cached)."""
        found: set[str] = set()
        if self.is_secret(name):
            remember_header(found, name, value)
            return MARKER, tuple(found)
        return redact_shapes(value, found), tuple(found)

    def headers_uncached(self, items: Mapping[str, Any] | Iterable[tuple[Any, Any]] | None,
                         found: set[str] | None = None) -> tuple[dict[str, str], str | None]:
        """`headers` without the cache: the reference its cached path must equal."""
        out: dict[str, str] = {}
        content_type = None
        if items is None:
            return out, None
        pairs, unique = header_pairs(items)
        for name, value in pairs:
            if type(name) is not str:
                name = name.decode("latin-1") if isinstance(name, bytes) else str(name)
            if type(value) is not str:
                value = value.decode("latin-1") if isinstance(value, bytes) else str(value)
            if self.is_secret(name):
                if found is not None:
                    remember_header(found, name, value)
                value = MARKER
            elif content_type is None and len(name) == 12 and name.lower() == "content-type":
                content_type = value
            if unique:
                out[name] = value
            else:
                previous = out.get(name)
                out[name] = value if previous is None else f"{previous}, {value}"
        if may_have_shapes("\n".join(out.values())):  # one check for all values
            for name, value in out.items():
                out[name] = redact_shapes(value, found)
        return out, content_type

    # -- URLs and form bodies -------------------------------------------------------------
    def url(self, url: str, found: set[str] | None = None) -> str:
        """Redacts secret query parameters, the password of `user:password@host` and shapes.

        Cached per exact URL (the same URLs repeat call after call); `url_uncached` is the
        reference the cache must equal.
        """
        if type(url) is str and len(url) <= _RESULT_CACHE_CHARS:
            redacted, secrets = self._url(url)
        else:
            redacted, secrets = self._redact_url(url)
        if secrets and found is not None:
            found.update(secrets)
        return redacted

    def _redact_url(self, url: str) -> tuple[str, tuple[str, ...]]:
        """A URL's redaction and the secret values found in it (cached)."""
        found: set[str] = set()
        return self.url_uncached(url, found), tuple(found)

    def url_uncached(self, url: str, found: set[str] | None = None) -> str:
        """`url` without the cache."""
        url = redact_shapes(url, found)
        if "?" not in url and "@" not in url:
            return url
        base, sep, query = url.partition("?")
        query, hash_sep, fragment = query.partition("#")
        scheme, ssep, rest = base.partition("://")
        if ssep:
            netloc, slash, path = rest.partition("/")
            userinfo, at, hostport = netloc.rpartition("@")
            if at and ":" in userinfo and userinfo.partition(":")[2] != MARKER:
                remember(found, userinfo.partition(":")[2])
                netloc = f"{userinfo.partition(':')[0]}:{MARKER}@{hostport}"
            base = f"{scheme}://{netloc}{slash}{path}"
        if sep:
            query = self.form(query, found, shapes=False)  # shapes: done for the whole URL
        return f"{base}{sep}{query}{hash_sep}{fragment}"

    def form(self, text: str, found: set[str] | None = None, shapes: bool = True) -> str:
        """`a=1&password=x` -> `a=1&password=[REDACTED]`, keeping the original encoding."""
        if shapes:
            text = redact_shapes(text, found)
        parts = text.split("&")
        changed = False
        for i, part in enumerate(parts):
            name, eq, value = part.partition("=")
            if eq and self.is_secret(unquote_plus(name)):
                remember(found, unquote_plus(value))
                parts[i] = f"{name}={MARKER}"
                changed = True
        return "&".join(parts) if changed else text

    def may_hold_secrets(self, raw: bytes) -> bool:
        """False when no name in `raw` can be judged secret, so a parsed body needs no walk.

        Every default rule needs one of `_SECRET_FRAGMENTS` in the name (lower-cased); JSON
        `\\u` escapes and user patterns can hide a name from a byte search, so they always
        say yes.
        """
        if self.patterns or b"\\u" in raw:
            return True
        lowered = raw.lower()
        for fragment in _SECRET_FRAGMENTS:
            if fragment in lowered:
                return True
        return False

    # -- structured values ------------------------------------------------------------------
    def value(self, obj: Any, found: set[str] | None = None, depth: int = 0) -> Any:
        """Redacts secret members at any depth, in place (callers pass data they own).

        Written for speed: it walks every parsed JSON body of every call. A dict whose names
        are all known to be harmless (`keys() <= self._safe`, one C-level check) and whose
        members are all leaves (`isdisjoint(map(type, ...))`, another) costs no Python loop.
        """
        if depth > _MAX_DEPTH:
            return "[TRUNCATED: nested deeper than 200 levels]"
        kind = type(obj)
        if kind is dict:
            if not obj.keys() <= self._safe:
                self._redact_members(obj, found)
            if not _CONTAINER_SET.isdisjoint(map(type, obj.values())):
                for key, member in obj.items():
                    if type(member) in _CONTAINERS:
                        obj[key] = self.value(member, found, depth + 1)
        elif kind is list:
            kinds = set(map(type, obj))
            if _CONTAINER_SET.isdisjoint(kinds):
                return obj
            safe = self._safe
            if kinds == _ONLY_DICTS and safe.issuperset(_chain(obj)) and \
                    _CONTAINER_SET.isdisjoint(map(type, _chain(map(dict.values, obj)))):
                return obj  # records of harmless leaves, checked without a Python loop
            for i, member in enumerate(obj):
                kind = type(member)
                if kind is dict:
                    if member.keys() <= safe and \
                            _CONTAINER_SET.isdisjoint(map(type, member.values())):
                        continue  # a record of harmless leaves: the common case in lists
                    obj[i] = self.value(member, found, depth + 1)
                elif kind is list:
                    obj[i] = self.value(member, found, depth + 1)
        return obj

    def _redact_members(self, obj: dict[Any, Any], found: set[str] | None) -> None:
        """Replace the values of `obj`'s secret members (not None) by the marker."""
        decisions = self._decisions
        for key, member in obj.items():
            secret = decisions.get(key)
            if secret is None:
                secret = type(key) is str and self.is_secret(key)
            if secret and member is not None:
                if found is not None and type(member) in (str, int):
                    remember(found, str(member))
                obj[key] = MARKER

    def text(self, text: str, found: set[str] | None = None) -> str:
        """Redaction of free text: JSON members and key=value pairs by name, shapes anywhere."""
        def member(m: re.Match[str]) -> str:
            if not self.is_secret(m.group(1)):
                return m.group(0)
            remember(found, m.group(3).strip('"'))
            return f'"{m.group(1)}"{m.group(2)}"{MARKER}"'

        def pair(m: re.Match[str]) -> str:
            if not self.is_secret(m.group(1)):
                return m.group(0)
            remember(found, m.group(3))
            return f"{m.group(1)}={MARKER}"

        if '"' in text:
            text = _JSON_MEMBER.sub(member, text)
        if "=" in text:
            text = _KEY_VALUE.sub(pair, text)
        return redact_shapes(text, found)

    def cut(self, text: str, found: set[str] | None = None) -> str:
        """`text` for the first bytes of a longer text: also what was cut off in mid-value.

        A JSON string left open at the end (`"password": "hunt`), a credential prefix
        (`sk_live_51F`, `eyJhbGci`), a `Bearer` credential or a URL password at the very end
        are redacted even though they are incomplete: the full value would have been.
        """
        text = self.text(text, found)
        m = _OPEN_MEMBER.search(text)
        if m and m.group(3) != MARKER and self.is_secret(m.group(1)):
            remember(found, m.group(3))
            text = text[: m.start(3)] + MARKER
        m = _TAIL_RULES.search(text)
        if m:
            group = m.lastindex or 0
            if m.group(group) != MARKER and not m.group(group).startswith(MARKER):
                text = text[: m.start(group)] + MARKER
        return text

    def shapes_in(self, obj: Any, found: set[str] | None = None, depth: int = 0) -> Any:
        """Replace secret-shaped parts of every string in a parsed JSON value, in place."""
        kind = type(obj)
        if kind is str:
            return redact_shapes(obj, found)
        if depth > _MAX_DEPTH:
            return obj
        if kind is dict:
            for key, member in obj.items():
                if type(member) in _TEXT_OR_CONTAINER:
                    obj[key] = self.shapes_in(member, found, depth + 1)
        elif kind is list:
            for i, member in enumerate(obj):
                if type(member) in _TEXT_OR_CONTAINER:
                    obj[i] = self.shapes_in(member, found, depth + 1)
        return obj


def header_pairs(items: Mapping[str, Any] | Iterable[tuple[Any, Any]]
                  ) -> tuple[Iterable[Any], bool]:
    """The (name, value) pairs of headers, and whether their names are unique (a mapping).

    requests' CaseInsensitiveDict is read through its internal store: its generic Mapping
    iteration costs several microseconds per call.
    """
    store = getattr(items, "_store", None)
    if type(store) is dict or type(store).__name__ == "OrderedDict":
        return store.values(), True  # type: ignore[union-attr]
    if isinstance(items, Mapping):
        return items.items(), True
    return items, False


def remember(found: set[str] | None, value: str) -> None:
    """Note a redacted value so `scrub` can remove echoes of it elsewhere in the event."""
    if found is not None and len(value) >= _MIN_SCRUB_CHARS:
        found.add(value)


def remember_header(found: set[str], name: str, value: str) -> None:
    """Like `remember`, plus the credential inside `Bearer …` and the values of cookies."""
    remember(found, value)
    lowered = name.lower()
    if lowered in ("cookie", "set-cookie"):
        pairs = value.split(";")
        if lowered == "set-cookie":  # `name=value; Path=/; HttpOnly`: attributes are not secret
            pairs = pairs[:1]
        for pair in pairs:
            remember(found, pair.partition("=")[2].strip())
        return
    scheme, space, credential = value.partition(" ")  # "Bearer sk-…" -> "sk-…"
    if space and scheme.isalpha() and " " not in credential:
        remember(found, credential)


def scrub_json_bytes(payload: bytes, found: set[str]) -> bytes:
    """Replace echoes of already-redacted values in a serialized event.

    Servers echo what they were sent (error messages quoting an API key, debug endpoints):
    a value known to be secret is removed wherever it turns up. Working on the serialized
    bytes costs a substring search per secret instead of a walk over the whole event. A
    secret's JSON-escaped form has no bare quote, so it can only match inside strings or as
    a bare literal; values that could be bare literals (numbers) or our own field names take
    the structural path (`scrub`) instead, so the result is always valid JSON.
    """
    original = payload
    plan = _PLANS.get(key := frozenset(found))
    if plan is None:  # the same few secrets turn up on every call: plan their search once
        if len(_PLANS) >= _PLAN_LIMIT:
            _PLANS.clear()
        plan = _PLANS[key] = _scrub_plan(found)
    present: list[bool] = []
    mark = present.append
    hits = None
    for value, needle, fast, contained in plan:
        # A needle holding a shorter one that is absent is absent too: no search needed.
        if contained and False in map(present.__getitem__, contained):
            mark(False)
        elif needle in payload:
            mark(True)
            hits = [(value, needle, fast)] if hits is None else hits + [(value, needle, fast)]
        else:
            mark(False)
    if hits is None:
        return payload
    slow: list[str] = []
    for value, needle, fast in reversed(hits):  # longest first: `Bearer sk-…` before `sk-…`
        if fast:
            payload = payload.replace(needle, _MARKER_BYTES)
        else:
            slow.append(value)
    if payload is not original:
        try:  # a needle right after a backslash would have broken an escape sequence
            orjson.loads(payload)
        except orjson.JSONDecodeError:
            payload, slow = original, list(found)
    if slow:
        payload = orjson.dumps(scrub(orjson.loads(payload), set(slow)))
    return payload


def _scrub_plan(found: set[str]) -> tuple[tuple[str, bytes, bool, tuple[int, ...]], ...]:
    """(value, JSON-escaped needle, replace-in-bytes is safe, indexes of shorter needles inside).

    Ordered by needle length, so a needle's contained needles come before it.
    """
    rows = sorted(((orjson.dumps(v)[1:-1], v) for v in found), key=lambda r: (len(r[0]), r[0]))
    plan = []
    for i, (needle, value) in enumerate(rows):
        fast = _STRUCTURAL.search(value) is not None and needle not in _EVENT_VOCABULARY
        contained = tuple(j for j in range(i) if rows[j][0] in needle)
        plan.append((value, needle, fast, contained))
    return tuple(plan)


_PLANS: dict[frozenset[str], tuple[tuple[str, bytes, bool, tuple[int, ...]], ...]] = {}
_PLAN_LIMIT = 256
_MARKER_BYTES = MARKER.encode()
# A value with a character that no bare JSON literal (number, true, false, null) contains.
_STRUCTURAL = re.compile(r"[^0-9.eE+\-]")
_EVENT_VOCABULARY = (
    b"event_id schema workflow run_id service source kind target endpoint started_at latency_ms "
    b"status request response span_id parent_id status_code error tags host pid sdk_version "
    b"method url headers body type message $tracelab binary truncated not_captured size "
    b"encoding data base64 reason args return true false null sdk-py http llm function custom")


def scrub(obj: Any, found: set[str], depth: int = 0) -> Any:
    """Replace every echo of an already-redacted secret value inside strings of `obj`.

    Servers echo what they were sent (error messages quoting an API key, debug endpoints,
    redirects carrying a token): the value is known to be secret, wherever it turns up.
    """
    if isinstance(obj, str):
        for value in found:
            if value in obj:
                obj = obj.replace(value, MARKER)
        return obj
    if depth > _MAX_DEPTH:
        return obj
    if isinstance(obj, dict):
        for key, member in obj.items():
            obj[key] = scrub(member, found, depth + 1)
    elif isinstance(obj, list):
        for i, member in enumerate(obj):
            obj[i] = scrub(member, found, depth + 1)
    return obj
