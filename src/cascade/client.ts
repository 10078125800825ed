/**
 * The client side of a cascade, sans-I/O: one WireGuard session per hop, each with a fresh
 * X25519 key made for this connection, nested so that hop k's datagrams travel as UDP inside
 * hop k-1's tunnel. Only hop 0's datagrams reach the network; only the last hop (the exit)
 * carries the user's packets.
 *
 *   TUN packet ─► hop N-1 seal ─► IP/UDP to relay N-1 ─► hop N-2 seal ─► … ─► hop 0 ─► UDP out
 *
 * Each relay sees its own hop's key and the client's address for that hop (derived from that
 * key), so no two relays share an identifier of the client.
 */
import { randomInt } from 'node:crypto';
import { PrivateKey } from '../crypto/keys.ts';
import { StrataError } from '../crypto/errors.ts';
import { WireGuard, type Outgoing } from '../wireguard/core.ts';
import { parseIP } from '../wireguard/ip.ts';
import type { Peer } from '../wireguard/peer.ts';
import type { UdpEndpoint } from '../io/types.ts';
import { hopAddresses, type HopAddresses } from './addresses.ts';
import type { Relay } from './relaylist.ts';
import { buildUdp, parseUdp } from './udpip.ts';

/** Bytes each layer adds: WireGuard's 32 plus the IP and UDP headers that carry it. */
export const LAYER_OVERHEAD = { IPv4: 32 + 20 + 8, IPv6: 32 + 40 + 8 } as const;
const IP_UDP = { IPv4: 28, IPv6: 48 } as const;

const pad16 = (n: number): number => (n + 15) & ~15;
const NO_UDP_CHECKSUM = { udpChecksum: false } as const;

/**
 * The largest inner packet for a path whose layers use these families (outermost first), and
 * each layer's largest plaintext. Relays pad what they seal to a multiple of 16 (they cannot
 * know the client's sizes), so every layer is sized as if padded: the outermost datagram then
 * fits PATH_MTU in both directions, with no fragmentation. The tunnel MTU is a multiple of 16.
 */
export function layerSizes(families: readonly ('IPv4' | 'IPv6')[]): { tunMtu: number; plaintext: number[] } {
  const grow = (t: number): number[] => {
    // plaintext[k] for k = N-1 (the exit) down to 0, then the outer IP packet.
    const sizes = new Array<number>(families.length);
    let p = t;
    for (let k = families.length - 1; k >= 0; k--) {
      sizes[k] = pad16(p);
      p = sizes[k]! + 32 + IP_UDP[families[k]!];
    }
    sizes.push(p);
    return sizes;
  };
  let t = (PATH_MTU - IP_UDP[families[0]!] - 32) & ~15;
  while (grow(t).at(-1)! > PATH_MTU) t -= 16;
  const sizes = grow(t);
  return { tunMtu: t, plaintext: sizes.slice(0, families.length) };
}
export const PATH_MTU = 1500;
export const MAX_HOPS = 5;

export interface Hop {
  readonly index: number;
  readonly relay: Relay;
  /** The relay's endpoint this hop talks to (from the relay list). */
  readonly endpoint: UdpEndpoint;
  readonly endpointBytes: Uint8Array;
  readonly core: WireGuard<UdpEndpoint>;
  readonly peer: Peer<UdpEndpoint>;
  /** The client's addresses at this hop (derived from this hop's fresh key). */
  readonly addresses: HopAddresses;
  /** The UDP source port the client uses inside this hop's tunnel. */
  readonly innerPort: number;
}

export type CascadeDrop = 'inner-not-udp' | 'inner-wrong-source' | 'layer-drop';

export interface CascadeOptions {
  epochMs: number;
  /** Chooses which of a relay's endpoints to use; default: the first IPv4 one, else the first. */
  pickEndpoint?: (relay: Relay, index: number) => UdpEndpoint;
  /**
   * Keys for hops whose server knows its clients in advance (a stock WireGuard server), by
   * hop index; every other hop gets a fresh key.
   */
  hopKeys?: ReadonlyMap<number, PrivateKey>;
}

function defaultEndpoint(relay: Relay): UdpEndpoint {
  return relay.endpoints.find((e) => e.family === 'IPv4') ?? relay.endpoints[0]!;
}

export class CascadeEngine {
  readonly hops: Hop[] = [];
  /** The MTU the client's TUN must have so the outermost datagram fits PATH_MTU. */
  readonly tunMtu: number;
  readonly drops = new Map<CascadeDrop, number>();

  readonly #options: CascadeOptions;
  /** Monotonic ms of the last authenticated packet from each hop's relay. */
  readonly lastReceived: number[] = [];
  /** Monotonic ms of the last packet the user sent into the tunnel. */
  lastSent = -Infinity;
  #probeStart = -Infinity;
  #probeBaseline: number[] = [];

  constructor(relays: readonly Relay[], options: CascadeOptions) {
    if (relays.length < 1 || relays.length > MAX_HOPS) {
      throw new StrataError('ERR_HOPS', `a cascade has 1 to ${MAX_HOPS} hops, not ${relays.length}`);
    }
    this.#options = options;
    const pick = options.pickEndpoint ?? defaultEndpoint;
    const endpoints = relays.map((r, i) => pick(r, i));
    const sizes = layerSizes(endpoints.map((e) => e.family));
    relays.forEach((relay, index) => {
      this.hops.push(this.#makeHop(relay, index, endpoints[index]!, endpoints[index + 1] ?? null, sizes.plaintext[index]!, index === relays.length - 1));
      this.lastReceived.push(-Infinity);
    });
    this.tunMtu = sizes.tunMtu;
  }

  #makeHop(relay: Relay, index: number, endpoint: UdpEndpoint, next: UdpEndpoint | null, mtu: number, last: boolean): Hop {
    const given = this.#options.hopKeys?.get(index);
    if (relay.kind === 'wireguard' && given === undefined) {
      throw new StrataError('ERR_HOP_KEY_MISSING', `hop ${index + 1} "${relay.name}" is a stock WireGuard server: give the key it knows (--hop-key ${relay.name}=FILE)`);
    }
    const key = given !== undefined ? new PrivateKey(given.raw()) : PrivateKey.generate();
    const core = new WireGuard<UdpEndpoint>({ privateKey: key, epochMs: this.#options.epochMs, mtu });
    key.wipe();
    // Inside hop k, replies come from the next relay's address; at the exit, from anywhere.
    const allowedIPs = last ? ['0.0.0.0/0', '::/0'] : [hostPrefix(next!)];
    const peer = core.addPeer(relay.publicKey, { endpoint, allowedIPs });
    return {
      index,
      relay,
      endpoint,
      endpointBytes: parseIP(endpoint.address.split('%')[0]!)!,
      core,
      peer,
      addresses: hopAddresses(core.publicKey!),
      innerPort: randomInt(1024, 65536),
    };
  }

  /**
   * Replaces hop k with another relay: a fresh key for that hop alone, the hop below told to
   * accept the new relay's address, and the new hop's handshake started through the layers
   * below. Hops above keep their sessions (their relays see the client roam to the new relay),
   * so connections through the exit survive unless the exit itself is replaced.
   */
  replaceHop(k: number, relay: Relay, now: number): Outgoing<UdpEndpoint>[] {
    const old = this.hops[k]!;
    const pick = this.#options.pickEndpoint ?? defaultEndpoint;
    const endpoint = pick(relay, k);
    const next = this.hops[k + 1]?.endpoint ?? null;
    const hop = this.#makeHop(relay, k, endpoint, next, old.core.mtu, k === this.hops.length - 1);
    this.hops[k] = hop;
    this.lastReceived[k] = -Infinity;
    old.core.removePeer(old.peer);
    old.core.setPrivateKey(null);
    if (k > 0) {
      const below = this.hops[k - 1]!;
      below.core.allowedIPs.removeOwner(below.peer);
      below.core.allowedIPs.insertText(hostPrefix(endpoint), below.peer);
    }
    return this.startHop(k, now);
  }

  /** Starts a handshake on every hop at once; `probeResult` then names the first that failed. */
  probe(now: number): Outgoing<UdpEndpoint>[] {
    this.#probeStart = now;
    this.#probeBaseline = this.hops.map((h) => h.peer.lastHandshakeWallMs);
    const out: Outgoing<UdpEndpoint>[] = [];
    for (let k = 0; k < this.hops.length; k++) {
      const h = this.hops[k]!;
      this.#down(k, h.core.forceHandshake(h.peer, now), now, out);
    }
    return out;
  }

  /** The first hop whose probe handshake has not completed, or -1 when all answered. */
  probeResult(): number {
    for (let k = 0; k < this.hops.length; k++) {
      if (this.hops[k]!.peer.lastHandshakeWallMs === this.#probeBaseline[k]) return k;
    }
    return -1;
  }

  get exit(): Hop {
    return this.hops[this.hops.length - 1]!;
  }

  #count(reason: CascadeDrop): void {
    this.drops.set(reason, (this.drops.get(reason) ?? 0) + 1);
  }

  /**
   * Carries datagrams that hop `level` produced toward its relay: hop 0's go to the network;
   * others are wrapped as IP/UDP and sent through the hop below, recursively.
   */
  #down(level: number, out: readonly Outgoing<UdpEndpoint>[], now: number, acc: Outgoing<UdpEndpoint>[]): Outgoing<UdpEndpoint>[] {
    for (const o of out) {
      if (level === 0) {
        acc.push(o);
        continue;
      }
      const below = this.hops[level - 1]!;
      const target = this.hops[level]!;
      const v4 = target.endpoint.family === 'IPv4';
      const packet = buildUdp({
        family: v4 ? 4 : 6,
        src: v4 ? below.addresses.v4 : below.addresses.v6,
        dst: target.endpointBytes,
        srcPort: below.innerPort,
        dstPort: target.endpoint.port,
        payload: o.datagram,
      }, NO_UDP_CHECKSUM);
      const r = below.core.sendTo(below.peer, packet, now);
      if (r.kind === 'drop') this.#count('layer-drop');
      else this.#down(level - 1, r.out, now, acc);
    }
    return acc;
  }

  /** A packet from the TUN: sealed for the exit and wrapped down to hop 0. */
  send(packet: Uint8Array, now: number): Outgoing<UdpEndpoint>[] {
    // Multicast (IPv6 neighbour discovery, MLD reports the kernel sends on any link) never
    // gets an answer through a cascade: it does not count as the user waiting for a reply.
    if (!isMulticast(packet)) this.lastSent = now;
    const exit = this.exit;
    const r = exit.core.send(packet, now);
    if (r.kind === 'drop') return [];
    return this.#down(exit.index, r.out, now, []);
  }

  /** A datagram from the network (from the entry relay): peeled layer by layer. */
  receive(datagram: Uint8Array, from: UdpEndpoint, now: number): { deliver: Uint8Array | null; out: Outgoing<UdpEndpoint>[] } {
    const out: Outgoing<UdpEndpoint>[] = [];
    let d = datagram;
    let src = from;
    for (let level = 0; ; level++) {
      const hop = this.hops[level]!;
      const r = hop.core.receive(d, src, now);
      this.#down(level, r.out, now, out);
      if (r.kind !== 'drop') this.lastReceived[level] = now;
      if (r.kind !== 'deliver') return { deliver: null, out };
      if (level === this.hops.length - 1) return { deliver: r.packet, out };
      const u = parseUdp(r.packet);
      if (u === null) {
        this.#count('inner-not-udp');
        return { deliver: null, out };
      }
      const next = this.hops[level + 1]!;
      if (u.srcPort !== next.endpoint.port || !sameBytes(u.src, next.endpointBytes) || u.dstPort !== hop.innerPort) {
        this.#count('inner-wrong-source');
        return { deliver: null, out };
      }
      d = u.payload;
      src = next.endpoint;
    }
  }

  /** Starts hop k's handshake (through the hops below, which must be up). */
  startHop(k: number, now: number): Outgoing<UdpEndpoint>[] {
    const hop = this.hops[k]!;
    return this.#down(k, hop.core.sendKeepalive(hop.peer, now), now, []);
  }

  hopUp(k: number): boolean {
    return this.hops[k]!.peer.current !== null;
  }

  tick(now: number): Outgoing<UdpEndpoint>[] {
    const acc: Outgoing<UdpEndpoint>[] = [];
    for (let k = 0; k < this.hops.length; k++) this.#down(k, this.hops[k]!.core.tick(now), now, acc);
    return acc;
  }

  get wakeHint(): number {
    let w = Infinity;
    for (const h of this.hops) w = Math.min(w, h.core.wakeHint);
    return w;
  }

  resetWakeHint(): void {
    for (const h of this.hops) h.core.resetWakeHint();
  }

  /** Wipes every hop's keys. */
  close(): void {
    for (const h of this.hops) {
      h.core.removePeer(h.peer);
      h.core.setPrivateKey(null);
    }
  }
}

function isMulticast(p: Uint8Array): boolean {
  const v = p.length > 0 ? p[0]! >> 4 : 0;
  if (v === 4) return p.length >= 20 && (p[16]! & 0xf0) === 0xe0;
  if (v === 6) return p.length >= 40 && p[24] === 0xff;
  return false;
}

function hostPrefix(e: UdpEndpoint): string {
  return `${e.address.split('%')[0]}/${e.family === 'IPv4' ? 32 : 128}`;
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
