"""Mock Amazon SES: v2 `POST /v2/email/outbound-emails` and the v1 query API (`SendEmail`,
`SendRawEmail`) on `POST /`.

Point boto3 at it: `boto3.client("sesv2", endpoint_url=URL, region_name="us-east-1",
aws_access_key_id="test", aws_secret_access_key="test")` (or `"ses"` for v1). Requests must be
SigV4-signed (any credentials); the signature is not checked. A sender or recipient at
`@unverified.example` is refused with `MessageRejected`, like an unverified identity in the SES
sandbox. Errors have AWS's shapes: XML `ErrorResponse` for v1, JSON with `x-amzn-ErrorType`
for v2. Sent mail is listed at `GET /__mock/messages`.
"""

import json
import threading
import uuid
from typing import Any
from xml.sax.saxutils import escape

from tracelab.replay.faults import FaultSet
from tracelab.mocks._common import new_id, parse_form, wrap

NAME = "ses"
NS = "http://ses.amazonaws.com/doc/2010-12-01/"
_CODES = {400: ("Sender", "MessageRejected", "Email address is not verified."),
          403: ("Sender", "AccessDenied", "Access denied"),
          429: ("Sender", "TooManyRequestsException", "Too many requests"),
          500: ("Receiver", "InternalFailure", "The request processing has failed because of an "
                "unknown error, exception or failure."),
          503: ("Receiver", "ServiceUnavailable", "Service is unavailable")}


def _message_id() -> str:
    return f"0100{new_id('', 12, '0123456789abcdef')}-{uuid.uuid4()}-000000"


def _xml_error(kind: str, code: str, message: str) -> bytes:
    return (f'<ErrorResponse xmlns="{NS}"><Error><Type>{kind}</Type><Code>{escape(code)}</Code>'
            f"<Message>{escape(message)}</Message></Error>"
            f"<RequestId>{uuid.uuid4()}</RequestId></ErrorResponse>").encode()


def error_body(status: int, path: str = "/") -> tuple[bytes, str]:
    kind, code, message = _CODES.get(status, ("Receiver", "InternalFailure",
                                              f"Simulated error {status} (TraceLab fault "
                                              "injection)"))
    if path.startswith("/v2/"):
        return json.dumps({"__type": code,
                           "message": message}).encode(), "application/json"
    return _xml_error(kind, code, message), "text/xml"


def create_app(faults: FaultSet | None = None) -> Any:
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response

    app = FastAPI(title="TraceLab mock: Amazon SES", docs_url="/__tracelab/docs",
                  openapi_url="/__tracelab/openapi.json", redoc_url=None)
    lock = threading.Lock()
    sent: list[dict[str, Any]] = []

    def signed(request: Request) -> bool:
        return request.headers.get("authorization", "").startswith("AWS4-HMAC-SHA256 ")

    def remember(api: str, source: str, to: list[str], subject: str | None) -> str:
        message_id = _message_id()
        with lock:
            sent.append({"id": message_id, "api": api, "from": source, "to": to,
                         "subject": subject})
        return message_id

    def v2_error(status: int, code: str, message: str) -> JSONResponse:
        return JSONResponse({"message": message}, status_code=status,
                            headers={"x-amzn-ErrorType": code,
                                     "x-amzn-RequestId": str(uuid.uuid4())})

    @app.post("/v2/email/outbound-emails")
    async def send_v2(request: Request) -> Response:
        if not signed(request):
            return v2_error(403, "MissingAuthenticationTokenException",
                            "Missing Authentication Token")
        try:
            body = json.loads(await request.body() or b"null")
        except ValueError:
            return v2_error(400, "BadRequestException", "Request body is not valid JSON")
        if not isinstance(body, dict):
            return v2_error(400, "BadRequestException", "Request body must be an object")
        content = body.get("Content")
        if not isinstance(content, dict) or not any(k in content for k in
                                                    ("Simple", "Raw", "Template")):
            return v2_error(400, "BadRequestException",
                            "Content is required: one of Simple, Raw or Template")
        source = body.get("FromEmailAddress") or ""
        dest = body.get("Destination") or {}
        to = [a for key in ("ToAddresses", "CcAddresses", "BccAddresses")
              for a in (dest.get(key) or [])]
        if not source and "Raw" not in content:
            return v2_error(400, "BadRequestException", "FromEmailAddress is required")
        if not to and "Raw" not in content:
            return v2_error(400, "BadRequestException", "Destination has no recipients")
        bad = [a for a in [source, *to] if a.endswith("@unverified.example")]
        if bad:
            return v2_error(400, "MessageRejected",
                            f"Email address is not verified. The following identities failed "
                            f"the check in region US-EAST-1: {', '.join(bad)}")
        subject = ((content.get("Simple") or {}).get("Subject") or {}).get("Data")
        message_id = remember("v2", source, to, subject)
        return JSONResponse({"MessageId": message_id},
                            headers={"x-amzn-RequestId": str(uuid.uuid4())})

    @app.post("/")
    async def query_api(request: Request) -> Response:
        def xml_error(status: int, kind: str, code: str, message: str) -> Response:
            return Response(_xml_error(kind, code, message), status_code=status,
                            media_type="text/xml")

        if not signed(request):
            return xml_error(403, "Sender", "MissingAuthenticationToken",
                             "Request is missing Authentication Token")
        form = parse_form(await request.body())
        action = form.get("Action")
        if action not in ("SendEmail", "SendRawEmail"):
            return xml_error(400, "Sender", "InvalidAction",
                             f"The action {action or '(none)'} is not valid for this endpoint.")
        source = form.get("Source", "")
        to = [v for k, v in sorted(form.items())
              if k.startswith(("Destination.ToAddresses.member.", "Destination.CcAddresses.",
                               "Destination.BccAddresses.", "Destinations.member."))]
        if action == "SendEmail":
            if not source:
                return xml_error(400, "Sender", "ValidationError",
                                 "1 validation error detected: Value null at 'source' failed "
                                 "to satisfy constraint: Member must not be null")
            if not to:
                return xml_error(400, "Sender", "InvalidParameterValue",
                                 "Missing final '@domain'")
        elif not form.get("RawMessage.Data"):
            return xml_error(400, "Sender", "ValidationError", "RawMessage.Data is required")
        bad = [a for a in [source, *to] if a.endswith("@unverified.example")]
        if bad:
            return xml_error(400, "Sender", "MessageRejected",
                             f"Email address is not verified. The following identities failed "
                             f"the check in region US-EAST-1: {', '.join(bad)}")
        message_id = remember("v1", source, to, form.get("Message.Subject.Data"))
        xml = (f'<{action}Response xmlns="{NS}"><{action}Result><MessageId>{message_id}'
               f"</MessageId></{action}Result><ResponseMetadata><RequestId>{uuid.uuid4()}"
               f"</RequestId></ResponseMetadata></{action}Response>")
        return Response(xml.encode(), media_type="text/xml")

    @app.get("/__mock/messages")
    async def listing() -> dict:
        with lock:
            return {"messages": list(sent)}

    return wrap(app, NAME, error_body, faults)
