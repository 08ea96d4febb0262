/**
 * `serve --http`: MCP Streamable HTTP on `/mcp` (one SDK transport and one MCP server per
 * session, all sharing the one runtime), `GET /metrics` and `GET /healthz`. Every request
 * passes a DNS-rebinding guard (Host, Origin) and, when a token is configured (required on a
 * non-loopback address), a bearer-token check.
 */
import { WebStandardStreamableHTTPServerTransport } from "@modelcontextprotocol/sdk/server/webStandardStreamableHttp.js";
import type { Server } from "@modelcontextprotocol/sdk/server/index.js";
import type { JSONRPCMessage } from "@modelcontextprotocol/sdk/types.js";
import type { Runtime } from "../runtime.ts";
import { createMcpServer } from "./mcp_server.ts";
import { METRICS_CONTENT_TYPE, PrometheusMetrics } from "./metrics.ts";

export interface HttpServerOptions {
  /** Address to bind. Default 127.0.0.1. */
  hostname?: string;
  /** 0 picks a free port. */
  port: number;
  /** Bearer token every request must carry; required when `hostname` is not loopback. */
  token?: string;
  /** Open sessions at most; the longest-idle one is closed to make room. Default 1000. */
  maxSessions?: number;
  /** A session without requests for this long is closed. Default 1 h. */
  sessionIdleMs?: number;
  /** Largest POST body. Default 32 MiB (images travel as data URLs). */
  maxBodyBytes?: number;
  /** More Host names to accept besides loopback names and the bound address. */
  allowedHosts?: string[];
  /** How long a /healthz probe result is reused. Default 2 s. */
  healthTtlMs?: number;
  now?: () => number;
}

/** A running HTTP transport. */
export interface HttpServer {
  /** The bound address and port (the real port when 0 was asked). */
  readonly hostname: string;
  readonly port: number;
  /** The MCP endpoint, e.g. `http://127.0.0.1:8080/mcp`. */
  readonly url: string;
  /** Open MCP sessions. */
  sessionCount(): number;
  /** Ends every session (aborting its requests) and stops listening. Idempotent. */
  close(): Promise<void>;
}

/** Refusal to bind: a non-loopback address without a token. */
export class HttpBindError extends Error {
  override name = "HttpBindError";
}

/**
 * Starts the HTTP transport over `runtime`. The caller closes the runtime.
 *
 * @example
 * const http = await startHttpServer(runtime, { hostname: "127.0.0.1", port: 0 });
 * console.error(`lmbridge listening on ${http.url}`);
 * await http.close();
 */
export async function startHttpServer(
  runtime: Runtime,
  options: HttpServerOptions,
): Promise<HttpServer> {
  const hostname = options.hostname ?? "127.0.0.1";
  if (!isLoopbackHost(hostname) && !options.token) {
    throw new HttpBindError(
      `serve --http ${hostname}: a non-loopback address needs a bearer token; set LMBRIDGE_HTTP_TOKEN to a long random secret (clients send "Authorization: Bearer <token>")`,
    );
  }
  const handler = new McpHttpHandler(runtime, { ...options, hostname });
  await handler.init();
  const listening = Promise.withResolvers<void>();
  let server: Deno.HttpServer<Deno.NetAddr>;
  try {
    server = Deno.serve({
      hostname,
      port: options.port,
      onListen: () => listening.resolve(),
      onError: (err) => {
        runtime.app.log.error("http handler failed", { error: String(err) });
        return jsonResponse({ error: "internal error" }, 500);
      },
    }, (req) => handler.handle(req));
  } catch (err) {
    await handler.close();
    throw err;
  }
  await listening.promise;
  const addr = server.addr as Deno.NetAddr;
  const host = addr.hostname.includes(":") ? `[${addr.hostname}]` : addr.hostname;
  let closing: Promise<void> | undefined;
  return {
    hostname: addr.hostname,
    port: addr.port,
    url: `http://${host}:${addr.port}/mcp`,
    sessionCount: () => handler.sessionCount(),
    close: () => {
      closing ??= (async () => {
        await handler.close();
        await server.shutdown();
      })();
      return closing;
    },
  };
}

/**
 * `lmbridge serve --http HOST:PORT`: serves until SIGINT / SIGTERM, then shuts the runtime
 * down. Prints `lmbridge listening on http://HOST:PORT/mcp` to stderr. Returns the exit code
 * (2 for a non-loopback address without LMBRIDGE_HTTP_TOKEN).
 */
export async function serveHttp(
  runtime: Runtime,
  options: { host: string; port: number; token?: string },
): Promise<number> {
  let http: HttpServer;
  try {
    http = await startHttpServer(runtime, {
      hostname: options.host,
      port: options.port,
      token: options.token,
    });
  } catch (err) {
    await runtime.close();
    if (err instanceof HttpBindError) {
      console.error(`lmbridge: ${err.message}`);
      return 2;
    }
    console.error(`lmbridge: cannot listen on ${options.host}:${options.port}: ${String(err)}`);
    return 1;
  }
  console.error(`lmbridge listening on ${http.url}`);
  runtime.app.log.info("lmbridge serving MCP over HTTP", {
    url: http.url,
    backends: runtime.app.config.backends,
  });
  const stopped = Promise.withResolvers<void>();
  const stop = () => stopped.resolve();
  const signals: Deno.Signal[] = Deno.build.os === "windows"
    ? ["SIGINT"]
    : ["SIGINT", "SIGTERM", "SIGHUP"];
  for (const s of signals) Deno.addSignalListener(s, stop);
  await stopped.promise;
  for (const s of signals) Deno.removeSignalListener(s, stop);
  await runtime.close();
  await http.close();
  return 0;
}

// --- the handler -------------------------------------------------------------------------

interface Session {
  id?: string;
  readonly transport: WebStandardStreamableHTTPServerTransport;
  readonly server: Server;
  lastSeen: number;
  /** HTTP exchanges in progress (a held-open GET stream counts). */
  open: number;
  /** POSTs carrying requests in progress. */
  busy: number;
  closed?: Promise<void>;
}

const encoder = new TextEncoder();

class McpHttpHandler {
  readonly #runtime: Runtime;
  readonly #hostname: string;
  readonly #token?: string;
  #tokenDigest?: Uint8Array;
  readonly #maxSessions: number;
  readonly #idleMs: number;
  readonly #maxBody: number;
  readonly #allowedHosts: Set<string>;
  readonly #healthTtlMs: number;
  readonly #now: () => number;
  readonly #sessions = new Map<string, Session>();
  /** Sessions not yet initialized or still shutting down; closed with the rest. */
  readonly #all = new Set<Session>();
  readonly #metrics: PrometheusMetrics;
  readonly #sweep: ReturnType<typeof setInterval>;
  #health?: { at: number; result: Promise<HealthReport> };
  #closed = false;

  constructor(runtime: Runtime, options: HttpServerOptions & { hostname: string }) {
    this.#runtime = runtime;
    this.#hostname = normalizeHost(options.hostname);
    this.#token = options.token;
    this.#maxSessions = options.maxSessions ?? 1000;
    this.#idleMs = options.sessionIdleMs ?? 3600_000;
    this.#maxBody = options.maxBodyBytes ?? 32 * 1024 * 1024;
    this.#allowedHosts = new Set((options.allowedHosts ?? []).map(normalizeHost));
    this.#healthTtlMs = options.healthTtlMs ?? 2_000;
    this.#now = options.now ?? Date.now;
    this.#metrics = new PrometheusMetrics(runtime.app, { sessions: () => this.#sessions.size });
    if (!isLoopbackHost(this.#hostname)) {
      // Reachable from the network, also by the machine's own name.
      try {
        const name = Deno.hostname().toLowerCase();
        this.#allowedHosts.add(name).add(`${name}.local`);
      } catch {
        // No --allow-sys: IP literals and loopback names still work.
      }
    }
    this.#sweep = setInterval(() => this.#closeIdle(), Math.min(60_000, this.#idleMs));
    Deno.unrefTimer(this.#sweep);
  }

  async init() {
    if (this.#token) this.#tokenDigest = await sha256(this.#token);
  }

  sessionCount(): number {
    return this.#sessions.size;
  }

  async handle(req: Request): Promise<Response> {
    const denied = this.#checkHostAndOrigin(req) ?? await this.#checkToken(req);
    if (denied) return denied;
    const path = new URL(req.url).pathname;
    if (path === "/mcp") return await this.#mcp(req);
    if (path === "/metrics" || path === "/healthz") {
      if (req.method !== "GET") {
        return jsonResponse({ error: "method not allowed" }, 405, { allow: "GET" });
      }
      if (path === "/metrics") {
        return new Response(this.#metrics.render(), {
          headers: { "content-type": METRICS_CONTENT_TYPE },
        });
      }
      const report = await this.#healthReport();
      return jsonResponse(report, report.ok ? 200 : 503, { "cache-control": "no-store" });
    }
    return jsonResponse({ error: "not found; MCP is served on /mcp" }, 404);
  }

  async close() {
    this.#closed = true;
    clearInterval(this.#sweep);
    await Promise.all([...this.#all].map((s) => this.#closeSession(s)));
  }

  // --- guards ------------------------------------------------------------------------------

  /** DNS rebinding: a page on another site must not reach us through a name it controls. */
  #checkHostAndOrigin(req: Request): Response | undefined {
    const host = req.headers.get("host");
    if (host !== null && !this.#hostAllowed(hostOfHeader(host))) {
      return jsonResponse({ error: `forbidden Host header: ${host}` }, 403);
    }
    const origin = req.headers.get("origin");
    if (origin !== null) {
      let ok = false;
      try {
        const url = new URL(origin);
        ok = (url.protocol === "http:" || url.protocol === "https:") &&
          this.#hostAllowed(normalizeHost(url.hostname));
      } catch {
        ok = false;
      }
      if (!ok) return jsonResponse({ error: `forbidden Origin: ${origin}` }, 403);
    }
    return undefined;
  }

  #hostAllowed(host: string): boolean {
    if (isLoopbackHost(host) || this.#allowedHosts.has(host)) return true;
    if (isWildcard(this.#hostname)) return isIpLiteral(host);
    return host === this.#hostname;
  }

  async #checkToken(req: Request): Promise<Response | undefined> {
    if (!this.#tokenDigest) return undefined;
    const header = req.headers.get("authorization") ?? "";
    const match = /^Bearer\s+(.+)$/i.exec(header.trim());
    // Compare digests: constant time whatever the lengths.
    const given = await sha256(match?.[1] ?? "");
    if (match && constantTimeEqual(given, this.#tokenDigest)) return undefined;
    return jsonResponse(
      { error: "missing or wrong bearer token (see LMBRIDGE_HTTP_TOKEN)" },
      401,
      { "www-authenticate": 'Bearer realm="lmbridge"' },
    );
  }

  // --- MCP ---------------------------------------------------------------------------------

  async #mcp(req: Request): Promise<Response> {
    if (req.method !== "GET" && req.method !== "POST" && req.method !== "DELETE") {
      return rpcError(405, -32000, "Method not allowed.", { allow: "GET, POST, DELETE" });
    }
    let parsedBody: unknown;
    if (req.method === "POST") {
      const type = (req.headers.get("content-type") ?? "").split(";")[0].trim().toLowerCase();
      if (type !== "application/json") {
        return rpcError(
          415,
          -32000,
          "Unsupported Media Type: Content-Type must be application/json",
        );
      }
      const text = await readBody(req, this.#maxBody);
      if (text === undefined) {
        return rpcError(413, -32000, `Payload Too Large: at most ${this.#maxBody} bytes`);
      }
      try {
        parsedBody = JSON.parse(text);
      } catch {
        return rpcError(400, -32700, "Parse error: Invalid JSON");
      }
    }
    const sessionId = req.headers.get("mcp-session-id");
    if (sessionId !== null) {
      const session = this.#sessions.get(sessionId);
      if (!session) return rpcError(404, -32001, "Session not found");
      return await this.#exchange(session, req, parsedBody);
    }
    if (req.method !== "POST" || !hasInitialize(parsedBody)) {
      return rpcError(400, -32000, "Bad Request: Mcp-Session-Id header is required");
    }
    if (this.#closed) return rpcError(503, -32000, "lmbridge is shutting down");
    if (!this.#makeRoom()) {
      return rpcError(503, -32000, "too many open sessions; try again later", {
        "retry-after": "5",
      });
    }
    const session = await this.#openSession();
    const res = await this.#exchange(session, req, parsedBody);
    // Initialization refused (bad Accept, bad version…): nothing to keep.
    if (session.id === undefined) void this.#closeSession(session);
    return res;
  }

  async #openSession(): Promise<Session> {
    const app = this.#runtime.app;
    const transport = new WebStandardStreamableHTTPServerTransport({
      sessionIdGenerator: () => crypto.randomUUID(),
      onsessioninitialized: (id: string) => {
        session.id = id;
        this.#sessions.set(id, session);
        app.log.info("http session opened", { session: id, sessions: this.#sessions.size });
      },
      onsessionclosed: (id: string) => {
        this.#sessions.delete(id);
      },
    });
    const server = createMcpServer(app, this.#runtime.tools);
    const session: Session = { transport, server, lastSeen: this.#now(), open: 0, busy: 0 };
    this.#all.add(session);
    transport.onclose = () => void this.#closeSession(session);
    await server.connect(transport);
    return session;
  }

  /** Closing the SDK server closes the transport, which aborts the session's requests. */
  #closeSession(session: Session): Promise<void> {
    session.closed ??= (async () => {
      if (session.id !== undefined && this.#sessions.get(session.id) === session) {
        this.#sessions.delete(session.id);
        this.#runtime.app.log.info("http session closed", { session: session.id });
      }
      await session.server.close().catch(() => {});
      this.#all.delete(session);
    })();
    return session.closed;
  }

  /** One HTTP exchange on a session; a client that goes away cancels its requests. */
  async #exchange(session: Session, req: Request, parsedBody: unknown): Promise<Response> {
    const ids = requestIds(parsedBody);
    session.open++;
    if (ids.length) session.busy++;
    session.lastSeen = this.#now();
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      session.open--;
      if (ids.length) session.busy--;
      session.lastSeen = this.#now();
      req.signal.removeEventListener("abort", onAbort);
    };
    // The SDK transport does not tie a request's handler to its HTTP request: a client that
    // disconnects is treated like one that sent notifications/cancelled.
    const onAbort = () => {
      for (const id of ids) {
        session.transport.onmessage?.({
          jsonrpc: "2.0",
          method: "notifications/cancelled",
          params: { requestId: id, reason: "the HTTP client went away" },
        } as JSONRPCMessage);
      }
      finish();
    };
    if (ids.length) req.signal.addEventListener("abort", onAbort, { once: true });
    let res: Response;
    try {
      res = await session.transport.handleRequest(
        req,
        parsedBody === undefined ? undefined : { parsedBody },
      );
    } catch (err) {
      finish();
      throw err;
    }
    if (req.signal.aborted && ids.length) onAbort();
    if (!res.body) {
      finish();
      return res;
    }
    return new Response(whenDone(res.body, finish), {
      status: res.status,
      statusText: res.statusText,
      headers: res.headers,
    });
  }

  /**
   * At the cap, closes the longest-idle session without requests in progress: first those
   * with no connection at all, then those only holding a GET stream open.
   */
  #makeRoom(): boolean {
    if (this.#all.size < this.#maxSessions) return true;
    let victim: Session | undefined;
    const rank = (s: Session) => (s.open > 0 ? 1 : 0);
    for (const s of this.#all) {
      if (s.busy > 0 || s.closed !== undefined) continue;
      if (
        !victim || rank(s) < rank(victim) ||
        (rank(s) === rank(victim) && s.lastSeen < victim.lastSeen)
      ) {
        victim = s;
      }
    }
    if (!victim) return false;
    void this.#closeSession(victim);
    return true;
  }

  /** Sessions whose client vanished without DELETE: no connection left and long idle. */
  #closeIdle() {
    const now = this.#now();
    for (const s of this.#all) {
      if (s.open === 0 && now - s.lastSeen > this.#idleMs) void this.#closeSession(s);
    }
  }

  // --- health ------------------------------------------------------------------------------

  #healthReport(): Promise<HealthReport> {
    const now = this.#now();
    if (this.#health && now - this.#health.at < this.#healthTtlMs) return this.#health.result;
    const { app } = this.#runtime;
    const signal = AbortSignal.any([AbortSignal.timeout(10_000), app.shutdown.signal]);
    const result = Promise.all(app.clients.map(async (client) => {
      const probe = await client.probe(signal);
      return {
        url: client.url,
        reachable: probe.reachable && !probe.error,
        kind: probe.kind ?? null,
        latency_ms: probe.latencyMs,
        ...(probe.error ? { error: probe.error.code } : {}),
      };
    })).then((backends) => ({
      ok: backends.some((b) => b.reachable),
      backends,
      sessions: this.#sessions.size,
    }));
    this.#health = { at: now, result };
    return result;
  }
}

interface HealthReport {
  ok: boolean;
  backends: {
    url: string;
    reachable: boolean;
    kind: string | null;
    latency_ms: number;
    error?: string;
  }[];
  sessions: number;
}

// --- helpers -------------------------------------------------------------------------------

/**
 * Whether `host` (a name or IP, brackets allowed) is a loopback address.
 *
 * @example
 * isLoopbackHost("127.0.0.1"); // true
 * isLoopbackHost("0.0.0.0"); // false
 */
export function isLoopbackHost(host: string): boolean {
  const h = normalizeHost(host);
  return h === "localhost" || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h) || h === "::1" ||
    h === "0:0:0:0:0:0:0:1" || /^::ffff:127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h);
}

function normalizeHost(host: string): string {
  let h = host.trim().toLowerCase();
  if (h.startsWith("[") && h.endsWith("]")) h = h.slice(1, -1);
  return h.replace(/\.$/, "");
}

/** The host name of a Host header (`[::1]:8080` → `::1`, `a.b:80` → `a.b`). */
function hostOfHeader(header: string): string {
  const h = header.trim();
  if (h.startsWith("[")) return normalizeHost(h.slice(0, h.indexOf("]") + 1));
  const colons = h.split(":").length - 1;
  return normalizeHost(colons === 1 ? h.slice(0, h.indexOf(":")) : h);
}

function isWildcard(host: string): boolean {
  return host === "0.0.0.0" || host === "::" || host === "";
}

function isIpLiteral(host: string): boolean {
  return /^\d{1,3}(\.\d{1,3}){3}$/.test(host) || (host.includes(":") && /^[0-9a-f:.]+$/.test(host));
}

async function sha256(text: string): Promise<Uint8Array> {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", encoder.encode(text)));
}

function constantTimeEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
  return diff === 0;
}

/** The body as text, or undefined when it is larger than `max` bytes. */
async function readBody(req: Request, max: number): Promise<string | undefined> {
  if (Number(req.headers.get("content-length")) > max) return undefined;
  if (!req.body) return "";
  const decoder = new TextDecoder();
  let size = 0;
  let text = "";
  for await (const chunk of req.body) {
    size += chunk.byteLength;
    if (size > max) return undefined;
    text += decoder.decode(chunk, { stream: true });
  }
  return text + decoder.decode();
}

function messagesOf(body: unknown): Record<string, unknown>[] {
  const list = Array.isArray(body) ? body : [body];
  return list.filter((m): m is Record<string, unknown> => typeof m === "object" && m !== null);
}

function hasInitialize(body: unknown): boolean {
  return messagesOf(body).some((m) => m.method === "initialize");
}

/** Ids of the JSON-RPC requests (not notifications or responses) in a POST body. */
function requestIds(body: unknown): (string | number)[] {
  return messagesOf(body)
    .filter((m) => typeof m.method === "string" && m.id !== undefined && m.id !== null)
    .map((m) => m.id as string | number);
}

/** Passes `body` through and calls `onDone` once it ends, fails or is cancelled. */
function whenDone(
  body: ReadableStream<Uint8Array>,
  onDone: () => void,
): ReadableStream<Uint8Array> {
  const reader = body.getReader();
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      try {
        const { done, value } = await reader.read();
        if (done) {
          controller.close();
          onDone();
        } else {
          controller.enqueue(value);
        }
      } catch (err) {
        onDone();
        controller.error(err);
      }
    },
    cancel(reason) {
      onDone();
      return reader.cancel(reason);
    },
  });
}

function jsonResponse(body: unknown, status: number, headers: Record<string, string> = {}) {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json", ...headers },
  });
}

function rpcError(
  status: number,
  code: number,
  message: string,
  headers: Record<string, string> = {},
): Response {
  return jsonResponse({ jsonrpc: "2.0", error: { code, message }, id: null }, status, headers);
}
