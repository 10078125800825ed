/**
 * The inner addresses a client uses at each hop, derived from that hop's fresh public key, so
 * relay and client agree without negotiation and no two hops see the same address: IPv4 in
 * 100.64.0.0/10 (shared address space) and IPv6 in fd53:7472:6174::/48 (a ULA, "Strata").
 */
import { hash } from '../crypto/blake2s.ts';
import type { PublicKey } from '../crypto/keys.ts';
import { formatIP } from '../wireguard/ip.ts';

const LABEL = new TextEncoder().encode('strata hop address v1');
export const HOP_PREFIX_V4 = '100.64.0.0/10';
export const HOP_PREFIX_V6 = 'fd53:7472:6174::/48';
/** A relay's own address on its exit TUN (never derived for a client: host part 1). */
export const EXIT_GATEWAY_V4 = '100.64.0.1';
export const EXIT_GATEWAY_V6 = 'fd53:7472:6174::1';

export interface HopAddresses {
  readonly v4: Uint8Array;
  readonly v6: Uint8Array;
  readonly v4Text: string;
  readonly v6Text: string;
}

export function hopAddresses(key: PublicKey): HopAddresses {
  const h = hash(LABEL, key.raw());
  // 22 host bits in 100.64.0.0/10, avoiding .0.0.0, .0.0.1 (the gateway) and the broadcast.
  let host = ((h[0]! << 14) | (h[1]! << 6) | (h[2]! >> 2)) & 0x3fffff;
  if (host < 2) host += 2;
  if (host === 0x3fffff) host -= 1;
  const n = (100 << 24) + (64 << 16) + host;
  const v4 = Uint8Array.of((n >>> 24) & 0xff, (n >>> 16) & 0xff, (n >>> 8) & 0xff, n & 0xff);
  const v6 = new Uint8Array(16);
  v6.set([0xfd, 0x53, 0x74, 0x72, 0x61, 0x74]);
  v6.set(h.subarray(8, 18), 6);
  if (v6.subarray(6).every((b) => b === 0)) v6[15] = 2;
  return { v4, v6, v4Text: formatIP(v4), v6Text: formatIP(v6) };
}
