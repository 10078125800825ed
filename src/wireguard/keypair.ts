/** A session's transport keys, counters and replay window. */
import { AeadKey } from '../crypto/aead.ts';
import { ReplayFilter } from './replay.ts';

export class Keypair {
  readonly send: AeadKey;
  readonly recv: AeadKey;
  /** The next counter to use when sending (u64). */
  sendCounter = 0n;
  readonly replay = new ReplayFilter();
  readonly created: number;
  readonly isInitiator: boolean;
  readonly localIndex: number;
  readonly remoteIndex: number;

  /** Takes ownership of the raw keys: AeadKey wipes them once it holds them. */
  constructor(sendKey: Uint8Array, recvKey: Uint8Array, created: number, isInitiator: boolean, localIndex: number, remoteIndex: number) {
    this.send = new AeadKey(sendKey);
    this.recv = new AeadKey(recvKey);
    this.created = created;
    this.isInitiator = isInitiator;
    this.localIndex = localIndex;
    this.remoteIndex = remoteIndex;
  }

  destroy(): void {
    this.send.destroy();
    this.recv.destroy();
    this.replay.reset();
  }
}
