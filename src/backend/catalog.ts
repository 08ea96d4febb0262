/**
 * The model catalogue over every backend: what each serves, cached with a TTL (one refresh
 * at a time per backend), the default model, and resolution of a `model` argument to an id
 * plus the backends that serve it.
 */
import { abortable } from "../util/async.ts";
import { BridgeError, toBridgeError } from "../util/errors.ts";
import { BackendHealth } from "./health.ts";
import { TtlMap } from "../util/ttl_map.ts";
import type { BackendClient } from "./client.ts";
import { matchModelId } from "./model_names.ts";
import type { ModelInfo } from "./types.ts";

/** A refresh asked for within this time of the last fetch uses that fetch. */
const REFRESH_MIN_MS = 1_000;

export interface ModelCatalogOptions {
  clients: readonly BackendClient[];
  /** Freshness of a backend's model list. */
  ttlMs: number;
  /** Configured default model (a name to resolve), if any. */
  defaultModel?: string;
  /** Shared with the router: cooldowns of failing backends. */
  health?: BackendHealth;
  now?: () => number;
}

/** A model name resolved to one id and the backends that have it. */
export interface ResolvedModel {
  id: string;
  /** Entries for this id, one per backend that lists it. */
  entries: ModelInfo[];
}

/** Where a backend stood at its last listing. */
export interface BackendListing {
  url: string;
  models: ModelInfo[];
  error?: BridgeError;
  /** The listing is the last good one: refreshing it failed (not because it is down). */
  stale?: boolean;
}

export class ModelCatalog {
  readonly #clients: readonly BackendClient[];
  readonly #health: BackendHealth;
  readonly #cache: TtlMap<string, ModelInfo[]>;
  /** The last good listing of each backend (one entry per configured backend), served while
   * a fresh one is fetched, or when fetching fails without the backend being down. */
  readonly #lastGood = new Map<string, { models: ModelInfo[]; at: number }>();
  /** Bumped by invalidate: a fetch started before it must not store its (older) answer. */
  readonly #generation = new Map<string, number>();
  readonly #staleMs: number;
  /** One fetch at a time per backend, shared by every caller (misses and refreshes). */
  readonly #inflight = new Map<string, Promise<ModelInfo[]>>();
  readonly #fetchedAt = new Map<string, number>();
  readonly #now: () => number;
  #defaultModel?: string;

  constructor(options: ModelCatalogOptions) {
    this.#clients = options.clients;
    this.#health = options.health ?? new BackendHealth();
    this.#now = options.now ?? Date.now;
    this.#cache = new TtlMap({
      ttlMs: options.ttlMs,
      maxSize: Math.max(8, options.clients.length),
      now: this.#now,
    });
    this.#defaultModel = options.defaultModel;
    // A last good listing is served for at most this long after it was fetched.
    this.#staleMs = Math.max(2 * options.ttlMs, 60_000);
  }

  /** The configured or set default model name (not resolved). */
  get defaultModel(): string | undefined {
    return this.#defaultModel;
  }

  /** Sets the default for requests that start afterwards. */
  setDefaultModel(id: string | undefined) {
    this.#defaultModel = id;
  }

  /** Cache statistics for bridge_stats. */
  cacheStats() {
    return this.#cache.stats();
  }

  /** Forgets listings (after a load or unload), so the next lookup sees the change. */
  invalidate(backend?: string) {
    for (const url of backend ? [backend] : this.#clients.map((c) => c.url)) {
      this.#cache.delete(url);
      this.#lastGood.delete(url);
      this.#inflight.delete(url);
      this.#generation.set(url, (this.#generation.get(url) ?? 0) + 1);
    }
  }

  /**
   * Every backend's listing; a backend that fails is reported, not thrown. `refresh` asks
   * each backend again (at most once a second, shared with concurrent refreshes).
   */
  async listings(options: { signal?: AbortSignal; refresh?: boolean } = {}): Promise<
    BackendListing[]
  > {
    return await Promise.all(this.#clients.map((client) => this.#listing(client, options)));
  }

  async #listing(
    client: BackendClient,
    options: { signal?: AbortSignal; refresh?: boolean },
  ): Promise<BackendListing> {
    const url = client.url;
    const recent = this.#now() - (this.#fetchedAt.get(url) ?? -Infinity) < REFRESH_MIN_MS;
    const fresh = this.#cache.get(url);
    if (fresh && (!options.refresh || recent)) return { url, models: fresh };
    const good = this.#lastGood.get(url);
    const last = good && this.#now() - good.at < this.#staleMs ? good.models : undefined;
    // A server that hung is not waited on again while it cools down; one that refused the
    // connection is asked again (that costs a millisecond, and it may be back).
    const hung = this.#health.lastError(url);
    if (hung?.code === "timeout") {
      return last ? { url, models: last, stale: true } : { url, models: [], error: hung };
    }
    const fetching = this.#fetch(client);
    if (last && !options.refresh) {
      // Serve the last listing at once and refresh behind it.
      fetching.catch(() => {});
      return { url, models: last, stale: true };
    }
    try {
      return { url, models: await abortable(fetching, options.signal) };
    } catch (err) {
      if (options.signal?.aborted) throw err;
      const error = toBridgeError(err).with({ backend: url });
      return last && error.code !== "backend_unreachable"
        ? { url, models: last, stale: true }
        : { url, models: [], error };
    }
  }

  /** Asks `client` for its models, once at a time; failures to reach it start a cooldown. */
  #fetch(client: BackendClient): Promise<ModelInfo[]> {
    const url = client.url;
    let fetching = this.#inflight.get(url);
    if (fetching) return fetching;
    const generation = this.#generation.get(url) ?? 0;
    // Not tied to any caller's signal: it is shared, and bounded by the client's timeouts.
    fetching = client.listModels().then((models) => {
      // Started before a load or unload: its answer is already out of date; not stored.
      if ((this.#generation.get(url) ?? 0) !== generation) return models;
      this.#cache.set(url, models);
      this.#lastGood.set(url, { models, at: this.#now() });
      this.#health.markUp(url);
      return models;
    }, (err) => {
      const error = toBridgeError(err).with({ backend: url });
      if (error.code === "backend_unreachable" || error.code === "timeout") {
        this.#health.markDown(url, error);
      }
      // A dead backend's models must not be routed to from memory.
      if (error.code === "backend_unreachable") this.#lastGood.delete(url);
      throw error;
    }).finally(() => {
      this.#fetchedAt.set(url, this.#now());
      if (this.#inflight.get(url) === fetching) this.#inflight.delete(url);
    });
    this.#inflight.set(url, fetching);
    return fetching;
  }

  /** All models on all reachable backends. Throws when no backend answered. */
  async models(options: { signal?: AbortSignal; refresh?: boolean } = {}): Promise<ModelInfo[]> {
    const listings = await this.listings(options);
    const ok = listings.filter((l) => !l.error);
    if (ok.length === 0) {
      const first = listings[0]?.error;
      throw first ??
        new BridgeError("backend_unreachable", "no backend configured", {
          hint: "set LMBRIDGE_BACKENDS or --backend",
        });
    }
    return ok.flatMap((l) => l.models);
  }

  /**
   * Resolves `name` (or the default model when omitted) to one id and its backends.
   * Without a default, the first loaded LLM is the default.
   */
  async resolve(
    name: string | undefined,
    options: { signal?: AbortSignal; type?: "generation" | "embedding" } = {},
  ): Promise<ResolvedModel> {
    let models = await this.models(options);
    const wanted = name ?? this.#defaultModel;
    if (wanted === undefined) {
      const kinds = options.type === "embedding" ? ["embedding"] : ["llm", "vlm"];
      // An embedding model is cheap to JIT-load: any listed one will do when none is loaded.
      const loaded = models.find((m) => m.loaded && kinds.includes(m.type)) ??
        (options.type === "embedding" ? models.find((m) => m.type === "embedding") : undefined);
      if (!loaded) {
        throw new BridgeError(
          "model_not_loaded",
          options.type === "embedding" ? "no embedding model is loaded" : "no model is loaded",
          {
            hint:
              "pass `model`, set DEFAULT_MODEL, or load one with the load_model tool or `lms load <model>`",
          },
        );
      }
      return this.#entries(loaded.id, models);
    }
    let id: string;
    try {
      id = matchModelId(wanted, unique(models.map((m) => m.id)));
    } catch (err) {
      // The listing may be stale (a model downloaded since): look once more.
      models = await this.models({ ...options, refresh: true });
      try {
        id = matchModelId(wanted, unique(models.map((m) => m.id)));
      } catch {
        throw err;
      }
    }
    return this.#entries(id, models);
  }

  #entries(id: string, models: ModelInfo[]): ResolvedModel {
    return { id, entries: models.filter((m) => m.id === id) };
  }
}

function unique<T>(xs: T[]): T[] {
  return [...new Set(xs)];
}
