/** Picks the I/O implementation: the native addon's when built, else the pure TypeScript one. */
import { native } from '../native/index.ts';
import { NativeTun, NativeUdpBind } from './native.ts';
import { LinuxTun } from './tun.ts';
import { NodeUdpBind } from './udp.ts';
import type { Tun, UdpBind } from './types.ts';

export function createTun(name: string, mtu = 1420): Tun {
  return native !== null ? NativeTun.create(name, mtu) : LinuxTun.create(name, mtu);
}

export function createBind(): UdpBind {
  return native !== null ? new NativeUdpBind() : new NodeUdpBind();
}

/**
 * A light bind for one family, as a relay opens per client to forward to the next hop: small
 * arenas (datagrams up to 4 KiB, the size of a cascade layer at any sane MTU).
 */
export function createForwardBind(family: 'IPv4' | 'IPv6'): UdpBind {
  return native !== null
    ? new NativeUdpBind({ families: [family], sizes: { rxSlots: 16, txSlots: 16, slotSize: 4096 } })
    : new NodeUdpBind({ families: [family] });
}

export const ioBackend = (): 'native' | 'node' => (native !== null ? 'native' : 'node');
