/**
 * A cascade relay: a WireGuard responder that admits client keys (open, bounded and rate
 * limited, or an operator's allow-list), peels one layer, and forwards the inner UDP datagram
 * to the next hop from a socket of its own per client, mapping replies back. It forwards only
 * to relays on its list — never as an open UDP proxy. With an exit TUN, other inner packets
 * leave through the TUN (the host masquerades them).
 *
 * Nothing here logs or counts per client: counters are aggregates.
 *
 * With the native addon, a client's data messages move on the native fast path once the core
 * has confirmed its session (src/relay/express.ts); this class stays the authority for
 * admission, handshakes, timers and what may be forwarded, and the path for everything else.
 */
import { PrivateKey, PublicKey } from '../crypto/keys.ts';
import { hex } from '../crypto/bytes.ts';
import { WireGuard, type Outgoing } from '../wireguard/core.ts';
import { parseIP } from '../wireguard/ip.ts';
import type { Peer } from '../wireguard/peer.ts';
import type { Tun, UdpBind, UdpEndpoint } from '../io/types.ts';
import { endpointAddressBytes } from '../io/address.ts';
import { WakeTimer } from '../device/waketimer.ts';
import { hopAddresses, type HopAddresses } from '../cascade/addresses.ts';
import type { Relay as RelayEntry } from '../cascade/relaylist.ts';
import { buildUdp, parseUdp, type UdpPacket } from '../cascade/udpip.ts';
import { RelayExpress } from './express.ts';

export interface RelayOptions {
  privateKey: PrivateKey;
  bind: UdpBind;
  /** The exit TUN, or null for a forwarding-only relay. */
  tun: Tun | null;
  /** The relays this one may forward to (its own entry is ignored). */
  relays: readonly RelayEntry[];
  makeForwardBind: (family: 'IPv4' | 'IPv6') => UdpBind;
  /** Allow-list mode: only these client keys are admitted; null admits any (bounded). */
  allow?: readonly PublicKey[] | null;
  maxClients?: number;
  /** New clients admitted per second (token bucket, burst of twice this). */
  admissionsPerSecond?: number;
  /**
   * Test-only: once `accelerate()` is called, the relay's clock runs this many times faster
   * than real time (so a drill can watch 540 s of key expiry in seconds).
   */
  timeScale?: number;
  /** Called after a client was forgotten (the daemon then collects garbage). */
  onExpire?: () => void;
}

export interface RelayStats {
  clients: number;
  admitted: number;
  refusedAdmissions: number;
  forwardedPackets: number;
  forwardedBytes: number;
  replyPackets: number;
  exitPackets: number;
  refusedForwards: number;
  unknownReplySources: number;
  /** Client datagrams (in and out) the native fast path carried. */
  fastPathPackets: number;
}

interface Destination {
  readonly endpoint: UdpEndpoint;
  clientPort: number;
}

interface ForwardSide {
  readonly bind: UdpBind;
  ready: boolean;
  readonly pending: [Uint8Array, UdpEndpoint][];
}

interface Forwarder {
  readonly binds: Partial<Record<'IPv4' | 'IPv6', ForwardSide>>;
  readonly destinations: Map<number | string, Destination>;
  readonly addresses: HopAddresses;
}

/** How often the fast path's traffic is folded into the core's timers (ms, real time). */
const SYNC_MS = 200;

/** A numeric key for IPv4 address+port, a string for IPv6. */
function destKey(addr: Uint8Array, port: number): number | string {
  if (addr.length === 4) return (((addr[0]! << 24) | (addr[1]! << 16) | (addr[2]! << 8) | addr[3]!) >>> 0) * 65536 + port;
  return `${hex(addr)}|${port}`;
}

export class RelayNode {
  readonly core: WireGuard<UdpEndpoint>;
  readonly #stats: RelayStats = {
    clients: 0,
    admitted: 0,
    refusedAdmissions: 0,
    forwardedPackets: 0,
    forwardedBytes: 0,
    replyPackets: 0,
    exitPackets: 0,
    refusedForwards: 0,
    unknownReplySources: 0,
    fastPathPackets: 0,
  };
  readonly #bind: UdpBind;
  readonly #self: PublicKey;
  readonly #tun: Tun | null;
  readonly #allowedNext = new Map<number | string, UdpEndpoint>();
  readonly #forwarders = new Map<Peer<UdpEndpoint>, Forwarder>();
  readonly #makeForwardBind: RelayOptions['makeForwardBind'];
  readonly #allow: Set<string> | null;
  readonly #maxClients: number;
  readonly #rate: number;
  #tokens: number;
  #tokensAt = 0;
  readonly #now: () => number;
  readonly #scaleTo: number;
  #clockRate = 1;
  #clockBase = 0;
  #clockT0 = 0;
  readonly #timer: WakeTimer;
  readonly #onExpire: (() => void) | undefined;
  #running = false;
  #express: RelayExpress | null = null;
  #syncTimer: NodeJS.Timeout | null = null;

  constructor(o: RelayOptions) {
    this.#bind = o.bind;
    this.#tun = o.tun;
    this.#makeForwardBind = o.makeForwardBind;
    this.#allow = o.allow ? new Set(o.allow.map((k) => hex(k.raw()))) : null;
    this.#maxClients = o.maxClients ?? 1024;
    this.#rate = o.admissionsPerSecond ?? 50;
    this.#tokens = this.#rate * 2;
    this.#onExpire = o.onExpire;
    this.#scaleTo = o.timeScale ?? 1;
    // A monotonic clock whose rate can rise once (tests): base + (real - t0) * rate.
    this.#now = () => this.#clockBase + (performance.now() - this.#clockT0) * this.#clockRate;
    this.#self = o.privateKey.publicKey();
    this.setRelays(o.relays);
    this.core = new WireGuard<UdpEndpoint>({
      privateKey: o.privateKey,
      epochMs: Date.now() - this.#now(),
      mtu: 1440,
      admit: (key, now) => this.#admit(key, now),
      onKeysZeroed: (peer) => this.#expire(peer),
      // The fast path sends to where the client is now, even before its next data message.
      onRoam: (peer) => this.#express?.roamed(peer, this.#now()),
    });
    this.#timer = new WakeTimer(this.core, (now) => this.#send(this.core.tick(now)), this.#now, () => this.#clockRate);
  }

  /** Test-only: from now on the clock runs at the configured time scale. */
  accelerate(): void {
    this.#clockBase = this.#now();
    this.#clockT0 = performance.now();
    this.#clockRate = this.#scaleTo;
    this.#timer.reset();
  }

  /** The relay's counters (aggregates only), the fast path's traffic folded in. */
  get stats(): RelayStats {
    this.#sync();
    return this.#stats;
  }

  /** Whether client data moves on the native fast path (src/relay/express.ts). */
  get express(): boolean {
    return this.#express !== null;
  }

  /** Replaces the relays this one may forward to (after a directory refresh). */
  setRelays(relays: readonly RelayEntry[]): void {
    this.#allowedNext.clear();
    for (const r of relays) {
      if (r.publicKey.equals(this.#self)) continue;
      for (const e of r.endpoints) this.#allowedNext.set(destKey(parseIP(e.address.split('%')[0]!)!, e.port), e);
    }
    this.#express?.setAllowed(this.#allowedNext.values());
  }

  /** Whether a next hop (address bytes and port) is one this relay may forward to. */
  mayForwardTo(address: string, port: number): boolean {
    const b = parseIP(address);
    return b !== null && this.#allowedNext.has(destKey(b, port));
  }

  #admit(key: PublicKey, now: number): { allowedIPs: string[] } | null {
    if (this.#allow !== null && !this.#allow.has(hex(key.raw()))) return this.#refuse();
    if (this.#stats.clients >= this.#maxClients) return this.#refuse();
    this.#tokens = Math.min(this.#rate * 2, this.#tokens + ((now - this.#tokensAt) / 1000) * this.#rate);
    this.#tokensAt = now;
    if (this.#tokens < 1) return this.#refuse();
    this.#tokens -= 1;
    const a = hopAddresses(key);
    // An address another client holds (a hash collision) is refused: that client reconnects
    // with a fresh key, hence a fresh address.
    if (this.core.allowedIPs.lookup(a.v4) !== null || this.core.allowedIPs.lookup(a.v6) !== null) return this.#refuse();
    this.#stats.admitted++;
    this.#stats.clients++;
    return { allowedIPs: [`${a.v4Text}/32`, `${a.v6Text}/128`] };
  }

  #refuse(): null {
    this.#stats.refusedAdmissions++;
    return null;
  }

  /** Keys wiped 540 s after the last session: the client is forgotten, socket and all. */
  #expire(peer: Peer<UdpEndpoint>): void {
    this.#express?.remove(peer);
    this.#closeForwarder(peer);
    if (peer.endpoint !== null) this.#bind.forget(peer.endpoint);
    peer.endpoint = null;
    this.core.removePeer(peer);
    this.#stats.clients = Math.max(0, this.#stats.clients - 1);
    this.#onExpire?.();
  }

  async start(listenPort: number): Promise<number> {
    const port = await this.#bind.open(listenPort);
    this.#express = RelayExpress.create({
      core: this.core,
      bind: this.#bind,
      tun: this.#tun,
      realMs: (clockMs) => clockMs / this.#clockRate,
      hop: (peer) => this.#forwarder(peer).addresses,
      inner: (peer, packet) => this.#inner(peer, packet),
    });
    if (this.#express !== null) {
      this.#express.setAllowed(this.#allowedNext.values());
      this.#syncTimer = setInterval(() => this.#sync(), SYNC_MS);
    }
    this.#bind.start((d, from) => this.#onDatagram(d, from));
    this.#tun?.start(
      (p) => this.#onTunPacket(p),
      () => this.stop(),
    );
    this.#running = true;
    this.#schedule();
    return port;
  }

  #send(out: readonly Outgoing<UdpEndpoint>[]): void {
    for (const o of out) this.#bind.send(o.datagram, o.endpoint);
  }

  #onDatagram(d: Uint8Array, from: UdpEndpoint): void {
    const r = this.core.receive(d, from, this.#now());
    this.#send(r.out);
    if (r.kind === 'deliver') {
      this.#inner(r.peer, r.packet);
      // The decrypted packet has been forwarded or written: no plaintext stays behind.
      r.packet.fill(0);
      if (this.#express !== null) this.#handOver(this.#express, r.peer);
    }
    this.#schedule();
  }

  /** Hands a client's confirmed session (and forward sockets) to the fast path. */
  #handOver(x: RelayExpress, peer: Peer<UdpEndpoint>): void {
    const had = x.has(peer);
    x.update(peer, this.#now());
    if (had || !x.has(peer)) return;
    const f = this.#forwarders.get(peer);
    for (const side of Object.values(f?.binds ?? {})) if (side.ready) x.setForward(peer, side.bind);
  }

  /** Folds the fast path's traffic into the core's timers and the counters. */
  #sync(): void {
    if (this.#express === null) return;
    const c = this.#express.sync(this.#now());
    const st = this.#stats;
    st.forwardedPackets += c.forwardedPackets;
    st.forwardedBytes += c.forwardedBytes;
    st.replyPackets += c.replyPackets;
    st.exitPackets += c.exitPackets;
    st.refusedForwards += c.refusedForwards;
    st.fastPathPackets += c.packets;
    this.#schedule();
  }

  #inner(peer: Peer<UdpEndpoint>, packet: Uint8Array): void {
    const u = parseUdp(packet);
    if (u !== null) {
      const next = this.#allowedNext.get(destKey(u.dst, u.dstPort));
      if (next !== undefined) {
        this.#forward(peer, u, next);
        return;
      }
    }
    if (this.#tun !== null) {
      this.#stats.exitPackets++;
      this.#tun.write(packet);
      return;
    }
    this.#stats.refusedForwards++;
  }

  #forwarder(peer: Peer<UdpEndpoint>): Forwarder {
    let f = this.#forwarders.get(peer);
    if (f === undefined) {
      f = { binds: {}, destinations: new Map(), addresses: hopAddresses(peer.publicKey) };
      this.#forwarders.set(peer, f);
    }
    return f;
  }

  #forward(peer: Peer<UdpEndpoint>, u: UdpPacket, next: UdpEndpoint): void {
    const f = this.#forwarder(peer);
    const key = destKey(u.dst, u.dstPort);
    const dest = f.destinations.get(key);
    if (dest === undefined) f.destinations.set(key, { endpoint: next, clientPort: u.srcPort });
    else dest.clientPort = u.srcPort;
    this.#stats.forwardedPackets++;
    this.#stats.forwardedBytes += u.payload.length;
    const side = this.#forwardSide(peer, f, next.family);
    if (side.ready) side.bind.send(u.payload, next);
    else if (side.pending.length < 64) side.pending.push([u.payload.slice(), next]);
  }

  /** The client's own socket for one family, opened on first use. */
  #forwardSide(peer: Peer<UdpEndpoint>, f: Forwarder, family: 'IPv4' | 'IPv6'): ForwardSide {
    const had = f.binds[family];
    if (had !== undefined) return had;
    const bind = this.#makeForwardBind(family);
    const side: ForwardSide = { bind, ready: false, pending: [] };
    f.binds[family] = side;
    void bind.open(0).then(
      () => {
        if (this.#forwarders.get(peer) !== f) {
          void bind.close(); // the client expired meanwhile
          return;
        }
        bind.start((d, from) => this.#onReply(peer, d, from));
        side.ready = true;
        this.#express?.setForward(peer, bind);
        for (const [payload, to] of side.pending.splice(0)) bind.send(payload, to);
      },
      () => {
        side.pending.length = 0;
      },
    );
    return side;
  }

  #onReply(peer: Peer<UdpEndpoint>, d: Uint8Array, from: UdpEndpoint): void {
    const f = this.#forwarders.get(peer);
    const src = endpointAddressBytes(from);
    const dest = f !== undefined && src !== null ? f.destinations.get(destKey(src, from.port)) : undefined;
    if (f === undefined || src === null || dest === undefined) {
      this.#stats.unknownReplySources++;
      return;
    }
    const v4 = src.length === 4;
    const packet = buildUdp({
      family: v4 ? 4 : 6,
      src,
      dst: v4 ? f.addresses.v4 : f.addresses.v6,
      srcPort: from.port,
      dstPort: dest.clientPort,
      payload: d,
    }, { udpChecksum: false });
    const r = this.core.sendTo(peer, packet, this.#now());
    if (r.kind !== 'drop') {
      this.#stats.replyPackets++;
      this.#send(r.out);
    }
    this.#schedule();
  }

  #onTunPacket(p: Uint8Array): void {
    const r = this.core.send(p, this.#now());
    if (r.kind !== 'drop') this.#send(r.out);
    this.#schedule();
  }

  #closeForwarder(peer: Peer<UdpEndpoint>): void {
    const f = this.#forwarders.get(peer);
    if (f === undefined) return;
    this.#forwarders.delete(peer);
    for (const s of Object.values(f.binds)) void s.bind.close();
  }

  #schedule(): void {
    if (this.#running) this.#timer.schedule();
  }

  stop(): void {
    if (!this.#running) return;
    this.#running = false;
    this.#timer.stop();
    if (this.#syncTimer !== null) clearInterval(this.#syncTimer);
    this.#syncTimer = null;
    this.#sync();
    this.#express?.destroy();
    this.#express = null;
    for (const peer of [...this.#forwarders.keys()]) this.#closeForwarder(peer);
    for (const peer of [...this.core.peers()]) this.core.removePeer(peer);
    this.core.setPrivateKey(null);
    this.#tun?.close();
    void this.#bind.close();
    this.#stats.clients = 0;
  }
}

