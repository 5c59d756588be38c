"""Ids that contain `/` or `%` in API paths: `/api/executions/pay%2Fments` is run `pay/ments`.

ASGI servers (uvicorn included) percent-decode the path before the app routes it, so an
encoded slash would split one id into two path segments and the route would not match.
`RawPathIds` rebuilds `/api` paths from the request's `raw_path` (the bytes as sent), decoding
every escape except `%2F` (`/`) and `%25` (`%`); a route's `{param}` then spans exactly one
encoded segment, and `path_id` decodes that segment into the id. Without a `raw_path` (an ASGI
server that does not send it), the decoded path is used and `%` is re-escaped, so `path_id`
still returns each segment unchanged.
"""
from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote

_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")
_KEEP = {b"2f", b"2F", b"25"}


def _decode_keeping_separators(raw: bytes) -> str:
    """Percent-decode `raw`, leaving `%2F` and `%25` encoded; invalid UTF-8 becomes U+FFFD."""
    def _byte(match: re.Match[bytes]) -> bytes:
        code = match.group(1)
        return match.group(0) if code in _KEEP else bytes([int(code, 16)])

    return _ESCAPE.sub(_byte, raw).decode("utf-8", errors="replace")


def path_id(segment: str) -> str:
    """The id a route's path parameter stands for (see the module docstring)."""
    return unquote(segment, errors="replace")


class RawPathIds:
    """ASGI middleware routing `/api/...` on the path as the client encoded it."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("path", "").startswith("/api/"):
            raw = scope.get("raw_path")
            if raw:
                path = _decode_keeping_separators(raw.split(b"?", 1)[0])
            else:
                path = scope["path"].replace("%", "%25")
            if path.startswith("/api/"):
                scope = {**scope, "path": path}
        await self.app(scope, receive, send)
