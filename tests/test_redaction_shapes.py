"""Secrets recognised by their shape reach neither Redis nor the spool, wherever they travel:
response bodies, traced function arguments, hook payloads, URLs; and over-cap bodies are
redacted before they are cut. Real requests against a real loopback server and a real Redis."""
from __future__ import annotations

import http.server
import json
import threading
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import requests
from conftest import RedisServer, read_events

import tracelab
from tracelab.sdk.redaction import MARKER

STRIPE = "sk_live_51FAKEtracelabExample0000000000"
GITHUB = "ghp_FAKEtracelabExample00000000000000000"
JWT = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkZha2UifQ."
       "FAKEsignature0tracelab000000000000000000")
PADDING = "p" * 3000


class _VendorHandler(http.server.BaseHTTPRequestHandler):
    """Answers like a vendor that hands out keys: secrets in harmless-looking fields."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        if self.path.startswith("/keys"):
            body = json.dumps({"id": "rk_1", "key": STRIPE, "jwt": JWT}).encode()
        elif self.path.startswith("/big"):  # over a 1 KiB cap
            body = json.dumps({"password": "hunter2-SUPER-SECRET", "pad": PADDING}).encode()
        else:
            body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Debug", f"issued {STRIPE}")
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def vendor() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _VendorHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def small_cap(redis_server: RedisServer, tracelab_home: Path) -> Iterator[RedisServer]:
    tracelab.init(workflow_name="shapes", redis_url=redis_server.url, max_body_bytes=1024)
    try:
        yield redis_server
    finally:
        tracelab.shutdown()


def test_secret_shapes_in_responses_args_hooks_and_urls_never_reach_redis(
        small_cap: RedisServer, vendor: str) -> None:
    assert requests.get(f"http://{vendor}/keys").json()["key"] == STRIPE  # the app sees it

    @tracelab.trace
    def call_vendor(auth: str) -> str:
        return f"used {auth}"

    call_vendor(f"Bearer {STRIPE}")
    lib = types.SimpleNamespace(send=lambda payload: "sent")
    tracelab.register_hook(lib, "send", lambda payload: {
        "service": "queue", "endpoint": "send", "request": {"payload": payload}})
    lib.send({"note": f"deploy with {GITHUB}"})
    requests.get(f"http://{GITHUB}@{vendor}/repo")
    events, raw = read_events(small_cap)
    assert len(events) == 4
    for secret in (STRIPE, GITHUB, JWT, STRIPE[:20], GITHUB[:20]):
        assert secret.encode() not in raw, secret
    keys, function, hook, url = sorted(events, key=lambda e: e["started_at"])
    assert keys["response"]["body"] == {"id": "rk_1", "key": MARKER, "jwt": MARKER}
    assert keys["response"]["headers"]["X-Debug"] == f"issued {MARKER}"
    assert function["request"]["args"] == {"auth": f"Bearer {MARKER}"}
    assert hook["request"]["payload"] == {"note": f"deploy with {MARKER}"}
    assert url["request"]["url"] == f"http://{MARKER}@{vendor}/repo"


def test_an_over_cap_json_body_is_redacted_before_it_is_cut(small_cap: RedisServer,
                                                            vendor: str) -> None:
    requests.get(f"http://{vendor}/big")
    (event,), raw = read_events(small_cap)
    body = event["response"]["body"]
    assert body["$tracelab"] == "truncated" and body["size"] > 1024
    assert len(body["data"].encode()) <= 1024
    assert body["data"].startswith('{"password":"[REDACTED]","pad":"ppp')
    assert b"hunter2" not in raw


PIECES = ["sk_live_", "rk_test_", "sk-", "sk-ant-", "sk-proj-", "ghp_", "gho_", "ghs_",
          "github_pat_", "glpat-", "xoxb-", "xoxp-", "AKIA", "ASIA", "AIza", "SG.", "eyJ", ".eyJ",
          "hf_", "npm_", "whsec_", "Bearer ", "basic\t", "-----BEGIN RSA PRIVATE KEY-----",
          "https://", "ada:", "@", "hooks.slack.com/services/", "0123456789", "ABCDEFGHIJ",
          "abcdefghij", "_", "-", ".", " ", "\n", "é"]


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=14))
def test_the_pre_check_never_skips_a_text_a_rule_matches(pieces: list[str]) -> None:
    """`may_have_shapes` lets text skip the full rules: it must say yes whenever they match."""
    from tracelab.sdk.redaction import SHAPES, may_have_shapes, may_hold_shapes

    text = "".join(pieces)
    if SHAPES.search(text):
        assert may_have_shapes(text), text
        assert may_hold_shapes(text.encode()), text
