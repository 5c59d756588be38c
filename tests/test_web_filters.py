"""The execution page's filters in headless Chromium: they HIDE what does not match in both the
step table and the canvas Gantt, live in the URL (a filtered view is a link), fold a span's
descendants away, and re-root the view at one span with a way back. Against `tracelab serve`
started as a subprocess on free loopback ports over a store written by the real StoreWriter."""
from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.sync_api import expect

from event_factory import BASE_NS, make_event
from web_site import serve_ui
from test_web_ui import _chromium_is_there, browser, build_ui, watched  # noqa: F401

pytestmark = [pytest.mark.timeout(180)]

AGENT, PLAN, LOOKUP = "span-agent", "span-plan", "span-lookup"

# (span, parent, kind, target, endpoint, at ms, latency ms, status, service)
TREE = [
    (AGENT, None, "function", "agent.main", "run_agent", 0, 1000, "ok", "agent"),
    (PLAN, AGENT, "llm", "api.openai.com", "POST /v1/chat/completions", 10, 200, "ok", "agent"),
    (LOOKUP, AGENT, "function", "tools", "lookup_order", 220, 300, "ok", "agent"),
    ("span-order", LOOKUP, "http", "orders.internal", "GET /orders/42", 230, 50, "ok", "agent"),
    ("span-items", LOOKUP, "http", "orders.internal", "GET /orders/42/items", 290, 20, "error",
     "agent"),
    ("span-answer", AGENT, "llm", "api.openai.com", "POST /v1/responses", 530, 400, "ok",
     "agent"),
    ("span-mail", None, "http", "mail.example.com", "POST /v1/emails", 1100, 5, "ok", "mailer"),
]


def tree_events(run_id: str, rows: list[tuple] = TREE, seq0: int = 0) -> list[dict[str, Any]]:
    """Contract events of a small agent run: a traced function calling an LLM and a tool whose
    HTTP calls (one failing) nest under it, plus a root call from a second service."""
    out = []
    for n, (span, parent, kind, target, endpoint, at, latency, status, service) in \
            enumerate(rows):
        out.append(make_event("agents", run_id, seq=seq0 + n, started_at=BASE_NS + at * 1_000_000,
                              status=status, service=service, target=target, kind=kind,
                              endpoint=endpoint, latency_ms=float(latency), span_id=span,
                              parent_id=parent))
    return out


def write(home: Path, events: list[dict[str, Any]]) -> None:
    from tracelab.store.layout import resolve_layout
    from tracelab.store.writer import StoreWriter

    StoreWriter(resolve_layout(str(home / "store"))).write(events)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Iterator[dict]:
    build_ui()
    home = tmp_path_factory.mktemp("filters") / "home"
    write(home, tree_events("tree"))
    proxied = tree_events("proxied", [
        ("p-llm", None, "http", "api.openai.com", "POST /v1/chat/completions", 0, 100, "ok",
         "proxy"),
        ("p-plain", None, "http", "api.stripe.com", "POST /v1/charges", 200, 50, "ok", "proxy"),
    ])
    proxied[0]["tags"] = {"llm.provider": "openai", "llm.model": "gpt-4o-mini"}
    write(home, proxied)
    with serve_ui(home) as base:
        yield {"base": base, "home": home}


COLOURS_JS = """(canvas) => {
  // How many pixels of each bar colour the canvas holds: ok, function, error.
  const ctx = canvas.getContext("2d");
  const { width, height } = canvas;
  const data = ctx.getImageData(0, 0, width, height).data;
  const want = { ok: [59, 130, 246], function: [99, 102, 241], error: [220, 38, 38] };
  const out = { ok: 0, function: 0, error: 0 };
  for (let i = 0; i < data.length; i += 4) {
    for (const [name, [r, g, b]] of Object.entries(want)) {
      if (Math.abs(data[i] - r) < 6 && Math.abs(data[i + 1] - g) < 6
          && Math.abs(data[i + 2] - b) < 6) out[name]++;
    }
  }
  return out;
}"""


def endpoints(page) -> list[str]:
    """The step table's rows (all of them: the table of this small run is not scrolled)."""
    return page.locator(".step-row .c-ep").evaluate_all(
        "els => els.map(e => e.firstElementChild.textContent.replace(/^[▾▸└ ]+/, ''))")


def shown(page, n: int) -> dict:
    """Wait until the table and the Gantt both show `n` steps; the Gantt's bar colours."""
    canvas = page.locator(f"canvas.gantt-canvas[data-shown-steps='{n}']")
    canvas.wait_for()
    page.get_by_test_id("shown-count").filter(has_text=f"{n} of").wait_for()
    assert page.locator(".step-row").count() == n
    page.wait_for_timeout(50)  # the draw after the last layout (one animation frame)
    return canvas.evaluate(COLOURS_JS)


def query(page) -> dict[str, list[str]]:
    return parse_qs(urlsplit(page.url).query)


def test_each_filter_hides_rows_in_the_table_and_the_gantt(site, watched):
    page = watched.page
    base = site["base"] + "/executions/tree"
    page.goto(base)
    page.wait_for_selector("canvas.gantt-canvas[data-drawn-steps='7']")
    every = shown(page, 7)
    assert every["ok"] > 0 and every["function"] > 0 and every["error"] > 0
    cases = {
        "?kind=llm": ["POST /v1/chat/completions", "POST /v1/responses"],
        "?kind=http&kind=function": ["run_agent", "lookup_order", "GET /orders/42",
                                     "GET /orders/42/items", "POST /v1/emails"],
        "?target=orders.internal": ["GET /orders/42", "GET /orders/42/items"],
        "?status=error": ["GET /orders/42/items"],
        "?q=orders/42/": ["GET /orders/42/items"],
        "?min_ms=250": ["run_agent", "lookup_order", "POST /v1/responses"],
        "?llm=1": ["run_agent", "POST /v1/chat/completions", "lookup_order",
                   "POST /v1/responses"],
        "?llm=1&min_ms=250&kind=llm": ["POST /v1/responses"],
    }
    for search, expected in cases.items():
        page.goto(base + search)
        colours = shown(page, len(expected))
        assert endpoints(page) == expected, search
        # the canvas draws only what the table lists: the failed call's red, the functions'
        # indigo, the plain calls' blue are gone when their steps are hidden
        assert (colours["error"] > 0) == ("GET /orders/42/items" in expected), search
        assert (colours["function"] > 0) == any(e in expected for e in ("run_agent",
                                                                         "lookup_order")), search


def tick(box: Any) -> None:
    """Click a filter checkbox and wait until it shows checked. Its state lives in the URL, so
    it flips on the re-render after the navigation (Playwright's `check()` wants it at once)."""
    box.click()
    expect(box).to_be_checked()


def test_the_filter_bar_writes_the_url_and_a_link_opens_the_same_view(site, watched):
    page = watched.page
    page.goto(site["base"] + "/executions/tree")
    shown(page, 7)
    page.get_by_test_id("pick-kind").locator("summary").click()
    tick(page.get_by_label("kind http"))
    shown(page, 3)
    assert page.get_by_label("kind llm").is_visible()  # open for more choices
    page.get_by_label("Slower than (ms)").click()  # a click elsewhere closes the list
    assert not page.get_by_label("kind llm").is_visible()
    page.get_by_label("Slower than (ms)").fill("40")
    shown(page, 1)
    assert endpoints(page) == ["GET /orders/42"]
    assert query(page) == {"kind": ["http"], "min_ms": ["40"]}
    link = page.url
    page.goto("about:blank")
    page.goto(link)  # the link opens the filtered view, its controls set
    colours = shown(page, 1)
    assert endpoints(page) == ["GET /orders/42"] and colours["error"] == 0
    assert page.get_by_label("Slower than (ms)").input_value() == "40"
    page.get_by_test_id("pick-kind").locator("summary").click()
    assert page.get_by_label("kind http").is_checked()
    assert not page.get_by_label("kind llm").is_checked()
    page.keyboard.press("Escape")  # close the list before the next control
    tick(page.get_by_label("LLM & tools only"))
    shown(page, 0)
    page.get_by_text("No step matches.").wait_for()
    page.get_by_role("button", name="Clear filters").click()
    shown(page, 7)
    assert query(page) == {}


def test_a_collapsed_span_hides_its_descendants_until_expanded(site, watched):
    page = watched.page
    page.goto(site["base"] + "/executions/tree")
    shown(page, 7)
    page.get_by_role("button", name="collapse lookup_order").click()
    shown(page, 5)
    assert "GET /orders/42" not in endpoints(page)
    assert page.get_by_test_id("folded").inner_text() == "+2"
    assert query(page) == {"fold": [LOOKUP]}
    page.get_by_role("button", name="collapse run_agent").click()
    shown(page, 2)
    assert endpoints(page) == ["run_agent", "POST /v1/emails"]
    page.goto(page.url)  # the folds are in the link too
    shown(page, 2)
    page.get_by_role("button", name="expand run_agent").click()
    shown(page, 5)  # lookup_order is still folded
    assert page.get_by_role("button", name="expand lookup_order").get_attribute(
        "aria-expanded") == "false"
    page.get_by_role("button", name="expand lookup_order").click()
    shown(page, 7)
    assert query(page) == {}
    # a fold and a filter together: the folded span's subtree stays hidden whatever matches
    page.goto(site["base"] + f"/executions/tree?fold={LOOKUP}&kind=http")
    shown(page, 1)
    assert endpoints(page) == ["POST /v1/emails"]


def test_re_root_at_a_span_and_back(site, watched):
    page = watched.page
    page.goto(site["base"] + "/executions/tree")
    shown(page, 7)
    row = page.locator(".step-row", has_text="lookup_order")
    row.hover()
    row.get_by_role("button", name="re-root at lookup_order").click()
    shown(page, 3)
    assert endpoints(page) == ["lookup_order", "GET /orders/42", "GET /orders/42/items"]
    assert query(page) == {"root": [LOOKUP]}
    bar = page.get_by_test_id("root-bar")
    assert page.get_by_test_id("root-name").inner_text() == "lookup_order"
    # filters apply inside the re-rooted view
    page.goto(page.url + "&status=error")
    colours = shown(page, 1)
    assert colours["ok"] == 0 and colours["function"] == 0 and colours["error"] > 0
    page.get_by_role("button", name="Clear filters").click()
    shown(page, 3)
    # one level up along the path, then the whole execution
    bar.get_by_role("button", name="run_agent").click()
    shown(page, 6)
    assert query(page) == {"root": [AGENT]}
    assert "POST /v1/emails" not in endpoints(page)
    bar.get_by_role("button", name="← whole execution").click()
    shown(page, 7)
    assert query(page) == {}
    assert page.get_by_test_id("root-bar").count() == 0
    page.go_back()  # the browser's Back returns to the re-rooted view
    shown(page, 6)
    assert query(page) == {"root": [AGENT]}
    # from the side panel of a selected span
    page.goto(site["base"] + "/executions/tree")
    page.locator(".step-row", has_text="lookup_order").click()
    side = page.get_by_role("complementary", name="Step details")
    side.get_by_role("button", name="Re-root here").click()
    shown(page, 3)
    assert query(page) == {"root": [LOOKUP]}
    # a span the run does not have: said so, with the way back
    page.goto(site["base"] + "/executions/tree?root=no-such-span")
    shown(page, 0)
    assert "not in this execution" in page.get_by_test_id("root-bar").inner_text()
    page.get_by_role("button", name="← whole execution").click()
    shown(page, 7)


def test_live_steps_go_through_the_active_filters(site, watched):
    home = site["home"]
    write(home, tree_events("tree-live"))
    page = watched.page
    page.goto(site["base"] + f"/executions/tree-live?kind=llm&fold={LOOKUP}")
    shown(page, 2)
    page.get_by_text("● live").wait_for()
    write(home, tree_events("tree-live", [
        ("live-llm", AGENT, "llm", "api.openai.com", "POST /v1/embeddings", 940, 30, "ok",
         "agent"),
        ("live-http", AGENT, "http", "orders.internal", "GET /orders/43", 950, 10, "error",
         "agent"),
        ("live-folded", LOOKUP, "llm", "api.openai.com", "POST /v1/folded", 500, 10, "ok",
         "agent"),
    ], seq0=100))
    page.wait_for_selector("canvas.gantt-canvas[data-drawn-steps='10']", timeout=20_000)
    colours = shown(page, 3)
    assert endpoints(page) == ["POST /v1/chat/completions", "POST /v1/responses",
                               "POST /v1/embeddings"]
    assert colours["error"] == 0  # the new failed HTTP call is hidden on the canvas too
    page.get_by_text("10 steps").first.wait_for()
    page.get_by_role("button", name="Clear filters").click()  # clears the fold as well
    colours = shown(page, 10)
    assert colours["error"] > 0 and "POST /v1/folded" in endpoints(page)


def test_llm_and_tools_keeps_a_call_its_llm_tags_name_whatever_its_kind(site, watched):
    """The proxy records a model call as kind http with llm.* tags: the switch keeps it, as the
    query layer and the notebook's timeline count it (tracelab/store/llm.py)."""
    page = watched.page
    page.goto(site["base"] + "/executions/proxied")
    shown(page, 2)
    tick(page.get_by_label("LLM & tools only"))
    shown(page, 1)
    assert endpoints(page) == ["POST /v1/chat/completions"]
    assert query(page) == {"llm": ["1"]}


def lifecycle(run_id: str, endpoint: str, at_ns: int, status: str = "ok",
              reason: str = "exit") -> dict[str, Any]:
    """A run's start or end event, as the contract has them (spec/README.md, Run lifecycle)."""
    event = make_event("agents", run_id, started_at=at_ns, service="agent", target="agent",
                       kind="run", endpoint=endpoint, latency_ms=0.0, status=status,
                       status_code=None, request={}, response={} if endpoint == "start"
                       else {"reason": reason}, span_id=None)
    if status == "error":
        event["error"] = {"type": "ValueError", "message": "boom"}
    else:
        event.pop("error", None)
    return event


def test_the_header_shows_the_runs_state_and_follows_its_end_live(site, watched):
    home = site["home"]
    now = time.time_ns()
    write(home, [lifecycle("crashed", "start", BASE_NS),
                 *tree_events("crashed", TREE[:1]),
                 lifecycle("crashed", "end", BASE_NS + 2_000_000_000, "error", "exception")])
    write(home, [lifecycle("going", "start", now - 1_000_000_000),
                 make_event("agents", "going", started_at=now - 500_000_000, service="agent")])
    page = watched.page
    page.goto(site["base"] + "/executions/tree")  # no lifecycle events, long quiet: finished
    assert page.get_by_test_id("state").get_attribute("data-state") == "finished"
    page.goto(site["base"] + "/executions/crashed")
    assert page.get_by_test_id("state").inner_text() == "failed"
    page.goto(site["base"] + "/executions/going")
    badge = page.get_by_test_id("state")
    assert badge.inner_text() == "running"
    page.get_by_text("● live").wait_for()
    write(home, [lifecycle("going", "end", time.time_ns())])
    page.locator("[data-testid=state][data-state=finished]").wait_for(timeout=20_000)
    assert page.get_by_text("running", exact=True).count() == 0
