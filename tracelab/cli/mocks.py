"""`tracelab mocks`: the mock vendor services (Stripe, SendGrid, Twilio, SES, OpenAI) on
loopback, without Docker, all in this one process (one event loop, one uvicorn server each).

`--only stripe,openai` picks some; `--base-port 9100` sets where the fixed offsets start
(stripe 9100, sendgrid 9101, twilio 9102, ses 9103, openai 9104). `--faults RULES` (JSON or
`@file`, like `MOCK_FAULTS`) starts every mock with those fault rules. Each mock's URL and how
to point its SDK at it are printed once all are listening. Heavy imports happen in `run`.
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any

from tracelab.listen import listen_socket, port_number, stop_on_signals, stopper
from tracelab.mocks import DEFAULT_BASE_PORT, DEFAULT_HOST, VENDORS


def vendor_list(text: str) -> list[str]:
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give at least one mock, e.g. --only stripe,openai")
    unknown = [n for n in names if n not in VENDORS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown mock(s) {', '.join(unknown)}; choose from "
                                         f"{', '.join(VENDORS)}")
    return list(dict.fromkeys(names))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--only", type=vendor_list, default=None, metavar="A,B",
                        help=f"mocks to run (default all: {','.join(VENDORS)})")
    parser.add_argument("--base-port", type=port_number, default=DEFAULT_BASE_PORT,
                        help=f"first port (default {DEFAULT_BASE_PORT}); each mock has a fixed "
                             "offset (stripe +0, sendgrid +1, twilio +2, ses +3, openai +4); "
                             "0 picks free ports")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help="address to listen on (default 127.0.0.1: loopback only)")
    parser.add_argument("--faults", default=None, metavar="RULES",
                        help="fault rules for every mock at start: JSON or @file (default: "
                             "$MOCK_FAULTS)")
    parser.add_argument("--log-level", default="warning",
                        choices=["critical", "error", "warning", "info", "debug"])


def _bind(host: str, port: int, name: str) -> socket.socket:
    return listen_socket(host, port, command="tracelab mocks", purpose=f"mock {name}",
                         busy_hint="choose another --base-port")


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class MockServers:
    """The chosen mocks bound on their ports; `serve()` blocks, `start()` runs them in a thread.

    `urls` maps each mock to its base URL as soon as the object exists (ports are bound in
    the constructor, so a busy port fails here, before anything runs).
    """

    def __init__(self, ports: Mapping[str, int], host: str = DEFAULT_HOST,
                 faults_text: str | None = None, log_level: str = "warning") -> None:
        import uvicorn  # noqa: F401  # here, not in the serving thread: a missing extra fails now

        from tracelab.replay.faults import FaultSet, parse_text
        from tracelab.mocks import create_app  # noqa: F401

        self.log_level = log_level
        # Parse once so a bad rule fails before binding; each mock gets its own rule objects.
        text = os.environ.get("MOCK_FAULTS", "") if faults_text is None else faults_text
        source = "MOCK_FAULTS" if faults_text is None else "--faults"
        parse_text(text, source)
        self._faults = {name: FaultSet(parse_text(text, source)) for name in ports}
        self.socks: dict[str, socket.socket] = {}
        try:
            for name, port in ports.items():
                self.socks[name] = _bind(host, port, name)
        except SystemExit:
            self.close()
            raise
        self.urls = {name: _url(sock) for name, sock in self.socks.items()}
        self._servers: list[Any] = []
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: Callable[[], None] | None = None

    def close(self) -> None:
        for sock in self.socks.values():
            sock.close()

    def serve(self, on_ready: Callable[[Callable[[], None]], None] | None = None,
              handle_signals: bool = True) -> int:
        import asyncio
        import contextlib

        import uvicorn

        from tracelab.mocks.middleware import uvicorn_protocol
        from tracelab.mocks import create_app

        protocol = uvicorn_protocol()

        class _Server(uvicorn.Server):
            def capture_signals(self):  # type: ignore[override]
                return contextlib.nullcontext()

        servers = [_Server(uvicorn.Config(create_app(name, self._faults[name]), http=protocol,
                                          log_level=self.log_level, access_log=False,
                                          lifespan="off", timeout_graceful_shutdown=1,
                                          timeout_keep_alive=30))
                   for name in self.socks]
        self._servers = servers

        async def main() -> None:
            loop = asyncio.get_running_loop()
            stop = stopper(servers)
            self._stop = lambda: loop.call_soon_threadsafe(stop)
            if handle_signals:
                stop_on_signals(loop, stop)

            async def started() -> None:
                while not all(s.started for s in servers):
                    await asyncio.sleep(0.01)
                self._ready.set()
                if on_ready is not None:
                    on_ready(stop)

            waiter = asyncio.ensure_future(started())
            await asyncio.gather(*(s.serve(sockets=[k]) for s, k in
                                   zip(servers, self.socks.values())))
            waiter.cancel()

        try:
            asyncio.run(main())
        except KeyboardInterrupt:
            pass
        finally:
            self._ready.set()
            self.close()
        return 0

    def start(self, timeout: float = 15.0) -> MockServers:
        """Serve in a daemon thread; return once every mock accepts connections."""
        self._thread = threading.Thread(target=self.serve, kwargs={"handle_signals": False},
                                        name="tracelab-mocks", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("tracelab mocks did not start in time")
        return self

    def stop(self, timeout: float = 5.0) -> None:
        if self._stop is not None:
            self._stop()
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> MockServers:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def describe(urls: Mapping[str, str]) -> str:
    lines = []
    for name, url in urls.items():
        v = VENDORS[name]
        lines.append(f"mock {name:<8} {url}   {v.endpoints}")
        lines.append(f"{'':14}SDK: {v.how.format(url=url)}")
    lines.append("fault rules: GET/POST/PUT/DELETE <url>/__tracelab/faults "
                 "(see `tracelab.replay.faults`), health: <url>/__tracelab/health")
    return "\n".join(lines)


def run_mocks(ports: Mapping[str, int], host: str = DEFAULT_HOST, faults_text: str | None = None,
              log_level: str = "warning") -> int:
    from tracelab.replay.faults import FaultRuleError

    try:
        servers = MockServers(ports, host, faults_text, log_level)
    except FaultRuleError as exc:
        print("tracelab mocks: invalid fault rules:\n  " + "\n  ".join(exc.errors),
              file=sys.stderr)
        return 2
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
            return 1
        raise

    def ready(_stop: Any) -> None:
        print(describe(servers.urls), flush=True)

    return servers.serve(on_ready=ready)


def ports_for(names: list[str] | None, base_port: int) -> dict[str, int]:
    names = names or list(VENDORS)
    if base_port == 0:
        return {n: 0 for n in names}
    top = base_port + max(VENDORS[n].offset for n in names)
    if top > 65535:
        raise SystemExit(f"tracelab mocks: --base-port {base_port} puts a mock on port {top}; "
                         "choose a lower base")
    return {n: VENDORS[n].port(base_port) for n in names}


def run(args: argparse.Namespace) -> int:
    try:
        ports = ports_for(args.only, args.base_port)
    except SystemExit as exc:
        print(exc.code, file=sys.stderr)
        return 2
    return run_mocks(ports, args.host, args.faults, args.log_level)
