/**
 * Typed WireGuard keys: a private key, a public key and a preshared key are distinct types,
 * parsed from base64 (the `wg` form) or hex (the UAPI form) with validation, compared in
 * constant time, and wiped when discarded. X25519 runs in node:crypto on KeyObjects made once.
 */
import { createPrivateKey, createPublicKey, diffieHellman, randomBytes, type KeyObject } from 'node:crypto';
import { constantTimeEqual, isAllZero } from './bytes.ts';
import { StrataError } from './errors.ts';

export const KEY_LEN = 32;

const PKCS8_X25519 = Buffer.from('302e020100300506032b656e04220420', 'hex');
const SPKI_X25519 = Buffer.from('302a300506032b656e032100', 'hex');

function decodeKey(text: string, what: string): Uint8Array {
  const t = text.trim();
  let raw: Buffer | null = null;
  if (/^[0-9a-fA-F]{64}$/.test(t)) raw = Buffer.from(t, 'hex');
  else if (/^[A-Za-z0-9+/]{43}=$/.test(t)) {
    raw = Buffer.from(t, 'base64');
    // Reject non-canonical encodings (the last character carries 2 unused bits).
    if (raw.toString('base64') !== t) raw = null;
  }
  if (raw === null || raw.length !== KEY_LEN) {
    throw new StrataError('ERR_KEY_FORMAT', `${what} must be 32 bytes in base64 (44 characters) or hex (64 characters)`);
  }
  return new Uint8Array(raw);
}

abstract class Key {
  protected bytes: Uint8Array;
  protected constructor(bytes: Uint8Array) {
    if (bytes.length !== KEY_LEN) throw new StrataError('ERR_KEY_LENGTH', 'a key must be 32 bytes');
    this.bytes = bytes;
  }
  /** The raw bytes. Callers must not keep or log them. */
  raw(): Uint8Array {
    return this.bytes;
  }
  toBase64(): string {
    return Buffer.from(this.bytes).toString('base64');
  }
  toHex(): string {
    return Buffer.from(this.bytes).toString('hex');
  }
  isZero(): boolean {
    return isAllZero(this.bytes);
  }
  /** Keys never print themselves. */
  toString(): string {
    return `[${this.constructor.name}]`;
  }
  toJSON(): string {
    return this.toString();
  }
  [Symbol.for('nodejs.util.inspect.custom')](): string {
    return this.toString();
  }
}

export class PublicKey extends Key {
  declare private readonly brand: 'public';
  #object: KeyObject | null = null;
  constructor(bytes: Uint8Array) {
    super(Uint8Array.from(bytes));
  }
  static parse(text: string): PublicKey {
    return new PublicKey(decodeKey(text, 'public key'));
  }
  equals(other: PublicKey): boolean {
    return constantTimeEqual(this.bytes, other.bytes);
  }
  /** The node:crypto KeyObject for X25519, created once. */
  keyObject(): KeyObject {
    if (this.#object === null) {
      // An unpooled buffer, wiped once OpenSSL has the key: no copy stays behind in a pool slab.
      const der = Buffer.alloc(SPKI_X25519.length + KEY_LEN);
      SPKI_X25519.copy(der);
      der.set(this.bytes, SPKI_X25519.length);
      this.#object = createPublicKey({ key: der, format: 'der', type: 'spki' });
      der.fill(0);
    }
    return this.#object;
  }
}

export class PrivateKey extends Key {
  declare private readonly brand: 'private';
  #object: KeyObject | null = null;
  #public: PublicKey | null = null;
  constructor(bytes: Uint8Array) {
    const b = Uint8Array.from(bytes);
    // Clamp as Curve25519 requires (and as `wg genkey` does).
    b[0]! &= 248;
    b[31]! &= 127;
    b[31]! |= 64;
    super(b);
  }
  static generate(): PrivateKey {
    const r = randomBytes(KEY_LEN);
    const k = new PrivateKey(r);
    r.fill(0);
    return k;
  }
  static parse(text: string): PrivateKey {
    const raw = decodeKey(text, 'private key');
    const k = new PrivateKey(raw);
    raw.fill(0);
    return k;
  }
  keyObject(): KeyObject {
    if (this.#object === null) {
      const der = Buffer.alloc(PKCS8_X25519.length + KEY_LEN);
      PKCS8_X25519.copy(der);
      der.set(this.bytes, PKCS8_X25519.length);
      this.#object = createPrivateKey({ key: der, format: 'der', type: 'pkcs8' });
      der.fill(0);
    }
    return this.#object;
  }
  publicKey(): PublicKey {
    if (this.#public === null) {
      const der = createPublicKey(this.keyObject()).export({ format: 'der', type: 'spki' });
      this.#public = new PublicKey(der.subarray(der.length - KEY_LEN));
    }
    return this.#public;
  }
  equals(other: PrivateKey): boolean {
    return constantTimeEqual(this.bytes, other.bytes);
  }
  /**
   * X25519(this, peer). Returns null for a low-order peer point (all-zero shared secret), which
   * WireGuard must refuse. Never throws on a hostile public key.
   */
  dh(peer: PublicKey): Uint8Array | null {
    let shared: Buffer;
    try {
      shared = diffieHellman({ privateKey: this.keyObject(), publicKey: peer.keyObject() });
    } catch {
      return null; // OpenSSL refuses an all-zero result itself
    }
    const out = new Uint8Array(shared);
    shared.fill(0);
    return isAllZero(out) ? null : out;
  }
  wipe(): void {
    this.bytes.fill(0);
    this.#object = null;
  }
}

export class PresharedKey extends Key {
  declare private readonly brand: 'preshared';
  constructor(bytes: Uint8Array) {
    super(Uint8Array.from(bytes));
  }
  static zero(): PresharedKey {
    return new PresharedKey(new Uint8Array(KEY_LEN));
  }
  static generate(): PresharedKey {
    const r = randomBytes(KEY_LEN);
    const k = new PresharedKey(r);
    r.fill(0);
    return k;
  }
  static parse(text: string): PresharedKey {
    const raw = decodeKey(text, 'preshared key');
    const k = new PresharedKey(raw);
    raw.fill(0);
    return k;
  }
  equals(other: PresharedKey): boolean {
    return constantTimeEqual(this.bytes, other.bytes);
  }
  wipe(): void {
    this.bytes.fill(0);
  }
}
