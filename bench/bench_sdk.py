#!/usr/bin/env python
"""Added cost per `requests` call: TraceLab vs OpenTelemetry, full capture, no sockets.

Every variant drives the real `requests.Session` against the same in-process transport adapter
(`CannedAdapter`: a `BaseAdapter` that hands back a fresh `requests.Response` with JSON body
and headers, read through `raw` just as urllib3's would be), in its OWN subprocess:

  baseline      uninstrumented
  tracelab      `tracelab.init(..., integrations=["requests"])`, full capture with redaction,
                publishing to a real redis-server this script starts on a free loopback port
  otel          `opentelemetry-instrumentation-requests` + `BatchSpanProcessor` + a null
                exporter, with all request/response headers captured (sanitized) and both
                bodies attached by request/response hooks (OTel has no body redaction)
  otel-default  the same instrumentor with its default settings (no headers, no bodies), for
                reference only

Each timed run is `--calls` POSTs (an Authorization header, an X-Api-Key and a JSON body with
a `password` planted; the response carries a Set-Cookie and an `access_token`) INCLUDING the
final `tracelab.flush()` / `provider.force_flush()`, so deferred work is paid for. Runs are
separate subprocesses, interleaved across variants, after a warm-up; the table shows medians.
Timings are printed, never asserted.

    .venv/bin/python bench/bench_sdk.py                      # 5 runs x 20,000 calls
    .venv/bin/python bench/bench_sdk.py --calls 2000 --runs 3  # CI-sized
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


class _NullExporterCount:
    exported = 0


def setup_variant(variant: str, total_calls: int) -> tuple[Any, Any]:
    """Instrument this process; returns (flush function, stats function)."""
    if variant == "baseline":
        return (lambda: None), (lambda: {})
    if variant == "tracelab":
        import tracelab

        tracelab.init(workflow_name="bench", service_name="bench",
                      redis_url=os.environ["BENCH_REDIS_URL"], integrations=["requests"])
        return (lambda: tracelab.flush(timeout=120.0)), tracelab.stats
    if variant in ("otel", "otel-default"):
        from opentelemetry.instrumentation.requests import RequestsInstrumentor
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
        if variant == "otel":
            def request_hook(span, request):  # noqa: ANN001
                body = request.body
                if isinstance(body, bytes):
                    body = body.decode("utf-8", "replace")
                if body:
                    span.set_attribute("http.request.body", body)

            def response_hook(span, request, response):  # noqa: ANN001
                content = response.content
                if content:
                    span.set_attribute("http.response.body", content.decode("utf-8", "replace"))

            kwargs.update(request_hook=request_hook, response_hook=response_hook)
        RequestsInstrumentor().instrument(**kwargs)

        def otel_stats() -> dict[str, Any]:
            return {"exported": _NullExporterCount.exported}

        return (lambda: provider.force_flush(120_000)), otel_stats
    raise SystemExit(f"unknown variant {variant!r}")


def child(variant: str, calls: int, warmup: int, profile: str | None) -> None:
    flush, get_stats = setup_variant(variant, calls + warmup)
    session = make_session()
    post, url, headers, payload = session.post, URL, REQUEST_HEADERS, REQUEST_JSON

    def loop(n: int) -> None:
        for _ in range(n):
            post(url, json=payload, headers=headers).json()

    loop(warmup)
    flush()
    gc_time = _gc_timer()
    cpu0 = time.process_time()  # every thread of this process: the sink worker is counted too
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
    cpu = time.process_time() - cpu0
    print(json.dumps({"variant": variant, "calls": calls, "warmup": warmup, "ns": elapsed,
                      "us_per_call": elapsed / calls / 1000,
                      "cpu_us_per_call": cpu / calls * 1e6,
                      "gc_us_per_call": gc_time[0] / calls * 1e6,
                      "flush_ok": flush_ok is not False, "stats": get_stats()}, default=str))


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


def stages(calls: int) -> None:
    """Time the stages of TraceLab's per-call work directly (no profiler overhead), best of 5.

    Uses SDK internals, so a stage whose internals changed prints n/a instead of failing.
    """
    import timeit

    import orjson
    import tracelab
    from tracelab.sdk import capture, payloads, recorder

    tracelab.init(workflow_name="bench", service_name="bench",
                  redis_url=os.environ["BENCH_REDIS_URL"], integrations=[])
    rec = recorder.current()
    rec.sink.submit = lambda event: True  # the hot path alone: nothing queued
    session = make_session()
    response = session.post(URL, json=REQUEST_JSON, headers=REQUEST_HEADERS)
    request, red, n = response.request, rec.redactor, max(2000, calls // 4)
    out: dict[str, float | None] = {}

    def t(label: str, fn: Any) -> None:
        try:
            fn()
            out[label] = min(timeit.repeat(fn, number=n, repeat=5)) / n * 1e6
        except Exception as exc:  # noqa: BLE001
            out[label] = None
            out[f"{label} (error)"] = repr(exc)[:120]  # type: ignore[assignment]

    from tracelab.sdk.integrations.requests import _record

    t("_record: whole hot path after the call (null sink)",
      lambda: _record(rec, request, response, capture.Timer(), False, None))
    t("  redactor.headers(request headers)", lambda: red.headers(request.headers, set()))
    t("  redactor.headers(response headers)", lambda: red.headers(response.headers, set()))
    t("  encode_body(request JSON)", lambda: payloads.encode_body(
        request.body, "application/json", red, 65536, set()))
    t("  encode_body(response JSON)", lambda: payloads.encode_body(
        response.content, "application/json", red, 65536, set()))
    t("    of which orjson.loads (both bodies)",
      lambda: (orjson.loads(request.body), orjson.loads(response.content)))
    t("  redactor.url", lambda: red.url(request.url, set()))
    try:
        from tracelab.sdk.redaction import scrub

        found: set[str] = set()
        req = {"headers": red.headers(request.headers, found), "url": request.url,
               "body": payloads.encode_body(request.body, "application/json", red, 65536, found)}
        resp = {"headers": red.headers(response.headers, found),
                "body": payloads.encode_body(response.content, "application/json", red, 65536,
                                             found)}
        out["  (secret values found)"] = len(found)
        t("  scrub(request) + scrub(response)", lambda: (scrub(req, found), scrub(resp, found)))
    except ImportError:
        pass
    captured: list[Any] = []
    rec.sink.submit = captured.append
    _record(rec, request, response, capture.Timer(), False, None)
    rec.sink.submit = lambda event: True
    if captured:
        from tracelab.sdk import redaction

        payload = captured[0]  # the sink queues serialized bytes
        ev = orjson.loads(payload)
        t("  build_event", lambda: capture.build_event(
            rec, kind="http", target="t", endpoint="POST /", started_at=1, latency_ms=1.0,
            status="ok", request=ev["request"], response=ev["response"]))
        t("  orjson.dumps(event) (in Recorder.submit)", lambda: orjson.dumps(
            ev, default=repr, option=orjson.OPT_SERIALIZE_NUMPY))
        t("  scrub_json_bytes(event, found)",
          lambda: redaction.scrub_json_bytes(payload, found))
        t("  Recorder.submit (dumps + scrub + count, null sink)",
          lambda: rec.submit(ev, "requests", found))
        out["event size (bytes)"] = len(payload)
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
              profile: str | None = None) -> dict[str, Any]:
    env = dict(os.environ)
    env.update(
        BENCH_REDIS_URL=redis_url,
        TRACELAB_QUEUE_SIZE=str(args.calls + args.warmup + 1024),
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
    )
    for name in ("TRACELAB_DISABLED", "TRACELAB_REDIS_URL", "OTEL_SDK_DISABLED"):
        env.pop(name, None)
    if variant == "otel":
        env.update(
            OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST=".*",
            OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_RESPONSE=".*",
            OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS=(
                "authorization,proxy-authorization,cookie,set-cookie,x-api-key,api-key,"
                "x-amz-security-token"),
        )
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", variant,
           "--calls", str(args.calls), "--warmup", str(args.warmup)]
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
            leaked += sum(s.encode() in raw for s in SECRETS)
            event = json.loads(raw)
            if event["kind"] == "run":
                continue
            calls += 1
            complete = complete and \
                (event["request"]["body"] or {}).get("password") == "[REDACTED]" and \
                isinstance((event["response"] or {}).get("body"), dict)
    return calls, leaked, complete and calls > 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=20_000, help="calls per timed run")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per variant (median)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed calls first in each run (default: calls/10, >= 200)")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated subset of {','.join(VARIANTS)}")
    parser.add_argument("--profile", action="store_true",
                        help="then profile one TraceLab run (cProfile) and print hot spots")
    parser.add_argument("--profile-top", type=int, default=25)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--profile-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.warmup is None:
        args.warmup = max(200, args.calls // 10)
    if args.child == "stages":
        stages(args.calls)
        return
    if args.child:
        child(args.child, args.calls, args.warmup, args.profile_out)
        return

    variants = [v for v in args.variants.split(",") if v]
    if "baseline" not in variants:
        variants.insert(0, "baseline")
    import redis

    workdir = tempfile.mkdtemp(prefix="tracelab-bench-")
    proc, redis_url = start_redis(workdir)
    client = redis.Redis.from_url(redis_url)
    results: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    redis_checks: list[tuple[int, int, int, bool]] = []  # (xlen, expected, leaked, complete)
    try:
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, redis at {redis_url}; "
              f"{args.runs} runs x {args.calls:,} calls (+{args.warmup:,} warm-up) per variant,"
              " one subprocess per run, interleaved", flush=True)
        for run in range(args.runs):
            for variant in variants:
                if variant == "tracelab":
                    client.delete(STREAM)
                res = run_child(variant, args, redis_url)
                results[variant].append(res)
                if variant == "tracelab":
                    xlen, leaked, complete = check_stream(client)
                    redis_checks.append((xlen, args.calls + args.warmup, leaked, complete))
                    client.delete(STREAM)
                print(f"  run {run + 1}/{args.runs} {variant:<13} "
                      f"{res['us_per_call']:8.2f} µs/call", flush=True)
        report(args, variants, results, redis_checks)
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


def report(args: argparse.Namespace, variants: list[str],
           results: dict[str, list[dict[str, Any]]],
           redis_checks: list[tuple[int, int, int, bool]]) -> None:
    med = {v: statistics.median(r["us_per_call"] for r in results[v]) for v in variants}
    spread = {v: (min(r["us_per_call"] for r in results[v]),
                  max(r["us_per_call"] for r in results[v])) for v in variants}
    cpu = {v: statistics.median(r["cpu_us_per_call"] for r in results[v]) for v in variants}
    gct = {v: statistics.median(r["gc_us_per_call"] for r in results[v]) for v in variants}
    base = med["baseline"]
    added = {v: med[v] - base for v in variants}
    print()
    print("wall clock per call, timed loop + final flush (median of runs); CPU = process time of")
    print("all threads (so the sink's worker thread counts), GC = time in the cyclic collector")
    print(f"{'variant':<14}{'µs/call':>10}{'min..max':>18}{'added µs':>11}"
          f"{'CPU µs':>9}{'added CPU':>11}{'GC µs':>8}")
    print("-" * 81)
    for v in variants:
        lo, hi = spread[v]
        add = "" if v == "baseline" else f"{added[v]:+.2f}"
        add_cpu = "" if v == "baseline" else f"{cpu[v] - cpu['baseline']:+.2f}"
        print(f"{v:<14}{med[v]:>10.2f}{f'{lo:.1f}..{hi:.1f}':>18}{add:>11}"
              f"{cpu[v]:>9.2f}{add_cpu:>11}{gct[v]:>8.2f}")
    print()
    if "tracelab" in variants and "otel" in variants and added["otel"] > 0:
        ratio = added["tracelab"] / added["otel"]
        cpu_ratio = (cpu["tracelab"] - cpu["baseline"]) / max(1e-9, cpu["otel"] - cpu["baseline"])
        print(f"TraceLab added / OTel added (full capture): {ratio:.3f}   "
              f"(target <= 0.25: {'met' if ratio <= 0.25 else 'NOT met'}); "
              f"by CPU time: {cpu_ratio:.3f}")
    if "tracelab" in variants and "otel-default" in variants and added["otel-default"] > 0:
        print(f"TraceLab added / OTel added (OTel defaults, no headers/bodies): "
              f"{added['tracelab'] / added['otel-default']:.3f}")
    if "tracelab" in variants:
        print()
        print("TraceLab delivery (per timed run; each run = warm-up + timed calls):")
        for i, ((xlen, expected, leaked, complete), res) in enumerate(
                zip(redis_checks, results["tracelab"])):
            st = res["stats"]
            print(f"  run {i + 1}: call events in {STREAM} = {xlen:,} of {expected:,} calls; "
                  f"stats captured={st.get('captured')} published={st.get('published')} "
                  f"dropped={st.get('dropped')} {st.get('dropped_by_reason') or ''} "
                  f"errors={st.get('errors')}; flush ok={res['flush_ok']}; "
                  f"planted secrets found={leaked}; redacted bodies present={complete}")
        total_x = sum(c[0] for c in redis_checks)
        total_e = sum(c[1] for c in redis_checks)
        drops = sum(r["stats"].get("dropped", 0) for r in results["tracelab"])
        print(f"  total: {total_x:,} events in Redis for {total_e:,} calls; dropped {drops}")
    for v in ("otel", "otel-default"):
        if v in variants:
            exported = [r["stats"].get("exported") for r in results[v]]
            print(f"{v}: spans exported per run (warm-up + timed) = {exported}")


def profile_tracelab(args: argparse.Namespace, redis_url: str, client: Any) -> None:
    import pstats

    workdir = tempfile.mkdtemp(prefix="tracelab-prof-")
    out = os.path.join(workdir, "tracelab.prof")
    client.delete(STREAM)
    res = run_child("tracelab", args, redis_url, profile=out)
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
    st = run_child("stages", args, redis_url)
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
