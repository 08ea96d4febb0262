/**
 * What keeping one session per MCP server saves: a tool call through the SessionPool's kept
 * session (server-memory `read_graph`) against a direct SDK client on its own kept session
 * (the floor) and against spawning the server for every call (what a naive agent does).
 *
 *   deno run -A bench/agent_session.ts [--kept N] [--spawned N]
 *
 * Prints a markdown table; exits 1 when a target is missed (pool overhead ≤ 2 ms at p50,
 * kept ≥ 50× faster than spawning).
 */
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { SessionPool } from "../src/downstream/session_pool.ts";

const SERVER = "npm:@modelcontextprotocol/server-memory@2026.8.31";
const MAX_OVERHEAD_MS = 2;
const MIN_SPEEDUP = 50;

function flag(name: string, fallback: number): number {
  const at = Deno.args.indexOf(name);
  const value = at === -1 ? NaN : Number(Deno.args[at + 1]);
  return Number.isInteger(value) && value > 0 ? value : fallback;
}

function percentile(samples: number[], p: number): number {
  const sorted = [...samples].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}

async function time(n: number, call: () => Promise<unknown>): Promise<number[]> {
  const samples: number[] = [];
  for (let i = 0; i < n; i++) {
    const started = performance.now();
    await call();
    samples.push(performance.now() - started);
  }
  return samples;
}

async function main(): Promise<number> {
  const kept = flag("--kept", 200);
  const spawned = flag("--spawned", 12);
  const dir = await Deno.makeTempDir({ prefix: "lmbridge_bench_" });
  const env = { MEMORY_FILE_PATH: join(dir, "memory.jsonl") };
  // Children run without our deno.json / deno.lock so they never touch the project's lock file.
  const server = {
    command: Deno.execPath(),
    args: ["run", "-A", "--no-config", "--no-lock", SERVER],
  };
  const configPath = join(dir, ".mcp.json");
  await Deno.writeTextFile(
    configPath,
    JSON.stringify({ mcpServers: { memory: { ...server, env } } }),
  );
  const childEnv = { ...Deno.env.toObject(), ...env };
  const pool = new SessionPool({
    configPath,
    env: Deno.env.toObject(),
    self: {
      execPath: Deno.execPath(),
      mainModulePath: fileURLToPath(new URL("../main.ts", import.meta.url)),
      compiled: false,
    },
  });
  const direct = new Client({ name: "bench", version: "0" });
  try {
    console.error(`warming up (${SERVER})…`);
    await pool.callTool("memory", "create_entities", {
      entities: [{ name: "bench", entityType: "thing", observations: ["x"] }],
    });
    await direct.connect(new StdioClientTransport({ ...server, env: childEnv, stderr: "pipe" }));
    for (let i = 0; i < 20; i++) {
      await pool.callTool("memory", "read_graph", {});
      await direct.callTool({ name: "read_graph", arguments: {} });
    }

    console.error(`${kept} calls through the pool, ${kept} on a direct session…`);
    const poolMs = await time(kept, () => pool.callTool("memory", "read_graph", {}));
    const directMs = await time(kept, () => direct.callTool({ name: "read_graph", arguments: {} }));

    console.error(`${spawned} calls spawning the server each time…`);
    const spawnMs = await time(spawned, async () => {
      const client = new Client({ name: "bench", version: "0" });
      await client.connect(new StdioClientTransport({ ...server, env: childEnv, stderr: "pipe" }));
      await client.callTool({ name: "read_graph", arguments: {} });
      await client.close();
    });

    const p50 = (s: number[]) => percentile(s, 50);
    const fmt = (ms: number) => ms.toFixed(2);
    const overhead = p50(poolMs) - p50(directMs);
    const speedup = p50(spawnMs) / p50(poolMs);
    const rows = [
      ["SessionPool.callTool (kept session)", poolMs],
      ["direct SDK client (kept session, floor)", directMs],
      ["spawn + initialize + call + close", spawnMs],
    ] as const;
    const lines = [
      `Tool call cost, server-memory \`read_graph\` (${Deno.build.os}/${Deno.build.arch}, deno ${Deno.version.deno})`,
      "",
      "| how | N | p50 ms | p99 ms |",
      "|---|---:|---:|---:|",
      ...rows.map(([name, s]) =>
        `| ${name} | ${s.length} | ${fmt(p50(s))} | ${fmt(percentile(s, 99))} |`
      ),
      "",
      "| target | measured | |",
      "|---|---:|---|",
      `| pool overhead at p50 ≤ ${MAX_OVERHEAD_MS} ms | ${fmt(overhead)} ms | ${
        overhead <= MAX_OVERHEAD_MS ? "met" : "MISSED"
      } |`,
      `| kept session ≥ ${MIN_SPEEDUP}× faster than spawning (p50) | ${speedup.toFixed(0)}× | ${
        speedup >= MIN_SPEEDUP ? "met" : "MISSED"
      } |`,
    ];
    console.log(lines.join("\n"));
    return overhead <= MAX_OVERHEAD_MS && speedup >= MIN_SPEEDUP ? 0 : 1;
  } finally {
    await direct.close().catch(() => {});
    await pool.close();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

if (import.meta.main) Deno.exit(await main());
