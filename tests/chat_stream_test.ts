import assert from "node:assert/strict";
import { CompletionAccumulator, ThinkTagSplitter } from "../src/backend/chat_stream.ts";

/** Feeds pieces to a fresh splitter and returns everything it gave out, flush included. */
function split(pieces: string[]): { text: string; reasoning: string } {
  const s = new ThinkTagSplitter();
  let text = "";
  let reasoning = "";
  for (const p of [...pieces.map((p) => s.push(p)), s.flush()]) {
    text += p.text;
    reasoning += p.reasoning;
  }
  return { text, reasoning };
}

/** A streamed chat chunk with one choice. */
const chunk = (delta: Record<string, unknown>, finish: string | null = null, extra = {}) => ({
  id: "chatcmpl-1",
  object: "chat.completion.chunk",
  model: "qwen/qwen3-4b",
  choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }],
  ...extra,
});

/** An accumulator that records every handler call. */
function recording() {
  const calls: string[] = [];
  const acc = new CompletionAccumulator({
    onText: (d) => calls.push(`text:${d}`),
    onReasoning: (d) => calls.push(`reasoning:${d}`),
    onToolCall: (i, name) => calls.push(`tool:${i}:${name}`),
  });
  return { acc, calls };
}

// --- ThinkTagSplitter ---

const THINK = "Hello <think>the user wants x</think>Answer < 3 and <b>bold</b>.";
const THINK_TEXT = "Hello Answer < 3 and <b>bold</b>.";
const THINK_REASONING = "the user wants x";

Deno.test("think tags split at every position still separate reasoning from text", () => {
  for (let i = 0; i <= THINK.length; i++) {
    const got = split([THINK.slice(0, i), THINK.slice(i)]);
    assert.deepEqual(got, { text: THINK_TEXT, reasoning: THINK_REASONING }, `cut at ${i}`);
  }
});

Deno.test("think tags split at every pair of positions still separate correctly", () => {
  for (let i = 0; i <= THINK.length; i++) {
    for (let j = i; j <= THINK.length; j++) {
      const got = split([THINK.slice(0, i), THINK.slice(i, j), THINK.slice(j)]);
      assert.deepEqual(got, { text: THINK_TEXT, reasoning: THINK_REASONING }, `cuts ${i},${j}`);
    }
  }
});

Deno.test("think tags fed one character at a time", () => {
  assert.deepEqual(split([...THINK]), { text: THINK_TEXT, reasoning: THINK_REASONING });
});

Deno.test("text that only looks like the start of a tag is given out", () => {
  assert.deepEqual(split(["a <th", "ought> b"]), { text: "a <thought> b", reasoning: "" });
  assert.deepEqual(split(["x <"]), { text: "x <", reasoning: "" }, "flush gives the held tail");
  assert.deepEqual(split(["<think>unfinished </thi"]), {
    text: "",
    reasoning: "unfinished </thi",
  });
});

Deno.test("the splitter holds back only a possible tag prefix", () => {
  const s = new ThinkTagSplitter();
  assert.deepEqual(s.push("abc<thi"), { text: "abc", reasoning: "" });
  assert.deepEqual(s.push("nk>r"), { text: "", reasoning: "r" });
  assert.deepEqual(s.push("</"), { text: "", reasoning: "" });
  assert.deepEqual(s.push("think>t"), { text: "t", reasoning: "" });
  assert.deepEqual(s.flush(), { text: "", reasoning: "" });
});

Deno.test("several think blocks in one stream", () => {
  assert.deepEqual(split(["<think>a</think>b<think>c</think>d"]), { text: "bd", reasoning: "ac" });
});

// --- CompletionAccumulator: content and reasoning ---

Deno.test("content deltas are joined and handed to onText", () => {
  const { acc, calls } = recording();
  assert.equal(acc.delivered, false);
  assert.equal(acc.push(chunk({ role: "assistant", content: "" })), true);
  assert.equal(acc.push(chunk({ content: "Hel" })), true);
  assert.equal(acc.push(chunk({ content: "lo" })), true);
  assert.equal(acc.push(chunk({}, "stop")), true);
  assert.deepEqual(acc.finish(), []);
  assert.equal(acc.text, "Hello");
  assert.equal(acc.reasoning, "");
  assert.equal(acc.finishReason, "stop");
  assert.equal(acc.model, "qwen/qwen3-4b");
  assert.equal(acc.delivered, true);
  assert.deepEqual(calls, ["text:Hel", "text:lo"]);
});

Deno.test("reasoning comes from reasoning_content (DeepSeek/Qwen style)", () => {
  const { acc, calls } = recording();
  acc.push(chunk({ reasoning_content: "think " }));
  acc.push(chunk({ reasoning_content: "more", content: null }));
  acc.push(chunk({ content: "Answer" }));
  acc.finish();
  assert.equal(acc.reasoning, "think more");
  assert.equal(acc.text, "Answer");
  assert.deepEqual(calls, ["reasoning:think ", "reasoning:more", "text:Answer"]);
});

Deno.test("reasoning comes from reasoning (gpt-oss / Ollama style)", () => {
  const acc = new CompletionAccumulator();
  acc.push(chunk({ reasoning: "hmm" }));
  acc.push(chunk({ reasoning_content: null, reasoning: ", ok" }));
  acc.push(chunk({ content: "Done" }));
  acc.finish();
  assert.equal(acc.reasoning, "hmm, ok");
  assert.equal(acc.text, "Done");
});

Deno.test("reasoning comes from <think> tags left in content", () => {
  const { acc, calls } = recording();
  for (const p of ["<thi", "nk>plan", " it</th", "ink>", "Result"]) acc.push(chunk({ content: p }));
  acc.finish();
  assert.equal(acc.reasoning, "plan it");
  assert.equal(acc.text, "Result");
  assert.ok(calls.every((c) => !c.includes("<")), "no tag text reaches a handler");
});

Deno.test("held-back content is given out at finish", () => {
  const { acc, calls } = recording();
  acc.push(chunk({ content: "a <" }));
  assert.equal(acc.text, "a ");
  acc.finish();
  assert.equal(acc.text, "a <");
  assert.deepEqual(calls, ["text:a ", "text:<"]);
});

Deno.test("unterminated think at the end of the stream is reasoning", () => {
  const acc = new CompletionAccumulator();
  acc.push(chunk({ content: "<think>still thinking</th" }));
  acc.finish();
  assert.equal(acc.reasoning, "still thinking</th");
  assert.equal(acc.text, "");
  assert.equal(acc.delivered, true);
});

// --- tool calls ---

Deno.test("tool-call fragments are joined by index", () => {
  const { acc, calls } = recording();
  acc.push(chunk({
    tool_calls: [{
      index: 0,
      id: "123",
      type: "function",
      function: { name: "read_file", arguments: "" },
    }],
  }));
  acc.push(chunk({ tool_calls: [{ index: 0, function: { arguments: '{"pa' } }] }));
  acc.push(chunk({ tool_calls: [{ index: 0, function: { arguments: 'th":"a.txt"}' } }] }));
  acc.push(chunk({}, "tool_calls"));
  assert.deepEqual(acc.finish(), [{
    id: "123",
    type: "function",
    function: { name: "read_file", arguments: '{"path":"a.txt"}' },
  }]);
  assert.equal(acc.finishReason, "tool_calls");
  assert.deepEqual(calls, ["tool:0:read_file"], "onToolCall once per call");
});

Deno.test("interleaved tool calls with empty name on later fragments stay separate", () => {
  const acc = new CompletionAccumulator();
  const frags = [
    { index: 0, id: "1", type: "function", function: { name: "a", arguments: "" } },
    { index: 1, id: "2", type: "function", function: { name: "b", arguments: "" } },
    { index: 0, function: { name: "", arguments: '{"x":' } },
    { index: 1, function: { name: "", arguments: '{"y":' } },
    { index: 0, function: { name: "", arguments: "1}" } },
    { index: 1, function: { name: "", arguments: "2}" } },
  ];
  for (const f of frags) acc.push(chunk({ tool_calls: [f] }));
  assert.deepEqual(acc.finish(), [
    { id: "1", type: "function", function: { name: "a", arguments: '{"x":1}' } },
    { id: "2", type: "function", function: { name: "b", arguments: '{"y":2}' } },
  ]);
});

Deno.test("whole tool calls as Ollama sends them, arguments as a string or an object", () => {
  const { acc, calls } = recording();
  acc.push(chunk({
    tool_calls: [{
      index: 0,
      id: "call_a",
      type: "function",
      function: { name: "search", arguments: '{"q":"x"}' },
    }],
  }));
  acc.push(chunk({
    tool_calls: [{
      index: 1,
      id: "call_b",
      type: "function",
      function: { name: "fetch", arguments: { url: "http://e", n: 2 } },
    }],
  }));
  acc.push(chunk({}, "tool_calls"));
  const got = acc.finish();
  assert.equal(got.length, 2);
  assert.deepEqual(got[0].function, { name: "search", arguments: '{"q":"x"}' });
  assert.deepEqual(got[1].function.name, "fetch");
  assert.deepEqual(JSON.parse(got[1].function.arguments), { url: "http://e", n: 2 });
  assert.equal(got[1].id, "call_b");
  assert.deepEqual(calls, ["tool:0:search", "tool:1:fetch"]);
});

Deno.test("several whole calls in one delta without index are kept apart by position", () => {
  const acc = new CompletionAccumulator();
  acc.push(chunk({
    tool_calls: [
      { id: "a", type: "function", function: { name: "one", arguments: "{}" } },
      { id: "b", type: "function", function: { name: "two", arguments: "{}" } },
    ],
  }));
  assert.deepEqual(acc.finish().map((c) => c.function.name), ["one", "two"]);
});

Deno.test("a call without id gets a stable id; calls are ordered by index", () => {
  const acc = new CompletionAccumulator();
  acc.push(chunk({ tool_calls: [{ index: 2, function: { name: "late", arguments: "{}" } }] }));
  acc.push(chunk({ tool_calls: [{ index: 0, function: { name: "early", arguments: "{}" } }] }));
  const got = acc.finish();
  assert.deepEqual(got.map((c) => c.function.name), ["early", "late"]);
  assert.deepEqual(got.map((c) => c.id), ["call_0", "call_2"]);
});

// --- usage ---

Deno.test("usage on the finish chunk (LM Studio)", () => {
  const acc = new CompletionAccumulator();
  acc.push(chunk({ content: "hi" }, null, { usage: null }));
  acc.push(chunk({}, "stop", {
    usage: { prompt_tokens: 12, completion_tokens: 3, total_tokens: 15 },
  }));
  acc.finish();
  assert.deepEqual(acc.usage, { prompt_tokens: 12, completion_tokens: 3 });
});

Deno.test("usage on a separate chunk with choices: [] (Ollama, OpenAI)", () => {
  const acc = new CompletionAccumulator();
  acc.push(chunk({ content: "hi" }));
  acc.push(chunk({}, "stop"));
  assert.equal(acc.usage, undefined);
  assert.equal(
    acc.push({
      object: "chat.completion.chunk",
      choices: [],
      usage: { prompt_tokens: 7, completion_tokens: 2 },
    }),
    true,
  );
  acc.finish();
  assert.deepEqual(acc.usage, { prompt_tokens: 7, completion_tokens: 2 });
  assert.equal(acc.finishReason, "stop", "the usage chunk keeps the finish reason");
  assert.equal(acc.text, "hi");
});

// --- errors ---

Deno.test("an error chunk (object shape) makes push return false", () => {
  const acc = new CompletionAccumulator();
  assert.equal(acc.push(chunk({ content: "partial" })), true);
  assert.equal(acc.push({ error: { message: "model crashed", type: "server_error" } }), false);
  assert.deepEqual(acc.error, { message: "model crashed", code: undefined, type: "server_error" });
  assert.equal(acc.text, "partial", "text before the error is kept");
});

Deno.test("an error chunk (string shape) makes push return false", () => {
  const acc = new CompletionAccumulator();
  assert.equal(acc.push({ error: "No models loaded." }), false);
  assert.equal(acc.error?.message, "No models loaded.");
  assert.equal(acc.delivered, false);
});

Deno.test("chunks that are not objects are ignored", () => {
  const acc = new CompletionAccumulator();
  assert.equal(acc.push(null), true);
  assert.equal(acc.push("text"), true);
  assert.equal(acc.push({ choices: "nope" }), true);
  assert.equal(acc.push({ choices: [{ delta: "nope" }] }), true);
  assert.equal(acc.text, "");
});

// --- other body shapes ---

Deno.test("a non-streamed body with message is read whole", () => {
  const { acc, calls } = recording();
  acc.push({
    id: "chatcmpl-2",
    object: "chat.completion",
    model: "google/gemma-3-4b",
    choices: [{
      index: 0,
      finish_reason: "stop",
      message: {
        role: "assistant",
        content: "The answer.",
        reasoning_content: "why",
        tool_calls: [],
      },
    }],
    usage: { prompt_tokens: 5, completion_tokens: 4, total_tokens: 9 },
  });
  assert.deepEqual(acc.finish(), [], "tool_calls: [] is no call");
  assert.equal(acc.text, "The answer.");
  assert.equal(acc.reasoning, "why");
  assert.equal(acc.finishReason, "stop");
  assert.equal(acc.model, "google/gemma-3-4b");
  assert.deepEqual(acc.usage, { prompt_tokens: 5, completion_tokens: 4 });
  assert.deepEqual(calls, ["reasoning:why", "text:The answer."]);
});

Deno.test("a non-streamed body with whole tool calls", () => {
  const acc = new CompletionAccumulator();
  acc.push({
    choices: [{
      finish_reason: "tool_calls",
      message: {
        role: "assistant",
        content: null,
        tool_calls: [
          { id: "9", type: "function", function: { name: "ls", arguments: '{"dir":"."}' } },
        ],
      },
    }],
  });
  assert.deepEqual(acc.finish(), [
    { id: "9", type: "function", function: { name: "ls", arguments: '{"dir":"."}' } },
  ]);
});

Deno.test("text-completion chunks carry text", () => {
  const { acc, calls } = recording();
  acc.push({
    object: "text_completion",
    choices: [{ index: 0, text: "Once", finish_reason: null }],
  });
  acc.push({
    object: "text_completion",
    choices: [{ index: 0, text: " upon", finish_reason: null }],
  });
  acc.push({
    object: "text_completion",
    choices: [{ index: 0, text: "", finish_reason: "length" }],
    usage: { prompt_tokens: 1, completion_tokens: 2 },
  });
  acc.finish();
  assert.equal(acc.text, "Once upon");
  assert.equal(acc.finishReason, "length");
  assert.deepEqual(acc.usage, { prompt_tokens: 1, completion_tokens: 2 });
  assert.deepEqual(calls, ["text:Once", "text: upon"]);
});
