"""Listening sockets and stopping for the commands that serve (`serve`, `up`, `mocks`, `demo`).

Ports are bound before anything starts, so a busy port or a bad host is one clear line and a
non-zero exit instead of a traceback from deep inside uvicorn.
"""
from __future__ import annotations

import argparse
import asyncio
import errno
import signal
import socket
from collections.abc import Callable, Sequence
from typing import Any


def port_number(text: str) -> int:
    """argparse type: a TCP port, 0-65535 (0 picks a free one)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535; 0 picks a "
                                         "free one)")
    return value


def listen_socket(host: str, port: int, *, command: str, purpose: str, busy_hint: str
                  ) -> socket.socket:
    """A non-blocking listening socket, or SystemExit with one line saying what is wrong.

    `purpose` says what the port is for ("the API", "mock stripe"); `busy_hint` what to do
    when it is taken ("choose another with --port").
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise SystemExit(f"{command}: cannot listen on {host}:{port} for {purpose}: "
                         f"unknown host ({exc.strerror})") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise SystemExit(f"{command}: port {port} on {host} is already in use ({purpose}); "
                             f"stop what uses it or {busy_hint}") from None
        raise SystemExit(f"{command}: cannot listen on {host}:{port} for {purpose}: "
                         f"{exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


def stopper(servers: Sequence[Any]) -> Callable[[], None]:
    """For uvicorn servers run together: the first call lets them finish, a second forces it."""
    def stop() -> None:
        for server in servers:
            if server.should_exit:
                server.force_exit = True
            server.should_exit = True
    return stop


def stop_on_signals(loop: asyncio.AbstractEventLoop, stop: Callable[[], None]) -> None:
    """SIGINT and SIGTERM call `stop` (where the loop can take signal handlers)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop)
        except (NotImplementedError, RuntimeError):  # not the main thread, or no support
            pass
