/**
 * What a downstream tool result becomes for the model: its text parts joined, other content
 * summarised in one line each, errors marked as such, and very long output truncated with a
 * note saying how much was cut.
 */
import type { DownstreamToolResult } from "../downstream/session_pool.ts";

/**
 * The text of a tool message for `result`, at most about `maxChars` long.
 *
 * @example
 * toolResultText({ content: [{ type: "text", text: "no such file" }], isError: true }, 20_000);
 * // "Error: no such file"
 */
export function toolResultText(result: DownstreamToolResult, maxChars: number): string {
  const parts = (Array.isArray(result.content) ? result.content : []).map(describePart)
    .filter((p) => p !== "");
  let text = parts.join("\n");
  if (!text && result.structuredContent !== undefined) {
    text = safeJson(result.structuredContent);
  }
  if (!text) text = result.isError ? "the tool failed without saying why" : "(no output)";
  if (result.isError) text = `Error: ${text}`;
  return truncate(text, maxChars);
}

/**
 * Cuts `text` to `maxChars`, ending it with `[truncated N characters]`.
 *
 * @example
 * truncate("abcdef", 4); // "abcd\n[truncated 2 characters]"
 */
export function truncate(text: string, maxChars: number): string {
  if (text.length <= maxChars) return text;
  const kept = Math.max(0, Math.floor(maxChars));
  return `${text.slice(0, kept)}\n[truncated ${text.length - kept} characters]`;
}

function describePart(part: unknown): string {
  if (typeof part !== "object" || part === null) return "";
  const p = part as Record<string, unknown>;
  switch (p.type) {
    case "text":
      return typeof p.text === "string" ? p.text : "";
    case "image":
    case "audio":
      return `[${p.type}: ${p.mimeType ?? "unknown type"}, ${base64Bytes(p.data)} bytes]`;
    case "resource": {
      const r = (p.resource ?? {}) as Record<string, unknown>;
      const label = `[resource ${r.uri ?? ""}${r.mimeType ? ` (${r.mimeType})` : ""}]`;
      if (typeof r.text === "string") return `${label}\n${r.text}`;
      return `${label.slice(0, -1)}, ${base64Bytes(r.blob)} bytes of binary data]`;
    }
    case "resource_link":
      return `[resource link: ${p.uri ?? ""}${p.name ? ` (${p.name})` : ""}${
        p.description ? ` — ${p.description}` : ""
      }]`;
    default:
      return `[${String(p.type ?? "unknown")} content]`;
  }
}

function base64Bytes(data: unknown): number {
  if (typeof data !== "string") return 0;
  const padding = data.endsWith("==") ? 2 : data.endsWith("=") ? 1 : 0;
  return Math.max(0, Math.floor((data.length * 3) / 4) - padding);
}

function safeJson(value: unknown): string {
  try {
    return JSON.stringify(value) ?? "";
  } catch {
    return String(value);
  }
}
