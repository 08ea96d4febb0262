/**
 * SPEC §4 through MCP against the double: streaming progress, cancellation end to end,
 * model binding, concurrency caps and queueing, retry rules, one load per model, several
 * backends with failover, and a load test with no cross-talk.
 */
import assert from "node:assert/strict";
import { type LmStudioDouble, startDouble } from "./support/lmstudio_double.ts";
import { bridgeEnv, startBridge, textOf } from "./support/bridge.ts";
import { freePort } from "./support/helpers.ts";

// deno-lint-ignore no-explicit-any
type Structured = Record<string, any>;
const CHAT = "/v1/chat/completions";

function chats(double: LmStudioDouble) {
  return double.requests.filter((q) => q.path === CHAT);
}

Deno.test("progress is coalesced: a fast stream does not flood the client", async () => {
  const double = await startDouble({ chunkSize: 1 });
  const bridge = await startBridge(bridgeEnv(double.url));
  try {
    const prompt = "x".repeat(400);
    const progress: { progress: number; message?: string }[] = [];
    const r = await bridge.call("chat_completion", { prompt }, {
      onprogress: (p) => progress.push(p),
    });
    const text = (r.structuredContent as Structured).text as string;
    assert.equal(text.length, "[qwen/qwen3-4b] You said: ".length + 400);
    assert.equal(progress.map((p) => p.message).join(""), text, "nothing lost in coalescing");
    assert.ok(
      progress.length < text.length / 4,
      `${progress.length} notifications for ${text.length} one-character chunks`,
    );
    for (let i = 1; i < progress.length; i++) {
      assert.ok(progress[i].progress > progress[i - 1].progress);
    }
  } finally {
    await bridge.close();
    await double.close();
  }
});

Deno.test("a client cancel aborts the upstream request and frees the slot", async () => {
  const double = await startDouble({ chunkDelayMs: 200 });
  const bridge = await startBridge(bridgeEnv(double.url, { LMBRIDGE_MAX_INFLIGHT_PER_MODEL: "1" }));
  try {
    const controller = new AbortController();
    const first = bridge.call("chat_completion", { prompt: "a long answer please" }, {
      signal: controller.signal,
    });
    const [req] = await double.waitForRequests(1, { path: CHAT });
    const second = bridge.call("chat_completion", { prompt: "next" });
    controller.abort();
    await assert.rejects(first);
    await double.waitForAbort(req.id, 3_000);
    // The slot went back: the queued request runs and gets its own answer.
    const r = await second;
    assert.equal(textOf(r), "[qwen/qwen3-4b] You said: next");
    const stats = (await bridge.call("bridge_stats")).structuredContent as Structured;
    assert.deepEqual(stats.in_flight, {});
  } finally {
    await bridge.close();
    await double.close();
  }
});

Deno.test("the client going away aborts its requests upstream", async () => {
  const double = await startDouble({ chunkDelayMs: 500 });
  const bridge = await startBridge(bridgeEnv(double.url));
  const pending = bridge.call("chat_completion", { prompt: "slow" }).catch(() => undefined);
  const [req] = await double.waitForRequests(1, { path: CHAT });
  await bridge.close();
  await pending;
  await double.waitForAbort(req.id, 5_000);
  await double.close();
});

Deno.test("a request keeps its model when the default changes mid-flight", async () => {
  const double = await startDouble({
    chunkDelayMs: 100,
    models: [{ id: "org/model-a" }, { id: "org/model-b" }],
  });
  const bridge = await startBridge(bridgeEnv(double.url, { DEFAULT_MODEL: "org/model-a" }));
  try {
    const inFlight = bridge.call("chat_completion", { prompt: "started on a" });
    await double.waitForRequests(1, { path: CHAT });
    await bridge.call("set_default_model", { model: "model-b" });
    const later = await bridge.call("chat_completion", { prompt: "started on b" });
    assert.equal(textOf(await inFlight), "[org/model-a] You said: started on a");
    assert.equal(textOf(later), "[org/model-b] You said: started on b");
    assert.equal((chats(double)[0].body as Structured).model, "org/model-a");
  } finally {
    await bridge.close();
    await double.close();
  }
});

Deno.test("the per-model cap follows LM Studio's parallel; extra requests wait in the queue", async () => {
  const double = await startDouble({
    chunkDelayMs: 40,
    models: [{ id: "org/m", parallel: 2 }],
  });
  const bridge = await startBridge(bridgeEnv(double.url));
  try {
    const calls = Array.from(
      { length: 8 },
      (_, i) => bridge.call("chat_completion", { prompt: `n${i}` }),
    );
    await double.waitForRequests(2, { path: CHAT });
    const stats = (await bridge.call("bridge_stats")).structuredContent as Structured;
    assert.ok(stats.queued.total >= 1, "requests wait in the queue");
    const results = await Promise.all(calls);
    for (const [i, r] of results.entries()) assert.equal(textOf(r), `[org/m] You said: n${i}`);
    assert.equal(double.stats.maxInFlight, 2, "never more than parallel at once");
  } finally {
    await bridge.close();
    await double.close();
  }
});

Deno.test("queued requests for one model are served in arrival order", async () => {
  // With one slot, grants are strictly sequential, so arrival at the server shows the order.
  const double = await startDouble({ chunkDelayMs: 20, models: [{ id: "org/m" }] });
  const bridge = await startBridge(bridgeEnv(double.url, { LMBRIDGE_MAX_INFLIGHT_PER_MODEL: "1" }));
  try {
    const calls = Array.from(
      { length: 8 },
      (_, i) => bridge.call("chat_completion", { prompt: `n${i}` }),
    );
    await Promise.all(calls);
    const order = chats(double).map((q) => (q.body as Structured).messages.at(-1).content);
    assert.deepEqual(order, ["n0", "n1", "n2", "n3", "n4", "n5", "n6", "n7"], "FIFO");
    assert.equal(double.stats.maxInFlight, 1);
  } finally {
    await bridge.close();
    await double.close();
  }
});

Deno.test("a request that waits past the queue timeout is overloaded", async () => {
  const double = await startDouble({ chunkDelayMs: 400 });
  const bridge = await startBridge(bridgeEnv(double.url, {
    LMBRIDGE_MAX_INFLIGHT_PER_BACKEND: "1",
    LMBRIDGE_QUEUE_TIMEOUT_S: "0.3",
  }));
  try {
    const slow = bridge.call("chat_completion", { prompt: "hold the slot" });
    await double.waitForRequests(1, { path: CHAT });
    const r = await bridge.call("chat_completion", { prompt: "x" });
    assert.equal(r.isError, true);
    assert.match(textOf(r), /^Error \[overloaded\]: .*LMBRIDGE_QUEUE_TIMEOUT_S/s);
    assert.equal((await slow).isError, undefined);
    const stats = (await bridge.call("bridge_stats")).structuredContent as Structured;
    assert.ok(stats.rejected >= 1);
    assert.ok(stats.errors_by_code.overloaded >= 1);
  } finally {
    await bridge.close();
    await double.close();
  }
});

Deno.test("retry: never after text was delivered; Retry-After is honoured", async (t) => {
  const double = await startDouble();
  const bridge = await startBridge(bridgeEnv(double.url));
  try {
    await t.step("a stream broken after text is not retried", async () => {
      const before = chats(double).length;
      double.addFault({ path: CHAT, fault: { kind: "drop", afterChunks: 3 } });
      const r = await bridge.call("chat_completion", { prompt: "once only" });
      assert.match(textOf(r), /^Error \[upstream_error\]/);
      assert.equal(chats(double).length - before, 1);
    });
    await t.step("429 with Retry-After: 1 waits about a second, then succeeds", async () => {
      double.addFault({
        path: CHAT,
        fault: { kind: "status", status: 429, headers: { "retry-after": "1" } },
      });
      const started = Date.now();
      const r = await bridge.call("chat_completion", { prompt: "patience" });
      assert.equal(textOf(r), "[qwen/qwen3-4b] You said: patience");
      assert.ok(Date.now() - started >= 900, "waited for Retry-After");
      const stats = (await bridge.call("bridge_stats")).structuredContent as Structured;
      assert.ok(stats.retries >= 1);
    });
    await t.step("a Retry-After beyond the deadline is not waited for", async () => {
      double.addFault({
        path: CHAT,
        fault: { kind: "status", status: 503, headers: { "retry-after": "20" } },
      });
      const started = Date.now();
      const r = await bridge.call("chat_completion", { prompt: "x", timeout_s: 5 });
      // Not waited for: the 503 comes back at once, not a timeout after 5 s.
      assert.match(textOf(r), /^Error \[upstream_error\]: .*503/);
      assert.ok(Date.now() - started < 3_000, `took ${Date.now() - started} ms`);
    });
    await t.step("400 is never retried", async () => {
      const before = chats(double).length;
      double.addFault({
        path: CHAT,
        fault: { kind: "status", status: 400, body: { error: "bad" } },
      });
      const r = await bridge.call("chat_completion", { prompt: "x" });
      assert.match(textOf(r), /^Error \[invalid_request\]/);
      assert.equal(chats(double).length - before, 1);
    });
  } finally {
    await bridge.close();
    await double.close();
  }
});

Deno.test("many concurrent requests for an unloaded model cause one load", async () => {
  const double = await startDouble({
    loadDelayMs: 600,
    models: [{ id: "qwen/qwen3-4b" }, { id: "org/cold", loaded: false }],
  });
  const bridge = await startBridge(
    bridgeEnv(double.url, { LMBRIDGE_MAX_INFLIGHT_PER_MODEL: "20" }),
  );
  try {
    const statuses: string[] = [];
    const calls = Array.from(
      { length: 10 },
      (_, i) =>
        bridge.call("chat_completion", { prompt: `c${i}`, model: "org/cold" }, {
          onprogress: (p) => statuses.push(p.message ?? ""),
        }),
    );
    const results = await Promise.all(calls);
    for (const [i, r] of results.entries()) assert.equal(textOf(r), `[org/cold] You said: c${i}`);
    assert.equal(double.stats.loadsByModel["org/cold"], 1);
    assert.ok(statuses.some((s) => s.includes("loading model org/cold")), "load progress shown");
  } finally {
    await bridge.close();
    await double.close();
  }
});

Deno.test("a slow first byte (JIT load) within the timeout still answers", async () => {
  const double = await startDouble();
  const bridge = await startBridge(bridgeEnv(double.url, { LMBRIDGE_IDLE_TIMEOUT_S: "0.5" }));
  try {
    double.addFault({ path: CHAT, fault: { kind: "first_byte_delay", ms: 1500 } });
    const r = await bridge.call("chat_completion", { prompt: "waiting" });
    assert.equal(textOf(r), "[qwen/qwen3-4b] You said: waiting");
  } finally {
    await bridge.close();
    await double.close();
  }
});

Deno.test("a backend down at start is used once it comes up", async () => {
  const port = freePort();
  const bridge = await startBridge(bridgeEnv(`http://127.0.0.1:${port}`));
  try {
    const down = await bridge.call("chat_completion", { prompt: "x" });
    assert.match(textOf(down), /^Error \[backend_unreachable\]/);
    const double = await startDouble({ port });
    try {
      const up = await bridge.call("chat_completion", { prompt: "back" });
      assert.equal(textOf(up), "[qwen/qwen3-4b] You said: back");
    } finally {
      await double.close();
    }
  } finally {
    await bridge.close();
  }
});

Deno.test("several backends: failover from a dead one, cooldown shown, least busy chosen", async () => {
  const a = await startDouble({ chunkDelayMs: 100 });
  const b = await startDouble({ chunkDelayMs: 100 });
  const bridge = await startBridge(bridgeEnv(`${a.url},${b.url}`));
  try {
    const spread = await Promise.all(
      Array.from({ length: 8 }, (_, i) => bridge.call("chat_completion", { prompt: `s${i}` })),
    );
    for (const [i, r] of spread.entries()) {
      assert.equal(textOf(r), `[qwen/qwen3-4b] You said: s${i}`);
    }
    assert.ok(chats(a).length >= 2 && chats(b).length >= 2, "both backends took work");

    await a.close();
    const r = await bridge.call("chat_completion", { prompt: "failover" });
    assert.equal(textOf(r), "[qwen/qwen3-4b] You said: failover");
    assert.equal((r.structuredContent as Structured).backend, b.url);
    const health = (await bridge.call("health_check")).structuredContent as Structured;
    const dead = health.backends.find((x: Structured) => x.url === a.url);
    assert.equal(dead.reachable, false);
    assert.ok(dead.cooldown_s > 0, "the dead backend cools down");
    const next = await bridge.call("chat_completion", { prompt: "again" });
    assert.equal((next.structuredContent as Structured).backend, b.url);
  } finally {
    await bridge.close();
    await a.close();
    await b.close();
  }
});

Deno.test("load: 200 concurrent calls over 3 models, each gets its own answer", async () => {
  const double = await startDouble({
    chunkSize: 5,
    models: [{ id: "org/one" }, { id: "org/two" }, { id: "org/three" }],
  });
  const bridge = await startBridge(bridgeEnv(double.url, {
    LMBRIDGE_MAX_INFLIGHT_PER_BACKEND: "64",
    LMBRIDGE_MAX_INFLIGHT_PER_MODEL: "16",
  }));
  try {
    const models = ["org/one", "org/two", "org/three"];
    const results = await Promise.all(Array.from({ length: 200 }, (_, i) => {
      const model = models[i % 3];
      const progress: string[] = [];
      return bridge.call("chat_completion", { prompt: `request number ${i}`, model }, {
        onprogress: (p) => progress.push(p.message ?? ""),
      }).then((r) => ({ r, progress, model, i }));
    }));
    for (const { r, progress, model, i } of results) {
      const expected = `[${model}] You said: request number ${i}`;
      assert.equal(textOf(r), expected);
      // Progress may miss a last piece (the SDK client drops a notification read together
      // with the response), but what arrives must be this request's own text.
      const streamed = progress.filter((m) => !m.startsWith("waiting for a free slot")).join("");
      assert.ok(expected.startsWith(streamed), `progress of ${i} is its own: ${streamed}`);
    }
  } finally {
    await bridge.close();
    await double.close();
  }
});

Deno.test("LMBRIDGE_RPS spaces requests to a backend", async () => {
  const double = await startDouble();
  const bridge = await startBridge(bridgeEnv(double.url, { LMBRIDGE_RPS: "4" }));
  try {
    await bridge.call("chat_completion", { prompt: "first" });
    const started = Date.now();
    const results = await Promise.all(
      Array.from({ length: 6 }, (_, i) => bridge.call("chat_completion", { prompt: `r${i}` })),
    );
    for (const [i, r] of results.entries()) {
      assert.equal(textOf(r), `[qwen/qwen3-4b] You said: r${i}`);
    }
    // 6 requests at 4 per second need at least ~1.25 s after the first token is spent.
    assert.ok(Date.now() - started >= 1_000, `took ${Date.now() - started} ms`);
    const times = chats(double).slice(1).map((q) => q.startedAt).sort((a, b) => a - b);
    assert.ok(times.at(-1)! - times[0] >= 1_000, "arrivals are spread out");
  } finally {
    await bridge.close();
    await double.close();
  }
});

Deno.test("a hung backend is waited on once, then cools down while the others serve", async () => {
  // Accepts connections and never answers.
  const hung = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const held: Deno.Conn[] = [];
  const accepting = (async () => {
    try {
      for await (const conn of hung) held.push(conn);
    } catch {
      // closed
    }
  })();
  const good = await startDouble();
  const hungUrl = `http://127.0.0.1:${(hung.addr as Deno.NetAddr).port}`;
  const bridge = await startBridge(bridgeEnv(`${good.url},${hungUrl}`));
  try {
    const first = await bridge.call("chat_completion", { prompt: "one" });
    assert.equal(textOf(first), "[qwen/qwen3-4b] You said: one");
    const started = Date.now();
    for (const prompt of ["two", "three", "four"]) {
      const r = await bridge.call("chat_completion", { prompt });
      assert.equal(textOf(r), `[qwen/qwen3-4b] You said: ${prompt}`);
    }
    assert.ok(Date.now() - started < 3_000, `later calls did not wait on the hung backend`);
    const health = (await bridge.call("health_check")).structuredContent as Structured;
    const h = health.backends.find((b: Structured) => b.url === hungUrl);
    assert.equal(h.reachable, false);
    assert.ok(h.cooldown_s > 0, "the hung backend cools down");
  } finally {
    await bridge.close();
    await good.close();
    hung.close();
    for (const conn of held) conn.close();
    await accepting;
  }
});

Deno.test("cancelling the only request waiting for a model load stops the load", async () => {
  const double = await startDouble({
    loadDelayMs: 5_000,
    models: [{ id: "qwen/qwen3-4b" }, { id: "org/cold", loaded: false }],
  });
  const bridge = await startBridge(bridgeEnv(double.url));
  try {
    const controller = new AbortController();
    const call = bridge.call("load_model", { model: "org/cold" }, { signal: controller.signal })
      .catch(() => undefined);
    const [load] = await double.waitForRequests(1, { path: "/api/v1/models/load" });
    controller.abort();
    await call;
    await double.waitForAbort(load.id, 3_000);
  } finally {
    await bridge.close();
    await double.close();
  }
});
