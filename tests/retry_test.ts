import assert from "node:assert/strict";
import { BridgeError } from "../src/util/errors.ts";
import { backoffMs, parseRetryAfter, type RetryOptions, withRetry } from "../src/util/retry.ts";

const retryAll = () => ({ retry: true });

/** Options with a fake clock whose sleep only records and advances time. */
function fakeTime(start = 1_000_000) {
  let t = start;
  const slept: number[] = [];
  return {
    slept,
    now: () => t,
    sleep: (ms: number) => {
      slept.push(ms);
      t += ms;
      return Promise.resolve();
    },
  } satisfies Partial<RetryOptions> & { slept: number[] };
}

Deno.test("succeeds on the third attempt after two backoffs", async () => {
  const time = fakeTime();
  const attempts: number[] = [];
  const retried: number[] = [];
  const result = await withRetry(async (attempt) => {
    attempts.push(attempt);
    await Promise.resolve();
    if (attempt < 3) throw new BridgeError("upstream_error", "503");
    return "ok";
  }, {
    ...time,
    classify: retryAll,
    random: () => 1,
    onRetry: (_err, attempt) => retried.push(attempt),
  });
  assert.equal(result, "ok");
  assert.deepEqual(attempts, [1, 2, 3]);
  assert.deepEqual(retried, [1, 2]);
  assert.deepEqual(time.slept, [250, 500], "base 250 ms, doubling");
});

Deno.test("no retry when classify says no", async () => {
  const time = fakeTime();
  let calls = 0;
  const err = new BridgeError("invalid_request", "400");
  await assert.rejects(
    withRetry(() => {
      calls++;
      return Promise.reject(err);
    }, { ...time, classify: () => ({ retry: false }) }),
    (e: unknown) => (e as BridgeError).code === "invalid_request",
  );
  assert.equal(calls, 1);
  assert.deepEqual(time.slept, []);
});

Deno.test("the final BridgeError carries the attempt count; other errors pass unchanged", async () => {
  const time = fakeTime();
  const seen: number[] = [];
  await assert.rejects(
    withRetry(() => Promise.reject(new BridgeError("rate_limited", "429")), {
      ...time,
      classify: (_e, attempt) => (seen.push(attempt), { retry: true }),
    }),
    (err: unknown) => {
      assert.ok(err instanceof BridgeError);
      assert.equal(err.code, "rate_limited");
      assert.equal(err.context.attempts, 3);
      assert.match(err.format(), /after 3 attempts/);
      return true;
    },
  );
  assert.deepEqual(seen, [1, 2], "the last failure is not classified: nothing is left to try");
  const plain = new TypeError("fetch failed");
  await assert.rejects(
    withRetry(() => Promise.reject(plain), { ...fakeTime(), classify: retryAll, maxAttempts: 2 }),
    (err) => err === plain,
  );
});

Deno.test("Retry-After replaces the backoff and is capped at maxDelayMs", async () => {
  const time = fakeTime();
  let n = 0;
  await withRetry(() => (n++ < 2 ? Promise.reject(new Error("429")) : Promise.resolve()), {
    ...time,
    classify: (_e, attempt) => ({ retry: true, afterMs: attempt === 1 ? 1500 : 120_000 }),
  });
  assert.deepEqual(time.slept, [1500, 30_000]);
});

Deno.test("Retry-After as seconds or an HTTP date, past dates 0, capped at 30 s", () => {
  const now = Date.parse("Wed, 21 Oct 2015 07:28:00 GMT");
  assert.equal(parseRetryAfter("2", now), 2000);
  assert.equal(parseRetryAfter(" 0 ", now), 0);
  assert.equal(parseRetryAfter("120", now), 30_000);
  assert.equal(parseRetryAfter("120", now, 200_000), 120_000);
  assert.equal(parseRetryAfter("Wed, 21 Oct 2015 07:28:10 GMT", now), 10_000);
  assert.equal(parseRetryAfter("Wednesday, 21-Oct-15 07:28:05 GMT", now), 5000);
  assert.equal(parseRetryAfter("Wed Oct 21 07:28:03 2015", now), 3000);
  assert.equal(parseRetryAfter("Wed, 21 Oct 2015 07:27:00 GMT", now), 0);
  assert.equal(parseRetryAfter("Thu, 22 Oct 2015 07:28:00 GMT", now), 30_000);
  for (const bad of [undefined, null, "", "soon", "-5", "1e3", "Wed, 99 Foo 2015"]) {
    assert.equal(parseRetryAfter(bad, now), undefined, String(bad));
  }
});

Deno.test("the deadline prevents a sleep that would pass it", async () => {
  const time = fakeTime(0);
  let calls = 0;
  await assert.rejects(
    withRetry(() => {
      calls++;
      return Promise.reject(new BridgeError("upstream_error", "502"));
    }, { ...time, classify: retryAll, random: () => 1, maxAttempts: 5, deadline: 600 }),
    (err: unknown) => (err as BridgeError).context.attempts === 2,
  );
  assert.equal(calls, 2);
  assert.deepEqual(time.slept, [250], "the 500 ms wait would end at 750 > 600");
  await assert.rejects(
    withRetry(() => Promise.reject(new Error("429")), {
      ...fakeTime(0),
      classify: () => ({ retry: true, afterMs: 10_000 }),
      deadline: 5_000,
    }),
    /429/,
  );
});

Deno.test("abort during backoff rejects quickly with cancelled", async () => {
  const controller = new AbortController();
  let calls = 0;
  setTimeout(() => controller.abort(), 50);
  const started = performance.now();
  await assert.rejects(
    withRetry(() => {
      calls++;
      return Promise.reject(new BridgeError("upstream_error", "503"));
    }, { classify: () => ({ retry: true, afterMs: 10_000 }), signal: controller.signal }),
    (err: unknown) => {
      assert.ok(err instanceof BridgeError);
      assert.equal(err.code, "cancelled");
      assert.equal(err.context.attempts, 1);
      return true;
    },
  );
  assert.ok(performance.now() - started < 5000, "the 10 s wait was cut short");
  assert.equal(calls, 1);
});

Deno.test("an aborted signal stops before the first attempt and after a failing one", async () => {
  let calls = 0;
  await assert.rejects(
    withRetry(() => (calls++, Promise.resolve()), {
      classify: retryAll,
      signal: AbortSignal.abort(new DOMException("late", "TimeoutError")),
    }),
    (err: unknown) => (err as BridgeError).code === "timeout",
  );
  assert.equal(calls, 0);
  const controller = new AbortController();
  await assert.rejects(
    withRetry(() => {
      controller.abort();
      return Promise.reject(new BridgeError("upstream_error", "reset"));
    }, { ...fakeTime(), classify: retryAll, signal: controller.signal }),
    (err: unknown) => (err as BridgeError).code === "upstream_error",
  );
});

Deno.test("jitter stays within [d/2, d] of the exponential delay", async () => {
  assert.equal(backoffMs(1, 250, 30_000, () => 0), 125);
  assert.equal(backoffMs(1, 250, 30_000, () => 0.999999) <= 250, true);
  assert.equal(backoffMs(3, 250, 30_000, () => 0.5), 750);
  assert.equal(backoffMs(20, 250, 30_000, () => 0), 15_000, "capped at maxDelayMs");
  const time = fakeTime();
  const draws = [0, 0.5, 0.999];
  await assert.rejects(
    withRetry(() => Promise.reject(new Error("x")), {
      ...time,
      classify: retryAll,
      maxAttempts: 4,
      baseDelayMs: 100,
      random: () => draws.shift()!,
    }),
  );
  assert.deepEqual(time.slept, [50, 150, 100 * 4 / 2 + 0.999 * 200]);
  for (const [i, ms] of time.slept.entries()) {
    const d = 100 * 2 ** i;
    assert.ok(ms >= d / 2 && ms <= d);
  }
});
