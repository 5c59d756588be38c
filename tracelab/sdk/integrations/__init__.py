"""The integrations registry: one module per patched library, each with `install()`/`uninstall()`.

`activate()` (called by `init`) installs the chosen integrations through post-import hooks, so
a library imported after `init()` is patched the moment its import finishes, and one that is
never imported is never imported by us. `deactivate()` restores every original exactly.
"""
from __future__ import annotations

import importlib
import os
import sys
import threading
from collections.abc import Iterable

import wrapt

# integration name -> (module implementing it, module whose import triggers it)
INTEGRATIONS: dict[str, tuple[str, str]] = {
    "requests": ("tracelab.sdk.integrations.requests", "requests"),
    "httpx": ("tracelab.sdk.integrations.httpx", "httpx"),
    "smtplib": ("tracelab.sdk.integrations.smtplib", "smtplib"),
    "boto3": ("tracelab.sdk.integrations.boto3", "botocore.client"),
    "twilio": ("tracelab.sdk.integrations.twilio", "twilio.rest"),
    "grpc": ("tracelab.sdk.integrations.grpc", "grpc"),
}

_wanted: set[str] = set()
_hooked: set[str] = set()
_lock = threading.RLock()


def _new_lock_in_child() -> None:
    """A forked child gets a fresh lock: one held by another parent thread at fork time would
    stay held forever in the child (that thread does not exist there)."""
    global _lock
    _lock = threading.RLock()


os.register_at_fork(after_in_child=_new_lock_in_child)


def _on_import(name: str) -> None:
    with _lock:
        if name not in _wanted:
            return
        module_name = INTEGRATIONS[name][0]
    try:
        importlib.import_module(module_name).install()
    except Exception as exc:  # a broken or incompatible library must not break the app
        from tracelab.sdk.recorder import _stats

        _stats.count_error(name, f"install failed: {type(exc).__name__}: {exc}")


def check(names: Iterable[str] | None) -> set[str]:
    """The integrations `names` chooses (None: all known); `ConfigError` for an unknown name."""
    chosen = set(INTEGRATIONS) if names is None else set(names)
    unknown = chosen - set(INTEGRATIONS)
    if unknown:
        from tracelab.config import ConfigError

        raise ConfigError(f"unknown integration(s) {sorted(unknown)}; known: {sorted(INTEGRATIONS)}")
    return chosen


def activate(names: Iterable[str] | None) -> None:
    """Install `names` (None: all known) and uninstall the ones no longer wanted."""
    chosen = check(names)
    with _lock:
        for name in _wanted - chosen:
            _uninstall(name)
        _wanted.clear()
        _wanted.update(chosen)
        for name in chosen:
            if name in _hooked:
                _on_import(name)  # already imported libraries: (re)install, idempotent
            else:
                _hooked.add(name)
                wrapt.register_post_import_hook(
                    lambda _module, _name=name: _on_import(_name), INTEGRATIONS[name][1])


def deactivate() -> None:
    with _lock:
        for name in list(_wanted):
            _uninstall(name)
        _wanted.clear()


def _uninstall(name: str) -> None:
    module = sys.modules.get(INTEGRATIONS[name][0])
    if module is not None:  # never imported means never installed
        module.uninstall()
