/**
 * A tool call's arguments as the downstream tool should receive them: parsed leniently from
 * the model's text, then coerced only where the tool's JSON schema says what the value must
 * be ("10" → 10 for an integer field, never for a string field).
 */
import { parseLenientJson } from "./json_repair.ts";
import { isRecord } from "../util/json.ts";

/** The outcome of {@link parseToolArguments}. */
export type ParsedArguments =
  | { ok: true; args: Record<string, unknown>; repaired: boolean }
  | { ok: false; error: string };

/**
 * Parses the `arguments` string of a tool call into an object. Empty or `null` means no
 * arguments; JSON encoded twice (a string holding the object) is unwrapped.
 *
 * @example
 * parseToolArguments("{path: 'notes.txt',}"); // { ok: true, args: { path: "notes.txt" }, repaired: true }
 */
export function parseToolArguments(raw: string | undefined | null): ParsedArguments {
  if (raw === undefined || raw === null || raw.trim() === "") {
    return { ok: true, args: {}, repaired: false };
  }
  let parsed = parseLenientJson(raw);
  if (!parsed.ok) return { ok: false, error: `not valid JSON (${parsed.error})` };
  let repaired = parsed.repaired;
  if (typeof parsed.value === "string" && /^\s*[{[]/.test(parsed.value)) {
    parsed = parseLenientJson(parsed.value);
    if (!parsed.ok) return { ok: false, error: `not valid JSON (${parsed.error})` };
    repaired = true;
  }
  if (parsed.value === null) return { ok: true, args: {}, repaired };
  if (!isRecord(parsed.value)) {
    return { ok: false, error: `a JSON object is needed, got ${describe(parsed.value)}` };
  }
  return { ok: true, args: parsed.value, repaired };
}

/**
 * Coerces argument values to the types the tool's input schema declares: numeric strings for
 * `integer` / `number`, "true" / "false" for `boolean`, a JSON string for an `array` or
 * `object` field, and a number or boolean for a `string` field. A field that accepts strings
 * keeps its string; a field without a declared type is left alone. Nested objects and array
 * items follow their own schemas; `$ref`, `anyOf` and `oneOf` are understood.
 *
 * @example
 * coerceArguments({ n: "10", id: "10" }, {
 *   type: "object",
 *   properties: { n: { type: "integer" }, id: { type: "string" } },
 * }); // { n: 10, id: "10" }
 */
export function coerceArguments(
  args: Record<string, unknown>,
  schema: Record<string, unknown>,
): Record<string, unknown> {
  const value = coerce(args, schema, schema, 0);
  return isRecord(value) ? value : args;
}

const NUMBER = /^\s*-?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$/;
const MAX_DEPTH = 32;

function coerce(value: unknown, schemaNode: unknown, root: unknown, depth: number): unknown {
  const schema = resolve(schemaNode, root);
  if (!schema || depth > MAX_DEPTH) return value;
  const types = typesOf(schema, root);
  if (typeof value === "string") {
    if (types.size === 0 || types.has("string")) return value;
    if ((types.has("integer") || types.has("number")) && NUMBER.test(value)) {
      const n = Number(value);
      if (types.has("number") || Number.isInteger(n)) return n;
    }
    const word = value.trim().toLowerCase();
    if (types.has("boolean") && (word === "true" || word === "false")) return word === "true";
    if (types.has("null") && word === "null") return null;
    if ((types.has("array") || types.has("object")) && /^\s*[{[]/.test(value)) {
      const parsed = parseLenientJson(value);
      if (
        parsed.ok &&
        ((Array.isArray(parsed.value) && types.has("array")) ||
          (isRecord(parsed.value) && types.has("object")))
      ) {
        return coerce(parsed.value, schema, root, depth + 1);
      }
    }
    return value;
  }
  if ((typeof value === "number" || typeof value === "boolean") && types.size > 0) {
    if (types.has(typeof value) || (typeof value === "number" && types.has("integer"))) {
      return value;
    }
    if (types.has("string")) return String(value);
    return value;
  }
  if (Array.isArray(value)) {
    const items = branch(schema, root, "items");
    return items === undefined ? value : value.map((v) => coerce(v, items, root, depth + 1));
  }
  if (isRecord(value)) {
    const properties = branch(schema, root, "properties");
    if (!isRecord(properties)) return value;
    const out: Record<string, unknown> = {};
    for (const [key, v] of Object.entries(value)) {
      out[key] = key in properties ? coerce(v, properties[key], root, depth + 1) : v;
    }
    return out;
  }
  return value;
}

/** The schema node behind a local `$ref` (`#/$defs/x`, `#/definitions/x`). */
function resolve(node: unknown, root: unknown): Record<string, unknown> | undefined {
  let current = node;
  for (let hops = 0; hops < 8 && isRecord(current) && typeof current.$ref === "string"; hops++) {
    const ref = current.$ref;
    if (!ref.startsWith("#")) return undefined;
    current = ref.replace(/^#\/?/, "").split("/").filter(Boolean)
      .map((part) => part.replaceAll("~1", "/").replaceAll("~0", "~"))
      .reduce<unknown>((n, key) => (isRecord(n) ? n[key] : undefined), root);
  }
  return isRecord(current) ? current : undefined;
}

/** Every type a node allows, through `type`, `anyOf`, `oneOf` and `allOf`. */
function typesOf(schema: Record<string, unknown>, root: unknown, depth = 0): Set<string> {
  const types = new Set<string>();
  if (depth > 8) return types;
  const type = schema.type;
  if (typeof type === "string") types.add(type);
  else if (Array.isArray(type)) { for (const t of type) if (typeof t === "string") types.add(t); }
  if (types.size === 0) {
    if (isRecord(schema.properties)) types.add("object");
    if (schema.items !== undefined) types.add("array");
    if (Array.isArray(schema.enum)) { for (const e of schema.enum) types.add(jsonType(e)); }
    if ("const" in schema) types.add(jsonType(schema.const));
  }
  for (const key of ["anyOf", "oneOf", "allOf"]) {
    const options = schema[key];
    if (!Array.isArray(options)) continue;
    for (const option of options) {
      const resolved = resolve(option, root);
      if (resolved) { for (const t of typesOf(resolved, root, depth + 1)) types.add(t); }
    }
  }
  return types;
}

/** `properties` or `items` of a node, looking into its `anyOf` / `oneOf` / `allOf` branches. */
function branch(schema: Record<string, unknown>, root: unknown, key: string): unknown {
  if (schema[key] !== undefined) return schema[key];
  for (const combinator of ["anyOf", "oneOf", "allOf"]) {
    const options = schema[combinator];
    if (!Array.isArray(options)) continue;
    for (const option of options) {
      const found = resolve(option, root)?.[key];
      if (found !== undefined) return found;
    }
  }
  return undefined;
}

function jsonType(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "array";
  return typeof value;
}

function describe(value: unknown): string {
  const type = jsonType(value);
  return type === "array" ? "an array" : `a ${type}`;
}
