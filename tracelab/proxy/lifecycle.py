"""The proxy's run start and end (`kind: run`, `source: proxy`), as a mitmproxy addon.

The proxy's run is the one `tracelab.init(lifecycle=False)` configured for the process (its
workflow, run id and service); requests that name another run with `X-Tracelab-Run-Id` do
not start or end anything. The start is published when mitmproxy is listening (`running`),
not when the process started, and the end when mitmproxy stops (`done`): reason `signal` with
`"signal": "SIGTERM"` (status `error`) when a SIGTERM stopped it, `exit` for any other stop
(Ctrl-C). The events go through the SDK's `tracelab.sdk.lifecycle`, so an end is published
at most once even if `tracelab.shutdown()` runs afterwards, and redaction and the sink apply.

The replay proxy publishes neither: its run is the replayed program's, whose SDK starts and
ends it, and the proxy is stopped with SIGTERM by `tracelab replay` every time.
"""
from __future__ import annotations

import signal
from collections.abc import Callable

from tracelab.sdk import lifecycle
from tracelab.sdk.recorder import current

SOURCE = "proxy"


class RunLifecycle:
    """mitmproxy addon: `running` publishes the run's start, `done` its end."""

    def __init__(self, *, publish: bool = True) -> None:
        self.publish = publish  # False: only note the stop signal (the replay proxy)
        self.stopped_by: int | None = None  # the signal that stopped the proxy, if one did

    def stop_on(self, signum: int, stop: Callable[[], object]) -> None:
        """A stop signal's handler: remember which signal it was, then `stop` mitmproxy."""
        self.stopped_by = signum
        stop()

    def running(self) -> None:
        rec = current()
        if rec is not None and self.publish:
            rec.safely(lifecycle.ORIGIN, lifecycle.start, rec, source=SOURCE)

    def done(self) -> None:
        rec = current()
        if rec is None or not self.publish:
            return
        if self.stopped_by == signal.SIGTERM:
            rec.safely(lifecycle.ORIGIN, lifecycle.end, rec, "signal", signal_name="SIGTERM")
        else:
            rec.safely(lifecycle.ORIGIN, lifecycle.end, rec, "exit")
