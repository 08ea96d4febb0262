/**
 * Which backends are failing: a backend that cannot be reached (or hangs) cools down for a
 * growing time, so routing prefers the others and the catalogue does not wait on it again
 * and again. Shared by the catalogue and the router; one instance per process.
 */
import type { BridgeError } from "../util/errors.ts";

/** First cooldown; doubles per consecutive failure up to MAX_COOLDOWN_MS. */
export const COOLDOWN_BASE_MS = 5_000;
export const MAX_COOLDOWN_MS = 60_000;

interface State {
  failures: number;
  until: number;
  error: BridgeError;
}

export class BackendHealth {
  readonly #states = new Map<string, State>();
  readonly #now: () => number;

  constructor(options: { now?: () => number } = {}) {
    this.#now = options.now ?? Date.now;
  }

  /** Records a failure to reach `url` and starts (or lengthens) its cooldown. */
  markDown(url: string, error: BridgeError) {
    const state = this.#states.get(url) ?? { failures: 0, until: 0, error };
    state.failures++;
    state.until = this.#now() +
      Math.min(COOLDOWN_BASE_MS * 2 ** (state.failures - 1), MAX_COOLDOWN_MS);
    state.error = error;
    this.#states.set(url, state);
  }

  /** `url` answered: its cooldown ends. */
  markUp(url: string) {
    this.#states.delete(url);
  }

  /** Milliseconds of cooldown left (0 when healthy). */
  cooldownMs(url: string): number {
    const state = this.#states.get(url);
    return state ? Math.max(0, state.until - this.#now()) : 0;
  }

  /** The failure that started the current cooldown, if any. */
  lastError(url: string): BridgeError | undefined {
    return this.cooldownMs(url) > 0 ? this.#states.get(url)?.error : undefined;
  }
}
