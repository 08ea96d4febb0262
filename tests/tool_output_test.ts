import assert from "node:assert/strict";
import { toolResultText, truncate } from "../src/agent/tool_output.ts";

Deno.test("text parts are joined and other content is summarised", () => {
  assert.equal(
    toolResultText({
      content: [
        { type: "text", text: "first" },
        { type: "image", mimeType: "image/png", data: "aGVsbG8=" },
        { type: "resource", resource: { uri: "file:///a.txt", mimeType: "text/plain", text: "A" } },
        { type: "resource_link", uri: "file:///b", name: "b" },
      ],
    }, 1000),
    "first\n[image: image/png, 5 bytes]\n[resource file:///a.txt (text/plain)]\nA\n[resource link: file:///b (b)]",
  );
  assert.equal(toolResultText({ content: [], structuredContent: { n: 1 } }, 100), '{"n":1}');
  assert.equal(toolResultText({ content: [] }, 100), "(no output)");
});

Deno.test("an isError result is marked so the model sees it failed", () => {
  assert.equal(
    toolResultText({ content: [{ type: "text", text: "ENOENT" }], isError: true }, 100),
    "Error: ENOENT",
  );
});

Deno.test("long output is truncated with a note of how much was cut", () => {
  assert.equal(truncate("abcdef", 4), "abcd\n[truncated 2 characters]");
  const text = toolResultText({ content: [{ type: "text", text: "x".repeat(50_000) }] }, 20_000);
  assert.ok(text.startsWith("x".repeat(20_000) + "\n"));
  assert.match(text, /\[truncated 30000 characters\]$/);
});
