import assert from "node:assert/strict";
import { classifyForRetry } from "../src/backend/router.ts";
import { BridgeError } from "../src/util/errors.ts";

const status = (code: number, extra: Record<string, unknown> = {}) =>
  new BridgeError(code === 429 ? "rate_limited" : "upstream_error", `answered ${code}`, {
    status: code,
    details: { status: code, ...extra },
  });

Deno.test("429, 502, 503 and 504 are retried, with the server's Retry-After", () => {
  for (const code of [429, 502, 503, 504]) assert.equal(classifyForRetry(status(code)).retry, true);
  assert.deepEqual(classifyForRetry(status(429, { retryAfterMs: 1500 })), {
    retry: true,
    afterMs: 1500,
  });
});

Deno.test("400, 401, 404, 422 and 500 are never retried", () => {
  for (const code of [400, 401, 404, 422, 500]) {
    assert.equal(classifyForRetry(status(code)).retry, false, String(code));
  }
});

Deno.test("a connection refused before any byte is retried; a stream broken midway is not", () => {
  const refused = new BridgeError("backend_unreachable", "refused", {
    details: { phase: "connect" },
  });
  assert.equal(classifyForRetry(refused).retry, true);
  const broken = new BridgeError("upstream_error", "broke", { details: { phase: "stream" } });
  assert.equal(classifyForRetry(broken).retry, false);
});

Deno.test("nothing is retried once text was delivered, whatever the status", () => {
  const delivered = status(503).with({ partialText: "Once upon a" });
  assert.equal(classifyForRetry(delivered).retry, false);
});

Deno.test("timeouts, cancels and non-BridgeErrors are not retried", () => {
  assert.equal(classifyForRetry(new BridgeError("timeout", "slow")).retry, false);
  assert.equal(classifyForRetry(new BridgeError("cancelled", "stop")).retry, false);
  assert.equal(classifyForRetry(new Error("boom")).retry, false);
});
