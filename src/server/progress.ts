/**
 * Progress notifications for one request: streamed text coalesced to at most one
 * notification per interval, status lines sent at once, `progress` strictly increasing.
 */

/** Where a request's progress goes; a no-op when the client sent no progressToken. */
export interface ProgressSink {
  /** New answer text (coalesced). */
  text(delta: string): void;
  /** A status line (queued, loading, retrying, agent step) sent promptly. */
  status(message: string): void;
  /** Sends what is pending; no more notifications afterwards. Resolves once they went out. */
  close(): Promise<void>;
}

export type SendProgress = (params: {
  progress: number;
  message?: string;
}) => Promise<void> | void;

const SETTLE_MS = 5;

/** A sink that drops everything. */
export const nullProgress: ProgressSink = {
  text() {},
  status() {},
  close: () => Promise.resolve(),
};

/**
 * Creates a coalescing sink.
 *
 * @example
 * const sink = createProgressSink((p) => extra.sendNotification({ method: "notifications/progress",
 *   params: { progressToken, ...p } }));
 */
export function createProgressSink(
  send: SendProgress,
  options: { intervalMs?: number; now?: () => number; onEvent?: (message: string) => void } = {},
): ProgressSink {
  const intervalMs = options.intervalMs ?? 50;
  const now = options.now ?? (() => performance.now());
  let progress = 0;
  let pending = "";
  let lastSent = -Infinity;
  let timer: ReturnType<typeof setTimeout> | undefined;
  let closed = false;
  let lastSend: Promise<unknown> = Promise.resolve();

  const emit = (message: string, weight: number) => {
    progress += Math.max(1, weight);
    lastSent = now();
    try {
      const done = send({ progress, message });
      if (done instanceof Promise) lastSend = done.catch(() => {});
    } catch {
      // A client that went away cannot take progress; the result still matters.
    }
  };
  const flush = () => {
    clearTimeout(timer);
    timer = undefined;
    if (!pending) return;
    const text = pending;
    pending = "";
    emit(text, text.length);
  };

  return {
    text(delta) {
      if (closed || !delta) return;
      pending += delta;
      const wait = intervalMs - (now() - lastSent);
      if (wait <= 0) flush();
      else if (!timer) timer = setTimeout(flush, wait);
    },
    status(message) {
      if (closed) return;
      options.onEvent?.(message);
      flush();
      emit(message, 1);
    },
    close() {
      if (!closed) {
        flush();
        closed = true;
      }
      // The SDK's client handles notifications a microtask late: a response read in the
      // same chunk as the last notification would drop it. A short gap keeps them apart.
      const sinceLast = now() - lastSent;
      return lastSend.then(() =>
        sinceLast < SETTLE_MS ? new Promise((r) => setTimeout(r, SETTLE_MS - sinceLast)) : undefined
      );
    },
  };
}
