/**
 * The HTTP transport (SPEC §8): `lmbridge serve --http` as a real process, driven by the MCP
 * SDK's Streamable HTTP client and by plain HTTP requests: concurrent sessions, DNS-rebinding
 * guard, bearer token, /metrics, /healthz, client disconnects, session end, shutdown.
 */
import assert from "node:assert/strict";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import type { CallToolResult } from "@modelcontextprotocol/sdk/types.js";
import { startDouble } from "./support/lmstudio_double.ts";
import { bridgeEnv, lmbridgeCommand, ROOT, textOf } from "./support/bridge.ts";
import { loadConfig } from "../src/config.ts";
import { createRuntime } from "../src/runtime.ts";
import { startHttpServer } from "../src/server/http.ts";
import { silentLogger } from "../src/util/log.ts";
import { INITIALIZE } from "./support/helpers.ts";

interface HttpBridge {
  /** `http://127.0.0.1:PORT` (no path). */
  base: string;
  port: number;
  /** Everything written to stderr so far. */
  stderr(): string;
  /** SIGTERM, then the exit code. */
  stop(): Promise<number>;
}

/** Starts `lmbridge serve --http` and waits for its "listening on" line. */
async function startHttpBridge(
  env: Record<string, string>,
  listen = "127.0.0.1:0",
): Promise<HttpBridge> {
  const child = lmbridgeCommand(["serve", "--http", listen], env).spawn();
  let stderr = "";
  const listening = Promise.withResolvers<number>();
  const drained = (async () => {
    for await (const chunk of child.stderr.pipeThrough(new TextDecoderStream())) {
      stderr += chunk;
      const m = /lmbridge listening on http:\/\/[^\s]+:(\d+)\/mcp/.exec(stderr);
      if (m) listening.resolve(Number(m[1]));
    }
    listening.reject(new Error(`lmbridge exited before listening:\n${stderr}`));
  })();
  const stdout = new Response(child.stdout).text();
  const port = await listening.promise;
  return {
    base: `http://127.0.0.1:${port}`,
    port,
    stderr: () => stderr,
    stop: async () => {
      try {
        child.kill("SIGTERM");
      } catch {
        // already gone
      }
      const status = await child.status;
      await drained;
      assert.equal(await stdout, "", "stdout stays clean");
      return status.code;
    },
  };
}

/** An MCP client over Streamable HTTP. */
async function connect(
  url: string,
  headers: Record<string, string> = {},
): Promise<{ client: Client; close(): Promise<void> }> {
  const transport = new StreamableHTTPClientTransport(new URL(url), {
    requestInit: { headers },
  });
  const client = new Client({ name: "lmbridge-http-test", version: "1.0.0" });
  await client.connect(transport);
  return {
    client,
    close: async () => {
      await transport.terminateSession().catch(() => {});
      await client.close();
    },
  };
}

/** Status of a raw HTTP/1.1 request with a chosen Host header (fetch cannot set it). */
async function statusWithHost(port: number, path: string, host: string): Promise<number> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  await conn.write(
    new TextEncoder().encode(`GET ${path} HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`),
  );
  const text = await new Response(conn.readable).text();
  return Number(text.split(" ")[1]);
}

const INIT = INITIALIZE;
const MCP_HEADERS = {
  "content-type": "application/json",
  accept: "application/json, text/event-stream",
};

Deno.test("two MCP clients over HTTP call chat_completion at once and each gets its own answer", async () => {
  const double = await startDouble({ chunkDelayMs: 100 });
  const bridge = await startHttpBridge(bridgeEnv(double.url));
  const a = await connect(`${bridge.base}/mcp`);
  const b = await connect(`${bridge.base}/mcp`);
  try {
    const [ra, rb] = await Promise.all([
      a.client.callTool({ name: "chat_completion", arguments: { prompt: "alpha alpha alpha" } }),
      b.client.callTool({ name: "chat_completion", arguments: { prompt: "bravo bravo bravo" } }),
    ]) as CallToolResult[];
    assert.equal(textOf(ra), "[qwen/qwen3-4b] You said: alpha alpha alpha");
    assert.equal(textOf(rb), "[qwen/qwen3-4b] You said: bravo bravo bravo");
    assert.equal(double.stats.maxInFlight, 2, "the two generations ran at the same time");
    const { tools } = await a.client.listTools();
    assert.ok(tools.some((t: { name: string }) => t.name === "chat_completion"));
  } finally {
    await a.close();
    await b.close();
    assert.equal(await bridge.stop(), 0);
    await double.close();
  }
});

Deno.test("a foreign Origin or Host is refused with 403 (DNS rebinding)", async () => {
  const double = await startDouble();
  const bridge = await startHttpBridge(bridgeEnv(double.url));
  try {
    const foreign = await fetch(`${bridge.base}/mcp`, {
      method: "POST",
      headers: { ...MCP_HEADERS, origin: "http://evil.example" },
      body: JSON.stringify(INIT),
    });
    assert.equal(foreign.status, 403);
    await foreign.body?.cancel();
    const local = await fetch(`${bridge.base}/healthz`, {
      headers: { origin: `http://localhost:${bridge.port}` },
    });
    assert.equal(local.status, 200);
    await local.body?.cancel();
    assert.equal(await statusWithHost(bridge.port, "/mcp", "evil.example"), 403);
    assert.equal(await statusWithHost(bridge.port, "/healthz", `evil.example:${bridge.port}`), 403);
    assert.equal(await statusWithHost(bridge.port, "/healthz", `localhost:${bridge.port}`), 200);
    assert.equal(await statusWithHost(bridge.port, "/healthz", `[::1]:${bridge.port}`), 200);
  } finally {
    assert.equal(await bridge.stop(), 0);
    await double.close();
  }
});

Deno.test("a non-loopback bind without LMBRIDGE_HTTP_TOKEN refuses to start: exit 2 naming it", async () => {
  const out = await lmbridgeCommand(
    ["serve", "--http", "0.0.0.0:0"],
    bridgeEnv("http://127.0.0.1:9"),
  ).output();
  assert.equal(out.code, 2);
  assert.match(new TextDecoder().decode(out.stderr), /LMBRIDGE_HTTP_TOKEN/);
  assert.equal(out.stdout.length, 0);
});

Deno.test("with LMBRIDGE_HTTP_TOKEN every request needs the bearer token: 401 without or wrong", async () => {
  const double = await startDouble();
  const token = "s3cret-token-for-tests";
  const bridge = await startHttpBridge(
    bridgeEnv(double.url, { LMBRIDGE_HTTP_TOKEN: token }),
    "0.0.0.0:0",
  );
  try {
    const status = async (path: string, headers: Record<string, string>) => {
      const res = await fetch(`${bridge.base}${path}`, { headers });
      await res.body?.cancel();
      return res.status;
    };
    assert.equal(await status("/healthz", {}), 401);
    assert.equal(await status("/healthz", { authorization: "Bearer wrong" }), 401);
    assert.equal(await status("/healthz", { authorization: `Bearer ${token}x` }), 401);
    assert.equal(await status("/metrics", { authorization: `Basic ${btoa(token)}` }), 401);
    assert.equal(await status("/healthz", { authorization: `Bearer ${token}` }), 200);
    const noToken = await fetch(`${bridge.base}/mcp`, {
      method: "POST",
      headers: MCP_HEADERS,
      body: JSON.stringify(INIT),
    });
    assert.equal(noToken.status, 401);
    await noToken.body?.cancel();
    const mcp = await connect(`${bridge.base}/mcp`, { authorization: `Bearer ${token}` });
    try {
      const r = await mcp.client.callTool({
        name: "chat_completion",
        arguments: { prompt: "with token" },
      }) as CallToolResult;
      assert.equal(textOf(r), "[qwen/qwen3-4b] You said: with token");
    } finally {
      await mcp.close();
    }
  } finally {
    assert.equal(await bridge.stop(), 0);
    await double.close();
  }
});

Deno.test("/metrics serves Prometheus text with requests per tool, durations, slots and tokens", async () => {
  const double = await startDouble();
  const bridge = await startHttpBridge(bridgeEnv(double.url));
  const mcp = await connect(`${bridge.base}/mcp`);
  try {
    await mcp.client.callTool({ name: "chat_completion", arguments: { prompt: "count me" } });
    await mcp.client.callTool({ name: "chat_completion", arguments: { prompt: 42 } });
    const res = await fetch(`${bridge.base}/metrics`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get("content-type") ?? "", /^text\/plain; version=0\.0\.4/);
    const text = await res.text();
    const samples = new Map<string, number>();
    for (const line of text.split("\n")) {
      if (!line || line.startsWith("#")) continue;
      const m = /^([a-z_]+(?:\{[^}]*\})?) (\S+)$/.exec(line);
      assert.ok(m, `a valid sample line: ${line}`);
      samples.set(m[1], Number(m[2]));
    }
    assert.equal(samples.get('lmbridge_requests_total{tool="chat_completion",code="ok"}'), 1);
    assert.equal(
      samples.get('lmbridge_requests_total{tool="chat_completion",code="invalid_request"}'),
      1,
    );
    assert.equal(samples.get('lmbridge_request_duration_seconds_bucket{le="+Inf"}'), 2);
    assert.equal(samples.get("lmbridge_request_duration_seconds_count"), 2);
    assert.equal(samples.get("lmbridge_in_flight"), 0);
    assert.equal(samples.get("lmbridge_queued"), 0);
    assert.ok((samples.get('lmbridge_tokens_total{kind="completion"}') ?? 0) > 0);
    assert.ok(samples.has('lmbridge_tokens_total{kind="prompt"}'));
    assert.equal(samples.get("lmbridge_http_sessions"), 1);
    assert.match(text, /# TYPE lmbridge_request_duration_seconds histogram/);
  } finally {
    await mcp.close();
    assert.equal(await bridge.stop(), 0);
    await double.close();
  }
});

Deno.test("/healthz is 200 while a backend answers and 503 once none does", async () => {
  const double = await startDouble();
  const bridge = await startHttpBridge(bridgeEnv(double.url));
  try {
    const up = await fetch(`${bridge.base}/healthz`);
    assert.equal(up.status, 200);
    const body = await up.json();
    assert.equal(body.ok, true);
    assert.equal(body.backends[0].url, double.url);
    assert.equal(body.backends[0].kind, "lmstudio");
    await double.close();
    let status = 200;
    const until = Date.now() + 15_000;
    while (status !== 503 && Date.now() < until) {
      await new Promise((r) => setTimeout(r, 500));
      const res = await fetch(`${bridge.base}/healthz`);
      status = res.status;
      await res.body?.cancel();
    }
    assert.equal(status, 503);
  } finally {
    assert.equal(await bridge.stop(), 0);
    await double.close();
  }
});

Deno.test("a client that disconnects mid-call aborts the upstream generation", async () => {
  const double = await startDouble({ chunkDelayMs: 200 });
  double.enqueueReply({ content: "word ".repeat(200) });
  const bridge = await startHttpBridge(bridgeEnv(double.url));
  try {
    const init = await fetch(`${bridge.base}/mcp`, {
      method: "POST",
      headers: MCP_HEADERS,
      body: JSON.stringify(INIT),
    });
    assert.equal(init.status, 200);
    await init.text();
    const session = init.headers.get("mcp-session-id")!;
    const headers = {
      ...MCP_HEADERS,
      "mcp-session-id": session,
      "mcp-protocol-version": "2025-06-18",
    };
    const initialized = await fetch(`${bridge.base}/mcp`, {
      method: "POST",
      headers,
      body: JSON.stringify({ jsonrpc: "2.0", method: "notifications/initialized" }),
    });
    assert.equal(initialized.status, 202);
    await initialized.body?.cancel();

    const controller = new AbortController();
    const call = fetch(`${bridge.base}/mcp`, {
      method: "POST",
      headers,
      signal: controller.signal,
      body: JSON.stringify({
        jsonrpc: "2.0",
        id: 2,
        method: "tools/call",
        params: { name: "chat_completion", arguments: { prompt: "go on and on" } },
      }),
    });
    const [upstream] = await double.waitForRequests(1, { path: "/v1/chat/completions" });
    controller.abort();
    await call.then((r) => r.body?.cancel()).catch(() => {});
    await double.waitForAbort(upstream.id, 5_000);
    assert.equal(upstream.completed, false);

    // The session is still usable afterwards, and DELETE ends it.
    const ping = await fetch(`${bridge.base}/mcp`, {
      method: "POST",
      headers,
      body: JSON.stringify({ jsonrpc: "2.0", id: 3, method: "ping" }),
    });
    assert.equal(ping.status, 200);
    assert.match(await ping.text(), /"id":3/);
    const del = await fetch(`${bridge.base}/mcp`, { method: "DELETE", headers });
    assert.equal(del.status, 200);
    await del.body?.cancel();
    const after = await fetch(`${bridge.base}/mcp`, {
      method: "POST",
      headers,
      body: JSON.stringify({ jsonrpc: "2.0", id: 4, method: "ping" }),
    });
    assert.equal(after.status, 404);
    await after.body?.cancel();
  } finally {
    assert.equal(await bridge.stop(), 0);
    await double.close();
  }
});

Deno.test("requests without a session or to unknown paths are refused cleanly", async () => {
  const double = await startDouble();
  const bridge = await startHttpBridge(bridgeEnv(double.url));
  try {
    const cases: [string, RequestInit, number][] = [
      ["/mcp", {
        method: "POST",
        headers: MCP_HEADERS,
        body: '{"jsonrpc":"2.0","id":1,"method":"ping"}',
      }, 400],
      ["/mcp", { method: "POST", headers: MCP_HEADERS, body: "{not json" }, 400],
      ["/mcp", {
        method: "POST",
        headers: { ...MCP_HEADERS, "mcp-session-id": "nope" },
        body: "{}",
      }, 404],
      ["/mcp", {
        method: "POST",
        headers: { accept: MCP_HEADERS.accept, "content-type": "text/plain" },
        body: "x",
      }, 415],
      ["/mcp", { method: "PUT" }, 405],
      ["/metrics", { method: "POST" }, 405],
      ["/elsewhere", {}, 404],
    ];
    for (const [path, init, expected] of cases) {
      const res = await fetch(`${bridge.base}${path}`, init);
      await res.body?.cancel();
      assert.equal(res.status, expected, `${init.method ?? "GET"} ${path}`);
    }
    const health = await fetch(`${bridge.base}/healthz`);
    assert.equal(health.status, 200, "still serving");
    await health.body?.cancel();
  } finally {
    assert.equal(await bridge.stop(), 0);
    await double.close();
  }
});

/** Opens a session with plain HTTP; returns the headers that address it. */
async function openRawSession(url: string): Promise<Record<string, string>> {
  const init = await fetch(url, {
    method: "POST",
    headers: MCP_HEADERS,
    body: JSON.stringify(INIT),
  });
  assert.equal(init.status, 200);
  await init.text();
  return {
    ...MCP_HEADERS,
    "mcp-session-id": init.headers.get("mcp-session-id")!,
    "mcp-protocol-version": "2025-06-18",
  };
}

async function ping(url: string, headers: Record<string, string>): Promise<number> {
  const res = await fetch(url, {
    method: "POST",
    headers,
    body: JSON.stringify({ jsonrpc: "2.0", id: 7, method: "ping" }),
  });
  await res.body?.cancel();
  return res.status;
}

async function waitFor(test: () => boolean, ms = 10_000): Promise<boolean> {
  const until = Date.now() + ms;
  while (!test() && Date.now() < until) await new Promise((r) => setTimeout(r, 100));
  return test();
}

Deno.test("at the session cap the longest-idle session makes room; sessions left without a connection are closed", async () => {
  const double = await startDouble();
  const env = bridgeEnv(double.url);
  const runtime = createRuntime(loadConfig({ env, cwd: ROOT, home: env.HOME }), silentLogger);
  const http = await startHttpServer(runtime, { port: 0, maxSessions: 2, sessionIdleMs: 1500 });
  const listen = new AbortController();
  try {
    const first = await openRawSession(http.url);
    await new Promise((r) => setTimeout(r, 20));
    const second = await openRawSession(http.url);
    await new Promise((r) => setTimeout(r, 20));
    const third = await openRawSession(http.url);
    assert.equal(http.sessionCount(), 2);
    assert.equal(await ping(http.url, first), 404, "the longest-idle session was closed");
    assert.equal(await ping(http.url, second), 200);
    // A session holding its GET stream open is alive; one without any connection is not.
    const stream = await fetch(http.url, {
      headers: { ...third, accept: "text/event-stream" },
      signal: listen.signal,
    });
    assert.equal(stream.status, 200);
    assert.ok(await waitFor(() => http.sessionCount() === 1), "the idle session was closed");
    await new Promise((r) => setTimeout(r, 3000));
    assert.equal(http.sessionCount(), 1, "the listening session stays");
    assert.equal(await ping(http.url, third), 200);
    listen.abort();
    await stream.body?.cancel().catch(() => {});
    assert.ok(await waitFor(() => http.sessionCount() === 0), "closed once its client left");
  } finally {
    listen.abort();
    await runtime.close();
    await http.close();
    await double.close();
  }
});
