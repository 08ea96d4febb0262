/**
 * Generation tools: chat_completion, text_completion, generate_embeddings, create_response.
 * Each resolves its model once (the binding), streams upstream, forwards text as progress,
 * and reports the answer's model when the server served another one.
 */
import { z } from "zod";
import type { App, Conversation } from "../app.ts";
import { sameModel } from "../backend/model_names.ts";
import type { Binding } from "../backend/router.ts";
import type { ChatMessage, ContentPart, GenerationResult } from "../backend/types.ts";
import { BridgeError } from "../util/errors.ts";
import { loadImages } from "./images.ts";
import { defineTool, type ToolContext, type ToolDefinition, type ToolOutput } from "./registry.ts";

/** Starts a tool run as a background job and returns its job id result. */
export type StartJob = (
  tool: string,
  run: (ctx: ToolContext) => Promise<ToolOutput>,
  ctx: ToolContext,
) => Promise<ToolOutput>;

const MAX_TEXT = 4_000_000;
const text = (what: string) =>
  z.string().max(MAX_TEXT, `${what} is longer than ${MAX_TEXT} characters`);
const modelArg = z.string().trim().min(1, "must not be empty").max(512, "is too long").optional()
  .describe("model id or a unique part of it; omitted: the default model");
const timeoutArg = z.number().positive().max(86_400).optional().describe(
  "deadline of this call in seconds",
);

const messageSchema = z.object({
  role: z.enum(["system", "user", "assistant", "tool"]),
  content: z.union([
    text("content"),
    z.array(z.object({ type: z.string() }).passthrough()).max(256),
    z.null(),
  ]),
  tool_call_id: z.string().optional(),
  name: z.string().optional(),
}).passthrough();

const usageShape = z.object({ prompt_tokens: z.number(), completion_tokens: z.number() });
const generationOutput = z.object({
  text: z.string().optional(),
  model: z.string().optional(),
  backend: z.string().optional(),
  finish_reason: z.string().optional(),
  usage: usageShape.optional(),
  reasoning: z.string().optional(),
  timings: z.object({ first_token_ms: z.number().nullable(), total_ms: z.number() }).optional(),
  model_mismatch: z.string().optional(),
  json: z.unknown().optional(),
  job_id: z.string().optional(),
  status: z.string().optional(),
});

export function generationTools(app: App, extras: { startJob?: StartJob } = {}): ToolDefinition[] {
  /** Runs in the background when asked, else now. */
  const maybeBackground = (
    tool: string,
    background: boolean | undefined,
    ctx: ToolContext,
    run: (ctx: ToolContext) => Promise<ToolOutput>,
  ): Promise<ToolOutput> => {
    if (!background) return run(ctx);
    if (!extras.startJob) {
      throw new BridgeError("unsupported", "background jobs are not available", {
        hint: "call without background: true",
      });
    }
    return extras.startJob(tool, run, ctx);
  };

  const chatCompletion = defineTool({
    name: "chat_completion",
    title: "Chat with a local model",
    description:
      "Sends one chat request to a local model (prompt or messages) and returns its answer. Streams the answer as progress notifications when the client sends a progressToken. Supports a system prompt, JSON-schema structured output, images (data URLs or files in the working directory), reasoning text, a deadline, and background: true (returns a job id for get_job).",
    input: z.object({
      prompt: text("prompt").optional(),
      messages: z.array(messageSchema).min(1, "must hold at least one message").max(10_000)
        .optional(),
      system_prompt: text("system_prompt").optional(),
      model: modelArg,
      temperature: z.number().min(0).max(2).optional(),
      max_tokens: z.number().int().min(-1).max(1_000_000).optional(),
      top_p: z.number().min(0).max(1).optional(),
      stop: z.union([z.string(), z.array(z.string()).max(16)]).optional(),
      json_schema: z.record(z.string(), z.unknown()).optional().describe(
        "a JSON Schema the answer must follow (structured output)",
      ),
      images: z.array(z.string().max(20_000_000)).max(16).optional().describe(
        "data:image/...;base64 URLs or png/jpeg/gif/webp file paths",
      ),
      include_reasoning: z.boolean().optional(),
      timeout_s: timeoutArg,
      background: z.boolean().optional(),
    }),
    output: generationOutput,
    handler: (args, ctx) => {
      if ((args.prompt === undefined) === (args.messages === undefined)) {
        throw new BridgeError(
          "invalid_request",
          args.prompt === undefined
            ? "prompt: give either prompt or messages"
            : "messages: give either prompt or messages, not both",
        );
      }
      const responseFormat = args.json_schema ? checkJsonSchema(args.json_schema) : undefined;
      return maybeBackground("chat_completion", args.background, ctx, async (ctx) => {
        const messages: ChatMessage[] = [];
        if (args.system_prompt) messages.push({ role: "system", content: args.system_prompt });
        if (args.messages) messages.push(...(args.messages as ChatMessage[]));
        else messages.push({ role: "user", content: args.prompt! });
        if (args.images?.length) {
          const urls = await loadImages(args.images, {
            roots: app.config.imageRoots,
            allowRemote: app.config.allowRemoteImages,
            signal: ctx.signal,
          });
          attachImages(messages, urls);
        }
        const binding = await app.router.bind(args.model, { signal: ctx.signal });
        const body: Record<string, unknown> = { model: binding.model, messages };
        copyOptions(args, body, ["temperature", "max_tokens", "top_p", "stop"]);
        if (responseFormat) body.response_format = responseFormat;
        const { result, backend } = await generate(
          app,
          binding,
          ctx,
          (client, onText) =>
            client.chat(body, {
              signal: ctx.signal,
              onText,
              onReasoning: args.include_reasoning ? onText : undefined,
            }),
        );
        let answer = result.text;
        // Seen: with some thinking models the structured JSON lands in the reasoning.
        if (responseFormat && !answer.trim() && result.reasoning.trim()) answer = result.reasoning;
        let json: unknown;
        if (responseFormat) {
          try {
            json = JSON.parse(answer);
          } catch {
            throw new BridgeError("upstream_error", "the model's answer is not valid JSON", {
              model: binding.model,
              backend,
              partialText: answer.slice(0, 2000),
              hint: "try a larger max_tokens or a model that supports structured output",
            });
          }
        }
        return formatGeneration(binding, backend, result, {
          answer,
          includeReasoning: args.include_reasoning,
          json,
        });
      });
    },
  });

  const textCompletion = defineTool({
    name: "text_completion",
    title: "Raw text completion",
    description:
      "Continues a prompt with a local model, without a chat template (/v1/completions). Streams as progress notifications.",
    input: z.object({
      prompt: text("prompt").min(1, "must not be empty"),
      model: modelArg,
      temperature: z.number().min(0).max(2).optional(),
      max_tokens: z.number().int().min(-1).max(1_000_000).optional(),
      stop: z.union([z.string(), z.array(z.string()).max(16)]).optional(),
      timeout_s: timeoutArg,
    }),
    output: generationOutput,
    handler: async (args, ctx) => {
      const binding = await app.router.bind(args.model, { signal: ctx.signal });
      const body: Record<string, unknown> = { model: binding.model, prompt: args.prompt };
      copyOptions(args, body, ["temperature", "max_tokens", "stop"]);
      const { result, backend } = await generate(
        app,
        binding,
        ctx,
        (client, onText) => client.completion(body, { signal: ctx.signal, onText }),
      );
      return formatGeneration(binding, backend, result, { answer: result.text });
    },
  });

  const embeddings = defineTool({
    name: "generate_embeddings",
    title: "Embeddings",
    description:
      "Embedding vectors for one text or a list of texts, from an embedding model (default: the first loaded embedding model).",
    input: z.object({
      text: z.union([
        text("text").min(1, "must not be empty"),
        z.array(text("text")).min(1, "must hold at least one text").max(2048),
      ]),
      model: modelArg,
      timeout_s: timeoutArg,
    }),
    output: z.object({
      model: z.string(),
      backend: z.string(),
      dimensions: z.number(),
      embeddings: z.array(z.array(z.number())),
      model_mismatch: z.string().optional(),
    }),
    handler: async (args, ctx) => {
      const binding = await app.router.bind(args.model, { signal: ctx.signal, type: "embedding" });
      const { value, backend } = await app.router.run(
        binding,
        { signal: ctx.signal, deadline: ctx.deadline, skipLoad: true },
        (client) => client.embeddings({ model: binding.model, input: args.text }, ctx.signal),
      );
      app.stats.addUsage({ prompt_tokens: value.usage.prompt_tokens, completion_tokens: 0 });
      const dimensions = value.embeddings[0]?.length ?? 0;
      const structured: Record<string, unknown> = {
        model: binding.model,
        backend,
        dimensions,
        embeddings: value.embeddings,
      };
      const summary =
        `${value.embeddings.length} embedding(s) of ${dimensions} dimensions from ${binding.model}.`;
      return { text: summary + mismatchNote(binding.model, value.model, structured), structured };
    },
  });

  const createResponse = defineTool({
    name: "create_response",
    title: "Stateful conversation",
    description:
      "One turn of a stateful conversation: pass the returned response_id as previous_response_id to continue. Uses the backend's Responses API where it has one; otherwise lmbridge keeps the history.",
    input: z.object({
      input: text("input").min(1, "must not be empty"),
      previous_response_id: z.string().min(1).max(256).optional(),
      model: modelArg,
      timeout_s: timeoutArg,
    }),
    output: z.object({
      response_id: z.string(),
      text: z.string(),
      model: z.string(),
      backend: z.string(),
      model_mismatch: z.string().optional(),
    }),
    handler: async (args, ctx) => {
      const previous = args.previous_response_id
        ? app.conversations.get(args.previous_response_id)
        : undefined;
      if (args.previous_response_id && !previous) {
        throw new BridgeError(
          "invalid_request",
          `previous_response_id: no conversation "${args.previous_response_id}" (it may have expired)`,
          { hint: "start a new conversation without previous_response_id" },
        );
      }
      // A conversation stays on the model (and backend) it started with.
      const binding = previous
        ? await app.router.bind(previous.model, { signal: ctx.signal })
        : await app.router.bind(args.model, { signal: ctx.signal });
      const mode = previous?.mode ?? await conversationMode(app, binding, ctx.signal);
      if (mode === "native") {
        try {
          const { value, backend } = await app.router.run(
            previous
              ? { model: binding.model, entries: onBackend(binding, previous.backend) }
              : binding,
            { signal: ctx.signal, deadline: ctx.deadline, onStatus: ctx.progress.status },
            (client) =>
              client.responses({
                model: binding.model,
                input: args.input,
                ...(args.previous_response_id
                  ? { previous_response_id: args.previous_response_id }
                  : {}),
              }, { signal: ctx.signal, onText: ctx.progress.text }),
          );
          app.conversations.set(value.id, {
            model: binding.model,
            backend,
            mode: "native",
            messages: [],
          });
          app.stats.addUsage(value.usage);
          const structured: Record<string, unknown> = {
            response_id: value.id,
            text: value.text,
            model: binding.model,
            backend,
          };
          return {
            text: `${value.text}\n\n(response_id: ${value.id})${
              mismatchNote(binding.model, value.model, structured)
            }`,
            structured,
          };
        } catch (err) {
          // A server without the Responses API (older LM Studio, a generic server): lmbridge
          // keeps the history instead, from now on for that backend.
          const noApi = err instanceof BridgeError && err.code === "unsupported" && !previous &&
            err.context.backend;
          if (!noApi) throw err;
          app.responsesUnsupported.add(noApi);
          ctx.log.info("no Responses API; keeping the history in lmbridge", { backend: noApi });
        }
      }
      const history: ChatMessage[] = previous ? [...previous.messages] : [];
      history.push({ role: "user", content: args.input });
      const routed = previous
        ? { model: binding.model, entries: onBackend(binding, previous.backend) }
        : binding;
      const { result, backend } = await generate(
        app,
        routed,
        ctx,
        (client, onText) =>
          client.chat({ model: binding.model, messages: history }, {
            signal: ctx.signal,
            onText,
          }),
      );
      history.push({ role: "assistant", content: result.text });
      const id = `resp_lmb_${crypto.randomUUID().replaceAll("-", "")}`;
      app.conversations.set(id, {
        model: binding.model,
        backend,
        mode: "local",
        messages: trimHistory(history),
      });
      const structured: Record<string, unknown> = {
        response_id: id,
        text: result.text,
        model: binding.model,
        backend,
      };
      return {
        text: `${result.text}\n\n(response_id: ${id})${
          mismatchNote(binding.model, result.model, structured)
        }`,
        structured,
      };
    },
  });

  return [chatCompletion, textCompletion, embeddings, createResponse];
}

/** Runs one generation through the router, forwarding text as progress. */
async function generate(
  app: App,
  binding: Binding,
  ctx: ToolContext,
  call: (
    client: import("../backend/client.ts").BackendClient,
    onText: (t: string) => void,
  ) => Promise<GenerationResult>,
): Promise<{ result: GenerationResult; backend: string }> {
  let delivered = false;
  const onText = (t: string) => {
    delivered = true;
    ctx.progress.text(t);
  };
  const { value, backend } = await app.router.run(
    binding,
    {
      signal: ctx.signal,
      deadline: ctx.deadline,
      onStatus: (m) => {
        if (!delivered) ctx.progress.status(m);
      },
    },
    (client) => call(client, onText),
  );
  app.stats.addUsage(value.usage);
  return { result: value, backend };
}

function formatGeneration(
  binding: Binding,
  backend: string,
  result: GenerationResult,
  options: { answer: string; includeReasoning?: boolean; json?: unknown },
): ToolOutput {
  const structured: Record<string, unknown> = {
    text: options.answer,
    model: binding.model,
    backend,
    finish_reason: result.finishReason,
    usage: result.usage,
    timings: { first_token_ms: result.firstTokenMs ?? null, total_ms: result.totalMs },
  };
  let text = options.answer;
  if (options.includeReasoning) {
    structured.reasoning = result.reasoning;
    if (result.reasoning) text = `<reasoning>\n${result.reasoning}\n</reasoning>\n\n${text}`;
  }
  if (options.json !== undefined) structured.json = options.json;
  text += mismatchNote(binding.model, result.model, structured);
  if (result.finishReason === "length") {
    text += "\n\n[lmbridge note: the answer was cut at max_tokens]";
  }
  return { text, structured };
}

/**
 * LM Studio has been seen to answer with another model than the one asked for: report it in
 * `model_mismatch` and as a note for the reader. Returns the note ("" when they match).
 */
function mismatchNote(
  asked: string,
  answered: string | undefined,
  structured: Record<string, unknown>,
): string {
  if (!answered || sameModel(answered, asked)) return "";
  structured.model_mismatch = answered;
  return `\n\n[lmbridge warning: asked for ${asked} but the server answered as ${answered}]`;
}

function copyOptions(args: Record<string, unknown>, body: Record<string, unknown>, keys: string[]) {
  for (const k of keys) if (args[k] !== undefined) body[k] = args[k];
}

/** Appends images as content parts of the last user message. */
function attachImages(messages: ChatMessage[], urls: string[]) {
  const last = [...messages].reverse().find((m) => m.role === "user");
  if (!last) {
    throw new BridgeError("invalid_request", "images: there is no user message to attach them to");
  }
  const parts: ContentPart[] = typeof last.content === "string"
    ? [{ type: "text", text: last.content }]
    : [...(last.content ?? [])];
  for (const url of urls) parts.push({ type: "image_url", image_url: { url } });
  last.content = parts;
}

/**
 * Checks `json_schema` before anything is sent: it must be a JSON Schema object, and the
 * wrapper LM Studio expects is built here.
 */
export function checkJsonSchema(schema: Record<string, unknown>): Record<string, unknown> {
  const bad = (problem: string) =>
    new BridgeError("invalid_request", `json_schema: ${problem}`, {
      hint: 'pass a JSON Schema such as {"type":"object","properties":{"name":{"type":"string"}}}',
    });
  // Accept both a bare schema and the OpenAI wrapper {name, schema, strict}.
  const inner = typeof schema.schema === "object" && schema.schema !== null && !schema.type
    ? schema.schema as Record<string, unknown>
    : schema;
  const types = ["object", "array", "string", "number", "integer", "boolean", "null"];
  const check = (node: unknown, path: string, depth: number) => {
    if (depth > 32) throw bad(`nested deeper than 32 levels at ${path}`);
    if (typeof node !== "object" || node === null || Array.isArray(node)) {
      throw bad(`${path} must be a schema object`);
    }
    const n = node as Record<string, unknown>;
    if (n.type !== undefined) {
      const list = Array.isArray(n.type) ? n.type : [n.type];
      for (const t of list) {
        if (typeof t !== "string" || !types.includes(t)) {
          throw bad(`${path}.type ${JSON.stringify(t)} is not a JSON Schema type`);
        }
      }
    }
    if (n.properties !== undefined) {
      if (
        typeof n.properties !== "object" || n.properties === null || Array.isArray(n.properties)
      ) {
        throw bad(`${path}.properties must be an object`);
      }
      for (const [k, v] of Object.entries(n.properties)) {
        check(v, `${path}.properties.${k}`, depth + 1);
      }
    }
    if (
      n.required !== undefined &&
      (!Array.isArray(n.required) || n.required.some((r) => typeof r !== "string"))
    ) {
      throw bad(`${path}.required must be a list of property names`);
    }
    if (n.items !== undefined && typeof n.items === "object") {
      check(n.items, `${path}.items`, depth + 1);
    }
  };
  check(inner, "schema", 0);
  if (inner.type === undefined && inner.properties === undefined && !inner.anyOf && !inner.oneOf) {
    throw bad("has no type or properties");
  }
  return {
    type: "json_schema",
    json_schema: {
      name: typeof schema.name === "string" ? schema.name : "response",
      strict: true,
      schema: inner,
    },
  };
}

async function conversationMode(
  app: App,
  binding: Binding,
  signal: AbortSignal,
): Promise<Conversation["mode"]> {
  const client = app.clients.find((c) => c.url === binding.entries[0]?.backend);
  if (!client || app.responsesUnsupported.has(client.url)) return "local";
  const kind = await client.detectKind(signal);
  return kind === "lmstudio" || kind === "openai" ? "native" : "local";
}

function onBackend(binding: Binding, backend: string) {
  const entries = binding.entries.filter((e) => e.backend === backend);
  return entries.length ? entries : binding.entries;
}

/** The most history lmbridge keeps for one conversation, in characters. */
export const MAX_HISTORY_CHARS = 48_000;

/**
 * Keeps a local history bounded: the most recent messages within MAX_HISTORY_CHARS (a local
 * model could not see more anyway); a single longer message keeps its end.
 */
export function trimHistory(messages: ChatMessage[]): ChatMessage[] {
  let total = 0;
  const kept: ChatMessage[] = [];
  for (let i = messages.length - 1; i >= 0; i--) {
    const message = messages[i];
    const text = typeof message.content === "string"
      ? message.content
      : JSON.stringify(message.content ?? "");
    const room = MAX_HISTORY_CHARS - total;
    if (room <= 0) break;
    if (text.length > room) {
      if (typeof message.content === "string") {
        // Shorten it, leaving room for the user message that asked, if that one is short.
        const asked = messages[i - 1];
        const askedLen = asked?.role === "user" && typeof asked.content === "string"
          ? asked.content.length
          : Infinity;
        const keep = askedLen < room / 2 ? room - askedLen : room;
        kept.unshift({ ...message, content: `[…] ${text.slice(text.length - keep)}` });
        if (keep < room) kept.unshift(asked);
      }
      break;
    }
    total += text.length;
    kept.unshift(message);
  }
  // Chat templates want the history to start with the user (some reject anything else).
  while (kept.length && kept[0].role !== "user") kept.shift();
  return kept;
}
