"""`init()` checks its settings against the event contract and redis-py up front.

A workflow, service, run id or tag past the contract's limits would make every event invalid
(dead-lettered far from the cause); a malformed Redis URL would surface as a raw ValueError
from redis-py. Both are one `ConfigError` naming the argument or variable, and a failed
`init()` installs nothing and leaves a previous recorder recording.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tracelab
from tracelab.config import ConfigError, normalize_tags, resolve_sdk_config
from tracelab.events import (MAX_NAME_CHARS, MAX_TAG_KEY_CHARS, MAX_TAG_VALUE_CHARS, MAX_TAGS,
                             validate)
from tracelab.sdk import recorder

from conftest import LoopbackHTTP, RedisServer, read_events

REPO = Path(__file__).resolve().parent.parent
HUGE = "x" * 1_000_000


def event_with(**fields: Any) -> dict[str, Any]:
    """A contract-valid event, then `fields` on top."""
    return {"event_id": "e1", "schema": 1, "workflow": "wf", "run_id": "r1", "service": "svc",
            "source": "sdk-py", "kind": "function", "target": "t", "endpoint": "e",
            "started_at": 1, "latency_ms": 0.5, "status": "ok", "request": {}, "response": None,
            **fields}


# -- accepted means every event is valid; refused means a ConfigError ------------------------

names = st.text(min_size=0, max_size=MAX_NAME_CHARS + 3)
tag_values = st.one_of(st.text(max_size=MAX_TAG_VALUE_CHARS + 3), st.integers(), st.booleans(),
                       st.none(), st.floats(allow_nan=False), st.lists(st.integers(), max_size=3))
tags = st.dictionaries(st.text(max_size=MAX_TAG_KEY_CHARS + 3), tag_values,
                       max_size=MAX_TAGS + 3)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(workflow=names, service=names, run_id=names, init_tags=tags, env_tags=tags)
def test_what_init_accepts_makes_valid_events(workflow: str, service: str, run_id: str,
                                              init_tags: dict[str, Any],
                                              env_tags: dict[str, Any], tracelab_home: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    monkeypatch.setenv("TRACELAB_TAGS", json.dumps(env_tags))
    try:
        config = resolve_sdk_config(workflow or "wf", service, run_id=run_id, tags=init_tags)
    except ConfigError as exc:
        assert len(str(exc)) < 600  # a huge value is cut in the message
        return
    event = event_with(workflow=config.workflow, service=config.service,
                       run_id=config.run_id, tags=config.tags)
    assert validate(event) == []


@given(runtime_tags=tags)
def test_span_and_hook_tags_are_cut_to_fit(runtime_tags: dict[str, Any]) -> None:
    # Met while the program runs: never an error, always a valid event.
    fitted = normalize_tags(runtime_tags, origin="tags", strict=False)
    assert validate(event_with(tags=fitted)) == []


@pytest.mark.parametrize(("kwargs", "env", "named"), [
    ({"workflow_name": HUGE}, {}, "init(workflow_name=...)"),
    ({"workflow_name": "wf", "service_name": "s" * (MAX_NAME_CHARS + 1)}, {},
     "init(service_name=...)"),
    ({"workflow_name": "wf", "run_id": HUGE}, {}, "init(run_id=...)"),
    ({"workflow_name": "wf", "tags": {"k" * (MAX_TAG_KEY_CHARS + 1): "v"}}, {},
     "init(tags=...)"),
    ({"workflow_name": "wf", "tags": {"note": HUGE}}, {}, "init(tags=...)"),
    ({"workflow_name": "wf", "tags": {"": "v"}}, {}, "init(tags=...)"),
    ({"workflow_name": "wf", "tags": {f"t{i}": "v" for i in range(MAX_TAGS + 1)}}, {},
     "init(tags=...)"),
    ({"workflow_name": "wf", "tags": ["env", "prod"]}, {}, "init(tags=...)"),
    ({}, {"TRACELAB_WORKFLOW_NAME": HUGE}, "TRACELAB_WORKFLOW_NAME"),
    ({"workflow_name": "wf"}, {"TRACELAB_SERVICE_NAME": HUGE}, "TRACELAB_SERVICE_NAME"),
    ({"workflow_name": "wf"}, {"TRACELAB_RUN_ID": HUGE}, "TRACELAB_RUN_ID"),
    ({"workflow_name": "wf"}, {"TRACELAB_TAGS": '{"note": "%s"}' % ("v" * 2000)},
     "TRACELAB_TAGS"),
    ({"workflow_name": "wf", "tags": {f"a{i}": "v" for i in range(40)}},
     {"TRACELAB_TAGS": '{%s}' % ", ".join(f'"e{i}": "v"' for i in range(40))}, "TRACELAB_TAGS"),
    ({"workflow_name": "wf", "redis_url": "localhost:6379"}, {}, "init(redis_url=...)"),
    ({"workflow_name": "wf", "redis_url": "redis://localhost:port/0"}, {}, "init(redis_url=...)"),
    ({"workflow_name": "wf", "redis_url": "redis://h/0?socket_timeout=soon"}, {},
     "init(redis_url=...)"),
    ({"workflow_name": "wf", "redis_url": "redis://h/0?colour=blue"}, {}, "init(redis_url=...)"),
    ({"workflow_name": "wf"}, {"TRACELAB_REDIS_URL": "http://localhost:6379"},
     "TRACELAB_REDIS_URL"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_a_setting_past_the_limits_is_one_config_error_naming_it(
        kwargs: dict[str, Any], env: dict[str, str], named: str, tracelab_home: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    original_send = requests.Session.__dict__["send"]
    with pytest.raises(ConfigError) as raised:
        tracelab.init(**kwargs)
    message = str(raised.value)
    assert type(raised.value) is ConfigError and named in message, message
    assert len(message) < 600, message  # the huge value is cut
    assert requests.Session.__dict__["send"] is original_send
    assert recorder.current() is None


def test_the_redis_url_error_never_shows_the_password(tracelab_home: Path) -> None:
    with pytest.raises(ConfigError, match=r"redis://:\*\*\*@localhost:port/0") as raised:
        tracelab.init(workflow_name="wf", redis_url="redis://:hunter2-secret@localhost:port/0")
    assert "hunter2" not in str(raised.value)


def test_limits_come_from_the_contract(tracelab_home: Path) -> None:
    config = tracelab.init(
        workflow_name="w" * MAX_NAME_CHARS, service_name="s" * MAX_NAME_CHARS,
        run_id="r" * MAX_NAME_CHARS,
        tags={**{f"t{i}": "v" for i in range(MAX_TAGS - 1)},
              "k" * MAX_TAG_KEY_CHARS: "v" * MAX_TAG_VALUE_CHARS})
    try:
        assert config is not None and len(config.tags) == MAX_TAGS
    finally:
        tracelab.shutdown()


# -- a failed init changes nothing ------------------------------------------------------------

FAILED_FIRST_INIT = """
import atexit, os, sys, threading
import requests
import tracelab
from tracelab.config import ConfigError
from tracelab.sdk import recorder

original_send = requests.Session.__dict__["send"]
callbacks, threads = atexit._ncallbacks(), threading.active_count()
attempts = [
    dict(workflow_name="w" * 300),
    dict(workflow_name="wf", tags={"t%d" % i: "v" for i in range(65)}),
    dict(workflow_name="wf", redis_url="localhost:6379"),
    dict(workflow_name="wf", redis_url="redis://localhost:6379/0?colour=blue"),
    dict(workflow_name="wf", integrations=["requests", "no-such-library"]),
]
for kwargs in attempts:
    try:
        tracelab.init(**kwargs)
    except ConfigError:
        pass
    else:
        sys.exit(f"init({kwargs}) did not fail")
    assert requests.Session.__dict__["send"] is original_send, kwargs
    assert recorder.current() is None and not tracelab.stats()["active"], kwargs
    assert atexit._ncallbacks() == callbacks, kwargs
    assert threading.active_count() == threads, kwargs
os.environ["TRACELAB_REDIS_URL"] = "redis://localhost:not-a-port"
try:
    tracelab.init(workflow_name="wf")
except ConfigError as exc:
    assert "TRACELAB_REDIS_URL" in str(exc), exc
else:
    sys.exit("a malformed TRACELAB_REDIS_URL did not fail")
assert requests.Session.__dict__["send"] is original_send
assert recorder.current() is None and atexit._ncallbacks() == callbacks
assert not os.path.exists(os.path.join(os.environ["TRACELAB_HOME"], "spool"))
"""


def test_a_failed_first_init_installs_nothing(tracelab_home: Path) -> None:
    # A fresh interpreter, so "nothing installed" includes the exit hook and any thread.
    import os

    env = {**os.environ, "TRACELAB_HOME": str(tracelab_home)}
    subprocess.run([sys.executable, "-c", textwrap.dedent(FAILED_FIRST_INIT)], check=True,
                   timeout=60, env=env, cwd=REPO)


@pytest.mark.parametrize("bad", [
    {"redis_url": "redis://localhost:port/0"},
    {"integrations": ["requests", "no-such-library"]},
    {"tags": {f"t{i}": "v" for i in range(MAX_TAGS + 1)}},
    {"run_id": HUGE},
], ids=["redis-url", "integration", "tags", "run-id"])
def test_a_failed_init_leaves_the_previous_recorder_recording(
        bad: dict[str, Any], redis_server: RedisServer, loopback_http: LoopbackHTTP,
        tracelab_home: Path) -> None:
    tracelab.init(workflow_name="first", redis_url=redis_server.url, integrations=["requests"])
    try:
        before = recorder.current()
        with pytest.raises(ConfigError):
            tracelab.init(workflow_name="second", **bad)
        assert recorder.current() is before
        requests.get(f"{loopback_http.url}/echo")
        (event,), _ = read_events(redis_server)
        assert event["workflow"] == "first"
    finally:
        tracelab.shutdown()
