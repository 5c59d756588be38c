"""`@trace` and `with span(...)`: `kind: function` events that nest everything captured inside.

A span's id is put in a contextvar for the duration of the call, so events recorded inside
(HTTP calls, hooks, nested spans) get it as `parent_id`, per thread and per asyncio task.
Return values and exceptions pass through untouched; generators are left alone because their
body runs after the call returns.
"""
from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, TypeVar, overload

from tracelab.events import new_span_id
from tracelab.sdk.capture import Timer, build_event, error_info
from tracelab.sdk.context import current_span_id
from tracelab.sdk.payloads import not_captured, to_jsonable
from tracelab.sdk.recorder import Recorder, current

F = TypeVar("F", bound=Callable[..., Any])
_ORIGIN = "trace"


def _record_span(rec: Recorder, *, target: str, endpoint: str, timer: Timer, span_id: str,
                 parent_id: str | None, args: Any, result: Any, exc: BaseException | None,
                 tags: Mapping[str, Any] | None, has_result: bool) -> None:
    # parent_id None falls back to the context's span, which the caller has just restored to
    # this span's parent: the two agree.
    config = rec.config
    if config.capture_payloads:
        request = {"args": to_jsonable(args, rec.redactor, config.max_body_bytes)}
        response = ({"return": to_jsonable(result, rec.redactor, config.max_body_bytes)}
                    if has_result else None)
    else:
        request = {"args": not_captured("capture_payloads is off")}
        response = None
    event = build_event(
        rec, kind="function", target=target, endpoint=endpoint, started_at=timer.started_at,
        latency_ms=timer.elapsed_ms(), status="error" if exc is not None else "ok",
        request=request, response=response, error=error_info(exc) if exc is not None else None,
        tags=tags, span_id=span_id, parent_id=parent_id)
    rec.submit(event, _ORIGIN)


def _bind(signature: inspect.Signature | None, args: tuple[Any, ...],
          kwargs: dict[str, Any]) -> dict[str, Any]:
    if signature is not None:
        try:
            return dict(signature.bind_partial(*args, **kwargs).arguments)
        except TypeError:
            pass
    return {"args": list(args), "kwargs": kwargs} if kwargs else {"args": list(args)}


@overload
def trace(func: F) -> F: ...
@overload
def trace(func: None = None, *, name: str | None = None,
          tags: Mapping[str, Any] | None = None) -> Callable[[F], F]: ...


def trace(func: Any = None, *, name: str | None = None,
          tags: Mapping[str, Any] | None = None) -> Any:
    """Record each call of the decorated function as a `kind: function` span.

    Usable bare (`@trace`) or with options (`@trace(name="plan", tags={"step": "1"})`); works on
    sync and async functions. Before `init()` (or when disabled) it only calls through.
    """
    if func is None:
        return lambda f: trace(f, name=name, tags=tags)
    if inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func):
        return func
    endpoint = name or getattr(func, "__qualname__", None) or repr(func)
    target = getattr(func, "__module__", None) or "function"
    try:
        signature: inspect.Signature | None = inspect.signature(func)
    except (TypeError, ValueError):
        signature = None

    if inspect.iscoroutinefunction(func):
        @functools.wraps(func)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            if current() is None:
                return await func(*args, **kwargs)
            with span(endpoint, target=target, tags=tags) as block:
                block._call = (signature, args, kwargs)
                result = await func(*args, **kwargs)
                block.set_output(result)
            return result

        async_wrapper.__tracelab_traced__ = True  # type: ignore[attr-defined]
        return async_wrapper

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if current() is None:
            return func(*args, **kwargs)
        with span(endpoint, target=target, tags=tags) as block:
            block._call = (signature, args, kwargs)
            result = func(*args, **kwargs)
            block.set_output(result)
        return result

    wrapper.__tracelab_traced__ = True  # type: ignore[attr-defined]
    return wrapper


class span:  # noqa: N801  (used like a function: `with span("plan"):`)
    """A block recorded as one `kind: function` span; usable with `with` and `async with`.

    `set_tag(key, value)` and `set_output(value)` add to the recorded event.
    """

    def __init__(self, name: str, *, tags: Mapping[str, Any] | None = None,
                 target: str = "span") -> None:
        self.name = name
        self.target = target
        self.tags: dict[str, Any] = dict(tags or {})
        self.span_id: str | None = None
        self._output: Any = None
        self._has_output = False
        self._rec: Recorder | None = None
        # Set by @trace: (signature, args, kwargs), bound into `request.args` only at exit.
        self._call: tuple[inspect.Signature | None, tuple[Any, ...], dict[str, Any]] | None = None

    def set_tag(self, key: str, value: Any) -> None:
        self.tags[key] = value

    def set_output(self, value: Any) -> None:
        self._output, self._has_output = value, True

    def __enter__(self) -> span:
        self._rec = current()
        if self._rec is not None:
            self.span_id = new_span_id()
            self._parent = current_span_id.get()
            self._token = current_span_id.set(self.span_id)
            self._timer = Timer()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        rec = self._rec
        if rec is None or self.span_id is None:
            return
        try:
            current_span_id.reset(self._token)
        except ValueError:  # exited in another context than entered: nothing to restore
            pass
        args = _bind(*self._call) if self._call is not None else {}
        rec.safely(_ORIGIN, _record_span, rec, target=self.target, endpoint=self.name,
                   timer=self._timer, span_id=self.span_id, parent_id=self._parent, args=args,
                   result=self._output, exc=exc, tags=self.tags or None,
                   has_result=self._has_output and exc is None)

    async def __aenter__(self) -> span:
        return self.__enter__()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.__exit__(exc_type, exc, tb)
