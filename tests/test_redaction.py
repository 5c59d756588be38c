"""Secrets planted everywhere a request or response can carry them never reach the sink's bytes."""
from __future__ import annotations

from pathlib import Path

import pytest
import requests
from conftest import LoopbackHTTP, RedisServer, read_events

import tracelab
from tracelab.sdk.redaction import MARKER, Redactor

SECRETS = {
    "Authorization": "Bearer HDR-AUTH-SECRET-001",
    "Proxy-Authorization": "Basic HDR-PROXY-SECRET-002",
    "Cookie": "session=HDR-COOKIE-SECRET-003",
    "X-Api-Key": "HDR-APIKEY-SECRET-004",
    "Api-Key": "HDR-APIKEY-SECRET-005",
    "X-Amz-Security-Token": "HDR-AMZ-SECRET-006",
    "X-Internal-Credential-Id": "HDR-CUSTOM-SECRET-007",
}
QUERY = {"api_key": "Q-APIKEY-101", "token": "Q-TOKEN-102", "password": "Q-PASSWORD-103",
         "X-Amz-Signature": "Q-AMZSIG-104"}
JSON_BODY = {
    "user": {"name": "ada", "password": "B-PASSWORD-201", "card": {"card_number": "4242424242424242"}},
    "items": [{"access_key": "B-ACCESSKEY-202"}, {"nested": [{"client_secret": "B-CLIENT-203"}]}],
    "private_key": "B-PRIVATE-204", "apikey": "B-APIKEY-205", "passwd": "B-PASSWD-206",
    "secret": "B-SECRET-207", "authorization": "B-AUTH-208", "x_internal_pin": "B-CUSTOM-209",
}
FORM_BODY = {"card[number]": "4000056655665556", "password": "F-PASSWORD-301", "amount": "100"}
RESPONSE_SECRETS = ["RESP-TOKEN-SECRET-123", "RESP-PASSWORD-456", "RESP-COOKIE-789"]


def _all_secret_values() -> list[str]:
    values = [v.split(" ", 1)[-1].split("=", 1)[-1] for v in SECRETS.values()]
    values += list(QUERY.values()) + list(FORM_BODY.values())[:2] + RESPONSE_SECRETS
    values += ["B-PASSWORD-201", "4242424242424242", "B-ACCESSKEY-202", "B-CLIENT-203",
               "B-PRIVATE-204", "B-APIKEY-205", "B-PASSWD-206", "B-SECRET-207", "B-AUTH-208",
               "B-CUSTOM-209"]
    return values


def _plant_everything(url: str) -> None:
    requests.post(f"{url}/v1/charges", params=QUERY, json=JSON_BODY, headers=SECRETS)
    requests.post(f"{url}/v1/tokens", data=FORM_BODY, headers=SECRETS)
    requests.get(f"{url}/secret", headers=SECRETS)
    requests.get(f"http://ada:URL-PASSWORD-401@127.0.0.1:{url.rsplit(':', 1)[1]}/echo")


def test_no_secret_reaches_the_redis_stream(redis_server: RedisServer, loopback_http: LoopbackHTTP,
                                            tracelab_home: Path) -> None:
    tracelab.init(workflow_name="redaction", redis_url=redis_server.url,
                  redact=[r"x[-_]internal"])
    try:
        _plant_everything(loopback_http.url)
        _, raw = read_events(redis_server)
    finally:
        tracelab.shutdown()
    assert raw.count(b'"kind":"http"') == 4
    leaked = [s for s in _all_secret_values() + ["URL-PASSWORD-401"] if s.encode() in raw]
    assert leaked == []
    assert raw.count(MARKER.encode()) >= 30
    # The loopback server did receive the real values: redaction is for the record, not the wire.
    assert any(b"B-PASSWORD-201" in body for *_x, body in loopback_http.requests_seen)


def test_no_secret_reaches_the_spool(loopback_http: LoopbackHTTP, tracelab_home: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACELAB_REDACT", "x[-_]internal")
    tracelab.init(workflow_name="redaction-embedded")
    try:
        _plant_everything(loopback_http.url)
        assert tracelab.flush(5.0)
    finally:
        tracelab.shutdown()
    raw = b"".join(p.read_bytes() for p in (tracelab_home / "spool").iterdir() if p.is_file())
    assert raw.count(b'"kind":"http"') >= 4 or not raw  # the store may already have folded it
    leaked = [s for s in _all_secret_values() if s.encode() in raw]
    assert leaked == []


def test_names_are_judged_by_their_words() -> None:
    redactor = Redactor()
    for name in ("access_token", "stripeToken", "card[number]", "X-Api-Key", "apiKey",
                 "client_secret", "AWSSecretKey", "refresh-token", "Set-Cookie"):
        assert redactor.is_secret(name), name
    for name in ("max_tokens", "total_tokens", "prompt_tokens", "tokenizer", "model", "amount",
                 "Content-Type", "keyboard"):
        assert not redactor.is_secret(name), name


def test_truncated_text_is_redacted_before_it_is_cut() -> None:
    from tracelab.sdk.payloads import encode_body

    body = ('{"password": "CUT-SECRET-1", "filler": "' + "x" * 500 + '"}').encode()
    encoded = encode_body(body, "application/json", Redactor(), 100)
    assert encoded["$tracelab"] == "truncated" and encoded["size"] == len(body)
    assert "CUT-SECRET-1" not in encoded["data"] and MARKER in encoded["data"]


def test_prefilter_never_skips_a_body_the_rules_would_redact() -> None:
    """`may_hold_secrets` lets clean bodies skip the walk: it must say yes for every rule."""
    from tracelab.sdk.redaction import SECRET_HEADERS, SECRET_WORD_PAIRS, SECRET_WORDS

    redactor = Redactor()
    names = [*SECRET_HEADERS, *SECRET_WORDS, "stripeToken", "cardNumber", "APIKey",
             *(f"{a}_{b}" for a, b in SECRET_WORD_PAIRS), *(f"{a}{b.title()}" for a, b in SECRET_WORD_PAIRS)]
    for name in names:
        assert redactor.is_secret(name), name
        assert redactor.may_hold_secrets(b'{"%s": "v"}' % name.encode()), name
    assert redactor.may_hold_secrets(b'{"\\u0070assword": "v"}')  # escapes hide names
    assert not redactor.may_hold_secrets(b'{"model": "gpt", "messages": []}')
    assert Redactor([__import__("re").compile("pin")]).may_hold_secrets(b'{"model": 1}')
