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

export const ioBackend = (): 'native' | 'node' => (native !== null ? 'native' : 'node');
