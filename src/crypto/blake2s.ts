/**
 * BLAKE2s as WireGuard uses it: HASH (unkeyed, 32 bytes) and HMAC-BLAKE2s from node:crypto;
 * MAC (keyed BLAKE2s with a 16-byte output, the MAC1/MAC2/cookie primitive) from @noble,
 * since Node exposes no keyed BLAKE2s; HKDF (the spec's KDF1/2/3) built from the HMAC.
 */
import { createHash, createHmac } from 'node:crypto';
import { blake2s } from '@noble/hashes/blake2.js';

export const HASH_LEN = 32;
export const MAC_LEN = 16;

export function hash(...parts: Uint8Array[]): Uint8Array {
  const h = createHash('blake2s256');
  for (const p of parts) h.update(p);
  return h.digest();
}

export function hmac(key: Uint8Array, ...parts: Uint8Array[]): Uint8Array {
  const h = createHmac('blake2s256', key);
  for (const p of parts) h.update(p);
  return h.digest();
}

/** Keyed BLAKE2s with a 16-byte digest: MAC(key, input) of the whitepaper. */
export function mac(key: Uint8Array, ...parts: Uint8Array[]): Uint8Array {
  const h = blake2s.create({ key, dkLen: MAC_LEN });
  for (const p of parts) h.update(p);
  return h.digest();
}

const ONE = Uint8Array.of(1);

/**
 * HKDF with HMAC-BLAKE2s and n outputs of 32 bytes (the whitepaper's KDF1, KDF2, KDF3).
 * The intermediate PRK and chain values are wiped before returning.
 */
export function kdf(n: 1 | 2 | 3, key: Uint8Array, input: Uint8Array): Uint8Array[] {
  const prk = hmac(key, input);
  const out: Uint8Array[] = [];
  let prev = hmac(prk, ONE);
  out.push(prev);
  for (let i = 2; i <= n; i++) {
    prev = hmac(prk, prev, Uint8Array.of(i));
    out.push(prev);
  }
  prk.fill(0);
  return out;
}
