import assert from "node:assert/strict";
import { BridgeStats, DURATION_BUCKETS_S } from "../src/server/stats.ts";

Deno.test("the duration histogram counts every call, cumulatively per bucket", () => {
  const stats = new BridgeStats();
  stats.record({ tool: "chat_completion", ms: 0.5 });
  stats.record({ tool: "chat_completion", ms: 40 });
  stats.record({ tool: "chat_completion", ms: 700_000, code: "timeout" });
  const at = (le: number) => stats.durationBuckets[DURATION_BUCKETS_S.indexOf(le as never)];
  assert.equal(at(0.001), 1);
  assert.equal(at(0.05), 2);
  assert.equal(at(600), 2, "a call over the last bound is only in +Inf");
  assert.equal(stats.requests, 3);
  assert.ok(Math.abs(stats.durationSumS - 700.0405) < 1e-9);
  assert.deepEqual(stats.errorsByCode, { timeout: 1 });
  assert.equal(stats.byToolAndCode["chat_completion|ok"], 2);
});

Deno.test("latency percentiles come from the recent calls", () => {
  const stats = new BridgeStats();
  for (let i = 1; i <= 100; i++) stats.record({ tool: "t", ms: i });
  assert.deepEqual(stats.latency(), { p50: 51, p99: 100 });
  assert.deepEqual(new BridgeStats().latency(), { p50: 0, p99: 0 });
});
