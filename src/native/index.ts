/**
 * Loads the optional native addon (build/Release/strata_native.node, built by `npm ci` through
 * node-gyp). When it is missing, or STRATA_NATIVE=0, callers use the pure TypeScript path;
 * both sit behind the same interfaces and both are tested.
 */
import { createRequire } from 'node:module';

export interface NativeAead {
  seal(counter: bigint, src: Uint8Array, pad: number, dst: Uint8Array, dstOffset: number): number;
  open(counter: bigint, sealed: Uint8Array, dst: Uint8Array, dstOffset: number): number;
  destroy(): void;
}

export interface NativeUdpSocket {
  start(onBatch: (count: number) => void): void;
  send(count: number): number;
  port(): number;
  setMark(mark: number): number;
  close(): void;
  fd(): number;
}

export interface NativeTunQueue {
  start(onBatch: (count: number) => void): void;
  write(packet: Uint8Array): number;
  close(): void;
  fd(): number;
}

export interface NativeAddon {
  Aead: new (key: Uint8Array) => NativeAead;
  UdpSocket: new (
    family: 4 | 6,
    port: number,
    rxData: ArrayBuffer,
    rxMeta: Int32Array,
    txData: ArrayBuffer,
    txMeta: Int32Array,
    rxSlots: number,
    txSlots: number,
    slotSize: number,
  ) => NativeUdpSocket;
  TunQueue: new (fd: number, rxData: ArrayBuffer, rxMeta: Int32Array, slots: number, slotSize: number) => NativeTunQueue;
}

function load(): { addon: NativeAddon | null; reason: string } {
  if (process.env.STRATA_NATIVE === '0') return { addon: null, reason: 'disabled by STRATA_NATIVE=0' };
  try {
    const require = createRequire(import.meta.url);
    return { addon: require('../../build/Release/strata_native.node') as NativeAddon, reason: '' };
  } catch (e) {
    return { addon: null, reason: `not built (${(e as Error).message.split('\n')[0]})` };
  }
}

const loaded = load();

/** The addon, or null when the pure TypeScript path is in use. */
export const native: NativeAddon | null = loaded.addon;
/** Why the addon is not in use ('' when it is). */
export const nativeUnavailableReason: string = loaded.reason;
