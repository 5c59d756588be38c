"""register_hook(..., replay=fn): a hooked call answered from the recording during a replay."""
from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tracelab
from tracelab.replay.recording import run_events
from tracelab.replay.session import ReplayMiss


class Weather:
    calls = 0

    def forecast(self, city: str) -> str:
        Weather.calls += 1
        return f"live {city}"

    async def aforecast(self, city: str) -> str:
        Weather.calls += 1
        return f"live async {city}"


def describe(self: Weather, city: str) -> dict[str, Any]:
    return {"service": "weather", "endpoint": "forecast", "request": {"city": city}}


@pytest.fixture(autouse=True)
def _clean(tracelab_home: Path) -> Iterator[None]:
    yield
    tracelab.shutdown()
    Weather.calls = 0


def recorded_run() -> None:
    tracelab.init("weather-app", run_id="orig-w")
    Weather().forecast("Oslo")
    asyncio.run(Weather().aforecast("Rome"))
    tracelab.flush()
    tracelab.shutdown()
    Weather.calls = 0


def test_a_hooked_call_is_answered_by_its_replay_function() -> None:
    handles = [tracelab.register_hook(Weather, "forecast", describe,
                                      replay=lambda e: f"replayed {e['request']['city']}"),
               tracelab.register_hook(Weather, "aforecast", describe,
                                      replay=lambda e: f"replayed async {e['request']['city']}")]
    try:
        recorded_run()
        with tracelab.replay("orig-w") as r:
            assert Weather().forecast("Oslo") == "replayed Oslo"
            assert asyncio.run(Weather().aforecast("Rome")) == "replayed async Rome"
            with pytest.raises(ReplayMiss, match=r"city"):
                Weather().forecast("Paris")
        assert Weather.calls == 0 and len(r.hits) == 2 and len(r.misses) == 1
        events = run_events(r.run_id)
        assert sorted(e["tags"]["replay"] for e in events) == ["hit", "hit", "miss"]
        assert {e["tags"]["replay_of"] for e in events} == {"orig-w"}
    finally:
        for handle in handles:
            handle.remove()


def test_without_replay_fn_the_function_runs_and_is_tagged() -> None:
    handle = tracelab.register_hook(Weather, "forecast", describe)
    try:
        recorded_run()
        with tracelab.replay("orig-w") as r:
            assert Weather().forecast("Oslo") == "live Oslo"
        assert Weather.calls == 1 and r.passthrough
        (event,) = run_events(r.run_id)
        assert event["tags"]["replay"] == "passthrough"
    finally:
        handle.remove()
