/**
 * MAC1, MAC2 and cookie replies (whitepaper section 5.4.4 and 5.4.7).
 *
 * CookieChecker is the receiving side: it checks MAC1 against our own public key, and under
 * load checks MAC2 against a cookie derived from a secret that rotates every two minutes and
 * the sender's address; it writes the cookie reply. CookieGenerator is the sending side, one
 * per peer: it puts MAC1 on our handshake messages, and MAC2 while it holds a fresh cookie.
 */
import { randomBytes } from 'node:crypto';
import { hash, mac } from '../crypto/blake2s.ts';
import { xopen, xseal } from '../crypto/aead.ts';
import { constantTimeEqual, isAllZero } from '../crypto/bytes.ts';
import type { PublicKey } from '../crypto/keys.ts';
import { COOKIE_REFRESH_TIME } from './constants.ts';
import { macOffsets, writeCookieReply, type CookieReply } from './messages.ts';

const utf8 = new TextEncoder();
const LABEL_MAC1 = utf8.encode('mac1----');
const LABEL_COOKIE = utf8.encode('cookie--');

/** A source of random bytes; the core takes it from the caller so tests can be deterministic. */
export type RandomBytes = (n: number) => Uint8Array;
export const cryptoRandom: RandomBytes = (n) => new Uint8Array(randomBytes(n));

export function mac1Key(publicKey: PublicKey): Uint8Array {
  return hash(LABEL_MAC1, publicKey.raw());
}

export function cookieKey(publicKey: PublicKey): Uint8Array {
  return hash(LABEL_COOKIE, publicKey.raw());
}

export class CookieChecker {
  readonly #mac1Key: Uint8Array;
  readonly #cookieKey: Uint8Array;
  readonly #secret = new Uint8Array(32);
  #secretSet = -Infinity;
  readonly #random: RandomBytes;

  constructor(localPublic: PublicKey, random: RandomBytes = cryptoRandom) {
    this.#mac1Key = mac1Key(localPublic);
    this.#cookieKey = cookieKey(localPublic);
    this.#random = random;
  }

  checkMac1(message: Uint8Array): boolean {
    const { mac1 } = macOffsets(message);
    return constantTimeEqual(mac(this.#mac1Key, message.subarray(0, mac1)), message.subarray(mac1, mac1 + 16));
  }

  /** MAC2 is valid only while the cookie secret is younger than two minutes. */
  checkMac2(message: Uint8Array, source: Uint8Array, now: number): boolean {
    if (now - this.#secretSet > COOKIE_REFRESH_TIME) return false;
    const cookie = mac(this.#secret, source);
    const { mac2 } = macOffsets(message);
    const ok = constantTimeEqual(mac(cookie, message.subarray(0, mac2)), message.subarray(mac2));
    cookie.fill(0);
    return ok;
  }

  /** A cookie reply to `message` (an initiation or response whose MAC1 was valid). */
  createReply(message: Uint8Array, receiver: number, source: Uint8Array, now: number): Uint8Array {
    if (now - this.#secretSet > COOKIE_REFRESH_TIME) {
      const fresh = this.#random(32);
      this.#secret.set(fresh);
      fresh.fill(0);
      this.#secretSet = now;
    }
    const cookie = mac(this.#secret, source);
    const { mac1 } = macOffsets(message);
    const nonce = this.#random(24);
    const sealed = xseal(this.#cookieKey, nonce, cookie, message.subarray(mac1, mac1 + 16));
    cookie.fill(0);
    return writeCookieReply(receiver, nonce, sealed);
  }

  wipe(): void {
    this.#secret.fill(0);
    this.#secretSet = -Infinity;
  }
}

export class CookieGenerator {
  readonly #mac1Key: Uint8Array;
  readonly #cookieKey: Uint8Array;
  #cookie: Uint8Array | null = null;
  #cookieSet = -Infinity;
  #lastMac1: Uint8Array | null = null;

  constructor(remotePublic: PublicKey) {
    this.#mac1Key = mac1Key(remotePublic);
    this.#cookieKey = cookieKey(remotePublic);
  }

  /** Fills MAC1, and MAC2 if we hold a cookie younger than two minutes, in place. */
  addMacs(message: Uint8Array, now: number): void {
    const { mac1, mac2 } = macOffsets(message);
    const m1 = mac(this.#mac1Key, message.subarray(0, mac1));
    message.set(m1, mac1);
    this.#lastMac1 = m1;
    if (this.#cookie !== null && now - this.#cookieSet <= COOKIE_REFRESH_TIME) {
      message.set(mac(this.#cookie, message.subarray(0, mac2)), mac2);
    } else {
      message.fill(0, mac2, mac2 + 16);
    }
  }

  /** Takes a cookie from a reply to the last message we sent. Returns false if it fails. */
  consumeReply(reply: CookieReply, now: number): boolean {
    if (this.#lastMac1 === null) return false;
    const cookie = xopen(this.#cookieKey, reply.nonce, reply.encryptedCookie, this.#lastMac1);
    if (cookie === null) return false;
    this.#cookie?.fill(0);
    this.#cookie = cookie;
    this.#cookieSet = now;
    return true;
  }

  get hasCookie(): boolean {
    return this.#cookie !== null && !isAllZero(this.#cookie);
  }

  wipe(): void {
    this.#cookie?.fill(0);
    this.#cookie = null;
    this.#lastMac1 = null;
  }
}
