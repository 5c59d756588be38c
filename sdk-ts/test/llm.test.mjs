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
  });

  it("reads the host as urlsplit().hostname does", () => {
    assert.equal(hostOf("user:pw@API.OpenAI.com:443"), "api.openai.com");
    assert.equal(hostOf("[::1]:8080"), "::1");
  });
});

describe("an app's HTTP calls", () => {
  let server, dir;
  before(async () => {
    server = await startHttp((req, res) => {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify(req.url.endsWith("/chat/completions")
        ? { model: "gpt-4o-mini", usage: { prompt_tokens: 3, completion_tokens: 2, total_tokens: 5 } }
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
      "llm.provider": "openai-compatible", "llm.model": "gpt-4o-mini",
      "llm.input_tokens": "3", "llm.output_tokens": "2", "llm.total_tokens": "5",
    });
    removeDir(home);
  });
});
