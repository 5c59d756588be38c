"""One shape for every error the API answers, and the handlers that enforce it.

`{"detail": "<one readable sentence>"}`, plus `errors` (one item per bad field: `loc`, `msg`,
`type`) when request validation failed. FastAPI's own 422 body (`detail` as a list) and
Starlette's exception bodies are replaced, so a client parses one model whatever the status,
and the OpenAPI document declares that model (`Error`) for each operation's error statuses.
"""
from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from tracelab.server.shapes import ORJSONResponse


class FieldError(BaseModel):
    """One invalid part of a request."""

    loc: list[str | int] = Field(description="where: e.g. `[\"query\", \"limit\"]`")
    msg: str = Field(description="what is wrong with it")
    type: str = Field(description="a stable code for the kind of problem")


class Error(BaseModel):
    """The body of every 4xx/5xx answer of the API."""

    detail: str = Field(description="what went wrong, in one sentence")
    errors: list[FieldError] | None = Field(
        None, description="each invalid field, when request validation failed (422)")


DESCRIPTIONS = {
    400: "Bad request",
    401: "Missing or wrong bearer token",
    404: "No such workflow, execution, event or route",
    422: "Invalid parameters",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The `responses=` entry declaring `statuses` with the `Error` model."""
    return {status: {"model": Error, "description": DESCRIPTIONS[status]}
            for status in statuses}


def _field_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    return [{"loc": [p if isinstance(p, int) else str(p) for p in e.get("loc", ())],
             "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in exc.errors()]


def _where(loc: list[str | int]) -> str:
    return ".".join(str(p) for p in loc) or "request"


async def _validation_error(_request: Request, exc: Exception) -> ORJSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = _field_errors(exc)
    detail = "; ".join(f"{_where(e['loc'])}: {e['msg']}" for e in errors) or "invalid request"
    return ORJSONResponse({"detail": detail, "errors": errors}, status_code=422)


async def _http_error(_request: Request, exc: Exception) -> ORJSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    return ORJSONResponse({"detail": detail}, status_code=exc.status_code,
                          headers=getattr(exc, "headers", None))


def install(app: FastAPI) -> None:
    """Route every HTTP and validation error of `app` through the one `Error` shape."""
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
