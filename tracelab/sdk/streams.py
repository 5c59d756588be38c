"""The stream tee: a streamed response recorded as the caller reads it (spec/README.md "Streams").

A streamed response is never read on the caller's behalf. Instead the integrations wrap the
library's own reading calls (urllib3's `read`/`read1`/`read_chunked` under requests, httpx's
byte stream under `iter_*`/`aiter_*`) so that each piece is copied on its way to the caller,
with no buffering ahead: the wrapper hands on exactly what the library produced, when it
produced it. `StreamTee` keeps the pieces (up to the body cap), and calls its `on_end` once,
when the stream is read to its end, fails, is closed early, or is garbage-collected unread.

`StreamTee.members()` then turns the pieces into the contract's `chunks` and `stream`:
redaction runs on the joined text (so a secret split across two pieces is found whole) and
the result is split again at the original boundaries (`split_like`).

Every piece is also scanned as Server-Sent Events (`tracelab.sdk.llm.StreamScanner`, which
gives up at once on a stream that is not SSE): an LLM stream's final usage and its first
content event's time are found even past the cap, where the stored chunks stop.
"""
from __future__ import annotations

import base64
import codecs
import threading
import time
from collections.abc import Callable
from typing import Any

from tracelab.events import MAX_EVENT_BYTES
from tracelab.sdk.llm import Fold, StreamScanner
from tracelab.sdk.redaction import MARKER, Redactor

# Text past the cap kept for the joined body, as encode_body redacts a margin past the cap.
BODY_MARGIN = 4096
# Chunks kept per stream; later pieces are appended to the last one (offsets of the first
# MAX_CHUNKS pieces stay exact). Bounds the per-chunk JSON overhead of a byte-by-byte reader.
MAX_CHUNKS = 4096
# Chunk data kept at most, whatever the body cap: `chunks` and `body` both hold the stream,
# and the event must stay under MAX_EVENT_BYTES with room for the body.
MAX_CHUNK_BYTES = MAX_EVENT_BYTES // 4
# How far past a redaction marker the split looks for the text that follows it.
_RESYNC_CHARS = 32


class StreamTee:
    """What a caller read from one streamed response; `on_end(tee)` runs exactly once."""

    def __init__(self, started_ns: int, cap: int, on_end: Callable[[StreamTee], None]) -> None:
        self._t0 = started_ns          # time.perf_counter_ns() at the request start
        self._cap = max(0, min(cap, MAX_CHUNK_BYTES))
        self._body_cap = max(0, cap) + BODY_MARGIN
        self._on_end = on_end
        self._lock = threading.Lock()
        self._pieces: list[tuple[float, bytearray]] = []
        self.body = bytearray()
        self.stored = 0
        self.size = 0
        self.truncated = False
        self.complete = False
        self.error: BaseException | None = None
        self.ended = False
        self._scanner = StreamScanner()

    def add(self, data: bytes) -> None:
        """One piece the library is handing to the caller now. Never raises."""
        try:
            n = len(data)
            if not n:
                return
            t = round((time.perf_counter_ns() - self._t0) / 1e6, 3)
            self.size += n
            self._scanner.add(data, t)
            room = self._cap - self.stored
            if n > room:
                self.truncated = True
            if room > 0:
                piece = data[:room]
                if len(self._pieces) < MAX_CHUNKS:
                    self._pieces.append((t, bytearray(piece)))
                else:
                    self._pieces[-1][1].extend(piece)
                self.stored += len(piece)
            room = self._body_cap - len(self.body)
            if room > 0:
                self.body += data[:room]
        except Exception:  # tracing never breaks the traced program
            pass

    @property
    def chunks(self) -> list[tuple[float, bytes]]:
        """The stored pieces: (ms since the request started, bytes)."""
        return [(t, bytes(data)) for t, data in self._pieces]

    def llm_fold(self) -> Fold | None:
        """The LLM fields of the whole stream as read (None when it was not SSE)."""
        return self._scanner.fold()

    def end(self, complete: bool, error: BaseException | None = None) -> None:
        """The stream ended: read to its end (`complete`), failed (`error`), or was dropped."""
        with self._lock:
            if self.ended:
                return
            self.ended = True
        self.complete = complete and error is None
        self.error = error
        try:
            self._on_end(self)
        except Exception:
            pass

    def abandon(self) -> None:
        """Closed or collected before its end: record what was read, marked incomplete."""
        self.end(False)

    def members(self, redactor: Redactor, found: set[str] | None = None) -> dict[str, Any]:
        """The contract's `chunks` and `stream` for what was read (redacted)."""
        error = None
        if self.error is not None:
            from tracelab.sdk.capture import error_info
            error = error_info(self.error)
        return {
            "chunks": encode_chunks(self.chunks, redactor, found, cut=self.truncated,
                                    whole=self.complete and not self.truncated),
            "stream": {"complete": self.complete, "error": error, "size": self.size,
                       "truncated": self.truncated},
        }


def encode_chunks(chunks: list[tuple[float, bytes]], redactor: Redactor,
                  found: set[str] | None = None, *, cut: bool = False,
                  whole: bool = True) -> list[dict[str, Any]]:
    """Pieces as `{"t", "data"}` text (redacted on the joined text), else all base64.

    `cut`: the pieces are the first bytes of a longer stream (what the cut leaves half-visible
    is redacted too). `whole`: the stream was read to its end, so an incomplete character at
    the end means the stream is not text.
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    texts: list[str] = []
    try:
        for _t, data in chunks:
            texts.append(decoder.decode(data))
        if whole:
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return [{"t": t, "data": base64.b64encode(data).decode("ascii"), "encoding": "base64"}
                for t, data in chunks]
    joined = "".join(texts)
    redacted = redactor.cut(joined, found) if cut else redactor.text(joined, found)
    return [{"t": t, "data": text}
            for (t, _data), text in zip(chunks, split_like(texts, redacted))]


def split_like(pieces: list[str], redacted: str) -> list[str]:
    """`redacted` (the redaction of `"".join(pieces)`) split where `pieces` were split.

    The parts always join to exactly `redacted`. Text a redaction left alone keeps its place;
    a boundary inside a redacted span moves to the end of its marker, so the marker goes to
    the piece where the secret began.
    """
    joined = "".join(pieces)
    bounds, at = [], 0
    for piece in pieces:
        at += len(piece)
        bounds.append(at)
    if redacted == joined:
        mapped = bounds
    else:
        runs = _equal_runs(joined, redacted)
        mapped, floor = [], 0
        for bound in bounds:
            floor = max(floor, min(_map(bound, runs, len(redacted)), len(redacted)))
            mapped.append(floor)
        if mapped:
            mapped[-1] = len(redacted)
    parts, start = [], 0
    for end in mapped:
        parts.append(redacted[start:end])
        start = end
    return parts


def _equal_runs(a: str, b: str) -> list[tuple[int, int, int]]:
    """(start in a, start in b, length) of the text `b` kept from `a`, in order."""
    runs: list[tuple[int, int, int]] = []
    i = j = 0
    while True:
        n = _common_length(a, i, b, j)
        runs.append((i, j, n))
        i, j = i + n, j + n
        if i >= len(a) or j >= len(b):
            return runs
        marker = b.find(MARKER, max(0, j - len(MARKER) + 1))
        if marker < 0:
            return runs
        after = marker + len(MARKER)
        while b.startswith(MARKER, after):  # adjacent redactions: one span
            after += len(MARKER)
        following = b.find(MARKER, after)
        follow = b[after:after + _RESYNC_CHARS if following < 0
                   else min(after + _RESYNC_CHARS, following)]
        resume = a.find(follow, i) if follow else -1
        if resume < 0:
            return runs
        i, j = resume, after


def _common_length(a: str, i: int, b: str, j: int) -> int:
    """Length of the common run of `a[i:]` and `b[j:]` (binary search on slices: C speed)."""
    lo, hi = 0, min(len(a) - i, len(b) - j)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[i:i + mid] == b[j:j + mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _map(bound: int, runs: list[tuple[int, int, int]], end: int) -> int:
    """Where position `bound` of the original text lands in the redacted text."""
    for a_start, b_start, length in runs:
        if bound <= a_start:
            return b_start
        if bound <= a_start + length:
            return b_start + bound - a_start
    return end
