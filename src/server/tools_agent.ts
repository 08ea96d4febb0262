/**
 * The agent's tools: list_available_mcps (the user's MCP servers as the session pool sees
 * them now) and autonomous_with_mcp (the agent loop on a model bound once, with progress per
 * step, in the foreground or as a background job).
 */
import { z } from "zod";
import type { App } from "../app.ts";
import {
  type AgentEvent,
  type AgentResult,
  type AgentToolHost,
  runAgent,
  selectServers,
} from "../agent/loop.ts";
import { BridgeError } from "../util/errors.ts";
import { defineTool, type ToolContext, type ToolDefinition, type ToolOutput } from "./registry.ts";
import type { StartJob } from "./tools_generate.ts";

/** The context length assumed for a model that will be loaded just in time (LM Studio's
 * usual default). */
const JIT_CONTEXT_GUESS = 4096;

const usageShape = z.object({ prompt_tokens: z.number(), completion_tokens: z.number() });
const toolCallShape = z.object({
  server: z.string(),
  tool: z.string(),
  ok: z.boolean(),
  ms: z.number(),
  error: z.string().optional(),
});

/**
 * The agent's tool definitions over `host` (the app's SessionPool).
 *
 * @example
 * const tools = agentTools(app, pool, { startJob: jobs.start });
 */
export function agentTools(
  app: App,
  host: AgentToolHost,
  extras: { startJob?: StartJob } = {},
): ToolDefinition[] {
  const listAvailableMcps = defineTool({
    name: "list_available_mcps",
    title: "List the agent's MCP servers",
    description:
      "Lists the MCP servers the agent (autonomous_with_mcp) can use, from the user's MCP servers file (.mcp.json) as it is now: name, transport (stdio / http / sse), status (idle / connected / failed / disabled / self), tool count once known, and the error of a failed server or of a malformed file.",
    input: z.object({}),
    output: z.looseObject({
      config_path: z.string().nullable(),
      error: z.string().optional(),
      servers: z.array(z.object({
        name: z.string(),
        transport: z.enum(["stdio", "http", "sse"]),
        status: z.enum(["idle", "connected", "failed", "disabled", "self"]),
        tools: z.number().optional(),
        error: z.string().optional(),
        pid: z.number().optional(),
      })),
    }),
    handler: async (_args, ctx) => {
      const listing = await host.list(ctx.signal);
      const structured: Record<string, unknown> = {
        config_path: listing.configPath ?? null,
        servers: listing.servers,
      };
      if (listing.error) structured.error = listing.error;
      return { text: listingText(listing), structured };
    },
  });

  const autonomous = defineTool({
    name: "autonomous_with_mcp",
    title: "Run a local-model agent with MCP tools",
    description:
      "Lets a local model carry out a task on its own with the tools of the user's other MCP servers (from .mcp.json): it calls tools, reads their results and answers. Choose servers with mcp_names (default: all) and tools with allowed_tools (`tool` or `server__tool`). Streams each step as progress. Runs longer than a minute: pass background: true and follow the job with get_job.",
    input: z.object({
      task: z.string().trim().min(1, "must not be empty").max(
        1_000_000,
        "is longer than 1000000 characters",
      ),
      mcp_names: z.array(z.string().trim().min(1, "must not be empty").max(256)).min(
        1,
        "must name at least one server (omit it to use all)",
      ).max(100).optional().describe("MCP servers to use; omitted: every enabled server"),
      model: z.string().trim().min(1, "must not be empty").max(512, "is too long").optional()
        .describe("model id or a unique part of it; omitted: the default model"),
      max_rounds: z.number().int().min(1).max(500).optional().describe(
        "chat rounds at most (default 25); the last one offers no tools so the model answers",
      ),
      max_tokens: z.number().int().min(1).max(1_000_000).optional().describe(
        "max_tokens of each round",
      ),
      allowed_tools: z.array(z.string().trim().min(1, "must not be empty").max(512)).max(1000)
        .optional().describe("only these tools, as `tool` or `server__tool`"),
      timeout_s: z.number().positive().max(86_400).optional().describe(
        "deadline of the whole run in seconds",
      ),
      background: z.boolean().optional().describe(
        "return a job id at once and run in the background (see get_job)",
      ),
    }),
    output: z.looseObject({
      answer: z.string().optional(),
      model: z.string().optional(),
      backend: z.string().optional(),
      rounds: z.number().optional(),
      stop_reason: z.enum(["answer", "max_rounds", "cancelled", "timeout", "error"]).optional(),
      tool_calls: z.array(toolCallShape).optional(),
      usage: usageShape.optional(),
      servers: z.array(z.string()).optional(),
      unavailable_servers: z.array(z.object({ name: z.string(), error: z.string() })).optional(),
      job_id: z.string().optional(),
      status: z.string().optional(),
    }),
    handler: async (args, ctx) => {
      // Unknown server names fail now, not inside a background job.
      await selectServers(host, args.mcp_names, ctx.signal);
      const run = (ctx: ToolContext) => runAgentTool(app, host, args, ctx);
      if (!args.background) return run(ctx);
      if (!extras.startJob) {
        throw new BridgeError("unsupported", "background jobs are not available", {
          hint: "call without background: true",
        });
      }
      return extras.startJob("autonomous_with_mcp", run, ctx);
    },
  });

  return [listAvailableMcps, autonomous];
}

/** What `autonomous_with_mcp` (and `lmbridge agent`) take. */
export interface AgentToolArgs {
  task: string;
  mcp_names?: string[];
  allowed_tools?: string[];
  max_rounds?: number;
  max_tokens?: number;
  model?: string;
}

/**
 * One agent run: binds the model once, runs the loop with every round on that binding, and
 * reports each step as progress.
 */
export async function runAgentTool(
  app: App,
  host: AgentToolHost,
  args: AgentToolArgs,
  ctx: ToolContext,
): Promise<ToolOutput> {
  const binding = await app.router.bind(args.model, { signal: ctx.signal });
  let backend: string | undefined;
  const result = await runAgent({
    task: args.task,
    mcpNames: args.mcp_names,
    allowedTools: args.allowed_tools,
    maxRounds: args.max_rounds,
    maxTokens: args.max_tokens,
    model: binding.model,
    // A model not loaded yet will get the context its (JIT) load chooses, often far below its
    // maximum: budget for a modest one rather than overflow.
    contextLength: binding.entries[0]?.loaded
      ? binding.entries[0].contextLength
      : Math.min(binding.entries[0]?.contextLength ?? JIT_CONTEXT_GUESS, JIT_CONTEXT_GUESS),
    toolResultMaxChars: app.config.toolResultMaxChars,
    host,
    signal: ctx.signal,
    onEvent: (event) => report(ctx, event),
    chat: async (body, handlers) => {
      const { value, backend: used } = await app.router.run(
        binding,
        {
          signal: ctx.signal,
          deadline: ctx.deadline,
          onStatus: (message) => ctx.progress.status(message),
        },
        (client) => client.chat(body, handlers),
      );
      backend = used;
      app.stats.addUsage(value.usage);
      return value;
    },
  });
  return formatResult(result, backend);
}

/** One progress line per agent step; answer text goes out as text. */
function report(ctx: ToolContext, event: AgentEvent): void {
  switch (event.type) {
    case "text":
      ctx.progress.text(event.delta);
      return;
    case "round":
      ctx.progress.status(
        `round ${event.round}${event.toolsOffered ? "" : " (no tools: answering)"}`,
      );
      return;
    case "ready":
      ctx.progress.status(`${event.tools} tools from ${event.servers.join(", ")}`);
      return;
    case "server_unavailable":
      ctx.progress.status(`MCP server ${event.server} is unavailable: ${event.error}`);
      return;
    case "tool_call":
      ctx.progress.status(`calling ${event.server}.${event.tool}`);
      return;
    case "tool_result": {
      if (!event.server) {
        ctx.progress.status(`the model called an unknown tool "${event.tool}"`);
        return;
      }
      const what = `${event.server}.${event.tool}`;
      ctx.progress.status(
        event.ok
          ? `${what} ok (${event.ms} ms)`
          : `${what} failed (${event.ms} ms)${event.error ? `: ${event.error}` : ""}`,
      );
      return;
    }
    case "context_shortened":
      ctx.progress.status(`shortened ${event.messages} old tool results to fit the context`);
      return;
  }
}

function formatResult(result: AgentResult, backend: string | undefined): ToolOutput {
  const failed = result.toolCalls.filter((c) => !c.ok).length;
  const summary = [
    `${result.rounds} round${result.rounds === 1 ? "" : "s"}`,
    `${result.toolCalls.length} tool call${result.toolCalls.length === 1 ? "" : "s"}${
      failed ? ` (${failed} failed)` : ""
    }`,
    `model ${result.model}`,
    `stop: ${result.stopReason}`,
  ];
  if (result.unavailable.length) {
    summary.push(`unavailable: ${result.unavailable.map((u) => u.server).join(", ")}`);
  }
  const answer = result.answer ||
    (result.stopReason === "max_rounds"
      ? "(the model gave no final answer within max_rounds)"
      : "(the model gave an empty answer)");
  const structured: Record<string, unknown> = {
    answer: result.answer,
    model: result.model,
    rounds: result.rounds,
    stop_reason: result.stopReason,
    tool_calls: result.toolCalls,
    usage: result.usage,
    servers: result.servers,
  };
  if (backend) structured.backend = backend;
  if (result.unavailable.length) {
    structured.unavailable_servers = result.unavailable.map((u) => ({
      name: u.server,
      error: u.error,
    }));
  }
  return { text: `${answer}\n\n[agent: ${summary.join("; ")}]`, structured };
}

function listingText(
  listing: Awaited<ReturnType<AgentToolHost["list"]>>,
): string {
  if (!listing.configPath) {
    return "No MCP servers file found (looked for ./.mcp.json, ~/.lmstudio/mcp.json, ~/.mcp.json). Set MCP_JSON_PATH or --mcp-config to use one.";
  }
  const lines = [`MCP servers file: ${listing.configPath}`];
  if (listing.error) {
    lines.push(
      `The file is malformed, so the agent has no servers until it is fixed: ${listing.error}`,
    );
    return lines.join("\n");
  }
  if (!listing.servers.length) lines.push("It lists no servers.");
  for (const s of listing.servers) {
    const details: string[] = [s.status];
    if (s.tools !== undefined) details.push(`${s.tools} tools`);
    if (s.pid !== undefined) details.push(`pid ${s.pid}`);
    if (s.error) details.push(s.error);
    lines.push(`- ${s.name} (${s.transport}): ${details.join(", ")}`);
  }
  return lines.join("\n");
}
