"""gRPC capture: real sync and aio channels against a real `grpc.server` on loopback.

The service is tests/grpc_service/greeter.proto (generated code committed). Every call shape
(unary and streaming both ways) must give exactly one contract-valid `kind: grpc` event with
its messages, status and allow-listed metadata, and the caller must get grpc's own results
and errors untouched.
"""
from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

import tracelab
from conftest import capture_broken
from grpc_service import greeter_pb2 as pb
from grpc_service import greeter_pb2_grpc as pb_grpc
from grpc_service import server as greeter_server
from tracelab.events import validate
from tracelab.replay.recording import run_events
from tracelab.sdk.integrations import grpc as grpc_integration

SAY = "/tlgrpc.v1.Greeter/SayHello"
BEARER = "Bearer grpc-secret-9f8e7d6c"
PASSWORD = "hunter2-grpc-pass"
OPAQUE = "opaque-credential-4242"  # no secret shape: only its name says it is one


@pytest.fixture
def server() -> Iterator[int]:
    started, port = greeter_server.start()
    try:
        yield port
    finally:
        started.stop(None)


@pytest.fixture(autouse=True)
def _traced(tracelab_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(grpc_integration.METADATA_ENV, raising=False)
    tracelab.init("grpc-wf", run_id="grpc-run")
    yield
    tracelab.shutdown()


def events() -> list[dict[str, Any]]:
    assert tracelab.flush(5.0)
    found = [e for e in run_events("grpc-run") if e["kind"] == "grpc"]
    for event in found:
        assert validate(event) == [], event
    return found


def captured() -> int:
    """How many events the integration has captured in this process so far."""
    return int(tracelab.stats()["integrations"].get("grpc", {}).get("captured", 0))


def wait_captured(n: int) -> None:
    """Wait (bounded) until the integration has captured `n` events in all."""
    import time

    deadline = time.monotonic() + 10
    while captured() < n:
        assert time.monotonic() < deadline, tracelab.stats()
        time.sleep(0.01)


def stub(port: int) -> pb_grpc.GreeterStub:
    return pb_grpc.GreeterStub(grpc.insecure_channel(f"127.0.0.1:{port}"))


def test_unary_call_with_call_and_future_each_give_one_event(server: int) -> None:
    before = captured()
    greeter = stub(server)
    assert greeter.SayHello(pb.HelloRequest(name="ann", times=2)).message == "hello ann"
    reply, call = greeter.SayHello.with_call(pb.HelloRequest(name="bob"))
    assert reply.message == "hello bob" and call.code() == grpc.StatusCode.OK
    assert ("x-served-by", "greeter-1") in call.trailing_metadata()
    assert greeter.SayHello.future(pb.HelloRequest(name="cy")).result().message == "hello cy"

    wait_captured(before + 3)  # a future's event is built by its done callback, on grpc's thread
    recorded = events()
    assert [e["request"]["message"]["name"] for e in recorded] == ["ann", "bob", "cy"]
    first = recorded[0]
    assert (first["target"], first["endpoint"]) == (f"127.0.0.1:{server}", SAY)
    assert (first["status"], first["status_code"], first["tags"]["grpc.status"]) == \
        ("ok", 0, "OK")
    assert first["request"]["type"] == "tlgrpc.v1.HelloRequest"
    assert first["request"]["message"] == {"name": "ann", "times": 2}
    assert first["response"]["type"] == "tlgrpc.v1.HelloReply"
    assert first["response"]["message"] == {"message": "hello ann", "index": 2}
    assert first["response"]["trailing_metadata"] == {"x-served-by": "[NOT RECORDED]"}
    assert first.get("error") is None


def test_server_streaming_records_each_message_with_its_offset(server: int) -> None:
    replies = list(stub(server).CountUp(pb.HelloRequest(name="n", times=3)))
    assert [r.index for r in replies] == [0, 1, 2]

    (event,) = events()
    assert event["endpoint"] == "/tlgrpc.v1.Greeter/CountUp"
    response = event["response"]
    assert response["type"] == "tlgrpc.v1.HelloReply" and response["complete"] is True
    assert [m["message"] for m in response["messages"]] == [
        {"message": "n 0"}, {"message": "n 1", "index": 1}, {"message": "n 2", "index": 2}]
    offsets = [m["t"] for m in response["messages"]]
    assert offsets == sorted(offsets) and all(t >= 0 for t in offsets)


def test_client_streaming_and_bidi_record_the_request_stream(server: int) -> None:
    greeter = stub(server)
    names = [pb.HelloRequest(name=n) for n in ("a", "b", "c")]
    assert greeter.Collect(iter(names)).message == "hello a+b+c"
    assert [r.message for r in greeter.Chat(iter(names[:2]))] == ["hello a", "hello b"]

    collect, chat = events()
    assert [m["message"] for m in collect["request"]["messages"]] == \
        [{"name": "a"}, {"name": "b"}, {"name": "c"}]
    assert collect["request"]["type"] == "tlgrpc.v1.HelloRequest"
    assert collect["response"]["message"] == {"message": "hello a+b+c", "index": 3}
    assert [m["message"]["name"] for m in chat["request"]["messages"]] == ["a", "b"]
    assert [m["message"]["message"] for m in chat["response"]["messages"]] == \
        ["hello a", "hello b"]


def test_a_non_ok_status_is_an_error_event_and_grpcs_own_exception(server: int) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        stub(server).SayHello(pb.HelloRequest(name="fail"))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as mid:
        list(stub(server).CountUp(pb.HelloRequest(name="fail-mid", times=3)))
    assert mid.value.code() == grpc.StatusCode.UNAVAILABLE

    unary, streamed = events()
    assert (unary["status"], unary["status_code"], unary["tags"]["grpc.status"]) == \
        ("error", 5, "NOT_FOUND")
    assert unary["error"] == {"type": "NOT_FOUND", "message": "no such person: fail"}
    assert unary["response"]["details"] == "no such person: fail"
    assert (streamed["status_code"], streamed["error"]["type"]) == (14, "UNAVAILABLE")
    assert len(streamed["response"]["messages"]) == 1
    assert streamed["response"]["complete"] is False


def test_a_cancelled_stream_is_recorded_when_cancelled(server: int) -> None:
    replies = stub(server).CountUp(pb.HelloRequest(name="slow", times=5))
    assert next(replies).index == 0
    replies.cancel()

    (event,) = events()
    assert (event["status_code"], event["tags"]["grpc.status"]) == (1, "CANCELLED")
    assert [m["message"] for m in event["response"]["messages"]] == [{"message": "slow 0"}]


def test_metadata_values_only_for_the_allow_list_and_auth_always_redacted(
        server: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(grpc_integration.METADATA_ENV, "x-tenant, x-echo,authorization")
    reply = stub(server).SayHello(
        pb.HelloRequest(name="m", password=PASSWORD),
        metadata=[("authorization", BEARER), ("x-tenant", "acme"), ("x-other", "hidden-1"),
                  ("x-echo", "pong")])
    assert reply.message == "hello m"

    (event,) = events()
    assert event["request"]["metadata"] == {"authorization": "[REDACTED]", "x-tenant": "acme",
                                            "x-other": "[NOT RECORDED]", "x-echo": "pong"}
    assert event["response"]["metadata"] == {"x-echo": "pong"}
    assert event["request"]["message"]["password"] == "[REDACTED]"
    with pytest.raises(grpc.RpcError) as refused:
        stub(server).SayHello(pb.HelloRequest(name="echo-auth"),
                              metadata=[("authorization", OPAQUE)])
    assert OPAQUE in refused.value.details()  # the caller's own error is untouched

    (_first, echoed) = events()
    assert echoed["error"]["type"] == "PERMISSION_DENIED"
    assert "[REDACTED]" in echoed["error"]["message"]
    text = json.dumps([event, echoed])
    for secret in (BEARER, "grpc-secret-9f8e7d6c", PASSWORD, "hidden-1", OPAQUE):
        assert secret not in text


def test_aio_channels_all_four_shapes(server: int) -> None:
    async def calls() -> None:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server}") as channel:
            greeter = pb_grpc.GreeterStub(channel)
            call = greeter.SayHello(pb.HelloRequest(name="aio"))
            assert (await call).message == "hello aio"
            assert await call.code() == grpc.StatusCode.OK
            assert [r.index async for r in greeter.CountUp(
                pb.HelloRequest(name="s", times=2))] == [0, 1]
            collect = greeter.Collect(iter([pb.HelloRequest(name="x"),
                                            pb.HelloRequest(name="y")]))
            assert (await collect).message == "hello x+y"
            chat = greeter.Chat()
            await chat.write(pb.HelloRequest(name="w"))
            assert (await chat.read()).message == "hello w"
            await chat.done_writing()
            assert await chat.read() == grpc.aio.EOF
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await greeter.SayHello(pb.HelloRequest(name="fail"))
            assert raised.value.code() == grpc.StatusCode.NOT_FOUND

    asyncio.run(calls())
    recorded = {e["endpoint"].rsplit("/", 1)[1] + ("!" if e["status"] == "error" else ""): e
                for e in events()}
    assert sorted(recorded) == ["Chat", "Collect", "CountUp", "SayHello", "SayHello!"]
    assert recorded["SayHello"]["response"]["message"] == {"message": "hello aio"}
    assert [m["message"]["index"] for m in recorded["CountUp"]["response"]["messages"][1:]] == [1]
    assert [m["message"]["name"] for m in recorded["Collect"]["request"]["messages"]] == \
        ["x", "y"]
    assert recorded["Chat"]["response"]["messages"][0]["message"] == {"message": "hello w"}
    assert recorded["Chat"]["request"]["messages"][0]["message"] == {"name": "w"}
    assert recorded["SayHello!"]["error"]["type"] == "NOT_FOUND"
    assert all(e["target"] == f"127.0.0.1:{server}" for e in recorded.values())


def test_a_capture_failure_never_reaches_the_caller(server: int,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    greeter = stub(server)
    with capture_broken(monkeypatch, grpc_integration, "messages_view"):
        assert greeter.SayHello(pb.HelloRequest(name="ok")).message == "hello ok"
    with capture_broken(monkeypatch, grpc_integration, "messages_view"):
        assert len(list(greeter.Chat(iter([pb.HelloRequest(name="c")])))) == 1
    with capture_broken(monkeypatch, grpc_integration, "metadata_view"):
        with pytest.raises(grpc.RpcError):
            greeter.SayHello(pb.HelloRequest(name="fail"))

    async def aio() -> str:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server}") as channel:
            return (await pb_grpc.GreeterStub(channel).SayHello(
                pb.HelloRequest(name="a"))).message

    with capture_broken(monkeypatch, grpc_integration, "messages_view"):
        assert asyncio.run(aio()) == "hello a"


def test_install_twice_is_a_noop_and_shutdown_restores_the_factories(server: int) -> None:
    patched = [grpc.insecure_channel, grpc.secure_channel, grpc.aio.insecure_channel,
               grpc.aio.secure_channel]
    assert all(getattr(f, "_self_tracelab_patched", False) for f in patched)
    grpc_integration.install()
    assert [grpc.insecure_channel, grpc.secure_channel, grpc.aio.insecure_channel,
            grpc.aio.secure_channel] == patched
    tracelab.shutdown()
    assert not any(hasattr(f, "_self_tracelab_patched") for f in (
        grpc.insecure_channel, grpc.secure_channel, grpc.aio.insecure_channel,
        grpc.aio.secure_channel))
    channel = grpc.insecure_channel(f"127.0.0.1:{server}")
    assert type(channel).__module__ == "grpc._channel"  # no interceptor any more


def test_grpc_imported_after_init_and_a_second_init_is_traced(tmp_path: Path) -> None:
    """In a fresh interpreter: two init() before grpc is imported (a re-init must neither
    import grpc nor hang when it is), then channels made after the import are traced."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import sys, tracelab
        tracelab.init("late", run_id="late-run")
        tracelab.init("late", run_id="late-run")
        assert "grpc" not in sys.modules
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import grpc
        from grpc_service import greeter_pb2 as pb, greeter_pb2_grpc as pb_grpc, server
        started, port = server.start()
        stub = pb_grpc.GreeterStub(grpc.insecure_channel(f"127.0.0.1:{{port}}"))
        assert stub.SayHello(pb.HelloRequest(name="late")).message == "hello late"
        assert tracelab.flush(5.0)
        started.stop(None)
        tracelab.shutdown()
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    (event,) = [e for e in run_events("late-run") if e["kind"] == "grpc"]
    assert event["request"]["message"] == {"name": "late"}


def test_messages_are_capped_like_bodies(server: int) -> None:
    tracelab.init("grpc-wf", run_id="grpc-run", max_body_bytes=64)
    greeter = stub(server)
    assert greeter.SayHello(pb.HelloRequest(name="x" * 500)).message == "hello " + "x" * 500
    assert len(list(greeter.CountUp(pb.HelloRequest(name="y" * 40, times=5)))) == 5

    unary, streamed = events()
    for stored in (unary["request"]["message"], unary["response"]["message"],
                   streamed["response"]["messages"]):
        assert stored["$tracelab"] == "truncated" and stored["size"] > 64
        assert len(stored["data"].encode()) <= 64
    assert streamed["request"]["message"] == {"name": "y" * 40, "times": 5}


def _self_signed_localhost() -> tuple[bytes, bytes]:
    """(key, certificate) PEM of a throwaway self-signed certificate for localhost."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return (key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()),
            cert.public_bytes(serialization.Encoding.PEM))


def test_secure_channels_sync_and_aio_are_traced() -> None:
    key, cert = _self_signed_localhost()
    started, port = greeter_server.start(tls=(key, cert))
    target = f"localhost:{port}"
    try:
        with grpc.secure_channel(target, grpc.ssl_channel_credentials(cert)) as channel:
            assert pb_grpc.GreeterStub(channel).SayHello(
                pb.HelloRequest(name="tls")).message == "hello tls"

        async def aio() -> str:
            async with grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(cert),
                                               interceptors=[]) as channel:
                return (await pb_grpc.GreeterStub(channel).SayHello(
                    pb.HelloRequest(name="tls-aio"))).message

        assert asyncio.run(aio()) == "hello tls-aio"
    finally:
        started.stop(None)
    assert [(e["target"], e["request"]["message"]["name"]) for e in events()] == \
        [(target, "tls"), (target, "tls-aio")]
