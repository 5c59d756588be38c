"""Per-task tracing context: the enclosing span and the "inner HTTP is already recorded" flag.

contextvars give each thread and each asyncio task its own view, so concurrent spans never
adopt each other's children.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

current_span_id: ContextVar[str | None] = ContextVar("tracelab_span_id", default=None)
_http_suppressed: ContextVar[bool] = ContextVar("tracelab_http_suppressed", default=False)


def http_suppressed() -> bool:
    """True inside a vendor call (twilio, …) whose own event already covers the HTTP beneath."""
    return _http_suppressed.get()


@contextmanager
def suppress_http() -> Iterator[None]:
    token = _http_suppressed.set(True)
    try:
        yield
    finally:
        _http_suppressed.reset(token)
