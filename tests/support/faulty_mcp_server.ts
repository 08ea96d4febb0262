/**
 * A scripted MCP server (stdio, hand-written JSON-RPC, no dependencies) for fault cases.
 *
 *   deno run -A tests/support/faulty_mcp_server.ts MODE [N] [--ignore-eof] [--ignore-term]
 *
 * Modes: `exit` exits at once (code 3, a line on stderr); `hang` never answers initialize;
 * `garbage` writes non-JSON to stdout for every line it reads; `slow` is a working server
 * with `sleep {ms}` (ends early, without answering, on notifications/cancelled) and
 * `echo {text}`; `crash_after N` works like `slow` and exits after N tool calls.
 * `--ignore-eof` keeps running after stdin closes; `--ignore-term` ignores SIGTERM.
 * With `FAULTY_MCP_LOG` set, events are appended there: `start <pid> <mode>`,
 * `call <pid> <tool>`, `cancelled <pid> <requestId>`, `eof <pid>`.
 */

const [mode = "slow", ...rest] = Deno.args;
const ignoreEof = rest.includes("--ignore-eof");
const crashAfter = mode === "crash_after" ? Number(rest.find((a) => /^\d+$/.test(a)) ?? 1) : -1;
const logPath = Deno.env.get("FAULTY_MCP_LOG");
const encoder = new TextEncoder();

function log(event: string): void {
  if (logPath) Deno.writeTextFileSync(logPath, `${event}\n`, { append: true });
}

function write(message: unknown): void {
  Deno.stdout.writeSync(encoder.encode(JSON.stringify(message) + "\n"));
}

/** Keeps the process alive although nothing else is pending. */
function stayAlive(): void {
  setInterval(() => {}, 1 << 30);
}

if (rest.includes("--ignore-term")) {
  Deno.addSignalListener("SIGTERM", () => log(`term ${Deno.pid}`));
}
log(`start ${Deno.pid} ${mode}`);

type Message = { id?: number | string; method?: string; params?: Record<string, unknown> };

const pending = new Map<number | string, () => void>();
let calls = 0;

const tools = [
  {
    name: "sleep",
    description: "Sleeps for ms milliseconds.",
    inputSchema: { type: "object", properties: { ms: { type: "integer" } }, required: ["ms"] },
  },
  {
    name: "echo",
    description: "Returns text.",
    inputSchema: { type: "object", properties: { text: { type: "string" } }, required: ["text"] },
  },
];

function handle(msg: Message): void {
  const { id, method, params = {} } = msg;
  if (method === "notifications/cancelled") {
    const requestId = params.requestId as number | string;
    log(`cancelled ${Deno.pid} ${requestId}`);
    pending.get(requestId)?.();
    return;
  }
  if (id === undefined) return; // other notifications
  switch (method) {
    case "initialize":
      return write({
        jsonrpc: "2.0",
        id,
        result: {
          protocolVersion: params.protocolVersion ?? "2025-06-18",
          capabilities: { tools: {} },
          serverInfo: { name: `faulty-${mode}`, version: "0.0.0" },
        },
      });
    case "ping":
      return write({ jsonrpc: "2.0", id, result: {} });
    case "tools/list":
      return write({ jsonrpc: "2.0", id, result: { tools } });
    case "tools/call":
      return void callTool(id, params);
    default:
      return write({ jsonrpc: "2.0", id, error: { code: -32601, message: `no ${method}` } });
  }
}

async function callTool(id: number | string, params: Record<string, unknown>): Promise<void> {
  const name = String(params.name);
  const args = (params.arguments ?? {}) as Record<string, unknown>;
  log(`call ${Deno.pid} ${name}`);
  if (name === "echo") {
    write({ jsonrpc: "2.0", id, result: { content: [{ type: "text", text: String(args.text) }] } });
  } else if (name === "sleep") {
    const cancelled = await new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => resolve(false), Number(args.ms));
      pending.set(id, () => {
        clearTimeout(timer);
        resolve(true);
      });
    });
    pending.delete(id);
    if (!cancelled) {
      write({ jsonrpc: "2.0", id, result: { content: [{ type: "text", text: "slept" }] } });
    }
  } else {
    write({
      jsonrpc: "2.0",
      id,
      result: { content: [{ type: "text", text: `unknown tool ${name}` }], isError: true },
    });
  }
  if (crashAfter >= 0 && ++calls >= crashAfter) {
    log(`crash ${Deno.pid}`);
    Deno.exit(1);
  }
}

async function readLines(onLine: (line: string) => void): Promise<void> {
  let buffer = "";
  for await (const chunk of Deno.stdin.readable.pipeThrough(new TextDecoderStream())) {
    buffer += chunk;
    let nl: number;
    while ((nl = buffer.indexOf("\n")) !== -1) {
      const line = buffer.slice(0, nl).trim();
      buffer = buffer.slice(nl + 1);
      if (line) onLine(line);
    }
  }
  log(`eof ${Deno.pid}`);
  if (ignoreEof) stayAlive();
  else Deno.exit(0);
}

switch (mode) {
  case "exit":
    console.error("faulty server: exiting at once as asked");
    Deno.exit(3);
    break;
  case "hang":
    console.error("faulty server: hanging, never answering");
    stayAlive();
    break;
  case "garbage":
    Deno.stdout.writeSync(encoder.encode("Welcome! this is not JSON-RPC\n"));
    await readLines((line) => {
      Deno.stdout.writeSync(encoder.encode(`garbage in reply to ${line.length} bytes\n`));
    });
    break;
  case "slow":
  case "crash_after":
    await readLines((line) => {
      try {
        handle(JSON.parse(line));
      } catch (err) {
        console.error("faulty server: bad line", err);
      }
    });
    break;
  default:
    console.error(`faulty server: unknown mode ${mode}`);
    Deno.exit(2);
}
