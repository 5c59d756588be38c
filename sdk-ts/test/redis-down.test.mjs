// Redis down: the app is unaffected, flush() settles within its timeout, the process exits on
// its own, drops are counted, and nothing is printed into the app's output.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { freePort, removeDir, runScript, startHttp, startRedis, userProject } from "./helpers.mjs";

describe("with Redis down", () => {
  let server, dir, redis, beforeStop;
  before(async () => {
    redis = await startRedis();
    server = await startHttp((req, res) => {
      if (req.url === "/stop-redis") {
        redis.events().then((events) => {
          beforeStop = events.map((e) => e.event.endpoint);
          return redis.stop();
        }).then(() => res.end("stopped"));
        return;
      }
      res.end("fine");
    });
    dir = userProject();
  });
  after(async () => {
    await server?.close();
    await redis?.stop();
    if (dir) removeDir(dir);
  });

  it("never reached: calls succeed, flush resolves false within its timeout, exit is prompt", async () => {
    const port = await freePort();
    const run = await runScript(dir, "down.mjs", `
      import { init, trace, flush, stats } from "@tracelab/sdk";
      init({ workflowName: "ts-down", redisUrl: "redis://127.0.0.1:${port}/0" });
      const statuses = [];
      for (let i = 0; i < 20; i++) statuses.push((await fetch(process.env.TEST_HTTP + "/x" + i)).status);
      const value = await trace("work", async () => 7);
      const t0 = Date.now();
      const flushed = await flush(1000);
      const ms = Date.now() - t0;
      console.log(JSON.stringify({ statuses, value, flushed, ms, stats: stats() }));
    `, { TEST_HTTP: server.url, TRACELAB_SHUTDOWN_TIMEOUT: "0.5" }, 20000);
    assert.equal(run.code, 0, run.stderr);
    assert.equal(run.stderr, "");
    const out = JSON.parse(run.stdout.trim());
    assert.deepEqual(out.statuses, Array(20).fill(200));
    assert.equal(out.value, 7);
    assert.equal(out.flushed, false);
    assert.ok(out.ms >= 900 && out.ms < 1600, `flush took ${out.ms} ms`);
    assert.equal(out.stats.captured, 22); // 21 steps + the run start
    assert.equal(out.stats.published, 0);
    assert.ok(out.stats.errors >= 1);
    assert.match(out.stats.last_error, /ECONNREFUSED|connect/);
    assert.ok(run.ms < 8000, `process took ${run.ms} ms to exit`);
  });

  it("stopped mid-run: earlier events are in Redis, later calls still succeed, flush settles", async () => {
    const run = await runScript(dir, "midway.mjs", `
      import { init, flush, stats } from "@tracelab/sdk";
      init({ workflowName: "ts-midway", redisUrl: process.env.TEST_REDIS });
      await (await fetch(process.env.TEST_HTTP + "/before")).text();
      const first = await flush(2000);
      await (await fetch(process.env.TEST_HTTP + "/stop-redis")).text();
      const statuses = [];
      for (let i = 0; i < 5; i++) statuses.push((await fetch(process.env.TEST_HTTP + "/after" + i)).status);
      const t0 = Date.now();
      const second = await flush(800);
      console.log(JSON.stringify({ first, second, ms: Date.now() - t0, statuses, stats: stats() }));
    `, { TEST_HTTP: server.url, TEST_REDIS: redis.url, TRACELAB_SHUTDOWN_TIMEOUT: "0.5" }, 20000);
    assert.equal(run.code, 0, run.stderr);
    assert.equal(run.stderr, "");
    const out = JSON.parse(run.stdout.trim());
    assert.equal(out.first, true);
    assert.equal(out.second, false);
    assert.ok(out.ms < 1300, `flush took ${out.ms} ms`);
    assert.deepEqual(out.statuses, [200, 200, 200, 200, 200]);
    assert.equal(out.stats.published, 2, JSON.stringify(out.stats)); // the run start and GET /before
    assert.deepEqual(beforeStop, ["GET /before"]);
    assert.ok(run.ms < 8000, `process took ${run.ms} ms to exit`);
  });

  it("a full queue drops and counts instead of growing", async () => {
    const port = await freePort();
    const run = await runScript(dir, "full.mjs", `
      import { init, trace, stats } from "@tracelab/sdk";
      init({ workflowName: "ts-full", redisUrl: "redis://127.0.0.1:${port}/0" });
      for (let i = 0; i < 50; i++) trace("t" + i, () => i);
      console.log(JSON.stringify(stats()));
    `, { TRACELAB_QUEUE_SIZE: "10", TRACELAB_SHUTDOWN_TIMEOUT: "0.2" }, 20000);
    assert.equal(run.code, 0, run.stderr);
    const out = JSON.parse(run.stdout.trim());
    assert.equal(out.captured, 51); // the run start first, then 50 spans
    assert.equal(out.dropped_by_reason.queue_full, 41);
    assert.equal(out.queued, 10);
  });
});

describe("the app's own failures stay the app's", () => {
  it("an unhandled rejected fetch still crashes the app as it would without TraceLab", async () => {
    const dir = userProject([]);
    const port = await freePort();
    const run = await runScript(dir, "unhandled.mjs", `
      import { init } from "@tracelab/sdk";
      init({ workflowName: "unhandled", redisUrl: "redis://127.0.0.1:${port}/0" });
      fetch("http://127.0.0.1:${port}/never");
    `, { TRACELAB_SHUTDOWN_TIMEOUT: "0.2" });
    assert.notEqual(run.code, 0);
    assert.match(run.stderr, /fetch failed/);
    removeDir(dir);
  });
});
