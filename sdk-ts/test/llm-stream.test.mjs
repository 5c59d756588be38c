// A streamed (SSE) LLM answer fetched by the app is read as the app reads it: the event gets the
// usage from the final event, the finish reason, tool names and llm.ttft_ms, while the app gets
// exactly the bytes the server sent. A cancelled, broken or endless stream is still recorded,
// and the caller never waits for, nor sees, anything of ours.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { removeDir, runScript, SPEC_DIR, spoolEvents, startHttp, tempDir, userProject } from "./helpers.mjs";

const load = (name) => JSON.parse(readFileSync(join(SPEC_DIR, "llm", "cases", `${name}.json`), "utf8"));
const CASES = ["openai-chat-stream-usage", "openai-chat-stream-tools", "anthropic-stream-tools", "openai-responses-stream-tools"].map(load);

/** Sends a case's pieces one by one (a pause between them), as the provider would. */
function serveCase(res, kase) {
  res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
  let i = 0;
  const next = () => {
    if (i === kase.chunks.length) return res.end();
    res.write(kase.chunks[i++].data);
    setTimeout(next, 5);
  };
  next();
}

const FIRST = CASES[0].chunks;

describe("fetch of a streamed LLM answer", () => {
  let server, dir;
  before(async () => {
    server = await startHttp((req, res) => {
      const name = new URL(req.url, "http://x").searchParams.get("case");
      if (name === "endless") {
        // content, then a keep-alive comment forever: only the caller's cancel ends it
        res.writeHead(200, { "content-type": "text/event-stream" });
        res.write(FIRST[0].data + FIRST[1].data);
        const beat = setInterval(() => res.write(": keep-alive\n\n"), 2);
        res.on("close", () => clearInterval(beat));
        return;
      }
      if (name === "stall") {
        // two events, then silence with the connection open: only flush() records it
        res.writeHead(200, { "content-type": "text/event-stream" });
        res.write(FIRST[0].data + FIRST[1].data);
        return;
      }
      if (name === "broken") {
        res.writeHead(200, { "content-type": "text/event-stream" });
        res.write(FIRST[0].data + FIRST[1].data);
        setTimeout(() => res.socket.destroy(), 20);
        return;
      }
      serveCase(res, CASES.find((c) => c.name === name));
    });
    dir = userProject(["node-fetch"]);
  });
  after(async () => {
    await server?.close();
    if (dir) removeDir(dir);
  });

  it("records the fields of the whole stream, the caller reading it untouched", async () => {
    const home = tempDir("tracelab-home-");
    const run = await runScript(dir, "stream.mjs", `
      import { init, flush } from "@tracelab/sdk";
      init({ workflowName: "ts-llm-stream" });
      const cases = ${JSON.stringify(CASES.map((c) => ({ name: c.name, path: c.path, request: c.request })))};
      const texts = {};
      for (const c of cases) {
        const response = await fetch(process.env.TEST_HTTP + c.path + "?case=" + c.name, { method: "POST",
          headers: { "content-type": "application/json" }, body: JSON.stringify(c.request) });
        if (response.url !== process.env.TEST_HTTP + c.path + "?case=" + c.name) throw new Error("url lost: " + response.url);
        if (response.headers.get("content-type") !== "text/event-stream") throw new Error("headers lost");
        let text = "";
        const decoder = new TextDecoder();
        for await (const piece of response.body) text += decoder.decode(piece, { stream: true });
        texts[c.name] = text;
      }
      console.log(JSON.stringify({ texts, flushed: await flush(5000) }));
    `, { TRACELAB_HOME: home, TEST_HTTP: server.url, TRACELAB_MAX_BODY_BYTES: "200" });
    assert.equal(run.code, 0, run.stderr);
    const { texts } = JSON.parse(run.stdout.trim().split("\n").pop());
    const events = spoolEvents(home).events.map(({ event }) => event);
    assert.equal(events.length, CASES.length);
    for (const kase of CASES) {
      assert.equal(texts[kase.name], kase.chunks.map((c) => c.data).join(""), kase.name);
      const event = events.find((e) => e.request.url.endsWith(`case=${kase.name}`));
      assert.equal(event.kind, "llm", kase.name);
      assert.equal(event.status, "ok", kase.name);
      const { "llm.ttft_ms": ttft, ...tags } = event.tags;
      const { "llm.ttft_ms": expectedTtft, ...expected } = kase.expected;
      // the body cap (200 bytes) cut the stored body, not the fields: usage is in the last event
      assert.deepEqual(tags, expected, kase.name);
      assert.equal(expectedTtft !== undefined, ttft !== undefined, kase.name);
      if (ttft !== undefined) {
        assert.match(ttft, /^\d+\.\d{3}$/);
        assert.ok(Number(ttft) > 0 && Number(ttft) <= event.latency_ms, `${ttft} within ${event.latency_ms}`);
      }
      assert.equal(event.response.body.$tracelab, "truncated", kase.name);
    }
    removeDir(home);
  });

  it("records a cancelled endless stream, a broken one and, at flush(), a stalled one, the caller seeing only its own outcome", async () => {
    const home = tempDir("tracelab-home-");
    const request = JSON.stringify(CASES[0].request);
    const run = await runScript(dir, "cancel.mjs", `
      import { init, flush } from "@tracelab/sdk";
      init({ workflowName: "ts-llm-stream" });
      const post = (name) => fetch(process.env.TEST_HTTP + "/v1/chat/completions?case=" + name, { method: "POST",
        headers: { "content-type": "application/json" }, body: ${JSON.stringify(request)} });
      const endless = await post("endless");
      const reader = endless.body.getReader();
      let seen = 0;
      while (seen < 3000) seen += (await reader.read()).value.byteLength;
      await reader.cancel();
      let failure = null;
      try {
        await (await post("broken")).text();
      } catch (err) {
        failure = err.name + ": " + err.message;
      }
      const stalled = (await post("stall")).body.getReader();
      while (!new TextDecoder().decode((await stalled.read()).value).includes("Your")) ;
      console.log(JSON.stringify({ failure, flushed: await flush(5000) }));
      process.exit(0);
    `, { TRACELAB_HOME: home, TEST_HTTP: server.url, TRACELAB_MAX_BODY_BYTES: "1000" });
    assert.equal(run.code, 0, run.stderr);
    const { failure } = JSON.parse(run.stdout.trim().split("\n").pop());
    assert.equal(failure, "TypeError: terminated");
    const events = spoolEvents(home).events.map(({ event }) => event);
    const endless = events.find((e) => e.request.url.endsWith("case=endless"));
    const broken = events.find((e) => e.request.url.endsWith("case=broken"));
    const stalled = events.find((e) => e.request.url.endsWith("case=stall"));
    assert.equal(stalled.response.body.$tracelab, "truncated");
    for (const event of [endless, broken, stalled]) {
      assert.equal(event.kind, "llm");
      assert.equal(event.tags["llm.model"], "gpt-4o-mini-2024-07-18");
      assert.match(event.tags["llm.ttft_ms"], /^\d+\.\d{3}$/);
      assert.equal(event.tags["llm.input_tokens"], undefined);
    }
    // what is kept of the endless stream is the cap, not all the caller read
    assert.equal(endless.status, "ok");
    assert.equal(endless.response.body.$tracelab, "truncated");
    assert.ok(endless.response.body.data.length <= 1000);
    assert.equal(broken.status, "error");
    removeDir(home);
  });

  it("records the fields of a stream read through node-fetch", async () => {
    const home = tempDir("tracelab-home-");
    const run = await runScript(dir, "node-fetch.mjs", `
      import { init, flush } from "@tracelab/sdk";
      import fetch from "node-fetch";
      init({ workflowName: "ts-llm-stream" });
      const cases = ${JSON.stringify(CASES.map((c) => ({ name: c.name, path: c.path, request: c.request })))};
      const texts = {};
      for (const c of cases) {
        const response = await fetch(process.env.TEST_HTTP + c.path + "?case=" + c.name, { method: "POST",
          headers: { "content-type": "application/json" }, body: JSON.stringify(c.request) });
        texts[c.name] = await response.text();
      }
      console.log(JSON.stringify({ texts, flushed: await flush(5000) }));
    `, { TRACELAB_HOME: home, TEST_HTTP: server.url });
    assert.equal(run.code, 0, run.stderr);
    const { texts } = JSON.parse(run.stdout.trim().split("\n").pop());
    const events = spoolEvents(home).events.map(({ event }) => event);
    for (const kase of CASES) {
      assert.equal(texts[kase.name], kase.chunks.map((c) => c.data).join(""), kase.name);
      const event = events.find((e) => e.request.url.endsWith(`case=${kase.name}`));
      const { "llm.ttft_ms": ttft, ...tags } = event.tags;
      const { "llm.ttft_ms": expectedTtft, ...expected } = kase.expected;
      assert.deepEqual(tags, expected, kase.name);
      assert.equal(expectedTtft !== undefined, ttft !== undefined, kase.name);
      assert.equal(event.response.body, kase.chunks.map((c) => c.data).join(""), kase.name);
    }
    removeDir(home);
  });
});
