"""TraceLab: record, inspect and replay everything an AI agent does to the outside world.

`import tracelab as tl` is both the SDK (`tl.init`, `tl.trace`, `tl.span`, `tl.register_hook`,
`tl.flush`, `tl.shutdown`, `tl.stats`) and the notebook face (`tl.workflows()`,
`tl.executions(wf)`, `tl.execution(run_id)`, `tl.llm_calls(wf)`). The query side is imported
on first use so an instrumented app never pays for pandas or pyarrow at import time.
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

from tracelab.sdk import (  # noqa: E402  (needs __version__ above)
    flush,
    init,
    register_hook,
    shutdown,
    span,
    stats,
    trace,
)

_QUERY_NAMES = ("workflows", "executions", "execution", "Executions", "Execution",
                "llm_calls", "compare")

__all__ = ["__version__", "init", "trace", "span", "register_hook", "flush", "shutdown", "stats",
           *_QUERY_NAMES]


def load_ipython_extension(ipython: Any) -> None:
    """`%load_ext tracelab`: see `tracelab.notebook.magics`."""
    from tracelab.notebook.magics import load_ipython_extension as load

    load(ipython)


def __getattr__(name: str) -> Any:
    if name == "replay":  # `with tracelab.replay(recording):` (the callable subpackage)
        import importlib

        return importlib.import_module("tracelab.replay")
    if name in _QUERY_NAMES:
        from tracelab import api

        return getattr(api, name)
    raise AttributeError(f"module 'tracelab' has no attribute {name!r}")
