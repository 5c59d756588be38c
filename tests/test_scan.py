"""`tracelab scan` as a user runs it (a real subprocess): findings with file:line and rule,
never the secret in full; exit 0 clean, 1 found, 2 unreadable input; the SDK's own output
scans clean."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import requests
from conftest import LoopbackHTTP, RedisServer, read_events

STRIPE = "sk_live_51FAKEtracelabExample0000000000"
AWS = "AKIAIOSFODNN7EXAMPLE"
JWT = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkZha2UifQ."
       "FAKEsignature0tracelab000000000000000000")


def scan(*files: Path | str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tracelab.cli", "scan", *map(str, files)],
                          capture_output=True, text=True, timeout=60)


def test_findings_name_file_line_and_rule_but_never_the_secret(tmp_path: Path) -> None:
    recording = tmp_path / "recording.jsonl"
    recording.write_text("\n".join([
        json.dumps({"request": {"headers": {"Authorization": "[REDACTED]"}, "body": None}}),
        json.dumps({"response": {"body": {"id": "rk_1", "key": STRIPE}}}),
        "",
        json.dumps({"request": {"url": "https://api.example.com/x?token=tok-12345&page=2",
                                "body": {"password": "hunter2-secret"}}}),
        f"a plain text line with {AWS} and Bearer {JWT}",
    ]) + "\n")
    result = scan(recording)
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert lines == [
        f"{recording}:2: stripe-key: sk_l… (39 chars) at response.body.key",
        f"{recording}:4: secret-name:token: tok-… (9 chars) at request.url",
        f"{recording}:4: secret-name:password: hunt… (14 chars) at request.body.password",
        f"{recording}:5: aws-access-key-id: AKIA… (20 chars)",
        f"{recording}:5: bearer: eyJh… ({len(JWT)} chars)",
    ]
    for secret in (STRIPE, AWS, JWT, "tok-12345", "hunter2"):
        assert secret not in result.stdout + result.stderr


def test_a_pretty_printed_json_document_reports_the_line(tmp_path: Path) -> None:
    document = tmp_path / "events.json"
    document.write_text(json.dumps([{"kind": "http", "request": {"note": "fine"}},
                                    {"kind": "http", "response": {"body": f"x {STRIPE}"}}],
                                   indent=2))
    result = scan(document)
    assert result.returncode == 1
    line = document.read_text().splitlines().index(f'      "body": "x {STRIPE}"') + 1
    assert result.stdout.splitlines() == [
        f"{document}:{line}: stripe-key: sk_l… (39 chars) at [1].response.body"]


def test_bad_input_exits_2_and_the_other_files_are_still_scanned(tmp_path: Path) -> None:
    binary = tmp_path / "blob.bin"
    binary.write_bytes(b"\xff\xfe\x00 not text")
    dirty = tmp_path / "dirty.txt"
    dirty.write_text(f"key {STRIPE}\n")
    result = scan(tmp_path / "missing.jsonl", binary, dirty)
    assert result.returncode == 2
    assert f"cannot read {tmp_path / 'missing.jsonl'}: No such file or directory" in result.stderr
    assert f"{binary} is not UTF-8 text" in result.stderr
    assert result.stdout.startswith(f"{dirty}:1: stripe-key:")


def test_what_the_sdk_records_scans_clean(redis_server: RedisServer, tracelab_home: Path,
                                          loopback_http: LoopbackHTTP, tmp_path: Path) -> None:
    import tracelab

    tracelab.init(workflow_name="scan", redis_url=redis_server.url)
    try:
        requests.post(f"{loopback_http.url}/v1/charges?api_key=abc123",
                      headers={"Authorization": f"Bearer {STRIPE}", "X-Note": AWS},
                      json={"password": "hunter2", "key": STRIPE, "jwt": JWT})
        requests.get(f"{loopback_http.url}/secret")
        _, raw = read_events(redis_server)
    finally:
        tracelab.shutdown()
    recording = tmp_path / "recording.jsonl"
    recording.write_bytes(raw + b"\n")
    result = scan(recording)
    assert (result.returncode, result.stdout) == (0, ""), result.stdout
    assert "no secrets found in 1 file(s)" in result.stderr
    # ... and the same secrets unredacted are found: the scan is not blind to this file shape
    planted = tmp_path / "planted.jsonl"
    planted.write_text(raw.decode().replace("[REDACTED]", STRIPE, 1) + "\n")
    assert scan(planted).returncode == 1
