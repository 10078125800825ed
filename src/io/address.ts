/** An endpoint's address as bytes (4 or 16, zone dropped), parsed once per endpoint object. */
import { parseIPv4, parseIPv6 } from '../wireguard/ip.ts';
import type { UdpEndpoint } from './types.ts';

// Binds hand out one endpoint object per sender, so the cache holds one entry per peer.
const cache = new WeakMap<UdpEndpoint, Uint8Array | null>();

export function endpointAddressBytes(e: UdpEndpoint): Uint8Array | null {
  let b = cache.get(e);
  if (b === undefined) {
    const a = e.address;
    const pct = a.indexOf('%');
    const text = pct < 0 ? a : a.slice(0, pct);
    b = e.family === 'IPv4' ? parseIPv4(text) : parseIPv6(text);
    cache.set(e, b);
  }
  return b;
}
