/**
 * Maps what model servers send on failure (two body shapes, errors inside 200s, network
 * errors) to BridgeErrors with SPEC §6 codes and a hint for the user.
 */
import { BridgeError, type ErrorCode } from "../util/errors.ts";

/** The `error` field of a body, in either shape, as message / code / type. */
export interface UpstreamErrorBody {
  message: string;
  code?: string;
  type?: string;
}

/** Reads `{"error":"text"}` or `{"error":{"message",…}}`; undefined when there is no error. */
export function readErrorField(body: unknown): UpstreamErrorBody | undefined {
  if (typeof body !== "object" || body === null || !("error" in body)) return undefined;
  const err = (body as { error: unknown }).error;
  if (err === null || err === undefined || err === false) return undefined;
  if (typeof err === "string") return { message: err };
  if (typeof err === "object") {
    const o = err as Record<string, unknown>;
    const message = typeof o.message === "string"
      ? o.message
      : typeof o.error === "string"
      ? o.error
      : JSON.stringify(o);
    return {
      message,
      code: typeof o.code === "string" ? o.code : undefined,
      type: typeof o.type === "string" ? o.type : undefined,
    };
  }
  return { message: String(err) };
}

export interface UpstreamContext {
  backend: string;
  model?: string;
}

/**
 * Turns an HTTP status and error body (or an error inside a 200, status 200) into a
 * BridgeError. `retryAfterMs` is kept in the details for the retry policy.
 */
export function upstreamError(
  status: number,
  err: UpstreamErrorBody,
  ctx: UpstreamContext,
  retryAfterMs?: number,
): BridgeError {
  const text = err.message;
  const lower = text.toLowerCase();
  const code = (err.code ?? "").toLowerCase();
  const type = (err.type ?? "").toLowerCase();
  const base = { backend: ctx.backend, model: ctx.model, status };
  const make = (c: ErrorCode, hint?: string) =>
    new BridgeError(c, `the model server answered ${status}: ${text}`, {
      ...base,
      hint,
      details: retryAfterMs === undefined ? { status } : { status, retryAfterMs },
    });

  if (
    status === 401 || status === 403 || code === "invalid_api_key" ||
    lower.includes("api key") || lower.includes("unauthorized")
  ) {
    return make(
      "auth_failed",
      "set LMSTUDIO_API_KEY (or LMBRIDGE_API_KEY) to a valid token, e.g. from LM Studio's server settings",
    );
  }
  if (
    type === "exceed_context_size_error" || lower.includes("n_keep") ||
    lower.includes("context length") || lower.includes("context size") ||
    lower.includes("context window") || lower.includes("maximum context")
  ) {
    return make(
      "context_overflow",
      "shorten the prompt, lower max_tokens, or load the model with a larger context_length",
    );
  }
  if (
    code === "model_not_loaded" || lower.includes("no models loaded") ||
    /model\b.*\bis not loaded/.test(lower)
  ) {
    return make(
      "model_not_loaded",
      "load a model with the load_model tool or `lms load <model>`, or enable JIT loading",
    );
  }
  if (
    code === "model_not_found" || lower.includes("invalid model identifier") ||
    /model ['"]?[^'"]*['"]? not found/.test(lower) || lower.includes("model not found")
  ) {
    return make("model_not_found", "call list_models to see the ids this backend serves");
  }
  if (lower.includes("does not support images")) {
    return make("unsupported", "use a vision model (type vlm in list_models) for images");
  }
  if (lower.includes("unexpected endpoint")) {
    return make("unsupported", "this server does not offer that endpoint; update LM Studio");
  }
  if (status === 501 || type === "not_supported_error") {
    return make("unsupported", "this server does not offer that feature (see its documentation)");
  }
  if (status === 429) {
    return make("rate_limited", "the model server is busy; try again shortly");
  }
  if (status >= 500 || status === 200) {
    return make(
      "upstream_error",
      status === 503
        ? "the model server is busy or still loading; try again shortly"
        : "check the model server's log",
    );
  }
  if (status === 404) {
    return make("unsupported", "this server does not offer that endpoint");
  }
  return make("invalid_request", "the model server rejected the request as sent");
}

/** A fetch that failed before any response: connection refused, reset, DNS. */
export function unreachableError(cause: unknown, ctx: UpstreamContext): BridgeError {
  const detail = cause instanceof Error ? cause.message : String(cause);
  return new BridgeError("backend_unreachable", `cannot reach ${ctx.backend}: ${detail}`, {
    backend: ctx.backend,
    model: ctx.model,
    cause,
    hint:
      "start the server with `lms server start` (or LM Studio's Developer tab), check LMSTUDIO_HOST / LMSTUDIO_PORT or --backend",
    details: { phase: "connect" },
  });
}
