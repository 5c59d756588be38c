"""Advisory file locks that the kernel releases when their holder dies.

`flock` is used rather than lock files that are created and deleted, because a `kill -9` in
the middle of a write must never leave a stale lock behind that blocks the next writer.
Locks live under `$TRACELAB_HOME/locks/` on the local disk even when the store itself is on
object storage, so processes on one host still take turns. Across hosts, a `LeasedLock` adds
a Redis lease (`leases`) on top: the flock first, so a host's processes queue locally and
only one of them at a time asks Redis.
"""
from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tracelab.store.leases import Lease


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

    # A flock held cannot be taken away, so there is nothing to check and no fencing token.
    token: int | None = None

    def ensure_held(self) -> None:
        """Nothing to do: the kernel keeps a flock for its holder until it lets go."""

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


class LeasedLock:
    """A host-wide `FileLock` plus a Redis `Lease`: the store lock when several hosts share a
    store. Same interface as `FileLock` (re-entrant per thread), plus `ensure_held()` and the
    fencing `token` of the lease while held.

    The flock is taken first and released last, so the processes of one host wait on the
    kernel rather than polling Redis, and the lease is taken once per outermost hold.
    """

    def __init__(self, flock: FileLock, lease: Lease) -> None:
        self.flock = flock
        self.lease = lease
        self._depth = 0

    @property
    def path(self) -> Path:
        return self.flock.path

    @property
    def token(self) -> int | None:
        return self.lease.token

    def acquire(self, blocking: bool = True) -> bool:
        """Take the flock, then (outermost hold only) the lease; False only when not
        `blocking` and either is held elsewhere. A Redis error propagates, nothing held."""
        if not self.flock.acquire(blocking=blocking):
            return False
        # From here this thread holds the flock's thread lock: `_depth` is ours alone.
        if self._depth == 0:
            timeout = self.flock.timeout
            if timeout is not None:  # a crashed holder's lease lapses only after its TTL
                timeout = max(timeout, 1.5 * self.lease.leases.ttl_s)
            try:
                if not self.lease.acquire(blocking=blocking, timeout=timeout):
                    self.flock.release()
                    return False
            except BaseException:
                self.flock.release()
                raise
        self._depth += 1
        return True

    def release(self) -> None:
        if self._depth == 0:
            return
        self._depth -= 1
        try:
            if self._depth == 0:
                self.lease.release()
        finally:
            self.flock.release()

    def ensure_held(self) -> None:
        """Raise `leases.LeaseLost` unless the lease is still this holder's (and renew it)."""
        self.lease.ensure_held()

    def __enter__(self) -> LeasedLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            if isinstance(exc, OSError):
                self._explain(exc)
        finally:
            self.release()

    def _explain(self, exc: OSError) -> None:
        """Raise `LeaseLost` (from `exc`) if the lease was lost while the block ran.

        A holder that stalled past its TTL (a long pause) resumes on a stale listing, and the
        files it meant to read may have been merged away by the next holder since: the
        missing file is the lost lease's doing, and the caller must treat it as such (retry
        later), not as a broken store.
        """
        from tracelab.store.leases import LeaseLost

        try:
            self.lease.ensure_held()
        except LeaseLost as lost:
            raise lost from exc
        except Exception:  # noqa: BLE001 - cannot tell: the original error stands
            return
