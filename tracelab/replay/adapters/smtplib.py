"""smtplib replay: an in-process SMTP server behind a fake socket, answering from the recording.

While a replay is active, `SMTP._get_socket` (and `SMTP_SSL`'s, which would wrap a real
socket in TLS) returns a `_ReplaySocket` instead of connecting: greeting, EHLO, AUTH, STARTTLS,
NOOP, RSET and QUIT are answered locally, so no socket is ever opened and every smtplib method
above the socket (login, send_message, the context manager) runs unchanged.

What a mail transaction answers is decided one level up, in a wrapper on `SMTP.sendmail`
spliced BENEATH the SDK's recording wrapper (`tracelab.sdk.integrations.smtplib`): it sees the
caller's own arguments, builds the request exactly as the SDK records it, and asks the replay
session. On a hit the socket replays the recorded SMTP replies (refused recipients, a refused
sender, a DATA error), so smtplib itself returns or raises what it did in the recording and the
SDK records the send as usual. On a miss the "server" hangs up: smtplib raises its own
`SMTPServerDisconnected`, whose message carries the matcher's explanation. A send over a
connection opened before the replay started is answered the same way, on a stand-in socket
swapped in for that transaction. In passthrough mode a missed send goes to the real server
(see `_ReplaySocket`).

Faults (see tracelab/replay/session.py) act on the mail transaction: a `status` fault of 400
or more is the server's reply to MAIL FROM (smtplib raises `SMTPSenderRefused` with that code;
421 also closes the connection, as smtplib does), a lower one lets the send succeed; `reset`
drops the connection at MAIL FROM (smtplib raises `SMTPServerDisconnected`, its error for a
connection reset by the peer); `timeout` hangs at MAIL FROM for the fault's `timeout_s` (or
the connection's own timeout, if shorter) and then fails the read with `TimeoutError`
("timed out"), which smtplib, like after a real read timeout, raises as
`SMTPServerDisconnected` with the `TimeoutError` as its context. The body faults leave the
recorded replies as they are (a mail reply has no body).
"""
from __future__ import annotations

import collections
import contextvars
import email.utils
import threading
from typing import Any

import wrapt

from tracelab.replay import session as session_api

_GREETING = b"220 tracelab-replay ESMTP (answered from a recording, nothing is sent)\r\n"
_FEATURES = (b"250-tracelab-replay\r\n250-AUTH PLAIN\r\n250-STARTTLS\r\n"
             b"250-8BITMIME\r\n250-SMTPUTF8\r\n250 SIZE 0\r\n")
_OK = b"250 2.0.0 OK (replayed)\r\n"
_DATA_END = b"\r\n.\r\n"

_lock = threading.Lock()
_connecting: contextvars.ContextVar[bool] = contextvars.ContextVar("tracelab_smtp_live",
                                                                  default=False)
_installed: dict[str, Any] = {}  # "sendmail" -> our FunctionWrapper, to find and remove it


class _Transaction:
    """The replies one recorded `sendmail` gets, or the hang-up a miss gets."""

    def __init__(self, event: dict[str, Any] | None, miss: str | None = None,
                 live: bool = False) -> None:
        self.miss = miss
        self.live = live  # a passthrough miss: this transaction goes to the real server
        self.refused: dict[str, Any] = {}
        self.mail_reply: tuple[int, str] | None = None
        self.data_reply: tuple[int, str] | None = None
        self.hang_up: str | None = None
        self.hang_s: float | None = None  # a timeout fault: hang this long at MAIL, then fail
        if event is not None:
            self._from_event(event)

    @classmethod
    def of(cls, answer: Any, timeout: Any = None) -> _Transaction:
        """The transaction a session's answer gives (`timeout`: the connection's own)."""
        fault = answer.fault if answer.hit else None
        if fault is None or fault.action == "latency":
            return cls(answer.event) if answer.hit else cls(None, miss=answer.message)
        if fault.action == "status":
            transaction = cls(None)
            if (fault.status or 0) >= 400:
                transaction.mail_reply = (int(fault.status or 0), fault.message)
            return transaction
        if fault.action == "reset":
            transaction = cls(None)
            transaction.hang_up = fault.message
            return transaction
        if fault.action == "timeout":
            transaction = cls(None)
            transaction.hang_s = session_api.hang_seconds(answer, timeout)
            return transaction
        return cls(answer.event)  # a body fault: the recorded replies, which have no body

    def _from_event(self, event: dict[str, Any]) -> None:
        response = event.get("response") or {}
        refused = response.get("refused") if isinstance(response, dict) else None
        self.refused = refused if isinstance(refused, dict) else {}
        if event.get("status") != "error":
            return
        error_type = (event.get("error") or {}).get("type", "")
        code = response.get("code") if isinstance(response, dict) else None
        message = str(response.get("message", "")) if isinstance(response, dict) else ""
        if error_type == "SMTPRecipientsRefused":
            return
        if isinstance(code, int):
            if error_type == "SMTPDataError":
                self.data_reply = (code, message)
            else:
                self.mail_reply = (code, message)
            return
        self.hang_up = (event.get("error") or {}).get("message") or error_type or "recorded failure"

    def rcpt(self, line: str) -> tuple[int, str]:
        """The recorded reply for `RCPT TO:<address>` (recipients matched in any order)."""
        address = line.partition("<")[2].partition(">")[0]
        for recorded, reply in self.refused.items():
            if recorded == address or email.utils.parseaddr(recorded)[1] == address:
                if isinstance(reply, dict) and isinstance(reply.get("code"), int):
                    return reply["code"], str(reply.get("message", ""))
        return 250, "2.1.5 OK"


def _line(code: int, message: str) -> bytes:
    lines = message.splitlines() or [""]
    out = [f"{code}-{text}" for text in lines[:-1]] + [f"{code} {lines[-1]}"]
    return ("\r\n".join(out) + "\r\n").encode("utf-8", errors="replace")


class _ReplayFile:
    """What `sock.makefile('rb')` gives smtplib: reads the replies the socket queued."""

    def __init__(self, sock: _ReplaySocket) -> None:
        self._sock = sock

    def readline(self, limit: int = -1) -> bytes:
        return self._sock.read_reply_line(limit)

    def close(self) -> None:
        pass


_LIVE = None  # in the reply queue: "read this reply from the live server"
_STATE_VERBS = frozenset({"EHLO", "HELO", "AUTH", "STARTTLS"})


class _ReplaySocket:
    """An SMTP server in-process: parses what smtplib sends, queues what it reads back.

    In passthrough mode a missed send goes to the real server: the socket then connects
    (through smtplib's own `_get_socket`), repeats the session's EHLO / STARTTLS / AUTH
    (kept in memory only, never recorded) and forwards that transaction and what follows it.
    Recorded sends in the same session are still answered locally.
    """

    def __init__(self, host: str, port: int, connect: Any, greet: bool = True) -> None:
        self.peer = (host, port)
        self.transaction: _Transaction | None = None
        self.tls_context: Any = None
        self._connect = connect
        self._replies: collections.deque[bytes | None] = collections.deque(
            [_GREETING] if greet else [])
        self._transcript: list[bytes] = []
        self._live: Any = None
        self._live_file: Any = None
        self._in_data = False
        self._data_live = False
        self._data = bytearray()
        self._failure: BaseException | None = None

    # -- the socket API smtplib uses -------------------------------------------------------
    def getpeername(self) -> tuple[str, int]:
        return self.peer

    def makefile(self, mode: str = "rb") -> _ReplayFile:
        return _ReplayFile(self)

    def settimeout(self, timeout: float | None) -> None:
        pass

    def close(self) -> None:
        live, self._live = self._live, None
        if live is not None:
            self._live_file.close()
            live.close()

    def sendall(self, data: bytes) -> None:
        if self._in_data:
            self._data += data
            if self._data.endswith(_DATA_END) or self._data == b".\r\n":
                payload, self._in_data = bytes(self._data), False
                self._data.clear()
                if self._data_live:
                    self._live.sendall(payload)
                    self._replies.append(_LIVE)
                else:
                    self._replies.append(_OK)
                self.transaction = None
            return
        for raw in bytes(data).split(b"\r\n"):
            if raw:
                self._command(raw)

    send = sendall

    def read_reply_line(self, limit: int = -1) -> bytes:
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure
        if not self._replies:
            return b""
        head = self._replies[0]
        if head is _LIVE:
            line = self._live_file.readline(limit)
            if not line or line[3:4] != b"-":
                self._replies.popleft()
            return line
        at = head.find(b"\n")
        line, rest = head[:at + 1], head[at + 1:]
        if rest:
            self._replies[0] = rest
        else:
            self._replies.popleft()
        return line

    # -- the server side -----------------------------------------------------------------
    def _reply(self, code: int, message: str) -> None:
        self._replies.append(_line(code, message))

    def _hang_up(self, message: str) -> None:
        self._failure = ConnectionResetError(message)
        self.transaction = None

    def _forward(self, raw: bytes) -> None:
        if self._live is None:
            self._go_live()
        self._live.sendall(raw + b"\r\n")
        self._replies.append(_LIVE)

    def _go_live(self) -> None:
        """Connect for real and repeat the session state smtplib believes it has."""
        live = self._connect()
        reader = live.makefile("rb")
        _read_reply(reader)  # the greeting
        for raw in self._transcript:
            live.sendall(raw + b"\r\n")
            _read_reply(reader)
            if raw.upper().startswith(b"STARTTLS"):
                import ssl

                # smtplib's own default for starttls() without a context
                context = self.tls_context or ssl._create_stdlib_context()
                reader.close()
                live = context.wrap_socket(live, server_hostname=self.peer[0])
                reader = live.makefile("rb")
        self._live, self._live_file = live, reader

    def _local(self) -> bool:
        """Is this command answered here (not forwarded to a live server)?"""
        transaction = self.transaction
        if transaction is not None:
            return not transaction.live
        return self._live is None

    def _command(self, raw: bytes) -> None:
        line = raw.decode("utf-8", errors="replace")
        verb = line.split(" ", 1)[0].upper()
        if not self._local():
            self._forward(raw)
            if verb == "DATA":
                self._in_data = self._data_live = True
            return
        if verb in _STATE_VERBS:
            self._transcript.append(raw)
        if verb == "EHLO":
            self._replies.append(_FEATURES)
        elif verb in ("HELO", "NOOP", "RSET"):
            if verb == "RSET":
                self.transaction = None
            self._reply(250, "OK")
        elif verb == "AUTH":
            self._reply(235, "2.7.0 Authentication successful (replayed, not checked)")
        elif verb == "STARTTLS":
            self._reply(220, "2.0.0 Ready to start TLS (replayed)")
        elif verb == "QUIT":
            self._reply(221, "2.0.0 Bye")
        elif verb == "MAIL":
            self._mail()
        elif verb == "RCPT":
            self._rcpt(line)
        elif verb == "DATA":
            self._data_command()
        else:  # VRFY, EXPN, anything sent outside sendmail
            self._hang_up(f"TraceLab replay: SMTP command {verb} is not in the recording")

    def _mail(self) -> None:
        transaction = self.transaction
        if transaction is None:
            self._hang_up("TraceLab replay: an SMTP transaction outside sendmail/send_message "
                          "cannot be answered from a recording")
        elif transaction.miss is not None:
            self._hang_up(transaction.miss)
        elif transaction.hang_up is not None:
            self._hang_up(transaction.hang_up)
        elif transaction.hang_s is not None:
            import time

            time.sleep(transaction.hang_s)  # no reply comes: the read then times out
            self._failure = TimeoutError("timed out")
            self.transaction = None
        elif transaction.mail_reply is not None:
            self._reply(*transaction.mail_reply)
            self.transaction = None
        else:
            self._reply(250, "2.1.0 OK")

    def _rcpt(self, line: str) -> None:
        if self.transaction is None:
            self._hang_up("TraceLab replay: RCPT without a replayed MAIL")
        else:
            self._reply(*self.transaction.rcpt(line))

    def _data_command(self) -> None:
        transaction = self.transaction
        if transaction is None:
            self._hang_up("TraceLab replay: DATA without a replayed MAIL")
        elif transaction.data_reply is not None:
            self._reply(*transaction.data_reply)
            self.transaction = None
        else:
            self._in_data, self._data_live = True, False
            self._reply(354, "End data with <CR><LF>.<CR><LF>")


def _read_reply(reader: Any) -> bytes:
    """One whole (possibly multi-line) SMTP reply from a live server."""
    while True:
        line = reader.readline(8193)
        if not line or line[3:4] != b"-":
            return line


# -- the patches --------------------------------------------------------------------------
def _get_socket(wrapped: Any, instance: Any, args: tuple[Any, ...],
                kwargs: dict[str, Any]) -> Any:
    if session_api.active() is None or _connecting.get():
        return wrapped(*args, **kwargs)
    host = args[0] if args else kwargs.get("host", "")
    port = args[1] if len(args) > 1 else kwargs.get("port", 0)

    def connect() -> Any:  # only for a passthrough miss: smtplib's own connect (and TLS)
        token = _connecting.set(True)
        try:
            return wrapped(*args, **kwargs)
        finally:
            _connecting.reset(token)

    return _ReplaySocket(str(host), int(port), connect)


def _starttls(wrapped: Any, instance: Any, args: tuple[Any, ...],
              kwargs: dict[str, Any]) -> Any:
    """smtplib's STARTTLS, minus the TLS handshake a fake socket cannot do."""
    if not isinstance(getattr(instance, "sock", None), _ReplaySocket):
        return wrapped(*args, **kwargs)
    import smtplib

    instance.ehlo_or_helo_if_needed()
    if not instance.has_extn("starttls"):
        raise smtplib.SMTPNotSupportedError("STARTTLS extension not supported by server.")
    context = args[2] if len(args) > 2 else kwargs.get("context")
    instance.sock.tls_context = context
    resp, reply = instance.docmd("STARTTLS")
    instance.file = None
    instance.helo_resp = instance.ehlo_resp = None
    instance.esmtp_features = {}
    instance.does_esmtp = False
    return resp, reply


def _live_view(instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The live send in the shape the SDK stores (same helpers, same redaction)."""
    from tracelab.sdk.integrations import smtplib as recorded

    rec = session_api.recorder()
    host, port = recorded._server(instance)
    from_addr = args[0] if len(args) > 0 else kwargs.get("from_addr")
    to_addrs = args[1] if len(args) > 1 else kwargs.get("to_addrs")
    msg = args[2] if len(args) > 2 else kwargs.get("msg")
    return {"kind": "email", "target": f"smtp:{host}", "endpoint": "sendmail",
            "request": recorded._request(rec, from_addr, to_addrs, msg, port)}


def _sendmail(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    sock = getattr(instance, "sock", None)
    session = session_api.active()
    if session is None or sock is None:  # not connected: smtplib itself refuses to send
        return wrapped(*args, **kwargs)
    answer = session.take(_live_view(instance, args, kwargs))
    if not isinstance(sock, _ReplaySocket):
        return _over_live_connection(instance, answer, wrapped, args, kwargs)
    if not answer.hit and answer.passthrough:
        sock.transaction = _Transaction(None, live=True)
    else:
        sock.transaction = _Transaction.of(answer, _timeout(instance))
    return wrapped(*args, **kwargs)


def _timeout(instance: Any) -> Any:
    """The connection's own timeout in seconds (None, or smtplib's "global default": none)."""
    timeout = getattr(instance, "timeout", None)
    return timeout if isinstance(timeout, (int, float)) else None


def _over_live_connection(instance: Any, answer: Any, wrapped: Any, args: tuple[Any, ...],
                          kwargs: dict[str, Any]) -> Any:
    """A send over a connection opened before the replay started: still nothing on the wire.

    The transaction runs against a stand-in socket swapped in for its duration; a hit gives
    the live connection back afterwards, a miss hangs up on it (as the stand-in did).
    """
    if not answer.hit and answer.passthrough:
        return wrapped(*args, **kwargs)
    real, real_file = instance.sock, instance.file
    stand_in = _ReplaySocket(*_peer(real), connect=lambda: real, greet=False)
    stand_in.transaction = _Transaction.of(answer, _timeout(instance))
    instance.sock, instance.file = stand_in, None
    try:
        return wrapped(*args, **kwargs)
    finally:
        if instance.sock is stand_in:
            instance.sock, instance.file = real, real_file
        else:  # smtplib closed the stand-in: close the connection it stood in for
            if real_file is not None:
                real_file.close()
            real.close()


def _peer(sock: Any) -> tuple[str, int]:
    try:
        peer = sock.getpeername()
    except OSError:
        return "unknown", 0
    return (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else (str(peer), 0)


def _splice_beneath(owner: Any, attr: str, wrapper: Any) -> None:
    """Wrap `owner.attr` with `wrapper` underneath the SDK's recording wrapper, if it is there.

    The SDK's wrapper stays outermost either way (it installs on top of ours when it comes
    later), so a replayed send is still recorded by the SDK, and the SDK's own uninstall keeps
    working: it only ever removes its own layer.
    """
    from tracelab.sdk.integrations._patching import is_patched

    if _installed.get(attr) is not None:
        return
    current = owner.__dict__.get(attr)
    if is_patched(owner, attr):  # the SDK's FunctionWrapper is outermost: go inside it
        ours = wrapt.FunctionWrapper(current.__wrapped__, wrapper)
        current.__wrapped__ = ours
    else:
        ours = wrapt.FunctionWrapper(current, wrapper)
        setattr(owner, attr, ours)
    _installed[attr] = ours


def _unsplice(owner: Any, attr: str) -> None:
    ours = _installed.pop(attr, None)
    if ours is None:
        return
    current = owner.__dict__.get(attr)
    if current is ours:
        setattr(owner, attr, ours.__wrapped__)
    elif current is not None and getattr(current, "__wrapped__", None) is ours:
        current.__wrapped__ = ours.__wrapped__


def install() -> None:
    import smtplib

    from tracelab.sdk.integrations._patching import patch

    with _lock:
        patch(smtplib.SMTP, "_get_socket", _get_socket)
        patch(smtplib.SMTP_SSL, "_get_socket", _get_socket)
        patch(smtplib.SMTP, "starttls", _starttls)
        _splice_beneath(smtplib.SMTP, "sendmail", _sendmail)


def uninstall() -> None:
    import sys

    from tracelab.sdk.integrations._patching import unpatch

    module = sys.modules.get("smtplib")
    if module is None:
        return
    with _lock:
        unpatch(module.SMTP, "_get_socket")
        unpatch(module.SMTP_SSL, "_get_socket")
        unpatch(module.SMTP, "starttls")
        _unsplice(module.SMTP, "sendmail")
