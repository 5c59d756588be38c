// The shared matching corpus spec/matching/: the TypeScript key must equal the Python one byte
// for byte, for every case (a missing or empty corpus fails: it never skips).
import assert from "node:assert/strict";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { SDK_DIR, SPEC_DIR } from "./helpers.mjs";

const { parseIgnore, requestKey } = await import(join(SDK_DIR, "dist/esm/replay/matching.js"));
const { Matcher } = await import(join(SDK_DIR, "dist/esm/replay/matcher.js"));
const { httpRequestView } = await import(join(SDK_DIR, "dist/esm/capture.js"));
const { Redactor } = await import(join(SDK_DIR, "dist/esm/redaction.js"));

const CASES_DIR = join(SPEC_DIR, "matching", "cases");

function loadCases() {
  if (!existsSync(CASES_DIR)) throw new Error(`the matching corpus ${CASES_DIR} is missing`);
  const files = readdirSync(CASES_DIR).filter((f) => f.endsWith(".json")).sort();
  if (!files.length) throw new Error(`the matching corpus ${CASES_DIR} holds no cases`);
  return files.map((f) => ({ file: f, ...JSON.parse(readFileSync(join(CASES_DIR, f), "utf8")) }));
}

const cases = loadCases();
// What the SDK uses to store a live request: the default rules and the default cap.
const recorder = { config: { capturePayloads: true, maxBodyBytes: 65536 }, redactor: new Redactor() };

function optionsOf(c) {
  return { ignore: c.options?.ignore ?? [], headers: c.options?.headers ?? [] };
}

describe("spec/matching corpus", () => {
  it("has cases, each named after its file", () => {
    assert.ok(cases.length >= 10, `only ${cases.length} cases`);
    for (const c of cases) assert.equal(`${c.name}.json`, c.file);
  });

  for (const c of cases) {
    it(`${c.name}: key, same, different, live`, () => {
      const options = optionsOf(c);
      assert.equal(requestKey(c.event, options), c.key, c.description);
      for (const [i, other] of (c.same ?? []).entries()) {
        assert.equal(requestKey(other, options), c.key, `same[${i}]`);
      }
      for (const [i, other] of (c.different ?? []).entries()) {
        assert.notEqual(requestKey(other, options), c.key, `different[${i}]`);
      }
      for (const [i, live] of (c.live ?? []).entries()) {
        const view = httpRequestView(recorder, {
          origin: "corpus", method: live.method, url: live.url, requestHeaders: live.headers ?? null,
          requestBody: live.body ?? null, startedAt: 0n, latencyMs: 0,
        });
        assert.equal(requestKey({ kind: "http", target: c.event.target, endpoint: c.event.endpoint, request: view.request }, options),
          c.key, `live[${i}] stored as ${JSON.stringify(view.request)}`);
      }
    });
  }

  it("the matcher answers each case's `same` calls from its event and misses its `different` ones", () => {
    for (const c of cases) {
      const options = optionsOf(c);
      for (const other of c.same ?? []) {
        const matcher = new Matcher([{ ...c.event, event_id: "recorded" }], options);
        assert.equal(matcher.take(other).hit, true, c.name);
        const again = matcher.take(other);
        assert.equal(again.hit, false, `${c.name}: a second call is a miss`);
        assert.match(again.message, /was recorded once and every recorded answer is used/);
      }
      for (const other of c.different ?? []) {
        const miss = new Matcher([{ ...c.event, event_id: "recorded" }], options).take(other);
        assert.equal(miss.hit, false, c.name);
        assert.match(miss.message, /closest recorded call: event recorded /, c.name);
        assert.ok(miss.differences.length > 0, `${c.name}: ${miss.message}`);
      }
    }
  });

  it("accepts and normalises the valid ignore rules, rejects the invalid ones quoting them", () => {
    const path = join(SPEC_DIR, "matching", "ignore-rules.json");
    const rules = JSON.parse(readFileSync(path, "utf8"));
    assert.ok(rules.valid.length && rules.invalid.length);
    for (const { rule, normal } of rules.valid) assert.equal(parseIgnore(rule), normal, rule);
    for (const rule of rules.invalid) {
      assert.throws(() => parseIgnore(rule), (err) => err.message.includes(JSON.stringify(rule)), rule);
    }
  });
});
