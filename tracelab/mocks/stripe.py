"""Mock Stripe: charges, payment intents and refunds, form-encoded like the real API.

Point the real SDK at it: `stripe.StripeClient("sk_test_…", base_addresses={"api": URL})`
or `stripe.api_base = URL`. Any `sk_test_…`/`sk_live_…`/`rk_…` key is accepted; a missing
key is a 401. Objects live in memory for the life of the process.

Test values, as in Stripe's test mode: `source=tok_chargeDeclined` (charges) or
`payment_method=pm_card_chargeDeclined` (payment intents) gives a 402 `card_error`
`card_declined`; `tok_visa` / `pm_card_visa` (or anything else) succeeds. An `Idempotency-Key`
replays the first response for the same key, like Stripe.
Errors have Stripe's shape: `{"error": {"type", "code", "message", "param"}}`.
"""

import json
import threading
from typing import Any

from tracelab.replay.faults import FaultSet
from tracelab.mocks._common import new_id, now, parse_form, wrap

NAME = "stripe"
DECLINED = {"tok_chargeDeclined", "pm_card_chargeDeclined", "tok_chargeDeclinedInsufficientFunds",
            "pm_card_chargeDeclinedInsufficientFunds"}


def error_body(status: int, path: str = "") -> tuple[bytes, str]:
    kind = {400: "invalid_request_error", 401: "invalid_request_error", 402: "card_error",
            404: "invalid_request_error", 409: "idempotency_error",
            429: "invalid_request_error"}.get(status, "api_error")
    code = {402: "card_declined", 429: "rate_limit", 409: "idempotency_key_in_use"}.get(status)
    message = {429: "Too many requests hit the API too quickly.",
               402: "Your card was declined."}.get(status, f"Simulated error {status} "
                                                          "(TraceLab fault injection).")
    err: dict[str, Any] = {"type": kind, "message": message}
    if code:
        err["code"] = code
    return json.dumps({"error": err}).encode(), "application/json"


def create_app(faults: FaultSet | None = None) -> Any:
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    app = FastAPI(title="TraceLab mock: Stripe", docs_url="/__tracelab/docs",
                  openapi_url="/__tracelab/openapi.json", redoc_url=None)
    lock = threading.Lock()
    objects: dict[str, dict[str, Any]] = {}
    idempotent: dict[tuple[str, str], tuple[int, dict]] = {}

    class StripeError(Exception):
        def __init__(self, status: int, kind: str, message: str, code: str | None = None,
                     param: str | None = None, **extra: Any) -> None:
            self.status = status
            self.error = {"type": kind, "message": message, **extra}
            if code:
                self.error["code"] = code
            if param:
                self.error["param"] = param

    @app.exception_handler(StripeError)
    async def _stripe_error(request: Request, exc: StripeError) -> JSONResponse:
        return JSONResponse({"error": exc.error}, status_code=exc.status,
                            headers={"Request-Id": new_id("req_", 14)})

    def authorize(request: Request) -> None:
        auth = request.headers.get("authorization", "")
        key = auth[7:] if auth.lower().startswith("bearer ") else ""
        if not key:
            raise StripeError(401, "invalid_request_error",
                              "You did not provide an API key. You need to provide your API key "
                              "in the Authorization header, using Bearer auth.")
        if not key.startswith(("sk_test_", "sk_live_", "rk_test_", "rk_live_")):
            raise StripeError(401, "invalid_request_error", f"Invalid API Key provided: "
                              f"{key[:8]}****", code="api_key_invalid")

    def amount_of(params: dict, required: bool = True) -> int | None:
        raw = params.get("amount")
        if raw is None:
            if required:
                raise StripeError(400, "invalid_request_error", "Missing required param: amount.",
                                  code="parameter_missing", param="amount")
            return None
        try:
            value = int(raw)
        except (TypeError, ValueError):
            raise StripeError(400, "invalid_request_error", "Invalid integer: " + str(raw),
                              code="parameter_invalid_integer", param="amount") from None
        if value < 1:
            raise StripeError(400, "invalid_request_error",
                              "This value must be greater than or equal to 1.",
                              code="parameter_invalid_integer", param="amount")
        return value

    def currency_of(params: dict) -> str:
        currency = params.get("currency")
        if not currency:
            raise StripeError(400, "invalid_request_error", "Missing required param: currency.",
                              code="parameter_missing", param="currency")
        if not (isinstance(currency, str) and len(currency) == 3 and currency.isalpha()):
            raise StripeError(400, "invalid_request_error", f"Invalid currency: {currency}.",
                              code="parameter_invalid_string", param="currency")
        return currency.lower()

    async def call(request: Request, handler: Any, *args: Any) -> JSONResponse:
        authorize(request)
        params = parse_form(await request.body()) if request.method == "POST" else \
            dict(request.query_params)
        key = request.headers.get("idempotency-key")
        if key and request.method == "POST":
            with lock:
                seen = idempotent.get((key, request.url.path))
            if seen is not None:
                return JSONResponse(seen[1], status_code=seen[0],
                                    headers={"Idempotent-Replayed": "true"})
        try:
            status, body = 200, handler(params, *args)
        except StripeError as exc:
            status, body = exc.status, {"error": exc.error}
        if key and request.method == "POST":
            with lock:
                idempotent[(key, request.url.path)] = (status, body)
        return JSONResponse(body, status_code=status,
                            headers={"Request-Id": new_id("req_", 14)})

    def get(obj_id: str, kind: str, param: str = "id") -> dict:
        with lock:
            obj = objects.get(obj_id)
        if obj is None or obj["object"] != kind:
            raise StripeError(404 if param == "id" else 400, "invalid_request_error",
                              f"No such {kind}: '{obj_id}'", code="resource_missing", param=param)
        return obj

    def make_charge(params: dict, amount: int, currency: str, source: str,
                    payment_intent: str | None = None) -> dict:
        charge = {
            "id": new_id("ch_"), "object": "charge", "amount": amount, "amount_captured": amount,
            "amount_refunded": 0, "currency": currency, "captured": True, "paid": True,
            "refunded": False, "status": "succeeded", "created": now(), "livemode": False,
            "description": params.get("description"), "customer": params.get("customer"),
            "metadata": params.get("metadata") or {}, "payment_intent": payment_intent,
            "payment_method": source, "failure_code": None, "failure_message": None,
            "receipt_email": params.get("receipt_email"),
        }
        if source in DECLINED:
            charge.update(status="failed", paid=False, captured=False, amount_captured=0,
                          failure_code="card_declined", failure_message="Your card was declined.")
        with lock:
            objects[charge["id"]] = charge
        if source in DECLINED:
            raise StripeError(402, "card_error", "Your card was declined.", code="card_declined",
                              decline_code="generic_decline", charge=charge["id"])
        return charge

    def create_charge(params: dict) -> dict:
        amount, currency = amount_of(params), currency_of(params)
        source = params.get("source") or params.get("customer")
        if not source:
            raise StripeError(400, "invalid_request_error",
                              "Must provide source or customer.", code="parameter_missing",
                              param="source")
        return make_charge(params, amount, currency, source)

    def create_payment_intent(params: dict) -> dict:
        amount, currency = amount_of(params), currency_of(params)
        method = params.get("payment_method")
        intent = {
            "id": new_id("pi_"), "object": "payment_intent", "amount": amount,
            "amount_received": 0, "currency": currency, "created": now(), "livemode": False,
            "status": "requires_confirmation" if method else "requires_payment_method",
            "payment_method": method, "latest_charge": None, "customer": params.get("customer"),
            "description": params.get("description"), "metadata": params.get("metadata") or {},
            "capture_method": params.get("capture_method", "automatic"),
            "confirmation_method": params.get("confirmation_method", "automatic"),
        }
        intent["client_secret"] = f"{intent['id']}_secret_{new_id('', 16)}"
        with lock:
            objects[intent["id"]] = intent
        if str(params.get("confirm", "")).lower() == "true":
            return confirm_payment_intent({}, intent["id"])
        return intent

    def confirm_payment_intent(params: dict, intent_id: str) -> dict:
        intent = get(intent_id, "payment_intent")
        method = params.get("payment_method") or intent.get("payment_method")
        if not method:
            raise StripeError(400, "invalid_request_error", "You cannot confirm this "
                              "PaymentIntent because it's missing a payment method.",
                              code="payment_intent_unexpected_state", param="payment_method")
        if intent["status"] == "succeeded":
            raise StripeError(400, "invalid_request_error", "This PaymentIntent's status is "
                              "succeeded, so it cannot be confirmed.",
                              code="payment_intent_unexpected_state")
        intent["payment_method"] = method
        try:
            charge = make_charge(intent, intent["amount"], intent["currency"], method,
                                 payment_intent=intent["id"])
        except StripeError as exc:
            intent.update(status="requires_payment_method",
                          last_payment_error=dict(exc.error))
            exc.error["payment_intent"] = dict(intent)
            raise
        intent.update(status="succeeded", amount_received=intent["amount"],
                      latest_charge=charge["id"])
        return intent

    def create_refund(params: dict) -> dict:
        if params.get("charge"):
            charge = get(params["charge"], "charge", "charge")
        elif params.get("payment_intent"):
            intent = get(params["payment_intent"], "payment_intent", "payment_intent")
            if not intent.get("latest_charge"):
                raise StripeError(400, "invalid_request_error", "This PaymentIntent does not "
                                  "have a successful charge to refund.",
                                  code="charge_not_refundable", param="payment_intent")
            charge = get(intent["latest_charge"], "charge", "payment_intent")
        else:
            raise StripeError(400, "invalid_request_error", "One of the following params "
                              "should be provided for this request: payment_intent or charge.",
                              code="parameter_missing")
        if not charge["paid"]:
            raise StripeError(400, "invalid_request_error", f"Charge {charge['id']} has not "
                              "been paid, so it cannot be refunded.",
                              code="charge_not_refundable", param="charge")
        remaining = charge["amount"] - charge["amount_refunded"]
        amount = amount_of(params, required=False) or remaining
        if remaining <= 0:
            raise StripeError(400, "invalid_request_error", f"Charge {charge['id']} has "
                              "already been refunded.", code="charge_already_refunded",
                              param="charge")
        if amount > remaining:
            raise StripeError(400, "invalid_request_error", f"Refund amount ({amount}) is "
                              f"greater than unrefunded amount on charge ({remaining})",
                              code="amount_too_large", param="amount")
        refund = {"id": new_id("re_"), "object": "refund", "amount": amount,
                  "charge": charge["id"], "currency": charge["currency"], "created": now(),
                  "payment_intent": charge.get("payment_intent"), "status": "succeeded",
                  "reason": params.get("reason"), "metadata": params.get("metadata") or {}}
        with lock:
            charge["amount_refunded"] += amount
            charge["refunded"] = charge["amount_refunded"] >= charge["amount"]
            objects[refund["id"]] = refund
        return refund

    @app.post("/v1/charges")
    async def charges(request: Request) -> JSONResponse:
        return await call(request, create_charge)

    @app.get("/v1/charges/{charge_id}")
    async def charge(request: Request, charge_id: str) -> JSONResponse:
        return await call(request, lambda p: get(charge_id, "charge"))

    @app.post("/v1/payment_intents")
    async def payment_intents(request: Request) -> JSONResponse:
        return await call(request, create_payment_intent)

    @app.get("/v1/payment_intents/{intent_id}")
    async def payment_intent(request: Request, intent_id: str) -> JSONResponse:
        return await call(request, lambda p: get(intent_id, "payment_intent"))

    @app.post("/v1/payment_intents/{intent_id}/confirm")
    async def confirm(request: Request, intent_id: str) -> JSONResponse:
        return await call(request, confirm_payment_intent, intent_id)

    @app.post("/v1/refunds")
    async def refunds(request: Request) -> JSONResponse:
        return await call(request, create_refund)

    @app.get("/v1/refunds/{refund_id}")
    async def refund(request: Request, refund_id: str) -> JSONResponse:
        return await call(request, lambda p: get(refund_id, "refund"))

    @app.api_route("/{path:path}", methods=["GET", "POST", "DELETE", "PUT", "PATCH"],
                   include_in_schema=False)
    async def unknown(request: Request, path: str) -> JSONResponse:
        raise StripeError(404, "invalid_request_error", f"Unrecognized request URL "
                          f"({request.method}: /{path}).")

    return wrap(app, NAME, error_body, faults)
