/**
 * Everything one lmbridge process runs with: the shared App, the tool definitions served to
 * every MCP client (stdio or HTTP), and the shutdown that ends requests, jobs and child
 * processes. The CLI commands and both transports start from here.
 */
import { type App, createApp, type CreateAppOptions } from "./app.ts";
import type { Config } from "./config.ts";
import { findMcpConfigPath } from "./downstream/mcp_config.ts";
import { SessionPool } from "./downstream/session_pool.ts";
import { createJobRunner, jobTools } from "./server/jobs.ts";
import { allTools } from "./server/mcp_server.ts";
import type { ToolDefinition } from "./server/registry.ts";
import { agentTools } from "./server/tools_agent.ts";
import type { Logger } from "./util/log.ts";
import { fileURLToPath as fromFileUrl } from "node:url";

export interface Runtime {
  readonly app: App;
  readonly tools: ToolDefinition[];
  /** Sessions to the user's MCP servers (the agent's tools). */
  readonly pool: SessionPool;
  /** Aborts every request, stops jobs and downstream servers. Idempotent. */
  close(): Promise<void>;
}

/** Builds the runtime for `config`. */
export function createRuntime(
  config: Config,
  log: Logger,
  options: CreateAppOptions = {},
): Runtime {
  const app = createApp(config, log, options);
  const jobs = createJobRunner(config, log, app.shutdown.signal);
  const pool = createSessionPool(config, log);
  const tools = allTools(app, {
    startJob: jobs.start,
    tools: [...jobTools(jobs), ...agentTools(app, pool, { startJob: jobs.start })],
    mcpServerCount: async (signal) =>
      (await pool.list(signal)).servers.filter((s) =>
        s.status !== "disabled" && s.status !== "self"
      ).length,
    jobCacheStats: () => jobs.cacheStats(),
    sessionStats: () => {
      const snap = pool.snapshot();
      return { size: snap.open, maxSize: snap.servers };
    },
  });
  let closing: Promise<void> | undefined;
  return {
    app,
    tools,
    pool,
    close: () => {
      closing ??= (async () => {
        app.shutdown.abort(new DOMException("lmbridge is shutting down", "AbortError"));
        // Together: clients give lmbridge a few seconds to exit before killing it.
        await Promise.allSettled([jobs.close(), pool.close()]);
      })();
      return closing;
    },
  };
}

/** The session pool for the configured MCP servers file; children inherit a safe environment. */
function createSessionPool(config: Config, log: Logger): SessionPool {
  const main = new URL("../main.ts", import.meta.url);
  const execPath = Deno.execPath();
  return new SessionPool({
    // Searched again on every call: a file created (or moved) later is picked up.
    configPath: () =>
      findMcpConfigPath(config.mcpConfigPath, {
        cwd: Deno.cwd(),
        home: Deno.env.get("HOME") ?? Deno.env.get("USERPROFILE"),
      }),
    env: Deno.env.toObject(),
    self: {
      execPath,
      mainModulePath: main.protocol === "file:" ? fromFileUrl(main) : main.href,
      // A `deno compile` binary is not called deno and runs its modules from a virtual path.
      compiled: !/^deno(\.exe)?$/i.test(execPath.split(/[\\/]/).pop() ?? "") ||
        import.meta.url.includes("deno-compile-"),
    },
    idleTtlMs: config.mcpIdleTtlS * 1000,
    callTimeoutMs: config.mcpCallTimeoutS * 1000,
    log: (level, msg, fields) => log[level](msg, fields),
  });
}
