"""HTML for the notebook face: summaries, tables and the payload panel, every value escaped.

Owns how a recorded value becomes markup. Payloads are hostile input (an agent may have sent
or received `<script>`): everything from the store goes through `html.escape`, so a payload
shows as text and never as HTML. Knows nothing about widgets or Plotly.
"""
from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping
from typing import Any

import orjson
import pandas as pd

from tracelab.analysis.conversation import ROLES, Conversation, Message, ToolCall, conversation

# Past this, a pretty-printed body is cut in the panel (the full event stays one call away).
PANEL_TEXT_LIMIT = 100_000
_BASE64_PREVIEW = 240

_STYLE = (
    "<style>"
    ".tl-box{font-family:var(--jp-ui-font-family,sans-serif);font-size:13px;line-height:1.4}"
    ".tl-box .tl-head{font-weight:600;margin:2px 0 6px 0}"
    ".tl-box .tl-dim{color:var(--jp-ui-font-color2,#666)}"
    ".tl-box .tl-err{color:#c62828;font-weight:600}"
    ".tl-box .tl-ok{color:#2e7d32;font-weight:600}"
    ".tl-box pre{white-space:pre-wrap;word-break:break-all;margin:2px 0 8px 0;padding:6px;"
    "background:var(--jp-layout-color2,#f5f5f5);border-radius:3px;font-size:12px}"
    ".tl-box table{border-collapse:collapse}"
    ".tl-box code{font-size:12px}"
    ".tl-box .tl-msg{border-left:3px solid #9e9e9e;padding:2px 0 2px 6px;margin:4px 0}"
    ".tl-box .tl-msg pre{margin:2px 0}"
    ".tl-box .tl-role{font-weight:600;font-size:11px;text-transform:uppercase}"
    ".tl-box .tl-role-system{border-color:#7e57c2}.tl-box .tl-role-user{border-color:#1e88e5}"
    ".tl-box .tl-role-assistant{border-color:#43a047}.tl-box .tl-role-tool{border-color:#fb8c00}"
    ".tl-box .tl-completion{background:var(--jp-layout-color1,#fff);outline:1px solid #43a047}"
    ".tl-box details>summary{cursor:pointer;font-weight:600;margin:6px 0}"
    ".tl-box .tl-state{font-weight:600;border-radius:8px;padding:0 6px;font-size:12px}"
    ".tl-box .tl-state-running{background:#dbeafe;color:#1d4ed8}"
    ".tl-box .tl-state-finished{background:#dcfce7;color:#2e7d32}"
    ".tl-box .tl-state-failed{background:#fee2e2;color:#c62828}"
    ".tl-box .tl-state-abandoned{background:#ffedd5;color:#c2410c}"
    "</style>"
)


def esc(value: Any) -> str:
    """Any value as escaped text (None as an empty string)."""
    return "" if value is None else html.escape(str(value), quote=True)


def status_html(status: Any) -> str:
    css = "tl-err" if status == "error" else "tl-ok"
    return f'<span class="{css}">{esc(status)}</span>'


# An execution's lifecycle state, as `query.RUN_STATES` names them.
_STATES = ("running", "finished", "failed", "abandoned")


def state_html(state: Any) -> str:
    """An execution's `state` as a coloured badge (empty for a missing state)."""
    if state is None or (isinstance(state, float) and math.isnan(state)):
        return ""
    css = f" tl-state-{state}" if state in _STATES else ""
    return f'<span class="tl-state{css}" title="execution state">{esc(state)}</span>'


def states_html(states: Iterable[Any]) -> str:
    """How many runs are in each state, as badges in `_STATES` order: `2 running 5 finished`."""
    counts: dict[str, int] = {}
    for state in states:
        if isinstance(state, str):
            counts[state] = counts.get(state, 0) + 1
    order = [s for s in _STATES if s in counts] + sorted(set(counts) - set(_STATES))
    return " ".join(f"{counts[s]:,} {state_html(s)}" for s in order)


def format_ms(value: Any) -> str:
    try:
        ms = float(value)
    except (TypeError, ValueError):
        return "?"
    if math.isnan(ms):
        return "?"
    if ms >= 60_000:
        return f"{ms / 60_000:.1f} min"
    if ms >= 1000:
        return f"{ms / 1000:.2f} s"
    return f"{ms:.1f} ms"


def box(inner: str) -> str:
    return f'{_STYLE}<div class="tl-box">{inner}</div>'


def frame_html(frame: pd.DataFrame, max_rows: int = 20) -> str:
    """A DataFrame's head as an escaped HTML table, with a line saying how much is hidden."""
    shown = frame.head(max_rows)
    table = shown.to_html(index=False, escape=True, border=0, na_rep="")
    more = len(frame) - len(shown)
    tail = (f'<div class="tl-dim">… {more:,} more rows in <code>.df</code></div>'
            if more > 0 else "")
    return table + tail


def join_names(values: Iterable[Any], limit: int = 6) -> str:
    items = [str(v) for v in values]
    text = ", ".join(items[:limit])
    if len(items) > limit:
        text += f", … (+{len(items) - limit})"
    return esc(text)


# -- payload panel --------------------------------------------------------------------------

def pretty(value: Any) -> str:
    """Pretty-printed JSON text for a JSON-like value (strings kept as they are)."""
    if isinstance(value, str):
        return value
    try:
        return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS,
                            default=repr).decode()
    except TypeError:
        return repr(value)


def _cut(text: str) -> str:
    if len(text) <= PANEL_TEXT_LIMIT:
        return text
    return (text[:PANEL_TEXT_LIMIT]
            + f"\n… {len(text) - PANEL_TEXT_LIMIT:,} more characters not shown here")


def body_html(body: Any) -> str:
    """A body as stored: JSON, text, or a `$tracelab` marker (truncated, binary, not captured)."""
    if body is None:
        return '<div class="tl-dim">(no body)</div>'
    if isinstance(body, Mapping) and isinstance(body.get("$tracelab"), str):
        marker = body["$tracelab"]
        if marker == "truncated":
            note = (f"truncated by TraceLab: original size {_int(body.get('size')):,} bytes "
                    f"({esc(body.get('encoding'))}); the first part follows")
            return (f'<div class="tl-dim">{note}</div>'
                    f"<pre>{esc(_cut(str(body.get('data') or '')))}</pre>")
        if marker == "binary":
            data = str(body.get("base64") or "")
            preview = data[:_BASE64_PREVIEW] + ("…" if len(data) > _BASE64_PREVIEW else "")
            return (f'<div class="tl-dim">binary body, {_int(body.get("size")):,} bytes '
                    f"(base64 below)</div><pre>{esc(preview)}</pre>")
        if marker == "not_captured":
            return f'<div class="tl-dim">not captured: {esc(body.get("reason"))}</div>'
    return f"<pre>{esc(_cut(pretty(body)))}</pre>"


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _message_html(title: str, message: Any) -> str:
    if message is None:
        return f'<div class="tl-head">{title}</div><div class="tl-dim">(none)</div>'
    if not isinstance(message, Mapping):
        return f'<div class="tl-head">{title}</div>{body_html(message)}'
    parts = [f'<div class="tl-head">{title}</div>']
    line = " ".join(esc(message[k]) for k in ("method", "url") if message.get(k) is not None)
    if message.get("status_code") is not None:
        line = (line + " " if line else "") + f"status {esc(message['status_code'])}"
    if line:
        parts.append(f"<div><code>{line}</code></div>")
    if message.get("headers"):
        parts.append('<div class="tl-dim">headers</div>'
                     f"<pre>{esc(_cut(pretty(message['headers'])))}</pre>")
    rest = {k: v for k, v in message.items()
            if k not in ("method", "url", "status_code", "headers", "body")}
    if "body" in message:
        parts.append('<div class="tl-dim">body</div>' + body_html(message["body"]))
    for key, value in rest.items():
        parts.append(f'<div class="tl-dim">{esc(key)}</div>' + body_html(value))
    return "".join(parts)


def _tool_call_html(call: ToolCall) -> str:
    args = call.arguments
    text = "" if args is None else args if isinstance(args, str) else pretty(args)
    ident = f' <span class="tl-dim">{esc(call.id)}</span>' if call.id else ""
    return (f'<div class="tl-call">→ calls <code>{esc(call.name or "?")}</code>{ident}</div>'
            + (f"<pre>{esc(_cut(text))}</pre>" if text else ""))


def _turn_html(message: Message, extra_class: str = "") -> str:
    role = message.role if message.role in ROLES else "user"
    head = esc(role)
    if role == "tool":
        what = f" {esc(message.name)}" if message.name else ""
        ident = f" ({esc(message.tool_call_id)})" if message.tool_call_id else ""
        head += f'<span class="tl-dim"> result of{what}{ident}</span>'
        if message.is_error:
            head += ' <span class="tl-err">error</span>'
    parts = [f'<div class="tl-role">{head}</div>']
    if message.reasoning:
        parts.append(f'<div class="tl-dim">reasoning</div><pre>{esc(_cut(message.reasoning))}'
                     "</pre>")
    if message.content is not None:
        parts.append(f"<pre>{esc(_cut(message.content))}</pre>")
    parts += [_tool_call_html(call) for call in message.tool_calls]
    return f'<div class="tl-msg tl-role-{role}{extra_class}">{"".join(parts)}</div>'


def conversation_html(conv: Conversation) -> str:
    """An LLM call as read by people: the turns by role, tool calls and results, the
    completion (every string escaped, like any payload)."""
    facts = [esc(conv.format)] + [f"<code>{esc(v)}</code>" for v in (conv.model,) if v]
    if conv.streamed:
        facts.append("streamed")
    if conv.truncated:
        facts.append('<span class="tl-err">cut short: the stream was not recorded whole</span>')
    parts = [f'<div class="tl-head">Conversation</div><div class="tl-dim">{" · ".join(facts)}'
             "</div>"]
    if conv.tools:
        parts.append(f'<div class="tl-dim">tools offered: {join_names(conv.tools, 12)}</div>')
    parts += [_turn_html(m) for m in conv.messages]
    finish = f' <span class="tl-dim">finish: {esc(conv.finish_reason)}</span>' \
        if conv.finish_reason else ""
    parts.append(f'<div class="tl-head">Completion{finish}</div>')
    parts.append(_turn_html(conv.completion, " tl-completion") if conv.completion
                 else '<div class="tl-dim">(no answer recorded)</div>')
    return f'<div class="tl-conversation">{"".join(parts)}</div>'


def payload_html(event: Mapping[str, Any]) -> str:
    """The payload panel for one event: what it was, then its request and response; for an
    LLM call, the conversation first and the raw JSON one click away."""
    head = " ".join(esc(event.get(k)) for k in ("kind", "endpoint"))
    facts = [f"target <code>{esc(event.get('target'))}</code>",
             f"service <code>{esc(event.get('service'))}</code>",
             status_html(event.get("status"))]
    if event.get("status_code") is not None:
        facts.append(f"status code {esc(event.get('status_code'))}")
    facts.append(format_ms(event.get("latency_ms")))
    parts = [f'<div class="tl-head">{head}</div>', f"<div>{' · '.join(facts)}</div>",
             f'<div class="tl-dim">event <code>{esc(event.get("event_id"))}</code></div>']
    error = event.get("error")
    if error:
        if isinstance(error, Mapping):
            error = f"{error.get('type', '')}: {error.get('message', '')}"
        parts.append(f'<div class="tl-err">{esc(error)}</div>')
    tokens = llm_usage_text(event.get("tags"))
    if tokens:
        parts.append(f"<div>{esc(tokens)}</div>")
    raw = _message_html("Request", event.get("request")) + \
        _message_html("Response", event.get("response"))
    conv = conversation(event)
    if conv is None:
        parts.append(raw)
    else:
        parts.append(conversation_html(conv))
        parts.append(f'<details class="tl-raw"><summary>Raw JSON (request and response)'
                     f"</summary>{raw}</details>")
    return box("".join(parts))


def llm_usage_text(tags: Any, cost_usd: Any = None) -> str:
    """`120 in (100 cached) · 30 out tokens · $0.000123`: what an LLM call used, from its
    `llm.*` tags and, when the query layer priced it, its cost; empty for other calls."""
    if isinstance(tags, (str, bytes)):
        try:
            tags = orjson.loads(tags)
        except orjson.JSONDecodeError:
            tags = None
    tags = tags if isinstance(tags, Mapping) else {}
    pieces = []
    if tags.get("llm.input_tokens") is not None:
        cached = tags.get("llm.cached_input_tokens")
        pieces.append(f"{tags['llm.input_tokens']} in"
                      + (f" ({cached} cached)" if cached not in (None, "0") else ""))
    if tags.get("llm.output_tokens") is not None:
        pieces.append(f"{tags['llm.output_tokens']} out")
    text = (" · ".join(pieces) + " tokens") if pieces else ""
    try:
        cost = float(cost_usd)
    except (TypeError, ValueError):
        cost = math.nan
    if not math.isnan(cost):
        text += (" · " if text else "") + format_usd(cost)
    return text


def format_usd(value: float) -> str:
    """Dollars with three significant digits however small (`$0.0000285`): an LLM call often
    costs a fraction of a cent."""
    if value <= 0 or math.isnan(value):
        return "$0"
    decimals = max(2, 2 - math.floor(math.log10(value)))
    return f"${value:.{decimals}f}"


def placeholder_html(text: str) -> str:
    return box(f'<div class="tl-dim">{esc(text)}</div>')
