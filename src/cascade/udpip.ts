/**
 * IPv4/IPv6 + UDP packets, built and parsed: each layer of a cascade carries the next layer's
 * WireGuard datagram as a UDP payload inside an IP packet (client to relay), and a relay
 * wraps replies the same way. Checksums are computed (mandatory for UDP over IPv6).
 */
export interface UdpPacket {
  readonly family: 4 | 6;
  readonly src: Uint8Array; // 4 or 16 bytes
  readonly dst: Uint8Array;
  readonly srcPort: number;
  readonly dstPort: number;
  readonly payload: Uint8Array;
}

const UDP = 17;

function sum16(b: Uint8Array, start: number, end: number, acc: number): number {
  let s = acc;
  let i = start;
  for (; i + 1 < end; i += 2) s += (b[i]! << 8) | b[i + 1]!;
  if (i < end) s += b[i]! << 8;
  return s;
}

function fold(s: number): number {
  while (s > 0xffff) s = (s & 0xffff) + Math.floor(s / 0x10000);
  return s;
}

/**
 * Builds an IP packet carrying one UDP datagram. Over IPv4 the UDP checksum may be left out
 * (RFC 768: zero means none): a cascade's layers carry WireGuard messages, authenticated
 * already, so `udpChecksum: false` saves summing every payload byte once per layer. Over IPv6
 * the checksum is mandatory and always computed.
 */
export function buildUdp(p: UdpPacket, options: { udpChecksum?: boolean } = {}): Uint8Array {
  const udpLen = 8 + p.payload.length;
  const v4 = p.family === 4;
  const ipLen = v4 ? 20 : 40;
  const out = new Uint8Array(ipLen + udpLen);
  if (v4) {
    out[0] = 0x45;
    out[2] = (ipLen + udpLen) >> 8;
    out[3] = (ipLen + udpLen) & 0xff;
    out[6] = 0x40; // don't fragment: path MTU discovery works through the layers
    out[8] = 64;
    out[9] = UDP;
    out.set(p.src, 12);
    out.set(p.dst, 16);
    const c = ~fold(sum16(out, 0, 20, 0)) & 0xffff;
    out[10] = c >> 8;
    out[11] = c & 0xff;
  } else {
    out[0] = 0x60;
    out[4] = udpLen >> 8;
    out[5] = udpLen & 0xff;
    out[6] = UDP;
    out[7] = 64;
    out.set(p.src, 8);
    out.set(p.dst, 24);
  }
  const u = ipLen;
  out[u] = p.srcPort >> 8;
  out[u + 1] = p.srcPort & 0xff;
  out[u + 2] = p.dstPort >> 8;
  out[u + 3] = p.dstPort & 0xff;
  out[u + 4] = udpLen >> 8;
  out[u + 5] = udpLen & 0xff;
  out.set(p.payload, u + 8);
  if (v4 && options.udpChecksum === false) return out;
  // Pseudo-header: addresses, protocol, UDP length.
  let s = sum16(p.src, 0, p.src.length, 0);
  s = sum16(p.dst, 0, p.dst.length, s);
  s += UDP + udpLen;
  s = sum16(out, u, u + udpLen, s);
  let c = ~fold(s) & 0xffff;
  if (c === 0) c = 0xffff;
  out[u + 6] = c >> 8;
  out[u + 7] = c & 0xff;
  return out;
}

/**
 * Parses an IP packet that carries a UDP datagram; null for anything else (other protocols,
 * fragments, IPv4 options are allowed, IPv6 extension headers are not). The payload is a view.
 */
export function parseUdp(packet: Uint8Array): UdpPacket | null {
  if (packet.length < 1) return null;
  const v = packet[0]! >> 4;
  let u: number;
  let total: number;
  let src: Uint8Array;
  let dst: Uint8Array;
  if (v === 4) {
    if (packet.length < 20) return null;
    const ihl = (packet[0]! & 0x0f) * 4;
    total = (packet[2]! << 8) | packet[3]!;
    if (ihl < 20 || total > packet.length || total < ihl + 8 || packet[9] !== UDP) return null;
    if (((packet[6]! & 0x3f) | packet[7]!) !== 0) return null; // a fragment (MF set or an offset)
    u = ihl;
    src = packet.subarray(12, 16);
    dst = packet.subarray(16, 20);
  } else if (v === 6) {
    if (packet.length < 48 || packet[6] !== UDP) return null;
    total = 40 + ((packet[4]! << 8) | packet[5]!);
    if (total > packet.length) return null;
    u = 40;
    src = packet.subarray(8, 24);
    dst = packet.subarray(24, 40);
  } else return null;
  const udpLen = (packet[u + 4]! << 8) | packet[u + 5]!;
  if (udpLen < 8 || u + udpLen > total) return null;
  return {
    family: v === 4 ? 4 : 6,
    src,
    dst,
    srcPort: (packet[u]! << 8) | packet[u + 1]!,
    dstPort: (packet[u + 2]! << 8) | packet[u + 3]!,
    payload: packet.subarray(u + 8, u + udpLen),
  };
}
