"""smtplib: patched at `SMTP.sendmail`, the one method that performs a mail transaction.

`send_message` flattens its message and calls `sendmail`, and `SMTP_SSL` and `LMTP` inherit
it, so patching `sendmail` alone gives exactly one `kind: email` event per message sent, over
any of them. Only the envelope, the subject and the body as sent (after the header block,
transfer encoding included; capped and redacted like any body) are recorded:
`login()` is not traced, so credentials never reach an event. A refused recipient list or an
SMTP error reply is an error event whose `status_code` is the SMTP reply code.
"""
from __future__ import annotations

import email.parser
import email.policy
from collections.abc import Collection
from typing import Any

from tracelab.sdk.capture import Timer, build_event, error_info
from tracelab.sdk.integrations._patching import patch, unpatch
from tracelab.sdk.payloads import encode_body, not_captured
from tracelab.sdk.recorder import Recorder, current

ORIGIN = "smtplib"
_OK_REPLY = 250  # sendmail returns only after the server accepted the DATA with 250
_HEADER_END = (b"\r\n\r\n", b"\n\n")


def _text(value: Any) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def _address(value: Any) -> Any:
    return _text(value) if isinstance(value, (str, bytes)) else repr(value)


def _server(smtp: Any) -> tuple[str, int | None]:
    """The host the caller asked for (as given to SMTP()/connect()) and the connected port."""
    host = getattr(smtp, "_host", "") or ""
    if host.count(":") == 1:  # SMTP("mail.example.com:2525")
        host = host.partition(":")[0]
    port = None
    try:
        peer = smtp.sock.getpeername()
    except (AttributeError, OSError):
        peer = None
    if isinstance(peer, tuple) and len(peer) >= 2:
        port = peer[1]
        host = host or str(peer[0])
    elif isinstance(peer, str) and peer:  # LMTP over a unix socket
        host = host or peer
    return host or "unknown", port


def _split_message(msg: Any) -> tuple[bytes, bytes]:
    raw = msg.encode("utf-8", errors="surrogateescape") if isinstance(msg, str) else bytes(msg)
    cuts = [(raw.find(sep), sep) for sep in _HEADER_END if raw.find(sep) >= 0]
    if not cuts:
        return raw, b""
    at, sep = min(cuts)
    return raw[:at], raw[at + len(sep):]


def _subject(headers: bytes) -> str | None:
    parsed = email.parser.BytesHeaderParser(policy=email.policy.default).parsebytes(headers)
    subject = parsed.get("subject")
    return None if subject is None else str(subject)


def _request(rec: Recorder, from_addr: Any, to_addrs: Any, msg: Any,
             port: int | None) -> dict[str, Any]:
    if isinstance(to_addrs, (str, bytes)):
        to = [_address(to_addrs)]
    elif isinstance(to_addrs, Collection):
        to = [_address(addr) for addr in to_addrs]
    else:  # an iterator: reading it here would take the recipients away from sendmail
        to = [f"<{type(to_addrs).__name__}: not read on the caller's behalf>"]
    request: dict[str, Any] = {"from": _address(from_addr), "to": to, "subject": None,
                               "body": None, "port": port}
    if not isinstance(msg, (str, bytes, bytearray, memoryview)):
        request["body"] = not_captured(f"message is a {type(msg).__name__}")
        return request
    headers, body = _split_message(msg)
    request["subject"] = _subject(headers)
    config = rec.config
    request["body"] = (encode_body(body, None, rec.redactor, config.max_body_bytes)
                       if config.capture_payloads else not_captured("capture_payloads is off"))
    return request


def _refused(recipients: Any) -> dict[str, Any]:
    if not isinstance(recipients, dict):
        return {}
    out: dict[str, Any] = {}
    for addr, reply in recipients.items():
        code, message = reply if isinstance(reply, tuple) and len(reply) == 2 else (None, reply)
        out[_address(addr)] = {"code": code, "message": _text(message)}
    return out


def _failure(exc: BaseException) -> tuple[int | None, dict[str, Any] | None]:
    """SMTP reply code and response for an exception, when the server did reply."""
    import smtplib

    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        refused = _refused(exc.recipients)
        codes = [r["code"] for r in refused.values() if isinstance(r["code"], int)]
        return (codes[0] if codes else None), {"refused": refused}
    code = getattr(exc, "smtp_code", None)
    if isinstance(code, int) and not isinstance(code, bool):
        return code, {"code": code, "message": _text(getattr(exc, "smtp_error", ""))}
    return None, None


def _record(rec: Recorder, server: tuple[str, int | None] | None, args: tuple[Any, ...],
            kwargs: dict[str, Any], timer: Timer, result: Any, exc: BaseException | None) -> None:
    latency_ms = timer.elapsed_ms()
    from_addr = args[0] if len(args) > 0 else kwargs.get("from_addr")
    to_addrs = args[1] if len(args) > 1 else kwargs.get("to_addrs")
    msg = args[2] if len(args) > 2 else kwargs.get("msg")
    host, port = server or ("unknown", None)
    request = _request(rec, from_addr, to_addrs, msg, port)
    if exc is None:
        status_code: int | None = _OK_REPLY
        response: dict[str, Any] | None = {"refused": _refused(result)}
    else:
        status_code, response = _failure(exc)
    event = build_event(
        rec, kind="email", target=f"smtp:{host}", endpoint="sendmail",
        started_at=timer.started_at, latency_ms=latency_ms,
        status="ok" if exc is None else "error", request=request, response=response,
        status_code=status_code, error=error_info(exc) if exc is not None else None)
    rec.submit(event, ORIGIN)


def _sendmail(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    rec = current()
    if rec is None:
        return wrapped(*args, **kwargs)
    # Read before the call: a 421 reply makes sendmail close the socket.
    server = rec.safely(ORIGIN, _server, instance)
    timer = Timer()
    try:
        result = wrapped(*args, **kwargs)
    except BaseException as exc:
        rec.safely(ORIGIN, _record, rec, server, args, kwargs, timer, None, exc)
        raise
    rec.safely(ORIGIN, _record, rec, server, args, kwargs, timer, result, None)
    return result


def install() -> None:
    import smtplib

    patch(smtplib.SMTP, "sendmail", _sendmail)


def uninstall() -> None:
    import sys

    module = sys.modules.get("smtplib")
    if module is not None:
        unpatch(module.SMTP, "sendmail")
