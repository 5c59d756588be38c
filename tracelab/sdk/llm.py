"""The canonical LLM fields (`llm.*` tags, spec/README.md "LLM fields") of one LLM HTTP call.

Every producer (the Python SDK, the proxy; `sdk-ts/src/llm.ts` mirrors this module) derives
the same tags from the same request and response, so cost, `tl.llm_calls` and the conversation
view read one set of names whatever recorded the call. The wire formats understood: OpenAI chat
completions, legacy completions, responses and embeddings, Anthropic messages and Gemini
`generateContent`, each as one JSON body or streamed as Server-Sent Events (Gemini's
`streamGenerateContent` also as a JSON array).

Streams are read event by event (`Fold.feed`), so the usage a provider only sends in its final
event is found, `llm.ttft_ms` is the time of the piece that completed the first event carrying
generated output (text, a tool call, reasoning), and tool names come from the deltas. The fold
is format-agnostic: each event is recognised by its own shape, which keeps a stream readable
when it reaches us without its request (the proxy's cut bodies) or through an odd path.

Token normalisation: `llm.input_tokens` counts ALL input tokens. OpenAI and Gemini report it
so; Anthropic's `input_tokens` excludes cached input, so we add `cache_read_input_tokens` and
`cache_creation_input_tokens`. `llm.output_tokens` includes reasoning (Gemini reports thoughts
apart: `candidatesTokenCount + thoughtsTokenCount`). `llm.total_tokens` is the provider's
total, else input + output. Nothing here raises: bad input yields fewer tags.
"""
from __future__ import annotations

import codecs
import re
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

# The size of one SSE event (or unfinished line) kept while scanning: past it the scanner
# stops, so a stream that never ends a line cannot grow memory.
MAX_EVENT_CHARS = 1 << 20
_GEMINI_PATH = re.compile(r"/models/([^/:]+):(?:stream)?generatecontent$", re.IGNORECASE)
_TERMINAL = {"completed", "incomplete", "failed", "cancelled"}
_RESPONSE_TOOL_ITEMS = {"function_call", "custom_tool_call", "mcp_call"}
_ANTHROPIC_TOOL_BLOCKS = {"tool_use", "server_tool_use", "mcp_tool_use"}
_SSE_FIELDS = ("data:", "event:", "id:", "retry:", ":")


def operation(path: str) -> str | None:
    """`chat`, `completions`, `responses`, `embeddings`, `messages` or `generate_content`
    by the path (`llm_fields` falls back on the response's shape)."""
    low = path.lower().rstrip("/")
    if _GEMINI_PATH.search(low):
        return "generate_content"
    for suffix, name in (("/chat/completions", "chat"), ("/responses", "responses"),
                         ("/embeddings", "embeddings"), ("/messages", "messages"),
                         ("/completions", "completions")):
        if low.endswith(suffix):
            return name
    return None


def path_model(path: str) -> str | None:
    """Gemini names the model in the path (`/v1beta/models/gemini-2.0-flash:generateContent`)."""
    found = _GEMINI_PATH.search(path.rstrip("/"))
    return found.group(1) if found else None


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


class Fold:
    """What one LLM response said, accumulated over its events (or its one JSON body)."""

    def __init__(self) -> None:
        self.model: str | None = None
        self.finish: dict[int, str] = {}
        self.tools: dict[Any, str] = {}      # key -> name, in the order first seen
        self.ttft: float | None = None
        self.openai: dict[str, Any] = {}     # raw usage, by wire format (merged over events)
        self.anthropic: dict[str, Any] = {}
        self.gemini: dict[str, Any] = {}
        self.seen = False
        self.responses = False               # an OpenAI responses object was seen
        self.choices = False                 # OpenAI-style `choices` were seen

    # -- feeding ---------------------------------------------------------------------------
    def feed(self, data: Any, t: float | None = None) -> None:
        """One event's data (or a whole JSON body); `t`: ms since the request started."""
        if not isinstance(data, dict):
            return
        content = False
        kind = data.get("type")
        if isinstance(data.get("candidates"), list) or "usageMetadata" in data:
            content = self._gemini(data)
        elif isinstance(kind, str) and kind.startswith("response."):
            content = self._response_event(kind, data)
        elif data.get("object") == "response":
            self._response(data)
        elif kind in ("message", "message_start", "message_delta", "content_block_start",
                      "content_block_delta"):
            content = self._anthropic(kind, data)
        elif "choices" in data or "usage" in data or "data" in data:
            content = self._chat(data)
        else:
            return
        self.seen = True
        if content and t is not None and self.ttft is None:
            self.ttft = t

    def _set_model(self, model: Any) -> None:
        if self.model is None and isinstance(model, str) and model:
            self.model = model

    def _tool(self, key: Any, name: Any) -> None:
        if isinstance(name, str) and name and key not in self.tools:
            self.tools[key] = name

    def _chat(self, data: dict[str, Any]) -> bool:
        self._set_model(data.get("model"))
        usage = data.get("usage")
        if isinstance(usage, dict):
            self.openai.update(usage)
        content = False
        self.choices = self.choices or isinstance(data.get("choices"), list)
        for position, choice in enumerate(_list(data.get("choices"))):
            choice = _dict(choice)
            index = _int(choice.get("index"))
            index = position if index is None else index
            reason = choice.get("finish_reason")
            if isinstance(reason, str) and reason:
                self.finish[index] = reason.lower()
            message = choice.get("message")
            if isinstance(message, dict):  # a whole completion
                for n, call in enumerate(_list(message.get("tool_calls"))):
                    self._tool(("chat", index, n), _dict(_dict(call).get("function")).get("name"))
                self._tool(("chat-fn", index), _dict(message.get("function_call")).get("name"))
            delta = choice.get("delta")
            if isinstance(delta, dict):  # a streamed chunk
                for n, call in enumerate(_list(delta.get("tool_calls"))):
                    call = _dict(call)
                    at = _int(call.get("index"))
                    self._tool(("chat", index, n if at is None else at),
                               _dict(call.get("function")).get("name"))
                    content = True
                if delta.get("function_call"):
                    self._tool(("chat-fn", index), _dict(delta["function_call"]).get("name"))
                    content = True
                content = content or any(
                    isinstance(delta.get(k), str) and delta[k]
                    for k in ("content", "refusal", "reasoning_content", "reasoning"))
            text = choice.get("text")  # legacy completions
            content = content or (isinstance(text, str) and bool(text))
        return content

    def _response(self, response: dict[str, Any]) -> None:
        self.responses = True
        self._set_model(response.get("model"))
        usage = response.get("usage")
        if isinstance(usage, dict):
            self.openai.update(usage)
        status = response.get("status")
        if status == "incomplete":
            reason = _dict(response.get("incomplete_details")).get("reason")
            self.finish[0] = str(reason or status).lower()
        elif status in _TERMINAL:
            self.finish[0] = status
        for n, item in enumerate(_list(response.get("output"))):
            self._response_item(n, _dict(item))

    def _response_item(self, n: Any, item: dict[str, Any]) -> None:
        if item.get("type") in _RESPONSE_TOOL_ITEMS:
            self._tool(("resp", str(item.get("id") or item.get("call_id") or n)),
                       item.get("name"))

    def _response_event(self, kind: str, data: dict[str, Any]) -> bool:
        if isinstance(data.get("response"), dict):
            self._response(data["response"])
        if kind in ("response.output_item.added", "response.output_item.done"):
            item = _dict(data.get("item"))
            self._response_item(data.get("output_index"), item)
            return item.get("type") in _RESPONSE_TOOL_ITEMS
        return kind.endswith(".delta")

    def _anthropic(self, kind: str, data: dict[str, Any]) -> bool:
        if kind in ("message", "message_start"):
            message = data.get("message") if kind == "message_start" else data
            if not isinstance(message, dict):
                return False
            self._set_model(message.get("model"))
            self.anthropic.update(_dict(message.get("usage")))
            reason = message.get("stop_reason")
            if isinstance(reason, str) and reason:
                self.finish[0] = reason.lower()
            for n, block in enumerate(_list(message.get("content"))):
                block = _dict(block)
                if block.get("type") in _ANTHROPIC_TOOL_BLOCKS:
                    self._tool(("msg", n), block.get("name"))
            return False
        if kind == "message_delta":
            self.anthropic.update({k: v for k, v in _dict(data.get("usage")).items()
                                   if v is not None})
            reason = _dict(data.get("delta")).get("stop_reason")
            if isinstance(reason, str) and reason:
                self.finish[0] = reason.lower()
            return False
        if kind == "content_block_start":
            block = _dict(data.get("content_block"))
            if block.get("type") in _ANTHROPIC_TOOL_BLOCKS:
                self._tool(("msg", _int(data.get("index"))), block.get("name"))
            return False
        return True  # content_block_delta: text, tool input or thinking

    def _gemini(self, data: dict[str, Any]) -> bool:
        self._set_model(data.get("modelVersion"))
        usage = data.get("usageMetadata")
        if isinstance(usage, dict):
            self.gemini = dict(usage)  # cumulative: the last one is the total
        content = False
        for position, candidate in enumerate(_list(data.get("candidates"))):
            candidate = _dict(candidate)
            index = _int(candidate.get("index"))
            index = position if index is None else index
            reason = candidate.get("finishReason")
            if isinstance(reason, str) and reason:
                self.finish[index] = reason.lower()
            for part in _list(_dict(candidate.get("content")).get("parts")):
                part = _dict(part)
                call = part.get("functionCall")
                if isinstance(call, dict):
                    self._tool(("gem", len(self.tools)), call.get("name"))
                    content = True
                elif isinstance(part.get("text"), str) and part["text"]:
                    content = True
        return content

    # -- the tags --------------------------------------------------------------------------
    def tokens(self) -> dict[str, int]:
        """input, cached_input, output, reasoning and total tokens, normalised (see above)."""
        out: dict[str, int] = {}
        if self.anthropic:
            u = self.anthropic
            base, read, made = (_int(u.get(k)) for k in (
                "input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"))
            if base is not None:
                out["input"] = base + (read or 0) + (made or 0)
            if read is not None:
                out["cached_input"] = read
            if _int(u.get("output_tokens")) is not None:
                out["output"] = _int(u["output_tokens"])  # type: ignore[assignment]
        elif self.gemini:
            u = self.gemini
            prompt, cached, candidates, thoughts, total = (_int(u.get(k)) for k in (
                "promptTokenCount", "cachedContentTokenCount", "candidatesTokenCount",
                "thoughtsTokenCount", "totalTokenCount"))
            _put(out, "input", prompt)
            _put(out, "cached_input", cached)
            if candidates is not None or thoughts is not None:
                out["output"] = (candidates or 0) + (thoughts or 0)
            _put(out, "reasoning", thoughts)
            _put(out, "total", total)
        elif self.openai:
            u = self.openai
            _put(out, "input", _first(u, "prompt_tokens", "input_tokens"))
            _put(out, "output", _first(u, "completion_tokens", "output_tokens"))
            _put(out, "total", _int(u.get("total_tokens")))
            details_in = _dict(u.get("prompt_tokens_details")) or \
                _dict(u.get("input_tokens_details"))
            _put(out, "cached_input", _int(details_in.get("cached_tokens")))
            details_out = _dict(u.get("completion_tokens_details")) or \
                _dict(u.get("output_tokens_details"))
            _put(out, "reasoning", _int(details_out.get("reasoning_tokens")))
        if "total" not in out and "input" in out and "output" in out:
            out["total"] = out["input"] + out["output"]
        return out

    def tags(self) -> dict[str, str]:
        tags: dict[str, str] = {}
        for name, value in self.tokens().items():
            tags[f"llm.{name}_tokens"] = str(value)
        if self.finish:
            tags["llm.finish_reason"] = self.finish[min(self.finish)]
        if self.tools:
            tags["llm.tool_calls"] = ",".join(self.tools.values())
        if self.ttft is not None:
            tags["llm.ttft_ms"] = f"{self.ttft:.3f}"
        return tags


def _put(out: dict[str, int], key: str, value: int | None) -> None:
    if value is not None:
        out[key] = value


def _first(usage: Mapping[str, Any], *names: str) -> int | None:
    for name in names:
        value = _int(usage.get(name))
        if value is not None:
            return value
    return None


class SSEScanner:
    """Server-Sent Events parsed incrementally from text pieces, each event fed to a `Fold`.

    A piece's time is the time of every event it completes. Gives up (stops parsing) on an
    event over MAX_EVENT_CHARS or a non-SSE start, so it is safe on any stream.
    """

    def __init__(self, fold: Fold | None = None) -> None:
        self.fold = fold or Fold()
        self._buffer = ""
        self._data: list[str] = []
        self._started = False
        self.dead = False
        self.events = 0

    def feed(self, text: str, t: float | None = None) -> None:
        if self.dead or not text:
            return
        buffer = self._buffer + text
        if not self._started:
            head = buffer.lstrip("\ufeff \t\r\n")
            if not head:
                self._buffer = buffer
                return
            if not any(head.startswith(f) or f.startswith(head) for f in _SSE_FIELDS):
                self._stop()
                return
            if not head.startswith(_SSE_FIELDS):  # a field name cut short: wait for more
                self._buffer = buffer
                return
            self._started = True
        hold = buffer.endswith("\r")  # maybe half of a CRLF
        if hold:
            buffer = buffer[:-1]
        lines = buffer.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        self._buffer = lines.pop() + ("\r" if hold else "")
        for line in lines:
            self._line(line, t)
        if len(self._buffer) + sum(map(len, self._data)) > MAX_EVENT_CHARS:
            self._stop()

    def end(self, t: float | None = None) -> Fold:
        """The stream ended: dispatch a last event left without its blank line."""
        if not self.dead:
            if self._buffer:
                self._line(self._buffer.rstrip("\r"), t)
            self._line("", t)
            self._buffer = ""
        return self.fold

    def _stop(self) -> None:
        self.dead = True
        self._buffer, self._data = "", []

    def _line(self, line: str, t: float | None) -> None:
        if not line:
            if self._data:
                data = "\n".join(self._data)
                self._data = []
                self.events += 1
                if data.strip() != "[DONE]":
                    try:
                        self.fold.feed(orjson.loads(data), t)
                    except orjson.JSONDecodeError:
                        pass
            return
        field, _, value = line.partition(":")
        if field == "data":
            self._data.append(value[1:] if value.startswith(" ") else value)


class StreamScanner:
    """An `SSEScanner` fed raw bytes as a stream tee sees them (`tracelab.sdk.streams`)."""

    def __init__(self) -> None:
        self.sse = SSEScanner()
        self._decoder = codecs.getincrementaldecoder("utf-8")()

    def add(self, data: bytes, t: float) -> None:
        if self.sse.dead:
            return
        try:
            self.sse.feed(self._decoder.decode(data), t)
        except UnicodeDecodeError:
            self.sse.dead = True

    def fold(self) -> Fold | None:
        """The events seen; None when the stream was not SSE."""
        fold = self.sse.end()
        return None if self.sse.dead or not self.sse.events else fold


def _text_of(body: Any) -> str | None:
    if isinstance(body, str):
        return body
    if isinstance(body, dict) and body.get("$tracelab") == "truncated" \
            and body.get("encoding") == "text" and isinstance(body.get("data"), str):
        return body["data"]
    return None


def fold_response(response_body: Any, chunks: Iterable[Mapping[str, Any]] | None = None) -> Fold:
    """The response read as one JSON body, a JSON array of bodies, or SSE (from `chunks`, the
    contract's `{t, data}` pieces, when given: they time the events)."""
    fold = Fold()
    if isinstance(response_body, (bytes, bytearray, memoryview)):
        raw = bytes(response_body)
        try:
            response_body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            response_body = raw.decode("utf-8", errors="replace")
    if isinstance(response_body, dict) and "$tracelab" not in response_body:
        fold.feed(response_body)
        return fold
    if isinstance(response_body, list):
        for item in response_body:
            fold.feed(item)
        return fold
    texts = [c for c in chunks or () if isinstance(c, Mapping) and isinstance(c.get("data"), str)
             and c.get("encoding", "text") == "text"]
    scanner = SSEScanner(fold)
    if texts:
        for chunk in texts:
            t = chunk.get("t")
            scanner.feed(chunk["data"], float(t) if isinstance(t, (int, float)) else None)
    else:
        scanner.feed(_text_of(response_body) or "")
    return scanner.end()


def llm_fields(provider: str, path: str, request_body: Any, response_body: Any,
               chunks: Iterable[Mapping[str, Any]] | None = None,
               fold: Fold | None = None) -> dict[str, str]:
    """The `llm.*` tags of one LLM call (provider already known). `fold`: the events a stream
    tee scanned as they passed (all of them, not only the stored first bytes)."""
    tags = {"llm.provider": provider}
    try:
        if fold is None or not fold.seen:
            fold = fold_response(response_body, chunks)
        op = operation(path)
        if op is None and fold.seen:
            op = "generate_content" if fold.gemini else "messages" if fold.anthropic \
                else "responses" if fold.responses else "chat" if fold.choices else None
        if op:
            tags["llm.operation"] = op
        request = request_body if isinstance(request_body, dict) else {}
        model = fold.model or (request.get("model") if isinstance(request.get("model"), str)
                               else None) or path_model(path)
        if model:
            tags["llm.model"] = model
        tags.update(fold.tags())
    except Exception:  # tracing never breaks the traced program: fewer tags
        pass
    return tags
