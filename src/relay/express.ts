/**
 * The relay's fast path, JavaScript side: what it hands to the native "Express" (see
 * src/native/strata.cc) and what it takes back.
 *
 * Once the core has confirmed a client's responder session, the client's endpoint, hop
 * addresses, forward sockets and sessions go to native code, which then opens and forwards
 * that client's data messages and seals the replies without entering JavaScript. The send
 * counter and replay window stay in the Keypair's typed arrays, which native code reads and
 * writes in place: one state, whichever side handles a packet. The core keeps everything else
 * (handshakes, roaming, rekeying, expiry); every `sync` folds the traffic native code moved
 * into the core's timers and the relay's counters.
 */
import { native, type NativeExpress, type NativeUdpSocket } from '../native/index.ts';
import { NativeTun, NativeUdpBind } from '../io/native.ts';
import { endpointAddressBytes } from '../io/address.ts';
import type { Tun, UdpBind, UdpEndpoint } from '../io/types.ts';
import type { WireGuard } from '../wireguard/core.ts';
import type { Keypair } from '../wireguard/keypair.ts';
import type { Peer } from '../wireguard/peer.ts';
import { REJECT_AFTER_MESSAGES, REJECT_AFTER_TIME, REKEY_AFTER_MESSAGES, REKEY_AFTER_TIME, REPLAY_WINDOW } from '../wireguard/constants.ts';
import type { HopAddresses } from '../cascade/addresses.ts';

/** Aggregates native code counted since the last sync (the order of the native stats). */
export interface ExpressCounts {
  forwardedPackets: number;
  forwardedBytes: number;
  replyPackets: number;
  exitPackets: number;
  refusedForwards: number;
  /** Client datagrams in and out. */
  packets: number;
}

interface Handed {
  readonly id: number;
  readonly events: Float64Array;
  endpoint: UdpEndpoint;
  current: Keypair | null;
  readonly sessions: Set<Keypair>;
}

const EVENTS = 10;
const STATS = 8;

/** An endpoint in the slot layout of the native sockets; null if its address does not parse. */
function endpointMeta(e: UdpEndpoint): Int32Array | null {
  const addr = endpointAddressBytes(e);
  if (addr === null) return null;
  const meta = new Int32Array(16);
  const bytes = new Uint8Array(meta.buffer);
  meta[1] = e.family === 'IPv4' ? 4 : 6;
  meta[2] = e.port;
  bytes.set(addr, 16);
  if (e.local !== undefined) {
    meta[8] = 1;
    meta[9] = e.local.ifindex;
    bytes.set(e.local.address, 40);
  }
  return meta;
}

export class RelayExpress {
  readonly #core: WireGuard<UdpEndpoint>;
  readonly #stats = new Float64Array(STATS);
  readonly #x: NativeExpress;
  readonly #handed = new Map<Peer<UdpEndpoint>, Handed>();
  /** Real ms in `clockMs` of the relay's clock (a test's accelerated clock runs faster). */
  readonly #realMs: (clockMs: number) => number;
  readonly #hop: (peer: Peer<UdpEndpoint>) => HopAddresses;
  readonly #byId = new Map<number, Peer<UdpEndpoint>>();
  #nextId = 1;

  /**
   * The fast path on a relay's open main bind (and exit TUN), or null where it cannot run: no
   * native addon, other I/O, or STRATA_EXPRESS=0 (everything then stays in JavaScript).
   */
  static create(o: {
    core: WireGuard<UdpEndpoint>;
    bind: UdpBind;
    tun: Tun | null;
    realMs: (clockMs: number) => number;
    hop: (peer: Peer<UdpEndpoint>) => HopAddresses;
    /** An opened inner packet of `peer` the fast path could not send (a view, valid during the call). */
    inner: (peer: Peer<UdpEndpoint>, packet: Uint8Array) => void;
  }): RelayExpress | null {
    if (native === null || process.env.STRATA_EXPRESS === '0' || !(o.bind instanceof NativeUdpBind)) return null;
    if (o.tun !== null && !(o.tun instanceof NativeTun)) return null;
    const x = new RelayExpress(o);
    for (const s of o.bind.nativeSockets()) x.#x.attach(s);
    if (o.tun instanceof NativeTun) x.#x.attach(o.tun.nativeQueue);
    return x;
  }

  private constructor(o: Parameters<typeof RelayExpress.create>[0]) {
    this.#core = o.core;
    this.#realMs = o.realMs;
    this.#hop = o.hop;
    const inner = o.inner;
    this.#x = new native!.Express(this.#stats, o.core.mtu, REKEY_AFTER_MESSAGES, REJECT_AFTER_MESSAGES, BigInt(REPLAY_WINDOW), (id, packet) => {
      const peer = this.#byId.get(id);
      if (peer !== undefined) inner(peer, packet);
    });
  }

  /** The next hops native code may forward to (the relay's own rule, src/relay/relay.ts). */
  setAllowed(endpoints: Iterable<UdpEndpoint>): void {
    const records: number[] = [];
    for (const e of endpoints) {
      const a = endpointAddressBytes(e);
      if (a === null) continue;
      const r = new Uint8Array(19);
      r[0] = a.length === 4 ? 4 : 6;
      r.set(a, 1);
      r[17] = e.port >> 8;
      r[18] = e.port & 0xff;
      records.push(...r);
    }
    this.#x.setAllowed(Uint8Array.from(records));
  }

  /**
   * After the core took a data message of `peer`: hands over its confirmed responder sessions
   * and its endpoint, where they changed. `now` is the relay's clock.
   */
  update(peer: Peer<UdpEndpoint>, now: number): void {
    const h = this.#handed.get(peer);
    if (h !== undefined && h.current === peer.current && h.endpoint === peer.endpoint) return;
    const endpoint = peer.endpoint;
    const meta = endpoint === null ? null : endpointMeta(endpoint);
    if (endpoint === null || meta === null) return;
    let state = h;
    if (state === undefined) {
      const a = this.#hop(peer);
      state = { id: this.#nextId++, events: new Float64Array(EVENTS), endpoint, current: null, sessions: new Set() };
      this.#x.addPeer(state.id, meta, a.v4, a.v6, state.events);
      this.#handed.set(peer, state);
      this.#byId.set(state.id, peer);
    } else if (state.endpoint !== endpoint) {
      this.#x.setEndpoint(state.id, meta);
      state.endpoint = endpoint;
    }
    meta.fill(0);
    for (const kp of [peer.previous, peer.current]) {
      // Initiator sessions rekey on their own schedule: they stay with the core.
      if (kp === null || kp.isInitiator || kp.send.destroyed) continue;
      const current = kp === peer.current;
      if (state.sessions.has(kp) && !(current && state.current !== kp)) continue;
      const send = kp.send.nativeHandle;
      const recv = kp.recv.nativeHandle;
      if (send === null || recv === null) continue;
      const age = now - kp.created;
      const r = kp.replay;
      this.#x.addSession(state.id, kp.localIndex, kp.remoteIndex, send, recv, kp.counter, r.last, r.ring, this.#realMs(REJECT_AFTER_TIME - age), this.#realMs(REKEY_AFTER_TIME - age), current);
      state.sessions.add(kp);
      const s = state;
      kp.onDestroy = () => {
        this.#x.removeSession(kp.localIndex);
        s.sessions.delete(kp);
      };
    }
    state.current = peer.current;
    // A current session native code does not hold (the relay initiated it): it must not go on
    // sealing with an older one, so it gives every session of this client back.
    if (peer.current === null || !state.sessions.has(peer.current)) {
      for (const kp of state.sessions) {
        kp.onDestroy = null;
        this.#x.removeSession(kp.localIndex);
      }
      state.sessions.clear();
    }
  }

  /**
   * The core saw `peer` at a new endpoint (any authenticated packet, a keepalive or a dropped
   * inner packet included): native code must send there from now on.
   */
  roamed(peer: Peer<UdpEndpoint>, now: number): void {
    if (this.#handed.has(peer)) this.update(peer, now);
  }

  /** Gives native code a client's forward socket (once the relay has opened it). */
  setForward(peer: Peer<UdpEndpoint>, bind: UdpBind): void {
    const h = this.#handed.get(peer);
    if (h === undefined || !(bind instanceof NativeUdpBind)) return;
    for (const s of bind.nativeSockets()) this.#x.setForward(h.id, s as NativeUdpSocket);
  }

  /** Whether `peer` has been handed over (its forward sockets should be too). */
  has(peer: Peer<UdpEndpoint>): boolean {
    return this.#handed.has(peer);
  }

  /** Takes a client back (it expired): native code forgets it, addresses and all. */
  remove(peer: Peer<UdpEndpoint>): void {
    const h = this.#handed.get(peer);
    if (h === undefined) return;
    this.#handed.delete(peer);
    this.#byId.delete(h.id);
    for (const kp of h.sessions) kp.onDestroy = null;
    this.#x.removePeer(h.id);
    h.events.fill(0);
  }

  /**
   * Folds what native code did since the last call into the core (timers, byte counts) and
   * returns the aggregate counts.
   */
  sync(now: number): ExpressCounts {
    let packets = 0;
    for (const [peer, h] of this.#handed) {
      const e = h.events;
      if (e[0] === 0 && e[2] === 0) continue;
      packets += e[0]! + e[2]!;
      this.#core.noteOffloaded(
        peer,
        { rx: e[0]!, rxData: e[1]!, tx: e[2]!, txData: e[3]!, rxBytes: e[4]!, txBytes: e[5]!, lastRx: e[6]!, lastRxData: e[7]!, lastTx: e[8]!, lastTxData: e[9]! },
        now,
      );
      e.fill(0);
    }
    const s = this.#stats;
    const counts = {
      forwardedPackets: s[0]!,
      forwardedBytes: s[1]!,
      replyPackets: s[2]!,
      exitPackets: s[3]!,
      refusedForwards: s[4]!,
      packets,
    };
    this.#core.countDrops('decrypt', s[5]!);
    this.#core.countDrops('replay', s[6]!);
    this.#core.countDrops('inner-disallowed-source', s[7]!);
    s.fill(0);
    return counts;
  }

  destroy(): void {
    for (const peer of [...this.#handed.keys()]) this.remove(peer);
    this.#x.destroy();
  }
}
