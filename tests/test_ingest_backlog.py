"""`stream_backlog`: the one Redis-lag helper (ingester log line, `--once` bar, API gauge)."""
from __future__ import annotations

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from conftest import free_port
from tracelab.server.ingest import stream_backlog


def test_backlog_is_lag_plus_pending_and_none_when_redis_cannot_say(redis_server):
    client = redis_server.client()
    assert stream_backlog(client, "s", "g") is None  # no such stream
    for i in range(5):
        client.xadd("s", {"event": b"{}"})
    client.xgroup_create("s", "g", id="0")
    assert stream_backlog(client, "s", "other") is None  # no such group
    assert stream_backlog(client, "s", "g") == 5  # all lag
    client.xreadgroup("g", "c", {"s": ">"}, count=2)
    assert stream_backlog(client, "s", "g") == 5  # 3 lag + 2 pending
    ids = [p["message_id"] for p in client.xpending_range("s", "g", "-", "+", 10)]
    client.xack("s", "g", *ids)
    assert stream_backlog(client, "s", "g") == 3
    decoded = redis.Redis.from_url(redis_server.url, decode_responses=True)
    assert stream_backlog(decoded, "s", "g") == 3
    assert stream_backlog(None, "s", "g") is None
    closed = redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=1,
                         retry=Retry(NoBackoff(), 0))
    assert stream_backlog(closed, "s", "g") is None
