/**
 * The narrow I/O interfaces the device drives, so the same device runs over real sockets and
 * TUN or over the in-memory doubles in memory.ts.
 */
import type { Endpoint } from '../wireguard/peer.ts';

export interface UdpEndpoint extends Endpoint {
  readonly family: 'IPv4' | 'IPv6';
  /**
   * The local address (and interface) the peer's datagram arrived on, where the bind can tell:
   * replies leave from it, so a peer that wrote to one of several addresses hears back from
   * that one (wireguard-go's sticky sockets). Absent on configured endpoints.
   */
  readonly local?: { readonly address: Uint8Array; readonly ifindex: number };
}

/** A layer-3 TUN device: one IP packet per read and per write. */
export interface Tun {
  readonly name: string;
  readonly mtu: number;
  /** Starts reading; `onPacket` gets each packet, valid only during the call (copy to keep). */
  start(onPacket: (packet: Uint8Array) => void, onClosed: (reason: Error) => void): void;
  write(packet: Uint8Array): void;
  close(): void;
}

/** A UDP bind on one port for IPv4 and (where available) IPv6. */
export interface UdpBind {
  /** Binds to `port` (0 picks one) and returns the port bound. */
  open(port: number): Promise<number>;
  readonly port: number;
  /** `onDatagram` gets each datagram, valid only during the call (copy to keep). */
  start(onDatagram: (datagram: Uint8Array, from: UdpEndpoint) => void): void;
  send(datagram: Uint8Array, to: UdpEndpoint): void;
  /** Sets SO_MARK on the sockets (0 clears); throws if the platform cannot. */
  setMark(mark: number): void;
  /** Forgets anything cached about a remote endpoint (a relay calls it when a client expires). */
  forget(endpoint: UdpEndpoint): void;
  close(): Promise<void>;
}
