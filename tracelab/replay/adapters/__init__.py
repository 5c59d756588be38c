"""Replay adapters: one module per library, answering its calls from the active replay session.

How to write an adapter (`tracelab/replay/adapters/<library>.py`):

1. Patch the library BELOW the SDK's recording integration (tracelab/sdk/integrations/), with
   `tracelab.sdk.integrations._patching.patch`, so the SDK still records the replayed call as
   a normal event: requests at `HTTPAdapter.send` (the SDK records at `Session.send`), httpx
   at the transports' `handle_request` (the SDK records at `Client.send`).
2. Expose `install()` and `uninstall()`, both idempotent, and register the module in
   `ADAPTERS` below with the import that triggers it. The engine installs them when a replay
   starts (a library imported later is patched when its import finishes) and uninstalls them
   when it ends.
3. In the patched function: `session = tracelab.replay.session.active()`; None means no replay
   (call through). Otherwise build the live call in the STORED event shape, with the SDK's
   own helpers and the recorder's redactor (`tracelab.replay.matching.http_request_view` for
   HTTP), so its key equals the recorded one, and call `outcome = session.take(live)`:
   - `outcome.hit`: build the library's own response from `outcome.event` (helpers in
     tracelab/replay/session.py: `body_bytes`, `recorded_headers`, `recorded_chunks`,
     `stream_error`, `timed_chunks`). `take()` already slept the recorded latency (speed > 0)
     unless called with `wait=False` (streams time their chunks themselves; async adapters
     sleep with `asyncio.sleep` on `session.delay(...)`).
   - `outcome.passthrough`: call the real function (live); the session counted it.
   - else: raise the library's own connection error with `outcome.message` (the matcher's
     explanation); nothing is sent.
   `take()` also leaves the outcome for the event the SDK builds next in this thread/task
   (tag `replay=hit|miss|passthrough|fault`), so an adapter does nothing about tags.
   Faults arrive as hits: `outcome.fault` set and `outcome.event` the fault's synthetic event
   (a status answer, a recorded answer with its body changed or its stream cut, which the
   code above already answers). Only `reset` and `timeout` need the adapter: raise the
   library's own connection-dropped error, or wait `session_api.hang_seconds(outcome,
   <the client's own timeout>)` and raise its own timeout error. With `take(wait=False)`,
   first wait `outcome.pause_ms` (the fault's latency; `session.pause(outcome)` or
   `asyncio.sleep`).
4. Never let a TraceLab failure reach the caller except the deliberate miss error.
"""
from __future__ import annotations

import importlib
import sys
import threading

import wrapt

# adapter name -> (module implementing it, module whose import triggers it)
ADAPTERS: dict[str, tuple[str, str]] = {
    "requests": ("tracelab.replay.adapters.requests", "requests"),
    "httpx": ("tracelab.replay.adapters.httpx", "httpx"),
    "smtplib": ("tracelab.replay.adapters.smtplib", "smtplib"),
    "boto3": ("tracelab.replay.adapters.boto3", "botocore.client"),
    "twilio": ("tracelab.replay.adapters.twilio", "twilio.rest"),
    "grpc": ("tracelab.replay.adapters.grpc", "grpc"),
}

_wanted = False
_hooked: set[str] = set()
_lock = threading.RLock()


def _on_import(name: str) -> None:
    with _lock:
        if not _wanted:
            return
    try:
        importlib.import_module(ADAPTERS[name][0]).install()
    except Exception as exc:  # a broken or incompatible library must not break the app
        from tracelab.sdk.recorder import _stats

        _stats.count_error(f"replay.{name}", f"install failed: {type(exc).__name__}: {exc}")


def install() -> None:
    """Install every adapter now (imported libraries) or at the library's import (the rest)."""
    global _wanted
    with _lock:
        _wanted = True
        for name, (_module, trigger) in ADAPTERS.items():
            if name in _hooked:
                if trigger in sys.modules:
                    _on_import(name)
                continue
            _hooked.add(name)
            wrapt.register_post_import_hook(lambda _m, _name=name: _on_import(_name), trigger)


def uninstall() -> None:
    """Put every patched attribute back exactly (adapters never imported were never installed)."""
    global _wanted
    with _lock:
        _wanted = False
        for module_name, _trigger in ADAPTERS.values():
            module = sys.modules.get(module_name)
            if module is not None:
                try:
                    module.uninstall()
                except Exception as exc:
                    from tracelab.sdk.recorder import _stats

                    _stats.count_error("replay", f"uninstall {module_name}: {exc!r}")
