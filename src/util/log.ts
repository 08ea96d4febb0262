/**
 * Structured logging to stderr, one JSON object per line. stdout carries JSON-RPC only, so
 * nothing here ever writes there. Fields whose names look secret are redacted.
 */

export type LogLevel = "debug" | "info" | "warn" | "error";
const RANK: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };
const SECRET_FIELD = /(api_?key|token|authorization|secret|password|^env$|headers)/i;

export type LogFields = Record<string, unknown>;

/** A logger; `child` adds fixed fields (request id, tool, model…). */
export interface Logger {
  debug(msg: string, fields?: LogFields): void;
  info(msg: string, fields?: LogFields): void;
  warn(msg: string, fields?: LogFields): void;
  error(msg: string, fields?: LogFields): void;
  child(fields: LogFields): Logger;
}

/**
 * Creates a logger writing JSON lines at `level` and above.
 *
 * @example
 * const log = createLogger("info");
 * log.child({ request_id: "r1", tool: "chat_completion" }).info("done", { elapsed_ms: 12 });
 */
export function createLogger(
  level: LogLevel,
  options: { write?: (line: string) => void; base?: LogFields; now?: () => Date } = {},
): Logger {
  const encoder = new TextEncoder();
  const write = options.write ??
    ((line: string) => {
      try {
        Deno.stderr.writeSync(encoder.encode(line + "\n"));
      } catch {
        // stderr closed: nothing sensible left to do with a log line.
      }
    });
  const now = options.now ?? (() => new Date());
  const base = options.base ?? {};
  const emit = (lvl: LogLevel, msg: string, fields?: LogFields) => {
    if (RANK[lvl] < RANK[level]) return;
    const record: LogFields = { ts: now().toISOString(), level: lvl, msg };
    for (const [k, v] of Object.entries({ ...base, ...fields })) {
      if (v === undefined) continue;
      record[k] = SECRET_FIELD.test(k) ? "[redacted]" : v instanceof Error ? v.message : v;
    }
    write(JSON.stringify(record));
  };
  return {
    debug: (m, f) => emit("debug", m, f),
    info: (m, f) => emit("info", m, f),
    warn: (m, f) => emit("warn", m, f),
    error: (m, f) => emit("error", m, f),
    child: (fields) => createLogger(level, { write, now, base: { ...base, ...fields } }),
  };
}

/** A logger that drops everything (tests, library use). */
export const silentLogger: Logger = {
  debug() {},
  info() {},
  warn() {},
  error() {},
  child() {
    return silentLogger;
  },
};
