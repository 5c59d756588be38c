"""The `redis` floor in pyproject.toml is a version TraceLab really works with.

The SDK's sink and the ingester call `ConnectionPool.get_connection()` without a command name,
which redis-py accepts from 5.3.0 on; an older floor would let pip install a redis-py that
drops every event. `make install` downloads the floor's wheel into `.venv/wheels`; this
installs it into a directory of its own (no network), publishes through it to a real
redis-server and ingests the stream with it.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pyarrow.parquet as pq
from conftest import RedisServer, read_stream

from tracelab.events import validate

REPO = Path(__file__).resolve().parent.parent

PUBLISH = """
import sys
import redis
assert redis.__version__ == sys.argv[2], (redis.__version__, redis.__file__)
assert redis.__file__.startswith(sys.argv[3]), redis.__file__
import tracelab
tracelab.init(workflow_name="redis-floor", redis_url=sys.argv[1])
for n in range(3):
    with tracelab.span(f"step-{n}"):
        pass
assert tracelab.flush(10), tracelab.stats()
assert tracelab.stats()["published"] == 4, tracelab.stats()  # the run's start + 3 steps
tracelab.shutdown()
"""


def redis_floor() -> str:
    """The `x.y.z` of the `redis…>=x.y.z` requirement in pyproject.toml."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    (requirement,) = [d for d in project["dependencies"] if re.match(r"redis\b", d)]
    match = re.search(r">=\s*([0-9][0-9.]*)", requirement)
    assert match, f"{requirement!r} states no floor"
    return match.group(1)


def test_publish_and_ingest_with_the_oldest_redis_py_allowed(redis_server: RedisServer,
                                                              tmp_path: Path) -> None:
    floor = redis_floor()
    wheel = REPO / ".venv" / "wheels" / f"redis-{floor}-py3-none-any.whl"
    assert wheel.is_file(), f"{wheel} is missing: run `make install` (it downloads the floor)"
    target = tmp_path / "redis-floor"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                    "--disable-pip-version-check", "--target", str(target), str(wheel)],
                   check=True, timeout=120)
    env = {**os.environ, "PYTHONPATH": str(target)}  # ahead of the venv's newer redis-py
    subprocess.run([sys.executable, "-c", textwrap.dedent(PUBLISH), redis_server.url, floor,
                    str(target)], check=True, timeout=60, env=env, cwd=REPO)
    events = read_stream(redis_server.client())
    assert [e["endpoint"] for e in events] == ["step-0", "step-1", "step-2"]
    assert all(validate(e) == [] for e in events)

    store = tmp_path / "store"
    subprocess.run([sys.executable, "-m", "tracelab.cli", "ingest", "--once", "--redis-url",
                    redis_server.url, "--store", str(store)], check=True, timeout=60, env=env,
                   cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis_server.client()
    assert client.xpending("trace.events", "tracelab-ingest")["pending"] == 0
    assert client.xlen("trace.events.dead") == 0
    stored = pq.read_table(sorted((store / "events").rglob("*.parquet")), columns=["endpoint"])
    # the three steps and the run's lifecycle start and end
    assert sorted(stored.column("endpoint").to_pylist()) == ["end", "start", "step-0", "step-1",
                                                             "step-2"]
