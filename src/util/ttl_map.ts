/**
 * The one cache helper: a Map with per-entry expiry, an LRU size bound and single-flight
 * loading. It keeps no timer, so memory stays flat without background work.
 */

import { abortToError } from "./errors.ts";

/** Options of {@linkcode TtlMap}. */
export interface TtlMapOptions {
  /** Default time to live of an entry, ms (`Infinity`: never expires). */
  ttlMs: number;
  /** Most entries kept; the least recently used goes first. */
  maxSize: number;
  /** Clock in ms. Default: `performance.now` (monotonic). */
  now?: () => number;
}

interface Entry<V> {
  value: V;
  expiresAt: number;
}

interface Flight<V> {
  promise: Promise<V>;
  controller: AbortController;
  waiters: number;
  settled: boolean;
}

/**
 * A Map with per-entry expiry and a size bound (least recently used evicted first).
 *
 * Keeps no timer: expiry is checked lazily on access, and expired entries are swept on
 * `set` at most once per `size` sets, and only when one may have expired (amortised O(1)).
 * `size`, `stats()` and `entries()` sweep first when needed, so they count live entries
 * only.
 *
 * @example
 * const models = new TtlMap<string, Model[]>({ ttlMs: 30_000, maxSize: 64 });
 * const list = await models.getOrLoad(backendUrl, (signal) => fetchModels(backendUrl, signal), { signal });
 */
export class TtlMap<K, V> {
  readonly #ttlMs: number;
  readonly #maxSize: number;
  readonly #now: () => number;
  /** Iteration order is recency order: first = least recently used. */
  readonly #map = new Map<K, Entry<V>>();
  readonly #flights = new Map<K, Flight<V>>();
  /** A lower bound of the earliest expiry among the entries. */
  #nextExpiry = Infinity;
  #setsSinceSweep = 0;
  #hits = 0;
  #misses = 0;
  #evictions = 0;

  /** @throws RangeError for a negative or NaN `maxSize` or `ttlMs`. */
  constructor(options: TtlMapOptions) {
    if (!(options.maxSize >= 0)) throw new RangeError(`invalid maxSize ${options.maxSize}`);
    if (!(options.ttlMs >= 0)) throw new RangeError(`invalid ttlMs ${options.ttlMs}`);
    this.#ttlMs = options.ttlMs;
    this.#maxSize = options.maxSize;
    this.#now = options.now ?? (() => performance.now());
  }

  /** The fresh value for `key`, or undefined. Refreshes recency, not expiry. */
  get(key: K): V | undefined {
    const entry = this.#live(key);
    if (!entry) {
      this.#misses++;
      return undefined;
    }
    this.#hits++;
    this.#map.delete(key);
    this.#map.set(key, entry);
    return entry.value;
  }

  /** Whether `key` holds a fresh value (touches neither recency nor counters). */
  has(key: K): boolean {
    return this.#live(key) !== undefined;
  }

  /** Stores `value` for `ttlMs` (default: the map's ttl), evicting the LRU entry if full. */
  set(key: K, value: V, ttlMs: number = this.#ttlMs): this {
    const now = this.#now();
    const expiresAt = now + ttlMs;
    this.#map.delete(key);
    this.#map.set(key, { value, expiresAt });
    if (expiresAt < this.#nextExpiry) this.#nextExpiry = expiresAt;
    if (++this.#setsSinceSweep >= this.#map.size) this.#sweepIfDue(now);
    while (this.#map.size > this.#maxSize) {
      const [oldest, entry] = this.#map.entries().next().value as [K, Entry<V>];
      this.#map.delete(oldest);
      if (entry.expiresAt > now) this.#evictions++;
    }
    return this;
  }

  /** Removes `key`. A load in flight for it is detached: its result will not be cached. */
  delete(key: K): boolean {
    this.#flights.delete(key);
    const entry = this.#map.get(key);
    if (!entry) return false;
    this.#map.delete(key);
    return entry.expiresAt > this.#now();
  }

  /** Removes every entry and detaches loads in flight; counters are kept. */
  clear(): void {
    this.#map.clear();
    this.#flights.clear();
    this.#nextExpiry = Infinity;
    this.#setsSinceSweep = 0;
  }

  /** Number of live entries. */
  get size(): number {
    this.#sweepIfDue(this.#now());
    return this.#map.size;
  }

  /** The size bound. */
  get maxSize(): number {
    return this.#maxSize;
  }

  /** A snapshot of the live entries, least recently used first. */
  entries(): IterableIterator<[K, V]> {
    const now = this.#now();
    this.#sweepIfDue(now);
    const live: [K, V][] = [];
    for (const [key, entry] of this.#map) {
      if (entry.expiresAt > now) live.push([key, entry.value]);
    }
    return live.values();
  }

  /**
   * Single flight: a fresh value is returned at once; on a miss, concurrent callers for
   * one key share one `load` call, whose value is then cached (for `ttlMs` of the caller
   * that started it). A failed load is not cached and rejects every waiter.
   *
   * A caller's `signal` abort rejects that caller only, with `abortToError(signal.reason)`;
   * the signal given to `load` aborts only when every waiter has gone (the next caller then
   * starts a new load).
   */
  getOrLoad(
    key: K,
    load: (signal: AbortSignal) => Promise<V>,
    options: { signal?: AbortSignal; ttlMs?: number } = {},
  ): Promise<V> {
    const { signal } = options;
    if (signal?.aborted) return Promise.reject(abortToError(signal.reason));
    const entry = this.#live(key);
    if (entry) {
      this.#hits++;
      this.#map.delete(key);
      this.#map.set(key, entry);
      return Promise.resolve(entry.value);
    }
    this.#misses++;
    let flight = this.#flights.get(key);
    if (!flight) flight = this.#startFlight(key, load, options.ttlMs);
    return this.#wait(key, flight, signal);
  }

  /** Counters for bridge_stats. Evictions count LRU evictions of live entries only. */
  stats(): { size: number; maxSize: number; hits: number; misses: number; evictions: number } {
    return {
      size: this.size,
      maxSize: this.#maxSize,
      hits: this.#hits,
      misses: this.#misses,
      evictions: this.#evictions,
    };
  }

  #startFlight(
    key: K,
    load: (signal: AbortSignal) => Promise<V>,
    ttlMs: number | undefined,
  ): Flight<V> {
    const controller = new AbortController();
    let started: Promise<V>;
    try {
      started = Promise.resolve(load(controller.signal));
    } catch (err) {
      started = Promise.reject(err);
    }
    const flight: Flight<V> = {
      controller,
      waiters: 0,
      settled: false,
      promise: started.then(
        (value) => {
          flight.settled = true;
          if (this.#flights.get(key) === flight) {
            this.#flights.delete(key);
            this.set(key, value, ttlMs);
          }
          return value;
        },
        (err) => {
          flight.settled = true;
          if (this.#flights.get(key) === flight) this.#flights.delete(key);
          throw err;
        },
      ),
    };
    // Waiters that left have handlers that no longer matter; keep a rejection handled.
    flight.promise.catch(() => {});
    this.#flights.set(key, flight);
    return flight;
  }

  #wait(key: K, flight: Flight<V>, signal: AbortSignal | undefined): Promise<V> {
    flight.waiters++;
    if (!signal) return flight.promise;
    return new Promise<V>((resolve, reject) => {
      const onAbort = () => {
        reject(abortToError(signal.reason));
        if (--flight.waiters === 0 && !flight.settled) {
          if (this.#flights.get(key) === flight) this.#flights.delete(key);
          flight.controller.abort(signal.reason);
        }
      };
      signal.addEventListener("abort", onAbort, { once: true });
      flight.promise.then(
        (value) => {
          signal.removeEventListener("abort", onAbort);
          resolve(value);
        },
        (err) => {
          signal.removeEventListener("abort", onAbort);
          reject(err);
        },
      );
    });
  }

  /** The entry for `key` if fresh; an expired one is dropped. */
  #live(key: K): Entry<V> | undefined {
    const entry = this.#map.get(key);
    if (!entry) return undefined;
    if (entry.expiresAt > this.#now()) return entry;
    this.#map.delete(key);
    return undefined;
  }

  #sweepIfDue(now: number): void {
    if (now < this.#nextExpiry) return;
    let next = Infinity;
    for (const [key, entry] of this.#map) {
      if (entry.expiresAt <= now) this.#map.delete(key);
      else if (entry.expiresAt < next) next = entry.expiresAt;
    }
    this.#nextExpiry = next;
    this.#setsSinceSweep = 0;
  }
}
