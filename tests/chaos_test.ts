/**
 * Chaos: a mixed load (streamed and not, embeddings, background jobs, cancels) while the
 * double injects every fault it has. Every request is accounted for: exactly one result or
 * one clear error, never another request's answer, no upstream connection left open, and
 * lmbridge's memory back near its baseline afterwards.
 */
import assert from "node:assert/strict";
import { type Fault, startDouble } from "./support/lmstudio_double.ts";
import { bridgeEnv, startBridge, textOf } from "./support/bridge.ts";
import { DENO_RUN, MCP_SERVERS } from "./support/helpers.ts";

const FAULTY = new URL("./support/faulty_mcp_server.ts", import.meta.url).pathname;

/** Pids of live processes whose environment holds `marker`. */
function processesMarked(marker: string): number[] {
  const pids: number[] = [];
  for (const entry of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(entry.name)) continue;
    try {
      const environ = Deno.readTextFileSync(`/proc/${entry.name}/environ`);
      const stat = Deno.readTextFileSync(`/proc/${entry.name}/stat`);
      const state = stat.slice(stat.lastIndexOf(")") + 2)[0];
      if (environ.includes(marker) && state !== "Z") pids.push(Number(entry.name));
    } catch {
      // gone meanwhile, or not ours to read
    }
  }
  return pids;
}

// deno-lint-ignore no-explicit-any
type Structured = Record<string, any>;

/** Resident memory of a process, in MB (Linux). */
async function rssMb(pid: number): Promise<number> {
  const status = await Deno.readTextFile(`/proc/${pid}/status`);
  return Number(/VmRSS:\s+(\d+)/.exec(status)![1]) / 1024;
}

/** A small deterministic random generator. */
function rng(seed: number) {
  return () => {
    seed = (seed * 1664525 + 1013904223) % 2 ** 32;
    return seed / 2 ** 32;
  };
}

const FAULTS: Fault[] = [
  { kind: "status", status: 429, headers: { "retry-after": "0" } },
  { kind: "status", status: 500, body: { error: "internal" } },
  { kind: "status", status: 503 },
  { kind: "drop", afterChunks: 2 },
  { kind: "stall", afterChunks: 1 },
  { kind: "garbage" },
  { kind: "error_in_stream", afterChunks: 1, message: "engine crashed" },
  { kind: "error_in_200", message: "oops" },
  { kind: "context_overflow" },
  { kind: "empty_stream" },
  { kind: "first_byte_delay", ms: 300 },
  { kind: "slow_stream", chunkDelayMs: 30 },
  { kind: "reset" },
];
const ALLOWED = new Set([
  "rate_limited",
  "upstream_error",
  "timeout",
  "context_overflow",
  "cancelled",
  "backend_unreachable",
  "overloaded",
  "mcp_server_unavailable",
  "mcp_tool_failed",
]);

/** Progress lines that are status, not answer text (sent only before any text). */
const STATUS =
  /^(waiting for a free slot|attempt \d+ failed|loading model|model \S+ loaded|\S+ is unreachable)/;

/** The SPEC code of an error text, which must be one of the codes chaos may cause. */
function codeOf(text: string): string {
  const code = /^Error \[([a-z_]+)\]/.exec(text)?.[1] ?? "?";
  assert.ok(ALLOWED.has(code), `unexpected ${text}`);
  return code;
}

Deno.test("chaos: mixed load under every fault loses and mixes up nothing", async () => {
  const double = await startDouble({
    chunkSize: 6,
    models: [
      { id: "org/alpha" },
      { id: "org/beta" },
      { id: "text-embedding-small", type: "embeddings" },
    ],
  });
  // Downstream: a real memory server, a slow one and one that crashes every 3 calls.
  const dir = Deno.makeTempDirSync({ prefix: "lmbridge-chaos-" });
  const marker = `LMBRIDGE_CHAOS_MARK=${crypto.randomUUID()}`;
  const markEnv = { [marker.split("=")[0]]: marker.split("=")[1] };
  Deno.writeTextFileSync(
    `${dir}/.mcp.json`,
    JSON.stringify({
      mcpServers: {
        memory: {
          command: Deno.execPath(),
          args: [...DENO_RUN, MCP_SERVERS.memory],
          env: { MEMORY_FILE_PATH: `${dir}/memory.jsonl`, ...markEnv },
        },
        slow: { command: Deno.execPath(), args: [...DENO_RUN, FAULTY, "slow"], env: markEnv },
        crashy: {
          command: Deno.execPath(),
          args: [...DENO_RUN, FAULTY, "crash_after", "3"],
          env: markEnv,
        },
        garbage: { command: Deno.execPath(), args: [...DENO_RUN, FAULTY, "garbage"], env: markEnv },
      },
    }),
  );
  const bridge = await startBridge(bridgeEnv(double.url, {
    LMBRIDGE_IDLE_TIMEOUT_S: "1",
    LMBRIDGE_MAX_INFLIGHT_PER_MODEL: "8",
    LMBRIDGE_MCP_CALL_TIMEOUT_S: "2",
    MCP_JSON_PATH: `${dir}/.mcp.json`,
    LOG_LEVEL: "warn",
  }));
  const random = rng(42);
  try {
    for (let i = 0; i < 20; i++) await bridge.call("chat_completion", { prompt: `warm ${i}` });
    // The first waves warm every path (JIT, pools, sessions) and let V8 size its heap; a leak
    // shows as growth over the later waves, which must stay small.
    let baseline = 0;

    const expectations: Promise<string>[] = [];
    let n = 0;
    for (let wave = 0; wave < 8; wave++) {
      for (const fault of FAULTS) {
        double.addFault({
          fault,
          times: 2,
          path: random() < 0.5 ? "/v1/chat/completions" : undefined,
        });
      }
      for (let i = 0; i < 60; i++, n++) {
        const id = n;
        const model = random() < 0.5 ? "org/alpha" : "org/beta";
        const kind = random();
        if (kind < 0.55) {
          const streamed = random() < 0.5;
          const progress: string[] = [];
          const controller = new AbortController();
          const cancel = random() < 0.1;
          if (cancel) setTimeout(() => controller.abort(), 20);
          expectations.push(
            bridge.call("chat_completion", { prompt: `chaos ${id}`, model }, {
              onprogress: streamed ? (p) => progress.push(p.message ?? "") : undefined,
              signal: controller.signal,
              timeout: 60_000,
            }).then((r) => {
              const own = `[${model}] You said: chaos ${id}`;
              // Whatever text was streamed, success or not, is this request's own.
              const streamedText = progress.filter((m) => !STATUS.test(m)).join("");
              assert.ok(own.startsWith(streamedText), `progress of ${id}: ${streamedText}`);
              if (!r.isError) {
                assert.equal(textOf(r), own, "its own answer");
                return "ok";
              }
              return codeOf(textOf(r));
            }, (err) => {
              assert.ok(cancel, `only cancelled calls reject: ${err}`);
              return "client-cancelled";
            }),
          );
        } else if (kind < 0.65) {
          // An agent run: the double's model calls the tool named after CALL.
          const task = [
            "CALL read_graph",
            'CALL sleep {"ms": 300}',
            'CALL sleep {"ms": 5000}',
            'CALL echo {"text": "hi"}',
          ][id % 4];
          // Some runs also select a server that only writes garbage: it is left out.
          const mcp = task.includes("read_graph")
            ? ["memory"]
            : [id % 2 ? "slow" : "crashy", ...(id % 3 === 0 ? ["garbage"] : [])];
          expectations.push(
            bridge.call("autonomous_with_mcp", { task: `${task} #${id}`, mcp_names: mcp, model }, {
              timeout: 60_000,
            }).then((r) => {
              if (r.isError) return `agent-${codeOf(textOf(r))}`;
              const s = r.structuredContent as Structured;
              assert.equal(s.model, model, "the run kept its model");
              return s.tool_calls.every((c: Structured) => c.ok) ? "agent-ok" : "agent-tool-error";
            }),
          );
        } else if (kind < 0.75) {
          expectations.push(
            bridge.call("generate_embeddings", { text: [`e${id}`, "shared"] }).then((r) => {
              if (r.isError) return codeOf(textOf(r));
              assert.equal((r.structuredContent as Structured).embeddings.length, 2);
              return "ok";
            }),
          );
        } else if (kind < 0.9) {
          expectations.push((async () => {
            const started = await bridge.call("chat_completion", {
              prompt: `job ${id}`,
              model,
              background: true,
            });
            const jobId = (started.structuredContent as Structured).job_id;
            assert.match(jobId, /\S/);
            const done = await bridge.call("get_job", { job_id: jobId, wait_s: 30 });
            const job = done.structuredContent as Structured;
            if (job.status === "succeeded") {
              assert.equal(job.result.text, `[${model}] You said: job ${id}`);
              return "ok";
            }
            assert.ok(["failed", "cancelled"].includes(job.status), job.status);
            return `job-${job.status}`;
          })());
        } else {
          expectations.push(
            bridge.call("create_response", { input: `turn ${id}`, model }).then((r) => {
              if (r.isError) return codeOf(textOf(r));
              assert.match((r.structuredContent as Structured).text, new RegExp(`turn ${id}`));
              return "ok";
            }),
          );
        }
      }
      await new Promise((r) => setTimeout(r, 200));
      if (Deno.env.get("CHAOS_DEBUG")) {
        await Promise.allSettled(expectations);
        console.log("wave", wave, (await rssMb(bridge.pid!)).toFixed(1));
      }
      if (wave === 3) {
        await Promise.allSettled(expectations);
        baseline = await rssMb(bridge.pid!);
      }
    }
    const outcomes = await Promise.all(expectations);
    assert.equal(outcomes.length, n, "every request accounted for");
    const tally: Record<string, number> = {};
    for (const o of outcomes) tally[o] = (tally[o] ?? 0) + 1;
    console.log(`chaos outcomes over ${n} requests:`, JSON.stringify(tally));
    assert.ok((tally.ok ?? 0) > n / 3, "most requests still succeed");

    double.clearFaults();
    const after = await bridge.call("chat_completion", { prompt: "after the storm" });
    assert.equal(
      textOf(after),
      "[qwen/qwen3-4b] You said: after the storm".replace("qwen/qwen3-4b", "org/alpha"),
    );

    // No upstream connection left behind.
    const deadline = Date.now() + 5_000;
    while (double.stats.inFlight > 0 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.equal(double.stats.inFlight, 0, "no upstream request left open");
    const stats = (await bridge.call("bridge_stats")).structuredContent as Structured;
    assert.deepEqual(stats.in_flight, {});
    assert.equal(stats.queued.total, 0);

    const final = await rssMb(bridge.pid!);
    console.log(
      `lmbridge RSS: baseline ${baseline.toFixed(1)} MB, after chaos ${final.toFixed(1)} MB`,
    );
    assert.ok(
      final - baseline < 25,
      `memory grew by ${(final - baseline).toFixed(1)} MB over the last 4 waves`,
    );
  } finally {
    await bridge.close();
    await double.close();
  }
  // No downstream server outlives lmbridge.
  const deadline = Date.now() + 5_000;
  while (processesMarked(marker).length && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.deepEqual(processesMarked(marker), [], "no MCP server process left behind");
});
