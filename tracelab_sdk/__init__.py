"""The original TraceLab README's import name: `from tracelab_sdk import init, trace, register_hook`."""
from tracelab.sdk import flush, init, register_hook, shutdown, span, stats, trace

__all__ = ["init", "trace", "span", "register_hook", "flush", "shutdown", "stats"]
