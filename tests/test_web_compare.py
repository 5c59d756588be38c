"""The web UI's compare page (`/diff/{a}/{b}`, reading `GET /api/executions/{a}/compare/{b}`) in
headless Chromium against a real `tracelab serve` subprocess: aligned pairs with their status,
duration, token and cost deltas, inserted / removed / changed steps marked, a changed pair's
field-level body diff a click away, and a replay's one-click link landing on the comparison."""
from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import expect

from event_factory import BASE_NS
from test_web_ui import Watched, _chromium_is_there, browser, build_ui, watched  # noqa: F401
from tracelab.store.layout import resolve_layout
from tracelab.store.writer import StoreWriter
from web_site import screenshot, serve_ui, step

pytestmark = [pytest.mark.timeout(180)]
WF = "checkout-agent"
LLM = {"llm.model": "gpt-4o-mini", "llm.provider": "openai", "env": "demo"}


def agent_run(run_id: str, t0: int, *, replay_of: str | None = None,
              declined: bool = False) -> list[dict]:
    """An agent's checkout under one span: the cart, an LLM call, the charge, then an audit call
    and an email. `declined`: the LLM call grows (more tokens, slower), the charge is declined
    (other amount, 402) and retried, and the audit call is gone."""
    tags = {"env": "demo"} | ({"replay_of": replay_of} if replay_of else {})
    root = f"{run_id}-root"

    def s(seq: int, **kw) -> dict:
        kw.setdefault("tags", tags)
        return step(WF, run_id, seq, t0=t0, parent=kw.pop("parent", root), **kw)

    tokens = ("150", "40") if declined else ("100", "20")
    events = [
        s(0, kind="function", target="agent", endpoint="checkout", at_ms=0, parent=None,
          latency_ms=1200 if declined else 900, status_code=None, span_id=root,
          request={"args": ["order-7"]}, response={"return": "done"}),
        s(1, kind="http", target="shop.internal", endpoint="GET /cart", at_ms=5,
          latency_ms=38 if declined else 40),
        s(2, kind="llm", target="api.openai.com", endpoint="POST /v1/chat/completions",
          at_ms=50, latency_ms=450 if declined else 300,
          tags=tags | LLM | {"llm.input_tokens": tokens[0], "llm.output_tokens": tokens[1]}),
    ]
    charge = {"method": "POST", "url": "https://api.stripe.com/v1/charges", "headers": {},
              "body": {"amount": 4300 if declined else 4200, "currency": "usd"}}
    if declined:
        events += [
            s(3, kind="http", target="api.stripe.com", endpoint="POST /v1/charges", at_ms=510,
              latency_ms=90, status="error", status_code=402, request=charge,
              response={"status_code": 402, "headers": {},
                        "body": {"error": {"code": "card_declined"}}},
              error={"type": "HTTPError", "message": "402 Payment Required"}),
            s(4, kind="http", target="api.stripe.com", endpoint="POST /v1/charges", at_ms=610,
              latency_ms=130, request=charge,
              response={"status_code": 200, "headers": {},
                        "body": {"id": "ch_2", "status": "succeeded"}}),
            s(5, kind="email", target="aws:ses", endpoint="SendEmail", at_ms=750,
              latency_ms=85, status_code=None),
        ]
    else:
        events += [
            s(3, kind="http", target="api.stripe.com", endpoint="POST /v1/charges", at_ms=360,
              latency_ms=120, request=charge,
              response={"status_code": 200, "headers": {},
                        "body": {"id": "ch_1", "status": "succeeded"}}),
            s(4, kind="http", target="audit.internal", endpoint="POST /audit", at_ms=490,
              latency_ms=20),
            s(5, kind="email", target="aws:ses", endpoint="SendEmail", at_ms=520,
              latency_ms=80, status_code=None),
        ]
    return events


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Iterator[str]:
    """run-a, and run-b: a replay of run-a with a step inserted, one removed, one changed."""
    build_ui()
    home = tmp_path_factory.mktemp("compare") / "home"
    StoreWriter(resolve_layout(str(home / "store"))).write(
        agent_run("run-a", BASE_NS) + agent_run("run-b", BASE_NS + 60 * 10**9,
                                                replay_of="run-a", declined=True))
    with serve_ui(home) as base:
        yield base


def changes(page) -> list[str]:
    return page.locator("table.compare tr.cmp-row").evaluate_all(
        "(rows) => rows.map((r) => r.dataset.change)")


def test_inserted_removed_and_changed_steps_with_their_deltas(site, watched):
    page = watched.page
    page.goto(site + "/diff/run-a/run-b")
    page.get_by_test_id("compare").wait_for()
    assert changes(page) == ["same", "same", "same", "changed", "removed", "inserted", "same"]
    summary = " ".join(page.get_by_test_id("compare-summary").inner_text().split())
    for part in ("6 vs 6 steps", "4 same", "1 changed", "1 removed", "1 inserted",
                 "tokens +70"):
        assert part in summary, summary
    rows = page.locator("tr.cmp-row")
    removed, inserted = rows.nth(4).inner_text(), rows.nth(5).inner_text()
    assert "POST /audit" in removed and "ok 200 → –" in removed
    assert "POST /v1/charges" in inserted and "– → ok 200" in inserted
    changed = rows.nth(3)
    assert "ok 200 → error 402" in changed.inner_text()
    llm = rows.nth(2).locator("td")
    assert "POST /v1/chat/completions" in rows.nth(2).inner_text()
    assert llm.nth(6).inner_text() == "+150 ms" and llm.nth(7).inner_text() == "+70"
    assert llm.nth(8).inner_text().startswith("+$0.0000")  # the dearer call, priced
    page.get_by_test_id("side-b").get_by_text("6 steps").wait_for()

    changed.get_by_role("button", name="body diff").click()
    fields = page.get_by_test_id("body-fields")
    fields.wait_for()
    amount = fields.locator("tr", has_text="request.body.amount").inner_text()
    assert "4200" in amount and "4300" in amount
    code = fields.locator("tr", has_text="response.body.error.code").inner_text()
    assert "(absent)" in code and "card_declined" in code
    screenshot(page, "compare.png", full_page=True)

    only = page.get_by_label("only differences")
    only.click()
    expect(only).to_be_checked()
    assert changes(page) == ["changed", "removed", "inserted"]
    page.get_by_role("tab", name="field-level diff").click()
    page.wait_for_url("**/diff/run-a/run-b?view=fields")
    table = page.get_by_test_id("field-diff")
    table.wait_for()
    assert "added" in table.inner_text() and "removed" in table.inner_text()
    page.get_by_role("tab", name="aligned steps").click()
    page.get_by_test_id("compare").wait_for()


def test_the_replay_pages_link_lands_on_the_comparison(site, watched):
    page = watched.page
    page.goto(site + "/executions/run-b")
    page.get_by_test_id("replay-of").get_by_role("link", name="diff with the original").click()
    page.wait_for_url("**/diff/run-a/run-b")
    page.get_by_test_id("compare").wait_for()
    assert changes(page).count("inserted") == 1


def test_an_unknown_run_is_named(site, watched):
    page = watched.page
    page.goto(site + "/diff/run-a/no-such-run")
    page.get_by_text("unknown run_id 'no-such-run'").wait_for()
    watched.errors = [e for e in watched.errors if "404" not in e]  # the failed fetches
