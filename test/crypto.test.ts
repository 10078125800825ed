import { test } from 'node:test';
import * as nodeCrypto from 'node:crypto';
import assert from 'node:assert/strict';
import { AeadKey, openOnce, sealOnce, xopen, xseal } from '../src/crypto/aead.ts';
import { hash, kdf, mac } from '../src/crypto/blake2s.ts';
import { constantTimeEqual, fromHex, hex } from '../src/crypto/bytes.ts';
import { PresharedKey, PrivateKey, PublicKey } from '../src/crypto/keys.ts';
import * as tai64n from '../src/crypto/tai64n.ts';
import { StrataError } from '../src/crypto/errors.ts';
import { loadVectors } from './vectors.ts';

interface AeadCase { name: string; key: string; nonce: string; aad: string; plaintext: string; ciphertext: string; tag: string }

test('RFC 8439 ChaCha20-Poly1305 vectors (node:crypto, KeyObject per key)', () => {
  const { cases } = loadVectors<{ cases: AeadCase[] }>('chacha20poly1305.json');
  assert.ok(cases.length >= 2);
  for (const c of cases) {
    const nonce = fromHex(c.nonce);
    // AeadKey takes WireGuard's nonce layout (4 zero bytes, then a u64 LE counter); RFC 8439
    // §2.8.2 has a non-zero fixed part, so every case is also checked on node:crypto directly.
    const fixedZero = nonce.subarray(0, 4).every((b) => b === 0);
    const counter = Buffer.from(nonce.subarray(4)).readBigUInt64LE();
    const sealedExpected = c.ciphertext + c.tag;
    if (fixedZero) {
      assert.equal(hex(sealOnce(fromHex(c.key), counter, fromHex(c.plaintext), fromHex(c.aad))), sealedExpected, c.name);
    }
    const { createCipheriv, createDecipheriv, createSecretKey } = nodeCrypto;
    const key = createSecretKey(Buffer.from(c.key, 'hex'));
    const ci = createCipheriv('chacha20-poly1305', key, Buffer.from(nonce), { authTagLength: 16 });
    ci.setAAD(Buffer.from(c.aad, 'hex'), { plaintextLength: c.plaintext.length / 2 });
    const ct = Buffer.concat([ci.update(Buffer.from(c.plaintext, 'hex')), ci.final()]);
    assert.equal(ct.toString('hex') + ci.getAuthTag().toString('hex'), sealedExpected, c.name);
    const de = createDecipheriv('chacha20-poly1305', key, Buffer.from(nonce), { authTagLength: 16 });
    de.setAAD(Buffer.from(c.aad, 'hex'), { plaintextLength: c.ciphertext.length / 2 });
    de.setAuthTag(Buffer.from(c.tag, 'hex'));
    assert.equal(Buffer.concat([de.update(Buffer.from(c.ciphertext, 'hex')), de.final()]).toString('hex'), c.plaintext);
  }
});


test('AeadKey seals and opens with WireGuard nonces, rejects tampering, pads without copying', () => {
  const raw = nodeCrypto.randomBytes(32);
  const a = new AeadKey(Uint8Array.from(raw));
  const b = new AeadKey(Uint8Array.from(raw));
  const msg = new TextEncoder().encode('hello strata');
  const sealed = a.seal(7n, msg);
  assert.deepEqual(b.open(7n, sealed), msg);
  assert.equal(b.open(8n, sealed), null);
  const bad = Uint8Array.from(sealed);
  bad[0]! ^= 1;
  assert.equal(b.open(7n, bad), null);
  assert.equal(b.open(7n, new Uint8Array(15)), null);
  // Padded seal equals sealing the zero-padded plaintext.
  const out = new Uint8Array(16 + 16);
  const n = a.sealPaddedInto(9n, msg, 4, out, 0);
  assert.equal(n, 32);
  const padded = new Uint8Array(16);
  padded.set(msg);
  assert.deepEqual(out, a.seal(9n, padded));
  // The raw key handed to AeadKey is wiped; a destroyed key refuses use.
  const k = Uint8Array.from(raw);
  const c = new AeadKey(k);
  assert.ok(k.every((x) => x === 0));
  c.destroy();
  assert.throws(() => c.seal(0n, msg));
  assert.equal(openOnce(raw, 1n, sealOnce(raw, 1n, msg, new Uint8Array(3)), new Uint8Array(3))?.length, msg.length);
});

test('XChaCha20-Poly1305 round trip and tamper rejection (@noble)', () => {
  const key = nodeCrypto.randomBytes(32);
  const nonce = nodeCrypto.randomBytes(24);
  const aad = new Uint8Array([1, 2, 3]);
  const sealed = xseal(key, nonce, new Uint8Array(16).fill(9), aad);
  assert.equal(sealed.length, 32);
  assert.deepEqual(xopen(key, nonce, sealed, aad), new Uint8Array(16).fill(9));
  assert.equal(xopen(key, nonce, sealed, new Uint8Array([1, 2, 4])), null);
});

interface Blake2Case { input_len: number; input: string; key?: string; out: string }

test('BLAKE2s known answers: unkeyed-256 (node:crypto), keyed-128 (MAC, @noble)', () => {
  const v = loadVectors<{ unkeyed_256: Blake2Case[]; keyed_128: Blake2Case[]; keyed_256: Blake2Case[] }>('blake2s.json');
  assert.equal(v.unkeyed_256.length, 256);
  for (const c of v.unkeyed_256) assert.equal(hex(hash(fromHex(c.input))), c.out, `unkeyed len ${c.input_len}`);
  assert.equal(v.keyed_128.length, 256);
  for (const c of v.keyed_128) assert.equal(hex(mac(fromHex(c.key!), fromHex(c.input))), c.out, `keyed-128 len ${c.input_len}`);
});

test('KDF vectors of wireguard-go device/kdf_test.go (HKDF over HMAC-BLAKE2s)', () => {
  const { cases } = loadVectors<{ cases: { key: string; input: string; t0: string; t1: string; t2: string }[] }>('kdf.json');
  assert.equal(cases.length, 3);
  for (const c of cases) {
    const [t0, t1, t2] = kdf(3, fromHex(c.key), fromHex(c.input));
    assert.deepEqual([hex(t0!), hex(t1!), hex(t2!)], [c.t0, c.t1, c.t2]);
    assert.deepEqual(kdf(2, fromHex(c.key), fromHex(c.input)).map(hex), [c.t0, c.t1]);
    assert.deepEqual(kdf(1, fromHex(c.key), fromHex(c.input)).map(hex), [c.t0]);
  }
});

test('keys: parse base64 and hex, reject bad input with stable codes, never print', () => {
  const k = PrivateKey.generate();
  const pub = k.publicKey();
  assert.ok(PublicKey.parse(pub.toBase64()).equals(pub));
  assert.ok(PublicKey.parse(pub.toHex()).equals(pub));
  assert.ok(PrivateKey.parse(k.toBase64()).equals(k));
  for (const bad of ['', 'abc', 'A'.repeat(44), pub.toBase64().slice(0, 43), pub.toHex().slice(2), 'zz' + pub.toHex().slice(2)]) {
    assert.throws(() => PublicKey.parse(bad), (e: unknown) => e instanceof StrataError && e.code === 'ERR_KEY_FORMAT', bad);
  }
  // Non-canonical base64 (unused low bits set) is refused.
  const b64 = pub.toBase64();
  const last = b64[42]!;
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';
  const tweaked = b64.slice(0, 42) + alphabet[(alphabet.indexOf(last) & ~3) | ((alphabet.indexOf(last) + 1) & 3)]! + '=';
  assert.throws(() => PublicKey.parse(tweaked));
  assert.equal(String(k), '[PrivateKey]');
  assert.equal(JSON.stringify({ k }), '{"k":"[PrivateKey]"}');
  // Clamping as wg does, and X25519 agreement both ways.
  const raw = k.raw();
  assert.equal(raw[0]! & 7, 0);
  assert.equal(raw[31]! & 0xc0, 0x40);
  const other = PrivateKey.generate();
  assert.ok(constantTimeEqual(k.dh(other.publicKey())!, other.dh(pub)!));
  // A low-order point gives an all-zero secret, refused as null.
  assert.equal(k.dh(new PublicKey(new Uint8Array(32))), null);
  const psk = PresharedKey.generate();
  psk.wipe();
  assert.ok(psk.isZero());
  k.wipe();
  assert.ok(k.isZero());
});

test('TAI64N: layout, whitening to 2^24 ns, strict ordering', () => {
  const t = tai64n.encode(1_700_000_000_123.456);
  assert.equal(Buffer.from(t).readBigUInt64BE(0), (1n << 62n) + 10n + 1_700_000_000n);
  const ns = Buffer.from(t).readUInt32BE(8);
  assert.equal(ns % tai64n.WHITENER_NS, 0);
  assert.ok(ns <= 123_456_000 && ns > 123_456_000 - tai64n.WHITENER_NS);
  assert.ok(tai64n.after(tai64n.encode(1_700_000_001_000), t));
  assert.ok(!tai64n.after(t, t));
  // Within one whitening step two timestamps are equal, so the later is not "after".
  assert.ok(!tai64n.after(tai64n.encode(1_700_000_000_000.001), tai64n.encode(1_700_000_000_000)));
});
