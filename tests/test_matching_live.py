"""A recording made by the real SDK (requests -> loopback server -> real Redis) matches live calls
turned into the stored shape by `http_request_view`: redacted secrets, random multipart
boundaries and reordered JSON make no difference; a changed value is a miss naming the path."""
from __future__ import annotations

from typing import Any

import requests
from conftest import LoopbackHTTP, RedisServer, read_events

from tracelab.replay.matching import Hit, Matcher, Miss, http_request_view
from tracelab.sdk.recorder import current


def _calls(base: str, token: str, key: str, password: str, amount: int) -> list[requests.Request]:
    """The same five calls, with the secrets (and the amount) given."""
    return [
        requests.Request("POST", f"{base}/v1/login?api_key={key}&v=2",
                         headers={"Authorization": f"Bearer {token}"},
                         json={"user": "ada", "password": password,
                               "echo": token,  # a secret echoed under an innocent name
                               "note": f"rotated sk_live_FAKE{key}0123456789"}),
        requests.Request("POST", f"{base}/v1/charges", data={"amount": str(amount),
                                                             "card[number]": password,
                                                             "currency": "eur"}),
        requests.Request("POST", f"{base}/v1/files", files={"file": ("a.txt", b"line one\n")},
                         data={"purpose": "batch"}),
        requests.Request("GET", f"{base}/v1/items?page=2&tag=a"),
        requests.Request("POST", f"{base}/v1/orders",
                         json={"items": [{"sku": "A", "qty": amount}]}),
    ]


def _live(prepared: requests.PreparedRequest) -> dict[str, Any]:
    rec = current()
    assert rec is not None
    view = http_request_view(prepared.method or "GET", prepared.url or "", prepared.headers,
                             prepared.body, None, rec.redactor, rec.config.max_body_bytes)
    return {"kind": "http", "request": view}


def test_recording_matches_live_calls_with_other_secrets(traced: RedisServer,
                                                        loopback_http: LoopbackHTTP) -> None:
    session = requests.Session()
    originals = _calls(loopback_http.url, "FAKEtoken-rec-0001", "FAKEkeyREC1", "pw-REC-1", 2)
    prepared = [session.prepare_request(r) for r in originals]
    for p in prepared:
        assert session.send(p).status_code == 200
    events, raw = read_events(traced)
    assert len(events) == 5
    for secret in (b"FAKEtoken-rec-0001", b"FAKEkeyREC1", b"pw-REC-1"):
        assert secret not in raw

    assert events[0]["request"]["body"]["echo"] == "[REDACTED]"  # scrubbed on submit
    # The very same calls, viewed live, are exactly what was stored.
    for p, event in zip(prepared, events):
        assert _live(p)["request"] == event["request"]

    matcher = Matcher(events)
    again = [session.prepare_request(r) for r in
             _calls(loopback_http.url, "FAKEtoken-live-9999", "FAKEkeyLIVE", "pw-LIVE-2", 2)]
    assert again[2].body != prepared[2].body  # a new random multipart boundary
    for p, event in zip(reversed(again), reversed(events)):
        assert matcher.take(_live(p)) == Hit(event)
    assert matcher.unused() == []

    changed = session.prepare_request(_calls(loopback_http.url, "t", "k", "p", 3)[4])
    miss = Matcher(events).take(_live(changed))
    assert isinstance(miss, Miss) and miss.closest == events[4]
    assert miss.differences == ["body $.items[0].qty: 3 != 2"]
    assert events[4]["event_id"] in miss.message


class _Keep:
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 OK"


def test_recorded_mails_match_despite_random_mime_boundaries(traced: RedisServer) -> None:
    """Two real sends of one multipart mail (each with a new random boundary, recipients in
    another order) get one key; a changed text part does not, and the miss says where."""
    import smtplib
    from email.message import EmailMessage

    from aiosmtpd.controller import Controller
    from conftest import free_port

    def mail(text: str) -> EmailMessage:
        msg = EmailMessage()
        msg["Subject"], msg["From"], msg["To"] = "Receipt", "shop@example.com", "a@example.com"
        msg.set_content(text)
        msg.add_alternative(f"<p>{text}</p>", subtype="html")
        return msg

    controller = Controller(_Keep(), hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        with smtplib.SMTP("127.0.0.1", controller.port) as smtp:
            smtp.send_message(mail("Thanks!"), to_addrs=["b@example.com", "a@example.com"])
            smtp.send_message(mail("Thanks!"), to_addrs=["a@example.com", "b@example.com"])
            smtp.send_message(mail("Thanks."), to_addrs=["a@example.com", "b@example.com"])
    finally:
        controller.stop()
    first, second, changed = read_events(traced)[0]
    assert first["kind"] == "email" and first["request"]["body"] != second["request"]["body"]
    matcher = Matcher([first])
    assert matcher.take(second) == Hit(first)
    miss = Matcher([first]).take(changed)
    assert isinstance(miss, Miss) and miss.closest == first
    assert len(miss.differences) == 1 and miss.differences[0].startswith("body: differs at")
