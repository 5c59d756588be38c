#!/usr/bin/env python
"""Per-request latency through `tracelab proxy` vs plain `mitmdump`, same upstream, same run.

Both proxies are real subprocesses on free loopback ports with the same mitmproxy options
(`--ssl-insecure`, the same CA directory, flow printing off, warnings-only log); the only
difference is the TraceLab addon recording every flow (to a real redis-server this script
starts, or with `--embedded` to the spool under a temporary TRACELAB_HOME). The upstream is a
small HTTPS server on 127.0.0.1 with a self-signed certificate, answering a ~100-byte JSON body.

One `requests.Session` per proxy (HTTPS through the proxy's CONNECT tunnel, keep-alive, the
client trusting the proxy's CA) sends small POSTs with an Authorization header and a JSON
body. Its sockets get TCP_NODELAY: requests' proxy connections go without it, and urllib3
writes headers and body separately, so every keep-alive POST through ANY proxy would otherwise
wait ~40 ms for a delayed ACK, which would hide what is measured here. The two proxies are
interleaved request by request, in alternating order, after a warm-up. `--fresh` opens a new
connection (CONNECT + two TLS handshakes) for every request instead. Prints median and p90
per proxy and the ratio of medians. Never asserts; the target is a ratio <= 1.10.

    .venv/bin/python bench/bench_proxy.py                  # 3,000 requests per proxy
    .venv/bin/python bench/bench_proxy.py --requests 500 --fresh
    .venv/bin/python bench/bench_proxy.py --embedded
"""
from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
REPLY = json.dumps({"id": "ord_123", "status": "paid", "amount": 4200,
                    "currency": "eur", "items": [1, 2, 3]}).encode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def self_signed(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench-upstream")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "upstream.pem", directory / "upstream.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(REPLY)))
        self.end_headers()
        self.wfile.write(REPLY)


def start_upstream(cert: tuple[Path, Path]) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*cert)
    server.socket = context.wrap_socket(server.socket, server_side=True,
                                        do_handshake_on_connect=False)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def wait_listening(proc: subprocess.Popen[bytes], port: int, name: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{name} exited: {proc.stdout.read().decode() if proc.stdout else ''}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{name} did not listen on {port} within 30 s")


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen([shutil.which("redis-server") or "redis-server", "--port", str(port),
                             "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(workdir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_listening(proc, port, "redis-server")
    return proc, f"redis://127.0.0.1:{port}/0"


class NoDelayAdapter(HTTPAdapter):
    """Sockets with TCP_NODELAY also when going through a proxy (see the module docstring)."""

    def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
        kwargs["socket_options"] = HTTPConnection.default_socket_options
        return super().proxy_manager_for(proxy, **kwargs)


def timed(session: requests.Session, url: str, fresh: bool) -> float:
    body = {"customer": "cus_42", "amount": 4200, "password": "hunter2"}
    headers = {"Authorization": "Bearer sk-bench-secret"}
    if fresh:
        session.close()
    t0 = time.perf_counter()
    reply = session.post(url, json=body, headers=headers)
    reply.content
    elapsed = time.perf_counter() - t0
    if reply.status_code != 200:
        raise RuntimeError(f"{url}: HTTP {reply.status_code}")
    return elapsed * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="timed requests per proxy")
    parser.add_argument("--warmup", type=int, default=200, help="untimed requests per proxy")
    parser.add_argument("--fresh", action="store_true",
                        help="a new connection (CONNECT + TLS) for every request")
    parser.add_argument("--embedded", action="store_true",
                        help="record to the spool (no Redis) instead of a redis-server")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-proxy-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        home = work / "home"
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("TRACELAB_") and k.lower() not in
               ("http_proxy", "https_proxy", "all_proxy", "no_proxy")}
        env.update(TRACELAB_HOME=str(home), PYTHONPATH=str(REPO),
                   TRACELAB_QUEUE_SIZE=str(10 * (args.requests + args.warmup)))
        ca = Path(subprocess.run([sys.executable, "-m", "tracelab.cli", "proxy", "--print-ca"],
                                 env=env, capture_output=True, text=True, check=True,
                                 cwd=REPO).stdout.strip().splitlines()[-1])
        upstream = start_upstream(self_signed(work))
        url = f"https://127.0.0.1:{upstream.server_address[1]}/v1/orders"

        redis_url = None
        if not args.embedded:
            redis_proc, redis_url = start_redis(work)
            procs.append(redis_proc)
        tl_port, mitm_port = free_port(), free_port()
        tl_args = [sys.executable, "-m", "tracelab.cli", "proxy", "--port", str(tl_port),
                   "--ssl-insecure", "--workflow", "bench-proxy"]
        if redis_url:
            tl_args += ["--redis-url", redis_url]
        mitm_args = [str(BIN / "mitmdump"), "--listen-host", "127.0.0.1", "-p", str(mitm_port),
                     "--ssl-insecure", "--set", f"confdir={ca.parent}",
                     "--set", "flow_detail=0", "--set", "termlog_verbosity=warn"]
        for name, cmd, port in (("tracelab proxy", tl_args, tl_port),
                                ("mitmdump", mitm_args, mitm_port)):
            procs.append(subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT))
            wait_listening(procs[-1], port, name)

        sessions: dict[str, requests.Session] = {}
        for name, port in (("tracelab proxy", tl_port), ("mitmdump", mitm_port)):
            session = requests.Session()
            session.trust_env = False
            session.mount("https://", NoDelayAdapter())
            session.proxies = {"https": f"http://127.0.0.1:{port}"}
            session.verify = str(ca)
            sessions[name] = session
        names = list(sessions)
        for _ in range(args.warmup):
            for name in names:
                timed(sessions[name], url, args.fresh)
        samples: dict[str, list[float]] = {name: [] for name in names}
        for i in range(args.requests):
            for name in (names if i % 2 == 0 else names[::-1]):
                samples[name].append(timed(sessions[name], url, args.fresh))

        print(f"{args.requests} small HTTPS POSTs per proxy "
              f"({'new connection each' if args.fresh else 'keep-alive'}), interleaved, "
              f"after {args.warmup} warm-up; recording to "
              f"{'the embedded spool' if args.embedded else 'Redis'}")
        print(f"{'proxy':<16}{'median ms':>12}{'p90 ms':>10}{'mean ms':>10}")
        for name in names:
            values = sorted(samples[name])
            print(f"{name:<16}{statistics.median(values):>12.3f}"
                  f"{values[int(len(values) * 0.9)]:>10.3f}{statistics.fmean(values):>10.3f}")
        ratio = statistics.median(samples["tracelab proxy"]) / statistics.median(
            samples["mitmdump"])
        print(f"ratio tracelab proxy / mitmdump (medians): {ratio:.3f}x (target <= 1.10x)")
        if redis_url:
            import redis

            time.sleep(0.5)
            recorded = redis.Redis.from_url(redis_url).xlen("trace.events")
            print(f"events in Redis: {recorded} of {args.warmup + args.requests} requests")
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
