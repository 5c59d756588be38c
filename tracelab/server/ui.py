"""The web UI's server: the built React app from `tracelab/server/static/`, and `/api` forwarded.

- `/api/...` (and `/healthz`) go to the API app, in process: the browser talks to one origin,
  Server-Sent Events stream through unchanged, and the API's bearer token still applies.
- a path naming a file of the build is that file (hashed assets cached for a year);
- any other path gets `index.html`, so deep links such as `/executions/<run_id>` work;
  a missing file under `/assets/` is a 404, not the page.

Every HTML answer carries a strict Content-Security-Policy (scripts only from this origin),
one more guard behind the UI's rule of rendering payloads as text.
"""
from __future__ import annotations

import mimetypes
import os
from pathlib import Path
from typing import Any

STATIC_DIR = Path(__file__).resolve().parent / "static"

CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data:; connect-src 'self'; font-src 'self' data:; object-src 'none'; "
       "base-uri 'none'; frame-ancestors 'none'; form-action 'self'")

_NOT_BUILT = b"""<!doctype html><meta charset="utf-8"><title>TraceLab</title>
<h1>TraceLab web UI is not built</h1>
<p>Build it with <code>make ui</code>
(or <code>cd web &amp;&amp; npm ci &amp;&amp; npm run build</code>).
The API is available under <a href="/api/workflows">/api</a>.</p>
"""


def ui_built(static_dir: Path | None = None) -> bool:
    return ((static_dir or STATIC_DIR) / "index.html").is_file()


class UIApp:
    """A small ASGI app; `api` is the API's ASGI app (see `create_ui_app`)."""

    def __init__(self, api: Any, static_dir: Path | None = None) -> None:
        self.api = api
        self.static_dir = (static_dir or STATIC_DIR).resolve()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            # The API app's lifespan is run by its own server; nothing to set up here.
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path = scope.get("path", "/")
        if path == "/api" or path.startswith("/api/") or path == "/healthz":
            await self.api(scope, receive, send)
            return
        if scope.get("method") not in ("GET", "HEAD"):
            await _reply(send, 405, b'{"detail":"Method Not Allowed"}', "application/json",
                         extra=[(b"allow", b"GET, HEAD")])
            return
        await self._static(scope, send, path)

    async def _static(self, scope: dict, send: Any, path: str) -> None:
        head = scope.get("method") == "HEAD"
        index = self.static_dir / "index.html"
        if not index.is_file():
            await _reply(send, 503, _NOT_BUILT, "text/html; charset=utf-8", head=head,
                         extra=_html_headers())
            return
        relative = path.lstrip("/")
        target = (self.static_dir / relative).resolve() if relative else index
        inside = target == self.static_dir or self.static_dir in target.parents
        if any(part.startswith(".") for part in relative.split("/")):
            inside = False  # build stamps and the like are not part of the site
        if inside and target.is_file() and target != index:
            ctype = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
            if ctype.startswith("text/") or ctype in ("application/javascript",
                                                      "application/json"):
                ctype += "; charset=utf-8"
            cache = b"public, max-age=31536000, immutable" if relative.startswith("assets/") \
                else b"no-cache"
            await _reply(send, 200, target.read_bytes(), ctype, head=head,
                         extra=[(b"cache-control", cache),
                                (b"x-content-type-options", b"nosniff")])
            return
        if relative.startswith("assets/") or (inside and os.path.splitext(relative)[1]
                                              in (".js", ".css", ".map", ".png", ".svg",
                                                  ".ico", ".woff2")):
            await _reply(send, 404, b"not found", "text/plain; charset=utf-8", head=head)
            return
        await _reply(send, 200, index.read_bytes(), "text/html; charset=utf-8", head=head,
                     extra=_html_headers())


def _html_headers() -> list[tuple[bytes, bytes]]:
    return [(b"content-security-policy", CSP.encode()), (b"cache-control", b"no-cache"),
            (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
            (b"x-frame-options", b"DENY")]


async def _reply(send: Any, status: int, body: bytes, ctype: str, *, head: bool = False,
                 extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-type", ctype.encode()), (b"content-length", str(len(body)).encode())]
    headers.extend(extra or [])
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})


def create_ui_app(api: Any, static_dir: Path | str | None = None) -> UIApp:
    """The UI's ASGI app, forwarding `/api` to `api` (the app from `create_app`)."""
    return UIApp(api, Path(static_dir) if static_dir is not None else None)
