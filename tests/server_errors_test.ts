/**
 * Each SPEC §6 error code that a model tool can produce, triggered through MCP against the
 * LM Studio double; after every failure the server keeps serving.
 */
import assert from "node:assert/strict";
import { startDouble } from "./support/lmstudio_double.ts";
import { bridgeEnv, lmbridgeCommand, startBridge, textOf } from "./support/bridge.ts";
import { deadUrl, INITIALIZE, INITIALIZED } from "./support/helpers.ts";

/** Asserts an isError result whose text starts `Error [code]:`. */
function assertError(result: { isError?: boolean; content: unknown[] }, code: string) {
  assert.equal(result.isError, true, `expected an error, got ${JSON.stringify(result)}`);
  assert.match(textOf(result as never), new RegExp(`^Error \\[${code}\\]: `));
}

Deno.test("bad arguments are invalid_request naming the field, and the server keeps serving", async () => {
  const double = await startDouble();
  const bridge = await startBridge(bridgeEnv(double.url));
  try {
    const wrongType = await bridge.call("chat_completion", { prompt: 42 });
    assertError(wrongType, "invalid_request");
    assert.match(textOf(wrongType), /prompt: /);
    const both = await bridge.call("chat_completion", {
      prompt: "a",
      messages: [{ role: "user", content: "b" }],
    });
    assertError(both, "invalid_request");
    assert.match(textOf(both), /messages: /);
    const neither = await bridge.call("chat_completion", {});
    assertError(neither, "invalid_request");
    const badRange = await bridge.call("chat_completion", { prompt: "a", temperature: 9 });
    assertError(badRange, "invalid_request");
    assert.match(textOf(badRange), /temperature: /);
    const nested = await bridge.call("chat_completion", {
      messages: [{ role: "wizard", content: "b" }],
    });
    assert.match(textOf(nested), /messages\.0\.role: /);
    const unknownTool = await bridge.call("no_such_tool", {});
    assertError(unknownTool, "invalid_request");
    const ok = await bridge.call("chat_completion", { prompt: "still here" });
    assert.equal(ok.isError, undefined);
  } finally {
    await bridge.close();
    await double.close();
  }
});

Deno.test("a dead backend is backend_unreachable within seconds and the server keeps serving", async () => {
  const bridge = await startBridge(bridgeEnv(deadUrl()));
  try {
    const started = Date.now();
    const r = await bridge.call("chat_completion", { prompt: "hi", model: "qwen/qwen3-4b" });
    assertError(r, "backend_unreachable");
    assert.match(textOf(r), /lms server start/);
    assert.ok(Date.now() - started < 10_000, "fails fast");
    const health = await bridge.call("health_check");
    assert.equal(health.isError, undefined);
    const backend = (health.structuredContent as { backends: { reachable: boolean }[] })
      .backends[0];
    assert.equal(backend.reachable, false);
    const list = await bridge.call("list_models");
    assertError(list, "backend_unreachable");
    const { tools } = await bridge.client.listTools();
    assert.ok(tools.length > 5, "still serving");
  } finally {
    await bridge.close();
  }
});

Deno.test("model errors: model_not_found with suggestions, model_not_loaded, unsupported", async (t) => {
  const lm = await startDouble({
    jit: false,
    models: [
      { id: "qwen/qwen3-4b", loaded: false },
      { id: "qwen/qwen3-14b", loaded: false },
    ],
  });
  const ollama = await startDouble({ kind: "ollama", models: [{ id: "llama3.2:3b" }] });
  const bridge = await startBridge(bridgeEnv(lm.url));
  const bridgeOllama = await startBridge(bridgeEnv(ollama.url));
  try {
    await t.step("a near miss suggests the closest id", async () => {
      const r = await bridge.call("chat_completion", { prompt: "x", model: "qwen3-4bb" });
      assertError(r, "model_not_found");
      assert.match(textOf(r), /did you mean qwen\/qwen3-4b/);
    });
    await t.step("an ambiguous name lists the candidates", async () => {
      const r = await bridge.call("chat_completion", { prompt: "x", model: "qwen3" });
      assertError(r, "model_not_found");
      assert.match(textOf(r), /qwen\/qwen3-4b/);
      assert.match(textOf(r), /qwen\/qwen3-14b/);
    });
    await t.step("no model loaded and none named is model_not_loaded", async () => {
      const r = await bridge.call("chat_completion", { prompt: "x" });
      assertError(r, "model_not_loaded");
      assert.match(textOf(r), /load_model/);
    });
    await t.step("load_model on Ollama is unsupported", async () => {
      const r = await bridgeOllama.call("load_model", { model: "llama3.2:3b" });
      assertError(r, "unsupported");
      const chat = await bridgeOllama.call("chat_completion", {
        prompt: "hi",
        model: "llama3.2:3b",
      });
      assert.equal(chat.isError, undefined, textOf(chat));
      assert.equal(textOf(chat), "[llama3.2:3b] You said: hi");
    });
  } finally {
    await bridge.close();
    await bridgeOllama.close();
    await lm.close();
    await ollama.close();
  }
});

Deno.test("upstream faults map to their codes", async (t) => {
  const double = await startDouble();
  const bridge = await startBridge(bridgeEnv(double.url, { LMBRIDGE_IDLE_TIMEOUT_S: "1" }));
  const chat = "/v1/chat/completions";
  try {
    await t.step("429 three times is rate_limited after 3 attempts", async () => {
      double.addFault({
        path: chat,
        times: 3,
        fault: { kind: "status", status: 429, headers: { "retry-after": "0" } },
      });
      const r = await bridge.call("chat_completion", { prompt: "x" });
      assertError(r, "rate_limited");
      assert.match(textOf(r), /after 3 attempts/);
    });
    await t.step("500 is upstream_error, not retried", async () => {
      const before = double.requests.length;
      double.addFault({
        path: chat,
        times: 1,
        fault: { kind: "status", status: 500, body: { error: "boom" } },
      });
      const r = await bridge.call("chat_completion", { prompt: "x" });
      assertError(r, "upstream_error");
      assert.match(textOf(r), /boom/);
      assert.equal(double.requests.slice(before).filter((q) => q.path === chat).length, 1);
    });
    await t.step("503 is retried and then succeeds", async () => {
      double.addFault({ path: chat, times: 2, fault: { kind: "status", status: 503 } });
      const r = await bridge.call("chat_completion", { prompt: "again" });
      assert.equal(textOf(r), "[qwen/qwen3-4b] You said: again");
    });
    await t.step("a garbage body is upstream_error", async () => {
      double.addFault({ path: chat, fault: { kind: "garbage" } });
      assertError(await bridge.call("chat_completion", { prompt: "x" }), "upstream_error");
    });
    await t.step("an error inside a 200 stream is an error, not an answer", async () => {
      double.addFault({
        path: chat,
        fault: { kind: "error_in_stream", afterChunks: 2, message: "engine crashed" },
      });
      const r = await bridge.call("chat_completion", { prompt: "x" });
      assertError(r, "upstream_error");
      assert.match(textOf(r), /engine crashed/);
    });
    await t.step("a stream that breaks after some text keeps the partial text", async () => {
      double.addFault({ path: chat, fault: { kind: "drop", afterChunks: 3 } });
      const r = await bridge.call("chat_completion", { prompt: "partial please" });
      assertError(r, "upstream_error");
      assert.match(textOf(r), /Partial text before the failure:\n\[qwen/);
    });
    await t.step("context overflow is context_overflow", async () => {
      double.addFault({ path: chat, fault: { kind: "context_overflow" } });
      const r = await bridge.call("chat_completion", { prompt: "x" });
      assertError(r, "context_overflow");
      assert.match(textOf(r), /context_length/);
    });
    await t.step("a stalled stream is timeout and the double sees the abort", async () => {
      double.addFault({ path: chat, fault: { kind: "stall", afterChunks: 2 } });
      const r = await bridge.call("chat_completion", { prompt: "x" });
      assertError(r, "timeout");
      const req = double.requests.findLast((q) => q.path === chat)!;
      await double.waitForAbort(req.id, 5_000);
    });
    await t.step("timeout_s ends a slow call with timeout", async () => {
      double.addFault({ path: chat, fault: { kind: "first_byte_delay", ms: 5_000 } });
      const started = Date.now();
      const r = await bridge.call("chat_completion", { prompt: "x", timeout_s: 0.5 });
      assertError(r, "timeout");
      assert.ok(Date.now() - started < 4_000);
      const req = double.requests.findLast((q) => q.path === chat)!;
      await double.waitForAbort(req.id, 5_000);
    });
    await t.step("after all that the server still answers", async () => {
      double.clearFaults();
      const r = await bridge.call("chat_completion", { prompt: "fine" });
      assert.equal(textOf(r), "[qwen/qwen3-4b] You said: fine");
    });
  } finally {
    await bridge.close();
    await double.close();
  }
});

Deno.test("a missing or wrong API token is auth_failed; the right one works", async () => {
  const double = await startDouble({ apiKey: "sk-lm-test:secret" });
  const without = await startBridge(bridgeEnv(double.url));
  const withKey = await startBridge(
    bridgeEnv(double.url, { LMSTUDIO_API_KEY: "sk-lm-test:secret" }),
  );
  try {
    const r = await without.call("chat_completion", { prompt: "x", model: "qwen/qwen3-4b" });
    assertError(r, "auth_failed");
    assert.match(textOf(r), /LMSTUDIO_API_KEY/);
    assert.ok(!textOf(r).includes("secret"));
    const ok = await withKey.call("chat_completion", { prompt: "x" });
    assert.equal(ok.isError, undefined, textOf(ok));
    const sent = double.requests.findLast((q) => q.path === "/v1/chat/completions")!;
    assert.equal(sent.headers.authorization, "Bearer sk-lm-test:secret");
    assert.ok(!withKey.stderr().includes("sk-lm-test"), "the token never reaches the logs");
  } finally {
    await without.close();
    await withKey.close();
    await double.close();
  }
});

Deno.test("beyond the cap and the queue a request is overloaded", async () => {
  const double = await startDouble({ chunkDelayMs: 300 });
  const bridge = await startBridge(bridgeEnv(double.url, {
    LMBRIDGE_MAX_INFLIGHT_PER_MODEL: "1",
    LMBRIDGE_MAX_QUEUE: "0",
  }));
  try {
    const slow = bridge.call("chat_completion", { prompt: "a long one" });
    await double.waitForRequests(1, { path: "/v1/chat/completions" });
    const r = await bridge.call("chat_completion", { prompt: "x" });
    assertError(r, "overloaded");
    assert.match(textOf(r), /LMBRIDGE_MAX_QUEUE|queue/i);
    assert.equal((await slow).isError, undefined);
  } finally {
    await bridge.close();
    await double.close();
  }
});

Deno.test("stdout carries nothing but JSON-RPC", async () => {
  const double = await startDouble();
  const env = bridgeEnv(double.url, { LOG_LEVEL: "debug" });
  const child = lmbridgeCommand([], env, { stdin: "piped" }).spawn();
  const lines = [
    INITIALIZE,
    INITIALIZED,
    { jsonrpc: "2.0", id: 2, method: "tools/list" },
    {
      jsonrpc: "2.0",
      id: 3,
      method: "tools/call",
      params: { name: "chat_completion", arguments: { prompt: "hi" }, _meta: { progressToken: 7 } },
    },
    {
      jsonrpc: "2.0",
      id: 4,
      method: "tools/call",
      params: { name: "health_check", arguments: {} },
    },
    {
      jsonrpc: "2.0",
      id: 5,
      method: "tools/call",
      params: { name: "chat_completion", arguments: { prompt: 1 } },
    },
  ];
  const writer = child.stdin.getWriter();
  await writer.write(
    new TextEncoder().encode(lines.map((l) => JSON.stringify(l)).join("\n") + "\n"),
  );
  // Read until the last answer arrives, then close stdin.
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let out = "";
  while (![3, 4, 5].every((id) => new RegExp(`"id":${id}[,}]`).test(out))) {
    const { value, done } = await reader.read();
    if (done) break;
    out += value;
  }
  await writer.close();
  while (true) {
    const { value, done } = await reader.read();
    if (done) break;
    out += value;
  }
  const status = await child.status;
  const stderr = new TextDecoder().decode(await new Response(child.stderr).arrayBuffer());
  await double.close();
  const outLines = out.split("\n").filter((l) => l.trim());
  assert.ok(outLines.length >= 5, `stdout: ${out}\nstderr: ${stderr}`);
  for (const line of outLines) {
    const msg = JSON.parse(line);
    assert.equal(msg.jsonrpc, "2.0", line);
  }
  assert.ok(outLines.some((l) => l.includes("notifications/progress")), "progress went out");
  assert.ok(stderr.includes('"level":"debug"') || stderr.includes('"level":"info"'));
  assert.equal(status.code, 0, "exits cleanly when stdin closes");
});
