"""smtplib replay: record against a real aiosmtpd server, stop it, replay from the recording.

The replay must open no socket (the server's port is closed: any connect would be refused),
give smtplib the recorded replies (so it returns or raises what it did), record the sends in
the new run tagged `replay=hit`, and turn a changed send into smtplib's own
`SMTPServerDisconnected` naming the difference.
"""
from __future__ import annotations

import smtplib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiosmtpd.controller import Controller

import tracelab
from tracelab.replay.adapters import smtplib as smtp_adapter

from conftest import RedisServer, free_port, read_events
from test_integration_smtplib import PASSWORD, UNKNOWN, USER, _authenticate, _Mailbox, _message

SHOP = "shop@example.test"


class _Server:
    """A real aiosmtpd server that can be stopped, keeping what it received."""

    def __init__(self) -> None:
        self.mailbox = _Mailbox()
        self.controller = Controller(self.mailbox, hostname="127.0.0.1", port=free_port(),
                                     authenticator=_authenticate, auth_require_tls=False)
        self.controller.start()
        self.port = self.controller.port
        self.running = True

    def stop(self) -> None:
        if self.running:
            self.controller.stop()
            self.running = False


@pytest.fixture
def smtp_server() -> Iterator[_Server]:
    server = _Server()
    try:
        yield server
    finally:
        server.stop()


def _workload(port: int, to: str = "ada@example.test",
              client: type[smtplib.SMTP] = smtplib.SMTP) -> tuple[Any, Any]:
    """What the app does: log in, send one message, send one with a refused recipient."""
    with client("127.0.0.1", port) as smtp:
        smtp.login(USER, PASSWORD)
        first = smtp.send_message(_message(to, subject="Order shipped"))
        second = smtp.sendmail(SHOP, ["bob@example.test", UNKNOWN],
                               "Subject: hi\r\n\r\nhello bob\r\n")
        smtp.noop()
    return first, second


def _record(traced: RedisServer, server: _Server, path: Path) -> list[dict[str, Any]]:
    assert _workload(server.port) == ({}, {UNKNOWN: (550, b"5.1.1 User unknown")})
    events, _ = read_events(traced)
    sends = [e for e in events if e["kind"] == "email"]
    assert len(sends) == 2 and len(server.mailbox.messages) == 2
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    return sends


def _new_sends(traced: RedisServer, recorded: list[dict[str, Any]]) -> list[dict[str, Any]]:
    events, _ = read_events(traced)
    old = {e["event_id"] for e in recorded}
    return [e for e in events if e["kind"] == "email" and e["event_id"] not in old]


def test_replay_answers_sends_with_no_server(traced: RedisServer, smtp_server: _Server,
                                             tmp_path: Path) -> None:
    recording = tmp_path / "smtp.jsonl"
    recorded = _record(traced, smtp_server, recording)
    smtp_server.stop()  # from here on a real connect to this port is refused

    with tracelab.replay(str(recording)) as session:
        first, second = _workload(smtp_server.port)
    assert first == {}
    assert second == {UNKNOWN: (550, b"5.1.1 User unknown")}  # smtplib's own parse of the reply
    assert list(session.misses) == [] and list(session.unused) == []
    assert len(smtp_server.mailbox.messages) == 2  # nothing new reached a server

    replayed = _new_sends(traced, recorded)
    assert [e["request"]["to"] for e in replayed] == [["ada@example.test"],
                                                       ["bob@example.test", UNKNOWN]]
    assert [e["tags"].get("replay") for e in replayed] == ["hit", "hit"]
    assert replayed[1]["response"] == recorded[1]["response"]
    assert [e["request"]["port"] for e in replayed] == [smtp_server.port] * 2


def test_running_server_receives_nothing_during_replay(traced: RedisServer,
                                                       smtp_server: _Server,
                                                       tmp_path: Path) -> None:
    recording = tmp_path / "smtp.jsonl"
    _record(traced, smtp_server, recording)
    with tracelab.replay(str(recording)):
        _workload(smtp_server.port)
    assert len(smtp_server.mailbox.messages) == 2  # still only the two recorded live


def test_smtp_ssl_and_starttls_open_no_socket(traced: RedisServer, smtp_server: _Server,
                                              tmp_path: Path) -> None:
    recording = tmp_path / "smtp.jsonl"
    _record(traced, smtp_server, recording)
    smtp_server.stop()
    with tracelab.replay(str(recording)):
        # SMTP_SSL would wrap a real socket in TLS; STARTTLS would handshake: neither happens.
        with smtplib.SMTP_SSL("127.0.0.1", smtp_server.port) as smtp:
            smtp.login(USER, PASSWORD)
            assert smtp.send_message(_message("ada@example.test", subject="Order shipped")) == {}
        with smtplib.SMTP("127.0.0.1", smtp_server.port) as smtp:
            smtp.starttls()
            smtp.login(USER, PASSWORD)
            assert smtp.sendmail(SHOP, ["bob@example.test", UNKNOWN],
                                 "Subject: hi\r\n\r\nhello bob\r\n") == \
                {UNKNOWN: (550, b"5.1.1 User unknown")}


def test_changed_recipient_is_smtplibs_own_disconnect(traced: RedisServer, smtp_server: _Server,
                                                      tmp_path: Path) -> None:
    recording = tmp_path / "smtp.jsonl"
    recorded = _record(traced, smtp_server, recording)
    smtp_server.stop()

    with tracelab.replay(str(recording)) as session:
        with pytest.raises(smtplib.SMTPServerDisconnected) as caught:
            _workload(smtp_server.port, to="eve@example.test")
    message = str(caught.value)
    assert "eve@example.test" in message and "ada@example.test" in message
    assert "to" in message
    assert len(session.misses) == 1

    [missed] = _new_sends(traced, recorded)
    assert (missed["status"], missed["error"]["type"]) == ("error", "SMTPServerDisconnected")
    assert missed["tags"].get("replay") == "miss"


def test_recorded_refusals_are_raised_again(traced: RedisServer, smtp_server: _Server,
                                            tmp_path: Path) -> None:
    from test_integration_smtplib import BLOCKED_SENDER

    with smtplib.SMTP("127.0.0.1", smtp_server.port) as smtp:
        with pytest.raises(smtplib.SMTPSenderRefused):
            smtp.sendmail(BLOCKED_SENDER, "ada@example.test", "Subject: x\r\n\r\nbuy\r\n")
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            smtp.sendmail(SHOP, [UNKNOWN], "Subject: x\r\n\r\nhello\r\n")
    events, _ = read_events(traced)
    recording = tmp_path / "refusals.jsonl"
    recording.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    smtp_server.stop()

    with tracelab.replay(str(recording)):
        with smtplib.SMTP("127.0.0.1", smtp_server.port) as smtp:
            with pytest.raises(smtplib.SMTPSenderRefused) as sender:
                smtp.sendmail(BLOCKED_SENDER, "ada@example.test", "Subject: x\r\n\r\nbuy\r\n")
            with pytest.raises(smtplib.SMTPRecipientsRefused) as recipients:
                smtp.sendmail(SHOP, [UNKNOWN], "Subject: x\r\n\r\nhello\r\n")
    assert (sender.value.smtp_code, sender.value.smtp_error) == \
        (553, b"5.7.1 Sender not allowed")
    assert recipients.value.recipients == {UNKNOWN: (550, b"5.1.1 User unknown")}


def test_uninstall_leaves_the_sdk_wrapper_and_smtplib_working(traced: RedisServer,
                                                              smtp_server: _Server) -> None:
    smtp_adapter.install()
    smtp_adapter.uninstall()
    smtp_adapter.install()  # again: idempotent, spliced once beneath the SDK's wrapper
    with smtplib.SMTP("127.0.0.1", smtp_server.port) as smtp:  # no replay active: live
        assert smtp.sendmail(SHOP, "ada@example.test", "Subject: x\r\n\r\nlive\r\n") == {}
    assert len(smtp_server.mailbox.messages) == 1
    events, _ = read_events(traced)
    assert [e["kind"] for e in events] == ["email"]  # recorded once, not twice


def test_passthrough_sends_only_the_unrecorded_message_live(traced: RedisServer,
                                                            smtp_server: _Server,
                                                            tmp_path: Path) -> None:
    recording = tmp_path / "smtp.jsonl"
    recorded = _record(traced, smtp_server, recording)
    with tracelab.replay(str(recording), on_miss="passthrough") as session:
        with smtplib.SMTP("127.0.0.1", smtp_server.port) as smtp:
            smtp.login(USER, PASSWORD)  # answered locally, repeated to the server when needed
            assert smtp.send_message(_message("ada@example.test", subject="Order shipped")) == {}
            assert smtp.send_message(_message("eve@example.test", subject="New")) == {}
            assert smtp.sendmail(SHOP, ["bob@example.test", UNKNOWN],
                                 "Subject: hi\r\n\r\nhello bob\r\n") == \
                {UNKNOWN: (550, b"5.1.1 User unknown")}
    assert len(session.passthrough) == 1
    # Two recorded live before; of the three replayed sends only the unrecorded one went out.
    assert [m.rcpt_tos for m in smtp_server.mailbox.messages[2:]] == [["eve@example.test"]]
    assert [e["tags"].get("replay") for e in _new_sends(traced, recorded)] == \
        ["hit", "passthrough", "hit"]


def test_connection_opened_before_the_replay_sends_nothing(traced: RedisServer,
                                                           smtp_server: _Server,
                                                           tmp_path: Path) -> None:
    recording = tmp_path / "smtp.jsonl"
    _record(traced, smtp_server, recording)
    with smtplib.SMTP("127.0.0.1", smtp_server.port) as smtp:  # connected live, before
        smtp.login(USER, PASSWORD)
        with tracelab.replay(str(recording)):
            assert smtp.send_message(_message("ada@example.test", subject="Order shipped")) == {}
            smtp.noop()  # the live connection is still usable after a replayed send
            with pytest.raises(smtplib.SMTPServerDisconnected) as caught:
                smtp.send_message(_message("eve@example.test", subject="Order shipped"))
    assert "eve@example.test" in str(caught.value)
    assert len(smtp_server.mailbox.messages) == 2  # only the two recorded live


def test_recipients_in_another_order_get_their_own_recorded_replies(
        traced: RedisServer, smtp_server: _Server, tmp_path: Path) -> None:
    recording = tmp_path / "smtp.jsonl"
    _record(traced, smtp_server, recording)
    smtp_server.stop()
    with tracelab.replay(str(recording)):
        with smtplib.SMTP("127.0.0.1", smtp_server.port) as smtp:
            # recorded as [bob, UNKNOWN]: the key ignores recipient order, the replies follow
            # each address, not its position
            assert smtp.sendmail(SHOP, [UNKNOWN, "bob@example.test"],
                                 "Subject: hi\r\n\r\nhello bob\r\n") == \
                {UNKNOWN: (550, b"5.1.1 User unknown")}
