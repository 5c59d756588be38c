"""Advisory file locks that the kernel releases when their holder dies.

`flock` is used rather than lock files that are created and deleted, because a `kill -9` in
the middle of a write must never leave a stale lock behind that blocks the next writer.
Locks live under `$TRACELAB_HOME/locks/` on the local disk even when the store itself is on
object storage, so processes on one host still take turns.
"""
from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path
from types import TracebackType


class LockTimeout(TimeoutError):
    """Another process held the lock for longer than we were willing to wait."""


class FileLock:
    """An exclusive `flock` on one file, re-entrant for the thread holding it.

    Other threads using the same object wait on a thread lock first, so sharing one object
    between threads is safe; separate objects exclude each other through `flock` itself.
    """

    def __init__(self, path: Path | str, timeout: float | None = 60.0) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self._fd: int | None = None
        self._depth = 0
        self._thread_lock = threading.RLock()

    def acquire(self, blocking: bool = True) -> bool:
        """Take the lock; False only when `blocking` is False and someone else holds it."""
        if not self._thread_lock.acquire(blocking=blocking):
            return False
        if self._fd is not None:
            self._depth += 1
            return True
        try:
            return self._acquire_file(blocking)
        except BaseException:
            self._thread_lock.release()
            raise

    def _acquire_file(self, blocking: bool) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        delay = 0.005
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not blocking:
                    os.close(fd)
                    self._thread_lock.release()
                    return False
                if deadline is not None and time.monotonic() >= deadline:
                    os.close(fd)
                    raise LockTimeout(
                        f"could not lock {self.path} within {self.timeout:.0f} s: another "
                        "TraceLab writer holds it (an ingester, a compaction or a spool fold)")
                time.sleep(delay)
                delay = min(delay * 2, 0.1)
        self._fd = fd
        self._depth = 1
        return True

    def release(self) -> None:
        if self._fd is None:
            return
        self._depth -= 1
        if self._depth == 0:
            fd, self._fd = self._fd, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        self._thread_lock.release()

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
