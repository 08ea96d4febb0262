/**
 * create_response is stateful on every backend: the backend's own Responses API where it has
 * one, else lmbridge keeps the history (Ollama, llama-server, a server without the API).
 */
import assert from "node:assert/strict";
import { startDouble } from "./support/lmstudio_double.ts";
import { bridgeEnv, startBridge, textOf } from "./support/bridge.ts";
import { trimHistory } from "../src/server/tools_generate.ts";

// deno-lint-ignore no-explicit-any
type Structured = Record<string, any>;

async function twoTurns(kind: "ollama" | "llamacpp" | "openai", breakApi = false) {
  const double = await startDouble({ kind, models: [{ id: "org/chat" }] });
  if (breakApi) {
    double.addFault({
      path: "/v1/responses",
      times: Infinity,
      fault: { kind: "status", status: 404, body: { error: "Not Found" } },
    });
  }
  const bridge = await startBridge(bridgeEnv(double.url));
  try {
    const first = await bridge.call("create_response", { input: "my name is Ada" });
    assert.equal(first.isError, undefined, textOf(first));
    const id = (first.structuredContent as Structured).response_id;
    const second = await bridge.call("create_response", {
      input: "what is my name?",
      previous_response_id: id,
    });
    assert.equal(second.isError, undefined, textOf(second));
    assert.equal(
      (second.structuredContent as Structured).text,
      "[org/chat] You said: what is my name?",
    );
    const chats = double.requests.filter((q) => q.path === "/v1/chat/completions");
    const sent = (chats.at(-1)!.body as Structured).messages.map((m: Structured) => m.content);
    assert.deepEqual(sent, [
      "my name is Ada",
      "[org/chat] You said: my name is Ada",
      "what is my name?",
    ]);
  } finally {
    await bridge.close();
    await double.close();
  }
}

Deno.test("on Ollama lmbridge keeps the history and sends it with the next turn", async () => {
  await twoTurns("ollama");
});

Deno.test("on llama-server lmbridge keeps the history", async () => {
  await twoTurns("llamacpp");
});

Deno.test("a server without the Responses API falls back to history kept by lmbridge", async () => {
  await twoTurns("openai", true);
});

Deno.test("a kept history stays within its bound, keeping the newest text", () => {
  const long = "x".repeat(30_000);
  const kept = trimHistory([
    { role: "user", content: "old" },
    { role: "assistant", content: long },
    { role: "user", content: `${long}END` },
  ]);
  const chars = kept.reduce((n, m) => n + String(m.content).length, 0);
  assert.ok(chars <= 48_010, `${chars} characters kept`);
  assert.ok(String(kept.at(-1)!.content).endsWith("END"));
  assert.equal(kept[0].role, "user", "the history starts with the user");
});

Deno.test("a long answer is shortened so the question before it is kept", () => {
  const kept = trimHistory([
    { role: "user", content: "question" },
    { role: "assistant", content: "y".repeat(60_000) },
  ]);
  assert.deepEqual(kept.map((m) => m.role), ["user", "assistant"]);
  assert.equal(kept[0].content, "question");
  assert.ok(String(kept[1].content).length <= 48_010);
});
