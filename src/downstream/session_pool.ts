/**
 * Keeps one MCP client session per downstream server of the user's MCP servers file: opened
 * on first use, reused across calls, closed when idle, restarted with backoff after a crash,
 * reloaded when the file changes, and never leaving a child process behind.
 */

import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { SSEClientTransport } from "@modelcontextprotocol/sdk/client/sse.js";
import type { Transport } from "@modelcontextprotocol/sdk/shared/transport.js";
import {
  CallToolResultSchema,
  ErrorCode,
  McpError,
  ToolListChangedNotificationSchema,
} from "@modelcontextprotocol/sdk/types.js";
import { abortable, delay } from "../util/async.ts";
import { descendants, processAlive } from "../util/process.ts";
import { abortToError, BridgeError } from "../util/errors.ts";
import {
  loadMcpConfig,
  type McpConfig,
  type McpServerEntry,
  type McpTransportKind,
  type SelfIdentity,
} from "./mcp_config.ts";

/** One server of the MCP servers file as `list_available_mcps` shows it. */
export interface ServerStatus {
  name: string;
  transport: McpTransportKind;
  status: "idle" | "connected" | "failed" | "disabled" | "self";
  /** Number of tools, once a session listed them. */
  tools?: number;
  /** Why the last start or call failed (status `failed`). */
  error?: string;
  /** Process id of the running stdio server (status `connected`). */
  pid?: number;
}

/** A tool offered by a downstream server. */
export interface DownstreamTool {
  server: string;
  name: string;
  description?: string;
  inputSchema: Record<string, unknown>;
}

/** What a downstream tool call returns (the SDK's CallToolResult, as is). */
export interface DownstreamToolResult {
  content: unknown[];
  isError?: boolean;
  structuredContent?: unknown;
}

/** How a {@link SessionPool} finds, starts and watches the servers. */
export interface SessionPoolOptions {
  /** The MCP servers file; re-checked on every call (mtime, size, inode), re-parsed only when
   * changed. A function is asked again on every call, so a file created later (or one that
   * takes precedence) is picked up without a restart. */
  configPath: string | undefined | (() => string | undefined);
  /** For `${VAR}` expansion and for what children inherit (PATH, HOME, … plus the entry's `env`). */
  env: Record<string, string | undefined>;
  self: SelfIdentity;
  /** Sessions idle longer are closed (on access and by one unref'd timer). Default 10 min. */
  idleTtlMs?: number;
  /** Per tool call (and per tool listing). Default 60 s. */
  callTimeoutMs?: number;
  /** Spawn (or HTTP connect) plus initialize. Default 30 s. */
  connectTimeoutMs?: number;
  /** First delay before a crashed or failed server is started again; doubles up to 30 s. Default 1 s. */
  restartBackoffMs?: number;
  log?: (
    level: "debug" | "info" | "warn" | "error",
    msg: string,
    fields?: Record<string, unknown>,
  ) => void;
  /** The clock (ms). Default `Date.now`. */
  now?: () => number;
  /** Sent to servers in `initialize`. Default `{ name: "lmbridge", version: "0.1.0" }`. */
  clientInfo?: { name: string; version: string };
}

/** Variables a stdio child inherits from `env` (besides its entry's own `env`). */
export const INHERITED_ENV = [
  "PATH",
  "HOME",
  "USER",
  "LOGNAME",
  "SHELL",
  "TERM",
  "LANG",
  "LC_ALL",
  "TMPDIR",
  "TEMP",
  "TMP",
  "XDG_CACHE_HOME",
  "XDG_CONFIG_HOME",
  "XDG_DATA_HOME",
  "XDG_STATE_HOME",
  "XDG_RUNTIME_DIR",
  "DENO_DIR",
  "NODE_EXTRA_CA_CERTS",
  "SSL_CERT_FILE",
  "HTTP_PROXY",
  "HTTPS_PROXY",
  "NO_PROXY",
  "http_proxy",
  "https_proxy",
  "no_proxy",
  "SYSTEMROOT",
  "APPDATA",
  "LOCALAPPDATA",
  "USERPROFILE",
];

const MAX_BACKOFF_MS = 30_000;
/** A stdio child gets this long to exit on stdin EOF before SIGTERM. */
const EOF_GRACE_MS = 300;
/** And this long after SIGTERM before SIGKILL. Short: MCP clients kill lmbridge itself about
 * 4 s after closing its stdin, and its children must be gone by then. */
const KILL_AFTER_MS = 1_000;
/** After a non-JSON line during start-up, how long a valid answer may still come. */
const GARBAGE_GRACE_MS = 1_000;
const STDERR_TAIL_CHARS = 2_000;
const MAX_TOOL_PAGES = 50;

interface Session {
  readonly client: Client;
  readonly transport: Transport;
  readonly entry: McpServerEntry;
  pid?: number;
  stderrTail: string;
  /** The raw `client.connect` promise (never rejects), so shutdown can wait for a spawn. */
  connecting?: Promise<void>;
  readonly connectAbort: AbortController;
  tools?: DownstreamTool[];
  toolsLoading?: Promise<DownstreamTool[]>;
  lastUsed: number;
  active: number;
  /** The transport closed (for stdio: the process ended). */
  exited: boolean;
  /** No new calls; shut down when the last call ends. */
  retired: boolean;
  closing?: Promise<void>;
}

interface ServerState {
  readonly entry: McpServerEntry;
  session?: Session;
  opening?: Promise<Session>;
  openAbort?: AbortController;
  failure?: { message: string; hint?: string; until: number };
  /** Consecutive failures, for the backoff; reset by a successful call. */
  attempts: number;
  toolCount?: number;
  removed: boolean;
}

/**
 * Sessions to the user's downstream MCP servers, created once in `main.ts` and shared.
 *
 * @example
 * const pool = new SessionPool({ configPath, env: Deno.env.toObject(), self });
 * const tools = await pool.tools("filesystem", signal);
 * const result = await pool.callTool("filesystem", "read_file", { path: "README.md" }, { signal });
 * await pool.close();
 */
export class SessionPool {
  readonly #options: SessionPoolOptions;
  readonly #idleTtlMs: number;
  readonly #callTimeoutMs: number;
  readonly #connectTimeoutMs: number;
  readonly #backoffMs: number;
  readonly #now: () => number;
  readonly #log: NonNullable<SessionPoolOptions["log"]>;

  #config?: McpConfig;
  #configKey?: string;
  #refreshing?: Promise<McpConfig>;
  readonly #states = new Map<string, ServerState>();
  /** Every session not yet fully shut down (opening, open, retiring). */
  readonly #sessions = new Set<Session>();
  #sweepTimer?: ReturnType<typeof setInterval>;
  #closed = false;
  #closing?: Promise<void>;

  constructor(options: SessionPoolOptions) {
    this.#options = options;
    this.#idleTtlMs = options.idleTtlMs ?? 10 * 60_000;
    this.#callTimeoutMs = options.callTimeoutMs ?? 60_000;
    this.#connectTimeoutMs = options.connectTimeoutMs ?? 30_000;
    this.#backoffMs = options.restartBackoffMs ?? 1_000;
    this.#now = options.now ?? Date.now;
    this.#log = options.log ?? (() => {});
  }

  /** The file as it is now: path, parse error, and each server's status and tool count once known. */
  async list(
    signal?: AbortSignal,
  ): Promise<{ configPath: string | undefined; error?: string; servers: ServerStatus[] }> {
    const config = await waitOrAbort(this.#refresh(), signal, "listing MCP servers");
    this.#sweep();
    const servers = config.servers.map((entry) => this.#status(entry));
    return config.error
      ? { configPath: config.path, error: config.error, servers }
      : { configPath: config.path, servers };
  }

  /**
   * The tools of one server; opens its session on first use and caches the list per session.
   *
   * @throws {BridgeError} `mcp_server_unavailable` for an unknown, disabled, self, failing or
   * restarting server; `cancelled` / `timeout` when `signal` aborts.
   */
  async tools(server: string, signal?: AbortSignal): Promise<DownstreamTool[]> {
    const { state, session } = await this.#ready(server, signal);
    if (session.tools) return session.tools;
    session.active++;
    try {
      session.toolsLoading ??= this.#listTools(session).finally(() => {
        session.toolsLoading = undefined;
      });
      const tools = await abortable(session.toolsLoading, signal);
      state.attempts = 0;
      return tools;
    } catch (err) {
      throw this.#callError(state, session, err, "tools/list", signal);
    } finally {
      this.#release(session);
    }
  }

  /**
   * Calls a tool. `signal` aborts the call (the server receives notifications/cancelled).
   *
   * @throws {BridgeError} `mcp_tool_failed` when the server answers with a protocol error or
   * the call times out ("timed out after Ns"); `mcp_server_unavailable` when the server is
   * unusable or its transport fails (the session is then restarted on a later call, after
   * backoff); `cancelled` when `signal` aborts.
   */
  async callTool(
    server: string,
    tool: string,
    args: Record<string, unknown>,
    options: { signal?: AbortSignal; timeoutMs?: number } = {},
  ): Promise<DownstreamToolResult> {
    const { signal } = options;
    const timeoutMs = options.timeoutMs ?? this.#callTimeoutMs;
    const { state, session } = await this.#ready(server, signal);
    session.active++;
    // A per-call controller: the SDK never removes its abort listener, so a long-lived
    // caller signal must not be handed to it directly.
    const call = new AbortController();
    const onAbort = () => call.abort(signal!.reason);
    signal?.addEventListener("abort", onAbort, { once: true });
    try {
      const result = await session.client.callTool(
        { name: tool, arguments: args },
        CallToolResultSchema,
        { signal: call.signal, timeout: timeoutMs },
      );
      state.attempts = 0;
      return result as DownstreamToolResult;
    } catch (err) {
      throw this.#callError(state, session, err, `tool ${tool}`, signal, timeoutMs);
    } finally {
      signal?.removeEventListener("abort", onAbort);
      this.#release(session);
    }
  }

  /** Closes every session and ends every child (stdin EOF, SIGTERM, SIGKILL after 2 s). Idempotent. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      this.#closed = true;
      this.#stopSweep();
      for (const state of this.#states.values()) state.openAbort?.abort(closedError());
      await Promise.all([...this.#sessions].map((s) => this.#shutdown(s)));
    })();
    return this.#closing;
  }

  /** Counts for stats: sessions open (at most one per server in the file), servers failed,
   * servers known, the config path. */
  snapshot(): { open: number; failed: number; servers: number; configPath?: string } {
    let open = 0;
    let failed = 0;
    for (const state of this.#states.values()) {
      if (state.session && !state.session.retired) open++;
      else if (state.failure) failed++;
    }
    const servers = this.#states.size;
    const configPath = this.#config?.path ?? this.#configPath();
    return configPath === undefined
      ? { open, failed, servers }
      : { open, failed, servers, configPath };
  }

  // --- config ----------------------------------------------------------------------------

  #configPath(): string | undefined {
    const { configPath } = this.#options;
    return typeof configPath === "function" ? configPath() : configPath;
  }

  #refresh(): Promise<McpConfig> {
    this.#refreshing ??= this.#reload().finally(() => {
      this.#refreshing = undefined;
    });
    return this.#refreshing;
  }

  async #reload(): Promise<McpConfig> {
    const path = this.#configPath();
    const key = `${path}|${await fileKey(path)}`;
    if (this.#config && key === this.#configKey) return this.#config;
    const config = await loadMcpConfig(path, { env: this.#options.env, self: this.#options.self });
    this.#config = config;
    this.#configKey = key;
    if (config.error) {
      // Keep running sessions: an editor may be half-way through saving the file.
      this.#log("warn", "MCP servers file is malformed", { path, error: config.error });
    } else {
      this.#apply(config.servers);
    }
    return config;
  }

  /** Restarts only what changed: removed or changed entries are retired, new ones added. */
  #apply(servers: McpServerEntry[]): void {
    const next = new Map(servers.map((e) => [e.name, e]));
    for (const [name, state] of this.#states) {
      const entry = next.get(name);
      if (entry && entry.fingerprint === state.entry.fingerprint) continue;
      this.#log("info", entry ? "MCP server changed" : "MCP server removed", { server: name });
      this.#retire(state);
      this.#states.delete(name);
    }
    for (const entry of servers) {
      if (!this.#states.has(entry.name)) {
        this.#states.set(entry.name, { entry, attempts: 0, removed: false });
      }
    }
  }

  #retire(state: ServerState): void {
    state.removed = true;
    state.openAbort?.abort(
      new BridgeError(
        "mcp_server_unavailable",
        `MCP server "${state.entry.name}" was changed in the MCP servers file while starting`,
        { hint: "try again" },
      ),
    );
    const session = state.session;
    state.session = undefined;
    if (session) {
      session.retired = true;
      if (session.active === 0) void this.#shutdown(session);
    }
  }

  #status(entry: McpServerEntry): ServerStatus {
    const base = { name: entry.name, transport: entry.transport };
    if (entry.disabled) return { ...base, status: "disabled" };
    if (entry.self) return { ...base, status: "self" };
    const state = this.#states.get(entry.name);
    const tools = state?.toolCount === undefined ? {} : { tools: state.toolCount };
    const session = state?.session;
    if (session && !session.retired) {
      const pid = session.pid === undefined ? {} : { pid: session.pid };
      return { ...base, status: "connected", ...tools, ...pid };
    }
    if (state?.failure) {
      return { ...base, status: "failed", ...tools, error: state.failure.message };
    }
    return { ...base, status: "idle", ...tools };
  }

  // --- sessions --------------------------------------------------------------------------

  /** The open session of `name`, opening it (once, however many callers) when needed. */
  async #ready(
    name: string,
    signal?: AbortSignal,
  ): Promise<{ state: ServerState; session: Session }> {
    if (signal?.aborted) throw abortToError(signal.reason, `MCP server "${name}"`);
    this.#assertOpen();
    const what = `starting MCP server "${name}"`;
    const config = await waitOrAbort(this.#refresh(), signal, what);
    this.#assertOpen();
    this.#sweep();
    if (config.error) {
      throw new BridgeError("mcp_server_unavailable", `the MCP servers file is malformed`, {
        hint: config.error,
      });
    }
    const state = this.#states.get(name);
    const entry = config.servers.find((e) => e.name === name);
    if (!state || !entry) {
      const known = config.servers.filter((e) => !e.disabled && !e.self).map((e) => e.name);
      throw new BridgeError(
        "mcp_server_unavailable",
        `no MCP server named "${name}"${config.path ? ` in ${config.path}` : ""}`,
        {
          hint: config.path === undefined
            ? "no MCP servers file found: create .mcp.json or pass --mcp-config PATH"
            : known.length
            ? `known servers: ${known.join(", ")}`
            : `add it to the mcpServers map of ${config.path}`,
        },
      );
    }
    if (entry.disabled) {
      throw new BridgeError("mcp_server_unavailable", `MCP server "${name}" is disabled`, {
        hint: `remove "disabled": true from its entry in ${config.path}`,
      });
    }
    if (entry.self) {
      throw new BridgeError(
        "mcp_server_unavailable",
        `MCP server "${name}" is lmbridge itself and is never started by lmbridge`,
        { hint: "use the other MCP servers; lmbridge's own tools are already available" },
      );
    }
    const session = state.session;
    if (session && !session.retired && !session.exited) {
      session.lastUsed = this.#now();
      return { state, session };
    }
    if (!state.opening) {
      const failure = state.failure;
      if (failure && this.#now() < failure.until) {
        const wait = Math.ceil((failure.until - this.#now()) / 1000);
        throw new BridgeError(
          "mcp_server_unavailable",
          `${failure.message} (next restart attempt in ${wait}s)`,
          { hint: failure.hint },
        );
      }
      state.openAbort = new AbortController();
      state.opening = this.#open(state, state.openAbort.signal).finally(() => {
        state.opening = undefined;
        state.openAbort = undefined;
      });
    }
    return { state, session: await waitOrAbort(state.opening, signal, what) };
  }

  async #open(state: ServerState, signal: AbortSignal): Promise<Session> {
    const { entry } = state;
    const started = this.#now();
    const session = this.#createSession(state);
    this.#sessions.add(session);
    try {
      await this.#connect(session, signal);
    } catch (err) {
      await this.#shutdown(session);
      const error = this.#startError(session, err);
      if (!this.#closed && !state.removed) {
        this.#fail(state, error);
        this.#log("warn", "MCP server failed to start", {
          server: entry.name,
          error: error.message,
        });
      }
      throw error;
    }
    if (this.#closed || state.removed) {
      await this.#shutdown(session);
      throw this.#closed ? closedError() : new BridgeError(
        "mcp_server_unavailable",
        `MCP server "${entry.name}" was changed in the MCP servers file while starting`,
        { hint: "try again" },
      );
    }
    state.session = session;
    state.failure = undefined;
    this.#log("info", "MCP server connected", {
      server: entry.name,
      pid: session.pid,
      ms: this.#now() - started,
    });
    this.#startSweep();
    return session;
  }

  #createSession(state: ServerState): Session {
    const { entry } = state;
    const transport = this.#transport(entry, (text) => {
      session.stderrTail = (session.stderrTail + text).slice(-STDERR_TAIL_CHARS);
      this.#log("debug", "MCP server stderr", {
        server: entry.name,
        text: scrub(text.trimEnd(), entry),
      });
    }, (pid) => session.pid = pid);
    const client = new Client(this.#options.clientInfo ?? { name: "lmbridge", version: "0.1.0" }, {
      capabilities: {},
    });
    const session: Session = {
      client,
      transport,
      entry,
      stderrTail: "",
      connectAbort: new AbortController(),
      lastUsed: this.#now(),
      active: 0,
      exited: false,
      retired: false,
    };
    client.setNotificationHandler(ToolListChangedNotificationSchema, () => {
      session.tools = undefined;
    });
    client.onclose = () => {
      session.exited = true;
      if (session.closing || state.session !== session) return;
      // The server went away on its own: restart on a later call, after backoff.
      const message = `MCP server "${entry.name}" exited${stderrSuffix(session)}`;
      this.#log("warn", "MCP server exited", { server: entry.name, pid: session.pid });
      state.session = undefined;
      this.#fail(
        state,
        new BridgeError("mcp_server_unavailable", message, { hint: rerunHint(entry) }),
      );
      void this.#shutdown(session);
    };
    return session;
  }

  #transport(
    entry: McpServerEntry,
    onStderr: (text: string) => void,
    onSpawn: (pid: number) => void,
  ): Transport {
    const headers = entry.headers;
    if (entry.transport === "http") {
      return new StreamableHTTPClientTransport(new URL(entry.url!), { requestInit: { headers } });
    }
    if (entry.transport === "sse") {
      return new SSEClientTransport(new URL(entry.url!), { requestInit: { headers } });
    }
    const env: Record<string, string> = {};
    for (const name of INHERITED_ENV) {
      const value = this.#options.env[name];
      if (value !== undefined) env[name] = value;
    }
    // stderr is piped, never inherited: our own stdout/stderr may carry JSON-RPC.
    const transport = new StdioClientTransport({
      command: entry.command!,
      args: entry.args,
      env: { ...env, ...entry.env },
      stderr: "pipe",
    });
    // Learn the pid as soon as the child exists: the transport forgets it once it exits.
    const start = transport.start.bind(transport);
    transport.start = async () => {
      await start();
      if (transport.pid !== null) onSpawn(transport.pid);
    };
    const decoder = new TextDecoder();
    transport.stderr?.on("data", (chunk: Uint8Array | string) => {
      onStderr(typeof chunk === "string" ? chunk : decoder.decode(chunk, { stream: true }));
    });
    return transport;
  }

  /** Spawn + initialize under the connect timeout; a burst of non-JSON output fails fast. */
  async #connect(session: Session, signal: AbortSignal): Promise<void> {
    const { entry } = session;
    const abort = session.connectAbort;
    const seconds = formatSeconds(this.#connectTimeoutMs);
    const timer = setTimeout(() => {
      abort.abort(
        new BridgeError(
          "mcp_server_unavailable",
          `MCP server "${entry.name}" did not answer initialize within ${seconds}${
            stderrSuffix(session)
          }`,
          { hint: rerunHint(entry) },
        ),
      );
    }, this.#connectTimeoutMs);
    let garbageTimer: ReturnType<typeof setTimeout> | undefined;
    const onAbort = () => abort.abort(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    session.client.onerror = (err: Error) => {
      if (!isParseError(err) || garbageTimer !== undefined) return;
      garbageTimer = setTimeout(() => {
        abort.abort(
          new BridgeError(
            "mcp_server_unavailable",
            `MCP server "${entry.name}" wrote something that is not JSON-RPC to stdout (${
              scrub(err.message, entry)
            })`,
            { hint: "a stdio MCP server must write only JSON-RPC to stdout; logs go to stderr" },
          ),
        );
      }, GARBAGE_GRACE_MS);
    };
    // The SDK keeps its listener on this signal forever: a separate controller, fed only
    // while connecting, keeps a later shutdown from cancelling the finished initialize.
    const sdk = new AbortController();
    const forward = () => sdk.abort(abort.signal.reason);
    abort.signal.addEventListener("abort", forward, { once: true });
    const connecting = session.client.connect(session.transport, {
      signal: sdk.signal,
      timeout: this.#connectTimeoutMs + 1_000, // ours fires first, with a better message
    });
    session.connecting = connecting.catch(() => {});
    try {
      await abortable(connecting, abort.signal);
    } finally {
      clearTimeout(timer);
      clearTimeout(garbageTimer);
      signal.removeEventListener("abort", onAbort);
      abort.signal.removeEventListener("abort", forward);
      session.client.onerror = (err: Error) => {
        this.#log("debug", "MCP transport error", {
          server: entry.name,
          error: scrub(err.message, entry),
        });
      };
    }
  }

  async #listTools(session: Session): Promise<DownstreamTool[]> {
    const tools: DownstreamTool[] = [];
    let cursor: string | undefined;
    for (let page = 0; page < MAX_TOOL_PAGES; page++) {
      const result = await session.client.listTools(cursor ? { cursor } : undefined, {
        timeout: this.#callTimeoutMs,
      });
      for (const tool of result.tools) {
        tools.push({
          server: session.entry.name,
          name: tool.name,
          ...(tool.description === undefined ? {} : { description: tool.description }),
          inputSchema: tool.inputSchema as Record<string, unknown>,
        });
      }
      cursor = result.nextCursor;
      if (!cursor) break;
    }
    session.tools = tools;
    const state = this.#states.get(session.entry.name);
    if (state?.entry === session.entry) state.toolCount = tools.length;
    return tools;
  }

  #release(session: Session): void {
    session.active--;
    session.lastUsed = this.#now();
    if (session.retired && session.active === 0) void this.#shutdown(session);
  }

  /** Ends a session: stdin EOF, then SIGTERM to the child and its children, then SIGKILL. */
  #shutdown(session: Session): Promise<void> {
    session.closing ??= (async () => {
      session.retired = true;
      session.connectAbort.abort(closedError());
      // A spawn in progress must finish first, or its child would be missed.
      if (session.connecting) await settleWithin(session.connecting, 5_000);
      const pid = session.pid;
      const tree = pid !== undefined && !session.exited ? [pid, ...await descendants(pid)] : [];
      const closed = session.client.close().catch(() => {});
      if (tree.length) {
        if (!(await allGone(tree, EOF_GRACE_MS, session))) {
          signalAll(tree, "SIGTERM");
          if (!(await allGone(tree, KILL_AFTER_MS, session))) {
            this.#log("warn", "MCP server ignored SIGTERM; killing it", {
              server: session.entry.name,
              pid,
            });
            signalAll(tree, "SIGKILL");
            await allGone(tree, 1_000, session);
          }
        }
      }
      await closed;
      this.#sessions.delete(session);
      if (this.#openCount() === 0) this.#stopSweep();
    })();
    return session.closing;
  }

  /** Records a failure and when the next start may be tried (1×, 2×, 4× … the backoff, ≤ 30 s). */
  #fail(state: ServerState, error: BridgeError): void {
    state.attempts++;
    const wait = Math.min(this.#backoffMs * 2 ** (state.attempts - 1), MAX_BACKOFF_MS);
    state.failure = { message: error.message, hint: error.hint, until: this.#now() + wait };
  }

  #startError(session: Session, err: unknown): BridgeError {
    const { entry } = session;
    if (err instanceof BridgeError) return err;
    if (this.#closed) return closedError();
    const name = `MCP server "${entry.name}"`;
    const message = err instanceof Error ? err.message : String(err);
    if (entry.transport !== "stdio") {
      return new BridgeError(
        "mcp_server_unavailable",
        `cannot connect to ${name} at ${entry.shown}: ${scrub(message, entry)}`,
        { hint: `is the server running? check "url" and "headers" of "${entry.name}"`, cause: err },
      );
    }
    const code = (err as { code?: string }).code;
    if (code === "ENOENT") {
      return new BridgeError(
        "mcp_server_unavailable",
        `cannot start ${name}: command not found: ${entry.shown.split(" ")[0]}`,
        { hint: `install it or fix "command" of "${entry.name}"`, cause: err },
      );
    }
    if (code === "EACCES") {
      return new BridgeError(
        "mcp_server_unavailable",
        `cannot start ${name}: permission denied: ${entry.shown.split(" ")[0]}`,
        { hint: `make ${entry.shown.split(" ")[0]} executable`, cause: err },
      );
    }
    if (session.exited || isConnectionClosed(err)) {
      return new BridgeError(
        "mcp_server_unavailable",
        `${name} exited during start-up${stderrSuffix(session)}`,
        { hint: rerunHint(entry), cause: err },
      );
    }
    return new BridgeError(
      "mcp_server_unavailable",
      `cannot start ${name}: ${scrub(message, entry)}`,
      {
        hint: rerunHint(entry),
        cause: err,
      },
    );
  }

  /** Maps a failed call; a transport failure also marks the session for restart. */
  #callError(
    state: ServerState,
    session: Session,
    err: unknown,
    what: string,
    signal: AbortSignal | undefined,
    timeoutMs = this.#callTimeoutMs,
  ): BridgeError {
    const name = session.entry.name;
    if (signal?.aborted) return abortToError(signal.reason, `${what} on MCP server "${name}"`);
    if (mcpErrorCode(err) === ErrorCode.RequestTimeout) {
      return new BridgeError(
        "mcp_tool_failed",
        `${what} on MCP server "${name}" timed out after ${formatSeconds(timeoutMs)}`,
        { hint: "the server may be stuck; the call was cancelled", cause: err },
      );
    }
    const transportFailed = session.exited ||
      (err instanceof McpError
        ? mcpErrorCode(err) === ErrorCode.ConnectionClosed
        : !isParseError(err));
    if (!transportFailed) {
      const message = err instanceof Error ? err.message : String(err);
      return new BridgeError(
        "mcp_tool_failed",
        `${what} on MCP server "${name}" failed: ${scrub(message, session.entry)}`,
        {
          cause: err,
        },
      );
    }
    const message = session.exited
      ? `MCP server "${name}" exited during ${what}${stderrSuffix(session)}`
      : `MCP server "${name}" failed during ${what}: ${
        scrub(err instanceof Error ? err.message : String(err), session.entry)
      }`;
    const error = new BridgeError("mcp_server_unavailable", message, {
      hint: "it will be restarted on a later call",
      cause: err,
    });
    if (state.session === session) {
      state.session = undefined;
      this.#fail(state, error);
      session.retired = true;
    } else if (!state.failure && !state.removed && !session.closing) {
      this.#fail(state, error);
    }
    return error;
  }

  #assertOpen(): void {
    if (this.#closed) throw closedError();
  }

  #openCount(): number {
    let n = 0;
    for (const state of this.#states.values()) if (state.session) n++;
    return n;
  }

  /** Closes sessions idle past the TTL. */
  #sweep(): void {
    const now = this.#now();
    for (const state of this.#states.values()) {
      const session = state.session;
      if (!session || session.active > 0 || session.toolsLoading) continue;
      if (now - session.lastUsed < this.#idleTtlMs) continue;
      this.#log("debug", "closing idle MCP session", { server: state.entry.name });
      state.session = undefined;
      void this.#shutdown(session);
    }
  }

  #startSweep(): void {
    if (this.#sweepTimer !== undefined || this.#closed) return;
    const every = Math.max(1_000, Math.min(this.#idleTtlMs / 2, 60_000));
    const timer = setInterval(() => this.#sweep(), every);
    Deno.unrefTimer(timer);
    this.#sweepTimer = timer;
  }

  #stopSweep(): void {
    if (this.#sweepTimer === undefined) return;
    clearInterval(this.#sweepTimer);
    this.#sweepTimer = undefined;
  }
}

/** `abortable`, with the abort turned into a `cancelled` / `timeout` BridgeError. */
async function waitOrAbort<T>(promise: Promise<T>, signal: AbortSignal | undefined, what: string) {
  try {
    return await abortable(promise, signal);
  } catch (err) {
    if (signal?.aborted && err === signal.reason) throw abortToError(err, what);
    throw err;
  }
}

/** Waits for `promise` (which never rejects), at most `ms`. */
async function settleWithin(promise: Promise<void>, ms: number): Promise<void> {
  const timer = new AbortController();
  await Promise.race([promise, delay(ms, { signal: timer.signal }).catch(() => {})]);
  timer.abort();
}

function closedError(): BridgeError {
  return new BridgeError("mcp_server_unavailable", "the MCP session pool is closed", {
    hint: "lmbridge is shutting down",
  });
}

function rerunHint(entry: McpServerEntry): string {
  if (entry.transport !== "stdio") {
    return `check that ${entry.shown} serves MCP (${entry.transport})`;
  }
  return `run it by hand to see why: ${entry.shown}`;
}

/** A message with the entry's secret values (env, headers, expanded variables) blotted out. */
function scrub(message: string, entry: McpServerEntry): string {
  return entry.secrets.reduce((m, v) => m.replaceAll(v, "[redacted]"), message);
}

function stderrSuffix(session: Session): string {
  const tail = session.stderrTail.trim().split("\n").slice(-3).join(" | ").slice(-500);
  return tail ? `; its stderr said: ${scrub(tail, session.entry)}` : "";
}

function formatSeconds(ms: number): string {
  const s = ms / 1000;
  return `${Number.isInteger(s) ? s : s.toFixed(1)}s`;
}

/** The JSON-RPC error code of an McpError (the SDK's class does not narrow under Deno). */
function mcpErrorCode(err: unknown): number | undefined {
  return err instanceof McpError ? (err as { code?: number }).code : undefined;
}

function isParseError(err: unknown): boolean {
  return err instanceof SyntaxError || (err instanceof Error && err.name === "ZodError");
}

function isConnectionClosed(err: unknown): boolean {
  return mcpErrorCode(err) === ErrorCode.ConnectionClosed ||
    (err instanceof Error && err.message === "Not connected");
}

/** A cheap identity of the file's current version: mtime, size and inode. */
async function fileKey(path: string | undefined): Promise<string> {
  if (path === undefined) return "none";
  try {
    const info = await Deno.stat(path);
    return `${info.mtime?.getTime()}:${info.size}:${info.ino}`;
  } catch (err) {
    return err instanceof Deno.errors.NotFound ? "missing" : `error:${String(err)}`;
  }
}

async function allGone(
  pids: number[],
  withinMs: number,
  session: Session,
): Promise<boolean> {
  const alive = (pid: number) => !(pid === session.pid && session.exited) && processAlive(pid);
  const deadline = Date.now() + withinMs;
  while (pids.some(alive)) {
    if (Date.now() >= deadline) return false;
    await delay(25);
  }
  return true;
}

function signalAll(pids: number[], signal: Deno.Signal): void {
  for (const pid of pids) {
    if (!processAlive(pid)) continue;
    try {
      Deno.kill(pid, signal);
    } catch {
      // already gone
    }
  }
}
