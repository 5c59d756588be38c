"""Schemathesis, default checks, against `tracelab serve` holding real data: no failures.

The server is the real subprocess over a store with odd workflow names and run ids (and one run
recorded by the SDK); Schemathesis draws path ids half of the time from that data, so requests
reach the answers and not only the 404s. Run with and without `--token`. `make fuzz` runs the
same with more examples and a random seed (`FUZZ_EXAMPLES`, `FUZZ_SEED`).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from api_serve import ODD_RUNS, SDK_RUN, SDK_WORKFLOW, Serve, seed_store

ST = str(Path(sys.executable).with_name("st"))
TOKEN = "fuzz-token-0123456789"
EXAMPLES = os.environ.get("FUZZ_EXAMPLES", "8")
SEED = os.environ.get("FUZZ_SEED", "20240501")


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("api-fuzz") / "home"
    seed_store(home)
    return home


def _config(tmp: Path, home: Path) -> Path:
    """A schemathesis.toml: dictionaries of the store's real ids, one SSE event per stream.

    Schemathesis never puts a `/` in a generated path value, so the ids with `/` are left to
    test_api_ids.py; everything else (non-ASCII, `%`, spaces, `=`) is drawn from here."""
    from tracelab.store import query
    from tracelab.store.layout import resolve_layout

    layout = resolve_layout(str(home / "store"))
    runs = {**ODD_RUNS, SDK_WORKFLOW: [SDK_RUN]}
    workflows = [w for w in runs if "/" not in w]
    run_ids = [r for rs in runs.values() for r in rs if "/" not in r]
    event_ids = list(query.events("checkout", layout=layout)["event_id"])
    lines = ["max-stream-events = 1", "[dictionaries]",
             f"workflows = {{ values = {json.dumps(workflows, ensure_ascii=False)} }}",
             f"runs = {{ values = {json.dumps(run_ids, ensure_ascii=False)} }}",
             f"events = {{ values = {json.dumps(event_ids)} }}", "[parameters]"]
    for name, dictionary in (("path.workflow", "workflows"), ("query.workflow", "workflows"),
                             ("path.run_id", "runs"), ("path.a", "runs"), ("path.b", "runs"),
                             ("path.event_id", "events")):
        lines.append(f'"{name}" = {{ dictionary = "{dictionary}", probability = 0.5 }}')
    path = tmp / "schemathesis.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _schemathesis(config: Path, url: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [ST, "--config-file", str(config), "run", f"{url}/openapi.json",
         "--max-examples", EXAMPLES, "--seed", SEED, "--request-timeout", "10",
         "--no-color", *extra],
        capture_output=True, text=True, timeout=600, cwd=config.parent,
        env={**os.environ, "NO_PROXY": "127.0.0.1,localhost"})


@pytest.fixture(scope="module")
def config(home, tmp_path_factory) -> Path:
    return _config(tmp_path_factory.mktemp("st"), home)


@pytest.fixture(scope="module")
def open_server(home) -> Iterator[Serve]:
    with Serve(home) as server:
        yield server


@pytest.fixture(scope="module")
def token_server(home) -> Iterator[Serve]:
    with Serve(home, token=TOKEN) as server:
        yield server


def _assert_clean(result: subprocess.CompletedProcess) -> None:
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-6000:]
    assert "passed" in out and "failure" not in out.split("SUMMARY")[-1], out[-6000:]


def test_schemathesis_finds_nothing_without_token(config, open_server):
    _assert_clean(_schemathesis(config, open_server.url))


def test_schemathesis_finds_nothing_with_token(config, token_server):
    _assert_clean(_schemathesis(config, token_server.url,
                                "-H", f"Authorization: Bearer {TOKEN}"))
