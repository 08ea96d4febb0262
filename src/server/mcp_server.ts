/**
 * The MCP server lmbridge exposes: a low-level SDK `Server` with our tool registry on it.
 * One instance per client connection (stdio: one; HTTP: one per session), all sharing the
 * same App.
 */
import { Server } from "@modelcontextprotocol/sdk/server/index.js";
import type { App } from "../app.ts";
import { installTools, type ToolDefinition } from "./registry.ts";
import { generationTools, type StartJob } from "./tools_generate.ts";
import { type HealthExtras, modelTools } from "./tools_models.ts";

export const VERSION = "0.1.0";

export interface ServerExtras extends HealthExtras {
  startJob?: StartJob;
  /** More tools (the agent's). */
  tools?: ToolDefinition[];
}

/** Every tool definition lmbridge serves. */
export function allTools(app: App, extras: ServerExtras = {}): ToolDefinition[] {
  return [
    ...modelTools(app, extras),
    ...generationTools(app, { startJob: extras.startJob }),
    ...(extras.tools ?? []),
  ];
}

/** Creates one MCP server connection endpoint over the shared app. */
export function createMcpServer(app: App, tools: ToolDefinition[]): Server {
  const server = new Server(
    { name: "lmbridge", title: "lmbridge", version: VERSION },
    {
      capabilities: { tools: { listChanged: false }, logging: {} },
      instructions:
        "lmbridge hands work to local models (LM Studio or any OpenAI-compatible server). Use chat_completion for one answer, autonomous_with_mcp to let a local model use the user's other MCP servers, and background: true with get_job for runs longer than a minute.",
    },
  );
  installTools(server, tools, {
    requestTimeoutS: app.config.requestTimeoutS,
    log: app.log,
    shutdown: app.shutdown.signal,
    observe: (e) => app.stats.record(e),
  });
  server.onerror = (err: Error) => app.log.warn("mcp protocol error", { error: String(err) });
  return server;
}
