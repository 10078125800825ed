/**
 * ChaCha20-Poly1305 (RFC 8439) from node:crypto, with a KeyObject created once per key, and
 * XChaCha20-Poly1305 from @noble (cookie replies). Nonces are WireGuard's: 4 zero bytes then a
 * little-endian u64 counter.
 */
import { createCipheriv, createDecipheriv, createSecretKey, type KeyObject } from 'node:crypto';
import { xchacha20poly1305 } from '@noble/ciphers/chacha.js';

export const TAG_LEN = 16;
export const KEY_LEN = 32;
const ZERO_PAD = new Uint8Array(16);

/** A ChaCha20-Poly1305 key held as a KeyObject; the raw bytes are wiped on construction. */
export class AeadKey {
  #key: KeyObject | null;
  readonly #nonce = Buffer.alloc(12);

  constructor(raw: Uint8Array) {
    if (raw.length !== KEY_LEN) throw new RangeError('AEAD key must be 32 bytes');
    this.#key = createSecretKey(raw);
    raw.fill(0);
  }

  get destroyed(): boolean {
    return this.#key === null;
  }

  /** Drops the key object; later use throws. (Node offers no way to overwrite a KeyObject.) */
  destroy(): void {
    this.#key = null;
  }

  #setNonce(counter: bigint): Buffer {
    this.#nonce.writeBigUInt64LE(counter, 4);
    return this.#nonce;
  }

  #live(): KeyObject {
    if (this.#key === null) throw new Error('AEAD key used after destroy');
    return this.#key;
  }

  /** Encrypts into out[offset..] (plaintext.length + 16 bytes) and returns the bytes written. */
  sealInto(counter: bigint, plaintext: Uint8Array, aad: Uint8Array | null, out: Uint8Array, offset: number): number {
    const c = createCipheriv('chacha20-poly1305', this.#live(), this.#setNonce(counter), { authTagLength: TAG_LEN });
    if (aad !== null && aad.length > 0) c.setAAD(aad, { plaintextLength: plaintext.length });
    const body = c.update(plaintext);
    c.final();
    out.set(body, offset);
    out.set(c.getAuthTag(), offset + body.length);
    return body.length + TAG_LEN;
  }

  /**
   * Seals plaintext followed by `pad` zero bytes (pad < 16) into out[offset..], with no copy
   * of the plaintext; returns the bytes written (plaintext + pad + 16).
   */
  sealPaddedInto(counter: bigint, plaintext: Uint8Array, pad: number, out: Uint8Array, offset: number): number {
    const c = createCipheriv('chacha20-poly1305', this.#live(), this.#setNonce(counter), { authTagLength: TAG_LEN });
    let o = offset;
    const body = c.update(plaintext);
    out.set(body, o);
    o += body.length;
    if (pad > 0) {
      const tail = c.update(ZERO_PAD.subarray(0, pad));
      out.set(tail, o);
      o += tail.length;
    }
    c.final();
    out.set(c.getAuthTag(), o);
    return o + TAG_LEN - offset;
  }

  seal(counter: bigint, plaintext: Uint8Array, aad: Uint8Array | null = null): Uint8Array {
    const out = new Uint8Array(plaintext.length + TAG_LEN);
    this.sealInto(counter, plaintext, aad, out, 0);
    return out;
  }

  /** Decrypts ciphertext||tag; returns null when authentication fails. */
  open(counter: bigint, sealed: Uint8Array, aad: Uint8Array | null = null): Uint8Array | null {
    if (sealed.length < TAG_LEN) return null;
    const n = sealed.length - TAG_LEN;
    const d = createDecipheriv('chacha20-poly1305', this.#live(), this.#setNonce(counter), { authTagLength: TAG_LEN });
    d.setAuthTag(sealed.subarray(n));
    if (aad !== null && aad.length > 0) d.setAAD(aad, { plaintextLength: n });
    const body = d.update(sealed.subarray(0, n));
    try {
      d.final();
    } catch {
      body.fill(0);
      return null;
    }
    return new Uint8Array(body.buffer, body.byteOffset, body.byteLength);
  }
}

/** One-shot ChaCha20-Poly1305 with a key used once (handshake messages). */
export function sealOnce(key: Uint8Array, counter: bigint, plaintext: Uint8Array, aad: Uint8Array): Uint8Array {
  return new AeadKey(Uint8Array.from(key)).seal(counter, plaintext, aad);
}

export function openOnce(key: Uint8Array, counter: bigint, sealed: Uint8Array, aad: Uint8Array): Uint8Array | null {
  return new AeadKey(Uint8Array.from(key)).open(counter, sealed, aad);
}

export function xseal(key: Uint8Array, nonce24: Uint8Array, plaintext: Uint8Array, aad: Uint8Array): Uint8Array {
  return xchacha20poly1305(key, nonce24, aad).encrypt(plaintext);
}

export function xopen(key: Uint8Array, nonce24: Uint8Array, sealed: Uint8Array, aad: Uint8Array): Uint8Array | null {
  try {
    return xchacha20poly1305(key, nonce24, aad).decrypt(sealed);
  } catch {
    return null;
  }
}
