/** Endpoints as UAPI writes them: "a.b.c.d:port" or "[v6]:port". */
import { formatIP, parseIPv4, parseIPv6 } from '../wireguard/ip.ts';
import type { UdpEndpoint } from '../io/types.ts';

export function parseEndpoint(text: string): UdpEndpoint | null {
  let host: string;
  let portText: string;
  if (text.startsWith('[')) {
    const close = text.indexOf(']');
    if (close < 0 || text[close + 1] !== ':') return null;
    host = text.slice(1, close);
    portText = text.slice(close + 2);
  } else {
    const colon = text.lastIndexOf(':');
    if (colon < 0) return null;
    host = text.slice(0, colon);
    portText = text.slice(colon + 1);
  }
  if (!/^[0-9]{1,5}$/.test(portText)) return null;
  const port = Number(portText);
  if (port > 65535) return null;
  if (text.startsWith('[')) {
    const zone = host.indexOf('%');
    const bytes = parseIPv6(zone < 0 ? host : host.slice(0, zone));
    if (bytes === null) return null;
    // An IPv4-mapped address is an IPv4 endpoint.
    if (bytes.subarray(0, 10).every((b) => b === 0) && bytes[10] === 0xff && bytes[11] === 0xff) {
      return { address: formatIP(bytes.subarray(12)), port, family: 'IPv4' };
    }
    return { address: formatIP(bytes) + (zone < 0 ? '' : host.slice(zone)), port, family: 'IPv6' };
  }
  const v4 = parseIPv4(host);
  if (v4 === null) return null;
  return { address: formatIP(v4), port, family: 'IPv4' };
}

export function formatEndpoint(e: UdpEndpoint): string {
  return e.family === 'IPv6' ? `[${e.address}]:${e.port}` : `${e.address}:${e.port}`;
}
