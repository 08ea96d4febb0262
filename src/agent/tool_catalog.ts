/**
 * The tools offered to the model in one agent run: named `server__tool` when several servers
 * are in play and plainly when one, made valid as OpenAI function names, filtered by
 * `allowed_tools`, and mapped back from whatever name the model writes.
 */
import type { DownstreamTool } from "../downstream/session_pool.ts";

/** One tool as the model sees it, and where it really lives. */
export interface OfferedTool {
  /** The function name the model calls. */
  readonly name: string;
  readonly server: string;
  /** The tool's name on its server. */
  readonly tool: string;
  readonly description?: string;
  readonly inputSchema: Record<string, unknown>;
}

/** An OpenAI chat-completions tool definition. */
export interface FunctionTool {
  type: "function";
  function: { name: string; description?: string; parameters: Record<string, unknown> };
}

const SEPARATOR = "__";
const MAX_NAME = 64;
const MAX_DESCRIPTION = 2_000;

/**
 * The offered tools of a run, built once.
 *
 * @example
 * const catalog = ToolCatalog.build([["fs", fsTools], ["memory", memoryTools]], { allowed: ["read_file"] });
 * catalog.resolve("fs__read_file"); // { server: "fs", tool: "read_file", … }
 */
export class ToolCatalog {
  readonly tools: readonly OfferedTool[];
  /** `allowed` entries that named no tool. */
  readonly unmatched: readonly string[];
  readonly #byName: Map<string, OfferedTool>;

  private constructor(tools: OfferedTool[], unmatched: string[]) {
    this.tools = tools;
    this.unmatched = unmatched;
    this.#byName = new Map(tools.map((t) => [t.name, t]));
  }

  /**
   * Builds the catalogue from each server's tools (in order). `allowed` keeps only the tools
   * it names, as `tool` or `server__tool` (also `server.tool`).
   */
  static build(
    servers: Iterable<readonly [string, readonly DownstreamTool[]]>,
    options: { allowed?: readonly string[] } = {},
  ): ToolCatalog {
    const allowed = options.allowed ? new Set(options.allowed.map((a) => a.trim())) : undefined;
    const used = new Set<string>();
    const kept: DownstreamTool[] = [];
    for (const [server, tools] of servers) {
      for (const tool of tools) {
        if (!allowed) {
          kept.push({ ...tool, server });
          continue;
        }
        const forms = [tool.name, `${server}${SEPARATOR}${tool.name}`, `${server}.${tool.name}`];
        const hits = forms.filter((f) => allowed.has(f));
        if (!hits.length) continue;
        for (const hit of hits) used.add(hit);
        kept.push({ ...tool, server });
      }
    }
    const several = new Set(kept.map((t) => t.server)).size > 1;
    const taken = new Set<string>();
    const offered = kept.map((t): OfferedTool => {
      const name = uniqueName(
        functionName(several ? `${t.server}${SEPARATOR}${t.name}` : t.name),
        taken,
      );
      return {
        name,
        server: t.server,
        tool: t.name,
        description: t.description,
        inputSchema: t.inputSchema,
      };
    });
    const unmatched = allowed ? [...allowed].filter((a) => !used.has(a)) : [];
    return new ToolCatalog(offered, unmatched);
  }

  get size(): number {
    return this.tools.length;
  }

  /** The names the model may call. */
  names(): string[] {
    return this.tools.map((t) => t.name);
  }

  /**
   * The tool a model-written name means: the exact name; else `server__tool`, `server.tool`
   * or `server/tool`; else a tool name unique across servers; else a unique case-insensitive
   * match. `undefined` when none or several fit.
   */
  resolve(written: string): OfferedTool | undefined {
    const name = written.trim().replace(/^functions?[./:]/, "");
    const exact = this.#byName.get(name);
    if (exact) return exact;
    for (const sep of [SEPARATOR, ".", "/", ":"]) {
      const at = name.indexOf(sep);
      if (at <= 0) continue;
      const server = name.slice(0, at);
      const tool = name.slice(at + sep.length);
      const hit = this.tools.find((t) => t.server === server && t.tool === tool);
      if (hit) return hit;
    }
    const byTool = this.tools.filter((t) => t.tool === name);
    if (byTool.length === 1) return byTool[0];
    const lower = name.toLowerCase();
    const loose = this.tools.filter((t) =>
      t.name.toLowerCase() === lower || t.tool.toLowerCase() === lower
    );
    return loose.length === 1 ? loose[0] : undefined;
  }

  /** The `tools` field of a chat-completions request. */
  definitions(): FunctionTool[] {
    return this.tools.map((t) => {
      const fn: FunctionTool["function"] = { name: t.name, parameters: parameters(t.inputSchema) };
      const description = t.description?.trim();
      if (description) fn.description = description.slice(0, MAX_DESCRIPTION);
      return { type: "function", function: fn };
    });
  }
}

/** A valid OpenAI function name (`^[a-zA-Z0-9_-]{1,64}$`). */
function functionName(raw: string): string {
  const cleaned = raw.replace(/[^A-Za-z0-9_-]/g, "_") || "tool";
  if (cleaned.length <= MAX_NAME) return cleaned;
  return `${cleaned.slice(0, MAX_NAME - 9)}_${hash(raw)}`;
}

function uniqueName(name: string, taken: Set<string>): string {
  let candidate = name;
  for (let n = 2; taken.has(candidate); n++) {
    const suffix = `_${n}`;
    candidate = name.slice(0, MAX_NAME - suffix.length) + suffix;
  }
  taken.add(candidate);
  return candidate;
}

/** An object schema without the keys some model servers refuse. */
function parameters(schema: Record<string, unknown>): Record<string, unknown> {
  const { $schema: _, ...rest } = schema ?? {};
  if (rest.type === undefined) rest.type = "object";
  if (rest.type === "object" && rest.properties === undefined) rest.properties = {};
  return rest;
}

/** 8 hex digits (FNV-1a), to keep shortened names distinct. */
function hash(text: string): string {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 0x01000193) >>> 0;
  return h.toString(16).padStart(8, "0");
}
