"""`%load_ext tracelab` in a real IPython kernel, driven by nbclient (acceptance 1–3).

One notebook, executed once per module: it starts a loopback stand-in server, loads the
extension, records 20 calls (3 of them 5xx) with `tl.init`, and then, in later cells and without
any manual flush, queries them, opens the timeline, clicks a bar, records a cell with
`%%tracelab_record`, and does the same against a real Redis. Each cell prints what it saw as
JSON; the tests below read those outputs.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import RedisServer

ROOT = Path(__file__).resolve().parents[1]

# A stand-in vendor API on loopback, defined inside the notebook itself: `/status/<code>`
# answers with that code, everything else with 200; every answer echoes the request body.
STANDIN_SERVER = '''
import http.server, json, threading

class StandIn(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _handle(self):
        size = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(size) if size else b""
        code = int(self.path.rsplit("/", 1)[1]) if self.path.startswith("/status/") else 200
        out = json.dumps({"path": self.path, "echo": body.decode("utf-8", "replace")}).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = _handle

server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
threading.Thread(target=server.serve_forever, daemon=True).start()
BASE = f"http://127.0.0.1:{server.server_address[1]}"
'''

SETUP = '''
import json, os, tempfile
os.environ["TRACELAB_HOME"] = tempfile.mkdtemp(prefix="tl-kernel-")
for name in ("TRACELAB_REDIS_URL", "TRACELAB_WORKFLOW_NAME", "TRACELAB_RUN_ID", "TRACELAB_TAGS",
             "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
    os.environ.pop(name, None)
''' + STANDIN_SERVER + '''
%load_ext tracelab
print(json.dumps({"tl": tl.__name__}))
'''

CELLS: list[tuple[str, str]] = [
    ("setup", SETUP),
    ("record", '''
import requests
tl.init(workflow_name="kernel-wf", service_name="agent", run_id="kernel-run")
for i in range(20):
    path = "/status/502" if i in (4, 11, 17) else f"/refunds/{i}"
    requests.post(BASE + path, json={"i": i, "note": "<img src=x onerror=alert(1)>"})
'''),
    ("query", '''
import plotly.graph_objects as go
df = tl.executions("kernel-wf").df
events = tl.execution("kernel-run").events
latencies = tl.executions("kernel-wf").latencies(by="target")
widget = tl.execution("kernel-run").timeline()
figure = widget.children[0]
print(json.dumps({"rows": len(df), "events": len(events),
                  "errors": int((events["status"] == "error").sum()),
                  "p95": "p95" in latencies.columns,
                  "figure_widget": isinstance(figure, go.FigureWidget),
                  "bars": sum(len(trace.x) for trace in figure.data)}))
widget
'''),
    ("click", '''
error_trace = [trace.name for trace in figure.data].index("error")
figure._handler_js2py_pointsCallback({"new": {
    "event_type": "plotly_click", "device_state": None, "selector": None,
    "points": {"trace_indexes": [error_trace], "point_indexes": [0], "xs": [0], "ys": [0]}}})
expected = widget.ids[error_trace][0]
panel = widget.children[1].value
print(json.dumps({"has_event": expected in panel,
                  "request": "POST " + BASE + "/status/502" in panel,
                  "response": "status 502" in panel,
                  "escaped": "&lt;img src=x onerror=alert(1)&gt;" in panel,
                  "raw": "<img src=x" in panel}))
'''),
    ("record_magic", '''%%tracelab_record record-wf --run-id rec-1 --tags '{"env": "kernel"}'
for i in range(3):
    requests.get(BASE + f"/lookup/{i}")
"last value of the recorded cell"
'''),
    ("after_record", '''
rec = tl.executions("record-wf")
requests.get(BASE + "/after-record")
print(json.dumps({"rows": len(rec.df), "events": len(tl.execution("rec-1").events),
                  "tags": {k: v for k, v in rec.df["tags"].iloc[0].items()
                           if not k.startswith("command.")}, "restored": tl.stats()["run_id"]}))
'''),
    ("restored", '''
print(json.dumps({"kernel_run_events": len(tl.execution("kernel-run").events)}))
'''),
    ("record_fails", '''%%tracelab_record failing-wf --run-id fail-1 --no-timeline
requests.get(BASE + "/status/500")
raise ValueError("the agent gave up")
'''),
    ("status_magic", "%tracelab"),
    ("redis_record", '''
tl.init(workflow_name="redis-wf", service_name="agent", redis_url=os.environ["TL_TEST_REDIS_URL"])
requests.get(BASE + "/via-redis")
requests.get(BASE + "/via-redis-2")
'''),
    ("redis_check", '''
import redis
stream = redis.Redis.from_url(os.environ["TL_TEST_REDIS_URL"]).xlen("trace.events")
print(json.dumps({"stream": stream}))
tl.shutdown()
'''),
]


def build_notebook() -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    for name, source in CELLS:
        cell = nbformat.v4.new_code_cell(source.strip("\n"))
        cell.metadata["name"] = name
        if name == "record_fails":
            cell.metadata["tags"] = ["raises-exception"]
        nb.cells.append(cell)
    return nb


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("kernel")
    redis_server = RedisServer(work)
    redis_server.start()
    saved = os.environ.get("TL_TEST_REDIS_URL")
    os.environ["TL_TEST_REDIS_URL"] = redis_server.url
    try:
        nb = build_notebook()
        NotebookClient(nb, timeout=120, kernel_name="python3",
                       resources={"metadata": {"path": str(work)}}).execute()
    finally:
        redis_server.stop()
        if saved is None:
            os.environ.pop("TL_TEST_REDIS_URL", None)
        else:
            os.environ["TL_TEST_REDIS_URL"] = saved
    return {cell.metadata["name"]: cell.outputs for cell in nb.cells}


def printed(outputs: list[Any]) -> dict[str, Any]:
    text = "".join(o.get("text", "") for o in outputs
                   if o.output_type == "stream" and o.name == "stdout")
    return json.loads(text.strip().splitlines()[-1])


def displayed(outputs: list[Any], mime: str) -> list[Any]:
    return [o.data[mime] for o in outputs
            if o.output_type in ("display_data", "execute_result") and mime in o.data]


def test_load_ext_puts_tl_in_the_namespace(executed: dict[str, Any]) -> None:
    assert printed(executed["setup"]) == {"tl": "tracelab"}
    assert executed["record"] == []  # recording and the post-cell flush display nothing


def test_next_cell_sees_the_run_and_its_timeline(executed: dict[str, Any]) -> None:
    """Acceptance 1: no manual flush; one row, 20 events with 3 errors, p95, 20 bars."""
    assert printed(executed["query"]) == {"rows": 1, "events": 20, "errors": 3, "p95": True,
                                          "figure_widget": True, "bars": 20}
    assert displayed(executed["query"], "application/vnd.jupyter.widget-view+json")
    assert displayed(executed["query"], "image/svg+xml")  # the static fallback rides along


def test_click_shows_that_events_payload_escaped(executed: dict[str, Any]) -> None:
    """Acceptance 2: the figure's click callback fills the panel with that event."""
    assert printed(executed["click"]) == {"has_event": True, "request": True,
                                          "response": True, "escaped": True, "raw": False}


def test_record_magic_records_the_cell_as_one_execution(executed: dict[str, Any]) -> None:
    """Acceptance 3: `%%tracelab_record`, then the next cell sees it without a flush."""
    outputs = executed["record_magic"]
    lines = [o.data["text/plain"] for o in outputs if "text/plain" in o.get("data", {})]
    assert any("recorded run 'rec-1' of 'record-wf': 3 events, 0 errors" in t for t in lines)
    assert any("last value of the recorded cell" in t for t in lines)
    assert displayed(outputs, "application/vnd.jupyter.widget-view+json")
    assert printed(executed["after_record"]) == {"rows": 1, "events": 3,
                                                 "tags": {"env": "kernel"},
                                                 "restored": "kernel-run"}
    # the recorder went back to the run it had before the recorded cell
    assert printed(executed["restored"]) == {"kernel_run_events": 21}


def test_a_failing_recorded_cell_fails_and_still_shows_what_it_recorded(
        executed: dict[str, Any]) -> None:
    outputs = executed["record_fails"]
    errors = [o for o in outputs if o.output_type == "error"]
    assert errors and errors[0].ename == "ValueError"
    lines = [o.data["text/plain"] for o in outputs if "text/plain" in o.get("data", {})]
    assert any("recorded run 'fail-1' of 'failing-wf': 1 events, 1 errors" in t for t in lines)


def test_status_magic(executed: dict[str, Any]) -> None:
    text = displayed(executed["status_magic"], "text/plain")[0]
    assert "mode: embedded" in text and "redis: not used" in text
    assert "record-wf" in text and "kernel-wf" in text
    assert "<div" in displayed(executed["status_magic"], "text/html")[0]


def test_post_cell_flush_publishes_in_redis_mode(executed: dict[str, Any]) -> None:
    # the run's lifecycle start (published at init) and the two calls
    assert printed(executed["redis_check"]) == {"stream": 3}
