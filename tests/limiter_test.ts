import assert from "node:assert/strict";
import { delay } from "../src/util/async.ts";
import { BridgeError } from "../src/util/errors.ts";
import { RateLimiter, type Slot, SlotLimiter } from "../src/util/limiter.ts";

const BE = "backend:http://x";
const A = "model:http://x|a";
const B = "model:http://x|b";
const C = "model:http://x|c";

function limiterWith(caps: Record<string, number>, options: Partial<{
  maxQueue: number;
  queueTimeoutMs: number;
}> = {}) {
  return new SlotLimiter({
    capacityOf: (key) => caps[key] ?? Infinity,
    maxQueue: options.maxQueue ?? 1000,
    queueTimeoutMs: options.queueTimeoutMs ?? 10_000,
  });
}

/** Lets queued promise callbacks run. */
const settle = () => delay(0);

function isCode(code: string) {
  return (err: unknown) => {
    assert.ok(err instanceof BridgeError, String(err));
    assert.equal(err.code, code);
    return true;
  };
}

Deno.test("caps per backend and per model hold under 50 concurrent requests", async () => {
  const caps = { [BE]: 5, [A]: 2, [B]: 3 };
  const limiter = limiterWith(caps);
  const now: Record<string, number> = {};
  const max: Record<string, number> = {};
  await Promise.all(Array.from({ length: 50 }, async (_, i) => {
    const keys = [BE, i % 2 ? A : B];
    const slot = await limiter.acquire(keys);
    for (const k of keys) {
      now[k] = (now[k] ?? 0) + 1;
      max[k] = Math.max(max[k] ?? 0, now[k]);
    }
    await delay(2 + (i % 5));
    for (const k of keys) now[k]--;
    slot.release();
  }));
  assert.deepEqual(max, caps, "every cap reached, none exceeded");
  const snap = limiter.snapshot();
  assert.deepEqual(snap.inFlight, {});
  assert.equal(snap.queued, 0);
  assert.equal(snap.waits.count, 50);
  assert.ok(snap.waits.maxMs > 0 && snap.waits.totalMs >= snap.waits.maxMs);
});

Deno.test("waiters for one key are served in arrival order", async () => {
  const limiter = limiterWith({ [A]: 1 });
  const first = await limiter.acquire([A]);
  const order: number[] = [];
  const waiting = [1, 2, 3, 4, 5].map((n) =>
    limiter.acquire([A]).then((slot) => {
      order.push(n);
      return slot;
    })
  );
  await settle();
  assert.deepEqual(order, []);
  first.release();
  for (const p of waiting) (await p).release();
  assert.deepEqual(order, [1, 2, 3, 4, 5]);
});

Deno.test("a waiter for a free model passes a waiter blocked on a busy model", async () => {
  const limiter = limiterWith({ [BE]: 2, [A]: 1, [B]: 1, [C]: 1 });
  const holdA = await limiter.acquire([BE, A]);
  const holdB = await limiter.acquire([BE, B]);
  const granted: string[] = [];
  const forA = limiter.acquire([BE, A]).then((s) => (granted.push("a"), s));
  const forC = limiter.acquire([BE, C]).then((s) => (granted.push("c"), s));
  await settle();
  assert.deepEqual(granted, [], "the backend is full");
  holdB.release();
  const slotC = await forC;
  assert.deepEqual(granted, ["c"], "model a is still busy, so c goes first");
  assert.deepEqual(limiter.snapshot().queuedByKey, { [BE]: 1, [A]: 1 });
  holdA.release();
  (await forA).release();
  slotC.release();
  assert.deepEqual(granted, ["c", "a"]);
  assert.equal(limiter.inFlight(BE), 0);
});

Deno.test("a new request for a free model does not queue behind a busy one", async () => {
  const limiter = limiterWith({ [A]: 1, [B]: 1 });
  const holdA = await limiter.acquire([A]);
  const forA = limiter.acquire([A]);
  const slotB = await limiter.acquire([B]);
  assert.equal(slotB.waitedMs < 1000, true);
  slotB.release();
  holdA.release();
  (await forA).release();
});

Deno.test("a full queue rejects with overloaded at once", async () => {
  const limiter = limiterWith({ [A]: 1 }, { maxQueue: 2 });
  const hold = await limiter.acquire([A]);
  const queued = [limiter.acquire([A]), limiter.acquire([A])];
  await assert.rejects(limiter.acquire([A]), (err: unknown) => {
    isCode("overloaded")(err);
    assert.match((err as BridgeError).hint ?? "", /LMBRIDGE_MAX_QUEUE/);
    return true;
  });
  assert.equal(limiter.snapshot().rejected, 1);
  assert.equal(limiter.snapshot().queued, 2);
  hold.release();
  for (const p of queued) (await p).release();
});

Deno.test("a waiter past the queue timeout gets overloaded naming LMBRIDGE_QUEUE_TIMEOUT_S", async () => {
  const limiter = limiterWith({ [A]: 1 }, { queueTimeoutMs: 200 });
  const hold = await limiter.acquire([A]);
  const started = performance.now();
  await assert.rejects(limiter.acquire([A]), (err: unknown) => {
    isCode("overloaded")(err);
    assert.match((err as BridgeError).hint ?? "", /LMBRIDGE_QUEUE_TIMEOUT_S/);
    return true;
  });
  const waited = performance.now() - started;
  assert.ok(waited >= 150 && waited < 5000, `waited ${waited} ms`);
  assert.equal(limiter.snapshot().queued, 0);
  assert.equal(limiter.snapshot().rejected, 1);
  hold.release();
  assert.equal(limiter.inFlight(A), 0);
});

Deno.test("abort while queued rejects with cancelled and leaves the queue", async () => {
  const limiter = limiterWith({ [A]: 1 });
  const hold = await limiter.acquire([A]);
  const controller = new AbortController();
  const leaving = limiter.acquire([A], { signal: controller.signal });
  const staying = limiter.acquire([A]);
  await settle();
  assert.equal(limiter.snapshot().queued, 2);
  controller.abort();
  await assert.rejects(leaving, isCode("cancelled"));
  assert.equal(limiter.snapshot().queued, 1);
  hold.release();
  const slot = await staying;
  assert.equal(limiter.inFlight(A), 1);
  slot.release();
  assert.equal(limiter.snapshot().rejected, 0, "aborts are not rejections");
  await assert.rejects(
    limiter.acquire([A], { signal: AbortSignal.abort(new DOMException("t", "TimeoutError")) }),
    isCode("timeout"),
  );
});

Deno.test("release is idempotent", async () => {
  const limiter = limiterWith({ [A]: 1 });
  const slot = await limiter.acquire([A]);
  const next = limiter.acquire([A]);
  slot.release();
  slot.release();
  const second = await next;
  assert.equal(limiter.inFlight(A), 1);
  const third = limiter.acquire([A]);
  slot.release();
  await settle();
  assert.equal(limiter.snapshot().queued, 1, "a stale release frees nothing");
  second.release();
  (await third).release();
  assert.equal(limiter.inFlight(A), 0);
});

Deno.test("capacity changes are picked up", async () => {
  const caps: Record<string, number> = { [A]: 1 };
  const limiter = limiterWith(caps);
  const first = await limiter.acquire([A]);
  const waiting = limiter.acquire([A]);
  caps[A] = 2;
  limiter.recheck();
  const second = await waiting;
  assert.equal(limiter.inFlight(A), 2);
  caps[A] = 1;
  first.release();
  const third = limiter.acquire([A]);
  await settle();
  assert.equal(limiter.snapshot().queued, 1, "the lowered cap holds the next one back");
  caps[A] = Infinity;
  const fourth = await limiter.acquire([A]); // an acquire also rechecks the queue
  (await third).release();
  second.release();
  fourth.release();
  assert.deepEqual(limiter.snapshot().inFlight, {});
});

Deno.test("a slot on several keys is taken and freed on all of them", async () => {
  const limiter = limiterWith({});
  const slots: Slot[] = [await limiter.acquire([BE, A, A]), await limiter.acquire([])];
  assert.deepEqual(limiter.snapshot().inFlight, { [BE]: 1, [A]: 1 });
  for (const s of slots) s.release();
  assert.deepEqual(limiter.snapshot().inFlight, {});
});

Deno.test("RateLimiter spaces requests at rps", async () => {
  const rate = new RateLimiter(10);
  const started = performance.now();
  for (let i = 0; i < 5; i++) await rate.take();
  const elapsed = performance.now() - started;
  assert.ok(elapsed >= 300 && elapsed < 5000, `5 takes at 10 rps took ${elapsed} ms`);
});

Deno.test("RateLimiter with injected clock refills up to a burst of rps", async () => {
  let t = 0;
  const rate = new RateLimiter(3, { now: () => t });
  await rate.take();
  t += 10_000; // long idle: the bucket is full (3), not more
  const started = performance.now();
  for (let i = 0; i < 3; i++) await rate.take();
  assert.ok(performance.now() - started < 100, "a burst of 3 passes at once");
});

Deno.test("RateLimiter off for undefined or non-positive rps", async () => {
  for (const rps of [undefined, 0, -1]) {
    const rate = new RateLimiter(rps);
    const started = performance.now();
    for (let i = 0; i < 100; i++) await rate.take();
    assert.ok(performance.now() - started < 1000);
  }
});

Deno.test("RateLimiter take rejects with cancelled on abort", async () => {
  const rate = new RateLimiter(0.1);
  await rate.take();
  const controller = new AbortController();
  const waiting = rate.take(controller.signal);
  setTimeout(() => controller.abort(), 50);
  const started = performance.now();
  await assert.rejects(waiting, isCode("cancelled"));
  assert.ok(performance.now() - started < 5000, "the next token was 10 s away");
});
