/**
 * UDP bind over node:dgram: an IPv4 socket and an IPv6-only socket on the same port, each with
 * large kernel buffers (as wireguard-go asks for 7 MiB). If the namespace has no IPv6, the
 * IPv4 socket serves alone.
 */
import dgram from 'node:dgram';
import { sys } from './libc.ts';
import { bindPair } from './pair.ts';
import type { UdpBind, UdpEndpoint } from './types.ts';

const SOL_SOCKET = 1;
const SO_MARK = 36;

/** SO_MARK through setsockopt on each socket's descriptor (needs CAP_NET_ADMIN). */
function markSockets(sockets: readonly (dgram.Socket | null)[], mark: number): void {
  const value = Buffer.alloc(4);
  value.writeUInt32LE(mark >>> 0);
  for (const s of sockets) {
    if (s === null) continue;
    const fd = socketFd(s);
    if (fd === null) throw new Error('socket descriptor not available');
    if (sys().setsockopt(fd, SOL_SOCKET, SO_MARK, value, 4) !== 0) throw new Error(`SO_MARK failed (errno ${sys().errno()})`);
  }
}

/** The file descriptor behind a bound dgram socket (Node keeps it on its internal handle). */
function socketFd(s: dgram.Socket): number | null {
  for (const sym of Object.getOwnPropertySymbols(s)) {
    const state = (s as unknown as Record<symbol, { handle?: { fd?: number } } | undefined>)[sym];
    const fd = state?.handle?.fd;
    if (typeof fd === 'number' && fd >= 0) return fd;
  }
  return null;
}

const SOCKET_BUFFER = 7 << 20;

function bindSocket(type: 'udp4' | 'udp6', port: number): Promise<dgram.Socket> {
  return new Promise((resolve, reject) => {
    const s = dgram.createSocket({ type, ipv6Only: type === 'udp6', reuseAddr: false });
    const onError = (e: Error): void => {
      s.close();
      reject(e);
    };
    s.once('error', onError);
    s.bind({ port, address: type === 'udp4' ? '0.0.0.0' : '::', exclusive: true }, () => {
      s.off('error', onError);
      for (const set of [() => s.setRecvBufferSize(SOCKET_BUFFER), () => s.setSendBufferSize(SOCKET_BUFFER)]) {
        try {
          set();
        } catch {
          // The kernel caps the size (net.core.rmem_max); what it grants is still used.
        }
      }
      resolve(s);
    });
  });
}

export class NodeUdpBind implements UdpBind {
  readonly #families: readonly ('IPv4' | 'IPv6')[];

  constructor(options: { families?: readonly ('IPv4' | 'IPv6')[] } = {}) {
    this.#families = options.families ?? ['IPv4', 'IPv6'];
  }

  #v4: dgram.Socket | null = null;
  #v6: dgram.Socket | null = null;
  #port = 0;
  #mark = 0;
  #onDatagram: ((d: Uint8Array, from: UdpEndpoint) => void) | null = null;

  get port(): number {
    return this.#port;
  }

  async open(port: number): Promise<number> {
    await this.close();
    const { v4, v6, port: bound } = await bindPair<dgram.Socket>(
      { open: (f, p) => bindSocket(f === 'IPv4' ? 'udp4' : 'udp6', p), port: (s) => s.address().port, close: (s) => s.close() },
      port,
      this.#families,
    );
    this.#v4 = v4;
    this.#v6 = v6;
    this.#port = bound;
    if (this.#mark !== 0) this.setMark(this.#mark);
    if (this.#onDatagram) this.#listen(this.#onDatagram);
    return bound;
  }

  start(onDatagram: (d: Uint8Array, from: UdpEndpoint) => void): void {
    this.#onDatagram = onDatagram;
    this.#listen(onDatagram);
  }

  #listen(onDatagram: (d: Uint8Array, from: UdpEndpoint) => void): void {
    for (const s of [this.#v4, this.#v6]) {
      if (s === null) continue;
      s.removeAllListeners('message');
      // rinfo carries address, family and port: it is the endpoint as is.
      s.on('message', (msg, rinfo) => onDatagram(msg, rinfo as UdpEndpoint));
      s.on('error', () => {});
    }
  }

  send(datagram: Uint8Array, to: UdpEndpoint): void {
    const s = to.family === 'IPv6' ? this.#v6 : this.#v4;
    if (s === null) return;
    // dgram sends asynchronously from the caller's memory, which the caller may reuse or wipe
    // once this returns (the contract of UdpBind.send): send a copy.
    s.send(Buffer.from(datagram), to.port, to.address);
  }

  /** node:dgram keeps no per-endpoint cache: nothing to forget. */
  forget(_endpoint: UdpEndpoint): void {}

  /** SO_MARK through setsockopt on the sockets' descriptors (needs CAP_NET_ADMIN). */
  setMark(mark: number): void {
    markSockets([this.#v4, this.#v6], mark);
    this.#mark = mark;
  }

  async close(): Promise<void> {
    const all = [this.#v4, this.#v6].filter((s): s is dgram.Socket => s !== null);
    this.#v4 = this.#v6 = null;
    this.#port = 0; // nothing is bound: UAPI then omits listen_port, as wireguard-go does
    await Promise.all(all.map((s) => new Promise<void>((r) => s.close(() => r()))));
  }
}

/**
 * A UdpBind over dgram sockets someone else bound: in rootless mode the parent process binds
 * them in the original network namespace and hands them in over Node IPC, so the relay traffic
 * leaves from the original namespace while this process lives in its own. `open` cannot rebind
 * them: it returns the port they are bound to (asking for another port is an error), and
 * `close` closes them for good.
 */
export class AdoptedUdpBind implements UdpBind {
  #v4: dgram.Socket | null;
  #v6: dgram.Socket | null;
  #onDatagram: ((d: Uint8Array, from: UdpEndpoint) => void) | null = null;

  constructor(sockets: { v4?: dgram.Socket | null; v6?: dgram.Socket | null }) {
    this.#v4 = sockets.v4 ?? null;
    this.#v6 = sockets.v6 ?? null;
    if (this.#v4 === null && this.#v6 === null) throw new Error('AdoptedUdpBind needs at least one socket');
    for (const s of [this.#v4, this.#v6]) s?.on('error', () => {});
  }

  get port(): number {
    const s = this.#v4 ?? this.#v6;
    if (s === null) return 0;
    try {
      return s.address().port;
    } catch {
      return 0; // closed
    }
  }

  async open(port: number): Promise<number> {
    const bound = this.port;
    if (bound === 0) throw new Error('the adopted sockets are closed');
    if (port !== 0 && port !== bound) throw new Error(`the adopted sockets are bound to port ${bound}, not ${port}`);
    return bound;
  }

  start(onDatagram: (d: Uint8Array, from: UdpEndpoint) => void): void {
    this.#onDatagram = onDatagram;
    for (const s of [this.#v4, this.#v6]) {
      if (s === null) continue;
      s.removeAllListeners('message');
      s.on('message', (msg, rinfo) => this.#onDatagram?.(msg, rinfo as UdpEndpoint));
    }
  }

  send(datagram: Uint8Array, to: UdpEndpoint): void {
    const s = to.family === 'IPv6' ? this.#v6 : this.#v4;
    if (s === null) return;
    s.send(Buffer.from(datagram), to.port, to.address); // a copy, as NodeUdpBind.send explains
  }

  forget(_endpoint: UdpEndpoint): void {}

  /** SO_MARK needs CAP_NET_ADMIN over the sockets' namespace, which a rootless client lacks. */
  setMark(mark: number): void {
    markSockets([this.#v4, this.#v6], mark);
  }

  async close(): Promise<void> {
    const all = [this.#v4, this.#v6].filter((s): s is dgram.Socket => s !== null);
    this.#v4 = this.#v6 = null;
    this.#onDatagram = null;
    await Promise.all(all.map((s) => new Promise<void>((r) => s.close(() => r()))));
  }
}
