/** A session's transport keys, counters and replay window. */
import { AeadKey } from '../crypto/aead.ts';
import { ReplayFilter } from './replay.ts';

export class Keypair {
  readonly send: AeadKey;
  readonly recv: AeadKey;
  /**
   * The next counter to use when sending (u64), in memory a relay's native fast path shares
   * (see src/relay/express.ts).
   */
  readonly counter = new BigUint64Array(1);
  readonly replay = new ReplayFilter();
  readonly created: number;
  readonly isInitiator: boolean;
  readonly localIndex: number;
  readonly remoteIndex: number;
  /** Called once when the keys are destroyed (a fast path that holds them lets go). */
  onDestroy: (() => void) | null = null;

  /** Takes ownership of the raw keys: AeadKey wipes them once it holds them. */
  constructor(sendKey: Uint8Array, recvKey: Uint8Array, created: number, isInitiator: boolean, localIndex: number, remoteIndex: number) {
    this.send = new AeadKey(sendKey);
    this.recv = new AeadKey(recvKey);
    this.created = created;
    this.isInitiator = isInitiator;
    this.localIndex = localIndex;
    this.remoteIndex = remoteIndex;
  }

  get sendCounter(): bigint {
    return this.counter[0]!;
  }

  set sendCounter(value: bigint) {
    this.counter[0] = value;
  }

  destroy(): void {
    const hook = this.onDestroy;
    this.onDestroy = null;
    hook?.();
    this.send.destroy();
    this.recv.destroy();
    this.replay.reset();
    this.counter[0] = 0n;
  }
}
