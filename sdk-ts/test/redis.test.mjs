// Service mode against a real redis-server: fetch GET/POST, a 5xx, a refused connection, an
// LLM-style call, node-fetch, trace() nesting (also under concurrency), redaction of planted
// secrets (absent from the raw stream bytes), flush before exit, and the schema for every event.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import {
  assertValid, freePort, removeDir, runScript, schemaValidator, startHttp, startRedis,
  startedAtText, userProject,
} from "./helpers.mjs";

const SCRIPT = `
import { init, trace, flush } from "@tracelab/sdk";
import nodeFetch from "node-fetch";
const base = process.env.TEST_HTTP;
init({ workflowName: "ts-redis", serviceName: "ts-svc", tags: { team: "qa" } });
const out = {};
const get = await fetch(base + "/items?page=2&access_token=PLANTED_QUERY_SECRET");
out.get = await get.json();
const post = await fetch(base + "/v1/charges", {
  method: "POST",
  headers: { "Content-Type": "application/json", "Authorization": "Bearer PLANTED_BEARER_SECRET",
             "X-Api-Key": "PLANTED_APIKEY_SECRET" },
  body: JSON.stringify({ amount: 5, password: "PLANTED_BODY_SECRET", max_tokens: 7 }),
});
out.post = post.status;
const five = await fetch(base + "/fail");
out.five = five.status;
await five.text();
try {
  await fetch("http://127.0.0.1:" + process.env.TEST_CLOSED_PORT + "/nothing");
} catch (err) {
  out.refused = String(err.cause?.code ?? err.message);
}
const llm = await fetch(base + "/v1/chat/completions", {
  method: "POST", headers: { "content-type": "application/json" },
  body: JSON.stringify({ model: "gpt-test", messages: [{ role: "user", content: "hi" }] }),
});
out.llm = (await llm.json()).usage.total_tokens;
out.outer = await trace("outer", async () => {
  await (await fetch(base + "/inner")).text();
  const inner = trace("inner", () => 42);
  await (await nodeFetch(base + "/nf", { method: "POST", body: "client_secret=PLANTED_FORM_SECRET&x=1",
    headers: { "Content-Type": "application/x-www-form-urlencoded" } })).text();
  return inner;
});
await Promise.all(["a", "b", "c"].map((name) => trace("concurrent-" + name, async () => {
  await new Promise((r) => setTimeout(r, 5));
  await (await fetch(base + "/c/" + name)).text();
})));
try {
  await trace("boom", async () => { throw new RangeError("planned failure"); });
} catch (err) {
  out.boom = err.message;
}
console.log(JSON.stringify(out));
// no flush(): the SDK must deliver before the process exits
`;

describe("service mode through a real redis-server", () => {
  let redis, server, dir, run, events, validate;

  before(async () => {
    redis = await startRedis();
    server = await startHttp((req, res, body) => {
      if (req.url.startsWith("/fail")) {
        res.writeHead(503, { "content-type": "text/plain" });
        return res.end("upstream down");
      }
      if (req.url.startsWith("/v1/chat/completions")) {
        res.writeHead(200, { "content-type": "application/json" });
        return res.end(JSON.stringify({ model: "gpt-test", choices: [], usage: { prompt_tokens: 3, completion_tokens: 4, total_tokens: 7 } }));
      }
      res.writeHead(200, { "content-type": "application/json", "Set-Cookie": "sid=PLANTED_COOKIE_SECRET" });
      res.end(JSON.stringify({ path: req.url.split("?")[0], items: [1, 2], refresh_token: "PLANTED_RESPONSE_SECRET", echo: body.length }));
    });
    dir = userProject();
    run = await runScript(dir, "app.mjs", SCRIPT, {
      TRACELAB_REDIS_URL: redis.url, TEST_HTTP: server.url, TEST_CLOSED_PORT: String(await freePort()),
    });
    events = (await redis.events()).map((e) => ({ ...e, ...e.event }));
    validate = await schemaValidator();
  });

  after(async () => {
    await server?.close();
    await redis?.stop();
    if (dir) removeDir(dir);
  });

  const byEndpoint = (endpoint) => events.filter((e) => e.endpoint === endpoint);

  it("leaves the app's results untouched and exits on its own", () => {
    assert.equal(run.code, 0, run.stderr);
    const out = JSON.parse(run.stdout.trim().split("\n").pop());
    assert.equal(out.post, 200);
    assert.equal(out.five, 503);
    assert.equal(out.refused, "ECONNREFUSED");
    assert.equal(out.llm, 7);
    assert.equal(out.outer, 42);
    assert.equal(out.boom, "planned failure");
    assert.deepEqual(out.get.items, [1, 2]);
    assert.equal(run.stderr, "");
  });

  it("delivers every event before exit, one stream entry each with the field `event`", () => {
    // 5 fetch calls at top level, 1 inside a span, 3 concurrent, 1 node-fetch; 6 spans
    assert.equal(events.length, 16, JSON.stringify(events.map((e) => e.endpoint)));
    for (const e of events) {
      assert.equal(e.fields.length, 2);
      assert.equal(e.fields[0], "event");
    }
  });

  it("writes the contract's common fields, started_at as an exact integer", () => {
    for (const e of events) {
      assert.equal(e.schema, 1);
      assert.equal(e.source, "sdk-ts");
      assert.equal(e.workflow, "ts-redis");
      assert.equal(e.service, "ts-svc");
      assert.equal(e.tags.team, "qa");
      assert.match(e.event_id, /^[0-9a-f]{32}$/);
      const text = startedAtText(e.raw);
      assert.ok(text, "started_at is a JSON integer");
      const ns = BigInt(text);
      const now = BigInt(Date.now()) * 1000000n;
      assert.ok(ns > now - 120n * 1000000000n && ns <= now, `started_at ${text} is epoch ns`);
      assert.equal(typeof e.latency_ms, "number");
    }
    assert.equal(new Set(events.map((e) => e.run_id)).size, 1);
  });

  it("records a GET with its query redacted and the response body as JSON", () => {
    const [e] = byEndpoint("GET /items");
    assert.equal(e.kind, "http");
    assert.equal(e.target, `127.0.0.1:${server.port}`);
    assert.equal(e.status, "ok");
    assert.equal(e.status_code, 200);
    assert.equal(e.request.method, "GET");
    assert.equal(e.request.url, `${server.url}/items?page=2&access_token=[REDACTED]`);
    assert.equal(e.response.status_code, 200);
    assert.deepEqual(e.response.body.items, [1, 2]);
    assert.equal(e.response.body.refresh_token, "[REDACTED]");
    assert.equal(e.response.headers["set-cookie"], "[REDACTED]");
    assert.equal(e.parent_id, null);
  });

  it("records a POST with secret headers and body fields redacted, names keeping their case", () => {
    const [e] = byEndpoint("POST /v1/charges");
    assert.equal(e.request.headers.Authorization, "[REDACTED]");
    assert.equal(e.request.headers["X-Api-Key"], "[REDACTED]");
    assert.equal(e.request.headers["Content-Type"], "application/json");
    assert.deepEqual(e.request.body, { amount: 5, password: "[REDACTED]", max_tokens: 7 });
  });

  it("marks a 5xx as an error with its status code and no exception", () => {
    const [e] = byEndpoint("GET /fail");
    assert.equal(e.status, "error");
    assert.equal(e.status_code, 503);
    assert.equal(e.error, null);
    assert.equal(e.response.body, "upstream down");
  });

  it("records a refused connection as an error without a response", () => {
    const [e] = byEndpoint("GET /nothing");
    assert.equal(e.status, "error");
    assert.equal(e.response, null);
    assert.equal(e.status_code, null);
    assert.equal(e.error.type, "TypeError");
    assert.match(e.error.message, /ECONNREFUSED/);
  });

  it("records an OpenAI-style call as kind llm with model and token tags", () => {
    const [e] = byEndpoint("POST /v1/chat/completions");
    assert.equal(e.kind, "llm");
    assert.equal(e.tags["llm.model"], "gpt-test");
    assert.equal(e.tags["llm.provider"], "openai-compatible");
    assert.equal(e.tags["llm.input_tokens"], "3");
    assert.equal(e.tags["llm.output_tokens"], "4");
    assert.equal(e.tags["llm.total_tokens"], "7");
  });

  it("nests fetch, node-fetch and inner spans under trace() by parent_id", () => {
    const [outer] = byEndpoint("outer");
    assert.equal(outer.kind, "function");
    assert.match(outer.span_id, /^[0-9a-f]{16}$/);
    assert.equal(outer.parent_id, null);
    assert.deepEqual(outer.response, { return: 42 });
    assert.equal(outer.target, "app");
    const [inner] = byEndpoint("inner");
    assert.equal(inner.parent_id, outer.span_id);
    assert.equal(byEndpoint("GET /inner")[0].parent_id, outer.span_id);
    const [nf] = byEndpoint("POST /nf");
    assert.equal(nf.parent_id, outer.span_id);
    assert.equal(nf.request.body, "client_secret=[REDACTED]&x=1");
    assert.equal(nf.response.status_code, 200);
    assert.ok(inner.started_at > outer.started_at);
  });

  it("keeps concurrent spans' children apart", () => {
    for (const name of ["a", "b", "c"]) {
      const [span] = byEndpoint(`concurrent-${name}`);
      const [call] = byEndpoint(`GET /c/${name}`);
      assert.equal(call.parent_id, span.span_id, name);
    }
  });

  it("records a span that threw with its error, and rethrows it", () => {
    const [e] = byEndpoint("boom");
    assert.equal(e.status, "error");
    assert.deepEqual(e.error, { type: "RangeError", message: "planned failure" });
    assert.equal(e.response, null);
  });

  it("never lets a planted secret reach the raw stream bytes", async () => {
    const raw = (await redis.rawEntries()).map(([, fields]) => Buffer.concat(fields)).join("");
    assert.ok(raw.length > 1000);
    const leaks = raw.match(/.{60}PLANTED\w*/g);
    assert.equal(leaks, null, `secrets leaked: ${leaks}`);
  });

  it("validates every event against spec/trace-event.schema.json", () => {
    assert.ok(events.length > 0);
    for (const e of events) assertValid(validate, e.event);
  });
});
