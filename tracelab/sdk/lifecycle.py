"""Run lifecycle: one `kind: run` event when a run starts and one when it ends.

Without them a reader can only guess from the newest event's age whether a run is still going
or died; with them an execution is `finished`, `failed` or `abandoned` (spec/README.md, "Run
lifecycle"). `init()` publishes the start; the end comes from `shutdown()` (`shutdown`), the
interpreter's exit (`exit`, or `exception` when the excepthook below saw an uncaught one), a
later `init()` for another run (`new_run`) or the SIGTERM handler below (`signal`). Both go
through `Recorder.submit` like every other event, so redaction, size limits and the sink apply.

At most one start and one end per run per process; a forked child inherits neither, so it
never ends its parent's run. Callers wrap these functions in `Recorder.safely`: nothing here
may reach the traced program.
"""
from __future__ import annotations

import contextvars
import os
import signal
import sys
import threading
import time
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any

from tracelab.sdk.capture import build_event, error_info

if TYPE_CHECKING:
    from tracelab.sdk.recorder import Recorder

ORIGIN = "lifecycle"
KIND = "run"
REASONS = ("exit", "shutdown", "new_run", "exception", "signal")
_SIGNAL_MARGIN_S = 0.5  # on top of the shutdown timeout, for the end event's own thread

_lock = threading.Lock()
_started: dict[tuple[str, str], str] = {}  # (workflow, run_id) -> source of its start
_ended: set[tuple[str, str]] = set()
_noted: dict[str, str] | None = None  # the uncaught exception the excepthook saw
_previous_excepthook: Any = None
_excepthook_installed = False


def _key(rec: Recorder) -> tuple[str, str]:
    return rec.config.workflow, rec.config.run_id


def _publish(rec: Recorder, *, endpoint: str, source: str, started_at: int, status: str = "ok",
             response: dict[str, Any] | None = None, error: dict[str, str] | None = None,
             found: set[str] | None = None) -> None:
    # A fresh context: a lifecycle event is never nested under the span that happens to be
    # open when `init()` or `shutdown()` is called.
    event = contextvars.Context().run(
        build_event, rec, kind=KIND, target=rec.config.service, endpoint=endpoint,
        started_at=started_at, latency_ms=0, status=status, request={},
        response=response if response is not None else {}, error=error, source=source)
    rec.submit(event, ORIGIN, found)


def start(rec: Recorder, *, source: str = "sdk-py", started_at: int | None = None) -> bool:
    """Publish the run's start unless this process already did; True when published."""
    key = _key(rec)
    with _lock:
        if key in _started:
            return False
        _started[key] = source
    _publish(rec, endpoint="start", source=source,
             started_at=time.time_ns() if started_at is None else started_at)
    return True


def end(rec: Recorder, reason: str, *, signal_name: str | None = None) -> bool:
    """Publish the run's end (once, and only for a run this process started); True if published.

    `reason` is one of `REASONS`. `exception` takes the exception the excepthook noted
    (its message redacted like any error message); `signal` needs `signal_name`.
    """
    key = _key(rec)
    with _lock:
        source = _started.get(key)
        if source is None or key in _ended:
            return False
        _ended.add(key)
    response: dict[str, Any] = {"reason": reason}
    error: dict[str, str] | None = None
    found: set[str] = set()
    if reason == "signal":
        response["signal"] = signal_name or "unknown"
        error = {"type": "Signal", "message": response["signal"]}
    elif reason == "exception" and _noted is not None:
        error = {"type": _noted["type"], "message": rec.redactor.text(_noted["message"], found)}
    _publish(rec, endpoint="end", source=source, started_at=time.time_ns(),
             status="error" if error is not None else "ok", response=response, error=error,
             found=found)
    return True


def switched(previous: Recorder, current: Recorder) -> None:
    """A new `init()`: end the previous run (`new_run`) when the new one is another run."""
    if _key(previous) != _key(current):
        end(previous, "new_run")


def exit_reason() -> str:
    """Why the interpreter is exiting: `exception` after an uncaught one, else `exit`."""
    return "exception" if _noted is not None else "exit"


def install_handlers() -> None:
    """The chained excepthook (once per process) and, when allowed, the SIGTERM handler.

    The SIGTERM handler is installed only from the main thread (Python allows no other) and
    only when SIGTERM still has its default action: a program's own handler is never replaced.
    """
    global _previous_excepthook, _excepthook_installed
    with _lock:
        if not _excepthook_installed:
            _previous_excepthook = sys.excepthook
            sys.excepthook = _excepthook
            _excepthook_installed = True
    if threading.current_thread() is threading.main_thread() \
            and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)


def _excepthook(exc_type: type[BaseException], exc: BaseException,
                tb: TracebackType | None) -> None:
    """Note the exception for the end event published at exit, then the previous hook prints."""
    global _noted
    try:
        _noted = error_info(exc)
    except Exception:  # noqa: BLE001 - noting must never hide the program's own traceback
        pass
    (_previous_excepthook or sys.__excepthook__)(exc_type, exc, tb)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    """Publish end(signal) and flush within the shutdown timeout, then die of SIGTERM anyway.

    The work runs on its own thread, joined with a deadline: this handler interrupts the main
    thread anywhere, possibly while it holds a lock the publishing needs, and must not wait
    on it forever. Then the default action is restored and the signal sent again, so the
    process's exit status stays "killed by SIGTERM".
    """
    try:
        from tracelab.sdk.recorder import current

        rec = current()
        if rec is not None:
            timeout = rec.config.shutdown_timeout
            worker = threading.Thread(target=_end_by_signal, args=(rec, timeout),
                                      name="tracelab-sigterm", daemon=True)
            worker.start()
            worker.join(timeout + _SIGNAL_MARGIN_S)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)


def _end_by_signal(rec: Recorder, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    if rec.safely(ORIGIN, end, rec, "signal", signal_name="SIGTERM"):
        rec.safely(ORIGIN, rec.sink.flush, max(0.0, deadline - time.monotonic()))


def _forget_in_child() -> None:
    """A forked child starts with no run of its own: it must not end its parent's."""
    global _lock, _noted
    _lock = threading.Lock()
    _started.clear()
    _ended.clear()
    _noted = None


os.register_at_fork(after_in_child=_forget_in_child)
