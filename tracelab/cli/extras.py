"""Which optional extra brings which third-party package, so that a command whose extra is
not installed prints the install command instead of a traceback.

Commands import their heavy libraries inside `run`; `tracelab.cli.main` turns the resulting
`ModuleNotFoundError` into one line through `missing_extra_message`. A module that is not in
the table (a bug, or a package of the core dependencies) is not explained away: it is raised.
"""
from __future__ import annotations

EXTRA_OF: dict[str, str] = {
    "fastapi": "server",
    "starlette": "server",
    "uvicorn": "server",
    "prometheus_client": "server",
    "opentelemetry": "server",
    "mitmproxy": "proxy",
    "IPython": "notebook",
    "ipywidgets": "notebook",
    "anywidget": "notebook",
    "plotly": "notebook",
}


def missing_extra_message(command: str, exc: ModuleNotFoundError) -> str | None:
    """`tracelab CMD: needs the 'server' extra (no module 'fastapi'): pip install …`, or None
    when the missing module is none of the extras' packages."""
    top = (exc.name or "").partition(".")[0]
    extra = EXTRA_OF.get(top)
    if extra is None:
        return None
    return (f"tracelab {command}: needs the {extra!r} extra (Python package {top!r} is not "
            f"installed): pip install 'tracelab[{extra}]' (in a clone of the repository: "
            "make install)")
