/** The LM Studio test double, driven with plain fetch as a client would see it. */
import assert from "node:assert/strict";
import {
  type DoubleOptions,
  type LmStudioDouble,
  parseDoubleArgs,
  startDouble,
} from "./support/lmstudio_double.ts";

// deno-lint-ignore no-explicit-any
type Json = Record<string, any>;

async function withDouble(
  options: DoubleOptions,
  fn: (double: LmStudioDouble) => Promise<void>,
): Promise<void> {
  const double = await startDouble(options);
  try {
    await fn(double);
  } finally {
    await double.close();
  }
}

function post(double: LmStudioDouble, path: string, body: unknown, init: RequestInit = {}) {
  return fetch(`${double.url}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json", ...init.headers },
    body: JSON.stringify(body),
    signal: init.signal,
  });
}

function chat(double: LmStudioDouble, body: Json, init?: RequestInit) {
  return post(double, "/v1/chat/completions", body, init);
}

const say = (text: string, extra: Json = {}) => ({
  model: "qwen/qwen3-4b",
  messages: [{ role: "system", content: "be brief" }, { role: "user", content: text }],
  ...extra,
});

/** The SSE events of a body: `event:` name (if any) and the joined `data:` text. */
function sseEvents(text: string): { event?: string; data: string }[] {
  return text.split("\n\n").filter((block) => block.trim()).map((block) => {
    const parsed: { event?: string; data: string } = { data: "" };
    for (const line of block.split("\n")) {
      if (line.startsWith("event: ")) parsed.event = line.slice(7);
      else if (line.startsWith("data: ")) parsed.data += line.slice(6);
    }
    return parsed;
  });
}

/** The `data:` payloads of an SSE body, JSON-parsed except the final `[DONE]`. */
function sseData(text: string): (Json | "[DONE]")[] {
  return sseEvents(text).map((e) => e.data === "[DONE]" ? "[DONE]" : JSON.parse(e.data));
}

/** Reads text from a body until `done(text)` holds; the reader stays open for more. */
async function readUntil(
  reader: ReadableStreamDefaultReader<string>,
  done: (text: string) => boolean,
): Promise<string> {
  let text = "";
  while (!done(text)) {
    const { value, done: ended } = await reader.read();
    if (ended) break;
    text += value;
  }
  return text;
}

function textReader(res: Response): ReadableStreamDefaultReader<string> {
  return res.body!.pipeThrough(new TextDecoderStream()).getReader();
}

// --- streaming format ------------------------------------------------------------------------

Deno.test("a streamed chat answer sends role first, chunkSize pieces, a finish chunk, usage on it, then [DONE]", async () => {
  await withDouble({}, async (double) => {
    const res = await chat(
      double,
      say("hello there", { stream: true, stream_options: { include_usage: true } }),
    );
    assert.equal(res.status, 200);
    assert.match(res.headers.get("content-type")!, /^text\/event-stream/);
    const data = sseData(await res.text());
    assert.equal(data.at(-1), "[DONE]");
    const chunks = data.slice(0, -1) as Json[];
    for (const c of chunks) assert.equal(c.object, "chat.completion.chunk");
    assert.equal(chunks[0].choices[0].delta.role, "assistant");
    const content = chunks.map((c) => c.choices[0].delta.content ?? "").join("");
    assert.equal(content, "[qwen/qwen3-4b] You said: hello there");
    const contentChunks = chunks.filter((c) => c.choices[0].delta.content);
    assert.ok(contentChunks.every((c) => c.choices[0].delta.content.length <= 4));
    const finish = chunks.at(-1)!;
    assert.deepEqual(finish.choices[0].delta, {});
    assert.equal(finish.choices[0].finish_reason, "stop");
    assert.ok(chunks.slice(0, -1).every((c) => c.choices[0].finish_reason === null));
    assert.deepEqual(finish.usage, {
      prompt_tokens: 4,
      completion_tokens: contentChunks.length,
      total_tokens: 4 + contentChunks.length,
    });
  });
});

Deno.test("usage is only streamed when asked for", async () => {
  await withDouble({}, async (double) => {
    const data = sseData(await (await chat(double, say("hi", { stream: true }))).text());
    assert.ok(data.every((d) => d === "[DONE]" || d.usage === undefined));
  });
});

Deno.test("ollama streams finish_reason on its own chunk and usage on a separate choices:[] chunk", async () => {
  await withDouble({ kind: "ollama" }, async (double) => {
    const res = await chat(
      double,
      say("hello", { stream: true, stream_options: { include_usage: true } }),
    );
    const data = sseData(await res.text());
    assert.equal(data.at(-1), "[DONE]");
    const usageChunk = data.at(-2) as Json;
    assert.deepEqual(usageChunk.choices, []);
    assert.equal(usageChunk.usage.prompt_tokens, 3);
    const finish = data.at(-3) as Json;
    assert.deepEqual(finish.choices[0].delta, {});
    assert.equal(finish.choices[0].finish_reason, "stop");
    assert.equal(finish.usage, undefined);
  });
});

Deno.test("a non-streamed LM Studio answer always carries tool_calls and usage", async () => {
  await withDouble({}, async (double) => {
    const body = await (await chat(double, say("one two three"))).json();
    assert.equal(body.object, "chat.completion");
    assert.match(body.id, /^chatcmpl-/);
    assert.equal(body.model, "qwen/qwen3-4b");
    assert.deepEqual(body.choices[0].message, {
      role: "assistant",
      content: "[qwen/qwen3-4b] You said: one two three",
      tool_calls: [],
    });
    assert.equal(body.choices[0].finish_reason, "stop");
    assert.equal(body.usage.prompt_tokens, 5);
    assert.ok(body.usage.completion_tokens > 0);
  });
});

Deno.test('LM Studio streams tool calls as fragments, later ones with only index and name ""', async () => {
  await withDouble({}, async (double) => {
    double.enqueueReply({
      content: "",
      toolCalls: [
        { name: "read_file", arguments: '{"path":"/tmp/a.txt"}' },
        { name: "list_dir", arguments: '{"path":"/tmp"}', id: "42" },
      ],
    });
    const data = sseData(await (await chat(double, say("use tools", { stream: true }))).text());
    const fragments = (data.slice(0, -1) as Json[]).flatMap((c) =>
      c.choices[0].delta.tool_calls ?? []
    );
    const byIndex = new Map<number, { name: string; args: string; id?: string }>();
    for (const f of fragments) {
      if (!byIndex.has(f.index)) {
        assert.equal(f.type, "function");
        assert.equal(f.function.arguments, "");
        assert.ok(f.function.name);
        assert.match(f.id, /^\d+$/);
        byIndex.set(f.index, { name: f.function.name, args: "", id: f.id });
      } else {
        assert.deepEqual(Object.keys(f).sort(), ["function", "index"]);
        assert.equal(f.function.name, "");
        byIndex.get(f.index)!.args += f.function.arguments;
      }
    }
    assert.deepEqual([...byIndex.values()].map((c) => [c.name, c.args]), [
      ["read_file", '{"path":"/tmp/a.txt"}'],
      ["list_dir", '{"path":"/tmp"}'],
    ]);
    assert.equal(byIndex.get(1)!.id, "42");
    // The two calls interleave.
    assert.notDeepEqual(fragments.map((f) => f.index), [...fragments.map((f) => f.index)].sort());
    assert.equal((data.at(-2) as Json).choices[0].finish_reason, "tool_calls");
  });
});

Deno.test("Ollama streams each tool call whole in one delta", async () => {
  await withDouble({ kind: "ollama" }, async (double) => {
    double.enqueueReply({ toolCalls: [{ name: "f", arguments: "{not json" }] });
    const data = sseData(await (await chat(double, say("go", { stream: true }))).text());
    const calls = (data.slice(0, -1) as Json[]).flatMap((c) => c.choices[0].delta.tool_calls ?? []);
    assert.equal(calls.length, 1);
    assert.equal(calls[0].function.name, "f");
    assert.equal(calls[0].function.arguments, "{not json");
  });
});

Deno.test("REASON: streams thinking in the field of each kind, or in <think> tags", async () => {
  const reasoningOf = async (options: DoubleOptions, field: string) => {
    await withDouble(options, async (double) => {
      const data = sseData(await (await chat(double, say("REASON: why", { stream: true }))).text());
      const deltas = (data.slice(0, -1) as Json[]).map((c) => c.choices[0].delta);
      assert.equal(deltas.map((d) => d[field] ?? "").join(""), "thinking about it");
      const body = await (await chat(double, say("REASON: why"))).json();
      assert.equal(body.choices[0].message[field], "thinking about it");
    });
  };
  await reasoningOf({}, "reasoning_content");
  await reasoningOf({ kind: "llamacpp" }, "reasoning_content");
  await reasoningOf({ kind: "ollama" }, "reasoning");
  await withDouble({}, async (double) => {
    double.enqueueReply({ content: "42", reasoning: "hmm", reasoningField: "think_tags" });
    const data = sseData(await (await chat(double, say("x", { stream: true }))).text());
    const content = (data.slice(0, -1) as Json[]).map((c) => c.choices[0].delta.content ?? "")
      .join("");
    assert.equal(content, "<think>hmm</think>\n\n42");
  });
});

// --- faults ----------------------------------------------------------------------------------

Deno.test("a status fault answers 429 with Retry-After, once", async () => {
  await withDouble({}, async (double) => {
    double.addFault({
      fault: { kind: "status", status: 429, headers: { "Retry-After": "2" } },
      path: "/v1/chat/completions",
    });
    const res = await chat(double, say("hi"));
    assert.equal(res.status, 429);
    assert.equal(res.headers.get("retry-after"), "2");
    assert.ok((await res.json()).error);
    const again = await chat(double, say("hi"));
    assert.equal(again.status, 200);
    await again.body?.cancel();
  });
});

Deno.test("reset makes fetch fail with a TypeError, on a fresh or a reused connection", async () => {
  await withDouble({}, async (double) => {
    double.addFault({ fault: { kind: "reset" } });
    await assert.rejects(chat(double, say("hi")), TypeError);
    // Warm a keep-alive connection, then reset a request on it: still visible to the client.
    await (await fetch(`${double.url}/lmstudio-greeting`)).json();
    double.addFault({ fault: { kind: "reset" } });
    await assert.rejects(chat(double, say("hi")), TypeError);
    const ok = await chat(double, say("after"));
    assert.equal(ok.status, 200);
    assert.match((await ok.json()).choices[0].message.content, /after/);
  });
});

Deno.test("drop breaks the body after some chunks", async () => {
  await withDouble({}, async (double) => {
    double.addFault({ fault: { kind: "drop", afterChunks: 2 } });
    const res = await chat(double, say("a long enough answer", { stream: true }));
    assert.equal(res.status, 200);
    const reader = textReader(res);
    const seen = await readUntil(reader, (t) => sseEvents(t).length >= 2);
    assert.equal(sseEvents(seen).length, 2);
    await assert.rejects(readUntil(reader, () => false), TypeError);
    const [record] = await double.waitForRequests(1);
    assert.equal(record.completed, false);
  });
});

Deno.test("stall keeps the stream silent until the client aborts, and the abort is recorded", async () => {
  await withDouble({}, async (double) => {
    double.addFault({ fault: { kind: "stall", afterChunks: 1 } });
    const abort = new AbortController();
    const res = await chat(double, say("hello", { stream: true }), { signal: abort.signal });
    const reader = textReader(res);
    await readUntil(reader, (t) => sseEvents(t).length >= 1);
    const [record] = await double.waitForRequests(1);
    assert.equal(double.stats.inFlight, 1);
    abort.abort();
    await assert.rejects(reader.read());
    await double.waitForAbort(record.id);
    assert.equal(record.aborted, true);
    assert.equal(record.completed, false);
    assert.equal(double.stats.inFlight, 0);
  });
});

Deno.test("a stream stops generating when the client aborts", async () => {
  await withDouble({ chunkDelayMs: 20 }, async (double) => {
    const abort = new AbortController();
    const res = await chat(double, say("x ".repeat(200), { stream: true }), {
      signal: abort.signal,
    });
    const reader = textReader(res);
    await readUntil(reader, (t) => sseEvents(t).length >= 2);
    abort.abort();
    await reader.read().catch(() => {});
    await double.waitForAbort(1);
    assert.equal(double.requests[0].completed, false);
    assert.equal(double.stats.inFlight, 0);
  });
});

Deno.test("close() ends a stalled stream and is idempotent", async () => {
  const double = await startDouble();
  double.addFault({ fault: { kind: "stall", afterChunks: 0 } });
  const res = await chat(double, say("hi", { stream: true }));
  const reader = textReader(res);
  await double.waitForRequests(1);
  await Promise.all([double.close(), double.close()]);
  await assert.rejects(readUntil(reader, () => false));
  assert.equal(double.requests[0].aborted, false);
});

Deno.test("garbage, error_in_200, error_in_stream and empty_stream look as a client sees them", async () => {
  await withDouble({}, async (double) => {
    double.addFault({ fault: { kind: "garbage" } });
    const garbage = await chat(double, say("hi"));
    assert.equal(garbage.status, 200);
    await assert.rejects(garbage.json(), SyntaxError);

    double.addFault({ fault: { kind: "error_in_200", message: "model crashed" } });
    const in200 = await chat(double, say("hi"));
    assert.equal(in200.status, 200);
    assert.deepEqual(await in200.json(), { error: "model crashed" });

    double.addFault({ fault: { kind: "error_in_200", message: "model crashed" } });
    const in200Stream = sseData(await (await chat(double, say("hi", { stream: true }))).text());
    assert.deepEqual(in200Stream, [{ error: { message: "model crashed" } }]);

    double.addFault({ fault: { kind: "error_in_stream", afterChunks: 2, message: "oops" } });
    const broken = sseData(await (await chat(double, say("hello", { stream: true }))).text());
    assert.equal(broken.length, 3);
    assert.deepEqual(broken[2], { error: { message: "oops" } });

    double.addFault({ fault: { kind: "empty_stream" } });
    const empty = await chat(double, say("hi", { stream: true }));
    assert.equal(empty.status, 200);
    assert.equal(await empty.text(), "data: [DONE]\n\n");
  });
});

Deno.test("context_overflow speaks LM Studio's and llama-server's dialects", async () => {
  await withDouble({}, async (double) => {
    double.addFault({ fault: { kind: "context_overflow" } });
    const res = await chat(double, say("long"));
    assert.equal(res.status, 400);
    assert.match((await res.json()).error, /\(n_keep: 5228 >= n_ctx: 4096\)/);
  });
  await withDouble({ kind: "llamacpp" }, async (double) => {
    double.addFault({ fault: { kind: "context_overflow" }, model: "whatever" });
    const ok = await chat(double, say("not this one"));
    assert.equal(ok.status, 200);
    await ok.body?.cancel();
    const res = await chat(double, { ...say("long"), model: "whatever" });
    assert.equal(res.status, 400);
    const { error } = await res.json();
    assert.equal(error.type, "exceed_context_size_error");
    assert.equal(error.n_ctx, 4096);
  });
});

Deno.test("first_byte_delay holds the headers and slow_stream paces the chunks", async () => {
  await withDouble({}, async (double) => {
    double.addFault({ fault: { kind: "first_byte_delay", ms: 300 } });
    let started = Date.now();
    const res = await chat(double, say("hi"));
    assert.ok(Date.now() - started >= 280);
    await res.body?.cancel();

    double.addFault({ fault: { kind: "slow_stream", chunkDelayMs: 50 } });
    started = Date.now();
    const text = await (await chat(double, say("hello", { stream: true }))).text();
    const chunks = sseEvents(text).length;
    assert.ok(Date.now() - started >= (chunks - 1) * 50 - 20);
  });
});

Deno.test("fault rules match by path and model and fire `times` times", async () => {
  await withDouble({}, async (double) => {
    double.addFault({
      fault: { kind: "status", status: 503 },
      path: "/v1/models",
      times: 2,
    });
    const statuses = [];
    for (let i = 0; i < 3; i++) {
      const res = await fetch(`${double.url}/v1/models`);
      statuses.push(res.status);
      await res.body?.cancel();
    }
    assert.deepEqual(statuses, [503, 503, 200]);
    double.addFault({ fault: { kind: "status", status: 500 }, times: Infinity });
    double.clearFaults();
    const res = await fetch(`${double.url}/v1/models`);
    assert.equal(res.status, 200);
    await res.body?.cancel();
  });
});

// --- auth, paths, models ---------------------------------------------------------------------

Deno.test("with an API key, requests without the bearer token get 401 invalid_api_key", async () => {
  await withDouble({ apiKey: "sk-lm-abc:def" }, async (double) => {
    const none = await fetch(`${double.url}/v1/models`);
    assert.equal(none.status, 401);
    const { error } = await none.json();
    assert.equal(error.type, "invalid_request");
    assert.equal(error.code, "invalid_api_key");
    const wrong = await fetch(`${double.url}/v1/models`, {
      headers: { Authorization: "Bearer nope" },
    });
    assert.equal(wrong.status, 401);
    await wrong.body?.cancel();
    const right = await fetch(`${double.url}/v1/models`, {
      headers: { Authorization: "Bearer sk-lm-abc:def" },
    });
    assert.equal(right.status, 200);
    await right.body?.cancel();
    assert.equal(double.requests[2].headers.authorization, "Bearer sk-lm-abc:def");
  });
});

Deno.test("an unknown path answers 200 with an error on LM Studio, 404 elsewhere", async () => {
  await withDouble({}, async (double) => {
    const res = await fetch(`${double.url}/x`);
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), { error: "Unexpected endpoint or method. (GET /x)" });
    const greeting = await fetch(`${double.url}/lmstudio-greeting`);
    assert.deepEqual(await greeting.json(), { lmstudio: true });
  });
  await withDouble({ kind: "ollama" }, async (double) => {
    const res = await fetch(`${double.url}/lmstudio-greeting`);
    assert.equal(res.status, 404);
    await res.body?.cancel();
    const version = await fetch(`${double.url}/api/version`);
    assert.deepEqual(await version.json(), { version: "0.12.0" });
  });
});

Deno.test("an unknown model is model_not_found in each kind's shape", async () => {
  await withDouble({}, async (double) => {
    const res = await chat(double, { ...say("hi"), model: "x" });
    assert.equal(res.status, 400);
    assert.deepEqual(await res.json(), {
      error: {
        message:
          'Invalid model identifier "x". Please specify a valid downloaded model (e.g., qwen/qwen3-4b, google/gemma-3-4b, text-embedding-nomic-embed-text-v1.5).',
        type: "invalid_request_error",
        code: "model_not_found",
        param: "model",
      },
    });
  });
  await withDouble({ kind: "ollama" }, async (double) => {
    const res = await chat(double, { ...say("hi"), model: "x" });
    assert.equal(res.status, 404);
    assert.deepEqual(await res.json(), {
      error: { message: "model 'x' not found", type: "api_error" },
    });
  });
});

Deno.test("/v1/models lists every downloaded model with JIT, only loaded ones without", async () => {
  await withDouble({}, async (double) => {
    const { data } = await (await fetch(`${double.url}/v1/models`)).json();
    assert.equal(data.length, 3);
    assert.deepEqual(Object.keys(data[0]).sort(), ["id", "object", "owned_by"]);
  });
  await withDouble({ jit: false }, async (double) => {
    const { data } = await (await fetch(`${double.url}/v1/models`)).json();
    assert.deepEqual(data.map((m: Json) => m.id), ["qwen/qwen3-4b"]);
    const res = await chat(double, { ...say("hi"), model: "google/gemma-3-4b" });
    assert.equal(res.status, 400);
    assert.match(JSON.stringify(await res.json()), /not loaded/);
    assert.equal(double.stats.loads, 0);
  });
  await withDouble({ kind: "llamacpp" }, async (double) => {
    const { data } = await (await fetch(`${double.url}/v1/models`)).json();
    assert.equal(data.length, 1);
    const body = await (await chat(double, { ...say("hi"), model: "anything" })).json();
    assert.equal(body.model, "qwen/qwen3-4b");
    assert.equal(typeof body.timings.predicted_n, "number");
  });
});

Deno.test("native model lists show state, capabilities and loaded instances", async () => {
  await withDouble({}, async (double) => {
    const v0 = await (await fetch(`${double.url}/api/v0/models`)).json();
    const qwen0 = v0.data.find((m: Json) => m.id === "qwen/qwen3-4b");
    assert.equal(qwen0.state, "loaded");
    assert.equal(qwen0.type, "llm");
    assert.equal(qwen0.max_context_length, 4096);
    assert.equal(qwen0.loaded_context_length, 4096);
    assert.deepEqual(qwen0.capabilities, ["tool_use"]);
    const gemma0 = v0.data.find((m: Json) => m.id === "google/gemma-3-4b");
    assert.equal(gemma0.state, "not-loaded");
    assert.equal(gemma0.type, "vlm");

    const v1 = await (await fetch(`${double.url}/api/v1/models`)).json();
    const qwen = v1.models.find((m: Json) => m.key === "qwen/qwen3-4b");
    assert.deepEqual(qwen.loaded_instances.map((i: Json) => [i.id, i.config.parallel]), [[
      "qwen/qwen3-4b",
      4,
    ]]);
    assert.equal(qwen.capabilities.trained_for_tool_use, true);
    const gemma = v1.models.find((m: Json) => m.key === "google/gemma-3-4b");
    assert.equal(gemma.type, "llm");
    assert.equal(gemma.capabilities.vision, true);
    assert.deepEqual(gemma.loaded_instances, []);
    const embedding = v1.models.find((m: Json) => m.type === "embedding");
    assert.equal(embedding.key, "text-embedding-nomic-embed-text-v1.5");
  });
});

Deno.test("native load takes loadDelayMs, counts, and unload frees the instance", async () => {
  await withDouble({ loadDelayMs: 200 }, async (double) => {
    const started = Date.now();
    const res = await post(double, "/api/v1/models/load", {
      model: "google/gemma-3-4b",
      context_length: 8192,
    });
    assert.ok(Date.now() - started >= 180);
    const loaded = await res.json();
    assert.equal(loaded.status, "loaded");
    assert.equal(loaded.instance_id, "google/gemma-3-4b");
    assert.equal(double.stats.loads, 1);
    assert.equal(double.models[1].loaded, true);
    const v1 = await (await fetch(`${double.url}/api/v1/models`)).json();
    const gemma = v1.models.find((m: Json) => m.key === "google/gemma-3-4b");
    assert.equal(gemma.loaded_instances[0].config.context_length, 8192);

    const unloaded = await post(double, "/api/v1/models/unload", {
      instance_id: "google/gemma-3-4b",
    });
    assert.deepEqual(await unloaded.json(), { instance_id: "google/gemma-3-4b" });
    assert.equal(double.models[1].loaded, false);

    const missing = await post(double, "/api/v1/models/load", { model: "nope/nope" });
    assert.equal(missing.status, 404);
    assert.equal((await missing.json()).error.code, "model_not_found");
  });
});

Deno.test("a request for an unloaded model JIT-loads it; concurrent ones each load", async () => {
  await withDouble({ loadDelayMs: 200 }, async (double) => {
    const started = Date.now();
    const body = await (await chat(double, { ...say("hi"), model: "google/gemma-3-4b" })).json();
    assert.ok(Date.now() - started >= 180);
    assert.equal(body.choices[0].message.content, "[google/gemma-3-4b] You said: hi");
    assert.equal(double.models[1].loaded, true);
    await (await chat(double, { ...say("again"), model: "google/gemma-3-4b" })).json();
    assert.deepEqual(double.stats.loadsByModel, { "google/gemma-3-4b": 1 });

    const embed = () =>
      post(double, "/v1/embeddings", {
        model: "text-embedding-nomic-embed-text-v1.5",
        input: "a",
      }).then((r) => r.json());
    await Promise.all([embed(), embed(), embed()]);
    const loadsByModel: Record<string, number> = double.stats.loadsByModel;
    assert.equal(loadsByModel["text-embedding-nomic-embed-text-v1.5"], 3);
    assert.equal(double.stats.loads, 4);
  });
});

// --- generation semantics --------------------------------------------------------------------

Deno.test("scripted replies win over the echo, FIFO, filtered by model and match", async () => {
  await withDouble({}, async (double) => {
    double.enqueueReply({ content: "for gemma" }, { model: "google/gemma-3-4b" });
    double.enqueueReply({ content: "about cats" }, { match: "cats" });
    double.enqueueReply({ content: "first" });
    double.enqueueReply({ content: "second", model: "other/model" });
    const text = async (body: Json) => {
      const answer = await (await chat(double, body)).json();
      return [answer.choices[0].message.content, answer.model];
    };
    assert.deepEqual(await text(say("dogs")), ["first", "qwen/qwen3-4b"]);
    assert.deepEqual(await text(say("cats!")), ["about cats", "qwen/qwen3-4b"]);
    assert.deepEqual(await text(say("x")), ["second", "other/model"]);
    assert.deepEqual(await text(say("y")), ["[qwen/qwen3-4b] You said: y", "qwen/qwen3-4b"]);
    assert.deepEqual(await text({ ...say("z"), model: "google/gemma-3-4b" }), [
      "for gemma",
      "google/gemma-3-4b",
    ]);
  });
});

Deno.test("completions continue the prompt", async () => {
  await withDouble({}, async (double) => {
    const body = await (await post(double, "/v1/completions", {
      model: "qwen/qwen3-4b",
      prompt: "Once upon",
    })).json();
    assert.equal(body.object, "text_completion");
    assert.equal(body.choices[0].text, "[qwen/qwen3-4b] continues: Once upon");
    const data = sseData(
      await (await post(double, "/v1/completions", {
        model: "qwen/qwen3-4b",
        prompt: "Once upon",
        stream: true,
      })).text(),
    );
    assert.equal(data.at(-1), "[DONE]");
    assert.equal(
      (data.slice(0, -1) as Json[]).map((c) => c.choices[0].text).join(""),
      "[qwen/qwen3-4b] continues: Once upon",
    );
  });
});

Deno.test("json_schema answers a minimal matching value; json_object is refused", async () => {
  await withDouble({}, async (double) => {
    const schema = {
      type: "object",
      properties: {
        name: { type: "string" },
        age: { type: "integer" },
        tags: { type: "array", items: { type: "string" } },
        ok: { type: "boolean" },
        note: { type: "string" },
      },
      required: ["name", "age", "tags", "ok"],
    };
    const body = await (await chat(
      double,
      say("json please", {
        response_format: { type: "json_schema", json_schema: { name: "p", strict: true, schema } },
      }),
    )).json();
    assert.deepEqual(JSON.parse(body.choices[0].message.content), {
      name: "example",
      age: 1,
      tags: ["example"],
      ok: true,
    });
    const refused = await chat(double, say("x", { response_format: { type: "json_object" } }));
    assert.equal(refused.status, 400);
    assert.deepEqual(await refused.json(), {
      error: "'response_format.type' must be 'json_schema' or 'text'",
    });
  });
});

Deno.test("images need a vision model and a base64 data URL", async () => {
  await withDouble({}, async (double) => {
    const withImage = (model: string, url: string) => ({
      model,
      messages: [{
        role: "user",
        content: [{ type: "text", text: "what is it" }, {
          type: "image_url",
          image_url: { url },
        }],
      }],
    });
    const text = await chat(double, withImage("qwen/qwen3-4b", "data:image/png;base64,AAAA"));
    assert.equal(text.status, 400);
    assert.deepEqual(await text.json(), {
      error: "Model does not support images. Please use a model that does.",
    });
    const remote = await chat(double, withImage("google/gemma-3-4b", "https://x/y.png"));
    assert.equal(remote.status, 400);
    assert.deepEqual(await remote.json(), { error: "'url' field must be a base64 encoded image." });
    const ok = await (await chat(
      double,
      withImage("google/gemma-3-4b", "data:image/png;base64,AAAA"),
    )).json();
    assert.equal(
      ok.choices[0].message.content,
      "[google/gemma-3-4b] You said: what is it (+1 images)",
    );
  });
});

Deno.test("embeddings are deterministic unit vectors and need an embedding model", async () => {
  await withDouble({ embeddingDimensions: 16 }, async (double) => {
    const embed = (input: unknown, model = "text-embedding-nomic-embed-text-v1.5") =>
      post(double, "/v1/embeddings", { model, input });
    const first = await (await embed(["alpha", "beta"])).json();
    const second = await (await embed("alpha")).json();
    assert.equal(first.object, "list");
    assert.equal(first.data.length, 2);
    assert.deepEqual(first.data.map((d: Json) => d.index), [0, 1]);
    assert.deepEqual(first.data[0].embedding, second.data[0].embedding);
    assert.notDeepEqual(first.data[0].embedding, first.data[1].embedding);
    for (const { embedding } of first.data) {
      assert.equal(embedding.length, 16);
      assert.ok(Math.abs(Math.hypot(...embedding) - 1) < 1e-9);
    }
    const wrong = await embed("alpha", "qwen/qwen3-4b");
    assert.equal(wrong.status, 400);
    await wrong.body?.cancel();
  });
});

Deno.test("responses chain through previous_response_id and count turns", async () => {
  await withDouble({}, async (double) => {
    const first = await (await post(double, "/v1/responses", {
      model: "qwen/qwen3-4b",
      input: "hello",
    })).json();
    assert.match(first.id, /^resp_/);
    const text = (r: Json) =>
      r.output.find((o: Json) => o.type === "message").content[0].text as string;
    assert.equal(text(first), "[qwen/qwen3-4b] You said: hello (turn 1)");
    const second = await (await post(double, "/v1/responses", {
      input: [{ role: "user", content: "and then?" }],
      previous_response_id: first.id,
    })).json();
    assert.equal(text(second), "[qwen/qwen3-4b] You said: and then? (turn 2)");

    const streamed = await post(double, "/v1/responses", {
      input: "more",
      previous_response_id: second.id,
      stream: true,
    });
    const events = sseEvents(await streamed.text());
    assert.equal(events[0].event, "response.created");
    assert.equal(events.at(-1)!.event, "response.completed");
    const deltas = events.filter((e) => e.event === "response.output_text.delta")
      .map((e) => JSON.parse(e.data).delta).join("");
    assert.equal(deltas, "[qwen/qwen3-4b] You said: more (turn 3)");

    const unknown = await post(double, "/v1/responses", {
      input: "x",
      previous_response_id: "resp_nope",
    });
    assert.equal(unknown.status, 400);
    assert.ok((await unknown.json()).error);
  });
  await withDouble({ kind: "ollama" }, async (double) => {
    const body = await (await post(double, "/v1/responses", {
      model: "qwen/qwen3-4b",
      input: "again",
      previous_response_id: "resp_whatever",
    })).json();
    assert.equal(body.output[0].content[0].text, "[qwen/qwen3-4b] You said: again (turn 1)");
  });
});

Deno.test("stats count generation requests in flight", async () => {
  await withDouble({ chunkDelayMs: 30 }, async (double) => {
    await (await fetch(`${double.url}/v1/models`)).json();
    await Promise.all([1, 2, 3].map((i) => chat(double, say(`req ${i}`)).then((r) => r.json())));
    assert.equal(double.stats.maxInFlight, 3);
    assert.equal(double.stats.inFlight, 0);
    assert.ok(double.requests.slice(1).every((r) => r.completed && !r.aborted));
  });
});

Deno.test("waitForRequests resolves on arrival and rejects on its signal", async () => {
  await withDouble({}, async (double) => {
    const waiting = double.waitForRequests(2, { path: "/v1/models" });
    for (let i = 0; i < 2; i++) await (await fetch(`${double.url}/v1/models`)).json();
    assert.equal((await waiting).length, 2);
    const abort = new AbortController();
    const never = double.waitForRequests(5, { signal: abort.signal });
    abort.abort(new Error("gave up"));
    await assert.rejects(never, /gave up/);
    await assert.rejects(double.waitForAbort(1, 100), /not aborted/);
  });
});

// --- standalone ------------------------------------------------------------------------------

Deno.test("the standalone double prints its address and serves until killed", async () => {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "tests/support/lmstudio_double.ts", "--port", "0", "--quiet"],
    cwd: new URL("..", import.meta.url),
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  try {
    const line = await readUntil(reader, (t) => t.includes("\n"));
    const match = /^lmstudio double listening on (http:\/\/127\.0\.0\.1:\d+)\n$/.exec(line);
    assert.ok(match, `unexpected first line: ${line}`);
    const { data } = await (await fetch(`${match[1]}/v1/models`)).json();
    assert.equal(data[0].id, "qwen/qwen3-4b");
  } finally {
    child.kill("SIGTERM");
    await child.status;
    await reader.cancel();
  }
});

Deno.test("the standalone command line is parsed strictly", () => {
  assert.deepEqual(parseDoubleArgs(["--kind=ollama", "--api-key", "k"]), {
    log: true,
    kind: "ollama",
    apiKey: "k",
    port: 11434,
  });
  assert.equal(parseDoubleArgs([]).port, 1234);
  assert.throws(() => parseDoubleArgs(["--port", "x"]), /--port/);
  assert.throws(() => parseDoubleArgs(["--kind", "vllm"]), /--kind/);
  assert.throws(() => parseDoubleArgs(["--bogus"]), /--bogus/);
});
