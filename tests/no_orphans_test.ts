/**
 * No MCP server outlives lmbridge, run with exactly the permissions of `deno task start`:
 * not when the client closes stdin, not on SIGTERM, not when the server ignores both stdin
 * EOF and SIGTERM, and not for a grandchild behind a wrapper process.
 */
import assert from "node:assert/strict";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { startDouble } from "./support/lmstudio_double.ts";
import { bridgeEnv, MAIN, ROOT, START_PERMISSIONS, textOf } from "./support/bridge.ts";
import { DENO_RUN, isRunning } from "./support/helpers.ts";
import { delay } from "../src/util/async.ts";

const FAULTY = new URL("./support/faulty_mcp_server.ts", import.meta.url).pathname;

async function waitGone(pids: number[], ms: number): Promise<number[]> {
  const deadline = Date.now() + ms;
  while (pids.some(isRunning) && Date.now() < deadline) await delay(50);
  return pids.filter(isRunning);
}

/** Starts lmbridge with a stubborn server and a wrapped one, and returns their pids. */
async function bridgeWithServers(doubleUrl: string) {
  const dir = Deno.makeTempDirSync({ prefix: "lmbridge-orphans-" });
  const pidFile = `${dir}/pids`;
  Deno.writeTextFileSync(
    `${dir}/.mcp.json`,
    JSON.stringify({
      mcpServers: {
        stubborn: {
          command: Deno.execPath(),
          args: [...DENO_RUN, FAULTY, "slow", "--ignore-eof", "--ignore-term"],
          env: { FAULTY_MCP_LOG: pidFile },
        },
        // A wrapper shell whose child is the real server (like npx → node).
        wrapped: {
          command: "/bin/sh",
          args: ["-c", `"${Deno.execPath()}" ${DENO_RUN.join(" ")} "${FAULTY}" slow`],
          env: { FAULTY_MCP_LOG: pidFile },
        },
      },
    }),
  );
  const transport = new StdioClientTransport({
    command: Deno.execPath(),
    args: ["run", ...START_PERMISSIONS, MAIN],
    env: bridgeEnv(doubleUrl, { MCP_JSON_PATH: `${dir}/.mcp.json` }),
    cwd: ROOT,
    stderr: "pipe",
  });
  const client = new Client({ name: "orphans", version: "1" });
  await client.connect(transport);
  const r = await client.callTool({
    name: "autonomous_with_mcp",
    arguments: { task: 'CALL echo {"text": "hi"}', mcp_names: ["stubborn", "wrapped"] },
  });
  assert.equal(r.isError, undefined, textOf(r as never));
  const servers = Deno.readTextFileSync(pidFile).split("\n")
    .filter((l) => l.startsWith("start ")).map((l) => Number(l.split(" ")[1]));
  assert.equal(servers.length, 2, "both servers started");
  assert.ok(servers.every(isRunning));
  return { client, transport, servers };
}

Deno.test("closing stdin ends every MCP server, stubborn and wrapped ones included", async () => {
  const double = await startDouble();
  try {
    const { client, servers } = await bridgeWithServers(double.url);
    await client.close(); // closes lmbridge's stdin
    assert.deepEqual(await waitGone(servers, 10_000), [], "no server outlives lmbridge");
  } finally {
    await double.close();
  }
});

Deno.test("SIGTERM ends every MCP server before lmbridge exits", async () => {
  const double = await startDouble();
  try {
    const { client, transport, servers } = await bridgeWithServers(double.url);
    Deno.kill(transport.pid!, "SIGTERM");
    assert.deepEqual(await waitGone(servers, 10_000), [], "no server outlives lmbridge");
    await client.close();
  } finally {
    await double.close();
  }
});
