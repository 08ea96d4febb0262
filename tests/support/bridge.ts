/**
 * Starts lmbridge (`deno run main.ts`) as a child process and connects the real MCP client
 * SDK to it over stdio, the way Claude Code does. Collects its stderr for assertions.
 */
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import type { CallToolResult } from "@modelcontextprotocol/sdk/types.js";

export const MAIN = new URL("../../main.ts", import.meta.url).pathname;
export const ROOT = new URL("../../", import.meta.url).pathname;

/** The permissions `deno task start` grants: tests run lmbridge with exactly these. */
export const START_PERMISSIONS: string[] = (JSON.parse(
  Deno.readTextFileSync(`${ROOT}/deno.json`),
).tasks.start as string).split(/\s+/).filter((w) => w.startsWith("--allow-"));

/**
 * `lmbridge ARGS…` as a process, with the permissions of `deno task start` and only `env`
 * as its environment, so tests exercise what users run.
 */
export function lmbridgeCommand(
  args: string[],
  env: Record<string, string>,
  stdio: { stdin?: "piped" | "null"; stdout?: "piped" | "null"; stderr?: "piped" | "null" } = {},
): Deno.Command {
  return new Deno.Command(Deno.execPath(), {
    args: ["run", ...START_PERMISSIONS, MAIN, ...args],
    env,
    clearEnv: true,
    cwd: ROOT,
    stdin: stdio.stdin ?? "null",
    stdout: stdio.stdout ?? "piped",
    stderr: stdio.stderr ?? "piped",
  });
}

export interface Bridge {
  client: Client;
  /** Everything lmbridge wrote to stderr so far. */
  stderr(): string;
  /** Calls a tool and returns the result (tool errors included, not thrown). */
  call(
    name: string,
    args?: Record<string, unknown>,
    options?: {
      onprogress?: (p: { progress: number; message?: string }) => void;
      signal?: AbortSignal;
      timeout?: number;
    },
  ): Promise<CallToolResult>;
  pid: number | null;
  close(): Promise<void>;
}

/** Environment for a bridge pointed at `backendUrl`, isolated from the user's files. */
export function bridgeEnv(
  backendUrl: string,
  extra: Record<string, string> = {},
): Record<string, string> {
  const state = Deno.makeTempDirSync({ prefix: "lmbridge-state-" });
  return {
    PATH: Deno.env.get("PATH") ?? "",
    HOME: state,
    DENO_DIR: Deno.env.get("DENO_DIR") ?? `${Deno.env.get("HOME")}/.cache/deno`,
    LMBRIDGE_BACKENDS: backendUrl,
    LMBRIDGE_STATE_DIR: state,
    MCP_JSON_PATH: `${state}/none.json`,
    LOG_LEVEL: "info",
    ...extra,
  };
}

/** Spawns lmbridge with `env` and connects an MCP client. */
export async function startBridge(
  env: Record<string, string>,
  args: string[] = [],
): Promise<Bridge> {
  const transport = new StdioClientTransport({
    command: Deno.execPath(),
    args: ["run", ...START_PERMISSIONS, MAIN, ...args],
    env,
    stderr: "pipe",
    cwd: ROOT,
  });
  let stderr = "";
  transport.stderr?.on("data", (chunk: Uint8Array | string) => {
    stderr += typeof chunk === "string" ? chunk : new TextDecoder().decode(chunk);
  });
  const client = new Client({ name: "lmbridge-test", version: "1.0.0" });
  await client.connect(transport);
  return {
    client,
    stderr: () => stderr,
    pid: transport.pid,
    call: async (name, a = {}, options = {}) =>
      await client.callTool({ name, arguments: a }, undefined, {
        onprogress: options.onprogress,
        signal: options.signal,
        timeout: options.timeout ?? 60_000,
        resetTimeoutOnProgress: true,
      }) as CallToolResult,
    close: async () => {
      await client.close().catch(() => {});
    },
  };
}

/** The text of a tool result. */
export function textOf(result: CallToolResult): string {
  return (result.content as { type: string; text?: string }[]).map((c) =>
    c.type === "text" ? c.text ?? "" : ""
  ).join("");
}
