/**
 * Tools about backends and models: health_check, list_models, get_current_model,
 * load_model, unload_model, set_default_model, bridge_stats.
 */
import { z } from "zod";
import type { App } from "../app.ts";
import { matchModelId } from "../backend/model_names.ts";
import type { ModelInfo } from "../backend/types.ts";
import { BridgeError } from "../util/errors.ts";
import { defineTool, type ToolDefinition } from "./registry.ts";

const modelArg = z.string().trim().min(1, "must not be empty").max(512, "is too long");

const capabilitiesShape = z.object({
  tool_use: z.boolean(),
  vision: z.boolean(),
  reasoning: z.boolean(),
});

const modelShape = z.object({
  id: z.string(),
  type: z.enum(["llm", "vlm", "embedding"]),
  loaded: z.boolean(),
  backend: z.string(),
  context_length: z.number().nullable(),
  capabilities: capabilitiesShape,
});

function modelRow(m: ModelInfo) {
  return {
    id: m.id,
    type: m.type,
    loaded: m.loaded,
    backend: m.backend,
    context_length: m.contextLength ?? null,
    capabilities: {
      tool_use: m.capabilities.toolUse,
      vision: m.capabilities.vision,
      reasoning: m.capabilities.reasoning,
    },
  };
}

/** Extra sources of health information (the agent's MCP servers). */
export interface HealthExtras {
  mcpServerCount?: (signal: AbortSignal) => Promise<number>;
  /** Sizes of the background jobs kept in memory, for bridge_stats. */
  jobCacheStats?: () => { size: number; maxSize: number };
  /** Open MCP sessions (each with its cached tool list), at most one per server. */
  sessionStats?: () => { size: number; maxSize: number };
}

export function modelTools(app: App, extras: HealthExtras = {}): ToolDefinition[] {
  const healthCheck = defineTool({
    name: "health_check",
    title: "Health check",
    description:
      "Checks every model server lmbridge is configured with: reachable or not, latency, server kind (lmstudio / ollama / llamacpp / openai), loaded models, cooldown; and how many MCP servers the agent can use.",
    input: z.object({}),
    output: z.object({
      backends: z.array(z.object({
        url: z.string(),
        kind: z.enum(["lmstudio", "ollama", "llamacpp", "openai"]).nullable(),
        reachable: z.boolean(),
        latency_ms: z.number(),
        loaded_models: z.array(z.string()),
        cooldown_s: z.number(),
        error: z.string().optional(),
      })),
      mcp_servers: z.number(),
    }),
    handler: async (_args, ctx) => {
      const backends = await Promise.all(app.clients.map(async (client) => {
        const probe = await client.probe(ctx.signal);
        // What the probe found decides the cooldown: usable again at once, or cooling down.
        if (probe.reachable) app.health.markUp(client.url);
        else if (probe.error) app.health.markDown(client.url, probe.error);
        let loaded: string[] = [];
        if (probe.reachable) {
          try {
            loaded = (await client.listModels(ctx.signal)).filter((m) => m.loaded).map((m) => m.id);
          } catch {
            loaded = [];
          }
        }
        return {
          url: client.url,
          kind: probe.kind ?? null,
          reachable: probe.reachable,
          latency_ms: probe.latencyMs,
          loaded_models: loaded,
          cooldown_s: app.router.cooldowns()[client.url] ?? 0,
          ...(probe.error ? { error: probe.error.format() } : {}),
        };
      }));
      const mcp = extras.mcpServerCount
        ? await extras.mcpServerCount(ctx.signal).catch(() => 0)
        : 0;
      const lines = backends.map((b) =>
        b.reachable
          ? `✓ ${b.url} (${b.kind}) answered in ${b.latency_ms} ms; loaded: ${
            b.loaded_models.join(", ") || "none"
          }${b.cooldown_s ? `; cooling down ${b.cooldown_s}s` : ""}`
          : `✗ ${b.url} unreachable: ${b.error ?? "no answer"}`
      );
      lines.push(`MCP servers for the agent: ${mcp}`);
      return { text: lines.join("\n"), structured: { backends, mcp_servers: mcp } };
    },
  });

  const listModels = defineTool({
    name: "list_models",
    title: "List models",
    description:
      "Lists every model on every backend: id, type (llm / vlm / embedding), loaded or not, context length, tool-use / vision / reasoning capability, and the backend that serves it.",
    input: z.object({
      refresh: z.boolean().optional().describe("bypass the catalogue cache"),
    }),
    output: z.object({ models: z.array(modelShape), errors: z.array(z.string()).optional() }),
    handler: async (args, ctx) => {
      const listings = await app.catalog.listings({ signal: ctx.signal, refresh: args.refresh });
      const errors = listings.filter((l) => l.error).map((l) => l.error!.format());
      if (errors.length === listings.length) throw listings[0].error!;
      const models = listings.flatMap((l) => l.models).map(modelRow);
      const lines = models.map((m) =>
        `${m.loaded ? "●" : "○"} ${m.id}  [${m.type}${
          m.context_length ? `, ctx ${m.context_length}` : ""
        }${m.capabilities.tool_use ? ", tools" : ""}${
          m.capabilities.vision ? ", vision" : ""
        }]  ${m.backend}`
      );
      return {
        text: (lines.join("\n") || "No models found.") +
          (errors.length ? `\n\nUnavailable backends:\n${errors.join("\n")}` : ""),
        structured: { models, ...(errors.length ? { errors } : {}) },
      };
    },
  });

  const getCurrentModel = defineTool({
    name: "get_current_model",
    title: "Current model",
    description:
      "The default model and the loaded models, read from the catalogue (no generation is run).",
    input: z.object({}),
    output: z.object({
      default_model: z.string().nullable(),
      loaded: z.array(z.object({ id: z.string(), backend: z.string() })),
    }),
    handler: async (_args, ctx) => {
      const models = await app.catalog.models({ signal: ctx.signal });
      const loaded = models.filter((m) => m.loaded).map((m) => ({ id: m.id, backend: m.backend }));
      let defaultModel: string | null = null;
      try {
        defaultModel = (await app.catalog.resolve(undefined, { signal: ctx.signal })).id;
      } catch {
        defaultModel = app.catalog.defaultModel ?? null;
      }
      return {
        text: `Default model: ${defaultModel ?? "none (no model loaded)"}\nLoaded: ${
          loaded.map((l) => `${l.id} (${l.backend})`).join(", ") || "none"
        }`,
        structured: { default_model: defaultModel, loaded },
      };
    },
  });

  const loadModel = defineTool({
    name: "load_model",
    title: "Load a model",
    description:
      "Loads a model on an LM Studio backend through its native API (optionally with a context length and an idle TTL). Other servers answer `unsupported`.",
    input: z.object({
      model: modelArg,
      context_length: z.number().int().positive().max(10_000_000).optional(),
      ttl_s: z.number().int().positive().optional().describe("unload after this idle time"),
    }),
    output: z.object({
      model: z.string(),
      backend: z.string(),
      instance_id: z.string(),
      load_time_s: z.number().nullable(),
      already_loaded: z.boolean(),
    }),
    handler: async (args, ctx) => {
      const binding = await app.router.bind(args.model, { signal: ctx.signal });
      const loaded = await app.router.loadModel(binding, {
        signal: ctx.signal,
        deadline: ctx.deadline,
        onStatus: (message) => ctx.progress.status(message),
        contextLength: args.context_length,
        ttlS: args.ttl_s,
      });
      const how = loaded.alreadyLoaded
        ? "was already loaded"
        : `loaded${loaded.loadTimeS !== undefined ? ` in ${loaded.loadTimeS.toFixed(1)} s` : ""}`;
      return {
        text: `${binding.model} ${how} on ${loaded.backend} as ${loaded.instanceId}.`,
        structured: {
          model: binding.model,
          backend: loaded.backend,
          instance_id: loaded.instanceId,
          load_time_s: loaded.loadTimeS ?? null,
          already_loaded: loaded.alreadyLoaded,
        },
      };
    },
  });

  const unloadModel = defineTool({
    name: "unload_model",
    title: "Unload a model",
    description:
      "Unloads every loaded instance of a model on LM Studio backends (native API). Other servers answer `unsupported`.",
    input: z.object({ model: modelArg }),
    output: z.object({
      model: z.string(),
      unloaded: z.array(z.object({ instance_id: z.string(), backend: z.string() })),
    }),
    handler: async (args, ctx) => {
      const models = await app.catalog.models({ signal: ctx.signal, refresh: true });
      const id = matchModelId(args.model, [...new Set(models.map((m) => m.id))]);
      const entries = models.filter((m) => m.id === id);
      const unloaded: { instance_id: string; backend: string }[] = [];
      for (const entry of entries) {
        const client = app.clients.find((c) => c.url === entry.backend)!;
        for (const instance of entry.instanceIds) {
          await client.unloadModel(instance, ctx.signal);
          unloaded.push({ instance_id: instance, backend: entry.backend });
        }
        app.catalog.invalidate(entry.backend);
      }
      if (unloaded.length === 0) {
        const kinds = await Promise.all(
          entries.map((e) => app.clients.find((c) => c.url === e.backend)!.detectKind(ctx.signal)),
        );
        if (kinds.every((k) => k !== "lmstudio")) {
          throw new BridgeError("unsupported", "unload_model needs LM Studio's native API", {
            model: id,
            hint: "unload models with the server's own tools",
          });
        }
        throw new BridgeError("model_not_loaded", `${id} is not loaded`, { model: id });
      }
      return {
        text: `Unloaded ${id}: ${
          unloaded.map((u) => `${u.instance_id} on ${u.backend}`).join(", ")
        }`,
        structured: { model: id, unloaded },
      };
    },
  });

  const setDefaultModel = defineTool({
    name: "set_default_model",
    title: "Set the default model",
    description:
      "Sets the model used when a tool call names none. Requests already running keep the model they started with.",
    input: z.object({ model: modelArg }),
    output: z.object({ default_model: z.string(), previous: z.string().nullable() }),
    handler: async (args, ctx) => {
      const binding = await app.router.bind(args.model, { signal: ctx.signal });
      const previous = app.catalog.defaultModel ?? null;
      app.catalog.setDefaultModel(binding.model);
      return {
        text: `Default model is now ${binding.model}${previous ? ` (was ${previous})` : ""}.`,
        structured: { default_model: binding.model, previous },
      };
    },
  });

  const bridgeStats = defineTool({
    name: "bridge_stats",
    title: "Bridge statistics",
    description:
      "Requests served, errors by code, requests in flight and queued per backend and model, cache sizes, latency percentiles.",
    input: z.object({}),
    output: z.object({
      requests: z.number(),
      errors_by_code: z.record(z.string(), z.number()),
      in_flight: z.record(z.string(), z.number()),
      queued: z.object({ total: z.number(), by_key: z.record(z.string(), z.number()) }),
      queue_waits: z.object({ count: z.number(), total_ms: z.number(), max_ms: z.number() }),
      rejected: z.number(),
      retries: z.number(),
      failovers: z.number(),
      model_loads: z.number(),
      caches: z.record(z.string(), z.object({ size: z.number(), max_size: z.number() })),
      latency_ms: z.object({ p50: z.number(), p99: z.number() }),
      tokens: z.object({ prompt: z.number(), completion: z.number() }),
    }),
    handler: (_args) => {
      const snap = app.router.snapshot();
      const catalog = app.catalog.cacheStats();
      const conv = app.conversations.stats();
      const jobs = extras.jobCacheStats?.();
      const sessions = extras.sessionStats?.();
      const structured = {
        requests: app.stats.requests,
        errors_by_code: { ...app.stats.errorsByCode } as Record<string, number>,
        in_flight: snap.inFlight,
        queued: { total: snap.queued, by_key: snap.queuedByKey },
        queue_waits: {
          count: snap.waits.count,
          total_ms: Math.round(snap.waits.totalMs),
          max_ms: Math.round(snap.waits.maxMs),
        },
        rejected: snap.rejected,
        retries: snap.retries,
        failovers: snap.failovers,
        model_loads: snap.loads,
        caches: {
          catalog: { size: catalog.size, max_size: catalog.maxSize },
          conversations: { size: conv.size, max_size: conv.maxSize },
          ...(jobs ? { jobs: { size: jobs.size, max_size: jobs.maxSize } } : {}),
          ...(sessions
            ? { mcp_sessions: { size: sessions.size, max_size: sessions.maxSize } }
            : {}),
        },
        latency_ms: app.stats.latency(),
        tokens: { ...app.stats.tokens },
      };
      return Promise.resolve({ text: JSON.stringify(structured, null, 2), structured });
    },
  });

  return [
    healthCheck,
    listModels,
    getCurrentModel,
    loadModel,
    unloadModel,
    setDefaultModel,
    bridgeStats,
  ];
}
