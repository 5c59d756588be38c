"""Reversible monkey-patching shared by the integrations.

Each patch wraps one attribute with a `wrapt.FunctionWrapper` (which keeps methods, async
functions and introspection working), marks it so a second install is a no-op, and remembers
whether the attribute lived on the owner itself, so uninstall restores it exactly.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import wrapt

# wrapt forwards attribute writes to the wrapped function except for names starting
# `_self_`: the marks must live on the wrapper, or uninstall would leave the original marked.
_MARK = "_self_tracelab_patched"


def is_patched(owner: Any, attr: str) -> bool:
    return getattr(owner.__dict__.get(attr), _MARK, False) is True


def patch(owner: Any, attr: str, wrapper: Callable[..., Any]) -> None:
    """Wrap `owner.attr` with `wrapper(wrapped, instance, args, kwargs)`; idempotent."""
    if is_patched(owner, attr):
        return
    own = owner.__dict__.get(attr)
    original = own if own is not None else getattr(owner, attr)
    wrapped = wrapt.FunctionWrapper(original, wrapper)
    setattr(wrapped, _MARK, True)
    wrapped._self_tracelab_own = own is not None  # type: ignore[attr-defined]
    setattr(owner, attr, wrapped)


def unpatch(owner: Any, attr: str) -> None:
    """Put back exactly what `patch` replaced."""
    current = owner.__dict__.get(attr)
    if getattr(current, _MARK, False) is not True:
        return
    if current._self_tracelab_own:
        setattr(owner, attr, current.__wrapped__)
    else:
        delattr(owner, attr)
