/**
 * ChaCha20-Poly1305 (RFC 8439) from node:crypto, or from the same OpenSSL through the native
 * addon with its context reused, with a key set up once per session; and
 * XChaCha20-Poly1305 from @noble (cookie replies). Nonces are WireGuard's: 4 zero bytes then a
 * little-endian u64 counter.
 */
import { createCipheriv, createDecipheriv, createSecretKey, type KeyObject } from 'node:crypto';
import { xchacha20poly1305 } from '@noble/ciphers/chacha.js';
import { native, type NativeAead } from '../native/index.ts';

export const TAG_LEN = 16;
export const KEY_LEN = 32;
const ZERO_PAD = new Uint8Array(16);

/**
 * A transport key: ChaCha20-Poly1305 with no associated data, set up once per key. With the
 * native addon the OpenSSL context is kept and reused for every packet; without it, a
 * node:crypto KeyObject is kept and a cipher is made per packet. The raw key bytes passed in
 * are wiped once the key is held.
 */
export class AeadKey {
  #key: KeyObject | null = null;
  #native: NativeAead | null = null;
  #live = true;
  readonly #nonce = Buffer.alloc(12);

  constructor(raw: Uint8Array) {
    if (raw.length !== KEY_LEN) throw new RangeError('AEAD key must be 32 bytes');
    if (native !== null) this.#native = new native.Aead(raw);
    else this.#key = createSecretKey(raw);
    raw.fill(0);
  }

  /** 'native' (reused OpenSSL context) or 'node' (node:crypto, a cipher per packet). */
  static get backend(): 'native' | 'node' {
    return native !== null ? 'native' : 'node';
  }

  /** The native context behind this key (a relay's fast path seals and opens with it), or null. */
  get nativeHandle(): NativeAead | null {
    return this.#native;
  }

  get destroyed(): boolean {
    return !this.#live;
  }

  /** Frees the key: the native context is freed (OpenSSL cleanses it); later use throws. */
  destroy(): void {
    this.#live = false;
    this.#native?.destroy();
    this.#native = null;
    this.#key = null;
  }

  #setNonce(counter: bigint): Buffer {
    this.#nonce.writeBigUInt64LE(counter, 4);
    return this.#nonce;
  }

  #object(): KeyObject {
    if (!this.#live || this.#key === null) throw new Error('AEAD key used after destroy');
    return this.#key;
  }

  /**
   * Seals plaintext followed by `pad` zero bytes (pad < 16) into out[offset..], with no copy
   * of the plaintext; returns the bytes written (plaintext + pad + 16).
   */
  sealPaddedInto(counter: bigint, plaintext: Uint8Array, pad: number, out: Uint8Array, offset: number): number {
    if (this.#native !== null) return this.#native.seal(counter, plaintext, pad, out, offset);
    const c = createCipheriv('chacha20-poly1305', this.#object(), this.#setNonce(counter), { authTagLength: TAG_LEN });
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

  seal(counter: bigint, plaintext: Uint8Array): Uint8Array {
    const out = new Uint8Array(plaintext.length + TAG_LEN);
    this.sealPaddedInto(counter, plaintext, 0, out, 0);
    return out;
  }

  /** Decrypts ciphertext||tag; returns null when authentication fails. */
  open(counter: bigint, sealed: Uint8Array): Uint8Array | null {
    if (sealed.length < TAG_LEN) return null;
    if (this.#native !== null) {
      const n = sealed.length - TAG_LEN;
      const out = Buffer.allocUnsafe(n);
      return this.#native.open(counter, sealed, out, 0) < 0 ? null : new Uint8Array(out.buffer, out.byteOffset, n);
    }
    return decipher(this.#object(), this.#setNonce(counter), sealed, null);
  }
}

/** ChaCha20-Poly1305 open on node:crypto: the plaintext, or null (wiped) if not authentic. */
function decipher(key: KeyObject | Uint8Array, nonce: Buffer, sealed: Uint8Array, aad: Uint8Array | null): Uint8Array | null {
  const n = sealed.length - TAG_LEN;
  const d = createDecipheriv('chacha20-poly1305', key, nonce, { authTagLength: TAG_LEN });
  d.setAuthTag(sealed.subarray(n));
  if (aad !== null) d.setAAD(aad, { plaintextLength: n });
  const body = d.update(sealed.subarray(0, n));
  try {
    d.final();
  } catch {
    body.fill(0);
    return null;
  }
  return new Uint8Array(body.buffer, body.byteOffset, body.length);
}

function nonceOf(counter: bigint): Buffer {
  const n = Buffer.alloc(12);
  n.writeBigUInt64LE(counter, 4);
  return n;
}

/** One-shot ChaCha20-Poly1305 with associated data (handshake messages), from node:crypto. */
export function sealOnce(key: Uint8Array, counter: bigint, plaintext: Uint8Array, aad: Uint8Array): Uint8Array {
  const c = createCipheriv('chacha20-poly1305', key, nonceOf(counter), { authTagLength: TAG_LEN });
  c.setAAD(aad, { plaintextLength: plaintext.length });
  return Buffer.concat([c.update(plaintext), c.final(), c.getAuthTag()]);
}

export function openOnce(key: Uint8Array, counter: bigint, sealed: Uint8Array, aad: Uint8Array): Uint8Array | null {
  if (sealed.length < TAG_LEN) return null;
  return decipher(key, nonceOf(counter), sealed, aad);
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
