/**
 * Runs one upstream call for a bound model: picks a backend that serves it (healthy and
 * least busy first, failing over from a dead one), waits for a slot under the per-backend and
 * per-model caps, honours the rate limit, loads the model once if it is not loaded, and
 * retries where SPEC §4 says it is safe.
 */
import { abortable } from "../util/async.ts";
import { BridgeError } from "../util/errors.ts";
import { RateLimiter, SlotLimiter } from "../util/limiter.ts";
import type { Logger } from "../util/log.ts";
import { silentLogger } from "../util/log.ts";
import { withRetry } from "../util/retry.ts";
import { TtlMap } from "../util/ttl_map.ts";
import type { ModelCatalog } from "./catalog.ts";
import type { BackendClient } from "./client.ts";
import type { ModelInfo } from "./types.ts";

export interface RouterLimits {
  /** Undefined: the loaded instance's `parallel`, else 4. */
  maxInflightPerModel?: number;
  maxInflightPerBackend: number;
  maxQueue: number;
  queueTimeoutMs: number;
  rps?: number;
  maxAttempts: number;
}

/** A request's model, resolved once at its start and kept to its end. */
export interface Binding {
  readonly model: string;
  readonly entries: readonly ModelInfo[];
}

export interface RunOptions {
  signal: AbortSignal;
  /** Epoch ms after which no retry starts. */
  deadline: number;
  /** Whether the call may be retried at all (false once output went to the client). */
  retry?: boolean;
  /** Reports waits the client may want to see (queue, model load, retry). */
  onStatus?: (message: string) => void;
  /** Skip the load-before-use step (embeddings, load_model itself). */
  skipLoad?: boolean;
}

export interface RunResult<T> {
  value: T;
  backend: string;
  attempts: number;
}

interface BackendHealth {
  failures: number;
  cooldownUntil: number;
  lastError?: string;
}

const STATUS_RETRYABLE = new Set([429, 502, 503, 504]);
/** First cooldown of a backend that failed to connect; doubles per failure up to 60 s. */
const COOLDOWN_BASE_MS = 5_000;

export class ModelRouter {
  readonly #clients: Map<string, BackendClient>;
  readonly #catalog: ModelCatalog;
  readonly #limits: RouterLimits;
  readonly #limiter: SlotLimiter;
  readonly #rates = new Map<string, RateLimiter>();
  readonly #health = new Map<string, BackendHealth>();
  readonly #parallel = new Map<string, number>();
  readonly #loads = new Map<string, Promise<void>>();
  readonly #recentlyLoaded: TtlMap<string, true>;
  readonly #now: () => number;
  readonly #log: Logger;
  readonly stats = { calls: 0, retries: 0, failovers: 0, loads: 0 };

  constructor(options: {
    clients: readonly BackendClient[];
    catalog: ModelCatalog;
    limits: RouterLimits;
    now?: () => number;
    log?: Logger;
  }) {
    this.#clients = new Map(options.clients.map((c) => [c.url, c]));
    this.#catalog = options.catalog;
    this.#limits = options.limits;
    this.#now = options.now ?? Date.now;
    this.#log = options.log ?? silentLogger;
    this.#recentlyLoaded = new TtlMap({ ttlMs: 60_000, maxSize: 1024, now: this.#now });
    this.#limiter = new SlotLimiter({
      capacityOf: (key) => this.#capacityOf(key),
      maxQueue: options.limits.maxQueue,
      queueTimeoutMs: options.limits.queueTimeoutMs,
    });
    for (const url of this.#clients.keys()) {
      this.#rates.set(url, new RateLimiter(options.limits.rps));
    }
  }

  /** Resolves a request's model once; the binding never changes afterwards. */
  async bind(
    name: string | undefined,
    options: { signal?: AbortSignal; type?: "generation" | "embedding" } = {},
  ): Promise<Binding> {
    const resolved = await this.#catalog.resolve(name, options);
    for (const e of resolved.entries) {
      if (e.parallel) this.#parallel.set(modelKey(e.backend, e.id), e.parallel);
    }
    return Object.freeze({ model: resolved.id, entries: Object.freeze([...resolved.entries]) });
  }

  /** Seconds left of each backend's cooldown (0 when healthy). */
  cooldowns(): Record<string, number> {
    const now = this.#now();
    const out: Record<string, number> = {};
    for (const url of this.#clients.keys()) {
      const h = this.#health.get(url);
      out[url] = h && h.cooldownUntil > now ? Math.ceil((h.cooldownUntil - now) / 1000) : 0;
    }
    return out;
  }

  /** Limiter state for bridge_stats. */
  snapshot() {
    return { ...this.#limiter.snapshot(), ...this.stats };
  }

  /** Runs `call` on a backend serving the bound model. */
  async run<T>(
    binding: Binding,
    options: RunOptions,
    call: (client: BackendClient, attempt: number) => Promise<T>,
  ): Promise<RunResult<T>> {
    const tried = new Set<string>();
    let lastError: BridgeError | undefined;
    this.stats.calls++;
    while (true) {
      const entry = this.#choose(binding, tried);
      if (!entry) {
        throw lastError ??
          new BridgeError("model_not_found", `no backend serves ${binding.model}`, {
            model: binding.model,
          });
      }
      const client = this.#clients.get(entry.backend)!;
      tried.add(entry.backend);
      let attempts = 0;
      const keys = [backendKey(entry.backend), modelKey(entry.backend, entry.id)];
      const queuedBefore = this.#limiter.snapshot().queued;
      if (this.#limiter.inFlight(keys[1]) >= this.#capacityOf(keys[1]) || queuedBefore > 0) {
        options.onStatus?.(`waiting for a free slot on ${binding.model} (${queuedBefore} queued)`);
      }
      const slot = await this.#limiter.acquire(keys, { signal: options.signal }).catch((err) => {
        throw err instanceof BridgeError
          ? err.with({ model: binding.model, backend: entry.backend })
          : err;
      });
      try {
        await this.#rates.get(entry.backend)!.take(options.signal);
        if (!options.skipLoad) await this.#ensureLoaded(client, entry, options);
        const value = await withRetry((attempt) => {
          attempts = attempt;
          return call(client, attempt);
        }, {
          maxAttempts: options.retry === false ? 1 : this.#limits.maxAttempts,
          signal: options.signal,
          deadline: options.deadline,
          classify: (err) => {
            // With another backend to go to, fail over at once instead of retrying here.
            const untried = binding.entries.some((e) => !tried.has(e.backend));
            if (untried && err instanceof BridgeError && err.code === "backend_unreachable") {
              return { retry: false };
            }
            return classifyForRetry(err);
          },
          onRetry: (err, attempt, waitMs) => {
            this.stats.retries++;
            const code = err instanceof BridgeError ? err.code : "error";
            options.onStatus?.(
              `attempt ${attempt} failed (${code}); retrying in ${Math.round(waitMs)} ms`,
            );
            this.#log.warn("retrying upstream call", {
              backend: entry.backend,
              model: binding.model,
              attempt,
              code,
              wait_ms: Math.round(waitMs),
            });
          },
        });
        this.#markUp(entry.backend);
        return { value, backend: entry.backend, attempts };
      } catch (err) {
        const error = err instanceof BridgeError ? err : toError(err);
        if (error.code === "backend_unreachable") {
          this.#markDown(entry.backend, error.message);
          lastError = error.with({ model: binding.model });
          if (binding.entries.some((e) => !tried.has(e.backend))) {
            this.stats.failovers++;
            options.onStatus?.(`${entry.backend} is unreachable; trying another backend`);
            continue;
          }
          throw lastError;
        }
        throw error.with({ model: error.context.model ?? binding.model, backend: entry.backend });
      } finally {
        slot.release();
      }
    }
  }

  /** Healthy backends first, then the least busy; undefined when all were tried. */
  #choose(binding: Binding, tried: Set<string>): ModelInfo | undefined {
    const now = this.#now();
    const candidates = binding.entries.filter((e) =>
      !tried.has(e.backend) && this.#clients.has(e.backend)
    );
    if (candidates.length === 0) return undefined;
    const cooldown = (url: string) =>
      Math.max(0, (this.#health.get(url)?.cooldownUntil ?? 0) - now);
    return [...candidates].sort((a, b) =>
      (cooldown(a.backend) > 0 ? 1 : 0) - (cooldown(b.backend) > 0 ? 1 : 0) ||
      cooldown(a.backend) - cooldown(b.backend) ||
      this.#busy(a) - this.#busy(b)
    )[0];
  }

  #busy(entry: ModelInfo): number {
    return this.#limiter.inFlight(backendKey(entry.backend)) +
      this.#limiter.inFlight(modelKey(entry.backend, entry.id));
  }

  #capacityOf(key: string): number {
    if (key.startsWith("backend:")) return this.#limits.maxInflightPerBackend;
    return this.#limits.maxInflightPerModel ?? this.#parallel.get(key) ?? 4;
  }

  #markDown(url: string, message: string) {
    const h = this.#health.get(url) ?? { failures: 0, cooldownUntil: 0 };
    h.failures++;
    h.cooldownUntil = this.#now() + Math.min(COOLDOWN_BASE_MS * 2 ** (h.failures - 1), 60_000);
    h.lastError = message;
    this.#health.set(url, h);
    this.#catalog.invalidate(url);
  }

  #markUp(url: string) {
    this.#health.delete(url);
  }

  /**
   * One load per model: LM Studio would start a JIT load for every concurrent request
   * (a known race), so lmbridge loads a model that is not loaded once, and every other
   * request for it waits on that same load.
   */
  async #ensureLoaded(client: BackendClient, entry: ModelInfo, options: RunOptions) {
    if (entry.loaded || entry.type === "embedding") return;
    const key = modelKey(entry.backend, entry.id);
    if (this.#recentlyLoaded.get(key)) return;
    if ((await client.detectKind(options.signal)) !== "lmstudio") return;
    let load = this.#loads.get(key);
    if (!load) {
      this.stats.loads++;
      this.#log.info("loading model", { backend: entry.backend, model: entry.id });
      // The load is shared: one caller's cancel must not abort it for the others.
      load = client.loadModel(entry.id, { signal: AbortSignal.timeout(15 * 60_000) }).then(() => {
        this.#recentlyLoaded.set(key, true);
        this.#catalog.invalidate(entry.backend);
      }).finally(() => this.#loads.delete(key));
      this.#loads.set(key, load);
    }
    const started = this.#now();
    options.onStatus?.(`loading model ${entry.id} on ${entry.backend}`);
    const tick = setInterval(() => {
      options.onStatus?.(
        `loading model ${entry.id}: ${Math.round((this.#now() - started) / 1000)} s`,
      );
    }, 1000);
    try {
      await abortable(load, options.signal);
      options.onStatus?.(`model ${entry.id} loaded`);
    } finally {
      clearInterval(tick);
    }
  }
}

/** SPEC §4: retry connection failures, 429, 502, 503, 504; never once output went out. */
export function classifyForRetry(err: unknown): { retry: boolean; afterMs?: number } {
  if (!(err instanceof BridgeError)) return { retry: false };
  if (err.context.partialText) return { retry: false };
  const details = err.context.details ?? {};
  if (err.code === "backend_unreachable" && details.phase === "connect") return { retry: true };
  const status = err.context.status;
  if (status !== undefined && STATUS_RETRYABLE.has(status)) {
    const afterMs = typeof details.retryAfterMs === "number" ? details.retryAfterMs : undefined;
    return { retry: true, afterMs };
  }
  return { retry: false };
}

function toError(err: unknown): BridgeError {
  return new BridgeError("upstream_error", err instanceof Error ? err.message : String(err), {
    cause: err,
  });
}

function backendKey(url: string): string {
  return `backend:${url}`;
}

function modelKey(url: string, id: string): string {
  return `model:${url}|${id}`;
}
