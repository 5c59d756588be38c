"""LLM detection: a known provider host, or an LLM-style path with an LLM-shaped request body.
A path suffix alone (`/api/surveys/42/responses`, `POST /v1/messages` without `model`) is not
an LLM call."""
from __future__ import annotations

import pytest
import requests
from conftest import LoopbackHTTP, RedisServer, read_events

from tracelab.sdk.capture import llm_provider

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(("host", "provider"), [
    ("api.openai.com", "openai"), ("API.Anthropic.com", "anthropic"),
    ("generativelanguage.googleapis.com", "google"), ("api.mistral.ai", "mistral"),
    ("api.groq.com", "groq"), ("api.cohere.com", "cohere"), ("api.cohere.ai", "cohere"),
    ("openrouter.ai", "openrouter"), ("api.together.xyz", "together"),
    ("api.deepseek.com", "deepseek"), ("my-resource.openai.azure.com", "azure-openai"),
    ("bedrock-runtime.us-east-1.amazonaws.com", "bedrock"),
    ("us-central1-aiplatform.googleapis.com", "google-vertex"),
])
def test_a_known_provider_host_is_an_llm_call_whatever_the_path(host: str, provider: str) -> None:
    assert llm_provider(host, "/v1/models", None) == provider


@pytest.mark.parametrize(("path", "body", "provider"), [
    ("/v1/chat/completions", CHAT, "openai-compatible"),
    ("/v1/completions", {"model": "m", "prompt": "Say hi"}, "openai-compatible"),
    ("/v1/embeddings", {"model": "m", "input": ["a", "b"]}, "openai-compatible"),
    ("/v1/responses", {"model": "m", "input": "hi"}, "openai-compatible"),
    ("/v1/messages", {"model": "claude", "max_tokens": 5, "messages": []}, "anthropic"),
    ("/v1/chat/completions", {"$tracelab": "truncated", "size": 90000, "encoding": "text",
                              "data": '{"model":"m","messages":[{"role":"user","content":"aaa'},
     "openai-compatible"),
])
def test_an_llm_path_with_an_llm_shaped_body_on_any_host(path: str, body: dict,
                                                         provider: str) -> None:
    assert llm_provider("127.0.0.1", path, body) == provider


@pytest.mark.parametrize(("host", "path", "body"), [
    ("127.0.0.1", "/api/surveys/42/responses", {"answers": [1, 2]}),
    ("127.0.0.1", "/v1/messages", {"messages": [{"text": "hello"}], "channel": "general"}),
    ("127.0.0.1", "/v1/messages", {"model": 3, "messages": []}),
    ("127.0.0.1", "/v1/chat/completions", None),
    ("127.0.0.1", "/v1/chat/completions", "model=gpt&messages=hi"),
    ("127.0.0.1", "/v1/models", CHAT),
    ("api.openai.com.evil.example", "/v1/models", None),
    ("openai.azure.com.example", "/x", None),
    ("api.example.com", "/v1/completions", {"$tracelab": "truncated", "size": 90000,
                                            "encoding": "text", "data": '{"answers":[1,2'}),
])
def test_not_llm_calls(host: str, path: str, body: object) -> None:
    assert llm_provider(host, path, body) is None


def test_recorded_kinds(traced: RedisServer, loopback_http: LoopbackHTTP) -> None:
    base = loopback_http.url
    requests.post(f"{base}/api/surveys/42/responses", json={"answers": [1, 2]})
    requests.post(f"{base}/v1/messages", json={"messages": [{"text": "hi"}], "channel": "c"})
    requests.post(f"{base}/v1/chat/completions", json=CHAT)
    events, _ = read_events(traced)
    kinds = {e["endpoint"]: (e["kind"], e["tags"].get("llm.provider")) for e in events}
    assert kinds == {"POST /api/surveys/42/responses": ("http", None),
                     "POST /v1/messages": ("http", None),
                     "POST /v1/chat/completions": ("llm", "openai-compatible")}
