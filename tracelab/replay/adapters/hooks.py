"""Replay for `register_hook(..., replay=fn)`: a hooked call answered by `fn(recorded_event)`.

The hook's describer turns the call into the event it would record (service, endpoint,
request); that shape is what the matcher keys on, so a live call matches the recorded call
with the same description. On a hit the function does not run: `fn(recorded_event)` builds
its return value. A hook without `replay=` runs the function (tagged `replay=passthrough`):
the SDK cannot know how to answer it. A miss in `fail` mode raises `ReplayMiss` (a
`ConnectionError`) with the matcher's explanation. The call is recorded by the hook's own
wrapper either way, so the new run shows it like any other.

Faults (see tracelab/replay/session.py) apply to hooked calls with `replay=` (the SDK cannot
fake the others): `reset` raises `ConnectionResetError`, `timeout` waits the fault's
`timeout_s` and raises `TimeoutError` (the library is unknown, so are its errors), and the
other actions hand `fn` the fault's event instead of the recorded one (a `status` fault: a
`response` with that `status_code`, `headers` and `body`; a body fault: the recorded event with
its response body changed).
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from tracelab.replay.session import Outcome, ReplayMiss, Session, active
from tracelab.sdk import hooks
from tracelab.sdk.payloads import not_captured, to_jsonable
from tracelab.sdk.recorder import Recorder


def live_view(rec: Recorder, wrapper: Any, attr: str, args: tuple[Any, ...],
              kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """The call as the hook would record it (same describer, same redaction), or None."""
    described = hooks._describe(rec, wrapper.__tracelab_hook_fn__, attr, args, kwargs)
    if described is None:
        return None
    if rec.config.capture_payloads:
        request = to_jsonable(described.get("request"), rec.redactor, rec.config.max_body_bytes)
        request = request if isinstance(request, dict) or request is None else {"value": request}
    else:
        request = {"body": not_captured("capture_payloads is off")}
    return {"kind": str(described.get("kind") or "custom"), "target": described["service"],
            "endpoint": str(described.get("endpoint") or attr), "request": request or {}}


def _decide(rec: Recorder, session: Session, wrapper: Any, attr: str, args: tuple[Any, ...],
            kwargs: dict[str, Any]) -> tuple[Outcome, Callable[[dict[str, Any]], Any] | None]:
    answer = getattr(wrapper, "__tracelab_hook_replay__", None)
    live = rec.safely("hooks", live_view, rec, wrapper, attr, args, kwargs) \
        if answer is not None else None
    if live is None:  # no replay= (or an undescribable call): the function runs
        return session.passed(f"{getattr(wrapper, '__qualname__', attr)}"), None
    return session.take(live, wait=False), answer


def call(rec: Recorder, wrapper: Any, attr: str, original: Callable[..., Any],
         args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    session = active()
    if session is None:
        with hooks._recorded(rec, wrapper, attr, args, kwargs):
            return original(*args, **kwargs)
    outcome, answer = _decide(rec, session, wrapper, attr, args, kwargs)
    with hooks._recorded(rec, wrapper, attr, args, kwargs):
        try:
            session.pause(outcome)
            failure = _fault_failure(outcome)
            if failure is not None:
                if isinstance(failure, TimeoutError):
                    import time

                    time.sleep(outcome.timeout_s or 0.0)
                raise failure
            if outcome.hit and answer is not None:
                session.wait_until(outcome.started, _latency(outcome.event))
                return answer(outcome.event or {})
            if outcome.passthrough:
                return original(*args, **kwargs)
            raise ReplayMiss(outcome.message)
        finally:
            outcome.retag()  # the hook's event is recorded next, on leaving the `with`


async def call_async(rec: Recorder, wrapper: Any, attr: str, original: Callable[..., Any],
                     args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    session = active()
    if session is None:
        with hooks._recorded(rec, wrapper, attr, args, kwargs):
            return await original(*args, **kwargs)
    outcome, answer = _decide(rec, session, wrapper, attr, args, kwargs)
    with hooks._recorded(rec, wrapper, attr, args, kwargs):
        try:
            if outcome.pause_ms > 0:
                await asyncio.sleep(outcome.pause_ms / 1000.0)
            failure = _fault_failure(outcome)
            if failure is not None:
                if isinstance(failure, TimeoutError):
                    await asyncio.sleep(outcome.timeout_s or 0.0)
                raise failure
            if outcome.hit and answer is not None:
                delay = session.delay(outcome.started, _latency(outcome.event))
                if delay > 0:
                    await asyncio.sleep(delay)
                return answer(outcome.event or {})
            if outcome.passthrough:
                return await original(*args, **kwargs)
            raise ReplayMiss(outcome.message)
        finally:
            outcome.retag()


def _fault_failure(outcome: Outcome) -> Exception | None:
    """The error a `reset` or `timeout` fault raises from a hooked call, else None."""
    fault = outcome.fault
    if fault is None:
        return None
    if fault.action == "reset":
        return ConnectionResetError(fault.message)
    if fault.action == "timeout":
        return TimeoutError(fault.message)
    return None


def _latency(event: dict[str, Any] | None) -> float:
    latency = (event or {}).get("latency_ms")
    return float(latency) if isinstance(latency, (int, float)) else 0.0
