import assert from "node:assert/strict";
import { fitToBudget, messageBudget, messageChars } from "../src/agent/context_budget.ts";
import type { ChatMessage } from "../src/backend/types.ts";

const conversation = (): ChatMessage[] => [
  { role: "system", content: "s" },
  { role: "user", content: "task" },
  { role: "tool", tool_call_id: "1", content: "a".repeat(5000) },
  { role: "tool", tool_call_id: "2", content: "b".repeat(5000) },
  { role: "tool", tool_call_id: "3", content: "c".repeat(5000) },
];

Deno.test("a conversation within budget is sent unchanged", () => {
  const messages = conversation();
  assert.deepEqual(fitToBudget(messages, 100_000), { messages, shortened: 0 });
});

Deno.test("over budget, the oldest tool results are shortened first", () => {
  const messages = conversation();
  const total = messages.reduce((n, m) => n + messageChars(m), 0);
  const { messages: fitted, shortened } = fitToBudget(messages, total - 6000);
  assert.equal(shortened, 2);
  const [a, b, c] = fitted.slice(2).map((m) => m.content as string);
  assert.match(a, /^a{200}\n\[shortened: 4800 characters dropped to fit the model's context\]$/);
  assert.ok(b.length < 5000 && b.startsWith("bbb") && /\[shortened: \d+ characters/.test(b));
  assert.equal(c, "c".repeat(5000), "the newest result is kept");
  assert.ok(fitted.reduce((n, m) => n + messageChars(m), 0) <= total - 6000);
  assert.equal((messages[2].content as string).length, 5000, "the input is not changed");
});

Deno.test("the budget is the context minus the answer's room and the tool definitions", () => {
  assert.equal(messageBudget({ contextTokens: 8192, maxTokens: 1000, toolsChars: 4000 }), 24_768);
  assert.equal(messageBudget({ toolsChars: 0 }), 8192 * 3);
  assert.equal(messageBudget({ contextTokens: 100, toolsChars: 50_000 }), 800, "a floor");
});
