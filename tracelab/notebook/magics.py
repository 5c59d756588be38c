"""`%load_ext tracelab`: `tl` in the namespace, the `%tracelab` magics, a flush after each cell.

Owns the IPython side only: what a cell records goes through the SDK (`tl.init`, `tl.flush`),
what a cell shows comes from `tracelab.api`. Nothing is displayed unless asked for (a magic or
an expression), and the post-cell flush is silent unless it fails.

- `%tracelab`: mode, store, Redis status, counts and the last executions.
- `%%tracelab_record WORKFLOW [--run-id ID] [--tags JSON] [--service NAME] [--no-timeline]`:
  the cell becomes one execution of WORKFLOW; afterwards a one-line summary and its timeline.
"""
from __future__ import annotations

import ast
import html
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from IPython.display import display

import tracelab
from tracelab.config import url_without_password
from tracelab.sdk import recorder

_HOOK_ATTR = "_tracelab_post_cell_flush"
FLUSH_TIMEOUT = 5.0
# After a failed flush (Redis down), later cells wait this long at most before moving on.
RETRY_FLUSH_TIMEOUT = 0.5
STORE_WAIT = 3.0  # service mode: how long a recorded cell waits for the ingester to store it


def load_ipython_extension(ipython: Any) -> None:
    """Put `tl` in the user namespace, register the magics and the post-cell flush (once)."""
    ipython.push({"tl": tracelab})
    ipython.register_magics(TraceLabMagics)
    if getattr(ipython, _HOOK_ATTR, None) is None:
        hook = PostCellFlush()
        ipython.events.register("post_run_cell", hook)
        setattr(ipython, _HOOK_ATTR, hook)


class PostCellFlush:
    """After each cell: if it recorded anything, deliver it, so the next cell's queries see it.

    In embedded mode `tl.flush()` also folds the spool into the store; in service mode it
    publishes to Redis and the ingester stores it.
    """

    def __init__(self) -> None:
        self.flushed_upto = tracelab.stats()["captured"]
        self.failing = False

    def __call__(self, result: Any = None) -> None:
        try:
            if recorder.current() is None:
                return
            captured = tracelab.stats()["captured"]
            if captured == self.flushed_upto and not self.failing and _sink_idle():
                return
            ok = tracelab.flush(timeout=RETRY_FLUSH_TIMEOUT if self.failing else FLUSH_TIMEOUT)
        except Exception as exc:  # never break the user's notebook from a hook
            ok = False
            detail = f"{type(exc).__name__}: {exc}"
        else:
            detail = str(tracelab.stats().get("last_error") or "timed out")
        if ok:
            self.flushed_upto = captured
            self.failing = False
        elif not self.failing:
            self.failing = True
            print(f"tracelab: could not deliver this cell's events yet ({detail}); they stay "
                  "queued and are retried after the next cell", file=sys.stderr)


def _sink_idle() -> bool:
    """True when the active recorder's sink holds nothing (its thread counts a call as
    captured only when it builds it, which may be after the cell has ended)."""
    sink = getattr(recorder.current(), "sink", None)
    idle = getattr(sink, "idle", None)
    return bool(idle()) if callable(idle) else True


# -- %tracelab ------------------------------------------------------------------------------

def _redis_state(url: str | None) -> str:
    if not url:
        return "not used (embedded mode)"
    try:
        import redis

        redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5).ping()
        return f"reachable at {url_without_password(url)}"
    except Exception as exc:
        return f"UNREACHABLE at {url_without_password(url)}: {type(exc).__name__}: {exc}"


@dataclass
class TraceLabStatus:
    """What `%tracelab` shows: where things go, whether Redis answers, what the store holds."""

    mode: str
    store: str
    redis: str
    recording: str
    counts: dict[str, int] = field(default_factory=dict)
    last: pd.DataFrame = field(default_factory=pd.DataFrame)

    def lines(self) -> list[str]:
        counts = ", ".join(f"{v:,} {k}" for k, v in self.counts.items() if k != "bytes")
        return [f"mode: {self.mode}", f"store: {self.store}", f"redis: {self.redis}",
                f"recording: {self.recording}", f"store holds: {counts or 'nothing yet'}"]

    def __repr__(self) -> str:
        text = "\n".join(self.lines())
        if not self.last.empty:
            text += "\nlast executions:\n" + self.last.to_string(index=False)
        return text

    def _repr_html_(self) -> str:
        from tracelab.notebook.repr import box, esc, frame_html

        rows = "".join(f"<div>{esc(line)}</div>" for line in self.lines())
        last = ('<div class="tl-head">last executions</div>' + frame_html(self.last, 5)
                if not self.last.empty else "")
        return box('<div class="tl-head">TraceLab</div>' + rows + last)


def status() -> TraceLabStatus:
    from tracelab.config import env_str
    from tracelab.store import query
    from tracelab.store.layout import resolve_layout

    rec = recorder.current()
    redis_url = rec.config.redis_url if rec is not None else env_str("TRACELAB_REDIS_URL")
    layout = resolve_layout()
    recording = (f"workflow {rec.config.workflow!r}, run {rec.config.run_id!r}, service "
                 f"{rec.config.service!r}" if rec is not None
                 else "off (tl.init(workflow_name=...) or %%tracelab_record WORKFLOW)")
    counts = query.store_stats(layout=layout)
    last = pd.DataFrame()
    wfs = query.workflows(layout=layout)
    if len(wfs):
        newest = wfs.sort_values("last_event", ascending=False)["workflow"].head(10)
        frames = [query.executions(wf, limit=5, layout=layout) for wf in newest]
        last = pd.concat([f for f in frames if len(f)], ignore_index=True)
        last = last.sort_values("started_at", ascending=False).head(5)[
            ["workflow", "run_id", "started_at", "duration_ms", "events", "errors", "status"]]
    return TraceLabStatus(mode="redis (service)" if redis_url else "embedded",
                          store=layout.uri or str(layout.root), redis=_redis_state(redis_url),
                          recording=recording, counts=counts, last=last)


# -- %%tracelab_record ----------------------------------------------------------------------

@dataclass
class RecordedRun:
    """The one-line summary `%%tracelab_record` shows after its cell."""

    workflow: str
    run_id: str
    events: int
    errors: int
    duration_ms: float
    note: str = ""

    def line(self) -> str:
        from tracelab.notebook.repr import format_ms

        if self.note:
            return self.note
        return (f"recorded run {self.run_id!r} of {self.workflow!r}: {self.events} events, "
                f"{self.errors} errors, {format_ms(self.duration_ms)} · "
                f"tl.execution({self.run_id!r})")

    def __repr__(self) -> str:
        return self.line()

    def _repr_html_(self) -> str:
        css = "color:#c62828" if self.errors else ""
        return (f'<div style="font-family:var(--jp-ui-font-family,sans-serif);{css}">'
                f"{html.escape(self.line())}</div>")


def _parse_tags(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        text = text[1:-1]  # IPython's argument splitter keeps the user's quotes
    try:
        tags = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"--tags must be a JSON object such as '{{\"env\": \"dev\"}}', "
                         f"got {text!r} ({exc})") from None
    if not isinstance(tags, dict):
        raise UsageError(f"--tags must be a JSON object, got {text!r}")
    return tags


def _init_kwargs(config: Any) -> dict[str, Any]:
    """`init()` arguments that recreate a recorder's configuration."""
    return {"workflow_name": config.workflow, "service_name": config.service,
            "run_id": config.run_id, "tags": dict(config.tags), "redis_url": config.redis_url,
            "capture_payloads": config.capture_payloads,
            "redact": [p.pattern for p in config.redact_patterns],
            "max_body_bytes": config.max_body_bytes, "integrations": config.integrations}


@magics_class
class TraceLabMagics(Magics):
    """`%tracelab` and `%%tracelab_record`."""

    @line_magic
    def tracelab(self, line: str = "") -> TraceLabStatus:
        """Show TraceLab's mode, store path, Redis status, counts and the last executions."""
        return status()

    @magic_arguments()
    @argument("workflow", help="the workflow this cell's execution belongs to")
    @argument("--run-id", dest="run_id", default=None,
              help="the execution's run id (default: a new one)")
    @argument("--tags", default=None, help='tags as a JSON object, e.g. \'{"env": "dev"}\'')
    @argument("--service", default=None, help="service name (default: as tl.init would pick)")
    @argument("--no-timeline", dest="no_timeline", action="store_true",
              help="show only the summary line, not the timeline")
    @cell_magic
    def tracelab_record(self, line: str, cell: str) -> None:
        """Record this cell as one execution of WORKFLOW, then show its summary and timeline."""
        from tracelab.config import ConfigError
        from tracelab.events import new_run_id

        args = parse_argstring(self.tracelab_record, line)
        tags = _parse_tags(args.tags)
        previous = recorder.current()
        kwargs = _init_kwargs(previous.config) if previous is not None else {}
        kwargs.update(workflow_name=args.workflow, run_id=args.run_id or new_run_id(),
                      tags=tags)
        if args.service:
            kwargs["service_name"] = args.service
        try:
            config = tracelab.init(**kwargs)
        except ConfigError as exc:
            raise UsageError(str(exc)) from None
        if config is None:
            print("tracelab: TRACELAB_DISABLED is set, so this cell runs without recording")
            self._run(cell)
            return
        try:
            self._run(cell)
        finally:
            delivered = tracelab.flush(timeout=FLUSH_TIMEOUT * 2)
            if previous is not None:
                tracelab.init(**_init_kwargs(previous.config))
            else:
                tracelab.shutdown()
            try:
                self._show(config, delivered, not args.no_timeline)
            except Exception as exc:  # showing must not hide the cell's own outcome
                print(f"tracelab: could not show run {config.run_id!r}: "
                      f"{type(exc).__name__}: {exc}", file=sys.stderr)

    def _run(self, cell: str) -> None:
        """Run the cell in the user namespace, showing its last expression as a cell would.

        Exceptions propagate, so a failing recorded cell fails the notebook run; the summary
        of what it recorded up to the failure is still shown (see `tracelab_record`).
        """
        shell = self.shell
        source = shell.transform_cell(cell)
        try:
            filename = shell.compile.cache(source, shell.execution_count, raw_code=cell)
        except Exception:
            filename = "<tracelab_record>"
        tree = ast.parse(source, filename=filename)
        if any(isinstance(node, (ast.Await, ast.AsyncFor, ast.AsyncWith))
               for node in ast.walk(tree)):
            # Top-level await needs IPython's own async runner.
            shell.run_cell(cell, store_history=False)
            return
        last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
        namespace = shell.user_ns
        exec(compile(tree, filename, "exec"), shell.user_global_ns, namespace)
        if last is not None:
            value = eval(compile(ast.Expression(last.value), filename, "eval"),
                         shell.user_global_ns, namespace)
            if value is not None:
                display(value)

    def _show(self, config: Any, delivered: bool, with_timeline: bool) -> None:
        from tracelab import api

        run = None
        deadline = time.monotonic() + (STORE_WAIT if config.redis_url else 0)
        while True:
            try:
                run = api.execution(config.run_id, workflow=config.workflow)
                break
            except KeyError:
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.1)
        if run is None:
            if config.redis_url and delivered:
                note = (f"run {config.run_id!r} of {config.workflow!r} was published to Redis; "
                        "it shows here once `tracelab ingest` has stored it")
            elif not delivered:
                note = (f"run {config.run_id!r}: events not delivered yet "
                        f"({tracelab.stats().get('last_error') or 'flush timed out'})")
            else:
                note = (f"run {config.run_id!r} of {config.workflow!r} recorded no events: the "
                        "cell made no call TraceLab captures")
            display(RecordedRun(config.workflow, config.run_id, 0, 0, 0.0, note=note))
            return
        events = run.events
        starts = pd.to_datetime(events["started_at"], utc=True)
        ends = starts + pd.to_timedelta(events["latency_ms"], unit="ms")
        duration = (ends.max() - starts.min()).total_seconds() * 1000
        display(RecordedRun(config.workflow, config.run_id, len(events),
                            int((events["status"] == "error").sum()), duration))
        if with_timeline:
            display(run.timeline())
