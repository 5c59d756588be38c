"""Header values and URLs are redacted once per distinct string and the result is cached
(issue 16): the cached path must return exactly what the uncached path returns, secrets found
included (they scrub echoes elsewhere in the event), for every input, on a miss and on a hit.
"""
from __future__ import annotations

import re
import uuid

import requests
from conftest import LoopbackHTTP, RedisServer, read_events
from hypothesis import given, settings
from hypothesis import strategies as st

from tracelab.sdk.capture import _flat, _pairs
from tracelab.sdk.redaction import MARKER, Redactor

STRIPE = "sk_live_51FAKEcacheExample0000000000"
JWT = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkZha2UifQ."
       "FAKEsignature0cache000000000000000000")
AWS = "AKIAFAKECACHE0000042"
PLANTED = (STRIPE, JWT, AWS, f"Bearer {STRIPE}", "Basic dXNlcjpwYXNzd29yZA==",
           "-----BEGIN RSA PRIVATE KEY-----MIIEow", "IBAAKCAQEA-----END RSA PRIVATE KEY-----",
           f"session={STRIPE}; Path=/; HttpOnly", "https://bob:hunter2-pw@db.example.test/x",
           "plain-secret-value-0042")
NAMES = ("Authorization", "Set-Cookie", "Cookie", "X-Api-Key", "Content-Type", "User-Agent",
         "X-Request-Id", "X-Note", "Location", "stripeToken", "X-Internal-Ref", "content-type")
_TEXT = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
VALUES = st.one_of(_TEXT, st.sampled_from(PLANTED),
                   st.builds(lambda a, s, b: a + s + b, _TEXT, st.sampled_from(PLANTED), _TEXT))
PAIRS = st.lists(st.tuples(st.sampled_from(NAMES), VALUES), max_size=8)
USER_PATTERNS = st.sampled_from([(), (re.compile(r"(?i)internal"),)])


def _both(redactor: Redactor, reference: Redactor, items: object,
          given: object = None) -> None:
    """`redactor.headers(given)` (default: `items`) equals the uncached path on `items`."""
    expected_found: set[str] = set()
    expected = reference.headers_uncached(items, expected_found)
    for _ in range(2):  # a miss, then a hit
        found: set[str] = set()
        assert redactor.headers(items if given is None else given, found) == expected
        assert found == expected_found


@settings(max_examples=300, deadline=None)
@given(PAIRS, USER_PATTERNS)
def test_cached_headers_equal_uncached(pairs: list[tuple[str, str]],
                                       patterns: tuple[re.Pattern[str], ...]) -> None:
    """As pairs (names may repeat), as a dict, as bytes (httpx's raw headers), and as the one
    joined string or bytes a queued call holds (`capture._flat`)."""
    redactor, reference = Redactor(patterns), Redactor(patterns)
    _both(redactor, reference, pairs)
    _both(redactor, reference, dict(pairs))
    _both(redactor, reference, [(n.encode(), v.encode()) for n, v in pairs])
    for items in (pairs, [(n.encode(), v.encode()) for n, v in pairs], dict(pairs)):
        flat = _flat(items)
        assert isinstance(flat, (str, bytes)) or not pairs
        _both(redactor, reference, items, list(_pairs(flat)))


QUERY = st.lists(st.tuples(st.sampled_from(("q", "page", "api_key", "token", "access_token",
                                            "note", "password")), VALUES), max_size=4)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(("https://api.example.test", "http://alice:s3cret-pw@h.test:8080",
                        "https://h.test/hooks.slack.com/services/T000/B000/XXXXXXXXXXXXXXXX")),
       _TEXT, QUERY, st.one_of(st.just(""), _TEXT), USER_PATTERNS)
def test_cached_urls_equal_uncached(base: str, path: str, query: list[tuple[str, str]],
                                    fragment: str, patterns: tuple[re.Pattern[str], ...]) -> None:
    url = f"{base}/{path}"
    if query:
        url += "?" + "&".join(f"{n}={v}" for n, v in query)
    if fragment:
        url += f"#{fragment}"
    redactor, reference = Redactor(patterns), Redactor(patterns)
    expected_found: set[str] = set()
    expected = reference.url_uncached(url, expected_found)
    for _ in range(2):
        found: set[str] = set()
        assert redactor.url(url, found) == expected
        assert found == expected_found


def test_a_cached_value_holds_no_secret_and_found_is_refilled_on_every_hit() -> None:
    redactor = Redactor(())
    headers = {"Authorization": f"Bearer {STRIPE}", "X-Note": f"key {AWS} here"}
    for _ in range(3):
        found: set[str] = set()
        out, _ = redactor.headers(headers, found)
        assert out == {"Authorization": MARKER, "X-Note": f"key {MARKER} here"}
        assert {STRIPE, AWS} <= found
        found = set()
        assert redactor.url(f"https://h.test/p?token={STRIPE}&q=1", found) == \
            f"https://h.test/p?token={MARKER}&q=1"
        assert STRIPE in found


def test_caches_are_per_redactor_so_user_patterns_are_never_shared() -> None:
    headers = {"X-Internal-Ref": "ref-000-plain"}
    assert Redactor(()).headers(headers)[0] == headers
    assert Redactor((re.compile("(?i)internal"),)).headers(headers)[0] == \
        {"X-Internal-Ref": MARKER}
    assert Redactor(()).headers(headers)[0] == headers


def test_a_private_key_split_over_a_repeated_header_is_redacted_whole() -> None:
    """Values of a repeated name are joined before shapes are looked for: the key's second
    half alone has no shape, so the cached per-value results must not be joined instead."""
    pairs = [("X-Key", "-----BEGIN RSA PRIVATE KEY-----MIIEow"),
             ("X-Key", "IBAAKCAQEA-----END RSA PRIVATE KEY-----")]
    out, _ = Redactor(()).headers(pairs)
    assert out == {"X-Key": MARKER}


def test_echoes_of_cached_secrets_are_scrubbed_on_every_call(
        traced: RedisServer, loopback_http: LoopbackHTTP) -> None:
    """The loopback server echoes the URL and the body: the header's and the query's secret
    values (found through the caches, on a miss and on hits) are scrubbed from the echo."""
    token = f"plain-cache-token-{uuid.uuid4().hex}"
    key = f"plain-cache-key-{uuid.uuid4().hex}"
    for _ in range(3):
        requests.post(f"{loopback_http.url}/echo?api_key={key}", json={"note": f"{token}|{key}"},
                      headers={"Authorization": f"Bearer {token}"})
    events, raw = read_events(traced)
    assert len(events) == 3
    assert token.encode() not in raw and key.encode() not in raw
    assert all(e["request"]["body"]["note"] == f"{MARKER}|{MARKER}" for e in events)
