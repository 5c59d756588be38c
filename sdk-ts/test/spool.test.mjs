// Embedded mode (no Redis URL): the same spool files as the Python SDK under
// $TRACELAB_HOME/spool/, completed (renamed to .jsonl) at exit, also on process.exit().
import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import {
  assertValid, removeDir, runScript, schemaValidator, spoolEvents, startHttp, startedAtText,
  tempDir, userProject,
} from "./helpers.mjs";

const FILE_NAME = /^(\d{8}T\d{6})-(\d+)-([0-9a-f]{8})\.jsonl$/;

describe("embedded mode writes the spool", () => {
  let server, dir, validate;

  before(async () => {
    server = await startHttp((req, res) => {
      res.writeHead(200, { "content-type": "application/octet-stream" });
      res.end(req.url === "/big" ? Buffer.alloc(100000, 0xff) : Buffer.from([0, 1, 2, 0xfe, 0xff]));
    });
    dir = userProject();
    validate = await schemaValidator();
  });

  after(async () => {
    await server?.close();
    if (dir) removeDir(dir);
  });

  it("appends JSON lines to <stamp>-<pid>-<hex>.jsonl.open and completes the file at exit", async () => {
    const home = tempDir("tracelab-home-");
    const run = await runScript(dir, "embedded.mjs", `
      import { readdirSync } from "node:fs";
      import { init, trace, flush } from "@tracelab/sdk";
      init({ workflowName: "ts-embedded", serviceName: "spooler", runId: "run-embedded-1" });
      await trace("job", async () => {
        await (await fetch(process.env.TEST_HTTP + "/bin")).arrayBuffer();
        await (await fetch(process.env.TEST_HTTP + "/big")).arrayBuffer();
      });
      const flushed = await flush(2000);
      const during = readdirSync(process.env.TRACELAB_HOME + "/spool");
      await (await fetch(process.env.TEST_HTTP + "/after-flush")).arrayBuffer();
      console.log(JSON.stringify({ flushed, during, pid: process.pid }));
    `, { TRACELAB_HOME: home, TEST_HTTP: server.url });
    assert.equal(run.code, 0, run.stderr);
    const out = JSON.parse(run.stdout.trim());
    assert.equal(out.flushed, true);
    assert.equal(out.during.length, 1);
    assert.match(out.during[0], /\.jsonl\.open$/);
    const { files, events, raw } = spoolEvents(home);
    assert.equal(files.length, 1, files.join(","));
    const m = FILE_NAME.exec(files[0]);
    assert.ok(m, `spool file name ${files[0]}`);
    assert.equal(Number(m[2]), out.pid);
    assert.ok(raw.endsWith("\n"));
    assert.equal(events.length, 4);
    for (const { raw: line, event } of events) {
      assertValid(validate, event);
      assert.equal(event.run_id, "run-embedded-1");
      assert.equal(event.source, "sdk-ts");
      assert.equal(BigInt(startedAtText(line)) > 1700000000000000000n, true);
    }
    const bin = events.find((e) => e.event.endpoint === "GET /bin").event;
    assert.deepEqual(bin.response.body, { $tracelab: "binary", size: 5, base64: "AAEC/v8=" });
    const big = events.find((e) => e.event.endpoint === "GET /big").event;
    assert.equal(big.response.body.$tracelab, "truncated");
    assert.equal(big.response.body.size, 100000);
    assert.equal(big.response.body.encoding, "base64");
    assert.equal(Buffer.from(big.response.body.data, "base64").length, 65536);
    const job = events.find((e) => e.event.endpoint === "job").event;
    assert.equal(bin.parent_id, job.span_id);
    assert.ok(events.find((e) => e.event.endpoint === "GET /after-flush"), "recorded after flush, written at exit");
    const all = spoolEvents(home, { withRuns: true }).events.map((e) => e.event);
    assert.deepEqual([all[0].endpoint, all.at(-1).endpoint, all.at(-1).response], ["start", "end", { reason: "exit" }]);
    removeDir(home);
  });

  it("saves events on an explicit process.exit() without flush()", async () => {
    const home = tempDir("tracelab-home-");
    const run = await runScript(dir, "exit.mjs", `
      import { init, trace } from "@tracelab/sdk";
      init({ workflowName: "ts-embedded-exit" });
      trace("quick", () => 1);
      trace("quicker", () => 2);
      process.exit(0);
    `, { TRACELAB_HOME: home });
    assert.equal(run.code, 0, run.stderr);
    const { files, events, runs } = spoolEvents(home);
    assert.match(files[0], FILE_NAME);
    assert.deepEqual(events.map((e) => e.event.endpoint).sort(), ["quick", "quicker"]);
    // the run's end is written synchronously too: process.exit() skips beforeExit
    assert.deepEqual(runs.map((e) => [e.event.endpoint, e.event.response]), [["start", {}], ["end", { reason: "exit" }]]);
    removeDir(home);
  });

  it("uses TRACELAB_* environment variables as fallbacks", async () => {
    const home = tempDir("tracelab-home-");
    const run = await runScript(dir, "env.mjs", `
      import { init, trace } from "@tracelab/sdk";
      const config = init();
      trace("t", () => 0);
      console.log(JSON.stringify({ service: config.service, mode: config.mode }));
    `, {
      TRACELAB_HOME: home, TRACELAB_WORKFLOW_NAME: "wf-from-env", TRACELAB_SERVICE_NAME: "svc-env",
      TRACELAB_RUN_ID: "run-from-env", TRACELAB_TAGS: '{"team": "x", "n": 3}',
    });
    assert.equal(run.code, 0, run.stderr);
    const [{ event }] = spoolEvents(home).events;
    assert.equal(event.workflow, "wf-from-env");
    assert.equal(event.service, "svc-env");
    assert.equal(event.run_id, "run-from-env");
    assert.deepEqual(event.tags, { team: "x", n: "3" });
    removeDir(home);
  });

  it("records nothing and patches nothing when TRACELAB_DISABLED=1", async () => {
    const home = tempDir("tracelab-home-");
    const run = await runScript(dir, "disabled.mjs", `
      import { init, trace } from "@tracelab/sdk";
      const before = globalThis.fetch;
      console.log(JSON.stringify({ config: init({ workflowName: "w" }), same: before === globalThis.fetch, r: trace("t", () => 5) }));
    `, { TRACELAB_HOME: home, TRACELAB_DISABLED: "1" });
    assert.deepEqual(JSON.parse(run.stdout), { config: null, same: true, r: 5 });
    assert.equal(spoolEvents(home).files.length, 0);
    removeDir(join(home));
  });
  it("writes a batch whose fsync is still running at process.exit() once, not twice", async () => {
    const home = tempDir("tracelab-home-");
    // A disk whose fsync never returns: the batch is appended, its write never settles.
    const run = await runScript(dir, "slow-disk.mjs", `
      import fs from "node:fs";
      import { syncBuiltinESMExports } from "node:module";
      fs.fsync = () => undefined;
      syncBuiltinESMExports();
      const { init, trace } = await import("@tracelab/sdk");
      init({ workflowName: "ts-slow-disk", serviceName: "spooler" });
      trace("step", () => 1);
      setTimeout(() => process.exit(0), 500);
    `, { TRACELAB_HOME: home });
    assert.equal(run.code, 0, run.stderr);
    const { events, runs } = spoolEvents(home);
    assert.deepEqual(events.map((e) => e.event.endpoint), ["step"]);
    assert.deepEqual(runs.map((e) => e.event.endpoint), ["start", "end"]);
    assert.equal(new Set([...events, ...runs].map((e) => e.event.event_id)).size, 3);
  });
});
