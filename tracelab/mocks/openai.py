"""Mock OpenAI: `POST /v1/chat/completions` (also `stream: true`, as Server-Sent Events) and
`GET /v1/models`.

Point the real SDK at it: `openai.OpenAI(base_url=URL + "/v1", api_key="sk-test")`. Any bearer
key is accepted; none is a 401. Answers are deterministic, made for the sample refund agent:
the last user message decides the action (`refund` when it mentions a refund, a return or a
broken/damaged item; `charge` for an order or a purchase; else `escalate`). With
`response_format={"type": "json_object"}` the content is `{"action", "amount", "reply"}` JSON
(`amount` is the first number in the message, in cents), otherwise a sentence. Usage counts
are whitespace tokens. Errors have OpenAI's shape `{"error": {"message", "type", "param",
"code"}}`.
"""

import json
import re
import time
from collections.abc import Iterator
from typing import Any

from tracelab.replay.faults import FaultSet
from tracelab.mocks._common import new_id, wrap

NAME = "openai"
MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "gpt-3.5-turbo")


def error_body(status: int, path: str = "") -> tuple[bytes, str]:
    kind, code, message = {
        400: ("invalid_request_error", None, "Bad request"),
        401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
        429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests. Please try "
              "again in 1s."),
        500: ("server_error", None, "The server had an error while processing your request."),
        503: ("server_error", None, "The engine is currently overloaded, please try again "
              "later."),
    }.get(status, ("server_error", None, f"Simulated error {status} (TraceLab fault "
                                         "injection)"))
    return json.dumps({"error": {"message": message, "type": kind, "param": None,
                                 "code": code}}).encode(), "application/json"


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def decide(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The mock's deterministic 'reasoning' over the conversation."""
    last = next((_text(m.get("content")) for m in reversed(messages)
                 if m.get("role") == "user"), "")
    low = last.lower()
    number = re.search(r"\b(\d+(?:\.\d{1,2})?)\b", last)
    amount = int(round(float(number.group(1)) * 100)) if number else None
    if any(w in low for w in ("refund", "return", "broken", "damaged", "money back")):
        action, reply = "refund", "I'm sorry about that. I've issued a refund for your order."
    elif any(w in low for w in ("order", "buy", "purchase", "charge")):
        action, reply = "charge", "Thanks! Your order is placed and your card was charged."
    else:
        action, reply = "escalate", "I've passed your request to a human colleague."
    return {"action": action, "amount": amount, "reply": reply}


def _tokens(text: str) -> int:
    return max(1, len(text.split()))


def create_app(faults: FaultSet | None = None) -> Any:
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response, StreamingResponse

    app = FastAPI(title="TraceLab mock: OpenAI", docs_url="/__tracelab/docs",
                  openapi_url="/__tracelab/openapi.json", redoc_url=None)

    def fail(status: int, message: str, kind: str = "invalid_request_error",
             param: str | None = None, code: str | None = None) -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": kind, "param": param,
                                       "code": code}}, status_code=status)

    def authorized(request: Request) -> bool:
        auth = request.headers.get("authorization", "")
        return auth.lower().startswith("bearer ") and len(auth) > 7

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        if not authorized(request):
            return fail(401, "You didn't provide an API key.")
        return JSONResponse({"object": "list", "data": [
            {"id": m, "object": "model", "created": 1700000000, "owned_by": "tracelab-mock"}
            for m in MODELS]})

    @app.post("/v1/chat/completions")
    async def completions(request: Request) -> Response:
        if not authorized(request):
            return fail(401, "You didn't provide an API key. You need to provide your API key "
                             "in an Authorization header using Bearer auth.")
        try:
            body = json.loads(await request.body() or b"null")
        except ValueError:
            return fail(400, "We could not parse the JSON body of your request.")
        if not isinstance(body, dict):
            return fail(400, "The request body must be a JSON object.")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return fail(400, "you must provide a model parameter", param="model")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
            return fail(400, "'messages' must be a non-empty array of objects with a 'role'.",
                        param="messages")
        decision = decide(messages)
        fmt = body.get("response_format") or {}
        if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
            content = json.dumps(decision)
        else:
            content = f"Action: {decision['action']}. {decision['reply']}"
        prompt_tokens = sum(_tokens(_text(m.get("content"))) for m in messages)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": _tokens(content),
                 "total_tokens": prompt_tokens + _tokens(content)}
        cid, created = new_id("chatcmpl-", 24), int(time.time())
        if not body.get("stream"):
            return JSONResponse({
                "id": cid, "object": "chat.completion", "created": created, "model": model,
                "system_fingerprint": "fp_tracelab_mock",
                "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                             "message": {"role": "assistant", "content": content,
                                         "refusal": None}}],
                "usage": usage})
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def chunk(delta: dict, finish: str | None, with_usage: Any = None) -> str:
            data: dict[str, Any] = {
                "id": cid, "object": "chat.completion.chunk", "created": created,
                "model": model, "system_fingerprint": "fp_tracelab_mock",
                "choices": [] if delta is None else [{"index": 0, "delta": delta,
                                                      "logprobs": None,
                                                      "finish_reason": finish}]}
            if with_usage is not None:
                data["usage"] = with_usage
            return f"data: {json.dumps(data)}\n\n"

        def events() -> Iterator[str]:
            yield chunk({"role": "assistant", "content": ""}, None)
            pieces = re.findall(r"\S+\s*", content) or [content]
            for piece in pieces:
                yield chunk({"content": piece}, None)
            yield chunk({}, "stop")
            if include_usage:
                yield chunk(None, None, usage)  # type: ignore[arg-type]
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    return wrap(app, NAME, error_body, faults, kind="llm")
