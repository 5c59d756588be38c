// LLM detection needs more than a path suffix: a known provider host, or an LLM-style path
// with an LLM-shaped request body (the Python SDK's rule, the same provider names).
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { hostOf, llmProvider } from "../dist/esm/capture.js";
import { removeDir, runScript, spoolEvents, startHttp, tempDir, userProject } from "./helpers.mjs";

describe("llmProvider", () => {
  it("knows provider hosts, whatever the path", () => {
    assert.equal(llmProvider("api.openai.com", "/v1/models", null), "openai");
    assert.equal(llmProvider("API.Anthropic.com.", "/v1/messages", null), "anthropic");
    assert.equal(llmProvider("generativelanguage.googleapis.com", "/v1beta/models/x:generateContent", null), "google");
    assert.equal(llmProvider("my-res.openai.azure.com", "/openai/deployments/d/chat/completions", null), "azure-openai");
    assert.equal(llmProvider("bedrock-runtime.us-east-1.amazonaws.com", "/model/m/invoke", null), "bedrock");
    assert.equal(llmProvider("europe-west4-aiplatform.googleapis.com", "/v1/x", null), "google-vertex");
    assert.equal(llmProvider("openai.azure.com.evil.example", "/v1/chat/completions", null), null);
    assert.equal(llmProvider("toString", "/", null), null);
  });

  it("takes a path only with an LLM-shaped body", () => {
    const chat = { model: "m", messages: [] };
    assert.equal(llmProvider("127.0.0.1", "/v1/chat/completions", chat), "openai-compatible");
    assert.equal(llmProvider("llm.internal", "/v1/messages", { model: "claude", messages: [] }), "anthropic");
    assert.equal(llmProvider("llm.internal", "/v1/embeddings", { model: "e", input: "x" }), "openai-compatible");
    assert.equal(llmProvider("x", "/v1/completions", { $tracelab: "truncated", data: '{"model":"m","prompt":"aaa' }), "openai-compatible");
    assert.equal(llmProvider("surveys.example", "/api/surveys/42/responses", { answers: [1] }), null);
    assert.equal(llmProvider("x", "/v1/messages", { text: "hello", to: "ada" }), null);
    assert.equal(llmProvider("x", "/v1/messages", { model: 3, messages: [] }), null);
    assert.equal(llmProvider("x", "/v1/chat/completions", null), null);
    assert.equal(llmProvider("127.0.0.1", "/v1beta/models/gemini-2.5-flash:generateContent", { contents: [] }), "google");
    assert.equal(llmProvider("127.0.0.1", "/v1beta/models/gemini-2.5-flash:generateContent", { text: "hi" }), null);
  });

  it("reads the host as urlsplit().hostname does", () => {
    assert.equal(hostOf("user:pw@API.OpenAI.com:443"), "api.openai.com");
    assert.equal(hostOf("[::1]:8080"), "::1");
  });
});

const GEMINI_ANSWER = {
  candidates: [{ content: { role: "model", parts: [{ functionCall: { name: "refund", args: {} } }] }, finishReason: "STOP" }],
  modelVersion: "gemini-2.5-flash-001",
  usageMetadata: { promptTokenCount: 120, cachedContentTokenCount: 100, candidatesTokenCount: 20,
    thoughtsTokenCount: 10, totalTokenCount: 150 },
};

describe("an app's HTTP calls", () => {
  let server, dir;
  before(async () => {
    server = await startHttp((req, res) => {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify(req.url.endsWith("/chat/completions")
        ? { model: "gpt-4o-mini", usage: { prompt_tokens: 3, completion_tokens: 2, total_tokens: 5 } }
        : req.url.endsWith(":generateContent") ? GEMINI_ANSWER
        : { ok: true }));
    });
    dir = userProject([]);
  });
  after(async () => {
    await server?.close();
    if (dir) removeDir(dir);
  });

  it("are kind llm only when they are LLM calls", async () => {
    const home = tempDir("tracelab-home-");
    const run = await runScript(dir, "llm.mjs", `
      import { init, flush } from "@tracelab/sdk";
      init({ workflowName: "ts-llm" });
      const post = (path, body) => fetch(process.env.TEST_HTTP + path, { method: "POST",
        headers: { "content-type": "application/json" }, body: JSON.stringify(body) }).then((r) => r.text());
      await post("/api/surveys/42/responses", { answers: [1, 2] });
      await post("/v1/messages", { to: "ada", text: "hi" });
      await post("/v1/chat/completions", { model: "gpt-4o-mini", messages: [{ role: "user", content: "hi" }] });
      await post("/v1beta/models/gemini-2.5-flash:generateContent", { contents: [{ role: "user", parts: [{ text: "hi" }] }] });
      console.log(JSON.stringify({ flushed: await flush(5000) }));
    `, { TRACELAB_HOME: home, TEST_HTTP: server.url });
    assert.equal(run.code, 0, run.stderr);
    const byEndpoint = Object.fromEntries(spoolEvents(home).events.map(({ event }) => [event.endpoint, event]));
    assert.equal(byEndpoint["POST /api/surveys/42/responses"].kind, "http");
    assert.deepEqual(byEndpoint["POST /api/surveys/42/responses"].tags, {});
    assert.equal(byEndpoint["POST /v1/messages"].kind, "http");
    const chat = byEndpoint["POST /v1/chat/completions"];
    assert.equal(chat.kind, "llm");
    assert.deepEqual(chat.tags, {
      "llm.provider": "openai-compatible", "llm.operation": "chat", "llm.model": "gpt-4o-mini",
      "llm.input_tokens": "3", "llm.output_tokens": "2", "llm.total_tokens": "5",
    });
    const gemini = byEndpoint["POST /v1beta/models/gemini-2.5-flash:generateContent"];
    assert.equal(gemini.kind, "llm");
    // the token counts come from the body as received: the stored one has them redacted
    assert.deepEqual(gemini.tags, {
      "llm.provider": "google", "llm.operation": "generate_content", "llm.model": "gemini-2.5-flash-001",
      "llm.input_tokens": "120", "llm.cached_input_tokens": "100", "llm.output_tokens": "30",
      "llm.reasoning_tokens": "10", "llm.total_tokens": "150", "llm.finish_reason": "stop",
      "llm.tool_calls": "refund",
    });
    removeDir(home);
  });
});
