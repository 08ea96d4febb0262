/**
 * Background jobs (`background: true`, `get_job`, `cancel_job`): a run that outlives the
 * client's patience. Live jobs stay in memory; their state goes to an SQLite database in the
 * state directory (events at most every second, the outcome at the end), so a finished
 * result survives a restart of lmbridge until it expires.
 */
import { DatabaseSync, type StatementSync } from "node:sqlite";
import { z } from "zod";
import type { Config } from "../config.ts";
import { delay } from "../util/async.ts";
import { abortToError, BridgeError, type ErrorCode, toBridgeError } from "../util/errors.ts";
import type { Logger } from "../util/log.ts";
import { processAlive } from "../util/process.ts";
import { TtlMap } from "../util/ttl_map.ts";
import type { ProgressSink } from "./progress.ts";
import { defineTool, type ToolContext, type ToolDefinition, type ToolOutput } from "./registry.ts";

/** Where a job is. */
export type JobStatus = "running" | "succeeded" | "failed" | "cancelled";

/** One progress event of a job: a status line, or a chunk of streamed text. */
export interface JobEvent {
  /** Epoch ms. */
  at: number;
  kind: "status" | "text";
  message: string;
}

/** A job as stored. */
export interface JobRecord {
  id: string;
  tool: string;
  status: JobStatus;
  /** Epoch ms. */
  createdAt: number;
  /** Epoch ms of the last change; live jobs also refresh it as a heartbeat. */
  updatedAt: number;
  finishedAt?: number;
  events: JobEvent[];
  /** The tool's result once it succeeded. */
  result?: ToolOutput;
  /** `Error [code]: …` when it failed or was cancelled. */
  error?: string;
  errorCode?: ErrorCode;
}

/** Bounds of a job's event list. */
export interface EventLimits {
  /** Most events kept (the last ones). Default 200. */
  maxEvents: number;
  /** Longest message of one event, in characters. Default 2000. */
  maxMessage: number;
  /** Most characters over all kept events. Default 64_000. */
  maxChars: number;
}

const DEFAULT_LIMITS: EventLimits = { maxEvents: 200, maxMessage: 2000, maxChars: 64_000 };

/**
 * A bounded list of progress events: streamed text is appended to the last text event (up to
 * `maxMessage` characters, then a new one starts); the oldest events go first.
 *
 * @example
 * const log = new EventLog();
 * log.status("queued", Date.now());
 * log.text("Hel", Date.now()); log.text("lo", Date.now()); // one text event "Hello"
 */
export class EventLog {
  /** The kept events, oldest first. */
  readonly events: JobEvent[];
  readonly #limits: EventLimits;
  #chars: number;

  constructor(events: JobEvent[] = [], limits: Partial<EventLimits> = {}) {
    this.events = [...events];
    this.#limits = { ...DEFAULT_LIMITS, ...limits };
    this.#chars = this.events.reduce((n, e) => n + e.message.length, 0);
    this.#trim();
  }

  /** Appends streamed text. */
  text(delta: string, at: number): void {
    if (!delta) return;
    const { maxMessage, maxChars } = this.#limits;
    // Only the tail of a huge delta can survive the bounds.
    if (delta.length > maxChars) delta = delta.slice(-maxChars);
    const last = this.events.at(-1);
    if (last?.kind === "text" && last.message.length < maxMessage) {
      const room = maxMessage - last.message.length;
      last.message += delta.slice(0, room);
      last.at = at;
      this.#chars += Math.min(room, delta.length);
      delta = delta.slice(room);
    }
    for (let i = 0; i < delta.length; i += maxMessage) {
      const message = delta.slice(i, i + maxMessage);
      this.events.push({ at, kind: "text", message });
      this.#chars += message.length;
    }
    this.#trim();
  }

  /** Appends a status line (truncated to `maxMessage`). */
  status(message: string, at: number): void {
    const max = this.#limits.maxMessage;
    if (message.length > max) message = `${message.slice(0, max - 1)}…`;
    this.events.push({ at, kind: "status", message });
    this.#chars += message.length;
    this.#trim();
  }

  #trim() {
    const { maxEvents, maxChars } = this.#limits;
    while (this.events.length > maxEvents || (this.#chars > maxChars && this.events.length > 1)) {
      this.#chars -= this.events.shift()!.message.length;
    }
  }
}

/** Options of {@linkcode JobStore}. */
export interface JobStoreOptions {
  /** How long finished jobs are kept, ms. */
  ttlMs: number;
  /** Clock, epoch ms. Default `Date.now`. */
  now?: () => number;
  /** Identifies this process's jobs. Default: a random id. */
  owner?: string;
  /** This process's pid. Default `Deno.pid`. */
  pid?: number;
  /** This machine. Default `Deno.hostname()`. */
  host?: string;
  /** Whether a process of this machine is alive; undefined when it cannot tell. Default:
   * probes the pid with signal 0. */
  isAlive?: (pid: number) => boolean | undefined;
  /** A running job of another process whose heartbeat is older than this is orphaned. Default 60 s. */
  staleMs?: number;
  /** Least time between two lazy expiry sweeps. Default 60 s. */
  sweepIntervalMs?: number;
}

/** The error a job gets when the lmbridge process running it went away. */
export function restartError(): BridgeError {
  return new BridgeError("cancelled", "lmbridge restarted while this job ran", {
    hint: "start the job again",
  });
}

interface JobRow {
  id: string;
  tool: string;
  status: string;
  created_at: number;
  updated_at: number;
  finished_at: number | null;
  events: string;
  result: string | null;
  error: string | null;
  error_code: string | null;
  owner: string | null;
  pid: number | null;
  host: string | null;
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS jobs (
  id TEXT PRIMARY KEY,
  tool TEXT NOT NULL,
  status TEXT NOT NULL CHECK (status IN ('running', 'succeeded', 'failed', 'cancelled')),
  created_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL,
  finished_at INTEGER,
  events TEXT NOT NULL DEFAULT '[]',
  result TEXT,
  error TEXT,
  error_code TEXT,
  owner TEXT,
  pid INTEGER,
  host TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_finish ON jobs (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_running ON jobs (status) WHERE status = 'running';
`;

/**
 * Jobs in an SQLite database (`node:sqlite`, WAL mode). Several lmbridge processes may share
 * one file: each marks its rows with an owner, and only the running jobs of a process that is
 * gone (dead pid, or no heartbeat for `staleMs`) are marked failed. Finished jobs older than
 * the TTL are deleted lazily: on open, then at most once per `sweepIntervalMs` on access.
 *
 * @example
 * const store = JobStore.open(config.stateDir, { ttlMs: config.jobTtlS * 1000 });
 * store.get("job_…");
 * store.close();
 */
export class JobStore {
  /** This process's owner id. */
  readonly owner: string;
  readonly #db: DatabaseSync;
  readonly #ttlMs: number;
  readonly #now: () => number;
  readonly #pid: number;
  readonly #host: string;
  readonly #isAlive: (pid: number) => boolean | undefined;
  readonly #staleMs: number;
  readonly #sweepIntervalMs: number;
  #lastSweep = -Infinity;
  readonly #sql: Record<
    | "insert"
    | "progress"
    | "finish"
    | "get"
    | "expire"
    | "foreign"
    | "orphan"
    | "touch"
    | "count",
    StatementSync
  >;

  /** Opens (creating with mode 0700) `dir` and `dir/jobs.db`. */
  static open(dir: string, options: JobStoreOptions): JobStore {
    Deno.mkdirSync(dir, { recursive: true, mode: 0o700 });
    return new JobStore(`${dir.replace(/\/+$/, "")}/jobs.db`, options);
  }

  /** Opens the database at `path` (":memory:" for one that lives with the process). */
  constructor(path: string, options: JobStoreOptions) {
    this.#ttlMs = options.ttlMs;
    this.#now = options.now ?? Date.now;
    this.owner = options.owner ?? crypto.randomUUID();
    this.#pid = options.pid ?? Deno.pid;
    this.#host = options.host ?? hostname();
    this.#isAlive = options.isAlive ?? processAlive;
    this.#staleMs = options.staleMs ?? 60_000;
    this.#sweepIntervalMs = options.sweepIntervalMs ?? 60_000;
    this.#db = new DatabaseSync(path);
    try {
      // Another process may hold the write lock for a moment.
      this.#db.exec("PRAGMA busy_timeout = 1000");
      this.#db.exec("PRAGMA journal_mode = WAL");
      this.#db.exec("PRAGMA synchronous = NORMAL");
      this.#db.exec(SCHEMA);
      const p = (sql: string) => this.#db.prepare(sql);
      this.#sql = {
        insert: p(
          `INSERT INTO jobs (id, tool, status, created_at, updated_at, finished_at, events, result,
             error, error_code, owner, pid, host)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
        ),
        progress: p(
          "UPDATE jobs SET events = ?, updated_at = ? WHERE id = ? AND status = 'running'",
        ),
        // Unconditional: the owner's outcome wins over a mistaken orphan mark.
        finish: p(
          `UPDATE jobs SET status = ?, updated_at = ?, finished_at = ?, events = ?, result = ?,
             error = ?, error_code = ? WHERE id = ?`,
        ),
        get: p("SELECT * FROM jobs WHERE id = ?"),
        expire: p("DELETE FROM jobs WHERE finished_at IS NOT NULL AND finished_at < ?"),
        foreign: p(
          "SELECT id, owner, pid, host, updated_at FROM jobs WHERE status = 'running' AND owner IS NOT ?",
        ),
        orphan: p(
          `UPDATE jobs SET status = 'failed', updated_at = ?, finished_at = ?, error = ?,
             error_code = ? WHERE id = ? AND status = 'running'`,
        ),
        touch: p("UPDATE jobs SET updated_at = ? WHERE owner = ? AND status = 'running'"),
        count: p("SELECT count(*) AS n FROM jobs"),
      };
      this.sweep();
    } catch (err) {
      this.#db.close();
      throw err;
    }
  }

  /** Adds a new job. */
  insert(job: JobRecord): void {
    this.#sweepIfDue();
    this.#sql.insert.run(
      job.id,
      job.tool,
      job.status,
      job.createdAt,
      job.updatedAt,
      job.finishedAt ?? null,
      JSON.stringify(job.events),
      job.result ? JSON.stringify(job.result) : null,
      job.error ?? null,
      job.errorCode ?? null,
      this.owner,
      this.#pid,
      this.#host,
    );
  }

  /** Saves the events of a running job (and refreshes its heartbeat). */
  saveProgress(id: string, events: JobEvent[]): void {
    this.#sql.progress.run(JSON.stringify(events), this.#now(), id);
  }

  /** Saves a job's outcome. */
  finish(job: JobRecord): void {
    this.#sql.finish.run(
      job.status,
      job.updatedAt,
      job.finishedAt ?? this.#now(),
      JSON.stringify(job.events),
      job.result ? JSON.stringify(job.result) : null,
      job.error ?? null,
      job.errorCode ?? null,
      job.id,
    );
  }

  /** Refreshes the heartbeat of every running job of this process. */
  touch(): void {
    this.#sql.touch.run(this.#now(), this.owner);
  }

  /** The job `id`, or undefined when unknown or expired. */
  get(id: string): JobRecord | undefined {
    this.#sweepIfDue();
    const row = this.#sql.get.get(id) as JobRow | undefined;
    if (!row) return undefined;
    const job = fromRow(row);
    if (job.finishedAt !== undefined && job.finishedAt < this.#now() - this.#ttlMs) {
      return undefined;
    }
    return job;
  }

  /** Number of stored jobs. */
  count(): number {
    return Number((this.#sql.count.get() as { n: number }).n);
  }

  /**
   * Deletes expired finished jobs and marks the running jobs of processes that are gone as
   * failed ("lmbridge restarted while this job ran").
   */
  sweep(): { expired: number; orphaned: number } {
    const now = this.#now();
    this.#lastSweep = now;
    const expired = Number(this.#sql.expire.run(now - this.#ttlMs).changes);
    const err = restartError();
    let orphaned = 0;
    for (const row of this.#sql.foreign.all(this.owner) as unknown as JobRow[]) {
      // Our own pid under another owner: that process is gone (a container's pid 1).
      const gone = (row.host === this.#host && row.pid !== null &&
        (row.pid === this.#pid || this.#isAlive(row.pid) === false)) ||
        row.updated_at < now - this.#staleMs;
      if (!gone) continue;
      orphaned += Number(this.#sql.orphan.run(now, now, err.format(), err.code, row.id).changes);
    }
    return { expired, orphaned };
  }

  /** Closes the database; idempotent. */
  close(): void {
    if (this.#db.isOpen) this.#db.close();
  }

  #sweepIfDue() {
    if (this.#now() - this.#lastSweep >= this.#sweepIntervalMs) this.sweep();
  }
}

function fromRow(row: JobRow): JobRecord {
  const job: JobRecord = {
    id: row.id,
    tool: row.tool,
    status: row.status as JobStatus,
    createdAt: Number(row.created_at),
    updatedAt: Number(row.updated_at),
    events: parseJson<JobEvent[]>(row.events) ?? [],
  };
  if (row.finished_at !== null) job.finishedAt = Number(row.finished_at);
  const result = row.result === null ? undefined : parseJson<ToolOutput>(row.result);
  if (result) job.result = result;
  if (row.error !== null) job.error = row.error;
  if (row.error_code !== null) job.errorCode = row.error_code as ErrorCode;
  return job;
}

function parseJson<T>(text: string): T | undefined {
  try {
    return JSON.parse(text) as T;
  } catch {
    return undefined;
  }
}

function hostname(): string {
  try {
    return Deno.hostname();
  } catch {
    return "";
  }
}

/** Options of {@linkcode JobRunner}. */
export interface JobRunnerOptions {
  /** Opens the store on first use (so commands that run no job create no database). */
  openStore: () => JobStore;
  log: Logger;
  /** Aborting it stops every job (they end failed: "lmbridge restarted…"). */
  shutdown?: AbortSignal;
  /** Budget of a job whose caller has no deadline, seconds. */
  defaultTimeoutS: number;
  /** Most jobs running at once; more are refused with `overloaded`. Default 256. */
  maxRunning?: number;
  /** How often events of live jobs are saved. Default 1000 ms. */
  flushIntervalMs?: number;
  /** How often live jobs refresh their heartbeat. Default 10 s. */
  heartbeatMs?: number;
  /** Finished jobs also kept in memory. Default 256. */
  recentMax?: number;
  /** How long finished jobs are kept, ms (for the in-memory copies). */
  ttlMs: number;
  /** How long `cancel_job` waits for a job to stop before marking it cancelled. Default 5 s. */
  cancelGraceMs?: number;
  /** Clock, epoch ms. Default `Date.now`. */
  now?: () => number;
  limits?: Partial<EventLimits>;
}

interface LiveJob {
  record: JobRecord;
  log: EventLog;
  controller: AbortController;
  /** Why the controller aborted. */
  stop?: "cancel" | "shutdown" | "timeout";
  dirty: boolean;
  finished: boolean;
  settled: PromiseWithResolvers<void>;
  timer?: ReturnType<typeof setTimeout>;
}

/**
 * Runs tool runs as background jobs and answers for them. Jobs are tied to the app's
 * shutdown, not to the request that started them.
 *
 * @example
 * const runner = createJobRunner(app.config, app.log, app.shutdown.signal);
 * const tools = allTools(app, { startJob: runner.start, tools: jobTools(runner) });
 */
export class JobRunner {
  readonly #opts: Required<Omit<JobRunnerOptions, "shutdown" | "limits">> & JobRunnerOptions;
  readonly #live = new Map<string, LiveJob>();
  readonly #recent: TtlMap<string, JobRecord>;
  #store?: JobStore;
  #ticker?: ReturnType<typeof setInterval>;
  #lastTouch = 0;
  #closed = false;
  readonly #onShutdown = () => {
    for (const job of this.#live.values()) this.#abort(job, "shutdown");
  };

  constructor(options: JobRunnerOptions) {
    this.#opts = {
      maxRunning: 256,
      flushIntervalMs: 1000,
      heartbeatMs: 10_000,
      recentMax: 256,
      cancelGraceMs: 5000,
      now: Date.now,
      ...options,
    };
    this.#recent = new TtlMap({
      ttlMs: options.ttlMs,
      maxSize: this.#opts.recentMax,
      now: this.#opts.now,
    });
    options.shutdown?.addEventListener("abort", this.#onShutdown, { once: true });
  }

  /** Jobs running in this process. */
  get running(): number {
    return this.#live.size;
  }

  /** Sizes of the in-memory job cache, for bridge_stats. */
  cacheStats(): { size: number; maxSize: number } {
    return {
      size: this.#live.size + this.#recent.size,
      maxSize: this.#opts.maxRunning + this.#opts.recentMax,
    };
  }

  /**
   * Starts `run` in the background with its own signal, deadline (the caller's remaining
   * budget) and an event-recording progress sink; returns the job id result at once.
   * @throws BridgeError `overloaded` when `maxRunning` jobs run, `cancelled` after close().
   */
  readonly start = (
    tool: string,
    run: (ctx: ToolContext) => Promise<ToolOutput>,
    ctx: ToolContext,
  ): Promise<ToolOutput> => {
    if (this.#closed || this.#opts.shutdown?.aborted) {
      return Promise.reject(new BridgeError("cancelled", "lmbridge is shutting down"));
    }
    if (this.#live.size >= this.#opts.maxRunning) {
      return Promise.reject(
        new BridgeError("overloaded", `${this.#live.size} background jobs are already running`, {
          hint: "wait for some to finish (get_job) or cancel some (cancel_job)",
        }),
      );
    }
    const now = this.#opts.now();
    const id = `job_${crypto.randomUUID().replaceAll("-", "")}`;
    const budgetMs = Number.isFinite(ctx.deadline) && ctx.deadline > now
      ? ctx.deadline - now
      : this.#opts.defaultTimeoutS * 1000;
    const job: LiveJob = {
      record: {
        id,
        tool,
        status: "running",
        createdAt: now,
        updatedAt: now,
        events: [],
      },
      log: new EventLog([], this.#opts.limits),
      controller: new AbortController(),
      dirty: false,
      finished: false,
      settled: Promise.withResolvers<void>(),
    };
    job.record.events = job.log.events;
    this.#live.set(id, job);
    this.#persist("insert", id, (s) => s.insert(job.record));
    this.#ensureTicker();
    job.timer = setTimeout(() => {
      this.#abort(job, "timeout", new DOMException("job exceeded its deadline", "TimeoutError"));
    }, budgetMs);

    const log = ctx.log.child({ job_id: id });
    const record = (add: () => void) => {
      if (job.finished) return;
      add();
      job.dirty = true;
    };
    const progress: ProgressSink = {
      text: (delta) => record(() => job.log.text(delta, this.#opts.now())),
      status: (message) => record(() => job.log.status(message, this.#opts.now())),
      close: () => Promise.resolve(),
    };
    const jobCtx: ToolContext = {
      requestId: id,
      signal: job.controller.signal,
      deadline: now + budgetMs,
      progress,
      log,
      streaming: true,
    };
    log.info("job started", { budget_ms: Math.round(budgetMs) });
    Promise.resolve().then(() => run(jobCtx)).then(
      (out) => this.#finish(job, "succeeded", { result: out }),
      (thrown) => {
        let err = toBridgeError(thrown);
        if (job.stop === "cancel") {
          this.#finish(job, "cancelled", { error: cancelError(id) });
          return;
        }
        if (job.stop === "shutdown") err = restartError();
        else if (job.stop === "timeout" && err.code !== "timeout") {
          err = abortToError(job.controller.signal.reason, "job");
        }
        this.#finish(job, "failed", { error: err });
      },
    ).then(
      () => log.info("job done", { status: job.record.status, error_code: job.record.errorCode }),
      (err) => log.error("job bookkeeping failed", { error: String(err) }),
    );

    return Promise.resolve({
      text:
        `Started job ${id} (${tool}) in the background. Call get_job with job_id "${id}" for its progress and result (wait_s up to 50 waits for it to finish), or cancel_job to stop it.`,
      structured: { job_id: id, status: "running" },
    });
  };

  /** The job `id` (live, recent or stored), or undefined when unknown or expired. */
  get(id: string): JobRecord | undefined {
    const live = this.#live.get(id);
    if (live) return snapshot(live);
    return this.#recent.get(id) ?? this.#withStore((s) => s.get(id));
  }

  /**
   * The job `id` once it finished or `waitMs` passed, whichever comes first.
   * @throws the signal's reason when it aborts.
   */
  async wait(id: string, waitMs: number, signal: AbortSignal): Promise<JobRecord | undefined> {
    const until = performance.now() + waitMs;
    while (true) {
      signal.throwIfAborted();
      const left = until - performance.now();
      const live = this.#live.get(id);
      if (live) {
        if (left > 0) await settledOrTimeout(live.settled.promise, left, signal);
        return this.get(id);
      }
      const job = this.get(id);
      // A job of another lmbridge process sharing the database: poll.
      if (!job || job.status !== "running" || left <= 0) return job;
      await delay(Math.min(500, left), { signal });
    }
  }

  /**
   * Cancels the job `id`: aborts its run (and so its upstream request) and waits for it to
   * stop. A finished job is returned unchanged; undefined when unknown.
   * @throws BridgeError `unsupported` for a job running in another lmbridge process.
   */
  async cancel(
    id: string,
    signal: AbortSignal,
  ): Promise<{ job: JobRecord; cancelled: boolean } | undefined> {
    const live = this.#live.get(id);
    if (!live) {
      const job = this.get(id);
      if (job?.status === "running") {
        throw new BridgeError("unsupported", `job ${id} runs in another lmbridge process`, {
          hint: "cancel it through the lmbridge that started it, or wait for it with get_job",
        });
      }
      return job && { job, cancelled: false };
    }
    this.#abort(live, "cancel", cancelError(id));
    await settledOrTimeout(live.settled.promise, this.#opts.cancelGraceMs, signal);
    // A run that ignores its signal is left to end on its own; the job is over for its caller.
    if (!live.finished) this.#finish(live, "cancelled", { error: cancelError(id) });
    const job = this.get(id)!;
    return { job, cancelled: job.status === "cancelled" };
  }

  /**
   * Stops every job (they end failed: "lmbridge restarted while this job ran"), saves them and
   * closes the store. Idempotent.
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#opts.shutdown?.removeEventListener("abort", this.#onShutdown);
    const jobs = [...this.#live.values()];
    for (const job of jobs) this.#abort(job, "shutdown");
    if (jobs.length) {
      const stop = new AbortController();
      await settledOrTimeout(
        Promise.all(jobs.map((j) => j.settled.promise)).then(() => {}),
        2000,
        stop.signal,
      );
    }
    for (const job of jobs) {
      if (!job.finished) this.#finish(job, "failed", { error: restartError() });
    }
    clearInterval(this.#ticker);
    this.#ticker = undefined;
    this.#store?.close();
    this.#store = undefined;
  }

  #abort(job: LiveJob, why: NonNullable<LiveJob["stop"]>, reason?: unknown) {
    if (job.finished || job.controller.signal.aborted) return;
    job.stop = why;
    job.controller.abort(
      reason ?? new DOMException("lmbridge is shutting down", "AbortError"),
    );
  }

  #finish(
    job: LiveJob,
    status: Exclude<JobStatus, "running">,
    outcome: { result?: ToolOutput; error?: BridgeError },
  ) {
    if (job.finished) return;
    job.finished = true;
    clearTimeout(job.timer);
    const now = this.#opts.now();
    const record: JobRecord = {
      ...job.record,
      status,
      updatedAt: now,
      finishedAt: now,
      events: [...job.log.events],
    };
    if (outcome.result) {
      record.result = outcome.result.structured
        ? { text: outcome.result.text, structured: outcome.result.structured }
        : { text: outcome.result.text };
    }
    if (outcome.error) {
      record.error = outcome.error.format();
      record.errorCode = outcome.error.code;
      // What a failed run did before it failed (an agent's rounds and tool calls).
      const partial = outcome.error.context.result;
      if (partial && !record.result) record.result = { text: record.error, structured: partial };
    }
    job.record = record;
    this.#live.delete(job.record.id);
    this.#recent.set(record.id, record);
    this.#persist("finish", record.id, (s) => s.finish(record));
    if (this.#live.size === 0) {
      clearInterval(this.#ticker);
      this.#ticker = undefined;
    }
    job.settled.resolve();
  }

  #ensureTicker() {
    if (this.#ticker !== undefined) return;
    this.#lastTouch = this.#opts.now();
    this.#ticker = setInterval(() => this.#tick(), this.#opts.flushIntervalMs);
  }

  /** Saves the events of live jobs that changed, and the heartbeat now and then. */
  #tick() {
    for (const job of this.#live.values()) {
      if (!job.dirty) continue;
      job.dirty = false;
      this.#persist(
        "progress",
        job.record.id,
        (s) => s.saveProgress(job.record.id, job.log.events),
      );
    }
    const now = this.#opts.now();
    if (now - this.#lastTouch >= this.#opts.heartbeatMs) {
      this.#lastTouch = now;
      this.#persist("heartbeat", undefined, (s) => s.touch());
    }
  }

  #withStore<T>(use: (store: JobStore) => T): T | undefined {
    if (!this.#store) {
      if (this.#closed) return undefined;
      this.#store = this.#opts.openStore();
    }
    return use(this.#store);
  }

  /** A failed write is logged, not fatal: the job goes on, and memory still has it. */
  #persist(what: string, id: string | undefined, write: (store: JobStore) => void) {
    try {
      this.#withStore(write);
    } catch (err) {
      this.#opts.log.warn("job store write failed", { what, job_id: id, error: String(err) });
    }
  }
}

function snapshot(job: LiveJob): JobRecord {
  return { ...job.record, events: job.log.events.map((e) => ({ ...e })) };
}

function cancelError(id: string): BridgeError {
  return new BridgeError("cancelled", `job ${id} was cancelled with cancel_job`);
}

/** Resolves when `promise` settles or after `ms`; rejects with the signal's reason on abort. */
async function settledOrTimeout(promise: Promise<void>, ms: number, signal: AbortSignal) {
  const stop = new AbortController();
  const timer = delay(ms, { signal: AbortSignal.any([signal, stop.signal]) }).catch(() => {
    if (signal.aborted) throw signal.reason;
  });
  try {
    await Promise.race([promise, timer]);
  } finally {
    stop.abort();
  }
}

/**
 * The job runner for a configuration: its database is `${config.stateDir}/jobs.db`, opened on
 * first use; when it cannot be opened, jobs are kept in an in-memory database (and a warning
 * is logged), so background runs still work without surviving restarts.
 */
export function createJobRunner(config: Config, log: Logger, shutdown?: AbortSignal): JobRunner {
  const ttlMs = config.jobTtlS * 1000;
  return new JobRunner({
    openStore: () => {
      try {
        return JobStore.open(config.stateDir, { ttlMs });
      } catch (err) {
        log.warn("cannot open the job database; finished jobs will not survive a restart", {
          path: `${config.stateDir}/jobs.db`,
          error: String(err),
        });
        return new JobStore(":memory:", { ttlMs });
      }
    },
    log,
    shutdown,
    defaultTimeoutS: config.requestTimeoutS,
    ttlMs,
  });
}

const jobIdArg = z.string().trim().min(1, "must not be empty").max(200, "is too long").describe(
  "the job_id returned by a call with background: true",
);

const jobOutput = z.object({
  job_id: z.string(),
  tool: z.string(),
  status: z.enum(["running", "succeeded", "failed", "cancelled"]),
  created_at: z.string(),
  finished_at: z.string().nullable(),
  elapsed_ms: z.number(),
  events: z.array(z.object({
    at: z.string(),
    kind: z.enum(["status", "text"]),
    message: z.string(),
  })),
  result: z.record(z.string(), z.unknown()).nullable(),
  error: z.string().nullable(),
  error_code: z.string().nullable(),
});

/** `get_job`'s structured content for a job. */
export function jobStructured(job: JobRecord, now = Date.now()): z.infer<typeof jobOutput> {
  return {
    job_id: job.id,
    tool: job.tool,
    status: job.status,
    created_at: new Date(job.createdAt).toISOString(),
    finished_at: job.finishedAt === undefined ? null : new Date(job.finishedAt).toISOString(),
    elapsed_ms: Math.max(0, (job.finishedAt ?? now) - job.createdAt),
    events: job.events.map((e) => ({
      at: new Date(e.at).toISOString(),
      kind: e.kind,
      message: e.message,
    })),
    result: job.result ? job.result.structured ?? { text: job.result.text } : null,
    error: job.error ?? null,
    error_code: job.errorCode ?? null,
  };
}

/** `get_job`'s text: a status line, then the result, the error or the progress so far. */
export function jobText(job: JobRecord, now = Date.now()): string {
  const secs = (((job.finishedAt ?? now) - job.createdAt) / 1000).toFixed(1);
  const head = `Job ${job.id} (${job.tool})`;
  switch (job.status) {
    case "succeeded":
      return `${head} succeeded in ${secs} s.\n\n${job.result?.text ?? ""}`;
    case "failed":
      return `${head} failed after ${secs} s.\n\n${job.error ?? "Error: unknown failure"}`;
    case "cancelled":
      return `${head} was cancelled after ${secs} s.${
        progressTail(job.events, "\n\nProgress before the cancel:\n")
      }`;
    case "running":
      return `${head} is still running (${secs} s so far).${
        progressTail(job.events, "\n\nProgress so far:\n")
      }\n\nCall get_job again (wait_s up to 50 waits for it to finish), or cancel_job to stop it.`;
  }
}

/** The last ~2000 characters of the events as readable text. */
function progressTail(events: JobEvent[], label: string): string {
  let out = "";
  for (let i = events.length - 1; i >= 0 && out.length < 2000; i--) {
    const e = events[i];
    out = (e.kind === "status" ? `\n[${e.message}]\n` : e.message) + out;
  }
  out = out.trim();
  if (!out) return "";
  return label + (out.length > 2000 ? `…${out.slice(-2000)}` : out);
}

/** The `get_job` and `cancel_job` tools over `runner`. */
export function jobTools(runner: JobRunner): ToolDefinition[] {
  const unknown = (id: string) =>
    new BridgeError("invalid_request", `job_id: no job "${id}" (unknown, or expired)`, {
      hint: "use the job_id returned by a call with background: true",
    });

  const getJob = defineTool({
    name: "get_job",
    title: "Background job status",
    description:
      "Status, progress so far and result of a run started with background: true (chat_completion, autonomous_with_mcp). wait_s (at most 50) waits for the job to finish before answering.",
    input: z.object({
      job_id: jobIdArg,
      wait_s: z.number().min(0).max(50).optional().describe(
        "seconds to wait for the job to finish (long-poll, at most 50); default 0",
      ),
    }),
    output: jobOutput,
    // wait_s bounds the call; the request deadline must not cut a long-poll short.
    deadline: false,
    handler: async (args, ctx) => {
      const job = await runner.wait(args.job_id, (args.wait_s ?? 0) * 1000, ctx.signal);
      if (!job) throw unknown(args.job_id);
      return { text: jobText(job), structured: jobStructured(job) };
    },
  });

  const cancelJob = defineTool({
    name: "cancel_job",
    title: "Cancel a background job",
    description:
      "Stops a run started with background: true (its model request is aborted) and returns the job's status. A job that already finished is left as it is.",
    input: z.object({ job_id: jobIdArg }),
    output: z.object({
      job_id: z.string(),
      status: z.enum(["running", "succeeded", "failed", "cancelled"]),
      cancelled: z.boolean(),
    }),
    deadline: false,
    handler: async (args, ctx) => {
      const outcome = await runner.cancel(args.job_id, ctx.signal);
      if (!outcome) throw unknown(args.job_id);
      const { job, cancelled } = outcome;
      const text = cancelled
        ? `Job ${job.id} (${job.tool}) was cancelled.`
        : `Job ${job.id} (${job.tool}) already ${job.status}; nothing to cancel.`;
      return { text, structured: { job_id: job.id, status: job.status, cancelled } };
    },
  });

  return [getJob, cancelJob];
}
