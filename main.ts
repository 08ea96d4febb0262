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
  const log = createLogger(config.logLevel);
  const runtime = createRuntime(config, log);
  switch (args.command) {
    case "serve":
      return await serveStdio(runtime);
    default:
      console.error(`lmbridge: the ${args.command} command is not available yet`);
      return 2;
  }
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
