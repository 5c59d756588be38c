// Shared test fixtures: a real redis-server on a free loopback port, loopback HTTP servers,
// child Node processes running scripts that use the built package, and the contract's schema.
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { Redis } from "ioredis";

export const SDK_DIR = resolve(dirname(fileURLToPath(import.meta.url)), "..");
export const REPO_DIR = resolve(SDK_DIR, "..");
export const SPEC_DIR = join(REPO_DIR, "spec");

export function freePort() {
  return new Promise((resolvePort, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolvePort(port));
    });
  });
}

export function tempDir(prefix = "tracelab-ts-") {
  return mkdtempSync(join(tmpdir(), prefix));
}

/**
 * A real redis-server on a free loopback port; `stop()` kills it. With `password` it requires
 * one (the URL carries it); `db` is the database number in the URL (and of the test client).
 */
export async function startRedis({ password = null, db = 0 } = {}) {
  const port = await freePort();
  const dir = tempDir("tracelab-redis-");
  const auth = password ? ["--requirepass", password] : [];
  const proc = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "",
    "--appendonly", "no", "--dir", dir, "--protected-mode", "no", ...auth], { stdio: "ignore" });
  const url = `redis://${password ? `:${encodeURIComponent(password)}@` : ""}127.0.0.1:${port}/${db}`;
  const client = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
  client.on("error", () => {});
  const deadline = Date.now() + 10000;
  for (;;) {
    try {
      await client.connect();
      await client.ping();
      break;
    } catch (err) {
      if (Date.now() > deadline) throw new Error(`redis-server did not start on ${port}: ${err}`);
      client.disconnect();
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  let stopped = false;
  return {
    url, port, client,
    async stop() {
      if (stopped) return;
      stopped = true;
      client.disconnect();
      proc.kill("SIGKILL");
      await new Promise((r) => proc.once("exit", r));
      rmSync(dir, { recursive: true, force: true });
    },
    /** Every entry of the stream as [id, raw field/value Buffers]. */
    async rawEntries(stream = "trace.events") {
      return client.xrangeBuffer(stream, "-", "+");
    },
    /**
     * The events of the stream, parsed, in order, with the raw JSON text kept: the steps only
     * (the run's `kind: "run"` start/end events left out) unless `withRuns`.
     */
    async events(stream = "trace.events", { withRuns = false } = {}) {
      const entries = await client.xrange(stream, "-", "+");
      const all = entries.map(([, fields]) => {
        const i = fields.indexOf("event");
        return { raw: fields[i + 1], event: JSON.parse(fields[i + 1]), fields };
      });
      return withRuns ? all : all.filter((e) => e.event.kind !== "run");
    },
  };
}

/** A loopback HTTP server with a request handler; resolves with { url, port, close, requests }. */
export async function startHttp(handler) {
  const requests = [];
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      const body = Buffer.concat(chunks);
      requests.push({ method: req.method, url: req.url, headers: req.headers, body });
      handler(req, res, body);
    });
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  const { port } = server.address();
  return {
    port, url: `http://127.0.0.1:${port}`, requests,
    close: () => new Promise((r) => { server.closeAllConnections?.(); server.close(() => r()); }),
  };
}

/**
 * A throwaway "user project": node_modules/@tracelab/sdk links to this package (what
 * `npm install ./sdk-ts` makes) and the optional libraries the tests use link to our copies.
 */
export function userProject(extraModules = ["node-fetch", "@sendgrid/mail", "@sendgrid/client", "@sendgrid/helpers"]) {
  const dir = tempDir("tracelab-app-");
  mkdirSync(join(dir, "node_modules", "@tracelab"), { recursive: true });
  symlinkSync(SDK_DIR, join(dir, "node_modules", "@tracelab", "sdk"), "dir");
  for (const name of extraModules) {
    const target = join(SDK_DIR, "node_modules", name);
    const link = join(dir, "node_modules", name);
    mkdirSync(dirname(link), { recursive: true });
    if (existsSync(target) && !existsSync(link)) symlinkSync(target, link, "dir");
  }
  writeFileSync(join(dir, "package.json"), JSON.stringify({ name: "tracelab-test-app", private: true, type: "module" }));
  return dir;
}

/** Run `code` as a Node script file in `dir`; resolves with { code, stdout, stderr, ms }. */
export function runScript(dir, fileName, code, env = {}, timeoutMs = 30000) {
  const file = join(dir, fileName);
  writeFileSync(file, code);
  const started = Date.now();
  return new Promise((resolveRun, reject) => {
    const child = spawn(process.execPath, [file], {
      cwd: dir,
      env: { ...cleanEnv(), ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (c) => { stdout += c; });
    child.stderr.on("data", (c) => { stderr += c; });
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`script ${fileName} did not exit within ${timeoutMs} ms (kept alive?)\nstdout: ${stdout}\nstderr: ${stderr}`));
    }, timeoutMs);
    child.on("exit", (exitCode) => {
      clearTimeout(timer);
      resolveRun({ code: exitCode, stdout, stderr, ms: Date.now() - started });
    });
  });
}

/**
 * Start `code` as a Node script file in `dir` and resolve once it printed `ready` on stdout:
 * { child, exited } where `exited` resolves with { code, signal, stdout, stderr }.
 */
export function startScript(dir, fileName, code, env = {}, timeoutMs = 30000) {
  const file = join(dir, fileName);
  writeFileSync(file, code);
  const child = spawn(process.execPath, [file], { cwd: dir, env: { ...cleanEnv(), ...env }, stdio: ["ignore", "pipe", "pipe"] });
  let stdout = "";
  let stderr = "";
  child.stderr.on("data", (c) => { stderr += c; });
  const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
  const exited = new Promise((r) => child.on("exit", (code, signal) => {
    clearTimeout(timer);
    r({ code, signal, stdout, stderr });
  }));
  const ready = new Promise((resolveReady, reject) => {
    child.stdout.on("data", (c) => {
      stdout += c;
      if (stdout.includes("ready")) resolveReady({ child, exited });
    });
    exited.then((r) => reject(new Error(`${fileName} exited before it was ready: ${JSON.stringify(r)}`)));
  });
  return ready;
}

/** The environment without any TraceLab or proxy settings from outside the test. */
export function cleanEnv() {
  const env = { ...process.env };
  for (const key of Object.keys(env)) {
    if (key.startsWith("TRACELAB_") || /^(https?|all|no)_proxy$/i.test(key)) delete env[key];
  }
  env.NO_PROXY = "127.0.0.1,localhost";
  return env;
}

/**
 * Lines of every spool file under `home`, parsed, with file names: `events` holds the steps
 * (all of them with `withRuns`), `runs` the `kind: "run"` lifecycle events, `raw` every line.
 */
export function spoolEvents(home, { withRuns = false } = {}) {
  const dir = join(home, "spool");
  if (!existsSync(dir)) return { files: [], events: [], runs: [], raw: "" };
  const files = readdirSync(dir).sort();
  let raw = "";
  const events = [];
  for (const f of files) {
    const text = readFileSync(join(dir, f), "utf8");
    raw += text;
    for (const line of text.split("\n")) if (line) events.push({ raw: line, event: JSON.parse(line) });
  }
  const runs = events.filter((e) => e.event.kind === "run");
  return { files, events: withRuns ? events : events.filter((e) => e.event.kind !== "run"), runs, raw };
}

/**
 * ajv (draft 2020-12) compiled against spec/trace-event.schema.json. A missing schema (or ajv)
 * is an error, never a skip: a contract check that quietly does nothing is worse than none.
 */
export async function schemaValidator(path = join(SPEC_DIR, "trace-event.schema.json")) {
  if (!existsSync(path)) throw new Error(`the JSON Schema ${path} is missing: the contract cannot be checked`);
  const { default: Ajv2020 } = await import("ajv/dist/2020.js");
  const ajv = new Ajv2020({ allErrors: true, strict: false });
  return ajv.compile(JSON.parse(readFileSync(path, "utf8")));
}

/** Fails with ajv's messages when `event` does not validate (or there is no validator). */
export function assertValid(validate, event) {
  if (typeof validate !== "function") throw new Error("assertValid needs a compiled schema validator");
  if (!validate(event)) {
    throw new Error(`event does not validate: ${JSON.stringify(validate.errors)}\n${JSON.stringify(event).slice(0, 2000)}`);
  }
}

/** started_at as written in the JSON text, exactly (a float would lose the last digits). */
export function startedAtText(raw) {
  const m = /"started_at":(-?\d+)([,}])/.exec(raw);
  return m ? m[1] : null;
}

export function removeDir(dir) {
  rmSync(dir, { recursive: true, force: true });
}

export { spawnSync };
