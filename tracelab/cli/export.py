"""`tracelab export RUN_ID [-o FILE] [--format jsonl|otlp-json|markdown]`: write one stored run.

- `jsonl` (the default) is a recording: JSON Lines of TraceEvents, one per line in start order
  (`started_at`, then `event_id`), exactly as stored (already redacted by the SDK): it passes
  `tracelab validate` and `tracelab scan`, and `tracelab import` or `tracelab replay` take it
  back.
- `otlp-json` is one OTLP/JSON `ExportTraceServiceRequest` (`tracelab.otlp.mapping`), for any
  OpenTelemetry backend (`curl -H 'Content-Type: application/json' --data @run.otlp.json
  http://collector:4318/v1/traces`); posted back to `tracelab serve` it gives the same events.
- `markdown` is a compact transcript to paste into an issue or an LLM: the run's summary, one
  line per step (offset, duration, kind, target, endpoint, status), errors, and each LLM turn
  with its model, tokens, last prompt message and answer.

The default file is `<workflow>-<run_id>.<jsonl|otlp.json|md>` in the working directory,
characters other than letters, digits, `.`, `_` and `-` replaced by `_`; `-o -` writes to
standard output.

Exit status: 0 written, 2 when the store holds no such run or the file cannot be written.
Imports stay light: the CLI imports this module to build its parser whatever command runs.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

FORMATS = ("jsonl", "otlp-json", "markdown")
_SUFFIX = {"otlp-json": ".otlp.json", "markdown": ".md"}
_TEXT_CUT = 500


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", metavar="RUN_ID", help="the run to export")
    parser.add_argument("-o", "--output", metavar="FILE", default=None,
                        help="where to write (default: <workflow>-<run_id>.jsonl here, "
                             ".otlp.json or .md by format; - for stdout)")
    parser.add_argument("--format", choices=FORMATS, default="jsonl",
                        help="jsonl (a recording, default), otlp-json (OpenTelemetry) or "
                             "markdown (a readable transcript)")
    parser.add_argument("--store", help="store root or URI (default: $TRACELAB_STORE, "
                        "else $TRACELAB_HOME/store)")


def _cut(text: str, limit: int = _TEXT_CUT) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + f"… ({len(text)} chars)"


def _content(message: Any) -> str:
    """A chat message's text, whatever the provider's shape (string, parts, blocks)."""
    if not isinstance(message, dict):
        return str(message)
    content = message.get("content", message.get("parts"))  # Gemini: parts
    if isinstance(content, list):
        content = " ".join(str(p.get("text", "")) if isinstance(p, dict) else str(p)
                           for p in content)
    text = str(content or "")
    calls = message.get("tool_calls")
    if isinstance(calls, list) and calls:
        names = [str((c.get("function") or {}).get("name") or c.get("name") or "?")
                 for c in calls if isinstance(c, dict)]
        text = (text + " " if text else "") + f"[tool calls: {', '.join(names)}]"
    return text


def _llm_turn(event: dict[str, Any]) -> list[str]:
    """The prompt's last message and the answer of one LLM event, as quoted lines."""
    request = event.get("request") if isinstance(event.get("request"), dict) else {}
    response = event.get("response") if isinstance(event.get("response"), dict) else {}
    body = request.get("body") if isinstance(request.get("body"), dict) else {}
    answer = response.get("body") if isinstance(response.get("body"), dict) else {}
    lines = []
    messages = body.get("messages") or body.get("input") or body.get("contents")
    if isinstance(messages, list) and messages:
        last = messages[-1]
        role = last.get("role", "user") if isinstance(last, dict) else "user"
        lines.append(f"  > **{role}**: {_cut(_content(last))}")
    elif isinstance(messages, str):
        lines.append(f"  > **user**: {_cut(messages)}")
    text = None
    if isinstance(answer.get("choices"), list) and answer["choices"]:
        choice = answer["choices"][0]
        text = _content(choice.get("message") or {"content": choice.get("text", "")}) \
            if isinstance(choice, dict) else None
    elif isinstance(answer.get("content"), list):  # Anthropic messages
        text = _content({"content": answer["content"]})
    elif isinstance(answer.get("output_text"), str):
        text = answer["output_text"]
    if text:
        lines.append(f"  > **assistant**: {_cut(text)}")
    return lines


def markdown(events: list[dict[str, Any]]) -> str:
    """A compact, readable transcript of one run (events in start order)."""
    if not events:
        return ""
    first = events[0]
    t0 = first["started_at"]
    end = max(e["started_at"] + int(e["latency_ms"] * 1e6) for e in events)
    errors = [e for e in events if e["status"] == "error"]
    tokens = sum(int(v) for e in events
                 if (v := (e.get("tags") or {}).get("llm.total_tokens", "")).isdigit())
    lines = [f"# Run `{first['run_id']}` of `{first['workflow']}`", "",
             f"- {len(events)} steps, {(end - t0) / 1e6:.0f} ms, "
             f"{len(errors)} error{'s' if len(errors) != 1 else ''}"
             + (f", {tokens} LLM tokens" if tokens else ""),
             f"- services: {', '.join(sorted({e['service'] for e in events}))}",
             "", "| # | at (ms) | took (ms) | kind | target | endpoint | status |",
             "| ---: | ---: | ---: | --- | --- | --- | --- |"]
    for i, event in enumerate(events, 1):
        status = event["status"] + (f" {event['status_code']}"
                                    if event.get("status_code") is not None else "")
        cells = [str(i), f"{(event['started_at'] - t0) / 1e6:.0f}",
                 f"{event['latency_ms']:.0f}", event["kind"], event["target"],
                 event["endpoint"], status]
        lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ")
                                        for c in cells) + " |")
    details = []
    for i, event in enumerate(events, 1):
        tags = event.get("tags") or {}
        if event["kind"] == "llm":
            facts = [f"{tags[k]} {label}" for k, label in (
                ("llm.input_tokens", "in"), ("llm.output_tokens", "out"),
                ("llm.cached_input_tokens", "cached")) if k in tags]
            if "llm.ttft_ms" in tags:
                facts.append(f"ttft {float(tags['llm.ttft_ms']):.0f} ms")
            if "llm.finish_reason" in tags:
                facts.append(f"finish {tags['llm.finish_reason']}")
            head = f"- **#{i} LLM** `{tags.get('llm.model', event['endpoint'])}`" + \
                (f" ({tags['llm.provider']})" if "llm.provider" in tags else "")
            details.append(head + (": " + ", ".join(facts) if facts else ""))
            details.extend(_llm_turn(event))
        if event.get("error"):
            error = event["error"]
            details.append(f"- **#{i} error** `{error.get('type')}`: "
                           f"{_cut(str(error.get('message', '')), 300)}")
    if details:
        lines += ["", "## Details", "", *details]
    return "\n".join(lines) + "\n"


def render(events: list[dict[str, Any]], fmt: str) -> bytes:
    """The run's events (start order) in one of `FORMATS`."""
    import orjson

    if fmt == "otlp-json":
        from tracelab.otlp.mapping import events_to_otlp

        return orjson.dumps(events_to_otlp(events), option=orjson.OPT_INDENT_2) + b"\n"
    if fmt == "markdown":
        return markdown(events).encode()
    return b"".join(orjson.dumps(event) + b"\n" for event in events)


def run(args: argparse.Namespace) -> int:
    from tracelab.replay.recording import (
        RecordingError,
        default_path,
        export_run,
        run_events,
        start_order,
    )
    from tracelab.store.layout import resolve_layout

    layout = resolve_layout(args.store)
    fmt = getattr(args, "format", "jsonl")
    try:
        if args.output == "-" or fmt != "jsonl":
            events = start_order(run_events(args.run_id, layout=layout))
            data = render(events, fmt)
            if args.output == "-":
                sys.stdout.buffer.write(data)
                sys.stdout.flush()
                print(f"exported {len(events)} events of run {args.run_id!r}", file=sys.stderr)
                return 0
            path = Path(args.output) if args.output else \
                default_path(events[0]["workflow"], args.run_id).with_suffix(_SUFFIX[fmt])
            path.write_bytes(data)
            print(f"exported {len(events)} events of run {args.run_id!r} to {path}",
                  file=sys.stderr)
            return 0
        path = export_run(args.run_id, Path(args.output) if args.output else None,
                          layout=layout)
    except (KeyError, RecordingError) as exc:
        message = exc.args[0] if exc.args else str(exc)
        print(f"tracelab export: {message}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"tracelab export: cannot write {args.output}: {exc.strerror or exc}",
              file=sys.stderr)
        return 2
    lines = sum(1 for line in path.read_bytes().splitlines() if line.strip())
    print(f"exported {lines} events of run {args.run_id!r} to {path}", file=sys.stderr)
    return 0
