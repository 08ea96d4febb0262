import assert from "node:assert/strict";
import { BridgeError } from "../src/util/errors.ts";
import { TtlMap } from "../src/util/ttl_map.ts";

function clock(start = 0) {
  let t = start;
  return { now: () => t, advance: (ms: number) => (t += ms) };
}

/** A promise with its resolvers outside, for driving a load by hand. */
function deferred<T>() {
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

Deno.test("entries expire after their ttl on the injected clock", () => {
  const c = clock();
  const map = new TtlMap<string, number>({ ttlMs: 1000, maxSize: 10, now: c.now });
  map.set("a", 1).set("b", 2, 5000);
  c.advance(999);
  assert.equal(map.get("a"), 1);
  assert.equal(map.size, 2);
  c.advance(1);
  assert.equal(map.get("a"), undefined);
  assert.equal(map.has("a"), false);
  assert.equal(map.get("b"), 2);
  assert.equal(map.size, 1);
  assert.deepEqual([...map.entries()], [["b", 2]]);
  c.advance(4000);
  assert.equal(map.size, 0);
  assert.deepEqual([...map.entries()], []);
});

Deno.test("get refreshes recency but not expiry", () => {
  const c = clock();
  const map = new TtlMap<string, number>({ ttlMs: 1000, maxSize: 10, now: c.now });
  map.set("a", 1);
  c.advance(600);
  assert.equal(map.get("a"), 1);
  c.advance(600);
  assert.equal(map.get("a"), undefined);
});

Deno.test("the least recently used entry is evicted when full", () => {
  const map = new TtlMap<string, number>({ ttlMs: Infinity, maxSize: 3 });
  map.set("a", 1).set("b", 2).set("c", 3);
  assert.equal(map.get("a"), 1); // b is now the least recently used
  map.set("d", 4);
  assert.equal(map.has("b"), false);
  assert.deepEqual([...map.entries()].map(([k]) => k), ["c", "a", "d"]);
  map.set("c", 33); // overwriting refreshes recency and does not grow the map
  map.set("e", 5);
  assert.deepEqual([...map.entries()], [["d", 4], ["c", 33], ["e", 5]]);
  assert.equal(map.size, 3);
  assert.equal(map.stats().evictions, 2);
});

Deno.test("100k distinct keys through a map of 1000 keep its size at most 1000", () => {
  const c = clock();
  const map = new TtlMap<number, string>({ ttlMs: 50, maxSize: 1000, now: c.now });
  for (let i = 0; i < 100_000; i++) {
    map.set(i, `v${i}`);
    if (i % 7 === 0) c.advance(1); // some entries expire along the way
    if (i % 997 === 0) assert.ok(map.size <= 1000, `size ${map.size} at ${i}`);
  }
  assert.ok(map.size <= 1000);
  assert.ok(map.stats().size <= 1000);
  const noExpiry = new TtlMap<number, number>({ ttlMs: Infinity, maxSize: 1000 });
  for (let i = 0; i < 100_000; i++) {
    noExpiry.set(i, i);
    if (i % 1000 === 0) assert.ok(noExpiry.size <= 1000);
  }
  assert.equal(noExpiry.size, 1000);
  assert.equal(noExpiry.stats().evictions, 99_000);
  assert.equal(noExpiry.get(99_999), 99_999);
  assert.equal(noExpiry.get(98_999), undefined);
});

Deno.test("expired entries count neither in size nor as evictions", () => {
  const c = clock();
  const map = new TtlMap<number, number>({ ttlMs: 100, maxSize: 600, now: c.now });
  for (let i = 0; i < 500; i++) map.set(i, i);
  c.advance(100);
  for (let i = 500; i < 1000; i++) map.set(i, i);
  assert.equal(map.size, 500);
  assert.equal(map.stats().evictions, 0, "expired entries are not evictions");
});

Deno.test("stats count hits, misses and evictions", () => {
  const map = new TtlMap<string, number>({ ttlMs: Infinity, maxSize: 1 });
  map.set("a", 1);
  map.get("a");
  map.get("x");
  map.set("b", 2);
  assert.deepEqual(map.stats(), { size: 1, maxSize: 1, hits: 1, misses: 1, evictions: 1 });
  assert.equal(map.maxSize, 1);
  assert.equal(map.delete("b"), true);
  assert.equal(map.delete("b"), false);
  map.set("c", 3);
  map.clear();
  assert.equal(map.size, 0);
});

Deno.test("10 concurrent getOrLoad calls for one key share one load", async () => {
  const map = new TtlMap<string, string>({ ttlMs: 10_000, maxSize: 10 });
  let loads = 0;
  const gate = deferred<void>();
  const load = async () => {
    loads++;
    await gate.promise;
    return "catalogue";
  };
  const waiting = Array.from({ length: 10 }, () => map.getOrLoad("models", load));
  gate.resolve();
  assert.deepEqual(await Promise.all(waiting), Array(10).fill("catalogue"));
  assert.equal(loads, 1);
  assert.equal(await map.getOrLoad("models", load), "catalogue");
  assert.equal(loads, 1, "a fresh value is returned without loading");
  assert.equal(map.get("models"), "catalogue");
});

Deno.test("getOrLoad caches with its own ttl", async () => {
  const c = clock();
  const map = new TtlMap<string, number>({ ttlMs: 10_000, maxSize: 10, now: c.now });
  await map.getOrLoad("k", () => Promise.resolve(1), { ttlMs: 100 });
  c.advance(100);
  assert.equal(map.has("k"), false);
});

Deno.test("a failed load is not cached and rejects every waiter", async () => {
  const map = new TtlMap<string, string>({ ttlMs: 10_000, maxSize: 10 });
  let loads = 0;
  const failing = async () => {
    loads++;
    await Promise.resolve();
    throw new Error("backend down");
  };
  const results = await Promise.allSettled([
    map.getOrLoad("k", failing),
    map.getOrLoad("k", failing),
    map.getOrLoad("k", failing, { signal: new AbortController().signal }),
  ]);
  assert.equal(loads, 1);
  for (const r of results) {
    assert.equal(r.status, "rejected");
    assert.equal((r as PromiseRejectedResult).reason.message, "backend down");
  }
  assert.equal(map.has("k"), false);
  assert.equal(await map.getOrLoad("k", () => Promise.resolve("ok")), "ok");
  // A load that throws synchronously also rejects.
  await assert.rejects(
    map.getOrLoad("sync", () => {
      throw new Error("sync boom");
    }),
    /sync boom/,
  );
});

Deno.test("one waiter aborting does not abort the load while others wait", async () => {
  const map = new TtlMap<string, string>({ ttlMs: 10_000, maxSize: 10 });
  const gate = deferred<string>();
  let loadSignal: AbortSignal | undefined;
  const load = (signal: AbortSignal) => {
    loadSignal = signal;
    return gate.promise;
  };
  const leaving = new AbortController();
  const first = map.getOrLoad("k", load, { signal: leaving.signal });
  const second = map.getOrLoad("k", load, { signal: new AbortController().signal });
  leaving.abort();
  await assert.rejects(first, (err: unknown) => {
    assert.ok(err instanceof BridgeError);
    assert.equal(err.code, "cancelled");
    return true;
  });
  assert.equal(loadSignal!.aborted, false);
  gate.resolve("value");
  assert.equal(await second, "value");
  assert.equal(map.get("k"), "value");
});

Deno.test("the load is aborted when every waiter has gone, and the next caller loads anew", async () => {
  const map = new TtlMap<string, string>({ ttlMs: 10_000, maxSize: 10 });
  const signals: AbortSignal[] = [];
  const load = (signal: AbortSignal) => {
    signals.push(signal);
    return new Promise<string>((_, reject) => {
      signal.addEventListener("abort", () => reject(signal.reason), { once: true });
    });
  };
  const a = new AbortController();
  const b = new AbortController();
  const pa = map.getOrLoad("k", load, { signal: a.signal });
  const pb = map.getOrLoad("k", load, { signal: b.signal });
  a.abort();
  await assert.rejects(pa);
  assert.equal(signals[0].aborted, false);
  b.abort(new DOMException("deadline", "TimeoutError"));
  await assert.rejects(pb, (err: unknown) => (err as BridgeError).code === "timeout");
  assert.equal(signals.length, 1);
  assert.equal(signals[0].aborted, true);
  assert.equal(await map.getOrLoad("k", () => Promise.resolve("fresh")), "fresh");
});

Deno.test("an already aborted caller is rejected without starting a load", async () => {
  const map = new TtlMap<string, string>({ ttlMs: 10_000, maxSize: 10 });
  let loads = 0;
  await assert.rejects(
    map.getOrLoad("k", () => {
      loads++;
      return Promise.resolve("x");
    }, { signal: AbortSignal.abort() }),
    (err: unknown) => (err as BridgeError).code === "cancelled",
  );
  assert.equal(loads, 0);
});

Deno.test("delete during a load keeps the stale result out of the cache", async () => {
  const map = new TtlMap<string, string>({ ttlMs: 10_000, maxSize: 10 });
  const gate = deferred<string>();
  const stale = map.getOrLoad("k", () => gate.promise);
  map.delete("k");
  const fresh = map.getOrLoad("k", () => Promise.resolve("new"));
  gate.resolve("old");
  assert.equal(await stale, "old");
  assert.equal(await fresh, "new");
  assert.equal(map.get("k"), "new");
});

Deno.test("the module keeps no timer", async () => {
  const source = await Deno.readTextFile(new URL("../src/util/ttl_map.ts", import.meta.url));
  assert.ok(!/setTimeout|setInterval/.test(source));
});
