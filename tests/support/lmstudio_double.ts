/**
 * A faithful fake of LM Studio — and, by option, of Ollama, llama-server and a generic
 * OpenAI server — written from docs/lmstudio-protocol.md, quirks included, with scripted
 * replies and injectable faults. Integration tests start it in process with `startDouble`;
 * `deno run -A tests/support/lmstudio_double.ts [--port 1234] [--kind lmstudio] [--api-key K]`
 * serves it standalone so lmbridge can be tried without LM Studio.
 *
 * Clients connect to a small TCP relay in front of `Deno.serve`: it is the only way to close
 * a client's socket before any response byte (the `reset` fault); everything else is plain
 * `Deno.serve`.
 */
import { delay } from "../../src/util/async.ts";

/** Which server the double imitates. */
export type DoubleKind = "lmstudio" | "ollama" | "llamacpp" | "openai";

/** A model the double knows (downloaded); `loaded` changes with loads and unloads. */
export interface DoubleModel {
  /** Model key, e.g. "qwen/qwen3-4b". */
  id: string;
  /** Default "llm". */
  type?: "llm" | "vlm" | "embeddings";
  /** Default true. */
  loaded?: boolean;
  /** max_context_length, and loaded_context_length unless a load says otherwise; default 4096. */
  contextLength?: number;
  toolUse?: boolean;
  /** Default: true for "vlm" models. */
  vision?: boolean;
  reasoning?: boolean;
  /** The loaded instance's config.parallel; default 4. */
  parallel?: number;
}

/** A canned answer for the next matching generation request (see `enqueueReply`). */
export interface ScriptedReply {
  /** Answer text (default: the echo answer). */
  content?: string;
  /** Thinking text, sent as reasoning_content (lmstudio, llamacpp, openai) or reasoning (ollama). */
  reasoning?: string;
  /** Overrides how the reasoning is sent. */
  reasoningField?: "reasoning_content" | "reasoning" | "think_tags";
  /** Tool calls; `arguments` is sent verbatim (may be invalid JSON on purpose). */
  toolCalls?: { name: string; arguments: string; id?: string }[];
  /** Default "stop", or "tool_calls" when toolCalls are present. */
  finishReason?: string;
  /** The answer's `model` field (to simulate LM Studio serving another model). */
  model?: string;
}

/** A failure the double can inject; see `FaultRule`. */
export type Fault =
  | { kind: "status"; status: number; body?: unknown; headers?: Record<string, string> }
  | { kind: "first_byte_delay"; ms: number }
  | { kind: "slow_stream"; chunkDelayMs: number }
  | { kind: "drop"; afterChunks: number }
  | { kind: "stall"; afterChunks: number }
  | { kind: "garbage" }
  | { kind: "error_in_stream"; afterChunks: number; message: string }
  | { kind: "error_in_200"; message: string }
  | { kind: "context_overflow" }
  | { kind: "empty_stream" }
  | { kind: "reset" };

/**
 * When to inject a fault: requests on /v1/* and /api/* whose path (exact) and body `model`
 * match fire the first matching rule, `times` times (default 1; Infinity allowed).
 */
export interface FaultRule {
  fault: Fault;
  path?: string;
  model?: string;
  times?: number;
}

/** One HTTP request as the double saw it. */
export interface RecordedRequest {
  /** 1, 2, 3… in arrival order. */
  id: number;
  method: string;
  /** URL path without the query. */
  path: string;
  /** Lower-cased names; Authorization kept. */
  headers: Record<string, string>;
  /** Parsed JSON, or the raw text when not JSON, or null without a body. */
  body: unknown;
  /** Date.now() at arrival. */
  startedAt: number;
  /** The client went away before the response finished. */
  aborted: boolean;
  /** The double finished sending the response. */
  completed: boolean;
}

/** Options of `startDouble`; every field has a default. */
export interface DoubleOptions {
  /** Default "lmstudio". */
  kind?: DoubleKind;
  /**
   * Default: qwen/qwen3-4b (llm, loaded, toolUse), google/gemma-3-4b (vlm, not loaded,
   * vision), text-embedding-nomic-embed-text-v1.5 (embeddings, not loaded).
   */
  models?: DoubleModel[];
  /** When set, every request needs `Authorization: Bearer <apiKey>`, else 401. */
  apiKey?: string;
  /** Default 0 (any free port). */
  port?: number;
  /** Default "127.0.0.1". */
  hostname?: string;
  /** Characters of content per SSE chunk; default 4. */
  chunkSize?: number;
  /** Delay between SSE chunks (and per chunk of a non-streamed answer); default 0. */
  chunkDelayMs?: number;
  /** Time a JIT or native load takes; default 0. */
  /** Every generation request waits this long before its first byte (default 0). */
  firstByteDelayMs?: number;
  loadDelayMs?: number;
  /** Default true: a request for an unloaded model loads it; false: 400 "not loaded". */
  jit?: boolean;
  /** Length of embedding vectors; default 8. */
  embeddingDimensions?: number;
  /** One line per request on stderr; default false. */
  log?: boolean;
}

/** A running double. */
export interface LmStudioDouble {
  /** "http://127.0.0.1:PORT", no trailing slash. */
  readonly url: string;
  readonly port: number;
  /** Every request received, in order. */
  readonly requests: RecordedRequest[];
  /** Live, mutable state (loaded flags change with loads/unloads). */
  readonly models: DoubleModel[];
  readonly stats: {
    /** Generation requests (chat, completions, responses, embeddings) in progress. */
    inFlight: number;
    maxInFlight: number;
    loads: number;
    /** loads per model id */
    loadsByModel: Record<string, number>;
  };
  /** Adds a fault rule after the existing ones. */
  addFault(rule: FaultRule): void;
  /** Removes every fault rule. */
  clearFaults(): void;
  /** Next chat/completion/response requests (optionally only for `model`, or whose last user text contains `match`) answer this, FIFO. */
  enqueueReply(reply: ScriptedReply, options?: { model?: string; match?: string }): void;
  /** Resolves once `n` requests matching `path` (all paths when omitted) have been received. Rejects on signal. */
  waitForRequests(
    n: number,
    options?: { path?: string; signal?: AbortSignal },
  ): Promise<RecordedRequest[]>;
  /** Resolves when the request `id` was aborted by the client (rejects after timeoutMs, default 5000). */
  waitForAbort(id: number, timeoutMs?: number): Promise<void>;
  /** Stops serving, ends stalled streams; idempotent. */
  close(): Promise<void>;
}

/**
 * Starts a double and resolves once it listens.
 *
 * @example
 * const double = await startDouble({ kind: "lmstudio", loadDelayMs: 200 });
 * double.addFault({ fault: { kind: "status", status: 429, headers: { "retry-after": "1" } } });
 * const res = await fetch(`${double.url}/v1/models`); // 429
 * await double.close();
 */
export async function startDouble(options: DoubleOptions = {}): Promise<LmStudioDouble> {
  const double = new Double(options);
  await double.start();
  if (options.firstByteDelayMs) {
    // A server that always takes this long to start answering (a busy GPU).
    for (const path of ["/v1/chat/completions", "/v1/completions", "/v1/responses"]) {
      double.addFault({
        path,
        fault: { kind: "first_byte_delay", ms: options.firstByteDelayMs },
        times: Infinity,
      });
    }
  }
  return double;
}

// ---------------------------------------------------------------------------------------------
// Internals

const DEFAULT_MODELS: DoubleModel[] = [
  { id: "qwen/qwen3-4b", type: "llm", loaded: true, toolUse: true },
  { id: "google/gemma-3-4b", type: "vlm", loaded: false, vision: true },
  { id: "text-embedding-nomic-embed-text-v1.5", type: "embeddings", loaded: false },
];

const GENERATION_PATHS = new Set([
  "/v1/chat/completions",
  "/v1/completions",
  "/v1/responses",
  "/v1/embeddings",
  "/api/v0/chat/completions",
  "/api/v0/completions",
  "/api/v0/embeddings",
]);

const LMSTUDIO_NO_MODELS =
  "No models loaded. Please load a model in the developer page or use the `lms load` command.";

/** An error the double raises on purpose (dropped streams, shutdown): never logged. */
class QuietError extends Error {}

type Json = Record<string, unknown>;
type Outcome = "completed" | "aborted" | "failed";
type StreamFault = Extract<Fault, { kind: "drop" | "stall" | "error_in_stream" }>;
type ToolCall = { name: string; arguments: string; id: string };

interface Answer {
  content: string;
  reasoning?: string;
  reasoningField: "reasoning_content" | "reasoning" | "think_tags";
  toolCalls: ToolCall[];
  finishReason: string;
  model: string;
  completionTokens: number;
}

interface Instance {
  id: string;
  contextLength: number;
}

/** One request in progress: its record, its cancellation and the faults that shape it. */
class Exchange {
  streaming = false;
  finished = false;
  chunkDelayMs: number;
  streamFault?: StreamFault;
  readonly stream: boolean;
  readonly model: string | undefined;

  constructor(
    readonly request: Request,
    readonly url: URL,
    readonly record: RecordedRequest,
    readonly signal: AbortSignal,
    readonly connection: RelayedConnection | undefined,
    readonly rawBody: string,
    chunkDelayMs: number,
    private readonly onFinish: (ex: Exchange, outcome: Outcome) => void,
  ) {
    this.chunkDelayMs = chunkDelayMs;
    const body = asRecord(record.body);
    this.stream = body?.stream === true;
    this.model = typeof body?.model === "string" ? body.model : undefined;
  }

  /** Records how the response ended; only the first call counts. */
  finish(outcome: Outcome): void {
    if (this.finished) return;
    this.finished = true;
    this.onFinish(this, outcome);
  }
}

interface Watcher {
  check(): boolean;
  fail(err: unknown): void;
}

class Double implements LmStudioDouble {
  readonly requests: RecordedRequest[] = [];
  readonly models: DoubleModel[];
  readonly stats = {
    inFlight: 0,
    maxInFlight: 0,
    loads: 0,
    loadsByModel: {} as Record<string, number>,
  };

  readonly #kind: DoubleKind;
  readonly #opts: DoubleOptions;
  readonly #chunkSize: number;
  readonly #jit: boolean;
  readonly #faults: (FaultRule & { remaining: number })[] = [];
  readonly #replies: { reply: ScriptedReply; model?: string; match?: string }[] = [];
  readonly #instances = new Map<string, Instance[]>();
  readonly #responses = new Map<string, { model: string; turn: number }>();
  readonly #watchers = new Set<Watcher>();
  readonly #closing = new AbortController();
  /** Resets armed for the transparent retry of a client whose reused connection was reset. */
  #armedResets: { key: string; until: number }[] = [];
  #server?: Deno.HttpServer<Deno.NetAddr>;
  #relay?: Relay;
  #closed?: Promise<void>;
  #nextId = 1;
  #url = "";
  #port = 0;

  constructor(options: DoubleOptions) {
    this.#opts = options;
    this.#kind = options.kind ?? "lmstudio";
    this.#chunkSize = Math.max(1, Math.floor(options.chunkSize ?? 4));
    this.#jit = options.jit ?? true;
    this.models = (options.models ?? DEFAULT_MODELS).map((m) => ({
      ...m,
      type: m.type ?? "llm",
      loaded: m.loaded ?? true,
      contextLength: m.contextLength ?? 4096,
      parallel: m.parallel ?? 4,
    }));
  }

  get url(): string {
    return this.#url;
  }

  get port(): number {
    return this.#port;
  }

  async start(): Promise<void> {
    const server = Deno.serve({
      hostname: "127.0.0.1",
      port: 0,
      onListen() {},
      onError(err) {
        if (!(err instanceof QuietError) && !isAbort(err)) {
          console.error("lmstudio double: handler failed:", err);
        }
        return Response.json({ error: "internal error in the double" }, { status: 500 });
      },
    }, (request, info) => this.#handle(request, info));
    this.#server = server;
    const hostname = this.#opts.hostname ?? "127.0.0.1";
    let listener: Deno.TcpListener;
    try {
      listener = Deno.listen({ hostname, port: this.#opts.port ?? 0 });
    } catch (err) {
      await server.shutdown();
      throw err;
    }
    this.#relay = new Relay(listener, server.addr.port);
    this.#port = (listener.addr as Deno.NetAddr).port;
    const host = hostname === "0.0.0.0" ? "127.0.0.1" : hostname === "::" ? "::1" : hostname;
    this.#url = `http://${host.includes(":") ? `[${host}]` : host}:${this.#port}`;
  }

  addFault(rule: FaultRule): void {
    this.#faults.push({ ...rule, remaining: rule.times ?? 1 });
  }

  clearFaults(): void {
    this.#faults.length = 0;
  }

  enqueueReply(reply: ScriptedReply, options: { model?: string; match?: string } = {}): void {
    this.#replies.push({ reply, ...options });
  }

  waitForRequests(
    n: number,
    options: { path?: string; signal?: AbortSignal } = {},
  ): Promise<RecordedRequest[]> {
    const { path, signal } = options;
    const matching = () => this.requests.filter((r) => path === undefined || r.path === path);
    return this.#watch<RecordedRequest[]>((resolve) => {
      const found = matching();
      if (found.length < n) return false;
      resolve(found.slice(0, n));
      return true;
    }, { signal });
  }

  waitForAbort(id: number, timeoutMs = 5000): Promise<void> {
    return this.#watch<void>((resolve) => {
      if (!this.requests.find((r) => r.id === id)?.aborted) return false;
      resolve();
      return true;
    }, {
      timeoutMs,
      timeoutError: () => new Error(`request ${id} was not aborted within ${timeoutMs} ms`),
    });
  }

  close(): Promise<void> {
    this.#closed ??= (async () => {
      this.#closing.abort(new QuietError("the double was closed"));
      for (const w of [...this.#watchers]) w.fail(new Error("the double was closed"));
      await this.#relay?.close();
      await this.#server?.shutdown();
    })();
    return this.#closed;
  }

  // --- waiting ---------------------------------------------------------------------------------

  /** Resolves when `check` succeeds, re-checked on every change of the recorded requests. */
  #watch<T>(
    check: (resolve: (value: T) => void) => boolean,
    o: { signal?: AbortSignal; timeoutMs?: number; timeoutError?: () => Error },
  ): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const onAbort = () => watcher.fail(o.signal!.reason);
      const cleanup = () => {
        this.#watchers.delete(watcher);
        clearTimeout(timer);
        o.signal?.removeEventListener("abort", onAbort);
      };
      const watcher: Watcher = {
        check: () =>
          check((value) => {
            cleanup();
            resolve(value);
          }),
        fail: (err) => {
          cleanup();
          reject(err);
        },
      };
      if (o.signal?.aborted) return reject(o.signal.reason);
      if (this.#closed) return reject(new Error("the double was closed"));
      if (watcher.check()) return;
      this.#watchers.add(watcher);
      o.signal?.addEventListener("abort", onAbort, { once: true });
      if (o.timeoutMs !== undefined) {
        timer = setTimeout(
          () => watcher.fail(o.timeoutError?.() ?? new Error("timeout")),
          o.timeoutMs,
        );
      }
    });
  }

  #notify(): void {
    for (const w of [...this.#watchers]) w.check();
  }

  // --- request lifecycle -----------------------------------------------------------------------

  async #handle(request: Request, info: Deno.ServeHandlerInfo<Deno.NetAddr>): Promise<Response> {
    const url = new URL(request.url);
    const connection = this.#relay?.lookup(info.remoteAddr.port);
    if (connection) connection.requests++;
    const rawBody = request.method === "GET" || request.method === "HEAD"
      ? ""
      : await request.text().catch(() => "");
    let body: unknown = null;
    if (rawBody) {
      try {
        body = JSON.parse(rawBody);
      } catch {
        body = rawBody;
      }
    }
    const record: RecordedRequest = {
      id: this.#nextId++,
      method: request.method,
      path: url.pathname,
      headers: Object.fromEntries(request.headers),
      body,
      startedAt: Date.now(),
      aborted: false,
      completed: false,
    };
    this.requests.push(record);
    const generation = request.method === "POST" && GENERATION_PATHS.has(url.pathname);
    if (generation) {
      this.stats.inFlight++;
      this.stats.maxInFlight = Math.max(this.stats.maxInFlight, this.stats.inFlight);
    }
    const ex = new Exchange(
      request,
      url,
      record,
      AbortSignal.any([request.signal, this.#closing.signal]),
      connection,
      rawBody,
      this.#opts.chunkDelayMs ?? 0,
      (_ex, outcome) => {
        if (outcome === "completed") record.completed = true;
        if (outcome === "aborted") record.aborted = true;
        if (generation) this.stats.inFlight--;
        this.#notify();
      },
    );
    request.signal.addEventListener(
      "abort",
      () => ex.finish(this.#closing.signal.aborted ? "failed" : "aborted"),
      { once: true },
    );
    if (this.#opts.log) {
      const extra = [ex.model && `model=${ex.model}`, ex.stream && "stream"].filter(Boolean);
      console.error(`${request.method} ${url.pathname} ${extra.join(" ")}`.trimEnd());
    }
    this.#notify();
    try {
      const response = await this.#respond(ex);
      if (!ex.streaming) ex.finish("completed");
      return response;
    } catch (err) {
      if (ex.signal.aborted) {
        ex.finish(request.signal.aborted && !this.#closing.signal.aborted ? "aborted" : "failed");
        return new Response(null, { status: 499 });
      }
      ex.finish("failed");
      throw err;
    }
  }

  async #respond(ex: Exchange): Promise<Response> {
    if (this.#takeArmedReset(ex)) return this.#reset(ex);
    const denied = this.#checkAuth(ex);
    if (denied) return denied;
    const path = ex.url.pathname;
    if (path.startsWith("/v1/") || path.startsWith("/api/")) {
      const fault = this.#takeFault(ex);
      if (fault) {
        const response = await this.#applyFault(fault, ex);
        if (response) return response;
      }
    }
    return await this.#route(ex);
  }

  #route(ex: Exchange): Promise<Response> | Response {
    const kind = this.#kind;
    const method = ex.request.method;
    const path = ex.url.pathname.length > 1 ? ex.url.pathname.replace(/\/+$/, "") : "/";
    if (method === "GET") {
      if (path === "/v1/models") return this.#openAiModels(ex);
      if (kind === "lmstudio") {
        if (path === "/lmstudio-greeting") return this.#json(ex, { lmstudio: true });
        if (path === "/api/v0/models") {
          return this.#json(ex, { object: "list", data: this.models.map((m) => this.#v0Model(m)) });
        }
        if (path.startsWith("/api/v0/models/")) {
          const id = decodeURIComponent(path.slice("/api/v0/models/".length));
          const model = this.models.find((m) => m.id === id);
          if (!model) return this.#json(ex, { error: `Model "${id}" not found` }, 404);
          return this.#json(ex, this.#v0Model(model));
        }
        if (path === "/api/v1/models") {
          return this.#json(ex, { models: this.models.map((m) => this.#v1Model(m)) });
        }
      }
      if (kind === "ollama") {
        if (path === "/api/version") return this.#json(ex, { version: "0.12.0" });
        if (path === "/api/tags") return this.#json(ex, { models: this.models.map(ollamaTag) });
        if (path === "/api/ps") {
          return this.#json(ex, { models: this.models.filter((m) => m.loaded).map(ollamaTag) });
        }
      }
      if (kind === "llamacpp" && path === "/health") return this.#json(ex, { status: "ok" });
    }
    if (method === "POST") {
      if (path === "/v1/chat/completions") return this.#chat(ex, false);
      if (path === "/v1/completions") return this.#completions(ex, false);
      if (path === "/v1/embeddings") return this.#embeddings(ex);
      if (path === "/v1/responses" && kind !== "llamacpp") return this.#responsesApi(ex);
      if (kind === "lmstudio") {
        if (path === "/api/v0/chat/completions") return this.#chat(ex, true);
        if (path === "/api/v0/completions") return this.#completions(ex, true);
        if (path === "/api/v0/embeddings") return this.#embeddings(ex);
        if (path === "/api/v1/models/load") return this.#nativeLoad(ex);
        if (path === "/api/v1/models/unload") return this.#nativeUnload(ex);
      }
    }
    return this.#unknownPath(ex);
  }

  // --- auth, faults ----------------------------------------------------------------------------

  #checkAuth(ex: Exchange): Response | undefined {
    const key = this.#opts.apiKey;
    if (key === undefined) return undefined;
    if (ex.request.headers.get("authorization") === `Bearer ${key}`) return undefined;
    const given = ex.request.headers.has("authorization");
    const message = given ? "Invalid API key." : "Missing API key. Pass it as a Bearer token.";
    switch (this.#kind) {
      case "lmstudio":
        return this.#json(ex, {
          error: { type: "invalid_request", code: "invalid_api_key", message },
        }, 401);
      case "llamacpp":
        return this.#json(ex, {
          error: { code: 401, message: "Invalid API Key", type: "authentication_error" },
        }, 401);
      default:
        return this.#json(ex, {
          error: { message, type: "invalid_request_error", param: null, code: "invalid_api_key" },
        }, 401);
    }
  }

  #takeFault(ex: Exchange): Fault | undefined {
    const index = this.#faults.findIndex((rule) =>
      (rule.path === undefined || rule.path === ex.url.pathname) &&
      (rule.model === undefined || rule.model === ex.model)
    );
    if (index < 0) return undefined;
    const rule = this.#faults[index];
    rule.remaining--;
    if (rule.remaining <= 0) this.#faults.splice(index, 1);
    return rule.fault;
  }

  /** A terminal fault answers; a shaping fault (delays, stream faults) returns undefined. */
  async #applyFault(fault: Fault, ex: Exchange): Promise<Response | undefined> {
    switch (fault.kind) {
      case "first_byte_delay":
        await delay(fault.ms, { signal: ex.signal });
        return undefined;
      case "slow_stream":
        ex.chunkDelayMs = fault.chunkDelayMs;
        return undefined;
      case "drop":
      case "stall":
      case "error_in_stream":
        ex.streamFault = fault;
        return undefined;
      case "reset":
        return this.#reset(ex);
      case "status": {
        const body = fault.body ?? defaultStatusBody(fault.status);
        const headers = new Headers(fault.headers);
        if (typeof body === "string") {
          if (!headers.has("content-type")) {
            headers.set("content-type", "text/plain; charset=utf-8");
          }
          return new Response(body, { status: fault.status, headers });
        }
        if (!headers.has("content-type")) headers.set("content-type", "application/json");
        return new Response(JSON.stringify(body), { status: fault.status, headers });
      }
      case "garbage": {
        const text =
          "<!DOCTYPE html><html><body>upstream says hi \u0000 {{{ not json</body></html>\n";
        const type = ex.stream ? "text/event-stream" : "application/json";
        return new Response(text, { headers: { "content-type": type } });
      }
      case "error_in_200":
        if (ex.stream) return this.#sse(ex, [sseData({ error: { message: fault.message } })]);
        return this.#json(ex, { error: fault.message });
      case "empty_stream":
        if (ex.stream) return this.#sse(ex, ["data: [DONE]\n\n"]);
        return this.#json(ex, {
          id: randomId("chatcmpl-"),
          object: "chat.completion",
          created: nowSeconds(),
          model: ex.model ?? "",
          choices: [{
            index: 0,
            logprobs: null,
            finish_reason: "stop",
            message: { role: "assistant", content: "" },
          }],
          usage: { prompt_tokens: 0, completion_tokens: 0, total_tokens: 0 },
        });
      case "context_overflow":
        return this.#contextOverflow(ex);
    }
  }

  #contextOverflow(ex: Exchange): Response {
    const nCtx = this.models.find((m) => m.id === ex.model)?.contextLength ?? 4096;
    const nKeep = Math.max(5228, nCtx + 1);
    switch (this.#kind) {
      case "lmstudio":
        return this.#json(ex, {
          error:
            `The number of tokens to keep from the initial prompt is greater than the context length (n_keep: ${nKeep} >= n_ctx: ${nCtx}). Try to load the model with a larger context length, or provide a shorter input`,
        }, 400);
      case "llamacpp":
        return this.#json(ex, {
          error: {
            code: 400,
            message: "the request exceeds the available context size, try increasing it",
            type: "exceed_context_size_error",
            n_prompt_tokens: nKeep,
            n_ctx: nCtx,
          },
        }, 400);
      case "ollama":
        return this.#json(ex, {
          error: {
            message: `input length (${nKeep}) exceeds the context length (${nCtx})`,
            type: "api_error",
          },
        }, 400);
      case "openai":
        return this.#json(ex, {
          error: {
            message:
              `This model's maximum context length is ${nCtx} tokens. However, your messages resulted in ${nKeep} tokens. Please reduce the length of the messages.`,
            type: "invalid_request_error",
            param: "messages",
            code: "context_length_exceeded",
          },
        }, 400);
    }
  }

  /**
   * Closes the client's socket without a response byte. Deno's fetch (hyper) silently resends
   * a request once when a reused keep-alive connection closes like this, so the resend gets
   * the same treatment: a reset is always visible to the client.
   */
  #reset(ex: Exchange): Response {
    const connection = ex.connection;
    ex.finish("failed");
    if (connection && connection.requests > 1) {
      this.#armedResets.push({ key: resendKey(ex), until: Date.now() + 5000 });
    }
    connection?.close();
    return new Response(null, { status: 502 });
  }

  #takeArmedReset(ex: Exchange): boolean {
    const now = Date.now();
    this.#armedResets = this.#armedResets.filter((a) => a.until > now);
    if (ex.connection?.requests !== 1) return false;
    const key = resendKey(ex);
    const index = this.#armedResets.findIndex((a) => a.key === key);
    if (index < 0) return false;
    this.#armedResets.splice(index, 1);
    return true;
  }

  // --- responses -------------------------------------------------------------------------------

  /** A JSON answer; a drop, stall or error_in_stream fault also applies to it. */
  #json(ex: Exchange, body: unknown, status = 200, headers: Record<string, string> = {}): Response {
    const text = JSON.stringify(body);
    const fault = ex.streamFault;
    const type = { "content-type": "application/json; charset=utf-8", ...headers };
    if (fault?.kind === "error_in_stream") {
      return Response.json({ error: { message: fault.message } }, { headers });
    }
    if (fault?.kind === "drop") {
      const half = Math.floor(text.length / 2);
      return this.#stream(ex, [text.slice(0, half), text.slice(half)], type, status, 1);
    }
    if (fault?.kind === "stall") return this.#stream(ex, [text], type, status, 0);
    return new Response(text, { status, headers: type });
  }

  /** An SSE answer made of ready `events`; stream faults fire before the last event at the latest. */
  #sse(ex: Exchange, events: string[]): Response {
    const fault = ex.streamFault;
    const trigger = fault ? Math.min(Math.max(0, fault.afterChunks), events.length - 1) : -1;
    return this.#stream(
      ex,
      events,
      {
        "content-type": "text/event-stream",
        "cache-control": "no-cache",
      },
      200,
      trigger,
    );
  }

  /**
   * Streams `parts`, pacing them by the exchange's chunk delay and stopping as soon as the
   * client goes away; the stream fault, if any, fires after `trigger` parts.
   */
  #stream(
    ex: Exchange,
    parts: string[],
    headers: Record<string, string>,
    status: number,
    trigger: number,
  ): Response {
    ex.streaming = true;
    const fault = ex.streamFault;
    const closing = this.#closing.signal;
    const encoder = new TextEncoder();
    async function* produce(): AsyncGenerator<Uint8Array> {
      try {
        for (let i = 0; i < parts.length; i++) {
          if (i > 0 && ex.chunkDelayMs > 0) await delay(ex.chunkDelayMs, { signal: ex.signal });
          if (ex.signal.aborted) throw ex.signal.reason;
          if (fault && i === trigger) {
            if (fault.kind === "drop") {
              ex.finish("failed");
              throw new QuietError("connection dropped by the double");
            }
            if (fault.kind === "stall") {
              await new Promise((resolve) =>
                ex.signal.addEventListener("abort", resolve, { once: true })
              );
              throw ex.signal.reason;
            }
            yield encoder.encode(sseData({ error: { message: fault.message } }));
            ex.finish("completed");
            return;
          }
          yield encoder.encode(parts[i]);
        }
        ex.finish("completed");
      } catch (err) {
        const gone = ex.signal.aborted || isAbort(err);
        ex.finish(gone && !closing.aborted ? "aborted" : "failed");
        throw err instanceof QuietError || isAbort(err) ? err : new QuietError(String(err));
      } finally {
        // Unfinished here means the body was cancelled: the client went away (or we closed).
        ex.finish(closing.aborted ? "failed" : "aborted");
      }
    }
    return new Response(ReadableStream.from(produce()), { status, headers });
  }

  /** The error body in the shape this kind uses (LM Studio: a string unless `object`). */
  #error(
    ex: Exchange,
    status: number,
    message: string,
    o: { type?: string; code?: string; param?: string; object?: boolean } = {},
  ): Response {
    const type = o.type ?? "invalid_request_error";
    switch (this.#kind) {
      case "lmstudio":
        if (!o.object) return this.#json(ex, { error: message }, status);
        return this.#json(ex, {
          error: {
            message,
            type,
            ...(o.code ? { code: o.code } : {}),
            ...(o.param ? { param: o.param } : {}),
          },
        }, status);
      case "ollama":
        return this.#json(ex, { error: { message, type: o.type ?? "api_error" } }, status);
      case "llamacpp":
        return this.#json(ex, { error: { code: status, message, type } }, status);
      case "openai":
        return this.#json(ex, {
          error: { message, type, param: o.param ?? null, code: o.code ?? null },
        }, status);
    }
  }

  #unknownPath(ex: Exchange): Response {
    const what = `${ex.request.method} ${ex.url.pathname}`;
    switch (this.#kind) {
      case "lmstudio":
        return this.#json(ex, { error: `Unexpected endpoint or method. (${what})` });
      case "ollama":
        return new Response("404 page not found", {
          status: 404,
          headers: { "content-type": "text/plain" },
        });
      case "llamacpp":
        return this.#error(ex, 404, "File Not Found", { type: "not_found_error" });
      case "openai":
        return this.#error(
          ex,
          404,
          `Unknown request URL: ${what}. Please check the URL for typos.`,
          { code: "unknown_url" },
        );
    }
  }

  // --- models ----------------------------------------------------------------------------------

  #openAiModels(ex: Exchange): Response {
    const created = nowSeconds();
    switch (this.#kind) {
      case "lmstudio": {
        const listed = this.#jit ? this.models : this.models.filter((m) => m.loaded);
        return this.#json(ex, {
          object: "list",
          data: listed.map((m) => ({ id: m.id, object: "model", owned_by: "organization_owner" })),
        });
      }
      case "ollama":
        return this.#json(ex, {
          object: "list",
          data: this.models.map((m) => ({
            id: m.id,
            object: "model",
            created,
            owned_by: "library",
          })),
        });
      case "llamacpp": {
        const model = this.models.find((m) => m.type !== "embeddings") ?? this.models[0];
        return this.#json(ex, {
          object: "list",
          data: model
            ? [{
              id: model.id,
              object: "model",
              created,
              owned_by: "llamacpp",
              meta: { n_ctx_train: model.contextLength, n_params: 4_000_000_000 },
            }]
            : [],
        });
      }
      case "openai":
        return this.#json(ex, {
          object: "list",
          data: this.models.map((m) => ({
            id: m.id,
            object: "model",
            created,
            owned_by: "system",
          })),
        });
    }
  }

  #instancesOf(model: DoubleModel): Instance[] {
    if (!model.loaded) return [];
    const known = this.#instances.get(model.id);
    if (known?.length) return known;
    return [{ id: model.id, contextLength: model.contextLength ?? 4096 }];
  }

  #v0Model(m: DoubleModel): Json {
    const instance = this.#instancesOf(m)[0];
    return {
      id: m.id,
      object: "model",
      type: m.type ?? "llm",
      publisher: publisherOf(m.id),
      arch: archOf(m.id),
      compatibility_type: "gguf",
      quantization: m.type === "embeddings" ? "Q8_0" : "Q4_K_M",
      state: m.loaded ? "loaded" : "not-loaded",
      max_context_length: m.contextLength,
      ...(instance ? { loaded_context_length: instance.contextLength } : {}),
      capabilities: m.toolUse ? ["tool_use"] : [],
    };
  }

  #v1Model(m: DoubleModel): Json {
    const embedding = m.type === "embeddings";
    const params = /(\d+(?:\.\d+)?)b\b/i.exec(m.id.split("/").pop() ?? "")?.[1];
    return {
      type: embedding ? "embedding" : "llm",
      key: m.id,
      display_name: m.id.split("/").pop(),
      publisher: publisherOf(m.id),
      architecture: archOf(m.id),
      quantization: embedding
        ? { name: "Q8_0", bits_per_weight: 8 }
        : { name: "Q4_K_M", bits_per_weight: 4 },
      size_bytes: embedding ? 84_106_624 : 2_497_280_256,
      params_string: params ? `${params}B` : null,
      max_context_length: m.contextLength,
      format: "gguf",
      loaded_instances: this.#instancesOf(m).map((i) => ({
        id: i.id,
        config: embedding ? { context_length: i.contextLength } : {
          context_length: i.contextLength,
          parallel: m.parallel ?? 4,
          eval_batch_size: 512,
          flash_attention: true,
          offload_kv_cache_to_gpu: true,
        },
      })),
      ...(embedding ? {} : {
        capabilities: {
          vision: isVision(m),
          trained_for_tool_use: m.toolUse ?? false,
          ...(m.reasoning !== undefined ? { reasoning: m.reasoning } : {}),
        },
      }),
    };
  }

  /** Loads `model` (counted in stats), taking loadDelayMs; returns the new instance. */
  async #load(model: DoubleModel, contextLength: number | undefined, signal: AbortSignal) {
    this.stats.loads++;
    this.stats.loadsByModel[model.id] = (this.stats.loadsByModel[model.id] ?? 0) + 1;
    await delay(this.#opts.loadDelayMs ?? 0, { signal });
    const instances = [...this.#instancesOf(model)];
    const id = instances.length === 0 ? model.id : `${model.id}:${instances.length + 1}`;
    const instance = { id, contextLength: contextLength ?? model.contextLength ?? 4096 };
    instances.push(instance);
    this.#instances.set(model.id, instances);
    model.loaded = true;
    return instance;
  }

  async #nativeLoad(ex: Exchange): Promise<Response> {
    const body = asRecord(ex.record.body);
    const key = body?.model;
    if (typeof key !== "string" || !key) {
      return this.#json(ex, {
        error: { type: "invalid_request", code: "invalid_request", message: "'model' is required" },
      }, 400);
    }
    const model = this.models.find((m) => m.id === key);
    if (!model) {
      return this.#json(ex, {
        error: {
          type: "invalid_request",
          code: "model_not_found",
          message: `Model "${key}" not found. Downloaded models: ${
            this.models.map((m) => m.id).join(", ")
          }`,
          param: "model",
        },
      }, 404);
    }
    const contextLength = typeof body?.context_length === "number"
      ? body.context_length
      : undefined;
    const started = Date.now();
    const instance = await this.#load(model, contextLength, ex.signal);
    return this.#json(ex, {
      type: model.type === "embeddings" ? "embedding" : "llm",
      instance_id: instance.id,
      load_time_seconds: (Date.now() - started) / 1000,
      status: "loaded",
    });
  }

  #nativeUnload(ex: Exchange): Response {
    const id = asRecord(ex.record.body)?.instance_id;
    for (const model of this.models) {
      const instances = this.#instancesOf(model);
      const index = instances.findIndex((i) => i.id === id);
      if (index < 0) continue;
      const rest = instances.filter((_, i) => i !== index);
      if (rest.length) {
        this.#instances.set(model.id, rest);
      } else {
        this.#instances.delete(model.id);
        model.loaded = false;
      }
      return this.#json(ex, { instance_id: id });
    }
    return this.#json(ex, {
      error: {
        type: "invalid_request",
        code: "model_not_found",
        message: `No loaded model instance with id "${String(id)}"`,
        param: "instance_id",
      },
    }, 404);
  }

  /** Finds the model a generation request names, or the error response the server sends. */
  #findModel(
    ex: Exchange,
    requested: unknown,
    want: "chat" | "embeddings",
  ): DoubleModel | Response {
    const fits = (m: DoubleModel) =>
      want === "embeddings" ? m.type === "embeddings" : m.type !== "embeddings";
    if (this.#kind === "llamacpp") {
      // llama-server serves its one model whatever the request names.
      const model = this.models.find(fits);
      if (model) return model;
      return want === "embeddings"
        ? this.#error(
          ex,
          501,
          "This server does not support embeddings. Start it with `--embeddings`",
          { type: "not_supported_error" },
        )
        : this.#error(ex, 503, "Loading model", { type: "unavailable_error" });
    }
    if (typeof requested !== "string" || requested === "") {
      if (this.#kind !== "lmstudio") return this.#error(ex, 400, "model is required");
      const loaded = this.models.find((m) => m.loaded && fits(m));
      return loaded ?? this.#error(ex, 400, LMSTUDIO_NO_MODELS);
    }
    const model = this.models.find((m) =>
      m.id === requested || this.#instancesOf(m).some((i) => i.id === requested)
    );
    if (!model) {
      switch (this.#kind) {
        case "lmstudio": {
          const known = (this.#jit ? this.models : this.models.filter((m) => m.loaded))
            .map((m) => m.id);
          return this.#error(
            ex,
            400,
            `Invalid model identifier "${requested}". Please specify a valid downloaded model (e.g., ${
              known.join(", ")
            }).`,
            { object: true, code: "model_not_found", param: "model" },
          );
        }
        case "ollama":
          return this.#error(ex, 404, `model '${requested}' not found`);
        default:
          return this.#error(
            ex,
            404,
            `The model \`${requested}\` does not exist or you do not have access to it.`,
            { code: "model_not_found", param: "model" },
          );
      }
    }
    if (!fits(model)) {
      return want === "embeddings"
        ? this.#error(ex, 400, `Model "${model.id}" is not an embedding model.`)
        : this.#error(
          ex,
          400,
          `Model "${model.id}" is an embedding model and cannot be used for generation.`,
        );
    }
    return model;
  }

  /** JIT-loads an unloaded model (every request does, as in the real race), or refuses. */
  async #ensureLoaded(ex: Exchange, model: DoubleModel): Promise<Response | undefined> {
    if (model.loaded) return undefined;
    if (this.#kind === "lmstudio" && !this.#jit) {
      if (!this.models.some((m) => m.loaded)) return this.#error(ex, 400, LMSTUDIO_NO_MODELS);
      return this.#error(
        ex,
        400,
        `Model "${model.id}" is not loaded. Please load it first (lms load ${model.id}) or enable Just-In-Time model loading.`,
        { object: true, code: "model_not_loaded", param: "model" },
      );
    }
    await this.#load(model, undefined, ex.signal);
    return undefined;
  }

  // --- generation ------------------------------------------------------------------------------

  #takeReply(modelId: string, requested: unknown, text: string): ScriptedReply | undefined {
    const index = this.#replies.findIndex((r) =>
      (r.model === undefined || r.model === modelId || r.model === requested) &&
      (r.match === undefined || text.includes(r.match))
    );
    if (index < 0) return undefined;
    return this.#replies.splice(index, 1)[0].reply;
  }

  #answer(
    model: DoubleModel,
    reply: ScriptedReply | undefined,
    echo: string,
    userText: string,
  ): Answer {
    const toolCalls = (reply?.toolCalls ?? []).map((c) => ({
      name: c.name,
      arguments: c.arguments,
      id: c.id ?? this.#toolCallId(),
    }));
    const reasoning = reply
      ? reply.reasoning
      : userText.includes("REASON:")
      ? "thinking about it"
      : undefined;
    const answer: Answer = {
      content: reply?.content ?? echo,
      reasoning,
      reasoningField: reply?.reasoningField ??
        (this.#kind === "ollama" ? "reasoning" : "reasoning_content"),
      toolCalls,
      finishReason: reply?.finishReason ?? (toolCalls.length ? "tool_calls" : "stop"),
      model: reply?.model ?? model.id,
      completionTokens: 0,
    };
    const size = this.#chunkSize;
    answer.completionTokens = Math.max(
      1,
      pieces(answer.content, size).length + pieces(reasoning ?? "", size).length +
        toolCalls.reduce((n, c) => n + 1 + pieces(c.arguments, size).length, 0),
    );
    return answer;
  }

  #toolCallId(): string {
    switch (this.#kind) {
      case "lmstudio":
        return String(100_000_000 + Math.floor(Math.random() * 900_000_000));
      case "ollama":
        return randomId("call_", 8);
      case "llamacpp":
        return randomId("", 32);
      case "openai":
        return randomId("call_", 24);
    }
  }

  /** Waits as long as streaming the answer would take (non-streamed answers). */
  async #generationTime(ex: Exchange, answer: Answer): Promise<void> {
    if (ex.chunkDelayMs > 0) {
      await delay(ex.chunkDelayMs * answer.completionTokens, { signal: ex.signal });
    }
  }

  async #chat(ex: Exchange, v0: boolean): Promise<Response> {
    const body = asRecord(ex.record.body);
    if (!body) return this.#error(ex, 400, "Request body must be valid JSON.");
    const messages = body.messages;
    if (!Array.isArray(messages)) return this.#error(ex, 400, "'messages' field is required");
    const format = asRecord(body.response_format);
    if (
      this.#kind === "lmstudio" && format && format.type !== "json_schema" &&
      format.type !== "text"
    ) {
      return this.#error(ex, 400, "'response_format.type' must be 'json_schema' or 'text'");
    }
    const model = this.#findModel(ex, body.model, "chat");
    if (model instanceof Response) return model;
    const images = imageParts(messages);
    if (images.length && !isVision(model)) {
      return this.#error(ex, 400, "Model does not support images. Please use a model that does.");
    }
    if (images.some((url) => !/^data:image\/[\w.+-]+;base64,/i.test(url))) {
      return this.#error(ex, 400, "'url' field must be a base64 encoded image.");
    }
    const notLoaded = await this.#ensureLoaded(ex, model);
    if (notLoaded) return notLoaded;

    const user = lastUserText(messages);
    const reply = this.#takeReply(model.id, body.model, user.text) ??
      directedToolReply(messages, body.tools);
    let echo = `[${model.id}] You said: ${user.text}`;
    if (user.images) echo += ` (+${user.images} images)`;
    if (!reply && format?.type === "json_schema") {
      echo = JSON.stringify(exampleFromSchema(asRecord(format.json_schema)?.schema));
    } else if (!reply && format?.type === "json_object") {
      echo = JSON.stringify({ answer: echo });
    }
    const answer = this.#answer(model, reply, echo, user.text);
    const promptTokens = countWords(messages.map((m) => messageText(m)).join(" "));
    const usage = {
      prompt_tokens: promptTokens,
      completion_tokens: answer.completionTokens,
      total_tokens: promptTokens + answer.completionTokens,
    };
    const base = {
      id: randomId("chatcmpl-"),
      created: nowSeconds(),
      model: answer.model,
      system_fingerprint: this.#fingerprint(answer.model),
    };
    const timings = this.#kind === "llamacpp"
      ? { timings: llamaTimings(promptTokens, answer.completionTokens) }
      : {};

    if (!ex.stream) {
      await this.#generationTime(ex, answer);
      const message: Json = { role: "assistant", content: answer.content };
      if (answer.reasoning !== undefined) {
        if (answer.reasoningField === "think_tags") {
          message.content = `<think>${answer.reasoning}</think>\n\n${answer.content}`;
        } else {
          message[answer.reasoningField] = answer.reasoning;
        }
      }
      if (this.#kind === "openai" && answer.content === "" && answer.toolCalls.length) {
        message.content = null;
      }
      if (this.#kind === "lmstudio" || answer.toolCalls.length) {
        message.tool_calls = answer.toolCalls.map((c) => ({
          id: c.id,
          type: "function",
          function: { name: c.name, arguments: c.arguments },
        }));
      }
      return this.#json(ex, {
        ...base,
        object: "chat.completion",
        choices: [{ index: 0, logprobs: null, finish_reason: answer.finishReason, message }],
        usage,
        ...timings,
        ...(v0 ? this.#v0Stats(model, answer) : {}),
      });
    }

    const chunk = (delta: Json, finish: string | null = null, extra: Json = {}) => ({
      ...base,
      object: "chat.completion.chunk",
      choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }],
      ...extra,
    });
    const deltas = this.#chatDeltas(answer);
    const includeUsage = asRecord(body.stream_options)?.include_usage === true;
    const events = deltas.map((d) => sseData(chunk(d)));
    if (this.#kind === "lmstudio") {
      events.push(sseData(chunk({}, answer.finishReason, includeUsage ? { usage } : {})));
    } else {
      events.push(sseData(chunk({}, answer.finishReason, timings)));
      if (includeUsage) {
        events.push(sseData({ ...base, object: "chat.completion.chunk", choices: [], usage }));
      }
    }
    events.push("data: [DONE]\n\n");
    return this.#sse(ex, events);
  }

  /** The deltas of a streamed chat answer: reasoning, content, then tool calls; role on the first. */
  #chatDeltas(answer: Answer): Json[] {
    const size = this.#chunkSize;
    const deltas: Json[] = [];
    if (answer.reasoning !== undefined) {
      const field = answer.reasoningField;
      if (field === "think_tags") {
        deltas.push({ content: "<think>" });
        for (const p of pieces(answer.reasoning, size)) deltas.push({ content: p });
        deltas.push({ content: "</think>" }, { content: "\n\n" });
      } else {
        for (const p of pieces(answer.reasoning, size)) deltas.push({ [field]: p });
      }
    }
    for (const p of pieces(answer.content, size)) deltas.push({ content: p });
    const calls = answer.toolCalls;
    if (this.#kind === "ollama") {
      // Ollama sends each call whole.
      calls.forEach((c, index) =>
        deltas.push({
          tool_calls: [{
            index,
            id: c.id,
            type: "function",
            function: { name: c.name, arguments: c.arguments },
          }],
        })
      );
    } else {
      const fragments = calls.map((c, index) => [
        { index, id: c.id, type: "function", function: { name: c.name, arguments: "" } },
        ...pieces(c.arguments, size).map((arguments_) => ({
          index,
          function: this.#kind === "lmstudio"
            ? { name: "", arguments: arguments_ }
            : { arguments: arguments_ },
        })),
      ]);
      if (this.#kind === "lmstudio") {
        // LM Studio may interleave several calls: send them round-robin.
        const longest = Math.max(0, ...fragments.map((f) => f.length));
        for (let i = 0; i < longest; i++) {
          for (const f of fragments) if (i < f.length) deltas.push({ tool_calls: [f[i]] });
        }
      } else {
        for (const f of fragments) for (const frag of f) deltas.push({ tool_calls: [frag] });
      }
    }
    if (deltas.length === 0) deltas.push({ content: "" });
    deltas[0] = { role: "assistant", ...deltas[0] };
    return deltas;
  }

  #fingerprint(model: string): string {
    switch (this.#kind) {
      case "lmstudio":
        return model;
      case "ollama":
        return "fp_ollama";
      case "llamacpp":
        return "b6000-double";
      case "openai":
        return "fp_double";
    }
  }

  #v0Stats(model: DoubleModel, answer: Answer): Json {
    return {
      stats: {
        tokens_per_second: 50,
        time_to_first_token: 0.05,
        generation_time: answer.completionTokens / 50,
        stop_reason: answer.finishReason === "tool_calls" ? "toolCalls" : "eosFound",
      },
      model_info: {
        arch: archOf(model.id),
        quant: "Q4_K_M",
        format: "gguf",
        context_length: model.contextLength,
      },
      runtime: { name: "llama.cpp-double", version: "1.0.0", supported_formats: ["gguf"] },
    };
  }

  async #completions(ex: Exchange, v0: boolean): Promise<Response> {
    const body = asRecord(ex.record.body);
    if (!body) return this.#error(ex, 400, "Request body must be valid JSON.");
    const prompt = Array.isArray(body.prompt) ? body.prompt.join("") : body.prompt;
    if (typeof prompt !== "string") return this.#error(ex, 400, "'prompt' field is required");
    const model = this.#findModel(ex, body.model, "chat");
    if (model instanceof Response) return model;
    const notLoaded = await this.#ensureLoaded(ex, model);
    if (notLoaded) return notLoaded;
    const reply = this.#takeReply(model.id, body.model, prompt);
    const answer = this.#answer(model, reply, `[${model.id}] continues: ${prompt}`, prompt);
    const text = answer.reasoning !== undefined
      ? `<think>${answer.reasoning}</think>\n\n${answer.content}`
      : answer.content;
    const promptTokens = countWords(prompt);
    const usage = {
      prompt_tokens: promptTokens,
      completion_tokens: answer.completionTokens,
      total_tokens: promptTokens + answer.completionTokens,
    };
    const base = {
      id: randomId("cmpl-"),
      object: "text_completion",
      created: nowSeconds(),
      model: answer.model,
    };
    const timings = this.#kind === "llamacpp"
      ? { timings: llamaTimings(promptTokens, answer.completionTokens) }
      : {};
    const choice = (t: string, finish: string | null) => [{
      index: 0,
      text: t,
      logprobs: null,
      finish_reason: finish,
    }];
    if (!ex.stream) {
      await this.#generationTime(ex, answer);
      return this.#json(ex, {
        ...base,
        choices: choice(text, answer.finishReason),
        usage,
        ...timings,
        ...(v0 ? this.#v0Stats(model, answer) : {}),
      });
    }
    const includeUsage = asRecord(body.stream_options)?.include_usage === true;
    const events = pieces(text, this.#chunkSize).map((p) =>
      sseData({ ...base, choices: choice(p, null) })
    );
    if (this.#kind === "lmstudio") {
      events.push(
        sseData({
          ...base,
          choices: choice("", answer.finishReason),
          ...(includeUsage ? { usage } : {}),
        }),
      );
    } else {
      events.push(sseData({ ...base, choices: choice("", answer.finishReason), ...timings }));
      if (includeUsage) events.push(sseData({ ...base, choices: [], usage }));
    }
    events.push("data: [DONE]\n\n");
    return this.#sse(ex, events);
  }

  async #embeddings(ex: Exchange): Promise<Response> {
    const body = asRecord(ex.record.body);
    if (!body) return this.#error(ex, 400, "Request body must be valid JSON.");
    const input = body.input;
    const texts = typeof input === "string"
      ? [input]
      : Array.isArray(input) && input.every((t) => typeof t === "string")
      ? input as string[]
      : undefined;
    if (!texts) return this.#error(ex, 400, "'input' must be a string or an array of strings");
    const model = this.#findModel(ex, body.model, "embeddings");
    if (model instanceof Response) return model;
    const notLoaded = await this.#ensureLoaded(ex, model);
    if (notLoaded) return notLoaded;
    const dimensions = Math.max(1, this.#opts.embeddingDimensions ?? 8);
    const tokens = countWords(texts.join(" "));
    return this.#json(ex, {
      object: "list",
      data: texts.map((t, index) => ({
        object: "embedding",
        embedding: embeddingOf(t, dimensions),
        index,
      })),
      model: model.id,
      usage: { prompt_tokens: tokens, total_tokens: tokens },
    });
  }

  async #responsesApi(ex: Exchange): Promise<Response> {
    const body = asRecord(ex.record.body);
    if (!body) return this.#error(ex, 400, "Request body must be valid JSON.");
    const stateful = this.#kind !== "ollama";
    const previousId = body.previous_response_id;
    let previous: { model: string; turn: number } | undefined;
    if (stateful && typeof previousId === "string" && previousId) {
      previous = this.#responses.get(previousId);
      if (!previous) {
        return this.#error(ex, 400, `Previous response with id '${previousId}' not found.`, {
          object: true,
          code: "previous_response_not_found",
          param: "previous_response_id",
        });
      }
    }
    const model = this.#findModel(ex, body.model ?? previous?.model, "chat");
    if (model instanceof Response) return model;
    const input = responseInputText(body.input);
    if (input.images && !isVision(model)) {
      return this.#error(ex, 400, "Model does not support images. Please use a model that does.");
    }
    const notLoaded = await this.#ensureLoaded(ex, model);
    if (notLoaded) return notLoaded;
    const turn = (previous?.turn ?? 0) + 1;
    const reply = this.#takeReply(model.id, body.model, input.text);
    let echo = `[${model.id}] You said: ${input.text}`;
    if (input.images) echo += ` (+${input.images} images)`;
    echo += ` (turn ${turn})`;
    const answer = this.#answer(model, reply, echo, input.text);
    const id = randomId("resp_", 32);
    if (stateful) {
      this.#responses.set(id, { model: model.id, turn });
      if (this.#responses.size > 10_000) {
        this.#responses.delete(this.#responses.keys().next().value!);
      }
    }
    const inputTokens = countWords(input.text);
    const output: Json[] = [];
    if (answer.reasoning !== undefined) {
      output.push({
        id: randomId("rs_", 24),
        type: "reasoning",
        summary: [],
        content: [{ type: "reasoning_text", text: answer.reasoning }],
      });
    }
    if (answer.content !== "" || answer.toolCalls.length === 0) {
      output.push({
        id: randomId("msg_", 24),
        type: "message",
        role: "assistant",
        status: "completed",
        content: [{ type: "output_text", text: answer.content, annotations: [] }],
      });
    }
    for (const c of answer.toolCalls) {
      output.push({
        id: randomId("fc_", 24),
        type: "function_call",
        call_id: c.id,
        name: c.name,
        arguments: c.arguments,
        status: "completed",
      });
    }
    const response = {
      id,
      object: "response",
      created_at: nowSeconds(),
      status: "completed",
      model: answer.model,
      output,
      previous_response_id: typeof previousId === "string" ? previousId : null,
      usage: {
        input_tokens: inputTokens,
        output_tokens: answer.completionTokens,
        total_tokens: inputTokens + answer.completionTokens,
      },
    };
    if (!ex.stream) {
      await this.#generationTime(ex, answer);
      return this.#json(ex, response);
    }
    return this.#sse(ex, this.#responseEvents(response, output));
  }

  /** The named SSE events of a streamed /v1/responses answer. */
  #responseEvents(response: Json, output: Json[]): string[] {
    const events: string[] = [];
    let seq = 0;
    const event = (type: string, data: Json) =>
      events.push(
        `event: ${type}\ndata: ${JSON.stringify({ type, sequence_number: seq++, ...data })}\n\n`,
      );
    const pending = { ...response, status: "in_progress", output: [], usage: null };
    event("response.created", { response: pending });
    event("response.in_progress", { response: pending });
    output.forEach((item, outputIndex) => {
      const itemId = item.id as string;
      if (item.type === "message") {
        const text = (item.content as { text: string }[])[0].text;
        event("response.output_item.added", {
          output_index: outputIndex,
          item: { ...item, status: "in_progress", content: [] },
        });
        const part = { type: "output_text", text: "", annotations: [] };
        event("response.content_part.added", {
          item_id: itemId,
          output_index: outputIndex,
          content_index: 0,
          part,
        });
        for (const delta of pieces(text, this.#chunkSize)) {
          event("response.output_text.delta", {
            item_id: itemId,
            output_index: outputIndex,
            content_index: 0,
            delta,
          });
        }
        event("response.output_text.done", {
          item_id: itemId,
          output_index: outputIndex,
          content_index: 0,
          text,
        });
        event("response.content_part.done", {
          item_id: itemId,
          output_index: outputIndex,
          content_index: 0,
          part: { ...part, text },
        });
      } else if (item.type === "reasoning") {
        const text = (item.content as { text: string }[])[0].text;
        event("response.output_item.added", { output_index: outputIndex, item });
        for (const delta of pieces(text, this.#chunkSize)) {
          event("response.reasoning_text.delta", {
            item_id: itemId,
            output_index: outputIndex,
            content_index: 0,
            delta,
          });
        }
        event("response.reasoning_text.done", {
          item_id: itemId,
          output_index: outputIndex,
          content_index: 0,
          text,
        });
      } else {
        const args = item.arguments as string;
        event("response.output_item.added", {
          output_index: outputIndex,
          item: { ...item, arguments: "", status: "in_progress" },
        });
        for (const delta of pieces(args, this.#chunkSize)) {
          event("response.function_call_arguments.delta", {
            item_id: itemId,
            output_index: outputIndex,
            delta,
          });
        }
        event("response.function_call_arguments.done", {
          item_id: itemId,
          output_index: outputIndex,
          arguments: args,
        });
      }
      event("response.output_item.done", { output_index: outputIndex, item });
    });
    event("response.completed", { response });
    return events;
  }
}

// ---------------------------------------------------------------------------------------------
// The TCP relay

/** A client connection and the relay's own connection to `Deno.serve` for it. */
interface RelayedConnection {
  /** Requests seen on this connection so far. */
  requests: number;
  /** Closes both sockets at once: the client sees a reset or an end of stream. */
  close(): void;
}

/** Copies bytes between clients and the internal `Deno.serve`, so a socket can be cut at will. */
class Relay {
  readonly #listener: Deno.TcpListener;
  readonly #internalPort: number;
  /** By the local port of the relay's connection, i.e. the remote port `Deno.serve` sees. */
  readonly #byPort = new Map<number, RelayedConnection>();
  readonly #tasks = new Set<Promise<void>>();
  #closed = false;

  constructor(listener: Deno.TcpListener, internalPort: number) {
    this.#listener = listener;
    this.#internalPort = internalPort;
    this.#track(this.#accept());
  }

  lookup(port: number): RelayedConnection | undefined {
    return this.#byPort.get(port);
  }

  async close(): Promise<void> {
    this.#closed = true;
    try {
      this.#listener.close();
    } catch {
      // already closed
    }
    for (const c of [...this.#byPort.values()]) c.close();
    while (this.#tasks.size) await Promise.allSettled([...this.#tasks]);
  }

  #track(task: Promise<void>): void {
    const tracked = task.catch(() => {}).finally(() => this.#tasks.delete(tracked));
    this.#tasks.add(tracked);
  }

  async #accept(): Promise<void> {
    while (!this.#closed) {
      let client: Deno.TcpConn;
      try {
        client = await this.#listener.accept();
      } catch {
        return;
      }
      this.#track(this.#relay(client));
    }
  }

  async #relay(client: Deno.TcpConn): Promise<void> {
    let upstream: Deno.TcpConn;
    try {
      upstream = await Deno.connect({ hostname: "127.0.0.1", port: this.#internalPort });
    } catch {
      tryClose(client);
      return;
    }
    const port = (upstream.localAddr as Deno.NetAddr).port;
    let open = true;
    const connection: RelayedConnection = {
      requests: 0,
      close: () => {
        if (!open) return;
        open = false;
        this.#byPort.delete(port);
        tryClose(client);
        tryClose(upstream);
      },
    };
    if (this.#closed) return connection.close();
    client.setNoDelay(true);
    upstream.setNoDelay(true);
    this.#byPort.set(port, connection);
    await Promise.allSettled([
      client.readable.pipeTo(upstream.writable).finally(connection.close),
      upstream.readable.pipeTo(client.writable).finally(connection.close),
    ]);
  }
}

function tryClose(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch {
    // already closed
  }
}

// ---------------------------------------------------------------------------------------------
// Small pure helpers

function asRecord(value: unknown): Json | undefined {
  return value !== null && typeof value === "object" && !Array.isArray(value)
    ? value as Json
    : undefined;
}

function isAbort(err: unknown): boolean {
  return err instanceof DOMException && (err.name === "AbortError" || err.name === "TimeoutError");
}

function sseData(data: unknown): string {
  return `data: ${JSON.stringify(data)}\n\n`;
}

function nowSeconds(): number {
  return Math.floor(Date.now() / 1000);
}

function randomId(prefix: string, length = 21): string {
  const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789";
  const bytes = crypto.getRandomValues(new Uint8Array(length));
  return prefix + Array.from(bytes, (b) => alphabet[b % alphabet.length]).join("");
}

/** Splits `text` into pieces of `size` characters (code points); none for "". */
function pieces(text: string, size: number): string[] {
  const chars = Array.from(text);
  const out: string[] = [];
  for (let i = 0; i < chars.length; i += size) out.push(chars.slice(i, i + size).join(""));
  return out;
}

function countWords(text: string): number {
  return text.match(/\S+/g)?.length ?? 0;
}

/** Text of a message: its string content, or its text parts joined. */
function messageText(message: unknown): string {
  const content = asRecord(message)?.content;
  if (typeof content === "string") return content;
  if (!Array.isArray(content)) return "";
  return content
    .map((part) => asRecord(part))
    .filter((p) =>
      p && (p.type === "text" || p.type === "input_text") && typeof p.text === "string"
    )
    .map((p) => p!.text as string)
    .join(" ");
}

function countImages(content: unknown): number {
  if (!Array.isArray(content)) return 0;
  return content.filter((p) => {
    const type = asRecord(p)?.type;
    return type === "image_url" || type === "input_image";
  }).length;
}

function lastUserText(messages: unknown[]): { text: string; images: number } {
  const last = [...messages].reverse().find((m) => asRecord(m)?.role === "user");
  return { text: messageText(last), images: countImages(asRecord(last)?.content) };
}

/** URLs of the image parts of all messages. */
function imageParts(messages: unknown[]): string[] {
  const urls: string[] = [];
  for (const message of messages) {
    const content = asRecord(message)?.content;
    if (!Array.isArray(content)) continue;
    for (const part of content) {
      const p = asRecord(part);
      if (p?.type !== "image_url") continue;
      const image = p.image_url;
      urls.push(typeof image === "string" ? image : String(asRecord(image)?.url ?? ""));
    }
  }
  return urls;
}

/** The new user text of a /v1/responses input (a string or a list of items). */
function responseInputText(input: unknown): { text: string; images: number } {
  if (typeof input === "string") return { text: input, images: 0 };
  if (!Array.isArray(input)) return { text: "", images: 0 };
  const last = [...input].reverse().find((item) => asRecord(item)?.role === "user");
  if (last) return { text: messageText(last), images: countImages(asRecord(last)?.content) };
  return { text: input.map((item) => messageText(item)).filter(Boolean).join(" "), images: 0 };
}

function isVision(model: DoubleModel): boolean {
  return model.vision ?? model.type === "vlm";
}

function publisherOf(id: string): string {
  return id.includes("/") ? id.split("/")[0] : "lmstudio-community";
}

function archOf(id: string): string {
  const name = id.toLowerCase();
  if (name.includes("qwen3")) return "qwen3";
  if (name.includes("qwen")) return "qwen2";
  if (name.includes("gemma-3") || name.includes("gemma3")) return "gemma3";
  if (name.includes("gemma")) return "gemma";
  if (name.includes("nomic")) return "nomic-bert";
  if (name.includes("mistral")) return "mistral";
  if (name.includes("gpt-oss")) return "gpt-oss";
  return "llama";
}

function ollamaTag(m: DoubleModel): Json {
  return {
    name: m.id,
    model: m.id,
    modified_at: "2025-01-01T00:00:00Z",
    size: m.type === "embeddings" ? 274_302_450 : 2_497_280_256,
    digest: "0".repeat(64),
    details: {
      format: "gguf",
      family: archOf(m.id),
      parameter_size: "4B",
      quantization_level: "Q4_K_M",
    },
  };
}

function llamaTimings(promptTokens: number, completionTokens: number): Json {
  return {
    prompt_n: promptTokens,
    prompt_ms: promptTokens * 0.5,
    prompt_per_token_ms: 0.5,
    prompt_per_second: 2000,
    predicted_n: completionTokens,
    predicted_ms: completionTokens * 20,
    predicted_per_token_ms: 20,
    predicted_per_second: 50,
  };
}

function defaultStatusBody(status: number): unknown {
  const reasons: Record<number, [string, string]> = {
    400: ["Bad Request", "invalid_request_error"],
    401: ["Unauthorized", "invalid_request_error"],
    404: ["Not Found", "invalid_request_error"],
    429: ["Too Many Requests", "rate_limit_error"],
    500: ["Internal Server Error", "server_error"],
    502: ["Bad Gateway", "server_error"],
    503: ["Service Unavailable", "unavailable_error"],
    504: ["Gateway Timeout", "server_error"],
  };
  const [message, type] = reasons[status] ?? [`HTTP ${status}`, "server_error"];
  return { error: { message, type } };
}

/** Identifies a request and its transparent resend (same method, path and body). */
function resendKey(ex: Exchange): string {
  return `${ex.request.method} ${ex.url.pathname} ${ex.rawBody}`;
}

/**
 * A minimal value that satisfies `schema`: strings "example", numbers 1, booleans true,
 * arrays with one item, objects with all `required` properties.
 */
export function exampleFromSchema(schema: unknown, root: unknown = schema, depth = 0): unknown {
  const s = asRecord(schema);
  if (!s || depth > 32) return "example";
  if (typeof s.$ref === "string") {
    const target = s.$ref.replace(/^#\/?/, "").split("/").filter(Boolean)
      .reduce<unknown>((node, key) => asRecord(node)?.[key], root);
    return exampleFromSchema(target, root, depth + 1);
  }
  if ("const" in s) return s.const;
  if (Array.isArray(s.enum) && s.enum.length) return s.enum[0];
  for (const key of ["anyOf", "oneOf", "allOf"]) {
    const options = s[key];
    if (Array.isArray(options) && options.length) {
      const usable = options.find((o) => asRecord(o)?.type !== "null") ?? options[0];
      return exampleFromSchema(usable, root, depth + 1);
    }
  }
  let type = s.type;
  if (Array.isArray(type)) type = type.find((t) => t !== "null") ?? type[0];
  if (type === undefined) type = s.properties ? "object" : s.items ? "array" : "string";
  switch (type) {
    case "number":
    case "integer":
      return 1;
    case "boolean":
      return true;
    case "null":
      return null;
    case "array":
      return s.maxItems === 0 ? [] : [exampleFromSchema(s.items, root, depth + 1)];
    case "object": {
      const properties = asRecord(s.properties) ?? {};
      const required = Array.isArray(s.required) ? s.required as string[] : [];
      return Object.fromEntries(
        required.map((key) => [key, exampleFromSchema(properties[key], root, depth + 1)]),
      );
    }
    default:
      return "example";
  }
}

/** A deterministic unit vector derived from a hash of `text`. */
export function embeddingOf(text: string, dimensions: number): number[] {
  let seed = 0x811c9dc5;
  for (const byte of new TextEncoder().encode(text)) {
    seed = Math.imul(seed ^ byte, 0x01000193) >>> 0;
  }
  const values: number[] = [];
  for (let i = 0; i < dimensions; i++) {
    // mulberry32
    seed = (seed + 0x6d2b79f5) >>> 0;
    let t = seed;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    values.push((((t ^ (t >>> 14)) >>> 0) / 4294967296) * 2 - 1);
  }
  const norm = Math.hypot(...values) || 1;
  return values.map((v) => v / norm);
}

// ---------------------------------------------------------------------------------------------
// Standalone mode

const USAGE = `Usage: deno run -A tests/support/lmstudio_double.ts [options]

  --port N            port to listen on (default: 1234; ollama 11434, llamacpp 8080, openai 8000)
  --hostname H        address to bind (default 127.0.0.1)
  --kind K            lmstudio | ollama | llamacpp | openai (default lmstudio)
  --api-key K         require Authorization: Bearer K
  --chunk-delay-ms N  delay between streamed chunks (default 0)
  --load-delay-ms N   time a model load takes (default 0)
  --first-byte-delay-ms N  every generation waits N ms before answering (default 0)
  --no-jit            refuse requests for unloaded models
  --quiet             no request log on stderr`;

const DEFAULT_PORTS: Record<DoubleKind, number> = {
  lmstudio: 1234,
  ollama: 11434,
  llamacpp: 8080,
  openai: 8000,
};

/** Parses the standalone command line; throws an Error naming the bad argument. */
export function parseDoubleArgs(args: string[]): DoubleOptions {
  const options: DoubleOptions = { log: true };
  let port: number | undefined;
  const numberOf = (flag: string, value: string | undefined) => {
    const n = Number(value);
    if (value === undefined || value === "" || !Number.isInteger(n) || n < 0) {
      throw new Error(`${flag} needs a non-negative integer, got ${JSON.stringify(value)}`);
    }
    return n;
  };
  for (let i = 0; i < args.length; i++) {
    let [flag, value] = args[i].split(/=(.*)/s, 2) as [string, string | undefined];
    const next = () => value ?? (value = args[++i]);
    switch (flag) {
      case "--port":
        port = numberOf(flag, next());
        if (port > 65535) throw new Error(`--port must be at most 65535, got ${port}`);
        break;
      case "--hostname":
        options.hostname = next();
        if (!options.hostname) throw new Error("--hostname needs a value");
        break;
      case "--kind": {
        const kind = next();
        if (!kind || !(kind in DEFAULT_PORTS)) {
          throw new Error(`--kind must be lmstudio, ollama, llamacpp or openai, got ${kind}`);
        }
        options.kind = kind as DoubleKind;
        break;
      }
      case "--api-key":
        options.apiKey = next();
        if (!options.apiKey) throw new Error("--api-key needs a value");
        break;
      case "--chunk-delay-ms":
        options.chunkDelayMs = numberOf(flag, next());
        break;
      case "--load-delay-ms":
        options.loadDelayMs = numberOf(flag, next());
        break;
      case "--first-byte-delay-ms":
        options.firstByteDelayMs = numberOf(flag, next());
        break;
      case "--no-jit":
        options.jit = false;
        break;
      case "--quiet":
        options.log = false;
        break;
      default:
        throw new Error(`unknown argument ${args[i]}`);
    }
  }
  options.port = port ?? DEFAULT_PORTS[options.kind ?? "lmstudio"];
  return options;
}

async function main(args: string[]): Promise<void> {
  if (args.includes("--help") || args.includes("-h")) {
    console.log(USAGE);
    return;
  }
  let options: DoubleOptions;
  try {
    options = parseDoubleArgs(args);
  } catch (err) {
    console.error(`lmstudio double: ${(err as Error).message}\n\n${USAGE}`);
    Deno.exit(2);
  }
  const double = await startDouble(options);
  console.log(`lmstudio double listening on ${double.url}`);
  const stop = () => {
    double.close().finally(() => Deno.exit(0));
  };
  Deno.addSignalListener("SIGINT", stop);
  Deno.addSignalListener("SIGTERM", stop);
}

if (import.meta.main) await main(Deno.args);

/**
 * Lets a person drive an agent by hand against the double (no scripting API needed): with
 * tools offered, a task containing `CALL <tool> <json arguments>` makes the model call that
 * tool (the name may omit the `server__` prefix); once the tool answered, the model reports
 * what the tool said.
 */
function directedToolReply(messages: unknown[], tools: unknown): ScriptedReply | undefined {
  if (!Array.isArray(tools) || tools.length === 0) return undefined;
  const last = asRecord(messages.at(-1));
  if (last?.role === "tool") {
    const said = messageText(last).slice(0, 500);
    return { content: `The tool answered: ${said}` };
  }
  const text = lastUserText(messages).text;
  const m = /CALL\s+([\w.-]+)\s*(\{[\s\S]*\})?/.exec(text);
  if (!m) return undefined;
  const names = tools.map((t) => String(asRecord(asRecord(t)?.function)?.name ?? ""));
  const name = names.find((n) => n === m[1]) ?? names.find((n) => n.endsWith(`__${m[1]}`));
  if (!name) return undefined;
  return { content: "", toolCalls: [{ name, arguments: m[2] ?? "{}" }] };
}
