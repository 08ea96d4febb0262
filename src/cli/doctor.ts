/**
 * `lmbridge doctor`: checks every backend (reachable, kind, version, auth), the models and the
 * default model, and every MCP server of the MCP servers file (starts, tool count); prints one
 * line per check and a fix under each failure. Exit code 1 when any check fails.
 */
import type { App } from "../app.ts";
import type { BackendClient, ProbeResult } from "../backend/client.ts";
import type { BackendListing } from "../backend/catalog.ts";
import { findMcpConfigPath } from "../downstream/mcp_config.ts";
import { BridgeError, toBridgeError } from "../util/errors.ts";
import type { Terminal } from "./terminal.ts";

/** The outcome of one check: passed, failed (with a fix), or for information only. */
export interface CheckResult {
  status: "ok" | "fail" | "info";
  /** What was checked, e.g. "backend http://localhost:1234". */
  subject: string;
  detail: string;
  /** What to do about a failure. */
  fix?: string;
}

/** The downstream servers as doctor needs them (the runtime's SessionPool). */
export interface DoctorPool {
  list(signal?: AbortSignal): Promise<{
    configPath: string | undefined;
    error?: string;
    servers: { name: string; transport: string; status: string }[];
  }>;
  tools(server: string, signal?: AbortSignal): Promise<unknown[]>;
  close(): Promise<void>;
}

export interface DoctorOptions {
  app: App;
  /** For finding `./.mcp.json`. */
  cwd: string;
  home?: string;
  /**
   * The session pool for `configPath` (main.ts passes the runtime's). Doctor closes it when
   * done.
   */
  openPool: (configPath: string) => DoctorPool;
  signal?: AbortSignal;
  /** For the version lookup. Default `fetch`. */
  fetch?: typeof fetch;
  /**
   * Longest wait for one MCP server's check; the pool's own start-up and listing timeouts
   * (with better hints) normally end it first. Default 70 s.
   */
  mcpTimeoutMs?: number;
}

const SEARCHED = "./.mcp.json, ~/.lmstudio/mcp.json, ~/.mcp.json";

/**
 * Runs every check, yielding each result as soon as it is known (backends first, then
 * models, the default model, and the MCP servers).
 *
 * @example
 * for await (const check of doctorChecks({ app, cwd, openPool: () => runtime.pool })) {
 *   console.log(check.subject);
 * }
 */
export async function* doctorChecks(options: DoctorOptions): AsyncGenerator<CheckResult> {
  const { app, signal } = options;
  const probes = await Promise.all(app.clients.map(async (client) => {
    const probe = await client.probe(signal);
    const version = probe.reachable && !probe.error && probe.kind
      ? await backendVersion(client, probe.kind, app.config.apiKey, options.fetch ?? fetch, signal)
      : undefined;
    return { client, probe, version };
  }));
  for (const { client, probe, version } of probes) yield backendCheck(client, probe, version);

  const usable = probes.filter((p) => p.probe.reachable && !p.probe.error);
  if (usable.length === 0) {
    yield {
      status: "info",
      subject: "models",
      detail: "not checked: no backend is usable",
    };
  } else {
    const listings = await app.catalog.listings({ signal, refresh: true });
    const byUrl = new Map(listings.map((l) => [l.url, l]));
    for (const { client } of usable) {
      const listing = byUrl.get(client.url);
      if (listing) yield modelsCheck(listing);
    }
    yield await defaultModelCheck(app, signal);
  }

  yield* mcpChecks(options);
}

/** Prints every check (✓ / ✗ / -, a fix under each failure) and returns the exit code. */
export async function runDoctor(options: DoctorOptions & { term: Terminal }): Promise<number> {
  const { term } = options;
  const s = term.outStyle;
  const spin = term.spinner("checking backends…");
  let failed = 0;
  let passed = 0;
  try {
    for await (const check of doctorChecks(options)) {
      if (check.status === "ok") passed++;
      const mark = check.status === "ok"
        ? s.green("✓")
        : check.status === "fail"
        ? s.red("✗")
        : s.dim("-");
      term.out(`${mark} ${check.subject}: ${check.detail}\n`);
      if (check.status === "fail") {
        failed++;
        if (check.fix) term.out(`  ${s.yellow("fix:")} ${check.fix}\n`);
      }
      spin.update(check.subject.startsWith("MCP") ? "starting MCP servers…" : "checking…");
    }
  } finally {
    spin.stop();
  }
  term.out(
    failed === 0
      ? `\n${s.green(`all ${passed} checks passed`)}\n`
      : `\n${s.red(`${failed} of ${failed + passed} checks failed`)}\n`,
  );
  return failed === 0 ? 0 : 1;
}

function backendCheck(
  client: BackendClient,
  probe: ProbeResult,
  version: string | undefined,
): CheckResult {
  const subject = `backend ${client.url}`;
  if (probe.error) {
    const err = probe.error;
    if (err.code === "auth_failed") {
      return {
        status: "fail",
        subject,
        detail: `authentication failed (${err.context.status ?? 401}): ${err.message}`,
        fix: err.hint ?? "set LMSTUDIO_API_KEY to the server's API token",
      };
    }
    return {
      status: "fail",
      subject,
      detail: probe.reachable
        ? `answers, but badly: ${err.message}`
        : `unreachable: ${err.message}`,
      fix: err.hint ??
        "start the server with `lms server start` (or LM Studio's Developer tab), check LMSTUDIO_HOST / LMSTUDIO_PORT or --backend",
    };
  }
  const kind = probe.kind ?? "openai";
  return {
    status: "ok",
    subject,
    detail: `${kind}${version ? ` ${version}` : ""}, answered in ${probe.latencyMs} ms`,
  };
}

function modelsCheck(listing: BackendListing): CheckResult {
  const subject = `models on ${listing.url}`;
  if (listing.error) {
    return {
      status: "fail",
      subject,
      detail: listing.error.message,
      fix: listing.error.hint ?? "check the model server's log",
    };
  }
  if (listing.models.length === 0) {
    return {
      status: "fail",
      subject,
      detail: "none",
      fix: "download a model (LM Studio: `lms get qwen/qwen3-4b`; Ollama: `ollama pull <model>`)",
    };
  }
  const loaded = listing.models.filter((m) => m.loaded).map((m) => m.id);
  return {
    status: "ok",
    subject,
    detail: `${listing.models.length} (${loaded.length} loaded${
      loaded.length ? `: ${loaded.slice(0, 5).join(", ")}${loaded.length > 5 ? ", …" : ""}` : ""
    })`,
  };
}

async function defaultModelCheck(app: App, signal?: AbortSignal): Promise<CheckResult> {
  const configured = app.catalog.defaultModel;
  const subject = "default model";
  try {
    const resolved = await app.catalog.resolve(undefined, { signal });
    const loaded = resolved.entries.some((e) => e.loaded);
    const how = configured === undefined
      ? "the first loaded LLM; set DEFAULT_MODEL or --model to pin one"
      : `configured as ${JSON.stringify(configured)}`;
    return {
      status: "ok",
      subject,
      detail: `${resolved.id} (${how})${loaded ? "" : "; not loaded yet, it loads on first use"}`,
    };
  } catch (err) {
    if (signal?.aborted) throw err;
    const error = toBridgeError(err);
    return {
      status: "fail",
      subject,
      detail: `${
        configured === undefined ? "" : `${JSON.stringify(configured)}: `
      }${error.message}`,
      fix: error.hint ?? "set DEFAULT_MODEL to one of the ids `lmbridge models` lists",
    };
  }
}

async function* mcpChecks(options: DoctorOptions): AsyncGenerator<CheckResult> {
  const { app, signal } = options;
  const configPath = findMcpConfigPath(app.config.mcpConfigPath, {
    cwd: options.cwd,
    home: options.home,
  });
  if (configPath === undefined) {
    yield {
      status: "info",
      subject: "MCP servers",
      detail: `no MCP servers file found (looked for ${SEARCHED}); the agent has no MCP tools`,
    };
    return;
  }
  const pool = options.openPool(configPath);
  try {
    const listing = await pool.list(signal);
    if (listing.error) {
      yield {
        status: "fail",
        subject: "MCP servers file",
        detail: listing.error,
        fix:
          `fix ${configPath}: it must be JSON like {"mcpServers": {"name": {"command": "…", "args": []}}}`,
      };
      return;
    }
    if (listing.servers.length === 0) {
      const exists = await fileExists(configPath);
      yield {
        status: "info",
        subject: "MCP servers",
        detail: exists
          ? `${configPath} lists no servers`
          : `${configPath} does not exist; the agent has no MCP tools`,
      };
      return;
    }
    yield { status: "info", subject: "MCP servers file", detail: configPath };
    const results = await Promise.all(listing.servers.map(async (server): Promise<CheckResult> => {
      const subject = `MCP server ${server.name} (${server.transport})`;
      if (server.status === "disabled") {
        return { status: "info", subject, detail: "disabled" };
      }
      if (server.status === "self") {
        return { status: "info", subject, detail: "this is lmbridge itself; never started" };
      }
      const timeout = AbortSignal.timeout(options.mcpTimeoutMs ?? 70_000);
      try {
        const tools = await pool.tools(
          server.name,
          signal ? AbortSignal.any([signal, timeout]) : timeout,
        );
        return { status: "ok", subject, detail: `${tools.length} tools` };
      } catch (err) {
        if (signal?.aborted) throw err;
        const error = err instanceof BridgeError ? err : toBridgeError(err);
        return {
          status: "fail",
          subject,
          detail: timeout.aborted ? "did not start in time" : error.message,
          fix: (timeout.aborted ? undefined : error.hint) ??
            `check the "${server.name}" entry in ${configPath} (command, args, env, url) and try running it by hand`,
        };
      }
    }));
    yield* results;
  } finally {
    await pool.close();
  }
}

/**
 * The server's version where its API tells it (Ollama's `/api/version`, llama-server's
 * `/props` build info); LM Studio and generic servers do not say.
 */
async function backendVersion(
  client: BackendClient,
  kind: string,
  apiKey: string | undefined,
  fetchFn: typeof fetch,
  signal?: AbortSignal,
): Promise<string | undefined> {
  const path = kind === "ollama" ? "/api/version" : kind === "llamacpp" ? "/props" : undefined;
  if (!path) return undefined;
  const timeout = AbortSignal.timeout(5_000);
  try {
    const res = await fetchFn(`${client.url}${path}`, {
      headers: apiKey ? { authorization: `Bearer ${apiKey}` } : {},
      signal: signal ? AbortSignal.any([signal, timeout]) : timeout,
    });
    if (!res.ok) {
      await res.body?.cancel();
      return undefined;
    }
    const body = await res.json() as Record<string, unknown>;
    const version = body.version ?? body.build_info;
    return typeof version === "string" ? version : undefined;
  } catch {
    return undefined;
  }
}

async function fileExists(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isFile;
  } catch {
    return false;
  }
}
