"""The ingester: Redis stream `trace.events` -> Parquet store, every event exactly once.

Redis gives at-least-once delivery through the consumer group; the store's `event_id` dedupe
turns that into exactly-once. The order of operations is what makes it safe:

1. read (own pending entries first, then entries idle too long at crashed consumers via
   XAUTOCLAIM, then new ones with XREADGROUP `>`); while a slice of new entries is being
   validated and written, the next XREADGROUP is already on the wire (read-ahead on a
   connection of its own), so Redis produces the next reply while Python works. Read-ahead
   entries sit in this consumer's pending list like any other read: a crash leaves them to
   be re-read, never acknowledged;
2. validate each entry; a malformed one becomes a dead letter (`trace.events.dead`) carrying
   the raw fields, the reason and the original id. Validation has a fast path: a compiled
   schema checks every top-level field while decoding (`schema.decode_wire`, C speed) and
   keeps the payloads as the JSON text the store holds anyway; what that skip over the
   payload text leaves unchecked is checked for the whole batch at once on the write thread
   (`schema.WireBatch`, in Arrow). An entry either check cannot vouch for goes the
   full way (`orjson.loads` + `validate()`), which stores it or dead-letters it with its
   reason, before the store sees it;
3. when the batch is full (`batch` events or `batch_bytes`) or its oldest event has waited
   `flush_interval`, write the valid events durably (`StoreWriter`), then add the dead
   letters, then XACK everything.

A `kill -9` anywhere leaves entries pending, never acknowledged-but-unwritten; the next
ingester re-reads them and the dedupe drops what was already written. A Redis outage is
ridden out: what was read is written anyway, acknowledgements wait for the reconnect.
"""
from __future__ import annotations

import gc
import logging
import os
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import redis

from tracelab.config import host_id
from tracelab.events import MAX_EVENT_BYTES, validate
from tracelab.store.layout import StoreLayout, resolve_layout
from tracelab.store.leases import LeaseLost
from tracelab.store.locks import FileLock
from tracelab.store.schema import WireBatch, WireEvent, decode_wire
from tracelab.store.writer import StoreWriter, WriteReport

log = logging.getLogger("tracelab.ingest")

# A slice of 2,000 ~1 KB entries is megabytes: read it in few `recv` calls, since each one
# gives up the GIL and may wait a whole switch interval for the write thread to hand it back.
_READ_BUFFER = 4 << 20

# Only Redis's own errors: an OSError from writing the store must not pass for an outage.
_REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
               redis.exceptions.BusyLoadingError)


@dataclass
class IngestConfig:
    """Everything `tracelab ingest` can be told; defaults are the documented ones."""

    redis_url: str
    stream: str = "trace.events"
    group: str = "tracelab-ingest"
    consumer: str | None = None
    # Events per write: with the store's usual spread over a few partitions, 20,000 make
    # files of thousands of rows, whose Parquet costs less per event, and 4x fewer fsyncs
    # than 5,000; `batch_bytes` bounds the memory a batch of large events holds.
    batch: int = 20_000
    batch_bytes: int = 64 << 20
    flush_interval: float = 0.25
    claim_idle: float = 60.0
    dead_stream: str | None = None
    max_event_bytes: int = MAX_EVENT_BYTES
    # Give up (RedisUnavailable) when the first connection fails for this long; None keeps
    # retrying, for a server (`tracelab up`) that must come up before its Redis does.
    connect_timeout: float | None = None
    log_interval: float = 10.0
    read_count: int = 2000

    @property
    def dead(self) -> str:
        return self.dead_stream or f"{self.stream}.dead"


@dataclass
class IngestStats:
    """Running totals, for the interval log line and the `--once` summary."""

    read: int = 0
    stored: int = 0
    duplicates: int = 0
    dead: int = 0
    gone: int = 0
    flushes: int = 0
    reconnects: int = 0
    started: float = field(default_factory=time.monotonic)
    first_read: float | None = None
    last_flush: float | None = None


def default_consumer_name(home: os.PathLike[str] | str) -> tuple[str, FileLock]:
    """`ingest-<host>-<slot>`: stable across restarts on one host, unique among live ones.

    A restarted ingester gets the same name back (its slot's lock died with it) and so finds
    its own pending entries first; two ingesters on one host get different slots.
    """
    host = host_id()
    slot = 0
    while True:
        lock = FileLock(Path(home) / "locks" / f"ingest-consumer-{slot}.lock", timeout=0)
        if lock.acquire(blocking=False):
            return f"ingest-{host}-{slot}", lock
        slot += 1


class RedisUnavailable(RuntimeError):
    """Redis could not be reached (refused, timed out, wrong credentials) at start-up."""


def wait_for_redis(url: str, timeout: float) -> None:
    """Return once Redis at `url` answers PING; raise `RedisUnavailable` after `timeout` s.

    Every attempt has its own short socket timeouts and no client retries, so a port that
    refuses and a server that accepts but never answers both end by the deadline, with the
    last error in the message (the URL shown without its password).
    """
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from tracelab.config import url_without_password

    deadline = time.monotonic() + timeout
    while True:
        left = max(0.05, deadline - time.monotonic())
        client = redis.Redis.from_url(url, socket_connect_timeout=min(left, 2.0),
                                      socket_timeout=left, retry=Retry(NoBackoff(), 0),
                                      health_check_interval=0)
        try:
            client.ping()
            return
        except redis.exceptions.ResponseError as exc:  # NOAUTH, WRONGPASS: retrying won't help
            problem: BaseException = exc
            break
        except (redis.exceptions.RedisError, OSError) as exc:
            problem = exc
            if isinstance(exc, redis.exceptions.AuthenticationError):
                break
        finally:
            client.close()
        if time.monotonic() >= deadline:
            break
        time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
    raise RedisUnavailable(f"cannot reach Redis at {url_without_password(url)} within "
                           f"{timeout:g} s: {problem}")


class _Batch:
    """Entries read but not yet acknowledged, split by what will happen to them."""

    def __init__(self) -> None:
        self.events: list[dict | WireEvent] = []
        self.event_ids: list[bytes] = []     # stream ids, parallel to `events`
        self.raws: list[bytes] = []          # the entries' `event` bytes, parallel too
        self.dead: list[tuple[bytes, dict | None, str]] = []
        self.other_ids: list[bytes] = []     # gone entries: nothing to store, only to ack
        # An entry's fields when it has more than `event` (by index in `events`), so a dead
        # letter found after reading still carries all of them.
        self.fields: dict[int, dict] = {}
        self.oldest: float | None = None
        self.nbytes = 0                      # the `event` bytes of `events`, for batch_bytes

    def __len__(self) -> int:
        return len(self.events) + len(self.dead) + len(self.other_ids)


class Ingester:
    """One consumer of the group; `run()` until stopped, or `run(once=True)` to drain."""

    def __init__(self, config: IngestConfig, layout: StoreLayout | None = None,
                 writer: StoreWriter | None = None) -> None:
        self.config = config
        self.layout = layout or resolve_layout()
        # While busy, merge small files only when a partition has many (they cost throughput);
        # once the stream goes quiet, `_idle()` merges the rest.
        self.writer = writer or StoreWriter(self.layout, auto_compact=True, compact_at=64)
        self._consumer_lock: FileLock | None = None
        if config.consumer is None:
            config.consumer, self._consumer_lock = default_consumer_name(self.layout.home)
        self.consumer = config.consumer
        self.stats = IngestStats()
        self._client: redis.Redis | None = None
        self._stop = False
        self._batch = _Batch()
        self._unacked: list[bytes] = []
        self._unpublished: list[tuple[bytes, dict | None, str]] = []
        self._pending_cursor: bytes | None = b"0"
        self._next_claim = 0.0
        self._claim_cursor = "0-0"
        self._progress: Any = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tracelab-write")
        self._inflight: Future | None = None
        # The connection XREADGROUP replies come on, and whether one is already requested.
        self._reader: Any = None
        self._read_ahead = False
        self._asked = 0

    # -- control ----------------------------------------------------------------------------

    def request_stop(self, *_: Any) -> None:
        """Ask the loop to write what it holds, acknowledge, and return (signal-handler safe)."""
        self._stop = True

    def run(self, once: bool = False, progress: bool = False) -> IngestStats:
        """Consume until `request_stop()` (or, with `once`, until the stream is drained)."""
        # Decoded events are acyclic, so reference counting frees them all; at default
        # thresholds the cyclic GC would re-traverse the batch's tens of thousands of live
        # dicts every few hundred allocations, which cost more than everything else together.
        thresholds = gc.get_threshold()
        gc.set_threshold(200_000, 50, 1000)
        # The reader's socket reads give up the GIL many times a slice; at the default 5 ms
        # switch interval each may wait that long for the write thread to hand it back.
        # 1 ms measured 5-25 % faster here (A/B, 200,000 events).
        interval = sys.getswitchinterval()
        sys.setswitchinterval(min(interval, 0.001))
        try:
            return self._run(once, progress)
        finally:
            gc.set_threshold(*thresholds)
            sys.setswitchinterval(interval)

    def _run(self, once: bool, progress: bool) -> IngestStats:
        cfg = self.config
        log.info("ingesting %s (group %s, consumer %s) into %s", cfg.stream, cfg.group,
                 self.consumer, self.layout.uri or self.layout.root)
        if cfg.connect_timeout is not None:
            wait_for_redis(cfg.redis_url, cfg.connect_timeout)
        recovered = self.writer.recover_all()
        if recovered:
            log.info("finished %d interrupted compactions", recovered)
        next_log = time.monotonic() + cfg.log_interval
        last_logged = (time.monotonic(), 0)
        backoff = 0.1
        drained = False
        while not self._stop:
            try:
                if self._client is None:
                    self._connect()
                    if progress and self._progress is None:
                        self._progress = _progress_bar(self._backlog())
                got = self._step(block_ms=100 if once else self._block_ms())
                backoff = 0.1
                if self._due():
                    self._flush()
                self._collect(wait=False)
                self._settle()
                if got == 0 and not len(self._batch):
                    self._idle()
                if once and got == 0 and self._pending_cursor is None and self._inflight is None:
                    drained = True
                    break
            except _REDIS_DOWN as exc:
                self._on_redis_down(exc, backoff)
                backoff = min(backoff * 2, 5.0)
            except LeaseLost as exc:  # nothing published, nothing acked: read it all again
                log.warning("%s; the batch stays pending and is written again", exc)
                self._client = None  # reconnecting re-reads this consumer's pending entries
                self._batch = _Batch()
            except redis.exceptions.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                log.warning("consumer group vanished (Redis restarted?): recreating it")
                self._client = None
            now = time.monotonic()
            if now >= next_log:
                self._log_interval(now, last_logged)
                last_logged = (now, self.stats.stored)
                next_log = now + cfg.log_interval
        self._final_flush()
        if self._progress is not None:
            self._progress.close()
        if once and drained:
            log.info("stream %s drained", cfg.stream)
        return self.stats

    # -- reading ----------------------------------------------------------------------------

    def _connect(self) -> None:
        client = redis.Redis.from_url(self.config.redis_url, socket_timeout=10,
                                      socket_connect_timeout=5, health_check_interval=0,
                                      socket_read_size=_READ_BUFFER)
        client.ping()
        try:
            client.xgroup_create(self.config.stream, self.config.group, id="0", mkstream=True)
            log.info("created consumer group %s on %s at id 0", self.config.group,
                     self.config.stream)
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._drop_reader()
        self._client = client
        self._reader = client.connection_pool.get_connection()
        # After any (re)connect, our own pending entries come first: they may be unwritten.
        self._pending_cursor = b"0"
        self._next_claim = 0.0
        self._claim_cursor = "0-0"
        self._settle()

    def _block_ms(self) -> int:
        if self._batch.oldest is None:
            return 500
        left = self.config.flush_interval - (time.monotonic() - self._batch.oldest)
        return max(1, min(500, int(left * 1000)))

    def _step(self, block_ms: int) -> int:
        """Read one slice: read-ahead, else own pending, else claimable, else new entries.
        Returns how many."""
        cfg = self.config
        room = max(1, min(cfg.read_count, cfg.batch - len(self._batch)))
        if self._read_ahead:
            asked = self._asked
            entries = self._receive()
            if entries:
                self._read_next(entries, asked)
                self._take(entries)
                return len(entries)
        if self._pending_cursor is not None:
            self._send_read(self._pending_cursor, room, None)
            entries = self._receive()
            if entries:
                self._pending_cursor = entries[-1][0]
                self._take(entries)
                return len(entries)
            self._pending_cursor = None
        if time.monotonic() >= self._next_claim:
            claimed = self._claim(room)
            if claimed:
                return claimed
        self._send_read(b">", room, block_ms)
        entries = self._receive()
        self._read_next(entries, room)
        self._take(entries)
        return len(entries)

    def _send_read(self, start: bytes, count: int, block_ms: int | None) -> None:
        cfg = self.config
        args: list[Any] = ["XREADGROUP", "GROUP", cfg.group, self.consumer, "COUNT", count]
        if block_ms is not None:
            args += ["BLOCK", block_ms]
        self._reader.send_command(*args, "STREAMS", cfg.stream, start)
        self._read_ahead = True
        self._asked = count

    def _receive(self) -> list:
        """The reply to the XREADGROUP on the wire: `[(id, fields), ...]`, where fields is
        the raw `[name, value, ...]` list (None for an entry trimmed while pending)."""
        self._read_ahead = False
        reply = self._reader.read_response()
        if not reply:
            return []
        streams = reply.values() if isinstance(reply, dict) else [r[1] for r in reply]
        for entries in streams:
            return entries or []
        return []

    def _read_next(self, entries: list, asked: int) -> None:
        """A full slice of new entries suggests more: request the next one now, so Redis
        builds it while this one is validated and written. Not when stopping, and not when
        a claim is due (claims keep their turn while the stream is busy)."""
        cfg = self.config
        if len(entries) < asked or self._stop or time.monotonic() >= self._next_claim:
            return
        held = len(self._batch) + len(entries)
        count = cfg.read_count if held >= cfg.batch else min(cfg.read_count, cfg.batch - held)
        self._send_read(b">", count, None)

    def _drop_reader(self) -> None:
        """Forget the read connection (after an error its reply stream is unknown)."""
        reader, self._reader, self._read_ahead = self._reader, None, False
        if reader is not None:
            try:
                reader.disconnect()
            except Exception:  # pragma: no cover - closing a broken socket
                pass

    def _claim(self, room: int) -> int:
        """Take over entries idle too long at other (crashed) consumers."""
        cfg = self.config
        assert self._client is not None
        reply = self._client.xautoclaim(cfg.stream, cfg.group, self.consumer,
                                        min_idle_time=int(cfg.claim_idle * 1000),
                                        start_id=self._claim_cursor, count=room)
        cursor, entries = reply[0], reply[1]
        cursor = cursor.decode() if isinstance(cursor, bytes) else cursor
        if cursor in ("0-0", "0"):
            self._claim_cursor = "0-0"
            self._next_claim = time.monotonic() + max(0.5, cfg.claim_idle / 2)
        else:
            self._claim_cursor = cursor
        if entries:
            log.info("claimed %d entries idle over %.1f s from other consumers", len(entries),
                     cfg.claim_idle)
            # A consumer died: it may have died mid-compaction too. Finish that on the write
            # thread, which owns the writer, so outside readers never see a file twice.
            self._executor.submit(self.writer.recover_all)
        self._take(entries)
        return len(entries)

    def _take(self, entries: list) -> None:
        """Validate entries into the batch; nothing here can raise on bad data."""
        if not entries:
            return
        batch = self._batch
        now = time.monotonic()
        if batch.oldest is None:
            batch.oldest = now
        if self.stats.first_read is None:
            self.stats.first_read = now
        self.stats.read += len(entries)
        max_bytes = self.config.max_event_bytes
        events, event_ids, raws = batch.events, batch.event_ids, batch.raws
        fast = decode_wire
        for entry_id, fields in entries:
            if not fields:
                batch.other_ids.append(entry_id)  # trimmed from the stream while pending
                continue
            if type(fields) is list:  # raw reply: [name, value, ...]
                if len(fields) == 2 and fields[0] == b"event":
                    raw = fields[1]
                else:
                    fields = dict(zip(fields[::2], fields[1::2]))
                    raw = fields.get(b"event")
                    batch.fields[len(events)] = fields
            else:
                raw = fields.get(b"event")
                batch.fields[len(events)] = fields
            if raw is not None and len(raw) <= max_bytes:
                event = fast(raw)
                if event is None:
                    event = _decode_checked(raw)
                if event is not None:
                    events.append(event)
                    event_ids.append(entry_id)
                    raws.append(raw)
                    batch.nbytes += len(raw)
                    continue
            batch.fields.pop(len(events), None)
            if type(fields) is list:
                fields = dict(zip(fields[::2], fields[1::2]))
            batch.dead.append((entry_id, fields, _reason(fields, max_bytes)))

    # -- writing ----------------------------------------------------------------------------

    def _due(self) -> bool:
        batch = self._batch
        if not len(batch):
            return False
        return (len(batch) >= self.config.batch or batch.nbytes >= self.config.batch_bytes
                or time.monotonic() - (batch.oldest or 0) >= self.config.flush_interval)

    def _idle(self) -> None:
        """Nothing to read: a good moment to merge the small files written while busy."""
        if self._inflight is None and self.writer.has_uncompacted:
            self._inflight = self._executor.submit(self._compact_batch)

    def _compact_batch(self) -> tuple[list[bytes], list, None]:
        self.writer.compact_touched()
        return [], [], None

    def _write_batch(self, batch: _Batch) -> tuple[list[bytes], list, WriteReport | None]:
        """Durably store one batch (runs on the write thread); returns what to settle.

        First the batch's Arrow rows are built once and the payload checks the fast decode
        left run on them (`WireBatch`): an event they flag is decoded and validated in full,
        and stored as that dict or dead-lettered with the reason `validate()` gives, before
        the store sees it (so an invalid entry is a dead letter, never a "duplicate").
        An event the store refuses becomes a dead letter carrying the entry's original bytes
        (never a re-serialization of the parsed event, which may be what failed), so one
        poison entry is acknowledged once and never stops or re-enters the line.
        """
        dead = list(batch.dead)
        events, entry_ids, raws = batch.events, batch.event_ids, batch.raws
        prepared = WireBatch(events)
        if prepared.unvouched:
            events, entry_ids, raws = list(events), list(entry_ids), list(raws)
            refused = set()
            for index in prepared.unvouched:
                event = _decode_checked(raws[index])
                if event is not None:
                    events[index] = event
                    continue
                fields = batch.fields.get(index) or {b"event": raws[index]}
                dead.append((entry_ids[index], fields,
                             _reason(fields, self.config.max_event_bytes)))
                refused.add(index)
            if refused:
                keep = [i for i in range(len(events)) if i not in refused]
                events = [events[i] for i in keep]
                entry_ids = [entry_ids[i] for i in keep]
                raws = [raws[i] for i in keep]
        report = None
        if events:
            with prepared.active():
                report = _write_or_isolate(self.writer, events)
            if report.rejected:
                where = {id(e): (i, raw) for e, i, raw in zip(events, entry_ids, raws)}
                for event, reason in report.rejected:
                    entry_id, raw = where[id(event)]
                    dead.append((entry_id, {b"event": raw}, reason))
        ids = batch.event_ids + [d[0] for d in batch.dead] + batch.other_ids
        return ids, dead, report

    def _flush(self) -> None:
        """Hand the batch to the write thread, so reading the next one overlaps writing it.

        At most one batch is in flight: it is collected (and settled) before the next is
        handed over, which bounds memory and keeps acknowledgements in order.
        """
        self._collect(wait=True)
        self._settle()
        batch, self._batch = self._batch, _Batch()
        self._inflight = self._executor.submit(self._write_batch, batch)

    def _collect(self, wait: bool) -> None:
        """Move a finished write's ids and dead letters to the to-settle lists."""
        future = self._inflight
        if future is None or not (wait or future.done()):
            return
        self._inflight = None
        ids, dead, report = future.result()
        if report is not None:
            self.stats.stored += report.written
            self.stats.duplicates += report.duplicates
        if ids:  # not for an idle-time merge
            self.stats.flushes += 1
            self.stats.last_flush = time.monotonic()
        self._unacked.extend(ids)
        self._unpublished.extend(dead)
        if self._progress is not None:
            self._progress.update(len(ids))

    def _write_now(self) -> None:
        """Write whatever is held, synchronously (on stop and on losing Redis)."""
        self._collect(wait=True)
        if len(self._batch):
            batch, self._batch = self._batch, _Batch()
            self._inflight = self._executor.submit(self._write_batch, batch)
            self._collect(wait=True)

    def _settle(self) -> None:
        """Dead letters first, then acknowledgements: an entry is acked only once handled."""
        if self._unpublished:
            self._publish_dead(self._unpublished)
            self._unpublished = []
        if self._unacked:
            self._ack(self._unacked)
            self._unacked = []

    def _publish_dead(self, dead: list[tuple[bytes, dict | None, str]]) -> None:
        if not dead:
            return
        assert self._client is not None
        pipe = self._client.pipeline(transaction=False)
        for entry_id, fields, reason in dead:
            record: dict[Any, Any] = {"reason": reason, "original_id": entry_id,
                                      "original_stream": self.config.stream,
                                      "consumer": self.consumer}
            for key, value in (fields or {}).items():
                record[b"raw." + (key if isinstance(key, bytes) else str(key).encode())] = value
            pipe.xadd(self.config.dead, record)
            log.warning("dead letter %s: %s", entry_id.decode(errors="replace"), reason)
        pipe.execute()
        self.stats.dead += len(dead)

    def _ack(self, ids: list[bytes]) -> None:
        if not ids:
            return
        assert self._client is not None
        pipe = self._client.pipeline(transaction=False)
        for start in range(0, len(ids), 10_000):
            pipe.xack(self.config.stream, self.config.group, *ids[start:start + 10_000])
        pipe.execute()

    def _on_redis_down(self, exc: BaseException, backoff: float) -> None:
        """Keep what was read (write it now), then wait and reconnect."""
        if self._client is not None:
            log.warning("lost Redis (%s); writing what is held, then reconnecting", exc)
        self._client = None
        self._drop_reader()
        self.stats.reconnects += 1
        try:
            self._write_now()
        except (*_REDIS_DOWN, LeaseLost) as write_exc:  # leases need Redis too
            log.warning("could not write the held batch (%s): it stays pending", write_exc)
            self._batch = _Batch()
        deadline = time.monotonic() + backoff
        while not self._stop and time.monotonic() < deadline:
            time.sleep(min(0.05, backoff))

    def _final_flush(self) -> None:
        """On stop: write what is held; acknowledge if Redis is there, else leave it pending."""
        if self._read_ahead:  # entries already delivered to us: take them too
            try:
                self._take(self._receive())
            except (redis.exceptions.RedisError, *_REDIS_DOWN) as exc:
                log.warning("could not read the last slice on exit (%s): it stays pending", exc)
                self._drop_reader()
        try:
            self._write_now()
        except (*_REDIS_DOWN, LeaseLost) as exc:
            log.warning("could not write the held batch on exit (%s): it stays pending", exc)
        self._executor.shutdown(wait=True)
        if not (self._unacked or self._unpublished):
            return
        try:
            if self._client is None:
                self._connect()  # settles on connect
            else:
                self._settle()
        except _REDIS_DOWN as exc:
            log.warning("could not acknowledge on exit (%s): the entries stay pending and "
                        "the next ingester will find them already stored", exc)

    # -- reporting --------------------------------------------------------------------------

    def _backlog(self) -> int | None:
        return stream_backlog(self._client, self.config.stream, self.config.group)

    def _log_interval(self, now: float, last: tuple[float, int]) -> None:
        elapsed = max(1e-9, now - last[0])
        rate = (self.stats.stored - last[1]) / elapsed
        lag = self._backlog() if self._client is not None else None
        log.info("stored %.0f ev/s (total %d, duplicates %d, dead %d); backlog %s",
                 rate, self.stats.stored, self.stats.duplicates, self.stats.dead,
                 "unknown" if lag is None else lag)


def _write_or_isolate(writer: StoreWriter, events: list[dict]) -> WriteReport:
    """`writer.write(events)`; if the store raises instead of refusing a poison event in its
    report, write one event at a time and refuse those that still raise. An `OSError` is the
    store's trouble (disk, lock), not an event's: it propagates and nothing is acknowledged;
    so do a lost lease and a Redis error met while taking or checking one."""
    try:
        return writer.write(events)
    except (OSError, LeaseLost, redis.exceptions.RedisError):
        raise
    except Exception as exc:
        log.warning("the store raised on a batch (%s: %.300s); writing its events one by one",
                    type(exc).__name__, exc)
    report = WriteReport()
    for event in events:
        try:
            report.add(writer.write([event]))
        except (OSError, LeaseLost, redis.exceptions.RedisError):
            raise
        except Exception as exc:
            report.rejected.append((event, f"cannot be stored: {type(exc).__name__}: "
                                           f"{str(exc)[:1000]}"))
    return report


def stream_backlog(client: Any, stream: str, group: str) -> int | None:
    """Entries of `stream` the consumer group `group` has still to handle: its lag (not yet
    delivered) plus its pending (delivered, not acknowledged).

    None when Redis cannot say: no client, no such stream or group, Redis unreachable, or a
    lag Redis reports as unknown (after entries were deleted or trimmed mid-group). One helper
    for the ingester's log line, the `--once` progress bar and the API's lag gauge, so they
    never disagree. Never raises.
    """
    if client is None:
        return None
    try:
        groups = client.xinfo_groups(stream)
    except (redis.exceptions.RedisError, OSError):
        return None
    for info in groups:
        name = info.get("name")
        if isinstance(name, bytes):
            name = name.decode(errors="replace")
        if name != group:
            continue
        lag, pending = info.get("lag"), info.get("pending")
        if lag is None or pending is None:
            return None
        try:
            return int(lag) + int(pending)
        except (TypeError, ValueError):
            return None
    return None


def _decode_checked(raw: bytes) -> dict | None:
    """The full path: `orjson.loads` + `validate()`; the event, or None when invalid."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return obj if type(obj) is dict and not validate(obj) else None


def _reason(fields: dict, max_bytes: int) -> str:
    """Why an entry is not a storable event, in words a producer's author can act on."""
    raw = fields.get(b"event")
    if raw is None:
        names = ", ".join(repr(k.decode(errors="replace")) for k in fields) or "none"
        return f"no 'event' field (fields present: {names})"
    if len(raw) > max_bytes:
        return f"oversized: {len(raw)} bytes, the limit is {max_bytes} (--max-event-bytes)"
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"not UTF-8: {exc}"
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return f"not JSON: {exc}"
    if not isinstance(obj, dict):
        return f"not a JSON object but {type(obj).__name__}"
    problems = validate(obj)
    return "invalid TraceEvent: " + "; ".join(problems) if problems else "unknown"


class _SimpleProgress:
    """A stand-in for tqdm when it is not installed: one line every two seconds."""

    def __init__(self, total: int | None) -> None:
        self.total, self.n, self._next = total, 0, time.monotonic() + 2

    def update(self, n: int) -> None:
        self.n += n
        if time.monotonic() >= self._next:
            self._next = time.monotonic() + 2
            of = f"/{self.total}" if self.total else ""
            print(f"ingest: {self.n}{of} entries", file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


def _progress_bar(total: int | None) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:
        return _SimpleProgress(total)
    return tqdm(total=total, unit="ev", unit_scale=True, desc="ingest", file=sys.stderr,
                mininterval=0.5, dynamic_ncols=True)
