/**
 * Every model tool through the real MCP client SDK over stdio, against the LM Studio double.
 */
import assert from "node:assert/strict";
import { startDouble } from "./support/lmstudio_double.ts";
import { bridgeEnv, startBridge, textOf } from "./support/bridge.ts";

// deno-lint-ignore no-explicit-any
type Structured = Record<string, any>;

Deno.test("every model tool answers through MCP against LM Studio", async (t) => {
  const double = await startDouble({ chunkSize: 3 });
  const bridge = await startBridge(bridgeEnv(double.url));
  try {
    await t.step("tools/list names every tool of SPEC §3 with schemas", async () => {
      const { tools } = await bridge.client.listTools();
      const names = tools.map((x: { name: string }) => x.name);
      for (
        const name of [
          "health_check",
          "list_models",
          "get_current_model",
          "load_model",
          "unload_model",
          "set_default_model",
          "chat_completion",
          "text_completion",
          "generate_embeddings",
          "create_response",
          "bridge_stats",
        ]
      ) assert.ok(names.includes(name), `${name} missing`);
      const chat = tools.find((x: { name: string }) => x.name === "chat_completion")!;
      assert.ok("prompt" in (chat.inputSchema.properties ?? {}));
      assert.ok(chat.outputSchema, "chat_completion has an outputSchema");
    });

    await t.step("health_check reports kind, reachability and loaded models", async () => {
      const r = await bridge.call("health_check");
      assert.equal(r.isError, undefined);
      const s = r.structuredContent as Structured;
      assert.equal(s.backends.length, 1);
      assert.equal(s.backends[0].url, double.url);
      assert.equal(s.backends[0].kind, "lmstudio");
      assert.equal(s.backends[0].reachable, true);
      assert.deepEqual(s.backends[0].loaded_models, ["qwen/qwen3-4b"]);
      assert.equal(s.backends[0].cooldown_s, 0);
      assert.equal(typeof s.mcp_servers, "number");
    });

    await t.step("list_models gives type, loaded state, context and capabilities", async () => {
      const r = await bridge.call("list_models", { refresh: true });
      const models = (r.structuredContent as Structured).models as Structured[];
      const qwen = models.find((m) => m.id === "qwen/qwen3-4b")!;
      assert.deepEqual(
        { type: qwen.type, loaded: qwen.loaded, backend: qwen.backend, ctx: qwen.context_length },
        { type: "llm", loaded: true, backend: double.url, ctx: 4096 },
      );
      assert.equal(qwen.capabilities.tool_use, true);
      const gemma = models.find((m) => m.id === "google/gemma-3-4b")!;
      assert.equal(gemma.type, "vlm");
      assert.equal(gemma.capabilities.vision, true);
      assert.equal(models.find((m) => m.type === "embedding")?.loaded, false);
    });

    await t.step("get_current_model needs no generation", async () => {
      const before = double.requests.filter((q) => q.path === "/v1/chat/completions").length;
      const r = await bridge.call("get_current_model");
      const s = r.structuredContent as Structured;
      assert.equal(s.default_model, "qwen/qwen3-4b");
      assert.deepEqual(s.loaded, [{ id: "qwen/qwen3-4b", backend: double.url }]);
      const after = double.requests.filter((q) => q.path === "/v1/chat/completions").length;
      assert.equal(after, before);
    });

    await t.step("chat_completion streams progress and returns the whole answer", async () => {
      const progress: { progress: number; message?: string }[] = [];
      const r = await bridge.call("chat_completion", {
        prompt: "tell me something long enough to stream in several pieces",
        system_prompt: "be brief",
        temperature: 0.2,
        max_tokens: 100,
      }, { onprogress: (p) => progress.push(p) });
      const s = r.structuredContent as Structured;
      const expected =
        "[qwen/qwen3-4b] You said: tell me something long enough to stream in several pieces";
      assert.equal(s.text, expected);
      assert.equal(textOf(r), expected);
      assert.equal(s.model, "qwen/qwen3-4b");
      assert.equal(s.backend, double.url);
      assert.equal(s.finish_reason, "stop");
      assert.ok(s.usage.completion_tokens > 0);
      assert.equal(typeof s.timings.total_ms, "number");
      assert.ok(progress.length >= 1, "progress notifications arrived");
      assert.equal(progress.map((p) => p.message).join(""), expected);
      for (let i = 1; i < progress.length; i++) {
        assert.ok(progress[i].progress > progress[i - 1].progress, "progress increases");
      }
      const sent = double.requests.findLast((q) => q.path === "/v1/chat/completions")!;
      const body = sent.body as Structured;
      assert.equal(body.stream, true);
      assert.equal(body.messages[0].role, "system");
      assert.equal(body.temperature, 0.2);
      assert.equal(body.max_tokens, 100);
    });

    await t.step("chat_completion accepts messages and a model by short name", async () => {
      const r = await bridge.call("chat_completion", {
        messages: [{ role: "user", content: "first" }, { role: "assistant", content: "ok" }, {
          role: "user",
          content: "second",
        }],
        model: "QWEN3-4B",
      });
      assert.equal((r.structuredContent as Structured).text, "[qwen/qwen3-4b] You said: second");
    });

    await t.step("include_reasoning returns the thinking apart from the answer", async () => {
      const r = await bridge.call("chat_completion", {
        prompt: "REASON: why?",
        include_reasoning: true,
      });
      const s = r.structuredContent as Structured;
      assert.equal(s.reasoning, "thinking about it");
      assert.equal(s.text, "[qwen/qwen3-4b] You said: REASON: why?");
      const plain = await bridge.call("chat_completion", { prompt: "REASON: why?" });
      assert.ok(!textOf(plain).includes("thinking about it"), "reasoning left out unless asked");
    });

    await t.step("json_schema asks for structured output and parses the answer", async () => {
      const schema = {
        type: "object",
        properties: { name: { type: "string" }, n: { type: "integer" } },
        required: ["name", "n"],
      };
      const r = await bridge.call("chat_completion", { prompt: "a person", json_schema: schema });
      assert.equal(r.isError, undefined, textOf(r));
      const s = r.structuredContent as Structured;
      assert.deepEqual(Object.keys(s.json).sort(), ["n", "name"]);
      const sent = double.requests.findLast((q) => q.path === "/v1/chat/completions")!;
      assert.equal((sent.body as Structured).response_format.type, "json_schema");
      assert.deepEqual((sent.body as Structured).response_format.json_schema.schema, schema);
    });

    await t.step("a bad json_schema is refused before anything is sent", async () => {
      const before = double.requests.length;
      const r = await bridge.call("chat_completion", {
        prompt: "x",
        json_schema: { type: "objekt" },
      });
      assert.equal(r.isError, true);
      assert.match(textOf(r), /^Error \[invalid_request\]: json_schema: /);
      assert.equal(double.requests.length, before);
    });

    await t.step("images become base64 content parts for a vision model", async () => {
      const png =
        "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==";
      const r = await bridge.call("chat_completion", {
        prompt: "what is this",
        images: [png],
        model: "gemma-3-4b",
      });
      assert.equal(r.isError, undefined, textOf(r));
      assert.match(textOf(r), /\(\+1 images\)/);
      const refused = await bridge.call("chat_completion", {
        prompt: "x",
        images: ["/etc/passwd.png"],
      });
      assert.match(textOf(refused), /^Error \[invalid_request\]: images\.0: /);
      const remote = await bridge.call("chat_completion", {
        prompt: "x",
        images: ["https://example.com/a.png"],
      });
      assert.match(textOf(remote), /remote image URLs are off/);
    });

    await t.step("text_completion continues a raw prompt", async () => {
      const progress: string[] = [];
      const r = await bridge.call("text_completion", { prompt: "Once upon", max_tokens: 20 }, {
        onprogress: (p) => progress.push(p.message ?? ""),
      });
      assert.equal(
        (r.structuredContent as Structured).text,
        "[qwen/qwen3-4b] continues: Once upon",
      );
      assert.equal(progress.join(""), "[qwen/qwen3-4b] continues: Once upon");
      const sent = double.requests.findLast((q) => q.path === "/v1/completions")!;
      assert.equal((sent.body as Structured).prompt, "Once upon");
    });

    await t.step("generate_embeddings returns vectors and dimensions", async () => {
      const r = await bridge.call("generate_embeddings", { text: ["alpha", "beta"] });
      assert.equal(r.isError, undefined, textOf(r));
      const s = r.structuredContent as Structured;
      assert.equal(s.model, "text-embedding-nomic-embed-text-v1.5");
      assert.equal(s.dimensions, 8);
      assert.equal(s.embeddings.length, 2);
      assert.notDeepEqual(s.embeddings[0], s.embeddings[1]);
      const again = await bridge.call("generate_embeddings", {
        text: "alpha",
        model: "text-embedding-nomic",
      });
      assert.deepEqual((again.structuredContent as Structured).embeddings[0], s.embeddings[0]);
    });

    await t.step("create_response continues a conversation with its id", async () => {
      const progress: string[] = [];
      const first = await bridge.call("create_response", { input: "my name is Ada" }, {
        onprogress: (p) => progress.push(p.message ?? ""),
      });
      const s1 = first.structuredContent as Structured;
      assert.equal(progress.join(""), s1.text, "the answer streamed as progress");
      assert.match(s1.response_id, /\S/);
      const second = await bridge.call("create_response", {
        input: "what is my name?",
        previous_response_id: s1.response_id,
      });
      const s2 = second.structuredContent as Structured;
      assert.match(s2.text, /\(turn 2\)/);
      assert.notEqual(s2.response_id, s1.response_id);
      const sent = double.requests.findLast((q) => q.path === "/v1/responses")!;
      assert.equal((sent.body as Structured).previous_response_id, s1.response_id);
      const unknown = await bridge.call("create_response", {
        input: "x",
        previous_response_id: "resp_nope",
      });
      assert.match(textOf(unknown), /^Error \[invalid_request\]: previous_response_id/);
    });

    await t.step("load_model and unload_model use LM Studio's native API", async () => {
      const load = await bridge.call("load_model", { model: "gemma", context_length: 8192 });
      assert.equal(load.isError, undefined, textOf(load));
      assert.equal((load.structuredContent as Structured).model, "google/gemma-3-4b");
      const sent = double.requests.findLast((q) => q.path === "/api/v1/models/load")!;
      assert.deepEqual(sent.body, { model: "google/gemma-3-4b", context_length: 8192 });
      assert.equal(double.models.find((m) => m.id === "google/gemma-3-4b")?.loaded, true);
      const unload = await bridge.call("unload_model", { model: "gemma" });
      assert.equal(unload.isError, undefined, textOf(unload));
      assert.equal(double.models.find((m) => m.id === "google/gemma-3-4b")?.loaded, false);
      const again = await bridge.call("unload_model", { model: "gemma" });
      assert.match(textOf(again), /^Error \[model_not_loaded\]/);
    });

    await t.step("set_default_model changes the model of later requests", async () => {
      const r = await bridge.call("set_default_model", { model: "gemma-3" });
      assert.equal((r.structuredContent as Structured).default_model, "google/gemma-3-4b");
      const chat = await bridge.call("chat_completion", { prompt: "hi" });
      assert.equal((chat.structuredContent as Structured).model, "google/gemma-3-4b");
      const cur = await bridge.call("get_current_model");
      assert.equal((cur.structuredContent as Structured).default_model, "google/gemma-3-4b");
      await bridge.call("set_default_model", { model: "qwen/qwen3-4b" });
    });

    await t.step("bridge_stats counts requests and errors by code", async () => {
      const r = await bridge.call("bridge_stats");
      const s = r.structuredContent as Structured;
      assert.ok(s.requests >= 15);
      assert.ok(s.errors_by_code.invalid_request >= 1);
      assert.equal(typeof s.latency_ms.p50, "number");
      assert.ok(s.caches.catalog.max_size > 0);
      assert.equal(s.queued.total, 0);
    });

    await t.step("a served model other than the one asked for is reported", async () => {
      double.enqueueReply({ content: "hello", model: "other/model-7b" });
      const r = await bridge.call("chat_completion", { prompt: "hi" });
      assert.equal((r.structuredContent as Structured).model_mismatch, "other/model-7b");
      assert.match(textOf(r), /server answered as other\/model-7b/);
    });
  } finally {
    await bridge.close();
    await double.close();
  }
});
