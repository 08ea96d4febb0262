import assert from "node:assert/strict";
import { ModelCatalog } from "../src/backend/catalog.ts";
import type { BackendClient } from "../src/backend/client.ts";
import type { ModelInfo } from "../src/backend/types.ts";
import { BridgeError } from "../src/util/errors.ts";
import { rejection } from "./support/helpers.ts";

function model(id: string, backend: string, loaded = true): ModelInfo {
  return {
    id,
    type: "llm",
    loaded,
    backend,
    capabilities: { toolUse: true, vision: false, reasoning: false },
    instanceIds: [],
  };
}

/** A backend whose listing answers from `script` in turn. */
function fakeBackend(url: string, script: (() => Promise<ModelInfo[]>)[]) {
  let calls = 0;
  const client = {
    url,
    listModels: () => script[Math.min(calls++, script.length - 1)](),
  } as unknown as BackendClient;
  return { client, calls: () => calls };
}

Deno.test("concurrent lookups share one listing per backend", async () => {
  const a = fakeBackend("http://a", [() => Promise.resolve([model("org/x", "http://a")])]);
  const catalog = new ModelCatalog({ clients: [a.client], ttlMs: 60_000 });
  await Promise.all(Array.from({ length: 10 }, () => catalog.resolve("x")));
  assert.equal(a.calls(), 1);
});

Deno.test("a model served by two backends resolves to both entries", async () => {
  const a = fakeBackend("http://a", [() => Promise.resolve([model("org/x", "http://a")])]);
  const b = fakeBackend("http://b", [() => Promise.resolve([model("org/x", "http://b")])]);
  const catalog = new ModelCatalog({ clients: [a.client, b.client], ttlMs: 60_000 });
  const resolved = await catalog.resolve("org/x");
  assert.deepEqual(resolved.entries.map((e) => e.backend), ["http://a", "http://b"]);
});

Deno.test("a listing that fails to refresh is served stale; a dead backend's is not", async () => {
  const hung = () =>
    Promise.reject(new BridgeError("timeout", "/api/v1/models did not answer", {}));
  const down = () =>
    Promise.reject(new BridgeError("backend_unreachable", "cannot reach", { backend: "http://b" }));
  const a = fakeBackend("http://a", [() => Promise.resolve([model("org/x", "http://a")]), hung]);
  const b = fakeBackend("http://b", [() => Promise.resolve([model("org/y", "http://b")]), down]);
  const catalog = new ModelCatalog({ clients: [a.client, b.client], ttlMs: 0 });
  await catalog.models();
  // The next lookup serves the last listings at once and refreshes them behind.
  const first = await catalog.listings();
  assert.ok(first.every((l) => l.stale));
  const listings = await catalog.listings();
  const la = listings.find((l) => l.url === "http://a")!;
  assert.equal(la.stale, true);
  assert.deepEqual(la.models.map((m) => m.id), ["org/x"]);
  const lb = listings.find((l) => l.url === "http://b")!;
  assert.equal(lb.error?.code, "backend_unreachable");
  assert.deepEqual(lb.models, []);
  assert.equal((await catalog.resolve("x")).id, "org/x");
  const err = await rejection(catalog.resolve("org/y"));
  assert.equal(err.code, "model_not_found");
});

Deno.test("without a default, the first loaded LLM is used; none loaded is model_not_loaded", async () => {
  const a = fakeBackend("http://a", [
    () => Promise.resolve([model("org/cold", "http://a", false), model("org/warm", "http://a")]),
  ]);
  const catalog = new ModelCatalog({ clients: [a.client], ttlMs: 60_000 });
  assert.equal((await catalog.resolve(undefined)).id, "org/warm");
  catalog.setDefaultModel("org/cold");
  assert.equal((await catalog.resolve(undefined)).id, "org/cold");
  const none = fakeBackend("http://n", [
    () => Promise.resolve([model("org/cold", "http://n", false)]),
  ]);
  const empty = new ModelCatalog({ clients: [none.client], ttlMs: 60_000 });
  assert.equal((await rejection(empty.resolve(undefined))).code, "model_not_loaded");
});
