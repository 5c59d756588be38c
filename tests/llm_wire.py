"""An LLM-shaped HTTP server on loopback: the wire formats of the providers, not their brains.

Speaks OpenAI chat completions (`POST /v1/chat/completions`), responses (`/v1/responses`),
embeddings (`/v1/embeddings`), Anthropic messages (`/v1/messages`) and Gemini
(`/v1beta/models/M:generateContent`, `:streamGenerateContent?alt=sse`), each as one JSON body
or, when asked (`"stream": true`, or Gemini's stream path), as Server-Sent Events written and
flushed one event at a time. Usage always has cached and reasoning parts (the USAGE numbers
below), OpenAI's final usage chunk only with `stream_options.include_usage` as the real API
does. A request declaring tools gets one call of each declared tool, in order; otherwise the
answer is the text ANSWER. The real `openai` and `anthropic` clients work against it
(`base_url=server.url + "/v1"` and `base_url=server.url`). Other helpers' tests may import it:

    with LLMWire() as wire:
        openai.OpenAI(base_url=wire.url + "/v1", api_key="sk-test").chat.completions.create(...)
        wire.requests  # [(method, path, parsed JSON body)]
"""
from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

ANSWER = "Your refund of 12.50 is on its way."
# The usage every answer reports, in each provider's terms. Canonically (spec/README.md "LLM
# fields"): 120 input tokens of which 100 cached, 30 output of which 10 reasoning, 150 in all.
OPENAI_CHAT_USAGE = {"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150,
                     "prompt_tokens_details": {"cached_tokens": 100, "audio_tokens": 0},
                     "completion_tokens_details": {"reasoning_tokens": 10, "audio_tokens": 0}}
OPENAI_RESPONSES_USAGE = {"input_tokens": 120, "input_tokens_details": {"cached_tokens": 100},
                          "output_tokens": 30, "output_tokens_details": {"reasoning_tokens": 10},
                          "total_tokens": 150}
EMBEDDINGS_USAGE = {"prompt_tokens": 8, "total_tokens": 8}
# Anthropic counts cached input apart: 15 + 100 read + 5 written = 120 input tokens.
ANTHROPIC_USAGE = {"input_tokens": 15, "cache_read_input_tokens": 100,
                   "cache_creation_input_tokens": 5, "output_tokens": 30}
GEMINI_USAGE = {"promptTokenCount": 120, "cachedContentTokenCount": 100,
                "candidatesTokenCount": 20, "thoughtsTokenCount": 10, "totalTokenCount": 150}
CANONICAL_USAGE = {"llm.input_tokens": "120", "llm.cached_input_tokens": "100",
                   "llm.output_tokens": "30", "llm.reasoning_tokens": "10",
                   "llm.total_tokens": "150"}


def _words(text: str) -> list[str]:
    parts = text.split(" ")
    return [p + (" " if i < len(parts) - 1 else "") for i, p in enumerate(parts)]


def _sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    payload = data if isinstance(data, str) else json.dumps(data)
    return f"{head}data: {payload}\n\n".encode()


# -- OpenAI chat completions -------------------------------------------------------------------
def chat_tools(body: dict[str, Any]) -> list[str]:
    return [t["function"]["name"] for t in body.get("tools") or []
            if isinstance(t, dict) and isinstance(t.get("function"), dict)]


def chat_body(body: dict[str, Any]) -> dict[str, Any]:
    tools = chat_tools(body)
    message: dict[str, Any] = {"role": "assistant", "content": None if tools else ANSWER,
                               "refusal": None}
    if tools:
        message["tool_calls"] = [{"id": f"call_{i}", "type": "function",
                                  "function": {"name": name, "arguments": "{}"}}
                                 for i, name in enumerate(tools)]
    return {"id": "chatcmpl-wire", "object": "chat.completion", "created": 1764000000,
            "model": f"{body['model']}-2024-07-18", "system_fingerprint": "fp_wire",
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": "tool_calls" if tools else "stop"}],
            "usage": OPENAI_CHAT_USAGE}


def chat_events(body: dict[str, Any]) -> Iterator[bytes]:
    tools = chat_tools(body)
    base = {"id": "chatcmpl-wire", "object": "chat.completion.chunk", "created": 1764000000,
            "model": f"{body['model']}-2024-07-18", "system_fingerprint": "fp_wire"}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return _sse({**base, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                          "finish_reason": finish}]})

    yield chunk({"role": "assistant", "content": ""})
    for i, name in enumerate(tools):
        yield chunk({"tool_calls": [{"index": i, "id": f"call_{i}", "type": "function",
                                     "function": {"name": name, "arguments": ""}}]})
        yield chunk({"tool_calls": [{"index": i, "function": {"arguments": "{}"}}]})
    if not tools:
        for word in _words(ANSWER):
            yield chunk({"content": word})
    yield chunk({}, "tool_calls" if tools else "stop")
    if (body.get("stream_options") or {}).get("include_usage"):
        yield _sse({**base, "choices": [], "usage": OPENAI_CHAT_USAGE})
    yield _sse("[DONE]")


# -- OpenAI responses --------------------------------------------------------------------------
def responses_tools(body: dict[str, Any]) -> list[str]:
    return [t["name"] for t in body.get("tools") or [] if isinstance(t, dict) and t.get("name")]


def responses_body(body: dict[str, Any], status: str = "completed") -> dict[str, Any]:
    tools = responses_tools(body)
    output: list[dict[str, Any]] = [{"id": "rs_1", "type": "reasoning", "summary": []}]
    if tools:
        output += [{"id": f"fc_{i}", "type": "function_call", "status": "completed",
                    "call_id": f"call_{i}", "name": name, "arguments": "{}"}
                   for i, name in enumerate(tools)]
    else:
        output.append({"id": "msg_1", "type": "message", "role": "assistant",
                       "status": "completed",
                       "content": [{"type": "output_text", "text": ANSWER, "annotations": []}]})
    return {"id": "resp_wire", "object": "response", "created_at": 1764000000,
            "status": status, "error": None, "incomplete_details": None,
            "model": f"{body['model']}-2025-04-14", "output": output,
            "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
            "usage": OPENAI_RESPONSES_USAGE if status == "completed" else None}


def responses_events(body: dict[str, Any]) -> Iterator[bytes]:
    final = responses_body(body)
    start = {**final, "status": "in_progress", "output": [], "usage": None}
    seq = iter(range(1000))
    yield _sse({"type": "response.created", "sequence_number": next(seq), "response": start},
               "response.created")
    for index, item in enumerate(final["output"]):
        added = {**item, "status": "in_progress"}
        if item["type"] == "message":
            added["content"] = []
        elif item["type"] == "function_call":
            added["arguments"] = ""
        yield _sse({"type": "response.output_item.added", "sequence_number": next(seq),
                    "output_index": index, "item": added}, "response.output_item.added")
        if item["type"] == "message":
            for word in _words(ANSWER):
                yield _sse({"type": "response.output_text.delta", "sequence_number": next(seq),
                            "item_id": item["id"], "output_index": index,
                            "content_index": 0, "delta": word}, "response.output_text.delta")
        elif item["type"] == "function_call":
            yield _sse({"type": "response.function_call_arguments.delta",
                        "sequence_number": next(seq), "item_id": item["id"],
                        "output_index": index, "delta": "{}"},
                       "response.function_call_arguments.delta")
        yield _sse({"type": "response.output_item.done", "sequence_number": next(seq),
                    "output_index": index, "item": item}, "response.output_item.done")
    yield _sse({"type": "response.completed", "sequence_number": next(seq), "response": final},
               "response.completed")


# -- OpenAI embeddings -------------------------------------------------------------------------
def embeddings_body(body: dict[str, Any]) -> dict[str, Any]:
    inputs = body.get("input")
    count = len(inputs) if isinstance(inputs, list) else 1
    return {"object": "list", "model": body["model"], "usage": EMBEDDINGS_USAGE,
            "data": [{"object": "embedding", "index": i, "embedding": [0.25, -0.5, 0.125]}
                     for i in range(count)]}


# -- Anthropic messages ------------------------------------------------------------------------
def anthropic_tools(body: dict[str, Any]) -> list[str]:
    return [t["name"] for t in body.get("tools") or [] if isinstance(t, dict) and t.get("name")]


def anthropic_body(body: dict[str, Any]) -> dict[str, Any]:
    tools = anthropic_tools(body)
    content: list[dict[str, Any]] = [{"type": "text", "text": ANSWER}]
    content += [{"type": "tool_use", "id": f"toolu_{i}", "name": name, "input": {}}
                for i, name in enumerate(tools)]
    return {"id": "msg_wire", "type": "message", "role": "assistant",
            "model": f"{body['model']}-20250219", "content": content,
            "stop_reason": "tool_use" if tools else "end_turn", "stop_sequence": None,
            "usage": ANTHROPIC_USAGE}


def anthropic_events(body: dict[str, Any]) -> Iterator[bytes]:
    final = anthropic_body(body)
    start = {**final, "content": [], "stop_reason": None,
             "usage": {**ANTHROPIC_USAGE, "output_tokens": 1}}
    yield _sse({"type": "message_start", "message": start}, "message_start")
    yield _sse({"type": "ping"}, "ping")
    for index, block in enumerate(final["content"]):
        if block["type"] == "text":
            yield _sse({"type": "content_block_start", "index": index,
                        "content_block": {"type": "text", "text": ""}}, "content_block_start")
            for word in _words(block["text"]):
                yield _sse({"type": "content_block_delta", "index": index,
                            "delta": {"type": "text_delta", "text": word}},
                           "content_block_delta")
        else:
            yield _sse({"type": "content_block_start", "index": index,
                        "content_block": {**block, "input": {}}}, "content_block_start")
            yield _sse({"type": "content_block_delta", "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": "{}"}},
                       "content_block_delta")
        yield _sse({"type": "content_block_stop", "index": index}, "content_block_stop")
    yield _sse({"type": "message_delta",
                "delta": {"stop_reason": final["stop_reason"], "stop_sequence": None},
                "usage": {"output_tokens": ANTHROPIC_USAGE["output_tokens"]}}, "message_delta")
    yield _sse({"type": "message_stop"}, "message_stop")


# -- Gemini generateContent --------------------------------------------------------------------
def gemini_tools(body: dict[str, Any]) -> list[str]:
    return [d["name"] for t in body.get("tools") or [] if isinstance(t, dict)
            for d in t.get("functionDeclarations") or [] if isinstance(d, dict)]


def gemini_bodies(body: dict[str, Any], model: str) -> list[dict[str, Any]]:
    """The streamed answers; the one-shot answer is their merge (`gemini_body`)."""
    tools = gemini_tools(body)
    parts = [[{"functionCall": {"name": name, "args": {}}}] for name in tools] or \
        [[{"text": word}] for word in _words(ANSWER)]
    out = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        candidate: dict[str, Any] = {"content": {"role": "model", "parts": part}, "index": 0}
        if last:
            candidate["finishReason"] = "STOP"
        out.append({"candidates": [candidate], "modelVersion": f"{model}-001",
                    "responseId": "gem-wire",
                    "usageMetadata": GEMINI_USAGE if last else {"promptTokenCount": 120}})
    return out


def gemini_body(body: dict[str, Any], model: str) -> dict[str, Any]:
    pieces = gemini_bodies(body, model)
    parts = [p for piece in pieces for p in piece["candidates"][0]["content"]["parts"]]
    if parts and "text" in parts[0]:
        parts = [{"text": "".join(p["text"] for p in parts)}]
    return {**pieces[-1], "candidates": [{"content": {"role": "model", "parts": parts},
                                          "finishReason": "STOP", "index": 0}]}


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def _json(self, code: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, events: Iterator[bytes]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for event in events:  # one HTTP chunk per event, flushed: a real stream
            self.wfile.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = None
        parts = urlsplit(self.path)
        path = parts.path
        self.server.requests.append(("POST", self.path, body))  # type: ignore[attr-defined]
        if not isinstance(body, dict):
            return self._json(400, {"error": {"message": "a JSON object, please"}})
        stream = bool(body.get("stream"))
        if path.endswith("/chat/completions"):
            return self._stream(chat_events(body)) if stream else self._json(200, chat_body(body))
        if path.endswith("/responses"):
            return self._stream(responses_events(body)) if stream \
                else self._json(200, responses_body(body))
        if path.endswith("/embeddings"):
            return self._json(200, embeddings_body(body))
        if path.endswith("/messages"):
            return self._stream(anthropic_events(body)) if stream \
                else self._json(200, anthropic_body(body))
        if "/models/" in path and ":" in path:
            model, _, method = path.rsplit("/", 1)[1].partition(":")
            if method == "generateContent":
                return self._json(200, gemini_body(body, model))
            if method == "streamGenerateContent":
                pieces = gemini_bodies(body, model)
                if "alt=sse" in parts.query:
                    return self._stream(_sse(p) for p in pieces)
                return self._json(200, pieces)
        return self._json(404, {"error": {"message": f"no route {path}"}})


class LLMWire:
    """The server on 127.0.0.1 (a free port) in a thread; a context manager."""

    def __init__(self) -> None:
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.server.requests = []  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def requests(self) -> list[tuple[str, str, Any]]:
        return self.server.requests  # type: ignore[attr-defined]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> LLMWire:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
