"""In-process replay (tracelab.replay): runs recorded live against a real loopback server, then
replayed with the server stopped, so any answer that is not from the recording would fail."""
from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests

import tracelab
from conftest import LoopbackHTTP
from tracelab.replay.recording import run_events, write_recording


def record(calls: Any, run_id: str = "orig-1", workflow: str = "checkout") -> str:
    """Run `calls(url)` live against a fresh loopback server under init(); return the run id."""
    server = LoopbackHTTP()
    try:
        tracelab.init(workflow, run_id=run_id)
        calls(server.url)
        tracelab.flush()
        tracelab.shutdown()
    finally:
        server.close()
    return run_id


def stored(run_id: str) -> list[dict[str, Any]]:
    return run_events(run_id)


@pytest.fixture(autouse=True)
def _clean(tracelab_home: Path) -> Iterator[None]:
    yield
    tracelab.shutdown()


def test_requests_answered_from_the_recording_with_the_server_gone() -> None:
    def calls(url: str) -> None:
        assert requests.get(f"{url}/echo?x=1", timeout=5).json()["path"] == "/echo?x=1"
        r = requests.post(f"{url}/echo", json={"items": [{"qty": 2}]}, timeout=5)
        assert r.status_code == 200
        assert requests.get(f"{url}/status/404", timeout=5).status_code == 404

    record(calls)
    url = "http://127.0.0.1:{}".format(stored("orig-1")[0]["target"].split(":")[1])
    with tracelab.replay("orig-1") as r:
        got = requests.get(f"{url}/echo?x=1", timeout=5)
        assert got.status_code == 200 and got.json()["path"] == "/echo?x=1"
        assert got.headers["content-type"] == "application/json"
        posted = requests.post(f"{url}/echo", json={"items": [{"qty": 2}]}, timeout=5)
        assert json.loads(posted.json()["body"]) == {"items": [{"qty": 2}]}
        missing = requests.get(f"{url}/status/404", timeout=5)
        assert missing.status_code == 404 and missing.reason == "Not Found"
        assert [e["endpoint"] for e in r.hits] == ["GET /echo", "POST /echo", "GET /status/404"]
        assert r.misses == [] and r.unused == []
    events = stored(r.run_id)
    assert r.run_id != "orig-1" and len(events) == 3
    assert {e["tags"]["replay_of"] for e in events} == {"orig-1"}
    assert [e["tags"]["replay"] for e in events] == ["hit", "hit", "hit"]
    assert events[2]["status"] == "error" and events[2]["status_code"] == 404
    assert events[0]["workflow"] == "checkout"
    assert r.execution.run_id == r.run_id and len(r.execution.events) == 3


def test_a_miss_is_requests_connection_error_naming_the_json_path_and_is_recorded() -> None:
    record(lambda url: requests.post(f"{url}/orders", json={"items": [{"qty": 2}]}, timeout=5))
    url = "http://" + stored("orig-1")[0]["target"]
    with tracelab.replay("orig-1") as r:
        with pytest.raises(requests.ConnectionError) as caught:
            requests.post(f"{url}/orders", json={"items": [{"qty": 3}]}, timeout=5)
    message = str(caught.value)
    assert "POST 127.0.0.1" in message and "$.items[0].qty" in message
    assert r.misses and r.misses[0]["message"] == message
    assert len(r.unused) == 1
    (event,) = stored(r.run_id)
    assert event["status"] == "error" and event["tags"]["replay"] == "miss"
    assert "$.items[0].qty" in event["error"]["message"]


def test_a_call_recorded_twice_is_answered_twice_then_misses() -> None:
    def calls(url: str) -> None:
        requests.get(f"{url}/echo?n=1", timeout=5)
        requests.get(f"{url}/echo?n=1", timeout=5)

    record(calls)
    url = "http://" + stored("orig-1")[0]["target"]
    with tracelab.replay("orig-1") as r:
        assert requests.get(f"{url}/echo?n=1", timeout=5).status_code == 200
        assert requests.get(f"{url}/echo?n=1", timeout=5).status_code == 200
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{url}/echo?n=1", timeout=5)
    assert len(r.hits) == 2 and len(r.misses) == 1
    assert [e["tags"]["replay"] for e in stored(r.run_id)] == ["hit", "hit", "miss"]


def test_httpx_sync_and_async_answered() -> None:
    def calls(url: str) -> None:
        with httpx.Client() as client:
            client.post(f"{url}/sync", json={"a": 1})

        async def run() -> None:
            async with httpx.AsyncClient() as client:
                await client.get(f"{url}/async?q=2")

        asyncio.run(run())

    record(calls)
    url = "http://" + stored("orig-1")[0]["target"]

    async def replayed() -> httpx.Response:
        async with httpx.AsyncClient() as client:
            return await client.get(f"{url}/async?q=2")

    with tracelab.replay("orig-1") as r:
        with httpx.Client() as client:
            got = client.post(f"{url}/sync", json={"a": 1})
            assert got.status_code == 200 and json.loads(got.json()["body"]) == {"a": 1}
            with pytest.raises(httpx.ConnectError, match="POST 127.0.0.1"):
                client.post(f"{url}/sync", json={"a": 2})
        got = asyncio.run(replayed())
        assert got.json()["path"] == "/async?q=2"
    assert len(r.hits) == 2 and len(r.misses) == 1
    assert sorted(e["tags"]["replay"] for e in stored(r.run_id)) == ["hit", "hit", "miss"]


def test_a_recorded_secret_matches_the_live_call_carrying_it() -> None:
    def calls(url: str) -> None:
        requests.post(f"{url}/login", json={"user": "ann", "password": "hunter2"},
                      headers={"Authorization": "Bearer sk-live-ORIGINAL"}, timeout=5)

    record(calls)
    (original,) = stored("orig-1")
    assert "hunter2" not in json.dumps(original) and "[REDACTED]" in json.dumps(original)
    url = "http://" + original["target"]
    with tracelab.replay("orig-1") as r:
        got = requests.post(f"{url}/login", json={"user": "ann", "password": "other-secret"},
                            headers={"Authorization": "Bearer sk-live-OTHER"}, timeout=5)
    assert got.status_code == 200 and len(r.hits) == 1


def test_threads_calling_different_endpoints_concurrently() -> None:
    paths = [f"/item/{i}" for i in range(8)]

    def calls(url: str) -> None:
        for path in paths:
            requests.get(url + path, timeout=5)

    record(calls)
    url = "http://" + stored("orig-1")[0]["target"]
    results: dict[str, str] = {}
    errors: list[BaseException] = []

    def worker(path: str) -> None:
        try:
            results[path] = requests.get(url + path, timeout=5).json()["path"]
        except BaseException as exc:
            errors.append(exc)

    with tracelab.replay("orig-1") as r:
        threads = [threading.Thread(target=worker, args=(p,)) for p in reversed(paths)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == [] and results == {p: p for p in paths}
    events = stored(r.run_id)
    assert len(events) == 8 and {e["tags"]["replay"] for e in events} == {"hit"}


def test_passthrough_sends_a_miss_live_and_tags_it() -> None:
    record(lambda url: requests.get(f"{url}/echo?known=1", timeout=5))
    server = LoopbackHTTP()
    try:
        with tracelab.replay("orig-1", on_miss="passthrough") as r:
            got = requests.get(f"{server.url}/echo?new=1", timeout=5)
        assert got.json()["path"] == "/echo?new=1" and len(server.requests_seen) == 1
    finally:
        server.close()
    assert r.passthrough == [f"GET {server.url[7:]} /echo"]
    (event,) = stored(r.run_id)
    assert event["tags"]["replay"] == "passthrough" and "replay.new" not in event["tags"]


def test_with_a_users_init_events_keep_its_run_and_carry_replay_of() -> None:
    record(lambda url: requests.get(f"{url}/echo", timeout=5))
    url = "http://" + stored("orig-1")[0]["target"]
    tracelab.init("mine", run_id="my-run")
    with tracelab.replay("orig-1") as r:
        requests.get(f"{url}/echo", timeout=5)
    tracelab.flush()
    assert r.run_id == "my-run"
    (event,) = stored("my-run")
    assert event["workflow"] == "mine"
    assert event["tags"]["replay_of"] == "orig-1" and event["tags"]["replay"] == "hit"


def test_the_library_is_unpatched_after_the_replay() -> None:
    import requests.adapters

    record(lambda url: requests.get(f"{url}/echo", timeout=5))
    with tracelab.replay("orig-1"):
        assert hasattr(requests.adapters.HTTPAdapter.send, "__wrapped__")
    assert not hasattr(requests.adapters.HTTPAdapter.send, "__wrapped__")
    assert tracelab.replay.engine.active() is None


def test_a_recording_file_works_as_source(tmp_path: Path) -> None:
    record(lambda url: requests.get(f"{url}/echo", timeout=5))
    path = write_recording(stored("orig-1"), tmp_path / "rec.jsonl")
    url = "http://" + stored("orig-1")[0]["target"]
    with tracelab.replay(str(path)) as r:
        assert requests.get(f"{url}/echo", timeout=5).status_code == 200
    assert len(r.hits) == 1


SSE_CHUNKS = [{"t": 5, "data": "data: one\n\n"}, {"t": 250, "data": "data: two\n\n"},
              {"t": 500, "data": "data: end\n\n"}]


def sse_recording(tmp_path: Path, error: dict[str, str] | None = None) -> tuple[Path, str]:
    """A live recorded SSE call whose response carries the streams contract's chunks."""
    record(lambda url: requests.get(f"{url}/stream", timeout=5))
    (event,) = stored("orig-1")
    chunks = SSE_CHUNKS[:2] if error else SSE_CHUNKS
    event["response"]["chunks"] = chunks
    event["response"]["stream"] = {
        "complete": error is None, "error": error, "truncated": False,
        "size": sum(len(c["data"]) for c in chunks)}
    event["latency_ms"] = 500.0
    return write_recording([event], tmp_path / "sse.jsonl"), "http://" + event["target"]


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in zip(times, times[1:])]


def test_sse_stream_replayed_chunk_by_chunk_with_its_timing_requests(tmp_path: Path) -> None:
    import time

    path, url = sse_recording(tmp_path)
    seen: list[tuple[float, bytes]] = []
    with tracelab.replay(str(path), speed=1):
        with requests.get(f"{url}/stream", stream=True, timeout=5) as got:
            assert got.headers["content-type"] == "text/event-stream"
            for chunk in got.iter_content(chunk_size=None):
                seen.append((time.monotonic(), chunk))
    assert [c for _t, c in seen] == [b"data: one\n\n", b"data: two\n\n", b"data: end\n\n"]
    # loose: the recorded gaps (245 ms, 250 ms) are honoured, not skipped
    assert all(gap > 0.15 for gap in gaps([t for t, _c in seen]))


def test_sse_stream_replayed_with_its_timing_httpx_async(tmp_path: Path) -> None:
    import time

    path, url = sse_recording(tmp_path)

    async def run() -> list[tuple[float, bytes]]:
        seen = []
        async with httpx.AsyncClient() as client:
            async with client.stream("GET", f"{url}/stream") as got:
                async for chunk in got.aiter_raw():
                    seen.append((time.monotonic(), chunk))
        return seen

    with tracelab.replay(str(path), speed=1):
        seen = asyncio.run(run())
    assert [c for _t, c in seen] == [b"data: one\n\n", b"data: two\n\n", b"data: end\n\n"]
    assert all(gap > 0.15 for gap in gaps([t for t, _c in seen]))


def test_speed_zero_answers_a_stream_at_once_httpx_sync(tmp_path: Path) -> None:
    path, url = sse_recording(tmp_path)
    with tracelab.replay(str(path)), httpx.Client() as client:
        with client.stream("GET", f"{url}/stream") as got:
            assert list(got.iter_raw()) == [b"data: one\n\n", b"data: two\n\n",
                                            b"data: end\n\n"]


def test_a_stream_that_failed_mid_way_fails_at_the_same_chunk(tmp_path: Path) -> None:
    error = {"type": "RemoteProtocolError", "message": "peer closed connection"}
    path, url = sse_recording(tmp_path, error=error)
    with tracelab.replay(str(path)):
        seen: list[bytes] = []
        with pytest.raises(requests.exceptions.ChunkedEncodingError, match="peer closed"):
            with requests.get(f"{url}/stream", stream=True, timeout=5) as got:
                for chunk in got.iter_content(chunk_size=None):
                    seen.append(chunk)
        assert seen == [b"data: one\n\n", b"data: two\n\n"]
    with tracelab.replay(str(path)), httpx.Client() as client:
        seen = []
        with pytest.raises(httpx.ReadError, match="peer closed"):
            with client.stream("GET", f"{url}/stream") as got:
                for chunk in got.iter_raw():
                    seen.append(chunk)
        assert seen == [b"data: one\n\n", b"data: two\n\n"]


def test_speed_scales_the_recorded_latency(tmp_path: Path) -> None:
    import time

    record(lambda url: httpx.get(f"{url}/echo"))
    (event,) = stored("orig-1")
    event["latency_ms"] = 600.0
    path = write_recording([event], tmp_path / "slow.jsonl")
    url = "http://" + event["target"]
    with tracelab.replay(str(path), speed=2):
        t0 = time.monotonic()
        assert httpx.get(f"{url}/echo").status_code == 200
        waited = time.monotonic() - t0
    assert waited > 0.2  # loose: about 600 ms / 2 were waited, not skipped


def test_replay_works_with_tracing_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    record(lambda url: requests.get(f"{url}/echo", timeout=5))
    url = "http://" + stored("orig-1")[0]["target"]
    monkeypatch.setenv("TRACELAB_DISABLED", "1")
    with tracelab.replay("orig-1") as r:
        assert requests.get(f"{url}/echo", timeout=5).status_code == 200
    assert len(r.hits) == 1 and r.run_id is None


def test_an_unrecorded_library_leaves_no_tag_for_the_next_event() -> None:
    """requests answered while only the httpx integration records: the next event built in
    the thread (a span) must not inherit the requests call's `replay` outcome."""
    record(lambda url: requests.get(f"{url}/echo?r=1", timeout=5))
    url = "http://" + stored("orig-1")[0]["target"]
    tracelab.init("mine", run_id="httpx-only", integrations=["httpx"])
    with tracelab.replay("orig-1") as r:
        requests.get(f"{url}/echo?r=1", timeout=5)
        with tracelab.span("after"):
            pass
    tracelab.flush()
    assert len(r.hits) == 1
    (event,) = stored("httpx-only")
    assert event["kind"] == "function" and "replay" not in event["tags"]
    assert event["tags"]["replay_of"] == "orig-1"


def test_http_beneath_a_vendor_call_sent_live_is_not_counted_again() -> None:
    """A vendor adapter (twilio) chose passthrough: the requests call beneath it, under the
    SDK's `suppress_http`, goes live once and is not a second passthrough in the report."""
    from tracelab.sdk.context import suppress_http

    record(lambda url: requests.get(f"{url}/echo", timeout=5))
    server = LoopbackHTTP()
    try:
        with tracelab.replay("orig-1", on_miss="passthrough") as r:
            r.session.passed("api.twilio.com messages.create")  # what the vendor adapter does
            with suppress_http():
                assert requests.get(f"{server.url}/vendor", timeout=5).status_code == 200
        assert len(server.requests_seen) == 1
    finally:
        server.close()
    assert r.passthrough == ["api.twilio.com messages.create"] and r.misses == []
