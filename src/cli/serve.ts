/** `lmbridge serve`: the MCP server on stdio, ending cleanly when stdin closes or on a signal. */
import { StdioServerTransport } from "@modelcontextprotocol/sdk/server/stdio.js";
import { createMcpServer } from "../server/mcp_server.ts";
import type { Runtime } from "../runtime.ts";

/** Serves MCP on stdin/stdout until the client goes away; returns the exit code. */
export async function serveStdio(runtime: Runtime): Promise<number> {
  const { app } = runtime;
  const server = createMcpServer(app, runtime.tools);
  const transport = new StdioServerTransport();
  const closed = Promise.withResolvers<void>();
  transport.onclose = () => closed.resolve();
  const stop = () => closed.resolve();
  const signals: Deno.Signal[] = ["SIGTERM", "SIGINT"];
  for (const s of signals) Deno.addSignalListener(s, stop);
  // The SDK's stdio transport does not notice stdin ending; watch it ourselves. The client
  // going away ends every request it made.
  globalThis.process?.stdin?.on?.("end", stop);
  await server.connect(transport);
  app.log.info("lmbridge serving MCP on stdio", { backends: app.config.backends });
  await closed.promise;
  for (const s of signals) Deno.removeSignalListener(s, stop);
  await runtime.close();
  await server.close().catch(() => {});
  return 0;
}
