/** Command-line parsing (SPEC §7): the command, its positional words and the flags. */
import { parseArgs } from "node:util";
import type { ConfigFlags } from "../config.ts";

/** A command of SPEC §7 (`help` and `version` come from the flags). */
export type Command = "serve" | "doctor" | "models" | "chat" | "agent" | "help" | "version";
const COMMANDS = new Set(["serve", "doctor", "models", "chat", "agent"]);

/** The parsed command line. */
export interface ParsedArgs {
  command: Command;
  positionals: string[];
  flags: ConfigFlags;
  mcp: string[];
  help: boolean;
}

/** A usage error: exit code 2. */
export class UsageError extends Error {
  override name = "UsageError";
}

/** Parses argv; throws UsageError on unknown flags or commands. */
export function parseCommandLine(argv: string[]): ParsedArgs {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      strict: true,
      options: {
        backend: { type: "string", multiple: true },
        model: { type: "string", short: "m" },
        "mcp-config": { type: "string" },
        config: { type: "string" },
        "log-level": { type: "string" },
        http: { type: "string" },
        mcp: { type: "string", multiple: true },
        help: { type: "boolean", short: "h" },
        version: { type: "boolean", short: "V" },
      },
    });
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  const { values, positionals } = parsed;
  let command: Command = "serve";
  let rest = positionals;
  if (positionals.length && COMMANDS.has(positionals[0])) {
    command = positionals[0] as Command;
    rest = positionals.slice(1);
  } else if (positionals.length) {
    throw new UsageError(`unknown command "${positionals[0]}" (try --help)`);
  }
  if (values.version) command = "version";
  const help = values.help ?? false;
  if (help && command === "serve" && positionals.length === 0) command = "help";
  if (values.http !== undefined && command !== "serve") {
    throw new UsageError("--http belongs to the serve command");
  }
  if (!help && (command === "serve" || command === "doctor" || command === "models")) {
    if (rest.length) throw new UsageError(`${command} takes no argument, got "${rest[0]}"`);
  }
  if (!help && command === "chat" && rest.join(" ").trim() === "") {
    throw new UsageError('chat needs a PROMPT, e.g. lmbridge chat "hello" (or - to read stdin)');
  }
  return {
    command,
    positionals: rest,
    help,
    mcp: values.mcp ?? [],
    flags: {
      backend: values.backend,
      model: values.model,
      mcpConfig: values["mcp-config"],
      config: values.config,
      logLevel: values["log-level"],
      http: values.http,
    },
  };
}

/** `--help` text: `main` and one per command. */
export const HELP: Record<string, string> = {
  main: `lmbridge — hand work to local models from any MCP client

Usage:
  lmbridge [serve] [--http HOST:PORT]   MCP server (stdio by default)
  lmbridge doctor                       checks backends, models and MCP servers, says how to fix
  lmbridge models                       table of models
  lmbridge chat PROMPT [--model M]      streams the answer to stdout
  lmbridge agent TASK --mcp NAME...     runs the agent, streaming its steps
  lmbridge --version | --help

Options (every command):
  --backend URL        a model server (repeatable; env LMBRIDGE_BACKENDS)
  --model M            default model (env DEFAULT_MODEL)
  --mcp-config PATH    MCP servers file for the agent (env MCP_JSON_PATH)
  --config PATH        JSON config file (env LMBRIDGE_CONFIG)
  --log-level LEVEL    debug | info | warn | error (env LOG_LEVEL)

Exit codes: 0 success, 1 failure, 2 bad usage or configuration.`,
  serve: `lmbridge serve [--http HOST:PORT]

Runs the MCP server. Without --http it speaks MCP over stdio (what Claude Code starts).
With --http it serves MCP Streamable HTTP on /mcp, plus GET /metrics (Prometheus) and
GET /healthz (200 when a backend answers, else 503). HOST defaults to 127.0.0.1 (":8080");
port 0 picks a free port. The listening URL is printed to stderr.
Bound to a non-loopback address it requires LMBRIDGE_HTTP_TOKEN; clients then send
"Authorization: Bearer <token>".`,
  doctor: `lmbridge doctor

Checks each backend (reachable, kind, auth), the models and the default model, and each MCP
server in the MCP servers file (starts, tool count). Prints a fix for every failure.
Exit code 1 when any check fails.`,
  models: `lmbridge models

Prints a table of every model on every backend: id, type, loaded, context length,
capabilities and backend. Exit code 1 when no backend answers.`,
  chat: `lmbridge chat PROMPT [--model M]

Streams a local model's answer to stdout. On a terminal, reasoning is shown apart (dimmed)
and a spinner shows waits (model loading); piped, stdout carries the answer only.
PROMPT "-" reads the prompt from stdin. Errors go to stderr as "Error [code]: …", exit 1.`,
  agent: `lmbridge agent TASK [--mcp NAME]... [--model M]

Runs the agent: the local model works on TASK with the tools of the named MCP servers (all
when none is named), streaming each step.`,
};
