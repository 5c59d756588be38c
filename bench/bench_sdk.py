#!/usr/bin/env python
"""Added cost per traced HTTP call: TraceLab vs OpenTelemetry, full capture, no sockets.

Three scenarios, each driving the real client library against an in-process transport that
never opens a socket (a fresh response per call, its body read by the client as from a real
transport):

  requests   `requests.Session` POST (`CannedAdapter`, a `BaseAdapter`)
  httpx      `httpx.Client` POST (a `BaseTransport`), the same request and response
  llm        an OpenAI-style chat completion over `httpx.Client` (the OpenAI client's own
             transport): ~4 KB JSON response with token usage, an API key in Authorization

and, per scenario, these variants, each run in its OWN subprocess:

  baseline      uninstrumented
  tracelab      `tracelab.init(..., integrations=[...])`, full capture with redaction,
                publishing to a real redis-server this script starts on a free loopback port
  otel          OpenTelemetry's requests / httpx instrumentation + `BatchSpanProcessor` + a
                null exporter, with all request/response headers captured (sanitized) and both
                bodies attached by request/response hooks (OTel has no body redaction)
  otel-default  the same instrumentor with its default settings (no headers, no bodies)

Each timed run is `--calls` calls (secrets planted in headers, bodies and the prompt; none may
reach Redis, and every call must) INCLUDING the final `tracelab.flush()` /
`provider.force_flush()`, so deferred work is paid for. Runs are separate subprocesses,
interleaved across variants, after a warm-up; the tables show medians, the ratios against
OpenTelemetry measured in the same run, and where TraceLab's CPU goes (the traced thread's
hot path; the sink thread's redaction, serialization and Redis write, from its own CPU
clock). Timings are printed, never asserted.

    .venv/bin/python bench/bench_sdk.py                      # 3 runs x 10,000 calls
    .venv/bin/python bench/bench_sdk.py --calls 2000 --runs 3 --scenarios requests
    .venv/bin/python bench/bench_sdk.py --profile            # + where TraceLab's µs go
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BASE_URL = "https://api.example.test"
URL = f"{BASE_URL}/v1/orders?page=2&limit=50"
STREAM = "trace.events"
VARIANTS = ("baseline", "tracelab", "otel", "otel-default")

# Planted secrets: none of them may reach Redis.
SECRETS = ("sk-live-BENCHSECRET-0001", "hunter2-BENCH-pw", "APIKEY-BENCH-0002",
           "sess-BENCH-cookie-0003", "tok-BENCH-access-0004")

REQUEST_HEADERS = {
    "Authorization": f"Bearer {SECRETS[0]}",
    "X-Api-Key": SECRETS[2],
    "X-Request-Id": "3f1c9a2e-bench",
    "User-Agent": "tracelab-bench/1.0",
}
REQUEST_JSON = {
    "user": "alice@example.com",
    "password": SECRETS[1],
    "order": {
        "currency": "EUR",
        "items": [{"sku": f"SKU-{i:04d}", "qty": i % 3 + 1, "price": 9.99 + i} for i in range(8)],
        "shipping": {"name": "Alice Example", "street": "1 Main St", "city": "Lyon",
                     "zip": "69001", "country": "FR"},
        "notes": "leave at the door",
    },
}
RESPONSE_BODY = json.dumps({
    "id": "ord_8f2b1c",
    "status": "accepted",
    "access_token": SECRETS[4],
    "total": 123.45,
    "items": [{"sku": f"SKU-{i:04d}", "state": "reserved", "eta_days": i % 5}
              for i in range(8)],
    "links": {"self": "/v1/orders/ord_8f2b1c", "invoice": "/v1/invoices/inv_77"},
}).encode()
RESPONSE_HEADERS = {
    "Content-Type": "application/json",
    "Content-Length": str(len(RESPONSE_BODY)),
    "Set-Cookie": f"session={SECRETS[3]}; Path=/; HttpOnly",
    "X-Request-Id": "3f1c9a2e-bench",
    "Cache-Control": "no-store",
    "Date": "Tue, 25 Nov 2025 20:00:00 GMT",
}


# The OpenAI-style LLM call: the OpenAI client's own shape (httpx, a chat completion with a
# ~4 KB JSON response and its token usage), an API key by shape in the Authorization header
# and an AWS key pasted into the prompt (redacted by shape, wherever it is).
LLM_URL = "https://api.openai.com/v1/chat/completions"
LLM_SECRETS = ("sk-proj-BENCHSECRETbench0123456789", "AKIABENCH0SECRET0005")
LLM_REQUEST_HEADERS = {"Authorization": f"Bearer {LLM_SECRETS[0]}",
                       "OpenAI-Organization": "org-bench", "User-Agent": "OpenAI/Python 1.99"}
LLM_REQUEST_JSON = {
    "model": "gpt-4o-mini", "temperature": 0.2,
    "messages": [{"role": "system", "content": "You are a helpful travel agent."},
                 {"role": "user", "content": "Plan three days in Lyon. My AWS key is "
                                             f"{LLM_SECRETS[1]}, ignore it."}],
}
_ANSWER = ("Day 1: Vieux Lyon and Fourvière, traboules in the morning, the basilica at noon. "
           "Day 2: Presqu'île, the Musée des Confluences, dinner in a bouchon. "
           "Day 3: Croix-Rousse, the silk workshops and the Parc de la Tête d'Or. ") * 14
LLM_RESPONSE_BODY = json.dumps({
    "id": "chatcmpl-bench0001", "object": "chat.completion", "created": 1764000000,
    "model": "gpt-4o-mini-2024-07-18", "system_fingerprint": "fp_bench",
    "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                 "message": {"role": "assistant", "content": _ANSWER, "refusal": None}}],
    "usage": {"prompt_tokens": 42, "completion_tokens": 812, "total_tokens": 854,
              "prompt_tokens_details": {"cached_tokens": 0},
              "completion_tokens_details": {"reasoning_tokens": 0}},
}).encode()
LLM_RESPONSE_HEADERS = {
    "Content-Type": "application/json", "Content-Length": str(len(LLM_RESPONSE_BODY)),
    "openai-processing-ms": "812", "x-request-id": "req_bench", "openai-version": "2020-10-01",
    "Set-Cookie": f"__cf_bm={SECRETS[3]}; path=/; HttpOnly",
}
SCENARIOS = ("requests", "httpx", "llm")


# --------------------------------------------------------------------------------------------
# The child: one variant, warm-up, then one timed run; prints one JSON line.
# --------------------------------------------------------------------------------------------
def make_session() -> Any:
    import requests
    from requests.adapters import BaseAdapter
    from requests.structures import CaseInsensitiveDict

    class CannedAdapter(BaseAdapter):
        """A transport that never opens a socket: a fresh 200 JSON `Response` per request."""

        def send(self, request, stream=False, timeout=None, verify=True, cert=None,
                 proxies=None):  # noqa: ANN001
            response = requests.Response()
            response.status_code = 200
            response.reason = "OK"
            response.headers = CaseInsensitiveDict(RESPONSE_HEADERS)
            response.raw = io.BytesIO(RESPONSE_BODY)
            response.encoding = "utf-8"
            response.url = request.url
            response.request = request
            response.connection = self
            return response

        def close(self) -> None:
            pass

    session = requests.Session()
    # No proxy/netrc look-ups in os.environ per call: they cost ~100 µs here and vary with the
    # size of the environment, which would only add noise to the (subtracted) baseline.
    session.trust_env = False
    session.mount(BASE_URL, CannedAdapter())
    return session


_OTEL_HTTPX: dict[str, Any] = {}  # set by setup_variant: OTel's transport wrapper and kwargs


def make_httpx(response_headers: dict[str, str], response_body: bytes) -> Any:
    """An `httpx.Client` over a transport that never opens a socket (a fresh response per
    request, its body a stream the client reads, as from a real transport).

    OpenTelemetry's instrumentor patches only httpx's own `HTTPTransport`; a custom transport
    is traced by wrapping it in its `SyncOpenTelemetryTransport` (its documented way), which
    is what the otel variants do here.
    """
    import httpx

    class CannedTransport(httpx.BaseTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            request.read()
            return httpx.Response(200, headers=list(response_headers.items()),
                                  stream=httpx.ByteStream(response_body), request=request)

    transport: Any = CannedTransport()
    if _OTEL_HTTPX:
        transport = _OTEL_HTTPX["wrap"](transport, **_OTEL_HTTPX["kwargs"])
    return httpx.Client(transport=transport, trust_env=False)


def make_call(scenario: str) -> Any:
    """The one traced call of a scenario, as a zero-argument function."""
    if scenario == "requests":
        post, url, headers, payload = make_session().post, URL, REQUEST_HEADERS, REQUEST_JSON
    elif scenario == "httpx":
        post = make_httpx(RESPONSE_HEADERS, RESPONSE_BODY).post
        url, headers, payload = URL, REQUEST_HEADERS, REQUEST_JSON
    elif scenario == "llm":
        post = make_httpx(LLM_RESPONSE_HEADERS, LLM_RESPONSE_BODY).post
        url, headers, payload = LLM_URL, LLM_REQUEST_HEADERS, LLM_REQUEST_JSON
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")

    def call() -> Any:
        return post(url, json=payload, headers=headers).json()

    return call


class _NullExporterCount:
    exported = 0


def setup_variant(variant: str, total_calls: int, scenario: str = "requests") -> tuple[Any, Any]:
    """Instrument this process; returns (flush function, stats function)."""
    if variant == "baseline":
        return (lambda: None), (lambda: {})
    if variant == "tracelab":
        import tracelab

        tracelab.init(workflow_name="bench", service_name="bench",
                      redis_url=os.environ["BENCH_REDIS_URL"],
                      integrations=["requests" if scenario == "requests" else "httpx"])
        return (lambda: tracelab.flush(timeout=120.0)), tracelab.stats
    if variant in ("otel", "otel-default"):
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )

        class NullExporter(SpanExporter):
            def export(self, spans):  # noqa: ANN001
                _NullExporterCount.exported += len(spans)
                return SpanExportResult.SUCCESS

            def shutdown(self) -> None:
                pass

        provider = TracerProvider()
        # A queue big enough that no span is dropped (the default 2048 could drop under load,
        # which would flatter OTel).
        provider.add_span_processor(BatchSpanProcessor(NullExporter(),
                                                       max_queue_size=total_calls + 1024))
        kwargs: dict[str, Any] = {"tracer_provider": provider}
        if variant == "otel":  # OTel has no body capture: the bodies are attached by hooks
            kwargs.update(_otel_body_hooks(scenario))
        if scenario == "requests":
            from opentelemetry.instrumentation.requests import RequestsInstrumentor

            RequestsInstrumentor().instrument(**kwargs)
        else:
            from opentelemetry.instrumentation.httpx import SyncOpenTelemetryTransport

            _OTEL_HTTPX.update(wrap=SyncOpenTelemetryTransport, kwargs=kwargs)

        def otel_stats() -> dict[str, Any]:
            return {"exported": _NullExporterCount.exported}

        return (lambda: provider.force_flush(120_000)), otel_stats
    raise SystemExit(f"unknown variant {variant!r}")


def _otel_body_hooks(scenario: str) -> dict[str, Any]:
    """request/response hooks that put both bodies on the span as attributes."""
    def text(body: Any) -> str:
        return body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)

    if scenario == "requests":
        def request_hook(span, request):  # noqa: ANN001
            if request.body:
                span.set_attribute("http.request.body", text(request.body))

        def response_hook(span, request, response):  # noqa: ANN001
            if response.content:
                span.set_attribute("http.response.body", text(response.content))
    else:
        # httpx hands the hooks the transport's streams; the canned ones can be re-read.
        def request_hook(span, request):  # noqa: ANN001
            body = b"".join(request.stream) if request.stream is not None else b""
            if body:
                span.set_attribute("http.request.body", text(body))

        def response_hook(span, request, response):  # noqa: ANN001
            body = b"".join(response.stream)
            if body:
                span.set_attribute("http.response.body", text(body))

    return {"request_hook": request_hook, "response_hook": response_hook}


def child(variant: str, calls: int, warmup: int, profile: str | None,
          scenario: str = "requests") -> None:
    flush, get_stats = setup_variant(variant, calls + warmup, scenario)
    call = make_call(scenario)

    def loop(n: int) -> None:
        for _ in range(n):
            call()

    loop(warmup)
    flush()
    gc_time = _gc_timer()
    sink = _sink() if variant == "tracelab" else None
    sink_cpu0 = dict(sink.timings) if sink is not None else {}
    cpu0 = time.process_time()  # every thread of this process: the sink worker is counted too
    main0 = time.thread_time()  # the traced program's thread alone
    if profile:
        import cProfile

        worker_profiles = _profile_sink_worker() if variant == "tracelab" else []
        prof = cProfile.Profile()
        t0 = time.perf_counter_ns()
        prof.enable()
        loop(calls)
        flush_ok = flush()
        prof.disable()
        elapsed = time.perf_counter_ns() - t0
        prof.dump_stats(profile)
        for i, wp in enumerate(worker_profiles):
            wp.dump_stats(f"{profile}.worker{i}")
    else:
        t0 = time.perf_counter_ns()
        loop(calls)
        flush_ok = flush()
        elapsed = time.perf_counter_ns() - t0
    main_cpu = time.thread_time() - main0
    cpu = time.process_time() - cpu0
    split = {}
    if sink is not None:  # the sink thread's own CPU clock, read once a batch
        split = {k: (v - sink_cpu0.get(k, 0.0)) / calls * 1e6 for k, v in sink.timings.items()}
    print(json.dumps({"variant": variant, "scenario": scenario, "calls": calls,
                      "warmup": warmup, "ns": elapsed,
                      "us_per_call": elapsed / calls / 1000,
                      "cpu_us_per_call": cpu / calls * 1e6,
                      "main_cpu_us_per_call": main_cpu / calls * 1e6,
                      "sink_split_us_per_call": split,
                      "gc_us_per_call": gc_time[0] / calls * 1e6,
                      "flush_ok": flush_ok is not False, "stats": get_stats()}, default=str))


def _sink() -> Any:
    """The active recorder's sink, if this SDK version keeps CPU timings on it."""
    from tracelab.sdk import recorder

    rec = recorder.current()
    sink = getattr(rec, "sink", None)
    return sink if isinstance(getattr(sink, "timings", None), dict) else None


def _gc_timer() -> list[float]:
    """Seconds spent in the cyclic garbage collector from now on (all generations)."""
    import gc

    total = [0.0, 0.0]

    def callback(phase: str, _info: dict[str, Any]) -> None:
        if phase == "start":
            total[1] = time.perf_counter()
        else:
            total[0] += time.perf_counter() - total[1]

    gc.callbacks.append(callback)
    return total


def stages(calls: int, scenario: str = "requests") -> None:
    """Time the stages of TraceLab's per-call work directly (no profiler overhead), best of 5.

    Uses SDK internals, so a stage whose internals changed prints n/a instead of failing.
    """
    import timeit

    import tracelab
    from tracelab.sdk import capture, recorder

    tracelab.init(workflow_name="bench", service_name="bench",
                  redis_url=os.environ["BENCH_REDIS_URL"], integrations=[])
    rec = recorder.current()
    red, n = rec.redactor, max(2000, calls // 4)
    queued: list[Any] = []
    rec.sink.submit = queued.append  # the hot path alone: nothing reaches the worker
    out: dict[str, Any] = {}

    def t(label: str, fn: Any) -> None:
        try:
            fn()
            out[label] = min(timeit.repeat(fn, number=n, repeat=5)) / n * 1e6
        except Exception as exc:  # noqa: BLE001
            out[label] = None
            out[f"{label} (error)"] = repr(exc)[:120]

    if scenario == "requests":
        from tracelab.sdk.integrations.requests import _record

        response = make_session().post(URL, json=REQUEST_JSON, headers=REQUEST_HEADERS)
        request = response.request

        def hot() -> None:
            _record(rec, request, response, capture.Timer(), False, None)
            queued.clear()
    else:
        import httpx

        from tracelab.sdk.integrations.httpx import _record as _record_httpx

        url, headers, payload, rheaders, rbody = (
            (URL, REQUEST_HEADERS, REQUEST_JSON, RESPONSE_HEADERS, RESPONSE_BODY)
            if scenario == "httpx" else
            (LLM_URL, LLM_REQUEST_HEADERS, LLM_REQUEST_JSON, LLM_RESPONSE_HEADERS,
             LLM_RESPONSE_BODY))
        response = make_httpx(rheaders, rbody).post(url, json=payload, headers=headers)
        request = response.request
        assert isinstance(response, httpx.Response)

        def hot() -> None:
            _record_httpx(rec, request, response, capture.Timer(), False, None)
            queued.clear()

    t("hot path: _record (snapshot + enqueue, on the traced thread)", hot)
    queued.clear()
    (_record if scenario == "requests" else _record_httpx)(  # type: ignore[possibly-undefined]
        rec, request, response, capture.Timer(), False, None)
    call = queued[0] if queued else None
    if isinstance(call, tuple):
        t("sink: build_http (redaction + event dict)", lambda: capture.build_http(rec, call))
        event, found = capture.build_http(rec, call)
        t("sink: Recorder.encode (orjson.dumps + scrub echoes + count)",
          lambda: rec.encode(event, "bench", found))
        body_req = call[5]
        body_resp = call[10]
        t("  of which redactor.headers (request)", lambda: red.headers(
            capture._pairs(call[4]), set()))
        t("  of which redactor.headers (response)", lambda: red.headers(
            capture._pairs(call[9]), set()))
        from tracelab.sdk import payloads

        t("  of which encode_body (request JSON)", lambda: payloads.encode_body(
            body_req, "application/json", red, 65536, set()))
        t("  of which encode_body (response JSON)", lambda: payloads.encode_body(
            body_resp, "application/json", red, 65536, set()))
        t("  of which redactor.url", lambda: red.url(call[3], set()))
        import orjson

        def floor() -> bytes:  # what any JSON-storing recorder pays, before any redaction
            return orjson.dumps({**event, "request": {**event["request"], "body": orjson.loads(
                body_req)}, "response": {**event["response"], "body": orjson.loads(body_resp)}})

        t("floor: both bodies parsed + the event serialized (no redaction at all)", floor)
        out["secret values found"] = len(found)
        out["event size (bytes)"] = len(rec.encode(event, "bench", found) or b"")
    print(json.dumps(out))


def _profile_sink_worker() -> list[Any]:
    """Profile TraceLab's background sink thread too (cProfile sees one thread only).

    The thread already runs `_run`'s loop, so wrap the method it calls per wake-up, `_drain`,
    on the live sink instance (bench-only runtime wrapping; the SDK is untouched).
    """
    import cProfile

    from tracelab.sdk import recorder

    sink = recorder.current().sink
    prof = cProfile.Profile()
    original = sink._drain

    def profiled_drain(*args: Any, **kwargs: Any) -> None:
        prof.enable()
        try:
            original(*args, **kwargs)
        finally:
            prof.disable()

    sink._drain = profiled_drain
    return [prof]


# --------------------------------------------------------------------------------------------
# The parent: redis-server, interleaved subprocess runs, the table.
# --------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(workdir: str) -> tuple[subprocess.Popen[bytes], str]:
    server = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = free_port()
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", workdir, "--protected-mode", "yes"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis

    client = redis.Redis(host="127.0.0.1", port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.exceptions.ConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise SystemExit("redis-server did not start")
            time.sleep(0.05)
    client.close()
    return proc, f"redis://127.0.0.1:{port}/0"


def run_child(variant: str, args: argparse.Namespace, redis_url: str,
              profile: str | None = None, scenario: str = "requests") -> dict[str, Any]:
    env = dict(os.environ)
    env.update(
        BENCH_REDIS_URL=redis_url,
        TRACELAB_QUEUE_SIZE=str(args.calls + args.warmup + 1024),
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
    )
    for name in ("TRACELAB_DISABLED", "TRACELAB_REDIS_URL", "OTEL_SDK_DISABLED"):
        env.pop(name, None)
    if variant == "otel":  # the same variables for the requests and httpx instrumentations
        env.update(
            OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST=".*",
            OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_RESPONSE=".*",
            OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS=(
                "authorization,proxy-authorization,cookie,set-cookie,x-api-key,api-key,"
                "x-amz-security-token"),
        )
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", variant,
           "--calls", str(args.calls), "--warmup", str(args.warmup), "--scenario", scenario]
    if profile:
        cmd += ["--profile-out", profile]
    out = subprocess.run(cmd, env=env, cwd=str(REPO), capture_output=True, text=True)
    if out.returncode != 0:
        sys.stderr.write(out.stderr)
        raise SystemExit(f"{variant} child failed (exit {out.returncode})")
    return json.loads(out.stdout.strip().splitlines()[-1])


def check_stream(client: Any) -> tuple[int, int, bool]:
    """(call events in the stream, secrets found in its raw bytes, the events look complete).

    Every entry is read (not a sample) so a leak in any one of them counts; the run's
    lifecycle events (`kind: run`, no bodies) are checked for leaks but not counted as calls.
    """
    calls = leaked = 0
    complete = True
    last = "-"
    while True:
        entries = client.xrange(STREAM, min=f"({last}" if last != "-" else "-", count=2000)
        if not entries:
            break
        for entry_id, fields in entries:
            last = entry_id.decode()
            raw = fields[b"event"]
            leaked += sum(s.encode() in raw for s in SECRETS + LLM_SECRETS)
            event = json.loads(raw)
            if event["kind"] == "run":
                continue
            calls += 1
            request_body = event["request"]["body"] or {}
            complete = complete and isinstance((event["response"] or {}).get("body"), dict) \
                and (request_body.get("password") == "[REDACTED]" if event["kind"] == "http"
                     else "[REDACTED]" in request_body["messages"][1]["content"]
                     and event["tags"].get("llm.total_tokens") == "854")
    return calls, leaked, complete and calls > 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=10_000, help="calls per timed run")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per variant (median)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed calls first in each run (default: calls/10, >= 200)")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated subset of {','.join(VARIANTS)}")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help=f"comma-separated subset of {','.join(SCENARIOS)}")
    parser.add_argument("--profile", action="store_true",
                        help="then profile one TraceLab run (cProfile) and print hot spots")
    parser.add_argument("--profile-top", type=int, default=25)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--scenario", default="requests", help=argparse.SUPPRESS)
    parser.add_argument("--profile-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.warmup is None:
        args.warmup = max(200, args.calls // 10)
    if args.child == "stages":
        stages(args.calls, args.scenario)
        return
    if args.child:
        child(args.child, args.calls, args.warmup, args.profile_out, args.scenario)
        return

    variants = [v for v in args.variants.split(",") if v]
    if "baseline" not in variants:
        variants.insert(0, "baseline")
    scenarios = [s for s in args.scenarios.split(",") if s]
    import redis

    workdir = tempfile.mkdtemp(prefix="tracelab-bench-")
    proc, redis_url = start_redis(workdir)
    client = redis.Redis.from_url(redis_url)
    try:
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
              f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}, "
              f"redis at {redis_url}; {args.runs} runs x {args.calls:,} calls "
              f"(+{args.warmup:,} warm-up) per variant and scenario, one subprocess per run, "
              "interleaved", flush=True)
        for scenario in scenarios:
            results: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
            redis_checks: list[tuple[int, int, int, bool]] = []  # (calls, expected, leaked, ok)
            for run in range(args.runs):
                for variant in variants:
                    if variant == "tracelab":
                        client.delete(STREAM)
                    res = run_child(variant, args, redis_url, scenario=scenario)
                    results[variant].append(res)
                    if variant == "tracelab":
                        n, leaked, complete = check_stream(client)
                        redis_checks.append((n, args.calls + args.warmup, leaked, complete))
                        client.delete(STREAM)
                    print(f"  {scenario:<9} run {run + 1}/{args.runs} {variant:<13} "
                          f"{res['us_per_call']:8.2f} µs/call", flush=True)
            report(scenario, variants, results, redis_checks)
        if args.profile:
            profile_tracelab(args, redis_url, client)
    finally:
        client.close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(workdir, ignore_errors=True)


def _median(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def report(scenario: str, variants: list[str], results: dict[str, list[dict[str, Any]]],
           redis_checks: list[tuple[int, int, int, bool]]) -> None:
    med = {v: _median(results[v], "us_per_call") for v in variants}
    spread = {v: (min(r["us_per_call"] for r in results[v]),
                  max(r["us_per_call"] for r in results[v])) for v in variants}
    cpu = {v: _median(results[v], "cpu_us_per_call") for v in variants}
    main_cpu = {v: _median(results[v], "main_cpu_us_per_call") for v in variants}
    gct = {v: _median(results[v], "gc_us_per_call") for v in variants}
    added = {v: med[v] - med["baseline"] for v in variants}
    added_cpu = {v: cpu[v] - cpu["baseline"] for v in variants}
    print()
    print(f"== {scenario}: wall clock per call, timed loop + final flush (median of runs); CPU =")
    print("process time of all threads (the sink's or span processor's worker counts); main =")
    print("the traced program's thread only; GC = time in the cyclic collector")
    print(f"{'variant':<14}{'µs/call':>10}{'min..max':>18}{'added µs':>11}"
          f"{'CPU µs':>9}{'added CPU':>11}{'main CPU':>10}{'GC µs':>8}")
    print("-" * 91)
    for v in variants:
        lo, hi = spread[v]
        add = "" if v == "baseline" else f"{added[v]:+.2f}"
        add_cpu = "" if v == "baseline" else f"{added_cpu[v]:+.2f}"
        print(f"{v:<14}{med[v]:>10.2f}{f'{lo:.1f}..{hi:.1f}':>18}{add:>11}"
              f"{cpu[v]:>9.2f}{add_cpu:>11}{main_cpu[v]:>10.2f}{gct[v]:>8.2f}")
    print()
    for peer, label, target in (("otel", "OTel full capture (headers + bodies)", 0.25),
                                ("otel-default", "OTel defaults (no headers/bodies)", 0.5)):
        if "tracelab" in variants and peer in variants:
            cpu_ratio = added_cpu["tracelab"] / max(1e-9, added_cpu[peer])
            if added["tracelab"] > 0 and added[peer] > 0:
                ratio = added["tracelab"] / added[peer]
                wall = f"wall {ratio:.3f}"
                wall_verdict = f"wall {'met' if ratio <= target else 'NOT met'}, "
            else:  # the baseline's own spread exceeded the added cost: no wall-clock figure
                wall, wall_verdict = "wall n/a (noise)", ""
            print(f"{scenario}: TraceLab added / {label}: {wall}, CPU {cpu_ratio:.3f}"
                  f"   (target <= {target}: {wall_verdict}"
                  f"CPU {'met' if cpu_ratio <= target else 'NOT met'})")
    if "tracelab" in variants:
        split = {k: statistics.median(r["sink_split_us_per_call"].get(k, 0.0)
                                      for r in results["tracelab"])
                 for k in ("build", "serialize", "write")}
        hot = main_cpu["tracelab"] - main_cpu["baseline"]
        other = added_cpu["tracelab"] - hot - sum(split.values())
        print(f"{scenario}: TraceLab added CPU split, µs/call: hot path (traced thread) "
              f"{hot:+.2f} | sink thread: redaction+event build {split['build']:.2f}, "
              f"serialization+scrub {split['serialize']:.2f}, Redis write {split['write']:.2f}"
              f" | rest (wake-ups, GIL hand-offs, GC) {other:+.2f}")
        for i, ((n, expected, leaked, complete), res) in enumerate(
                zip(redis_checks, results["tracelab"])):
            st = res["stats"]
            print(f"  run {i + 1}: call events in {STREAM} = {n:,} of {expected:,} calls; "
                  f"stats captured={st.get('captured')} published={st.get('published')} "
                  f"dropped={st.get('dropped')} {st.get('dropped_by_reason') or ''} "
                  f"errors={st.get('errors')}; flush ok={res['flush_ok']}; "
                  f"planted secrets found={leaked}; redacted events complete={complete}")
        total_x = sum(c[0] for c in redis_checks)
        total_e = sum(c[1] for c in redis_checks)
        drops = sum(r["stats"].get("dropped", 0) for r in results["tracelab"])
        leaks = sum(c[2] for c in redis_checks)
        print(f"  total: {total_x:,} events in Redis for {total_e:,} calls; dropped {drops}; "
              f"secrets leaked {leaks}")
    for v in ("otel", "otel-default"):
        if v in variants:
            exported = [r["stats"].get("exported") for r in results[v]]
            print(f"  {v}: spans exported per run (warm-up + timed) = {exported}")


def profile_tracelab(args: argparse.Namespace, redis_url: str, client: Any) -> None:
    import pstats

    workdir = tempfile.mkdtemp(prefix="tracelab-prof-")
    out = os.path.join(workdir, "tracelab.prof")
    client.delete(STREAM)
    res = run_child("tracelab", args, redis_url, profile=out,
                    scenario=[s for s in args.scenarios.split(",") if s][0])
    client.delete(STREAM)
    n = args.calls
    print()
    print(f"cProfile of one TraceLab run ({n:,} calls, {res['us_per_call']:.1f} µs/call under "
          "the profiler, which inflates everything; compare entries with each other)")
    main_stats = pstats.Stats(out)
    _print_top(main_stats, n, args.profile_top, "main thread (the traced program)")
    worker = f"{out}.worker0"
    if os.path.exists(worker):
        _print_top(pstats.Stats(worker), n, 12, "sink worker thread (runs concurrently)")
    shutil.rmtree(workdir, ignore_errors=True)
    print("\nTraceLab stages timed directly (best of 5, no profiler, no GC pressure), µs/call:")
    for scenario in [s for s in args.scenarios.split(",") if s]:
        print(f"  -- {scenario}")
        st = run_child("stages", args, redis_url, scenario=scenario)
        for label, value in st.items():
            shown = "n/a" if value is None else (f"{value:8.2f}" if isinstance(value, float)
                                                 else str(value))
            print(f"  {shown:>8}  {label}")


def _print_top(st: Any, n: int, top: int, title: str) -> None:
    rows = []
    for (file, line, func), (cc, nc, tt, ct, _callers) in st.stats.items():
        rows.append((tt, ct, nc, f"{_short(file)}:{line}({func})"))
    total_tt = sum(r[0] for r in rows)
    print(f"\n{title}: total {total_tt / n * 1e6:.1f} µs/call of profiled time")
    print(f"  {'self µs/call':>12} {'cum µs/call':>12} {'calls/call':>10}  function")
    for tt, ct, nc, name in sorted(rows, reverse=True)[:top]:
        print(f"  {tt / n * 1e6:12.2f} {ct / n * 1e6:12.2f} {nc / n:10.2f}  {name}")
    print("  -- by cumulative time (TraceLab frames only) --")
    tl = [r for r in rows if "tracelab" in r[3] or "wrapt" in r[3]]
    for tt, ct, nc, name in sorted(tl, key=lambda r: r[1], reverse=True)[:top]:
        print(f"  {tt / n * 1e6:12.2f} {ct / n * 1e6:12.2f} {nc / n:10.2f}  {name}")


def _short(path: str) -> str:
    for marker in ("site-packages/", str(REPO) + "/", "/lib/python3"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


if __name__ == "__main__":
    main()
