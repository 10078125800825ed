/**
 * Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s, the handshake WireGuard is built on, with the
 * prologue as a parameter (WireGuard's is its identifier string). Ephemeral keys are passed
 * in, so the known-answer vectors can drive it; the WireGuard layer generates them.
 *
 *   <- s
 *   ...
 *   -> e, es, s, ss
 *   <- e, ee, se, psk
 */
import { hash, kdf } from '../crypto/blake2s.ts';
import { openOnce, sealOnce } from '../crypto/aead.ts';
import { wipe } from '../crypto/bytes.ts';
import { PublicKey, type PresharedKey, type PrivateKey } from '../crypto/keys.ts';

export const PROTOCOL_NAME = 'Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s';
const utf8 = new TextEncoder();

/** The chaining key and handshake hash (Noise's SymmetricState without the cipher nonce). */
export class SymmetricState {
  ck: Uint8Array;
  h: Uint8Array;

  constructor(ck: Uint8Array, h: Uint8Array) {
    this.ck = ck;
    this.h = h;
  }

  /** InitializeSymmetric(name) then MixHash(prologue). */
  static initialize(prologue: Uint8Array, protocolName = PROTOCOL_NAME): SymmetricState {
    const name = utf8.encode(protocolName);
    let h: Uint8Array;
    if (name.length <= 32) {
      h = new Uint8Array(32);
      h.set(name);
    } else h = hash(name);
    const s = new SymmetricState(Uint8Array.from(h), h);
    s.mixHash(prologue);
    return s;
  }

  clone(): SymmetricState {
    return new SymmetricState(Uint8Array.from(this.ck), Uint8Array.from(this.h));
  }

  mixHash(data: Uint8Array): void {
    const next = hash(this.h, data);
    this.h.fill(0);
    this.h = next;
  }

  #setCk(ck: Uint8Array): void {
    this.ck.fill(0);
    this.ck = ck;
  }

  /** MixKey: returns the new cipher key. */
  mixKey(input: Uint8Array): Uint8Array {
    const [ck, k] = kdf(2, this.ck, input) as [Uint8Array, Uint8Array];
    this.#setCk(ck);
    return k;
  }

  /** MixKey whose cipher key is not used (the whitepaper's KDF1). */
  mixChain(input: Uint8Array): void {
    const [ck] = kdf(1, this.ck, input) as [Uint8Array];
    this.#setCk(ck);
  }

  mixKeyAndHash(input: Uint8Array): Uint8Array {
    const [ck, t, k] = kdf(3, this.ck, input) as [Uint8Array, Uint8Array, Uint8Array];
    this.#setCk(ck);
    this.mixHash(t);
    t.fill(0);
    return k;
  }

  /** EncryptAndHash with a fresh key (nonce 0); the key is wiped. */
  encryptAndHash(key: Uint8Array, plaintext: Uint8Array): Uint8Array {
    const c = sealOnce(key, 0n, plaintext, this.h);
    key.fill(0);
    this.mixHash(c);
    return c;
  }

  decryptAndHash(key: Uint8Array, ciphertext: Uint8Array): Uint8Array | null {
    const p = openOnce(key, 0n, ciphertext, this.h);
    key.fill(0);
    if (p === null) return null;
    this.mixHash(ciphertext);
    return p;
  }

  /** Split(): the two transport keys, initiator-to-responder first. */
  split(): [Uint8Array, Uint8Array] {
    return kdf(2, this.ck, new Uint8Array(0)) as [Uint8Array, Uint8Array];
  }

  wipe(): void {
    wipe(this.ck, this.h);
  }
}

/** The responder's pre-message: the initiator knows its static key. */
export function initialState(prologue: Uint8Array, responderStatic: PublicKey): SymmetricState {
  const s = SymmetricState.initialize(prologue);
  s.mixHash(responderStatic.raw());
  return s;
}

export interface Message1 {
  ephemeral: Uint8Array;
  encryptedStatic: Uint8Array;
  encryptedPayload: Uint8Array;
}

/** -> e, es, s, ss. Returns null if a DH yields the all-zero point. */
export function writeMessage1(
  st: SymmetricState,
  localStatic: PrivateKey,
  localEphemeral: PrivateKey,
  remoteStatic: PublicKey,
  payload: Uint8Array,
  precomputedSS: Uint8Array | null = null,
): Message1 | null {
  const e = localEphemeral.publicKey().raw();
  st.mixHash(e);
  st.mixChain(e);
  const es = localEphemeral.dh(remoteStatic);
  if (es === null) return null;
  const encryptedStatic = st.encryptAndHash(st.mixKey(es), localStatic.publicKey().raw());
  es.fill(0);
  const ss = precomputedSS ?? localStatic.dh(remoteStatic);
  if (ss === null) return null;
  const k = st.mixKey(ss);
  if (precomputedSS === null) ss.fill(0);
  const encryptedPayload = st.encryptAndHash(k, payload);
  return { ephemeral: Uint8Array.from(e), encryptedStatic, encryptedPayload };
}


/** The first half of reading message 1, up to the initiator's static key. */
export function readMessage1Static(
  st: SymmetricState,
  localStatic: PrivateKey,
  ephemeral: Uint8Array,
  encryptedStatic: Uint8Array,
): { remoteEphemeral: PublicKey; remoteStatic: PublicKey } | null {
  st.mixHash(ephemeral);
  st.mixChain(ephemeral);
  const remoteEphemeral = new PublicKey(ephemeral);
  const es = localStatic.dh(remoteEphemeral);
  if (es === null) return null;
  const k = st.mixKey(es);
  es.fill(0);
  const s = st.decryptAndHash(k, encryptedStatic);
  if (s === null) return null;
  const remoteStatic = new PublicKey(s);
  s.fill(0);
  return { remoteEphemeral, remoteStatic };
}

/** The second half: ss, then the payload. */
export function readMessage1Payload(
  st: SymmetricState,
  localStatic: PrivateKey,
  remoteStatic: PublicKey,
  encryptedPayload: Uint8Array,
  precomputedSS: Uint8Array | null = null,
): Uint8Array | null {
  const ss = precomputedSS ?? localStatic.dh(remoteStatic);
  if (ss === null) return null;
  const k = st.mixKey(ss);
  if (precomputedSS === null) ss.fill(0);
  return st.decryptAndHash(k, encryptedPayload);
}

/** <- e, ee, se, psk. */
export function writeMessage2(
  st: SymmetricState,
  localEphemeral: PrivateKey,
  remoteEphemeral: PublicKey,
  remoteStatic: PublicKey,
  psk: PresharedKey,
  payload: Uint8Array,
): { ephemeral: Uint8Array; encryptedPayload: Uint8Array } | null {
  const e = localEphemeral.publicKey().raw();
  st.mixHash(e);
  st.mixChain(e);
  const ee = localEphemeral.dh(remoteEphemeral);
  if (ee === null) return null;
  st.mixChain(ee);
  ee.fill(0);
  const se = localEphemeral.dh(remoteStatic);
  if (se === null) return null;
  st.mixChain(se);
  se.fill(0);
  const k = st.mixKeyAndHash(psk.raw());
  return { ephemeral: Uint8Array.from(e), encryptedPayload: st.encryptAndHash(k, payload) };
}

export function readMessage2(
  st: SymmetricState,
  localStatic: PrivateKey,
  localEphemeral: PrivateKey,
  psk: PresharedKey,
  ephemeral: Uint8Array,
  encryptedPayload: Uint8Array,
): Uint8Array | null {
  st.mixHash(ephemeral);
  st.mixChain(ephemeral);
  const re = new PublicKey(ephemeral);
  const ee = localEphemeral.dh(re);
  if (ee === null) return null;
  st.mixChain(ee);
  ee.fill(0);
  const se = localStatic.dh(re);
  if (se === null) return null;
  st.mixChain(se);
  se.fill(0);
  const k = st.mixKeyAndHash(psk.raw());
  return st.decryptAndHash(k, encryptedPayload);
}
