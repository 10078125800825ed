/**
 * The anti-replay window of RFC 6479 as the kernel and wireguard-go run it: a ring of 8192
 * bits, of which 8128 (the ring less one 64-bit word) form the window behind the highest
 * counter seen. Counters are u64 and handled as bigint.
 */
import { REPLAY_COUNTER_BITS, REPLAY_WINDOW } from './constants.ts';

const BLOCK_BITS = 32n; // one Uint32Array element
const BLOCK_LOG = 5n;
const RING_BLOCKS = REPLAY_COUNTER_BITS / 32; // 256
const RING_MASK = BigInt(RING_BLOCKS - 1);
const WINDOW = BigInt(REPLAY_WINDOW);

export class ReplayFilter {
  /** The highest counter seen, and the ring: memory a relay's native fast path shares. */
  readonly last = new BigUint64Array(1);
  readonly ring = new Uint32Array(RING_BLOCKS);

  reset(): void {
    this.last[0] = 0n;
    this.ring.fill(0);
  }

  /**
   * Accepts `counter` once: false if it is at or over `limit`, too far behind the newest
   * counter, or already seen. Call only after the packet has been authenticated.
   */
  validate(counter: bigint, limit: bigint): boolean {
    if (counter >= limit) return false;
    let block = counter >> BLOCK_LOG;
    const last = this.last[0]!;
    if (counter > last) {
      const current = last >> BLOCK_LOG;
      let diff = block - current;
      if (diff > BigInt(RING_BLOCKS)) diff = BigInt(RING_BLOCKS);
      const n = Number(diff);
      let i = Number((current + 1n) & RING_MASK);
      for (let k = 0; k < n; k++) {
        this.ring[i] = 0;
        i = (i + 1) & (RING_BLOCKS - 1);
      }
      this.last[0] = counter;
    } else if (last - counter > WINDOW) {
      return false;
    }
    const index = Number(block & RING_MASK);
    const bit = 1 << Number(counter & (BLOCK_BITS - 1n));
    const old = this.ring[index]!;
    if ((old & bit) !== 0) return false;
    this.ring[index] = old | bit;
    return true;
  }
}
