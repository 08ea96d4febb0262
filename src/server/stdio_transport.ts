/**
 * MCP over stdin/stdout with the guarantees lmbridge promises: a line that is not JSON gets a
 * JSON-RPC parse error, a message that is not JSON-RPC gets an invalid-request error, a
 * message over the size limit is refused with a clear error (and skipped up to its end
 * without being buffered), and the end of stdin closes the transport. Nothing but JSON-RPC
 * is ever written to stdout.
 */
import type { Transport } from "@modelcontextprotocol/sdk/shared/transport.js";
import { type JSONRPCMessage, JSONRPCMessageSchema } from "@modelcontextprotocol/sdk/types.js";
import { concatBytes } from "../util/bytes.ts";

/** Default largest JSON-RPC message read: 32 MiB (images come inline as base64); LMBRIDGE_MAX_MESSAGE_BYTES changes it. */
export const MAX_MESSAGE_BYTES = 32 * 1024 * 1024;

export interface LineTransportOptions {
  input?: ReadableStream<Uint8Array>;
  output?: WritableStream<Uint8Array>;
  maxMessageBytes?: number;
}

/** A newline-delimited JSON-RPC transport over byte streams (stdio by default). */
export class LineTransport implements Transport {
  onclose?: () => void;
  onerror?: (error: Error) => void;
  onmessage?: (message: JSONRPCMessage) => void;

  readonly #input: ReadableStream<Uint8Array>;
  readonly #writer: WritableStreamDefaultWriter<Uint8Array>;
  readonly #max: number;
  readonly #encoder = new TextEncoder();
  #reader?: ReadableStreamDefaultReader<Uint8Array>;
  #closed = false;
  #writeChain: Promise<void> = Promise.resolve();
  #pending: Uint8Array[] = [];

  constructor(options: LineTransportOptions = {}) {
    this.#input = options.input ?? Deno.stdin.readable;
    this.#writer = (options.output ?? Deno.stdout.writable).getWriter();
    this.#max = options.maxMessageBytes ?? MAX_MESSAGE_BYTES;
  }

  start(): Promise<void> {
    this.#reader = this.#input.getReader();
    this.#readLoop().catch((err) => this.onerror?.(err as Error));
    return Promise.resolve();
  }

  async #readLoop() {
    const decoder = new TextDecoder();
    let parts: Uint8Array[] = [];
    let size = 0;
    let skipping = false;
    try {
      while (true) {
        const { value, done } = await this.#reader!.read();
        if (done) break;
        let chunk = value;
        while (chunk.length) {
          const nl = chunk.indexOf(10);
          const piece = nl < 0 ? chunk : chunk.subarray(0, nl);
          if (!skipping) {
            if (size + piece.length > this.#max) {
              skipping = true;
              parts = [];
              size = 0;
              this.#reply(null, -32600, `message larger than ${this.#max} bytes refused`);
            } else {
              parts.push(piece);
              size += piece.length;
            }
          }
          if (nl < 0) break;
          if (!skipping) this.#handleLine(decoder.decode(concatBytes(parts)));
          parts = [];
          size = 0;
          skipping = false;
          chunk = chunk.subarray(nl + 1);
        }
      }
      if (size && !skipping) this.#handleLine(decoder.decode(concatBytes(parts)));
    } finally {
      await this.close();
    }
  }

  #handleLine(line: string) {
    const text = line.trim();
    if (!text) return;
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch (err) {
      this.#reply(null, -32700, `Parse error: ${(err as Error).message}`);
      return;
    }
    const parsed = JSONRPCMessageSchema.safeParse(json);
    if (!parsed.success) {
      const id = typeof json === "object" && json !== null && "id" in json &&
          (typeof json.id === "string" || typeof json.id === "number")
        ? json.id
        : null;
      this.#reply(id, -32600, "Invalid Request: not a JSON-RPC 2.0 message");
      return;
    }
    try {
      this.onmessage?.(parsed.data);
    } catch (err) {
      this.onerror?.(err as Error);
    }
  }

  #reply(id: string | number | null, code: number, message: string) {
    this.#write({ jsonrpc: "2.0", id, error: { code, message } }).catch(() => {});
  }

  send(message: JSONRPCMessage): Promise<void> {
    return this.#write(message);
  }

  #write(message: unknown): Promise<void> {
    if (this.#closed) return Promise.resolve();
    this.#pending.push(this.#encoder.encode(JSON.stringify(message) + "\n"));
    // Messages queued while a write is in progress go out together in the next write: one
    // syscall for many answers when hundreds of requests finish at once.
    this.#writeChain = this.#writeChain.then(() => this.#flush()).catch((err) => {
      this.onerror?.(err as Error);
    });
    return this.#writeChain;
  }

  async #flush(): Promise<void> {
    if (!this.#pending.length) return;
    const parts = this.#pending;
    this.#pending = [];
    await this.#writer.write(concatBytes(parts));
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#reader?.cancel().catch(() => {});
    await this.#writeChain;
    this.onclose?.();
  }
}
