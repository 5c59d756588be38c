"""The replay proxy: a mitmproxy addon that answers every request from a recording.

`tracelab replay` starts it (`python -m tracelab.proxy.replay`) for the programs the Python SDK
cannot answer in-process: curl, a Node program without the SDK, a closed binary. Unlike
mitmproxy's own server replay, which forwards an unknown request to the real server by
default, this proxy fails closed: a request the recording does not hold is answered with
`502`, the header `X-Tracelab-Replay: miss` and the miss explanation (the closest recorded call
and what differs) as the body, and nothing leaves the machine. `--on-miss passthrough` (or
`record`) forwards it instead, and the recording addon records it tagged `replay=passthrough`.

Matching is the SDK's: the live request is turned into the stored request shape by
`tracelab.replay.matching.http_request_view` (same redaction, same body encoding) and handed to
the one `Matcher`, so the proxy and the SDK agree on what a hit is. Every answered request is
recorded as an event of the new run (`source: proxy`, tag `replay=hit|miss|passthrough`) by
the recording addon this class extends, so the replayed execution shows the calls of programs
without an SDK. At shutdown the addon appends its one report line (`TRACELAB_REPLAY_REPORT`
protocol) that `tracelab replay` sums into its verdict.

With `--on-miss passthrough`/`record`, a request carrying `X-Tracelab-Replay-Handled` is one an
SDK in the child process already decided to run live (and records itself): it is forwarded
untouched, not recorded and not counted, so it is never counted twice. In `fail` mode the header
opens nothing: every request is answered from the recording or refused.

With `--faults FILE` (the rules of `tracelab.replay.faults`), each request is first matched
against the fault rules, before the recording, with the SDK's semantics: a `latency` fault
delays the call, which is then answered (and consumes its recording) as usual; `status`,
`reset` and `timeout` answer in place of the recording without consuming it, so the
program's retry gets the recorded answer; the mangling actions (`empty_body`,
`malformed_body`, `truncate`, `stream_cut`) answer with the recorded answer the call would
get (`Matcher.peek`), changed by `Fault.response_event`, again without consuming it (no
recorded answer: a normal miss). A faulted call's event is tagged `replay=fault` plus the
fault's `fault`, `fault.action`, `fault.rule`; it is counted in the report line's `faulted`,
neither a hit nor a miss. The report line also lists `calls`: the
`tracelab.replay.report.call_summary` of every event the proxy recorded, by start time.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from tracelab.proxy.addon import TraceLabAddon, flow_view
from tracelab.replay.report import append_line, call_summary
from tracelab.replay.session import (HANDLED_HEADER, body_bytes, recorded_chunks,
                                     recorded_headers, stream_error)
from tracelab.sdk.recorder import Recorder, current

if TYPE_CHECKING:
    from mitmproxy import http

    from tracelab.replay.faults import FaultSet
    from tracelab.replay.matching import Matcher

SOURCE = "proxy"
ON_MISS_MODES = ("fail", "passthrough", "record")
MISS_HEADER = "X-Tracelab-Replay"
_TAG_KEY = "tracelab.replay"
_ORIGIN_KEY = "tracelab.replay.origin"


def recorded_content(response: dict[str, Any]) -> bytes:
    """The recorded response body; a recorded stream is its chunks joined in order."""
    chunks = recorded_chunks(response)
    if chunks is not None:
        return b"".join(data for _t, data in chunks)
    return body_bytes(response.get("body"))


def wire_headers(response: dict[str, Any]) -> list[tuple[bytes, bytes]]:
    """The recorded headers (minus the wire-only ones) as the bytes pairs mitmproxy takes."""
    return [(name.encode("latin-1", "replace"), value.encode("latin-1", "replace"))
            for name, value in recorded_headers(response)]


def answerable(event: dict[str, Any]) -> bool:
    """An HTTP call the proxy can answer: a recorded request with a method and a URL."""
    request = event.get("request")
    return event.get("kind") in ("http", "llm") and isinstance(request, dict) \
        and isinstance(request.get("url"), str) and isinstance(request.get("method"), str)


def answer(event: dict[str, Any]) -> http.Response:
    """The recorded response; a call that got none (refused, reset) gets the 502 that
    mitmproxy answers such a call with, carrying the recorded error."""
    from mitmproxy import http as mhttp

    response = event.get("response")
    if isinstance(response, dict) and isinstance(response.get("status_code"), int):
        return mhttp.Response.make(response["status_code"], recorded_content(response),
                                   wire_headers(response))
    error = event.get("error") if isinstance(event.get("error"), dict) else {}
    return mhttp.Response.make(
        502, f"{error.get('type', 'Error')}: {error.get('message', 'no response')}\n".encode(),
        {"Content-Type": "text/plain; charset=utf-8", MISS_HEADER: "recorded-error"})


class ChunkServer:
    """A loopback HTTP/1.1 server inside the proxy that plays a recorded stream.

    A response set by an addon leaves mitmproxy in one piece, so a recorded stream is instead
    routed here: its chunks go out one by one (at their recorded offsets scaled by the speed,
    or at once with speed 0) through mitmproxy's normal streaming path, and a stream that failed
    mid-way in the recording is cut after its last recorded chunk, as it was then.
    """

    def __init__(self) -> None:
        self._server: asyncio.AbstractServer | None = None
        self._pending: dict[str, tuple[int, list[tuple[bytes, bytes]], list[tuple[float, bytes]],
                                       bool, float, float]] = {}
        self.port = 0

    async def ensure(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]

    def add(self, status: int, headers: list[tuple[bytes, bytes]],
            chunks: list[tuple[float, bytes]], failed: bool, speed: float) -> str:
        token = secrets.token_hex(16)
        started = asyncio.get_running_loop().time()
        self._pending[token] = (status, headers, chunks, failed, speed, started)
        return token

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            token = head.split(b" ", 2)[1].decode("ascii", "replace").lstrip("/")
            entry = self._pending.pop(token, None)
            if entry is None:
                writer.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n"
                             b"connection: close\r\n\r\n")
                return
            status, headers, chunks, failed, speed, started = entry
            lines = [f"HTTP/1.1 {status} {_reason(status)}".encode()]
            lines += [name + b": " + value for name, value in headers]
            lines += [b"transfer-encoding: chunked", b"connection: close"]
            writer.write(b"\r\n".join(lines) + b"\r\n\r\n")
            await writer.drain()
            loop = asyncio.get_running_loop()
            for t, data in chunks:
                if speed > 0:
                    delay = started + t / 1000 / speed - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                if data:
                    writer.write(b"%x\r\n" % len(data) + data + b"\r\n")
                    await writer.drain()
            if not failed:
                writer.write(b"0\r\n\r\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                IndexError):
            pass
        finally:
            writer.close()

    def close(self) -> None:
        if self._server is not None:
            self._server.close()


def _reason(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Recorded"


class ReplayAddon(TraceLabAddon):
    """Answers requests from a recording through the shared `Matcher`; records the outcomes."""

    def __init__(self, matcher: Matcher, *, on_miss: str = "fail", speed: float = 0.0,
                 report: Path | None = None, faults: FaultSet | None = None) -> None:
        super().__init__(faults=faults)
        if on_miss not in ON_MISS_MODES:
            raise ValueError(f"on_miss must be one of {', '.join(ON_MISS_MODES)}, got {on_miss!r}")
        self.matcher = matcher
        self.on_miss = on_miss
        self.speed = max(0.0, float(speed))
        self.report = report
        self.hits: list[str] = []
        self.misses: list[dict[str, str]] = []
        self.passthrough: list[str] = []
        self.faulted = 0
        self.calls: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._reported = False
        self.chunks = ChunkServer()

    # -- answering ------------------------------------------------------------------------------
    def stream_grpc_request(self, flow: http.HTTPFlow) -> bool:
        """Never: `request` answers from the recording (or fails closed) and must see the
        request before anything of it goes upstream."""
        return False

    @staticmethod
    def live_view(flow: http.HTTPFlow, rec: Recorder | None) -> dict[str, Any]:
        """The live request in the stored event shape the matcher keys on."""
        return flow_view(flow, rec)

    async def request(self, flow: http.HTTPFlow) -> None:
        from mitmproxy import http as mhttp

        from tracelab.replay.matching import Hit, describe

        if flow.response is not None or flow.error is not None:
            return
        if HANDLED_HEADER in flow.request.headers and self.on_miss != "fail":
            del flow.request.headers[HANDLED_HEADER]
            flow.metadata[_TAG_KEY] = None  # an SDK's call: it records it, we do not
            return
        try:
            live = self.live_view(flow, current())
            call = describe(live)
        except Exception as exc:  # a bug of ours must never answer as if it were a hit
            live, call = None, f"{flow.request.method} {flow.request.pretty_host} {flow.request.path}"
            message = f"{call}: the replay proxy could not match it ({type(exc).__name__}: {exc})"
        if live is not None:
            try:
                if await self._fault(flow, live):
                    return
            except Exception as exc:  # never forwarded because of a bug of ours: a miss
                live = None
                message = f"{call}: the replay proxy could not apply its faults " \
                          f"({type(exc).__name__}: {exc})"
        outcome = None
        if live is not None:
            try:
                outcome = self.matcher.take(live)
            except Exception as exc:
                message = f"{call}: the replay proxy could not match it ({type(exc).__name__}: {exc})"
            else:
                message = getattr(outcome, "message", "")
        if isinstance(outcome, Hit):
            event = outcome.event
            with self._lock:
                self.hits.append(str(event.get("event_id")))
            flow.metadata[_TAG_KEY] = "hit"
            if await self._stream(flow, event):
                return
            if self.speed > 0:
                await asyncio.sleep(float(event.get("latency_ms") or 0) / 1000 / self.speed)
            self._answer(flow, answer(event))
            return
        if self.on_miss == "fail":
            with self._lock:
                self.misses.append({"call": call, "message": message})
            flow.metadata[_TAG_KEY] = "miss"
            self._answer(flow, mhttp.Response.make(
                502, f"tracelab replay: no recorded answer. {message}\n".encode(),
                {"Content-Type": "text/plain; charset=utf-8", MISS_HEADER: "miss"}))
            return
        with self._lock:
            self.passthrough.append(call)
        flow.metadata[_TAG_KEY] = "passthrough"

    async def _fault(self, flow: http.HTTPFlow, live: dict[str, Any]) -> bool:
        """Apply the fault this call gets, before matching; True when the fault answered it.

        As in the SDK's replay: the fault's latency first; `latency` alone then lets the call
        be answered from the recording as usual (it consumes its recorded answer); status,
        reset and timeout answer in its place without consuming anything (the retry gets the
        recorded answer); the mangling actions answer with the recorded answer `take` would
        give, changed by `Fault.response_event`, also without consuming it (no recorded
        answer: no fault, a normal miss).
        """
        from tracelab.replay.matching import Hit

        fault = self.decide(flow, live)
        if fault is None:
            return False
        if fault.action == "latency":
            await self.apply_fault(flow, fault, upstream=False)
            return False
        def peek() -> dict[str, Any] | None:
            peeked = self.matcher.peek(live)
            return peeked.event if isinstance(peeked, Hit) else None

        event = fault.replay_answer(peek)
        if event is None:
            return False
        with self._lock:
            self.faulted += 1
        flow.metadata[_TAG_KEY] = "fault"
        if await self.apply_fault(flow, fault, upstream=False):
            return True
        if not await self._stream(flow, event):
            self._answer(flow, answer(event))
        return True

    async def _stream(self, flow: http.HTTPFlow, event: dict[str, Any]) -> bool:
        """Route a recorded stream through the chunk server; False when it is not one."""
        response = event.get("response")
        if not isinstance(response, dict) or not isinstance(response.get("status_code"), int) \
                or flow.request.method.upper() == "HEAD":
            return False
        chunks = recorded_chunks(response)
        if chunks is None:
            return False
        await self.chunks.ensure()
        token = self.chunks.add(response["status_code"], wire_headers(response), chunks,
                                stream_error(response) is not None, self.speed)
        request = flow.request
        flow.metadata[_ORIGIN_KEY] = (request.scheme, request.host, request.port, request.path,
                                      request.headers.get("host"))
        request.scheme, request.host, request.port = "http", "127.0.0.1", self.chunks.port
        request.path = f"/{token}"
        return True

    @staticmethod
    def _restore(flow: http.HTTPFlow) -> None:
        """Put back the URL the client asked for (recorded in the event, not the chunk server)."""
        origin = flow.metadata.pop(_ORIGIN_KEY, None)
        if origin is not None:
            request = flow.request
            request.scheme, request.host, request.port, request.path, host = origin
            if host is not None:
                request.headers["host"] = host

    @staticmethod
    def _answer(flow: http.HTTPFlow, response: http.Response) -> None:
        from tracelab.proxy.faults import set_response

        set_response(flow, response)

    # -- recording the outcome ------------------------------------------------------------------
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        self._restore(flow)
        super().responseheaders(flow)

    def response(self, flow: http.HTTPFlow) -> None:
        self._restore(flow)
        if flow.metadata.get(_TAG_KEY, "") is None:
            return
        super().response(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._restore(flow)
        if flow.metadata.get(_TAG_KEY, "") is None:
            return
        super().error(flow)

    def event_tags(self, flow: http.HTTPFlow) -> dict[str, str]:
        """The fault's tags and the replay outcome: hit | miss | passthrough | fault."""
        return {**super().event_tags(flow),
                "replay": flow.metadata.get(_TAG_KEY) or "passthrough"}

    def observe(self, event: dict[str, Any]) -> None:
        summary = call_summary(event)
        with self._lock:
            self.calls.append(summary)

    # -- the report -----------------------------------------------------------------------------
    def report_line(self) -> dict[str, Any]:
        with self._lock:
            return {"source": SOURCE, "pid": os.getpid(), "hits": list(self.hits),
                    "misses": list(self.misses), "passthrough": list(self.passthrough),
                    "faulted": self.faulted,
                    "calls": sorted(self.calls, key=lambda c: c.get("t") or 0)}

    def write_report(self) -> None:
        """Append this process's one line to the report file (once)."""
        if self.report is None or self._reported:
            return
        self._reported = True
        append_line(self.report, self.report_line())

    def done(self) -> None:
        super().done()
        self.chunks.close()
        self.write_report()


def _json_list(text: str, name: str) -> tuple[str, ...]:
    value = orjson.loads(text or "[]")
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{name} must be a JSON list of strings, got {text!r}")
    return tuple(value)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m tracelab.proxy.replay`: the replay proxy as `tracelab replay` starts it.

    The new run's workflow, run id and tags come from the environment (TRACELAB_WORKFLOW_NAME,
    TRACELAB_RUN_ID, TRACELAB_TAGS), as for any SDK process.
    """
    parser = argparse.ArgumentParser(prog="python -m tracelab.proxy.replay")
    parser.add_argument("--recording", required=True, type=Path)
    parser.add_argument("--port", required=True, type=int)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--on-miss", choices=ON_MISS_MODES, default="fail")
    parser.add_argument("--speed", type=float, default=0.0)
    parser.add_argument("--ignore", default="[]", help="JSON list of ignore rules")
    parser.add_argument("--headers", default="[]", help="JSON list of header names")
    parser.add_argument("--report", type=Path)
    parser.add_argument("--ssl-insecure", action="store_true")
    parser.add_argument("--faults", type=Path, help="fault rules file (YAML or JSON)")
    args = parser.parse_args(argv)

    import tracelab
    from tracelab.proxy.runner import ProxySettings, ProxyStartError, default_ca_dir, run_proxy
    from tracelab.replay.matching import Matcher, MatchOptions, parse_ignore
    from tracelab.replay.recording import load_recording

    faults = None
    try:
        recording = load_recording(args.recording)
        options = MatchOptions(
            ignore=tuple(parse_ignore(rule) for rule in _json_list(args.ignore, "--ignore")),
            headers=tuple(h.lower() for h in _json_list(args.headers, "--headers")))
        if args.faults is not None:
            from tracelab.replay.faults import FaultRuleError, FaultSet, load_rules

            try:
                faults = FaultSet(load_rules(args.faults))
            except FaultRuleError as exc:
                print("tracelab replay proxy: invalid fault rules:\n" + "\n".join(
                    f"  {reason}" for reason in exc.errors), file=sys.stderr)
                return 2
    except (ValueError, OSError) as exc:
        print(f"tracelab replay proxy: {exc}", file=sys.stderr)
        return 2
    addon = ReplayAddon(Matcher(filter(answerable, recording.events), options), on_miss=args.on_miss,
                        speed=args.speed, report=args.report, faults=faults)
    settings = ProxySettings(
        host=args.host, port=args.port, ssl_insecure=args.ssl_insecure, confdir=default_ca_dir(),
        # Fail closed means no upstream connection unless a request is forwarded: no eager
        # connect on CONNECT, no peek at the upstream certificate.
        extra_options=(("connection_strategy", "lazy"), ("upstream_cert", False)),
        run_lifecycle=False)  # the replayed program's run: its SDK starts and ends it
    tracelab.init(service_name=os.environ.get("TRACELAB_SERVICE_NAME") or "proxy",
                  lifecycle=False)
    try:
        run_proxy(settings, addon)
    except ProxyStartError as exc:
        print(f"tracelab replay proxy: {exc}", file=sys.stderr)
        return exc.exit_status
    finally:
        addon.write_report()
        tracelab.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
