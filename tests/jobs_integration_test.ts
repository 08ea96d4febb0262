/**
 * Background jobs through the real MCP client SDK over stdio, against the LM Studio double:
 * `background: true`, `get_job`, `cancel_job`, and results that survive a restart.
 */
import assert from "node:assert/strict";
import { JobStore } from "../src/server/jobs.ts";
import { startDouble } from "./support/lmstudio_double.ts";
import { type Bridge, bridgeEnv, startBridge, textOf } from "./support/bridge.ts";

// deno-lint-ignore no-explicit-any
type Structured = Record<string, any>;

const CHAT = "/v1/chat/completions";

function structured(r: { structuredContent?: unknown }): Structured {
  return r.structuredContent as Structured;
}

async function startJob(bridge: Bridge, prompt: string): Promise<string> {
  const r = await bridge.call("chat_completion", { prompt, background: true });
  assert.equal(r.isError, undefined, textOf(r));
  const s = structured(r);
  assert.equal(s.status, "running");
  assert.match(s.job_id, /^job_[0-9a-f]{32}$/);
  return s.job_id;
}

Deno.test("background jobs through MCP: start, poll, cancel, unknown ids", async (t) => {
  const double = await startDouble({ chunkSize: 2 });
  const bridge = await startBridge(bridgeEnv(double.url));
  try {
    await t.step("tools/list offers get_job and cancel_job with output schemas", async () => {
      const { tools } = await bridge.client.listTools();
      for (const name of ["get_job", "cancel_job"]) {
        const tool = tools.find((x: { name: string }) => x.name === name);
        assert.ok(tool?.outputSchema, `${name} with an outputSchema`);
        assert.ok("job_id" in (tool.inputSchema.properties ?? {}));
      }
    });

    await t.step(
      "chat_completion with background returns a job id while the model still streams",
      async () => {
        double.addFault({ fault: { kind: "slow_stream", chunkDelayMs: 150 }, path: CHAT });
        const prompt = "count to ten slowly please";
        const expected = `[qwen/qwen3-4b] You said: ${prompt}`;
        const started = performance.now();
        const id = await startJob(bridge, prompt);
        assert.ok(performance.now() - started < 2_000, "returned at once");

        const now = await bridge.call("get_job", { job_id: id });
        assert.equal(structured(now).status, "running");
        assert.match(textOf(now), /still running/);

        const done = await bridge.call("get_job", { job_id: id, wait_s: 30 });
        assert.equal(done.isError, undefined, textOf(done));
        const s = structured(done);
        assert.equal(s.job_id, id);
        assert.equal(s.status, "succeeded");
        assert.equal(s.tool, "chat_completion");
        assert.equal(s.result.text, expected);
        assert.equal(s.result.model, "qwen/qwen3-4b");
        assert.equal(s.error, null);
        const streamed = s.events.filter((e: Structured) => e.kind === "text")
          .map((e: Structured) => e.message).join("");
        assert.equal(streamed, expected, "the streamed text is in the events");
        assert.match(textOf(done), new RegExp(`succeeded in [\\d.]+ s\\.\\n\\n\\[qwen`));
        assert.ok(textOf(done).endsWith(expected));
        double.clearFaults();
      },
    );

    await t.step("cancel_job stops a slow job and aborts its upstream request", async () => {
      double.addFault({ fault: { kind: "slow_stream", chunkDelayMs: 1_000 }, path: CHAT });
      const before = double.requests.filter((q) => q.path === CHAT).length;
      const id = await startJob(bridge, "write a very long essay about patience");
      const seen = await double.waitForRequests(before + 1, { path: CHAT });
      const upstream = seen.at(-1)!;
      const r = await bridge.call("cancel_job", { job_id: id });
      assert.equal(r.isError, undefined, textOf(r));
      assert.deepEqual(structured(r), { job_id: id, status: "cancelled", cancelled: true });
      await double.waitForAbort(upstream.id);
      const after = await bridge.call("get_job", { job_id: id });
      assert.equal(structured(after).status, "cancelled");
      assert.match(structured(after).error, /^Error \[cancelled\]/);
      const again = await bridge.call("cancel_job", { job_id: id });
      assert.equal(again.isError, undefined);
      assert.deepEqual(structured(again), { job_id: id, status: "cancelled", cancelled: false });
      double.clearFaults();
    });

    await t.step("an unknown job id is invalid_request naming job_id", async () => {
      for (const tool of ["get_job", "cancel_job"]) {
        const r = await bridge.call(tool, { job_id: "job_doesnotexist" });
        assert.equal(r.isError, true);
        assert.match(textOf(r), /^Error \[invalid_request\]: job_id: no job "job_doesnotexist"/);
      }
      const tooLong = await bridge.call("get_job", { job_id: "job_x", wait_s: 60 });
      assert.match(textOf(tooLong), /^Error \[invalid_request\]: wait_s: /);
    });

    await t.step("bridge_stats reports the jobs cache", async () => {
      const s = structured(await bridge.call("bridge_stats"));
      assert.equal(typeof s.caches.jobs.size, "number");
      assert.ok(s.caches.jobs.max_size > 0);
    });
  } finally {
    await bridge.close();
    await double.close();
  }
});

Deno.test("a finished job survives a restart of lmbridge; a running one ends failed", async () => {
  const double = await startDouble({ chunkSize: 4 });
  const dir = Deno.makeTempDirSync({ prefix: "lmbridge-jobs-state-" });
  const env = bridgeEnv(double.url, { LMBRIDGE_STATE_DIR: `${dir}/state`, HOME: dir });
  let bridge = await startBridge(env);
  try {
    const finished = await startJob(bridge, "remember me");
    const first = await bridge.call("get_job", { job_id: finished, wait_s: 30 });
    assert.equal(structured(first).status, "succeeded", textOf(first));

    double.addFault({ fault: { kind: "slow_stream", chunkDelayMs: 1_000 }, path: CHAT });
    const before = double.requests.filter((q) => q.path === CHAT).length;
    const interrupted = await startJob(bridge, "this one will not finish");
    await double.waitForRequests(before + 1, { path: CHAT });

    await bridge.close();
    assert.ok(Deno.statSync(`${dir}/state/jobs.db`).isFile);
    // A clean shutdown already marks its running jobs (a crash is caught on the next open).
    const peek = JobStore.open(`${dir}/state`, { ttlMs: 60_000, isAlive: () => true });
    assert.equal(peek.get(interrupted)?.status, "failed");
    peek.close();
    bridge = await startBridge(env);

    const again = await bridge.call("get_job", { job_id: finished });
    assert.equal(again.isError, undefined, textOf(again));
    assert.deepEqual(structured(again).result, structured(first).result);
    assert.equal(structured(again).status, "succeeded");
    assert.equal(textOf(again), textOf(first));

    const lost = await bridge.call("get_job", { job_id: interrupted });
    assert.equal(structured(lost).status, "failed");
    assert.match(structured(lost).error, /lmbridge restarted while this job ran/);
  } finally {
    await bridge.close();
    await double.close();
    Deno.removeSync(dir, { recursive: true });
  }
});
