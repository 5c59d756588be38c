"""The original TraceLab README's Python examples, run verbatim in fresh interpreters.

Only the URL is pointed at a loopback server (no network here); every other line is the README's.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import LoopbackHTTP, RedisServer, read_stream

from tracelab.events import validate

FIXTURES = Path(__file__).parent / "fixtures"


def _run(code: str, redis_url: str, home: Path) -> None:
    env = {**os.environ, "TRACELAB_REDIS_URL": redis_url, "TRACELAB_HOME": str(home),
           "PYTHONPATH": str(FIXTURES)}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_init_and_trace_example(redis_server: RedisServer, loopback_http: LoopbackHTTP,
                                tmp_path: Path) -> None:
    _run(f'''
        from tracelab_sdk import init, trace
        import requests

        # Initialize the SDK
        init(
            workflow_name="my-awesome-workflow",
            service_name="my-python-service",
        )

        # This request will be automatically traced
        requests.get("{loopback_http.url}/")

        # You can also use the @trace decorator for custom functions
        @trace
        def my_custom_function():
            # ... your code here ...
            pass

        my_custom_function()
    ''', redis_server.url, tmp_path)
    events = read_stream(redis_server.client())
    assert [validate(e) for e in events] == [[], []]
    http, function = events
    assert (http["workflow"], http["service"]) == ("my-awesome-workflow", "my-python-service")
    assert (http["kind"], http["endpoint"], http["status"]) == ("http", "GET /", "ok")
    assert (function["kind"], function["endpoint"]) == ("function", "my_custom_function")
    assert http["run_id"] == function["run_id"]


def test_register_hook_example(redis_server: RedisServer, tmp_path: Path) -> None:
    _run('''
        from tracelab_sdk import init, register_hook
        import my_database_library

        def capture_db_query(query, params):
            return {
                "service": "database",
                "endpoint": "query",
                "request": {"query": query, "params": params},
                "response": {"status": "success"}, # Or capture the actual result
            }

        register_hook(my_database_library, "execute", capture_db_query)

        init(workflow_name="db-workflow", service_name="db-service")

        my_database_library.execute("SELECT * FROM users", [1, 2, 3])
    ''', redis_server.url, tmp_path)
    (event,) = read_stream(redis_server.client())
    assert validate(event) == []
    assert (event["workflow"], event["service"], event["kind"]) == ("db-workflow", "db-service", "custom")
    assert (event["target"], event["endpoint"], event["status"]) == ("database", "query", "ok")
    assert event["request"] == {"query": "SELECT * FROM users", "params": [1, 2, 3]}
    assert event["response"] == {"status": "success"}
