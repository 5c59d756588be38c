"""smtplib integration: the real smtplib client against a real aiosmtpd server on loopback."""
from __future__ import annotations

import base64
import smtplib
from collections.abc import Iterator
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

import tracelab
from tracelab.sdk.integrations import smtplib as smtplib_integration

from conftest import (RedisServer, capture_broken, free_port, raised_in_library, read_events,
                      run_late_import)

USER, PASSWORD = "mailer", "smtp-pass-5e6f7a"
UNKNOWN = "nobody@example.test"
BLOCKED_SENDER = "spammer@example.test"


class _Mailbox:
    """An aiosmtpd handler: refuses one recipient and one sender, keeps everything else."""

    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str,
                          mail_options: list[str]) -> str:
        if address == BLOCKED_SENDER:
            return "553 5.7.1 Sender not allowed"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        if address == UNKNOWN:
            return "550 5.1.1 User unknown"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(envelope)
        return "250 Message accepted for delivery"


def _authenticate(server: Any, session: Any, envelope: Any, mechanism: str,
                  auth_data: Any) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and \
        (auth_data.login, auth_data.password) == (USER.encode(), PASSWORD.encode())
    return AuthResult(success=ok)


@pytest.fixture(scope="module")
def smtp_server() -> Iterator[tuple[int, _Mailbox]]:
    mailbox = _Mailbox()
    controller = Controller(mailbox, hostname="127.0.0.1", port=free_port(),
                            authenticator=_authenticate, auth_require_tls=False)
    controller.start()
    yield controller.port, mailbox
    controller.stop()


def _message(to: str, subject: str = "Your order shipped", body: str = "It is on its way.\n") \
        -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "shop@example.test"
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content(body)
    return msg


def test_send_message_is_one_email_event(traced: RedisServer,
                                         smtp_server: tuple[int, _Mailbox]) -> None:
    port, mailbox = smtp_server
    with smtplib.SMTP("127.0.0.1", port) as smtp, tracelab.span("notify") as step:
        smtp.login(USER, PASSWORD)
        refused = smtp.send_message(_message("ada@example.test", subject="Café ☕ is open"))
    assert refused == {}
    assert mailbox.messages[-1].rcpt_tos == ["ada@example.test"]

    events, raw = read_events(traced)
    [event] = [e for e in events if e["kind"] == "email"]
    assert (event["target"], event["endpoint"]) == ("smtp:127.0.0.1", "sendmail")
    assert (event["status"], event["status_code"], event["error"]) == ("ok", 250, None)
    assert event["parent_id"] == step.span_id
    request = event["request"]
    assert request["from"] == "shop@example.test"
    assert request["to"] == ["ada@example.test"]
    assert request["subject"] == "Café ☕ is open"
    assert request["body"] == "It is on its way.\r\n"  # the body as sent on the wire
    assert request["port"] == port
    assert event["response"] == {"refused": {}}
    plain_auth = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode())
    assert PASSWORD.encode() not in raw and plain_auth not in raw


def test_partly_refused_recipients_are_in_the_response(traced: RedisServer,
                                                       smtp_server: tuple[int, _Mailbox]) -> None:
    port, _ = smtp_server
    with smtplib.SMTP("127.0.0.1", port) as smtp:
        refused = smtp.sendmail("shop@example.test", ["bob@example.test", UNKNOWN],
                                "Subject: hi\r\n\r\nhello bob\r\n")
    assert UNKNOWN in refused

    events, _ = read_events(traced)
    [event] = events
    assert (event["status"], event["status_code"]) == ("ok", 250)
    assert event["request"]["to"] == ["bob@example.test", UNKNOWN]
    assert event["request"]["subject"] == "hi"
    assert event["response"]["refused"] == {UNKNOWN: {"code": 550,
                                                      "message": "5.1.1 User unknown"}}


def test_all_recipients_refused_is_an_error_and_reraised(traced: RedisServer,
                                                         smtp_server: tuple[int, _Mailbox]) -> None:
    port, _ = smtp_server
    with smtplib.SMTP("127.0.0.1", port) as smtp, \
            pytest.raises(smtplib.SMTPRecipientsRefused) as caught:
        smtp.send_message(_message(UNKNOWN))
    assert caught.value.recipients == {UNKNOWN: (550, b"5.1.1 User unknown")}
    assert raised_in_library(caught.value)

    events, _ = read_events(traced)
    [event] = events
    assert (event["status"], event["status_code"]) == ("error", 550)
    assert event["error"]["type"] == "SMTPRecipientsRefused"
    assert event["response"] == {"refused": {UNKNOWN: {"code": 550,
                                                       "message": "5.1.1 User unknown"}}}


def test_sender_refused_carries_the_smtp_reply_code(traced: RedisServer,
                                                    smtp_server: tuple[int, _Mailbox]) -> None:
    port, _ = smtp_server
    with smtplib.SMTP("127.0.0.1", port) as smtp, \
            pytest.raises(smtplib.SMTPSenderRefused) as caught:
        smtp.sendmail(BLOCKED_SENDER, "ada@example.test", b"Subject: x\r\n\r\nbuy now\r\n")
    assert caught.value.smtp_code == 553

    events, _ = read_events(traced)
    [event] = events
    assert (event["status"], event["status_code"]) == ("error", 553)
    assert event["error"]["type"] == "SMTPSenderRefused"
    assert event["response"] == {"code": 553, "message": "5.7.1 Sender not allowed"}
    assert event["request"]["to"] == ["ada@example.test"]


def test_long_body_is_capped(redis_server: RedisServer, tracelab_home: Any,
                             smtp_server: tuple[int, _Mailbox]) -> None:
    port, _ = smtp_server
    tracelab.init(workflow_name="smtp-test", redis_url=redis_server.url, max_body_bytes=64)
    try:
        body = ("x" * 70 + "\n") * 80
        with smtplib.SMTP("127.0.0.1", port) as smtp:
            smtp.send_message(_message("ada@example.test", body=body))
        events, _ = read_events(redis_server)
    finally:
        tracelab.shutdown()
    [event] = events
    captured = event["request"]["body"]
    assert captured["$tracelab"] == "truncated"
    assert captured["size"] == len(body.replace("\n", "\r\n"))
    assert captured["data"] == "x" * 64


def test_smtplib_imported_after_init_is_traced(redis_server: RedisServer, tracelab_home: Any,
                                               smtp_server: tuple[int, _Mailbox]) -> None:
    port, _ = smtp_server
    events, _ = run_late_import(redis_server, ("smtplib",), f"""
        import smtplib
        with smtplib.SMTP("127.0.0.1", {port}) as smtp:
            smtp.sendmail("a@example.test", ["b@example.test"], "Subject: late\\r\\n\\r\\nhi\\r\\n")
        """)
    [event] = events
    assert (event["workflow"], event["kind"], event["request"]["subject"]) == \
        ("late-import", "email", "late")


def test_failing_capture_is_counted_never_felt(traced: RedisServer,
                                              smtp_server: tuple[int, _Mailbox],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    with capture_broken(monkeypatch, smtplib_integration, "build_event"):
        with smtplib.SMTP("127.0.0.1", smtp_server[0]) as smtp:
            assert smtp.sendmail("a@example.test", "b@example.test", "Subject: x\r\n\r\ny") == {}
