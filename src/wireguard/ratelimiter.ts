/**
 * Per-source token bucket for handshake messages under load (wireguard-go's ratelimiter):
 * 20 per second with a burst of 5, keyed by source IP (IPv6 by its /64). Entries idle for a
 * second are forgotten, and the table is bounded so a flood of sources cannot grow it without
 * limit. Time comes from the caller.
 */
import { RATELIMIT_PACKETS_BURSTABLE, RATELIMIT_PACKETS_PER_SECOND } from './constants.ts';

const COST = 1000 / RATELIMIT_PACKETS_PER_SECOND; // ms of tokens per packet
const MAX_TOKENS = COST * RATELIMIT_PACKETS_BURSTABLE;
const IDLE_FORGET = 1000;
const MAX_ENTRIES = 65536;

interface Bucket {
  tokens: number;
  last: number;
}

export class RateLimiter {
  readonly #table = new Map<string, Bucket>();
  #lastSweep = -Infinity;

  /** `source` is the key for one sender: an IPv4 address, or an IPv6 /64 prefix. */
  allow(source: string, now: number): boolean {
    if (now - this.#lastSweep >= IDLE_FORGET) this.#sweep(now);
    const b = this.#table.get(source);
    if (b === undefined) {
      if (this.#table.size >= MAX_ENTRIES) return false;
      this.#table.set(source, { tokens: MAX_TOKENS - COST, last: now });
      return true;
    }
    b.tokens = Math.min(MAX_TOKENS, b.tokens + (now - b.last));
    b.last = now;
    if (b.tokens >= COST) {
      b.tokens -= COST;
      return true;
    }
    return false;
  }

  get size(): number {
    return this.#table.size;
  }

  #sweep(now: number): void {
    this.#lastSweep = now;
    for (const [k, b] of this.#table) if (now - b.last > IDLE_FORGET) this.#table.delete(k);
  }
}
