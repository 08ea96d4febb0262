/** Small waiting helpers that always honour an AbortSignal. */

/** The longest delay a timer takes; longer ones would fire at once. */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/** `ms` clamped to what a timer can wait (0 … MAX_TIMER_MS). */
export function timerMs(ms: number): number {
  return Math.max(0, Math.min(ms, MAX_TIMER_MS));
}

/**
 * Resolves after `ms`, or rejects with `signal.reason` as soon as the signal aborts.
 * Keeps no timer alive after an abort.
 *
 * @example
 * await delay(100, { signal: AbortSignal.timeout(50) }); // rejects with TimeoutError
 */
export function delay(ms: number, options: { signal?: AbortSignal } = {}): Promise<void> {
  const { signal } = options;
  if (signal?.aborted) return Promise.reject(signal.reason);
  return new Promise((resolve, reject) => {
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal!.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, timerMs(ms));
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/** Rejects with `signal.reason` when the signal aborts before `promise` settles. */
export function abortable<T>(promise: Promise<T>, signal?: AbortSignal): Promise<T> {
  if (!signal) return promise;
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(
      (v) => {
        signal.removeEventListener("abort", onAbort);
        resolve(v);
      },
      (e) => {
        signal.removeEventListener("abort", onAbort);
        reject(e);
      },
    );
  });
}

/** A signal that follows several others, and a timer, until disposed. */
export interface LinkedSignal extends Disposable {
  readonly signal: AbortSignal;
  /** Detaches from the sources and clears the timer; call when the work is done. */
  dispose(): void;
}

/**
 * Combines `sources` and an optional timeout into one signal. Unlike `AbortSignal.any` and
 * `AbortSignal.timeout`, nothing stays attached to a long-lived source (the process's
 * shutdown signal) or keeps a timer after `dispose`, so per-request signals cost nothing
 * once the request is over.
 *
 * @example
 * const linked = linkSignals([request.signal, shutdown], { timeoutMs: 600_000 });
 * try { await work(linked.signal); } finally { linked.dispose(); }
 */
export function linkSignals(
  sources: readonly (AbortSignal | undefined)[],
  options: { timeoutMs?: number } = {},
): LinkedSignal {
  const controller = new AbortController();
  const attached: [AbortSignal, () => void][] = [];
  let timer: ReturnType<typeof setTimeout> | undefined;
  const dispose = () => {
    clearTimeout(timer);
    for (const [source, listener] of attached) source.removeEventListener("abort", listener);
    attached.length = 0;
  };
  for (const source of sources) {
    if (!source) continue;
    if (source.aborted) {
      controller.abort(source.reason);
      return { signal: controller.signal, dispose, [Symbol.dispose]: dispose };
    }
    const listener = () => {
      controller.abort(source.reason);
      dispose();
    };
    source.addEventListener("abort", listener, { once: true });
    attached.push([source, listener]);
  }
  if (options.timeoutMs !== undefined && Number.isFinite(options.timeoutMs)) {
    timer = setTimeout(() => {
      controller.abort(new DOMException("The deadline passed", "TimeoutError"));
      dispose();
    }, timerMs(options.timeoutMs));
  }
  return { signal: controller.signal, dispose, [Symbol.dispose]: dispose };
}
