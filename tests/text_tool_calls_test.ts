import assert from "node:assert/strict";
import { extractTextToolCalls } from "../src/agent/text_tool_calls.ts";

const offered = (name: string) => ["read_file", "memory__read_graph"].includes(name);

Deno.test("a bare JSON tool call in the answer text is recognised", () => {
  assert.deepEqual(
    extractTextToolCalls(
      'Let me look. {"name": "read_file", "arguments": {"path": "a.txt"}}',
      offered,
    ),
    { calls: [{ name: "read_file", arguments: '{"path":"a.txt"}' }], rest: "Let me look." },
  );
});

Deno.test("tool calls in <tool_call> tags and ```json fences are recognised", () => {
  const text = '<tool_call>\n{"name": "read_file", "arguments": {"path": "b"}}\n</tool_call>\n' +
    '```json\n{"function": {"name": "memory__read_graph", "parameters": {}}}\n```';
  assert.deepEqual(extractTextToolCalls(text, offered).calls, [
    { name: "read_file", arguments: '{"path":"b"}' },
    { name: "memory__read_graph", arguments: "{}" },
  ]);
  assert.deepEqual(
    extractTextToolCalls(
      "<tool_call>{'name': 'read_file', 'arguments': '{\"path\": \"c\"}'}",
      offered,
    )
      .calls,
    [{ name: "read_file", arguments: '{"path": "c"}' }],
  );
});

Deno.test("JSON that names no offered tool, or is plain data, stays text", () => {
  for (
    const text of [
      '{"name": "delete_everything", "arguments": {}}',
      'The user is {"name": "read_file", "age": 3}',
      "no json here, only a name",
      'Unbalanced "quote {"name": "read_file"',
    ]
  ) {
    assert.deepEqual(extractTextToolCalls(text, offered), { calls: [], rest: text }, text);
  }
});
