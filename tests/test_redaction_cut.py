"""Wherever the cap falls, no part of a secret survives the cut (property-based).

Two ways a body gets cut: the SDK has the whole body (redact, then cut: `encode_body`), the
proxy only the first bytes of a streamed one (`Redactor.cut` on what it kept). Both must leave
no fragment of the secret value, whatever the position of the cut."""
from __future__ import annotations

import json

import pytest

from hypothesis import given, settings
from hypothesis import strategies as st

from tracelab.sdk.payloads import encode_body
from tracelab.sdk.redaction import Redactor

SECRETS = {  # value -> its harmless, fixed prefix (what may stay when the cut lands inside it)
    "sk_live_51FAKEtracelabExample0000000000": "sk_live_",
    "ghp_FAKEtracelabExample00000000000000000": "ghp_",
    "AKIAIOSFODNN7EXAMPLE": "AKIA",
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.FAKEsig0000": "eyJ",
}
PROSE = st.text(alphabet="abcdefghij ,.;:\n", max_size=60)


def fragments(secret: str, prefix: str) -> list[str]:
    """Every 4-character piece of the secret past its fixed prefix."""
    rest = secret[len(prefix):]
    return [rest[i:i + 4] for i in range(len(rest) - 3)]


def leaked(data: str, secret: str, prefix: str) -> list[str]:
    return [f for f in fragments(secret, prefix) if f in data]


@settings(max_examples=300, deadline=None)
@given(before=PROSE, after=PROSE, secret=st.sampled_from(sorted(SECRETS)), data=st.data())
def test_a_shape_cut_anywhere_in_text_leaves_nothing(before: str, after: str, secret: str,
                                                     data: st.DataObject) -> None:
    text = f"{before} {secret} {after}"
    cap = data.draw(st.integers(min_value=1, max_value=len(text)))
    stored = encode_body(text.encode(), "text/plain", Redactor(), cap)
    kept = stored["data"] if isinstance(stored, dict) else stored
    assert leaked(kept, secret, SECRETS[secret]) == []
    proxy_kept = Redactor().cut(text[:cap])  # the proxy only ever saw the first bytes
    assert leaked(proxy_kept, secret, SECRETS[secret]) == []


@settings(max_examples=300, deadline=None)
@given(value=st.text(alphabet="ABCDEFGHIJKLMNOP0123456789-_", min_size=6, max_size=40),
       name=st.sampled_from(["password", "access_token", "apiKey", "client_secret"]),
       pad=st.integers(min_value=0, max_value=80), data=st.data())
def test_a_secret_member_cut_anywhere_leaves_nothing(value: str, name: str, pad: int,
                                                     data: st.DataObject) -> None:
    body = json.dumps({"user": "ada", name: value, "note": "n" * pad})
    cap = data.draw(st.integers(min_value=1, max_value=len(body)))
    pieces = [value[i:i + 4] for i in range(len(value) - 3)]
    for kept in (encode_body(body.encode(), "application/json", Redactor(), cap),
                 Redactor().cut(body[:cap])):
        text = kept["data"] if isinstance(kept, dict) and "$tracelab" in kept else json.dumps(kept)
        assert [p for p in pieces if p in text] == [], text


@pytest.mark.timeout(30)
def test_cutting_a_long_run_of_letters_stays_linear():
    """A kept prefix that ends inside a long base64/hex/filler value (a raised cap) must not
    cost the traced call seconds: the URL tail rule once retried at every letter of the run,
    scanning to its end each time (quadratic: ~1 s for 32k letters, minutes for 400k)."""
    text = '{"pad": "' + "y" * 400_000
    assert Redactor().cut(text) == text
    secret_tail = "x " + "y" * 400_000 + " https://ada:hunter2"
    assert Redactor().cut(secret_tail).endswith("https://ada:[REDACTED]")
