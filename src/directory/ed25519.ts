/** Ed25519 identity and authority keys, from node:crypto, with raw 32-byte public keys. */
import { createPrivateKey, createPublicKey, generateKeyPairSync, sign, verify, type KeyObject } from 'node:crypto';
import { StrataError } from '../crypto/errors.ts';

const SPKI = Buffer.from('302a300506032b6570032100', 'hex');
const PKCS8 = Buffer.from('302e020100300506032b657004220420', 'hex');

export class SigningKey {
  readonly #key: KeyObject;
  readonly publicKey: Uint8Array;

  private constructor(key: KeyObject) {
    this.#key = key;
    const der = createPublicKey(key).export({ format: 'der', type: 'spki' });
    this.publicKey = new Uint8Array(der.subarray(der.length - 32));
  }

  static generate(): SigningKey {
    return new SigningKey(generateKeyPairSync('ed25519').privateKey);
  }

  /** From the 32-byte seed, base64. */
  static parse(text: string): SigningKey {
    const raw = Buffer.from(text.trim(), 'base64');
    if (raw.length !== 32 || raw.toString('base64') !== text.trim()) throw new StrataError('ERR_KEY_FORMAT', 'a signing key is 32 bytes of base64');
    const der = Buffer.concat([PKCS8, raw]);
    raw.fill(0);
    const k = new SigningKey(createPrivateKey({ key: der, format: 'der', type: 'pkcs8' }));
    der.fill(0);
    return k;
  }

  /** The 32-byte seed, base64 (for an authority's own key file). */
  toBase64(): string {
    const der = this.#key.export({ format: 'der', type: 'pkcs8' });
    const s = Buffer.from(der.subarray(der.length - 32)).toString('base64');
    der.fill(0);
    return s;
  }

  get publicKeyBase64(): string {
    return Buffer.from(this.publicKey).toString('base64');
  }

  sign(data: Uint8Array): Uint8Array {
    return new Uint8Array(sign(null, data, this.#key));
  }

  toString(): string {
    return '[SigningKey]';
  }
}

export function parsePublicKey(text: string): Uint8Array | null {
  const raw = Buffer.from(text, 'base64');
  if (raw.length !== 32 || raw.toString('base64') !== text) return null;
  return new Uint8Array(raw);
}

export function verifySignature(publicKey: Uint8Array, data: Uint8Array, signature: Uint8Array): boolean {
  if (publicKey.length !== 32 || signature.length !== 64) return false;
  try {
    const key = createPublicKey({ key: Buffer.concat([SPKI, publicKey]), format: 'der', type: 'spki' });
    return verify(null, data, key, signature);
  } catch {
    return false;
  }
}
