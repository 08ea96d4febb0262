/**
 * Lenient JSON for what small models write: strict JSON first, then a repair of the slips
 * that have one obvious meaning (code fences, trailing commas, single quotes, unquoted keys,
 * Python literals, raw newlines in strings, missing closing brackets). Anything else stays an
 * error, so the model is asked again instead of a guess being executed.
 */

/** The outcome of {@link parseLenientJson}. */
export type LenientJson =
  | { ok: true; value: unknown; repaired: boolean }
  | { ok: false; error: string };

const FENCE = /^```[\w-]*[ \t]*\r?\n?([\s\S]*?)\r?\n?[ \t]*```$/;
const LITERALS: Record<string, string> = {
  true: "true",
  false: "false",
  null: "null",
  True: "true",
  False: "false",
  None: "null",
};

/**
 * Parses `text` as JSON, repairing it when the repair is unambiguous.
 *
 * @example
 * parseLenientJson("{path: 'a.txt', mode: 'w',}"); // { ok: true, value: { path: "a.txt", mode: "w" }, repaired: true }
 * parseLenientJson('{"a": 1 "b": 2}'); // { ok: false, error: "..." }
 */
export function parseLenientJson(text: string): LenientJson {
  let source = text.trim();
  let repaired = false;
  const fenced = FENCE.exec(source);
  if (fenced) {
    source = fenced[1].trim();
    repaired = true;
  }
  let strictError: string;
  try {
    return { ok: true, value: JSON.parse(source), repaired };
  } catch (err) {
    strictError = err instanceof Error ? err.message : String(err);
  }
  const relaxed = relax(source);
  if (relaxed !== undefined) {
    try {
      return { ok: true, value: JSON.parse(relaxed), repaired: true };
    } catch {
      // not repairable: report the original problem
    }
  }
  return { ok: false, error: strictError };
}

/**
 * Rewrites near-JSON into JSON in one pass; `undefined` when a slip has no single reading
 * (an unterminated string, a bare word that is not a key, mismatched brackets).
 */
function relax(text: string): string | undefined {
  let out = "";
  const stack: string[] = [];
  let i = 0;
  const n = text.length;
  const dropTrailingComma = () => {
    const trimmed = out.trimEnd();
    if (trimmed.endsWith(",")) out = trimmed.slice(0, -1);
  };
  while (i < n) {
    const c = text[i];
    if (c === '"' || c === "'") {
      const read = readString(text, i, c);
      if (!read) return undefined;
      out += read.json;
      i = read.end;
    } else if (c === "{" || c === "[") {
      stack.push(c === "{" ? "}" : "]");
      out += c;
      i++;
    } else if (c === "}" || c === "]") {
      if (stack.pop() !== c) return undefined;
      dropTrailingComma();
      out += c;
      i++;
    } else if (/[A-Za-z_$]/.test(c)) {
      let j = i + 1;
      while (j < n && /[\w$]/.test(text[j])) j++;
      const word = text.slice(i, j);
      let k = j;
      while (k < n && /\s/.test(text[k])) k++;
      if (text[k] === ":" && stack.at(-1) === "}") out += JSON.stringify(word);
      else if (word in LITERALS) out += LITERALS[word];
      else return undefined;
      i = j;
    } else {
      out += c;
      i++;
    }
  }
  if (stack.length === 0) return out;
  // A missing closing bracket at the very end (the model stopped one token short).
  dropTrailingComma();
  return out + stack.reverse().join("");
}

/** Reads a string literal opened by `quote` at `start`; returns it as a JSON string. */
function readString(
  text: string,
  start: number,
  quote: string,
): { json: string; end: number } | undefined {
  let value = "";
  let i = start + 1;
  while (i < text.length) {
    const c = text[i];
    if (c === "\\") {
      const next = text[i + 1];
      if (next === undefined) return undefined;
      if (next === "'" && quote === "'") value += "'";
      else value += c + next;
      i += 2;
      continue;
    }
    if (c === quote) return { json: `"${escapeRaw(value)}"`, end: i + 1 };
    value += c;
    i++;
  }
  return undefined;
}

/** Escapes what JSON forbids raw in a string (double quotes when single-quoted, control characters). */
function escapeRaw(value: string): string {
  let out = "";
  for (let i = 0; i < value.length; i++) {
    const c = value[i];
    if (c === "\\") {
      out += c + (value[i + 1] ?? "");
      i++;
    } else if (c === '"') out += '\\"';
    else if (c === "\n") out += "\\n";
    else if (c === "\r") out += "\\r";
    else if (c === "\t") out += "\\t";
    else if (c < " ") out += `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`;
    else out += c;
  }
  return out;
}
