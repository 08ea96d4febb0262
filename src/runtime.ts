/**
 * Everything one lmbridge process runs with: the shared App, the tool definitions served to
 * every MCP client (stdio or HTTP), and the shutdown that ends requests, jobs and child
 * processes. The CLI commands and both transports start from here.
 */
import { type App, createApp, type CreateAppOptions } from "./app.ts";
import type { Config } from "./config.ts";
import { allTools } from "./server/mcp_server.ts";
import type { ToolDefinition } from "./server/registry.ts";
import type { Logger } from "./util/log.ts";

export interface Runtime {
  readonly app: App;
  readonly tools: ToolDefinition[];
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
  const tools = allTools(app);
  let closing: Promise<void> | undefined;
  return {
    app,
    tools,
    close: () => {
      closing ??= (async () => {
        app.shutdown.abort(new DOMException("lmbridge is shutting down", "AbortError"));
      })();
      return closing;
    },
  };
}
