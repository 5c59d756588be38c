// The contract's pieces in isolation: redaction rules and marker, BODY markers, exact
// started_at serialization, and spec/examples passing and failing as labelled under ajv.
import assert from "node:assert/strict";
import { existsSync, readFileSync, readdirSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { describe, it } from "node:test";
import { Redactor, nameWords } from "../dist/esm/redaction.js";
import { encodeBody, toJsonable } from "../dist/esm/payloads.js";
import { serializeEvent, nowNs } from "../dist/esm/ids.js";
import { httpTarget } from "../dist/esm/capture.js";
import { SPEC_DIR, assertValid, schemaValidator } from "./helpers.mjs";

const r = new Redactor();

describe("redaction", () => {
  it("splits names into words at separators and camelCase", () => {
    assert.deepEqual(nameWords("X-Api-Key"), ["x", "api", "key"]);
    assert.deepEqual(nameWords("stripeToken"), ["stripe", "token"]);
    assert.deepEqual(nameWords("card[number]"), ["card", "number"]);
    assert.deepEqual(nameWords("APIKey"), ["api", "key"]);
  });

  it("judges names as the spec says", () => {
    for (const name of ["password", "access_token", "stripeToken", "card[number]", "X-Amz-Signature",
      "X-Amz-Credential", "client_secret", "api key", "apiKey", "Authorization", "set-cookie", "private.key"]) {
      assert.equal(r.isSecret(name), true, name);
    }
    for (const name of ["max_tokens", "total_tokens", "tokens", "model", "card", "key", "Content-Type"]) {
      assert.equal(r.isSecret(name), false, name);
    }
  });

  it("redacts headers, URLs, forms, JSON at any depth and free text with [REDACTED]", () => {
    assert.deepEqual(r.headers({ Authorization: "Bearer x", "X-Trace": "1" }), { Authorization: "[REDACTED]", "X-Trace": "1" });
    assert.deepEqual(r.headers([["Accept", "a"], ["Accept", "b"]]), { Accept: "a, b" });
    assert.equal(r.url("https://user:pw@host/p?a=1&access_token=t&X-Amz-Signature=s#f"),
      "https://user:[REDACTED]@host/p?a=1&access_token=[REDACTED]&X-Amz-Signature=[REDACTED]#f");
    assert.equal(r.form("card%5Bnumber%5D=4242&amount=5"), "card%5Bnumber%5D=[REDACTED]&amount=5");
    assert.deepEqual(r.value({ a: [{ deep: { password: "x", max_tokens: 5 } }] }),
      { a: [{ deep: { password: "[REDACTED]", max_tokens: 5 } }] });
    assert.equal(r.text('Authorization: Bearer abcdef123456 and "token": "zzz"'),
      'Authorization: Bearer [REDACTED] and "token": "[REDACTED]"');
  });

  it("adds user patterns, matched case-insensitively anywhere in a name", () => {
    const custom = new Redactor([/ssn/i, new RegExp("internal_id", "i")]);
    assert.deepEqual(custom.value({ customer_SSN: "1", Internal_ID_x: "2", name: "n" }),
      { customer_SSN: "[REDACTED]", Internal_ID_x: "[REDACTED]", name: "n" });
  });
});

describe("BODY", () => {
  const cap = 16;
  it("keeps JSON as JSON and text as text; empty is null", () => {
    assert.deepEqual(encodeBody('{"a":1,"secret":"s"}', "application/json", r, 64), { a: 1, secret: "[REDACTED]" });
    assert.equal(encodeBody("hello", "text/plain", r, cap), "hello");
    assert.equal(encodeBody("", "text/plain", r, cap), null);
    assert.equal(encodeBody(undefined, null, r, cap), null);
  });
  it("marks binary, truncated (with the original size) and not captured", () => {
    assert.deepEqual(encodeBody(new Uint8Array([0xff, 0xfe]), null, r, cap), { $tracelab: "binary", size: 2, base64: "//4=" });
    assert.deepEqual(encodeBody("x".repeat(20), "text/plain", r, cap),
      { $tracelab: "truncated", size: 20, encoding: "text", data: "x".repeat(16) });
    // a multi-byte character cut by the cap is dropped, not turned into binary
    const t = encodeBody("é".repeat(10), "text/plain", r, 5);
    assert.deepEqual(t, { $tracelab: "truncated", size: 20, encoding: "text", data: "éé" });
    assert.deepEqual(encodeBody(new ReadableStream(), null, r, cap).$tracelab, "not_captured");
  });
  it("redacts before truncating", () => {
    const body = encodeBody('{"password": "hunter2hunter2", "pad": "' + "y".repeat(100) + '"}', "application/json", r, 40);
    assert.equal(body.$tracelab, "truncated");
    assert.doesNotMatch(body.data, /hunter2/);
  });
  it("turns app values into JSON-safe data", () => {
    assert.deepEqual(toJsonable({ when: new Date(0), n: 1n, m: new Map([["token", "t"]]), f() {} }, r, 100),
      { when: "1970-01-01T00:00:00.000Z", n: "1", m: { token: "[REDACTED]" }, f: "[Function: f]" });
  });
});

describe("event serialization", () => {
  it("writes started_at as the exact integer, in place", () => {
    const text = serializeEvent({ a: 1, started_at: 1714557800550000123n, z: "started_at" });
    assert.equal(text, '{"a":1,"started_at":1714557800550000123,"z":"started_at"}');
  });
  it("has a nanosecond clock anchored to the wall clock", () => {
    const ns = nowNs();
    const ms = BigInt(Date.now());
    assert.ok(ns / 1000000n >= ms - 5n && ns / 1000000n <= ms + 5n);
  });
  it("names HTTP targets host[:port] without default ports", () => {
    assert.equal(httpTarget("https", "API.Stripe.com:443"), "api.stripe.com");
    assert.equal(httpTarget("http", "user:pw@127.0.0.1:8080"), "127.0.0.1:8080");
  });
});

describe("spec/examples under ajv (draft 2020-12)", () => {
  for (const label of ["valid", "invalid"]) {
    it(`${label} examples are ${label}`, async () => {
      const validate = await schemaValidator();
      const dir = join(SPEC_DIR, "examples", label);
      assert.ok(existsSync(dir), `${dir} is missing`);
      const files = readdirSync(dir).filter((f) => f.endsWith(".json"));
      assert.ok(files.length > 0, `no examples in ${dir}`);
      for (const f of files) {
        const ok = validate(JSON.parse(readFileSync(join(dir, f), "utf8")));
        assert.equal(ok, label === "valid", `${label}/${f}: ${JSON.stringify(validate.errors)}`);
      }
    });
  }

  it("fails loudly, never skips, when the schema is missing", async () => {
    await assert.rejects(schemaValidator(join(SPEC_DIR, "no-such-schema.json")), /is missing/);
    assert.throws(() => assertValid(null, {}), /validator/);
  });
});

describe("the CommonJS build", () => {
  it("loads with require() and exposes the same API", () => {
    const require = createRequire(import.meta.url);
    const sdk = require("../dist/cjs/index.js");
    for (const name of ["init", "trace", "traced", "registerHook", "flush", "shutdown", "stats"]) {
      assert.equal(typeof sdk[name], "function", name);
    }
  });
});
