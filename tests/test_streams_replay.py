"""A stream recorded live by the tee replays from its own event: the contract's `chunks` and
`stream` are what the replay engine answers with (server gone, mid-stream failure kept)."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests

import tracelab
from tracelab.replay.recording import run_events, write_recording

from test_streams import SSE, _StreamingHandler  # the same loopback streaming server


@pytest.fixture
def recorded(tracelab_home: Path, tmp_path: Path) -> Iterator[tuple[Path, str, list[bytes]]]:
    """Record /sse and /cut live (requests and httpx), then stop the server."""
    import threading
    from http.server import ThreadingHTTPServer

    handler = type("Handler", (_StreamingHandler,), {"gate": threading.Event(),
                                                      "gate_opened": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    tracelab.init("streams-replay", run_id="live-1")
    try:
        with requests.get(f"{url}/sse", stream=True, timeout=10) as response:
            assert list(response.iter_content(chunk_size=None)) == SSE
        live: list[bytes] = []
        with pytest.raises(httpx.RemoteProtocolError):
            with httpx.Client() as client, client.stream("GET", f"{url}/cut") as streamed:
                live.extend(streamed.iter_bytes())
        assert tracelab.flush(5.0)
    finally:
        tracelab.shutdown()
        server.shutdown()
        server.server_close()
    events = run_events("live-1")
    assert live[0] == b"data: before\n\n"
    yield write_recording(events, tmp_path / "live.jsonl"), url, live
    tracelab.shutdown()


def test_a_live_recorded_stream_replays_chunk_by_chunk(recorded: Any) -> None:
    path, url, live = recorded
    with tracelab.replay(str(path)):
        with requests.get(f"{url}/sse", stream=True, timeout=5) as got:
            pieces = list(got.iter_content(chunk_size=None))
        with httpx.Client() as client, client.stream("GET", f"{url}/cut") as streamed:
            replayed = []
            with pytest.raises(httpx.ReadError) as failed:
                for piece in streamed.iter_bytes():
                    replayed.append(piece)
    assert pieces == SSE
    assert replayed == live  # the pieces before the failure, then the failure
    assert "RemoteProtocolError" in str(failed.value)  # the recorded error, named
