/** Counters behind `bridge_stats` and `/metrics`: calls, errors by code, latencies. */
import type { ErrorCode } from "../util/errors.ts";

const WINDOW = 2048;

/** Upper bounds (seconds) of the call duration histogram buckets. */
export const DURATION_BUCKETS_S = [
  0.001,
  0.005,
  0.01,
  0.025,
  0.05,
  0.1,
  0.25,
  0.5,
  1,
  2.5,
  5,
  10,
  30,
  60,
  120,
  300,
  600,
] as const;

export class BridgeStats {
  requests = 0;
  readonly byTool: Record<string, number> = {};
  readonly errorsByCode: Partial<Record<ErrorCode, number>> = {};
  readonly byToolAndCode: Record<string, number> = {};
  tokens = { prompt: 0, completion: 0 };
  readonly #latencies = new Float64Array(WINDOW);
  #count = 0;
  readonly started = Date.now();
  /** Cumulative counts per bucket of DURATION_BUCKETS_S (every call since start). */
  readonly durationBuckets: number[] = new Array(DURATION_BUCKETS_S.length).fill(0);
  durationSumS = 0;

  /** Records one finished call. */
  record(event: { tool: string; ms: number; code?: ErrorCode }) {
    this.requests++;
    this.byTool[event.tool] = (this.byTool[event.tool] ?? 0) + 1;
    const code = event.code ?? "ok";
    if (event.code) this.errorsByCode[event.code] = (this.errorsByCode[event.code] ?? 0) + 1;
    const key = `${event.tool}|${code}`;
    this.byToolAndCode[key] = (this.byToolAndCode[key] ?? 0) + 1;
    this.#latencies[this.#count % WINDOW] = event.ms;
    this.#count++;
    const seconds = event.ms / 1000;
    this.durationSumS += seconds;
    for (let b = DURATION_BUCKETS_S.length - 1; b >= 0 && seconds <= DURATION_BUCKETS_S[b]; b--) {
      this.durationBuckets[b]++;
    }
  }

  /** Adds token usage of a generation. */
  addUsage(usage: { prompt_tokens: number; completion_tokens: number } | undefined) {
    if (!usage) return;
    this.tokens.prompt += usage.prompt_tokens;
    this.tokens.completion += usage.completion_tokens;
  }

  /** p50 and p99 over the last calls (ms). */
  latency(): { p50: number; p99: number } {
    const n = Math.min(this.#count, WINDOW);
    if (n === 0) return { p50: 0, p99: 0 };
    const sorted = Array.from(this.#latencies.subarray(0, n)).sort((a, b) => a - b);
    const at = (q: number) => Math.round(sorted[Math.min(n - 1, Math.floor(q * n))] * 10) / 10;
    return { p50: at(0.5), p99: at(0.99) };
  }
}
