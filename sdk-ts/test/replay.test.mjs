// Record & replay: a Node program recorded live against a real loopback server (embedded mode),
// its spool lines written as a JSONL recording, the server stopped, then the same program run
// with TRACELAB_REPLAY: answered from the recording, never touching the network.
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { assertValid, removeDir, runScript, schemaValidator, spoolEvents, startHttp, tempDir, userProject } from "./helpers.mjs";

// The program under test: its calls depend on env knobs so one recording serves every case.
const PROGRAM = `
import { init, flush } from "@tracelab/sdk";
import nodeFetch from "node-fetch";
init({ workflowName: "ts-replay", serviceName: "replayer" });
const base = process.env.TEST_HTTP;
const out = [];
async function call(name, fn) {
  try {
    const r = await fn();
    out.push({ name, status: r.status, body: await r.text(), type: r.headers.get("content-type") });
  } catch (err) {
    out.push({ name, error: err.name, message: err.message, code: err.code, cause: err.cause ? { message: err.cause.message, code: err.cause.code } : null });
  }
}
await call("items", () => fetch(base + "/items?b=2&a=1"));
await call("order", () => fetch(base + "/orders", {
  method: "POST",
  headers: { "content-type": "application/json", authorization: "Bearer " + (process.env.SECRET || "sk-live-original") },
  body: JSON.stringify({ items: [{ sku: "A1", qty: Number(process.env.QTY || 2) }], password: process.env.PASSWORD || "hunter2" }),
}));
for (let i = 0; i < Number(process.env.PINGS || 2); i++) {
  await call("ping" + i, () => fetch(base + "/ping", { method: "POST", body: "ping" }));
}
await call("node-fetch", () => nodeFetch(base + "/nf", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ n: Number(process.env.NF || 1) }) }));
await flush(2000);
console.log(JSON.stringify(out));
`;

describe("replay from a recording (TRACELAB_REPLAY)", () => {
  let server, dir, recording, recorded, validate, work;
  let pings = 0;

  before(async () => {
    server = await startHttp((req, res, body) => {
      if (req.url.startsWith("/items")) {
        res.writeHead(200, { "content-type": "application/json" });
        res.end(JSON.stringify({ items: ["x", "y"], query: req.url }));
      } else if (req.url === "/orders") {
        res.writeHead(201, { "content-type": "application/json" });
        res.end(JSON.stringify({ id: "ord_1", got: JSON.parse(body.toString()).items }));
      } else if (req.url === "/ping") {
        pings++;
        res.writeHead(200, { "content-type": "text/plain" });
        res.end(`pong ${pings}`);
      } else {
        res.writeHead(202, { "content-type": "application/json" });
        res.end(JSON.stringify({ nf: JSON.parse(body.toString()).n }));
      }
    });
    dir = userProject();
    work = tempDir("tracelab-replay-");
    validate = await schemaValidator();
    const home = join(work, "record-home");
    const run = await runScript(dir, "program.mjs", PROGRAM, { TRACELAB_HOME: home, TEST_HTTP: server.url, TRACELAB_RUN_ID: "run-original" });
    assert.equal(run.code, 0, run.stderr);
    recorded = JSON.parse(run.stdout.trim());
    const { events } = spoolEvents(home);
    recording = join(work, "recording.jsonl");
    writeFileSync(recording, events.map((e) => e.raw).join("\n") + "\n");
    await server.close();
    server = null;
  });

  after(async () => {
    await server?.close();
    if (dir) removeDir(dir);
    if (work) removeDir(work);
  });

  async function replay(name, env = {}) {
    const home = join(work, `${name}-home`);
    const report = join(work, `${name}-report.jsonl`);
    const run = await runScript(dir, `${name}.mjs`, PROGRAM, {
      TRACELAB_HOME: home, TEST_HTTP: baseOf(recording), ...env,
      TRACELAB_REPLAY: recording, TRACELAB_REPLAY_REPORT: report,
      TRACELAB_RUN_ID: `run-${name}`, TRACELAB_TAGS: JSON.stringify({ replay_of: "run-original" }),
    });
    assert.equal(run.code, 0, run.stderr);
    const reports = readFileSync(report, "utf8").trim().split("\n").map((l) => JSON.parse(l));
    return { out: JSON.parse(run.stdout.trim()), events: spoolEvents(home).events.map((e) => e.event), reports, stderr: run.stderr };
  }

  it("recorded the live answers", () => {
    assert.deepEqual(recorded.map((r) => r.status), [200, 201, 200, 200, 202]);
    assert.equal(recorded[2].body, "pong 1");
    assert.equal(recorded[3].body, "pong 2");
  });

  it("answers every call from the recording with the server gone, tagged replay=hit", async () => {
    const { out, events, reports } = await replay("same", { TEST_HTTP: baseOf(recording) });
    assert.deepEqual(out.map((r) => [r.name, r.status, r.error]), recorded.map((r) => [r.name, r.status, r.error]));
    for (let i = 0; i < out.length; i++) {
      assert.equal(out[i].type, recorded[i].type);
      if (recorded[i].type === "application/json") assert.deepEqual(JSON.parse(out[i].body), JSON.parse(recorded[i].body));
      else assert.equal(out[i].body, recorded[i].body);
    }
    assert.equal(events.length, 5);
    for (const event of events) {
      assertValid(validate, event);
      assert.equal(event.tags.replay, "hit", event.endpoint);
      assert.equal(event.tags.replay_of, "run-original");
      assert.equal(event.run_id, "run-same");
    }
    assert.equal(reports.length, 1);
    const [report] = reports;
    assert.equal(report.source, "sdk-ts");
    assert.equal(typeof report.pid, "number");
    assert.equal(report.hits.length, 5);
    assert.deepEqual(report.misses, []);
    assert.deepEqual(report.passthrough, []);
  });

  it("a changed request body is a miss naming the JSON path, as fetch's own network error", async () => {
    const { out, events, reports } = await replay("changed", { TEST_HTTP: baseOf(recording), QTY: "3", NF: "7" });
    const order = out.find((r) => r.name === "order");
    assert.equal(order.error, "TypeError");
    assert.equal(order.message, "fetch failed");
    assert.equal(order.cause.code, "ECONNREFUSED");
    assert.match(order.cause.message, /^replay miss: no recorded call matches POST 127\.0\.0\.1:\d+ \/orders; /);
    assert.match(order.cause.message, /closest recorded call: event [0-9a-f]{32} POST 127\.0\.0\.1:\d+ \/orders;/);
    assert.match(order.cause.message, /differs in \(live != recorded\): body \$\.items\[0\]\.qty: 3 != 2$/);
    const nf = out.find((r) => r.name === "node-fetch");
    assert.equal(nf.error, "FetchError");
    assert.equal(nf.code, "ECONNREFUSED");
    assert.match(nf.message, /^request to http:\/\/127\.0\.0\.1:\d+\/nf failed, reason: replay miss: .*body \$\.n: 7 != 1$/);
    assert.equal(out.find((r) => r.name === "items").status, 200);
    const missed = events.filter((e) => e.tags.replay === "miss").map((e) => e.endpoint).sort();
    assert.deepEqual(missed, ["POST /nf", "POST /orders"]);
    assert.deepEqual(reports[0].misses.map((m) => m.call.replace(/:\d+/, ":P")).sort(), ["POST 127.0.0.1:P /nf", "POST 127.0.0.1:P /orders"]);
    assert.match(reports[0].misses.find((m) => m.call.endsWith("/orders")).message, /\$\.items\[0\]\.qty/);
  });

  it("a call recorded twice is answered twice, in order, then it is a miss", async () => {
    const { out, reports } = await replay("repeat", { TEST_HTTP: baseOf(recording), PINGS: "3" });
    const pings = out.filter((r) => r.name.startsWith("ping"));
    assert.deepEqual(pings.map((r) => r.body ?? r.message), ["pong 1", "pong 2", "fetch failed"]);
    assert.match(pings[2].cause.message, /^replay miss: POST 127\.0\.0\.1:\d+ \/ping was recorded 2 times and every recorded answer is used/);
    assert.equal(reports[0].misses.length, 1);
    assert.match(reports[0].misses[0].message, /recorded 2 times/);
  });

  it("a recording with [REDACTED] matches a live call carrying another secret", async () => {
    const lines = readFileSync(recording, "utf8");
    assert.ok(!lines.includes("hunter2") && !lines.includes("sk-live-original"), "the recording holds no secret");
    assert.ok(lines.includes("[REDACTED]"));
    const { out, events } = await replay("secret", { TEST_HTTP: baseOf(recording), SECRET: "sk-live-other", PASSWORD: "s3cret!" });
    assert.equal(out.find((r) => r.name === "order").status, 201);
    const order = events.find((e) => e.endpoint === "POST /orders");
    assert.equal(order.tags.replay, "hit");
    assert.equal(order.request.body.password, "[REDACTED]");
  });
});

function recordedUrl(path) {
  const first = readFileSync(path, "utf8").split("\n").find((l) => l.includes('"url"'));
  return new URL(JSON.parse(first).request.url);
}
function baseOf(path) {
  return recordedUrl(path).origin;
}
function portOf(path) {
  return recordedUrl(path).port;
}

describe("replay: passthrough mode sends a miss live and tags it", () => {
  let server, dir, work;

  before(async () => {
    server = await startHttp((req, res) => {
      res.writeHead(200, { "content-type": "text/plain" });
      res.end(`live ${req.method} ${req.url}`);
    });
    dir = userProject();
    work = tempDir("tracelab-replay-pass-");
  });

  after(async () => {
    await server?.close();
    if (dir) removeDir(dir);
    if (work) removeDir(work);
  });

  it("passes fetch and node-fetch misses through, recorded as replay=passthrough", async () => {
    const recording = join(work, "empty.jsonl");
    writeFileSync(recording, "");
    const home = join(work, "home");
    const report = join(work, "report.jsonl");
    const run = await runScript(dir, "pass.mjs", `
      import { init, flush } from "@tracelab/sdk";
      import nodeFetch from "node-fetch";
      init({ workflowName: "ts-replay-pass" });
      const a = await (await fetch(process.env.TEST_HTTP + "/a")).text();
      const b = await (await nodeFetch(process.env.TEST_HTTP + "/b", { method: "POST", body: "x" })).text();
      await flush(2000);
      console.log(JSON.stringify([a, b]));
    `, { TRACELAB_HOME: home, TEST_HTTP: server.url, TRACELAB_REPLAY: recording, TRACELAB_REPLAY_ON_MISS: "passthrough",
      TRACELAB_REPLAY_REPORT: report });
    assert.equal(run.code, 0, run.stderr);
    assert.deepEqual(JSON.parse(run.stdout), ["live GET /a", "live POST /b"]);
    assert.equal(server.requests.length, 2);
    const events = spoolEvents(home).events.map((e) => e.event);
    assert.deepEqual(events.map((e) => [e.endpoint, e.tags.replay]).sort(), [["GET /a", "passthrough"], ["POST /b", "passthrough"]]);
    assert.equal(events.find((e) => e.endpoint === "POST /b").response.body, "live POST /b");
    const [line] = readFileSync(report, "utf8").trim().split("\n").map((l) => JSON.parse(l));
    assert.deepEqual(line.passthrough.map((c) => c.replace(/:\d+/, ":P")).sort(), ["GET 127.0.0.1:P /a", "POST 127.0.0.1:P /b"]);
    assert.deepEqual(line.hits, []);
  });
});

describe("replay: a streamed recording (response.chunks)", () => {
  let dir, work;

  before(() => {
    dir = userProject();
    work = tempDir("tracelab-replay-stream-");
  });

  after(() => {
    if (dir) removeDir(dir);
    if (work) removeDir(work);
  });

  function streamEvent(id, path, stream) {
    return {
      event_id: id, schema: 1, workflow: "w", run_id: "run-stream", service: "s", source: "sdk-py", kind: "http",
      target: "sse.example.com", endpoint: `GET ${path}`, started_at: 1764500000000000000 + Number(id.slice(-1)),
      latency_ms: 40, status: "ok", status_code: 200, error: null, tags: {}, span_id: null, parent_id: null,
      request: { method: "GET", url: `https://sse.example.com${path}`, headers: {}, body: null },
      response: {
        status_code: 200, headers: { "content-type": "text/event-stream", "content-length": "999" }, body: null,
        chunks: [{ t: 5, data: "data: one\n\n" }, { t: 10, data: "data: two\n\n", encoding: "text" },
          { t: 20, data: Buffer.from("data: three\n\n").toString("base64"), encoding: "base64" }],
        stream,
      },
    };
  }

  it("yields the recorded chunks one by one (fetch and node-fetch), fails where the recording failed; an aborted fetch uses no answer", async () => {
    const recording = join(work, "stream.jsonl");
    writeFileSync(recording, [
      streamEvent("e0000000000000000000000000000001", "/events", { complete: true, error: null, size: 35, truncated: false }),
      streamEvent("e0000000000000000000000000000002", "/broken", { complete: false, error: { type: "ConnectionResetError", message: "peer reset" }, size: 35, truncated: false }),
      streamEvent("e0000000000000000000000000000003", "/nf", { complete: true, error: null, size: 35, truncated: false }),
    ].map((e) => JSON.stringify(e)).join("\n") + "\n");
    const home = join(work, "home");
    const run = await runScript(dir, "stream.mjs", `
      import { init, shutdown } from "@tracelab/sdk";
      import nodeFetch from "node-fetch";
      init({ workflowName: "ts-replay-stream" });
      const decoder = new TextDecoder();
      async function reads(path) {
        const response = await fetch("https://sse.example.com" + path);
        const reader = response.body.getReader();
        const got = [];
        try {
          for (;;) {
            const { done, value } = await reader.read();
            if (done) break;
            got.push(decoder.decode(value));
          }
        } catch (err) {
          got.push("error: " + err.message + " / " + err.cause?.message);
        }
        return { type: response.headers.get("content-type"), length: response.headers.get("content-length"), got };
      }
      const aborted = new AbortController();
      aborted.abort();
      const abortedName = await fetch("https://sse.example.com/events", { signal: aborted.signal }).then(() => "answered", (err) => err.name);
      const out = { aborted: abortedName, events: await reads("/events"), broken: await reads("/broken") };
      const nf = await nodeFetch("https://sse.example.com/nf");
      out.nf = [];
      for await (const chunk of nf.body) out.nf.push(chunk.toString());
      await shutdown();
      out.afterShutdown = await fetch("https://sse.example.com/events").then(() => "answered", (err) => err.cause?.message);
      console.log(JSON.stringify(out));
    `, { TRACELAB_HOME: home, TRACELAB_REPLAY: recording, TRACELAB_REPLAY_SPEED: "1" });
    assert.equal(run.code, 0, run.stderr);
    const out = JSON.parse(run.stdout);
    assert.equal(out.aborted, "AbortError", "an aborted fetch rejects as fetch does, using no recorded answer");
    assert.deepEqual(out.events, { type: "text/event-stream", length: null, got: ["data: one\n\n", "data: two\n\n", "data: three\n\n"] });
    assert.equal(out.broken.got.length, 4);
    assert.match(out.broken.got[3], /^error: terminated \/ ConnectionResetError: peer reset \(as recorded\)$/);
    assert.equal(out.nf.join(""), "data: one\n\ndata: two\n\ndata: three\n\n");
    assert.match(out.afterShutdown, /^replay miss: GET sse\.example\.com \/events was recorded once and every recorded answer is used/,
      "after shutdown() a replay still answers (here: a miss), never a live call");
    const events = spoolEvents(home).events.map((e) => e.event);
    assert.equal(events.length, 3);
    const validate = await schemaValidator();
    for (const event of events) {
      assertValid(validate, event);
      assert.equal(event.tags.replay, "hit");
      assert.equal(event.response.chunks.length, 3);
    }
  });
});

describe("replay: recorded answers the Fetch API would refuse", () => {
  let dir, work;

  before(() => {
    dir = userProject();
    work = tempDir("tracelab-replay-odd-");
  });

  after(() => {
    if (dir) removeDir(dir);
    if (work) removeDir(work);
  });

  it("drops a header that is not a byte string and answers HEAD without a body (fetch and node-fetch)", async () => {
    const event = (id, method, headers, body) => ({
      event_id: id, kind: "http", target: "odd.example.com", endpoint: `${method} /x`, status: "ok", status_code: 200,
      latency_ms: 1, started_at: 1764500000000000000, error: null, tags: {},
      request: { method, url: "https://odd.example.com/x", headers: {}, body: null },
      response: { status_code: 200, headers, body },
    });
    const recording = join(work, "odd.jsonl");
    writeFileSync(recording, [
      event("a1", "GET", { "content-type": "text/plain", "x-note": "a\u2192b" }, "hello"),
      event("a2", "HEAD", { "content-type": "text/plain" }, "not sent on HEAD"),
      { ...event("a3", "HEAD", { "content-type": "text/plain" }, "not sent on HEAD"), endpoint: "HEAD /y",
        request: { method: "HEAD", url: "https://odd.example.com/y", headers: {}, body: null } },
      { ...event("a4", "GET", { "content-type": "text/plain" }, "after head"), endpoint: "GET /y",
        request: { method: "GET", url: "https://odd.example.com/y", headers: {}, body: null } },
    ].map((e) => JSON.stringify(e)).join("\n"));
    const run = await runScript(dir, "odd.mjs", `
      import { init } from "@tracelab/sdk";
      import nodeFetch from "node-fetch";
      init({ workflowName: "ts-replay-odd" });
      const get = await fetch("https://odd.example.com/x");
      const head = await fetch("https://odd.example.com/x", { method: "HEAD" });
      const nfHead = await nodeFetch("https://odd.example.com/y", { method: "HEAD" });
      const nfAfter = await nodeFetch("https://odd.example.com/y").then((r) => r.text());
      console.log(JSON.stringify({ get: [get.status, await get.text(), get.headers.get("x-note"), get.url],
        head: [head.status, await head.text()], nf: [nfHead.status, await nfHead.text(), nfAfter] }));
    `, { TRACELAB_HOME: join(work, "home"), TRACELAB_REPLAY: recording });
    assert.equal(run.code, 0, run.stderr);
    assert.deepEqual(JSON.parse(run.stdout), { get: [200, "hello", null, "https://odd.example.com/x"], head: [200, ""], nf: [200, "", "after head"] });
  });
});

describe("replay: @sendgrid/mail", () => {
  let sendgrid, dir, work;
  const MAIL = `
    import sgMail from "@sendgrid/mail";
    import { init, flush } from "@tracelab/sdk";
    init({ workflowName: "ts-replay-mail" });
    sgMail.setApiKey("SG.PLANTED_SENDGRID_KEY");
    sgMail.client.setDefaultRequest("baseUrl", process.env.SENDGRID_URL);
    const out = {};
    try {
      const [response, body] = await sgMail.send({ to: "alice@example.com", from: "bot@example.com", subject: process.env.SUBJECT || "Your report", text: "Hello" });
      out.sent = { status: response.statusCode, id: response.headers["x-message-id"], body };
    } catch (err) {
      out.sent = { name: err.name, code: err.code, message: err.message };
    }
    try {
      await sgMail.send({ to: "e@example.com", from: "nobody@example.com", subject: "reject me", text: "x" });
    } catch (err) {
      out.rejected = { name: err.name, code: err.code, body: err.response?.body };
    }
    await flush(2000);
    console.log(JSON.stringify(out));
  `;

  before(async () => {
    sendgrid = await startHttp((req, res, body) => {
      const mail = JSON.parse(body.toString() || "{}");
      if (mail.subject === "reject me") {
        res.writeHead(400, { "content-type": "application/json" });
        return res.end(JSON.stringify({ errors: [{ message: "unverified sender", field: "from" }] }));
      }
      res.writeHead(202, { "x-message-id": "msg-1" });
      res.end();
    });
    dir = userProject();
    work = tempDir("tracelab-replay-mail-");
  });

  after(async () => {
    await sendgrid?.close();
    if (dir) removeDir(dir);
    if (work) removeDir(work);
  });

  it("answers sends from the recording (202 and the 4xx ResponseError), nothing sent; a changed subject is a refused connection", async () => {
    const recordHome = join(work, "record");
    const recorded = await runScript(dir, "mail-record.mjs", MAIL, { TRACELAB_HOME: recordHome, SENDGRID_URL: sendgrid.url });
    assert.equal(recorded.code, 0, recorded.stderr);
    const live = JSON.parse(recorded.stdout);
    assert.deepEqual(live.sent, { status: 202, id: "msg-1", body: "" });
    assert.equal(live.rejected.code, 400);
    const recording = join(work, "mail.jsonl");
    writeFileSync(recording, spoolEvents(recordHome).events.map((e) => e.raw).join("\n") + "\n");
    const sentLive = sendgrid.requests.length;

    const home = join(work, "replay");
    const replayed = await runScript(dir, "mail-replay.mjs", MAIL, { TRACELAB_HOME: home, SENDGRID_URL: sendgrid.url, TRACELAB_REPLAY: recording });
    assert.equal(replayed.code, 0, replayed.stderr);
    assert.deepEqual(JSON.parse(replayed.stdout), live);
    assert.equal(sendgrid.requests.length, sentLive, "nothing was sent");
    const events = spoolEvents(home).events.map((e) => e.event);
    assert.deepEqual(events.map((e) => [e.kind, e.tags.replay, e.status_code]), [["email", "hit", 202], ["email", "hit", 400]]);

    const missHome = join(work, "miss");
    const missed = await runScript(dir, "mail-miss.mjs", MAIL, { TRACELAB_HOME: missHome, SENDGRID_URL: sendgrid.url, TRACELAB_REPLAY: recording, SUBJECT: "Your NEW report" });
    assert.equal(missed.code, 0, missed.stderr);
    const out = JSON.parse(missed.stdout);
    assert.equal(out.sent.name, "AxiosError");
    assert.equal(out.sent.code, "ECONNREFUSED");
    assert.match(out.sent.message, /^replay miss: no recorded call matches sendgrid mail\.send; .*subject: 'Your NEW report' != 'Your report'/);
    assert.equal(out.rejected.code, 400);
    assert.equal(sendgrid.requests.length, sentLive, "nothing was sent");
    assert.equal(spoolEvents(missHome).events.find((e) => e.event.tags.replay === "miss").event.error.type, "AxiosError");
  });
});
