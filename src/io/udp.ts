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
    const value = Buffer.alloc(4);
    value.writeUInt32LE(mark >>> 0);
    for (const s of [this.#v4, this.#v6]) {
      if (s === null) continue;
      const fd = socketFd(s);
      if (fd === null) throw new Error('socket descriptor not available');
      if (sys().setsockopt(fd, SOL_SOCKET, SO_MARK, value, 4) !== 0) throw new Error(`SO_MARK failed (errno ${sys().errno()})`);
    }
    this.#mark = mark;
  }

  async close(): Promise<void> {
    const all = [this.#v4, this.#v6].filter((s): s is dgram.Socket => s !== null);
    this.#v4 = this.#v6 = null;
    this.#port = 0; // nothing is bound: UAPI then omits listen_port, as wireguard-go does
    await Promise.all(all.map((s) => new Promise<void>((r) => s.close(() => r()))));
  }
}
