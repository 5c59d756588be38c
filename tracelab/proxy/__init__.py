"""`tracelab proxy`: zero-code capture for any client that honours HTTP(S)_PROXY.

`addon` holds the mitmproxy addon (flows -> TraceEvents through the SDK's sinks), `runner`
runs mitmproxy's own DumpMaster with it and owns the proxy's CA under `$TRACELAB_HOME/proxy/`.
Both import mitmproxy lazily or only for type checking, so importing this package is cheap;
`tracelab.cli.proxy` is the command line on top.
"""
from __future__ import annotations

from tracelab.proxy.addon import ClientDisconnected, TraceLabAddon, UpstreamError, WebSocketError

__all__ = ["ClientDisconnected", "TraceLabAddon", "UpstreamError", "WebSocketError"]
