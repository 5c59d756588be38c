"""twilio: sending an SMS, patched at the Messages resource's `create` methods.

`client.messages.create(...)` (and `client.api.v2010.accounts(sid).messages.create`) are
`MessageList.create`; its `_async` and `_with_http_info` variants are patched too when the
installed twilio has them. Each is one `kind: sms` event, target `twilio`, endpoint
`messages.create`, built from the call's own arguments and the returned MessageInstance, so
the account's auth token (which only the HTTP layer sees) can never be recorded. The call runs
under `suppress_http()`: the requests (or aiohttp) call beneath is part of this interaction,
not a second one.
"""
from __future__ import annotations

import inspect
from typing import Any

from tracelab.sdk.capture import Timer, build_event, error_info
from tracelab.sdk.context import suppress_http
from tracelab.sdk.integrations._patching import patch, unpatch
from tracelab.sdk.payloads import not_captured, to_jsonable
from tracelab.sdk.recorder import Recorder, current

ORIGIN = "twilio"
TARGET = "twilio"
ENDPOINT = "messages.create"
_MODULE = "twilio.rest.api.v2010.account.message"
_METHODS = ("create", "create_async", "create_with_http_info", "create_with_http_info_async")
_RESPONSE_FIELDS = (
    ("sid", "sid"), ("status", "status"), ("to", "to"), ("from", "from_"), ("body", "body"),
    ("account_sid", "account_sid"), ("messaging_service_sid", "messaging_service_sid"),
    ("num_segments", "num_segments"), ("num_media", "num_media"), ("direction", "direction"),
    ("price", "price"), ("price_unit", "price_unit"), ("error_code", "error_code"),
    ("error_message", "error_message"), ("date_created", "date_created"),
    ("api_version", "api_version"),
)
_signatures: dict[Any, inspect.Signature] = {}


def _arguments(wrapped: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The parameters the caller actually passed, by name (twilio's `unset` ones left out)."""
    from twilio.base import values

    function = getattr(wrapped, "__func__", wrapped)
    signature = _signatures.get(function)
    if signature is None:
        signature = _signatures[function] = inspect.signature(wrapped)
    try:
        bound = signature.bind_partial(*args, **kwargs).arguments
    except TypeError:  # the call itself fails the same way; still show what was passed
        return {"args": list(args), **kwargs}
    out: dict[str, Any] = {}
    for name in ("to", "from_", "body"):  # the contract's SMS shape first
        if name in bound and bound[name] is not values.unset:
            out["from" if name == "from_" else name] = bound[name]
    for name, value in bound.items():
        if name not in ("to", "from_", "body") and value is not values.unset:
            out[name] = value
    return out


def _response(result: Any) -> tuple[dict[str, Any], int | None]:
    status_code = None
    if hasattr(result, "data") and isinstance(getattr(result, "status_code", None), int):
        status_code, result = result.status_code, result.data  # an ApiResponse
    return {ours: getattr(result, theirs, None) for ours, theirs in _RESPONSE_FIELDS}, status_code


def _error(exc: BaseException) -> tuple[dict[str, str], int | None, dict[str, Any] | None]:
    from twilio.base.exceptions import TwilioRestException

    status = getattr(exc, "status", None)
    status_code = status if isinstance(status, int) and not isinstance(status, bool) else None
    if isinstance(exc, TwilioRestException):
        # str() of this exception is ANSI-coloured when stderr is a terminal: build it plainly.
        error = {"type": type(exc).__qualname__,
                 "message": f"HTTP {exc.status} error: {exc.msg}"[:4000]}
        response = {"code": exc.code, "message": exc.msg}
        if exc.details:
            response["details"] = exc.details
        return error, status_code, response
    return error_info(exc), status_code, None


def _record(rec: Recorder, wrapped: Any, instance: Any, args: tuple[Any, ...],
            kwargs: dict[str, Any], timer: Timer, result: Any, exc: BaseException | None) -> None:
    latency_ms = timer.elapsed_ms()
    config = rec.config
    redactor, cap = rec.redactor, config.max_body_bytes
    solution = getattr(instance, "_solution", None)
    account_sid = solution.get("account_sid") if isinstance(solution, dict) else None
    if config.capture_payloads:
        request = to_jsonable({**_arguments(wrapped, args, kwargs), "account_sid": account_sid},
                              redactor, cap)
    else:
        request = {"body": not_captured("capture_payloads is off"), "account_sid": account_sid}
    status_code: int | None
    error = None
    if exc is None:
        fields, status_code = _response(result)
        response = to_jsonable(fields, redactor, cap) if config.capture_payloads else \
            {"sid": fields["sid"], "status": fields["status"]}
    else:
        error, status_code, response = _error(exc)
        if response is not None:
            response = to_jsonable(response, redactor, cap)
    event = build_event(
        rec, kind="sms", target=TARGET, endpoint=ENDPOINT, started_at=timer.started_at,
        latency_ms=latency_ms, status="ok" if exc is None else "error", request=request,
        response=response, status_code=status_code, error=error)
    rec.submit(event, ORIGIN)


def _create(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    rec = current()
    if rec is None:
        return wrapped(*args, **kwargs)
    timer = Timer()
    try:
        with suppress_http():
            result = wrapped(*args, **kwargs)
    except BaseException as exc:
        rec.safely(ORIGIN, _record, rec, wrapped, instance, args, kwargs, timer, None, exc)
        raise
    rec.safely(ORIGIN, _record, rec, wrapped, instance, args, kwargs, timer, result, None)
    return result


async def _create_async(wrapped: Any, instance: Any, args: tuple[Any, ...],
                        kwargs: dict[str, Any]) -> Any:
    rec = current()
    if rec is None:
        return await wrapped(*args, **kwargs)
    timer = Timer()
    try:
        with suppress_http():
            result = await wrapped(*args, **kwargs)
    except BaseException as exc:
        rec.safely(ORIGIN, _record, rec, wrapped, instance, args, kwargs, timer, None, exc)
        raise
    rec.safely(ORIGIN, _record, rec, wrapped, instance, args, kwargs, timer, result, None)
    return result


def install() -> None:
    import importlib

    message_list = importlib.import_module(_MODULE).MessageList
    for name in _METHODS:
        original = getattr(message_list, name, None)
        if original is not None:
            patch(message_list, name,
                  _create_async if inspect.iscoroutinefunction(original) else _create)


def uninstall() -> None:
    import sys

    module = sys.modules.get(_MODULE)
    if module is not None:
        for name in _METHODS:
            unpatch(module.MessageList, name)
