/**
 * Server-sent events, parsed incrementally as the bytes arrive (WHATWG "event stream
 * interpretation"), so a stream is never buffered whole before it is split.
 */

/** One dispatched event. `event` is absent for the default ("message") type. */
export interface SseEvent {
  event?: string;
  data: string;
  /** The last event ID seen so far in the stream (it persists across events, per spec). */
  id?: string;
}

/**
 * A pure incremental SSE parser: push decoded text in pieces split anywhere; get back the
 * events completed by that piece. Handles CRLF / CR / LF line ends (also a CRLF split
 * across two pieces), a leading BOM, `:` comments, multi-line `data:` (joined with `\n`),
 * one optional space after the colon, and lines without a colon (the whole line is the
 * field name with an empty value, so only a bare `data` line has an effect). `retry` and
 * unknown fields are ignored. An event without data lines is not dispatched.
 *
 * @example
 * const parser = new SseParser();
 * parser.push("data: hel");       // []
 * parser.push("lo\n\n");          // [{ data: "hello" }]
 */
export class SseParser {
  #partial = "";
  #skipLf = false;
  #started = false;
  #data: string[] = [];
  #event = "";
  #lastId = "";

  /** Feeds the next piece of text; returns the events it completed, in order. */
  push(text: string): SseEvent[] {
    const events: SseEvent[] = [];
    if (text.length === 0) return events;
    let start = 0;
    if (!this.#started) {
      this.#started = true;
      if (text.charCodeAt(0) === 0xfeff) start = 1;
    }
    if (this.#skipLf) {
      this.#skipLf = false;
      if (text.charCodeAt(start) === 10) start++;
    }
    for (let i = start; i < text.length; i++) {
      const c = text.charCodeAt(i);
      if (c !== 10 && c !== 13) continue;
      const line = this.#partial + text.slice(start, i);
      this.#partial = "";
      if (c === 13) {
        if (i + 1 < text.length) {
          if (text.charCodeAt(i + 1) === 10) i++;
        } else {
          // A CR ends the piece: a LF starting the next piece belongs to this line end.
          this.#skipLf = true;
        }
      }
      this.#line(line, events);
      start = i + 1;
    }
    if (start < text.length) this.#partial += text.slice(start);
    return events;
  }

  /** End of input: dispatches a pending event that lacked its final blank line. */
  flush(): SseEvent[] {
    const events: SseEvent[] = [];
    if (this.#partial !== "") {
      const line = this.#partial;
      this.#partial = "";
      this.#line(line, events);
    }
    this.#skipLf = false;
    this.#dispatch(events);
    return events;
  }

  #line(line: string, events: SseEvent[]): void {
    if (line === "") return this.#dispatch(events);
    const colon = line.indexOf(":");
    if (colon === 0) return; // comment
    let field = line;
    let value = "";
    if (colon > 0) {
      field = line.slice(0, colon);
      value = line.charCodeAt(colon + 1) === 32 ? line.slice(colon + 2) : line.slice(colon + 1);
    }
    switch (field) {
      case "data":
        this.#data.push(value);
        break;
      case "event":
        this.#event = value;
        break;
      case "id":
        if (!value.includes("\0")) this.#lastId = value;
        break;
        // "retry" and unknown fields: ignored.
    }
  }

  #dispatch(events: SseEvent[]): void {
    if (this.#data.length > 0) {
      const event: SseEvent = { data: this.#data.join("\n") };
      if (this.#event !== "") event.event = this.#event;
      if (this.#lastId !== "") event.id = this.#lastId;
      events.push(event);
    }
    this.#data = [];
    this.#event = "";
  }
}

/** Reading the body failed (e.g. the connection dropped); `cause` is the original error. */
export class StreamReadError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "StreamReadError";
  }
}

/** Options of {@linkcode readSse}. */
export interface ReadSseOptions {
  /** Aborting cancels the body and makes the iterator throw `signal.reason` (callers use it
   * for their timeouts too). */
  signal?: AbortSignal;
}

type Outcome =
  | { kind: "chunk"; result: ReadableStreamReadResult<Uint8Array> }
  | { kind: "error"; error: unknown };

/**
 * Reads an HTTP body as SSE events, decoding UTF-8 incrementally (a character split across
 * chunks survives). Throws `signal.reason` on abort, {@linkcode StreamReadError} when the body
 * breaks. On every exit — end, error, abort, or the consumer breaking out early — the
 * reader is cancelled (unless the stream already ended) and released.
 *
 * The body is locked on the first `next()`: a generator that is never started does not
 * touch the body.
 *
 * @example
 * const res = await fetch(url, { method: "POST", body, signal });
 * for await (const ev of readSse(res.body!, { signal })) {
 *   if (ev.data === "[DONE]") break;
 *   console.log(JSON.parse(ev.data));
 * }
 */
export async function* readSse(
  body: ReadableStream<Uint8Array>,
  options: ReadSseOptions = {},
): AsyncGenerator<SseEvent> {
  const { signal } = options;
  const reader = body.getReader();
  const decoder = new TextDecoder();
  const parser = new SseParser();
  let ended = false;
  let cancelReason: unknown = undefined;
  try {
    while (true) {
      if (signal?.aborted) {
        cancelReason = signal.reason;
        throw signal.reason;
      }
      const outcome = await nextChunk(reader, signal);
      if (outcome.kind === "error") {
        cancelReason = outcome.error;
        throw outcome.error;
      }
      if (outcome.result.done) {
        ended = true;
        break;
      }
      const text = decoder.decode(outcome.result.value, { stream: true });
      for (const event of parser.push(text)) yield event;
    }
    for (const event of parser.push(decoder.decode())) yield event;
    for (const event of parser.flush()) yield event;
  } finally {
    if (!ended) reader.cancel(cancelReason).catch(() => {});
    reader.releaseLock();
  }
}

/** One read raced against the signal; never rejects. */
function nextChunk(
  reader: ReadableStreamDefaultReader<Uint8Array>,
  signal: AbortSignal | undefined,
): Promise<Outcome> {
  return new Promise<Outcome>((resolve) => {
    const finish = (outcome: Outcome) => {
      signal?.removeEventListener("abort", onAbort);
      resolve(outcome);
    };
    const onAbort = () => finish({ kind: "error", error: signal!.reason });
    signal?.addEventListener("abort", onAbort, { once: true });
    reader.read().then(
      (result) => finish({ kind: "chunk", result }),
      (error) => {
        // A body aborted through the same signal fails with it: report the abort.
        if (signal?.aborted) return finish({ kind: "error", error: signal.reason });
        finish({
          kind: "error",
          error: new StreamReadError(`reading the stream failed: ${describe(error)}`, {
            cause: error,
          }),
        });
      },
    );
  });
}

function describe(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
