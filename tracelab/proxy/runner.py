"""Running mitmproxy with the TraceLab addon, and the proxy's certificate authority.

mitmproxy does the proxying: its own `DumpMaster` (without the flow printer) runs with
`TraceLabAddon` added, exactly as `mitmdump -s addon.py` would. This module only chooses the
options (listen address, upstream TLS checks, `confdir` = `$TRACELAB_HOME/proxy/` so the CA is
TraceLab's and never `~/.mitmproxy`), keeps the CA's private key readable by its owner only,
and stops mitmproxy cleanly on SIGINT/SIGTERM. It does not set up recording: the caller runs
`tracelab.init` first.
"""
from __future__ import annotations

import asyncio
import errno
import signal
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

from tracelab.config import tracelab_home
from tracelab.proxy.lifecycle import RunLifecycle

CA_BASENAME = "mitmproxy"  # mitmproxy's CONF_BASENAME: the file names it looks for in confdir
CA_CERT_FILE = f"{CA_BASENAME}-ca-cert.pem"  # the public certificate clients trust
_PRIVATE_FILES = (f"{CA_BASENAME}-ca.pem", f"{CA_BASENAME}-ca.p12")  # hold the private key


class ProxyStartError(RuntimeError):
    """The proxy cannot start; the message says why and what to do.

    `exit_status` is 2 for what the user asked for (an address in use), 1 for mitmproxy failing.
    """

    def __init__(self, message: str, exit_status: int = 2) -> None:
        super().__init__(message)
        self.exit_status = exit_status


@dataclass(frozen=True)
class ProxySettings:
    host: str = "127.0.0.1"
    port: int = 8888
    ssl_insecure: bool = False
    upstream_ca: Path | None = None
    confdir: Path | None = None  # default: $TRACELAB_HOME/proxy
    extra_options: tuple[tuple[str, object], ...] = ()  # more mitmproxy options (replay mode)
    run_lifecycle: bool = True  # publish the run's start/end (`tracelab.proxy.lifecycle`)

    @property
    def ca_dir(self) -> Path:
        return self.confdir if self.confdir is not None else default_ca_dir()


def default_ca_dir() -> Path:
    return tracelab_home() / "proxy"


def secure_ca_files(ca_dir: Path) -> None:
    """The directory 0700 and the files holding the CA's private key 0600."""
    ca_dir.chmod(stat.S_IRWXU)
    for name in _PRIVATE_FILES:
        path = ca_dir / name
        if path.exists():
            path.chmod(stat.S_IRUSR | stat.S_IWUSR)


def ensure_ca(ca_dir: Path | None = None) -> tuple[Path, bool]:
    """Create the CA in `ca_dir` if it is missing; the certificate's path and whether it is new."""
    from mitmproxy import certs
    from mitmproxy.options import KEY_SIZE

    ca_dir = ca_dir or default_ca_dir()
    created = not (ca_dir / _PRIVATE_FILES[0]).exists()
    ca_dir.mkdir(parents=True, exist_ok=True, mode=stat.S_IRWXU)
    certs.CertStore.from_store(ca_dir, CA_BASENAME, KEY_SIZE)
    secure_ca_files(ca_dir)
    return ca_dir / CA_CERT_FILE, created


def check_listen_address(host: str, port: int) -> None:
    """Fail early, with a sentence, when mitmproxy could not listen on host:port."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ProxyStartError(f"cannot listen on {host}:{port}: unknown host ({exc.strerror}); "
                              "use an address such as 127.0.0.1") from None
    family, kind, proto, _name, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's server does
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ProxyStartError(
                    f"cannot listen on {host}:{port}: the port is already in use (another proxy?); "
                    "stop it or pick another --port") from None
            raise ProxyStartError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def mitmproxy_options(settings: ProxySettings) -> dict[str, object]:
    """The mitmproxy options `tracelab proxy` runs with (the benchmark gives mitmdump the same)."""
    options: dict[str, object] = {
        "listen_host": settings.host,
        "listen_port": settings.port,
        "confdir": str(settings.ca_dir),
        "ssl_insecure": settings.ssl_insecure,
    }
    if settings.upstream_ca is not None:
        options["ssl_verify_upstream_trusted_ca"] = str(settings.upstream_ca)
    return options


async def serve(settings: ProxySettings, addon: object) -> None:
    """Run mitmproxy's DumpMaster with `addon` until SIGINT/SIGTERM."""
    from mitmproxy.options import Options
    from mitmproxy.tools.dump import DumpMaster

    # confdir goes to the constructor: addons create the CA as soon as they are configured.
    opts = Options(**mitmproxy_options(settings))  # type: ignore[arg-type]
    master = DumpMaster(opts, with_termlog=True, with_dumper=False)
    # Warnings and errors only: mitmproxy logs every streamed response at info level.
    master.options.update(termlog_verbosity="warn", **dict(settings.extra_options))
    lifecycle = RunLifecycle(publish=settings.run_lifecycle)
    master.addons.add(addon, lifecycle)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, lifecycle.stop_on, signum, master.shutdown)
    try:
        await master.run()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def run_proxy(settings: ProxySettings, addon: object) -> None:
    """Blocking: check the address, make the CA, serve until stopped."""
    check_listen_address(settings.host, settings.port)
    ensure_ca(settings.ca_dir)
    try:
        asyncio.run(serve(settings, addon))
    except SystemExit as exc:  # mitmproxy's errorcheck exits when startup logged an error
        if exc.code not in (None, 0):
            raise ProxyStartError("mitmproxy logged an error while starting (see above)",
                                  exit_status=1) from None
    finally:
        secure_ca_files(settings.ca_dir)
