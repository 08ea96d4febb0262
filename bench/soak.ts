/**
 * Soak: 100k requests with distinct conversation ids, model switches and cancels through
 * one lmbridge process. Resident memory after warm-up may grow by at most 30 MB, and every
 * cache must stay at its bound. `deno run -A bench/soak.ts [--requests N]` prints a
 * markdown section (run by `deno task bench`).
 */
import { startDouble } from "../tests/support/lmstudio_double.ts";
import { bridgeEnv, startBridge } from "../tests/support/bridge.ts";

const arg = Deno.args.indexOf("--requests");
const TOTAL = arg >= 0 ? Number(Deno.args[arg + 1]) : 100_000;
// Warm-up fills the conversation cache (10k entries) so growth after it is what leaks.
const WARMUP = Math.min(30_000, Math.floor(TOTAL * 0.3));
const WORKERS = 32;

async function rssMb(pid: number): Promise<number> {
  const status = await Deno.readTextFile(`/proc/${pid}/status`);
  return Number(/VmRSS:\s+(\d+)/.exec(status)![1]) / 1024;
}

if (import.meta.main) {
  const models = ["org/alpha", "org/beta", "org/gamma"];
  const double = await startDouble({ chunkSize: 16, models: models.map((id) => ({ id })) });
  const bridge = await startBridge(bridgeEnv(double.url, {
    LOG_LEVEL: "error",
    LMBRIDGE_MAX_INFLIGHT_PER_MODEL: "16",
    LMBRIDGE_MAX_INFLIGHT_PER_BACKEND: "48",
  }));
  const counts: Record<string, number> = {};
  let next = 0;
  const samples: { at: number; rss: number }[] = [];
  let baseline = 0;

  const one = async (i: number) => {
    const model = models[i % 3];
    const kind = i % 10;
    let outcome = "ok";
    try {
      if (kind < 4) {
        // A new conversation each time: distinct ids fill the history cache to its bound.
        const r = await bridge.call("create_response", { input: `conversation ${i}`, model });
        if (r.isError) outcome = "error";
      } else if (kind < 5) {
        await bridge.call("set_default_model", { model });
      } else if (kind < 6) {
        const controller = new AbortController();
        const p = bridge.call("chat_completion", { prompt: `cancel ${i}` }, {
          signal: controller.signal,
        });
        queueMicrotask(() => controller.abort());
        await p.then(() => (outcome = "finished-before-cancel"), () => (outcome = "cancelled"));
      } else {
        const r = await bridge.call("chat_completion", { prompt: `soak ${i}`, model }, {
          onprogress: () => {},
        });
        if (r.isError) outcome = "error";
      }
    } catch {
      outcome = "rejected";
    }
    counts[outcome] = (counts[outcome] ?? 0) + 1;
  };

  const run = async (until: number) => {
    await Promise.all(Array.from({ length: WORKERS }, async () => {
      while (next < until) await one(next++);
    }));
  };

  const started = performance.now();
  await run(WARMUP);
  baseline = await rssMb(bridge.pid!);
  samples.push({ at: WARMUP, rss: baseline });
  const step = Math.max(1, Math.floor((TOTAL - WARMUP) / 10));
  for (let mark = WARMUP + step; mark <= TOTAL; mark += step) {
    await run(mark);
    samples.push({ at: mark, rss: await rssMb(bridge.pid!) });
  }
  await run(TOTAL);
  const seconds = (performance.now() - started) / 1000;
  const stats = (await bridge.call("bridge_stats")).structuredContent as {
    caches: Record<string, { size: number; max_size: number }>;
  };
  const final = await rssMb(bridge.pid!);
  const peak = Math.max(...samples.map((s) => s.rss), final);
  await bridge.close();
  await double.close();

  const growth = final - baseline;
  const cachesOk = Object.values(stats.caches).every((c) => c.size <= c.max_size);
  const lines = [
    `## Soak — ${new Date().toISOString().slice(0, 10)}`,
    "",
    `${TOTAL} requests (${WARMUP} warm-up) by ${WORKERS} concurrent workers in ${
      seconds.toFixed(0)
    } s: 40% new conversations (create_response), 10% set_default_model switches, 10% cancelled right after sending, 40% streamed chat over 3 models.`,
    "",
    `Outcomes: ${JSON.stringify(counts)}`,
    "",
    "| requests done | lmbridge RSS |",
    "|---|---|",
    ...samples.map((s) => `| ${s.at} | ${s.rss.toFixed(1)} MB |`),
    `| end | ${final.toFixed(1)} MB |`,
    "",
    `Growth after warm-up: **${growth.toFixed(1)} MB** (target ≤ 30 MB: ${
      growth <= 30 ? "met" : "missed"
    }); peak ${peak.toFixed(1)} MB.`,
    "",
    `Caches at the end: ${
      Object.entries(stats.caches).map(([k, c]) => `${k} ${c.size}/${c.max_size}`).join(", ")
    } (${cachesOk ? "all within their bound" : "A CACHE EXCEEDED ITS BOUND"}).`,
    "",
  ];
  console.log(lines.join("\n"));
}
