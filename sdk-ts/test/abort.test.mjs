// Every call ends in exactly one event, however it ends (issue 18): aborted by
// AbortSignal.timeout() or a manual AbortController (before the answer and mid-body), a socket
// hung up or destroyed mid-body, a response read after setEncoding("utf8"), the process exiting
// mid-call, flush() mid-call — for node-fetch, global fetch and @sendgrid/mail. The app must see
// exactly what it sees without the SDK: each script runs twice, traced and untraced, and the
// outcomes are compared. Loopback servers only; a timeout is a server that never answers.
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { removeDir, runScript, schemaValidator, assertValid, spoolEvents, startHttp, startRedis, tempDir, userProject } from "./helpers.mjs";

const TEXT = "héllo wörld ✓ ".repeat(400); // multi-byte characters across chunk boundaries
const TIMEOUT_MS = 150;

/** What a case ended with, as the app sees it (no timings). */
const OUTCOME = `
export function outcome(value, err) {
  if (err === undefined) return { ok: true, value };
  return {
    ok: false, name: err?.name, ctor: err?.constructor?.name, message: err?.message, code: err?.code ?? null,
    type: err?.type ?? null, cause: err?.cause ? { name: err.cause.name, message: err.cause.message, code: err.cause.code ?? null } : null,
  };
}
export async function timed(name, out, fn) {
  const t0 = performance.now();
  try {
    out[name] = outcome(await fn());
  } catch (err) {
    out[name] = outcome(undefined, err);
  }
  out[name].ms = performance.now() - t0;
}
`;

const CALLS = `
import http from "node:http";
import nodeFetch from "node-fetch";
import { init, stats } from "@tracelab/sdk";
import { timed } from "./outcome.mjs";
const base = process.env.TEST_HTTP;
const traced = process.env.TEST_TRACE === "1";
if (traced) init({ workflowName: "ts-abort", serviceName: "aborter" });
// An instrumentation of the app's own, installed after init, that reads one response as text.
const request = http.request;
http.request = function (...args) {
  const req = request.apply(this, args);
  if (String(args[0]).includes("case=nf-encoding")) req.on("response", (res) => res.setEncoding("utf8"));
  return req;
};
const later = (ms, fn) => setTimeout(fn, ms);
const out = {};
await timed("nf-timeout", out, () => nodeFetch(base + "/hang?case=nf-timeout", { signal: AbortSignal.timeout(${TIMEOUT_MS}) }));
await timed("nf-abort", out, () => {
  const ac = new AbortController();
  later(100, () => ac.abort());
  return nodeFetch(base + "/hang?case=nf-abort", { signal: ac.signal });
});
await timed("nf-abort-body", out, async () => {
  const ac = new AbortController();
  const res = await nodeFetch(base + "/slow-body?case=nf-abort-body", { signal: ac.signal });
  later(100, () => ac.abort());
  return [res.status, await res.text()];
});
await timed("nf-destroyed", out, async () => {
  const res = await nodeFetch(base + "/partial?case=nf-destroyed");
  return [res.status, await res.text()];
});
await timed("nf-hangup", out, () => nodeFetch(base + "/hangup?case=nf-hangup"));
await timed("nf-encoding", out, async () => (await nodeFetch(base + "/text?case=nf-encoding")).text());
await timed("nf-redirect", out, async () => (await nodeFetch(base + "/redirect?case=nf-redirect")).text());
await timed("f-timeout", out, () => fetch(base + "/hang?case=f-timeout", { signal: AbortSignal.timeout(${TIMEOUT_MS}) }));
await timed("f-abort", out, () => {
  const ac = new AbortController();
  later(100, () => ac.abort());
  return fetch(base + "/hang?case=f-abort", { signal: ac.signal });
});
await timed("f-abort-body", out, async () => {
  const ac = new AbortController();
  const res = await fetch(base + "/slow-body?case=f-abort-body", { signal: ac.signal });
  later(100, () => ac.abort());
  return [res.status, await res.text()];
});
await timed("f-destroyed", out, async () => {
  const res = await fetch(base + "/partial?case=f-destroyed");
  return [res.status, await res.text()];
});
await timed("f-hangup", out, () => fetch(base + "/hangup?case=f-hangup"));
if (traced) out.stats = stats();
console.log(JSON.stringify(out));
`;

const MAIL = `
import sgMail from "@sendgrid/mail";
import { init, stats } from "@tracelab/sdk";
import { timed } from "./outcome.mjs";
if (process.env.TEST_TRACE === "1") init({ workflowName: "ts-abort-mail", serviceName: "mailer" });
sgMail.setApiKey("SG.test-key");
sgMail.client.setDefaultRequest("baseUrl", process.env.TEST_HTTP + "/" + process.env.TEST_PATH);
sgMail.client.setDefaultRequest("timeout", ${TIMEOUT_MS});
const mail = (subject) => ({ to: "a@example.com", from: "bot@example.com", subject, text: "hi" });
const out = {};
await timed("timeout", out, () => sgMail.send(mail("timeout")));
// callback style: the callback gets the error; the promise resolves to the callback's value
await timed("callback", out, () => new Promise((resolve) => {
  sgMail.send(mail("callback"), false, async (err, result) => {
    // the app's own call from the callback is the app's, recorded as usual
    const after = await (await fetch(process.env.TEST_HTTP + "/text?case=after-callback")).text();
    resolve({ err: err?.message ?? null, result: result?.[0]?.statusCode ?? null, after: after.length });
  });
}));
if (process.env.TEST_TRACE === "1") out.stats = stats();
console.log(JSON.stringify(out));
`;

const EXIT = `
import nodeFetch from "node-fetch";
import sgMail from "@sendgrid/mail";
import { init, flush } from "@tracelab/sdk";
const base = process.env.TEST_HTTP;
init({ workflowName: "ts-abort-exit", serviceName: "exiter" });
sgMail.setApiKey("SG.test-key");
sgMail.client.setDefaultRequest("baseUrl", base + "/hang");
nodeFetch(base + "/hang?case=nf-exit");
fetch(base + "/hang?case=f-exit");
sgMail.send({ to: "a@example.com", from: "bot@example.com", subject: "exit", text: "hi" });
if (process.env.TEST_FLUSH === "1") {
  // flush() mid-call records the calls as not finished; their later answers add nothing
  const answered = Promise.all([nodeFetch(base + "/late?case=nf-flush").then((r) => r.text()),
    fetch(base + "/late?case=f-flush").then((r) => r.text())]);
  // aborted in the same tick as flush(): recorded as the abort, not as not finished
  const ac = new AbortController();
  const aborted = Promise.all([nodeFetch(base + "/hang?case=nf-aborted", { signal: ac.signal }),
    fetch(base + "/hang?case=f-aborted", { signal: ac.signal })].map((p) => p.catch((e) => e.name)));
  setTimeout(async () => {
    ac.abort();
    await flush();
    console.log(JSON.stringify({ answered: await answered, aborted: await aborted }));
    process.exit(3);
  }, 100);
} else {
  setTimeout(() => process.exit(3), 200);
}
`;

function caseOf(event) {
  const url = event.request?.url ?? "";
  return /[?&]case=([\w-]+)/.exec(url)?.[1] ?? event.request?.subject ?? null;
}

/**
 * Events of the run by case name, failing on any case with more than one. Counted by event id:
 * an entry delivered twice (an XADD in flight when the process exits, sent again by the exit
 * write) is one event to the store, which dedupes by id; a call recorded twice has two ids.
 */
function byCase(events) {
  const found = {};
  for (const event of events) {
    const name = caseOf(event);
    assert.ok(name, `an event without a case: ${JSON.stringify(event).slice(0, 300)}`);
    if (found[name]?.event_id === event.event_id) continue;
    assert.equal(found[name], undefined, `two events for ${name}`);
    found[name] = event;
  }
  return found;
}

const withoutMs = (out) => Object.fromEntries(Object.entries(out).filter(([k]) => k !== "stats")
  .map(([k, v]) => [k, { ...v, ms: undefined }]));

describe("aborted, cut and unfinished calls", () => {
  let server, dir, validate;

  before(async () => {
    server = await startHttp((req, res) => {
      const path = req.url.split("?")[0];
      if (path === "/hangup") return req.socket.destroy();
      if (path.startsWith("/hang")) return; // never answers (a timeout)
      if (path === "/late") return setTimeout(() => res.end("late answer"), 400);
      if (path === "/redirect") {
        res.writeHead(302, { location: "/text?case=nf-redirect-target" });
        return res.end("moved");
      }
      const partial = path.startsWith("/partial");
      res.writeHead(200, { "content-type": "text/plain; charset=utf-8", ...(partial ? { "content-length": "100000" } : {}) });
      if (path === "/text") return res.end(TEXT);
      res.write("first piece of the body ");
      if (partial) setTimeout(() => req.socket.destroy(), 50); // destroyed mid-body
      // /slow-body: the rest never comes
    });
    dir = userProject();
    writeFileSync(join(dir, "outcome.mjs"), OUTCOME);
    validate = await schemaValidator();
  });

  after(async () => {
    await server?.close();
    if (dir) removeDir(dir);
  });

  /** Run `code` traced (spool in a fresh home) and untraced; both outcomes and the traced events. */
  async function runBoth(name, code, env = {}) {
    const home = tempDir("tracelab-home-");
    try {
      const traced = await runScript(dir, `${name}.mjs`, code, { ...env, TEST_TRACE: "1", TEST_HTTP: server.url, TRACELAB_HOME: home });
      const plain = await runScript(dir, `${name}-plain.mjs`, code, { ...env, TEST_TRACE: "0", TEST_HTTP: server.url, TRACELAB_HOME: home });
      assert.equal(traced.code, 0, traced.stderr);
      assert.equal(plain.code, 0, plain.stderr);
      assert.equal(traced.stderr, plain.stderr);
      const out = JSON.parse(traced.stdout.trim());
      return { out, plain: JSON.parse(plain.stdout.trim()), events: spoolEvents(home).events.map((e) => e.event) };
    } finally {
      removeDir(home);
    }
  }

  describe("node-fetch and global fetch", () => {
    let out, plain, events, cases;
    before(async () => {
      ({ out, plain, events } = await runBoth("calls", CALLS));
      cases = byCase(events);
    });

    it("gives the app exactly what it gets without the SDK", () => {
      assert.deepEqual(withoutMs(out), withoutMs(plain));
      assert.equal(out["nf-timeout"].name, "AbortError");
      assert.equal(out["f-timeout"].name, "TimeoutError");
      assert.equal(out["f-abort"].name, "AbortError");
      assert.deepEqual(out["nf-encoding"].value, TEXT);
      assert.equal(out.stats.errors, 0, JSON.stringify(out.stats));
    });

    it("records one event per call, each valid", () => {
      const expected = Object.keys(out).filter((k) => k !== "stats").concat("nf-redirect-target").sort();
      assert.deepEqual(Object.keys(cases).sort(), expected);
      for (const e of events) assertValid(validate, e);
    });

    it("records an abort before the answer as AbortError/TimeoutError, timed to the abort", () => {
      const want = {
        "nf-timeout": ["AbortError", "The operation was aborted."],
        "nf-abort": ["AbortError", "The operation was aborted."],
        "f-timeout": ["TimeoutError", "The operation was aborted due to timeout"],
        "f-abort": ["AbortError", "This operation was aborted"],
      };
      for (const [name, [type, message]] of Object.entries(want)) {
        const e = cases[name];
        assert.equal(e.status, "error", name);
        assert.deepEqual(e.error, { type, message }, name);
        assert.equal(e.status_code, null, name);
        assert.equal(e.response, null, name);
        // the latency ends at the abort: not before it, and not later than the app saw it
        assert.ok(e.latency_ms >= (name.endsWith("timeout") ? TIMEOUT_MS : 100) * 0.5, `${name}: ${e.latency_ms}`);
        assert.ok(e.latency_ms <= out[name].ms + 1, `${name}: ${e.latency_ms} > ${out[name].ms}`);
      }
    });

    it("records an abort mid-body as an error with the status and the body read so far", () => {
      for (const name of ["nf-abort-body", "f-abort-body"]) {
        const e = cases[name];
        assert.equal(e.status, "error", name);
        assert.equal(e.error.type, "AbortError", name);
        assert.equal(e.status_code, 200, name);
        assert.equal(e.response.body.$tracelab, "truncated", name);
        assert.match(e.response.body.data, /^first piece of the body/, name);
      }
    });

    it("records a socket destroyed mid-body or hung up as an error", () => {
      const nf = cases["nf-destroyed"];
      assert.equal(nf.status, "error");
      assert.equal(nf.status_code, 200);
      assert.deepEqual(nf.error, { type: "Error", message: "aborted" });
      const f = cases["f-destroyed"];
      assert.equal(f.status, "error");
      assert.equal(f.status_code, 200);
      assert.equal(f.error.type, "TypeError");
      assert.match(f.error.message, /^terminated/);
      assert.deepEqual(cases["nf-hangup"].error, { type: "Error", message: "socket hang up" });
      assert.equal(cases["f-hangup"].error.type, "TypeError");
      assert.match(cases["f-hangup"].error.message, /^fetch failed/);
    });

    it("reads string chunks (setEncoding) like Buffer chunks", () => {
      const e = cases["nf-encoding"];
      assert.equal(e.status, "ok");
      assert.equal(e.response.body, TEXT);
    });

    it("keeps a followed redirect as two answers, not an abort", () => {
      assert.equal(cases["nf-redirect"].status_code, 302);
      assert.equal(cases["nf-redirect"].error, null);
      assert.equal(cases["nf-redirect-target"].status, "ok");
    });
  });

  describe("@sendgrid/mail", () => {
    it("records a timed-out send and a callback-style send once each, as the app sees them", async () => {
      const { out, plain, events } = await runBoth("mail", MAIL, { TEST_PATH: "hang" });
      assert.deepEqual(withoutMs(out), withoutMs(plain));
      assert.equal(out.timeout.name, "AxiosError");
      assert.equal(out.stats.errors, 0, JSON.stringify(out.stats));
      const cases = byCase(events);
      assert.deepEqual(Object.keys(cases).sort(), ["after-callback", "callback", "timeout"]);
      assert.equal(cases["after-callback"].status, "ok");
      for (const name of ["timeout", "callback"]) {
        assert.equal(cases[name].status, "error", name);
        assert.deepEqual(cases[name].error, { type: "AxiosError", message: `timeout of ${TIMEOUT_MS}ms exceeded` }, name);
        assertValid(validate, cases[name]);
      }
    });

    it("records a send whose socket is destroyed mid-body as an error", async () => {
      const { out, plain, events } = await runBoth("mail-cut", MAIL, { TEST_PATH: "partial" });
      assert.deepEqual(withoutMs(out), withoutMs(plain));
      const cases = byCase(events);
      assert.deepEqual(Object.keys(cases).sort(), ["after-callback", "callback", "timeout"]);
      assert.equal(cases.timeout.status, "error");
      assert.equal(cases.timeout.error.type, out.timeout.ctor);
      assert.equal(cases.callback.status, "error");
    });
  });

  describe("the process ending mid-call", () => {
    let redis;
    before(async () => { redis = await startRedis(); });
    after(async () => { await redis?.stop(); });

    const runs = [["process.exit()", "spool", {}], ["flush()", "spool", { TEST_FLUSH: "1" }],
      ["process.exit()", "redis", {}]];
    for (const [how, sink, env] of runs) {
      it(`records each call still going at ${how} once, as not finished (${sink})`, async () => {
        const home = tempDir("tracelab-home-");
        // Redis: a long flush interval, so the events are those the exit itself writes
        const stream = `abort.exit.${process.pid}.${Date.now()}`;
        const sinkEnv = sink === "redis" ? { TRACELAB_REDIS_URL: redis.url, TRACELAB_STREAM: stream, TRACELAB_FLUSH_INTERVAL: "30" } : {};
        try {
          const run = await runScript(dir, "exit.mjs", EXIT, { ...env, ...sinkEnv, TEST_HTTP: server.url, TRACELAB_HOME: home });
          assert.equal(run.code, 3, run.stderr);
          assert.equal(run.stderr, "");
          if (env.TEST_FLUSH) {
            assert.deepEqual(JSON.parse(run.stdout), { answered: ["late answer", "late answer"], aborted: ["AbortError", "AbortError"] });
          }
          const events = sink === "redis" ? (await redis.events(stream)).map((e) => e.event)
            : spoolEvents(home).events.map((e) => e.event);
          const cases = byCase(events);
          const names = ["exit", "f-exit", "nf-exit", ...(env.TEST_FLUSH ? ["f-flush", "nf-flush"] : [])].sort();
          const aborted = env.TEST_FLUSH ? ["f-aborted", "nf-aborted"] : [];
          assert.deepEqual(Object.keys(cases).sort(), [...names, ...aborted].sort());
          for (const name of aborted) {
            assert.equal(cases[name].status, "error", name);
            assert.equal(cases[name].error.type, "AbortError", name);
          }
          for (const name of names) {
            const e = cases[name];
            assert.equal(e.status, "error", name);
            assert.equal(e.error.type, "NotFinished", name);
            assert.equal(e.error.message, `the call was still in flight at ${how === "flush()" ? "flush()" : "process exit"}: recorded as not finished`);
            assert.equal(e.response, null, name);
            assertValid(validate, e);
          }
          assert.equal(cases.exit.kind, "email");
        } finally {
          removeDir(home);
        }
      });
    }
  });
});
