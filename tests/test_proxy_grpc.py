"""gRPC through `tracelab proxy`: a real grpc Python client, the real proxy (mitmproxy) in a
subprocess, a real `grpc.server` on loopback (tests/grpc_service), events read back from a real
redis-server. Messages are decoded without the `.proto`: keys are field numbers.

How the client goes through the proxy (what works with mitmproxy 11): the `grpc.http_proxy`
channel option (or the `https_proxy` environment variable) makes grpc open an HTTP CONNECT
tunnel. A TLS channel (`grpc.secure_channel`) trusting the proxy's CA: mitmproxy intercepts
the TLS inside the tunnel and speaks HTTP/2 (ALPN h2) to both sides. A plaintext channel
(`grpc.insecure_channel`): HTTP/2 with prior knowledge in the tunnel, which mitmproxy alone
relays as raw TCP (the server speaks first); the addon makes it HTTP/2 (`h2c_layer`).
"""
from __future__ import annotations

import json
import queue
import socket
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import hypothesis.strategies as st
import orjson
import pytest
from google.protobuf import descriptor_pb2
from hypothesis import given, settings

from grpc_service import greeter_pb2 as pb
from grpc_service import greeter_pb2_grpc as pb_grpc
from grpc_service import server as greeter_server
from tests.conftest import RedisServer, TCPAcceptor, free_port
from tests.test_proxy import Proxy, self_signed_cert, wait_events
from tests.test_replay_proxy import ReplayProxy, http_event
from tracelab.proxy.grpc import GrpcFrames, decode_message

SAY, COUNT, CHAT = ("/tlgrpc.v1.Greeter/SayHello", "/tlgrpc.v1.Greeter/CountUp",
                    "/tlgrpc.v1.Greeter/Chat")
BEARER = "Bearer grpc-proxy-secret-77aa"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes]:
    """(key, certificate) PEM of the upstream server: self-signed, for 127.0.0.1/localhost."""
    cert, key = self_signed_cert(tmp_path_factory.mktemp("grpc-tls"))
    return key.read_bytes(), cert.read_bytes()


@pytest.fixture
def greeter(tls: tuple[bytes, bytes]) -> Iterator[int]:
    server, port = greeter_server.start(tls)
    yield port
    server.stop(None)


@pytest.fixture
def gzip_greeter(tls: tuple[bytes, bytes]) -> Iterator[int]:
    """The same service answering with gzip-compressed messages."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                         compression=grpc.Compression.Gzip)
    pb_grpc.add_GreeterServicer_to_server(greeter_server.Greeter(), server)
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([tls]))
    server.start()
    yield port
    server.stop(None)


@pytest.fixture
def proxy(tmp_path: Path, redis_server: RedisServer) -> Iterator[tuple[Proxy, bytes]]:
    """`tracelab proxy` recording to Redis, and its CA certificate (PEM)."""
    home = tmp_path / "home"
    started = Proxy(home, "--ssl-insecure", "--redis-url", redis_server.url,
                    env={"TRACELAB_GRPC_METADATA": "x-echo"})
    try:
        yield started, (home / "proxy" / "mitmproxy-ca-cert.pem").read_bytes()
    finally:
        started.stop()


def stub(proxy: tuple[Any, bytes], port: int, **options: Any) -> pb_grpc.GreeterStub:
    """A TLS channel to the greeter through the proxy, trusting the proxy's CA."""
    running, ca = proxy
    channel = grpc.secure_channel(
        f"localhost:{port}", grpc.ssl_channel_credentials(root_certificates=ca),
        options=[("grpc.http_proxy", running.url)], **options)
    return pb_grpc.GreeterStub(channel)


def test_unary_streaming_and_error_calls_recorded_with_decoded_messages(
        proxy: tuple[Proxy, bytes], greeter: int, redis_server: RedisServer) -> None:
    greeter_stub = stub(proxy, greeter)
    reply, call = greeter_stub.SayHello.with_call(
        pb.HelloRequest(name="ana", times=-7, password="hunter2-pw"), timeout=10,
        metadata=(("x-echo", "echoed"), ("authorization", BEARER), ("x-other", "kept-out"),
                  ("x-tracelab-run-id", "grpc-run-7")))
    assert (reply.message, reply.index) == ("hello ana", -7)  # the client's answer, untouched
    assert ("x-served-by", "greeter-1") in call.trailing_metadata()
    streamed = list(greeter_stub.CountUp(pb.HelloRequest(name="bo", times=3), timeout=10))
    assert [(m.message, m.index) for m in streamed] == [("bo 0", 0), ("bo 1", 1), ("bo 2", 2)]
    with pytest.raises(grpc.RpcError) as failed:
        greeter_stub.SayHello(pb.HelloRequest(name="fail"), timeout=10)
    assert failed.value.code() == grpc.StatusCode.NOT_FOUND
    assert failed.value.details() == "no such person: fail"
    with pytest.raises(grpc.RpcError) as cut:
        list(greeter_stub.CountUp(pb.HelloRequest(name="fail-mid", times=3), timeout=10))
    assert cut.value.code() == grpc.StatusCode.UNAVAILABLE

    events, raw = wait_events(redis_server, 4)
    assert {e["kind"] for e in events} == {"grpc"}
    assert {e["target"] for e in events} == {f"localhost:{greeter}"}
    unary, failure = sorted((e for e in events if e["endpoint"] == SAY),
                            key=lambda e: e["status"] != "ok")
    assert unary["status"] == "ok" and unary["status_code"] == 0
    assert unary["run_id"] == "grpc-run-7"  # the override header, as for HTTP (and removed)
    assert unary["tags"]["grpc.status"] == "OK" and unary.get("error") is None
    assert unary["request"]["message"] == {"1": "ana", "2": -7, "3": "hunter2-pw"}
    assert unary["request"]["metadata"] == {"x-echo": "echoed", "authorization": "[REDACTED]",
                                            "x-other": "[NOT RECORDED]"}
    assert unary["response"]["status_code"] == 0
    assert unary["response"]["message"] == {"1": "hello ana", "2": -7}
    assert unary["response"]["metadata"] == {"x-echo": "echoed"}
    assert unary["response"]["trailing_metadata"] == {"x-served-by": "[NOT RECORDED]"}
    assert BEARER.encode() not in raw

    stream, stream_cut = sorted((e for e in events if e["endpoint"] == COUNT),
                                key=lambda e: e["status"] != "ok")
    assert stream["status"] == "ok" and stream["request"]["message"] == {"1": "bo", "2": 3}
    messages = stream["response"]["messages"]
    assert [m["message"] for m in messages] == [{"1": "bo 0"}, {"1": "bo 1", "2": 1},
                                                {"1": "bo 2", "2": 2}]
    offsets = [m["t"] for m in messages]
    assert offsets == sorted(offsets) and offsets[0] >= 0
    assert stream["response"]["complete"] is True

    assert failure["status"] == "error" and failure["status_code"] == 5
    assert failure["tags"]["grpc.status"] == "NOT_FOUND"
    assert failure["error"] == {"type": "NOT_FOUND", "message": "no such person: fail"}
    assert failure["response"]["details"] == "no such person: fail"
    assert "message" not in failure["response"] and "messages" not in failure["response"]
    assert failure["response"]["trailing_metadata"] == {"x-served-by": "[NOT RECORDED]"}

    assert stream_cut["status"] == "error" and stream_cut["status_code"] == 14
    assert stream_cut["error"] == {"type": "UNAVAILABLE", "message": "went away mid-stream"}
    assert stream_cut["response"]["message"] == {"1": "fail-mid 0"}  # one message came first


def test_plaintext_channel_through_the_connect_tunnel(proxy: tuple[Proxy, bytes],
                                                      redis_server: RedisServer) -> None:
    """An insecure channel (HTTP/2 with prior knowledge in the CONNECT tunnel): the server
    speaks first, which mitmproxy alone would relay as raw TCP, unrecorded."""
    server, port = greeter_server.start()
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}",
                                        options=[("grpc.http_proxy", proxy[0].url)])
        greeter_stub = pb_grpc.GreeterStub(channel)
        assert greeter_stub.SayHello(pb.HelloRequest(name="plain"), timeout=10).message == \
            "hello plain"
        assert len(list(greeter_stub.CountUp(pb.HelloRequest(name="p", times=2),
                                             timeout=10))) == 2
    finally:
        server.stop(None)
    events, _ = wait_events(redis_server, 2)
    found = {e["endpoint"]: e for e in events}
    assert {e["kind"] for e in events} == {"grpc"}
    assert {e["target"] for e in events} == {f"127.0.0.1:{port}"}
    assert found[SAY]["response"]["message"] == {"1": "hello plain"}
    assert [m["message"] for m in found[COUNT]["response"]["messages"]] == [
        {"1": "p 0"}, {"1": "p 1", "2": 1}]


class ClientFirstH2c(TCPAcceptor):
    """A plaintext HTTP/2 gRPC server (the `h2` package) that sends its SETTINGS only after
    the client's preface came: the other order of the tunnel's first bytes. It answers
    every call with HelloReply(message="h2c <name>")."""

    @staticmethod
    def _serve(conn: socket.socket) -> None:
        import h2.config
        import h2.connection
        import h2.events

        h2conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        bodies: dict[int, bytes] = {}
        with conn:
            while data := conn.recv(65536):
                if not bodies and h2conn.state_machine.state.name == "IDLE":
                    h2conn.initiate_connection()  # our SETTINGS, after the client's preface
                for event in h2conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        bodies[event.stream_id] = b""
                    elif isinstance(event, h2.events.DataReceived):
                        bodies[event.stream_id] += event.data
                        h2conn.acknowledge_received_data(event.flow_controlled_length,
                                                         event.stream_id)
                    elif isinstance(event, h2.events.StreamEnded):
                        name = pb.HelloRequest.FromString(bodies[event.stream_id][5:]).name
                        reply = pb.HelloReply(message=f"h2c {name}").SerializeToString()
                        h2conn.send_headers(event.stream_id, [
                            (":status", "200"), ("content-type", "application/grpc")])
                        h2conn.send_data(event.stream_id,
                                         b"\0" + len(reply).to_bytes(4, "big") + reply)
                        h2conn.send_headers(event.stream_id, [("grpc-status", "0")],
                                            end_stream=True)
                conn.sendall(h2conn.data_to_send())

    def close(self) -> None:
        self.sock.close()


def test_plaintext_server_that_waits_for_the_client(proxy: tuple[Proxy, bytes],
                                                    redis_server: RedisServer) -> None:
    """The tunnel's first bytes are the client's HTTP/2 preface (mitmproxy alone would
    parse them as HTTP/1 and drop the connection)."""
    server = ClientFirstH2c()
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{server.port}",
                                        options=[("grpc.http_proxy", proxy[0].url)])
        reply = pb_grpc.GreeterStub(channel).SayHello(pb.HelloRequest(name="ann"), timeout=10)
        assert reply.message == "h2c ann"
    finally:
        server.close()
    (event,), _ = wait_events(redis_server, 1)
    assert event["kind"] == "grpc" and event["status_code"] == 0
    assert event["request"]["message"] == {"1": "ann"}
    assert event["response"]["message"] == {"1": "h2c ann"}


def test_gzip_compressed_messages_are_decoded(proxy: tuple[Proxy, bytes], gzip_greeter: int,
                                              redis_server: RedisServer) -> None:
    greeter_stub = stub(proxy, gzip_greeter, compression=grpc.Compression.Gzip)
    reply = greeter_stub.SayHello(pb.HelloRequest(name="zip " * 50, times=2), timeout=10)
    assert reply.message == "hello " + "zip " * 50
    (event,), _ = wait_events(redis_server, 1)
    assert event["kind"] == "grpc" and event["status_code"] == 0
    assert event["request"]["message"] == {"1": "zip " * 50, "2": 2}
    assert event["response"]["message"] == {"1": "hello " + "zip " * 50, "2": 2}


def test_messages_past_the_body_cap_are_truncated_like_bodies(
        tmp_path: Path, redis_server: RedisServer, greeter: int) -> None:
    home = tmp_path / "home"
    running = Proxy(home, "--ssl-insecure", "--redis-url", redis_server.url,
                    env={"TRACELAB_MAX_BODY_BYTES": "512"})
    try:
        ca = (home / "proxy" / "mitmproxy-ca-cert.pem").read_bytes()
        greeter_stub = stub((running, ca), greeter)
        answers = list(greeter_stub.CountUp(pb.HelloRequest(name="many", times=2000),
                                            timeout=20))
        big = greeter_stub.SayHello(pb.HelloRequest(name="b" * 20_000), timeout=20)
    finally:
        running.stop()
    assert [a.index for a in answers] == list(range(2000))  # the client got every message
    assert big.message == "hello " + "b" * 20_000
    events, _ = wait_events(redis_server, 2)
    found = {e["endpoint"]: e for e in events}
    stream = found[COUNT]
    assert stream["status"] == "ok" and stream["response"]["complete"] is True
    stored = stream["response"]["messages"]
    assert stored["$tracelab"] == "truncated" and stored["size"] > 512
    assert stored["data"].startswith('[{"t":')
    assert stream["response"]["dropped"] > 0  # messages past the cap: counted, not kept
    unary = found[SAY]  # one message bigger than the cap on each side: said, not kept
    for side in (unary["request"], unary["response"]):
        assert side["message"] == {"$tracelab": "not_captured",
                                   "reason": "a message over the body cap (512 bytes)"}
        assert side["dropped"] == 1


def test_a_stream_cut_by_the_server_going_away(proxy: tuple[Proxy, bytes],
                                               tls: tuple[bytes, bytes],
                                               redis_server: RedisServer) -> None:
    server, port = greeter_server.start(tls)
    answers = stub(proxy, port).CountUp(pb.HelloRequest(name="slow", times=50), timeout=10)
    first = next(answers)
    assert first.message == "slow 0"
    server.stop(None)  # mid-stream (it waits between messages): no status for the client
    with pytest.raises(grpc.RpcError):
        list(answers)
    (event,), _ = wait_events(redis_server, 1)
    assert event["kind"] == "grpc" and event["endpoint"] == COUNT
    assert event["status"] == "error" and event["status_code"] is None
    assert "grpc.status" not in event["tags"]
    assert event["error"]["type"] == "UpstreamError"  # what mitmproxy saw, in its words
    assert event["response"]["status_code"] is None
    assert event["response"]["message"] == {"1": "slow 0"}  # what came before the cut


def test_bidirectional_call_streams_through_both_ways(proxy: tuple[Proxy, bytes], greeter: int,
                                                      redis_server: RedisServer) -> None:
    """The client sends its next message only once the previous answer came back: a proxy
    that buffered the request body would hold the first message until the deadline."""
    outgoing: queue.Queue[pb.HelloRequest | None] = queue.Queue()

    def requests() -> Iterator[pb.HelloRequest]:
        while (item := outgoing.get(timeout=10)) is not None:
            yield item

    outgoing.put(pb.HelloRequest(name="one"))
    answers = []
    for answer in stub(proxy, greeter).Chat(requests(), timeout=10):
        answers.append(answer.message)
        outgoing.put(pb.HelloRequest(name="two") if len(answers) == 1 else None)
    assert answers == ["hello one", "hello two"]
    (event,), _ = wait_events(redis_server, 1)
    assert event["endpoint"] == CHAT and event["status"] == "ok"
    assert [m["message"] for m in event["request"]["messages"]] == [{"1": "one"}, {"1": "two"}]
    assert [m["message"] for m in event["response"]["messages"]] == [
        {"1": "hello one"}, {"1": "hello two", "2": 1}]
    sent, got = event["request"]["messages"], event["response"]["messages"]
    assert sent[0]["t"] <= got[0]["t"] <= sent[1]["t"] <= got[1]["t"]


def test_chaos_proxy_faults_grpc_calls(tmp_path: Path, redis_server: RedisServer,
                                       greeter: int) -> None:
    """`tracelab proxy --faults`: a `grpc_status` rule answers a gRPC status in place of the
    upstream (once), a latency rule delays a streaming call that still streams both ways."""
    rules = tmp_path / "chaos.json"
    rules.write_text(json.dumps({"rules": [
        {"id": "down", "kind": "grpc", "endpoint": SAY, "grpc_status": "UNAVAILABLE",
         "details": "try again: 100% down", "times": 1},
        {"id": "slow", "kind": "grpc", "endpoint": CHAT, "latency_ms": 50}]}))
    home = tmp_path / "home"
    running = Proxy(home, "--ssl-insecure", "--redis-url", redis_server.url,
                    "--faults", str(rules))
    try:
        greeter_stub = stub((running, (home / "proxy" / "mitmproxy-ca-cert.pem").read_bytes()),
                            greeter)
        with pytest.raises(grpc.RpcError) as failed:
            greeter_stub.SayHello(pb.HelloRequest(name="ana"), timeout=10)
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        assert failed.value.details() == "try again: 100% down"
        assert greeter_stub.SayHello(pb.HelloRequest(name="ana"), timeout=10).message == \
            "hello ana"  # times: 1, the retry reaches the server
        chat = greeter_stub.Chat(iter([pb.HelloRequest(name="x"), pb.HelloRequest(name="y")]),
                                 timeout=10)
        assert [m.message for m in chat] == ["hello x", "hello y"]
    finally:
        running.stop()
    events, _ = wait_events(redis_server, 3)
    faulted, retried = sorted((e for e in events if e["endpoint"] == SAY),
                              key=lambda e: e["status"] != "error")
    assert faulted["kind"] == "grpc" and faulted["status_code"] == 14
    assert faulted["error"] == {"type": "UNAVAILABLE", "message": "try again: 100% down"}
    assert faulted["tags"]["fault.action"] == "grpc_status"
    assert json.loads(faulted["tags"]["fault.rule"])["id"] == "down"
    assert faulted["request"]["message"] == {"1": "ana"}
    assert retried["status"] == "ok" and "fault" not in retried["tags"]
    (slow,) = (e for e in events if e["endpoint"] == CHAT)
    assert slow["tags"]["fault.action"] == "latency" and slow["status_code"] == 0
    assert [m["message"] for m in slow["response"]["messages"]] == [
        {"1": "hello x"}, {"1": "hello y", "2": 1}]


class CountingGreeter(greeter_server.Greeter):
    """The greeter, counting the calls that reached it."""

    def __init__(self) -> None:
        self.calls = 0

    def SayHello(self, request: pb.HelloRequest, context: grpc.ServicerContext) -> pb.HelloReply:
        self.calls += 1
        return super().SayHello(request, context)


def test_replay_proxy_fails_a_grpc_call_closed(tmp_path: Path, tls: tuple[bytes, bytes]) -> None:
    """The replay proxy must see a gRPC request whole before anything goes upstream: in
    fail mode a call without a recorded answer never reaches the server."""
    servicer = CountingGreeter()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_GreeterServicer_to_server(servicer, server)
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([tls]))
    server.start()
    recording = tmp_path / "recording.jsonl"
    recording.write_bytes(orjson.dumps(http_event("GET", "https://api.example.com/x", 200,
                                                  {"ok": True}, seq=1)) + b"\n")
    home = tmp_path / "home"
    replay = ReplayProxy(home, recording, "--ssl-insecure").ready()
    try:
        ca = (home / "proxy" / "mitmproxy-ca-cert.pem").read_bytes()
        with pytest.raises(grpc.RpcError) as missed:
            stub((replay, ca), port).SayHello(pb.HelloRequest(name="ana"), timeout=10)
        assert missed.value.code() == grpc.StatusCode.UNAVAILABLE  # HTTP 502, as gRPC maps it
    finally:
        report = replay.stop()
        server.stop(None)
    assert servicer.calls == 0
    assert any(line.get("misses") for line in report), report


# -- the decoder on real protobuf serialisations ------------------------------------------------

# Text without control characters (tab and newline aside), as a string field usually holds.
_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs"))
                | st.sampled_from("\t\n"), max_size=40)
_INT32 = st.integers(-(2 ** 31), 2 ** 31 - 1)


@settings(max_examples=200, deadline=None)
@given(name=_TEXT, times=_INT32, password=_TEXT)
def test_decoded_scalars_match_what_protobuf_serialised(name: str, times: int,
                                                        password: str) -> None:
    message = pb.HelloRequest(name=name, times=times, password=password)
    expected = {str(number): value for number, value in ((1, name), (2, times), (3, password))
                if value not in ("", 0)}  # proto3 leaves default values off the wire
    assert decode_message(message.SerializeToString()) == expected


@settings(max_examples=100, deadline=None)
@given(names=st.lists(_TEXT.filter(bool), min_size=2, max_size=4),
       numbers=st.lists(st.integers(1, 2 ** 29 - 1), min_size=1, max_size=3))
def test_nested_and_repeated_fields(names: list[str], numbers: list[int]) -> None:
    proto = descriptor_pb2.FileDescriptorProto(name="a.proto", dependency=names)
    proto.message_type.add(name="M", field=[
        descriptor_pb2.FieldDescriptorProto(name="f", number=n) for n in numbers])
    fields = [{"1": "f", "3": n} for n in numbers]
    assert decode_message(proto.SerializeToString()) == {
        "1": "a.proto", "3": names,
        "4": {"1": "M", "2": fields[0] if len(fields) == 1 else fields}}


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.integers(0, 3000), max_size=8), limit=st.integers(0, 10_000),
       data=st.data())
def test_frames_split_out_of_any_chunking(sizes: list[int], limit: int,
                                          data: st.DataObject) -> None:
    """Frames come whole out of a body however it is cut into chunks; the chunks pass
    unchanged; frames are kept while they add up to the limit (+4 KiB), then only counted."""
    frames = [bytes([i % 2]) + len(body).to_bytes(4, "big") + body
              for i, body in enumerate(bytes([i]) * size for i, size in enumerate(sizes))]
    wire = b"".join(frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=10)))
    chunks = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)])]
    tap = GrpcFrames(started=0.0, limit=limit)
    assert b"".join(tap(chunk) for chunk in chunks) == wire
    assert tap.count == len(frames) and tap.whole
    kept, total = [], 0
    for frame in frames:
        total += len(frame)
        if total > limit + 4096:
            break
        kept.append(frame)
    assert [f.data for f in tap.frames] == kept


def test_bytes_that_are_no_message_are_kept_as_binary() -> None:
    assert decode_message(b"\xff\xff") == {"$tracelab": "binary", "size": 2, "base64": "//8="}
    raw = descriptor_pb2.FieldOptions(uninterpreted_option=[
        descriptor_pb2.UninterpretedOption(string_value=b"\x00\x01\xfe")]).SerializeToString()
    assert decode_message(raw) == {"999": {"7": {"$tracelab": "binary", "size": 3,
                                                 "base64": "AAH+"}}}
