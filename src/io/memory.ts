/**
 * In-memory doubles of the I/O interfaces, shipped as real modules (as wireguard-go ships
 * conn/bindtest and tun/tuntest): a TUN whose inbound side tests inject into and whose
 * outbound side they read, and pairs of cross-wired UDP binds.
 */
import type { Tun, UdpBind, UdpEndpoint } from './types.ts';

export class MemoryTun implements Tun {
  readonly name: string;
  readonly mtu: number;
  /** Packets the device wrote (delivered from peers). */
  readonly written: Uint8Array[] = [];
  #onPacket: ((p: Uint8Array) => void) | null = null;
  #onClosed: ((e: Error) => void) | null = null;
  #waiters: (() => void)[] = [];

  constructor(name = 'mem0', mtu = 1420) {
    this.name = name;
    this.mtu = mtu;
  }

  start(onPacket: (packet: Uint8Array) => void, onClosed: (reason: Error) => void): void {
    this.#onPacket = onPacket;
    this.#onClosed = onClosed;
  }

  /** As if the kernel routed `packet` into the interface. */
  inject(packet: Uint8Array): void {
    this.#onPacket?.(packet);
  }

  write(packet: Uint8Array): void {
    this.written.push(Uint8Array.from(packet));
    for (const w of this.#waiters.splice(0)) w();
  }

  /** Resolves once `count` packets have been written. */
  async waitFor(count: number, timeoutMs = 2000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (this.written.length < count) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${count} packets (have ${this.written.length})`);
      await new Promise<void>((r) => {
        this.#waiters.push(r);
        setTimeout(r, 20);
      });
    }
  }

  /** As if the interface were deleted. */
  destroy(): void {
    this.#onClosed?.(new Error('interface deleted'));
  }

  close(): void {
    this.#onPacket = null;
  }
}

/** A UDP "network" of binds identified by address:port; datagrams are delivered asynchronously. */
export class MemoryNetwork {
  readonly #binds = new Map<string, MemoryBind>();
  /** Datagrams in flight count; drops where no bind listens. */
  dropped = 0;

  bind(address: string, family: 'IPv4' | 'IPv6' = 'IPv4'): MemoryBind {
    return new MemoryBind(this, address, family);
  }

  register(b: MemoryBind, port: number): void {
    this.#binds.set(`${b.address}|${port}`, b);
  }

  unregister(b: MemoryBind, port: number): void {
    if (this.#binds.get(`${b.address}|${port}`) === b) this.#binds.delete(`${b.address}|${port}`);
  }

  deliver(datagram: Uint8Array, from: UdpEndpoint, to: UdpEndpoint): void {
    const target = this.#binds.get(`${to.address}|${to.port}`);
    if (!target) {
      this.dropped++;
      return;
    }
    const copy = Uint8Array.from(datagram);
    setImmediate(() => target.receive(copy, from));
  }
}

export class MemoryBind implements UdpBind {
  readonly address: string;
  readonly family: 'IPv4' | 'IPv6';
  #port = 0;
  #net: MemoryNetwork;
  #on: ((d: Uint8Array, from: UdpEndpoint) => void) | null = null;
  static #next = 40000;

  constructor(net: MemoryNetwork, address: string, family: 'IPv4' | 'IPv6') {
    this.#net = net;
    this.address = address;
    this.family = family;
  }

  get port(): number {
    return this.#port;
  }

  get endpoint(): UdpEndpoint {
    return { address: this.address, port: this.#port, family: this.family };
  }

  async open(port: number): Promise<number> {
    if (this.#port) this.#net.unregister(this, this.#port);
    this.#port = port || MemoryBind.#next++;
    this.#net.register(this, this.#port);
    return this.#port;
  }

  start(onDatagram: (d: Uint8Array, from: UdpEndpoint) => void): void {
    this.#on = onDatagram;
  }

  receive(d: Uint8Array, from: UdpEndpoint): void {
    this.#on?.(d, from);
  }

  send(datagram: Uint8Array, to: UdpEndpoint): void {
    this.#net.deliver(datagram, this.endpoint, to);
  }

  mark = 0;

  setMark(mark: number): void {
    this.mark = mark;
  }

  forget(_endpoint: UdpEndpoint): void {}

  async close(): Promise<void> {
    if (this.#port) this.#net.unregister(this, this.#port);
    this.#port = 0;
  }
}
