"""The API's execution detail links a replay and its original run, over a real `tracelab serve`
and runs recorded by the SDK in real subprocesses (the replay tagged through TRACELAB_TAGS, as
`tracelab replay` tags it)."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from api_serve import Serve
from conftest import LoopbackHTTP
from recorded_runs import record_run

ORIGINAL = "orig/run 1"
REPLAY_1, REPLAY_2, OTHER = "replay-1", "replay-2", "other-run"


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    vendor = LoopbackHTTP()
    try:
        home = tmp_path_factory.mktemp("api-replay") / "home"
        record_run(home, vendor.url, "checkout", ORIGINAL)
        replay_tags = {"TRACELAB_TAGS": json.dumps({"replay_of": ORIGINAL, "team": "t"})}
        record_run(home, vendor.url, "checkout", REPLAY_1, env=replay_tags)
        record_run(home, vendor.url, "checkout-replays", REPLAY_2, env=replay_tags)
        record_run(home, vendor.url, "checkout", OTHER)
    finally:
        vendor.close()
    with Serve(home) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def detail(api: httpx.Client, run_id: str) -> dict:
    r = api.get(f"/api/executions/{quote(run_id, safe='')}")
    assert r.status_code == 200, r.text
    return r.json()["execution"]


def test_the_original_lists_its_replays_in_every_workflow(api: httpx.Client) -> None:
    original = detail(api, ORIGINAL)
    assert original["replay_of"] is None
    assert original["replays"] == [REPLAY_1, REPLAY_2]
    assert "command.argv" in original["tags"] and original["tags"]["env"] == "test"


def test_a_replay_names_its_original_and_keeps_its_tags(api: httpx.Client) -> None:
    replay = detail(api, REPLAY_2)
    assert replay["replay_of"] == ORIGINAL and replay["replays"] == []
    assert replay["tags"]["replay_of"] == ORIGINAL and replay["tags"]["team"] == "t"
    assert replay["workflow"] == "checkout-replays"


def test_a_run_that_is_no_replay_and_has_none(api: httpx.Client) -> None:
    other = detail(api, OTHER)
    assert (other["replay_of"], other["replays"]) == (None, [])


def test_the_diff_of_a_replay_and_its_original_answers(api: httpx.Client) -> None:
    r = api.get(f"/api/executions/{quote(ORIGINAL, safe='')}/diff/{REPLAY_1}")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["a"]["run_id"] == ORIGINAL and body["b"]["run_id"] == REPLAY_1
