import assert from "node:assert/strict";
import { join } from "node:path";
import { Server } from "@modelcontextprotocol/sdk/server/index.js";
import { WebStandardStreamableHTTPServerTransport } from "@modelcontextprotocol/sdk/server/webStandardStreamableHttp.js";
import type { Transport } from "@modelcontextprotocol/sdk/shared/transport.js";
import type { JSONRPCMessage } from "@modelcontextprotocol/sdk/types.js";
import { CallToolRequestSchema, ListToolsRequestSchema } from "@modelcontextprotocol/sdk/types.js";
import { SessionPool, type SessionPoolOptions } from "../src/downstream/session_pool.ts";
import type { SelfIdentity } from "../src/downstream/mcp_config.ts";
import { BridgeError } from "../src/util/errors.ts";
import { delay } from "../src/util/async.ts";
import { DENO_RUN, isRunning, MCP_SERVERS, rejection } from "./support/helpers.ts";

const FAULTY = new URL("./support/faulty_mcp_server.ts", import.meta.url).pathname;
const SELF: SelfIdentity = {
  execPath: Deno.execPath(),
  mainModulePath: new URL("../main.ts", import.meta.url).pathname,
  compiled: false,
};
// Children run without our deno.json / deno.lock so they never touch the project's lock file.

type Servers = Record<string, Record<string, unknown>>;

/** A temp dir with an MCP servers file, the faulty servers' event log and a pool on them. */
class Fixture {
  readonly dir = Deno.makeTempDirSync({ prefix: "lmbridge_pool_" });
  readonly configPath = join(this.dir, ".mcp.json");
  readonly logPath = join(this.dir, "events.log");
  readonly pool: SessionPool;

  constructor(servers: Servers, options: Partial<SessionPoolOptions> = {}) {
    this.write(servers);
    this.pool = new SessionPool({
      configPath: this.configPath,
      env: Deno.env.toObject(),
      self: SELF,
      connectTimeoutMs: 20_000,
      ...options,
    });
  }

  faulty(mode: string, ...args: string[]): Record<string, unknown> {
    return {
      command: Deno.execPath(),
      args: [...DENO_RUN, FAULTY, mode, ...args],
      env: { FAULTY_MCP_LOG: this.logPath },
    };
  }

  write(servers: Servers): void {
    Deno.writeTextFileSync(this.configPath, JSON.stringify({ mcpServers: servers }, null, 2));
  }

  /** Lines `<event> <pid> …` the faulty servers wrote. */
  events(event: string): number[] {
    let text = "";
    try {
      text = Deno.readTextFileSync(this.logPath);
    } catch {
      return [];
    }
    return text.split("\n").filter((l) => l.startsWith(`${event} `)).map((l) =>
      Number(l.split(" ")[1])
    );
  }

  async pid(server: string): Promise<number | undefined> {
    return (await this.pool.list()).servers.find((s) => s.name === server)?.pid;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.pool.close();
    Deno.removeSync(this.dir, { recursive: true });
  }
}

async function waitFor(what: string, check: () => boolean | Promise<boolean>, ms = 5_000) {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await delay(25);
  }
}

function text(result: { content: unknown[] }): string {
  return (result.content as { type: string; text?: string }[]).map((c) => c.text ?? "").join("");
}

Deno.test("real servers: one session per server across calls; memory and filesystem tools work", async () => {
  await using f = new Fixture({});
  const files = join(f.dir, "files");
  Deno.mkdirSync(files);
  f.write({
    memory: {
      command: Deno.execPath(),
      args: [...DENO_RUN, MCP_SERVERS.memory],
      env: { MEMORY_FILE_PATH: join(f.dir, "memory.jsonl") },
    },
    filesystem: {
      command: Deno.execPath(),
      args: [...DENO_RUN, MCP_SERVERS.filesystem, files],
    },
  });
  const { pool } = f;

  const [memoryTools, fsTools] = await Promise.all([
    pool.tools("memory"),
    pool.tools("filesystem"),
  ]);
  assert.ok(memoryTools.some((t) => t.name === "create_entities" && t.server === "memory"));
  assert.ok(fsTools.some((t) => t.name === "write_file"));
  const memoryPid = await f.pid("memory");
  assert.ok(memoryPid && isRunning(memoryPid));

  await pool.callTool("memory", "create_entities", {
    entities: [{ name: "lmbridge", entityType: "project", observations: ["bridges MCP"] }],
  });
  const graph = await pool.callTool("memory", "read_graph", {});
  assert.match(text(graph), /lmbridge/);
  assert.equal(await f.pid("memory"), memoryPid, "the second call reuses the session");

  const target = join(files, "hello.txt");
  const written = await pool.callTool("filesystem", "write_file", {
    path: target,
    content: "hi from the pool",
  });
  assert.notEqual(written.isError, true, text(written));
  assert.equal(Deno.readTextFileSync(target), "hi from the pool");

  const listed = await pool.list();
  assert.equal(listed.configPath, f.configPath);
  assert.deepEqual(
    listed.servers.map((s) => [s.name, s.status, s.tools]),
    [["memory", "connected", memoryTools.length], ["filesystem", "connected", fsTools.length]],
  );
  assert.deepEqual(pool.snapshot(), { open: 2, failed: 0, servers: 2, configPath: f.configPath });

  const pids = listed.servers.map((s) => s.pid!);
  await pool.close();
  assert.deepEqual(pids.filter(isRunning), [], "close() leaves no process behind");
});

Deno.test("concurrent first use opens a single session", async () => {
  await using f = new Fixture({});
  f.write({ a: f.faulty("slow") });
  const lists = await Promise.all(Array.from({ length: 6 }, () => f.pool.tools("a")));
  assert.deepEqual(lists[5].map((t) => t.name), ["sleep", "echo"]);
  assert.equal(f.events("start").length, 1);
});

Deno.test("hot reload restarts only the changed server and closes the removed one", async () => {
  await using f = new Fixture({});
  f.write({ a: f.faulty("slow"), b: f.faulty("slow"), c: f.faulty("slow") });
  const { pool } = f;
  await Promise.all(["a", "b", "c"].map((s) => pool.callTool(s, "echo", { text: s })));
  const [a1, b1, c1] = [await f.pid("a"), await f.pid("b"), await f.pid("c")];

  const changedA = f.faulty("slow");
  changedA.env = { ...changedA.env as Record<string, string>, EXTRA: "1" };
  f.write({ a: changedA, b: f.faulty("slow"), d: f.faulty("slow") });
  const listed = await pool.list();
  assert.deepEqual(
    listed.servers.map((s) => [s.name, s.status]),
    [["a", "idle"], ["b", "connected"], ["d", "idle"]],
  );
  await waitFor("the removed server to end", () => !isRunning(c1!));
  await waitFor("the changed server's old process to end", () => !isRunning(a1!));

  assert.equal(text(await pool.callTool("a", "echo", { text: "again" })), "again");
  const a2 = await f.pid("a");
  assert.ok(a2 && a2 !== a1, "the changed entry runs in a new process");
  assert.equal(await f.pid("b"), b1, "the unchanged entry keeps its process");
  const gone = await rejection(pool.tools("c"));
  assert.equal(gone.code, "mcp_server_unavailable");
  assert.match(gone.message, /no MCP server named "c"/);

  // A half-written file is reported, running sessions are left alone until it parses again.
  Deno.writeTextFileSync(f.configPath, '{"mcpServers": {"a": ');
  const broken = await pool.list();
  assert.match(broken.error ?? "", /\.mcp\.json: not valid JSON/);
  assert.deepEqual(broken.servers, []);
  assert.match((await rejection(pool.tools("b"))).hint ?? "", /not valid JSON/);
  assert.ok(isRunning(b1!));
  f.write({ a: changedA, b: f.faulty("slow"), d: f.faulty("slow") });
  await pool.callTool("b", "echo", { text: "still here" });
  assert.equal(await f.pid("b"), b1);
});

Deno.test("faulty servers fail with clear errors while the others keep working", async () => {
  await using f = new Fixture({}, { connectTimeoutMs: 2_000, restartBackoffMs: 60_000 });
  f.write({
    exits: f.faulty("exit"),
    hangs: f.faulty("hang"),
    garbage: f.faulty("garbage"),
    missing: { command: "lmbridge-no-such-command-xyz" },
    good: f.faulty("slow"),
  });
  const { pool } = f;
  const started = Date.now();
  const impatient = rejection(pool.tools("hangs", AbortSignal.timeout(300)));
  const [exits, hangs, garbage, missing, good] = await Promise.allSettled(
    ["exits", "hangs", "garbage", "missing", "good"].map((s) => pool.tools(s)),
  );
  assert.equal((await impatient).code, "timeout", "a caller's deadline ends its own wait");
  const reason = (r: PromiseSettledResult<unknown>) => {
    assert.equal(r.status, "rejected");
    const err = (r as PromiseRejectedResult).reason;
    assert.ok(err instanceof BridgeError);
    assert.equal(err.code, "mcp_server_unavailable");
    return err;
  };
  assert.match(
    reason(exits).message,
    /"exits" exited during start-up; its stderr said: faulty server: exiting at once/,
  );
  assert.match(reason(hangs).message, /"hangs" did not answer initialize within 2s/);
  assert.match(reason(hangs).hint ?? "", /run it by hand to see why: .*faulty_mcp_server\.ts hang/);
  assert.match(reason(garbage).message, /"garbage" wrote something that is not JSON-RPC/);
  assert.match(reason(missing).message, /command not found: lmbridge-no-such-command-xyz/);
  assert.equal(good.status, "fulfilled");
  assert.ok(Date.now() - started < 10_000);

  assert.equal(text(await pool.callTool("good", "echo", { text: "fine" })), "fine");
  const again = Date.now();
  const fast = await rejection(pool.tools("hangs"));
  assert.ok(Date.now() - again < 500, "a failed server fails fast during its backoff");
  assert.match(fast.message, /next restart attempt in \d+s/);

  const statuses = (await pool.list()).servers.map((s) => [s.name, s.status]);
  assert.deepEqual(statuses, [
    ["exits", "failed"],
    ["hangs", "failed"],
    ["garbage", "failed"],
    ["missing", "failed"],
    ["good", "connected"],
  ]);
  assert.deepEqual(pool.snapshot().failed, 4);
  const goodPid = await f.pid("good");
  const failedPids = f.events("start").filter((pid) => pid !== goodPid);
  assert.equal(failedPids.length, 3);
  await waitFor("failed servers to be ended", () => failedPids.every((pid) => !isRunning(pid)));
});

Deno.test("a cancelled call ends within a second and the server sees notifications/cancelled", async () => {
  await using f = new Fixture({});
  f.write({ slow: f.faulty("slow") });
  const { pool } = f;
  await pool.tools("slow");
  const pid = await f.pid("slow");
  const abort = new AbortController();
  const call = pool.callTool("slow", "sleep", { ms: 30_000 }, { signal: abort.signal });
  await waitFor("the call to reach the server", () => f.events("call").length === 1);
  const aborted = Date.now();
  abort.abort();
  const err = await rejection(call);
  assert.equal(err.code, "cancelled");
  assert.ok(Date.now() - aborted < 1_000, "the call ends within a second of the abort");
  await waitFor("the server to see the cancellation", () => f.events("cancelled").length === 1);
  assert.equal(text(await pool.callTool("slow", "echo", { text: "ok" })), "ok");
  assert.equal(await f.pid("slow"), pid, "the session survives a cancelled call");
});

Deno.test("a call past its timeout fails with mcp_tool_failed naming the seconds", async () => {
  await using f = new Fixture({}, { callTimeoutMs: 1_000 });
  f.write({ slow: f.faulty("slow") });
  const err = await rejection(f.pool.callTool("slow", "sleep", { ms: 20_000 }));
  assert.equal(err.code, "mcp_tool_failed");
  assert.match(err.message, /tool sleep on MCP server "slow" timed out after 1s/);
  await waitFor("the server to see the cancellation", () => f.events("cancelled").length === 1);
  const quick = await f.pool.callTool("slow", "sleep", { ms: 10 }, { timeoutMs: 5_000 });
  assert.equal(text(quick), "slept");
});

Deno.test("a crashed server is restarted on the next use after its backoff", async () => {
  await using f = new Fixture({}, { restartBackoffMs: 1_500 });
  f.write({ fragile: f.faulty("crash_after", "1") });
  const { pool } = f;
  assert.equal(text(await pool.callTool("fragile", "echo", { text: "one" })), "one");
  const [first] = f.events("start");
  await waitFor("the crash", () => !isRunning(first));
  await waitFor(
    "the pool to notice",
    async () => (await pool.list()).servers[0].status === "failed",
  );

  const during = await rejection(pool.callTool("fragile", "echo", { text: "two" }));
  assert.equal(during.code, "mcp_server_unavailable");
  assert.match(during.message, /"fragile" exited.*next restart attempt in [12]s/);
  const status = (await pool.list()).servers[0];
  assert.equal(status.status, "failed");
  assert.match(status.error ?? "", /exited/);

  await delay(1_600);
  assert.equal(text(await pool.callTool("fragile", "echo", { text: "three" })), "three");
  const starts = f.events("start");
  assert.equal(starts.length, 2);
  assert.notEqual(starts[1], first);
});

Deno.test("sessions idle past the TTL are closed and reopened on demand", async () => {
  await using f = new Fixture({}, { idleTtlMs: 1_000 });
  f.write({ a: f.faulty("slow") });
  await f.pool.tools("a");
  const pid = (await f.pid("a"))!;
  await delay(1_300);
  const status = (await f.pool.list()).servers[0];
  assert.equal(status.status, "idle");
  assert.equal(status.tools, 2, "the tool count stays known");
  await waitFor("the idle server to end", () => !isRunning(pid));
  await f.pool.callTool("a", "echo", { text: "y" });
  assert.notEqual(await f.pid("a"), pid);
});

Deno.test("close() ends every child, even one ignoring stdin EOF and SIGTERM, and opens nothing after", async () => {
  await using f = new Fixture({});
  f.write({
    polite: f.faulty("slow"),
    stubborn: f.faulty("slow", "--ignore-eof", "--ignore-term"),
    starting: f.faulty("hang"),
  });
  const { pool } = f;
  await Promise.all([pool.tools("polite"), pool.tools("stubborn")]);
  const pending = rejection(pool.tools("starting"));
  await waitFor("all three children", () => f.events("start").length === 3);
  const pids = f.events("start");
  assert.deepEqual(pids.filter(isRunning), pids);

  const started = Date.now();
  await Promise.all([pool.close(), pool.close()]);
  assert.ok(Date.now() - started < 6_000);
  assert.deepEqual(pids.filter(isRunning), [], "no child outlives close()");
  assert.ok(f.events("term").length >= 1, "the stubborn one got SIGTERM, then SIGKILL");
  assert.equal((await pending).code, "mcp_server_unavailable");
  const after = await rejection(pool.tools("polite"));
  assert.match(after.message, /pool is closed/);
  assert.equal(f.events("start").length, 3);
});

Deno.test("self, disabled and unknown servers are never started and say why", async () => {
  await using f = new Fixture({});
  f.write({
    me: { command: Deno.execPath(), args: ["run", "-A", SELF.mainModulePath] },
    off: { ...f.faulty("slow"), disabled: true },
  });
  const { pool } = f;
  assert.deepEqual(
    (await pool.list()).servers.map((s) => [s.name, s.status]),
    [["me", "self"], ["off", "disabled"]],
  );
  assert.match((await rejection(pool.tools("me"))).message, /is lmbridge itself/);
  assert.match((await rejection(pool.tools("off"))).message, /is disabled/);
  const unknown = await rejection(pool.callTool("nope", "x", {}));
  assert.equal(unknown.code, "mcp_server_unavailable");
  assert.match(unknown.hint ?? "", /add it to the mcpServers map of .*\.mcp\.json/);
  assert.equal(f.events("start").length, 0);
  const none = new SessionPool({ configPath: undefined, env: {}, self: SELF });
  assert.match((await rejection(none.tools("x"))).hint ?? "", /no MCP servers file found/);
  await none.close();
});

// --- HTTP and SSE servers in this process -------------------------------------------------

function addServer(): Server {
  const server = new Server({ name: "adder", version: "1.0.0" }, { capabilities: { tools: {} } });
  server.setRequestHandler(ListToolsRequestSchema, () => ({
    tools: [{
      name: "add",
      inputSchema: {
        type: "object" as const,
        properties: { a: { type: "number" }, b: { type: "number" } },
      },
    }],
  }));
  server.setRequestHandler(CallToolRequestSchema, (req: { params: { arguments?: unknown } }) => {
    const { a, b } = req.params.arguments as { a: number; b: number };
    return { content: [{ type: "text" as const, text: String(a + b) }] };
  });
  return server;
}

/** An MCP server speaking the legacy SSE transport (GET /sse + POST /message). */
class SseTransport implements Transport {
  onclose?: () => void;
  onerror?: (error: Error) => void;
  onmessage?: (message: JSONRPCMessage) => void;
  readonly body: ReadableStream<Uint8Array>;
  #controller!: ReadableStreamDefaultController<Uint8Array>;

  constructor() {
    this.body = new ReadableStream({
      start: (c) => {
        this.#controller = c;
        this.#event("endpoint", "/message");
      },
      cancel: () => this.onclose?.(),
    });
  }

  #event(name: string, data: string) {
    this.#controller.enqueue(new TextEncoder().encode(`event: ${name}\ndata: ${data}\n\n`));
  }

  start(): Promise<void> {
    return Promise.resolve();
  }

  send(message: JSONRPCMessage): Promise<void> {
    this.#event("message", JSON.stringify(message));
    return Promise.resolve();
  }

  close(): Promise<void> {
    try {
      this.#controller.close();
    } catch {
      // already closed by the client
    }
    return Promise.resolve();
  }
}

Deno.test("Streamable HTTP and SSE servers are reached with their headers", async () => {
  const seen: string[] = [];
  const http = new WebStandardStreamableHTTPServerTransport({
    sessionIdGenerator: () => crypto.randomUUID(),
  });
  const httpServer = addServer();
  await httpServer.connect(http);
  let sse: SseTransport | undefined;
  const sseServer = addServer();
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async (req) => {
    const path = new URL(req.url).pathname;
    seen.push(`${req.method} ${path} ${req.headers.get("authorization")}`);
    if (path === "/mcp") return http.handleRequest(req);
    if (path === "/sse" && req.method === "GET") {
      sse = new SseTransport();
      await sseServer.connect(sse);
      return new Response(sse.body, { headers: { "content-type": "text/event-stream" } });
    }
    if (path === "/message" && sse) {
      sse.onmessage?.(await req.json());
      return new Response(null, { status: 202 });
    }
    return new Response("not found", { status: 404 });
  });
  const base = `http://127.0.0.1:${server.addr.port}`;
  try {
    await using f = new Fixture({}, { env: { TOKEN: "s3cret" } });
    f.write({
      web: { type: "http", url: `${base}/mcp`, headers: { Authorization: "Bearer ${TOKEN}" } },
      legacy: { type: "sse", url: `${base}/sse`, headers: { Authorization: "Basic ${TOKEN}" } },
      down: { type: "http", url: "http://127.0.0.1:9/mcp" },
    });
    const { pool } = f;
    assert.equal(text(await pool.callTool("web", "add", { a: 2, b: 3 })), "5");
    assert.equal(text(await pool.callTool("legacy", "add", { a: 4, b: 5 })), "9");
    assert.deepEqual((await pool.tools("web")).map((t) => t.name), ["add"]);
    assert.ok(seen.some((s) => s.startsWith("POST /mcp Bearer s3cret")));
    assert.ok(seen.some((s) => s === "GET /sse Basic s3cret"));
    assert.ok(seen.some((s) => s === "POST /message Basic s3cret"));
    const down = await rejection(pool.tools("down"));
    assert.match(
      down.message,
      /cannot connect to MCP server "down" at http:\/\/127\.0\.0\.1:9\/mcp/,
    );
    assert.deepEqual(
      (await pool.list()).servers.map((s) => [s.name, s.transport, s.status]),
      [["web", "http", "connected"], ["legacy", "sse", "connected"], ["down", "http", "failed"]],
    );
  } finally {
    await httpServer.close();
    await sseServer.close();
    await server.shutdown();
  }
});
