/** The backend client against scripted fetch answers: stream completeness, kind detection. */
import assert from "node:assert/strict";
import { BackendClient } from "../src/backend/client.ts";
import { rejection } from "./support/helpers.ts";

const encoder = new TextEncoder();

function sse(chunks: unknown[], done: boolean): Response {
  const lines = chunks.map((c) => `data: ${JSON.stringify(c)}\n\n`).join("") +
    (done ? "data: [DONE]\n\n" : "");
  return new Response(encoder.encode(lines), {
    headers: { "content-type": "text/event-stream" },
  });
}

const delta = (content: string, finish: string | null = null) => ({
  object: "chat.completion.chunk",
  model: "org/m",
  choices: [{ index: 0, delta: { content }, finish_reason: finish }],
});

/** A fetch answering by path; every other path is 404. */
function fakeFetch(routes: Record<string, () => Response | Promise<Response>>): typeof fetch {
  return ((input: string | URL | Request) => {
    const path = new URL(String(input)).pathname;
    const route = routes[path];
    return Promise.resolve(route ? route() : new Response("not found", { status: 404 }));
  }) as typeof fetch;
}

Deno.test("a stream that closes before saying it is done is upstream_error with the partial text", async () => {
  const client = new BackendClient({
    baseUrl: "http://fake",
    fetch: fakeFetch({ "/v1/chat/completions": () => sse([delta("Once "), delta("upon")], false) }),
  });
  const err = await rejection(client.chat({ model: "org/m", messages: [] }));
  assert.equal(err.code, "upstream_error");
  assert.equal(err.context.partialText, "Once upon");
});

Deno.test("a stream with a finish reason or [DONE] is complete", async () => {
  for (
    const stream of [
      () => sse([delta("Hi"), delta("", "stop")], false),
      () => sse([delta("Hi")], true),
    ]
  ) {
    const client = new BackendClient({
      baseUrl: "http://fake",
      fetch: fakeFetch({ "/v1/chat/completions": stream }),
    });
    const result = await client.chat({ model: "org/m", messages: [] });
    assert.equal(result.text, "Hi");
    assert.equal(result.finishReason, "stop");
  }
});

Deno.test("a greeting that times out is not taken as 'not LM Studio'", async () => {
  let calls = 0;
  const client = new BackendClient({
    baseUrl: "http://fake",
    fetch: ((input: string | URL | Request, init?: RequestInit) => {
      const path = new URL(String(input)).pathname;
      if (path === "/lmstudio-greeting") {
        // Never answers; rejects when the client gives up.
        return new Promise<Response>((_, reject) => {
          calls++;
          init?.signal?.addEventListener("abort", () => reject(init.signal!.reason));
        });
      }
      return Promise.resolve(new Response("{}", { status: 404 }));
    }) as typeof fetch,
  });
  const err = await rejection(client.detectKind(AbortSignal.timeout(30_000)));
  assert.equal(err.code, "timeout");
  assert.equal(client.knownKind, undefined, "no kind guessed from a timeout");
  assert.equal(calls, 1);
});

Deno.test("kind detection: greeting, Ollama's version, llama-server's props, else generic", async () => {
  const cases: [Record<string, () => Response>, string][] = [
    [{ "/lmstudio-greeting": () => Response.json({ lmstudio: true }) }, "lmstudio"],
    [{ "/api/version": () => Response.json({ version: "0.12.0" }) }, "ollama"],
    [{ "/props": () => Response.json({ n_ctx: 4096 }) }, "llamacpp"],
    [{}, "openai"],
  ];
  for (const [routes, kind] of cases) {
    const client = new BackendClient({ baseUrl: "http://fake", fetch: fakeFetch(routes) });
    assert.equal(await client.detectKind(), kind);
  }
});
