"""`tracelab serve`: the API (FastAPI on uvicorn) and the web UI, reading the store.

Both servers run in one process and one event loop; the UI's server forwards `/api` to the API
app in process. Ports are bound before anything starts, so a busy port is one clear line and
a non-zero exit. Heavy imports (FastAPI, uvicorn, pandas) happen inside `run`.
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys
from typing import Any

from tracelab.config import env_int
from tracelab.listen import listen_socket, port_number, stop_on_signals, stopper

DEFAULT_OTLP_PORT = 4318


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: loopback only)")
    parser.add_argument("--port", type=port_number, default=8000,
                        help="API port (default 8000; Swagger at /docs)")
    parser.add_argument("--ui-port", type=port_number, default=3000,
                        help="web UI port (default 3000)")
    parser.add_argument("--no-ui", action="store_true", help="serve the API only")
    parser.add_argument("--otlp-port", type=port_number, default=None,
                        help="OTLP/HTTP receiver port (default $TRACELAB_OTLP_PORT, else 4318, "
                             "skipped with a warning when busy; 0 disables; the API port also "
                             "takes POST /v1/traces)")
    parser.add_argument("--token", default=None,
                        help="require 'Authorization: Bearer TOKEN' on /api "
                             "(default: $TRACELAB_API_TOKEN, else no token)")
    parser.add_argument("--store", help="store root or URI (default: $TRACELAB_STORE, "
                        "else $TRACELAB_HOME/store)")
    parser.add_argument("--log-level", default="warning",
                        choices=["critical", "error", "warning", "info", "debug"],
                        help="uvicorn log level (default warning)")


def bind(host: str, port: int, what: str) -> socket.socket:
    """A listening socket for the API or the web UI, or SystemExit with one clear line."""
    flag = {"API": "--port", "OTLP receiver": "--otlp-port"}.get(what, "--ui-port")
    return listen_socket(host, port, command="tracelab", purpose=f"the {what}",
                         busy_hint=f"choose another with {flag}")


def _bind_otlp(args: argparse.Namespace) -> tuple[socket.socket | None, str | None]:
    """The OTLP receiver's socket. The default port (4318) is the OpenTelemetry Collector's
    too: when it is busy the receiver is skipped with a warning (the API port still takes
    `POST /v1/traces`); a port given with --otlp-port must be free."""
    port = getattr(args, "otlp_port", None)
    if port == 0:
        return None, None
    if port is not None:
        return bind(args.host, port, "OTLP receiver"), None
    default = env_int("TRACELAB_OTLP_PORT", DEFAULT_OTLP_PORT)
    if not 0 < default < 65536:
        return None, None
    try:
        return bind(args.host, default, "OTLP receiver"), None
    except SystemExit as exc:
        return None, f"warning: no OTLP receiver on port {default} ({exc.code}); " \
            "send OTLP to the API port or choose --otlp-port"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(args: argparse.Namespace, ingester: Any = None, *, name: str = "serve",
          on_ready: Any = None) -> int:
    """Bind, build the apps, run until SIGINT/SIGTERM. Shared with `tracelab up`."""
    token = args.token if args.token is not None else (os.environ.get("TRACELAB_API_TOKEN")
                                                        or None)
    if not args.no_ui and args.port == args.ui_port and args.port != 0:
        raise SystemExit(f"tracelab {name}: --port and --ui-port are both {args.port}; "
                         "give them different ports")
    from tracelab.config import ConfigError, idle_seconds

    try:  # read again per query; checked here so a bad value stops the server, not requests
        idle_seconds()
    except ConfigError as exc:
        raise SystemExit(f"tracelab {name}: {exc}") from None
    # Imported before binding: without the `server` extra this raises ModuleNotFoundError,
    # which `tracelab.cli.main` turns into the install command.
    import asyncio

    import uvicorn

    from tracelab.server.app import create_app
    from tracelab.server.ui import create_ui_app, ui_built
    from tracelab.store.layout import resolve_layout

    api_sock = bind(args.host, args.port, "API")
    ui_sock = otlp_sock = None
    try:
        if not args.no_ui:
            ui_sock = bind(args.host, args.ui_port, "web UI")
        otlp_sock, otlp_warning = _bind_otlp(args)
    except SystemExit:
        for sock in (api_sock, ui_sock):
            if sock is not None:
                sock.close()
        raise

    layout = resolve_layout(args.store)
    api = create_app(layout, token=token, ingester=ingester)

    class _Server(uvicorn.Server):
        def capture_signals(self):  # type: ignore[override]  # signals are handled below
            import contextlib

            return contextlib.nullcontext()

    def config(app: Any) -> uvicorn.Config:
        return uvicorn.Config(app, log_level=args.log_level, access_log=False,
                              timeout_graceful_shutdown=2, lifespan="on" if app is api
                              else "off")

    servers = [_Server(config(api))]
    socks = [api_sock]
    if ui_sock is not None:
        servers.append(_Server(config(create_ui_app(api))))
        socks.append(ui_sock)
    if otlp_sock is not None:
        from tracelab.otlp.receiver import create_otlp_app

        servers.append(_Server(config(create_otlp_app(api.state.otlp, api.state.otlp_guard))))
        socks.append(otlp_sock)

    def url(sock: socket.socket) -> str:
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}"

    lines = [f"TraceLab API on {url(api_sock)} (Swagger at {url(api_sock)}/docs), "
             f"store {layout.uri or layout.root}"]
    if ui_sock is not None:
        lines.append(f"TraceLab web UI on {url(ui_sock)}")
        if not ui_built():
            lines.append("warning: the web UI is not built (make ui); the UI port shows how")
    if otlp_warning:
        lines.append(otlp_warning)
    if otlp_sock is not None:
        lines.append(f"OTLP/HTTP receiver on {url(otlp_sock)}/v1/traces (and on the API port)")
    if token:
        lines.append("/api requires 'Authorization: Bearer <token>'")
    elif not _is_loopback(args.host):
        lines.append(f"warning: listening on {args.host} without a token: anyone who can reach "
                     "it reads every payload (use --token)")
    print("\n".join(lines), flush=True)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = stopper(servers)
        stop_on_signals(loop, stop)
        if on_ready is not None:
            loop.call_soon(on_ready, stop)
        await asyncio.gather(*(s.serve(sockets=[k]) for s, k in zip(servers, socks)))

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    finally:
        for sock in socks:
            sock.close()
        api.state.otlp.close()
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        return serve(args)
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
            return 1
        raise
