/** `lmbridge serve`: the MCP server on stdio, ending cleanly when stdin closes or on a signal. */
import { createMcpServer } from "../server/mcp_server.ts";
import { LineTransport } from "../server/stdio_transport.ts";
import type { Runtime } from "../runtime.ts";

/** Serves MCP on stdin/stdout until the client goes away; returns the exit code. */
export async function serveStdio(runtime: Runtime): Promise<number> {
  const { app } = runtime;
  const server = createMcpServer(app, runtime.tools);
  const transport = new LineTransport({ maxMessageBytes: app.config.maxMessageBytes });
  const closed = Promise.withResolvers<void>();
  // stdin ending is the client going away: every request it made ends with it.
  transport.onclose = () => closed.resolve();
  const stop = () => closed.resolve();
  const signals: Deno.Signal[] = Deno.build.os === "windows"
    ? ["SIGINT"]
    : ["SIGTERM", "SIGINT", "SIGHUP"];
  for (const s of signals) Deno.addSignalListener(s, stop);
  await server.connect(transport);
  app.log.info("lmbridge serving MCP on stdio", { backends: app.config.backends });
  await closed.promise;
  for (const s of signals) Deno.removeSignalListener(s, stop);
  await runtime.close();
  await server.close().catch(() => {});
  return 0;
}
