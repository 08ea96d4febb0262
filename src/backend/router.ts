/**
 * Runs one upstream call for a bound model: picks a backend that serves it (healthy and
 * least busy first, failing over from a dead one), waits for a slot under the per-backend and
 * per-model caps, honours the rate limit, loads the model once if it is not loaded, and
 * retries where SPEC §4 says it is safe.
 */
import { abortable } from "../util/async.ts";
import { abortToError, BridgeError, toBridgeError } from "../util/errors.ts";
import { RateLimiter, SlotLimiter } from "../util/limiter.ts";
import type { Logger } from "../util/log.ts";
import { silentLogger } from "../util/log.ts";
import { withRetry } from "../util/retry.ts";
import { TtlMap } from "../util/ttl_map.ts";
import type { ModelCatalog } from "./catalog.ts";
import { BackendHealth } from "./health.ts";
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

const STATUS_RETRYABLE = new Set([429, 502, 503, 504]);

export class ModelRouter {
  readonly #clients: Map<string, BackendClient>;
  readonly #catalog: ModelCatalog;
  readonly #limits: RouterLimits;
  readonly #limiter: SlotLimiter;
  readonly #rates = new Map<string, RateLimiter>();
  readonly #health: BackendHealth;
  readonly #parallel = new Map<string, number>();
  readonly #loads = new Map<string, SharedLoad>();
  readonly #recentlyLoaded: TtlMap<string, true>;
  readonly #now: () => number;
  readonly #log: Logger;
  readonly stats = { calls: 0, retries: 0, failovers: 0, loads: 0 };

  constructor(options: {
    clients: readonly BackendClient[];
    catalog: ModelCatalog;
    limits: RouterLimits;
    /** Shared with the catalogue. */
    health?: BackendHealth;
    now?: () => number;
    log?: Logger;
  }) {
    this.#health = options.health ?? new BackendHealth();
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
    let changed = false;
    for (const e of resolved.entries) {
      const key = modelKey(e.backend, e.id);
      if (e.parallel && this.#parallel.get(key) !== e.parallel) {
        this.#parallel.set(key, e.parallel);
        changed = true;
      }
    }
    // A model loaded with more parallel slots lets queued requests go now.
    if (changed) this.#limiter.recheck();
    return Object.freeze({ model: resolved.id, entries: Object.freeze([...resolved.entries]) });
  }

  /** Seconds left of each backend's cooldown (0 when healthy). */
  cooldowns(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const url of this.#clients.keys()) {
      out[url] = Math.ceil(this.#health.cooldownMs(url) / 1000);
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
        this.#health.markUp(entry.backend);
        return { value, backend: entry.backend, attempts };
      } catch (err) {
        // A cancel or deadline keeps its code, and the text already generated.
        const error = options.signal.aborted
          ? abortToError(options.signal.reason).with({
            partialText: toBridgeError(err).context.partialText,
          })
          : toBridgeError(err);
        if (error.code === "backend_unreachable") {
          this.#health.markDown(entry.backend, error);
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
    const candidates = binding.entries.filter((e) =>
      !tried.has(e.backend) && this.#clients.has(e.backend)
    );
    if (candidates.length === 0) return undefined;
    const cooldown = (url: string) => this.#health.cooldownMs(url);
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

  /**
   * Loads the bound model (LM Studio's native API) on the healthiest backend that lists it,
   * sharing the load with any other request loading it. An already loaded model is left as
   * it is unless a context length is asked for.
   */
  async loadModel(
    binding: Binding,
    options: RunOptions & { contextLength?: number; ttlS?: number },
  ): Promise<{ backend: string; instanceId: string; loadTimeS?: number; alreadyLoaded: boolean }> {
    const entry = this.#choose(binding, new Set());
    if (!entry) {
      throw new BridgeError("model_not_found", `no backend serves ${binding.model}`, {
        model: binding.model,
      });
    }
    const client = this.#clients.get(entry.backend)!;
    if (entry.loaded && !options.contextLength && entry.instanceIds.length) {
      return { backend: entry.backend, instanceId: entry.instanceIds[0], alreadyLoaded: true };
    }
    try {
      const loaded = await this.#waitForLoad(client, entry, options);
      return { backend: entry.backend, ...loaded, alreadyLoaded: false };
    } catch (err) {
      throw (options.signal.aborted ? abortToError(options.signal.reason) : toBridgeError(err))
        .with({ model: binding.model, backend: entry.backend });
    }
  }

  /**
   * One load per model: LM Studio would start a JIT load for every concurrent request
   * (a known race), so lmbridge loads a model that is not loaded once, and every other
   * request for it waits on that same load.
   */
  async #ensureLoaded(client: BackendClient, entry: ModelInfo, options: RunOptions) {
    if (entry.loaded || entry.type === "embedding") return;
    if (this.#recentlyLoaded.get(modelKey(entry.backend, entry.id))) return;
    if ((await client.detectKind(options.signal)) !== "lmstudio") return;
    await this.#waitForLoad(client, entry, options);
  }

  /** Joins (or starts) the shared load of `entry`, reporting progress while it runs. */
  async #waitForLoad(
    client: BackendClient,
    entry: ModelInfo,
    options: RunOptions & { contextLength?: number; ttlS?: number },
  ): Promise<{ instanceId: string; loadTimeS?: number }> {
    // One load per model, whoever asks (a request's automatic load or load_model).
    const key = modelKey(entry.backend, entry.id);
    let load = this.#loads.get(key);
    if (!load) {
      this.stats.loads++;
      this.#log.info("loading model", { backend: entry.backend, model: entry.id });
      const controller = new AbortController();
      const shared: SharedLoad = {
        waiters: 0,
        controller,
        promise: client.loadModel(entry.id, {
          contextLength: options.contextLength,
          ttlS: options.ttlS,
          signal: AbortSignal.any([controller.signal, AbortSignal.timeout(15 * 60_000)]),
        }).then((loaded) => {
          this.#recentlyLoaded.set(key, true);
          this.#catalog.invalidate(entry.backend);
          return loaded;
        }).finally(() => this.#loads.delete(key)),
      };
      shared.promise.catch(() => {});
      this.#loads.set(key, shared);
      load = shared;
    }
    load.waiters++;
    const started = this.#now();
    options.onStatus?.(`loading model ${entry.id} on ${entry.backend}`);
    const tick = setInterval(() => {
      options.onStatus?.(
        `loading model ${entry.id}: ${Math.round((this.#now() - started) / 1000)} s`,
      );
    }, 1000);
    try {
      const loaded = await abortable(load.promise, options.signal);
      options.onStatus?.(`model ${entry.id} loaded`);
      return loaded;
    } finally {
      clearInterval(tick);
      // The load is shared: it stops only when every request waiting for it has gone.
      if (--load.waiters === 0 && options.signal.aborted) {
        load.controller.abort(options.signal.reason);
      }
    }
  }
}

/** A model load that several requests wait on. */
interface SharedLoad {
  promise: Promise<{ instanceId: string; loadTimeS?: number }>;
  controller: AbortController;
  waiters: number;
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

function backendKey(url: string): string {
  return `backend:${url}`;
}

function modelKey(url: string, id: string): string {
  return `model:${url}|${id}`;
}
