"""A customer-support refund agent, recorded by TraceLab against the mock vendors.

For each support ticket the agent:

1. looks the order up in the shop's order book (`@trace` step, a local dict here);
2. asks the LLM what to do (OpenAI SDK, `base_url` = the OpenAI mock): refund, charge or
   escalate, as JSON, streamed (so the trace shows the time to first token and the usage);
3. refunds or charges the card (Stripe SDK, `base_addresses={"api": …}` = the Stripe mock);
4. emails the customer through SendGrid (`host=` the SendGrid mock; SendGrid's client uses
   urllib, which TraceLab does not patch, so this file traces it with ONE `register_hook`) and
   sends the receipt copy through Amazon SES (boto3 `sesv2`, `endpoint_url=` the SES mock);
5. texts the customer through Twilio (a `TwilioHttpClient` subclass that rewrites
   `https://api.twilio.com` to the Twilio mock: `tracelab.mocks.clients.twilio_client`).

Every vendor call goes through `with_retries`: up to 4 attempts with exponential backoff on
connection errors, timeouts, 429 and 5xx. Each run is one TraceLab execution of the workflow
`refund-agent`; some runs first install fault rules on the mocks (rate limits, resets,
latency, an outage), so their timelines show failures, retries and a degraded outcome.

Run it (mocks on 127.0.0.1:9100-9104, from `tracelab mocks` or `--start-mocks`):

    python examples/refund_agent.py --start-mocks --runs 6
    tracelab serve        # then open http://127.0.0.1:3000

`MOCK_STRIPE_URL`, `MOCK_SENDGRID_URL`, `MOCK_TWILIO_URL`, `MOCK_SES_URL`, `MOCK_OPENAI_URL`
override single mock URLs (docker compose: `http://mock-stripe:9100`, …).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, TypeVar

import tracelab
from tracelab.mocks import DEFAULT_BASE_PORT, VENDORS
from tracelab.mocks import clients as mock_clients

WORKFLOW = "refund-agent"
SERVICE = "refund-agent"
T = TypeVar("T")


# -- the shop ---------------------------------------------------------------------------------

@dataclass
class Order:
    order_id: str
    customer: str
    email: str
    phone: str
    item: str
    amount: int  # cents
    currency: str = "usd"
    charge_id: str | None = None  # set once paid


ORDERS: dict[str, Order] = {}


@dataclass
class Ticket:
    scenario: str
    order_id: str
    message: str
    faults: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    note: str = ""


SCENARIOS: list[Ticket] = [
    Ticket("refund", "o-1001", "My blender arrived broken. I'd like a refund of 59.90 please.",
           note="happy path: LLM says refund, Stripe refunds, email + SMS"),
    Ticket("new-order", "o-1002", "Please order the blue kettle for me, 39.90 on my card.",
           note="happy path: LLM says charge, Stripe payment intent"),
    Ticket("llm-rate-limited", "o-1003", "The headphones are damaged, refund 120 please.",
           faults={"openai": [{"method": "POST", "path": "/v1/chat/completions",
                               "status": 429, "times": 2, "headers": {"Retry-After": "0"}}]},
           note="OpenAI answers 429 twice; the agent backs off and retries"),
    Ticket("stripe-flaky", "o-1004", "Wrong size, I want to return these shoes for a refund.",
           faults={"stripe": [{"method": "POST", "path": "/v1/refunds", "reset": True,
                               "times": 1},
                              {"method": "POST", "path": "/v1/refunds", "status": 503,
                               "times": 1}]},
           note="Stripe resets the connection, then 503s; the third attempt succeeds"),
    Ticket("sms-outage", "o-1005", "The lamp is broken, refund please.",
           faults={"twilio": [{"method": "POST", "path": "*/Messages.json", "status": 503}],
                   "ses": [{"method": "POST", "path": "/v2/email/*", "latency_ms": 400}]},
           note="Twilio is down for the whole run: SMS given up after 4 attempts; slow SES"),
    Ticket("escalation", "o-1006", "I want to talk to a manager about my account.",
           faults={"sendgrid": [{"method": "POST", "path": "/v3/mail/send", "status": 500,
                                 "rate": 0.5, "seed": 7}]},
           note="LLM escalates; SendGrid fails half the time (seeded)"),
]


def seed_orders() -> None:
    """The shop's order book (orders 1001-1006). Paid orders get their Stripe charge at first use."""
    items = [("o-1001", "Ana Lima", "blender", 5990), ("o-1002", "Ben Okafor", "kettle", 3990),
             ("o-1003", "Chloé Martin", "headphones", 12000), ("o-1004", "Dev Patel", "shoes", 8450),
             ("o-1005", "Eva Novak", "lamp", 2599), ("o-1006", "Farid Haddad", "gift card", 1500)]
    for i, (oid, name, item, amount) in enumerate(items):
        ORDERS.setdefault(oid, Order(oid, name, f"{name.split()[0].lower()}@example.com",
                                     f"+1555010{1000 + i}", item, amount))


# -- wiring the real SDKs to the mocks --------------------------------------------------------

def mock_urls(base_port: int = DEFAULT_BASE_PORT, host: str = "127.0.0.1") -> dict[str, str]:
    urls = {name: f"http://{host}:{v.port(base_port)}" for name, v in VENDORS.items()}
    for name in urls:
        urls[name] = os.environ.get(f"MOCK_{name.upper()}_URL") or urls[name]
    return urls


class Clients:
    def __init__(self, urls: dict[str, str]) -> None:
        import stripe

        self.urls = urls
        # SDK-level retries off: this agent retries itself, so every attempt is visible.
        self.stripe = mock_clients.stripe_client(
            urls["stripe"], max_network_retries=0, http_client=stripe.RequestsClient(timeout=5))
        self.openai = mock_clients.openai_client(urls["openai"], max_retries=0, timeout=5.0)
        self.sendgrid = mock_clients.sendgrid_client(urls["sendgrid"])
        self.ses = mock_clients.ses_client(urls["ses"], "sesv2")
        self.twilio = mock_clients.twilio_client(urls["twilio"])


def set_faults(url: str, rules: list[dict[str, Any]]) -> None:
    """Replace a mock's fault rules (urllib: TraceLab does not record this set-up call).

    Skipped under `tracelab replay`: the recording answers every call, faults included."""
    if os.environ.get("TRACELAB_REPLAY"):
        return
    request = urllib.request.Request(url + "/__tracelab/faults", method="PUT",
                                     data=json.dumps(rules).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as reply:
        reply.read()


# -- the one custom hook: SendGrid (urllib underneath, so not patched by TraceLab) -------------

def capture_sendgrid(self: Any, message: Any) -> dict[str, Any]:
    mail = message.get() if hasattr(message, "get") and not isinstance(message, dict) \
        else message
    to = [r.get("email") for p in mail.get("personalizations", []) for r in p.get("to", [])]
    return {"service": "sendgrid", "kind": "email", "endpoint": "POST /v3/mail/send",
            "request": {"to": to, "from": mail.get("from", {}).get("email"),
                        "subject": mail.get("subject")},
            "response": {"accepted": True}}


def replay_sendgrid(recorded: dict[str, Any]) -> Any:
    """`tracelab replay`: the recorded send, answered without sending (a recorded failure is
    raised again, as a retryable error)."""
    if recorded.get("status") == "error":
        raise ConnectionError(f"replayed SendGrid failure: {recorded.get('error')}")
    return SimpleNamespace(status_code=202, body=b"", headers={})


def install_hook() -> None:
    import sendgrid

    tracelab.register_hook(sendgrid.SendGridAPIClient, "send", capture_sendgrid,
                           replay=replay_sendgrid)


# -- retries ------------------------------------------------------------------------------------

class GaveUp(Exception):
    """All attempts failed; `last` is the final error."""

    def __init__(self, what: str, attempts: int, last: BaseException) -> None:
        super().__init__(f"{what}: gave up after {attempts} attempts: {last}")
        self.last = last


def retryable(exc: BaseException) -> bool:
    import botocore.exceptions
    import openai
    import python_http_client.exceptions as sg_errors
    import requests
    import stripe
    from twilio.base.exceptions import TwilioRestException

    if isinstance(exc, (ConnectionError, TimeoutError, requests.ConnectionError,
                        requests.Timeout, openai.APIConnectionError, stripe.APIConnectionError,
                        stripe.RateLimitError, openai.RateLimitError,
                        botocore.exceptions.EndpointConnectionError,
                        botocore.exceptions.ReadTimeoutError)):
        return True
    status = getattr(exc, "http_status", None) or getattr(exc, "status_code", None) or \
        getattr(exc, "status", None)
    if isinstance(exc, sg_errors.HTTPError):
        status = exc.status_code
    if isinstance(exc, botocore.exceptions.ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if isinstance(exc, TwilioRestException):
        status = exc.status
    return isinstance(status, int) and (status == 429 or status >= 500)


ATTEMPTS = 4  # `--no-retry` sets 1: the deliberately fragile agent of examples/ci


def with_retries(what: str, call: Callable[[], T], attempts: int | None = None,
                 base_delay: float = 0.05, rng: random.Random | None = None) -> T:
    rng = rng or random.Random(0)
    attempts = attempts or ATTEMPTS
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except Exception as exc:
            if attempt == attempts or not retryable(exc):
                if attempt > 1:
                    raise GaveUp(what, attempt, exc) from exc
                raise
            delay = base_delay * 2 ** (attempt - 1) * (1 + rng.random() / 2)
            print(f"  {what}: attempt {attempt} failed ({type(exc).__name__}); retrying in "
                  f"{delay * 1000:.0f} ms", flush=True)
            time.sleep(delay)
    raise AssertionError("unreachable")


# -- the agent's steps ----------------------------------------------------------------------------

@tracelab.trace
def lookup_order(order_id: str) -> Order:
    order = ORDERS.get(order_id)
    if order is None:
        raise KeyError(f"no order {order_id}")
    return order


@tracelab.trace
def decide(c: Clients, ticket: Ticket, order: Order) -> dict[str, Any]:
    """The LLM's decision, streamed as a chat UI would show it: the event gets the time to the
    first token (`llm.ttft_ms`) and, from the final usage chunk, the token counts."""
    stream = with_retries("openai", lambda: c.openai.chat.completions.create(
        model="gpt-4o-mini", response_format={"type": "json_object"}, temperature=0,
        stream=True, stream_options={"include_usage": True},
        messages=[{"role": "system", "content": "You are a support agent for an online shop. "
                   "Answer with JSON {action: refund|charge|escalate, amount, reply}. "
                   f"The customer's order: {order.order_id}, {order.item}, "
                   f"{order.amount / 100:.2f} {order.currency.upper()}."},
                  {"role": "user", "content": ticket.message}]))
    with stream:
        answer = "".join(chunk.choices[0].delta.content or "" for chunk in stream
                         if chunk.choices)
    return json.loads(answer)


@tracelab.trace
def ensure_paid(c: Clients, order: Order) -> str:
    """The original purchase, if the shop has not charged this order yet."""
    if order.charge_id is None:
        charge = with_retries("stripe charge", lambda: c.stripe.v1.charges.create(
            params={"amount": order.amount, "currency": order.currency, "source": "tok_visa",
                    "metadata": {"order_id": order.order_id}},
            options={"idempotency_key": f"charge-{order.order_id}-{uuid.uuid4().hex[:6]}"}))
        order.charge_id = charge.id
    return order.charge_id


@tracelab.trace
def refund_payment(c: Clients, order: Order, amount: int | None) -> Any:
    charge_id = ensure_paid(c, order)
    key = f"refund-{order.order_id}-{uuid.uuid4().hex[:8]}"  # same key on every retry
    params: dict[str, Any] = {"charge": charge_id, "reason": "requested_by_customer",
                              "metadata": {"order_id": order.order_id}}
    if amount and amount <= order.amount:
        params["amount"] = amount
    return with_retries("stripe refund", lambda: c.stripe.v1.refunds.create(
        params=params, options={"idempotency_key": key}))


@tracelab.trace
def charge_card(c: Clients, order: Order) -> Any:
    key = f"pi-{order.order_id}-{uuid.uuid4().hex[:8]}"
    intent = with_retries("stripe payment intent", lambda: c.stripe.v1.payment_intents.create(
        params={"amount": order.amount, "currency": order.currency,
                "payment_method": "pm_card_visa", "confirm": True,
                "metadata": {"order_id": order.order_id}},
        options={"idempotency_key": key}))
    order.charge_id = intent.latest_charge
    return intent


@tracelab.trace
def notify_customer(c: Clients, order: Order, subject: str, text: str) -> dict[str, bool]:
    sent = {"sendgrid": False, "ses": False, "sms": False}
    mail = {"personalizations": [{"to": [{"email": order.email, "name": order.customer}]}],
            "from": {"email": "support@shop.example", "name": "Shop support"},
            "subject": subject, "content": [{"type": "text/plain", "value": text}]}
    try:
        with_retries("sendgrid", lambda: c.sendgrid.send(mail))
        sent["sendgrid"] = True
    except Exception as exc:
        print(f"  email via SendGrid failed: {exc}", flush=True)
    try:
        with_retries("ses", lambda: c.ses.send_email(
            FromEmailAddress="receipts@shop.example",
            Destination={"ToAddresses": [order.email]},
            Content={"Simple": {"Subject": {"Data": f"Receipt: {subject}"},
                                "Body": {"Text": {"Data": text}}}}))
        sent["ses"] = True
    except Exception as exc:
        print(f"  receipt via SES failed: {exc}", flush=True)
    try:
        with_retries("twilio", lambda: c.twilio.messages.create(
            to=order.phone, from_="+15550009999", body=text[:140]))
        sent["sms"] = True
    except Exception as exc:
        print(f"  SMS via Twilio failed: {exc}", flush=True)
    return sent


@tracelab.trace
def handle_ticket(c: Clients, ticket: Ticket) -> dict[str, Any]:
    order = lookup_order(ticket.order_id)
    decision = decide(c, ticket, order)
    action = decision.get("action")
    if action == "refund":
        refund = refund_payment(c, order, decision.get("amount"))
        subject, text = "Your refund", f"{decision['reply']} ({refund.amount / 100:.2f} " \
                                        f"{refund.currency.upper()}, ref {refund.id})"
    elif action == "charge":
        intent = charge_card(c, order)
        subject, text = "Your order", f"{decision['reply']} ({intent.amount / 100:.2f} " \
                                      f"{intent.currency.upper()})"
    else:
        subject, text = "We're on it", decision.get("reply") or "A colleague will reply soon."
    sent = notify_customer(c, order, subject, text)
    return {"action": action, "notified": sent}


# -- runs -----------------------------------------------------------------------------------------

def run_ticket(c: Clients, ticket: Ticket, run_no: int) -> dict[str, Any]:
    """One execution: fault rules on the mocks, a fresh run id, the ticket, flush."""
    for name in c.urls:
        set_faults(c.urls[name], ticket.faults.get(name, []))
    run_id = f"refund-{time.strftime('%Y%m%d-%H%M%S')}-{run_no:02d}-{uuid.uuid4().hex[:6]}"
    tracelab.init(workflow_name=WORKFLOW, service_name=SERVICE, run_id=run_id,
                  tags={"scenario": ticket.scenario,
                        "faults": ",".join(sorted(ticket.faults)) or "none"})
    print(f"run {run_no}: {ticket.scenario} ({ticket.note}) -> {run_id}", flush=True)
    try:
        outcome = handle_ticket(c, ticket)
        outcome["status"] = "ok" if all(outcome["notified"].values()) else "degraded"
    except Exception as exc:
        outcome = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    finally:
        for name in ticket.faults:
            set_faults(c.urls[name], [])
    outcome["run_id"] = run_id
    print(f"  -> {outcome['status']}: {json.dumps(outcome.get('notified') or outcome.get('error'))}",
          flush=True)
    return outcome


def run_all(urls: dict[str, str], runs: int = len(SCENARIOS),
            scenario: str | None = None) -> list[dict[str, Any]]:
    seed_orders()
    c = Clients(urls)
    install_hook()
    tickets = [t for t in SCENARIOS if scenario in (None, t.scenario)]
    outcomes = []
    for i in range(runs):
        ticket = tickets[i % len(tickets)]
        outcomes.append(run_ticket(c, ticket, i + 1))
    tracelab.flush()  # embedded mode: fold the spool into the store now
    return outcomes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=len(SCENARIOS),
                        help=f"executions to record (default {len(SCENARIOS)}, one per scenario)")
    parser.add_argument("--base-port", type=int, default=DEFAULT_BASE_PORT,
                        help="where the mocks listen (default 9100: stripe, +1 sendgrid, …)")
    parser.add_argument("--start-mocks", action="store_true",
                        help="start the mocks in this process first")
    parser.add_argument("--json", action="store_true", help="print the outcomes as JSON last")
    parser.add_argument("--no-retry", action="store_true",
                        default=os.environ.get("REFUND_AGENT_NO_RETRY") == "1",
                        help="a fragile agent: one attempt per vendor call (examples/ci; also "
                             "REFUND_AGENT_NO_RETRY=1, so `tracelab check` shows it failing "
                             "without editing the spec)")
    parser.add_argument("--scenario", choices=[t.scenario for t in SCENARIOS],
                        help="run only this ticket (one process per run: `tracelab replay "
                             "RUN` then runs exactly that run's command)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.no_retry:
        global ATTEMPTS
        ATTEMPTS = 1
    servers = None
    if args.start_mocks:
        from tracelab.cli.mocks import MockServers, ports_for

        servers = MockServers(ports_for(None, args.base_port)).start()
        urls = dict(servers.urls)
    else:
        urls = mock_urls(args.base_port)
    try:
        outcomes = run_all(urls, args.runs, args.scenario)
    finally:
        if servers is not None:
            servers.stop()
    if args.json:
        print(json.dumps(outcomes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
