// The shared LLM-fields corpus spec/llm/cases/ (also read by tests/test_llm_fields_spec.py): the
// TypeScript SDK must give the Python SDK's `llm.*` tags for every case (a missing or empty
// corpus fails: it never skips), and any cut of a stream into pieces gives the same tags.
import assert from "node:assert/strict";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { SDK_DIR, SPEC_DIR } from "./helpers.mjs";

const { llmTags } = await import(join(SDK_DIR, "dist/esm/capture.js"));
const { SSEScanner, MAX_EVENT_CHARS } = await import(join(SDK_DIR, "dist/esm/llm.js"));

const CASES_DIR = join(SPEC_DIR, "llm", "cases");

function loadCases() {
  if (!existsSync(CASES_DIR)) throw new Error(`the LLM corpus ${CASES_DIR} is missing`);
  const files = readdirSync(CASES_DIR).filter((f) => f.endsWith(".json")).sort();
  if (!files.length) throw new Error(`the LLM corpus ${CASES_DIR} holds no cases`);
  return files.map((f) => ({ file: f, ...JSON.parse(readFileSync(join(CASES_DIR, f), "utf8")) }));
}

const cases = loadCases();

describe("spec/llm corpus", () => {
  it("has cases, each named after its file", () => {
    assert.ok(cases.length >= 15, `only ${cases.length} cases`);
    for (const c of cases) assert.equal(`${c.name}.json`, c.file);
  });

  for (const c of cases) {
    it(`${c.name}: the expected llm.* tags`, () => {
      assert.deepEqual(llmTags(c.host, c.path, c.request, c.response ?? null, c.chunks ?? null), c.expected, c.description);
    });
  }

  for (const c of cases.filter((x) => x.chunks)) {
    it(`${c.name}: every cut of the stream gives the same tags`, () => {
      const text = c.chunks.map((p) => p.data).join("");
      const expected = { ...c.expected };
      delete expected["llm.ttft_ms"];
      for (const size of [1, 2, 3, 7, 16, 61, text.length]) {
        const pieces = [];
        for (let at = 0, i = 0; at < text.length; at += size, i++) pieces.push({ t: i, data: text.slice(at, at + size) });
        const got = llmTags(c.host, c.path, c.request, null, pieces);
        if ("llm.ttft_ms" in c.expected) assert.ok(Number(got["llm.ttft_ms"]) >= 0);
        delete got["llm.ttft_ms"];
        assert.deepEqual(got, expected, `pieces of ${size}`);
      }
    });
  }

  it("drops a stream that is not SSE, and an endless line", () => {
    const json = new SSEScanner();
    json.feed('{"a": 1}\n\n');
    json.feed("data: {}\n\n");
    assert.ok(json.dead);
    const endless = new SSEScanner();
    endless.feed("data: " + "x".repeat(MAX_EVENT_CHARS));
    endless.feed("\n\n");
    assert.ok(endless.dead);
    assert.equal(endless.events, 0);
  });
});
