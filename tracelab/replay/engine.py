"""In-process replay for the Python SDK: `tracelab.replay(...)` and `TRACELAB_REPLAY` activation.

A replay answers the process's outbound calls from a recording instead of the network. The
adapters (tracelab/replay/adapters/) sit beneath the SDK's recording wrappers, so the new run
is recorded exactly like a live one, each event tagged `replay=hit|miss|passthrough` and the
run (or, with a user's own `init()`, each event recorded during the replay) tagged
`replay_of=<original run id>`. A call the recording does not hold fails with the HTTP
library's own connection error by default: nothing leaves the machine.

With `faults=` (or TRACELAB_REPLAY_FAULTS for the process `tracelab replay` starts), the rules
of `tracelab.replay.faults` are applied before matching (see tracelab/replay/session.py): the
run meets rate limits, resets, timeouts and broken bodies, and the result's `resilience` says
what the program did about each.
"""
from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from tracelab.replay import adapters
from tracelab.replay.matching import MatchOptions, parse_ignore
from tracelab.replay.recording import Recording, RecordingError, load_recording
from tracelab.replay.session import ON_MISS_MODES, Session, active, set_active

if TYPE_CHECKING:
    from tracelab.replay.faults import FaultSet

__all__ = ["Replay", "activate_from_env", "active", "replay", "start", "stop"]

_lock = threading.RLock()


def _options(ignore: Iterable[str], headers: Iterable[str]) -> MatchOptions:
    if isinstance(ignore, str) or isinstance(headers, str):
        raise TypeError("ignore= and headers= take a list of strings, not one string")
    return MatchOptions(ignore=tuple(parse_ignore(rule) for rule in ignore),
                        headers=tuple(str(h).lower() for h in headers))


def start(session: Session) -> None:
    """Make `session` answer every call of the process; ValueError if one already does."""
    from tracelab.sdk.recorder import current

    with _lock:
        if active() is not None:
            raise ValueError("a replay is already active in this process; nest none")
        session.recorder = current()
        set_active(session)
        adapters.install()


def stop(session: Session) -> None:
    """End `session` (if it is the active one): the libraries are unpatched, calls go live."""
    with _lock:
        if active() is session:
            set_active(None)
            adapters.uninstall()


@dataclass
class Replay:
    """What `with tracelab.replay(...) as r:` gives: the outcome, live while it runs.

    `hits` (recorded events that answered a call), `misses` (`{"call", "message"}`),
    `passthrough` (calls sent live), `faulted` (calls a fault answered: `{"call", "fault",
    "action"}`), `unused` (recorded calls nobody asked for), `calls` (the call log: one
    `tracelab.replay.report.call_summary` per event recorded), `resilience` (what the program
    did about each fault, a DataFrame), `run_id` and, after the block, `execution` (the new
    run from the store).
    """

    session: Session
    run_id: str | None = None
    workflow: str | None = None
    owns_init: bool = False
    _execution: Any = field(default=None, repr=False)

    @property
    def hits(self) -> list[dict[str, Any]]:
        return list(self.session.hits)

    @property
    def misses(self) -> list[dict[str, str]]:
        return list(self.session.misses)

    @property
    def passthrough(self) -> list[str]:
        return list(self.session.passthrough)

    @property
    def faulted(self) -> list[dict[str, str]]:
        return list(self.session.faulted)

    @property
    def calls(self) -> list[dict[str, Any]]:
        """The call log so far, by start time (payload-free summaries of the recorded events)."""
        with self.session._lock:
            calls = list(self.session.calls)
        return sorted(calls, key=lambda c: c.get("t") or 0)

    @property
    def resilience(self) -> Any:
        """One row per injected fault episode: retried? after how long? recovered, gave up or
        ignored? (`tracelab.replay.resilience`), as a pandas DataFrame."""
        from tracelab.replay.resilience import resilience_frame

        return resilience_frame(self.calls)

    @property
    def unused(self) -> list[dict[str, Any]]:
        return self.session.unused()

    @property
    def recording(self) -> Recording:
        return self.session.recording

    @property
    def execution(self) -> Any:
        """The new run as a `tracelab.Execution` (query it after the `with` block: flushed)."""
        if self._execution is None and self.run_id is not None:
            from tracelab.api import Execution

            self._execution = Execution(self.run_id, workflow=self.workflow)
        return self._execution

    def __enter__(self) -> Replay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop answering; flush the run (and end the recorder this replay started)."""
        import tracelab.sdk.recorder as recorder

        stop(self.session)
        if self.owns_init:
            recorder.shutdown()
            _fold(self.session)
        else:
            recorder.flush()


def _fold(session: Session) -> None:
    """After our own `shutdown()`: fold the spool so `r.execution` sees the run at once."""
    rec = session.recorder
    if rec is None or rec.config.redis_url is not None:
        return
    import time

    try:
        from tracelab.store.spool import fold_within

        fold_within(rec.config.home, time.monotonic() + 5.0)
    except Exception:  # the store is optional; a later reader folds
        pass


def replay(source: str | Path | Recording, *, on_miss: str = "fail", speed: float = 0.0,
           ignore: Iterable[str] = (), headers: Iterable[str] = (),
           faults: Any = None) -> Replay:
    """Answer this process's calls from a recording until the returned `Replay` is closed.

    `source`: a recording file, a run id in the store, or a loaded `Recording`. Without a
    prior `tracelab.init()`, one is made for the replay (the recording's workflow, a new run
    id, tag `replay_of`) and shut down at the end; with one, the user's recorder is kept and
    every event recorded meanwhile is tagged `replay_of` and `replay`. `faults`: fault rules
    (anything `tracelab.replay.faults.load_rules` takes: a YAML/JSON file path, "@path", JSON
    or YAML text, a rule dict or a list of them) or a `FaultSet`. Raises `RecordingError` for
    a source that cannot be loaded, `FaultRuleError` (a ValueError, with every reason) for bad
    rules, ValueError for a bad option or a replay already active.
    """
    options = _options(ignore, headers)
    fault_set = _fault_set(faults)
    recording = source if isinstance(source, Recording) else load_recording(source)
    session = Session(recording, on_miss=on_miss, speed=speed, options=options,
                      faults=fault_set)
    import tracelab.sdk.recorder as recorder
    from tracelab.events import new_event_id

    owns_init = False
    if recorder.current() is None:
        recorder.init(recording.workflow or "replay", run_id=f"replay-{new_event_id()}",
                      tags={"replay_of": recording.run_id} if recording.run_id else None)
        owns_init = True
    rec = recorder.current()
    try:
        start(session)
    except BaseException:
        if owns_init:
            recorder.shutdown()
        raise
    return Replay(session, run_id=rec.config.run_id if rec else None,
                  workflow=rec.config.workflow if rec else None, owns_init=owns_init)


def _fault_set(faults: Any) -> FaultSet | None:
    """The rules as a FaultSet (None: no faults); a bad rule raises FaultRuleError."""
    if faults is None:
        return None
    from tracelab.replay.faults import FaultSet

    return FaultSet.load(faults)


# -- activation by the environment (`tracelab replay` sets it for the process it starts) ---

_env_session: Session | None = None


def _env_list(name: str) -> tuple[str, ...]:
    raw = os.environ.get(name)
    if not raw:
        return ()
    value = orjson.loads(raw)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{name} must be a JSON list of strings, got {raw!r}")
    return tuple(value)


def _session_from_env() -> Session:
    """The session TRACELAB_REPLAY* describe; a broken setting fails every call, explained."""
    source = os.environ["TRACELAB_REPLAY"]
    on_miss = os.environ.get("TRACELAB_REPLAY_ON_MISS") or "fail"
    try:
        speed = float(os.environ.get("TRACELAB_REPLAY_SPEED") or 0)
        options = _options(_env_list("TRACELAB_REPLAY_IGNORE"),
                           _env_list("TRACELAB_REPLAY_HEADERS"))
        if on_miss not in ON_MISS_MODES:
            raise ValueError(f"TRACELAB_REPLAY_ON_MISS must be one of "
                             f"{', '.join(ON_MISS_MODES)}, got {on_miss!r}")
        faults = os.environ.get("TRACELAB_REPLAY_FAULTS")
        fault_set = _fault_set(faults) if faults else None
        recording = load_recording(source)
        return Session(recording, on_miss=on_miss, speed=speed, options=options, proxied=True,
                       faults=fault_set)
    except (RecordingError, ValueError, OSError) as exc:
        # Fail closed: an empty recording misses every call, the miss naming the problem.
        empty = Recording(events=[], run_id=None, workflow=None, command=None, source=source)
        session = Session(empty, proxied=True)
        session.setup_error = f"replay not possible ({exc}); nothing was sent"
        return session


def activate_from_env() -> Session | None:
    """Called by `tracelab.init()` when TRACELAB_REPLAY is set: replay for the whole process.

    Idempotent (a second `init()` keeps the session). At exit, one report line is appended to
    TRACELAB_REPLAY_REPORT (see tracelab/replay/report.py).
    """
    global _env_session
    if not os.environ.get("TRACELAB_REPLAY"):
        return None
    with _lock:
        if _env_session is not None:
            return _env_session
        session = _session_from_env()
        start(session)
        _env_session = session
        from tracelab.replay import report

        atexit.register(report.write_at_exit, session)
    return session
