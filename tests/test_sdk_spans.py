"""`@trace` and `span`: nesting across threads and asyncio tasks, pass-through of results and errors."""
from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from conftest import RedisServer, read_events

import tracelab


def _events(server: RedisServer) -> dict[str, dict]:
    events, _ = read_events(server)
    return {e["endpoint"].rsplit(".", 1)[-1]: e for e in events}


def test_bare_and_named_trace_nest(traced: RedisServer) -> None:
    @tracelab.trace(name="plan-refund", tags={"step": "1"})
    def plan(order: str, password: str = "") -> dict:
        return {"order": order, "action": "refund"}

    @tracelab.trace
    def agent() -> dict:
        with tracelab.span("lookup") as block:
            block.set_tag("cache", "miss")
        return plan("o-1", password="hunter2")

    assert agent() == {"order": "o-1", "action": "refund"}
    events = _events(traced)
    outer, inner, block = events["agent"], events["plan-refund"], events["lookup"]
    assert outer["parent_id"] is None
    assert inner["parent_id"] == outer["span_id"] and block["parent_id"] == outer["span_id"]
    assert inner["kind"] == "function" and inner["target"] == __name__
    assert inner["tags"]["step"] == "1" and block["tags"]["cache"] == "miss"
    assert inner["request"]["args"] == {"order": "o-1", "password": "[REDACTED]"}
    assert inner["response"]["return"] == {"order": "o-1", "action": "refund"}


def test_exceptions_pass_through_untouched(traced: RedisServer) -> None:
    class Declined(Exception):
        pass

    error = Declined("card declined")

    @tracelab.trace
    def charge() -> None:
        raise error

    with pytest.raises(Declined) as raised:
        charge()
    assert raised.value is error
    event = _events(traced)["charge"]
    assert event["status"] == "error"
    assert event["error"] == {"type": "test_exceptions_pass_through_untouched.<locals>.Declined",
                              "message": "card declined"}


def test_async_functions_and_tasks_nest_independently(traced: RedisServer) -> None:
    @tracelab.trace
    async def step(name: str) -> str:
        await asyncio.sleep(0.01)
        return name

    @tracelab.trace
    async def branch_a() -> str:
        return await step("a")

    @tracelab.trace
    async def branch_b() -> str:
        return await step("b")

    async def main() -> list[str]:
        return list(await asyncio.gather(branch_a(), branch_b()))

    assert asyncio.run(main()) == ["a", "b"]
    events, _ = read_events(traced)
    by_span = {e["span_id"]: e for e in events}
    steps = [e for e in events if e["endpoint"].endswith("step")]
    parents = sorted(by_span[s["parent_id"]]["endpoint"].rsplit(".", 1)[-1] for s in steps)
    assert parents == ["branch_a", "branch_b"]
    assert {s["response"]["return"] for s in steps} == {"a", "b"}


def test_threads_do_not_adopt_each_others_spans(traced: RedisServer) -> None:
    barrier = threading.Barrier(2)

    @tracelab.trace
    def worker(n: int) -> int:
        barrier.wait(timeout=5)
        with tracelab.span(f"inner-{n}"):
            barrier.wait(timeout=5)
        return n

    threads = [threading.Thread(target=worker, args=(n,)) for n in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    events, _ = read_events(traced)
    by_span = {e["span_id"]: e for e in events}
    for n in (1, 2):
        inner = next(e for e in events if e["endpoint"] == f"inner-{n}")
        assert by_span[inner["parent_id"]]["request"]["args"] == {"n": n}


def test_generators_are_left_alone() -> None:
    def numbers():  # type: ignore[no-untyped-def]
        yield 1

    assert tracelab.trace(numbers) is numbers


def test_before_init_trace_only_calls_through(tracelab_home) -> None:  # type: ignore[no-untyped-def]
    @tracelab.trace
    def add(a: int, b: int) -> int:
        return a + b

    assert add(1, 2) == 3
    assert tracelab.stats()["active"] is False


def test_span_tags_are_normalised_as_init_tags_are_and_cut_to_fit(
        redis_server: RedisServer, tracelab_home: Path) -> None:
    from tracelab.events import MAX_TAG_KEY_CHARS, MAX_TAG_VALUE_CHARS, MAX_TAGS

    given = {"retries": 2, "cached": True, "owner": None, "ids": [1, 2]}
    config = tracelab.init(workflow_name="tags", redis_url=redis_server.url, tags=given)
    try:
        with tracelab.span("same") as block:  # the same values, met at run time
            for key, value in given.items():
                block.set_tag(f"span.{key}", value)
        with tracelab.span("too-many") as block:  # past the limits: cut, never an error
            block.set_tag("k" * 500, "v" * 5000)
            for n in range(2 * MAX_TAGS):
                block.set_tag(f"extra{n}", n)
        events = _events(redis_server)
    finally:
        tracelab.shutdown()
    assert config is not None
    assert {k.removeprefix("span."): v for k, v in events["same"]["tags"].items()
            if k.startswith("span.")} == \
        {k: v for k, v in config.tags.items() if not k.startswith("command.")} == \
        {"retries": "2", "cached": "true", "owner": "null", "ids": "[1, 2]"}
    crowded = events["too-many"]["tags"]  # read_events checked it against the contract
    assert len(crowded) == MAX_TAGS
    assert crowded["k" * MAX_TAG_KEY_CHARS] == "v" * MAX_TAG_VALUE_CHARS
