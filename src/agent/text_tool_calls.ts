/**
 * Tool calls that a model wrote into its answer text instead of the `tool_calls` field (small
 * models, and LM Studio when it cannot parse the model's own format): `<tool_call>` tags,
 * fenced JSON, or a bare `{"name": …, "arguments": …}` object. Only calls naming an offered
 * tool count; everything else stays text.
 */
import { parseLenientJson } from "./json_repair.ts";
import { isRecord } from "../util/json.ts";

/** A call recognised in text; `arguments` is JSON text, as in the `tool_calls` field. */
export interface TextToolCall {
  name: string;
  arguments: string;
}

const MAX_SCAN = 200_000;
const TAGGED = /<tool_call>([\s\S]*?)(?:<\/tool_call>|$)/g;
const FENCED = /```[\w-]*[ \t]*\r?\n([\s\S]*?)```/g;

/**
 * Finds tool calls written in `text`. `isOffered` decides which names are tools; `rest` is
 * the text without the recognised calls.
 *
 * @example
 * extractTextToolCalls('Sure. {"name": "read_file", "arguments": {"path": "a"}}', (n) => n === "read_file");
 * // { calls: [{ name: "read_file", arguments: '{"path":"a"}' }], rest: "Sure." }
 */
export function extractTextToolCalls(
  text: string,
  isOffered: (name: string) => boolean,
): { calls: TextToolCall[]; rest: string } {
  if (text.length > MAX_SCAN || !/name/.test(text)) return { calls: [], rest: text };
  const spans: { start: number; end: number; calls: TextToolCall[] }[] = [];
  const covered = (start: number, end: number) => spans.some((s) => start < s.end && end > s.start);
  const take = (start: number, end: number, body: string): boolean => {
    if (covered(start, end)) return false;
    const calls = callsIn(body, isOffered);
    if (!calls.length) return false;
    spans.push({ start, end, calls });
    return true;
  };

  for (const m of text.matchAll(TAGGED)) take(m.index, m.index + m[0].length, m[1]);
  for (const m of text.matchAll(FENCED)) take(m.index, m.index + m[0].length, m[1]);
  for (const [start, end] of bracePairs(text)) take(start, end + 1, text.slice(start, end + 1));

  if (!spans.length) return { calls: [], rest: text };
  spans.sort((a, b) => a.start - b.start);
  let rest = "";
  let at = 0;
  for (const span of spans) {
    rest += text.slice(at, span.start);
    at = span.end;
  }
  rest += text.slice(at);
  return { calls: spans.flatMap((s) => s.calls), rest: rest.replace(/\n{3,}/g, "\n\n").trim() };
}

/** Calls in one JSON candidate: an object, or an array of objects, naming offered tools. */
function callsIn(body: string, isOffered: (name: string) => boolean): TextToolCall[] {
  const parsed = parseLenientJson(body);
  if (!parsed.ok) return [];
  const items = Array.isArray(parsed.value) ? parsed.value : [parsed.value];
  const calls: TextToolCall[] = [];
  for (const item of items) {
    const call = asCall(item);
    if (!call || !isOffered(call.name)) return [];
    calls.push(call);
  }
  return calls;
}

/** `{name, arguments|parameters|args|input}`, or the same inside `{function: …}`. */
function asCall(item: unknown): TextToolCall | undefined {
  if (!isRecord(item)) return undefined;
  const inner = isRecord(item.function) ? item.function : item;
  const name = inner.name ?? inner.tool ?? inner.tool_name;
  if (typeof name !== "string" || !name.trim()) return undefined;
  const keys = ["arguments", "parameters", "args", "input"];
  const key = keys.find((k) => inner[k] !== undefined);
  const value = key === undefined ? {} : inner[key];
  if (typeof value === "string") return { name: name.trim(), arguments: value };
  if (!isRecord(value)) return undefined;
  // Only the call's own keys: a plain data object that happens to have "name" is no call.
  const extra = Object.keys(inner).filter((k) =>
    !["name", "tool", "tool_name", "type", "id", ...keys].includes(k)
  );
  if (extra.length) return undefined;
  return { name: name.trim(), arguments: JSON.stringify(value) };
}

/**
 * Every balanced `{…}` pair, outermost first, in one pass. Double-quoted strings inside
 * braces are skipped; quotes in the prose around them are not strings.
 */
function bracePairs(text: string): [number, number][] {
  const pairs: [number, number][] = [];
  const open: number[] = [];
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (inString) {
      if (c === "\\") i++;
      else if (c === '"') inString = false;
    } else if (c === '"' && open.length) inString = true;
    else if (c === "{") open.push(i);
    else if (c === "}" && open.length) pairs.push([open.pop()!, i]);
  }
  return pairs.sort((a, b) => a[0] - b[0]);
}
