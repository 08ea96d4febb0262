/**
 * The HTTP client for one model server: OpenAI-compatible endpoints, LM Studio's native API,
 * server-kind detection. Every call takes the caller's AbortSignal; generations always
 * stream, parsed incrementally, under a first-byte timeout, an idle timeout between chunks,
 * and whatever deadline the caller's signal carries.
 */
import { timerMs } from "../util/async.ts";
import { abortToError, BridgeError } from "../util/errors.ts";
import { readSse, StreamReadError } from "../util/sse.ts";
import { parseRetryAfter } from "../util/retry.ts";
import { CompletionAccumulator } from "./chat_stream.ts";
import type { BackendKind, CallOptions, GenerationResult, ModelInfo, ModelType } from "./types.ts";
import { readErrorField, unreachableError, upstreamError } from "./upstream_errors.ts";

export interface BackendClientOptions {
  /** Base URL, e.g. `http://localhost:1234` (no `/v1`). */
  baseUrl: string;
  apiKey?: string;
  fetch?: typeof fetch;
  /** Wait for the first byte of an answer; covers a JIT model load. Default 120 s. */
  firstByteTimeoutMs?: number;
  /** Longest silence inside a stream. Default 30 s. */
  idleTimeoutMs?: number;
  now?: () => number;
}

/** What `probe` learns about a backend. */
export interface ProbeResult {
  reachable: boolean;
  kind?: BackendKind;
  latencyMs: number;
  error?: BridgeError;
}

export interface EmbeddingsResult {
  model?: string;
  embeddings: number[][];
  usage: { prompt_tokens: number };
}

export interface ResponseResult {
  id: string;
  text: string;
  model?: string;
  usage?: { prompt_tokens: number; completion_tokens: number };
}

/** One model server. */
export class BackendClient {
  readonly url: string;
  readonly #apiKey?: string;
  readonly #fetch: typeof fetch;
  readonly #firstByteMs: number;
  readonly #idleMs: number;
  readonly #now: () => number;
  #kind?: BackendKind;

  constructor(options: BackendClientOptions) {
    this.url = options.baseUrl.replace(/\/+$/, "");
    this.#apiKey = options.apiKey;
    this.#fetch = options.fetch ?? fetch;
    this.#firstByteMs = options.firstByteTimeoutMs ?? 120_000;
    this.#idleMs = options.idleTimeoutMs ?? 30_000;
    this.#now = options.now ?? (() => performance.now());
  }

  /** The server kind once detected (undefined before). */
  get knownKind(): BackendKind | undefined {
    return this.#kind;
  }

  /** The server kind: detected once, then remembered (a failed detection is not). */
  async detectKind(signal?: AbortSignal): Promise<BackendKind> {
    return this.#kind ??= await this.#detect(signal);
  }

  /** LM Studio's greeting, Ollama's version endpoint, llama-server's props, else generic. */
  async #detect(signal?: AbortSignal): Promise<BackendKind> {
    const ok = async (path: string, test: (body: Record<string, unknown>) => boolean) => {
      try {
        const res = await this.#send(path, { method: "GET", signal, timeoutMs: 5_000 });
        const body = await res.json().catch(() => undefined);
        return typeof body === "object" && body !== null && !readErrorField(body) &&
          test(body as Record<string, unknown>);
      } catch (err) {
        // Down, hung or refusing the token says nothing about the kind: do not guess.
        if (
          signal?.aborted ||
          (err instanceof BridgeError &&
            ["backend_unreachable", "timeout", "auth_failed"].includes(err.code))
        ) throw err;
        return false;
      }
    };
    if (await ok("/lmstudio-greeting", (b) => b.lmstudio === true)) return "lmstudio";
    if (await ok("/api/version", (b) => typeof b.version === "string")) return "ollama";
    if (await ok("/props", (b) => "default_generation_settings" in b || "n_ctx" in b)) {
      return "llamacpp";
    }
    return "openai";
  }

  /** Reachability, kind and latency, never throwing. */
  async probe(signal?: AbortSignal): Promise<ProbeResult> {
    const start = this.#now();
    let kind: BackendKind | undefined;
    try {
      kind = this.#kind = await this.#detect(signal);
      await this.#json("/v1/models", { method: "GET", signal, timeoutMs: 10_000 });
      return { reachable: true, kind, latencyMs: Math.round(this.#now() - start) };
    } catch (err) {
      const error = err instanceof BridgeError ? err : unreachableError(err, { backend: this.url });
      return {
        reachable: error.code !== "backend_unreachable" && error.code !== "timeout",
        kind,
        latencyMs: Math.round(this.#now() - start),
        error,
      };
    }
  }

  /** Every model the server knows, with as much detail as its API gives. */
  async listModels(signal?: AbortSignal): Promise<ModelInfo[]> {
    const kind = await this.detectKind(signal);
    if (kind === "lmstudio") {
      // Older LM Studio versions lack /api/v1 (or /api/v0): fall back on an answer that is
      // not a model list, but not when the server is down, hung or refuses the token.
      const fatal = (err: unknown) =>
        signal?.aborted ||
        (err instanceof BridgeError &&
          ["auth_failed", "timeout", "backend_unreachable"].includes(err.code));
      try {
        return this.#parseNativeV1(
          await this.#json("/api/v1/models", { method: "GET", signal, timeoutMs: 15_000 }),
        );
      } catch (err) {
        if (fatal(err)) throw err;
      }
      try {
        return this.#parseNativeV0(
          await this.#json("/api/v0/models", { method: "GET", signal, timeoutMs: 15_000 }),
        );
      } catch (err) {
        if (fatal(err)) throw err;
      }
    }
    const body = await this.#json("/v1/models", { method: "GET", signal, timeoutMs: 15_000 });
    const data = Array.isArray((body as { data?: unknown }).data)
      ? (body as { data: Record<string, unknown>[] }).data
      : [];
    let loadedIds: Set<string> | undefined;
    if (kind === "ollama") {
      try {
        const ps = await this.#json("/api/ps", { method: "GET", signal, timeoutMs: 5_000 });
        const models = (ps as { models?: { name?: string; model?: string }[] }).models ?? [];
        loadedIds = new Set(models.flatMap((m) => [m.name ?? "", m.model ?? ""]));
      } catch {
        loadedIds = undefined;
      }
    }
    return data.filter((m) => typeof m.id === "string").map((m) => {
      const id = m.id as string;
      const type: ModelType = /embed/i.test(id) ? "embedding" : "llm";
      return {
        id,
        type,
        loaded: loadedIds ? loadedIds.has(id) : kind !== "ollama",
        backend: this.url,
        capabilities: { toolUse: type === "llm", vision: false, reasoning: false },
        instanceIds: [],
      };
    });
  }

  #parseNativeV1(body: unknown): ModelInfo[] {
    const models = (body as { models?: unknown }).models;
    if (!Array.isArray(models)) throw new Error("no models array");
    return models.map((m: Record<string, unknown>) => {
      const caps = (m.capabilities ?? {}) as Record<string, unknown>;
      const instances = Array.isArray(m.loaded_instances)
        ? m.loaded_instances as { id: string; config?: Record<string, unknown> }[]
        : [];
      const vision = caps.vision === true;
      const type: ModelType = m.type === "embedding" || m.type === "embeddings"
        ? "embedding"
        : vision
        ? "vlm"
        : "llm";
      const config = instances[0]?.config ?? {};
      return {
        id: String(m.key ?? m.id),
        type,
        loaded: instances.length > 0,
        backend: this.url,
        contextLength: Number(config.context_length ?? m.max_context_length) || undefined,
        capabilities: {
          toolUse: caps.trained_for_tool_use === true,
          vision,
          reasoning: Boolean(caps.reasoning),
        },
        parallel: Number(config.parallel) || undefined,
        instanceIds: instances.map((i) => String(i.id)),
      };
    });
  }

  #parseNativeV0(body: unknown): ModelInfo[] {
    const data = (body as { data?: unknown }).data;
    if (!Array.isArray(data)) throw new Error("no data array");
    return data.map((m: Record<string, unknown>) => {
      const caps = Array.isArray(m.capabilities) ? m.capabilities as string[] : [];
      const type: ModelType = m.type === "embeddings" || m.type === "embedding"
        ? "embedding"
        : m.type === "vlm"
        ? "vlm"
        : "llm";
      const loaded = m.state === "loaded";
      return {
        id: String(m.id),
        type,
        loaded,
        backend: this.url,
        contextLength: Number(m.loaded_context_length ?? m.max_context_length) || undefined,
        capabilities: {
          toolUse: caps.includes("tool_use"),
          vision: type === "vlm",
          reasoning: caps.includes("reasoning"),
        },
        instanceIds: loaded ? [String(m.id)] : [],
      };
    });
  }

  /** A streamed chat completion. `body` is the OpenAI request without `stream`. */
  chat(body: Record<string, unknown>, options: CallOptions = {}): Promise<GenerationResult> {
    return this.#generate("/v1/chat/completions", body, options);
  }

  /** A streamed raw text completion. */
  completion(body: Record<string, unknown>, options: CallOptions = {}): Promise<GenerationResult> {
    return this.#generate("/v1/completions", body, options);
  }

  async #generate(
    path: string,
    body: Record<string, unknown>,
    options: CallOptions,
  ): Promise<GenerationResult> {
    const model = typeof body.model === "string" ? body.model : undefined;
    const start = this.#now();
    let firstTokenMs: number | undefined;
    const acc = new CompletionAccumulator({
      ...options,
      onText: (t) => {
        firstTokenMs ??= this.#now() - start;
        options.onText?.(t);
      },
    });
    // A non-streamed body is complete by nature; a stream once it said [DONE].
    let complete = false;
    const watchdog = new Watchdog(options.signal);
    const ctx = { backend: this.url, model };
    const fail = (err: BridgeError) =>
      err.with({ partialText: acc.text || undefined, elapsedMs: Math.round(this.#now() - start) });
    watchdog.arm(
      this.#firstByteMs,
      () =>
        new BridgeError("timeout", `no answer within ${this.#firstByteMs / 1000}s`, {
          ...ctx,
          hint:
            "the model may still be loading; raise LMBRIDGE_FIRST_BYTE_TIMEOUT_S or load it first with load_model",
        }),
    );
    try {
      const res = await this.#send(path, {
        method: "POST",
        body: { ...body, stream: true, stream_options: { include_usage: true } },
        signal: watchdog.signal,
        model,
      });
      const type = res.headers.get("content-type") ?? "";
      if (!type.includes("text/event-stream")) {
        // Some servers answer a stream request with a plain body (or garbage).
        const text = await res.text();
        let parsed: unknown;
        try {
          parsed = JSON.parse(text);
        } catch {
          throw new BridgeError(
            "upstream_error",
            `the model server sent something that is neither JSON nor a stream: ${
              JSON.stringify(text.slice(0, 120))
            }`,
            { ...ctx, hint: "check that the backend URL points at an OpenAI-compatible server" },
          );
        }
        if (!acc.push(parsed)) throw upstreamError(200, acc.error!, ctx);
        complete = true;
      } else {
        for await (const event of readSse(res.body!, { signal: watchdog.signal })) {
          watchdog.arm(
            this.#idleMs,
            () =>
              new BridgeError("timeout", `the stream went silent for ${this.#idleMs / 1000}s`, {
                ...ctx,
                hint: "the model server stalled; raise LMBRIDGE_IDLE_TIMEOUT_S if it is just slow",
              }),
          );
          const data = event.data.trim();
          if (data === "[DONE]") {
            complete = true;
            break;
          }
          if (!data) continue;
          let chunk: unknown;
          try {
            chunk = JSON.parse(data);
          } catch {
            throw new BridgeError(
              "upstream_error",
              `malformed stream chunk: ${JSON.stringify(data.slice(0, 120))}`,
              ctx,
            );
          }
          if (!acc.push(chunk)) throw upstreamError(200, acc.error!, ctx);
        }
      }
      const toolCalls = acc.finish();
      if (!complete && !acc.finishReason && (acc.delivered || toolCalls.length > 0)) {
        // The connection closed cleanly, but the answer never said it was done.
        throw new BridgeError("upstream_error", "the stream ended before the answer was complete", {
          ...ctx,
          hint: "the model server may have crashed or restarted; check its log",
          details: { phase: "stream" },
        });
      }
      if (!acc.text && !acc.reasoning && toolCalls.length === 0 && !acc.finishReason) {
        throw new BridgeError(
          "upstream_error",
          "the model server ended the stream without any output",
          {
            ...ctx,
            hint:
              "this happens when the prompt does not fit the model's context; shorten it or load the model with a larger context_length",
          },
        );
      }
      return {
        text: acc.text,
        reasoning: acc.reasoning,
        toolCalls,
        finishReason: acc.finishReason || (toolCalls.length ? "tool_calls" : "stop"),
        usage: acc.usage ?? { prompt_tokens: 0, completion_tokens: 0 },
        model: acc.model,
        firstTokenMs: firstTokenMs === undefined ? undefined : Math.round(firstTokenMs),
        totalMs: Math.round(this.#now() - start),
      };
    } catch (err) {
      throw fail(this.#mapStreamError(err, watchdog, ctx));
    } finally {
      watchdog.dispose();
    }
  }

  #mapStreamError(
    err: unknown,
    watchdog: Watchdog,
    ctx: { backend: string; model?: string },
  ): BridgeError {
    if (watchdog.fired) return watchdog.fired;
    if (err instanceof BridgeError) return err;
    if (watchdog.callerAborted) return abortToError(watchdog.callerReason);
    if (err instanceof StreamReadError) {
      return new BridgeError("upstream_error", "the connection broke in the middle of the answer", {
        ...ctx,
        cause: err,
        hint: "the model server may have crashed or restarted; check its log",
        details: { phase: "stream" },
      });
    }
    return new BridgeError("upstream_error", (err as Error)?.message ?? String(err), {
      ...ctx,
      cause: err,
    });
  }

  /** Embeddings for one or more texts. */
  async embeddings(
    body: { model: string; input: string | string[] },
    signal?: AbortSignal,
  ): Promise<EmbeddingsResult> {
    const res = await this.#json("/v1/embeddings", {
      method: "POST",
      body,
      signal,
      model: body.model,
    }) as Record<string, unknown>;
    const data = Array.isArray(res.data) ? res.data as Record<string, unknown>[] : undefined;
    if (!data || data.some((d) => !Array.isArray(d.embedding))) {
      throw new BridgeError("upstream_error", "the embeddings answer has no vectors", {
        backend: this.url,
        model: body.model,
      });
    }
    const sorted = [...data].sort((a, b) => Number(a.index ?? 0) - Number(b.index ?? 0));
    return {
      model: typeof res.model === "string" ? res.model : undefined,
      embeddings: sorted.map((d) => d.embedding as number[]),
      usage: {
        prompt_tokens: Number((res.usage as Record<string, unknown>)?.prompt_tokens ?? 0) || 0,
      },
    };
  }

  /** OpenAI Responses API, streamed; text deltas go to `onText`. */
  async responses(
    body: Record<string, unknown>,
    options: CallOptions = {},
  ): Promise<ResponseResult> {
    const model = typeof body.model === "string" ? body.model : undefined;
    const ctx = { backend: this.url, model };
    const watchdog = new Watchdog(options.signal);
    watchdog.arm(
      this.#firstByteMs,
      () => new BridgeError("timeout", `no answer within ${this.#firstByteMs / 1000}s`, ctx),
    );
    let text = "";
    try {
      const res = await this.#send("/v1/responses", {
        method: "POST",
        body: { ...body, stream: true },
        signal: watchdog.signal,
        model,
      });
      const type = res.headers.get("content-type") ?? "";
      let final: Record<string, unknown> | undefined;
      if (!type.includes("text/event-stream")) {
        const parsed = await res.json().catch(() => undefined);
        const err = readErrorField(parsed);
        if (err) throw upstreamError(200, err, ctx);
        if (!parsed || typeof parsed !== "object") {
          throw new BridgeError("upstream_error", "the responses answer is not JSON", ctx);
        }
        final = parsed as Record<string, unknown>;
      } else {
        for await (const event of readSse(res.body!, { signal: watchdog.signal })) {
          watchdog.arm(
            this.#idleMs,
            () =>
              new BridgeError("timeout", `the stream went silent for ${this.#idleMs / 1000}s`, ctx),
          );
          const data = event.data.trim();
          if (!data || data === "[DONE]") continue;
          let chunk: Record<string, unknown>;
          try {
            chunk = JSON.parse(data);
          } catch {
            throw new BridgeError("upstream_error", "malformed stream chunk", ctx);
          }
          const err = readErrorField(chunk) ??
            (chunk.type === "error" || event.event === "error"
              ? { message: String(chunk.message ?? JSON.stringify(chunk)) }
              : undefined) ??
            readErrorField(chunk.response);
          if (err) throw upstreamError(200, err, ctx);
          const kind = (chunk.type as string | undefined) ?? event.event;
          if (kind === "response.output_text.delta" && typeof chunk.delta === "string") {
            text += chunk.delta;
            options.onText?.(chunk.delta);
          } else if (kind === "response.completed" || kind === "response.done") {
            final = (chunk.response ?? chunk) as Record<string, unknown>;
          }
        }
      }
      if (!final || typeof final.id !== "string") {
        throw new BridgeError("upstream_error", "the response stream ended without a response id", {
          ...ctx,
          partialText: text || undefined,
        });
      }
      const fullText = outputText(final) || text;
      const usage = final.usage as Record<string, unknown> | undefined;
      return {
        id: final.id,
        text: fullText,
        model: typeof final.model === "string" ? final.model : undefined,
        usage: usage
          ? {
            prompt_tokens: Number(usage.input_tokens ?? usage.prompt_tokens ?? 0) || 0,
            completion_tokens: Number(usage.output_tokens ?? usage.completion_tokens ?? 0) || 0,
          }
          : undefined,
      };
    } catch (err) {
      throw this.#mapStreamError(err, watchdog, ctx).with({ partialText: text || undefined });
    } finally {
      watchdog.dispose();
    }
  }

  /** LM Studio native load. `unsupported` on servers without it. */
  async loadModel(
    model: string,
    options: { contextLength?: number; ttlS?: number; signal?: AbortSignal } = {},
  ): Promise<{ instanceId: string; loadTimeS?: number }> {
    await this.#requireNative("load_model", options.signal);
    const body: Record<string, unknown> = { model };
    if (options.contextLength) body.context_length = options.contextLength;
    if (options.ttlS) body.ttl = options.ttlS;
    const res = await this.#json("/api/v1/models/load", {
      method: "POST",
      body,
      signal: options.signal,
      model,
      timeoutMs: Math.max(this.#firstByteMs, 60_000) * 5,
    }) as Record<string, unknown>;
    return {
      instanceId: String(res.instance_id ?? model),
      loadTimeS: typeof res.load_time_seconds === "number" ? res.load_time_seconds : undefined,
    };
  }

  /** LM Studio native unload of one loaded instance. */
  async unloadModel(instanceId: string, signal?: AbortSignal): Promise<void> {
    await this.#requireNative("unload_model", signal);
    await this.#json("/api/v1/models/unload", {
      method: "POST",
      body: { instance_id: instanceId },
      signal,
      model: instanceId,
    });
  }

  async #requireNative(what: string, signal?: AbortSignal) {
    const kind = await this.detectKind(signal);
    if (kind !== "lmstudio") {
      throw new BridgeError("unsupported", `${what} needs LM Studio's native API`, {
        backend: this.url,
        hint: `this backend is ${kind}; load models with its own tools (e.g. \`ollama run\`)`,
      });
    }
  }

  /** A request whose JSON answer is checked for `error` whatever the status. */
  async #json(
    path: string,
    init: {
      method: string;
      body?: unknown;
      signal?: AbortSignal;
      model?: string;
      timeoutMs?: number;
    },
  ): Promise<unknown> {
    const ctx = { backend: this.url, model: init.model };
    // Without an explicit limit: the first-byte timeout for the headers, then the idle
    // timeout for the body, so a stalled server cannot hold a request until its deadline.
    const watchdog = new Watchdog(init.signal);
    const limitMs = init.timeoutMs ?? this.#firstByteMs;
    watchdog.arm(
      limitMs,
      () => new BridgeError("timeout", `${path} did not answer within ${limitMs / 1000}s`, ctx),
    );
    try {
      const res = await this.#send(path, {
        ...init,
        timeoutMs: undefined,
        signal: watchdog.signal,
      });
      if (init.timeoutMs === undefined) {
        watchdog.arm(
          this.#idleMs,
          () =>
            new BridgeError(
              "timeout",
              `the answer to ${path} stalled for ${this.#idleMs / 1000}s`,
              {
                ...ctx,
                hint: "the model server stalled; raise LMBRIDGE_IDLE_TIMEOUT_S if it is just slow",
              },
            ),
        );
      }
      const text = await res.text();
      let body: unknown;
      try {
        body = JSON.parse(text);
      } catch {
        throw new BridgeError(
          "upstream_error",
          `the model server's answer to ${path} is not JSON: ${JSON.stringify(text.slice(0, 120))}`,
          ctx,
        );
      }
      const err = readErrorField(body);
      if (err) throw upstreamError(200, err, ctx);
      return body;
    } catch (err) {
      throw this.#mapStreamError(err, watchdog, ctx);
    } finally {
      watchdog.dispose();
    }
  }

  /** fetch with auth, mapping network failures and non-2xx answers. */
  async #send(
    path: string,
    init: {
      method: string;
      body?: unknown;
      signal?: AbortSignal;
      model?: string;
      timeoutMs?: number;
    },
  ): Promise<Response> {
    const ctx = { backend: this.url, model: init.model };
    const headers: Record<string, string> = { accept: "application/json, text/event-stream" };
    if (init.body !== undefined) headers["content-type"] = "application/json";
    if (this.#apiKey) headers.authorization = `Bearer ${this.#apiKey}`;
    const timeout = init.timeoutMs ? AbortSignal.timeout(timerMs(init.timeoutMs)) : undefined;
    const signal = timeout && init.signal
      ? AbortSignal.any([init.signal, timeout])
      : timeout ?? init.signal;
    let res: Response;
    try {
      res = await this.#fetch(`${this.url}${path}`, {
        method: init.method,
        headers,
        body: init.body === undefined ? undefined : JSON.stringify(init.body),
        signal,
      });
    } catch (err) {
      if (init.signal?.aborted) throw abortToError(init.signal.reason);
      if (timeout?.aborted) {
        throw new BridgeError("timeout", `${path} did not answer within ${init.timeoutMs}ms`, ctx);
      }
      // A malformed token makes fetch quote the header in its message: never pass it on.
      const key = this.#apiKey;
      const safe = key && err instanceof Error && err.message.includes(key)
        ? new Error(err.message.replaceAll(key, "[redacted]"))
        : err;
      throw unreachableError(safe, ctx);
    }
    if (!res.ok) {
      const text = await res.text().catch(() => "");
      let body: unknown;
      try {
        body = JSON.parse(text);
      } catch {
        body = undefined;
      }
      const err = readErrorField(body) ??
        { message: text.trim().slice(0, 300) || res.statusText || "no detail" };
      throw upstreamError(
        res.status,
        err,
        ctx,
        parseRetryAfter(res.headers.get("retry-after"), Date.now()),
      );
    }
    return res;
  }
}

/** Text of a Responses API `output` array. */
function outputText(response: Record<string, unknown>): string {
  if (typeof response.output_text === "string") return response.output_text;
  const output = Array.isArray(response.output) ? response.output : [];
  let text = "";
  for (const item of output as Record<string, unknown>[]) {
    if (item.type !== "message" || !Array.isArray(item.content)) continue;
    for (const part of item.content as Record<string, unknown>[]) {
      if (typeof part.text === "string") text += part.text;
    }
  }
  return text;
}

/**
 * One re-armable timer that aborts a request with a BridgeError: first the first-byte
 * timeout, then the idle timeout after each chunk. The caller's signal is combined in.
 */
class Watchdog {
  readonly #local = new AbortController();
  readonly signal: AbortSignal;
  readonly #caller?: AbortSignal;
  #timer?: ReturnType<typeof setTimeout>;
  fired?: BridgeError;

  constructor(caller?: AbortSignal) {
    this.#caller = caller;
    this.signal = caller ? AbortSignal.any([caller, this.#local.signal]) : this.#local.signal;
  }

  get callerAborted(): boolean {
    return this.#caller?.aborted ?? false;
  }

  get callerReason(): unknown {
    return this.#caller?.reason;
  }

  arm(ms: number, makeError: () => BridgeError) {
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => {
      this.fired = makeError();
      this.#local.abort(this.fired);
    }, timerMs(ms));
  }

  dispose() {
    clearTimeout(this.#timer);
  }
}
