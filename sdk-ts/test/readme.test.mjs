// The original README's TypeScript examples, compiled with tsc against the package's own
// declarations and run as a user would (URLs pointed at a loopback server): example 1 as an
// ES module (node-fetch v3 is ESM-only), example 2 as CommonJS (its extensionless import).
import assert from "node:assert/strict";
import { mkdirSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import {
  SDK_DIR, assertValid, removeDir, runScript, schemaValidator, spawnSync, startHttp, startRedis,
  userProject,
} from "./helpers.mjs";

const TSC = join(SDK_DIR, "node_modules", "typescript", "bin", "tsc");

function compile(dir, module) {
  mkdirSync(join(dir, "node_modules", "@types"), { recursive: true });
  symlinkSync(join(SDK_DIR, "node_modules", "@types", "node"), join(dir, "node_modules", "@types", "node"), "dir");
  writeFileSync(join(dir, "tsconfig.json"), JSON.stringify({
    compilerOptions: {
      target: "ES2022", module, moduleResolution: module === "NodeNext" ? "NodeNext" : "Node10",
      strict: true, esModuleInterop: true, skipLibCheck: false, types: ["node"],
    },
    include: ["*.ts"],
  }));
  const result = spawnSync(process.execPath, [TSC, "-p", dir], { encoding: "utf8" });
  assert.equal(result.status, 0, `tsc failed:\n${result.stdout}${result.stderr}`);
}

describe("the original README's TypeScript examples", () => {
  let redis, server, validate;
  const dirs = [];

  before(async () => {
    redis = await startRedis();
    server = await startHttp((req, res) => res.end("<html>ok</html>"));
    validate = await schemaValidator();
  });
  after(async () => {
    await server?.close();
    await redis?.stop();
    for (const d of dirs) removeDir(d);
  });

  it("example 1: init, node-fetch traced, trace() — as an ES module", async () => {
    const dir = userProject();
    dirs.push(dir);
    writeFileSync(join(dir, "example1.ts"), `import { init, trace } from "@tracelab/sdk";
import fetch from "node-fetch";

init({ workflowName: "my-awesome-workflow", serviceName: "my-typescript-service" });

fetch(process.env.EXAMPLE_URL ?? "https://www.google.com");   // traced
trace("my-custom-function", async () => { /* ... */ });
`);
    compile(dir, "NodeNext");
    const run = await runScript(dir, "run1.mjs", 'import "./example1.js";\n', {
      TRACELAB_REDIS_URL: redis.url, EXAMPLE_URL: `${server.url}/search?q=tracelab`,
    });
    assert.equal(run.code, 0, run.stderr);
    const events = (await redis.events()).map((e) => e.event).filter((e) => e.workflow === "my-awesome-workflow");
    const http = events.find((e) => e.kind === "http");
    assert.equal(http.endpoint, "GET /search");
    assert.equal(http.target, `127.0.0.1:${server.port}`);
    assert.equal(http.service, "my-typescript-service");
    assert.equal(http.response.body, "<html>ok</html>");
    const fn = events.find((e) => e.kind === "function");
    assert.equal(fn.endpoint, "my-custom-function");
    for (const e of events) assertValid(validate, e);
  });

  it("example 2: registerHook before init, as CommonJS", async () => {
    const dir = userProject([]);
    dirs.push(dir);
    writeFileSync(join(dir, "package.json"), JSON.stringify({ name: "example2", private: true, type: "commonjs" }));
    writeFileSync(join(dir, "my-db-lib.ts"), `export const myDatabaseLibrary = {
  execute(query: string, params: any[]): { rows: number } {
    return { rows: params.length };
  },
};
`);
    writeFileSync(join(dir, "example2.ts"), `import { init, registerHook } from "@tracelab/sdk";
import { myDatabaseLibrary } from "./my-db-lib";

function captureDbQuery(query: string, params: any[]) {
  return {
    service: "database",
    endpoint: "query",
    request: { query, params },
    response: { status: "success" }
  };
}

registerHook(myDatabaseLibrary, "execute", captureDbQuery);

init({ workflowName: "db-workflow", serviceName: "db-service" });

const result = myDatabaseLibrary.execute("SELECT * FROM users", [1, 2, 3]);
console.log(JSON.stringify(result));
`);
    compile(dir, "CommonJS");
    const run = await runScript(dir, "run2.cjs", 'require("./example2.js");\n', { TRACELAB_REDIS_URL: redis.url });
    assert.equal(run.code, 0, run.stderr);
    assert.deepEqual(JSON.parse(run.stdout), { rows: 3 });
    const events = (await redis.events()).map((e) => e.event).filter((e) => e.workflow === "db-workflow");
    assert.equal(events.length, 1);
    const [e] = events;
    assert.equal(e.kind, "custom");
    assert.equal(e.target, "database");
    assert.equal(e.endpoint, "query");
    assert.equal(e.service, "db-service");
    assert.equal(e.status, "ok");
    assert.deepEqual(e.request, { query: "SELECT * FROM users", params: [1, 2, 3] });
    assert.deepEqual(e.response, { status: "success" });
    assertValid(validate, e);
  });

  it("a hook that throws or returns junk is counted, and the app still gets its result", async () => {
    const dir = userProject([]);
    dirs.push(dir);
    const run = await runScript(dir, "hooks.mjs", `
      import { init, registerHook, stats, flush } from "@tracelab/sdk";
      const lib = { ok: (x) => x * 2, bad: (x) => x + 1, junk: (x) => x, async later(x) { return x; }, fails() { throw new Error("db down"); } };
      registerHook(lib, "ok", (x) => ({ service: "svc", endpoint: "ok", request: { x }, kind: "database", tags: { table: "t" } }));
      registerHook(lib, "bad", () => { throw new Error("hook bug"); });
      registerHook(lib, "junk", () => "not an object");
      registerHook(lib, "later", (x) => ({ service: "svc", request: { x } }));
      registerHook(lib, "fails", () => ({ service: "svc", endpoint: "fails" }));
      init({ workflowName: "hooks" });
      const out = [lib.ok(2), lib.bad(2), lib.junk(2), await lib.later(5)];
      try { lib.fails(); } catch (err) { out.push(err.message); }
      await flush(2000);
      const s = stats();
      console.log(JSON.stringify({ out, errors: s.errors_by_origin.hooks, captured: s.captured }));
    `, { TRACELAB_REDIS_URL: redis.url });
    assert.equal(run.code, 0, run.stderr);
    assert.deepEqual(JSON.parse(run.stdout), { out: [4, 3, 2, 5, "db down"], errors: 2, captured: 4 }); // 3 steps + the run start
    const events = (await redis.events()).map((e) => e.event).filter((e) => e.workflow === "hooks");
    const ok = events.find((e) => e.endpoint === "ok");
    assert.equal(ok.kind, "database");
    assert.equal(ok.tags.table, "t");
    assert.equal(events.find((e) => e.endpoint === "later").request.x, 5);
    const failed = events.find((e) => e.endpoint === "fails");
    assert.equal(failed.status, "error");
    assert.deepEqual(failed.error, { type: "Error", message: "db down" });
  });
});
