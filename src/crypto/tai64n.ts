/**
 * TAI64N timestamps (12 bytes: big-endian seconds + 2^62 + 10, then nanoseconds), as
 * WireGuard puts in a handshake initiation. The caller supplies wall-clock time (the core reads
 * no clock); nanoseconds are rounded down to a 2^24 ns step as wireguard-go does, so the
 * timestamp reveals no fine-grained timing.
 */
export const TAI64N_LEN = 12;
const BASE = (1n << 62n) + 10n;
/** wireguard-go rounds nanoseconds down to a multiple of this, so a timestamp leaks no fine timing. */
export const WHITENER_NS = 0x1000000;

/** Encodes Unix time given in milliseconds (may be fractional) as TAI64N. */
export function encode(unixMs: number): Uint8Array {
  const secs = Math.floor(unixMs / 1000);
  let nanos = Math.floor((unixMs - secs * 1000) * 1e6);
  nanos -= nanos % WHITENER_NS;
  const out = new Uint8Array(TAI64N_LEN);
  const v = new DataView(out.buffer);
  v.setBigUint64(0, BASE + BigInt(secs));
  v.setUint32(8, nanos);
  return out;
}

/** True when a is strictly after b (both TAI64N, compared as big-endian integers). */
export function after(a: Uint8Array, b: Uint8Array): boolean {
  for (let i = 0; i < TAI64N_LEN; i++) {
    if (a[i]! !== b[i]!) return a[i]! > b[i]!;
  }
  return false;
}
