/**
 * Bad input never takes lmbridge down: malformed JSON-RPC written raw to stdin, oversized
 * messages, and generated wrong arguments for every tool each get a clear error, and the
 * server keeps answering afterwards.
 */
import assert from "node:assert/strict";
import { startDouble } from "./support/lmstudio_double.ts";
import { bridgeEnv, lmbridgeCommand, startBridge, textOf } from "./support/bridge.ts";
import { INITIALIZE, INITIALIZED } from "./support/helpers.ts";

/** A raw lmbridge process: write lines, read JSON-RPC answers by id. */
function rawBridge(env: Record<string, string>) {
  const child = lmbridgeCommand([], env, { stdin: "piped", stderr: "null" }).spawn();
  const writer = child.stdin.getWriter();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  const messages: Record<string, unknown>[] = [];
  let buffer = "";
  const pump = (async () => {
    while (true) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let nl;
      while ((nl = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, nl);
        buffer = buffer.slice(nl + 1);
        if (line.trim()) messages.push(JSON.parse(line)); // stdout must be pure JSON
      }
    }
  })();
  const encoder = new TextEncoder();
  return {
    messages,
    write: (text: string | Uint8Array) =>
      writer.write(typeof text === "string" ? encoder.encode(text) : text),
    async waitFor(pred: (m: Record<string, unknown>) => boolean, timeoutMs = 10_000) {
      const until = Date.now() + timeoutMs;
      while (Date.now() < until) {
        const hit = messages.find(pred);
        if (hit) return hit;
        await new Promise((r) => setTimeout(r, 20));
      }
      throw new Error(`no matching message; got ${JSON.stringify(messages).slice(0, 2000)}`);
    },
    async close() {
      await writer.close().catch(() => {});
      await pump;
      return await child.status;
    },
  };
}

const init = JSON.stringify(INITIALIZE) + "\n" + JSON.stringify(INITIALIZED) + "\n";

Deno.test("malformed JSON-RPC on stdin gets errors and the server keeps serving", async () => {
  const double = await startDouble();
  const raw = rawBridge(bridgeEnv(double.url, { LMBRIDGE_MAX_MESSAGE_BYTES: "65536" }));
  try {
    await raw.write(init);
    await raw.waitFor((m) => m.id === 1);
    await raw.write("this is not json\n");
    const parse = await raw.waitFor((m) => (m.error as { code?: number })?.code === -32700);
    assert.equal(parse.id, null);
    await raw.write('{"hello":"world","id":7}\n');
    const invalid = await raw.waitFor((m) => m.id === 7);
    assert.equal((invalid.error as { code: number }).code, -32600);
    await raw.write('{"jsonrpc":"2.0","id":8,"method":"no/such/method"}\n');
    const unknown = await raw.waitFor((m) => m.id === 8);
    assert.equal((unknown.error as { code: number }).code, -32601);
    await raw.write(new Uint8Array([0xff, 0xfe, 0x00, 0x0a])); // invalid UTF-8 and a NUL
    // Oversized: 200 KB against a 64 KB limit, refused without being buffered.
    const big = JSON.stringify({
      jsonrpc: "2.0",
      id: 9,
      method: "tools/call",
      params: { name: "chat_completion", arguments: { prompt: "x".repeat(200_000) } },
    });
    await raw.write(big + "\n");
    const refused = await raw.waitFor((m) =>
      typeof (m.error as { message?: string })?.message === "string" &&
      (m.error as { message: string }).message.includes("larger than 65536 bytes")
    );
    assert.equal((refused.error as { code: number }).code, -32600);
    // Still serving, and a normal call works.
    await raw.write(
      JSON.stringify({
        jsonrpc: "2.0",
        id: 10,
        method: "tools/call",
        params: { name: "chat_completion", arguments: { prompt: "still alive?" } },
      }) + "\n",
    );
    const ok = await raw.waitFor((m) => m.id === 10);
    const text = (ok.result as { content: { text: string }[] }).content[0].text;
    assert.equal(text, "[qwen/qwen3-4b] You said: still alive?");
    assert.equal(raw.messages.filter((m) => m.id === 9).length, 0, "the oversized call never ran");
  } finally {
    const status = await raw.close();
    assert.equal(status.code, 0);
    await double.close();
  }
});

/** The smallest valid arguments of each tool with required fields. */
const VALID: Record<string, Record<string, unknown>> = {
  chat_completion: { prompt: "x" },
  text_completion: { prompt: "x" },
  generate_embeddings: { text: "x" },
  create_response: { input: "x" },
  load_model: { model: "qwen/qwen3-4b" },
  unload_model: { model: "qwen/qwen3-4b" },
  set_default_model: { model: "qwen/qwen3-4b" },
  autonomous_with_mcp: { task: "x" },
  get_job: { job_id: "job_x" },
  cancel_job: { job_id: "job_x" },
};

/** Values of the wrong type for a JSON-schema property (none for a union: any may fit). */
function wrongValues(schema: Record<string, unknown> | undefined): unknown[] {
  const type = schema?.type;
  if (type === undefined) return [];
  const all: unknown[] = [42, -1.5, "text", true, null, [], {}, [1, [2, [3]]], "\u0000"];
  if (type === "string") return all.filter((v) => typeof v !== "string");
  if (type === "number" || type === "integer") {
    const wrong = all.filter((v) => typeof v !== "number");
    if (type === "integer") wrong.push(0.5);
    if (schema?.maximum !== undefined) wrong.push(1e308);
    if (schema?.minimum !== undefined || schema?.exclusiveMinimum !== undefined) wrong.push(-1e308);
    return wrong;
  }
  if (type === "boolean") return all.filter((v) => typeof v !== "boolean");
  if (type === "array") return all.filter((v) => !Array.isArray(v));
  if (type === "object") {
    return all.filter((v) => typeof v !== "object" || v === null || Array.isArray(v));
  }
  return all;
}

function deep(n: number): unknown {
  let v: unknown = "bottom";
  for (let i = 0; i < n; i++) v = { nested: v };
  return v;
}

Deno.test("generated bad arguments for every tool come back as clear tool errors", async () => {
  const double = await startDouble();
  const bridge = await startBridge(bridgeEnv(double.url));
  try {
    const { tools } = await bridge.client.listTools();
    let calls = 0;
    for (const tool of tools as { name: string; inputSchema: Record<string, unknown> }[]) {
      const props = (tool.inputSchema.properties ?? {}) as Record<string, Record<string, unknown>>;
      // Every other field valid, so the error must be about the one that is wrong.
      const base = VALID[tool.name] ?? {};
      for (const [name, schema] of Object.entries(props)) {
        for (const v of wrongValues(schema)) {
          const args = { ...base, [name]: v };
          const r = await bridge.call(tool.name, args, { timeout: 20_000 });
          calls++;
          const what = `${tool.name} ${JSON.stringify(args).slice(0, 100)}`;
          assert.equal(r.isError, true, `accepted: ${what}`);
          assert.match(textOf(r), new RegExp(`^Error \\[invalid_request\\]: ${name}\\b`), what);
        }
      }
      const r = await bridge.call(tool.name, { ...base, unexpected: deep(200) });
      calls++;
      if (r.isError) assert.match(textOf(r), /^Error \[[a-z_]+\]: /);
    }
    assert.ok(calls > 100, `${calls} bad calls made`);
    const health = await bridge.call("health_check");
    assert.equal(health.isError, undefined);
  } finally {
    await bridge.close();
    await double.close();
  }
});

Deno.test("odd text is passed through intact or refused clearly, never crashing", async () => {
  const double = await startDouble();
  const bridge = await startBridge(bridgeEnv(double.url));
  try {
    const odd = [
      "emoji 🧪👩‍👩‍👧 and RTL \u202Etxet\u202C",
      "NUL \u0000 inside",
      "lone surrogate \uD800 here",
      "zero width \u200B\u200D joiners",
      "quotes \" ' ` and backslash \\ and newline \n end",
    ];
    for (const prompt of odd) {
      const r = await bridge.call("chat_completion", { prompt });
      assert.equal(r.isError, undefined, textOf(r));
      assert.ok(textOf(r).startsWith("[qwen/qwen3-4b] You said: "));
    }
    const huge = await bridge.call("chat_completion", { prompt: "y".repeat(4_000_001) });
    assert.match(textOf(huge), /^Error \[invalid_request\]: prompt: /);
    const traversal = await bridge.call("chat_completion", {
      prompt: "x",
      images: ["../../../../etc/hostname.png"],
    });
    assert.match(textOf(traversal), /^Error \[invalid_request\]: images\.0: /);
    const deepMessages = await bridge.call("chat_completion", {
      messages: [{ role: "user", content: [deep(500)] }],
    });
    assert.match(textOf(deepMessages), /^Error \[/);
    const after = await bridge.call("chat_completion", { prompt: "fine" });
    assert.equal(textOf(after), "[qwen/qwen3-4b] You said: fine");
  } finally {
    await bridge.close();
    await double.close();
  }
});
