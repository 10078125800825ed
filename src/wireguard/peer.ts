/**
 * One remote peer's state: identity, endpoint, handshake, the previous/current/next keypairs,
 * packets staged while no session is up, timers held as deadlines (ms on the caller's
 * monotonic clock, null when disarmed) and counters. The core (core.ts) drives it.
 */
import type { PresharedKey, PublicKey } from '../crypto/keys.ts';
import { wipe } from '../crypto/bytes.ts';
import { CookieGenerator } from './cookie.ts';
import { Handshake, initiatorStart, type HandshakeContext } from './handshake.ts';
import type { Keypair } from './keypair.ts';
import type { SymmetricState } from './noise.ts';

/** A remote address. The core stores and returns it; it never opens anything with it. */
export interface Endpoint {
  readonly address: string;
  readonly port: number;
}

export interface Timers {
  retransmitHandshake: number | null;
  sendKeepalive: number | null;
  newHandshake: number | null;
  zeroKeyMaterial: number | null;
  persistentKeepalive: number | null;
}

export class Peer<E extends Endpoint = Endpoint> {
  readonly publicKey: PublicKey;
  presharedKey: PresharedKey;
  endpoint: E | null = null;
  /** Seconds; 0 is off. */
  persistentKeepaliveInterval = 0;

  readonly handshake = new Handshake();
  readonly cookies: CookieGenerator;
  previous: Keypair | null = null;
  current: Keypair | null = null;
  next: Keypair | null = null;

  readonly staged: Uint8Array[] = [];
  readonly timers: Timers = {
    retransmitHandshake: null,
    sendKeepalive: null,
    newHandshake: null,
    zeroKeyMaterial: null,
    persistentKeepalive: null,
  };
  handshakeAttempts = 0;
  needAnotherKeepalive = false;
  sentLastMinuteHandshake = false;

  rxBytes = 0;
  txBytes = 0;
  /** Wall-clock ms of the last completed handshake, 0 if none (as `wg` shows it). */
  lastHandshakeWallMs = 0;

  /** Set by the core: DH(our static, theirs) and the initial symmetric state. */
  staticStatic: Uint8Array | null = null;
  readonly initiatorStart: SymmetricState;

  constructor(publicKey: PublicKey, presharedKey: PresharedKey) {
    this.publicKey = publicKey;
    this.presharedKey = presharedKey;
    this.cookies = new CookieGenerator(publicKey);
    this.initiatorStart = initiatorStart(publicKey);
  }

  /** The keypairs in the order the receive path tries them. */
  keypairs(): Keypair[] {
    const out: Keypair[] = [];
    if (this.current) out.push(this.current);
    if (this.previous) out.push(this.previous);
    if (this.next) out.push(this.next);
    return out;
  }

  /** The earliest armed timer, or null. */
  nextDeadline(): number | null {
    let best: number | null = null;
    for (const t of Object.values(this.timers)) if (t !== null && (best === null || t < best)) best = t;
    return best;
  }

  context(localStatic: import('../crypto/keys.ts').PrivateKey): HandshakeContext {
    return {
      localStatic,
      remoteStatic: this.publicKey,
      presharedKey: this.presharedKey,
      staticStatic: this.staticStatic,
      initiatorStart: this.initiatorStart,
    };
  }

  wipeStatic(): void {
    wipe(this.staticStatic);
    this.staticStatic = null;
  }
}
