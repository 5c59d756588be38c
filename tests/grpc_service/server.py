"""A real `grpc.server` on a free loopback port serving greeter.proto's Greeter.

Names steer it: `fail` aborts with NOT_FOUND, `echo-auth` with PERMISSION_DENIED quoting the
`authorization` metadata, `fail-mid` sends one message of a stream then
aborts with UNAVAILABLE, `slow` waits between streamed messages (for cancellation tests).
Every call gets the trailing metadata `x-served-by: greeter-1`, and `x-echo` from the
request metadata comes back as initial metadata.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent import futures

import grpc

from grpc_service import greeter_pb2, greeter_pb2_grpc


class Greeter(greeter_pb2_grpc.GreeterServicer):
    def _common(self, context: grpc.ServicerContext) -> None:
        echo = [v for k, v in context.invocation_metadata() if k == "x-echo"]
        if echo:
            context.send_initial_metadata((("x-echo", echo[0]),))
        context.set_trailing_metadata((("x-served-by", "greeter-1"),))

    def SayHello(self, request: greeter_pb2.HelloRequest,
                 context: grpc.ServicerContext) -> greeter_pb2.HelloReply:
        self._common(context)
        if request.name == "fail":
            context.abort(grpc.StatusCode.NOT_FOUND, "no such person: fail")
        if request.name == "echo-auth":  # a server quoting the credential it refuses
            auth = dict(context.invocation_metadata()).get("authorization", "")
            context.abort(grpc.StatusCode.PERMISSION_DENIED, f"refused: {auth}")
        return greeter_pb2.HelloReply(message=f"hello {request.name}", index=request.times)

    def CountUp(self, request: greeter_pb2.HelloRequest,
                context: grpc.ServicerContext) -> Iterator[greeter_pb2.HelloReply]:
        self._common(context)
        for i in range(request.times):
            if request.name == "fail-mid" and i == 1:
                context.abort(grpc.StatusCode.UNAVAILABLE, "went away mid-stream")
            if request.name == "slow" and i:
                time.sleep(0.2)
            yield greeter_pb2.HelloReply(message=f"{request.name} {i}", index=i)

    def Collect(self, request_iterator: Iterator[greeter_pb2.HelloRequest],
                context: grpc.ServicerContext) -> greeter_pb2.HelloReply:
        self._common(context)
        names = [r.name for r in request_iterator]
        return greeter_pb2.HelloReply(message="hello " + "+".join(names), index=len(names))

    def Chat(self, request_iterator: Iterator[greeter_pb2.HelloRequest],
             context: grpc.ServicerContext) -> Iterator[greeter_pb2.HelloReply]:
        self._common(context)
        for i, request in enumerate(request_iterator):
            yield greeter_pb2.HelloReply(message=f"hello {request.name}", index=i)


def start(tls: tuple[bytes, bytes] | None = None) -> tuple[grpc.Server, int]:
    """A started server and its port on 127.0.0.1 (stop it with `server.stop(None)`);
    `tls`: (private key, certificate chain) PEM for a TLS port."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    greeter_pb2_grpc.add_GreeterServicer_to_server(Greeter(), server)
    if tls is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([tls]))
    server.start()
    return server, port
