// The whole-event limits: nesting (MAX_NESTING_DEPTH) and size (MAX_EVENT_BYTES), the same
// numbers as the Python contract. An event that would break either is cut to markers and
// still recorded: it validates under ajv and under Python's validate(), never lost.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { MAX_EVENT_BYTES, MAX_NESTING_DEPTH, cutToDepth, fitEvent, nestsWithin } from "../dist/esm/limits.js";
import {
  REPO_DIR, assertValid, cleanEnv, removeDir, runScript, schemaValidator, spoolEvents, startHttp, tempDir,
  userProject,
} from "./helpers.mjs";

const PYTHON = join(REPO_DIR, ".venv", "bin", "python");

function nested(levels, leaf = 1) {
  let value = leaf;
  for (let i = 0; i < levels; i++) value = i % 2 ? [value] : { d: value };
  return value;
}

function depthOf(value) {
  if (value === null || typeof value !== "object") return 0;
  let deepest = 0;
  for (const member of Array.isArray(value) ? value : Object.values(value)) deepest = Math.max(deepest, depthOf(member));
  return deepest + 1;
}

/** Python's tracelab.events: its limits, and validate() over events given as JSON lines. */
function pythonContract(lines) {
  const code = `
import json, sys
from tracelab import events
problems = [events.validate(json.loads(line)) for line in sys.stdin.read().splitlines() if line]
print(json.dumps({"depth": events.MAX_NESTING_DEPTH, "bytes": events.MAX_EVENT_BYTES, "problems": problems}))
`;
  const run = spawnSync(PYTHON, ["-c", code], { cwd: REPO_DIR, env: cleanEnv(), input: lines.join("\n"), encoding: "utf8", maxBuffer: 64 * 1024 * 1024 });
  assert.equal(run.status, 0, `${run.error ?? ""}${run.stderr}`);
  return JSON.parse(run.stdout);
}

function event(fields = {}) {
  return {
    event_id: "e1", schema: 1, workflow: "w", run_id: "r", service: "s", source: "sdk-ts", kind: "http",
    target: "t", endpoint: "GET /", started_at: 1714557800550000123n, latency_ms: 1, status: "ok",
    request: {}, response: null, ...fields,
  };
}

describe("limits", () => {
  it("are the Python contract's numbers", () => {
    const py = pythonContract([]);
    assert.equal(MAX_NESTING_DEPTH, py.depth);
    assert.equal(MAX_EVENT_BYTES, py.bytes);
  });

  it("measure depth as the contract does and cut at the deepest level allowed", () => {
    assert.equal(nestsWithin(nested(3), 3), true);
    assert.equal(nestsWithin(nested(4), 3), false);
    assert.equal(nestsWithin("x", 0), true);
    for (const levels of [1, 5, 6, 7, 100, 10000]) {
      const cut = cutToDepth(nested(levels), 6);
      assert.equal(depthOf(cut), Math.min(levels, 6), `levels ${levels}`);
    }
    const cut = cutToDepth({ keep: [1, 2], deep: nested(10) }, 3);
    assert.deepEqual(cut.keep, [1, 2]);
    assert.equal(cut.deep[0].$tracelab, "not_captured");
    assert.match(cut.deep[0].reason, /nested deeper than 64 levels/);
  });

  it("fit an event at the depth limit as it is, and cut one past it so it validates", async () => {
    const validate = await schemaValidator();
    // request is level 2, so a body of 62 levels makes the event exactly 64 deep.
    const atLimit = fitEvent(event({ request: { body: nested(62) } }));
    assert.equal(atLimit.cut, null);
    const over = fitEvent(event({ request: { body: nested(63) }, response: { body: nested(5000) } }));
    assert.equal(over.cut, "depth");
    const lines = [atLimit.line, over.line];
    for (const line of lines) {
      const parsed = JSON.parse(line);
      assert.ok(depthOf(parsed) <= MAX_NESTING_DEPTH);
      assertValid(validate, parsed);
    }
    assert.equal(depthOf(JSON.parse(atLimit.line)), 64);
    assert.deepEqual(pythonContract(lines).problems, [[], []]);
  });

  it("replace payloads by markers when the event would be over MAX_EVENT_BYTES", async () => {
    const validate = await schemaValidator();
    const big = "é".repeat(MAX_EVENT_BYTES / 2 + 10);
    const fitted = fitEvent(event({
      request: { method: "POST", url: "http://h/x", headers: { a: "b" }, body: big },
      response: { status_code: 200, headers: {}, body: { text: big } },
    }));
    assert.equal(fitted.cut, "size");
    assert.ok(Buffer.byteLength(fitted.line) <= MAX_EVENT_BYTES);
    const parsed = JSON.parse(fitted.line);
    assert.equal(parsed.request.method, "POST");
    assert.equal(parsed.request.url, "http://h/x");
    assert.equal(parsed.response.status_code, 200);
    assert.equal(parsed.request.body.$tracelab, "not_captured");
    assert.match(parsed.response.body.reason, /over 4194304 bytes/);
    assertValid(validate, parsed);
    // Even huge headers and an error message: everything but identity and timing goes.
    const worst = fitEvent(event({
      request: { headers: { h: big } }, response: { status_code: 500, headers: { h: big } },
      status: "error", error: { type: "E", message: big },
    }));
    assert.ok(Buffer.byteLength(worst.line) <= MAX_EVENT_BYTES);
    assertValid(validate, JSON.parse(worst.line));
    assert.deepEqual(pythonContract([fitted.line, worst.line]).problems, [[], []]);
  });
});

describe("an app's deep or huge payloads are recorded, cut to fit", () => {
  let server, dir, validate;
  before(async () => {
    const deep = JSON.stringify(nested(3000));
    server = await startHttp((req, res) => {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(req.url === "/huge" ? JSON.stringify({ blob: "x".repeat(5 * 1024 * 1024) }) : deep);
    });
    dir = userProject([]);
    validate = await schemaValidator();
  });
  after(async () => {
    await server?.close();
    if (dir) removeDir(dir);
  });

  it("spools every event, each within both limits", async () => {
    const home = tempDir("tracelab-home-");
    const run = await runScript(dir, "deep.mjs", `
      import { init, trace, flush, stats } from "@tracelab/sdk";
      init({ workflowName: "ts-limits", maxBodyBytes: 8 * 1024 * 1024 });
      const deep = (n) => { let v = 0; for (let i = 0; i < n; i++) v = { d: v }; return v; };
      await (await fetch(process.env.TEST_HTTP + "/deep", { method: "POST", body: JSON.stringify(deep(500)),
        headers: { "content-type": "application/json" } })).text();
      await (await fetch(process.env.TEST_HTTP + "/huge")).text();
      trace("deep-return", () => deep(100));
      const flushed = await flush(5000);
      const s = stats();
      console.log(JSON.stringify({ flushed, captured: s.captured, dropped: s.dropped, errors: s.errors, cut: s.cut_by_reason }));
    `, { TRACELAB_HOME: home, TEST_HTTP: server.url });
    assert.equal(run.code, 0, run.stderr);
    const out = JSON.parse(run.stdout);
    // captured: the three steps and the run's start event
    assert.deepEqual(out, { flushed: true, captured: 4, dropped: 0, errors: 0, cut: { depth: 1, size: 1 } });
    const { events } = spoolEvents(home);
    assert.deepEqual(events.map((e) => e.event.endpoint).sort(), ["GET /huge", "POST /deep", "deep-return"]);
    for (const { raw, event: e } of events) {
      assert.ok(Buffer.byteLength(raw) <= MAX_EVENT_BYTES);
      assert.ok(depthOf(e) <= MAX_NESTING_DEPTH);
      assertValid(validate, e);
    }
    const huge = events.find((e) => e.event.endpoint === "GET /huge").event;
    assert.equal(huge.response.status_code, 200);
    assert.equal(huge.response.body.$tracelab, "not_captured");
    assert.deepEqual(pythonContract(events.map((e) => e.raw)).problems, [[], [], []]);
    removeDir(home);
  });
});
