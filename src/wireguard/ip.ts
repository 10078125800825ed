/**
 * IP addresses as bytes, without Node's networking modules (the core must not import them):
 * parsing of textual IPv4/IPv6 addresses and CIDR prefixes, and formatting back.
 */
export type IpBytes = Uint8Array; // 4 or 16 bytes

export function parseIPv4(text: string): IpBytes | null {
  const parts = text.split('.');
  if (parts.length !== 4) return null;
  const out = new Uint8Array(4);
  for (let i = 0; i < 4; i++) {
    const p = parts[i]!;
    if (!/^(0|[1-9][0-9]{0,2})$/.test(p)) return null;
    const v = Number(p);
    if (v > 255) return null;
    out[i] = v;
  }
  return out;
}

export function parseIPv6(text: string): IpBytes | null {
  let t = text;
  const zone = t.indexOf('%');
  if (zone >= 0) {
    if (zone === t.length - 1) return null; // an empty zone
    t = t.slice(0, zone);
  }
  const halves = t.split('::');
  if (halves.length > 2) return null;
  // A dotted IPv4 tail is allowed only as the last 32 bits of the whole address.
  const groups = (s: string, last: boolean): number[] | null => {
    if (s === '') return [];
    const out: number[] = [];
    const parts = s.split(':');
    for (let i = 0; i < parts.length; i++) {
      const p = parts[i]!;
      if (last && i === parts.length - 1 && p.includes('.')) {
        const v4 = parseIPv4(p);
        if (v4 === null) return null;
        out.push((v4[0]! << 8) | v4[1]!, (v4[2]! << 8) | v4[3]!);
      } else {
        if (!/^[0-9a-fA-F]{1,4}$/.test(p)) return null;
        out.push(parseInt(p, 16));
      }
    }
    return out;
  };
  const head = groups(halves[0]!, halves.length === 1);
  const tail = halves.length === 2 ? groups(halves[1]!, true) : [];
  if (head === null || tail === null) return null;
  const fill = 8 - head.length - tail.length;
  if (halves.length === 2 ? fill < 1 : fill !== 0) return null;
  const all = [...head, ...new Array<number>(halves.length === 2 ? fill : 0).fill(0), ...tail];
  const out = new Uint8Array(16);
  all.forEach((g, i) => {
    out[2 * i] = g >> 8;
    out[2 * i + 1] = g & 0xff;
  });
  return out;
}

export function parseIP(text: string): IpBytes | null {
  return text.includes(':') ? parseIPv6(text) : parseIPv4(text);
}

export function formatIP(b: IpBytes): string {
  if (b.length === 4) return `${b[0]}.${b[1]}.${b[2]}.${b[3]}`;
  // IPv4-mapped addresses print with a dotted tail, as wg and wireguard-go print them.
  if (b.subarray(0, 10).every((x) => x === 0) && b[10] === 0xff && b[11] === 0xff) {
    return `::ffff:${b[12]}.${b[13]}.${b[14]}.${b[15]}`;
  }
  const g: number[] = [];
  for (let i = 0; i < 16; i += 2) g.push((b[i]! << 8) | b[i + 1]!);
  // Compress the longest run of two or more zero groups (RFC 5952).
  let bestAt = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (g[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && g[j] === 0) j++;
    if (j - i > bestLen) {
      bestAt = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hexes = g.map((x) => x.toString(16));
  if (bestAt < 0) return hexes.join(':');
  return `${hexes.slice(0, bestAt).join(':')}::${hexes.slice(bestAt + bestLen).join(':')}`;
}

export interface Prefix {
  readonly address: IpBytes; // host bits cleared
  readonly bits: number;
}

/** Parses "a.b.c.d/n" or "x::y/n" (a bare address is a host prefix); host bits are cleared. */
export function parsePrefix(text: string): Prefix | null {
  const slash = text.indexOf('/');
  if (text.includes('%')) return null; // a prefix has no zone
  const addr = parseIP(slash < 0 ? text : text.slice(0, slash));
  if (addr === null) return null;
  const max = addr.length * 8;
  let bits = max;
  if (slash >= 0) {
    const b = text.slice(slash + 1);
    if (!/^(0|[1-9][0-9]{0,2})$/.test(b)) return null;
    bits = Number(b);
    if (bits > max) return null;
  }
  return { address: maskTo(addr, bits), bits };
}

export function maskTo(addr: IpBytes, bits: number): IpBytes {
  const out = Uint8Array.from(addr);
  for (let i = 0; i < out.length; i++) {
    const keep = Math.max(0, Math.min(8, bits - i * 8));
    out[i]! &= (0xff << (8 - keep)) & 0xff;
  }
  return out;
}

export function formatPrefix(p: Prefix): string {
  return `${formatIP(p.address)}/${p.bits}`;
}
