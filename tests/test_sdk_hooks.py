"""`register_hook`: before or after init, sync and async, and hooks that misbehave."""
from __future__ import annotations

import asyncio
import types

import pytest
from conftest import RedisServer, read_stream

import tracelab


def _make_library() -> types.SimpleNamespace:
    def execute(query: str, params: list) -> int:
        if query == "FAIL":
            raise ConnectionError("db down")
        return len(params)

    async def fetch(key: str) -> str:
        return key.upper()

    return types.SimpleNamespace(execute=execute, fetch=fetch)


def _describe(query: str, params: list) -> dict:
    return {"service": "database", "endpoint": "query", "request": {"query": query},
            "response": {"rows": len(params)}, "tags": {"db": "users"}}


def test_hook_registered_after_init_records_errors_and_reraises(traced: RedisServer) -> None:
    lib = _make_library()
    tracelab.register_hook(lib, "execute", _describe)
    assert lib.execute("SELECT 1", [1, 2]) == 2
    with pytest.raises(ConnectionError, match="db down"):
        lib.execute("FAIL", [])
    assert tracelab.flush(5.0)
    ok, failed = read_stream(traced.client())
    assert (ok["target"], ok["endpoint"], ok["status"], ok["tags"]["db"]) == \
        ("database", "query", "ok", "users")
    assert failed["status"] == "error" and failed["error"]["type"] == "ConnectionError"


def test_async_hooked_function(traced: RedisServer) -> None:
    lib = _make_library()
    tracelab.register_hook(lib, "fetch", lambda key: {"service": "cache", "endpoint": "get",
                                                      "request": {"key": key}})
    assert asyncio.run(lib.fetch("k")) == "K"
    assert tracelab.flush(5.0)
    (event,) = read_stream(traced.client())
    assert (event["target"], event["request"]) == ("cache", {"key": "k"})


def test_hook_that_raises_or_returns_junk_is_counted_and_ignored(traced: RedisServer) -> None:
    lib = _make_library()

    def broken(query: str, params: list) -> dict:
        raise ValueError("bug in the hook")

    tracelab.register_hook(lib, "execute", broken)
    before = tracelab.stats()["errors_by_origin"].get("hooks", 0)
    assert lib.execute("SELECT 1", [1]) == 1
    tracelab.register_hook(lib, "execute", lambda q, p: "not a dict")  # replaces, no double wrap
    assert lib.execute("SELECT 1", [1, 2]) == 2
    assert tracelab.flush(5.0)
    assert read_stream(traced.client()) == []
    assert tracelab.stats()["errors_by_origin"]["hooks"] == before + 2


def test_registering_a_missing_attribute_fails_loudly() -> None:
    with pytest.raises(AttributeError):
        tracelab.register_hook(types.SimpleNamespace(), "nope", _describe)


def test_hook_handle_restores_the_original() -> None:
    lib = _make_library()
    original = lib.execute
    handle = tracelab.register_hook(lib, "execute", _describe)
    assert lib.execute is not original
    handle.remove()
    assert lib.execute is original
