import assert from "node:assert/strict";
import {
  readErrorField,
  unreachableError,
  upstreamError,
  type UpstreamErrorBody,
} from "../src/backend/upstream_errors.ts";
import type { BridgeError, ErrorCode } from "../src/util/errors.ts";

const BACKEND = "http://gpu:1234";
const ctx = { backend: BACKEND, model: "qwen/qwen3-4b" };

/** Maps a raw response body the way the client does: read `error`, then map it. */
function mapBody(status: number, body: unknown, retryAfterMs?: number): BridgeError {
  const err = readErrorField(body);
  assert.ok(err, `body ${JSON.stringify(body)} carries an error`);
  return upstreamError(status, err, ctx, retryAfterMs);
}

/** Every mapped error has the expected code, a hint, the backend and the server's text. */
function assertMapped(err: BridgeError, code: ErrorCode, text?: string) {
  assert.equal(err.code, code, `${err.message} → ${code}`);
  assert.ok(err.hint && err.hint.length > 0, "has a hint");
  assert.equal(err.context.backend, BACKEND);
  assert.equal(err.context.model, "qwen/qwen3-4b");
  if (text) assert.ok(err.message.includes(text), `"${err.message}" includes "${text}"`);
  const formatted = err.format();
  assert.ok(formatted.startsWith(`Error [${code}]: `), formatted);
  assert.ok(formatted.includes(BACKEND), "the formatted text names the backend");
}

// --- readErrorField: both body shapes ---

Deno.test("readErrorField reads a string error", () => {
  assert.deepEqual(readErrorField({ error: "No models loaded." }), {
    message: "No models loaded.",
  });
});

Deno.test("readErrorField reads an object error with message, code and type", () => {
  assert.deepEqual(
    readErrorField({
      error: { message: "bad key", type: "invalid_request", code: "invalid_api_key", param: null },
    }),
    { message: "bad key", code: "invalid_api_key", type: "invalid_request" },
  );
});

Deno.test("readErrorField ignores a numeric code and reads a nested error string", () => {
  assert.deepEqual(
    readErrorField({ error: { code: 503, message: "Loading model", type: "unavailable_error" } }),
    { message: "Loading model", code: undefined, type: "unavailable_error" },
  );
  assert.equal(readErrorField({ error: { error: "inner" } })?.message, "inner");
  assert.ok(readErrorField({ error: { detail: "x" } })?.message.includes("detail"));
});

Deno.test("readErrorField is undefined when there is no error", () => {
  assert.equal(readErrorField({ choices: [] }), undefined, "absent");
  assert.equal(readErrorField({ error: null }), undefined, "null");
  assert.equal(readErrorField({ error: undefined }), undefined);
  assert.equal(readErrorField(null), undefined);
  assert.equal(readErrorField("error"), undefined, "a string body");
  assert.equal(readErrorField(undefined), undefined);
  assert.equal(readErrorField([1, 2]), undefined);
});

// --- auth ---

Deno.test("401 invalid_api_key is auth_failed with a hint about the token", () => {
  const err = mapBody(401, {
    error: { type: "invalid_request", code: "invalid_api_key", message: "Invalid API key." },
  });
  assertMapped(err, "auth_failed", "Invalid API key.");
  assert.match(err.hint!, /LMSTUDIO_API_KEY/);
  assert.equal(err.context.status, 401);
});

Deno.test("401 from llama-server (numeric code) and a 403 are auth_failed", () => {
  assertMapped(
    mapBody(401, {
      error: { code: 401, message: "Invalid API Key", type: "authentication_error" },
    }),
    "auth_failed",
  );
  assertMapped(mapBody(403, { error: "Forbidden" }), "auth_failed");
});

// --- unknown model ---

Deno.test("400 with code model_not_found is model_not_found", () => {
  const err = mapBody(400, {
    error: {
      message:
        'Invalid model identifier "qwen9". Please specify a valid downloaded model (e.g., qwen/qwen3-4b, google/gemma-3-4b).',
      type: "invalid_request_error",
      param: "model",
      code: "model_not_found",
    },
  });
  assertMapped(err, "model_not_found", "Invalid model identifier");
  assert.match(err.hint!, /list_models/);
});

Deno.test("404 with the text Invalid model identifier (string shape) is model_not_found", () => {
  assertMapped(
    mapBody(404, {
      error: 'Invalid model identifier "x". Please specify a valid downloaded model (e.g., a, b).',
    }),
    "model_not_found",
  );
});

Deno.test("404 from an OpenAI-style server with code model_not_found is model_not_found", () => {
  assertMapped(
    mapBody(404, {
      error: {
        message: "The model `gpt-9` does not exist or you do not have access to it.",
        type: "invalid_request_error",
        param: "model",
        code: "model_not_found",
      },
    }),
    "model_not_found",
  );
});

Deno.test("Ollama's 404 model 'x' not found is model_not_found", () => {
  assertMapped(
    mapBody(404, { error: { message: "model 'llama9' not found", type: "api_error" } }),
    "model_not_found",
    "llama9",
  );
  assertMapped(
    mapBody(404, { error: 'model "llama9" not found, try pulling it first' }),
    "model_not_found",
  );
});

// --- nothing loaded ---

Deno.test('"No models loaded" is model_not_loaded, as 404 (old) and 400 (later)', () => {
  const text =
    "No models loaded. Please load a model in the developer page or use the `lms load` command.";
  for (const status of [404, 400]) {
    const err = mapBody(status, { error: text });
    assertMapped(err, "model_not_loaded", "No models loaded");
    assert.match(err.hint!, /load/);
  }
});

Deno.test("a model that is not loaded (JIT off) is model_not_loaded", () => {
  assertMapped(
    mapBody(400, {
      error: {
        message:
          'Model "qwen/qwen3-4b" is not loaded. Please load it first (lms load qwen/qwen3-4b) or enable Just-In-Time model loading.',
        type: "invalid_request_error",
        param: "model",
        code: "model_not_loaded",
      },
    }),
    "model_not_loaded",
  );
});

// --- context overflow ---

Deno.test("LM Studio's n_keep text is context_overflow", () => {
  const err = mapBody(400, {
    error:
      "The number of tokens to keep from the initial prompt is greater than the context length (n_keep: 5228 >= n_ctx: 4096). Try to load the model with a larger context length, or provide a shorter input",
  });
  assertMapped(err, "context_overflow", "n_keep: 5228");
  assert.match(err.hint!, /context_length|shorten/);
});

Deno.test("llama-server's exceed_context_size_error is context_overflow", () => {
  assertMapped(
    mapBody(400, {
      error: {
        code: 400,
        message: "the request exceeds the available context size, try increasing it",
        type: "exceed_context_size_error",
        n_prompt_tokens: 5000,
        n_ctx: 4096,
      },
    }),
    "context_overflow",
  );
});

Deno.test("Ollama's and OpenAI's context messages are context_overflow", () => {
  assertMapped(
    mapBody(400, {
      error: {
        message: "input length (5228) exceeds the context length (4096)",
        type: "api_error",
      },
    }),
    "context_overflow",
  );
  assertMapped(
    mapBody(400, {
      error: {
        message: "This model's maximum context length is 4096 tokens. However, you asked for more.",
        type: "invalid_request_error",
        code: "context_length_exceeded",
      },
    }),
    "context_overflow",
  );
});

Deno.test("a context overflow inside a 200 stream is still context_overflow", () => {
  assertMapped(
    mapBody(200, {
      error: {
        message:
          "The number of tokens to keep from the initial prompt is greater than the context length (n_keep: 9000 >= n_ctx: 8192).",
      },
    }),
    "context_overflow",
  );
});

// --- busy, rate limited, server failures ---

Deno.test("429 is rate_limited and keeps retryAfterMs in the details", () => {
  const err = mapBody(
    429,
    { error: { message: "Too Many Requests", type: "rate_limit_error" } },
    2000,
  );
  assertMapped(err, "rate_limited");
  assert.equal(err.context.details?.retryAfterMs, 2000);
  assert.equal(err.context.details?.status, 429);
});

Deno.test("without Retry-After the details hold only the status", () => {
  const err = mapBody(429, { error: "slow down" });
  assert.deepEqual(err.context.details, { status: 429 });
});

Deno.test("500, 502, 503 and 504 are upstream_error", () => {
  for (const status of [500, 502, 503, 504]) {
    const err = mapBody(status, { error: { message: `HTTP ${status}`, type: "server_error" } }, 10);
    assertMapped(err, "upstream_error", `HTTP ${status}`);
    assert.equal(err.context.status, status);
    assert.equal(err.context.details?.retryAfterMs, 10);
  }
});

Deno.test("llama-server's 503 while loading is upstream_error that says try again", () => {
  const err = mapBody(503, {
    error: { code: 503, message: "Loading model", type: "unavailable_error" },
  });
  assertMapped(err, "upstream_error", "Loading model");
  assert.match(err.hint!, /try again/);
});

Deno.test("an error inside a 200 is upstream_error", () => {
  const err = mapBody(200, { error: { message: "llama_decode failed" } });
  assertMapped(err, "upstream_error", "llama_decode failed");
  assert.equal(err.context.status, 200);
  assertMapped(mapBody(200, { error: "something broke" }), "upstream_error");
});

Deno.test("an error inside a 200 with a known text gets that text's code", () => {
  assertMapped(
    mapBody(200, { error: "No models loaded. Please load a model." }),
    "model_not_loaded",
  );
  assertMapped(
    mapBody(200, { error: { message: "x", code: "model_not_found" } }),
    "model_not_found",
  );
});

// --- unsupported ---

Deno.test('LM Studio\'s "Unexpected endpoint" (even with 200) is unsupported', () => {
  for (const status of [200, 404]) {
    assertMapped(
      mapBody(status, { error: "Unexpected endpoint or method. (GET /api/v1/models)" }),
      "unsupported",
      "Unexpected endpoint",
    );
  }
});

Deno.test("a plain 404 (no such path) is unsupported", () => {
  assertMapped(
    mapBody(404, { error: { message: "File Not Found", type: "not_found_error" } }),
    "unsupported",
  );
});

Deno.test("501 or not_supported_error is unsupported", () => {
  assertMapped(
    mapBody(501, {
      error: {
        code: 501,
        message: "This server does not support embeddings. Start it with `--embeddings`",
        type: "not_supported_error",
      },
    }),
    "unsupported",
  );
});

// --- images ---

Deno.test("a model without vision is unsupported with a hint to use a vlm", () => {
  const err = mapBody(400, {
    error: "Model does not support images. Please use a model that does.",
  });
  assertMapped(err, "unsupported");
  assert.match(err.hint!, /vision|vlm/);
});

Deno.test("an image that is not a base64 data URL is invalid_request", () => {
  assertMapped(
    mapBody(400, { error: "'url' field must be a base64 encoded image." }),
    "invalid_request",
    "base64",
  );
});

// --- anything else ---

Deno.test("any other 4xx is invalid_request", () => {
  assertMapped(
    mapBody(400, { error: "'response_format.type' must be 'json_schema' or 'text'" }),
    "invalid_request",
  );
  assertMapped(mapBody(422, { error: { message: "bad field" } }), "invalid_request");
});

Deno.test("an error without a model in context still names the backend", () => {
  const body: UpstreamErrorBody = { message: "No models loaded." };
  const err = upstreamError(400, body, { backend: BACKEND });
  assert.equal(err.code, "model_not_loaded");
  assert.equal(err.context.backend, BACKEND);
  assert.equal(err.context.model, undefined);
  assert.ok(err.hint);
});

Deno.test("a failed connection is backend_unreachable with a hint to start the server", () => {
  const cause = new TypeError("error sending request: Connection refused (os error 111)");
  const err = unreachableError(cause, ctx);
  assert.equal(err.code, "backend_unreachable");
  assert.equal(err.context.backend, BACKEND);
  assert.equal(err.cause, cause);
  assert.ok(err.message.includes("Connection refused"));
  assert.match(err.hint!, /lms server start/);
  assert.deepEqual(err.context.details, { phase: "connect" });
});
