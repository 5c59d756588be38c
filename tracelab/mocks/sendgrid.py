"""Mock SendGrid: `POST /v3/mail/send` -> 202 with an `X-Message-Id`, like the v3 API.

Point the real SDK at it: `sendgrid.SendGridAPIClient(api_key="SG.…", host=URL)`. A missing
bearer key is a 401; a payload without personalizations/to, from, subject or content is a 400
with SendGrid's shape `{"errors": [{"message", "field", "help"}]}`. Sent mail is kept in memory
and listed at `GET /__mock/messages` (for tests and the demo).
"""

import json
import threading
from typing import Any

from tracelab.replay.faults import FaultSet
from tracelab.mocks._common import new_id, wrap

NAME = "sendgrid"


def error_body(status: int, path: str = "") -> tuple[bytes, str]:
    message = {401: "The provided authorization grant is invalid, expired, or revoked",
               403: "access forbidden", 413: "The JSON payload you have included in your "
               "request is too large.", 429: "too many requests"}.get(
        status, f"Simulated error {status} (TraceLab fault injection)")
    return json.dumps({"errors": [{"message": message, "field": None, "help": None}]}).encode(), \
        "application/json"


def _validate(mail: Any) -> list[dict[str, Any]]:
    errors: list[dict[str, Any]] = []

    def err(message: str, field: str | None) -> None:
        errors.append({"message": message, "field": field, "help": None})

    if not isinstance(mail, dict):
        err("Bad Request", None)
        return errors
    pers = mail.get("personalizations")
    if not isinstance(pers, list) or not pers:
        err("The personalizations field is required and must have at least one "
            "personalization.", "personalizations")
    else:
        for i, p in enumerate(pers):
            to = p.get("to") if isinstance(p, dict) else None
            if not isinstance(to, list) or not to:
                err("The to array is required for all personalization objects, and must have "
                    "at least one email object with a valid email address.",
                    f"personalizations.{i}.to")
            else:
                for j, rcpt in enumerate(to):
                    if not (isinstance(rcpt, dict) and "@" in str(rcpt.get("email", ""))):
                        err("Does not contain a valid address.",
                            f"personalizations.{i}.to.{j}.email")
    sender = mail.get("from")
    if not (isinstance(sender, dict) and "@" in str(sender.get("email", ""))):
        err("The from object must be provided for every email send. It is an object that "
            "requires an email parameter, but may also contain a name parameter.", "from.email")
    templated = bool(mail.get("template_id"))
    if not templated and not mail.get("subject") and not any(
            isinstance(p, dict) and p.get("subject") for p in (pers or [])):
        err("The subject is required. You can get around this requirement if you use a "
            "template with a subject defined or if every personalization has a subject "
            "defined.", "subject")
    content = mail.get("content")
    if not templated and not (isinstance(content, list) and content):
        err("Unless a valid template_id is provided, the content parameter is required. There "
            "must be at least one defined content block.", "content")
    return errors


def create_app(faults: FaultSet | None = None) -> Any:
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response

    app = FastAPI(title="TraceLab mock: SendGrid", docs_url="/__tracelab/docs",
                  openapi_url="/__tracelab/openapi.json", redoc_url=None)
    lock = threading.Lock()
    sent: list[dict[str, Any]] = []

    @app.post("/v3/mail/send")
    async def send(request: Request) -> Response:
        auth = request.headers.get("authorization", "")
        if not auth.lower().startswith("bearer ") or len(auth) <= 7:
            body, _ = error_body(401)
            return Response(body, status_code=401, media_type="application/json")
        try:
            mail = json.loads(await request.body() or b"null")
        except ValueError:
            return JSONResponse({"errors": [{"message": "Invalid JSON", "field": None,
                                             "help": None}]}, status_code=400)
        errors = _validate(mail)
        if errors:
            return JSONResponse({"errors": errors}, status_code=400)
        message_id = new_id("", 22)
        with lock:
            sent.append({"id": message_id, "mail": mail})
        return Response(status_code=202, headers={"X-Message-Id": message_id})

    @app.get("/__mock/messages")
    async def messages() -> dict:
        with lock:
            return {"messages": list(sent)}

    return wrap(app, NAME, error_body, faults)
