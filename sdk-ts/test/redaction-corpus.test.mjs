// The shared redaction corpus (spec/redaction/cases) through the TypeScript SDK's redaction,
// the same cases the Python SDK and the proxy run. A missing or empty corpus fails, never skips.
import assert from "node:assert/strict";
import { existsSync, readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { encodeBody, toJsonable } from "../dist/esm/payloads.js";
import { Redactor } from "../dist/esm/redaction.js";
import { findShapes, redactShapes } from "../dist/esm/shapes.js";
import { SPEC_DIR, assertValid, removeDir, runScript, schemaValidator, spoolEvents, startHttp, tempDir, userProject } from "./helpers.mjs";

const CORPUS = join(SPEC_DIR, "redaction", "cases");
const DEFAULT_CAP = 65536;
const WHATS = ["body", "cut", "headers", "text", "url", "value"];

function loadCases() {
  if (!existsSync(CORPUS)) throw new Error(`the redaction corpus ${CORPUS} is missing`);
  return readdirSync(CORPUS).filter((f) => f.endsWith(".json")).sort()
    .map((f) => ({ file: f, ...JSON.parse(readFileSync(join(CORPUS, f), "utf8")) }));
}

/** What the TypeScript SDK stores for the case's input. */
function runCase(c, redactor = new Redactor()) {
  switch (c.what) {
    case "headers": return redactor.headers(c.input);
    case "url": return redactor.url(c.input);
    case "body": return encodeBody(Buffer.from(c.input, "utf8"), c.content_type ?? null, redactor, c.max_body_bytes ?? DEFAULT_CAP);
    case "text": return redactor.text(c.input);
    case "cut": return redactor.cut(c.input);
    case "value": return toJsonable(c.input, redactor, DEFAULT_CAP);
    default: throw new Error(`unknown what ${c.what}`);
  }
}

const cases = loadCases();

describe("spec/redaction corpus", () => {
  it("is present and well formed", () => {
    assert.ok(cases.length >= 30, `the redaction corpus at ${CORPUS} is missing or nearly empty`);
    for (const c of cases) {
      assert.equal(c.name, c.file.replace(/\.json$/, ""));
      assert.ok(WHATS.includes(c.what), c.file);
      for (const key of ["input", "expected", "description"]) assert.ok(key in c, `${c.file}: ${key}`);
    }
    assert.deepEqual([...new Set(cases.map((c) => c.what))].sort(), WHATS);
  });

  for (const c of cases) {
    it(c.name, () => {
      assert.deepEqual(runCase(c), c.expected, c.description);
    });
  }

  for (const c of cases.filter((x) => x.what !== "body" && x.what !== "cut")) {
    it(`${c.name} is stable when redacted again`, () => {
      assert.deepEqual(runCase({ ...c, input: c.expected }), c.expected);
    });
  }

  it("finds no shape left in any expected output", () => {
    for (const c of cases) {
      const text = JSON.stringify(c.expected);
      assert.deepEqual(findShapes(text), [], c.name);
      assert.equal(redactShapes(text), text, c.name);
    }
  });
});

describe("secrets by shape leave no Node app", () => {
  const STRIPE = "sk_live_51FAKEtracelabExample0000000000";
  const GITHUB = "ghp_FAKEtracelabExample00000000000000000";
  let server, dir, validate;
  before(async () => {
    server = await startHttp((req, res) => {
      const text = req.url === "/big-text";
      res.writeHead(200, { "content-type": text ? "text/plain" : "application/json", "x-debug": `key=${STRIPE}` });
      if (req.url === "/big") {
        res.end(JSON.stringify({ password: "hunter2-SUPER-SECRET", key: STRIPE, pad: "y".repeat(200000) }));
      } else if (text) {
        res.end(`${"z".repeat(65500)} Bearer ${STRIPE} and more`);
      } else {
        res.end(JSON.stringify({ id: "rk_1", key: STRIPE }));
      }
    });
    dir = userProject([]);
    validate = await schemaValidator();
  });
  after(async () => {
    await server?.close();
    if (dir) removeDir(dir);
  });

  it("in response bodies, URLs, headers, over-cap bodies, trace() arguments and results", async () => {
    const home = tempDir("tracelab-home-");
    const run = await runScript(dir, "shapes.mjs", `
      import { init, traced, flush } from "@tracelab/sdk";
      init({ workflowName: "ts-shapes" });
      const base = process.env.TEST_HTTP;
      await (await fetch(base + "/key")).text();
      await (await fetch(base.replace("http://", "http://${GITHUB}@") + "/repo", { headers: { "x-note": "Bearer ${STRIPE}" } }).catch(() => null))?.text();
      await (await fetch(base + "/big")).text();
      await (await fetch(base + "/big-text")).text();
      const call = traced("call", (auth) => ({ echoed: auth, url: "https://${GITHUB}@github.com/o/r" }));
      call("Bearer ${STRIPE}");
      console.log(JSON.stringify({ flushed: await flush(5000) }));
    `, { TRACELAB_HOME: home, TEST_HTTP: server.url });
    assert.equal(run.code, 0, run.stderr);
    assert.deepEqual(JSON.parse(run.stdout), { flushed: true });
    const { events, raw } = spoolEvents(home);
    assert.ok(events.length >= 4, raw.slice(0, 500));
    const leaks = raw.match(/.{0,80}(sk_live_51|ghp_FAKE|hunter2)/g);
    assert.equal(leaks, null, `secrets leaked: ${leaks}`);
    for (const { event } of events) assertValid(validate, event);
    const key = events.find((e) => e.event.endpoint === "GET /key").event;
    assert.deepEqual(key.response.body, { id: "rk_1", key: "[REDACTED]" });
    assert.equal(key.response.headers["x-debug"], "key=[REDACTED]");
    const big = events.find((e) => e.event.endpoint === "GET /big").event;
    assert.equal(big.response.body.$tracelab, "truncated");
    assert.ok(big.response.body.data.startsWith('{"password":"[REDACTED]","key":"[REDACTED]","pad":"yyy'));
    const call = events.find((e) => e.event.endpoint === "call").event;
    assert.deepEqual(call.request.args, { args: ["Bearer [REDACTED]"] });
    const bigText = events.find((e) => e.event.endpoint === "GET /big-text").event;
    assert.match(bigText.response.body.data, /z Bearer \[REDACTED\] and more$/);
    assert.deepEqual(call.response.return, { echoed: "Bearer [REDACTED]", url: "https://[REDACTED]@github.com/o/r" });
    removeDir(home);
  });
});
