"""Mock vendors: each started as its own process (the Docker entry `mocks/<vendor>/app.py`),
driven by the vendor's real SDK (stripe, sendgrid, twilio, boto3, openai), with the shared fault
rules (`tracelab.replay.faults`) applied as configured and bad rules refused with a 422 saying why.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from conftest import free_port

import boto3  # noqa: E402
import httpx  # noqa: E402
import botocore.exceptions  # noqa: E402
import openai  # noqa: E402
import python_http_client.exceptions  # noqa: E402
import stripe  # noqa: E402
from twilio.base.exceptions import TwilioRestException  # noqa: E402

from tracelab.replay.faults import FaultRuleError, FaultSet, parse_rules  # noqa: E402
from tracelab.mocks import VENDORS  # noqa: E402
from tracelab.mocks import clients  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VENDOR_NAMES = ["stripe", "sendgrid", "twilio", "ses", "openai"]
MAIL = {"personalizations": [{"to": [{"email": "ana@example.com"}]}],
        "from": {"email": "support@shop.example"}, "subject": "Your refund",
        "content": [{"type": "text/plain", "value": "Done."}]}
SES_V2 = {"FromEmailAddress": "support@shop.example",
          "Destination": {"ToAddresses": ["ana@example.com"]},
          "Content": {"Simple": {"Subject": {"Data": "Your refund"},
                                 "Body": {"Text": {"Data": "Done."}}}}}


class MockProcess:
    def __init__(self, vendor: str, env: dict[str, str] | None = None) -> None:
        self.vendor = vendor
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "mocks" / vendor / "app.py"), "--port", str(self.port)],
            env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def wait_ready(self, timeout: float = 20.0) -> MockProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mock {self.vendor} exited: {self.proc.stderr.read()}")
            try:
                if requests.get(self.url + "/__tracelab/health", timeout=10).ok:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"mock {self.vendor} did not start")

    @property
    def faults(self) -> str:
        return self.url + "/__tracelab/faults"

    def set_faults(self, rules: object) -> dict:
        reply = requests.put(self.faults, json=rules, timeout=5)
        assert reply.status_code == 200, reply.text
        return reply.json()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def mocks() -> Iterator[dict[str, MockProcess]]:
    started = {v: MockProcess(v) for v in VENDOR_NAMES}
    try:
        for m in started.values():
            m.wait_ready()
        yield started
    finally:
        for m in started.values():
            m.stop()


@pytest.fixture(autouse=True)
def _clear_faults(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "mocks" in request.fixturenames:
        for m in request.getfixturevalue("mocks").values():
            requests.delete(m.faults, timeout=5)


# -- each vendor through its real SDK ---------------------------------------------------------

def test_stripe_charges_payment_intents_refunds(mocks: dict[str, MockProcess]) -> None:
    client = clients.stripe_client(mocks["stripe"].url)
    charge = client.v1.charges.create(params={"amount": 4200, "currency": "usd",
                                              "source": "tok_visa",
                                              "metadata": {"order_id": "o-42"}})
    assert charge.object == "charge" and charge.status == "succeeded" and charge.paid
    assert charge.metadata["order_id"] == "o-42"
    refund = client.v1.refunds.create(params={"charge": charge.id, "amount": 1000})
    assert (refund.object, refund.amount, refund.charge) == ("refund", 1000, charge.id)
    assert client.v1.charges.retrieve(charge.id).amount_refunded == 1000
    with pytest.raises(stripe.InvalidRequestError) as too_much:
        client.v1.refunds.create(params={"charge": charge.id, "amount": 999999})
    assert too_much.value.code == "amount_too_large"

    intent = client.v1.payment_intents.create(params={"amount": 500, "currency": "eur",
                                                      "payment_method": "pm_card_visa",
                                                      "confirm": True})
    assert intent.status == "succeeded" and intent.latest_charge.startswith("ch_")
    assert client.v1.refunds.create(params={"payment_intent": intent.id}).amount == 500

    with pytest.raises(stripe.CardError) as declined:
        client.v1.charges.create(params={"amount": 100, "currency": "usd",
                                         "source": "tok_chargeDeclined"})
    assert declined.value.http_status == 402 and declined.value.code == "card_declined"
    with pytest.raises(stripe.InvalidRequestError) as missing:
        client.v1.charges.create(params={"currency": "usd", "source": "tok_visa"})
    assert missing.value.param == "amount"
    with pytest.raises(stripe.AuthenticationError):
        clients.stripe_client(mocks["stripe"].url, api_key="pk_test_wrong").v1.charges.create(
            params={"amount": 1, "currency": "usd", "source": "tok_visa"})


def test_stripe_idempotency_key_replays(mocks: dict[str, MockProcess]) -> None:
    client = clients.stripe_client(mocks["stripe"].url)
    opts = {"idempotency_key": "order-7-charge"}
    first = client.v1.charges.create(params={"amount": 700, "currency": "usd",
                                             "source": "tok_visa"}, options=opts)
    again = client.v1.charges.create(params={"amount": 700, "currency": "usd",
                                             "source": "tok_visa"}, options=opts)
    assert first.id == again.id


def test_sendgrid_mail_send(mocks: dict[str, MockProcess]) -> None:
    client = clients.sendgrid_client(mocks["sendgrid"].url)
    reply = client.send(MAIL)
    assert reply.status_code == 202 and reply.headers["X-Message-Id"]
    with pytest.raises(python_http_client.exceptions.BadRequestsError) as bad:
        client.send({**MAIL, "from": {}})
    assert json.loads(bad.value.body)["errors"][0]["field"] == "from.email"
    listed = requests.get(mocks["sendgrid"].url + "/__mock/messages", timeout=5).json()
    assert any(m["mail"]["subject"] == "Your refund" for m in listed["messages"])


def test_twilio_messages(mocks: dict[str, MockProcess]) -> None:
    client = clients.twilio_client(mocks["twilio"].url)
    message = client.messages.create(to="+15551234567", from_="+15557654321",
                                     body="Your refund is on its way")
    assert message.sid.startswith("SM") and message.status == "queued"
    assert message.to == "+15551234567" and message.body == "Your refund is on its way"
    assert client.messages(message.sid).fetch().sid == message.sid
    with pytest.raises(TwilioRestException) as invalid:
        client.messages.create(to="+15005550001", from_="+15557654321", body="x")
    assert invalid.value.status == 400 and invalid.value.code == 21211
    wrong = clients.twilio_client(mocks["twilio"].url, account_sid="AC" + "f" * 32)
    wrong.http_client.request  # noqa: B018  (the same rewriting client)
    ok = wrong.messages.create(to="+15551234567", from_="+15557654321", body="other account")
    assert ok.account_sid == "AC" + "f" * 32


def test_ses_v1_and_v2(mocks: dict[str, MockProcess]) -> None:
    v2 = clients.ses_client(mocks["ses"].url, "sesv2")
    assert v2.send_email(**SES_V2)["MessageId"]
    v1 = clients.ses_client(mocks["ses"].url, "ses")
    sent = v1.send_email(Source="support@shop.example",
                         Destination={"ToAddresses": ["ana@example.com"]},
                         Message={"Subject": {"Data": "Hi"}, "Body": {"Text": {"Data": "x"}}})
    assert sent["MessageId"] and sent["ResponseMetadata"]["HTTPStatusCode"] == 200
    for client, kwargs in ((v2, {**SES_V2, "FromEmailAddress": "x@unverified.example"}),
                           (v1, {"Source": "x@unverified.example",
                                 "Destination": {"ToAddresses": ["ana@example.com"]},
                                 "Message": {"Subject": {"Data": "Hi"},
                                             "Body": {"Text": {"Data": "x"}}}})):
        with pytest.raises(botocore.exceptions.ClientError) as rejected:
            client.send_email(**kwargs)
        assert rejected.value.response["Error"]["Code"] == "MessageRejected"
    listed = requests.get(mocks["ses"].url + "/__mock/messages", timeout=5).json()["messages"]
    assert {m["api"] for m in listed} == {"v1", "v2"}


def test_openai_chat_completions_and_stream(mocks: dict[str, MockProcess]) -> None:
    client = clients.openai_client(mocks["openai"].url)
    reply = client.chat.completions.create(
        model="gpt-4o-mini", response_format={"type": "json_object"},
        messages=[{"role": "system", "content": "You are a support agent."},
                  {"role": "user", "content": "My blender arrived broken, refund 59.90 please"}])
    decision = json.loads(reply.choices[0].message.content)
    assert decision["action"] == "refund" and decision["amount"] == 5990
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    stream = client.chat.completions.create(
        model="gpt-4o-mini", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "I'd like to order a kettle"}])
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("Action: charge.") and len(chunks) > 4
    assert chunks[-1].usage is not None
    no_key = requests.post(mocks["openai"].url + "/v1/chat/completions", timeout=5,
                           json={"model": "m", "messages": [{"role": "user", "content": "x"}]})
    assert no_key.status_code == 401 and no_key.json()["error"]["type"] == \
        "invalid_request_error"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="gpt-4o-mini", messages=[])


# -- fault rules ------------------------------------------------------------------------------

def test_latency_applies_to_matching_requests_only(mocks: dict[str, MockProcess]) -> None:
    mock = mocks["stripe"]
    mock.set_faults({"method": "POST", "path": "/v1/refunds", "latency_ms": 500})
    client = clients.stripe_client(mock.url)
    started = time.monotonic()
    charge = client.v1.charges.create(params={"amount": 100, "currency": "usd",
                                              "source": "tok_visa"})
    fast = time.monotonic() - started
    started = time.monotonic()
    client.v1.refunds.create(params={"charge": charge.id})
    slow = time.monotonic() - started
    assert slow >= 0.5 and fast < 0.5
    rules = requests.get(mock.faults, timeout=5).json()["rules"]
    assert rules[0]["matched"] == 1 and rules[0]["applied"] == 1


def test_status_fault_uses_vendor_error_shapes(mocks: dict[str, MockProcess]) -> None:
    mocks["openai"].set_faults({"path": "/v1/chat/*", "status": 429, "times": 1,
                                "headers": {"Retry-After": "1"}})
    client = clients.openai_client(mocks["openai"].url)
    with pytest.raises(openai.RateLimitError) as limited:
        client.chat.completions.create(model="gpt-4o-mini",
                                       messages=[{"role": "user", "content": "hi"}])
    assert limited.value.code == "rate_limit_exceeded"
    assert limited.value.response.headers["retry-after"] == "1"
    # `times: 1`: the next call goes through
    assert client.chat.completions.create(model="gpt-4o-mini",
                                          messages=[{"role": "user", "content": "hi"}]).id

    mocks["stripe"].set_faults({"method": "POST", "path": "/v1/charges", "status": 500})
    with pytest.raises(stripe.APIError) as api_error:
        clients.stripe_client(mocks["stripe"].url).v1.charges.create(
            params={"amount": 1, "currency": "usd", "source": "tok_visa"})
    assert api_error.value.http_status == 500

    mocks["twilio"].set_faults({"path": "*/Messages.json", "status": 503,
                                "body": {"code": 20503, "message": "Down for the test",
                                         "status": 503}})
    with pytest.raises(TwilioRestException) as down:
        clients.twilio_client(mocks["twilio"].url).messages.create(
            to="+15551234567", from_="+15557654321", body="x")
    assert down.value.status == 503 and "Down for the test" in down.value.msg

    mocks["ses"].set_faults({"path": "/", "status": 400})
    with pytest.raises(botocore.exceptions.ClientError) as ses_error:
        clients.ses_client(mocks["ses"].url, "ses").send_email(
            Source="a@shop.example", Destination={"ToAddresses": ["b@example.com"]},
            Message={"Subject": {"Data": "s"}, "Body": {"Text": {"Data": "b"}}})
    assert ses_error.value.response["Error"]["Code"] == "MessageRejected"

    mocks["sendgrid"].set_faults({"method": "POST", "path": "/v3/mail/send", "status": 500,
                                  "body": "upstream exploded"})
    with pytest.raises(python_http_client.exceptions.InternalServerError) as boom:
        clients.sendgrid_client(mocks["sendgrid"].url).send(MAIL)
    assert boom.value.body == b"upstream exploded"


def test_connection_reset(mocks: dict[str, MockProcess]) -> None:
    mock = mocks["stripe"]
    mock.set_faults({"method": "POST", "path": "/v1/charges", "reset": True, "times": 2})
    with pytest.raises(requests.ConnectionError) as raw:
        requests.post(mock.url + "/v1/charges", data={"amount": 1}, timeout=5)
    assert "reset" in str(raw.value).lower() or "aborted" in str(raw.value).lower()
    with pytest.raises(stripe.APIConnectionError):
        clients.stripe_client(mock.url).v1.charges.create(
            params={"amount": 1, "currency": "usd", "source": "tok_visa"})
    # both resets used up: the SDK's own retry path now succeeds
    assert clients.stripe_client(mock.url).v1.charges.create(
        params={"amount": 1, "currency": "usd", "source": "tok_visa"}).paid
    mocks["openai"].set_faults({"path": "/v1/chat/completions", "reset": True})
    with pytest.raises(openai.APIConnectionError):
        clients.openai_client(mocks["openai"].url).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}])


def test_timeout_holds_the_request(mocks: dict[str, MockProcess]) -> None:
    mock = mocks["sendgrid"]
    mock.set_faults({"path": "/v3/*", "timeout": True, "timeout_s": 30})
    started = time.monotonic()
    with pytest.raises(requests.ReadTimeout):
        requests.post(mock.url + "/v3/mail/send", json=MAIL, timeout=0.5,
                      headers={"Authorization": "Bearer SG.x"})
    assert 0.5 <= time.monotonic() - started < 5
    # the mock is still healthy and answers other paths
    assert requests.get(mock.url + "/__tracelab/health", timeout=5).ok


def _models(mock: MockProcess, client: Any = requests) -> Any:
    return client.get(mock.url + "/v1/models", headers={"Authorization": "Bearer sk-x"},
                      timeout=5)


def test_empty_malformed_and_truncated_bodies(mocks: dict[str, MockProcess]) -> None:
    mock = mocks["openai"]
    whole = _models(mock).content
    mock.set_faults({"endpoint": "GET /v1/models", "empty_body": True, "times": 1})
    empty = _models(mock)
    assert empty.status_code == 200 and empty.content == b""
    assert empty.headers["content-length"] == "0"
    mock.set_faults({"endpoint": "GET /v1/models", "malformed_body": True, "times": 1})
    malformed = _models(mock, httpx)
    assert malformed.status_code == 200 and malformed.content == whole[:len(whole) // 2] + b'{"'
    with pytest.raises(ValueError):
        malformed.json()
    mock.set_faults({"endpoint": "GET /v1/models", "truncate_after": 10, "times": 1})
    truncated = _models(mock)
    assert truncated.content == whole[:10] and truncated.headers["content-length"] == "10"
    assert _models(mock).content == whole  # `times` used up
    mock.set_faults({"path": "/v1/chat/completions", "malformed_body": True})
    with pytest.raises(ValueError):  # the real SDK cannot read the answer (JSONDecodeError)
        clients.openai_client(mock.url).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}])


def _sse_events(mock: MockProcess, read: str) -> tuple[list[bytes], BaseException | None]:
    """The SSE events of a streamed chat completion read with a real client, and the error
    that ended the read (None when the stream completed)."""
    body = {"model": "gpt-4o", "stream": True,
            "messages": [{"role": "user", "content": "refund order o-42 please"}]}
    headers = {"Authorization": "Bearer sk-x"}
    url = mock.url + "/v1/chat/completions"
    raw = b""
    try:
        if read == "requests":
            with requests.post(url, json=body, headers=headers, stream=True, timeout=5) as r:
                for piece in r.iter_content(chunk_size=None):
                    raw += piece
        else:
            with httpx.stream("POST", url, json=body, headers=headers, timeout=5) as r:
                for piece in r.iter_raw():
                    raw += piece
    except (requests.exceptions.ChunkedEncodingError, httpx.RemoteProtocolError) as exc:
        return [e for e in raw.split(b"\n\n") if e], exc
    return [e for e in raw.split(b"\n\n") if e], None


@pytest.mark.parametrize("read", ["requests", "httpx"])
def test_stream_cut_after_n_chunks(mocks: dict[str, MockProcess], read: str) -> None:
    mock = mocks["openai"]
    full, error = _sse_events(mock, read)
    assert error is None and len(full) > 4 and full[-1] == b"data: [DONE]"
    mock.set_faults({"endpoint": "POST /v1/chat/*", "stream_cut_after": 3, "id": "cut"})
    events, error = _sse_events(mock, read)
    assert error is not None  # the body never ended: the client sees it cut short
    assert len(events) == 3 and all(e.startswith(b"data: {") for e in events)
    assert json.loads(events[0][6:])["choices"][0]["delta"]["role"] == "assistant"
    mock.set_faults({"endpoint": "POST /v1/chat/*", "stream_cut_after": 0})
    assert _sse_events(mock, read)[0] == []
    stream = clients.openai_client(mock.url).chat.completions.create(
        model="gpt-4o", stream=True, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(httpx.RemoteProtocolError):  # the SDK's stream fails mid-way
        list(stream)


def test_retry_after_header_and_a_client_that_honours_it(mocks: dict[str, MockProcess]) -> None:
    mock = mocks["openai"]
    mock.set_faults({"endpoint": "POST /v1/chat/completions", "status": 429, "retry_after": 1,
                     "times": 1, "id": "limited"})
    reply = requests.post(mock.url + "/v1/chat/completions", headers={"Authorization": "Bearer x"},
                          json={"model": "m", "messages": [{"role": "user"}]}, timeout=5)
    assert reply.status_code == 429 and reply.headers["Retry-After"] == "1"
    assert reply.json()["error"]["type"] == "requests"  # the vendor's own 429 shape
    mock.set_faults({"endpoint": "POST /v1/chat/completions", "status": 429, "retry_after": 1,
                     "times": 1, "id": "limited"})
    started = time.monotonic()
    answer = clients.openai_client(mock.url, max_retries=1).chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content
    assert time.monotonic() - started >= 1.0  # the SDK waited as Retry-After said
    rule = requests.get(mock.faults + "/limited", timeout=5).json()
    assert (rule["matched"], rule["applied"], rule["retry_after"]) == (2, 1, 1)


def test_match_body_reads_the_body_and_hands_it_on(mocks: dict[str, MockProcess]) -> None:
    stripe_mock = mocks["stripe"]
    stripe_mock.set_faults({"endpoint": "POST /v1/charges", "match_body": {"$.amount": "1??"},
                            "status": 402})
    client = clients.stripe_client(stripe_mock.url)
    with pytest.raises(stripe.CardError):
        client.v1.charges.create(params={"amount": 100, "currency": "usd", "source": "tok_visa"})
    charge = client.v1.charges.create(params={"amount": 2500, "currency": "usd",
                                              "source": "tok_visa"})
    assert charge.amount == 2500 and charge.currency == "usd"  # the app read the body
    oa = mocks["openai"]
    oa.set_faults({"kind": "llm", "match_body": {"$.model": "gpt-4o*",
                                                 "$.messages[0].role": "user"}, "status": 500})
    llm = clients.openai_client(oa.url)
    with pytest.raises(openai.InternalServerError):
        llm.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user",
                                                                     "content": "hi"}])
    ok = llm.chat.completions.create(model="o3", messages=[{"role": "user", "content": "hi"}])
    assert ok.model == "o3"
    rules = requests.get(oa.faults, timeout=5).json()["rules"]
    assert (rules[0]["matched"], rules[0]["applied"]) == (1, 1)


def test_nth_kind_and_target_on_a_mock(mocks: dict[str, MockProcess]) -> None:
    mock = mocks["openai"]
    mock.set_faults({"kind": "llm", "target": "127.0.0.1", "endpoint": "GET /v1/models",
                     "nth": [2], "status": 500})
    assert [_models(mock).status_code for _ in range(3)] == [200, 500, 200]
    mock.set_faults([{"kind": "http", "status": 500}, {"target": "example.com", "reset": True}])
    assert _models(mock).status_code == 200  # the OpenAI mock's calls are kind llm
    mocks["twilio"].set_faults({"kind": "http", "target": "127.0.0.1:*", "status": 503})
    assert requests.get(mocks["twilio"].url + "/2010-04-01/Accounts.json",
                        timeout=5).status_code == 503


def _statuses(mock: MockProcess, n: int) -> list[int]:
    return [requests.post(mock.url + "/v1/charges", timeout=5,
                          headers={"Authorization": "Bearer sk_test_x"},
                          data={"amount": 1, "currency": "usd", "source": "tok_visa"}).status_code
            for _ in range(n)]


def test_rate_with_seed_is_repeatable(mocks: dict[str, MockProcess]) -> None:
    mock = mocks["stripe"]
    rule = {"method": "POST", "path": "/v1/*", "status": 503, "rate": 0.3, "seed": 1234}
    mock.set_faults(rule)
    first = _statuses(mock, 40)
    mock.set_faults(rule)  # fresh rule, same seed: the same sequence
    second = _statuses(mock, 40)
    assert first == second
    rng = random.Random(1234)
    assert first == [503 if rng.random() < 0.3 else 200 for _ in range(40)]
    assert 4 <= first.count(503) <= 20
    mock.set_faults({**rule, "seed": 99})
    assert _statuses(mock, 40) != first
    mock.set_faults({**rule, "rate": 0})
    assert set(_statuses(mock, 10)) == {200}


def test_bad_rules_are_refused_with_reasons(mocks: dict[str, MockProcess]) -> None:
    mock = mocks["twilio"]
    mock.set_faults({"id": "keep", "path": "/x", "latency_ms": 1})
    cases = [
        ({"path": "/v1/*", "status": 9}, "status: must be an integer HTTP status"),
        ({"path": "/v1/*", "status": 500, "rate": 1.5}, "rate: must be a number from 0 to 1"),
        ({"path": "/v1/*", "reset": True, "seed": "abc"}, "seed: must be an integer"),
        ({"path": "/v1/*"}, "no effect"),
        ({"endpoint": "POST /x", "path": "/x", "status": 500}, "exclude each other"),
        ({"path": "v1", "status": 500}, "must start with '/'"),
        ({"path": "/a", "status": 500, "reset": True}, "exclude each other"),
        ({"path": "/a", "latency_ms": -5}, "latency_ms: must be a number"),
        ({"path": "/a", "reset": True, "method": "FETCH"}, "method: must be one of"),
        ({"path": "/a", "reset": True, "colour": "red"}, "unknown key(s) 'colour'"),
        ({"path": "/a", "timeout": True, "timeout_s": 0}, "timeout_s"),
        ([{"path": "/a", "reset": True}, {"path": "/b", "status": "500"}],
         "rules[1].status"),
        ({"path": "/a", "reset": True, "id": "keep"}, "already exist"),
    ]
    for rule, reason in cases:
        reply = requests.post(mock.faults, json=rule, timeout=5)
        assert reply.status_code == 422, (rule, reply.text)
        assert reason in reply.json()["detail"], (reason, reply.json())
    not_json = requests.post(mock.faults, data=b"{nope", timeout=5)
    assert not_json.status_code == 422 and "not JSON" in not_json.json()["detail"]
    # nothing was added by the refused requests
    assert [r["id"] for r in requests.get(mock.faults, timeout=5).json()["rules"]] == ["keep"]
    assert requests.delete(mock.faults + "/keep", timeout=5).json() == {"removed": 1}
    assert requests.delete(mock.faults + "/keep", timeout=5).status_code == 404


def test_mock_faults_env_at_start() -> None:
    rules = [{"method": "POST", "path": "/v1/charges", "status": 402, "times": 1}]
    mock = MockProcess("stripe", {"MOCK_FAULTS": json.dumps(rules)}).wait_ready()
    try:
        assert requests.get(mock.faults, timeout=5).json()["rules"][0]["status"] == 402
        with pytest.raises(stripe.CardError):
            clients.stripe_client(mock.url).v1.charges.create(
                params={"amount": 1, "currency": "usd", "source": "tok_visa"})
    finally:
        mock.stop()
    bad = MockProcess("openai", {"MOCK_FAULTS": '[{"path": "/v1/*", "rate": 3}]'})
    try:
        assert bad.proc.wait(20) == 2
        assert "rate: must be a number from 0 to 1" in bad.proc.stderr.read()
    finally:
        bad.stop()


def test_fault_set_without_a_server() -> None:
    faults = FaultSet(parse_rules([
        {"method": "GET", "path": "/v1/charges/*", "status": 404},
        {"path": "/v1/*", "latency_ms": 10, "times": 2},
    ]))
    assert faults.decide("GET", "/v1/charges/ch_1").status == 404
    assert faults.decide("POST", "/v1/charges").latency_ms == 10
    assert faults.decide("POST", "/v1/charges").latency_ms == 10
    assert faults.decide("POST", "/v1/charges") is None  # `times` used up
    assert faults.decide("POST", "/v2/x") is None
    with pytest.raises(FaultRuleError) as err:
        parse_rules({"rules": [{"path": "/a", "reset": True, "id": "x"},
                               {"path": "/b", "reset": True, "id": "x"}]})
    assert "duplicate rule id" in str(err.value)


def test_tracelab_mocks_command_prints_urls_and_serves() -> None:
    base = free_port()
    while base + 4 > 65535 or any(not _free(base + i) for i in range(5)):
        base = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tracelab.cli", "mocks", "--only",
                             "stripe,openai", "--base-port", str(base)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = [proc.stdout.readline() for _ in range(2)]
        assert f"http://127.0.0.1:{base}" in lines[0] and "stripe" in lines[0]
        deadline = time.monotonic() + 10
        while "openai" not in lines[-1] and time.monotonic() < deadline:
            lines.append(proc.stdout.readline())
        assert f"http://127.0.0.1:{base + VENDORS['openai'].offset}" in lines[-1]
        assert clients.openai_client(f"http://127.0.0.1:{base + 4}").chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}]).id
        with pytest.raises(requests.ConnectionError):  # sendgrid was not asked for
            requests.get(f"http://127.0.0.1:{base + 1}/__tracelab/health", timeout=2)
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
    bad = subprocess.run([sys.executable, "-m", "tracelab.cli", "mocks", "--only", "paypal"],
                         cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "unknown mock(s) paypal" in bad.stderr


def _free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
