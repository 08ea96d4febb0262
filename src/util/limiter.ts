/**
 * Concurrency caps per key (backend, model) with one bounded FIFO queue, and a token-bucket
 * rate limiter. Both are plain objects created once and shared; neither keeps a timer
 * beyond the waits it is serving.
 */

import { abortToError, BridgeError } from "./errors.ts";
import { delay, timerMs } from "./async.ts";

/** Options of {@linkcode SlotLimiter}. */
export interface SlotLimiterOptions {
  /** Capacity for a key like "backend:http://x" or "model:http://x|qwen/qwen3-4b";
   * `Infinity` = uncapped, 0 (or NaN) = nothing passes. Read at every grant attempt, so it
   * can change. */
  capacityOf: (key: string) => number;
  /** Waiters for all keys together; beyond → `overloaded` at once. */
  maxQueue: number;
  /** A waiter gives up after this → `overloaded` (hint names LMBRIDGE_QUEUE_TIMEOUT_S).
   * `Infinity` = wait forever. */
  queueTimeoutMs: number;
  /** Clock in ms, for the wait statistics. Default: `performance.now`. */
  now?: () => number;
}

/** A granted slot on every requested key. */
export interface Slot {
  /** Frees the slot on every key; calling it again does nothing. */
  release(): void;
  /** ms spent queued. */
  readonly waitedMs: number;
}

/** What {@linkcode SlotLimiter.snapshot} reports. */
export interface SlotLimiterSnapshot {
  /** Slots in use per key (keys with none are left out). */
  inFlight: Record<string, number>;
  /** Waiters per key (a waiter counts under each of its keys). */
  queuedByKey: Record<string, number>;
  /** Waiters in total. */
  queued: number;
  /** Every granted acquire, including immediate ones (0 ms). */
  waits: { count: number; totalMs: number; maxMs: number };
  /** Acquires refused as `overloaded` (queue full or queue timeout); aborts not counted. */
  rejected: number;
}

interface Waiter {
  keys: string[];
  enqueuedAt: number;
  grant: () => void;
}

/**
 * Grants a request one slot on every key at once (e.g. its backend and its model).
 * Waiters are served FIFO among those that can proceed: on every release (and acquire) the
 * queue is scanned in order and every waiter whose keys all have room is granted, so a
 * waiter blocked on a busy model never blocks a later waiter for another model.
 * An abort makes the waiter leave the queue and rejects with `abortToError(signal.reason)`.
 *
 * @example
 * const limiter = new SlotLimiter({ capacityOf: (k) => caps.get(k) ?? 4, maxQueue: 1000, queueTimeoutMs: 120_000 });
 * const slot = await limiter.acquire([`backend:${url}`, `model:${url}|${model}`], { signal });
 * try { await generate(signal); } finally { slot.release(); }
 */
export class SlotLimiter {
  readonly #capacityOf: (key: string) => number;
  readonly #maxQueue: number;
  readonly #queueTimeoutMs: number;
  readonly #now: () => number;
  readonly #inFlight = new Map<string, number>();
  /** Insertion order is arrival order; removal from the middle is O(1). */
  readonly #queue = new Set<Waiter>();
  #waitCount = 0;
  #waitTotalMs = 0;
  #waitMaxMs = 0;
  #rejected = 0;

  /** Creates a limiter; see {@linkcode SlotLimiterOptions}. */
  constructor(options: SlotLimiterOptions) {
    this.#capacityOf = options.capacityOf;
    this.#maxQueue = options.maxQueue;
    this.#queueTimeoutMs = options.queueTimeoutMs;
    this.#now = options.now ?? (() => performance.now());
  }

  /**
   * Resolves with a slot on every key in `keys` once all have room. Rejects with
   * `overloaded` when the queue is full or the wait exceeds the queue timeout, and with
   * `abortToError(signal.reason)` when the signal aborts first.
   */
  acquire(keys: string[], options: { signal?: AbortSignal } = {}): Promise<Slot> {
    const { signal } = options;
    if (signal?.aborted) return Promise.reject(abortToError(signal.reason));
    const unique = [...new Set(keys)];
    // Capacities may have grown since the last release: serve earlier waiters first.
    this.#pump();
    const start = this.#now();
    if (this.#fits(unique)) return Promise.resolve(this.#take(unique, start));
    if (this.#queue.size >= this.#maxQueue) {
      this.#rejected++;
      return Promise.reject(
        new BridgeError("overloaded", `too many requests waiting (queue of ${this.#maxQueue})`, {
          hint: "send fewer requests at once, or raise LMBRIDGE_MAX_QUEUE or the " +
            "LMBRIDGE_MAX_INFLIGHT_PER_MODEL / LMBRIDGE_MAX_INFLIGHT_PER_BACKEND caps",
        }),
      );
    }
    return new Promise<Slot>((resolve, reject) => {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const leave = () => {
        this.#queue.delete(waiter);
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
      };
      const onAbort = () => {
        leave();
        reject(abortToError(signal!.reason));
      };
      const waiter: Waiter = {
        keys: unique,
        enqueuedAt: start,
        grant: () => {
          leave();
          resolve(this.#take(unique, start));
        },
      };
      this.#queue.add(waiter);
      signal?.addEventListener("abort", onAbort, { once: true });
      if (Number.isFinite(this.#queueTimeoutMs)) {
        timer = setTimeout(() => {
          leave();
          this.#rejected++;
          const waitedMs = Math.round(this.#now() - start);
          reject(
            new BridgeError(
              "overloaded",
              `no free slot for ${unique.join(", ")} after ${Math.round(waitedMs / 1000)} s`,
              {
                elapsedMs: waitedMs,
                hint: "the model is busy with other requests; send fewer at once, or raise " +
                  "LMBRIDGE_QUEUE_TIMEOUT_S or LMBRIDGE_MAX_INFLIGHT_PER_MODEL",
              },
            ),
          );
        }, timerMs(this.#queueTimeoutMs));
      }
    });
  }

  /** Slots in use on `key`. */
  inFlight(key: string): number {
    return this.#inFlight.get(key) ?? 0;
  }

  /** Grants queued waiters that now fit, e.g. after a capacity was raised. Also happens on
   * every acquire and release. */
  recheck(): void {
    this.#pump();
  }

  /** Snapshot for stats. */
  snapshot(): SlotLimiterSnapshot {
    const queuedByKey: Record<string, number> = {};
    for (const waiter of this.#queue) {
      for (const key of waiter.keys) queuedByKey[key] = (queuedByKey[key] ?? 0) + 1;
    }
    return {
      inFlight: Object.fromEntries(this.#inFlight),
      queuedByKey,
      queued: this.#queue.size,
      waits: { count: this.#waitCount, totalMs: this.#waitTotalMs, maxMs: this.#waitMaxMs },
      rejected: this.#rejected,
    };
  }

  #fits(keys: string[]): boolean {
    return keys.every((key) => this.inFlight(key) < this.#capacityOf(key));
  }

  #take(keys: string[], start: number): Slot {
    for (const key of keys) this.#inFlight.set(key, this.inFlight(key) + 1);
    const waitedMs = Math.max(0, this.#now() - start);
    this.#waitCount++;
    this.#waitTotalMs += waitedMs;
    if (waitedMs > this.#waitMaxMs) this.#waitMaxMs = waitedMs;
    let released = false;
    return {
      waitedMs,
      release: () => {
        if (released) return;
        released = true;
        for (const key of keys) {
          const n = this.inFlight(key) - 1;
          if (n > 0) this.#inFlight.set(key, n);
          else this.#inFlight.delete(key);
        }
        this.#pump();
      },
    };
  }

  /** Grants, in arrival order, every waiter whose keys all have room. */
  #pump(): void {
    for (const waiter of this.#queue) {
      if (this.#fits(waiter.keys)) waiter.grant();
    }
  }
}

/**
 * A token bucket: `rps` tokens per second, burst = max(1, rps). It starts with one token
 * (a cold start is spread out, not a burst) and refills up to the burst while idle.
 * `take` waits for a token; takers are served in call order. `rps` <= 0, NaN, `Infinity`
 * or undefined → no limit.
 *
 * @example
 * const rate = new RateLimiter(config.rps);
 * await rate.take(signal); // then send the request
 */
export class RateLimiter {
  readonly #rps: number;
  readonly #burst: number;
  readonly #now: () => number;
  #tokens = 1;
  #last: number;

  /** Creates a limiter of `rps` requests per second. */
  constructor(rps: number | undefined, options: { now?: () => number } = {}) {
    this.#rps = rps !== undefined && rps > 0 && Number.isFinite(rps) ? rps : 0;
    this.#burst = Math.max(1, this.#rps);
    this.#now = options.now ?? (() => performance.now());
    this.#last = this.#now();
  }

  /** Resolves when a token is available; rejects with `abortToError(signal.reason)` on abort
   * (the reserved token is given back). */
  async take(signal?: AbortSignal): Promise<void> {
    if (signal?.aborted) throw abortToError(signal.reason);
    if (this.#rps === 0) return;
    const now = this.#now();
    this.#tokens = Math.min(this.#burst, this.#tokens + ((now - this.#last) * this.#rps) / 1000);
    this.#last = now;
    // Reserve a token even if it is not there yet: the debt makes later takers wait longer,
    // which keeps call order.
    this.#tokens -= 1;
    if (this.#tokens >= 0) return;
    const waitMs = (-this.#tokens * 1000) / this.#rps;
    try {
      await delay(waitMs, { signal });
    } catch (err) {
      this.#tokens += 1;
      throw signal?.aborted ? abortToError(signal.reason) : err;
    }
  }
}
