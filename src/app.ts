/**
 * The objects shared by every request, created once from the configuration: backend
 * clients, the model catalogue, the router with its limits, statistics, conversation
 * histories, and (for the agent) the downstream session pool and the job store.
 */
import { BackendClient } from "./backend/client.ts";
import { ModelCatalog } from "./backend/catalog.ts";
import { BackendHealth } from "./backend/health.ts";
import { ModelRouter } from "./backend/router.ts";
import type { ChatMessage } from "./backend/types.ts";
import type { Config } from "./config.ts";
import { BridgeStats } from "./server/stats.ts";
import type { Logger } from "./util/log.ts";
import { TtlMap } from "./util/ttl_map.ts";

/** A conversation lmbridge keeps for `create_response` on backends without state. */
export interface Conversation {
  model: string;
  backend: string;
  /** "local": history below; "native": the backend's own response id chain. */
  mode: "local" | "native";
  messages: ChatMessage[];
}

export interface App {
  readonly config: Config;
  readonly log: Logger;
  readonly clients: readonly BackendClient[];
  readonly catalog: ModelCatalog;
  /** Cooldowns of failing backends (shared by catalogue and router). */
  readonly health: BackendHealth;
  readonly router: ModelRouter;
  readonly stats: BridgeStats;
  readonly conversations: TtlMap<string, Conversation>;
  /** Backends found to lack the Responses API: create_response keeps history for them. */
  readonly responsesUnsupported: Set<string>;
  /** Aborted when lmbridge shuts down: every request stops. */
  readonly shutdown: AbortController;
}

export interface CreateAppOptions {
  fetch?: typeof fetch;
}

/** Wires the shared objects from a configuration. */
export function createApp(config: Config, log: Logger, options: CreateAppOptions = {}): App {
  const clients = config.backends.map((url) =>
    new BackendClient({
      baseUrl: url,
      apiKey: config.apiKey,
      fetch: options.fetch,
      firstByteTimeoutMs: config.firstByteTimeoutS * 1000,
      idleTimeoutMs: config.idleTimeoutS * 1000,
    })
  );
  // Cooldowns of failing backends, seen by both the catalogue and the router.
  const health = new BackendHealth();
  const catalog = new ModelCatalog({
    clients,
    health,
    ttlMs: config.cacheTtlS * 1000,
    defaultModel: config.defaultModel,
  });
  const router = new ModelRouter({
    clients,
    catalog,
    health,
    log,
    limits: {
      maxInflightPerModel: config.maxInflightPerModel,
      maxInflightPerBackend: config.maxInflightPerBackend,
      maxQueue: config.maxQueue,
      queueTimeoutMs: config.queueTimeoutS * 1000,
      rps: config.rps,
      maxAttempts: config.maxAttempts,
    },
  });
  return {
    config,
    log,
    clients,
    catalog,
    health,
    router,
    stats: new BridgeStats(),
    // At most 2000 × 48k characters of history (trimHistory), for 6 hours.
    conversations: new TtlMap({ ttlMs: 6 * 3600_000, maxSize: 2_000 }),
    responsesUnsupported: new Set(),
    shutdown: new AbortController(),
  };
}
