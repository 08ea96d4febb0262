/** Small helpers several test files share: ports, processes, real MCP servers, rejections. */
import assert from "node:assert/strict";
import { BridgeError } from "../../src/util/errors.ts";

/** How tests start MCP servers under Deno: without our deno.json / deno.lock, so they never
 * touch the project's lock file. */
export const DENO_RUN = ["run", "-A", "--no-config", "--no-lock"];

/** The real MCP servers from npm used by the agent's tests (pinned). */
export const MCP_SERVERS = {
  memory: "npm:@modelcontextprotocol/server-memory@2026.8.31",
  filesystem: "npm:@modelcontextprotocol/server-filesystem@2026.8.31",
  everything: "npm:@modelcontextprotocol/server-everything@2026.8.31",
} as const;

/** A loopback port where nothing listens (it was free a moment ago). */
export function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

/** A backend URL where nothing listens. */
export function deadUrl(): string {
  return `http://127.0.0.1:${freePort()}`;
}

/** True while `pid` is in the process table and not a zombie. */
export function isRunning(pid: number): boolean {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    return stat.slice(stat.lastIndexOf(")") + 2)[0] !== "Z";
  } catch {
    return false;
  }
}

/** The BridgeError `promise` rejects with (fails the test when it resolves). */
export async function rejection(promise: Promise<unknown>): Promise<BridgeError> {
  try {
    await promise;
  } catch (err) {
    assert.ok(err instanceof BridgeError, `expected a BridgeError, got ${err}`);
    return err;
  }
  assert.fail("expected a rejection");
}

/** The JSON-RPC initialize request a raw client sends first (id 1). */
export const INITIALIZE = {
  jsonrpc: "2.0",
  id: 1,
  method: "initialize",
  params: {
    protocolVersion: "2025-06-18",
    capabilities: {},
    clientInfo: { name: "raw", version: "1" },
  },
};

/** The notification that follows the initialize answer. */
export const INITIALIZED = { jsonrpc: "2.0", method: "notifications/initialized" };
