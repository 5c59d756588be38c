"""Counters the SDK keeps about itself, so drops and failures are visible instead of silent."""
from __future__ import annotations

import os
import threading
import weakref
from collections import defaultdict
from typing import Any


class SDKStats:
    """Thread-safe counters behind `tracelab.stats()`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        _instances.add(self)
        self.captured = 0
        self.published = 0
        self.spooled = 0
        self.shrunk = 0  # events over MAX_EVENT_BYTES whose bodies became markers
        self.dropped: dict[str, int] = defaultdict(int)
        self.errors: dict[str, int] = defaultdict(int)
        self.by_origin: dict[str, dict[str, int]] = defaultdict(lambda: {"captured": 0, "errors": 0})
        self.last_error: str | None = None

    def count_captured(self, origin: str) -> None:
        with self._lock:
            self.captured += 1
            self.by_origin[origin]["captured"] += 1

    def count_error(self, origin: str, message: str) -> None:
        with self._lock:
            self.errors[origin] += 1
            self.by_origin[origin]["errors"] += 1
            self.last_error = f"{origin}: {message}"[:500]

    def count_dropped(self, reason: str, n: int = 1) -> None:
        with self._lock:
            self.dropped[reason] += n

    def count_shrunk(self) -> None:
        with self._lock:
            self.shrunk += 1

    def count_delivered(self, sink: str, n: int) -> None:
        with self._lock:
            if sink == "redis":
                self.published += n
            else:
                self.spooled += n

    def snapshot(self, **extra: Any) -> dict[str, Any]:
        with self._lock:
            return {
                "captured": self.captured,
                "published": self.published,
                "spooled": self.spooled,
                "shrunk": self.shrunk,
                "dropped": sum(self.dropped.values()),
                "dropped_by_reason": dict(self.dropped),
                "errors": sum(self.errors.values()),
                "errors_by_origin": dict(self.errors),
                "last_error": self.last_error,
                "integrations": {k: dict(v) for k, v in self.by_origin.items()},
                **extra,
            }


_instances: weakref.WeakSet[SDKStats] = weakref.WeakSet()


def _new_locks_in_child() -> None:
    """A forked child gets fresh locks: one held by another parent thread at fork time would
    stay held forever in the child (that thread does not exist there), and the next count
    would hang the child."""
    for stats in list(_instances):
        stats._lock = threading.Lock()


os.register_at_fork(after_in_child=_new_locks_in_child)
