/**
 * lmbridge's configuration (SPEC §2): flag > environment > config file > default, every value
 * validated. A bad value raises ConfigError naming the setting and the value; main.ts turns it
 * into one line on stderr and exit code 2.
 */

export type LogLevel = "debug" | "info" | "warn" | "error";
const LOG_LEVELS: readonly LogLevel[] = ["debug", "info", "warn", "error"];

export interface Config {
  /** Base URLs without a trailing slash. */
  backends: string[];
  apiKey?: string;
  defaultModel?: string;
  /** Explicit MCP servers file (flag or env); undefined means "search". */
  mcpConfigPath?: string;
  logLevel: LogLevel;
  /** From `serve --http HOST:PORT`. */
  http?: { host: string; port: number };
  httpToken?: string;
  /** Undefined: the loaded instance's `parallel`, else 4. */
  maxInflightPerModel?: number;
  maxInflightPerBackend: number;
  maxQueue: number;
  queueTimeoutS: number;
  rps?: number;
  firstByteTimeoutS: number;
  idleTimeoutS: number;
  requestTimeoutS: number;
  cacheTtlS: number;
  stateDir: string;
  maxAttempts: number;
  /** Directories that `images` file paths must lie in. */
  imageRoots: string[];
  allowRemoteImages: boolean;
  /** Longest tool result handed to the agent's model, in characters. */
  toolResultMaxChars: number;
  /** How long finished background jobs are kept. */
  jobTtlS: number;
  mcpIdleTtlS: number;
  mcpCallTimeoutS: number;
  /** Largest JSON-RPC message read from a client, in bytes. */
  maxMessageBytes: number;
}

/** Flags as parsed from the command line (all optional). */
export interface ConfigFlags {
  backend?: string[];
  model?: string;
  mcpConfig?: string;
  config?: string;
  logLevel?: string;
  http?: string;
}

/** A setting with a bad value. */
export class ConfigError extends Error {
  constructor(readonly setting: string, value: unknown, problem: string) {
    super(`invalid ${setting}=${JSON.stringify(value)}: ${problem}`);
    this.name = "ConfigError";
  }
}

export interface LoadConfigOptions {
  flags?: ConfigFlags;
  env?: Record<string, string | undefined>;
  readTextFile?: (path: string) => string;
  cwd?: string;
  home?: string;
}

type Source = { name: string; value: unknown };

/**
 * Builds the configuration from flags, environment and an optional JSON config file.
 *
 * @example
 * const config = loadConfig({ flags: { backend: ["http://gpu:1234"] }, env: Deno.env.toObject() });
 */
export function loadConfig(options: LoadConfigOptions = {}): Config {
  const flags = options.flags ?? {};
  const env = options.env ?? {};
  const home = options.home ?? env.HOME ?? "/";
  const cwd = options.cwd ?? "/";
  const readTextFile = options.readTextFile ?? ((p: string) => Deno.readTextFileSync(p));

  let file: Record<string, unknown> = {};
  const configPath = flags.config ?? env.LMBRIDGE_CONFIG;
  if (configPath) {
    const setting = flags.config ? "--config" : "LMBRIDGE_CONFIG";
    let text: string;
    try {
      text = readTextFile(configPath);
    } catch (err) {
      throw new ConfigError(setting, configPath, `cannot read: ${(err as Error).message}`);
    }
    try {
      const parsed = JSON.parse(text);
      if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
        throw new Error("the top level must be a JSON object");
      }
      file = parsed;
    } catch (err) {
      throw new ConfigError(setting, configPath, `not valid JSON: ${(err as Error).message}`);
    }
  }

  /**
   * First defined of flag, env, file key. The file may also spell the key as the env name in
   * lower camel case (`lmbridgeMaxQueue` for LMBRIDGE_MAX_QUEUE).
   */
  const pick = (
    flag: unknown,
    envName: string,
    fileKey: string,
    flagName = `--${kebab(fileKey)}`,
  ): Source | undefined => {
    if (flag !== undefined) return { name: flagName, value: flag };
    if (env[envName] !== undefined && env[envName] !== "") {
      return { name: envName, value: env[envName] };
    }
    for (const key of [fileKey, camel(envName)]) {
      if (file[key] !== undefined) return { name: `${key} (config file)`, value: file[key] };
    }
    return undefined;
  };

  const num = (
    envName: string,
    fileKey: string,
    def: number | undefined,
    rule: { min: number; integer?: boolean },
  ): number | undefined => {
    const src = pick(undefined, envName, fileKey);
    if (!src) return def;
    const n = typeof src.value === "number" ? src.value : Number(String(src.value).trim());
    if (!Number.isFinite(n) || String(src.value).trim() === "") {
      throw new ConfigError(src.name, src.value, "not a number");
    }
    if (rule.integer && !Number.isInteger(n)) {
      throw new ConfigError(src.name, src.value, "must be a whole number");
    }
    if (n < rule.min) throw new ConfigError(src.name, src.value, `must be at least ${rule.min}`);
    return n;
  };

  const bool = (envName: string, fileKey: string, def: boolean): boolean => {
    const src = pick(undefined, envName, fileKey);
    if (!src) return def;
    if (typeof src.value === "boolean") return src.value;
    const s = String(src.value).toLowerCase();
    if (["1", "true", "yes", "on"].includes(s)) return true;
    if (["0", "false", "no", "off"].includes(s)) return false;
    throw new ConfigError(src.name, src.value, "must be true or false");
  };

  // Backends: --backend, LMBRIDGE_BACKENDS, file "backends", else LMSTUDIO_HOST/PORT.
  let backends: string[];
  const backendSrc = pick(
    flags.backend?.length ? flags.backend : undefined,
    "LMBRIDGE_BACKENDS",
    "backends",
    "--backend",
  );
  if (backendSrc) {
    const raw = Array.isArray(backendSrc.value)
      ? backendSrc.value.map(String)
      : String(backendSrc.value).split(",");
    backends = raw.map((s) => s.trim()).filter(Boolean).map((u) =>
      normalizeBackendUrl(u, backendSrc.name)
    );
    if (backends.length === 0) throw new ConfigError(backendSrc.name, backendSrc.value, "empty");
  } else {
    const hostSrc = pick(undefined, "LMSTUDIO_HOST", "lmstudioHost") ??
      { name: "LMSTUDIO_HOST", value: "localhost" };
    const host = String(hostSrc.value).trim();
    const portSrc = pick(undefined, "LMSTUDIO_PORT", "lmstudioPort");
    const port = portSrc ? parsePort(portSrc.value, portSrc.name) : 1234;
    if (!/^[A-Za-z0-9.\-:\[\]]+$/.test(host)) {
      throw new ConfigError(hostSrc.name, hostSrc.value, "not a host name");
    }
    // A bare IPv6 address (`::1`) needs brackets in a URL.
    const urlHost = host.includes(":") && !host.startsWith("[") ? `[${host}]` : host;
    try {
      backends = [normalizeBackendUrl(`http://${urlHost}:${port}`, hostSrc.name)];
    } catch {
      throw new ConfigError(hostSrc.name, hostSrc.value, "not a host name");
    }
  }
  backends = [...new Set(backends)];

  const logSrc = pick(flags.logLevel, "LOG_LEVEL", "logLevel");
  const logLevel = String(logSrc?.value ?? "info").toLowerCase() as LogLevel;
  if (!LOG_LEVELS.includes(logLevel)) {
    throw new ConfigError(logSrc!.name, logSrc!.value, `must be one of ${LOG_LEVELS.join(", ")}`);
  }

  let http: Config["http"];
  if (flags.http !== undefined) http = parseHostPort(flags.http, "--http");

  const stateHome = env.XDG_STATE_HOME || `${home}/.local/state`;
  const stateSrc = pick(undefined, "LMBRIDGE_STATE_DIR", "stateDir");
  const stateDir = stateSrc ? String(stateSrc.value) : `${stateHome}/lmbridge`;

  const imageRootsSrc = pick(undefined, "LMBRIDGE_IMAGE_ROOTS", "imageRoots");
  const imageRoots = imageRootsSrc
    ? (Array.isArray(imageRootsSrc.value)
      ? imageRootsSrc.value.map(String)
      : String(imageRootsSrc.value).split(","))
      .map((s) => s.trim()).filter(Boolean).map((p) => resolvePath(cwd, p))
    : [cwd];

  const strOpt = (flag: unknown, envName: string, fileKey: string) => {
    const src = pick(flag, envName, fileKey);
    return src === undefined ? undefined : String(src.value);
  };

  return {
    backends,
    apiKey: secret(
      env.LMSTUDIO_API_KEY
        ? "LMSTUDIO_API_KEY"
        : env.LMBRIDGE_API_KEY
        ? "LMBRIDGE_API_KEY"
        : "apiKey (config file)",
      env.LMSTUDIO_API_KEY || env.LMBRIDGE_API_KEY ||
        (file.apiKey === undefined ? undefined : String(file.apiKey)),
    ),
    defaultModel: strOpt(flags.model, "DEFAULT_MODEL", "defaultModel"),
    mcpConfigPath: strOpt(flags.mcpConfig, "MCP_JSON_PATH", "mcpJsonPath"),
    logLevel,
    http,
    httpToken: secret("LMBRIDGE_HTTP_TOKEN", env.LMBRIDGE_HTTP_TOKEN || undefined),
    maxInflightPerModel: num("LMBRIDGE_MAX_INFLIGHT_PER_MODEL", "maxInflightPerModel", undefined, {
      min: 1,
      integer: true,
    }),
    maxInflightPerBackend: num("LMBRIDGE_MAX_INFLIGHT_PER_BACKEND", "maxInflightPerBackend", 16, {
      min: 1,
      integer: true,
    })!,
    maxQueue: num("LMBRIDGE_MAX_QUEUE", "maxQueue", 1000, { min: 0, integer: true })!,
    queueTimeoutS: num("LMBRIDGE_QUEUE_TIMEOUT_S", "queueTimeoutS", 120, { min: 0 })!,
    rps: num("LMBRIDGE_RPS", "rps", undefined, { min: 0 }) || undefined,
    firstByteTimeoutS: num("LMBRIDGE_FIRST_BYTE_TIMEOUT_S", "firstByteTimeoutS", 120, {
      min: 0.001,
    })!,
    idleTimeoutS: num("LMBRIDGE_IDLE_TIMEOUT_S", "idleTimeoutS", 30, { min: 0.001 })!,
    requestTimeoutS: num("LMBRIDGE_REQUEST_TIMEOUT_S", "requestTimeoutS", 600, { min: 0.001 })!,
    cacheTtlS: num("LMBRIDGE_CACHE_TTL_S", "cacheTtlS", 30, { min: 0 })!,
    stateDir,
    maxAttempts: num("LMBRIDGE_MAX_ATTEMPTS", "maxAttempts", 3, { min: 1, integer: true })!,
    imageRoots,
    allowRemoteImages: bool("LMBRIDGE_ALLOW_REMOTE_IMAGES", "allowRemoteImages", false),
    toolResultMaxChars: num("LMBRIDGE_TOOL_RESULT_MAX_CHARS", "toolResultMaxChars", 20_000, {
      min: 100,
      integer: true,
    })!,
    jobTtlS: num("LMBRIDGE_JOB_TTL_S", "jobTtlS", 7 * 24 * 3600, { min: 1 })!,
    mcpIdleTtlS: num("LMBRIDGE_MCP_IDLE_TTL_S", "mcpIdleTtlS", 600, { min: 1 })!,
    mcpCallTimeoutS: num("LMBRIDGE_MCP_CALL_TIMEOUT_S", "mcpCallTimeoutS", 60, { min: 0.001 })!,
    maxMessageBytes: num("LMBRIDGE_MAX_MESSAGE_BYTES", "maxMessageBytes", 32 * 1024 * 1024, {
      min: 1024,
      integer: true,
    })!,
  };
}

/** `http(s)://host:port[/path]` without a trailing slash or `/v1`. */
export function normalizeBackendUrl(raw: string, setting: string): string {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new ConfigError(setting, raw, "not a URL (expected http://host:port)");
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new ConfigError(setting, raw, "must start with http:// or https://");
  }
  if (url.port === "0") throw new ConfigError(setting, raw, "port 0 is not a port");
  let path = url.pathname.replace(/\/+$/, "");
  if (path.endsWith("/v1")) path = path.slice(0, -3);
  return `${url.protocol}//${url.host}${path}`;
}

function parsePort(value: unknown, setting: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1 || n > 65535) {
    throw new ConfigError(setting, value, "must be a port between 1 and 65535");
  }
  return n;
}

/** `HOST:PORT`, `:PORT` or `[::1]:PORT`. */
export function parseHostPort(value: string, setting: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d+)$/.exec(value.trim());
  if (!m) throw new ConfigError(setting, value, "expected HOST:PORT");
  const host = m[1] ?? (m[2] || "127.0.0.1");
  const port = Number(m[3]);
  if (!Number.isInteger(port) || port > 65535) {
    throw new ConfigError(setting, value, "port must be between 0 and 65535");
  }
  return { host, port };
}

/** A token goes into an HTTP header: printable ASCII without spaces. Its value is never
 * printed, not even in the error. */
function secret(setting: string, value: string | undefined): string | undefined {
  if (value === undefined) return undefined;
  if (!/^[\x21-\x7e]+$/.test(value)) {
    throw new ConfigError(setting, "(hidden)", "must be printable characters without spaces");
  }
  return value;
}

function resolvePath(cwd: string, p: string): string {
  if (p.startsWith("/")) return p;
  return `${cwd.replace(/\/+$/, "")}/${p}`;
}

/** `LMBRIDGE_MAX_QUEUE` → `lmbridgeMaxQueue`. */
function camel(envName: string): string {
  return envName.toLowerCase().replace(/_([a-z0-9])/g, (_, c: string) => c.toUpperCase());
}

function kebab(s: string): string {
  return s.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
}
