"""gRPC replay: calls recorded live against a real `grpc.server`, then replayed with the
server stopped, so every answer comes from the recording or from a fault.

A hit gives back protobuf messages rebuilt from the recorded type names; a miss raises grpc's
own error with UNAVAILABLE and the matcher's explanation; a `grpc_status` fault fails the
call without consuming its recording, so the retry gets the recorded answer.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

import tracelab
from grpc_service import greeter_pb2 as pb
from grpc_service import greeter_pb2_grpc as pb_grpc
from grpc_service import server as greeter_server
from tracelab.replay.faults import FaultRuleError
from tracelab.replay.recording import run_events


@pytest.fixture(autouse=True)
def _clean(tracelab_home: Path) -> Iterator[None]:
    yield
    tracelab.shutdown()


def record(calls: Callable[[pb_grpc.GreeterStub], Any]) -> str:
    """Run `calls(stub)` live under init() (run `orig-1`); return the target, whose server
    is stopped afterwards: a live call to it now fails with UNAVAILABLE."""
    server, port = greeter_server.start()
    target = f"127.0.0.1:{port}"
    try:
        tracelab.init("greeter", run_id="orig-1")
        with grpc.insecure_channel(target) as channel:
            calls(pb_grpc.GreeterStub(channel))
        tracelab.flush()
        tracelab.shutdown()
    finally:
        server.stop(None)
    return target


def recorded_calls(greeter: pb_grpc.GreeterStub) -> None:
    greeter.SayHello(pb.HelloRequest(name="ann", times=7))
    list(greeter.CountUp(pb.HelloRequest(name="n", times=3)))


def replay_events(run_id: str | None) -> list[dict[str, Any]]:
    assert run_id is not None
    return [e for e in run_events(run_id) if e["kind"] == "grpc"]


def test_unary_and_server_streaming_replayed_with_the_server_stopped() -> None:
    target = record(recorded_calls)
    with tracelab.replay("orig-1") as r:
        greeter = pb_grpc.GreeterStub(grpc.insecure_channel(target))
        reply, call = greeter.SayHello.with_call(pb.HelloRequest(name="ann", times=7))
        stream = greeter.CountUp(pb.HelloRequest(name="n", times=3))
        replies = list(stream)
    assert isinstance(reply, pb.HelloReply)
    assert (reply.message, reply.index) == ("hello ann", 7)
    assert call.code() == grpc.StatusCode.OK
    assert ("x-served-by", "greeter-1") not in (call.trailing_metadata() or ())  # not allowed
    assert [(m.message, m.index) for m in replies] == [("n 0", 0), ("n 1", 1), ("n 2", 2)]
    assert stream.code() == grpc.StatusCode.OK
    assert len(r.hits) == 2 and not r.misses and not r.unused
    events = replay_events(r.run_id)
    assert [e["tags"]["replay"] for e in events] == ["hit", "hit"]
    assert all(e["tags"]["replay_of"] == "orig-1" for e in events)
    assert events[1]["response"]["messages"][2]["message"] == {"message": "n 2", "index": 2}


def test_aio_unary_and_server_streaming_replayed() -> None:
    target = record(recorded_calls)

    async def calls() -> tuple[pb.HelloReply, list[int], Any]:
        async with grpc.aio.insecure_channel(target) as channel:
            greeter = pb_grpc.GreeterStub(channel)
            call = greeter.SayHello(pb.HelloRequest(name="ann", times=7))
            reply = await call
            code = await call.code()
            indexes = [m.index async for m in greeter.CountUp(pb.HelloRequest(name="n",
                                                                              times=3))]
            return reply, indexes, code

    with tracelab.replay("orig-1") as r:
        reply, indexes, code = asyncio.run(calls())
    assert (reply.message, code) == ("hello ann", grpc.StatusCode.OK)
    assert indexes == [0, 1, 2]
    assert len(r.hits) == 2 and not r.misses
    assert [e["tags"]["replay"] for e in replay_events(r.run_id)] == ["hit", "hit"]


def test_client_streaming_and_bidi_replayed() -> None:
    names = [pb.HelloRequest(name=n) for n in ("a", "b")]

    def calls(greeter: pb_grpc.GreeterStub) -> None:
        greeter.Collect(iter(names))
        list(greeter.Chat(iter(names)))

    target = record(calls)
    with tracelab.replay("orig-1") as r:
        greeter = pb_grpc.GreeterStub(grpc.insecure_channel(target))
        assert greeter.Collect(iter(names)).message == "hello a+b"
        assert [m.message for m in greeter.Chat(iter(names))] == ["hello a", "hello b"]
    assert len(r.hits) == 2 and not r.misses


def test_a_recorded_error_status_is_replayed_as_grpcs_own_error() -> None:
    def calls(greeter: pb_grpc.GreeterStub) -> None:
        with pytest.raises(grpc.RpcError):
            greeter.SayHello(pb.HelloRequest(name="fail"))

    target = record(calls)
    with tracelab.replay("orig-1"):
        with pytest.raises(grpc.RpcError) as raised:
            pb_grpc.GreeterStub(grpc.insecure_channel(target)).SayHello(
                pb.HelloRequest(name="fail"))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert raised.value.details() == "no such person: fail"


def test_a_miss_raises_unavailable_with_the_matchers_explanation() -> None:
    target = record(recorded_calls)
    with tracelab.replay("orig-1") as r:
        greeter = pb_grpc.GreeterStub(grpc.insecure_channel(target))
        with pytest.raises(grpc.RpcError) as raised:
            greeter.SayHello(pb.HelloRequest(name="zed", times=7))

        async def aio_miss() -> None:
            async with grpc.aio.insecure_channel(target) as channel:
                await pb_grpc.GreeterStub(channel).SayHello(pb.HelloRequest(name="zed"))

        with pytest.raises(grpc.aio.AioRpcError) as aio_raised:
            asyncio.run(aio_miss())
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    details = raised.value.details()
    assert "replay miss" in details and "/tlgrpc.v1.Greeter/SayHello" in details
    assert "request $.message.name: 'zed' != 'ann'" in details
    assert aio_raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert len(r.misses) == 2
    (event, _aio) = replay_events(r.run_id)
    assert (event["tags"]["replay"], event["status_code"]) == ("miss", 14)


def test_a_grpc_status_fault_then_the_retry_is_answered_from_the_recording() -> None:
    target = record(recorded_calls)
    rule = {"id": "flaky", "kind": "grpc", "endpoint": "*/SayHello",
            "grpc_status": "UNAVAILABLE", "details": "try again", "times": 1}
    with tracelab.replay("orig-1", faults=rule) as r:
        greeter = pb_grpc.GreeterStub(grpc.insecure_channel(target))
        with pytest.raises(grpc.RpcError) as raised:
            greeter.SayHello(pb.HelloRequest(name="ann", times=7))
        retried = greeter.SayHello(pb.HelloRequest(name="ann", times=7))
    assert (raised.value.code(), raised.value.details()) == \
        (grpc.StatusCode.UNAVAILABLE, "try again")
    assert retried.message == "hello ann"
    assert len(r.hits) == 1 and r.faulted == [
        {"call": f"{target} /tlgrpc.v1.Greeter/SayHello", "fault": "flaky",
         "action": "grpc_status"}]
    faulted, answered = replay_events(r.run_id)
    assert (faulted["tags"]["replay"], faulted["tags"]["fault"]) == ("fault", "flaky")
    assert faulted["tags"]["fault.action"] == "grpc_status"
    assert (faulted["status_code"], faulted["error"]["type"]) == (14, "UNAVAILABLE")
    assert answered["tags"]["replay"] == "hit" and "fault" not in answered["tags"]


def test_a_numbered_grpc_status_fault_on_an_aio_stream() -> None:
    target = record(recorded_calls)

    async def stream() -> Any:
        async with grpc.aio.insecure_channel(target) as channel:
            call = pb_grpc.GreeterStub(channel).CountUp(pb.HelloRequest(name="n", times=3))
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                [m async for m in call]
            return raised.value.code()

    with tracelab.replay("orig-1", faults={"kind": "grpc", "grpc_status": 4}) as r:
        assert asyncio.run(stream()) == grpc.StatusCode.DEADLINE_EXCEEDED
    assert r.faulted[0]["action"] == "grpc_status" and not r.hits


def test_grpc_status_rules_are_checked_and_only_hit_grpc_calls() -> None:
    with pytest.raises(FaultRuleError) as bad:
        tracelab.replay("nothing", faults=[{"grpc_status": "NOPE"}, {"details": "x"}])
    assert "rules[0].grpc_status" in str(bad.value) and "rules[1].details" in str(bad.value)
    from tracelab.replay.faults import Call, FaultSet

    rules = FaultSet.load({"grpc_status": "unavailable"})
    assert rules.decide_call(Call("http", "api.example.com", "GET /")) is None
    assert rules.decide_call(Call("grpc", "h:1", "/a.B/C")).grpc_status == 14


def test_metadata_is_not_part_of_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """A per-call request id (allow-listed, so recorded) differs on every run; the call is
    still the same call."""
    monkeypatch.setenv("TRACELAB_GRPC_METADATA", "x-request-id")

    def calls(greeter: pb_grpc.GreeterStub) -> None:
        greeter.SayHello(pb.HelloRequest(name="ann"), metadata=[("x-request-id", "r-1")])

    target = record(calls)
    assert run_events("orig-1")[0]["request"]["metadata"] == {"x-request-id": "r-1"}
    with tracelab.replay("orig-1") as r:
        reply = pb_grpc.GreeterStub(grpc.insecure_channel(target)).SayHello(
            pb.HelloRequest(name="ann"), metadata=[("x-request-id", "r-2")])
    assert reply.message == "hello ann" and len(r.hits) == 1


def test_reset_timeout_and_latency_faults_on_grpc_calls() -> None:
    target = record(lambda greeter: [greeter.SayHello(pb.HelloRequest(name="ann", times=7))
                                     for _ in range(2)])
    rules = [{"id": "drop", "kind": "grpc", "reset": True, "nth": 1},
             {"id": "hang", "kind": "grpc", "timeout": True, "timeout_s": 30, "nth": 1},
             {"id": "slow", "kind": "grpc", "latency_ms": 1}]
    request = pb.HelloRequest(name="ann", times=7)
    with tracelab.replay("orig-1", faults=rules) as r:
        greeter = pb_grpc.GreeterStub(grpc.insecure_channel(target))
        with pytest.raises(grpc.RpcError) as reset:
            greeter.SayHello(request)
        with pytest.raises(grpc.RpcError) as timed_out:
            greeter.SayHello(request, timeout=0.05)  # the client's deadline ends the hang
        assert greeter.SayHello(request).message == "hello ann"
    assert reset.value.code() == grpc.StatusCode.UNAVAILABLE
    assert timed_out.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert [f["action"] for f in r.faulted] == ["reset", "timeout"] and len(r.hits) == 1
    tags = [e["tags"] for e in replay_events(r.run_id)]
    assert [(t["replay"], t["fault"]) for t in tags] == \
        [("fault", "drop"), ("fault", "hang"), ("hit", "slow")]


def test_a_recorded_message_cut_at_the_cap_is_not_made_up() -> None:
    server, port = greeter_server.start()
    try:
        tracelab.init("greeter", run_id="orig-1", max_body_bytes=32)
        greeter = pb_grpc.GreeterStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        greeter.SayHello(pb.HelloRequest(name="z" * 100))
        list(greeter.CountUp(pb.HelloRequest(name="s", times=9)))
        tracelab.flush()
        tracelab.shutdown()
    finally:
        server.stop(None)
    tracelab.init("greeter", run_id="replay-1", max_body_bytes=32)  # keyed as recorded
    with tracelab.replay("orig-1") as r:
        greeter = pb_grpc.GreeterStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        with pytest.raises(grpc.RpcError) as raised:
            greeter.SayHello(pb.HelloRequest(name="z" * 100))
        with pytest.raises(grpc.RpcError) as streamed:
            list(greeter.CountUp(pb.HelloRequest(name="s", times=9)))
    for error in (raised.value, streamed.value):
        assert error.code() == grpc.StatusCode.INTERNAL
        assert "was not kept whole (truncated)" in error.details()
    assert len(r.hits) == 2


def test_aio_client_streaming_and_bidi_replayed_with_iterators_and_writes() -> None:
    names = [pb.HelloRequest(name=n) for n in ("a", "b")]

    def calls(greeter: pb_grpc.GreeterStub) -> None:
        greeter.Collect(iter(names))
        list(greeter.Chat(iter(names)))

    target = record(calls)

    async def replayed() -> tuple[str, list[str]]:
        async with grpc.aio.insecure_channel(target) as channel:
            greeter = pb_grpc.GreeterStub(channel)
            collected = (await greeter.Collect(iter(names))).message
            chat = greeter.Chat()
            for request in names:
                await chat.write(request)
            await chat.done_writing()
            return collected, [m.message async for m in chat]

    with tracelab.replay("orig-1") as r:
        assert asyncio.run(replayed()) == ("hello a+b", ["hello a", "hello b"])
    assert len(r.hits) == 2 and not r.misses
    assert [e["tags"]["replay"] for e in replay_events(r.run_id)] == ["hit", "hit"]


def test_on_miss_passthrough_sends_unrecorded_calls_live() -> None:
    server, port = greeter_server.start()
    target = f"127.0.0.1:{port}"
    try:
        tracelab.init("greeter", run_id="orig-1")
        pb_grpc.GreeterStub(grpc.insecure_channel(target)).SayHello(pb.HelloRequest(name="a"))
        tracelab.flush()
        tracelab.shutdown()

        async def aio_collect() -> str:
            async with grpc.aio.insecure_channel(target) as channel:
                return (await pb_grpc.GreeterStub(channel).Collect(
                    iter([pb.HelloRequest(name="q")]))).message

        with tracelab.replay("orig-1", on_miss="passthrough") as r:
            greeter = pb_grpc.GreeterStub(grpc.insecure_channel(target))
            assert greeter.SayHello(pb.HelloRequest(name="a")).message == "hello a"
            assert greeter.SayHello(pb.HelloRequest(name="new")).message == "hello new"
            assert greeter.Collect(iter([pb.HelloRequest(name="x"),
                                         pb.HelloRequest(name="y")])).message == "hello x+y"
            assert asyncio.run(aio_collect()) == "hello q"
    finally:
        server.stop(None)
    assert len(r.hits) == 1 and len(r.passthrough) == 3
    assert [e["tags"]["replay"] for e in replay_events(r.run_id)] == \
        ["hit", "passthrough", "passthrough", "passthrough"]


def test_an_http_status_fault_becomes_the_grpc_code_grpc_maps_it_to() -> None:
    target = record(recorded_calls)
    with tracelab.replay("orig-1", faults={"kind": "grpc", "status": 503, "times": 1}) as r:
        greeter = pb_grpc.GreeterStub(grpc.insecure_channel(target))
        with pytest.raises(grpc.RpcError) as raised:
            list(greeter.CountUp(pb.HelloRequest(name="n", times=3)))
        assert len(list(greeter.CountUp(pb.HelloRequest(name="n", times=3)))) == 3
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "HTTP status 503" in raised.value.details()
    assert len(r.faulted) == 1 and len(r.hits) == 1
