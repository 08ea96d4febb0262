/**
 * `GET /metrics`: lmbridge's counters in the Prometheus text format (version 0.0.4), from
 * the shared BridgeStats and the router's limiter snapshot.
 */
import type { App } from "../app.ts";
import { DURATION_BUCKETS_S } from "./stats.ts";

/** The content type of the Prometheus text format. */
export const METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

/** One sample line of a metric family. */
export interface MetricSample {
  /** Appended to the family name (`_bucket`, `_sum`, `_count`). */
  suffix?: string;
  labels?: Record<string, string>;
  value: number;
}
/** A metric family: its HELP, TYPE and samples. */
export interface MetricFamily {
  name: string;
  help: string;
  type: "counter" | "gauge" | "histogram";
  samples: MetricSample[];
}

/**
 * Renders lmbridge's metrics for one scrape.
 *
 * @example
 * const metrics = new PrometheusMetrics(app, { sessions: () => sessions.size });
 * new Response(metrics.render(), { headers: { "content-type": METRICS_CONTENT_TYPE } });
 */
export class PrometheusMetrics {
  readonly #app: App;
  readonly #sessions?: () => number;

  constructor(app: App, options: { sessions?: () => number } = {}) {
    this.#app = app;
    this.#sessions = options.sessions;
  }

  /** The metrics text. */
  render(): string {
    const { stats, router } = this.#app;
    const snap = router.snapshot();

    const requests: MetricSample[] = Object.entries(stats.byToolAndCode).map(([key, value]) => {
      const bar = key.lastIndexOf("|");
      return { labels: { tool: key.slice(0, bar), code: key.slice(bar + 1) }, value };
    });
    const inFlightByBackend: MetricSample[] = [];
    const inFlightByModel: MetricSample[] = [];
    let inFlight = 0;
    for (const [key, value] of Object.entries(snap.inFlight)) {
      if (key.startsWith("backend:")) {
        inFlight += value;
        inFlightByBackend.push({ labels: { backend: key.slice("backend:".length) }, value });
      } else if (key.startsWith("model:")) {
        const [backend, model] = splitOnce(key.slice("model:".length), "|");
        inFlightByModel.push({ labels: { backend, model }, value });
      }
    }
    const cooldowns = Object.entries(router.cooldowns()).map(([backend, value]) => ({
      labels: { backend },
      value,
    }));

    const families: MetricFamily[] = [
      {
        name: "lmbridge_requests_total",
        help: "Finished MCP tool calls by tool and result code (ok or a SPEC error code).",
        type: "counter",
        samples: requests,
      },
      {
        name: "lmbridge_request_duration_seconds",
        help: "Duration of MCP tool calls.",
        type: "histogram",
        samples: [
          ...DURATION_BUCKETS_S.map((le, i) => ({
            suffix: "_bucket",
            labels: { le: String(le) },
            value: stats.durationBuckets[i],
          })),
          { suffix: "_bucket", labels: { le: "+Inf" }, value: stats.requests },
          { suffix: "_sum", value: stats.durationSumS },
          { suffix: "_count", value: stats.requests },
        ],
      },
      {
        name: "lmbridge_in_flight",
        help: "Upstream requests holding a slot, all backends together.",
        type: "gauge",
        samples: [{ value: inFlight }],
      },
      {
        name: "lmbridge_backend_in_flight",
        help: "Upstream requests holding a slot, per backend.",
        type: "gauge",
        samples: inFlightByBackend,
      },
      {
        name: "lmbridge_model_in_flight",
        help: "Upstream requests holding a slot, per backend and model.",
        type: "gauge",
        samples: inFlightByModel,
      },
      {
        name: "lmbridge_queued",
        help: "Requests waiting for a slot.",
        type: "gauge",
        samples: [{ value: snap.queued }],
      },
      {
        name: "lmbridge_queue_rejected_total",
        help: "Requests refused as overloaded (queue full or queue timeout).",
        type: "counter",
        samples: [{ value: snap.rejected }],
      },
      {
        name: "lmbridge_tokens_total",
        help: "Tokens processed by the model servers.",
        type: "counter",
        samples: [
          { labels: { kind: "prompt" }, value: stats.tokens.prompt },
          { labels: { kind: "completion" }, value: stats.tokens.completion },
        ],
      },
      {
        name: "lmbridge_upstream_retries_total",
        help: "Upstream calls retried.",
        type: "counter",
        samples: [{ value: snap.retries }],
      },
      {
        name: "lmbridge_failovers_total",
        help: "Requests moved to another backend after one was unreachable.",
        type: "counter",
        samples: [{ value: snap.failovers }],
      },
      {
        name: "lmbridge_model_loads_total",
        help: "Model loads started by lmbridge.",
        type: "counter",
        samples: [{ value: snap.loads }],
      },
      {
        name: "lmbridge_backend_cooldown_seconds",
        help: "Seconds left of a backend's cooldown after connection failures (0 when healthy).",
        type: "gauge",
        samples: cooldowns,
      },
      {
        name: "lmbridge_start_time_seconds",
        help: "Start time of lmbridge since the Unix epoch.",
        type: "gauge",
        samples: [{ value: stats.started / 1000 }],
      },
    ];
    if (this.#sessions) {
      families.push({
        name: "lmbridge_http_sessions",
        help: "Open MCP sessions on the HTTP transport.",
        type: "gauge",
        samples: [{ value: this.#sessions() }],
      });
    }
    return formatPrometheus(families);
  }
}

/** Prometheus text exposition of metric families. */
export function formatPrometheus(families: MetricFamily[]): string {
  let out = "";
  for (const f of families) {
    out += `# HELP ${f.name} ${f.help.replace(/\\/g, "\\\\").replace(/\n/g, "\\n")}\n`;
    out += `# TYPE ${f.name} ${f.type}\n`;
    for (const s of f.samples) {
      const labels = s.labels && Object.keys(s.labels).length
        ? `{${Object.entries(s.labels).map(([k, v]) => `${k}="${escapeLabel(v)}"`).join(",")}}`
        : "";
      out += `${f.name}${s.suffix ?? ""}${labels} ${formatValue(s.value)}\n`;
    }
  }
  return out;
}

function escapeLabel(value: string): string {
  return value.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");
}

function formatValue(n: number): string {
  if (Number.isNaN(n)) return "NaN";
  if (n === Infinity) return "+Inf";
  if (n === -Infinity) return "-Inf";
  return String(n);
}

function splitOnce(s: string, sep: string): [string, string] {
  const i = s.indexOf(sep);
  return i < 0 ? [s, ""] : [s.slice(0, i), s.slice(i + sep.length)];
}
