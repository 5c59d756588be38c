// Spool liveness by lock: while a Node process may still append to its `.jsonl.open` file it
// holds an flock on it, so the Python fold (which probes LOCK_EX|LOCK_NB) never folds and
// deletes it under the writer, whatever PID namespace either runs in.
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { REPO_DIR, cleanEnv, removeDir, runScript, spoolEvents, tempDir, userProject } from "./helpers.mjs";

const PYTHON = join(REPO_DIR, ".venv", "bin", "python");

const WRITER = `
  import { readdirSync } from "node:fs";
  import { createInterface } from "node:readline";
  import { init, trace, flush } from "@tracelab/sdk";
  init({ workflowName: process.env.TEST_WF, runId: process.env.TEST_RUN });
  let n = 0;
  const lines = createInterface({ input: process.stdin });
  const step = async () => {
    trace("step-" + n++, () => n);
    const flushed = await flush(5000);
    console.log(JSON.stringify({ flushed, files: readdirSync(process.env.TRACELAB_HOME + "/spool").filter((f) => !f.startsWith(".")) }));
  };
  lines.on("line", () => void step());
  await step();
`;

/** Run Python in the repo's venv; its last stdout line is JSON. */
function python(code, env) {
  const run = spawnSync(PYTHON, ["-c", code], { cwd: REPO_DIR, env: { ...cleanEnv(), ...env }, encoding: "utf8", timeout: 120000 });
  assert.equal(run.status, 0, `${run.error ?? ""}${run.stderr}`);
  return JSON.parse(run.stdout.trim().split("\n").at(-1));
}

/** Probe the writer's file as the fold does (LOCK_EX|LOCK_NB); then fold, unless told not to. */
const PROBE_AND_FOLD = `
import fcntl, json, os, sys
spool = os.path.join(os.environ["TRACELAB_HOME"], "spool")
name = [n for n in os.listdir(spool) if n.endswith(".jsonl.open")][0]
fd = os.open(os.path.join(spool, name), os.O_RDONLY)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    locked = False
except BlockingIOError:
    locked = True
finally:
    os.close(fd)
if not os.environ.get("PROBE_ONLY"):
    from tracelab.store.spool import fold_spool
    fold_spool(os.environ["TRACELAB_HOME"])
print(json.dumps({"name": name, "locked": locked, "after": sorted(n for n in os.listdir(spool) if not n.startswith("."))}))
`;

const STORED = `
import json, os
from tracelab.store.spool import fold_spool
from tracelab import api
fold_spool(os.environ["TRACELAB_HOME"])
spool = os.path.join(os.environ["TRACELAB_HOME"], "spool")
left = sorted(n for n in os.listdir(spool) if not n.startswith("."))
events = api.execution(os.environ["TEST_RUN"]).events
print(json.dumps({"left": left, "endpoints": sorted(events["endpoint"])}))
`;

class Writer {
  constructor(dir, env) {
    this.child = spawn(process.execPath, [join(dir, "writer.mjs")], {
      cwd: dir, env: { ...cleanEnv(), ...env }, stdio: ["pipe", "pipe", "pipe"],
    });
    this.stderr = "";
    this.child.stderr.on("data", (c) => { this.stderr += c; });
    this.waiting = [];
    let buffered = "";
    this.child.stdout.on("data", (c) => {
      buffered += c;
      let i;
      while ((i = buffered.indexOf("\n")) >= 0) {
        const line = buffered.slice(0, i);
        buffered = buffered.slice(i + 1);
        this.waiting.shift()?.(JSON.parse(line));
      }
    });
    this.exited = new Promise((r) => this.child.once("exit", (code, signal) => r({ code, signal })));
  }

  next() {
    return new Promise((r) => this.waiting.push(r));
  }

  step() {
    const reply = this.next();
    this.child.stdin.write("more\n");
    return reply;
  }

  kill() {
    if (this.child.exitCode === null) this.child.kill("SIGKILL");
  }
}

describe("spool files are locked while written", () => {
  let dir;
  before(async () => {
    dir = userProject([]);
    writeFileSync(join(dir, "writer.mjs"), WRITER);
  });
  after(() => {
    if (dir) removeDir(dir);
  });

  it("a fold never takes the file of a live writer, and takes all of it once the writer exits", async () => {
    const home = tempDir("tracelab-home-");
    const env = { TRACELAB_HOME: home, TEST_WF: "ts-lock", TEST_RUN: `run-lock-${process.pid}` };
    const writer = new Writer(dir, env);
    try {
      const first = await writer.next();
      assert.equal(first.flushed, true, writer.stderr);
      assert.equal(first.files.length, 1);
      assert.match(first.files[0], /^\d{8}T\d{6}-\d+-[0-9a-f]{8}\.jsonl\.open$/);

      const probe = python(PROBE_AND_FOLD, env);
      assert.equal(probe.name, first.files[0]);
      assert.equal(probe.locked, true, "the writer holds no flock on its open spool file");
      assert.deepEqual(probe.after, [first.files[0]], "the fold removed a live writer's file");

      // The writer keeps appending to the same file after the fold.
      const second = await writer.step();
      assert.equal(second.flushed, true, writer.stderr);
      assert.deepEqual(second.files, [first.files[0]]);
      assert.equal(python(PROBE_AND_FOLD, { ...env, PROBE_ONLY: "1" }).locked, true);

      writer.child.stdin.end(); // nothing left to wait for: the process must exit by itself
      assert.deepEqual(await writer.exited, { code: 0, signal: null });
      assert.equal(writer.stderr, "");
      const stored = python(STORED, env);
      assert.deepEqual(stored.left, []);
      assert.deepEqual(stored.endpoints, ["step-0", "step-1"]);
    } finally {
      writer.kill();
      removeDir(home);
    }
  });

  it("the lock goes with the writer when it is killed", async () => {
    const home = tempDir("tracelab-home-");
    const env = { TRACELAB_HOME: home, TEST_WF: "ts-lock-killed", TEST_RUN: `run-killed-${process.pid}` };
    const writer = new Writer(dir, env);
    try {
      const first = await writer.next();
      assert.equal(first.flushed, true, writer.stderr);
      writer.child.kill("SIGKILL");
      await writer.exited;
      const probe = python(PROBE_AND_FOLD, { ...env, PROBE_ONLY: "1" });
      assert.equal(probe.locked, false);
    } finally {
      writer.kill();
      removeDir(home);
    }
  });

  it("without the flock command, writes as before after one warning", async () => {
    const home = tempDir("tracelab-home-");
    const run = await runScript(dir, "noflock.mjs", `
      import { init, trace, flush, stats } from "@tracelab/sdk";
      init({ workflowName: "ts-noflock" });
      trace("a", () => 1);
      const first = await flush(5000);
      trace("b", () => 2);
      console.log(JSON.stringify({ first, second: await flush(5000), errors: stats().errors }));
    `, { TRACELAB_HOME: home, PATH: join(home, "no-such-bin") });
    assert.equal(run.code, 0, run.stderr);
    assert.deepEqual(JSON.parse(run.stdout), { first: true, second: true, errors: 0 });
    assert.equal(run.stderr.match(/TraceLabWarning: TraceLab: cannot lock embedded spool files/g)?.length, 1, run.stderr);
    const { files, events } = spoolEvents(home);
    assert.equal(files.length, 1);
    assert.match(files[0], /\.jsonl$/);
    assert.deepEqual(events.map((e) => e.event.endpoint), ["a", "b"]);
    assert.deepEqual(readdirSync(join(home, "spool")).filter((n) => n.startsWith(".")), []);
    removeDir(home);
  });
});
