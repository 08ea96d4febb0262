import assert from "node:assert/strict";
import { createProgressSink, nullProgress, type SendProgress } from "../src/server/progress.ts";

type Sent = { progress: number; message?: string; at: number };

/** A fake clock plus a send that records what was sent and when (by the fake clock). */
function harness() {
  let t = 1000;
  const sent: Sent[] = [];
  let waiter: (() => void) | undefined;
  const send: SendProgress = (p) => {
    sent.push({ ...p, at: t });
    waiter?.();
  };
  return {
    sent,
    send,
    now: () => t,
    advance: (ms: number) => {
      t += ms;
    },
    /** Resolves at the next send (fails after a few seconds instead of hanging). */
    nextSend: () =>
      new Promise<void>((resolve, reject) => {
        const guard = setTimeout(() => reject(new Error("no notification within 5 s")), 5000);
        waiter = () => {
          clearTimeout(guard);
          waiter = undefined;
          resolve();
        };
      }),
  };
}

function assertStrictlyIncreasing(sent: Sent[]) {
  for (let i = 1; i < sent.length; i++) {
    assert.ok(sent[i].progress > sent[i - 1].progress, `progress grows at ${i}`);
  }
}

Deno.test("the first text is sent at once", () => {
  const h = harness();
  const sink = createProgressSink(h.send, { intervalMs: 50, now: h.now });
  sink.text("Hello");
  assert.deepEqual(h.sent.map((s) => s.message), ["Hello"]);
  sink.close();
});

Deno.test("text within one interval is coalesced into one notification by the timer", async () => {
  const h = harness();
  const sink = createProgressSink(h.send, { intervalMs: 20, now: h.now });
  sink.text("a");
  sink.text("b");
  sink.text("c");
  sink.text("d");
  assert.equal(h.sent.length, 1, "only the first went out at once");
  await h.nextSend();
  assert.deepEqual(h.sent.map((s) => s.message), ["a", "bcd"]);
  assertStrictlyIncreasing(h.sent);
  sink.close();
  assert.equal(h.sent.length, 2, "nothing left to flush");
});

Deno.test("a fast stream sends at most one text notification per interval", () => {
  const h = harness();
  const sink = createProgressSink(h.send, { intervalMs: 50, now: h.now });
  let all = "";
  for (let i = 0; i < 200; i++) {
    const token = `t${i} `;
    all += token;
    sink.text(token);
    h.advance(7);
  }
  sink.close();
  // 200 tokens over 1400 ms of clock: about 28 notifications, never two within 50 ms.
  assert.ok(h.sent.length <= Math.ceil(1400 / 50) + 1, `${h.sent.length} notifications`);
  assert.ok(h.sent.length >= 10);
  for (let i = 1; i < h.sent.length; i++) {
    assert.ok(h.sent[i].at - h.sent[i - 1].at >= 50, `gap before notification ${i}`);
  }
  assert.equal(h.sent.map((s) => s.message).join(""), all, "no text lost or repeated");
  assertStrictlyIncreasing(h.sent);
});

Deno.test("progress is strictly increasing across text and status", async () => {
  const h = harness();
  const sink = createProgressSink(h.send, { intervalMs: 10, now: h.now });
  sink.status("queued");
  sink.status("loading model");
  const next = h.nextSend();
  sink.text("x"); // within the interval after a status: waits for the timer
  sink.text("y");
  await next;
  h.advance(10);
  sink.text("z");
  sink.status("done");
  sink.close();
  assert.deepEqual(h.sent.map((s) => s.message), ["queued", "loading model", "xy", "z", "done"]);
  assertStrictlyIncreasing(h.sent);
  assert.ok(h.sent.every((s) => Number.isFinite(s.progress) && s.progress > 0));
});

Deno.test("a status is sent at once, after the pending text is flushed", () => {
  const h = harness();
  const events: string[] = [];
  const sink = createProgressSink(h.send, {
    intervalMs: 60_000,
    now: h.now,
    onEvent: (m) => events.push(m),
  });
  sink.text("first ");
  sink.text("pending ");
  sink.text("text");
  assert.equal(h.sent.length, 1);
  sink.status("round 2 started");
  assert.deepEqual(h.sent.map((s) => s.message), ["first ", "pending text", "round 2 started"]);
  assert.deepEqual(events, ["round 2 started"], "onEvent sees status lines");
  assertStrictlyIncreasing(h.sent);
  sink.close(); // the long timer was cleared by the flush: the sanitizer would catch it
});

Deno.test("close flushes pending text and stops all notifications", async () => {
  const h = harness();
  const sink = createProgressSink(h.send, { intervalMs: 20, now: h.now });
  sink.text("a");
  sink.text("b");
  sink.close();
  assert.deepEqual(h.sent.map((s) => s.message), ["a", "b"]);
  sink.text("late");
  sink.status("late status");
  sink.close();
  h.advance(1000);
  sink.text("later");
  await new Promise((r) => setTimeout(r, 60)); // longer than the interval: no timer fires
  assert.equal(h.sent.length, 2);
});

Deno.test("close resolves only once the last notification went out", async () => {
  const releases: (() => void)[] = [];
  const delivered: string[] = [];
  const sink = createProgressSink((p) =>
    new Promise<void>((resolve) => {
      releases.push(() => {
        delivered.push(p.message ?? "");
        resolve();
      });
    }), { intervalMs: 60_000, now: () => 0 });
  sink.text("a");
  sink.text("b");
  let closed = false;
  const done = sink.close().then(() => closed = true);
  assert.equal(releases.length, 2, "both notifications handed to send");
  await Promise.resolve();
  assert.equal(closed, false, "still waiting for the transport");
  for (const release of releases) release();
  await done;
  assert.deepEqual(delivered, ["a", "b"]);
});

Deno.test("close with nothing pending sends nothing", async () => {
  const h = harness();
  const sink = createProgressSink(h.send, { intervalMs: 20, now: h.now });
  await sink.close();
  assert.equal(h.sent.length, 0);
});

Deno.test("empty text is ignored", () => {
  const h = harness();
  const sink = createProgressSink(h.send, { intervalMs: 20, now: h.now });
  sink.text("");
  assert.equal(h.sent.length, 0);
  sink.close();
});

Deno.test("a send that throws is swallowed and progress goes on", () => {
  let calls = 0;
  const progress: number[] = [];
  const sink = createProgressSink((p) => {
    calls++;
    progress.push(p.progress);
    throw new Error("client went away");
  }, { intervalMs: 60_000, now: () => 0 });
  sink.text("a");
  sink.status("s");
  sink.text("b");
  sink.close();
  assert.equal(calls, 3);
  assert.ok(progress[0] < progress[1] && progress[1] < progress[2]);
});

Deno.test("a send that rejects is swallowed (no unhandled rejection)", async () => {
  let calls = 0;
  const sink = createProgressSink(() => {
    calls++;
    return Promise.reject(new Error("transport closed"));
  }, { intervalMs: 10, now: () => 0 });
  sink.text("a");
  sink.text("b"); // flushed by the real timer
  sink.status("s");
  await new Promise((r) => setTimeout(r, 30));
  sink.close();
  assert.equal(calls, 3);
});

Deno.test("a pending timer fires with a send that throws without breaking anything", async () => {
  let calls = 0;
  let t = 0;
  const sink = createProgressSink(() => {
    calls++;
    throw new Error("gone");
  }, { intervalMs: 10, now: () => t });
  sink.text("a");
  sink.text("b");
  await new Promise((r) => setTimeout(r, 40));
  assert.equal(calls, 2, "the timer flushed the pending text");
  t += 100;
  sink.text("c");
  assert.equal(calls, 3);
  sink.close();
});

Deno.test("nullProgress drops everything", async () => {
  nullProgress.text("x");
  nullProgress.status("y");
  await nullProgress.close();
});
