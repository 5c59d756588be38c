"""The replay session: one recording, its matcher, the outcome of every call, and the tags.

There is at most one active session per process (`active()`), process-wide rather than per
context, because an application's worker threads must be answered too and threads do not
inherit context variables. Adapters (tracelab/replay/adapters/) ask it `take(live)` for each
outbound call; it answers from the `Matcher`, counts hits, misses and passthroughs for the
report, and leaves the outcome (`hit` | `miss` | `passthrough`) in a context variable that
the next event built in the same thread or task consumes (`tracelab.sdk.capture.build_event`
calls `event_tags()`, then hands the event to `observe`, the call log of the report line). It
has to be "the next event" rather than "events inside a scope": the SDK's recording wrappers
sit above the adapters and build their event only after the adapter has returned or raised.

With fault rules (`faults`, a `tracelab.replay.faults.FaultSet`), `take` asks them first, before
the matcher: a `latency` fault waits (real time, whatever the speed), then the call is answered
as usual and consumes its recording; `status`, `reset` and `timeout` answer with the fault's
synthetic event WITHOUT consuming the recording (so the agent's retry gets the recorded answer,
and they apply even to calls the recording does not hold); the mangling actions (`empty_body`,
`malformed_body`, `truncate`, `stream_cut`) answer with the recorded answer `take` would give
(`Matcher.peek`), changed by `Fault.response_event`, again without consuming it (no recorded
answer: a normal miss). A faulted call is counted in `faulted`, neither a hit nor a miss, and
its event is tagged `replay=fault` plus `Fault.tags()`; a latency-only fault's event is a hit
with the fault's tags.

This module also turns a recorded response back into bytes, headers and timed chunks, the
parts every HTTP adapter needs to rebuild its library's own response object.
"""
from __future__ import annotations

import base64
import contextvars
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from tracelab.replay.matching import Hit, Matcher, MatchOptions, describe
from tracelab.replay.recording import Recording

if TYPE_CHECKING:
    from tracelab.replay.faults import Call, Fault, FaultSet

ON_MISS_MODES = ("fail", "passthrough", "record")
# Set on a call an SDK sent live itself (passthrough/record) under `tracelab replay`: the replay
# proxy forwards it uncounted and removes the header.
HANDLED_HEADER = "X-Tracelab-Replay-Handled"
# Recorded events never answered from a recording: they are the program's own work.
UNANSWERED_KINDS = frozenset({"function"})
# Headers describing the recorded wire form, not the decoded body the SDK stored.
_HOP_HEADERS = frozenset(("content-length", "transfer-encoding", "content-encoding",
                          "connection", "keep-alive"))

_pending: contextvars.ContextVar[str | None] = contextvars.ContextVar("tracelab_replay_outcome",
                                                                      default=None)
# The fault tags of the call whose outcome is pending (set and consumed with `_pending`).
_pending_fault: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "tracelab_replay_fault", default=None)


class ReplayMiss(ConnectionError):
    """A call the recording does not hold, where no library error fits (hooked calls)."""


@dataclass
class Outcome:
    """What a session decided for one call.

    `hit`: answer with `event` (the recorded one, or with `fault` set the fault's synthetic
    event: a status answer, a reset/timeout error, a mangled recorded answer). Otherwise
    `passthrough` says whether to run the call live (on-miss `passthrough`/`record`) or fail
    it with `message` (the matcher's explanation) as the library's own connection error.
    `pause_ms`: a fault's latency the adapter still has to wait (`take(wait=False)`); `started`
    is already moved past it, so the recorded latency and chunk offsets count from its end.
    """

    hit: bool
    call: str
    event: dict[str, Any] | None = None
    passthrough: bool = False
    message: str = ""
    started: float = field(default_factory=time.monotonic)
    fault: Fault | None = None
    pause_ms: float = 0.0

    @property
    def tag(self) -> str:
        if self.fault is not None and self.fault.action != "latency":
            return "fault"
        return "hit" if self.hit else "passthrough" if self.passthrough else "miss"

    @property
    def timeout_s(self) -> float | None:
        """Seconds a `timeout` fault hangs before the library's timeout error, else None."""
        return self.fault.timeout_s if self.fault is not None and \
            self.fault.action == "timeout" else None

    def retag(self) -> None:
        """Make this outcome the `replay` tag of the next event built here again (a call that
        made other traced calls in between, whose events consumed it)."""
        _pending.set(self.tag)
        _pending_fault.set(self.fault.tags() if self.fault is not None else None)


class Session:
    """A replay in progress: thread-safe, shared by every thread of the process."""

    def __init__(self, recording: Recording, *, on_miss: str = "fail", speed: float = 0.0,
                 options: MatchOptions = MatchOptions(), proxied: bool = False,
                 faults: FaultSet | None = None) -> None:
        if on_miss not in ON_MISS_MODES:
            raise ValueError(f"on_miss must be one of {', '.join(ON_MISS_MODES)}; "
                             f"got {on_miss!r}")
        if not speed >= 0:
            raise ValueError(f"speed must be a number >= 0 (0 answers at once); got {speed!r}")
        self.recording = recording
        self.on_miss = on_miss
        self.speed = float(speed)
        self.proxied = proxied  # under `tracelab replay`'s proxy: mark what we sent live
        self.matcher = Matcher((e for e in recording.events
                                if e.get("kind") not in UNANSWERED_KINDS), options)
        self.hits: list[dict[str, Any]] = []
        self.misses: list[dict[str, str]] = []
        self.passthrough: list[str] = []
        self.faults = faults
        # Calls answered by a fault: {"call", "fault" (rule id), "action"}; not hits/misses.
        self.faulted: list[dict[str, str]] = []
        # The call log: `report.call_summary` of every event recorded during the replay.
        self.calls: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._replay_of = recording.run_id
        self.recorder: Any = None  # the recorder when the replay started (redaction settings)
        self.setup_error: str | None = None  # set: the replay could not start, all calls miss

    # -- answering ------------------------------------------------------------------------
    def take(self, live: Mapping[str, Any], *, wait: bool = True) -> Outcome:
        """The outcome for the live call (`live`: the stored event shape, see matching.py).

        `wait` (adapters that do not time a stream themselves): on a hit, sleep the recorded
        latency divided by the speed first, and a fault's latency (else left in `pause_ms`).
        Never raises: a matcher failure is a miss.
        """
        started = time.monotonic()
        _pending_fault.set(None)
        fault = self._decide(live)
        if fault is not None:
            try:
                faulted = self._faulted(live, fault, started, wait)
            except Exception as exc:  # a TraceLab failure: the call is answered as usual
                from tracelab.sdk.recorder import _stats

                _stats.count_error("replay.faults", f"{type(exc).__name__}: {exc}")
                faulted, fault = None, None
            if faulted is not None:
                return faulted
            if fault is not None:
                started += fault.latency_ms / 1000.0
        outcome = self._take(live, started, wait)
        if fault is not None:  # latency only, or a mangling fault with nothing recorded
            _pending_fault.set(fault.tags() if outcome.hit else None)
            if outcome.hit:
                outcome.fault = fault
            if not wait:
                outcome.pause_ms = fault.latency_ms
        return outcome

    def _take(self, live: Mapping[str, Any], started: float, wait: bool) -> Outcome:
        try:
            call = describe(live)
            answer = self.matcher.take(live)
        except Exception as exc:  # the key of an odd live value: fail closed, explained
            call = _safe_describe(live)
            answer = None
            message = f"replay could not match {call}: {type(exc).__name__}: {exc}"
        else:
            message = getattr(answer, "message", "")
        if self.setup_error:
            message = f"{self.setup_error}; the call was {call}"
        if isinstance(answer, Hit):
            with self._lock:
                self.hits.append(answer.event)
            _pending.set("hit")
            outcome = Outcome(True, call, answer.event, started=started)
            if wait:
                self.wait_until(started, _latency_ms(answer.event))
            return outcome
        return self.unanswered(call, message, started)

    def _decide(self, live: Mapping[str, Any]) -> Fault | None:
        """The fault the rules give this call, or None; a TraceLab failure here is no fault."""
        if self.faults is None or self.setup_error:
            return None
        try:
            return self.faults.decide_call(fault_call(live))
        except Exception as exc:
            from tracelab.sdk.recorder import _stats

            _stats.count_error("replay.faults", f"{type(exc).__name__}: {exc}")
            return None

    def _faulted(self, live: Mapping[str, Any], fault: Fault, started: float,
                 wait: bool) -> Outcome | None:
        """The outcome of a call a fault answers (None: answer it as usual, after the
        fault's latency). Never consumes the recording."""
        if wait and fault.latency_ms > 0:
            time.sleep(fault.latency_ms / 1000.0)  # real time: the fault's, not the recording's
        event = fault.replay_answer(lambda: self._peek(live))
        if event is None:
            return None
        call = _safe_describe(live)
        tags = fault.tags()
        with self._lock:
            self.faulted.append({"call": call, "fault": fault.rule_id, "action": fault.action})
        _pending.set("fault")
        _pending_fault.set(tags)
        return Outcome(True, call, event, fault=fault,
                       started=started + fault.latency_ms / 1000.0,
                       pause_ms=0.0 if wait else fault.latency_ms)

    def _peek(self, live: Mapping[str, Any]) -> dict[str, Any] | None:
        """The recorded answer `take` would give `live`, without taking it (None: none, or
        the matcher failed)."""
        try:
            peeked = self.matcher.peek(live)
        except Exception:
            return None
        return peeked.event if isinstance(peeked, Hit) else None

    def pause(self, outcome: Outcome) -> None:
        """Sleep a fault's latency `take(wait=False)` left to the adapter (sync adapters)."""
        if outcome.pause_ms > 0:
            time.sleep(outcome.pause_ms / 1000.0)

    def unanswered(self, call: str, message: str, started: float | None = None) -> Outcome:
        """A call with no recorded answer: a miss in `fail` mode, else sent live."""
        started = time.monotonic() if started is None else started
        _pending_fault.set(None)
        if self.on_miss == "fail":
            with self._lock:
                self.misses.append({"call": call, "message": message})
            _pending.set("miss")
            return Outcome(False, call, message=message, started=started)
        return self.passed(call, message, started)

    def passed(self, call: str, message: str = "", started: float | None = None) -> Outcome:
        """Record a call run live (on-miss passthrough/record, or a hook without `replay=`)."""
        _pending_fault.set(None)
        with self._lock:
            self.passthrough.append(call)
        _pending.set("passthrough")
        if self.on_miss == "record":
            _pending_new.set(True)
        return Outcome(False, call, passthrough=True, message=message,
                       started=time.monotonic() if started is None else started)

    def wait_until(self, started: float, offset_ms: float) -> None:
        """Sleep until `offset_ms` (recorded) after `started`, scaled by the speed (0: never)."""
        delay = self.delay(started, offset_ms)
        if delay > 0:
            time.sleep(delay)

    def delay(self, started: float, offset_ms: float) -> float:
        if self.speed <= 0 or offset_ms <= 0:
            return 0.0
        return started + offset_ms / 1000.0 / self.speed - time.monotonic()

    # -- tags and results -----------------------------------------------------------------
    def event_tags(self) -> dict[str, str]:
        """Tags for the event being built now: `replay_of`, and this call's outcome (once):
        `replay`, and the fault's `fault`, `fault.action`, `fault.rule` if one was applied."""
        tags: dict[str, str] = {}
        if self._replay_of:
            tags["replay_of"] = self._replay_of
        outcome = _pending.get()
        if outcome is not None:
            _pending.set(None)
            fault_tags = _pending_fault.get()
            if fault_tags:
                _pending_fault.set(None)
                tags.update(fault_tags)
            tags["replay"] = outcome
            if _pending_new.get():
                _pending_new.set(False)
                tags["replay.new"] = "true"
        return tags

    def observe(self, event: Mapping[str, Any]) -> None:
        """Add an event recorded during the replay to the call log (`calls`); never raises."""
        from tracelab.replay.report import call_summary

        try:
            summary = call_summary(dict(event))
        except Exception:
            return
        with self._lock:
            self.calls.append(summary)

    def unused(self) -> list[dict[str, Any]]:
        return self.matcher.unused()

    def report(self, source: str = "sdk-py") -> dict[str, Any]:
        """This process's line of the `TRACELAB_REPLAY_REPORT` protocol (REPLAY.md)."""
        import os

        with self._lock:
            return {"source": source, "pid": os.getpid(),
                    "hits": [e.get("event_id") for e in self.hits],
                    "misses": list(self.misses), "passthrough": list(self.passthrough),
                    "faulted": len(self.faulted),
                    "calls": sorted(self.calls, key=lambda c: c.get("t") or 0)}


_pending_new: contextvars.ContextVar[bool] = contextvars.ContextVar("tracelab_replay_new",
                                                                   default=False)
_active: Session | None = None
_active_lock = threading.Lock()


def active() -> Session | None:
    """The session answering this process's calls, or None (a single global read)."""
    return _active


def set_active(session: Session | None) -> Session | None:
    """Make `session` the active one (None: stop replaying); returns the previous one."""
    global _active
    from tracelab.sdk import capture

    with _active_lock:
        previous, _active = _active, session
        capture.replay_session = session
    return previous


def recorder() -> Any:
    """The recorder whose redactor and body cap build the live view: the SDK's, else the one
    active when the replay started, else the defaults (tracing disabled or shut down), so the
    live call is still keyed as a default SDK would have stored it."""
    from tracelab.sdk.recorder import current

    rec = current()
    if rec is not None:
        return rec
    fallback = getattr(active(), "recorder", None)
    return fallback if fallback is not None else _default_recorder()


def _default_recorder() -> Any:
    from types import SimpleNamespace

    from tracelab.config import DEFAULT_MAX_BODY_BYTES
    from tracelab.sdk.redaction import Redactor

    return SimpleNamespace(redactor=Redactor(()), config=SimpleNamespace(
        capture_payloads=True, max_body_bytes=DEFAULT_MAX_BODY_BYTES, redact_patterns=()))


def _latency_ms(event: Mapping[str, Any]) -> float:
    latency = event.get("latency_ms")
    return float(latency) if isinstance(latency, (int, float)) else 0.0


def _safe_describe(live: Mapping[str, Any]) -> str:
    try:
        return describe(live)
    except Exception:
        return f"{live.get('target', 'unknown')} {live.get('endpoint', 'unknown')}"


def vendor_went_live() -> bool:
    """Inside a vendor call (twilio, boto3) whose replay adapter chose to send it live: the
    HTTP beneath is part of that decision, neither answered nor counted again."""
    from tracelab.sdk.context import http_suppressed

    return http_suppressed() and _pending.get() == "passthrough"


def clear_outcome() -> None:
    """Drop this call's pending `replay` tag: no event will be recorded for it (its library's
    recording integration is off), so it must not land on an unrelated later event."""
    _pending.set(None)
    _pending_new.set(False)
    _pending_fault.set(None)


def hang_seconds(outcome: Outcome, client_timeout: Any) -> float:
    """How long a `timeout` fault hangs: its `timeout_s`, or less when the client's own
    timeout (a number of seconds; None or anything else: no timeout) gives up first."""
    fault_s = outcome.timeout_s or 0.0
    if isinstance(client_timeout, (int, float)) and not isinstance(client_timeout, bool) \
            and client_timeout >= 0:
        return min(fault_s, float(client_timeout))
    return fault_s


def answer_chunks(response: Mapping[str, Any]) -> list[tuple[float, bytes]] | None:
    """`recorded_chunks`, but a stream that failed before its first chunk (a fault's
    `stream_cut_after: 0`) is an empty list of chunks, not a whole body: it still fails."""
    chunks = recorded_chunks(response)
    if chunks is None and stream_error(response) is not None:
        return []
    return chunks


def fault_call(live: Mapping[str, Any]) -> Call:
    """What a fault rule matches against, from the live call in the stored event shape: for
    HTTP the kind (`llm` by the SDK's rule), the target (host, host:port off the default
    port), `METHOD /path` and the stored body; otherwise the view's kind, target, endpoint
    and its whole `request` as the body."""
    from urllib.parse import urlsplit

    from tracelab.replay.faults import Call
    from tracelab.sdk.capture import http_target, llm_provider

    request = live.get("request")
    request = request if isinstance(request, dict) else {}
    if isinstance(request.get("url"), str) and isinstance(request.get("method"), str):
        split = urlsplit(request["url"])
        path = split.path or "/"
        body = request.get("body")
        kind = "llm" if llm_provider(split.hostname or "", path, body) else \
            str(live.get("kind") or "http")
        return Call(kind, http_target(split.scheme, split.netloc),
                    f"{request['method'].upper()} {path}", body)
    return Call(str(live.get("kind") or ""), str(live.get("target") or ""),
                str(live.get("endpoint") or ""), request)


def take_view(session: Session, view: Any, *args: Any) -> Outcome:
    """`session.take(view(*args), wait=False)`; a request the live view cannot be built for
    (a TraceLab failure) is unanswered, explained, rather than an exception in the app."""
    try:
        live = view(*args)
    except Exception as exc:
        return session.unanswered("a call", f"replay could not read the request: "
                                            f"{type(exc).__name__}: {exc}")
    return session.take(live, wait=False)


# -- the recorded response, back in wire form --------------------------------------------------

def body_bytes(body: Any) -> bytes:
    """A stored body (JSON value, text or `$tracelab` marker) back as the bytes it was."""
    if body is None:
        return b""
    if isinstance(body, str):
        return body.encode("utf-8")
    if isinstance(body, dict) and isinstance(body.get("$tracelab"), str):
        marker = body["$tracelab"]
        if marker == "binary":
            return base64.b64decode(body.get("base64") or "")
        if marker == "truncated":
            data = body.get("data") or ""
            return base64.b64decode(data) if body.get("encoding") == "base64" else \
                data.encode("utf-8")
        return b""  # not_captured and other markers: nothing was kept
    return orjson.dumps(body)


def recorded_chunks(response: Mapping[str, Any]) -> list[tuple[float, bytes]] | None:
    """A recorded stream's chunks as (ms since the request started, bytes); None if whole."""
    chunks = response.get("chunks")
    if not isinstance(chunks, list) or not chunks:
        return None
    out: list[tuple[float, bytes]] = []
    for chunk in chunks:
        if not isinstance(chunk, dict):
            continue
        data = chunk.get("data")
        if isinstance(data, str):
            raw = base64.b64decode(data) if chunk.get("encoding") == "base64" else \
                data.encode("utf-8")
        else:
            raw = body_bytes(data)
        t = chunk.get("t")
        out.append((float(t) if isinstance(t, (int, float)) else 0.0, raw))
    return out


def stream_error(response: Mapping[str, Any]) -> dict[str, Any] | None:
    """`{type, message}` of a stream that failed mid-way in the recording, else None."""
    stream = response.get("stream")
    error = stream.get("error") if isinstance(stream, dict) else None
    return error if isinstance(error, dict) else None


def recorded_headers(response: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The recorded response headers, minus those describing the wire form of the body."""
    headers = response.get("headers") or {}
    items = headers.items() if isinstance(headers, dict) else headers
    fields: list[tuple[str, str]] = []
    for name, value in items:
        if str(name).lower() in _HOP_HEADERS:
            continue
        for one in value if isinstance(value, list) else [value]:
            fields.append((str(name), str(one)))
    return fields


def timed_chunks(session: Session, outcome: Outcome,
                 chunks: list[tuple[float, bytes]]) -> Iterator[bytes]:
    """The chunks, each released at its recorded offset (scaled by the speed)."""
    for offset, data in chunks:
        session.wait_until(outcome.started, offset)
        yield data
