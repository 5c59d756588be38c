"""boto3 / botocore replay: Amazon SES (v1 and v2) answered from the recording, in-process.

The SDK records SES at `BaseClient._make_api_call` (the API parameters and the parsed reply).
The replay answers one layer below it, at `BaseClient._make_request`, by returning what
botocore's own Stubber returns from its `before-call` handler: an `AWSResponse` with the
recorded HTTP status and the recorded parsed reply. botocore then carries on exactly as after
a real request: `after-call` handlers run, a status of 300 or more becomes the modelled
`ClientError` (e.g. `MessageRejected`) built by botocore itself, and the SDK's wrapper above
records the call as usual. Nothing is signed or sent.

The key needs the caller's API parameters, which `_make_request` no longer sees: a wrapper on
`BaseClient._emit_api_params` (called by `_make_api_call` with the same `request_context`
dict `_make_request` later gets) keeps them there. A miss raises botocore's own
`EndpointConnectionError`, whose message carries the matcher's explanation; every other AWS
service is left alone (it goes to the network as usual, or to the HTTP replay beneath).

Faults (see tracelab/replay/session.py): a `status` fault is an error reply botocore turns
into its modelled `ClientError` (the code `Throttling` for 429, `ServiceUnavailable` for 503,
`InternalFailure` for other 5xx, `BadRequest` for other 4xx, unless the rule's `body` is an
object with an `Error`; `Retry-After` in the response metadata's headers); `reset` raises
botocore's `ConnectionClosedError`, and `timeout` waits the fault's `timeout_s` (or the
client's `read_timeout`, if shorter) and raises botocore's `ReadTimeoutError`; `stream_cut`
is a reply cut short (`ConnectionClosedError`), `malformed_body` and `truncate` a reply that
does not parse (`ResponseParserError`, as botocore raises for broken XML), `empty_body` the
recorded reply with nothing but its metadata. The fault
replaces what `_make_request` returns, above botocore's own retries, so one faulted call is
one error the application sees.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from tracelab.replay import session as session_api

SES_SERVICES = frozenset({"ses", "sesv2"})
_PARAMS = "tracelab_replay_params"  # key in botocore's request_context


def _service_name(client: Any) -> str | None:
    try:
        return client.meta.service_model.service_name
    except AttributeError:
        return None


def _emit_api_params(wrapped: Any, instance: Any, args: tuple[Any, ...],
                     kwargs: dict[str, Any]) -> Any:
    params = args[0] if args else kwargs.get("api_params")
    context = args[2] if len(args) > 2 else kwargs.get("context")
    result = wrapped(*args, **kwargs)
    if isinstance(context, dict) and session_api.active() is not None \
            and _service_name(instance) in SES_SERVICES:
        context[_PARAMS] = params  # the caller's dict, the one the SDK records
    return result


def _live_view(client: Any, operation: str, params: Any) -> dict[str, Any]:
    """The live call in the shape the SDK stores (same helpers, same redaction)."""
    from tracelab.sdk.integrations import boto3 as recorded
    from tracelab.sdk.payloads import not_captured, to_jsonable

    rec = session_api.recorder()
    config = rec.config
    request: dict[str, Any] = recorded._summary(params) if isinstance(params, Mapping) else {}
    request["params"] = (to_jsonable(params, rec.redactor, config.max_body_bytes)
                         if config.capture_payloads else not_captured("capture_payloads is off"))
    request["region"] = getattr(getattr(client, "meta", None), "region_name", None)
    return {"kind": "email", "target": recorded.TARGET, "endpoint": operation,
            "request": request}


def _connection_error(url: str, message: str) -> Exception:
    """botocore's own error for an endpoint it could not reach, saying why."""
    from botocore.exceptions import EndpointConnectionError

    exc = EndpointConnectionError(endpoint_url=url, error=message)
    exc.args = (f"{exc}: {message}",)
    return exc


def _answer(event: dict[str, Any], url: str) -> tuple[Any, dict[str, Any]]:
    from botocore.awsrequest import AWSResponse

    response = event.get("response")
    metadata = response.get("ResponseMetadata") if isinstance(response, Mapping) else None
    status = metadata.get("HTTPStatusCode") if isinstance(metadata, Mapping) else None
    if not isinstance(status, int):
        status = event.get("status_code")
    if not isinstance(response, Mapping) or not isinstance(status, int):
        # Recorded without a reply (the endpoint was unreachable then): the same failure now.
        error = event.get("error") or {}
        raise _connection_error(url, f"recorded failure: {error.get('message', 'no reply')}")
    parsed = copy.deepcopy(dict(response))
    headers = metadata.get("HTTPHeaders") if isinstance(metadata, Mapping) else None
    http = AWSResponse(url, status, dict(headers) if isinstance(headers, Mapping) else {}, None)
    return http, parsed


_ERROR_CODES = {429: "Throttling", 503: "ServiceUnavailable"}


def _fault_answer(answer: Any, client: Any, url: str) -> tuple[Any, dict[str, Any]]:
    """The reply (or error) a fault gives an SES call."""
    import time

    from botocore.awsrequest import AWSResponse
    from botocore.exceptions import ConnectionClosedError, ReadTimeoutError

    fault = answer.fault
    if fault.action in ("malformed_body", "truncate"):
        from botocore.exceptions import ResponseParserError

        raise ResponseParserError(f"Unable to parse response ({fault.message}), invalid XML "
                                  "received. Further retries may succeed.")
    if fault.action == "empty_body":
        http, parsed = _answer(answer.event, url)
        return http, {"ResponseMetadata": parsed.get("ResponseMetadata", {})}
    if fault.action in ("reset", "stream_cut"):
        exc = ConnectionClosedError(endpoint_url=url)
        exc.args = (f"{exc}: {fault.message}",)
        raise exc
    if fault.action == "timeout":
        read_timeout = getattr(getattr(getattr(client, "meta", None), "config", None),
                               "read_timeout", None)
        waited = session_api.hang_seconds(answer, read_timeout)
        time.sleep(waited)
        exc = ReadTimeoutError(endpoint_url=url)
        exc.args = (f"{exc}: {fault.message}",)
        raise exc
    status = int(fault.status or 500)
    headers = {"content-type": "text/xml", **fault.headers}
    body = fault.rule.body if fault.rule.has_body else None
    if isinstance(body, Mapping) and isinstance(body.get("Error"), Mapping):
        error = dict(body["Error"])
    else:
        code = _ERROR_CODES.get(status) or ("InternalFailure" if status >= 500 else
                                            "BadRequest")
        error = {"Type": "Sender" if status < 500 else "Receiver", "Code": code,
                 "Message": fault.message}
    metadata = {"HTTPStatusCode": status, "HTTPHeaders": headers, "RetryAttempts": 0}
    parsed = {"Error": error, "ResponseMetadata": metadata} if status >= 300 else \
        {"ResponseMetadata": metadata}
    return AWSResponse(url, status, headers, None), parsed


def _make_request(wrapped: Any, instance: Any, args: tuple[Any, ...],
                  kwargs: dict[str, Any]) -> Any:
    session = session_api.active()
    if session is None or _service_name(instance) not in SES_SERVICES:
        return wrapped(*args, **kwargs)
    operation_model = args[0] if args else kwargs.get("operation_model")
    request_dict = args[1] if len(args) > 1 else kwargs.get("request_dict")
    context = args[2] if len(args) > 2 else kwargs.get("request_context")
    params = context.get(_PARAMS) if isinstance(context, dict) else None
    url = request_dict.get("url", "") if isinstance(request_dict, Mapping) else ""
    answer = session.take(_live_view(instance, operation_model.name, params))
    if not answer.hit:
        if answer.passthrough:
            return wrapped(*args, **kwargs)
        raise _connection_error(url, answer.message)
    if answer.fault is not None and answer.fault.action != "latency":
        return _fault_answer(answer, instance, url)
    return _answer(answer.event, url)


def install() -> None:
    import importlib

    from tracelab.sdk.integrations._patching import patch

    client = importlib.import_module("botocore.client")
    patch(client.BaseClient, "_emit_api_params", _emit_api_params)
    patch(client.BaseClient, "_make_request", _make_request)


def uninstall() -> None:
    import sys

    from tracelab.sdk.integrations._patching import unpatch

    module = sys.modules.get("botocore.client")
    if module is not None:
        unpatch(module.BaseClient, "_emit_api_params")
        unpatch(module.BaseClient, "_make_request")
