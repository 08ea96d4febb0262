/**
 * lmbridge's entry point: parses the command line, loads the configuration, wires the
 * shared objects and runs the command. Nothing else lives here.
 */
import { HELP, parseCommandLine, UsageError } from "./src/cli/args.ts";
import { ConfigError, loadConfig } from "./src/config.ts";
import { createRuntime } from "./src/runtime.ts";
import { createLogger } from "./src/util/log.ts";
import { VERSION } from "./src/server/mcp_server.ts";
import { serveStdio } from "./src/cli/serve.ts";
import { serveHttp } from "./src/server/http.ts";
import { onInterrupt, Terminal } from "./src/cli/terminal.ts";
import { runDoctor } from "./src/cli/doctor.ts";
import { runModels } from "./src/cli/models.ts";
import { runChat } from "./src/cli/chat.ts";
import { runAgentCommand } from "./src/cli/agent.ts";

async function readStdin(): Promise<string> {
  return await new Response(Deno.stdin.readable).text();
}

async function main(argv: string[]): Promise<number> {
  let args;
  try {
    args = parseCommandLine(argv);
  } catch (err) {
    if (err instanceof UsageError) {
      console.error(`lmbridge: ${err.message}`);
      return 2;
    }
    throw err;
  }
  if (args.command === "version") {
    console.log(`lmbridge ${VERSION}`);
    return 0;
  }
  if (args.command === "help" || args.help) {
    console.log(HELP[args.command === "help" ? "main" : args.command] ?? HELP.main);
    return 0;
  }
  let config;
  try {
    config = loadConfig({
      flags: args.flags,
      env: Deno.env.toObject(),
      cwd: Deno.cwd(),
      home: Deno.env.get("HOME"),
    });
  } catch (err) {
    if (err instanceof ConfigError) {
      console.error(`lmbridge: ${err.message}`);
      return 2;
    }
    throw err;
  }
  // The one-shot commands report progress and failures themselves: JSON log lines only for
  // errors, unless a level was asked for.
  const quiet = args.command !== "serve" && args.flags.logLevel === undefined &&
    !Deno.env.get("LOG_LEVEL");
  const log = createLogger(quiet && config.logLevel === "info" ? "error" : config.logLevel);
  const runtime = createRuntime(config, log);
  // A stray rejection is logged, not fatal: other requests go on. An uncaught error still
  // ends lmbridge, but only after its MCP servers are stopped.
  globalThis.addEventListener("unhandledrejection", (event) => {
    event.preventDefault();
    log.error("unhandled rejection", { error: String(event.reason) });
  });
  globalThis.addEventListener("error", (event) => {
    event.preventDefault();
    log.error("uncaught error; shutting down", { error: String(event.error ?? event.message) });
    runtime.close().finally(() => Deno.exit(1));
  });
  switch (args.command) {
    case "serve":
      return config.http
        ? await serveHttp(runtime, { ...config.http, token: config.httpToken })
        : await serveStdio(runtime);
    case "doctor":
    case "models":
    case "chat":
    case "agent":
      return await runCommand(args.command, args.positionals, args.mcp, runtime);
    default:
      await runtime.close();
      console.error(`lmbridge: unknown command ${args.command}`);
      return 2;
  }
}

/** The one-shot commands: Ctrl-C cancels, the runtime is closed at the end. */
async function runCommand(
  command: "doctor" | "models" | "chat" | "agent",
  positionals: string[],
  mcp: string[],
  runtime: ReturnType<typeof createRuntime>,
): Promise<number> {
  const { app } = runtime;
  const term = new Terminal();
  using interrupt = onInterrupt({ beforeExit: () => runtime.close() });
  try {
    switch (command) {
      case "doctor":
        return await runDoctor({
          app,
          term,
          cwd: Deno.cwd(),
          home: Deno.env.get("HOME") ?? Deno.env.get("USERPROFILE"),
          openPool: () => runtime.pool,
          signal: interrupt.signal,
        });
      case "models":
        return await runModels({ app, term, signal: interrupt.signal });
      case "chat": {
        let prompt = positionals.join(" ");
        if (prompt === "-") prompt = await readStdin();
        if (prompt.trim() === "") {
          console.error("lmbridge: the prompt is empty");
          return 2;
        }
        return await runChat({ app, term, prompt, signal: interrupt.signal });
      }
      case "agent": {
        const task = positionals.join(" ");
        if (task.trim() === "") {
          console.error("lmbridge: the task is empty (lmbridge agent TASK --mcp NAME)");
          return 2;
        }
        return await runAgentCommand({
          app,
          host: runtime.pool,
          term,
          task,
          mcp,
          signal: interrupt.signal,
        });
      }
    }
  } catch (err) {
    if (!interrupt.signal.aborted) throw err;
    term.err("interrupted\n");
    return 1;
  } finally {
    term.stopSpinner();
    await runtime.close();
  }
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
