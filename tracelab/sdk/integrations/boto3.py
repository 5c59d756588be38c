"""boto3 / botocore: Amazon SES (v1 and v2) calls, patched at `BaseClient._make_api_call`.

Every generated client method (`send_email`, `send_raw_email`, `send_bulk_email`, …) ends in
`_make_api_call(operation_name, params)`, and botocore's retries happen inside it, so wrapping
it records exactly one `kind: email` event per API call however many HTTP attempts it took.
Only the `ses` and `sesv2` services are recorded; every other AWS service passes straight
through, untouched and unrecorded. The request is the API parameters (raw MIME bytes encoded
like any body, secrets redacted by name) plus the region; credentials and request signatures
live in botocore's HTTP layer, which this never sees, and any HTTP event beneath is suppressed.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tracelab.sdk.capture import Timer, build_event, error_info
from tracelab.sdk.context import suppress_http
from tracelab.sdk.integrations._patching import patch, unpatch
from tracelab.sdk.payloads import not_captured, to_jsonable
from tracelab.sdk.recorder import Recorder, current

ORIGIN = "boto3"
SES_SERVICES = frozenset({"ses", "sesv2"})
TARGET = "aws:ses"


def _service_name(client: Any) -> str | None:
    try:
        return client.meta.service_model.service_name
    except AttributeError:
        return None


def _http_status(response: Any) -> int | None:
    if not isinstance(response, Mapping):
        return None
    metadata = response.get("ResponseMetadata")
    code = metadata.get("HTTPStatusCode") if isinstance(metadata, Mapping) else None
    return code if isinstance(code, int) and not isinstance(code, bool) else None


def _summary(params: Mapping[str, Any]) -> dict[str, Any]:
    """`from`, `to` and `subject` in the contract's email shape, when the operation has them."""
    out: dict[str, Any] = {}
    sender = params.get("Source", params.get("FromEmailAddress"))
    if isinstance(sender, str):
        out["from"] = sender
    destination = params.get("Destination")
    if isinstance(destination, Mapping):
        to = destination.get("ToAddresses")
        if isinstance(to, (list, tuple)):
            out["to"] = [str(addr) for addr in to]
    elif isinstance(params.get("Destinations"), (list, tuple)):  # SES v1 SendRawEmail
        out["to"] = [str(addr) for addr in params["Destinations"]]
    message = params.get("Message")  # SES v1 SendEmail
    content = params.get("Content")  # SES v2 SendEmail
    simple = content.get("Simple") if isinstance(content, Mapping) else None
    for holder in (message, simple):
        subject = holder.get("Subject") if isinstance(holder, Mapping) else None
        if isinstance(subject, Mapping) and isinstance(subject.get("Data"), str):
            out["subject"] = subject["Data"]
    return out


def _record(rec: Recorder, client: Any, operation: Any, params: Any, timer: Timer,
            response: Any, exc: BaseException | None) -> None:
    latency_ms = timer.elapsed_ms()
    config = rec.config
    redactor, cap = rec.redactor, config.max_body_bytes
    region = getattr(getattr(client, "meta", None), "region_name", None)
    request: dict[str, Any] = _summary(params) if isinstance(params, Mapping) else {}
    request["params"] = (to_jsonable(params, redactor, cap) if config.capture_payloads
                         else not_captured("capture_payloads is off"))
    request["region"] = region
    if exc is not None:
        # ClientError (and its modelled subclasses) carry the parsed error response.
        response = getattr(exc, "response", None)
        if not isinstance(response, Mapping):
            response = None
    status_code = _http_status(response)
    body = None
    if response is not None:
        body = (to_jsonable(response, redactor, cap) if config.capture_payloads
                else not_captured("capture_payloads is off"))
    failed = exc is not None or (status_code is not None and status_code >= 400)
    event = build_event(
        rec, kind="email", target=TARGET, endpoint=str(operation),
        started_at=timer.started_at, latency_ms=latency_ms,
        status="error" if failed else "ok", request=request, response=body,
        status_code=status_code, error=error_info(exc) if exc is not None else None)
    rec.submit(event, ORIGIN)


def _make_api_call(wrapped: Any, instance: Any, args: tuple[Any, ...],
                   kwargs: dict[str, Any]) -> Any:
    rec = current()
    if rec is None or _service_name(instance) not in SES_SERVICES:
        return wrapped(*args, **kwargs)
    operation = args[0] if args else kwargs.get("operation_name")
    params = args[1] if len(args) > 1 else kwargs.get("api_params")
    timer = Timer()
    try:
        with suppress_http():
            response = wrapped(*args, **kwargs)
    except BaseException as exc:
        rec.safely(ORIGIN, _record, rec, instance, operation, params, timer, None, exc)
        raise
    rec.safely(ORIGIN, _record, rec, instance, operation, params, timer, response, None)
    return response


def install() -> None:
    import importlib

    # Runs from the post-import hook of `botocore.client`, before the import system has set
    # it as an attribute of `botocore`: `import botocore.client` would fail here, the module
    # itself is already in sys.modules.
    client = importlib.import_module("botocore.client")
    patch(client.BaseClient, "_make_api_call", _make_api_call)


def uninstall() -> None:
    import sys

    module = sys.modules.get("botocore.client")
    if module is not None:
        unpatch(module.BaseClient, "_make_api_call")
