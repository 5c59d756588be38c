"""The active recorder: configuration, redactor, sink and counters for this process.

`init()` creates it (or reconfigures it: a second `init` never patches twice), integrations
and spans read it through `current()` on every call, which is a single global read. With
`TRACELAB_DISABLED=1` or before `init`, `current()` is None and everything is a pass-through.
"""
from __future__ import annotations

import atexit
import dataclasses
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import orjson

from tracelab.config import SDKConfig, is_disabled, resolve_sdk_config
from tracelab.events import MAX_EVENT_BYTES
from tracelab.sdk import lifecycle as run_lifecycle
from tracelab.sdk.redaction import Redactor, scrub_json_bytes
from tracelab.sdk.sinks import BatchingSink, RedisStreamSink, SpoolSink
from tracelab.sdk.stats import SDKStats

_ORJSON_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY
_dumps = orjson.dumps
T = TypeVar("T")


class Recorder:
    """Everything one `init()` set up; replaced as a whole by the next `init()`."""

    # `record_http` may queue a call for the sink's thread to build (a class attribute: a
    # wrapper that forwards attributes, like the proxy's `Tagged`, must build at once so its
    # own `submit` sees the event).
    defers = True

    def __init__(self, config: SDKConfig, stats: SDKStats, sink: BatchingSink) -> None:
        self.config = config
        self.stats = stats
        self.sink = sink
        self.redactor = Redactor(config.redact_patterns)
        self._builders: dict[Callable[..., Any], int] = {}

    def submit(self, event: dict[str, Any], origin: str, found: set[str] | None = None) -> None:
        """Serialize now and enqueue bytes; `found` values are scrubbed from the whole event."""
        payload = self.encode(event, origin, found)
        if payload is not None:
            self.sink.submit(payload)

    def builder(self, build: Callable[[Recorder, tuple[Any, ...]],
                                      tuple[dict[str, Any], set[str]]]) -> int:
        """The key to put first in a call tuple queued for `build` on the sink's thread.

        A call is queued as a tuple `(key, origin, …)` of strings, bytes and numbers, and the
        sink runs `build(recorder, call)` for it, then `encode`, before writing: nothing
        unredacted ever leaves the process. The key, not the recorder itself, is in the tuple
        so that the collector can stop tracking it (`tracelab.sdk.capture._flat`).
        """
        key = self._builders.get(build)
        if key is None:
            key = self._builders[build] = self.sink.register(self, build)
        return key

    def encode(self, event: dict[str, Any], origin: str,
               found: set[str] | None = None) -> bytes | None:
        """The event's JSON, echoes of `found` scrubbed; counted as captured. None: dropped.

        An event that would be over `MAX_EVENT_BYTES`, or cannot be serialized, is shrunk to
        fit (bodies become `$tracelab` markers, counted as `shrunk` in stats) rather than
        dropped.
        """
        try:
            try:  # str keys only (every HTTP event): about twice as fast as OPT_NON_STR_KEYS
                payload = _dumps(event, default=repr, option=orjson.OPT_SERIALIZE_NUMPY)
            except TypeError:  # a non-str key (a hook's or a function's payload): same output
                payload = _dumps(event, default=repr, option=_ORJSON_OPTIONS)
        except Exception:
            payload = None
        if payload is None or len(payload) > MAX_EVENT_BYTES:
            payload = self._shrunk(event, origin)
            if payload is None:
                return None
        if found:
            payload = scrub_json_bytes(payload, found)
        self.stats.count_captured(origin)
        return payload

    def _shrunk(self, event: dict[str, Any], origin: str) -> bytes | None:
        """The event's JSON with its bulky parts as markers (`tracelab.sdk.limits`)."""
        from tracelab.sdk.limits import fit_event

        def dumps(value: Any) -> bytes:
            return _dumps(value, default=repr, option=_ORJSON_OPTIONS)

        try:
            fitted = fit_event(event, dumps)
        except Exception as exc:
            fitted = None
            self.stats.count_error(origin, f"could not shrink an event: {exc!r}")
        if fitted is None:
            self.stats.count_error(origin, "an event could not be serialized within "
                                           f"{MAX_EVENT_BYTES} bytes")
            self.stats.count_dropped("unserializable")
            return None
        self.stats.count_shrunk()
        return fitted[1]

    def safely(self, origin: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        """Run capture code so that its failure is counted, never felt by the traced program."""
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            self.stats.count_error(origin, f"{type(exc).__name__}: {exc}")
            return None


_recorder: Recorder | None = None
_stats = SDKStats()
_lock = threading.RLock()
_atexit_registered = False


def current() -> Recorder | None:
    """The active recorder, or None when tracing is off (before init, disabled, after shutdown)."""
    return _recorder


def _make_sink(config: SDKConfig) -> BatchingSink:
    return RedisStreamSink(config, _stats) if config.redis_url else SpoolSink(config, _stats)


def _same_destination(a: SDKConfig, b: SDKConfig) -> bool:
    return (a.redis_url, a.stream, a.stream_maxlen, str(a.home), a.queue_size, a.batch_size) == \
        (b.redis_url, b.stream, b.stream_maxlen, str(b.home), b.queue_size, b.batch_size)


def init(
    workflow_name: str | None = None,
    service_name: str | None = None,
    *,
    run_id: str | None = None,
    tags: Mapping[str, Any] | None = None,
    redis_url: str | None = None,
    capture_payloads: bool | None = None,
    redact: Iterable[str] = (),
    max_body_bytes: int | None = None,
    integrations: Iterable[str] | None = None,
    lifecycle: bool = True,
) -> SDKConfig | None:
    """Start recording this process's interactions (see README, "Python SDK").

    Every argument falls back to its environment variable. Returns the resolved configuration,
    or None when `TRACELAB_DISABLED=1`. Raises `tracelab.config.ConfigError` for a missing
    workflow name or a setting the event contract or redis-py would refuse, naming it. A failed
    `init()` changes nothing: no library patched, no sink, no exit hook, and the recorder of a
    previous `init()` (if any) still recording as before.

    `lifecycle=False` publishes no run start/end and installs no excepthook or SIGTERM handler:
    for a caller that publishes them itself (`tracelab proxy`, when it starts listening).
    """
    global _recorder
    if is_disabled():
        return None
    config = resolve_sdk_config(
        workflow_name, service_name, run_id=run_id, tags=tags, redis_url=redis_url,
        capture_payloads=capture_payloads, redact=redact, max_body_bytes=max_body_bytes,
        integrations=integrations)
    from tracelab.sdk.command import with_command

    config = dataclasses.replace(config, tags=with_command(config.tags,
                                                           Redactor(config.redact_patterns)))
    from tracelab.sdk import integrations as integration_registry

    integration_registry.check(config.integrations)
    with _lock:
        previous = _recorder
        reuse = previous is not None and _same_destination(previous.config, config)
        sink = previous.sink if reuse else _make_sink(config)
        try:
            recorder = Recorder(config, _stats, sink)
            integration_registry.activate(config.integrations)
            _register_at_exit()
        except BaseException:
            if not reuse:
                sink.close(timeout=0)
            _restore_integrations(previous)
            raise
        if previous is not None:  # before its sink may close below
            previous.safely(run_lifecycle.ORIGIN, run_lifecycle.switched, previous, recorder)
        if reuse:
            sink.config = config
        elif previous is not None:
            previous.sink.close(timeout=config.shutdown_timeout)
        _recorder = recorder
    if lifecycle:
        recorder.safely(run_lifecycle.ORIGIN, run_lifecycle.start, recorder)
        recorder.safely(run_lifecycle.ORIGIN, run_lifecycle.install_handlers)
    if os.environ.get("TRACELAB_REPLAY"):  # started by `tracelab replay`: answer from it
        from tracelab.replay.engine import activate_from_env

        activate_from_env()
    return config


def _register_at_exit() -> None:
    global _atexit_registered
    if not _atexit_registered:
        atexit.register(_shutdown_at_exit)
        _atexit_registered = True


def _restore_integrations(previous: Recorder | None) -> None:
    """After a failed `init()`: the patches as they were before it."""
    from tracelab.sdk import integrations as integration_registry

    try:
        if previous is None:
            integration_registry.deactivate()
        else:
            integration_registry.activate(previous.config.integrations)
    except Exception as exc:
        _stats.count_error("init", f"restoring integrations: {exc!r}")


def flush(timeout: float = 5.0) -> bool:
    """Deliver everything recorded so far; returns False if `timeout` seconds were not enough.

    In embedded mode the spool is then folded into the Parquet store within what is left of
    `timeout`, so queries made after `flush()` see every event recorded before it. Folding is
    never waited on: if another process holds the fold lock, or the time runs out mid-fold,
    the rest is left (safely, by offsets) to the next reader, which folds before answering.
    Returns by `timeout` either way.
    """
    deadline = time.monotonic() + max(0.0, timeout)
    rec = _recorder
    if rec is None:
        return True
    try:
        delivered = rec.sink.flush(timeout)
    except Exception as exc:
        _stats.count_error("flush", repr(exc))
        return False
    if delivered and rec.config.redis_url is None:
        _fold_spool(rec, deadline)
    return delivered


def _fold_spool(rec: Recorder, deadline: float) -> None:
    if time.monotonic() >= deadline:
        return
    try:
        from tracelab.store.spool import fold_within
    except ImportError:  # the store is optional for a recording-only install
        return
    rec.safely("store", fold_within, rec.config.home, deadline)


def shutdown(timeout: float | None = None) -> bool:
    """End the run (`kind: run` end, reason `shutdown`), flush within `timeout` (default
    TRACELAB_SHUTDOWN_TIMEOUT, 2 s), stop the sink, unpatch."""
    return _shutdown(timeout, "shutdown")


def _shutdown(timeout: float | None, reason: str) -> bool:
    global _recorder
    with _lock:
        rec = _recorder
        if rec is None:
            return True
        rec.safely(run_lifecycle.ORIGIN, run_lifecycle.end, rec, reason)
        _recorder = None
        from tracelab.sdk import integrations as integration_registry

        integration_registry.deactivate()
        try:
            return rec.sink.close(rec.config.shutdown_timeout if timeout is None else timeout)
        except Exception as exc:
            _stats.count_error("shutdown", repr(exc))
            return False


def _shutdown_at_exit() -> None:
    try:
        _shutdown(None, run_lifecycle.exit_reason())
    except Exception:  # interpreter teardown: never print a traceback from here
        pass


def stats() -> dict[str, Any]:
    """Counters: captured, published (Redis), spooled, dropped, errors, per integration."""
    rec = _recorder
    extra: dict[str, Any] = {"active": rec is not None}
    if rec is not None:
        extra.update(mode=rec.config.mode, queued=rec.sink.queued(),
                     workflow=rec.config.workflow, run_id=rec.config.run_id)
    return _stats.snapshot(**extra)


def _after_fork_in_child() -> None:
    """In a forked child: a fresh lock (another parent thread may have held this one at fork
    time, and it would stay held forever here) and a sink of the child's own."""
    global _lock
    _lock = threading.RLock()
    rec = _recorder
    if rec is not None:
        rec.sink.reset_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
