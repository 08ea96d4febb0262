/**
 * The one error type of lmbridge: a stable code from SPEC §6, the context it happened in,
 * and a hint that tells the user what to do. Raw failures are mapped to it where they
 * happen; the tool layer only formats.
 */

/** The stable error codes of SPEC §6. */
export const ERROR_CODES = [
  "invalid_request",
  "backend_unreachable",
  "model_not_found",
  "model_not_loaded",
  "unsupported",
  "timeout",
  "cancelled",
  "rate_limited",
  "overloaded",
  "upstream_error",
  "context_overflow",
  "auth_failed",
  "mcp_server_unavailable",
  "mcp_tool_failed",
] as const;

export type ErrorCode = typeof ERROR_CODES[number];

/** Where an error happened; every field optional. */
export interface ErrorContext {
  model?: string;
  backend?: string;
  attempts?: number;
  elapsedMs?: number;
  status?: number;
  /** Text already generated when a stream broke. */
  partialText?: string;
  /** Extra data for structured results (e.g. suggestions). */
  details?: Record<string, unknown>;
  /** The tool's structured result so far (an agent run's rounds and tool calls), returned
   * with the error so the client sees what already happened. */
  result?: Record<string, unknown>;
}

/**
 * An error with a SPEC code and a hint.
 *
 * @example
 * throw new BridgeError("model_not_found", 'no model "qwen"', {
 *   hint: "did you mean qwen/qwen3-4b?",
 * });
 */
export class BridgeError extends Error {
  readonly code: ErrorCode;
  readonly hint?: string;
  readonly context: ErrorContext;

  constructor(
    code: ErrorCode,
    message: string,
    options: { hint?: string; cause?: unknown } & ErrorContext = {},
  ) {
    super(message, { cause: options.cause });
    this.name = "BridgeError";
    this.code = code;
    this.hint = options.hint;
    const { hint: _h, cause: _c, ...context } = options;
    this.context = context;
  }

  /** A copy with more context (for example the model once it is known). */
  with(extra: ErrorContext & { hint?: string }): BridgeError {
    const { hint, ...ctx } = extra;
    return new BridgeError(this.code, this.message, {
      ...this.context,
      ...ctx,
      hint: hint ?? this.hint,
      cause: this.cause,
    });
  }

  /** `Error [code]: message (model …, backend …, attempts n). hint` */
  format(): string {
    const parts: string[] = [];
    if (this.context.model) parts.push(`model ${this.context.model}`);
    if (this.context.backend) parts.push(`backend ${this.context.backend}`);
    if (this.context.attempts && this.context.attempts > 1) {
      parts.push(`after ${this.context.attempts} attempts`);
    }
    let text = `Error [${this.code}]: ${this.message}`;
    if (parts.length) text += ` (${parts.join(", ")})`;
    if (this.hint) text += `. Hint: ${this.hint}`;
    if (this.context.partialText) {
      text += `\n\nPartial text before the failure:\n${this.context.partialText}`;
    }
    return text;
  }
}

/** True when `err` is an abort caused by `signal` (or any AbortError). */
export function isAbortError(err: unknown): boolean {
  return err instanceof DOMException &&
    (err.name === "AbortError" || err.name === "TimeoutError");
}

/**
 * Turns an abort reason into a BridgeError: a TimeoutError becomes `timeout`, anything
 * else `cancelled`. A reason that already is a BridgeError is returned as is.
 */
export function abortToError(reason: unknown, what = "request"): BridgeError {
  if (reason instanceof BridgeError) return reason;
  if (reason instanceof DOMException && reason.name === "TimeoutError") {
    return new BridgeError("timeout", `${what} exceeded its deadline`, {
      hint: "raise timeout_s or LMBRIDGE_REQUEST_TIMEOUT_S, or use a smaller max_tokens",
    });
  }
  return new BridgeError("cancelled", `${what} was cancelled`);
}

/** Any thrown value as a BridgeError (unknown errors become `upstream_error`). */
export function toBridgeError(err: unknown): BridgeError {
  if (err instanceof BridgeError) return err;
  if (isAbortError(err)) return abortToError(err);
  const message = err instanceof Error ? err.message : String(err);
  return new BridgeError("upstream_error", message, { cause: err });
}
