import assert from "node:assert/strict";
import { coerceArguments, parseToolArguments } from "../src/agent/arguments.ts";

Deno.test("arguments parse leniently; empty means none; double-encoded JSON is unwrapped", () => {
  assert.deepEqual(parseToolArguments(""), { ok: true, args: {}, repaired: false });
  assert.deepEqual(parseToolArguments("null"), { ok: true, args: {}, repaired: false });
  assert.deepEqual(parseToolArguments("{path: 'x',}"), {
    ok: true,
    args: { path: "x" },
    repaired: true,
  });
  assert.deepEqual(parseToolArguments(JSON.stringify(JSON.stringify({ a: 1 }))), {
    ok: true,
    args: { a: 1 },
    repaired: true,
  });
});

Deno.test("arguments that are not an object, or not JSON, are refused with the reason", () => {
  const list = parseToolArguments("[1, 2]");
  assert.equal(list.ok, false);
  assert.match(!list.ok ? list.error : "", /a JSON object is needed, got an array/);
  const broken = parseToolArguments('{"a": 1 "b": 2}');
  assert.equal(broken.ok, false);
  assert.match(!broken.ok ? broken.error : "", /not valid JSON/);
});

const schema = {
  type: "object",
  properties: {
    count: { type: "integer" },
    ratio: { type: "number" },
    flag: { type: "boolean" },
    id: { type: "string" },
    label: { type: ["string", "null"] },
    free: {},
    level: { enum: [1, 2, 3] },
    tags: { type: "array", items: { type: "integer" } },
    options: { $ref: "#/$defs/options" },
    either: { anyOf: [{ type: "integer" }, { type: "null" }] },
  },
  $defs: { options: { type: "object", properties: { depth: { type: "integer" } } } },
};

Deno.test('"10" becomes 10 for an integer field and stays "10" for a string field', () => {
  assert.deepEqual(
    coerceArguments({
      count: "10",
      ratio: "0.5",
      flag: "true",
      id: "10",
      label: "true",
      free: "10",
      level: "2",
      tags: ["1", "2"],
      options: '{"depth": "3"}',
      either: "7",
    }, schema),
    {
      count: 10,
      ratio: 0.5,
      flag: true,
      id: "10",
      label: "true",
      free: "10",
      level: 2,
      tags: [1, 2],
      options: { depth: 3 },
      either: 7,
    },
  );
});

Deno.test("values that do not fit the declared type are left for the tool to refuse", () => {
  assert.deepEqual(
    coerceArguments({ count: "ten", ratio: "1.5.2", flag: "yes", id: 42, extra: "5" }, schema),
    { count: "ten", ratio: "1.5.2", flag: "yes", id: "42", extra: "5" },
  );
  assert.deepEqual(coerceArguments({ count: "1.5" }, schema), { count: "1.5" });
});
