"""Web UI on big traces: time from navigation to the Gantt timeline drawn, in headless Chromium.

Generates one execution of N steps per size (default 10,000 and 100,000) straight into a
temporary store with the store's writer (not through HTTP): a root span per "request", nested
calls under it, four services, 2% errors. Starts `tracelab serve` on free loopback ports and,
in a fresh browser context per try, navigates to `/executions/<run_id>` and reads the moment
the page marks the timeline as drawn (`window.__tracelab.timelineDrawnAt`, milliseconds since
navigation start; set right after the first canvas frame with every step laid out). Also
prints the API fetch time and body size, and two "usable" figures on the same page: a filter
keystroke (until the step table shows the filtered rows) and a zoom (until the next frame).

Prints, never asserts. Target: 10k steps <= 1 s. Chromium is Debian's (`/usr/bin/chromium`).
Usage: python bench/bench_ui.py [--sizes 10000,100000] [--tries 3]
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
BASE_NS = 1_714_521_600 * 1_000_000_000
SERVICES = ["agent", "planner", "billing", "notifier"]
ENDPOINTS = ["POST /v1/charges", "GET /v1/customers/{id}", "POST /v1/chat/completions",
             "SendEmail", "messages.create", "GET /v1/search"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_run(n: int, run_id: str) -> list[dict]:
    """`n` events: groups of 1 root span + 9 calls nested under it, spread over services."""
    events = []
    t = BASE_NS
    i = 0
    while i < n:
        root_span = f"s{i:08x}"
        service = SERVICES[(i // 10) % len(SERVICES)]
        children = min(9, n - i - 1)
        root_start = t
        for c in range(children):
            start = root_start + 200_000 + c * 1_100_000
            status = "error" if (i + c) % 50 == 7 else "ok"
            events.append(_event(run_id, i + 1 + c, start, 1.0, status,
                                 SERVICES[(i // 10 + c % 2) % len(SERVICES)],
                                 ENDPOINTS[c % len(ENDPOINTS)], root_span))
        events.append(_event(run_id, i, root_start, 0.4 + children * 1.1, "ok", service,
                             "handle_request", None, span_id=root_span, kind="function"))
        i += children + 1
        t += (children * 1_100_000) + 600_000
    return events[:n]


def _event(run_id: str, seq: int, start: int, latency: float, status: str, service: str,
           endpoint: str, parent: str | None, span_id: str | None = None,
           kind: str = "http") -> dict:
    return {
        "event_id": f"{run_id}-{seq:08d}", "schema": 1, "workflow": "bench-ui",
        "run_id": run_id, "service": service, "source": "sdk-py", "kind": kind,
        "target": "api.example.com" if kind == "http" else "agent", "endpoint": endpoint,
        "started_at": start, "latency_ms": latency, "status": status,
        "status_code": (500 if status == "error" else 200) if kind == "http" else None,
        "request": {"method": "POST", "url": "https://api.example.com/x", "headers": {},
                    "body": {"seq": seq}},
        "response": {"status_code": 200, "headers": {}, "body": {"ok": True}},
        "span_id": span_id, "parent_id": parent,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--tries", type=int, default=3)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if not Path(CHROMIUM).exists():
        print(f"bench_ui: {CHROMIUM} is missing (apt-get install chromium); nothing measured")
        return 0
    if not (ROOT / "tracelab/server/static/index.html").is_file():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=ROOT / "web", check=True)
        subprocess.run(["npm", "run", "build"], cwd=ROOT / "web", check=True)

    from playwright.sync_api import sync_playwright

    from tracelab.store.layout import resolve_layout
    from tracelab.store.writer import StoreWriter

    with tempfile.TemporaryDirectory(prefix="tracelab-bench-ui-") as tmp:
        home = Path(tmp) / "home"
        layout = resolve_layout(home=home)
        writer = StoreWriter(layout)
        for n in sizes:
            began = time.perf_counter()
            events = make_run(n, f"run-{n}")
            for k in range(0, len(events), 50_000):
                writer.write(events[k:k + 50_000])
            print(f"generated run-{n}: {len(events):,} steps in "
                  f"{time.perf_counter() - began:.1f} s (store writer)")
        api_port, ui_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRACELAB_")}
        env["TRACELAB_HOME"] = str(home)
        proc = subprocess.Popen([sys.executable, "-m", "tracelab.cli", "serve", "--port",
                                 str(api_port), "--ui-port", str(ui_port)], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{ui_port}"
        try:
            _wait(base + "/healthz")
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
                for n in sizes:
                    _measure(browser, base, n, args.tries)
                browser.close()
        finally:
            proc.terminate()
            proc.wait(timeout=15)
    print("target: 10,000 steps drawn <= 1000 ms from navigation")
    return 0


def _wait(url: str) -> None:
    import urllib.request

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"tracelab serve did not answer at {url}")


def _measure(browser, base: str, n: int, tries: int) -> None:
    drawn, fetch, sizes, filters, zooms = [], [], [], [], []
    # one warm-up visit so the server's per-file summary cache is as in steady use
    ctx = browser.new_context(viewport={"width": 1400, "height": 900})
    ctx.new_page().goto(f"{base}/api/executions/run-{n}?shape=columns")
    ctx.close()
    for _ in range(tries):
        ctx = browser.new_context(viewport={"width": 1400, "height": 900})
        page = ctx.new_page()
        page.set_default_timeout(120_000)
        page.goto(f"{base}/executions/run-{n}")
        page.wait_for_selector("canvas.gantt-canvas[data-drawn-steps]")
        drawn.append(page.evaluate("window.__tracelab.timelineDrawnAt"))
        entry = page.evaluate("""() => {
            const e = performance.getEntriesByType('resource')
                .find(r => r.name.includes('/api/executions/'));
            return e ? [e.responseEnd - e.startTime, e.encodedBodySize] : [0, 0];
        }""")
        fetch.append(entry[0])
        sizes.append(entry[1])
        filters.append(page.evaluate("""async () => {
            const input = document.querySelector('input[aria-label="Filter steps"]');
            const t0 = performance.now();
            const set = Object.getOwnPropertyDescriptor(HTMLInputElement.prototype, 'value').set;
            set.call(input, 'SendEmail');
            input.dispatchEvent(new Event('input', {bubbles: true}));
            while (!document.querySelector('.step-row') ||
                   [...document.querySelectorAll('.step-row .c-ep')]
                     .some(el => !el.textContent.includes('SendEmail'))) {
                await new Promise(r => requestAnimationFrame(r));
                if (performance.now() - t0 > 60000) break;
            }
            return performance.now() - t0;
        }"""))
        zooms.append(page.evaluate("""async () => {
            const before = window.__tracelab.draws || 0;
            const t0 = performance.now();
            document.querySelector('button[title^="zoom in"]').click();
            await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
            return performance.now() - t0;
        }"""))
        ctx.close()
    print(f"{n:>7,} steps: timeline drawn {statistics.median(drawn):7.0f} ms after navigation "
          f"(median of {tries}; min {min(drawn):.0f}, max {max(drawn):.0f}); "
          f"API fetch {statistics.median(fetch):.0f} ms, {statistics.median(sizes) / 1e6:.1f} MB; "
          f"filter keystroke {statistics.median(filters):.0f} ms; "
          f"zoom frame {statistics.median(zooms):.0f} ms")


if __name__ == "__main__":
    sys.exit(main())
