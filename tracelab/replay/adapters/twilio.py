"""twilio replay: `messages.create` answered from the recording at twilio's HTTP-client layer.

The SDK records an SMS at `MessageList.create*` from the caller's arguments. Every one of
those methods builds its request in `MessageList._create` / `_create_async`, with the same
parameter names, so a wrapper there sees the call as the SDK records it, asks the replay
session, and leaves the answer for this call (a contextvar: it follows the call into an async
task). Twilio's own `ClientBase.request` / `request_async`, the one place its HTTP client is
called, then returns the recorded reply as a twilio `Response` instead of calling it: twilio
parses it, builds the `MessageInstance` (or `ApiResponse`), or raises its own
`TwilioRestException` for a recorded 4xx, exactly as after a real request. Nothing is sent.

A miss raises what a refused connection raises at that layer: requests'
`ConnectionError` (aiohttp's `ClientConnectionError` for the async client), with the
matcher's explanation as its message. Other twilio resources are not touched here (their HTTP
goes through requests / aiohttp, where the HTTP replay answers it).

Faults (see tracelab/replay/session.py) are answered at the same layer: a `status` fault is a
twilio error reply (`TwilioRestException` with that status, the rule's `body` if it gives
one); `reset` raises the HTTP client's connection error, as a miss does; `timeout` waits the
fault's `timeout_s` (or the twilio HTTP client's own timeout, if shorter) and raises its
timeout error (requests' `ReadTimeout`; `asyncio.TimeoutError` for the async client); the body
faults make the reply's body empty, malformed or cut (twilio then fails to parse it, as it
would).
"""
from __future__ import annotations

import asyncio
import contextvars
import datetime as dt
import email.utils
import json
from collections.abc import Mapping
from typing import Any

from tracelab.replay import session as session_api

_MODULE = "twilio.rest.api.v2010.account.message"
_pending: contextvars.ContextVar[Any] = contextvars.ContextVar("tracelab_twilio_replay",
                                                              default=None)
_DATES = ("date_created", "date_updated", "date_sent")
_ERROR_PREFIX = "Unable to create record: "  # twilio adds it again when it parses the reply


def _live_view(wrapped: Any, instance: Any, args: tuple[Any, ...],
               kwargs: dict[str, Any]) -> dict[str, Any]:
    """The live call in the shape the SDK stores (same helpers, same redaction)."""
    from tracelab.sdk.integrations import twilio as recorded
    from tracelab.sdk.payloads import not_captured, to_jsonable

    rec = session_api.recorder()
    solution = getattr(instance, "_solution", None)
    account_sid = solution.get("account_sid") if isinstance(solution, dict) else None
    if rec.config.capture_payloads:
        request = to_jsonable({**recorded._arguments(wrapped, args, kwargs),
                               "account_sid": account_sid},
                              rec.redactor, rec.config.max_body_bytes)
    else:
        request = {"body": not_captured("capture_payloads is off"), "account_sid": account_sid}
    return {"kind": "sms", "target": recorded.TARGET, "endpoint": recorded.ENDPOINT,
            "request": request}


def _rfc2822(value: Any) -> Any:
    """The SDK stores twilio's datetimes as ISO 8601; the API sends RFC 2822."""
    if not isinstance(value, str):
        return value
    try:
        return email.utils.format_datetime(dt.datetime.fromisoformat(value))
    except ValueError:
        return value


def _response(event: dict[str, Any], is_async: bool) -> Any:
    """The recorded reply as the twilio `Response` its HTTP client would have returned."""
    from twilio.http.response import Response

    recorded = event.get("response")
    status = event.get("status_code")
    if event.get("status") == "error" and not isinstance(recorded, Mapping):
        error = event.get("error") or {}  # recorded without a reply: the same failure again
        raise _refused(f"{error.get('type', 'Error')}: {error.get('message', 'no reply')} "
                       "(replayed from the recording)", is_async)
    recorded = dict(recorded) if isinstance(recorded, Mapping) else {}
    if event.get("status") == "error":
        message = str(recorded.get("message") or "")
        if message.startswith(_ERROR_PREFIX):
            message = message[len(_ERROR_PREFIX):]
        status = status if isinstance(status, int) else 400
        payload = {"code": recorded.get("code"), "message": message, "status": status}
        if recorded.get("details"):
            payload["details"] = recorded["details"]
        return Response(status, json.dumps(payload), {"Content-Type": "application/json"})
    payload = {name: _rfc2822(value) if name in _DATES else value
               for name, value in recorded.items()}
    return Response(status if isinstance(status, int) else 201, json.dumps(payload),
                    {"Content-Type": "application/json"})


def _fault_response(answer: Any, is_async: bool) -> Any:
    """The reply a fault gives (reset/timeout: the error its HTTP client raises; the caller
    has already waited a timeout's hang)."""
    from twilio.http.response import Response

    fault = answer.fault
    if fault.action == "reset":
        raise _refused(fault.message, is_async)
    if fault.action == "timeout":
        if is_async:
            raise asyncio.TimeoutError(fault.message)
        import requests

        raise requests.exceptions.ReadTimeout(fault.message)
    if fault.action == "status":
        status = int(fault.status or 500)
        if fault.rule.has_body:
            data, content_type = fault.body_bytes()
            text = data.decode("utf-8", errors="replace")
        else:
            text = json.dumps({"code": None, "message": fault.message, "status": status})
            content_type = "application/json"
        return Response(status, text, {"Content-Type": content_type, **fault.headers})
    good = _response(answer.event, is_async)  # a body fault: the recorded reply, changed
    return Response(good.status_code, fault.mangle(good.text.encode("utf-8")).decode(
        "utf-8", errors="replace"), good.headers)


def _hang(answer: Any, instance: Any) -> float:
    """How long a timeout fault hangs: at most the twilio HTTP client's own timeout."""
    client_timeout = getattr(getattr(instance, "http_client", None), "timeout", None)
    return session_api.hang_seconds(answer, client_timeout)


def _refused(message: str, is_async: bool) -> Exception:
    if is_async:
        try:
            import aiohttp
        except ImportError:
            pass
        else:
            return aiohttp.ClientConnectionError(message)
    import requests

    return requests.exceptions.ConnectionError(message)


def _create(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    session = session_api.active()
    if session is None:
        return wrapped(*args, **kwargs)
    answer = session.take(_live_view(wrapped, instance, args, kwargs))
    if not answer.hit and answer.passthrough:
        return wrapped(*args, **kwargs)
    token = _pending.set(answer)
    try:
        return wrapped(*args, **kwargs)
    finally:
        _pending.reset(token)


async def _create_async(wrapped: Any, instance: Any, args: tuple[Any, ...],
                        kwargs: dict[str, Any]) -> Any:
    session = session_api.active()
    if session is None:
        return await wrapped(*args, **kwargs)
    answer = session.take(_live_view(wrapped, instance, args, kwargs), wait=False)
    if answer.pause_ms > 0:  # a fault's latency, without blocking the event loop
        await asyncio.sleep(answer.pause_ms / 1000.0)
    if not answer.hit and answer.passthrough:
        return await wrapped(*args, **kwargs)
    if answer.hit:  # the recorded latency (speed > 0) without blocking the event loop
        latency = answer.event.get("latency_ms") if isinstance(answer.event, dict) else None
        delay = session.delay(answer.started, float(latency or 0))
        if delay > 0:
            await asyncio.sleep(delay)
    token = _pending.set(answer)
    try:
        return await wrapped(*args, **kwargs)
    finally:
        _pending.reset(token)


def _consume() -> Any:
    answer = _pending.get()
    if answer is not None:
        _pending.set(None)  # one HTTP request per create: a second one is not ours
    return answer


def _request(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    answer = _consume()
    if answer is None:
        return wrapped(*args, **kwargs)
    if not answer.hit:
        raise _refused(answer.message, is_async=False)
    if answer.fault is not None and answer.fault.action != "latency":
        if answer.fault.action == "timeout":
            import time

            time.sleep(_hang(answer, instance))
        return _fault_response(answer, is_async=False)
    return _response(answer.event, is_async=False)


async def _request_async(wrapped: Any, instance: Any, args: tuple[Any, ...],
                         kwargs: dict[str, Any]) -> Any:
    answer = _consume()
    if answer is None:
        return await wrapped(*args, **kwargs)
    if not answer.hit:
        raise _refused(answer.message, is_async=True)
    if answer.fault is not None and answer.fault.action != "latency":
        if answer.fault.action == "timeout":
            await asyncio.sleep(_hang(answer, instance))
        return _fault_response(answer, is_async=True)
    return _response(answer.event, is_async=True)


def install() -> None:
    import importlib

    from tracelab.sdk.integrations._patching import patch

    message_list = importlib.import_module(_MODULE).MessageList
    client_base = importlib.import_module("twilio.base.client_base").ClientBase
    patch(message_list, "_create", _create)
    if hasattr(message_list, "_create_async"):
        patch(message_list, "_create_async", _create_async)
    patch(client_base, "request", _request)
    if hasattr(client_base, "request_async"):
        patch(client_base, "request_async", _request_async)


def uninstall() -> None:
    import sys

    from tracelab.sdk.integrations._patching import unpatch

    module = sys.modules.get(_MODULE)
    if module is not None:
        unpatch(module.MessageList, "_create")
        unpatch(module.MessageList, "_create_async")
    base = sys.modules.get("twilio.base.client_base")
    if base is not None:
        unpatch(base.ClientBase, "request")
        unpatch(base.ClientBase, "request_async")
