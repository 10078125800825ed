/**
 * The WireGuard handshake (whitepaper section 5.4) on top of the Noise IKpsk2 pattern: the
 * per-peer handshake state, and creating/consuming initiations and responses. All work is done
 * on copies of the symmetric state, so a message that fails half-way changes nothing.
 */
import { PrivateKey, type PresharedKey, type PublicKey } from '../crypto/keys.ts';
import { wipe } from '../crypto/bytes.ts';
import * as tai64n from '../crypto/tai64n.ts';
import {
  initialState,
  readMessage1Payload,
  readMessage1Static,
  readMessage2,
  writeMessage1,
  writeMessage2,
  type SymmetricState,
} from './noise.ts';
import { writeInitiation, writeResponse, type Initiation, type Response } from './messages.ts';

export const IDENTIFIER = new TextEncoder().encode('WireGuard v1 zx2c4 Jason@zx2c4.com');

export type HandshakeState = 'zeroed' | 'initiation-created' | 'initiation-consumed';

/** What one peer's handshake holds between messages. */
export class Handshake {
  state: HandshakeState = 'zeroed';
  sym: SymmetricState | null = null;
  localEphemeral: PrivateKey | null = null;
  remoteEphemeral: PublicKey | null = null;
  localIndex = 0;
  remoteIndex = 0;
  /** The newest initiation timestamp accepted from this peer (TAI64N). */
  lastTimestamp: Uint8Array = new Uint8Array(tai64n.TAI64N_LEN);
  lastInitiationConsumption = -Infinity;
  lastSentHandshake = -Infinity;

  clear(): void {
    this.sym?.wipe();
    this.sym = null;
    this.localEphemeral?.wipe();
    this.localEphemeral = null;
    this.remoteEphemeral = null;
    this.localIndex = 0;
    this.remoteIndex = 0;
    this.state = 'zeroed';
  }
}

/** The static identity and the precomputed values for one remote peer. */
export interface HandshakeContext {
  readonly localStatic: PrivateKey;
  readonly remoteStatic: PublicKey;
  readonly presharedKey: PresharedKey;
  /** DH(local static, remote static), or null if the remote key is a low-order point. */
  readonly staticStatic: Uint8Array | null;
  /** The symmetric state after hashing the responder's static key, ready to clone. */
  readonly initiatorStart: SymmetricState;
}

export function initiatorStart(remoteStatic: PublicKey): SymmetricState {
  return initialState(IDENTIFIER, remoteStatic);
}

/** Creates an initiation (MACs still zero) and moves the handshake to initiation-created. */
export function createInitiation(
  hs: Handshake,
  ctx: HandshakeContext,
  localIndex: number,
  wallMs: number,
  ephemeral: PrivateKey = PrivateKey.generate(),
): Uint8Array | null {
  if (ctx.staticStatic === null) return null;
  const st = ctx.initiatorStart.clone();
  const ts = tai64n.encode(wallMs);
  const m = writeMessage1(st, ctx.localStatic, ephemeral, ctx.remoteStatic, ts, ctx.staticStatic);
  if (m === null) {
    st.wipe();
    ephemeral.wipe();
    return null;
  }
  hs.clear();
  hs.sym = st;
  hs.localEphemeral = ephemeral;
  hs.localIndex = localIndex;
  hs.state = 'initiation-created';
  return writeInitiation(localIndex, m.ephemeral, m.encryptedStatic, m.encryptedPayload);
}

export type InitiationCheck =
  | { ok: true; remoteStatic: PublicKey; finish: (ctx: HandshakeContext, hs: Handshake, now: number) => InitiationRefusal | null }
  | { ok: false; reason: 'initiation-decrypt' };

export type InitiationRefusal = 'initiation-decrypt' | 'initiation-replay' | 'initiation-flood' | 'low-order-key';

/**
 * Consumes an initiation in two steps: the first finds who sent it (its static key), the
 * second, given that peer's context and handshake, checks the timestamp and flood limit and,
 * on success, moves the handshake to initiation-consumed.
 */
export function consumeInitiation(msg: Initiation, localStatic: PrivateKey, responderStart: SymmetricState, floodInterval: number): InitiationCheck {
  const st = responderStart.clone();
  const first = readMessage1Static(st, localStatic, msg.ephemeral, msg.encryptedStatic);
  if (first === null) {
    st.wipe();
    return { ok: false, reason: 'initiation-decrypt' };
  }
  return {
    ok: true,
    remoteStatic: first.remoteStatic,
    finish(ctx, hs, now) {
      if (ctx.staticStatic === null) {
        st.wipe();
        return 'low-order-key';
      }
      const ts = readMessage1Payload(st, localStatic, first.remoteStatic, msg.encryptedTimestamp, ctx.staticStatic);
      if (ts === null || ts.length !== tai64n.TAI64N_LEN) {
        st.wipe();
        return 'initiation-decrypt';
      }
      const replay = !tai64n.after(ts, hs.lastTimestamp);
      const flood = now - hs.lastInitiationConsumption <= floodInterval;
      if (replay || flood) {
        st.wipe();
        return replay ? 'initiation-replay' : 'initiation-flood';
      }
      hs.clear();
      hs.sym = st;
      hs.remoteEphemeral = first.remoteEphemeral;
      hs.remoteIndex = msg.sender;
      hs.lastTimestamp = ts;
      hs.lastInitiationConsumption = now;
      hs.state = 'initiation-consumed';
      return null;
    },
  };
}

export interface SessionKeys {
  send: Uint8Array;
  recv: Uint8Array;
  localIndex: number;
  remoteIndex: number;
}

/** Creates the response to a consumed initiation and derives the responder's session keys. */
export function createResponse(
  hs: Handshake,
  ctx: HandshakeContext,
  localIndex: number,
  ephemeral: PrivateKey = PrivateKey.generate(),
): { message: Uint8Array; keys: SessionKeys } | null {
  if (hs.state !== 'initiation-consumed' || hs.sym === null || hs.remoteEphemeral === null) return null;
  const st = hs.sym;
  const m = writeMessage2(st, ephemeral, hs.remoteEphemeral, ctx.remoteStatic, ctx.presharedKey, new Uint8Array(0));
  ephemeral.wipe();
  if (m === null) {
    hs.clear();
    return null;
  }
  const message = writeResponse(localIndex, hs.remoteIndex, m.ephemeral, m.encryptedPayload);
  const [i2r, r2i] = st.split();
  const keys = { send: r2i, recv: i2r, localIndex, remoteIndex: hs.remoteIndex };
  hs.clear();
  return { message, keys };
}

/** Consumes a response to our initiation and derives the initiator's session keys. */
export function consumeResponse(hs: Handshake, ctx: HandshakeContext, msg: Response): SessionKeys | null {
  if (hs.state !== 'initiation-created' || hs.sym === null || hs.localEphemeral === null) return null;
  const st = hs.sym.clone();
  const payload = readMessage2(st, ctx.localStatic, hs.localEphemeral, ctx.presharedKey, msg.ephemeral, msg.encryptedNothing);
  if (payload === null || payload.length !== 0) {
    st.wipe();
    return null;
  }
  const [i2r, r2i] = st.split();
  st.wipe();
  const keys = { send: i2r, recv: r2i, localIndex: hs.localIndex, remoteIndex: msg.sender };
  hs.clear();
  return keys;
}

export function wipeKeys(k: SessionKeys): void {
  wipe(k.send, k.recv);
}
