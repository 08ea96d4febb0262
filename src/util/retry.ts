/**
 * Retry with exponential backoff and jitter (SPEC §4): the caller decides what is safe to
 * retry; this module decides when, and never waits past the deadline or a cancel.
 */

import { abortToError, BridgeError } from "./errors.ts";
import { delay } from "./async.ts";

/** What to do about a failed attempt. */
export interface RetryDecision {
  /** Whether another attempt is safe and useful. */
  retry: boolean;
  /** Server-requested wait (Retry-After), ms; replaces the backoff (capped at maxDelayMs). */
  afterMs?: number;
}

/** Options of {@linkcode withRetry}. */
export interface RetryOptions {
  /** Most attempts, the first included. Default 3. */
  maxAttempts?: number;
  /** Default 250. Backoff before attempt n+1 is d = base * 2^(n-1), capped at maxDelayMs,
   * with jitter: a wait drawn uniformly in [d/2, d]. */
  baseDelayMs?: number;
  /** Default 30_000; also caps Retry-After. */
  maxDelayMs?: number;
  /** Epoch ms (as `now` tells it). Never sleeps past it: when the next wait would end after
   * it, the last error is thrown instead. */
  deadline?: number;
  /** Abort stops waiting at once and throws `abortToError(signal.reason)`. Also passed to
   * `sleep`. */
  signal?: AbortSignal;
  /** Decides whether the error of attempt `attempt` may be retried. */
  classify: (err: unknown, attempt: number) => RetryDecision;
  /** Called before each wait. */
  onRetry?: (err: unknown, attempt: number, waitMs: number) => void;
  /** In [0, 1). Default `Math.random`. */
  random?: () => number;
  /** Default `Date.now`. */
  now?: () => number;
  /** Default `delay` from async.ts; must reject when `signal` aborts. */
  sleep?: (ms: number, signal?: AbortSignal) => Promise<void>;
}

/**
 * Calls `fn(attempt)` (attempt starts at 1) until it succeeds, `classify` says no, attempts
 * run out, or the deadline / signal forbid another try. The final error, if a BridgeError,
 * is rethrown as `err.with({ attempts })`; others are rethrown unchanged. An abort during a
 * wait throws `abortToError(signal.reason)` with the attempts made.
 *
 * @example
 * const res = await withRetry((attempt) => send(request, signal), {
 *   signal, deadline,
 *   classify: (err) => err instanceof HttpError && [429, 502, 503, 504].includes(err.status)
 *     ? { retry: true, afterMs: parseRetryAfter(err.headers.get("retry-after")) }
 *     : { retry: false },
 * });
 */
export async function withRetry<T>(
  fn: (attempt: number) => Promise<T>,
  options: RetryOptions,
): Promise<T> {
  const {
    maxAttempts = 3,
    baseDelayMs = 250,
    maxDelayMs = 30_000,
    deadline,
    signal,
    classify,
    onRetry,
    random = Math.random,
    now = Date.now,
    sleep = (ms: number, s?: AbortSignal) => delay(ms, { signal: s }),
  } = options;
  for (let attempt = 1;; attempt++) {
    if (signal?.aborted) throw abortToError(signal.reason).with({ attempts: attempt - 1 });
    try {
      return await fn(attempt);
    } catch (err) {
      const fail = () => err instanceof BridgeError ? err.with({ attempts: attempt }) : err;
      if (signal?.aborted || attempt >= maxAttempts) throw fail();
      const decision = classify(err, attempt);
      if (!decision.retry) throw fail();
      const waitMs = decision.afterMs !== undefined
        ? Math.min(Math.max(0, decision.afterMs), maxDelayMs)
        : backoffMs(attempt, baseDelayMs, maxDelayMs, random);
      if (deadline !== undefined && now() + waitMs > deadline) throw fail();
      onRetry?.(err, attempt, waitMs);
      try {
        await sleep(waitMs, signal);
      } catch (sleepErr) {
        if (signal?.aborted) throw abortToError(signal.reason).with({ attempts: attempt });
        throw sleepErr;
      }
    }
  }
}

/** The jittered wait after failed attempt `attempt`: uniform in [d/2, d] with
 * d = min(maxMs, baseMs * 2^(attempt-1)). */
export function backoffMs(
  attempt: number,
  baseMs = 250,
  maxMs = 30_000,
  random: () => number = Math.random,
): number {
  const d = Math.min(maxMs, baseMs * 2 ** (attempt - 1));
  return d / 2 + random() * (d / 2);
}

/**
 * Retry-After as delta-seconds or an HTTP-date → ms (≥ 0; a date in the past is 0), capped
 * at `capMs`; undefined when absent or invalid.
 *
 * @example
 * parseRetryAfter("2");                             // 2000
 * parseRetryAfter("Wed, 21 Oct 2015 07:28:00 GMT"); // 0 (in the past)
 */
export function parseRetryAfter(
  value: string | null | undefined,
  now: number = Date.now(),
  capMs = 30_000,
): number | undefined {
  if (value == null) return undefined;
  const text = value.trim();
  if (text === "") return undefined;
  if (/^\d+(\.\d+)?$/.test(text)) return Math.min(capMs, Number(text) * 1000);
  // Only date-shaped text: Date.parse also accepts things like "-5" or "1".
  if (!/[a-z]/i.test(text) || !/\d{1,2}:\d{2}:\d{2}/.test(text)) return undefined;
  // asctime dates carry no zone but are GMT.
  const zoned = /\b(GMT|UTC|UT)\b|[+-]\d{4}$/i.test(text) ? text : `${text} GMT`;
  const at = Date.parse(zoned);
  if (Number.isNaN(at)) return undefined;
  return Math.min(capMs, Math.max(0, at - now));
}
