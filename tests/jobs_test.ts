/** The job store (SQLite) and the job runner, without MCP. */
import assert from "node:assert/strict";
import {
  EventLog,
  type JobRecord,
  JobRunner,
  type JobRunnerOptions,
  JobStore,
  jobStructured,
  jobText,
} from "../src/server/jobs.ts";
import { nullProgress } from "../src/server/progress.ts";
import type { ToolContext } from "../src/server/registry.ts";
import { delay } from "../src/util/async.ts";
import { BridgeError } from "../src/util/errors.ts";
import { createLogger } from "../src/util/log.ts";

const quiet = createLogger("error", { write: () => {} });

function callerCtx(over: Partial<ToolContext> = {}): ToolContext {
  return {
    requestId: "r1",
    signal: new AbortController().signal,
    deadline: Date.now() + 60_000,
    progress: nullProgress,
    log: quiet,
    streaming: false,
    ...over,
  };
}

function runner(over: Partial<JobRunnerOptions> = {}): JobRunner {
  return new JobRunner({
    openStore: () => new JobStore(":memory:", { ttlMs: 3600_000 }),
    log: quiet,
    defaultTimeoutS: 60,
    ttlMs: 3600_000,
    ...over,
  });
}

function jobIdOf(out: { structured?: Record<string, unknown> }): string {
  return out.structured!.job_id as string;
}

/** A run that waits until its signal aborts. */
const blocking = (ctx: ToolContext) =>
  delay(600_000, { signal: ctx.signal }).then(() => ({ text: "never" }));

function record(over: Partial<JobRecord> = {}): JobRecord {
  return {
    id: "job_1",
    tool: "chat_completion",
    status: "running",
    createdAt: 1_000,
    updatedAt: 1_000,
    events: [],
    ...over,
  };
}

Deno.test("a job round-trips through the store with its events, result and error", () => {
  let now = 1_000;
  const store = new JobStore(":memory:", { ttlMs: 60_000, now: () => now });
  try {
    store.insert(record());
    assert.deepEqual(store.get("job_1"), record());
    now = 2_000;
    store.saveProgress("job_1", [{ at: 1_500, kind: "text", message: "Hel" }]);
    assert.deepEqual(store.get("job_1")!.events, [{ at: 1_500, kind: "text", message: "Hel" }]);
    assert.equal(store.get("job_1")!.updatedAt, 2_000);
    const done = record({
      status: "succeeded",
      updatedAt: 3_000,
      finishedAt: 3_000,
      events: [{ at: 1_500, kind: "text", message: "Hello" }],
      result: { text: "Hello", structured: { text: "Hello", model: "qwen/qwen3-4b" } },
    });
    store.finish(done);
    assert.deepEqual(store.get("job_1"), done);
    const failed = record({
      id: "job_2",
      status: "failed",
      finishedAt: 3_000,
      error: "Error [timeout]: request exceeded its deadline",
      errorCode: "timeout",
    });
    store.insert(failed);
    assert.deepEqual(store.get("job_2"), failed);
    assert.equal(store.get("job_nope"), undefined);
    assert.equal(store.count(), 2);
  } finally {
    store.close();
  }
});

Deno.test("a job still running when its lmbridge went away is failed on the next open", () => {
  const dir = Deno.makeTempDirSync({ prefix: "lmbridge-jobs-" });
  try {
    const first = JobStore.open(`${dir}/state`, {
      ttlMs: 60_000,
      owner: "first",
      pid: 111,
      host: "box",
    });
    first.insert(record());
    first.close();
    assert.equal(Deno.statSync(`${dir}/state`).mode! & 0o777, 0o700);
    const second = JobStore.open(`${dir}/state`, {
      ttlMs: 60_000,
      owner: "second",
      pid: 222,
      host: "box",
      isAlive: (pid) => pid !== 111,
    });
    try {
      const job = second.get("job_1")!;
      assert.equal(job.status, "failed");
      assert.match(job.error!, /^Error \[\w+\]: lmbridge restarted while this job ran/);
      assert.equal(typeof job.finishedAt, "number");
    } finally {
      second.close();
    }
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("a running job of another live lmbridge is left alone until its heartbeat stops", () => {
  let now = Date.now();
  const dir = Deno.makeTempDirSync({ prefix: "lmbridge-jobs-" });
  try {
    const options = { ttlMs: 600_000, now: () => now, host: "box", staleMs: 60_000 };
    const a = JobStore.open(dir, { ...options, owner: "a", pid: 10, isAlive: () => true });
    a.insert(record({ createdAt: now, updatedAt: now }));
    const b = JobStore.open(dir, { ...options, owner: "b", pid: 20, isAlive: () => true });
    try {
      assert.equal(b.get("job_1")!.status, "running", "a live owner keeps its job");
      now += 30_000;
      a.touch();
      now += 40_000;
      assert.deepEqual(b.sweep(), { expired: 0, orphaned: 0 }, "heartbeat is 40 s old");
      now += 30_000;
      assert.deepEqual(b.sweep(), { expired: 0, orphaned: 1 }, "no heartbeat for 70 s");
      assert.equal(b.get("job_1")!.status, "failed");
      // The owner's own outcome still wins when it turns out to be alive after all.
      a.finish(record({ status: "succeeded", finishedAt: now, result: { text: "ok" } }));
      assert.equal(b.get("job_1")!.status, "succeeded");
    } finally {
      a.close();
      b.close();
    }
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("finished jobs expire after the TTL", () => {
  let now = 10_000;
  const store = new JobStore(":memory:", { ttlMs: 1_000, now: () => now });
  try {
    store.insert(record({ createdAt: now, updatedAt: now }));
    store.finish(record({ status: "succeeded", updatedAt: now, finishedAt: now }));
    store.insert(record({ id: "job_live", createdAt: now, updatedAt: now }));
    now += 999;
    assert.equal(store.get("job_1")?.status, "succeeded");
    now += 2;
    assert.equal(store.get("job_1"), undefined, "expired jobs are not returned");
    assert.deepEqual(store.sweep(), { expired: 1, orphaned: 0 });
    assert.equal(store.count(), 1, "the expired row is deleted; the running one stays");
    assert.equal(store.get("job_live")?.status, "running");
  } finally {
    store.close();
  }
});

Deno.test("expired jobs are swept lazily, at most once a minute", () => {
  let now = 0;
  const store = new JobStore(":memory:", { ttlMs: 1_000, now: () => now });
  try {
    store.insert(record({ status: "succeeded", finishedAt: 0 }));
    now = 30_000;
    store.get("job_x");
    assert.equal(store.count(), 1, "no sweep within a minute of opening");
    now = 60_000;
    store.get("job_x");
    assert.equal(store.count(), 0, "swept on access after a minute");
  } finally {
    store.close();
  }
});

Deno.test("events keep the last 200, each message at most 2000 characters", () => {
  const log = new EventLog();
  for (let i = 0; i < 300; i++) log.status(`step ${i}`, i);
  assert.equal(log.events.length, 200);
  assert.equal(log.events[0].message, "step 100");
  assert.equal(log.events.at(-1)!.message, "step 299");

  const text = new EventLog();
  text.status("queued", 1);
  text.text("Hel", 2);
  text.text("lo", 3);
  assert.deepEqual(text.events, [
    { at: 1, kind: "status", message: "queued" },
    { at: 3, kind: "text", message: "Hello" },
  ]);
  text.text("x".repeat(4_500), 4);
  assert.deepEqual(text.events.slice(1).map((e) => e.message.length), [2000, 2000, 505]);
  text.status("y".repeat(5_000), 5);
  assert.equal(text.events.at(-1)!.message.length, 2000);

  const bounded = new EventLog([], { maxChars: 10_000 });
  bounded.text("z".repeat(1_000_000), 1);
  const total = bounded.events.reduce((n, e) => n + e.message.length, 0);
  assert.ok(total <= 10_000, `kept ${total} characters`);
  assert.equal(bounded.events.length, 5);
});

Deno.test("a background job records its progress and result and returns at once", async () => {
  const jobs = runner();
  try {
    const gate = Promise.withResolvers<void>();
    const out = await jobs.start("chat_completion", async (ctx) => {
      ctx.progress.status("queued");
      ctx.progress.text("Hel");
      ctx.progress.text("lo");
      await gate.promise;
      return { text: "Hello", structured: { text: "Hello", model: "m" } };
    }, callerCtx());
    const id = jobIdOf(out);
    assert.match(id, /^job_[0-9a-f]{32}$/);
    assert.deepEqual(out.structured, { job_id: id, status: "running" });
    assert.match(out.text, /get_job/);
    const running = jobs.get(id)!;
    assert.equal(running.status, "running");
    assert.deepEqual(running.events.map((e) => [e.kind, e.message]), [
      ["status", "queued"],
      ["text", "Hello"],
    ]);
    assert.match(jobText(running), /still running.*\n\nProgress so far:\n\[queued\]\nHello\n/s);
    gate.resolve();
    const done = (await jobs.wait(id, 10_000, new AbortController().signal))!;
    assert.equal(done.status, "succeeded");
    assert.deepEqual(jobStructured(done).result, { text: "Hello", model: "m" });
    assert.equal(jobStructured(done).error, null);
    assert.match(jobText(done), /succeeded in [\d.]+ s\.\n\nHello$/);
  } finally {
    await jobs.close();
  }
});

Deno.test("a job outlives the request that started it", async () => {
  const jobs = runner();
  try {
    const caller = new AbortController();
    const out = await jobs.start("chat_completion", async (ctx) => {
      await delay(200, { signal: ctx.signal });
      return { text: "still here" };
    }, callerCtx({ signal: caller.signal }));
    caller.abort();
    const done = await jobs.wait(jobIdOf(out), 10_000, new AbortController().signal);
    assert.equal(done!.status, "succeeded");
    assert.deepEqual(jobStructured(done!).result, { text: "still here" });
  } finally {
    await jobs.close();
  }
});

Deno.test("a failing job stores its formatted error and code", async () => {
  const jobs = runner();
  try {
    const out = await jobs.start("chat_completion", () => {
      throw new BridgeError("model_not_found", 'no model "qwen9"', { hint: "did you mean x?" });
    }, callerCtx());
    const done = (await jobs.wait(jobIdOf(out), 10_000, new AbortController().signal))!;
    assert.equal(done.status, "failed");
    assert.equal(done.errorCode, "model_not_found");
    assert.equal(done.error, 'Error [model_not_found]: no model "qwen9". Hint: did you mean x?');
    assert.match(jobText(done), /failed after .*\n\nError \[model_not_found\]/s);
  } finally {
    await jobs.close();
  }
});

Deno.test("a job gets the caller's deadline and fails with timeout past it", async () => {
  const jobs = runner();
  try {
    let deadline = 0;
    const out = await jobs.start("chat_completion", (ctx) => {
      deadline = ctx.deadline;
      return blocking(ctx);
    }, callerCtx({ deadline: Date.now() + 300 }));
    const done = (await jobs.wait(jobIdOf(out), 10_000, new AbortController().signal))!;
    assert.ok(deadline > Date.now() - 10_000 && deadline <= Date.now());
    assert.equal(done.status, "failed");
    assert.equal(done.errorCode, "timeout");
  } finally {
    await jobs.close();
  }
});

Deno.test("cancel aborts the running job and it ends cancelled", async () => {
  const jobs = runner();
  try {
    let signal: AbortSignal | undefined;
    const out = await jobs.start("autonomous_with_mcp", (ctx) => {
      signal = ctx.signal;
      ctx.progress.status("round 1");
      return blocking(ctx);
    }, callerCtx());
    const id = jobIdOf(out);
    const cancelled = await jobs.cancel(id, new AbortController().signal);
    assert.equal(cancelled!.cancelled, true);
    assert.equal(cancelled!.job.status, "cancelled");
    assert.equal(cancelled!.job.errorCode, "cancelled");
    assert.equal(signal!.aborted, true);
    assert.match(jobText(cancelled!.job), /was cancelled .*\[round 1\]/s);
    const again = await jobs.cancel(id, new AbortController().signal);
    assert.deepEqual(
      { status: again!.job.status, cancelled: again!.cancelled },
      { status: "cancelled", cancelled: false },
      "cancelling a finished job changes nothing",
    );
    assert.equal(await jobs.cancel("job_unknown", new AbortController().signal), undefined);
  } finally {
    await jobs.close();
  }
});

Deno.test("a job that ignores its signal is still reported cancelled", async () => {
  const jobs = runner({ cancelGraceMs: 200 });
  const gate = Promise.withResolvers<void>();
  try {
    const out = await jobs.start("chat_completion", async () => {
      await gate.promise;
      return { text: "late" };
    }, callerCtx());
    const res = await jobs.cancel(jobIdOf(out), new AbortController().signal);
    assert.equal(res!.job.status, "cancelled");
    gate.resolve();
    await delay(10);
    assert.equal(jobs.get(jobIdOf(out))!.status, "cancelled", "the late result is ignored");
  } finally {
    gate.resolve();
    await jobs.close();
  }
});

Deno.test("more running jobs than the cap are refused with overloaded", async () => {
  const jobs = runner({ maxRunning: 2 });
  try {
    const a = await jobs.start("chat_completion", blocking, callerCtx());
    await jobs.start("chat_completion", blocking, callerCtx());
    assert.equal(jobs.running, 2);
    await assert.rejects(
      jobs.start("chat_completion", blocking, callerCtx()),
      (err: BridgeError) => err.code === "overloaded",
    );
    await jobs.cancel(jobIdOf(a), new AbortController().signal);
    const c = await jobs.start("chat_completion", blocking, callerCtx());
    assert.equal(jobs.get(jobIdOf(c))!.status, "running", "a freed slot takes a new job");
  } finally {
    await jobs.close();
  }
});

Deno.test("wait returns the running job after wait_s and honours the request signal", async () => {
  const jobs = runner();
  try {
    const out = await jobs.start("chat_completion", blocking, callerCtx());
    const id = jobIdOf(out);
    const started = performance.now();
    assert.equal((await jobs.wait(id, 300, new AbortController().signal))!.status, "running");
    assert.ok(performance.now() - started >= 250);
    const request = new AbortController();
    const waiting = jobs.wait(id, 30_000, request.signal);
    request.abort(new DOMException("client gone", "AbortError"));
    await assert.rejects(waiting, /client gone/);
    assert.equal(await jobs.wait("job_unknown", 0, new AbortController().signal), undefined);
  } finally {
    await jobs.close();
  }
});

Deno.test("progress is saved about once a second, not per token", async () => {
  let saves = 0;
  class CountingStore extends JobStore {
    override saveProgress(id: string, events: Parameters<JobStore["saveProgress"]>[1]) {
      saves++;
      super.saveProgress(id, events);
    }
  }
  let store: CountingStore | undefined;
  const jobs = runner({
    openStore: () => store = new CountingStore(":memory:", { ttlMs: 60_000 }),
  });
  try {
    const out = await jobs.start("chat_completion", async (ctx) => {
      for (let i = 0; i < 150; i++) {
        ctx.progress.text(`t${i} `);
        await delay(10, { signal: ctx.signal });
      }
      return { text: "done" };
    }, callerCtx());
    const id = jobIdOf(out);
    await delay(1_300);
    assert.ok(saves >= 1 && saves <= 3, `${saves} saves`);
    const mid = store!.get(id)!;
    assert.equal(mid.status, "running");
    assert.match(mid.events[0].message, /^t0 t1 /, "saved events are readable before the end");
    const done = await jobs.wait(id, 10_000, new AbortController().signal);
    assert.equal(done!.status, "succeeded");
    assert.ok(saves <= 5, `${saves} saves`);
    assert.match(store!.get(id)!.events.at(-1)!.message, /t149 $/, "the end saves every event");
  } finally {
    await jobs.close();
  }
});

Deno.test("close stops running jobs and stores them as failed by the restart", async () => {
  const dir = Deno.makeTempDirSync({ prefix: "lmbridge-jobs-" });
  try {
    const shutdown = new AbortController();
    const jobs = runner({
      openStore: () => JobStore.open(dir, { ttlMs: 60_000 }),
      shutdown: shutdown.signal,
    });
    const out = await jobs.start("chat_completion", blocking, callerCtx());
    const done = await jobs.start("chat_completion", () => Promise.resolve({ text: "ok" }), {
      ...callerCtx(),
    });
    await jobs.wait(jobIdOf(done), 10_000, new AbortController().signal);
    shutdown.abort();
    await jobs.close();
    await assert.rejects(
      jobs.start("chat_completion", blocking, callerCtx()),
      (err: BridgeError) => err.code === "cancelled",
    );
    const store = JobStore.open(dir, { ttlMs: 60_000 });
    try {
      const stopped = store.get(jobIdOf(out))!;
      assert.equal(stopped.status, "failed");
      assert.match(stopped.error!, /lmbridge restarted while this job ran/);
      assert.equal(store.get(jobIdOf(done))!.status, "succeeded");
    } finally {
      store.close();
    }
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("the job store is opened only when a job is used", async () => {
  let opened = 0;
  const jobs = runner({
    openStore: () => {
      opened++;
      return new JobStore(":memory:", { ttlMs: 60_000 });
    },
  });
  assert.equal(opened, 0);
  assert.equal(jobs.get("job_x"), undefined);
  assert.equal(opened, 1);
  await jobs.close();
});
