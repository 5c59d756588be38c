"""Where events go: a Redis stream (service mode) or a local spool (embedded mode).

Both sit behind one `BatchingSink`: the traced program's thread only appends the event to a
bounded in-memory queue (a full queue drops and counts, never blocks); one background thread
builds, redacts and serializes batches and writes them. The queue holds serialized events or
calls still to be built (`Recorder.defer`): a call is redacted and serialized on this thread
before it is written, so nothing unredacted is ever written anywhere. On a normal exit (and
`flush`, `shutdown`, SIGTERM) the queue is built and written within the shutdown timeout, and
whatever is left is dropped and counted, never written; a hard crash (SIGKILL, a segfault)
loses what was queued, as it would lose serialized events not yet written. A failing destination is retried with backoff for a
bounded time, after which batches are dropped and counted, so a dead Redis costs the app
nothing but a counted drop. This is the Sentry transport's design.
"""
from __future__ import annotations

import fcntl
import os
import secrets
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from tracelab.config import SDKConfig
from tracelab.sdk.stats import SDKStats

SPOOL_ROLL_BYTES = 16 * 1024 * 1024


class BatchingSink:
    """A bounded queue drained by one daemon thread into `_write()`; subclasses say where."""

    kind = "abstract"

    def __init__(self, config: SDKConfig, stats: SDKStats) -> None:
        self.config = config
        self.stats = stats
        self._queue: deque[Any] = deque()  # bytes, or a call tuple `(builder key, origin, …)`
        self._builders: list[tuple[Any, Any]] = []  # (recorder, build) per builder key
        self._maxsize = config.queue_size
        self._batch_size = config.batch_size
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._busy = False
        self._flush_requested = False
        self._pending: list[bytes] = []
        self._outage_since: float | None = None
        self._lost = 0  # events this sink gave up on; flush() reports them as not delivered
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        # CPU seconds this sink's thread spent building+redacting calls, serializing, writing
        # (the thread's CPU clock read once a batch; build vs serialize split by wall time).
        self.timings = {"build": 0.0, "serialize": 0.0, "write": 0.0}

    # -- the traced program's side ----------------------------------------------------------
    def submit(self, event: Any) -> bool:
        """Enqueue one serialized event (or a call to build) without blocking; False (a
        counted drop) when full."""
        if self._thread is None:
            self._start()
        queue = self._queue
        if len(queue) >= self._maxsize:
            self.stats.count_dropped("queue_full")
            self._lost += 1
            return False
        queue.append(event)
        # One wake-up per batch: until the worker gets the GIL (up to the switch interval)
        # every further submit would otherwise take the Event's lock and notify again.
        if len(queue) >= self._batch_size and not self._wake.is_set():
            self._wake.set()
        return True

    def register(self, recorder: Any, build: Any) -> int:
        """A key for call tuples `build(recorder, call)` turns into an event (`_built`)."""
        with self._start_lock:
            self._builders.append((recorder, build))
            return len(self._builders) - 1

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything submitted so far is written.

        False if `timeout` ran out first or if events were dropped meanwhile (destination down
        past the retry window, queue full): True means delivered, not merely gone.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        lost_before = self._lost
        if self._thread is None or not self._thread.is_alive():
            return not self._queue
        while True:
            if self.idle():
                return self._lost == lost_before
            self._flush_requested = True
            self._wake.set()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(0.002, remaining))

    def close(self, timeout: float = 2.0) -> bool:
        """Flush within `timeout`, stop the thread, count what could not be written as dropped."""
        done = self.flush(timeout)
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=0.5)
        leftover = len(self._queue) + len(self._pending)
        if leftover:
            self.stats.count_dropped("shutdown", leftover)
            self._queue.clear()
            self._pending = []
        self._release()
        return done

    def queued(self) -> int:
        return len(self._queue) + len(self._pending)

    def idle(self) -> bool:
        """True when nothing submitted is waiting, being built or being written. Calls are
        counted as captured only once the sink's thread builds them, so "nothing new was
        captured" alone does not mean "nothing to deliver"."""
        return not self._queue and not self._busy and not self._pending

    def reset_after_fork(self) -> None:
        """In a forked child: the parent's thread is gone and its queue is the parent's to send."""
        self._queue = deque()
        self._pending = []
        self._busy = False
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._start_lock = threading.Lock()
        self._thread = None
        self._after_fork()

    # -- the background thread ----------------------------------------------------------------
    def _start(self) -> None:
        with self._start_lock:
            if self._thread is None:
                thread = threading.Thread(target=self._run, name=f"tracelab-{self.kind}-sink",
                                          daemon=True)
                thread.start()
                self._thread = thread

    def _run(self) -> None:
        interval = self.config.flush_interval
        while not self._stop.is_set():
            woken = self._wake.wait(interval)
            self._wake.clear()
            # Woken by a full queue: write full batches only. Timed out (the oldest event has
            # waited an interval) or asked to flush: write everything. Writing whatever
            # trickled in after each batch would mean one small write, and one GIL hand-off
            # with the traced program, per event.
            everything = not woken or self._flush_requested
            self._flush_requested = False
            try:
                self._drain(everything)
            except Exception as exc:  # never let the worker die
                self.stats.count_error(self.kind, f"sink worker: {exc!r}")
                self._busy = False
                time.sleep(0.05)

    def _drain(self, everything: bool = True) -> None:
        queue = self._queue
        batch_size = self._batch_size
        while not self._stop.is_set():
            self._busy = True
            if not self._pending:
                if not queue or (len(queue) < batch_size and not everything):
                    break
                popleft = queue.popleft
                self._pending = self._built([popleft() for _ in range(min(batch_size,
                                                                          len(queue)))])
            if not self._deliver():
                break
        self._busy = False

    def _built(self, items: list[Any]) -> list[bytes]:
        """Queued items as serialized events: calls are built (redacted), then serialized.

        One item at a time, so at most one event's dicts are alive at once: holding a batch
        of them would set off the cyclic garbage collector, which stops every thread.
        """
        if all(type(item) is bytes for item in items):
            return items
        cpu0 = time.thread_time()
        clock = time.perf_counter_ns
        builders = self._builders
        build_ns = serialize_ns = 0
        out: list[bytes] = []
        for item in items:
            if type(item) is bytes:
                out.append(item)
                continue
            rec, build = builders[item[0]]
            origin = item[1]
            t0 = clock()
            try:
                event, found = build(rec, item)
                t1 = clock()
                payload = rec.encode(event, origin, found)
            except Exception as exc:  # counted for its integration; the batch goes on
                rec.stats.count_error(origin, f"{type(exc).__name__}: {exc}")
                continue
            t2 = clock()
            build_ns += t1 - t0
            serialize_ns += t2 - t1
            if payload is not None:
                out.append(payload)
        cpu = time.thread_time() - cpu0
        share = build_ns / max(1, build_ns + serialize_ns)
        timings = self.timings
        timings["build"] += cpu * share
        timings["serialize"] += cpu * (1 - share)
        return out

    def _deliver(self) -> bool:
        """Write the pending batch; on failure back off, and past the retry window drop it."""
        if not self._pending:
            return True
        t0 = time.thread_time()
        try:
            self._write(self._pending)
        except Exception as exc:
            now = time.monotonic()
            if self._outage_since is None:
                self._outage_since = now
                self.stats.count_error(self.kind, f"{type(exc).__name__}: {exc}")
            if now - self._outage_since >= self.config.retry_seconds:
                self.stats.count_dropped(f"{self.kind}_unavailable", len(self._pending))
                self._lost += len(self._pending)
                self._pending = []
            backoff = min(1.0, 0.05 * 2 ** min(5, int(now - self._outage_since)))
            self._stop.wait(backoff)
            return False
        self.timings["write"] += time.thread_time() - t0
        self.stats.count_delivered(self.kind, len(self._pending))
        self._pending = []
        self._outage_since = None
        return True

    # -- where events go -----------------------------------------------------------------------
    def _write(self, payloads: list[bytes]) -> None:
        raise NotImplementedError

    def _release(self) -> None:
        """Free the destination's resources at close."""

    def _after_fork(self) -> None:
        """Drop connections or files inherited from the parent."""


class RedisStreamSink(BatchingSink):
    """Pipelined `XADD <stream> * event <json>`, one entry per event (service mode)."""

    kind = "redis"

    def __init__(self, config: SDKConfig, stats: SDKStats) -> None:
        super().__init__(config, stats)
        self._client = self._connect()

    def _connect(self) -> Any:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # No retries inside redis-py: this sink has its own bounded retry policy, and short
        # socket timeouts keep a hung server from holding the worker (never the app).
        return redis.Redis.from_url(
            self.config.redis_url, socket_connect_timeout=1.0, socket_timeout=2.0,
            retry=Retry(NoBackoff(), 0), health_check_interval=0)

    def _write(self, payloads: list[bytes]) -> None:
        # The XADD commands are packed by hand into one buffer and sent with one write; the
        # replies are read after, in bulk. It is what a redis-py pipeline does, without its
        # per-command Python overhead (several µs an event, paid under the traced program's
        # GIL): hiredis parses the replies in C, one `gets()` each.
        head = self._command_head
        chunks: list[bytes] = []
        parts: list[bytes] = []
        append = parts.append
        size = 0
        for p in payloads:
            append(head)
            append(b"$%d\r\n" % len(p))
            append(p)
            append(b"\r\n")
            size += len(p)
            if size >= _CHUNK_BYTES:
                chunks.append(b"".join(parts))
                parts.clear()
                size = 0
        if parts:
            chunks.append(b"".join(parts))
        del parts
        pool = self._client.connection_pool
        connection = pool.get_connection()
        try:
            connection.send_packed_command(chunks, check_health=False)
            del chunks
            _read_replies(connection, len(payloads))  # an error reply (e.g. WRONGTYPE) raises
        except BaseException:
            connection.disconnect()  # replies may be left unread: never reuse this socket
            raise
        finally:
            pool.release(connection)

    @property
    def _command_head(self) -> bytes:
        """`XADD <stream> [MAXLEN ~ N] * event` in RESP, without the payload's bulk string."""
        parts = [b"XADD", self.config.stream.encode()]
        if self.config.stream_maxlen:
            parts += [b"MAXLEN", b"~", str(self.config.stream_maxlen).encode()]
        parts += [b"*", b"event"]
        return b"*%d\r\n" % (len(parts) + 1) + b"".join(
            b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)

    def _release(self) -> None:
        try:
            self._client.close()
        except Exception:
            pass

    def _after_fork(self) -> None:
        self._client = self._connect()


# Buffers stay below glibc's mmap threshold (128 KiB): a multi-megabyte buffer per batch is
# mmap'ed and unmapped each time, and the unmap's TLB shootdown interrupts the app's core.
_CHUNK_BYTES = 96 * 1024


def _read_replies(connection: Any, n: int) -> None:
    """Read `n` replies; raise the first error reply (after reading them all).

    With redis-py's hiredis parser the socket's bytes are fed to the C reader in large chunks
    and each reply costs one `gets()`; otherwise `read_response` is called once per reply.
    """
    parser = getattr(connection, "_parser", None)
    reader = getattr(parser, "_reader", None)
    if reader is None or _NOT_ENOUGH_DATA is None or not hasattr(parser, "read_from_socket"):
        for _ in range(n):
            connection.read_response(disable_decoding=True)
        return
    gets, fill = reader.gets, parser.read_from_socket
    error: BaseException | None = None
    while n:
        reply = gets(False)
        if reply is _NOT_ENOUGH_DATA:
            fill()
            continue
        n -= 1
        if isinstance(reply, BaseException) and error is None:
            error = reply
    if error is not None:
        raise error


try:
    from redis._parsers.hiredis import NOT_ENOUGH_DATA as _NOT_ENOUGH_DATA
except ImportError:  # another redis-py layout: fall back to read_response per reply
    _NOT_ENOUGH_DATA = None


class SpoolSink(BatchingSink):
    """Appends JSON lines durably to `$TRACELAB_HOME/spool/` (embedded mode, no server at all).

    One file per process, `<time>-<pid>-<rand>.jsonl.open` while written and renamed to
    `.jsonl` when complete; the store folds them into Parquet (spec/README.md, "Transport").
    For as long as it may append, the writer holds an exclusive `flock` on its `.open` file:
    that lock, not the PID in the name (meaningless in another container), is how a folder
    knows the file is still being written. The file is created and locked under a hidden
    name and only then renamed into view, so no folder ever sees it unlocked while live; at
    completion it is renamed before its descriptor (and lock) is closed, for the same reason.
    """

    kind = "spool"

    def __init__(self, config: SDKConfig, stats: SDKStats) -> None:
        super().__init__(config, stats)
        self.directory = Path(config.home) / "spool"
        self._fd: int | None = None
        self._path: Path | None = None
        self._written = 0

    def _open(self) -> int:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        name = f"{stamp}-{os.getpid()}-{secrets.token_hex(4)}.jsonl.open"
        hidden = self.directory / f".{name}.new"  # dot names are never folded
        fd = os.open(hidden, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.rename(hidden, self.directory / name)
        except BaseException:
            os.close(fd)
            hidden.unlink(missing_ok=True)
            raise
        self._fd, self._path = fd, self.directory / name
        self._written = 0
        return fd

    def _write(self, payloads: list[bytes]) -> None:
        fd = self._fd if self._fd is not None else self._open()
        data = memoryview(b"\n".join(payloads) + b"\n")
        while data:
            n = os.write(fd, data)
            data = data[n:]
        os.fsync(fd)
        self._written += len(payloads)
        if os.fstat(fd).st_size >= SPOOL_ROLL_BYTES:
            self._complete()

    def _complete(self) -> None:
        """Close the current file and mark it complete by dropping the `.open` suffix."""
        if self._fd is None or self._path is None:
            return
        fd, path = self._fd, self._path
        self._fd = self._path = None
        try:
            os.replace(path, path.with_suffix(""))
        finally:
            os.close(fd)  # after the rename: the `.open` name is never seen unlocked

    def _release(self) -> None:
        try:
            self._complete()
        except OSError as exc:
            self.stats.count_error(self.kind, f"closing spool file: {exc}")

    def _after_fork(self) -> None:
        # The parent's file: leave it to the parent. The lock belongs to the open file both
        # share, so closing the child's copy leaves the parent's lock in place.
        if self._fd is not None:
            os.close(self._fd)
        self._fd = None
        self._path = None
