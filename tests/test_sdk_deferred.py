"""HTTP calls are redacted, built and serialized on the sink's thread (issue 16), and every
guarantee holds: nothing unredacted leaves the process, not on a normal exit, not when the
process is killed, and the calls waiting in the queue stay out of the garbage collector's way.
"""
from __future__ import annotations

import gc
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
from conftest import LoopbackHTTP, RedisServer, read_events
from hypothesis import given, settings
from hypothesis import strategies as st

import tracelab
from tracelab.sdk import capture, recorder

REPO = Path(__file__).resolve().parent.parent
SECRET = "sk-DEFERRED-secret-0123456789abcdef"
PASSWORD = "DEFERRED-hunter2-pw"


def _secret_calls(url: str) -> None:
    headers = {"Authorization": f"Bearer {SECRET}"}
    requests.post(f"{url}/echo", json={"password": PASSWORD, "n": 1}, headers=headers)
    with httpx.Client() as client:
        client.post(f"{url}/echo", json={"password": PASSWORD, "n": 2}, headers=headers)


def test_calls_are_redacted_on_the_sinks_thread_not_the_callers(
        traced: RedisServer, loopback_http: LoopbackHTTP,
        monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[str] = []
    build = capture.build_http

    def observed(rec: Any, call: tuple[Any, ...]) -> Any:
        threads.append(threading.current_thread().name)
        return build(rec, call)

    monkeypatch.setattr(capture, "build_http", observed)
    _secret_calls(loopback_http.url)
    events, raw = read_events(traced)
    assert [e["request"]["body"]["password"] for e in events] == ["[REDACTED]"] * 2
    assert threads == ["tracelab-redis-sink"] * 2
    assert SECRET.encode() not in raw and PASSWORD.encode() not in raw


def test_queued_calls_are_untracked_tuples_until_the_sink_builds_them(
        redis_server: RedisServer, tracelab_home: Path, loopback_http: LoopbackHTTP,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A queued call holds only strings, bytes and numbers: once the collector has seen it,
    it is no longer tracked, so calls waiting for the sink never reach the old generations
    (whose full collections would stop the traced program)."""
    monkeypatch.setenv("TRACELAB_BATCH_SIZE", "1000")       # no wake-up by size...
    monkeypatch.setenv("TRACELAB_FLUSH_INTERVAL", "60")     # ...nor by time in this test
    tracelab.init(workflow_name="test-wf", redis_url=redis_server.url,
                  integrations=["requests", "httpx"])
    try:
        for _ in range(5):
            _secret_calls(loopback_http.url)
        queue = list(recorder.current().sink._queue)
        calls = [item for item in queue if type(item) is not bytes]
        assert len(calls) == 10 and all(type(item) is tuple for item in calls)
        gc.collect()
        assert not any(gc.is_tracked(item) for item in calls)
        del queue, calls
        events, raw = read_events(redis_server)
        assert len(events) == 10 and SECRET.encode() not in raw and PASSWORD.encode() not in raw
    finally:
        tracelab.shutdown()


def _script(body: str) -> str:
    return textwrap.dedent(f"""
        import os, sys, requests, tracelab
        tracelab.init(workflow_name="deferred", integrations=["requests"])
        url = sys.argv[1]
        headers = {{"Authorization": "Bearer {SECRET}"}}
        def call(i):
            requests.post(url + "/echo", json={{"password": "{PASSWORD}", "i": i}},
                          headers=headers)
    """) + textwrap.dedent(body)


def test_a_normal_exit_builds_and_delivers_every_queued_call_redacted(
        redis_server: RedisServer, tmp_path: Path, loopback_http: LoopbackHTTP) -> None:
    """No flush, no shutdown: the exit hook builds (redacts) what is queued, then writes it."""
    env = {**os.environ, "TRACELAB_REDIS_URL": redis_server.url,
           "TRACELAB_HOME": str(tmp_path / "home"), "TRACELAB_BATCH_SIZE": "1000",
           "TRACELAB_FLUSH_INTERVAL": "60", "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", _script("for i in range(50):\n    call(i)\n"),
                    loopback_http.url], env=env, check=True, timeout=60)
    raw = [fields[b"event"] for _id, fields in redis_server.client().xrange("trace.events")]
    steps = [item for item in raw if b'"kind":"run"' not in item]
    assert len(steps) == 50
    joined = b"\n".join(raw)
    assert SECRET.encode() not in joined and PASSWORD.encode() not in joined
    assert joined.count(b'"password":"[REDACTED]"') == 50


def test_a_killed_process_leaves_only_redacted_events_in_the_spool(
        tmp_path: Path, loopback_http: LoopbackHTTP) -> None:
    """Embedded mode, SIGKILL mid-run: what was queued is lost (it never left the process);
    what reached the spool was redacted before it was written."""
    home = tmp_path / "home"
    env = {**os.environ, "TRACELAB_HOME": str(home), "PYTHONPATH": str(REPO),
           "TRACELAB_BATCH_SIZE": "16"}
    env.pop("TRACELAB_REDIS_URL", None)
    proc = subprocess.Popen([sys.executable, "-c", _script(
        "i = 0\nwhile True:\n    call(i)\n    i += 1\n"), loopback_http.url], env=env)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(loopback_http.requests_seen) < 200:
            time.sleep(0.05)
        assert len(loopback_http.requests_seen) >= 200
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    spooled = b"".join(path.read_bytes() for path in (home / "spool").iterdir())
    assert spooled.count(b'"password":"[REDACTED]"') >= 16
    assert SECRET.encode() not in spooled and PASSWORD.encode() not in spooled


# -- the shape scan runs only the rules whose hints are in the text ---------------------------
PIECES = ["sk_live_", "rk_test_", "sk-", "sk-ant-", "sk-proj-", "ghp_", "gho_", "ghs_",
          "github_pat_", "glpat-", "xoxb-", "xoxp-", "AKIA", "ASIA", "A3TX", "AIza", "SG.", "eyJ",
          ".eyJ", "hf_", "npm_", "whsec_", "Bearer ", "basic\t", "BASIC ",
          "-----BEGIN RSA PRIVATE KEY-----", "-----END RSA PRIVATE KEY-----", "https://",
          "ada:", "@", "hooks.slack.com/services/", "0123456789", "ABCDEFGHIJ", "abcdefghij",
          "_", "-", ".", " ", "\n", "é", "[REDACTED]"]


def _redacted_by_all_rules(text: str) -> str:
    """What the single alternation of every rule (`SHAPES`) makes of `text`."""
    from tracelab.sdk.redaction import _SHAPE_GROUPS, MARKER, SHAPES

    def replace(m: Any) -> str:
        group = _SHAPE_GROUPS[m.lastgroup or ""][1]
        if m.group(group) == MARKER:
            return m.group(0)
        offset = m.start()
        return m.group(0)[: m.start(group) - offset] + MARKER + \
            m.group(0)[m.end(group) - offset:]

    return SHAPES.sub(replace, text)


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=16))
def test_the_rules_left_out_by_their_hints_change_nothing(pieces: list[str]) -> None:
    from tracelab.sdk.redaction import (_RULE_HINT_SEARCH, SHAPE_RULES, may_have_shapes,
                                        may_hold_shapes, redact_shapes)

    text = "".join(pieces)
    for (rule, pattern), hint in zip(SHAPE_RULES, _RULE_HINT_SEARCH):
        if re.search(pattern, text):
            assert hint(text), (rule, text)
    long = f"{text} {'x' * 300}"  # the pre-check searches long text one hint at a time
    if any(re.search(pattern, long) for _, pattern in SHAPE_RULES):
        assert may_have_shapes(long) and may_hold_shapes(long.encode()), long
    found: set[str] = set()
    assert redact_shapes(text, found) == _redacted_by_all_rules(text), text


def test_a_recorder_wrapper_sees_every_event_it_submits(traced: RedisServer) -> None:
    """The proxy's `Tagged` adds tags and shows each event to its replay log in its own
    `submit`: a call recorded through it is built at once, never queued past it."""
    from tracelab.proxy.addon import Tagged

    seen: list[dict[str, Any]] = []
    rec = Tagged(recorder.current(), {"fault": "latency"}, seen.append)
    capture.record_http(
        rec, origin="proxy", method="POST", url="https://api.example.test/v1/x",
        request_headers={"Authorization": f"Bearer {SECRET}"}, request_body=b'{"a": 1}',
        started_at=time.time_ns(), latency_ms=1.0, status_code=200,
        response_headers={"Content-Type": "application/json"}, response_body=b'{"ok": true}',
        source="proxy")
    (event,), raw = read_events(traced)
    assert event["tags"]["fault"] == "latency" and [e["event_id"] for e in seen] == \
        [event["event_id"]]
    assert SECRET.encode() not in raw


# JSON bodies as producers write them: Python's json escapes every non-ASCII character, some
# escape `/`, keys may be secret or not, values may hold credential shapes, and a body may hold
# few or many containers (the pre-checks decide whether to walk).
_JSON_KEYS = st.sampled_from(["password", "note", "access_token", "prompt_tokens", "Lyon",
                              "clé", "pass\u00e9word", "apiKey", "items", "total_tokens"])
_JSON_TEXT = st.one_of(st.text(max_size=20),
                       st.lists(st.sampled_from(PIECES), max_size=10).map("".join),
                       st.sampled_from(["Fourvière", "AKIAFAKEDEFER0000042", "a/b\\c\"d",
                                        "sk-proj-FAKEdeferred0123456789abcdef"]))
_JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), _JSON_TEXT),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(_JSON_KEYS, inner, max_size=4)),
    max_leaves=40)


@settings(max_examples=400, deadline=None)
@given(_JSON_VALUES, st.booleans(), st.booleans(), st.booleans(),
       st.integers(min_value=0, max_value=300))
def test_json_bodies_are_redacted_as_by_walking_everything(value: Any, ascii_only: bool,
                                                         slashes: bool, hide: bool,
                                                         records: int) -> None:
    """The pre-checks (names, shapes, over the bytes or over orjson's output when the body
    has `\\u` escapes) only ever skip walks that would have changed nothing."""
    import json

    import orjson

    from tracelab.sdk.payloads import encode_body
    from tracelab.sdk.redaction import Redactor

    body = {"data": value, "records": [{"sku": i} for i in range(records)]}
    raw = json.dumps(body, ensure_ascii=ascii_only)
    if slashes:
        raw = raw.replace("/", "\\/")
    if hide:  # a shape's prefix escaped (only ever inside strings: no JSON literal has `sk-`)
        raw = raw.replace("sk-", "\\u0073k-").replace("AKIA", "\\u0041KIA")
    reference = Redactor()
    expected_found: set[str] = set()
    expected = reference.shapes_in(reference.value(orjson.loads(raw), expected_found),
                                   expected_found)
    found: set[str] = set()
    assert encode_body(raw.encode(), "application/json", Redactor(), 1 << 20, found) == expected
    assert found == expected_found
