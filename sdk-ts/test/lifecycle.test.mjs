// Run lifecycle (spec/README.md, "Run lifecycle"): one kind "run" start event at init() and one
// end event with its reason, from real child processes that exit normally, throw, reject,
// call process.exit(), shutdown() or get SIGTERM, into the spool and a real redis-server.
// Node's own way of dying must not change: same stderr stack, exit code or signal.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import {
  REPO_DIR, assertValid, cleanEnv, removeDir, runScript, schemaValidator, spoolEvents, startHttp, startRedis,
  startScript, tempDir, userProject,
} from "./helpers.mjs";

const PYTHON = join(REPO_DIR, ".venv", "bin", "python");

const INIT = `
import { init, shutdown, trace } from "@tracelab/sdk";
init({ workflowName: "ts-life", serviceName: "life-svc", tags: { team: "core" } });
`;
const CONTRACT_FIELDS = ["event_id", "schema", "workflow", "run_id", "service", "source", "kind", "target",
  "endpoint", "started_at", "latency_ms", "status", "request", "response", "status_code", "error", "tags",
  "span_id", "parent_id", "host", "pid", "sdk_version"];

let dir, validate, redis, server, streamNo = 0;

before(async () => {
  dir = userProject([]);
  validate = await schemaValidator();
  redis = await startRedis();
  server = await startHttp((req, res) => res.end("ok"));
});

after(async () => {
  await redis?.stop();
  await server?.close();
  if (dir) removeDir(dir);
});

/** The two sinks, each giving the env for a child and then reading back what it published. */
const SINKS = {
  spool: () => {
    const home = tempDir("tracelab-home-");
    return {
      env: { TRACELAB_HOME: home },
      events: async () => spoolEvents(home, { withRuns: true }).events.map((e) => e.event),
    };
  },
  redis: () => {
    const stream = `life.${++streamNo}`;
    return {
      // A long flush interval: whatever a dying process has not written itself is never
      // written by a timer, so the synchronous write at exit is what is tested.
      env: { TRACELAB_REDIS_URL: redis.url, TRACELAB_STREAM: stream, TRACELAB_FLUSH_INTERVAL: "30" },
      events: async () => (await redis.events(stream, { withRuns: true })).map((e) => e.event),
    };
  },
};

/** The run events of one run, checked against the contract; steps are returned apart. */
function split(events) {
  for (const event of events) assertValid(validate, event);
  const runs = events.filter((e) => e.kind === "run");
  const steps = events.filter((e) => e.kind !== "run");
  return { runs, steps };
}

function assertStart(event, pid) {
  assert.deepEqual(Object.keys(event).sort(), [...CONTRACT_FIELDS].sort());
  assert.equal(event.kind, "run");
  assert.equal(event.endpoint, "start");
  assert.equal(event.target, "life-svc");
  assert.equal(event.service, "life-svc");
  assert.equal(event.workflow, "ts-life");
  assert.equal(event.source, "sdk-ts");
  assert.equal(event.pid, pid ?? event.pid);
  assert.deepEqual(event.tags, { team: "core" });
  assert.equal(event.latency_ms, 0);
  assert.equal(event.status, "ok");
  assert.deepEqual(event.request, {});
  assert.deepEqual(event.response, {});
  assert.equal(event.error, null);
  assert.equal(event.span_id, null);
  assert.equal(event.parent_id, null);
}

function assertEnd(event, start, reason, status, error = null) {
  assert.equal(event.kind, "run");
  assert.equal(event.endpoint, "end");
  assert.equal(event.run_id, start.run_id);
  assert.equal(event.target, "life-svc");
  assert.equal(event.status, status);
  assert.equal(event.latency_ms, 0);
  assert.deepEqual(event.request, {});
  assert.deepEqual(event.response, reason === "signal" ? { reason, signal: "SIGTERM" } : { reason });
  assert.deepEqual(event.error, error);
  assert.ok(BigInt(event.started_at) >= BigInt(start.started_at));
}

for (const [name, makeSink] of Object.entries(SINKS)) {
  describe(`run lifecycle events (${name})`, () => {
    it("a normal exit: start, the steps, end(exit)", async () => {
      const sink = makeSink();
      const run = await runScript(dir, "normal.mjs", `${INIT}
        await trace("job", async () => (await fetch(process.env.TEST_HTTP)).text());
        console.log(process.pid);
      `, { ...sink.env, TEST_HTTP: server.url });
      assert.equal(run.code, 0, run.stderr);
      const events = await sink.events();
      const { runs, steps } = split(events);
      assert.equal(steps.length, 2);
      assert.equal(runs.length, 2);
      assert.equal(events[0].endpoint, "start");
      assert.equal(events.at(-1).endpoint, "end");
      assertStart(runs[0], Number(run.stdout.trim()));
      assertEnd(runs[1], runs[0], "exit", "ok");
      for (const step of steps) assert.equal(step.run_id, runs[0].run_id);
    });

    it("an uncaught exception: end(exception) with the redacted message, Node still prints and exits 1", async () => {
      const sink = makeSink();
      const run = await runScript(dir, "throws.mjs", `${INIT}
        await fetch(process.env.TEST_HTTP).then((r) => r.text());
        class PaymentDeclined extends Error {}
        throw new PaymentDeclined("card refused for key sk_live_abcdefghijklmnop, password=hunter2");
      `, { ...sink.env, TEST_HTTP: server.url });
      assert.equal(run.code, 1);
      assert.match(run.stderr, /PaymentDeclined.*: card refused for key sk_live_abcdefghijklmnop/);
      assert.match(run.stderr, /throws\.mjs:\d+/);
      const { runs, steps } = split(await sink.events());
      assert.equal(steps.length, 1);
      assert.equal(runs.length, 2);
      assertStart(runs[0]);
      assertEnd(runs[1], runs[0], "exception", "error",
        { type: "PaymentDeclined", message: "card refused for key [REDACTED], password=[REDACTED]" });
    });

    it("an unhandled rejection ends the run as an exception, exit code unchanged", async () => {
      const sink = makeSink();
      const run = await runScript(dir, "rejects.mjs", `${INIT}
        Promise.reject(new RangeError("out of range"));
      `, sink.env);
      assert.equal(run.code, 1);
      assert.match(run.stderr, /RangeError: out of range/);
      const { runs } = split(await sink.events());
      assert.equal(runs.length, 2);
      assertEnd(runs[1], runs[0], "exception", "error", { type: "RangeError", message: "out of range" });
    });

    it("SIGTERM: end(signal), then the process is still killed by SIGTERM", async () => {
      const sink = makeSink();
      const { child, exited } = await startScript(dir, "term.mjs", `${INIT}
        await fetch(process.env.TEST_HTTP).then((r) => r.text());
        setInterval(() => {}, 1000);
        console.log("ready");
      `, { ...sink.env, TEST_HTTP: server.url });
      child.kill("SIGTERM");
      const run = await exited;
      assert.equal(run.signal, "SIGTERM", JSON.stringify(run));
      assert.equal(run.code, null);
      const { runs, steps } = split(await sink.events());
      assert.equal(steps.length, 1);
      assert.equal(runs.length, 2);
      assertEnd(runs[1], runs[0], "signal", "error", { type: "Signal", message: "SIGTERM" });
    });

    it("process.exit(3): end(exit) written synchronously, exit code unchanged", async () => {
      const sink = makeSink();
      const run = await runScript(dir, "exits.mjs", `${INIT}
        await fetch(process.env.TEST_HTTP).then((r) => r.text());
        process.exit(3);
      `, { ...sink.env, TEST_HTTP: server.url });
      assert.equal(run.code, 3, run.stderr);
      const { runs, steps } = split(await sink.events());
      assert.equal(steps.length, 1);
      assert.equal(runs.length, 2);
      assertEnd(runs[1], runs[0], "exit", "ok");
    });

    it("shutdown(): end(shutdown), and no second end at exit", async () => {
      const sink = makeSink();
      const run = await runScript(dir, "shutdown.mjs", `${INIT}
        const ok = await shutdown();
        await fetch(process.env.TEST_HTTP).then((r) => r.text());
        console.log(ok);
      `, { ...sink.env, TEST_HTTP: server.url });
      assert.equal(run.code, 0, run.stderr);
      assert.equal(run.stdout.trim(), "true");
      const { runs, steps } = split(await sink.events());
      assert.equal(steps.length, 0);
      assert.equal(runs.length, 2);
      assertEnd(runs[1], runs[0], "shutdown", "ok");
    });
  });
}

describe("run lifecycle: re-init and programs that handle things themselves", () => {
  it("init() with the same run id publishes nothing new; another run id ends the first (new_run)", async () => {
    const sink = SINKS.spool();
    const run = await runScript(dir, "reinit.mjs", `
      import { init } from "@tracelab/sdk";
      init({ workflowName: "ts-life", serviceName: "life-svc", runId: "run-a" });
      init({ workflowName: "ts-life", serviceName: "life-svc", runId: "run-a", tags: { again: "1" } });
      init({ workflowName: "ts-life", serviceName: "life-svc", runId: "run-b" });
      init({ workflowName: "ts-life", serviceName: "life-svc", runId: "run-a" });
      init({ workflowName: "ts-other", serviceName: "life-svc", runId: "run-a" });
    `, sink.env);
    assert.equal(run.code, 0, run.stderr);
    const { runs } = split(await sink.events());
    // a run is its workflow and run id; one already ended here is not started again
    assert.deepEqual(runs.map((e) => [e.workflow, e.run_id, e.endpoint, e.response.reason ?? null]), [
      ["ts-life", "run-a", "start", null],
      ["ts-life", "run-a", "end", "new_run"],
      ["ts-life", "run-b", "start", null],
      ["ts-life", "run-b", "end", "new_run"],
      ["ts-other", "run-a", "start", null],
      ["ts-other", "run-a", "end", "exit"],
    ]);
  });

  it("a program's own SIGTERM listener keeps its meaning: no signal end, the run ends at exit", async () => {
    const sink = SINKS.spool();
    const { child, exited } = await startScript(dir, "own-term.mjs", `
      process.on("SIGTERM", () => { console.log("graceful"); clearInterval(timer); });
      const { init } = await import("@tracelab/sdk");
      init({ workflowName: "ts-life", serviceName: "life-svc" });
      const timer = setInterval(() => {}, 1000);
      console.log("ready");
    `, sink.env);
    child.kill("SIGTERM");
    const run = await exited;
    assert.equal(run.code, 0, run.stderr);
    assert.equal(run.signal, null);
    assert.match(run.stdout, /graceful/);
    const { runs } = split(await sink.events());
    assert.equal(runs.length, 2);
    assertEnd(runs[1], runs[0], "exit", "ok");
  });

  it("an exception the program handles (uncaughtException listener) does not end the run", async () => {
    const sink = SINKS.spool();
    const run = await runScript(dir, "handled.mjs", `${INIT}
      process.on("uncaughtException", (err) => console.log("handled " + err.message));
      setTimeout(() => { throw new Error("first"); }, 1);
      setTimeout(() => console.log("still running"), 20);
    `, sink.env);
    assert.equal(run.code, 0, run.stderr);
    assert.match(run.stdout, /handled first\nstill running/);
    const { runs } = split(await sink.events());
    assert.equal(runs.length, 2);
    assertEnd(runs[1], runs[0], "exit", "ok");
  });
});

describe("run lifecycle: a crash's end reaches a Redis that needs a password, in its database", () => {
  it("AUTH and SELECT before the synchronous XADD", async () => {
    const secured = await startRedis({ password: "s3cret/pw", db: 3 });
    try {
      const run = await runScript(dir, "auth.mjs", `${INIT}
        throw new Error("late");
      `, { TRACELAB_REDIS_URL: secured.url, TRACELAB_FLUSH_INTERVAL: "30" });
      assert.equal(run.code, 1);
      const runs = (await secured.events("trace.events", { withRuns: true })).map((e) => e.event);
      assert.deepEqual(runs.map((e) => [e.endpoint, e.response.reason ?? null]), [["start", null], ["end", "exception"]]);
      await secured.client.select(0);
      assert.equal(await secured.client.xlen("trace.events"), 0);
    } finally {
      await secured.stop();
    }
  });
});

describe("run lifecycle: the same events as the Python SDK's", () => {
  // Everything but what differs by nature: ids, times, the process, the SDK, and the tags
  // (the Python SDK adds `command.argv` to every event of its runs).
  const comparable = ({ event_id, run_id, started_at, pid, source, sdk_version, tags, ...rest }) => rest;

  it("a normal exit and an uncaught exception give field-for-field the Python SDK's start and end", async () => {
    const message = "card refused for key sk_live_abcdefghijklmnop, password=hunter2";
    for (const fails of [false, true]) {
      const tsHome = tempDir("tracelab-home-");
      const ts = await runScript(dir, "parity.mjs", `${INIT}
        class PaymentDeclined extends Error {}
        if (${fails}) throw new PaymentDeclined(${JSON.stringify(message)});
      `, { TRACELAB_HOME: tsHome });
      assert.equal(ts.code, fails ? 1 : 0, ts.stderr);
      const pyHome = tempDir("tracelab-home-");
      const py = spawnSync(PYTHON, ["-c", [
        "import tracelab",
        'tracelab.init(workflow_name="ts-life", service_name="life-svc", tags={"team": "core"})',
        "class PaymentDeclined(Exception): pass",
        `if ${fails ? "True" : "False"}: raise PaymentDeclined(${JSON.stringify(message)})`,
      ].join("\n")], { cwd: REPO_DIR, env: { ...cleanEnv(), TRACELAB_HOME: pyHome }, encoding: "utf8" });
      assert.equal(py.status, fails ? 1 : 0, py.stderr);
      const tsRuns = spoolEvents(tsHome).runs.map((e) => e.event);
      const pyRuns = spoolEvents(pyHome).runs.map((e) => e.event);
      assert.equal(tsRuns.length, 2);
      assert.deepEqual(tsRuns.map((e) => Object.keys(e).sort()), pyRuns.map((e) => Object.keys(e).sort()));
      assert.deepEqual(tsRuns.map(comparable), pyRuns.map(comparable));
      assert.equal(tsRuns[0].source, "sdk-ts");
      removeDir(tsHome);
      removeDir(pyHome);
    }
  });
});
