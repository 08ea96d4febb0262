/**
 * Tool definitions and their dispatch on the MCP server. The zod schema of each tool is the
 * single source of truth: the JSON schema clients see, input validation, and the handler's
 * type. Validation failures and BridgeErrors become `isError` results whose text starts
 * `Error [code]:`, so the calling model can correct itself.
 */
import type { Server } from "@modelcontextprotocol/sdk/server/index.js";
import type { RequestHandlerExtra } from "@modelcontextprotocol/sdk/shared/protocol.js";
import {
  type CallToolRequest,
  CallToolRequestSchema,
  type CallToolResult,
  ListToolsRequestSchema,
  type ServerNotification,
  type ServerRequest,
} from "@modelcontextprotocol/sdk/types.js";
import { z } from "zod";
import { linkSignals } from "../util/async.ts";
import { BridgeError, type ErrorCode, toBridgeError } from "../util/errors.ts";
import type { Logger } from "../util/log.ts";
import { createProgressSink, nullProgress, type ProgressSink } from "./progress.ts";

/** Everything a tool handler gets for one call. */
export interface ToolContext {
  readonly requestId: string;
  /** Aborts on client cancel, client gone, or the request deadline. */
  readonly signal: AbortSignal;
  /** Epoch ms of the request's deadline. */
  readonly deadline: number;
  readonly progress: ProgressSink;
  readonly log: Logger;
  /** Whether the client asked for progress (sent a progressToken). */
  readonly streaming: boolean;
}

/** What a handler returns: the text for the model and, when shaped, structured content. */
export interface ToolOutput {
  text: string;
  structured?: Record<string, unknown>;
}

export interface ToolDefinition<I extends z.ZodObject = z.ZodObject> {
  name: string;
  title?: string;
  description: string;
  input: I;
  output?: z.ZodObject;
  /** Whether `timeout_s` (when present) or the default deadline applies. Default true. */
  deadline?: boolean;
  handler: (args: z.infer<I>, ctx: ToolContext) => Promise<ToolOutput>;
}

/** Defines a tool with its handler typed from its schema. */
export function defineTool<I extends z.ZodObject>(def: ToolDefinition<I>): ToolDefinition {
  return def as unknown as ToolDefinition;
}

/** Observes each finished call (for statistics and logs). */
export type CallObserver = (event: {
  tool: string;
  ms: number;
  code?: ErrorCode;
}) => void;

export interface RegistryOptions {
  /** Default deadline in seconds when a tool has no `timeout_s`. */
  requestTimeoutS: number;
  log: Logger;
  observe?: CallObserver;
  /** Aborts every request (shutdown). */
  shutdown?: AbortSignal;
  /** Progress coalescing interval. */
  progressIntervalMs?: number;
}

let counter = 0;

/** Installs tools/list and tools/call on a low-level MCP server. */
export function installTools(server: Server, tools: ToolDefinition[], options: RegistryOptions) {
  const byName = new Map(tools.map((t) => [t.name, t]));
  const listing = tools.map((t) => ({
    name: t.name,
    title: t.title,
    description: t.description,
    inputSchema: toJsonSchema(t.input, "input"),
    ...(t.output ? { outputSchema: toJsonSchema(t.output, "output") } : {}),
  }));

  server.setRequestHandler(ListToolsRequestSchema, () => ({ tools: listing }));

  server.setRequestHandler(CallToolRequestSchema, async (
    request: CallToolRequest,
    extra: RequestHandlerExtra<ServerRequest, ServerNotification>,
  ): Promise<CallToolResult> => {
    const tool = byName.get(request.params.name);
    const started = performance.now();
    const requestId = `r${++counter}`;
    const log = options.log.child({ request_id: requestId, tool: request.params.name });
    if (!tool) {
      const err = new BridgeError("invalid_request", `unknown tool "${request.params.name}"`, {
        hint: `the tools are: ${[...byName.keys()].join(", ")}`,
      });
      return errorResult(err);
    }
    const parsed = tool.input.safeParse(request.params.arguments ?? {});
    if (!parsed.success) {
      const err = validationError(parsed.error);
      options.observe?.({ tool: tool.name, ms: performance.now() - started, code: err.code });
      log.info("invalid arguments", { code: err.code });
      return errorResult(err);
    }
    const args = parsed.data as Record<string, unknown>;
    const timeoutS = typeof args.timeout_s === "number" ? args.timeout_s : options.requestTimeoutS;
    const deadline = Date.now() + timeoutS * 1000;
    const linked = linkSignals([extra.signal, options.shutdown], {
      timeoutMs: tool.deadline === false ? undefined : timeoutS * 1000,
    });
    const signal = linked.signal;
    const token = extra._meta?.progressToken;
    const progress = token === undefined ? nullProgress : createProgressSink(
      (p) =>
        extra.sendNotification({
          method: "notifications/progress",
          params: { progressToken: token, ...p },
        }),
      { intervalMs: options.progressIntervalMs },
    );
    const ctx: ToolContext = {
      requestId,
      signal,
      deadline,
      progress,
      log,
      streaming: token !== undefined,
    };
    try {
      const out = await tool.handler(args as never, ctx);
      await progress.close();
      const ms = performance.now() - started;
      options.observe?.({ tool: tool.name, ms });
      log.info("call done", {
        elapsed_ms: Math.round(ms),
        model: out.structured?.model,
        backend: out.structured?.backend,
      });
      const result: CallToolResult = { content: [{ type: "text", text: out.text }] };
      if (out.structured) result.structuredContent = out.structured;
      return result;
    } catch (thrown) {
      await progress.close();
      const err = toBridgeError(thrown);
      const ms = performance.now() - started;
      options.observe?.({ tool: tool.name, ms, code: err.code });
      log.info("call failed", {
        code: err.code,
        elapsed_ms: Math.round(ms),
        model: err.context.model,
        backend: err.context.backend,
      });
      return errorResult(err);
    } finally {
      linked.dispose();
    }
  });
}

/** An `isError` result with `Error [code]: …` text. */
export function errorResult(err: BridgeError): CallToolResult {
  const result: CallToolResult = { content: [{ type: "text", text: err.format() }], isError: true };
  if (err.context.result) {
    result.structuredContent = { ...err.context.result, error_code: err.code };
  }
  return result;
}

/** zod issues → `invalid_request` naming each field and its problem. */
export function validationError(error: z.ZodError): BridgeError {
  const problems = error.issues.slice(0, 5).map((issue) => {
    const field = issue.path.length ? issue.path.map(String).join(".") : "arguments";
    return `${field}: ${issue.message}`;
  });
  return new BridgeError("invalid_request", problems.join("; "), {
    hint: "correct the arguments and call again",
  });
}

function toJsonSchema(schema: z.ZodObject, io: "input" | "output") {
  const json = z.toJSONSchema(schema, { io, unrepresentable: "any" }) as Record<string, unknown>;
  delete json.$schema;
  return json as { type: "object"; [k: string]: unknown };
}
