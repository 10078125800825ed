/**
 * The signed directory: relay descriptors signed by their Ed25519 identity, a consensus signed
 * by k of n pinned authorities, and the DirectoryClient that fetches it from untrusted mirrors.
 *
 *   1. Acceptance: k-of-n with exactly k signatures; relays come back as Relay entries with the
 *      right keys, endpoints and roles; Exit / BadExit flag semantics.
 *   2. Every rejection, each with its exact code: under threshold, unknown signer, altered body,
 *      forged signature, expired, not yet valid, rollback, same serial with other contents, a
 *      descriptor whose self-signature fails, malformed JSON, missing fields, bad threshold;
 *      duplicate signatures from one authority count once.
 *   3. DirectoryClient: last good kept while valid, refusal once it expired, newer adopted,
 *      older refused with ERR_DIR_ROLLBACK and the next mirror tried; file and http mirrors
 *      (an http server on 127.0.0.1 started here, loopback only).
 *
 * All times are fixed (2030), so nothing depends on the wall clock.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { PrivateKey } from '../src/crypto/keys.ts';
import { StrataError } from '../src/crypto/errors.ts';
import { signedBytes } from '../src/directory/canonical.ts';
import {
  combine,
  CONSENSUS_DOMAIN,
  makeConsensus,
  parseConsensus,
  signConsensus,
  verifyConsensus,
  type ConsensusBody,
  type ConsensusWindow,
  type SignedConsensus,
  type TrustAnchor,
  type VerifiedConsensus,
} from '../src/directory/consensus.ts';
import { DESCRIPTOR_DOMAIN, signDescriptor, type DescriptorFields, type SignedDescriptor } from '../src/directory/descriptor.ts';
import { DirectoryClient } from '../src/directory/client.ts';
import { SigningKey } from '../src/directory/ed25519.ts';
import { formatEndpoint } from '../src/device/endpoint.ts';

// ---- fixture ------------------------------------------------------------------------------

const T0 = Date.parse('2030-01-01T00:00:00.000Z');
const MIN = 60_000;
const HOUR = 60 * MIN;
const WINDOW: ConsensusWindow = { validAfter: new Date(T0), freshUntil: new Date(T0 + HOUR), validUntil: new Date(T0 + 3 * HOUR) };
const NOW = new Date(T0 + 30 * MIN);

type Role = 'entry' | 'middle' | 'exit';

interface RelayFixture {
  identity: SigningKey;
  wg: PrivateKey;
  fields: DescriptorFields;
  descriptor: SignedDescriptor;
}

const COUNTRIES = ['DE', 'NL', 'SE', 'CH', 'IS', 'FR', 'FI', 'NO'];
const ROLE_SETS: Role[][] = [['entry', 'middle'], ['middle'], ['middle', 'exit'], ['entry', 'middle', 'exit'], ['exit']];

function makeRelay(i: number, overrides: Partial<DescriptorFields> = {}): RelayFixture {
  const identity = SigningKey.generate();
  const wg = PrivateKey.generate();
  const endpoints = [`198.51.100.${i + 1}:${51820 + i}`];
  if (i % 2 === 0) endpoints.push(`[2001:db8::${(i + 1).toString(16)}]:51820`);
  const fields: DescriptorFields = {
    name: `relay-${i}`,
    wireguardKey: wg.publicKey(),
    endpoints,
    roles: ROLE_SETS[i % ROLE_SETS.length]!,
    country: COUNTRIES[i % COUNTRIES.length]!,
    provider: `AS${64500 + i}`,
    family: `family-${i}`,
    capacity: (i % 10) + 1,
    ...overrides,
  };
  return { identity, wg, fields, descriptor: signDescriptor(identity, fields, new Date(T0 - HOUR)) };
}

/** N authorities, M relays, and the means to build and sign consensus documents. */
class Directory {
  readonly authorities: SigningKey[];
  readonly relays: RelayFixture[];
  /** A key no client pins. */
  readonly outsider = SigningKey.generate();

  constructor(n: number, m: number) {
    this.authorities = Array.from({ length: n }, () => SigningKey.generate());
    this.relays = Array.from({ length: m }, (_, i) => makeRelay(i));
  }

  /** Pins the first `pinned` authorities (all by default). */
  anchor(threshold: number, pinned = this.authorities.length): TrustAnchor {
    return { authorities: this.authorities.slice(0, pinned).map((k) => k.publicKeyBase64), threshold };
  }

  body(serial = 1, window: ConsensusWindow = WINDOW, descriptors: readonly SignedDescriptor[] = this.relays.map((r) => r.descriptor)): ConsensusBody {
    // makeConsensus keeps the descriptor objects by reference: clone them, so that a test
    // that alters a body never alters the fixture's descriptors.
    return makeConsensus(serial, window, descriptors.map((d) => clone(d)));
  }

  /** The body signed by the authorities at `which` (indices), put together with combine(). */
  sign(body: ConsensusBody, which: readonly number[]): SignedConsensus {
    return combine(
      body,
      which.map((i) => signConsensus(this.authorities[i]!, body)),
    );
  }
}

function clone<T>(v: T): T {
  return structuredClone(v);
}

/** Asserts that fn throws a StrataError with exactly this code; returns it. */
function throwsCode(fn: () => unknown, code: string): StrataError {
  let caught: unknown = null;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  assert.ok(caught !== null, `expected ${code}, but nothing was thrown`);
  assert.ok(caught instanceof StrataError, `expected a StrataError ${code}, got ${String(caught)}`);
  assert.equal(caught.code, code, `expected ${code}, got ${caught.code}: ${caught.message}`);
  return caught;
}

async function rejectsCode(p: Promise<unknown>, code: string): Promise<StrataError> {
  let caught: unknown = null;
  try {
    await p;
  } catch (e) {
    caught = e;
  }
  assert.ok(caught instanceof StrataError, `expected a StrataError ${code}, got ${String(caught)}`);
  assert.equal(caught.code, code, `expected ${code}, got ${caught.code}: ${caught.message}`);
  return caught;
}

const dir = new Directory(5, 6);
const ANCHOR_3_OF_5 = dir.anchor(3);

/** A valid 3-of-5 document (authorities 0, 2, 4). */
function good(serial = 1, window: ConsensusWindow = WINDOW): SignedConsensus {
  return dir.sign(dir.body(serial, window), [0, 2, 4]);
}

/** Another relay's WireGuard key (base64), different from relay i's. */
function otherWgKey(i: number): string {
  return dir.relays[(i + 1) % dir.relays.length]!.wg.publicKey().toBase64();
}

// ---- 1. acceptance --------------------------------------------------------------------------

describe('consensus acceptance', () => {
  test('3-of-5 with exactly 3 valid signatures verifies (every 3-subset, and all 5)', () => {
    const body = dir.body(7);
    const subsets: number[][] = [];
    for (let a = 0; a < 5; a++) for (let b = a + 1; b < 5; b++) for (let c = b + 1; c < 5; c++) subsets.push([a, b, c]);
    assert.equal(subsets.length, 10);
    for (const s of subsets) {
      const v = verifyConsensus(dir.sign(body, s), ANCHOR_3_OF_5, NOW);
      assert.equal(v.serial, 7);
      assert.equal(v.document.signatures.length, 3);
    }
    const all = verifyConsensus(dir.sign(body, [0, 1, 2, 3, 4]), ANCHOR_3_OF_5, NOW);
    assert.equal(all.serial, 7);
    // The digest is a function of the body only: any signer subset gives the same one.
    assert.equal(all.digest, verifyConsensus(dir.sign(body, [1, 3, 4]), ANCHOR_3_OF_5, NOW).digest);
  });

  test('the document survives JSON text (any key order and whitespace) and verifies after parseConsensus', () => {
    const doc = good();
    const text = JSON.stringify(doc, null, 2);
    assert.equal(verifyConsensus(parseConsensus(text), ANCHOR_3_OF_5, NOW).serial, 1);
    // Reverse the key order of every object: canonical JSON makes it the same signed bytes.
    const reversed = (v: unknown): unknown =>
      Array.isArray(v)
        ? v.map(reversed)
        : v !== null && typeof v === 'object'
          ? Object.fromEntries(Object.entries(v as Record<string, unknown>).reverse().map(([k, x]) => [k, reversed(x)]))
          : v;
    const v = verifyConsensus(parseConsensus(JSON.stringify(reversed(doc))), ANCHOR_3_OF_5, NOW);
    assert.equal(v.relays.length, dir.relays.length);
  });

  test('relays come back as Relay entries with the right keys, endpoints, roles and attributes', () => {
    const v = verifyConsensus(good(), ANCHOR_3_OF_5, NOW);
    assert.equal(v.relays.length, dir.relays.length);
    assert.deepEqual(v.validAfter, WINDOW.validAfter);
    assert.deepEqual(v.freshUntil, WINDOW.freshUntil);
    assert.deepEqual(v.validUntil, WINDOW.validUntil);
    assert.match(v.digest, /^[0-9a-f]{64}$/);
    for (const fx of dir.relays) {
      const r = v.relays.find((x) => x.name === fx.fields.name);
      assert.ok(r, `relay ${fx.fields.name} is in the verified list`);
      assert.ok(r.publicKey.equals(fx.wg.publicKey()), `${r.name}: WireGuard key`);
      assert.equal(r.publicKey.toBase64(), fx.wg.publicKey().toBase64());
      assert.deepEqual(r.endpoints.map(formatEndpoint), fx.fields.endpoints, `${r.name}: endpoints`);
      assert.deepEqual(
        r.endpoints.map((e) => e.family),
        fx.fields.endpoints.map((e) => (e.startsWith('[') ? 'IPv6' : 'IPv4')),
      );
      // makeConsensus gives 'Exit' to exactly the relays that ask for it: roles are unchanged.
      assert.deepEqual([...r.roles], fx.fields.roles, `${r.name}: roles`);
      assert.equal(r.country, fx.fields.country);
      assert.equal(r.provider, fx.fields.provider);
      assert.equal(r.family, fx.fields.family);
      assert.equal(r.capacity, fx.fields.capacity);
      assert.equal(r.kind, 'strata');
    }
    // No two relays were confused: every WireGuard key maps back to one relay.
    assert.equal(new Set(v.relays.map((r) => r.publicKey.toBase64())).size, dir.relays.length);
  });

  test("Exit flag semantics: no 'Exit' flag or a 'BadExit' flag takes the exit role away", () => {
    const body = dir.body(3);
    const byName = (n: string) => body.relays.find((r) => r.descriptor.body.name === n)!;
    // relay-2: ['middle','exit'], relay-3: ['entry','middle','exit'], relay-4: ['exit'] only,
    // relay-0: ['entry','middle'] (given 'Exit' by the authorities, though it does not ask).
    byName('relay-2').flags = byName('relay-2').flags.filter((f) => f !== 'Exit');
    byName('relay-3').flags.push('BadExit');
    byName('relay-4').flags.push('BadExit');
    byName('relay-0').flags.push('Exit');
    const v = verifyConsensus(dir.sign(body, [0, 1, 2]), ANCHOR_3_OF_5, NOW);
    const get = (n: string) => v.relays.find((r) => r.name === n);
    assert.deepEqual([...get('relay-2')!.roles], ['middle'], 'no Exit flag: exit role removed');
    assert.deepEqual([...get('relay-3')!.roles], ['entry', 'middle'], 'BadExit: exit role removed');
    assert.equal(get('relay-4'), undefined, 'an exit-only relay marked BadExit has no role left and is dropped');
    assert.deepEqual([...get('relay-0')!.roles], ['entry', 'middle'], "an 'Exit' flag does not add a role the relay did not ask for");
    assert.deepEqual([...get('relay-1')!.roles], ['middle']);
    assert.equal(v.relays.filter((r) => r.roles.includes('exit')).length, 0);
  });

  test("relays not flagged 'Running' and 'Valid' are left out", () => {
    const body = dir.body(4);
    body.relays[0]!.flags = body.relays[0]!.flags.filter((f) => f !== 'Running');
    body.relays[1]!.flags = body.relays[1]!.flags.filter((f) => f !== 'Valid');
    const v = verifyConsensus(dir.sign(body, [0, 1, 2]), ANCHOR_3_OF_5, NOW);
    assert.deepEqual(
      v.relays.map((r) => r.name),
      dir.relays.slice(2).map((r) => r.fields.name),
    );
  });

  test('validity boundaries: exactly validAfter, past freshUntil, exactly validUntil are accepted', () => {
    const doc = good();
    for (const t of [T0, T0 + HOUR + 1, T0 + 3 * HOUR]) assert.equal(verifyConsensus(doc, ANCHOR_3_OF_5, new Date(t)).serial, 1);
  });
});

// ---- 2. rejections -----------------------------------------------------------------------------

describe('consensus rejections (each with its exact code)', () => {
  test('under threshold: 2 signatures where 3 are required, 1 where 2 of 3 are, none at all', () => {
    const body = dir.body();
    throwsCode(() => verifyConsensus(dir.sign(body, [0, 1]), ANCHOR_3_OF_5, NOW), 'ERR_DIR_THRESHOLD');
    throwsCode(() => verifyConsensus(dir.sign(body, [3, 4]), ANCHOR_3_OF_5, NOW), 'ERR_DIR_THRESHOLD');
    const twoOfThree = dir.anchor(2, 3);
    assert.equal(verifyConsensus(dir.sign(body, [0, 2]), twoOfThree, NOW).serial, 1);
    throwsCode(() => verifyConsensus(dir.sign(body, [1]), twoOfThree, NOW), 'ERR_DIR_THRESHOLD');
    throwsCode(() => verifyConsensus(dir.sign(body, []), twoOfThree, NOW), 'ERR_DIR_THRESHOLD');
  });

  test('duplicate signatures from one authority count once', () => {
    const body = dir.body();
    const s0 = signConsensus(dir.authorities[0]!, body);
    const s1 = signConsensus(dir.authorities[1]!, body);
    // Built by hand: combine() would already drop the copy.
    throwsCode(() => verifyConsensus({ consensus: body, signatures: [s0, s0] }, dir.anchor(2), NOW), 'ERR_DIR_THRESHOLD');
    throwsCode(() => verifyConsensus({ consensus: body, signatures: [s0, { ...s0 }, s0, s1] }, dir.anchor(3), NOW), 'ERR_DIR_THRESHOLD');
    // The same through JSON text from a mirror.
    const text = JSON.stringify({ consensus: body, signatures: [s1, s1, s1] });
    throwsCode(() => verifyConsensus(parseConsensus(text), dir.anchor(2), NOW), 'ERR_DIR_THRESHOLD');
    // Ed25519 signatures are deterministic, but a second *valid* encoding of the same
    // authority's signature is still the same authority.
    const s0again = signConsensus(dir.authorities[0]!, body);
    throwsCode(() => verifyConsensus({ consensus: body, signatures: [s0, s0again] }, dir.anchor(2), NOW), 'ERR_DIR_THRESHOLD');
    // combine() drops the copy, and two distinct authorities do meet 2.
    assert.equal(combine(body, [s0, s0, s1]).signatures.length, 2);
    assert.equal(verifyConsensus(combine(body, [s0, s0, s1]), dir.anchor(2), NOW).serial, 1);
  });

  test('signed by an unknown key: an extra signature from a non-pinned key', () => {
    const body = dir.body();
    const doc = dir.sign(body, [0, 1, 2]);
    doc.signatures.push(signConsensus(dir.outsider, body));
    throwsCode(() => verifyConsensus(doc, ANCHOR_3_OF_5, NOW), 'ERR_DIR_UNKNOWN_SIGNER');
    // An authority that exists but is not pinned by this client (pins only the first 3).
    throwsCode(() => verifyConsensus(dir.sign(body, [0, 1, 2, 4]), dir.anchor(3, 3), NOW), 'ERR_DIR_UNKNOWN_SIGNER');
    // Only the outsider: still the unknown-signer code, not a threshold one.
    throwsCode(() => verifyConsensus({ consensus: body, signatures: [signConsensus(dir.outsider, body)] }, ANCHOR_3_OF_5, NOW), 'ERR_DIR_UNKNOWN_SIGNER');
  });

  test('a bad signature: the body changed after signing', () => {
    const doc = good(5);
    // relay-5 was flagged BadExit by the authorities before they signed.
    const badExitBody = dir.body(5);
    badExitBody.relays[5]!.flags.push('BadExit');
    const badExitDoc = dir.sign(badExitBody, [0, 2, 4]);
    const cases: [string, SignedConsensus, (c: ConsensusBody) => void][] = [
      ['one relay WireGuard key swapped', doc, (c) => (c.relays[1]!.descriptor.body.wireguardKey = otherWgKey(1))],
      ['one endpoint changed', doc, (c) => (c.relays[2]!.descriptor.body.endpoints[0] = '203.0.113.66:51820')],
      ['the serial changed', doc, (c) => (c.serial = 6)],
      ['validUntil extended', doc, (c) => (c.validUntil = new Date(T0 + 30 * 24 * HOUR).toISOString())],
      ['a relay dropped', doc, (c) => void c.relays.splice(3, 1)],
      ['an Exit flag added', doc, (c) => void c.relays[0]!.flags.push('Exit')],
      ['a capacity changed', doc, (c) => (c.relays[0]!.descriptor.body.capacity += 1)],
      ['a BadExit flag removed', badExitDoc, (c) => (c.relays[5]!.flags = c.relays[5]!.flags.filter((f) => f !== 'BadExit'))],
    ];
    for (const [what, signed, mutate] of cases) {
      assert.doesNotThrow(() => verifyConsensus(signed, ANCHOR_3_OF_5, NOW), `${what}: the original verifies`);
      const tampered = clone(signed);
      mutate(tampered.consensus);
      throwsCode(() => verifyConsensus(tampered, ANCHOR_3_OF_5, NOW), 'ERR_DIR_BAD_SIGNATURE');
      // Through the wire too.
      throwsCode(() => verifyConsensus(parseConsensus(JSON.stringify(tampered)), ANCHOR_3_OF_5, NOW), 'ERR_DIR_BAD_SIGNATURE');
    }
  });

  test('forged signature bytes', () => {
    const body = dir.body();
    const doc = dir.sign(body, [0, 1, 2]);
    const flip = (sig: string, byte: number, bit: number): string => {
      const b = Buffer.from(sig, 'base64');
      b[byte]! ^= 1 << bit;
      return b.toString('base64');
    };
    for (const [byte, bit] of [[0, 0], [31, 7], [32, 0], [63, 6]] as const) {
      const d = clone(doc);
      d.signatures[1]!.signature = flip(d.signatures[1]!.signature, byte, bit);
      throwsCode(() => verifyConsensus(d, ANCHOR_3_OF_5, NOW), 'ERR_DIR_BAD_SIGNATURE');
    }
    const variants: [string, string][] = [
      ['all zero', Buffer.alloc(64).toString('base64')],
      ['random', Buffer.from(Array.from({ length: 64 }, (_, i) => (i * 37 + 11) & 0xff)).toString('base64')],
      ['truncated', Buffer.from(doc.signatures[0]!.signature, 'base64').subarray(0, 63).toString('base64')],
      ['one byte too long', Buffer.concat([Buffer.from(doc.signatures[0]!.signature, 'base64'), Buffer.of(0)]).toString('base64')],
      ['empty', ''],
      ['not base64', '!!!!'],
      // A genuine signature by authority 3, filed under authority 0's name.
      ['another authority', signConsensus(dir.authorities[3]!, body).signature],
      // Authority 0's signature of the same body under the descriptor domain: domain separation.
      ['wrong domain', Buffer.from(dir.authorities[0]!.sign(signedBytes(DESCRIPTOR_DOMAIN, body))).toString('base64')],
      // Authority 0's signature of another consensus.
      ['another body', signConsensus(dir.authorities[0]!, dir.body(2)).signature],
    ];
    for (const [what, sig] of variants) {
      const d = clone(doc);
      d.signatures[0]!.signature = sig;
      const e = throwsCode(() => verifyConsensus(d, ANCHOR_3_OF_5, NOW), 'ERR_DIR_BAD_SIGNATURE');
      assert.ok(e.message.length > 0, what);
    }
    // Sanity for the wrong-domain case: the same bytes under the right domain do verify.
    const right = clone(doc);
    right.signatures[0]!.signature = Buffer.from(dir.authorities[0]!.sign(signedBytes(CONSENSUS_DOMAIN, body))).toString('base64');
    assert.equal(verifyConsensus(right, ANCHOR_3_OF_5, NOW).serial, 1);
    // A forged signature is rejected even when enough other valid ones are present.
    const extra = dir.sign(body, [0, 1, 2, 3]);
    extra.signatures[3]!.signature = flip(extra.signatures[3]!.signature, 5, 2);
    throwsCode(() => verifyConsensus(extra, ANCHOR_3_OF_5, NOW), 'ERR_DIR_BAD_SIGNATURE');
  });

  test('expired: now after validUntil', () => {
    const doc = good();
    for (const t of [T0 + 3 * HOUR + 1, T0 + 3 * HOUR + 1000, T0 + 365 * 24 * HOUR]) {
      throwsCode(() => verifyConsensus(doc, ANCHOR_3_OF_5, new Date(t)), 'ERR_DIR_EXPIRED');
    }
  });

  test('not yet valid: now before validAfter', () => {
    const doc = good();
    for (const t of [T0 - 1, T0 - HOUR, 0]) throwsCode(() => verifyConsensus(doc, ANCHOR_3_OF_5, new Date(t)), 'ERR_DIR_NOT_YET_VALID');
  });

  test('rollback: a serial older than the last accepted', () => {
    const last = verifyConsensus(good(10), ANCHOR_3_OF_5, NOW);
    throwsCode(() => verifyConsensus(good(9), ANCHOR_3_OF_5, NOW, last), 'ERR_DIR_ROLLBACK');
    throwsCode(() => verifyConsensus(good(0), ANCHOR_3_OF_5, NOW, last), 'ERR_DIR_ROLLBACK');
    // Newer is fine; the same document again is fine (idempotent), even with other signers.
    assert.equal(verifyConsensus(good(11), ANCHOR_3_OF_5, NOW, last).serial, 11);
    assert.equal(verifyConsensus(dir.sign(dir.body(10), [1, 3, 4]), ANCHOR_3_OF_5, NOW, last).digest, last.digest);
  });

  test('same serial with different contents', () => {
    const last = verifyConsensus(good(20), ANCHOR_3_OF_5, NOW);
    // Properly signed by the authorities, but a different body under serial 20.
    const fewer = dir.sign(dir.body(20, WINDOW, dir.relays.slice(1).map((r) => r.descriptor)), [0, 1, 2]);
    throwsCode(() => verifyConsensus(fewer, ANCHOR_3_OF_5, NOW, last), 'ERR_DIR_ROLLBACK');
    const longer = dir.sign(dir.body(20, { ...WINDOW, validUntil: new Date(T0 + 4 * HOUR) }), [0, 1, 2]);
    throwsCode(() => verifyConsensus(longer, ANCHOR_3_OF_5, NOW, last), 'ERR_DIR_ROLLBACK');
  });

  test("a descriptor whose self-signature fails (altered after the relay signed it, then signed by the authorities)", () => {
    const alterations: [string, (d: SignedDescriptor) => void][] = [
      ['WireGuard key swapped', (d) => (d.body.wireguardKey = otherWgKey(2))],
      ['endpoint changed', (d) => (d.body.endpoints = ['203.0.113.9:51820'])],
      ['exit role added', (d) => (d.body.roles = ['middle', 'exit'])],
      ['capacity raised', (d) => (d.body.capacity = 1_000_000)],
      ['family renamed', (d) => (d.body.family = 'family-0')],
      ['identity key replaced', (d) => (d.body.identityKey = dir.relays[0]!.identity.publicKeyBase64)],
      ['signature flipped', (d) => {
        const b = Buffer.from(d.signature, 'base64');
        b[10]! ^= 0x40;
        d.signature = b.toString('base64');
      }],
      ['signature empty', (d) => (d.signature = '')],
      ['identity key not a key', (d) => (d.body.identityKey = 'not-a-key')],
    ];
    for (const [what, alter] of alterations) {
      const body = dir.body(30);
      alter(body.relays[1]!.descriptor);
      // The authorities sign it anyway (makeConsensus would have refused it).
      const doc = dir.sign(body, [0, 1, 2, 3, 4]);
      const e = throwsCode(() => verifyConsensus(doc, ANCHOR_3_OF_5, NOW), 'ERR_DIR_DESCRIPTOR');
      assert.match(e.message, /relay-1|relay "/, what);
    }
    // makeConsensus itself refuses to vouch for such a descriptor.
    const bad = clone(dir.relays[1]!.descriptor);
    bad.body.wireguardKey = otherWgKey(1);
    throwsCode(() => makeConsensus(1, WINDOW, [bad]), 'ERR_DIR_DESCRIPTOR');
  });

  test('a descriptor correctly self-signed but with an invalid WireGuard key or endpoint', () => {
    const fx = dir.relays[0]!;
    for (const patch of [{ wireguardKey: 'AAAA' }, { endpoints: ['relay.example:51820'] }, { endpoints: ['198.51.100.1:70000'] }]) {
      const b = { ...fx.descriptor.body, ...patch };
      const d: SignedDescriptor = { body: b, signature: Buffer.from(fx.identity.sign(signedBytes(DESCRIPTOR_DOMAIN, b))).toString('base64') };
      const body = dir.body(31);
      body.relays[0]!.descriptor = d;
      throwsCode(() => verifyConsensus(dir.sign(body, [0, 1, 2]), ANCHOR_3_OF_5, NOW), 'ERR_DIR_DESCRIPTOR');
    }
  });

  test('malformed JSON', () => {
    const text = JSON.stringify(good());
    for (const t of ['', 'not json', '{', text.slice(0, text.length - 1), text.slice(0, 100), '\u0000', "{'consensus': 1}", 'null', '[]', '42', '"consensus"', '{}']) {
      throwsCode(() => parseConsensus(t), 'ERR_DIR_MALFORMED');
    }
  });

  test('missing fields and wrong types', () => {
    const base = good();
    const cases: [string, (d: any) => void][] = [
      ['consensus', (d) => delete d.consensus],
      ['signatures', (d) => delete d.signatures],
      ['serial', (d) => delete d.consensus.serial],
      ['validAfter', (d) => delete d.consensus.validAfter],
      ['freshUntil', (d) => delete d.consensus.freshUntil],
      ['validUntil', (d) => delete d.consensus.validUntil],
      ['relays', (d) => delete d.consensus.relays],
      ['relay flags', (d) => delete d.consensus.relays[0].flags],
      ['relay descriptor', (d) => delete d.consensus.relays[0].descriptor],
      ['descriptor signature', (d) => delete d.consensus.relays[0].descriptor.signature],
      ['descriptor wireguardKey', (d) => delete d.consensus.relays[0].descriptor.body.wireguardKey],
      ['descriptor identityKey', (d) => delete d.consensus.relays[0].descriptor.body.identityKey],
      ['descriptor endpoints', (d) => delete d.consensus.relays[0].descriptor.body.endpoints],
      ['descriptor roles', (d) => delete d.consensus.relays[0].descriptor.body.roles],
      ['signature authority', (d) => delete d.signatures[0].authority],
      ['signature bytes', (d) => delete d.signatures[0].signature],
      ['serial as a string', (d) => (d.consensus.serial = '1')],
      ['negative serial', (d) => (d.consensus.serial = -1)],
      ['fractional serial', (d) => (d.consensus.serial = 1.5)],
      ['serial past 2^53', (d) => (d.consensus.serial = 2 ** 53)],
      ['unknown flag', (d) => d.consensus.relays[0].flags.push('Guard')],
      ['unknown role', (d) => d.consensus.relays[0].descriptor.body.roles.push('bridge')],
      ['no endpoints', (d) => (d.consensus.relays[0].descriptor.body.endpoints = [])],
      ['bad country', (d) => (d.consensus.relays[0].descriptor.body.country = 'Germany')],
      ['zero capacity', (d) => (d.consensus.relays[0].descriptor.body.capacity = 0)],
      ['signatures not an array', (d) => (d.signatures = {})],
      ['relays not an array', (d) => (d.consensus.relays = null)],
    ];
    for (const [what, mutate] of cases) {
      const d = clone(base) as unknown;
      mutate(d);
      const e = throwsCode(() => parseConsensus(JSON.stringify(d)), 'ERR_DIR_MALFORMED');
      assert.ok(e.message.startsWith('consensus'), what);
    }
  });

  test('signed but ill-formed: unparseable times, times out of order, one relay listed twice', () => {
    const unparseable = dir.body();
    unparseable.validUntil = 'next tuesday';
    throwsCode(() => verifyConsensus(dir.sign(unparseable, [0, 1, 2]), ANCHOR_3_OF_5, NOW), 'ERR_DIR_MALFORMED');
    const outOfOrder = dir.body(1, { validAfter: WINDOW.validAfter, freshUntil: new Date(T0 + 4 * HOUR), validUntil: WINDOW.validUntil });
    throwsCode(() => verifyConsensus(dir.sign(outOfOrder, [0, 1, 2]), ANCHOR_3_OF_5, NOW), 'ERR_DIR_MALFORMED');
    const twin = makeRelay(0); // another identity and key under the name "relay-0"
    const twice = dir.body(1, WINDOW, [...dir.relays.map((r) => r.descriptor), twin.descriptor]);
    throwsCode(() => verifyConsensus(dir.sign(twice, [0, 1, 2]), ANCHOR_3_OF_5, NOW), 'ERR_DIR_MALFORMED');
  });

  test('threshold misconfigured: 0, negative, more than the pinned keys', () => {
    const doc = dir.sign(dir.body(), [0, 1, 2, 3, 4]);
    for (const [threshold, pinned] of [[0, 5], [-1, 5], [6, 5], [4, 3], [1, 0], [Infinity, 5]] as const) {
      throwsCode(() => verifyConsensus(doc, dir.anchor(threshold, pinned), NOW), 'ERR_DIR_CONFIG');
    }
    // Pinning the same key five times is one authority: a threshold of 2 is misconfigured.
    const k = dir.authorities[0]!.publicKeyBase64;
    throwsCode(() => verifyConsensus(dir.sign(dir.body(), [0]), { authorities: [k, k, k, k, k], threshold: 2 }, NOW), 'ERR_DIR_CONFIG');
    // No mirrors is a configuration error too.
    throwsCode(() => new DirectoryClient(ANCHOR_3_OF_5, []), 'ERR_DIR_CONFIG');
  });

  // A NaN threshold would pass a plain range check (every comparison with NaN is false), and
  // `valid.size < NaN` is false too: it must be refused, or an unsigned document is accepted.
  test('threshold NaN is a configuration error, never "no signature needed"', () => {
    const unsigned: SignedConsensus = { consensus: dir.body(), signatures: [] };
    throwsCode(() => verifyConsensus(unsigned, dir.anchor(Number.NaN), NOW), 'ERR_DIR_CONFIG');
  });

  // A pinned authority string that is not a 32-byte base64 key is a configuration error.
  test('a malformed pinned authority key gives a StrataError, not a TypeError', () => {
    const body = dir.body();
    const doc: SignedConsensus = { consensus: body, signatures: [{ authority: 'not-a-key', signature: signConsensus(dir.authorities[0]!, body).signature }] };
    let caught: unknown = null;
    try {
      verifyConsensus(doc, { authorities: ['not-a-key'], threshold: 1 }, NOW);
    } catch (e) {
      caught = e;
    }
    assert.ok(caught instanceof StrataError, `got ${String(caught)}`);
  });
});

// ---- 3. DirectoryClient -----------------------------------------------------------------------

describe('DirectoryClient', () => {
  let tmp = '';
  let server: http.Server | null = null;
  let base = '';
  /** url path -> [status, body] served by the loopback mirror. */
  const routes = new Map<string, [number, string]>();

  before(async () => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'strata-directory-'));
    server = http.createServer((req, res) => {
      const r = routes.get(req.url ?? '');
      res.writeHead(r?.[0] ?? 404, { 'content-type': 'application/json' });
      res.end(r?.[1] ?? 'not found');
    });
    await new Promise<void>((resolve) => server!.listen(0, '127.0.0.1', resolve));
    const addr = server.address() as AddressInfo;
    assert.equal(addr.address, '127.0.0.1');
    base = `http://127.0.0.1:${addr.port}`;
  });

  after(async () => {
    if (server !== null) {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server!.close(() => resolve()));
    }
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  const write = (name: string, doc: SignedConsensus | string): string => {
    const p = path.join(tmp, name);
    fs.writeFileSync(p, typeof doc === 'string' ? doc : JSON.stringify(doc));
    return p;
  };

  /** The good document with relay 1's WireGuard key swapped for relay 2's: signatures break. */
  const swappedKey = (doc: SignedConsensus): SignedConsensus => {
    const d = clone(doc);
    d.consensus.relays[1]!.descriptor.body.wireguardKey = otherWgKey(1);
    return d;
  };

  test('must-show 3: tampered file, missing file, good file -> the good one, with both failures', async () => {
    const doc = good(40);
    const mirrors = [write('m3-tampered.json', swappedKey(doc)), path.join(tmp, 'm3-missing.json'), write('m3-good.json', doc)];
    const client = new DirectoryClient(ANCHOR_3_OF_5, mirrors);
    const r = await client.refresh(NOW);
    assert.equal(r.from, mirrors[2]);
    assert.equal(r.consensus.serial, 40);
    assert.equal(r.consensus.relays.find((x) => x.name === 'relay-1')!.publicKey.toBase64(), dir.relays[1]!.wg.publicKey().toBase64());
    assert.deepEqual(
      r.failures.map((f) => [f.mirror, f.code]),
      [
        [mirrors[0], 'ERR_DIR_BAD_SIGNATURE'],
        [mirrors[1], 'ERR_DIR_FETCH'],
      ],
    );
    assert.match(r.failures[1]!.message, /ENOENT/);
    assert.equal(client.current, r.consensus);
  });

  test('must-show 3 over http: tampered http mirror, missing file, good http mirror', async () => {
    const doc = good(41);
    routes.set('/m3/tampered', [200, JSON.stringify(swappedKey(doc))]);
    routes.set('/m3/good', [200, JSON.stringify(doc)]);
    const mirrors = [`${base}/m3/tampered`, path.join(tmp, 'm3h-missing.json'), `${base}/m3/good`];
    const client = new DirectoryClient(ANCHOR_3_OF_5, mirrors, { fetchTimeoutMs: 2000 });
    const r = await client.refresh(NOW);
    assert.equal(r.from, mirrors[2]);
    assert.equal(r.consensus.serial, 41);
    assert.deepEqual(
      r.failures.map((f) => [f.mirror, f.code]),
      [
        [mirrors[0], 'ERR_DIR_BAD_SIGNATURE'],
        [mirrors[1], 'ERR_DIR_FETCH'],
      ],
    );
    assert.match(r.failures[1]!.message, /ENOENT/);
  });

  test('an http mirror serving a tampered document, then a good file mirror (file:// URL too)', async () => {
    const doc = good(42);
    routes.set('/tampered-42', [200, JSON.stringify(swappedKey(doc))]);
    const goodFile = write('good-42.json', doc);
    for (const second of [goodFile, pathToFileURL(goodFile).href]) {
      const client = new DirectoryClient(ANCHOR_3_OF_5, [`${base}/tampered-42`, second]);
      const r = await client.refresh(NOW);
      assert.equal(r.from, second);
      assert.equal(r.consensus.serial, 42);
      assert.deepEqual(
        r.failures.map((f) => [f.mirror, f.code]),
        [[`${base}/tampered-42`, 'ERR_DIR_BAD_SIGNATURE']],
      );
    }
  });

  test('http errors are ERR_DIR_FETCH: 404, 500, connection refused; a JSON-less body is ERR_DIR_MALFORMED', async () => {
    routes.set('/500', [500, 'oops']);
    routes.set('/html', [200, '<html>mirror</html>']);
    // A port that was just free on loopback: bind, note it, close.
    const closed = http.createServer();
    await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
    const deadPort = (closed.address() as AddressInfo).port;
    await new Promise<void>((resolve) => closed.close(() => resolve()));
    const doc = good(43);
    const goodFile = write('good-43.json', doc);
    const mirrors = [`${base}/nothing-here`, `${base}/500`, `http://127.0.0.1:${deadPort}/c`, `${base}/html`, goodFile];
    const r = await new DirectoryClient(ANCHOR_3_OF_5, mirrors, { fetchTimeoutMs: 2000 }).refresh(NOW);
    assert.equal(r.from, goodFile);
    assert.deepEqual(
      r.failures.map((f) => f.code),
      ['ERR_DIR_FETCH', 'ERR_DIR_FETCH', 'ERR_DIR_FETCH', 'ERR_DIR_MALFORMED'],
    );
    assert.match(r.failures[0]!.message, /404/);
    assert.match(r.failures[1]!.message, /500/);
  });

  test('keeps the last good consensus while it is valid when every mirror fails', async () => {
    const a = write('keep-a.json', good(50));
    const b = path.join(tmp, 'keep-b.json');
    const client = new DirectoryClient(ANCHOR_3_OF_5, [a, b]);
    const first = await client.refresh(NOW);
    assert.equal(first.from, a);
    // Now mirror a is gone and mirror b serves a tampered copy of a newer consensus.
    fs.rmSync(a);
    write('keep-b.json', swappedKey(good(51)));
    for (const t of [T0 + HOUR, T0 + 2 * HOUR, T0 + 3 * HOUR]) {
      const r = await client.refresh(new Date(t));
      assert.equal(r.from, null);
      assert.equal(r.consensus, first.consensus);
      assert.equal(r.consensus.serial, 50);
      assert.deepEqual(
        r.failures.map((f) => [f.mirror, f.code]),
        [
          [a, 'ERR_DIR_FETCH'],
          [b, 'ERR_DIR_BAD_SIGNATURE'],
        ],
      );
    }
    assert.equal(client.current!.serial, 50);
  });

  test('refuses, with a code, when no mirror is valid and the last one expired', async () => {
    const a = write('exp-a.json', good(60));
    const b = path.join(tmp, 'exp-b.json');
    const client = new DirectoryClient(ANCHOR_3_OF_5, [a, b]);
    await client.refresh(NOW);
    const late = new Date(T0 + 3 * HOUR + 1);
    // Mirror a still serves the (now expired) consensus, b is missing: mixed codes.
    const e = await rejectsCode(client.refresh(late), 'ERR_DIR_NO_VALID_CONSENSUS');
    assert.match(e.message, /ERR_DIR_EXPIRED/);
    assert.match(e.message, /ERR_DIR_FETCH/);
    // Every mirror failing the same way gives that code.
    fs.rmSync(a);
    await rejectsCode(client.refresh(late), 'ERR_DIR_FETCH');
    // A client with nothing accepted yet refuses too.
    await rejectsCode(new DirectoryClient(ANCHOR_3_OF_5, [b]).refresh(NOW), 'ERR_DIR_FETCH');
    // The expired one is still remembered (for rollback protection), but never served as valid.
    assert.equal(client.current!.serial, 60);
  });

  test('a newer serial is adopted', async () => {
    const a = write('newer-a.json', good(70));
    const client = new DirectoryClient(ANCHOR_3_OF_5, [a]);
    assert.equal((await client.refresh(NOW)).consensus.serial, 70);
    write('newer-a.json', good(71, { validAfter: new Date(T0 + HOUR), freshUntil: new Date(T0 + 2 * HOUR), validUntil: new Date(T0 + 4 * HOUR) }));
    const r = await client.refresh(new Date(T0 + HOUR + MIN));
    assert.equal(r.from, a);
    assert.equal(r.consensus.serial, 71);
    assert.equal(client.current!.serial, 71);
    // It is valid past the old one's expiry.
    const later = await client.refresh(new Date(T0 + 3 * HOUR + MIN));
    assert.equal(later.consensus.serial, 71);
  });

  test('an older serial from a mirror is rejected with ERR_DIR_ROLLBACK and the next mirror is tried', async () => {
    const client = new DirectoryClient(ANCHOR_3_OF_5, [path.join(tmp, 'rb-old.json'), path.join(tmp, 'rb-new.json')]);
    client.accept(JSON.stringify(good(80)), NOW);
    const old = write('rb-old.json', good(79));
    const same = dir.sign(dir.body(80, WINDOW, dir.relays.slice(0, 3).map((r) => r.descriptor)), [0, 1, 2]);
    const next = write('rb-new.json', good(81));
    const r = await client.refresh(NOW);
    assert.equal(r.from, next);
    assert.equal(r.consensus.serial, 81);
    assert.deepEqual(
      r.failures.map((f) => [f.mirror, f.code]),
      [[old, 'ERR_DIR_ROLLBACK']],
    );
    // Same serial, other contents, from the first mirror: also ERR_DIR_ROLLBACK, next tried.
    write('rb-old.json', dir.sign(dir.body(81, WINDOW, dir.relays.slice(0, 3).map((r) => r.descriptor)), [0, 1, 2]));
    const r2 = await client.refresh(NOW);
    assert.equal(r2.from, next);
    assert.deepEqual(
      r2.failures.map((f) => f.code),
      ['ERR_DIR_ROLLBACK'],
    );
    // Every mirror rolling back while the current one is valid: the current one is kept.
    write('rb-new.json', same);
    write('rb-old.json', good(79));
    const r3 = await client.refresh(NOW);
    assert.equal(r3.from, null);
    assert.equal(r3.consensus.serial, 81);
    assert.deepEqual(
      r3.failures.map((f) => f.code),
      ['ERR_DIR_ROLLBACK', 'ERR_DIR_ROLLBACK'],
    );
  });

  test('a rejected document never replaces the current one; accept() reports the code', () => {
    const client = new DirectoryClient(ANCHOR_3_OF_5, ['unused']);
    const v: VerifiedConsensus = client.accept(JSON.stringify(good(90)), NOW);
    throwsCode(() => client.accept(JSON.stringify(swappedKey(good(91))), NOW), 'ERR_DIR_BAD_SIGNATURE');
    throwsCode(() => client.accept(JSON.stringify(dir.sign(dir.body(92), [0, 1])), NOW), 'ERR_DIR_THRESHOLD');
    throwsCode(() => client.accept('{', NOW), 'ERR_DIR_MALFORMED');
    throwsCode(() => client.accept(JSON.stringify(good(89)), NOW), 'ERR_DIR_ROLLBACK');
    assert.equal(client.current, v);
  });
});
