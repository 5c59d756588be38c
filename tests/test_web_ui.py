"""The web UI in headless Chromium (Debian's `chromium`, driven by Playwright; no browser
download), against `tracelab serve` started as a subprocess on free loopback ports, over a store
recorded through the SDK in embedded mode."""
from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import LoopbackHTTP, build_lock
from test_api import HOSTILE, ROOT, record
from web_site import serve_ui

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
STATIC = ROOT / "tracelab" / "server" / "static"

pytestmark = [pytest.mark.timeout(180)]


@pytest.fixture(autouse=True)
def _chromium_is_there() -> None:
    """Chromium is part of the test environment: missing, these tests fail, never skip."""
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: apt-get install chromium " \
        "(make test does)"


def build_ui() -> None:
    """`npm ci && npm run build` in web/ when the built UI is missing (`make test` builds it
    before pytest starts; under xdist one worker builds while the other waits for it)."""
    if (STATIC / "index.html").is_file():
        return
    with build_lock("web-ui"):
        if (STATIC / "index.html").is_file():
            return
        npm = shutil.which("npm")
        assert npm, "npm is needed to build the web UI (apt-get install nodejs npm)"
        web = ROOT / "web"
        if not (web / "node_modules").is_dir():
            subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=web, check=True,
                           timeout=600)
        subprocess.run([npm, "run", "build"], cwd=web, check=True, timeout=600)
    assert (STATIC / "index.html").is_file()


@pytest.fixture(scope="module")
def vendor() -> Iterator[LoopbackHTTP]:
    server = LoopbackHTTP()
    yield server
    server.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory, vendor) -> Iterator[dict]:
    build_ui()
    home = tmp_path_factory.mktemp("ui") / "home"
    record(home, vendor.url, "run-ok", "ok")
    record(home, vendor.url, "run-err", "error")
    record(home, vendor.url, "run-grow", "ok")
    with serve_ui(home) as base:
        yield {"base": base, "home": home, "vendor": vendor}


@pytest.fixture(scope="module")
def browser() -> Iterator:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                    headless=True)
        yield browser
        browser.close()


class Watched:
    """A page whose console errors, page errors and dialogs are collected."""

    def __init__(self, browser) -> None:
        self.context = browser.new_context(viewport={"width": 1400, "height": 900})
        self.page = self.context.new_page()
        self.page.set_default_timeout(15_000)
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))

        def on_dialog(dialog) -> None:
            self.dialogs.append(dialog.message)
            dialog.dismiss()

        self.page.on("dialog", on_dialog)

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def watched(browser) -> Iterator[Watched]:
    w = Watched(browser)
    yield w
    try:
        assert w.errors == [], f"console errors: {w.errors}"
        assert w.dialogs == [], f"dialogs opened: {w.dialogs}"
    finally:
        w.close()


def test_home_shows_workflow_and_clicks_through_to_executions(site, watched):
    page = watched.page
    page.goto(site["base"] + "/")
    link = page.get_by_role("link", name="checkout", exact=True)
    link.wait_for()
    row = page.locator("tr[data-workflow='checkout']")
    assert row.locator("td").nth(1).inner_text() == "3"  # executions
    link.click()
    page.wait_for_url("**/workflows/checkout")
    for run_id in ("run-ok", "run-err", "run-grow"):
        page.get_by_role("link", name=run_id, exact=True).wait_for()
    page.get_by_role("link", name="run-err", exact=True).click()
    page.wait_for_url("**/executions/run-err")
    page.get_by_text("GET /status/402").first.wait_for()


def test_deep_link_shows_steps_and_a_click_shows_the_request_body(site, watched):
    page = watched.page
    page.goto(site["base"] + "/executions/run-err")
    page.get_by_text("POST /v1/charges").first.wait_for()
    page.wait_for_selector("canvas.gantt-canvas[data-drawn-steps='4']")
    assert page.locator(".step-row").count() == 4
    page.locator(".step-row", has_text="POST /v1/charges").click()
    side = page.get_by_role("complementary", name="Step details")
    body = side.locator(".body", has_text="Request body").locator("pre")
    body.wait_for()
    text = body.inner_text()
    assert '"amount": 4200' in text and '"currency": "usd"' in text
    assert "[REDACTED]" in side.inner_text()  # the Authorization header
    assert "sk_live_SECRET" not in page.content()


def test_hostile_payload_renders_as_text(site, watched):
    page = watched.page
    page.goto(site["base"] + "/executions/run-ok")
    page.locator(".step-row", has_text="POST /v1/charges").click()
    pre = page.get_by_role("complementary", name="Step details") \
        .locator(".body", has_text="Request body").locator("pre")
    pre.wait_for()
    assert HOSTILE in pre.inner_text()  # shown as those characters
    assert page.locator("img").count() == 0  # and never parsed as markup
    page.wait_for_timeout(300)
    assert watched.dialogs == []


def test_event_recorded_while_the_page_is_open_appears_without_reload(site, watched):
    page = watched.page
    page.goto(site["base"] + "/executions/run-grow")
    page.wait_for_selector("canvas.gantt-canvas[data-drawn-steps='3']")
    page.get_by_text("● live").wait_for()
    page.evaluate("window.__notReloaded = true")
    assert page.get_by_text("POST /v1/refunds").count() == 0
    record(site["home"], site["vendor"].url, "run-grow", "live")
    page.get_by_text("POST /v1/refunds").first.wait_for(timeout=20_000)
    page.wait_for_selector("canvas.gantt-canvas[data-drawn-steps='7']")
    assert page.evaluate("window.__notReloaded") is True


def test_new_execution_appears_in_the_list_without_reload(site, watched):
    page = watched.page
    page.goto(site["base"] + "/workflows/checkout")
    page.get_by_role("link", name="run-ok", exact=True).wait_for()
    page.get_by_text("● live").wait_for()
    record(site["home"], site["vendor"].url, "run-new", "error")
    page.get_by_role("link", name="run-new", exact=True).wait_for(timeout=20_000)


def test_unknown_execution_and_diff_page(site, watched):
    page = watched.page
    response = page.goto(site["base"] + "/executions/no-such-run")
    assert response.status == 200  # the app answers deep links; the API says 404
    page.get_by_text("Not found").wait_for()
    watched.errors = [e for e in watched.errors if "404" not in e]  # the failed fetch itself
    page.goto(site["base"] + "/diff/run-ok/run-err")
    page.get_by_text("GET /status/402").first.wait_for()
    assert "inserted" in page.get_by_test_id("compare").inner_text()


@pytest.fixture(scope="module")
def odd_site(tmp_path_factory) -> Iterator[str]:
    """A second server over a store whose workflow names and run ids hold `/`, `%`, CJK."""
    from api_serve import seed_store

    build_ui()
    home = tmp_path_factory.mktemp("ui-odd") / "home"
    seed_store(home)
    with serve_ui(home) as base:
        yield base


@pytest.mark.parametrize("workflow,run_id", [("pay/ments", "pay/run/2"),
                                             ("日本語ワークフロー 🚀", "run 🚀 2"),
                                             ("a b%c=d.e", "100%")])
def test_links_encode_ids_with_slash_percent_and_non_ascii(odd_site, watched, workflow, run_id):
    page = watched.page
    page.goto(odd_site + "/")
    page.get_by_role("link", name=workflow, exact=True).click()
    page.get_by_role("link", name=run_id, exact=True).click()
    page.get_by_role("link", name=workflow, exact=True).wait_for()  # the breadcrumb
    page.wait_for_selector("canvas.gantt-canvas[data-drawn-steps='3']")
    page.goto(page.url)  # the same page as a deep link (the prefetch path in main.tsx)
    page.get_by_role("link", name=workflow, exact=True).wait_for()
    page.wait_for_selector("canvas.gantt-canvas[data-drawn-steps='3']")


def test_a_replay_links_to_its_original_and_opens_the_diff_of_the_two(site, watched):
    import json

    from recorded_runs import record_run

    record_run(site["home"], site["vendor"].url, "checkout-replays", "run-replayed",
               env={"TRACELAB_TAGS": json.dumps({"replay_of": "run-ok"})})
    page = watched.page
    page.goto(site["base"] + "/executions/run-replayed")
    line = page.get_by_test_id("replay-of")
    line.wait_for()
    assert line.inner_text().startswith("replay of run-ok")
    line.get_by_role("link", name="diff with the original").click()
    page.wait_for_url("**/diff/run-ok/run-replayed")
    page.get_by_test_id("compare").wait_for()
    page.goto(site["base"] + "/executions/run-ok")
    replays = page.get_by_test_id("replays")
    replays.get_by_role("link", name="diff with run-replayed").wait_for()
    assert page.get_by_test_id("replay-of").count() == 0
    replays.get_by_role("link", name="run-replayed", exact=True).click()
    page.wait_for_url("**/executions/run-replayed")
    page.get_by_test_id("replay-of").wait_for()


ORANGE_PIXELS_JS = """(canvas) => {
  // Pixels of the fault colour (#f97316, give or take anti-aliasing), and their centre in CSS px.
  const ctx = canvas.getContext("2d");
  const { width, height } = canvas;
  const data = ctx.getImageData(0, 0, width, height).data;
  let count = 0, sx = 0, sy = 0;
  for (let i = 0; i < data.length; i += 4) {
    const [r, g, b] = [data[i], data[i + 1], data[i + 2]];
    if (r > 225 && g > 90 && g < 140 && b < 60) {
      count++;
      sx += (i / 4) % width;
      sy += Math.floor(i / 4 / width);
    }
  }
  const dpr = width / canvas.clientWidth;
  return { count, x: count ? sx / count / dpr : 0, y: count ? sy / count / dpr : 0 };
}"""


@pytest.fixture(scope="module")
def chaos_run(site) -> dict:
    """A replayed run written to the served store: one call a fault rule failed, three not."""
    from test_notebook_faults import faulted_run
    from tracelab.store.layout import resolve_layout
    from tracelab.store.writer import StoreWriter

    events = faulted_run("chaos-web")
    StoreWriter(resolve_layout(str(site["home"] / "store"))).write(events)
    return {"events": events}


def test_a_faulted_call_is_marked_on_the_timeline_and_its_rule_shown(site, chaos_run, watched):
    page = watched.page
    page.goto(site["base"] + "/executions/chaos-web")
    canvas = page.locator("canvas.gantt-canvas[data-drawn-steps='4']")
    canvas.wait_for()
    page.wait_for_selector("canvas.gantt-canvas[data-drawn-faults='1']")
    assert page.get_by_test_id("legend-fault").inner_text().strip() == "⚡ fault (1)"
    # the marker is on the canvas: orange hatching and outline over the faulted bar
    orange = canvas.evaluate(ORANGE_PIXELS_JS)
    assert orange["count"] > 20
    canvas.hover(position={"x": orange["x"], "y": orange["y"]})
    tip = page.locator(".gantt-tip")
    tip.wait_for()
    assert "⚡ fault: stripe-429 (status)" in tip.inner_text()
    assert "replay fault" in tip.inner_text()
    # the step table says which rule; replayed calls say how the replay answered them
    faulted = page.locator(".step-row", has_text="fault: stripe-429")
    assert faulted.count() == 1
    assert faulted.locator(".badge.fault").count() == 1
    assert page.locator(".step-row .badge.replay-hit").count() == 2
    search = page.get_by_role("searchbox", name="Filter steps")
    search.fill("stripe-429")  # the rule id finds the faulted call
    page.get_by_text("1 of 4 steps").wait_for()
    search.fill("")
    page.get_by_text("4 of 4 steps").wait_for()
    faulted.click()
    side = page.get_by_role("complementary", name="Step details")
    section = side.get_by_role("region", name="Fault")
    section.wait_for()
    text = section.inner_text()
    assert "Fault injected by TraceLab" in text and "stripe-429" in text and "status" in text
    rule = section.locator("pre").inner_text()
    assert '"retry_after": 1,' in rule and '"endpoint": "POST /v1/refunds"' in rule
    assert side.locator(".badge.replay-fault").inner_text().strip() == "⚡ replay fault"
    # a normal call has no fault section
    page.locator(".step-row", has_text="POST /v1/charges").filter(
        has=page.locator(".badge.replay-hit")).click()
    side.get_by_role("region", name="Request").wait_for()
    side.locator(".badge.replay-hit").wait_for()
    assert side.get_by_role("region", name="Fault").count() == 0


def test_a_run_without_faults_has_no_fault_marker(site, chaos_run, watched):
    page = watched.page
    page.goto(site["base"] + "/executions/run-err")
    canvas = page.locator("canvas.gantt-canvas[data-drawn-steps='4']")
    canvas.wait_for()
    assert canvas.get_attribute("data-drawn-faults") == "0"
    assert page.get_by_test_id("legend-fault").count() == 0
    assert canvas.evaluate(ORANGE_PIXELS_JS)["count"] == 0
    assert page.locator(".step-row .badge.fault").count() == 0
    page.locator(".step-row", has_text="POST /v1/charges").click()
    side = page.get_by_role("complementary", name="Step details")
    side.get_by_role("region", name="Request").wait_for()
    assert side.get_by_role("region", name="Fault").count() == 0


def test_a_faulted_call_recorded_while_the_page_is_open_arrives_marked(site, watched):
    from test_notebook_faults import faulted_run
    from tracelab.store.layout import resolve_layout
    from tracelab.store.writer import StoreWriter

    writer = StoreWriter(resolve_layout(str(site["home"] / "store")))
    first, faulted = faulted_run("chaos-live")[:2]
    writer.write([first])
    page = watched.page
    page.goto(site["base"] + "/executions/chaos-live")
    page.wait_for_selector("canvas.gantt-canvas[data-drawn-steps='1'][data-drawn-faults='0']")
    page.get_by_text("● live").wait_for()
    writer.write([faulted])
    page.wait_for_selector("canvas.gantt-canvas[data-drawn-steps='2'][data-drawn-faults='1']",
                           timeout=20_000)
    assert page.locator(".step-row .badge.fault").inner_text().strip() == "⚡ fault: stripe-429"


@pytest.fixture(scope="module")
def llm_run(site) -> str:
    """A run of an agent calling the LLM-shaped loopback server through the real openai and
    anthropic clients (tests/test_conversation_api.py), recorded into the site's store."""
    from llm_wire import LLMWire
    from test_conversation_api import record_llm_run

    with LLMWire() as wire:
        record_llm_run(site["home"], wire.url, "llm-run")
    return "llm-run"


def test_an_llm_step_shows_its_conversation_with_the_raw_json_a_click_away(site, llm_run,
                                                                           watched):
    from llm_wire import ANSWER

    page = watched.page
    page.goto(site["base"] + f"/executions/{llm_run}")
    page.locator(".step-row", has_text="POST /v1/chat/completions").first.click()
    side = page.get_by_role("complementary", name="Step details")
    conv = side.get_by_role("region", name="Conversation")
    conv.wait_for()
    roles = conv.locator(".conv-msg").evaluate_all("els => els.map(e => e.dataset.role)")
    assert roles == ["system", "user", "assistant", "tool", "assistant"]  # + the completion
    assert conv.locator(".conv-msg.role-system").inner_text().endswith("You are a refund agent.")
    call = conv.get_by_test_id("tool-call").first
    assert "lookup_order" in call.inner_text() and '"order": 42' in call.inner_text()
    assert "result of lookup_order (call_a)" in conv.locator(".role-tool").inner_text()
    assert conv.locator(".conv-msg.completion").inner_text().endswith(ANSWER)
    assert "finish: stop" in conv.inner_text()
    assert side.get_by_role("region", name="Request").count() == 0  # raw JSON folded away
    side.get_by_role("button", name="Show raw JSON").click()
    body = side.locator(".body", has_text="Request body").locator("pre")
    body.wait_for()
    assert '"messages"' in body.inner_text()
    assert conv.count() == 0
    side.get_by_role("button", name="Show conversation").click()
    conv.wait_for()


def test_a_streamed_llm_answer_and_hostile_text_in_a_conversation(site, llm_run, watched):
    page = watched.page
    page.goto(site["base"] + f"/executions/{llm_run}")
    page.locator(".step-row", has_text="POST /v1/chat/completions").nth(1).click()
    side = page.get_by_role("complementary", name="Step details")
    conv = side.get_by_role("region", name="Conversation")
    conv.wait_for()
    assert "streamed" in conv.inner_text() and "tools offered: refund" in conv.inner_text()
    assert "refund" in conv.locator(".completion").get_by_test_id("tool-call").inner_text()
    page.locator(".step-row", has_text="POST /v1/messages").click()
    user = conv.locator(".conv-msg.role-user")
    user.wait_for()
    assert user.inner_text().endswith("hello <b>there</b>")  # shown as those characters
    assert side.locator("b", has_text="there").count() == 0  # never parsed as markup


def test_steps_without_a_conversation_show_the_raw_json(site, llm_run, watched):
    page = watched.page
    page.goto(site["base"] + f"/executions/{llm_run}")
    for endpoint in ("POST /v1/embeddings", "POST /not-llm"):
        page.locator(".step-row", has_text=endpoint).click()
        side = page.get_by_role("complementary", name="Step details")
        side.locator(".body", has_text="Request body").locator("pre").wait_for()
        assert side.get_by_role("region", name="Conversation").count() == 0
        assert side.get_by_role("button", name="Show raw JSON").count() == 0


BAR_POINTS_JS = """(canvas) => {
  // The centre (CSS px) of every run of the ok or error colour on the canvas: the bars.
  const ctx = canvas.getContext("2d");
  const { width, height } = canvas;
  const data = ctx.getImageData(0, 0, width, height).data;
  const dpr = width / canvas.clientWidth;
  const seen = new Set(), points = [];
  for (let y = 0; y < height; y += 2) {
    let start = -1;
    for (let x = 0; x <= width; x++) {
      const i = (y * width + x) * 4;
      const near = (r, g, b) => Math.abs(data[i] - r) < 12 && Math.abs(data[i + 1] - g) < 12
        && Math.abs(data[i + 2] - b) < 12;
      const hit = x < width && (near(59, 130, 246) || near(220, 38, 38));
      if (hit && start < 0) start = x;
      if (!hit && start >= 0) {
        const cx = (start + x - 1) / 2 / dpr, cy = y / dpr;
        const key = `${Math.round(cx / 3)}:${Math.round(cy / 8)}`;
        if (!seen.has(key)) { seen.add(key); points.push({ x: cx, y: cy }); }
        start = -1;
      }
    }
  }
  return points;
}"""


def test_the_timeline_hover_shows_an_llm_calls_tokens_and_cost(site, llm_run, watched):
    page = watched.page
    page.goto(site["base"] + f"/executions/{llm_run}")
    canvas = page.locator("canvas.gantt-canvas[data-drawn-steps='6']")
    canvas.wait_for()
    tips = {}
    for point in canvas.evaluate(BAR_POINTS_JS):
        canvas.hover(position=point)
        tip = page.locator(".gantt-tip")
        if tip.count():
            text = tip.inner_text()
            tips[text.splitlines()[0]] = text
    chat = tips["POST /v1/chat/completions"]
    # gpt-4o-mini: (120 - 100 cached) * $0.15 + 100 * $0.075 + 30 * $0.60 per million tokens
    assert "120 in (100 cached) · 30 out tokens · $0.0000285" in chat
    assert "120 in (100 cached) · 30 out tokens" in tips[
        "POST /v1beta/models/acme-llm:generateContent"]  # no price for this model: no cost
    assert "$" not in tips["POST /v1beta/models/acme-llm:generateContent"]
    assert "tokens" not in tips["POST /not-llm"]
