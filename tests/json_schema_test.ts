import assert from "node:assert/strict";
import { checkJsonSchema } from "../src/server/tools_generate.ts";
import { BridgeError } from "../src/util/errors.ts";

/** Expects checkJsonSchema to refuse `schema` with invalid_request naming `path`. */
function assertRefused(schema: Record<string, unknown>, path: string | RegExp) {
  assert.throws(() => checkJsonSchema(schema), (err: unknown) => {
    assert.ok(err instanceof BridgeError, String(err));
    assert.equal(err.code, "invalid_request");
    assert.ok(err.message.startsWith("json_schema: "), err.message);
    if (typeof path === "string") {
      assert.ok(err.message.includes(path), `"${err.message}" names ${path}`);
    } else assert.match(err.message, path);
    assert.ok(err.hint, "has a hint");
    assert.match(err.format(), /^Error \[invalid_request\]: json_schema: /);
    return true;
  });
}

const PERSON = {
  type: "object",
  properties: {
    name: { type: "string" },
    age: { type: "integer" },
    tags: { type: "array", items: { type: "string" } },
    address: {
      type: "object",
      properties: { city: { type: ["string", "null"] } },
      required: ["city"],
    },
  },
  required: ["name", "age"],
  additionalProperties: false,
};

Deno.test("a good schema is wrapped as LM Studio expects", () => {
  assert.deepEqual(checkJsonSchema(PERSON), {
    type: "json_schema",
    json_schema: { name: "response", strict: true, schema: PERSON },
  });
});

Deno.test("the OpenAI wrapper {name, schema} is accepted and keeps its name", () => {
  const got = checkJsonSchema({ name: "person", strict: true, schema: PERSON });
  assert.deepEqual(got, {
    type: "json_schema",
    json_schema: { name: "person", strict: true, schema: PERSON },
  });
});

Deno.test("schemas of every JSON Schema type are accepted", () => {
  for (const type of ["object", "array", "string", "number", "integer", "boolean", "null"]) {
    const schema = { type };
    assert.deepEqual(checkJsonSchema(schema).json_schema, {
      name: "response",
      strict: true,
      schema,
    });
  }
});

Deno.test("a schema with only properties, or only anyOf, is accepted", () => {
  assert.equal(checkJsonSchema({ properties: { a: { type: "string" } } }).type, "json_schema");
  assert.equal(
    checkJsonSchema({ anyOf: [{ type: "string" }, { type: "number" }] }).type,
    "json_schema",
  );
});

Deno.test("a bad type name is invalid_request naming the path", () => {
  assertRefused({ type: "obj" }, 'schema.type "obj" is not a JSON Schema type');
  assertRefused(
    { type: "object", properties: { n: { type: "int" } } },
    'schema.properties.n.type "int"',
  );
  assertRefused({ type: ["string", "text"] }, 'schema.type "text"');
  assertRefused({ type: 3 }, "schema.type 3");
});

Deno.test("properties that are not an object is invalid_request naming the path", () => {
  assertRefused({ type: "object", properties: "name" }, "schema.properties must be an object");
  assertRefused({ type: "object", properties: null }, "schema.properties must be an object");
  assertRefused({ type: "object", properties: ["name"] }, "schema.properties must be an object");
  assertRefused(
    { type: "object", properties: { a: { type: "object", properties: 5 } } },
    "schema.properties.a.properties must be an object",
  );
});

Deno.test("a property that is not a schema object is invalid_request naming it", () => {
  assertRefused(
    { type: "object", properties: { a: "string" } },
    "schema.properties.a must be a schema object",
  );
});

Deno.test("required that is not a list of names is invalid_request naming the path", () => {
  assertRefused({ type: "object", required: "name" }, "schema.required must be a list");
  assertRefused({ type: "object", required: [1] }, "schema.required must be a list");
  assertRefused(
    { type: "object", properties: { a: { type: "object", required: true } } },
    "schema.properties.a.required must be a list",
  );
});

Deno.test("array items are checked too", () => {
  assertRefused({ type: "array", items: { type: "str" } }, 'schema.items.type "str"');
});

Deno.test("a schema nested too deep is invalid_request naming the path", () => {
  let schema: Record<string, unknown> = { type: "string" };
  for (let i = 0; i < 40; i++) schema = { type: "object", properties: { a: schema } };
  assertRefused(schema, /nested deeper than 32 levels at schema(\.properties\.a)+/);
});

Deno.test("a schema nested 32 levels deep is still accepted", () => {
  let schema: Record<string, unknown> = { type: "string" };
  for (let i = 0; i < 32; i++) schema = { type: "object", properties: { a: schema } };
  assert.equal(checkJsonSchema(schema).type, "json_schema");
});

Deno.test("an empty schema is invalid_request", () => {
  assertRefused({}, "has no type or properties");
  assertRefused({ description: "anything" }, "has no type or properties");
});
