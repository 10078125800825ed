/**
 * TUN and UDP through the native addon: descriptors polled by libuv, UDP read with recvmmsg
 * and written with sendmmsg, TUN read in batches. Packets handed to callbacks are views into
 * the receive arenas, valid only during the call (the core copies what it keeps). Outgoing
 * datagrams are copied into a send arena and flushed once per batch (a microtask after the
 * callback that produced them).
 */
import { StrataError } from '../crypto/errors.ts';
import { formatIP } from '../wireguard/ip.ts';
import { endpointAddressBytes } from './address.ts';
import { native, type NativeTunQueue, type NativeUdpSocket } from '../native/index.ts';
import { LinuxTun } from './tun.ts';
import type { Tun, UdpBind, UdpEndpoint } from './types.ts';
import { bindPair } from './pair.ts';

const SLOT = 65536;
const RX_SLOTS = 64;
const TX_SLOTS = 32;
// int32 entries per slot: length, family, port, scope, remote address (4), local known,
// ifindex, local address (4), unused (2); see src/native/strata.cc.
const META = 16;

function addon(): NonNullable<typeof native> {
  if (native === null) throw new StrataError('ERR_NATIVE', 'the native addon is not built');
  return native;
}

class Side {
  readonly sock: NativeUdpSocket;
  readonly family: 4 | 6;
  readonly rx: Uint8Array;
  readonly rxMeta: Int32Array;
  readonly tx: Uint8Array;
  readonly txMeta: Int32Array;
  readonly txAddr: Uint8Array;
  queued = 0;
  flushScheduled = false;
  /** Endpoint objects by address and port, so the core sees one object per sender. */
  readonly endpoints = new Map<number | string, UdpEndpoint>();

  readonly slot: number;
  readonly txSlots: number;

  constructor(family: 4 | 6, port: number, sizes: BindSizes) {
    this.family = family;
    this.slot = sizes.slotSize;
    this.txSlots = sizes.txSlots;
    this.rx = new Uint8Array(new ArrayBuffer(sizes.rxSlots * sizes.slotSize));
    this.rxMeta = new Int32Array(sizes.rxSlots * META);
    this.tx = new Uint8Array(new ArrayBuffer(sizes.txSlots * sizes.slotSize));
    this.txMeta = new Int32Array(sizes.txSlots * META);
    this.txAddr = new Uint8Array(this.txMeta.buffer);
    this.sock = new (addon().UdpSocket)(family, port, this.rx.buffer as ArrayBuffer, this.rxMeta, this.tx.buffer as ArrayBuffer, this.txMeta, sizes.rxSlots, sizes.txSlots, sizes.slotSize);
  }

  endpointOf(i: number): UdpEndpoint {
    const m = this.rxMeta;
    const o = i * META;
    const port = m[o + 2]!;
    const key = m[o + 1] === 4 ? (m[o + 4]! >>> 0) * 65536 + port : `${m[o + 4]},${m[o + 5]},${m[o + 6]},${m[o + 7]},${m[o + 3]},${port}`;
    const e = this.endpoints.get(key);
    if (e !== undefined && this.#sameLocal(e, o)) return e;
    const fresh = this.#make(o, port);
    this.#remember(key, fresh);
    return fresh;
  }

  #sameLocal(e: UdpEndpoint, o: number): boolean {
    const m = this.rxMeta;
    const l = e.local;
    if (m[o + 8] !== 1) return l === undefined;
    if (l === undefined || l.ifindex !== m[o + 9]) return false;
    const words = new Int32Array(l.address.buffer, l.address.byteOffset, 4);
    return words[0] === m[o + 10] && words[1] === m[o + 11] && words[2] === m[o + 12] && words[3] === m[o + 13];
  }

  #make(o: number, port: number): UdpEndpoint {
    const m = this.rxMeta;
    const v4 = m[o + 1] === 4;
    const remote = Uint8Array.from(new Uint8Array(m.buffer, (o + 4) * 4, v4 ? 4 : 16));
    const address = formatIP(remote);
    if (m[o + 8] !== 1) return { address, port, family: v4 ? 'IPv4' : 'IPv6' };
    // Kept as 16 bytes (IPv4 in the first 4) so it can be compared as four words.
    const local = { address: Uint8Array.from(new Uint8Array(m.buffer, (o + 10) * 4, 16)), ifindex: m[o + 9]! };
    return { address, port, family: v4 ? 'IPv4' : 'IPv6', local };
  }

  #remember(key: number | string, e: UdpEndpoint): void {
    if (this.endpoints.size >= 4096) this.endpoints.clear();
    this.endpoints.set(key, e);
  }

  enqueue(datagram: Uint8Array, to: UdpEndpoint, addr: Uint8Array): void {
    if (datagram.length > this.slot) return;
    if (this.queued === this.txSlots) this.flush();
    const i = this.queued++;
    this.tx.set(datagram, i * this.slot);
    const o = i * META;
    this.txMeta[o] = datagram.length;
    this.txMeta[o + 1] = this.family;
    this.txMeta[o + 2] = to.port;
    this.txMeta[o + 3] = 0;
    this.txAddr.set(addr, (o + 4) * 4);
    const local = to.local;
    if (local !== undefined) {
      this.txMeta[o + 8] = 1;
      this.txMeta[o + 9] = local.ifindex;
      this.txAddr.set(local.address, (o + 10) * 4);
    } else this.txMeta[o + 8] = 0;
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      queueMicrotask(() => this.flush());
    }
  }

  flush(): void {
    this.flushScheduled = false;
    if (this.queued === 0) return;
    this.sock.send(this.queued);
    // Destination addresses do not stay in the arena once sent.
    this.txMeta.fill(0, 0, this.queued * META);
    this.queued = 0;
  }
}

/** Arena sizes: a device's main bind takes the defaults; a relay's per-client sockets less. */
export interface BindSizes {
  rxSlots: number;
  txSlots: number;
  slotSize: number;
}

export const DEFAULT_SIZES: BindSizes = { rxSlots: RX_SLOTS, txSlots: TX_SLOTS, slotSize: SLOT };

export class NativeUdpBind implements UdpBind {
  readonly #sizes: BindSizes;
  readonly #families: readonly ('IPv4' | 'IPv6')[];

  constructor(options: { sizes?: BindSizes; families?: readonly ('IPv4' | 'IPv6')[] } = {}) {
    this.#sizes = options.sizes ?? DEFAULT_SIZES;
    this.#families = options.families ?? ['IPv4', 'IPv6'];
  }

  #v4: Side | null = null;
  #v6: Side | null = null;
  #port = 0;
  #mark = 0;
  #onDatagram: ((d: Uint8Array, from: UdpEndpoint) => void) | null = null;

  get port(): number {
    return this.#port;
  }

  async open(port: number): Promise<number> {
    await this.close();
    const { v4, v6, port: bound } = await bindPair<Side>(
      { open: (f, p) => new Side(f === 'IPv4' ? 4 : 6, p, this.#sizes), port: (s) => s.sock.port(), close: (s) => s.sock.close() },
      port,
      this.#families,
    );
    this.#v4 = v4;
    this.#v6 = v6;
    return this.#opened(bound);
  }

  #opened(port: number): number {
    this.#port = port;
    if (this.#mark !== 0) this.setMark(this.#mark);
    if (this.#onDatagram) this.#listen();
    return port;
  }

  start(onDatagram: (d: Uint8Array, from: UdpEndpoint) => void): void {
    this.#onDatagram = onDatagram;
    this.#listen();
  }

  #listen(): void {
    const on = this.#onDatagram;
    if (on === null) return;
    for (const side of [this.#v4, this.#v6]) {
      if (side === null) continue;
      side.sock.start((n) => {
        // n < 0: the socket failed (it is not expected on UDP); nothing to deliver.
        for (let i = 0; i < n; i++) {
          const len = side.rxMeta[i * META]!;
          // -1: larger than a slot, not a WireGuard datagram we could take; -2: taken by a
          // relay's fast path.
          if (len < 0) continue;
          on(side.rx.subarray(i * side.slot, i * side.slot + len), side.endpointOf(i));
        }
        // Senders' addresses do not stay in the arena once handled.
        if (n > 0) side.rxMeta.fill(0, 0, n * META);
      });
    }
  }

  send(datagram: Uint8Array, to: UdpEndpoint): void {
    const side = to.family === 'IPv6' ? this.#v6 : this.#v4;
    const addr = endpointAddressBytes(to);
    if (side === null || addr === null) return;
    side.enqueue(datagram, to, addr);
  }

  /** The native sockets, for a relay's fast path to attach to. */
  nativeSockets(): NativeUdpSocket[] {
    return [this.#v4, this.#v6].flatMap((s) => (s === null ? [] : [s.sock]));
  }

  forget(endpoint: UdpEndpoint): void {
    for (const side of [this.#v4, this.#v6]) {
      if (side === null) continue;
      for (const [k, e] of side.endpoints) if (e.address === endpoint.address && e.port === endpoint.port) side.endpoints.delete(k);
    }
  }

  setMark(mark: number): void {
    for (const side of [this.#v4, this.#v6]) {
      if (side === null) continue;
      const r = side.sock.setMark(mark);
      if (r !== 0) throw new Error(`SO_MARK failed (errno ${-r})`);
    }
    this.#mark = mark;
  }

  async close(): Promise<void> {
    for (const side of [this.#v4, this.#v6]) {
      side?.flush();
      side?.sock.close();
    }
    this.#v4 = this.#v6 = null;
    this.#port = 0;
  }
}

export class NativeTun implements Tun {
  readonly #linux: LinuxTun;
  readonly #queue: NativeTunQueue;
  readonly #rx = new Uint8Array(new ArrayBuffer(RX_SLOTS * SLOT));
  readonly #rxMeta = new Int32Array(RX_SLOTS * META);
  #closed = false;

  private constructor(linux: LinuxTun) {
    this.#linux = linux;
    this.#queue = new (addon().TunQueue)(linux.takeFd(), this.#rx.buffer as ArrayBuffer, this.#rxMeta, RX_SLOTS, SLOT);
  }

  static create(name: string, mtu = 1420): NativeTun {
    return new NativeTun(LinuxTun.create(name, mtu));
  }

  get name(): string {
    return this.#linux.name;
  }

  get mtu(): number {
    return this.#linux.mtu;
  }

  start(onPacket: (packet: Uint8Array) => void, onClosed: (reason: Error) => void): void {
    this.#queue.start((n) => {
      if (n < 0) {
        this.close();
        onClosed(new Error(`TUN read failed (errno ${-n})`));
        return;
      }
      for (let i = 0; i < n; i++) {
        const len = this.#rxMeta[i * META]!;
        if (len < 0) continue; // taken by a relay's fast path
        const packet = this.#rx.subarray(i * SLOT, i * SLOT + len);
        onPacket(packet);
        // A TUN packet is plaintext: it does not stay in the arena once handled.
        packet.fill(0);
      }
    });
  }

  /** The native queue, for a relay's fast path to attach to. */
  get nativeQueue(): NativeTunQueue {
    return this.#queue;
  }

  write(packet: Uint8Array): void {
    if (!this.#closed) this.#queue.write(packet);
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#queue.close();
  }
}
