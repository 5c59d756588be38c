"""Leases in Redis: one holder of a store partition at a time, across hosts.

The store's `flock`s (`locks`) exclude the processes of one host only. Ingesters on several
hosts writing one bucket, and a `tracelab compact` run anywhere, must still take turns on a
partition, because the writer keeps exactly-once by checking the partition's stored
`event_id`s and then publishing a file, and that check is only true while nobody else
publishes there. A lease keeps that rule across hosts for one Redis round trip per step,
through the Redis every ingester already reads from (lock-free writes would instead need a
dedupe step in every reader, DuckDB and Spark included).

A lease is the key `tracelab:lease:<sha256 of its name>` holding `<holder>:<token>`, with an
expiry. The token comes from one `INCR` counter, so it grows with every acquisition anywhere
(a fencing token: it is written into each file's name and metadata). Acquire, renew and
release are Lua scripts, so each is one atomic step:

- acquire: `SET NX PX`, then `INCR` the token and store `<holder>:<token>`;
- renew / check: `PEXPIRE` only if the value is still ours (compare-and-expire);
- release: `DEL` only if the value is still ours (compare-and-delete).

A daemon thread renews every held lease each third of its TTL; a renewal that fails marks the
lease lost. `ensure_held()` checks (and renews) the lease right before a writer publishes, so a
writer that was paused, cut off or overtaken raises `LeaseLost` and publishes nothing.
A crashed holder's lease lapses after its TTL, and the next holder gets a higher token.
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
import uuid

import redis

from tracelab.config import host_id, lease_ttl
from tracelab.store.locks import LockTimeout

log = logging.getLogger("tracelab.leases")

KEY_PREFIX = "tracelab:lease:"
TOKEN_KEY = "tracelab:lease-token"

_ACQUIRE = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 0 end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. token, 'PX', ARGV[2])
return token
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class LeaseLost(RuntimeError):
    """The lease expired or was taken over: whatever was about to be published under it must
    not be (the caller's batch stays unacknowledged and is written again later)."""


class RedisLeases:
    """Leases kept in the Redis at `url`, all held by one `holder`.

    `ttl_s` defaults to `TRACELAB_LEASE_TTL` (30 s); `holder` to `<TRACELAB_HOST_ID>:<pid>:`
    plus a random suffix, unique per instance so two stores opened by one process (or two
    processes that share a host id) never mistake each other's leases for their own.
    """

    def __init__(self, url: str, *, ttl_s: float | None = None,
                 holder: str | None = None) -> None:
        self.url = url
        self.ttl_s = lease_ttl() if ttl_s is None else float(ttl_s)
        if not self.ttl_s > 0:
            raise ValueError(f"a lease TTL must be positive, got {ttl_s!r}")
        self.holder = holder or f"{host_id()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5,
                                            health_check_interval=0)
        self._acquire = self._client.register_script(_ACQUIRE)
        self._renew = self._client.register_script(_RENEW)
        self._release = self._client.register_script(_RELEASE)
        self._held: set[Lease] = set()
        self._wake = threading.Condition()
        self._renewing = False  # a renewer thread runs (changed under `_wake` only)
        self._closed = False

    @property
    def ttl_ms(self) -> int:
        return max(1, int(self.ttl_s * 1000))

    def lease(self, name: str) -> Lease:
        """The lease called `name` (not acquired yet); equal names are one lease everywhere."""
        digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        return Lease(self, name, KEY_PREFIX + digest)

    def close(self) -> None:
        """Release every held lease, stop the renewer and close the connection."""
        for lease in list(self._held):
            lease.release()
        with self._wake:
            self._closed = True
            self._wake.notify_all()
        self._client.close()

    # -- the renewer ------------------------------------------------------------------------

    def _track(self, lease: Lease) -> None:
        with self._wake:
            self._held.add(lease)
            self._closed = False
            if not self._renewing:
                self._renewing = True
                threading.Thread(target=self._renew_loop, daemon=True,
                                 name="tracelab-lease-renewer").start()
            self._wake.notify()

    def _untrack(self, lease: Lease) -> None:
        with self._wake:
            self._held.discard(lease)

    def _renew_loop(self) -> None:
        """Renew each held lease once a third of its TTL has passed since it was last
        renewed; sleep until the next one is due, or until a lease is taken."""
        period = self.ttl_s / 3
        while True:
            with self._wake:
                while not self._held and not self._closed:
                    self._wake.wait()
                if not self._held:  # closed with nothing held
                    self._renewing = False
                    return
                due = [lease for lease in self._held
                       if time.monotonic() - lease._renewed_at >= period]
                if not due:
                    soonest = min(lease._renewed_at for lease in self._held) + period
                    self._wake.wait(max(0.0, soonest - time.monotonic()))
                    continue
            for lease in due:
                lease._renew_in_background()


class Lease:
    """One named lease; not re-entrant (the partition lock around it is)."""

    def __init__(self, leases: RedisLeases, name: str, key: str) -> None:
        self.leases = leases
        self.name = name
        self.key = key
        self.token: int | None = None
        self._value: str | None = None
        self._lost: str | None = None
        self._renewed_at = 0.0
        self._mutex = threading.Lock()

    @property
    def held(self) -> bool:
        """True while acquired, not released, and not known to be lost."""
        with self._mutex:
            return self._value is not None and self._lost is None

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Take the lease; False only when not `blocking` and another holder has it.

        Waiting polls (5 ms doubling to at most a tenth of the TTL): a crashed holder's lease
        lapses after the TTL, so `timeout` should be longer than that. Redis errors propagate.
        """
        leases = self.leases
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.005
        while True:
            sent = time.monotonic()
            token = int(leases._acquire(keys=[self.key, TOKEN_KEY],
                                        args=[leases.holder, leases.ttl_ms]))
            if token:
                with self._mutex:
                    self.token = token
                    self._value = f"{leases.holder}:{token}"
                    self._lost = None
                    self._renewed_at = sent
                leases._track(self)
                return True
            if not blocking:
                return False
            if deadline is not None and time.monotonic() >= deadline:
                holder = leases._client.get(self.key)
                raise LockTimeout(
                    f"could not take the store lease {self._label()} within {timeout:.0f} s: "
                    f"held by {holder.decode(errors='replace') if holder else 'nobody now'}")
            time.sleep(delay)
            delay = min(delay * 2, max(0.005, min(0.1, leases.ttl_s / 10)))

    def ensure_held(self) -> None:
        """Raise `LeaseLost` unless the lease is still ours; renews it (one round trip), so a
        publish that follows has a whole TTL. Redis errors propagate (nothing is published)."""
        with self._mutex:
            value, lost = self._value, self._lost
        if value is None:
            raise LeaseLost(f"the store lease {self._label()} is not held")
        if lost is not None:
            raise LeaseLost(lost)
        sent = time.monotonic()
        if not self.leases._renew(keys=[self.key], args=[value, self.leases.ttl_ms]):
            raise LeaseLost(self._mark_lost(value, "it expired or another holder took it"))
        with self._mutex:
            if self._value == value:
                self._renewed_at = max(self._renewed_at, sent)

    def release(self) -> None:
        """Give the lease back if it is still ours; a Redis error only leaves it to lapse."""
        with self._mutex:
            value, self._value, self.token, self._lost = self._value, None, None, None
        self.leases._untrack(self)
        if value is None:
            return
        try:
            self.leases._release(keys=[self.key], args=[value])
        except (redis.exceptions.RedisError, OSError) as exc:
            log.warning("could not release the store lease %s (%s): it lapses within %g s",
                        self._label(), exc, self.leases.ttl_s)

    def _renew_in_background(self) -> None:
        with self._mutex:
            value = self._value if self._lost is None else None
        if value is None:
            self.leases._untrack(self)
            return
        sent = time.monotonic()
        try:
            renewed = bool(self.leases._renew(keys=[self.key], args=[value,
                                                                     self.leases.ttl_ms]))
            why = "it expired or another holder took it"
        except (redis.exceptions.RedisError, OSError) as exc:
            renewed, why = False, f"renewing it failed: {exc}"
        if renewed:
            with self._mutex:
                if self._value == value:
                    self._renewed_at = max(self._renewed_at, sent)
            return
        log.warning("%s", self._mark_lost(value, why))

    def _mark_lost(self, value: str, why: str) -> str:
        message = f"lost the store lease {self._label()} ({value}): {why}; nothing is " \
                  "published under it"
        with self._mutex:
            if self._value == value and self._lost is None:
                self._lost = message
        self.leases._untrack(self)
        return message

    def _label(self) -> str:
        return self.name.replace("\0", " ")

    def __repr__(self) -> str:
        return f"Lease({self._label()!r}, token={self.token})"
