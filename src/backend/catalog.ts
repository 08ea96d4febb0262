/**
 * The model catalogue over every backend: what each serves, cached with a TTL (one refresh
 * at a time per backend), the default model, and resolution of a `model` argument to an id
 * plus the backends that serve it.
 */
import { BridgeError } from "../util/errors.ts";
import { TtlMap } from "../util/ttl_map.ts";
import type { BackendClient } from "./client.ts";
import { matchModelId } from "./model_names.ts";
import type { ModelInfo } from "./types.ts";

/** How long a stale listing is served before the backend is asked again. */
const STALE_RETRY_MS = 5_000;

export interface ModelCatalogOptions {
  clients: readonly BackendClient[];
  /** Freshness of a backend's model list. */
  ttlMs: number;
  /** Configured default model (a name to resolve), if any. */
  defaultModel?: string;
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
  readonly #cache: TtlMap<string, ModelInfo[]>;
  readonly #errors = new Map<string, BridgeError>();
  /** The last good listing of each backend (one entry per configured backend), served when a
   * refresh fails so a busy or briefly hung server does not make every model unknown. */
  readonly #lastGood = new Map<string, ModelInfo[]>();
  #defaultModel?: string;

  constructor(options: ModelCatalogOptions) {
    this.#clients = options.clients;
    this.#cache = new TtlMap({
      ttlMs: options.ttlMs,
      maxSize: Math.max(8, options.clients.length),
    });
    this.#defaultModel = options.defaultModel;
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

  /** Forgets cached listings (after a load or unload). */
  invalidate(backend?: string) {
    if (backend) this.#cache.delete(backend);
    else this.#cache.clear();
  }

  /** Every backend's listing; a backend that fails is reported, not thrown. */
  async listings(options: { signal?: AbortSignal; refresh?: boolean } = {}): Promise<
    BackendListing[]
  > {
    if (options.refresh) this.#cache.clear();
    return await Promise.all(this.#clients.map(async (client) => {
      try {
        const models = await this.#cache.getOrLoad(
          client.url,
          (signal) => client.listModels(signal),
          { signal: options.signal },
        );
        this.#errors.delete(client.url);
        this.#lastGood.set(client.url, models);
        return { url: client.url, models };
      } catch (err) {
        if (options.signal?.aborted) throw err;
        const error = err instanceof BridgeError
          ? err
          : new BridgeError("upstream_error", String(err), { backend: client.url });
        this.#errors.set(client.url, error);
        // A dead backend's models are not served from memory: routing must skip it.
        const stale = error.code === "backend_unreachable"
          ? undefined
          : this.#lastGood.get(client.url);
        if (stale) {
          // Kept briefly, so a hung server is not asked again by every request.
          this.#cache.set(client.url, stale, STALE_RETRY_MS);
          return { url: client.url, models: stale, stale: true };
        }
        return { url: client.url, models: [], error };
      }
    }));
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
