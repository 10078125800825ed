/**
 * An in-memory two-peer network for the sans-I/O core: a fake clock, a wire with optional
 * latency, and packet builders. Used by the protocol tests and the core benchmark.
 */
import { PresharedKey, PrivateKey } from '../src/crypto/keys.ts';
import { WireGuard, type CoreOptions, type Outgoing, type ReceiveResult } from '../src/wireguard/core.ts';
import type { Endpoint, Peer } from '../src/wireguard/peer.ts';
import { parseIP } from '../src/wireguard/ip.ts';

export interface Node {
  name: 'a' | 'b';
  core: WireGuard<Endpoint>;
  endpoint: Endpoint;
  peer: Peer<Endpoint>; // the other side, as this node sees it
  delivered: Uint8Array[];
  results: ReceiveResult<Endpoint>[];
}

interface InFlight {
  to: Node;
  from: Endpoint;
  datagram: Uint8Array;
  at: number;
}

export class Pair {
  now = 1_000;
  latency: number;
  readonly a: Node;
  readonly b: Node;
  readonly wire: InFlight[] = [];
  /** Every datagram put on the wire, in order, with its direction. */
  readonly log: { from: 'a' | 'b'; datagram: Uint8Array; at: number }[] = [];
  /** When set, datagrams for that node are discarded instead of delivered. */
  blackhole: Partial<Record<'a' | 'b', boolean>> = {};

  constructor(opts: { latency?: number; psk?: boolean; bOptions?: CoreOptions } = {}) {
    this.latency = opts.latency ?? 0;
    const ka = PrivateKey.generate();
    const kb = PrivateKey.generate();
    const ca = new WireGuard<Endpoint>({ privateKey: ka, epochMs: 1_700_000_000_000 });
    const cb = new WireGuard<Endpoint>({ privateKey: kb, epochMs: 1_700_000_000_000, ...(opts.bOptions ?? {}) });
    const ea = { address: '192.0.2.1', port: 51820 };
    const eb = { address: '192.0.2.2', port: 51821 };
    const psk = opts.psk ? PresharedKey.generate() : PresharedKey.zero();
    const pa = ca.addPeer(kb.publicKey(), { endpoint: eb, allowedIPs: ['10.0.0.2/32', 'fd00::2/128'], presharedKey: new PresharedKey(psk.raw()) });
    const pb = cb.addPeer(ka.publicKey(), { endpoint: ea, allowedIPs: ['10.0.0.1/32', 'fd00::1/128'], presharedKey: new PresharedKey(psk.raw()) });
    this.a = { name: 'a', core: ca, endpoint: ea, peer: pa, delivered: [], results: [] };
    this.b = { name: 'b', core: cb, endpoint: eb, peer: pb, delivered: [], results: [] };
  }

  other(n: Node): Node {
    return n === this.a ? this.b : this.a;
  }

  /** Puts datagrams from `from` on the wire towards the other node. */
  emit(from: Node, out: readonly Outgoing<Endpoint>[]): void {
    const to = this.other(from);
    for (const o of out) {
      this.log.push({ from: from.name, datagram: o.datagram, at: this.now });
      this.wire.push({ to, from: from.endpoint, datagram: o.datagram, at: this.now + this.latency });
    }
  }

  /** Sends an IP packet from a node through its core. */
  send(from: Node, packet: Uint8Array): ReturnType<WireGuard<Endpoint>['send']> {
    const r = from.core.send(packet, this.now);
    if (r.kind !== 'drop') this.emit(from, r.out);
    return r;
  }

  /** Delivers everything due by `now`, including replies they cause, until the wire is quiet. */
  flush(): void {
    for (;;) {
      const i = this.wire.findIndex((f) => f.at <= this.now);
      if (i < 0) return;
      const f = this.wire.splice(i, 1)[0]!;
      if (this.blackhole[f.to.name]) continue;
      this.receive(f.to, f.datagram, f.from);
    }
  }

  receive(to: Node, datagram: Uint8Array, from: Endpoint): ReceiveResult<Endpoint> {
    const r = to.core.receive(datagram, from, this.now);
    to.results.push(r);
    if (r.kind === 'deliver') to.delivered.push(r.packet);
    this.emit(to, r.out);
    return r;
  }

  /** Advances the clock to `t` in steps, running timers and delivering as it goes. */
  advanceTo(t: number, step = 10): void {
    while (this.now < t) {
      this.now = Math.min(t, this.now + step);
      this.flush();
      for (const n of [this.a, this.b]) this.emit(n, n.core.tick(this.now));
      this.flush();
    }
  }

  /** Brings a session up with A as initiator and returns once both sides have a current key. */
  handshake(initiator: Node = this.a): void {
    this.send(initiator, ipv4(addrOf(initiator), addrOf(this.other(initiator)), new Uint8Array(8)));
    this.flush();
  }
}

export function addrOf(n: Node): string {
  return n.name === 'a' ? '10.0.0.1' : '10.0.0.2';
}

/** A minimal IPv4 packet (no checksum): header + payload with the right total length. */
export function ipv4(src: string, dst: string, payload: Uint8Array, proto = 17): Uint8Array {
  const p = new Uint8Array(20 + payload.length);
  p[0] = 0x45;
  p[2] = p.length >> 8;
  p[3] = p.length & 0xff;
  p[8] = 64;
  p[9] = proto;
  p.set(parseIP(src)!, 12);
  p.set(parseIP(dst)!, 16);
  p.set(payload, 20);
  return p;
}

export function ipv6(src: string, dst: string, payload: Uint8Array, next = 17): Uint8Array {
  const p = new Uint8Array(40 + payload.length);
  p[0] = 0x60;
  p[4] = payload.length >> 8;
  p[5] = payload.length & 0xff;
  p[6] = next;
  p[7] = 64;
  p.set(parseIP(src)!, 8);
  p.set(parseIP(dst)!, 24);
  p.set(payload, 40);
  return p;
}

/** A packet carrying a sequence number, to check that each arrives exactly once. */
export function numbered(src: string, dst: string, seq: number, size = 64): Uint8Array {
  const payload = new Uint8Array(size);
  new DataView(payload.buffer).setUint32(0, seq);
  return ipv4(src, dst, payload);
}

export function seqOf(packet: Uint8Array): number {
  return new DataView(packet.buffer, packet.byteOffset + 20).getUint32(0);
}
