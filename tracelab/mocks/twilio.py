"""Mock Twilio: `POST /2010-04-01/Accounts/{AccountSid}/Messages.json` (and `GET …/{Sid}.json`).

Form-encoded like the real API, HTTP basic auth whose user must be the AccountSid in the path
(any password). Twilio's magic test numbers behave as documented: `To=+15005550001` is error
21211 (invalid number), `+15005550009` is 21614 (cannot receive SMS); `From=+15005550001` is
21212. Errors have Twilio's shape `{"code", "message", "more_info", "status"}`.

The twilio SDK always builds `https://api.twilio.com/...` URLs; point it here with an HTTP
client that rewrites that base, e.g. `tracelab.mocks.clients.twilio_client(URL)` (a
`TwilioHttpClient` subclass, see there).
"""

import base64
import email.utils
import json
import threading
from typing import Any

from tracelab.replay.faults import FaultSet
from tracelab.mocks._common import new_id, parse_form, wrap

NAME = "twilio"
_HEX = "0123456789abcdef"


def _twilio_error(status: int, code: int, message: str) -> dict[str, Any]:
    return {"code": code, "message": message, "status": status,
            "more_info": f"https://www.twilio.com/docs/errors/{code}"}


def error_body(status: int, path: str = "") -> tuple[bytes, str]:
    code, message = {401: (20003, "Authenticate"), 404: (20404, "The requested resource was "
                                                              "not found"),
                     429: (20429, "Too Many Requests"),
                     503: (20503, "Service unavailable")}.get(
        status, (20500, f"Simulated error {status} (TraceLab fault injection)"))
    return json.dumps(_twilio_error(status, code, message)).encode(), "application/json"


def create_app(faults: FaultSet | None = None) -> Any:
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    app = FastAPI(title="TraceLab mock: Twilio", docs_url="/__tracelab/docs",
                  openapi_url="/__tracelab/openapi.json", redoc_url=None)
    lock = threading.Lock()
    messages: dict[str, dict[str, Any]] = {}

    def fail(status: int, code: int, message: str) -> JSONResponse:
        return JSONResponse(_twilio_error(status, code, message), status_code=status)

    def authorized(request: Request, account_sid: str) -> bool:
        auth = request.headers.get("authorization", "")
        if not auth.lower().startswith("basic "):
            return False
        try:
            user = base64.b64decode(auth[6:]).decode().partition(":")[0]
        except ValueError:
            return False
        return user == account_sid or user.startswith("SK")  # account SID or an API key

    @app.post("/2010-04-01/Accounts/{account_sid}/Messages.json")
    async def create(request: Request, account_sid: str) -> JSONResponse:
        if not authorized(request, account_sid):
            return fail(401, 20003, "Authenticate")
        form = parse_form(await request.body())
        to, sender = form.get("To"), form.get("From")
        service = form.get("MessagingServiceSid")
        body, media = form.get("Body"), form.get("MediaUrl")
        if not to:
            return fail(400, 21604, "A 'To' phone number is required.")
        if not sender and not service:
            return fail(400, 21603, "A 'From' phone number is required.")
        if not body and not media:
            return fail(400, 21602, "Message body is required.")
        if to == "+15005550001" or not to.lstrip("+").isdigit():
            return fail(400, 21211, f"The 'To' number {to} is not a valid phone number.")
        if to == "+15005550009":
            return fail(400, 21614, f"'To' number {to} is not a valid mobile number")
        if sender == "+15005550001":
            return fail(400, 21212, f"The 'From' number {sender} is not a valid phone number, "
                                    "shortcode, or alphanumeric sender ID.")
        sid = new_id("SM", 32, _HEX)
        stamp = email.utils.formatdate(usegmt=True)
        base = f"/2010-04-01/Accounts/{account_sid}/Messages/{sid}"
        message = {
            "sid": sid, "account_sid": account_sid, "to": to, "from": sender,
            "messaging_service_sid": service, "body": body or "", "status": "queued",
            "num_segments": str(max(1, -(-len(body or "") // 160))),
            "num_media": "1" if media else "0", "direction": "outbound-api",
            "api_version": "2010-04-01", "price": None, "price_unit": "USD",
            "error_code": None, "error_message": None, "date_created": stamp,
            "date_updated": stamp, "date_sent": None, "uri": base + ".json",
            "subresource_uris": {"media": base + "/Media.json"},
        }
        with lock:
            messages[sid] = message
        return JSONResponse(message, status_code=201)

    @app.get("/2010-04-01/Accounts/{account_sid}/Messages/{sid}.json")
    async def fetch(request: Request, account_sid: str, sid: str) -> JSONResponse:
        if not authorized(request, account_sid):
            return fail(401, 20003, "Authenticate")
        with lock:
            message = messages.get(sid)
        if message is None or message["account_sid"] != account_sid:
            return fail(404, 20404, f"The requested resource {request.url.path} was not found")
        return JSONResponse(message)

    @app.get("/__mock/messages")
    async def listing() -> dict:
        with lock:
            return {"messages": list(messages.values())}

    return wrap(app, NAME, error_body, faults)
