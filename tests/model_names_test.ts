import assert from "node:assert/strict";
import {
  baseModelId,
  closestIds,
  editDistance,
  matchModelId,
  sameModel,
} from "../src/backend/model_names.ts";
import { BridgeError } from "../src/util/errors.ts";

const IDS = [
  "qwen/qwen3-4b",
  "qwen/qwen3-14b",
  "google/gemma-3-4b",
  "openai/gpt-oss-20b",
  "text-embedding-nomic-embed-text-v1.5",
];

/** Runs matchModelId expecting model_not_found; returns the error. */
function notFound(query: string, ids: readonly string[] = IDS): BridgeError {
  try {
    matchModelId(query, ids);
  } catch (err) {
    assert.ok(err instanceof BridgeError, String(err));
    assert.equal(err.code, "model_not_found");
    assert.ok(err.hint, "has a hint");
    return err;
  }
  assert.fail(`"${query}" should not match`);
}

Deno.test("the exact id matches", () => {
  assert.equal(matchModelId("qwen/qwen3-4b", IDS), "qwen/qwen3-4b");
  assert.equal(matchModelId("  qwen/qwen3-14b ", IDS), "qwen/qwen3-14b", "spaces trimmed");
});

Deno.test("the id matches ignoring case", () => {
  assert.equal(matchModelId("Qwen/Qwen3-4B", IDS), "qwen/qwen3-4b");
  assert.equal(matchModelId("GOOGLE/GEMMA-3-4B", IDS), "google/gemma-3-4b");
});

Deno.test("the part after publisher/ matches (qwen3-4b → qwen/qwen3-4b)", () => {
  assert.equal(matchModelId("qwen3-4b", IDS), "qwen/qwen3-4b");
  assert.equal(matchModelId("gpt-oss-20b", IDS), "openai/gpt-oss-20b");
  assert.equal(matchModelId("Gemma-3-4B", IDS), "google/gemma-3-4b");
});

Deno.test("an exact short name wins over a longer id it is a prefix of", () => {
  // "qwen3-4b" is not taken as a prefix of anything else once it matched exactly.
  assert.equal(matchModelId("qwen3-4b", [...IDS, "qwen/qwen3-4b-thinking"]), "qwen/qwen3-4b");
});

Deno.test("a unique prefix matches", () => {
  assert.equal(matchModelId("gemma", IDS), "google/gemma-3-4b");
  assert.equal(matchModelId("gpt-oss", IDS), "openai/gpt-oss-20b");
  assert.equal(matchModelId("openai/gpt", IDS), "openai/gpt-oss-20b");
  assert.equal(matchModelId("qwen3-1", IDS), "qwen/qwen3-14b");
  assert.equal(matchModelId("text-embedding", IDS), "text-embedding-nomic-embed-text-v1.5");
});

Deno.test("a unique suffix matches", () => {
  assert.equal(matchModelId("14b", IDS), "qwen/qwen3-14b");
  assert.equal(matchModelId("oss-20b", IDS), "openai/gpt-oss-20b");
});

Deno.test("LM Studio's @quantization suffix is ignored when matching", () => {
  const ids = ["qwen/qwen3-4b@q4_k_m", "google/gemma-3-4b"];
  assert.equal(matchModelId("qwen/qwen3-4b", ids), "qwen/qwen3-4b@q4_k_m");
  assert.equal(matchModelId("qwen3-4b", ids), "qwen/qwen3-4b@q4_k_m");
  assert.equal(matchModelId("qwen/qwen3-4b@q8_0", ["qwen/qwen3-4b"]), "qwen/qwen3-4b");
});

Deno.test("LM Studio's :N instance suffix is ignored when matching", () => {
  const ids = ["qwen/qwen3-4b", "qwen/qwen3-4b:2", "google/gemma-3-4b"];
  assert.equal(matchModelId("qwen/qwen3-4b:2", ids), "qwen/qwen3-4b:2", "exact id first");
  assert.equal(matchModelId("qwen3-4b", ids), "qwen/qwen3-4b", "copies of one model are one");
  assert.equal(matchModelId("qwen", ids), "qwen/qwen3-4b");
  assert.equal(matchModelId("gemma-3-4b:3", ids), "google/gemma-3-4b");
});

Deno.test("several copies or quantizations of one model resolve to the shortest id", () => {
  const ids = ["qwen/qwen3-4b@q8_0", "qwen/qwen3-4b@q4_k_m:2", "qwen/qwen3-4b@q4_k_m"];
  assert.equal(matchModelId("qwen3-4b", ids), "qwen/qwen3-4b@q8_0");
});

Deno.test("an ambiguous name is model_not_found listing the candidates", () => {
  const err = notFound("qwen3");
  assert.match(err.message, /several models/);
  assert.match(err.message, /qwen\/qwen3-4b/);
  assert.match(err.message, /qwen\/qwen3-14b/);
  assert.deepEqual(
    [...(err.context.details?.candidates as string[])].sort(),
    ["qwen/qwen3-14b", "qwen/qwen3-4b"],
  );
  assert.match(err.hint!, /qwen\/qwen3-(14|4)b/);
  assert.match(err.format(), /^Error \[model_not_found\]: /);
});

Deno.test("the same short name under two publishers is ambiguous", () => {
  const ids = ["qwen/qwen3-4b", "lmstudio-community/qwen3-4b"];
  const err = notFound("qwen3-4b", ids);
  assert.deepEqual([...(err.context.details?.candidates as string[])].sort(), [...ids].sort());
});

Deno.test("a suffix shared by several models is ambiguous", () => {
  const err = notFound("3-4b");
  assert.deepEqual(
    [...(err.context.details?.candidates as string[])].sort(),
    ["google/gemma-3-4b", "qwen/qwen3-4b"],
  );
});

Deno.test("unknown model suggests the closest ids (did you mean …)", () => {
  const err = notFound("qwen-3-4b");
  assert.match(err.message, /no model named "qwen-3-4b"/);
  assert.match(err.hint!, /^did you mean qwen\/qwen3-4b/);
  const suggestions = err.context.details?.suggestions as string[];
  assert.equal(suggestions[0], "qwen/qwen3-4b");
  assert.ok(suggestions.length <= 3);
});

Deno.test("a misspelt model suggests it", () => {
  const err = notFound("gemma-3-4c");
  assert.equal((err.context.details?.suggestions as string[])[0], "google/gemma-3-4b");
  assert.match(err.hint!, /did you mean google\/gemma-3-4b/);
});

Deno.test("a name far from every id suggests nothing close but still hints", () => {
  const err = notFound("mistral-large-instruct-2411-with-a-very-long-name");
  assert.deepEqual(err.context.details?.suggestions, []);
  assert.ok(err.hint);
});

Deno.test("no models at all: model_not_found says none are available", () => {
  const err = notFound("qwen3-4b", []);
  assert.match(err.hint!, /no models are available/);
});

Deno.test("closestIds orders by distance and returns at most count ids", () => {
  assert.deepEqual(closestIds("qwen3-4b", IDS, 2), ["qwen/qwen3-4b", "qwen/qwen3-14b"]);
  assert.deepEqual(closestIds("qwen3-4b", ["qwen/qwen3-4b", "qwen/qwen3-4b"]), ["qwen/qwen3-4b"]);
});

Deno.test("editDistance is the Levenshtein distance", () => {
  assert.equal(editDistance("kitten", "sitting"), 3);
  assert.equal(editDistance("", "abc"), 3);
  assert.equal(editDistance("abc", ""), 3);
  assert.equal(editDistance("same", "same"), 0);
});

Deno.test("baseModelId strips the @quantization and :N suffixes and lower-cases", () => {
  assert.equal(baseModelId("Qwen/Qwen3-4B@Q4_K_M:2"), "qwen/qwen3-4b");
  assert.equal(baseModelId("qwen/qwen3-4b:2"), "qwen/qwen3-4b");
  assert.equal(baseModelId("llama3.2:latest"), "llama3.2:latest", "Ollama tags are kept");
});

Deno.test("sameModel: the answer's model names the model asked for", () => {
  assert.ok(sameModel("qwen/qwen3-4b", "qwen/qwen3-4b"));
  assert.ok(sameModel("qwen/qwen3-4b", "Qwen/Qwen3-4B"));
  assert.ok(sameModel("qwen/qwen3-4b", "qwen3-4b"), "without the publisher");
  assert.ok(sameModel("qwen/qwen3-4b@q4_k_m", "qwen/qwen3-4b"), "quantization ignored");
  assert.ok(sameModel("qwen/qwen3-4b:2", "qwen/qwen3-4b"), "instance ignored");
  assert.ok(!sameModel("qwen/qwen3-4b", "qwen/qwen3-14b"));
  assert.ok(!sameModel("qwen/qwen3-4b", "google/gemma-3-4b"));
});
