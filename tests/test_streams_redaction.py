"""Chunks are redacted on their joined text and split again (tracelab/sdk/streams.py): a secret
split across pieces never survives, and the pieces keep their places around it."""
from __future__ import annotations

import codecs

from hypothesis import given, settings
from hypothesis import strategies as st

from tracelab.sdk.redaction import Redactor
from tracelab.sdk.streams import encode_chunks

STRIPE_KEY = "sk_live_51H8xQ2eZvKYlo2C0aBcDeFgHiJkLmNoPq"
SECRETS = [f"key {STRIPE_KEY} ", '{"password": "hunter2-body-secret"} ',
           "Authorization: Bearer abcdef0123456789xyzABC ", "url https://ada:pa55w0rd-x@host/ "]
REDACTOR = Redactor()
plain = st.text(alphabet="abc déf\n:{}", max_size=30)


@settings(max_examples=200, deadline=None)
@given(parts=st.lists(st.tuples(plain, st.sampled_from(SECRETS)), min_size=1, max_size=4),
       tail=plain, cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8))
def test_any_split_of_a_stream_with_secrets_is_redacted_whole(
        parts: list[tuple[str, str]], tail: str, cuts: list[int]) -> None:
    text = "".join(a + b for a, b in parts) + tail
    raw = text.encode()
    bounds = sorted({min(c, len(raw)) for c in cuts} | {len(raw)})
    pieces, start = [], 0
    for end in bounds:
        pieces.append(raw[start:end])
        start = end
    chunks = encode_chunks([(float(i), p) for i, p in enumerate(pieces)], REDACTOR)
    assert len(chunks) == len(pieces)
    assert [c["t"] for c in chunks] == [float(i) for i in range(len(pieces))]
    assert "".join(c["data"] for c in chunks) == REDACTOR.text(text)
    for secret in ("51H8xQ2e", "hunter2", "abcdef0123", "pa55w0rd"):
        assert all(secret not in c["data"] for c in chunks)
    # Before the first secret and after the last one, the pieces are the original text, cut
    # where it was cut (a character split between two pieces goes to the later one).
    decoder = codecs.getincrementaldecoder("utf-8")()
    first, last = len(parts[0][0].encode()), len(raw) - len(tail.encode())
    kept = 0
    for piece, chunk in zip(pieces, chunks):
        expected = decoder.decode(piece)
        if kept + len(piece) <= first or (kept >= last and piece[:1] < b"\x80"):
            assert chunk["data"] == expected
        kept += len(piece)

def test_a_binary_stream_is_kept_as_base64_pieces() -> None:
    chunks = encode_chunks([(1.0, b"\xff\x00"), (2.5, b"ok")], REDACTOR)
    assert chunks == [{"t": 1.0, "data": "/wA=", "encoding": "base64"},
                      {"t": 2.5, "data": "b2s=", "encoding": "base64"}]


def test_a_character_split_between_pieces_goes_to_the_later_piece() -> None:
    e = "é".encode()
    chunks = encode_chunks([(1.0, b"caf" + e[:1]), (2.0, e[1:] + b"!")], REDACTOR)
    assert [c["data"] for c in chunks] == ["caf", "é!"]


def test_a_cut_stream_redacts_a_secret_left_open_at_the_cut() -> None:
    chunks = encode_chunks([(1.0, b"x Bearer abcdef012")], REDACTOR, cut=True, whole=False)
    assert chunks == [{"t": 1.0, "data": "x Bearer [REDACTED]"}]
