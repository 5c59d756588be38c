"""Capture: `init`, `trace`, `span`, `register_hook`, `flush`, `shutdown`, `stats`.

Importing this package patches nothing; `init()` does, through the integrations registry.
"""
from tracelab.sdk.hooks import register_hook
from tracelab.sdk.recorder import flush, init, shutdown, stats
from tracelab.sdk.spans import span, trace

__all__ = ["init", "trace", "span", "register_hook", "flush", "shutdown", "stats"]
