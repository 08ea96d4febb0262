import assert from "node:assert/strict";
import { readSse, type SseEvent, SseParser, StreamReadError } from "../src/util/sse.ts";

const SAMPLE = ": keep-alive comment\r\n" +
  "event: message.delta\r\n" +
  'data: {"content":"caf\u00e9 \u{1F600}"}\r\n' +
  "\r\n" +
  "data:first line\n" +
  "data: second \u00e9 line\n" +
  "id: 7\n" +
  "\n" +
  "retry: 1000\r" +
  "data:  two spaces keep one\r" +
  "\r" +
  "data: [DONE]\n\n";

const EXPECTED: SseEvent[] = [
  { event: "message.delta", data: '{"content":"caf\u00e9 \u{1F600}"}' },
  { data: "first line\nsecond \u00e9 line", id: "7" },
  { data: " two spaces keep one", id: "7" },
  { data: "[DONE]", id: "7" },
];

const encoder = new TextEncoder();

function parseAll(pieces: string[]): SseEvent[] {
  const parser = new SseParser();
  const events = pieces.flatMap((p) => parser.push(p));
  return [...events, ...parser.flush()];
}

function streamOf(chunks: Uint8Array[]): ReadableStream<Uint8Array> {
  return new ReadableStream({
    start(controller) {
      for (const chunk of chunks) controller.enqueue(chunk);
      controller.close();
    },
  });
}

async function collect(
  body: ReadableStream<Uint8Array>,
  options?: Parameters<typeof readSse>[1],
): Promise<SseEvent[]> {
  const events: SseEvent[] = [];
  for await (const event of readSse(body, options)) events.push(event);
  return events;
}

Deno.test("parser gives the same events for every split of the text into three pieces", () => {
  assert.deepEqual(parseAll([SAMPLE]), EXPECTED);
  for (let i = 0; i <= SAMPLE.length; i++) {
    for (let j = i; j <= SAMPLE.length; j += 3) {
      const pieces = [SAMPLE.slice(0, i), SAMPLE.slice(i, j), SAMPLE.slice(j)];
      assert.deepEqual(parseAll(pieces), EXPECTED, `split at ${i}, ${j}`);
    }
  }
});

Deno.test("readSse gives the same events for every byte split, inside CRLF and multibyte chars", async () => {
  const bytes = encoder.encode(SAMPLE);
  // The sample has a 4-byte emoji, 2-byte é and CRLFs; every position cuts through each once.
  for (let i = 0; i <= bytes.length; i++) {
    const events = await collect(streamOf([bytes.slice(0, i), bytes.slice(i)]));
    assert.deepEqual(events, EXPECTED, `split at byte ${i}`);
  }
  const oneByOne = await collect(streamOf([...bytes].map((b) => new Uint8Array([b]))));
  assert.deepEqual(oneByOne, EXPECTED);
});

Deno.test("comments and blank lines without data dispatch nothing", () => {
  assert.deepEqual(parseAll([": ping\n\n:\n\n\n", "event: lonely\n\n"]), []);
});

Deno.test("multi-line data is joined with newlines, empty data lines included", () => {
  assert.deepEqual(parseAll(["data: a\ndata:\ndata: b\n\n"]), [{ data: "a\n\nb" }]);
});

Deno.test("a final event without its blank line is dispatched at the end of input", async () => {
  assert.deepEqual(parseAll(["data: tail"]), [{ data: "tail" }]);
  assert.deepEqual(parseAll(["event: end\ndata: tail\n"]), [{ event: "end", data: "tail" }]);
  assert.deepEqual(await collect(streamOf([encoder.encode("data: x\n\ndata: tail")])), [
    { data: "x" },
    { data: "tail" },
  ]);
});

Deno.test("lines without a colon are field names with an empty value; only data counts", () => {
  const events = parseAll(["garbage\nevent\ndata\nnonsense here\ndata: x\n\n"]);
  assert.deepEqual(events, [{ data: "\nx" }]);
  assert.deepEqual(parseAll(["garbage line\n\n"]), []);
});

Deno.test("a leading BOM is skipped and unknown fields are ignored", () => {
  assert.deepEqual(parseAll(["\uFEFFdata: a\nfoo: bar\n\n"]), [{ data: "a" }]);
});

Deno.test("an id with NUL is ignored and ids persist across events", () => {
  assert.deepEqual(parseAll(["id: 1\ndata: a\n\nid: x\0y\ndata: b\n\n"]), [
    { data: "a", id: "1" },
    { data: "b", id: "1" },
  ]);
});

Deno.test("chunks that come slowly are all read", async () => {
  let n = 0;
  const body = new ReadableStream<Uint8Array>({
    async pull(controller) {
      await new Promise((r) => setTimeout(r, 100));
      if (n++ < 4) controller.enqueue(encoder.encode(`data: ${n}\n\n`));
      else controller.close();
    },
  });
  const events = await collect(body);
  assert.deepEqual(events.map((e) => e.data), ["1", "2", "3", "4"]);
});

Deno.test("abort cancels the body and throws the signal's reason", async () => {
  let cancelled = false;
  const body = new ReadableStream<Uint8Array>({
    start(controller) {
      controller.enqueue(encoder.encode("data: first\n\n"));
    },
    cancel() {
      cancelled = true;
    },
  });
  const controller = new AbortController();
  const reason = new DOMException("client went away", "AbortError");
  const seen: string[] = [];
  await assert.rejects(
    (async () => {
      for await (const event of readSse(body, { signal: controller.signal })) {
        seen.push(event.data);
        setTimeout(() => controller.abort(reason), 50);
      }
    })(),
    (err) => err === reason,
  );
  assert.deepEqual(seen, ["first"]);
  assert.ok(cancelled);
});

Deno.test("an already aborted signal throws before reading", async () => {
  let cancelled = false;
  const body = new ReadableStream<Uint8Array>({
    cancel() {
      cancelled = true;
    },
  });
  const reason = new Error("stop");
  await assert.rejects(collect(body, { signal: AbortSignal.abort(reason) }), (e) => e === reason);
  assert.ok(cancelled);
});

Deno.test("a body that breaks throws StreamReadError with the cause, after the events so far", async () => {
  const cause = new TypeError("connection reset");
  const body = new ReadableStream<Uint8Array>({
    start(controller) {
      controller.enqueue(encoder.encode("data: partial\n\ndata: lost"));
    },
    pull(controller) {
      controller.error(cause);
    },
  });
  const seen: string[] = [];
  await assert.rejects(
    (async () => {
      for await (const event of readSse(body)) seen.push(event.data);
    })(),
    (err: unknown) => {
      assert.ok(err instanceof StreamReadError);
      assert.equal(err.cause, cause);
      return true;
    },
  );
  assert.deepEqual(seen, ["partial"]);
});

Deno.test("breaking out early cancels the source", async () => {
  let cancelled = false;
  let n = 0;
  const body = new ReadableStream<Uint8Array>({
    pull(controller) {
      controller.enqueue(encoder.encode(`data: ${n++}\n\n`));
    },
    cancel() {
      cancelled = true;
    },
  });
  const seen: string[] = [];
  for await (const event of readSse(body)) {
    seen.push(event.data);
    if (seen.length === 2) break;
  }
  assert.deepEqual(seen, ["0", "1"]);
  assert.ok(cancelled);
  assert.ok(!body.locked, "the reader is released");
});

Deno.test("a finished stream is released, not cancelled", async () => {
  let cancelled = false;
  const body = new ReadableStream<Uint8Array>({
    start(controller) {
      controller.enqueue(encoder.encode("data: only\n\n"));
      controller.close();
    },
    cancel() {
      cancelled = true;
    },
  });
  assert.deepEqual(await collect(body), [{ data: "only" }]);
  assert.ok(!cancelled);
  assert.ok(!body.locked);
});
