/**
 * Finds and reads the user's MCP servers file (`.mcp.json`, Claude Code's format) for the
 * agent: expands `${VAR}`, validates every entry and recognises lmbridge's own entry.
 */

import { dirname, isAbsolute, join, resolve } from "node:path";
import { BridgeError } from "../util/errors.ts";
import { isRecord } from "../util/json.ts";

/** How lmbridge talks to a downstream MCP server. */
export type McpTransportKind = "stdio" | "http" | "sse";

/** One entry of the `mcpServers` map, with every `${VAR}` already expanded. */
export interface McpServerEntry {
  /** The key in `mcpServers`. */
  name: string;
  transport: McpTransportKind;
  /** stdio only: the executable to spawn. */
  command?: string;
  args: string[];
  /** Variables the entry sets for its child (expanded); the child also inherits a safe base. */
  env: Record<string, string>;
  /** http / sse only. */
  url?: string;
  headers: Record<string, string>;
  disabled: boolean;
  /** This entry would start lmbridge itself; it is never started. */
  self: boolean;
  /** A stable string of the expanded entry: it changes iff the entry changed (hot reload). */
  fingerprint: string;
  /** What runs, as written in the file (variables not expanded, URL without credentials or
   * query): safe to show in messages and logs, where an expanded secret must never go. */
  shown: string;
  /** Values never to show: env and header values, and whatever `${VAR}` expanded into. */
  secrets: string[];
}

/** What was found in the MCP servers file. */
export interface McpConfig {
  /** The file that was read; `undefined` when none was configured or found. */
  path: string | undefined;
  servers: McpServerEntry[];
  /** Set when the file is malformed (then `servers` is empty). */
  error?: string;
}

/**
 * How to recognise lmbridge's own entry, so that it never starts itself.
 *
 * - `compiled` (a `deno compile` binary): an entry is self when its command resolves (relative
 *   to the config file's directory, or through `PATH` for a bare name) to `execPath`.
 * - from source: an entry is self when one of its arguments, resolved against the config
 *   file's directory, is `mainModulePath` (`deno run -A /path/to/main.ts`), or when it is
 *   `deno task start` run in the directory of `mainModulePath` (via `--cwd`, `--config` or
 *   the config file's own directory).
 *
 * Paths are compared after resolving symlinks.
 */
export interface SelfIdentity {
  /** `Deno.execPath()`. */
  execPath: string;
  /** Absolute path of lmbridge's `main.ts` (from `import.meta`). */
  mainModulePath: string;
  /** True for a `deno compile` binary. */
  compiled: boolean;
}

/**
 * Where the MCP servers file is. An `explicit` path (flag or `MCP_JSON_PATH`) wins and is
 * returned even when it does not exist (reading it then yields no servers); otherwise the
 * first that exists of `./.mcp.json` (cwd), `~/.lmstudio/mcp.json`, `~/.mcp.json`.
 *
 * @example
 * findMcpConfigPath(undefined, { cwd: "/repo", home: "/home/me" }); // "/repo/.mcp.json" if it exists
 */
export function findMcpConfigPath(
  explicit: string | undefined,
  options: { cwd?: string; home?: string; exists?: (p: string) => boolean } = {},
): string | undefined {
  const cwd = options.cwd ?? Deno.cwd();
  const home = options.home ?? Deno.env.get("HOME") ?? Deno.env.get("USERPROFILE");
  const exists = options.exists ?? isFile;
  if (explicit !== undefined && explicit.trim() !== "") {
    const path = explicit.trim();
    if (home && (path === "~" || path.startsWith("~/"))) return join(home, path.slice(1));
    return resolve(cwd, path);
  }
  const candidates = [join(cwd, ".mcp.json")];
  if (home) candidates.push(join(home, ".lmstudio", "mcp.json"), join(home, ".mcp.json"));
  return candidates.find((p) => exists(p));
}

/**
 * Expands `${VAR}` and `${VAR:-default}` as Claude Code does: a set variable (even an empty
 * one) gives its value, an unset one its default. An unset variable without a default
 * expands to the empty string (Claude Code would refuse the entry; we keep it usable and
 * let the server report what it misses).
 *
 * @example
 * expandVars("Bearer ${TOKEN:-none}", {}); // "Bearer none"
 */
export function expandVars(
  text: string,
  env: Record<string, string | undefined>,
  onValue?: (value: string) => void,
): string {
  return text.replace(/\$\{([^}]+)\}/g, (_match, inner: string) => {
    const sep = inner.indexOf(":-");
    const name = sep === -1 ? inner : inner.slice(0, sep);
    const value = env[name];
    if (value !== undefined) {
      // Whatever came from the environment may be a secret: the caller gets to know it.
      onValue?.(value);
      return value;
    }
    return sep === -1 ? "" : inner.slice(sep + 2);
  });
}

/**
 * Parses the text of an MCP servers file into entries, in file order.
 *
 * Accepts Claude Code's format (`type` omitted or `"stdio"` with `command`; `"http"` or
 * `"sse"` with `url`) and LM Studio's (`url` without `type` means Streamable HTTP;
 * `"streamable-http"` / `"streamableHttp"` are read as `"http"`).
 *
 * @throws {BridgeError} `invalid_request` with `"<path>: <problem>"` naming the entry, for
 * malformed JSON, a missing or invalid `mcpServers` map, an entry with neither `command` nor
 * `url`, a bad url, or fields of the wrong type.
 */
export function parseMcpConfig(
  text: string,
  path: string,
  options: { env: Record<string, string | undefined>; self: SelfIdentity },
): McpServerEntry[] {
  const fail = (problem: string): never => {
    throw new BridgeError("invalid_request", `${path}: ${problem}`, {
      hint: `fix ${path} (see the mcpServers format of Claude Code's .mcp.json)`,
    });
  };
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (err) {
    fail(`not valid JSON (${err instanceof Error ? err.message : String(err)})`);
  }
  if (!isRecord(data)) return fail("expected a JSON object with an mcpServers map");
  const map = data.mcpServers;
  if (map === undefined) return fail('no "mcpServers" map');
  if (!isRecord(map)) return fail('"mcpServers" must be an object mapping names to servers');

  const baseDir = dirname(resolve(path));
  const entries: McpServerEntry[] = [];
  for (const [name, raw] of Object.entries(map)) {
    const where = `server "${name}"`;
    if (name.trim() === "") fail("a server has an empty name");
    if (!isRecord(raw)) fail(`${where} must be an object`);
    const spec = raw as Record<string, unknown>;
    const expanded = new Set<string>();
    const expand = (s: string) => expandVars(s, options.env, (v) => expanded.add(v));

    const disabled = spec.disabled ?? false;
    if (typeof disabled !== "boolean") fail(`${where}: "disabled" must be true or false`);

    const transport = transportOf(spec, where, fail);
    const args = stringArray(spec.args, `${where}: "args"`, fail).map(expand);
    const env = stringMap(spec.env, `${where}: "env"`, fail, expand);
    const headers = stringMap(spec.headers, `${where}: "headers"`, fail, expand);

    let command: string | undefined;
    let url: string | undefined;
    if (transport === "stdio") {
      if (typeof spec.command !== "string" || spec.command.trim() === "") {
        fail(`${where} needs a "command" (stdio) or a "url" (http / sse)`);
      }
      command = expand(spec.command as string);
      if (command.trim() === "") fail(`${where}: "command" is empty after expanding variables`);
    } else {
      if (typeof spec.url !== "string" || spec.url.trim() === "") {
        fail(`${where} has type "${transport}" but no "url"`);
      }
      url = expand(spec.url as string).trim();
      let parsed: URL | undefined;
      try {
        parsed = new URL(url);
      } catch {
        fail(`${where}: "url" is not a valid URL: ${JSON.stringify(spec.url)}`);
      }
      if (parsed!.protocol !== "http:" && parsed!.protocol !== "https:") {
        fail(`${where}: "url" must be http:// or https://, got ${JSON.stringify(spec.url)}`);
      }
    }

    const self = transport === "stdio" && isSelf(command!, args, baseDir, options);
    const fingerprint = JSON.stringify([
      transport,
      command ?? null,
      args,
      sortedEntries(env),
      url ?? null,
      sortedEntries(headers),
      disabled,
    ]);
    entries.push({
      name,
      transport,
      command,
      args,
      env,
      url,
      headers,
      disabled: disabled as boolean,
      self,
      fingerprint,
      shown: transport === "stdio"
        ? [spec.command as string, ...stringArray(spec.args, "", fail)]
          .map((a) => /\s/.test(a) ? `"${a}"` : a).join(" ")
        : withoutSecrets(spec.url as string),
      secrets: [...new Set([...Object.values(env), ...Object.values(headers), ...expanded])]
        .filter((v) => v.length >= 4),
    });
  }
  return entries;
}

/**
 * Reads and parses the MCP servers file; never throws. No path or a missing file gives no
 * servers; a malformed or unreadable file gives no servers and `error`.
 *
 * @example
 * const config = await loadMcpConfig(findMcpConfigPath(undefined), { env: Deno.env.toObject(), self });
 */
export async function loadMcpConfig(
  path: string | undefined,
  options: {
    env: Record<string, string | undefined>;
    self: SelfIdentity;
    readTextFile?: (p: string) => Promise<string>;
  },
): Promise<McpConfig> {
  if (path === undefined) return { path, servers: [] };
  const read = options.readTextFile ?? ((p: string) => Deno.readTextFile(p));
  let text: string;
  try {
    text = await read(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return { path, servers: [] };
    const why = err instanceof Error ? err.message : String(err);
    return { path, servers: [], error: `${path}: cannot be read (${why})` };
  }
  try {
    return { path, servers: parseMcpConfig(text, path, options) };
  } catch (err) {
    return { path, servers: [], error: err instanceof Error ? err.message : String(err) };
  }
}

// --- helpers ---------------------------------------------------------------------------

type Fail = (problem: string) => never;

function transportOf(spec: Record<string, unknown>, where: string, fail: Fail): McpTransportKind {
  const type = spec.type ?? spec.transport;
  if (type === undefined) {
    if (spec.command !== undefined) return "stdio";
    if (spec.url !== undefined) return "http";
    return fail(`${where} needs a "command" (stdio) or a "url" (http / sse)`);
  }
  switch (type) {
    case "stdio":
      return "stdio";
    case "http":
    case "streamable-http":
    case "streamableHttp":
      return "http";
    case "sse":
      return "sse";
    default:
      return fail(
        `${where}: unknown type ${JSON.stringify(type)} (expected "stdio", "http" or "sse")`,
      );
  }
}

function stringArray(value: unknown, what: string, fail: Fail): string[] {
  if (value === undefined || value === null) return [];
  if (!Array.isArray(value) || value.some((v) => typeof v !== "string")) {
    fail(`${what} must be an array of strings`);
  }
  return [...value as string[]];
}

function stringMap(
  value: unknown,
  what: string,
  fail: Fail,
  expand: (s: string) => string,
): Record<string, string> {
  if (value === undefined || value === null) return {};
  if (!isRecord(value)) fail(`${what} must be an object of strings`);
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(value as Record<string, unknown>)) {
    if (typeof v !== "string") fail(`${what}: "${k}" must be a string`);
    out[k] = expand(v as string);
  }
  return out;
}

/** A URL as written, without user:password, query string, and path segments that look like
 * keys (long runs of letters and digits): where tokens tend to live. */
export function withoutSecrets(url: string): string {
  const keyLike = (segment: string) =>
    !segment.includes("${") && segment.length >= 16 && /\d/.test(segment) &&
      /[a-z]/i.test(segment)
      ? "…"
      : segment;
  const clean = (path: string) => path.split("/").map(keyLike).join("/");
  try {
    const u = new URL(url);
    return `${u.protocol}//${u.host}${clean(u.pathname)}`;
  } catch {
    return clean(url.replace(/\/\/[^@/]*@/, "//").replace(/\?.*$/, ""));
  }
}

function sortedEntries(map: Record<string, string>): [string, string][] {
  return Object.entries(map).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
}

function isFile(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

/** The real path when it exists, else the normalised absolute path. */
function canonical(path: string): string {
  try {
    return Deno.realPathSync(path);
  } catch {
    return resolve(path);
  }
}

/** Where a command would be found: a path relative to `baseDir`, or a bare name on PATH. */
function resolveCommand(
  command: string,
  baseDir: string,
  env: Record<string, string | undefined>,
): string | undefined {
  if (command.includes("/") || command.includes("\\")) return resolve(baseDir, command);
  const sep = Deno.build.os === "windows" ? ";" : ":";
  for (const dir of (env.PATH ?? env.Path ?? "").split(sep)) {
    if (!dir) continue;
    const candidate = join(dir, command);
    if (isFile(candidate)) return candidate;
  }
  return undefined;
}

function isSelf(
  command: string,
  args: string[],
  baseDir: string,
  options: { env: Record<string, string | undefined>; self: SelfIdentity },
): boolean {
  const { self, env } = options;
  if (self.compiled) {
    const found = resolveCommand(command, baseDir, env);
    return found !== undefined && canonical(found) === canonical(self.execPath);
  }
  const main = canonical(self.mainModulePath);
  const asPath = (arg: string) =>
    arg.startsWith("file://") ? safeFromFileUrl(arg) : isAbsolute(arg) ? arg : join(baseDir, arg);
  if (args.some((arg) => arg !== "" && !arg.startsWith("-") && canonical(asPath(arg)) === main)) {
    return true;
  }
  // `deno task start` in lmbridge's own directory runs main.ts too.
  const exe = command.split(/[\\/]/).pop()!.replace(/\.exe$/i, "");
  const taskAt = args.indexOf("task");
  if (exe !== "deno" || taskAt === -1) return false;
  let dir = baseDir;
  const rest = args.slice(taskAt + 1);
  let task: string | undefined;
  for (let i = 0; i < rest.length; i++) {
    const arg = rest[i];
    const [flag, inline] = arg.includes("=") ? arg.split(/=(.*)/s, 2) : [arg, undefined];
    if (flag === "--cwd" || flag === "--config" || flag === "-c") {
      const value = inline ?? rest[++i] ?? "";
      const target = resolve(baseDir, value);
      dir = flag === "--cwd" ? target : dirname(target);
    } else if (!arg.startsWith("-")) {
      task = arg;
      break;
    }
  }
  return task === "start" && canonical(dir) === dirname(main);
}

function safeFromFileUrl(url: string): string {
  try {
    return decodeURIComponent(new URL(url).pathname);
  } catch {
    return url;
  }
}
