"""Helpers shared by the mock vendor apps (form bodies, ids, the fault layer around an app)."""
from __future__ import annotations

import secrets
import string
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

from tracelab.mocks.middleware import ErrorBody, FaultMiddleware
from tracelab.replay.faults import FaultSet

_ALNUM = string.ascii_letters + string.digits


def new_id(prefix: str, n: int = 24, alphabet: str = _ALNUM) -> str:
    return prefix + "".join(secrets.choice(alphabet) for _ in range(n))


def now() -> int:
    return int(time.time())


def parse_form(raw: bytes) -> dict[str, Any]:
    """A form-encoded body, with Stripe-style brackets decoded: `metadata[a]=1` -> nested
    dict, `expand[0]=x` / `expand[]=x` -> list. Plain keys stay strings."""
    out: dict[str, Any] = {}
    for key, value in parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True):
        if "[" not in key or not key.endswith("]"):
            out[key] = value
            continue
        parts = key.replace("]", "").split("[")
        node: Any = out
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            nxt_is_index = not last and (parts[i + 1].isdigit() or parts[i + 1] == "")
            if isinstance(node, list):
                if last:
                    node.append(value)
                    break
                if part == "" or int(part) >= len(node):
                    node.append([] if nxt_is_index else {})
                node = node[-1] if part == "" else node[int(part)]
                continue
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, [] if nxt_is_index else {})
    return out


def wrap(app: Any, name: str, error_body: ErrorBody, faults: FaultSet | None = None,
         kind: str = "http") -> Any:
    """The vendor app behind the fault layer (rules from MOCK_FAULTS unless given); `kind`
    is what a rule's `kind` matches for this mock's calls (as they are recorded)."""
    wrapped = FaultMiddleware(app, faults, name=name, error_body=error_body, kind=kind)
    wrapped.vendor_app = app  # type: ignore[attr-defined]
    return wrapped


Factory = Callable[..., Any]
