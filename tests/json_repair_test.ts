import assert from "node:assert/strict";
import { parseLenientJson } from "../src/agent/json_repair.ts";

function repaired(text: string): unknown {
  const result = parseLenientJson(text);
  assert.ok(result.ok, `expected ${text} to parse: ${!result.ok && result.error}`);
  return result.value;
}

Deno.test("valid JSON parses as is, unrepaired", () => {
  assert.deepEqual(parseLenientJson('{"a": [1, "x"]}'), {
    ok: true,
    value: { a: [1, "x"] },
    repaired: false,
  });
});

Deno.test("unambiguous slips of small models are repaired", () => {
  assert.deepEqual(repaired('{"path": "a.txt", "n": 2,}'), { path: "a.txt", n: 2 });
  assert.deepEqual(repaired("{'path': 'it\\'s \"here\"'}"), { path: `it's "here"` });
  assert.deepEqual(repaired("{path: 'a', nested: {deep_key: [1, 2,],}}"), {
    path: "a",
    nested: { deep_key: [1, 2] },
  });
  assert.deepEqual(repaired('```json\n{"a": 1}\n```'), { a: 1 });
  assert.deepEqual(repaired('{"a": {"b": [1, 2'), { a: { b: [1, 2] } });
  assert.deepEqual(repaired('{"ok": True, "v": None}'), { ok: true, v: null });
  assert.deepEqual(repaired('{"text": "line one\nline two"}'), { text: "line one\nline two" });
});

Deno.test("ambiguous text stays an error naming the JSON problem", () => {
  for (
    const text of ['{"a": 1 "b": 2}', '{"a": "unterminated', "{a: hello}", '{"a": }', "[1, 2}"]
  ) {
    const result = parseLenientJson(text);
    assert.equal(result.ok, false, text);
  }
});
