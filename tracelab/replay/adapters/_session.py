"""The session API the vendor adapters (smtplib, boto3, twilio) call; see adapters/__init__.py.

A thin facade over `tracelab.replay.session`, kept so each adapter has one import.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from tracelab.replay.session import Outcome, Session, active

__all__ = ["Outcome", "Session", "active", "answering", "recorder", "take"]


def recorder() -> Any:
    """The recorder whose redactor and body cap build the live view (the SDK's, or defaults)."""
    from tracelab.sdk.recorder import current

    rec = current()
    if rec is not None:
        return rec
    session = active()
    fallback = getattr(session, "recorder", None)
    return fallback if fallback is not None else _defaults()


def _defaults() -> Any:
    """Default redaction and body cap (tracing disabled, or shut down before the replay began):
    the live call is still keyed as a default SDK would have stored it."""
    from types import SimpleNamespace

    from tracelab.config import DEFAULT_MAX_BODY_BYTES
    from tracelab.sdk.redaction import Redactor

    return SimpleNamespace(redactor=Redactor(()), config=SimpleNamespace(
        capture_payloads=True, max_body_bytes=DEFAULT_MAX_BODY_BYTES, redact_patterns=()))


def take(session: Session, live: Mapping[str, Any]) -> Outcome:
    """`session.take(live)`: hit (latency waited at speed > 0), passthrough or miss; tags set."""
    return session.take(live)


@contextmanager
def answering(outcome: Outcome) -> Iterator[None]:
    """Kept for the adapters' call sites: `take()` already set the event's `replay` tag."""
    yield
