"""An LLM call read as a conversation: who said what, which tools were called, the completion.

A recorded LLM event holds the provider's wire format: the request body (the messages sent)
and the response body, or for a streamed answer its Server-Sent Events as stored (`body` text
and `chunks`). People want to read the exchange, not the JSON (as in Langfuse or Phoenix), so
`conversation(event)` rebuilds it, the same for the notebook's payload panel and the web UI
(through `GET /api/events/{id}/conversation`):

- `messages`: the request's conversation in order, each with a role `system`, `user`,
  `assistant` or `tool` (OpenAI's `developer` reads as `system`), its text, the tool calls an
  assistant turn made (name, arguments parsed from JSON when they are JSON) and, for `tool`
  messages, the call they answer (`tool_call_id`, and the tool's name looked up from it);
- `completion`: the assistant message the response carried, a stream's text and tool-call
  deltas reassembled, with `finish_reason`.

Formats: OpenAI chat completions (and legacy completions), OpenAI responses, Anthropic messages
(content blocks, `tool_use` / `tool_result`, thinking), Gemini `generateContent` (also
`streamGenerateContent` as SSE or a JSON array). Anything else (embeddings, an unknown API, a
request body cut by the cap so it is no longer JSON) gives None: the faces then show the raw
JSON. Events from OpenTelemetry spans (`source: otlp`) carry OpenAI-chat-shaped bodies built
from the span's messages (`tracelab/otlp/mapping.py`) and are read as such. Never raises on
hostile input: a malformed part is skipped.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson

from tracelab.sdk.llm import SSEScanner, operation

ROLES = ("system", "user", "assistant", "tool")
_ROLE_ALIASES = {"developer": "system", "function": "tool", "model": "assistant",
                 "human": "user", "ai": "assistant"}
# Format names, by the `llm.operation` tag (tracelab/sdk/llm.py) they come from.
FORMATS = {"chat": "openai.chat", "completions": "openai.completions",
           "responses": "openai.responses", "messages": "anthropic.messages",
           "generate_content": "gemini.generate_content"}


@dataclass
class ToolCall:
    """One call of a tool the model asked for; `arguments` parsed when they are JSON."""
    name: str | None = None
    arguments: Any = None
    id: str | None = None


@dataclass
class Message:
    """One turn. `content` is the text (non-text parts as `[image]`-style placeholders);
    `tool_call_id` / `name` on a `tool` message say which call it answers."""
    role: str
    content: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_call_id: str | None = None
    name: str | None = None
    reasoning: str | None = None
    is_error: bool = False


@dataclass
class Conversation:
    """The exchange of one LLM call (`format`: `openai.chat`, `openai.responses`,
    `anthropic.messages`, `gemini.generate_content`, `openai.completions`)."""
    format: str
    provider: str | None = None
    model: str | None = None
    messages: list[Message] = field(default_factory=list)
    completion: Message | None = None
    finish_reason: str | None = None
    streamed: bool = False
    truncated: bool = False
    tools: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# -- helpers ------------------------------------------------------------------------------------

def _d(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _l(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _s(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _get(obj: Mapping[str, Any], *names: str) -> Any:
    """The first present of several spellings (Gemini's REST camelCase or snake_case)."""
    for name in names:
        if name in obj:
            return obj[name]
    return None


def _role(value: Any, default: str = "user") -> str:
    role = _s(value) or default
    role = _ROLE_ALIASES.get(role, role)
    return role if role in ROLES else default


def _args(value: Any) -> Any:
    """Tool arguments: JSON text parsed (OpenAI sends a string), anything else as it is."""
    if isinstance(value, str):
        try:
            return orjson.loads(value) if value.strip() else {}
        except orjson.JSONDecodeError:
            return value
    return value


def _join(texts: Iterable[str | None], sep: str = "\n") -> str | None:
    kept = [t for t in texts if t]
    return sep.join(kept) if kept else None


def _placeholder(kind: Any) -> str:
    return f"[{kind if isinstance(kind, str) and kind else 'part'}]"


def _parts_text(content: Any) -> str | None:
    """Text of a content value: a string, or a list of typed parts (OpenAI/Anthropic style)."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        content = [content]
    texts: list[str | None] = []
    for part in _l(content):
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, dict):
            text = part.get("text")
            if isinstance(text, dict):  # chat `{type: text, text: {value}}` variants
                text = text.get("value")
            if isinstance(text, str):
                texts.append(text)
            elif isinstance(part.get("refusal"), str):
                texts.append(part["refusal"])
            else:
                texts.append(_placeholder(part.get("type")))
    return _join(texts)


# -- streams ------------------------------------------------------------------------------------

class _Collect:
    """Takes the JSON events an `SSEScanner` parses, in order (it calls `feed`)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def feed(self, data: Any, t: float | None = None) -> None:
        if isinstance(data, dict):
            self.events.append(data)


def _text_of(body: Any) -> str | None:
    if isinstance(body, str):
        return body
    if isinstance(body, dict) and body.get("$tracelab") == "truncated" \
            and body.get("encoding", "text") == "text" and isinstance(body.get("data"), str):
        return body["data"]
    return None


def response_events(body: Any, chunks: Any = None) -> tuple[list[dict[str, Any]], bool]:
    """The response as a list of JSON objects and whether it was streamed: one JSON body, a
    JSON array (Gemini's stream without SSE), or the SSE events of the stored chunks/body."""
    if isinstance(body, (bytes, bytearray)):
        try:
            body = orjson.loads(body)
        except orjson.JSONDecodeError:
            body = bytes(body).decode("utf-8", errors="replace")
    if isinstance(body, dict) and "$tracelab" not in body:
        return [body], False
    if isinstance(body, list):
        return [item for item in body if isinstance(item, dict)], True
    text = _text_of(body)
    if isinstance(text, str) and text.lstrip().startswith(("{", "[")):
        try:
            parsed = orjson.loads(text)
        except orjson.JSONDecodeError:
            parsed = None
        if parsed is not None:
            return response_events(parsed)
    collect = _Collect()
    scanner = SSEScanner(collect)  # type: ignore[arg-type]  # any object with `feed`
    pieces = [c["data"] for c in _l(chunks) if isinstance(c, dict)
              and isinstance(c.get("data"), str) and c.get("encoding", "text") == "text"]
    for piece in pieces or [text or ""]:
        scanner.feed(piece)
    scanner.end()
    return collect.events, bool(collect.events)


# -- OpenAI chat completions ------------------------------------------------------------------

def _chat_tool_calls(calls: Any) -> list[ToolCall]:
    out = []
    for call in _l(calls):
        call = _d(call)
        fn = _d(call.get("function"))
        if fn:
            out.append(ToolCall(_s(fn.get("name")), _args(fn.get("arguments")),
                                _s(call.get("id")) or None))
        elif call.get("type") == "custom" and isinstance(call.get("custom"), dict):
            out.append(ToolCall(_s(call["custom"].get("name")), call["custom"].get("input"),
                                _s(call.get("id"))))
    return out


def _chat_message(msg: dict[str, Any], default_role: str = "user") -> Message:
    role = _role(msg.get("role"), default_role)
    message = Message(role=role, content=_parts_text(msg.get("content")),
                      tool_calls=_chat_tool_calls(msg.get("tool_calls")),
                      tool_call_id=_s(msg.get("tool_call_id")), name=_s(msg.get("name")),
                      reasoning=_s(msg.get("reasoning_content")) or _s(msg.get("reasoning")))
    legacy = _d(msg.get("function_call"))
    if legacy:
        message.tool_calls.append(ToolCall(_s(legacy.get("name")),
                                           _args(legacy.get("arguments"))))
    if message.content is None and _s(msg.get("refusal")):
        message.content = msg["refusal"]
    return message


def _chat(request: dict[str, Any], events: list[dict[str, Any]], conv: Conversation) -> None:
    conv.messages = [_chat_message(m) for m in _l(request.get("messages")) if isinstance(m, dict)]
    conv.tools = [n for t in _l(request.get("tools"))
                  if (n := _s(_d(_d(t).get("function")).get("name")) or _s(_d(t).get("name")))]
    if not events:
        return
    if not conv.streamed:
        choice = _d(next(iter(_l(events[0].get("choices"))), None))
        conv.model = _s(events[0].get("model"))
        if choice:
            conv.completion = _chat_message(_d(choice.get("message")), "assistant")
            conv.finish_reason = _s(choice.get("finish_reason"))
        return
    text: list[str] = []
    reasoning: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    seen = False
    for chunk in events:
        conv.model = conv.model or _s(chunk.get("model"))
        for choice in _l(chunk.get("choices")):
            choice = _d(choice)
            if choice.get("index", 0) != 0:
                continue
            seen = True
            delta = _d(choice.get("delta"))
            if isinstance(delta.get("content"), str):
                text.append(delta["content"])
            for key in ("reasoning_content", "reasoning"):
                if isinstance(delta.get(key), str):
                    reasoning.append(delta[key])
            for part in _l(delta.get("tool_calls")):
                part = _d(part)
                index = part.get("index") if isinstance(part.get("index"), int) else len(calls)
                slot = calls.setdefault(index, {"id": None, "name": None, "arguments": []})
                fn = _d(part.get("function"))
                slot["id"] = slot["id"] or _s(part.get("id"))
                slot["name"] = slot["name"] or _s(fn.get("name"))
                if isinstance(fn.get("arguments"), str):
                    slot["arguments"].append(fn["arguments"])
            if _s(choice.get("finish_reason")):
                conv.finish_reason = choice["finish_reason"]
    if seen:
        conv.completion = Message(
            role="assistant", content="".join(text) or None,
            reasoning="".join(reasoning) or None,
            tool_calls=[ToolCall(s["name"], _args("".join(s["arguments"])), s["id"])
                        for _, s in sorted(calls.items())])


def _completions(request: dict[str, Any], events: list[dict[str, Any]],
                 conv: Conversation) -> None:
    prompt = request.get("prompt")
    prompt = "\n".join(p for p in prompt if isinstance(p, str)) if isinstance(prompt, list) \
        else _s(prompt)
    conv.messages = [Message(role="user", content=prompt)] if prompt is not None else []
    text: list[str] = []
    seen = False
    for body in events:
        conv.model = conv.model or _s(body.get("model"))
        for choice in _l(body.get("choices")):
            choice = _d(choice)
            if choice.get("index", 0) == 0 and isinstance(choice.get("text"), str):
                seen = True
                text.append(choice["text"])
                conv.finish_reason = _s(choice.get("finish_reason")) or conv.finish_reason
    if seen:
        conv.completion = Message(role="assistant", content="".join(text))


# -- OpenAI responses ---------------------------------------------------------------------------

def _summary_text(item: dict[str, Any]) -> str | None:
    return _join(_s(_d(p).get("text")) for p in _l(item.get("summary")) + _l(item.get("content")))


def _response_items(items: list[Any]) -> list[Message]:
    """Input or output items in order; consecutive function calls join one assistant turn."""
    out: list[Message] = []
    pending_reasoning: str | None = None
    for item in items:
        if isinstance(item, str):
            out.append(Message(role="user", content=item))
            continue
        item = _d(item)
        kind = item.get("type") or ("message" if "role" in item else None)
        if kind == "message":
            role = _role(item.get("role"))
            out.append(Message(role=role, content=_parts_text(item.get("content")),
                               reasoning=pending_reasoning if role == "assistant" else None))
            pending_reasoning = None
        elif kind == "reasoning":
            pending_reasoning = _join([pending_reasoning, _summary_text(item)])
        elif isinstance(kind, str) and kind.endswith("_call") and not kind.endswith("_output"):
            arguments = item.get("arguments", item.get("input", item.get("action")))
            call = ToolCall(_s(item.get("name")) or kind[:-len("_call")], _args(arguments),
                            _s(item.get("call_id")) or _s(item.get("id")))
            last = out[-1] if out else None
            if last is not None and last.role == "assistant" and (last.tool_calls or
                                                                  last.content is None):
                last.tool_calls.append(call)
            else:
                out.append(Message(role="assistant", tool_calls=[call],
                                   reasoning=pending_reasoning))
                pending_reasoning = None
        elif isinstance(kind, str) and kind.endswith("_call_output"):
            output = item.get("output")
            out.append(Message(role="tool", tool_call_id=_s(item.get("call_id")),
                               content=output if isinstance(output, str)
                               else _parts_text(output) if isinstance(output, list)
                               else None if output is None else orjson.dumps(output).decode()))
    if pending_reasoning and out and out[-1].role == "assistant" and not out[-1].reasoning:
        out[-1].reasoning = pending_reasoning
    elif pending_reasoning:
        out.append(Message(role="assistant", reasoning=pending_reasoning))
    return out


def _merge_assistant(messages: list[Message]) -> Message | None:
    """The output items as one assistant message (text joined, tool calls in order)."""
    if not messages:
        return None
    return Message(role="assistant", content=_join(m.content for m in messages),
                   reasoning=_join(m.reasoning for m in messages),
                   tool_calls=[c for m in messages for c in m.tool_calls])


def _responses(request: dict[str, Any], events: list[dict[str, Any]],
               conv: Conversation) -> None:
    messages = []
    if _s(request.get("instructions")):
        messages.append(Message(role="system", content=request["instructions"]))
    given = request.get("input")
    messages += _response_items([given] if isinstance(given, str) else _l(given))
    conv.messages = messages
    conv.tools = [n for t in _l(request.get("tools")) if (n := _s(_d(t).get("name")))]
    final: dict[str, Any] | None = None
    done: dict[int, dict[str, Any]] = {}
    text: dict[int, list[str]] = {}
    added: dict[int, dict[str, Any]] = {}
    arguments: dict[int, list[str]] = {}
    for event in events:
        kind = event.get("type")
        if event.get("object") == "response" or (
                isinstance(kind, str) and kind.startswith("response.")
                and isinstance(event.get("response"), dict)):
            response = event if event.get("object") == "response" else event["response"]
            conv.model = _s(response.get("model")) or conv.model
            if response.get("output"):
                final = response
            status = _s(response.get("status"))
            reason = _s(_d(response.get("incomplete_details")).get("reason"))
            conv.finish_reason = reason or (status if status and status != "in_progress"
                                            else conv.finish_reason)
        index = event.get("output_index")
        if not isinstance(index, int):
            continue
        if kind == "response.output_item.added":
            added[index] = _d(event.get("item"))
        elif kind == "response.output_item.done":
            done[index] = _d(event.get("item"))
        elif kind == "response.output_text.delta" and isinstance(event.get("delta"), str):
            text.setdefault(index, []).append(event["delta"])
        elif kind == "response.function_call_arguments.delta" \
                and isinstance(event.get("delta"), str):
            arguments.setdefault(index, []).append(event["delta"])
    if final is not None:
        items = _l(final.get("output"))
    else:  # a stream cut before its end: the finished items, else the deltas
        items = []
        for index in sorted(set(done) | set(added) | set(text) | set(arguments)):
            if index in done:
                items.append(done[index])
                continue
            item = dict(added.get(index) or {"type": "message", "role": "assistant"})
            if index in text:
                item["content"] = [{"type": "output_text", "text": "".join(text[index])}]
            if index in arguments:
                item["arguments"] = "".join(arguments[index])
            items.append(item)
    if items:
        conv.completion = _merge_assistant(_response_items(items))


# -- Anthropic messages ---------------------------------------------------------------------

def _anthropic_blocks(role: str, content: Any) -> list[Message]:
    """One message's blocks: text and tool_use make the turn; each tool_result its own
    `tool` message (Anthropic sends results inside a user turn)."""
    if isinstance(content, str):
        return [Message(role=role, content=content)]
    turn = Message(role=role)
    texts: list[str | None] = []
    thinking: list[str | None] = []
    results: list[Message] = []
    for block in _l(content):
        block = _d(block)
        kind = block.get("type")
        if kind == "text":
            texts.append(_s(block.get("text")))
        elif kind in ("thinking", "redacted_thinking"):
            thinking.append(_s(block.get("thinking")) or "[redacted thinking]")
        elif isinstance(kind, str) and kind.endswith("tool_use"):
            turn.tool_calls.append(ToolCall(_s(block.get("name")), block.get("input"),
                                            _s(block.get("id"))))
        elif isinstance(kind, str) and kind.endswith("tool_result"):
            results.append(Message(role="tool", tool_call_id=_s(block.get("tool_use_id")),
                                   content=_parts_text(block.get("content")),
                                   is_error=block.get("is_error") is True))
        elif kind:
            texts.append(_placeholder(kind))
    turn.content, turn.reasoning = _join(texts), _join(thinking)
    keep = turn.content is not None or turn.tool_calls or turn.reasoning or not results
    return results + ([turn] if keep else [])


def _anthropic(request: dict[str, Any], events: list[dict[str, Any]],
               conv: Conversation) -> None:
    messages = []
    system = _parts_text(request.get("system"))
    if system is not None:
        messages.append(Message(role="system", content=system))
    for msg in _l(request.get("messages")):
        msg = _d(msg)
        messages += _anthropic_blocks(_role(msg.get("role")), msg.get("content"))
    conv.messages = messages
    conv.tools = [n for t in _l(request.get("tools")) if (n := _s(_d(t).get("name")))]
    blocks: dict[int, dict[str, Any]] = {}
    partial: dict[int, list[str]] = {}
    seen = False
    for event in events:
        kind = event.get("type")
        if kind == "message":
            seen = True
            conv.model = _s(event.get("model"))
            conv.finish_reason = _s(event.get("stop_reason"))
            blocks = dict(enumerate(b for b in _l(event.get("content")) if isinstance(b, dict)))
        elif kind == "message_start":
            seen = True
            conv.model = _s(_d(event.get("message")).get("model"))
        elif kind == "content_block_start" and isinstance(event.get("index"), int):
            blocks[event["index"]] = dict(_d(event.get("content_block")))
        elif kind == "content_block_delta" and isinstance(event.get("index"), int):
            block = blocks.setdefault(event["index"], {"type": "text", "text": ""})
            delta = _d(event.get("delta"))
            for key in ("text", "thinking"):
                if isinstance(delta.get(key), str):
                    block[key] = (_s(block.get(key)) or "") + delta[key]
            if isinstance(delta.get("partial_json"), str):
                partial.setdefault(event["index"], []).append(delta["partial_json"])
        elif kind == "message_delta":
            conv.finish_reason = _s(_d(event.get("delta")).get("stop_reason")) \
                or conv.finish_reason
    for index, pieces in partial.items():
        if "".join(pieces).strip():
            blocks[index]["input"] = _args("".join(pieces))
    if seen:
        turns = _anthropic_blocks("assistant", [blocks[i] for i in sorted(blocks)])
        conv.completion = turns[-1] if turns else Message(role="assistant")


# -- Gemini generateContent ---------------------------------------------------------------------

def _gemini_content(content: Any, default_role: str) -> list[Message]:
    content = _d(content)
    role = _role(content.get("role"), default_role)
    turn = Message(role=role)
    texts: list[str | None] = []
    thoughts: list[str | None] = []
    results: list[Message] = []
    for part in _l(content.get("parts")):
        part = _d(part)
        call = _d(_get(part, "functionCall", "function_call"))
        answer = _d(_get(part, "functionResponse", "function_response"))
        if isinstance(part.get("text"), str):
            (thoughts if part.get("thought") is True else texts).append(part["text"])
        elif call:
            turn.tool_calls.append(ToolCall(_s(call.get("name")), call.get("args"),
                                            _s(call.get("id"))))
        elif answer:
            response = answer.get("response")
            results.append(Message(role="tool", name=_s(answer.get("name")),
                                   tool_call_id=_s(answer.get("id")),
                                   content=orjson.dumps(response).decode()
                                   if response is not None else None))
        elif part:
            texts.append(_placeholder(next(iter(part))))
    # a stream splits one text over many parts: Gemini's own SDKs join them as they are
    turn.content, turn.reasoning = _join(texts, ""), _join(thoughts, "")
    if role == "tool" or (results and turn.content is None and not turn.tool_calls):
        return results or [turn]
    return [turn, *results]


def _gemini(request: dict[str, Any], events: list[dict[str, Any]], conv: Conversation) -> None:
    messages = []
    system = _get(request, "systemInstruction", "system_instruction")
    if system is not None:
        text = _join(_s(_d(p).get("text")) for p in _l(_d(system).get("parts")))
        messages.append(Message(role="system", content=text))
    for content in _l(request.get("contents")):
        messages += _gemini_content(content, "user")
    conv.messages = messages
    conv.tools = [n for t in _l(request.get("tools"))
                  for d in _l(_get(_d(t), "functionDeclarations", "function_declarations"))
                  if (n := _s(_d(d).get("name")))]
    parts: list[Any] = []
    seen = False
    for body in events:
        conv.model = _s(_get(body, "modelVersion", "model_version")) or conv.model
        for candidate in _l(body.get("candidates")):
            candidate = _d(candidate)
            if candidate.get("index", 0) != 0:
                continue
            seen = True
            parts += _l(_d(candidate.get("content")).get("parts"))
            reason = _s(_get(candidate, "finishReason", "finish_reason"))
            conv.finish_reason = reason.lower() if reason else conv.finish_reason
    if seen:
        turns = _gemini_content({"role": "model", "parts": parts}, "assistant")
        conv.completion = turns[0] if turns else None


_READERS = {"openai.chat": _chat, "openai.completions": _completions,
            "openai.responses": _responses, "anthropic.messages": _anthropic,
            "gemini.generate_content": _gemini}


# -- entry points ---------------------------------------------------------------------------

def _format(op: str | None, request: dict[str, Any], provider: str | None) -> str | None:
    if op in FORMATS:
        return FORMATS[op]
    if op:  # embeddings and the like: not a conversation
        return None
    if "contents" in request:
        return FORMATS["generate_content"]
    if "messages" in request:
        return FORMATS["messages"] if provider == "anthropic" or "system" in request \
            else FORMATS["chat"]
    if "input" in request and "model" in request:
        return FORMATS["responses"]
    return None


def _name_tool_results(conv: Conversation) -> None:
    """A `tool` message learns its tool's name from the call it answers (OpenAI and
    Anthropic only give the call id)."""
    names = {c.id: c.name for m in conv.messages for c in m.tool_calls if c.id}
    for message in conv.messages:
        if message.role == "tool" and message.name is None and message.tool_call_id:
            message.name = names.get(message.tool_call_id)


def build(path: str, request_body: Any, response_body: Any = None, chunks: Any = None, *,
          op: str | None = None, provider: str | None = None,
          stream_cut: bool = False) -> Conversation | None:
    """The conversation of one LLM HTTP call from its path and bodies as stored; None when the
    format is not one of ours or the request body is not JSON (cut by the cap)."""
    request = request_body
    if isinstance(request, (str, bytes)):
        try:
            request = orjson.loads(request)
        except orjson.JSONDecodeError:
            return None
    if not isinstance(request, dict) or "$tracelab" in request:
        return None
    fmt = _format(op or operation(path), request, provider)
    if fmt is None:
        return None
    events, streamed = response_events(response_body, chunks)
    truncated = stream_cut or (isinstance(response_body, dict)
                               and response_body.get("$tracelab") == "truncated")
    conv = Conversation(format=fmt, provider=provider, streamed=streamed, truncated=truncated)
    _READERS[fmt](request, events, conv)
    conv.model = conv.model or _s(request.get("model"))
    _name_tool_results(conv)
    return conv


def _tags(event: Mapping[str, Any]) -> Mapping[str, Any]:
    """An event's tags: a dict once loaded, JSON text as the store's frames keep them."""
    tags = event.get("tags")
    if isinstance(tags, (str, bytes)):
        try:
            tags = orjson.loads(tags)
        except orjson.JSONDecodeError:
            return {}
    return tags if isinstance(tags, Mapping) else {}


def is_llm_event(event: Mapping[str, Any]) -> bool:
    return event.get("kind") == "llm" or "llm.provider" in _tags(event)


def conversation(event: Mapping[str, Any]) -> Conversation | None:
    """The conversation of a recorded LLM event (the contract JSON, as `tl`/the API load it);
    None for any other event, or an LLM call that is not a conversation (embeddings)."""
    try:
        if not is_llm_event(event):
            return None
        tags = _tags(event)
        request = _d(event.get("request"))
        response = _d(event.get("response"))
        url = _s(request.get("url")) or ""
        try:
            path = urlsplit(url).path or url
        except ValueError:
            path = url
        if not path:
            endpoint = _s(event.get("endpoint")) or ""
            path = endpoint.partition(" ")[2] or endpoint
        stream = _d(response.get("stream"))
        op = _s(tags.get("llm.operation"))
        if event.get("source") == "otlp":
            # OpenTelemetry spans arrive as OpenAI-chat-shaped bodies whatever the provider
            # (tracelab/otlp/mapping.py), so their shape, not their operation, decides
            body = _d(request.get("body"))
            op = "chat" if "messages" in body else "responses" if "input" in body else None
            if op is None:
                return None
        conv = build(path, request.get("body"), response.get("body"), response.get("chunks"),
                     op=op, provider=_s(tags.get("llm.provider")),
                     stream_cut=bool(stream.get("truncated")) or stream.get("complete") is False)
        if conv is not None and _s(tags.get("llm.model")):
            conv.model = tags["llm.model"]
        return conv
    except Exception:  # hostile payloads: no conversation, the raw JSON still shows
        return None
