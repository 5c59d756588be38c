"""Matcher: a queue per key in recorded order, fail closed, thread-safe; misses explained."""
from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import pytest

from tracelab.replay import matching
from tracelab.replay.matching import Hit, MatchOptions, Matcher, Miss, describe, parse_ignore


def http(method: str, url: str, body: Any = None, event_id: str | None = None,
         headers: dict[str, str] | None = None) -> dict[str, Any]:
    event = {"kind": "http", "target": url.split("/")[2], "endpoint": f"{method} /",
             "request": {"method": method, "url": url,
                         "headers": headers if headers is not None else
                         ({"Content-Type": "application/json"} if isinstance(body, dict) else {}),
                         "body": body}}
    if event_id:
        event["event_id"] = event_id
    return event


def test_same_key_answered_in_recorded_order_then_a_miss() -> None:
    first = http("GET", "https://api.example.com/v1/balance", event_id="E1")
    second = http("GET", "https://api.example.com/v1/balance", event_id="E2")
    matcher = Matcher([first, second])
    live = http("GET", "https://api.example.com/v1/balance")
    assert matcher.take(live) == Hit(first)
    assert matcher.take(live) == Hit(second)
    miss = matcher.take(live)
    assert isinstance(miss, Miss)
    assert "GET api.example.com /v1/balance was recorded 2 times" in miss.message
    assert "every recorded answer is used" in miss.message and "E2" in miss.message
    assert matcher.unused() == []


def test_different_keys_may_arrive_in_any_order() -> None:
    a = http("GET", "https://a.example.com/x", event_id="A")
    b = http("GET", "https://b.example.com/y", event_id="B")
    c = http("POST", "https://a.example.com/x", {"n": 1}, event_id="C")
    matcher = Matcher([a, b, c])
    assert matcher.take(http("POST", "https://a.example.com/x", {"n": 1})) == Hit(c)
    assert matcher.take(http("GET", "https://b.example.com/y")) == Hit(b)
    assert matcher.unused() == [a]


def test_miss_names_the_differing_json_path_and_the_closest_call() -> None:
    recorded = [
        http("POST", "https://shop.example.com/v1/orders",
             {"items": [{"sku": "A", "qty": 2}], "note": "gift"}, event_id="EV-ORDER"),
        http("GET", "https://shop.example.com/v1/orders", event_id="EV-LIST"),
        http("POST", "https://other.example.com/v1/orders", {"items": []}, event_id="EV-OTHER"),
    ]
    matcher = Matcher(recorded)
    miss = matcher.take(http("POST", "https://shop.example.com/v1/orders",
                             {"items": [{"sku": "A", "qty": 3}]}))
    assert isinstance(miss, Miss)
    assert miss.closest is recorded[0]
    assert miss.differences == ["body $.items[0].qty: 3 != 2",
                                "body $.note: missing in the live call"]
    assert "POST shop.example.com /v1/orders" in miss.message
    assert "EV-ORDER" in miss.message
    assert "body $.items[0].qty: 3 != 2" in miss.message
    assert matcher.unused() == recorded  # a miss takes nothing


def test_miss_on_query_method_and_host() -> None:
    matcher = Matcher([http("GET", "https://api.example.com/v1/feed?cursor=abc&ts=1",
                            event_id="F")])
    miss = matcher.take(http("GET", "https://api.example.com/v1/feed?cursor=abd&page=2"))
    assert isinstance(miss, Miss)
    assert miss.differences == ["query cursor: 'abd' != 'abc'", "query page: not in the recording",
                                "query ts: missing in the live call"]
    other_host = matcher.take(http("GET", "https://api.example.org/v1/feed?cursor=abc&ts=1"))
    assert isinstance(other_host, Miss) and other_host.closest is not None  # falls back to any call
    assert "host: 'api.example.org' != 'api.example.com'" in other_host.differences


def test_miss_on_text_and_form_bodies() -> None:
    text = http("POST", "https://h.example.com/in", "hello world", event_id="T",
                headers={"Content-Type": "text/plain"})
    form = http("POST", "https://h.example.com/form", "a=1&b=2", event_id="F",
                headers={"Content-Type": "application/x-www-form-urlencoded"})
    matcher = Matcher([text, form])
    miss = matcher.take(http("POST", "https://h.example.com/in", "hello there",
                             headers={"Content-Type": "text/plain"}))
    assert isinstance(miss, Miss) and miss.differences[0].startswith("body: differs at character 6")
    miss = matcher.take(http("POST", "https://h.example.com/form", "b=3&a=1",
                             headers={"Content-Type": "application/x-www-form-urlencoded"}))
    assert isinstance(miss, Miss) and miss.differences == ["body field b: '3' != '2'"]


def test_miss_on_non_http_calls() -> None:
    sms = {"kind": "sms", "target": "twilio", "endpoint": "messages.create", "event_id": "S",
           "request": {"to": "+1555", "from": "+1666", "body": "code 1"}}
    hook = {"kind": "custom", "target": "inventory", "endpoint": "reserve", "event_id": "H",
            "request": {"sku": "A", "opts": {"hold": True}}}
    matcher = Matcher([sms, hook])
    miss = matcher.take({**sms, "request": {**sms["request"], "body": "code 2"}})
    assert isinstance(miss, Miss) and miss.closest is sms
    assert "twilio messages.create" in miss.message
    assert miss.differences[0].startswith("body: differs at character 5")
    miss = matcher.take({**hook, "request": {"sku": "A", "opts": {"hold": False}}})
    assert isinstance(miss, Miss) and miss.differences == ["request $.opts.hold: false != true"]


def test_miss_against_an_empty_recording() -> None:
    miss = Matcher([]).take(http("GET", "https://x.example.com/"))
    assert isinstance(miss, Miss) and miss.closest is None and "no calls" in miss.message


def test_long_difference_lists_are_cut() -> None:
    recorded = http("POST", "https://x.example.com/b", {f"k{i}": i for i in range(30)})
    miss = Matcher([recorded]).take(http("POST", "https://x.example.com/b",
                                         {f"k{i}": -i - 1 for i in range(30)}))
    assert isinstance(miss, Miss) and len(miss.differences) == 30
    assert "… and 18 more" in miss.message


def test_a_hit_computes_one_key_and_never_scans(monkeypatch: pytest.MonkeyPatch) -> None:
    """O(1) per call: a hit makes one key and never compares against recorded calls."""
    events = [http("GET", f"https://api.example.com/v1/items/{i}", event_id=f"E{i}")
              for i in range(5000)]
    matcher = Matcher(events)
    calls = Counter()
    real_key_parts = matching.key_parts

    def counting_key_parts(*args: Any, **kwargs: Any) -> dict[str, Any]:
        calls["key_parts"] += 1
        return real_key_parts(*args, **kwargs)

    def no_scan(*args: Any, **kwargs: Any) -> list[str]:
        raise AssertionError("a hit compared recorded calls")

    monkeypatch.setattr(matching, "key_parts", counting_key_parts)
    monkeypatch.setattr(matching, "differences", no_scan)
    for i in (4999, 0, 2500):
        hit = matcher.take(http("GET", f"https://api.example.com/v1/items/{i}"))
        assert hit == Hit(events[i])
    assert calls["key_parts"] == 3


def test_concurrent_threads_take_each_recorded_call_exactly_once() -> None:
    endpoints = [f"https://api.example.com/v1/e{n}" for n in range(8)]
    recorded = [http("POST", url, {"i": i}, event_id=f"{n}-{i}")
                for n, url in enumerate(endpoints) for i in range(3)]
    recorded += [http("POST", url, {"i": 0}, event_id=f"{n}-again")  # a repeated call
                 for n, url in enumerate(endpoints)]
    matcher = Matcher(recorded)
    results: list[Hit | Miss] = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(endpoints) * 2)

    def worker(url: str) -> None:
        barrier.wait()
        mine = [matcher.take(http("POST", url, {"i": i})) for i in (0, 1, 2, 0, 0)]
        with lock:
            results.extend(mine)

    threads = [threading.Thread(target=worker, args=(url,)) for url in endpoints * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    hits = [r.event["event_id"] for r in results if isinstance(r, Hit)]
    misses = [r for r in results if isinstance(r, Miss)]
    assert sorted(hits) == sorted(e["event_id"] for e in recorded)  # each answered once
    assert len(misses) == len(results) - len(recorded)
    assert matcher.unused() == []


def test_queue_order_is_kept_under_threads() -> None:
    """Threads calling the same key each get recorded answers in recorded order."""
    recorded = [http("GET", "https://api.example.com/tick", event_id=f"T{i:03}")
                for i in range(300)]
    matcher = Matcher(recorded)
    seen: list[list[str]] = [[], [], []]

    def worker(mine: list[str]) -> None:
        for _ in range(100):
            hit = matcher.take(http("GET", "https://api.example.com/tick"))
            assert isinstance(hit, Hit)
            mine.append(hit.event["event_id"])

    threads = [threading.Thread(target=worker, args=(mine,)) for mine in seen]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(mine == sorted(mine) for mine in seen)
    assert sorted(sum(seen, [])) == [f"T{i:03}" for i in range(300)]


def test_options_ignore_and_headers() -> None:
    recorded = http("POST", "https://api.example.com/v1/e?ts=1",
                    {"metadata": {"request_id": "r1"}, "n": 1}, event_id="E",
                    headers={"Content-Type": "application/json", "X-Tenant": "acme"})
    options = MatchOptions(ignore=("body:$.metadata.request_id", "query:ts"), headers=("x-tenant",))
    matcher = Matcher([recorded, recorded], options)
    live = http("POST", "https://api.example.com/v1/e?ts=2", {"metadata": {"request_id": "r2"},
                                                             "n": 1},
                headers={"content-type": "application/json", "x-tenant": "acme"})
    assert matcher.take(live) == Hit(recorded)
    other_tenant = http("POST", "https://api.example.com/v1/e?ts=2", {"metadata": {}, "n": 1},
                        headers={"content-type": "application/json", "x-tenant": "globex"})
    miss = matcher.take(other_tenant)
    assert isinstance(miss, Miss) and miss.differences == ["header x-tenant: 'globex' != 'acme'"]


def test_bad_ignore_rule_fails_when_the_matcher_is_built() -> None:
    with pytest.raises(ValueError, match=r"match-ignore rule 'body:items': a body path starts"):
        Matcher([], MatchOptions(ignore=("body:items",)))
    with pytest.raises(ValueError, match="query:NAME"):
        parse_ignore("cookie:x")


def test_describe() -> None:
    assert describe(http("POST", "https://api.stripe.com:443/v1/charges?x=1")) == \
        "POST api.stripe.com /v1/charges"
    assert describe(http("get", "http://127.0.0.1:8080")) == "GET 127.0.0.1:8080 /"
    assert describe({"kind": "email", "target": "aws:ses", "endpoint": "SendEmail",
                     "request": {}}) == "aws:ses SendEmail"


def test_closest_prefers_a_call_not_yet_used() -> None:
    used = http("POST", "https://api.example.com/v1/pay", {"amount": 1}, event_id="USED")
    free = http("POST", "https://api.example.com/v1/pay", {"amount": 2}, event_id="FREE")
    many = [http("POST", "https://api.example.com/v1/pay", {"amount": 10 + i}, event_id=f"M{i}")
            for i in range(40)]
    matcher = Matcher([used, *many, free])
    assert matcher.take(http("POST", "https://api.example.com/v1/pay", {"amount": 1})) == Hit(used)
    for i in range(40):
        assert isinstance(matcher.take(http("POST", "https://api.example.com/v1/pay",
                                            {"amount": 10 + i})), Hit)
    miss = matcher.take(http("POST", "https://api.example.com/v1/pay", {"amount": 3}))
    assert isinstance(miss, Miss) and miss.closest is free  # not USED, though just as close
    assert "FREE" in miss.message and "(already used)" not in miss.message


def test_an_unparsable_recorded_url_does_not_stop_the_matcher():
    """`urlsplit` refuses `http://[::1/x` (an unbalanced IPv6 bracket): such an event in a
    recording must neither raise nor match anything but an identical call."""
    odd = {"event_id": "odd-1", "kind": "http", "target": "x", "endpoint": "GET /x",
           "request": {"method": "GET", "url": "http://[::1/x", "headers": {}, "body": None}}
    matcher = Matcher([odd])
    assert isinstance(matcher.take(dict(odd)), Hit)
    miss = matcher.take(dict(odd))
    assert isinstance(miss, Miss) and "GET" in miss.message
