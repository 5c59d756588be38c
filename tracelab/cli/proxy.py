"""`tracelab proxy`: record every HTTP(S) and WebSocket call a client makes through mitmproxy.

Point a program at it with `HTTP_PROXY=http://127.0.0.1:8888 HTTPS_PROXY=http://127.0.0.1:8888`
and make it trust the CA that `tracelab proxy --print-ca` prints. Events go where the SDK's go:
Redis when `--redis-url`/`TRACELAB_REDIS_URL` is set, else the embedded spool under
`$TRACELAB_HOME`. Only argument parsing and process concerns live here (mitmproxy is imported
when the command runs): the addon is `tracelab.proxy.addon`, the runner `tracelab.proxy.runner`.

`--faults FILE` makes it a chaos proxy in front of the real vendors: each request is matched
against the fault rules (`tracelab.replay.faults`, YAML or JSON) and a matching rule's fault is
applied to the live call (`tracelab.proxy.faults`); the recorded event carries the fault's tags.

Exit status: 0 after a clean stop (Ctrl-C, SIGTERM) or `--print-ca`; 2 for a bad flag, a bad
fault file (every reason printed) or an address that cannot be listened on; 1 when mitmproxy
fails while starting.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_WORKFLOW = "proxy"
DEFAULT_SERVICE = "proxy"


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1-65535)")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1; 0.0.0.0 exposes the "
                        "proxy, and everything it records, to your network)")
    parser.add_argument("--port", type=_port, default=8888, help="port to listen on (default 8888)")
    parser.add_argument("--ssl-insecure", action="store_true",
                        help="do not verify upstream TLS certificates (self-signed test servers)")
    parser.add_argument("--upstream-ca", type=Path, metavar="FILE",
                        help="verify upstream servers against the CA certificates in this PEM "
                        "file instead of the default (certifi) bundle")
    parser.add_argument("--print-ca", action="store_true",
                        help="create the proxy's CA if missing, print how to trust it and its "
                        "path (last line), then exit")
    parser.add_argument("--workflow", help="workflow of the recorded events (default: "
                        f"$TRACELAB_WORKFLOW_NAME, else {DEFAULT_WORKFLOW!r}); a client may "
                        "override it per request with the X-Tracelab-Workflow header")
    parser.add_argument("--service", help="service of the recorded events (default: "
                        f"$TRACELAB_SERVICE_NAME, else {DEFAULT_SERVICE!r}; header "
                        "X-Tracelab-Service)")
    parser.add_argument("--run-id", help="run id of the recorded events (default: "
                        "$TRACELAB_RUN_ID, else a new one per proxy start; header "
                        "X-Tracelab-Run-Id)")
    parser.add_argument("--faults", type=Path, metavar="FILE",
                        help="inject the faults of this rule file (YAML or JSON) into the "
                        "proxied calls: a chaos proxy in front of real vendors")
    parser.add_argument("--redis-url", help="publish to this Redis (default: "
                        "$TRACELAB_REDIS_URL; unset means embedded mode, the spool under "
                        "$TRACELAB_HOME)")


def _fail(message: str, code: int = 2) -> int:
    print(f"tracelab proxy: {message}", file=sys.stderr)
    return code


def print_ca(ca_dir: Path) -> int:
    from tracelab.proxy.runner import ensure_ca

    try:
        cert, created = ensure_ca(ca_dir)
    except OSError as exc:
        return _fail(f"cannot create the CA in {ca_dir}: {exc.strerror or exc}", 1)
    print(f"TraceLab proxy CA {'created' if created else 'found'} in {ca_dir} "
          "(the private key file is readable by you only).")
    print("Trust it in the programs you send through `tracelab proxy`:")
    print(f"  curl:      curl --cacert {cert} -x http://127.0.0.1:8888 https://...")
    print(f"  requests:  export REQUESTS_CA_BUNDLE={cert}")
    print(f"  OpenSSL-based tools, httpx, Python's ssl:  export SSL_CERT_FILE={cert}")
    print(f"  Node.js:   export NODE_EXTRA_CA_CERTS={cert}")
    print("  (REQUESTS_CA_BUNDLE and SSL_CERT_FILE replace the default CA list: fine while all "
          "traffic goes through the proxy.)")
    print(cert)
    return 0


def _redis_reachable(url: str) -> str | None:
    """None when Redis answers a PING within a second, else why not."""
    try:
        import redis

        redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1).ping()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def run(args: argparse.Namespace) -> int:
    from tracelab.config import ConfigError, env_str, url_without_password
    from tracelab.proxy.runner import ProxySettings, ProxyStartError, default_ca_dir

    import mitmproxy  # noqa: F401  # missing: `tracelab.cli.main` prints the install command
    ca_dir = default_ca_dir()
    if args.print_ca:
        return print_ca(ca_dir)
    if args.upstream_ca is not None and not args.upstream_ca.is_file():
        return _fail(f"--upstream-ca {args.upstream_ca}: no such file (a PEM file of CA "
                     "certificates is expected)")
    settings = ProxySettings(host=args.host, port=args.port, ssl_insecure=args.ssl_insecure,
                             upstream_ca=args.upstream_ca, confdir=ca_dir)
    faults = None
    if args.faults is not None:
        from tracelab.replay.faults import FaultRuleError, FaultSet, load_rules

        try:
            faults = FaultSet(load_rules(args.faults))
        except FaultRuleError as exc:
            return _fail("--faults: invalid fault rules:\n" + "\n".join(
                f"  {reason}" for reason in exc.errors))
        except OSError as exc:
            return _fail(f"--faults {args.faults}: {exc.strerror or exc}")

    import tracelab
    from tracelab.proxy.addon import TraceLabAddon
    from tracelab.proxy.runner import check_listen_address, run_proxy

    try:
        check_listen_address(settings.host, settings.port)
        config = tracelab.init(
            workflow_name=args.workflow or env_str("TRACELAB_WORKFLOW_NAME") or DEFAULT_WORKFLOW,
            service_name=args.service or env_str("TRACELAB_SERVICE_NAME") or DEFAULT_SERVICE,
            run_id=args.run_id, redis_url=args.redis_url, integrations=[],
            lifecycle=False)  # the run starts once listening: tracelab.proxy.lifecycle
    except (ProxyStartError, ConfigError) as exc:
        return _fail(str(exc))
    if config is None:
        print("tracelab proxy: TRACELAB_DISABLED is set: proxying without recording",
              file=sys.stderr)
    else:
        if config.redis_url:
            shown = url_without_password(config.redis_url)
            destination = f"Redis {shown} (stream {config.stream})"
            problem = _redis_reachable(config.redis_url)
            if problem:
                print(f"tracelab proxy: warning: Redis is not reachable now ({problem}); "
                      "events wait in a bounded queue and are dropped once it is full",
                      file=sys.stderr)
        else:
            destination = f"the spool under {config.home / 'spool'}"
        print(f"tracelab proxy on http://{settings.host}:{settings.port}: recording workflow "
              f"{config.workflow!r} run {config.run_id!r} to {destination}; CA in {ca_dir}",
              flush=True)
    if faults is not None:
        print(f"tracelab proxy: injecting faults from {args.faults} "
              f"({len(faults.rules())} rule(s))", flush=True)
    try:
        run_proxy(settings, TraceLabAddon(faults=faults))
    except ProxyStartError as exc:
        return _fail(str(exc), exc.exit_status)
    finally:
        tracelab.shutdown()
    return 0
