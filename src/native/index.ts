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

/**
 * A relay's transport-data fast path (see src/native/strata.cc, "Express"). Per-peer events
 * (Float64Array(10)): rx packets, rx data packets, tx packets, tx data packets, rx bytes,
 * tx bytes, then the sequence numbers of the last rx, rx data, tx and tx data event. An opened
 * inner packet it cannot send itself (no forward socket of that family yet) goes to `onInner`,
 * as a view valid during the call. Stats (Float64Array(8)): forwarded packets and
 * payload bytes, replies, exit packets, refused forwards, decrypt failures, replays, inner
 * packets dropped (malformed, or from a source other than the client's hop address).
 */
export interface NativeExpress {
  attach(target: NativeUdpSocket | NativeTunQueue): void;
  setAllowed(records: Uint8Array): void;
  addPeer(id: number, endpoint: Int32Array, v4: Uint8Array, v6: Uint8Array, events: Float64Array): void;
  setEndpoint(id: number, endpoint: Int32Array): void;
  setForward(id: number, socket: NativeUdpSocket): void;
  removePeer(id: number): void;
  addSession(
    peerId: number,
    localIndex: number,
    remoteIndex: number,
    send: NativeAead,
    recv: NativeAead,
    counter: BigUint64Array,
    replayLast: BigUint64Array,
    replayRing: Uint32Array,
    rxMs: number,
    txMs: number,
    current: boolean,
  ): void;
  removeSession(localIndex: number): void;
  destroy(): void;
}

export interface NativeAddon {
  Express: new (
    stats: Float64Array,
    mtu: number,
    rekeyAfterMessages: bigint,
    rejectAfterMessages: bigint,
    replayWindow: bigint,
    onInner: (peerId: number, packet: Uint8Array) => void,
  ) => NativeExpress;
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
