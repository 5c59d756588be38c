"""`register_hook(owner, "attr", hook_fn)`: trace any library the SDK does not patch itself.

The original TraceLab README's contract: the hook receives the wrapped function's arguments
and returns a dict (`service` becomes the event's `target`; `endpoint`, `request`, `response`,
optional `kind`, `tags`, `status_code`). The SDK times the call and records exceptions. A hook
may be registered before or after `init()`; until then the wrapper only calls through. A hook
that raises or returns junk is counted in `stats()` and ignored.
"""
from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from tracelab.sdk import capture
from tracelab.sdk.capture import Timer, build_event, error_info
from tracelab.sdk.payloads import not_captured, to_jsonable
from tracelab.sdk.recorder import Recorder, current

_ORIGIN = "hooks"
_MARK = "__tracelab_hook__"


class HookHandle:
    """Returned by `register_hook`; `remove()` puts the original attribute back exactly."""

    def __init__(self, owner: Any, attr: str, original: Any, had_own: bool) -> None:
        self.owner, self.attr, self.original, self._had_own = owner, attr, original, had_own

    def remove(self) -> None:
        if self._had_own:
            setattr(self.owner, self.attr, self.original)
        else:
            delattr(self.owner, self.attr)


def _describe(rec: Recorder, hook: Callable[..., Any], attr: str, args: tuple[Any, ...],
              kwargs: dict[str, Any]) -> dict[str, Any] | None:
    try:
        described = hook(*args, **kwargs)
    except Exception as hook_exc:
        rec.stats.count_error(_ORIGIN, f"hook for {attr!r} raised {type(hook_exc).__name__}: "
                                       f"{hook_exc}")
        return None
    if not isinstance(described, dict) or not isinstance(described.get("service"), str) \
            or not described["service"]:
        rec.stats.count_error(_ORIGIN, f"hook for {attr!r} returned {type(described).__name__}; "
                                       "expected a dict with a non-empty 'service' string")
        return None
    return described


def _record(rec: Recorder, hook: Callable[..., Any], attr: str, args: tuple[Any, ...],
            kwargs: dict[str, Any], timer: Timer, exc: BaseException | None) -> None:
    latency = timer.elapsed_ms()
    described = _describe(rec, hook, attr, args, kwargs)
    if described is None:
        return
    config = rec.config
    cap = config.max_body_bytes

    def payload(key: str) -> Any:
        if not config.capture_payloads:
            return {"body": not_captured("capture_payloads is off")}
        value = to_jsonable(described.get(key), rec.redactor, cap)
        return value if isinstance(value, dict) or value is None else {"value": value}

    request = payload("request") or {}
    response = payload("response")
    status_code = described.get("status_code")
    if not isinstance(status_code, int) or isinstance(status_code, bool) \
            or not 0 <= status_code <= 999:
        status_code = None
    failed = exc is not None or described.get("status") == "error" or \
        (status_code is not None and status_code >= 400)
    tags = described.get("tags")
    event = build_event(
        rec, kind=str(described.get("kind") or "custom"), target=described["service"],
        endpoint=str(described.get("endpoint") or attr), started_at=timer.started_at,
        latency_ms=latency, status="error" if failed else "ok", request=request,
        response=response, status_code=status_code,
        error=error_info(exc) if exc is not None else None,
        tags=tags if isinstance(tags, dict) else None)
    rec.submit(event, _ORIGIN)


@contextmanager
def _recorded(rec: Recorder, wrapper: Any, attr: str, args: tuple[Any, ...],
              kwargs: dict[str, Any]) -> Iterator[None]:
    """Time the wrapped call and record it, raised or returned; the caller's exception passes
    through unchanged (contextmanager re-raises the very same object)."""
    timer = Timer()
    try:
        yield
    except BaseException as exc:
        rec.safely(_ORIGIN, _record, rec, wrapper.__tracelab_hook_fn__, attr, args, kwargs,
                   timer, exc)
        raise
    rec.safely(_ORIGIN, _record, rec, wrapper.__tracelab_hook_fn__, attr, args, kwargs, timer,
               None)


def replayed(rec: Recorder, wrapper: Any, attr: str, original: Callable[..., Any],
             args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    from tracelab.replay.adapters.hooks import call

    return call(rec, wrapper, attr, original, args, kwargs)


async def replayed_async(rec: Recorder, wrapper: Any, attr: str, original: Callable[..., Any],
                         args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    from tracelab.replay.adapters.hooks import call_async

    return await call_async(rec, wrapper, attr, original, args, kwargs)


def register_hook(owner: Any, attr: str, hook_fn: Callable[..., Any], *,
                  replay: Callable[[dict[str, Any]], Any] | None = None) -> HookHandle:
    """Wrap `owner.attr` so each call is recorded as the event `hook_fn` describes.

    `replay(recorded_event)`: during a replay (`tracelab.replay`), a call whose described
    event matches a recorded one returns `replay(recorded_event)` instead of running
    (tracelab/replay/adapters/hooks.py); without it the function runs as usual.

    `owner` is a module, class or instance. Registering the same attribute again replaces the
    hook instead of wrapping twice. Raises `AttributeError`/`TypeError` for an attribute that
    does not exist or is not callable, so a typo is caught at registration time.
    """
    if not callable(hook_fn):
        raise TypeError(f"register_hook: hook_fn must be callable, got {type(hook_fn).__name__}")
    static = inspect.getattr_static(owner, attr)  # AttributeError names the missing attribute
    had_own = attr in getattr(owner, "__dict__", {})
    existing = getattr(static, "__func__", static)
    if getattr(existing, _MARK, None) is not None:
        existing.__tracelab_hook_fn__ = hook_fn
        existing.__tracelab_hook_replay__ = replay
        return getattr(existing, _MARK)
    descriptor = type(static) if isinstance(static, (staticmethod, classmethod)) else None
    original = static.__func__ if descriptor else getattr(owner, attr)
    if not callable(original):
        raise TypeError(f"register_hook: {attr!r} is a {type(original).__name__}, not callable")

    if inspect.iscoroutinefunction(original):
        @functools.wraps(original)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            rec = current()
            if rec is None:
                return await original(*args, **kwargs)
            if capture.replay_session is not None:
                return await replayed_async(rec, wrapper, attr, original, args, kwargs)
            with _recorded(rec, wrapper, attr, args, kwargs):
                return await original(*args, **kwargs)
    else:
        @functools.wraps(original)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            rec = current()
            if rec is None:
                return original(*args, **kwargs)
            if capture.replay_session is not None:
                return replayed(rec, wrapper, attr, original, args, kwargs)
            with _recorded(rec, wrapper, attr, args, kwargs):
                return original(*args, **kwargs)

    wrapper.__tracelab_hook_fn__ = hook_fn  # type: ignore[attr-defined]
    wrapper.__tracelab_hook_replay__ = replay  # type: ignore[attr-defined]
    handle = HookHandle(owner, attr, static if had_own else None, had_own)
    setattr(wrapper, _MARK, handle)
    setattr(owner, attr, descriptor(wrapper) if descriptor else wrapper)
    return handle
