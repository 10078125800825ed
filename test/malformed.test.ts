/**
 * Malformed input of every kind is dropped with a counted reason and never throws.
 *
 * Two in-memory cores, A (initiator, 10.0.0.1) and B (responder, 10.0.0.2), complete a real
 * handshake; the messages of that handshake are captured and then damaged in every way the
 * wire allows. Each damaged datagram goes to the core it was addressed to, so that the only
 * thing wrong with it is the damage, and each case checks the exact drop reason, that the
 * reason (and nothing else) was counted in `core.drops`, and that nothing was sent in reply.
 * Every group ends with a positive control (the undamaged message is accepted or refused for
 * its own, different reason) and a check that the session still carries traffic both ways.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { PrivateKey } from '../src/crypto/keys.ts';
import { WireGuard, type DropReason, type Endpoint, type Peer, type ReceiveResult } from '../src/wireguard/core.ts';
import type { RandomBytes } from '../src/wireguard/cookie.ts';
import { parseIP } from '../src/wireguard/ip.ts';
import { COOKIE_REPLY_SIZE, INITIATION_SIZE, RESPONSE_SIZE, TRANSPORT_MIN_SIZE } from '../src/wireguard/messages.ts';

// ---- helpers -------------------------------------------------------------------------------

/** mulberry32: a small seeded PRNG, so index allocation and ephemerals are reproducible. */
function mulberry32(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  };
}

function seededRandom(seed: number): RandomBytes {
  const next = mulberry32(seed);
  return (n) => {
    const b = new Uint8Array(n);
    for (let i = 0; i < n; i++) b[i] = next() & 0xff;
    return b;
  };
}

function addr(text: string): Uint8Array {
  const b = parseIP(text);
  if (b === null) throw new Error(`bad address in test: ${text}`);
  return b;
}

function filled(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed) & 0xff;
  return b;
}

/** An IPv4 packet: a 20-byte header with a correct total length (checksum left zero). */
function ipv4(src: string, dst: string, payloadLength = 20, seed = 7): Uint8Array {
  const p = new Uint8Array(20 + payloadLength);
  p[0] = 0x45;
  p[2] = p.length >> 8;
  p[3] = p.length & 0xff;
  p[8] = 64; // TTL
  p[9] = 17; // UDP
  p.set(addr(src), 12);
  p.set(addr(dst), 16);
  p.set(filled(payloadLength, seed), 20);
  return p;
}

/** An IPv6 packet: a 40-byte header with a correct payload length. */
function ipv6(src: string, dst: string, payloadLength = 24, seed = 9): Uint8Array {
  const p = new Uint8Array(40 + payloadLength);
  p[0] = 0x60;
  p[4] = payloadLength >> 8;
  p[5] = payloadLength & 0xff;
  p[6] = 17;
  p[7] = 64;
  p.set(addr(src), 8);
  p.set(addr(dst), 24);
  p.set(filled(payloadLength, seed), 40);
  return p;
}

function u32le(b: Uint8Array, o: number): number {
  return (b[o]! | (b[o + 1]! << 8) | (b[o + 2]! << 16) | (b[o + 3]! << 24)) >>> 0;
}

function withU32le(d: Uint8Array, o: number, v: number): Uint8Array {
  const c = Uint8Array.from(d);
  c[o] = v & 0xff;
  c[o + 1] = (v >>> 8) & 0xff;
  c[o + 2] = (v >>> 16) & 0xff;
  c[o + 3] = (v >>> 24) & 0xff;
  return c;
}

function withByte(d: Uint8Array, o: number, v: number): Uint8Array {
  const c = Uint8Array.from(d);
  c[o] = v;
  return c;
}

function flipBit(d: Uint8Array, bit: number): Uint8Array {
  const c = Uint8Array.from(d);
  c[bit >> 3]! ^= 0x80 >> (bit & 7);
  return c;
}

function extended(d: Uint8Array, extra: Uint8Array): Uint8Array {
  const c = new Uint8Array(d.length + extra.length);
  c.set(d);
  c.set(extra, d.length);
  return c;
}

const EP_A: Endpoint = { address: '192.0.2.1', port: 51820 };
const EP_B: Endpoint = { address: '192.0.2.2', port: 51820 };

interface World {
  a: WireGuard;
  b: WireGuard;
  /** A's record of B, and B's record of A. */
  peerB: Peer;
  peerA: Peer;
  now: number;
  /** Initiation A→B (already consumed by B). */
  initiation: Uint8Array;
  /** Response B→A (already consumed by A). */
  response: Uint8Array;
  /** Cookie reply B→A, answering `initiation` while B was under load (not yet consumed). */
  cookieReply: Uint8Array;
  /** The one index-table entry each side holds: the session's local index. */
  indexA: number;
  indexB: number;
}

/** Two cores with an established session both ways, and the handshake messages captured. */
function world(seed = 1): World {
  let now = 1000;
  const ra = seededRandom(seed * 2 + 1);
  const rb = seededRandom(seed * 2 + 2);
  const a = new WireGuard({ privateKey: new PrivateKey(ra(32)), random: ra });
  const b = new WireGuard({ privateKey: new PrivateKey(rb(32)), random: rb });
  const peerB = a.addPeer(b.publicKey!, { allowedIPs: ['10.0.0.2/32', 'fd00::2/128'], endpoint: EP_B });
  const peerA = b.addPeer(a.publicKey!, { allowedIPs: ['10.0.0.1/32', 'fd00::1/128'], endpoint: EP_A });

  const first = ipv4('10.0.0.1', '10.0.0.2');
  const s = a.send(first, now);
  assert.equal(s.kind, 'queued');
  assert.equal(s.out.length, 1);
  assert.deepEqual(s.out[0]!.endpoint, EP_B);
  const initiation = s.out[0]!.datagram;
  assert.equal(initiation.length, INITIATION_SIZE);

  const r1 = b.receive(initiation, EP_A, now);
  assert.equal(r1.kind, 'handled');
  assert.equal(r1.kind === 'handled' && r1.what, 'initiation');
  assert.equal(r1.out.length, 1);
  const response = r1.out[0]!.datagram;
  assert.equal(response.length, RESPONSE_SIZE);

  const r2 = a.receive(response, EP_B, now);
  assert.equal(r2.kind === 'handled' && r2.what, 'response');
  assert.equal(r2.out.length, 1); // the staged packet, now sealed
  const r3 = b.receive(r2.out[0]!.datagram, EP_A, now);
  assert.equal(r3.kind, 'deliver');
  assert.deepEqual(r3.kind === 'deliver' && r3.packet, first);

  // B under load answers a (replayed) initiation without a valid MAC2 with a cookie reply.
  b.markUnderLoad(now);
  const r4 = b.receive(initiation, EP_A, now);
  assert.equal(r4.kind === 'handled' && r4.what, 'cookie-reply-sent');
  assert.equal(r4.out.length, 1);
  const cookieReply = r4.out[0]!.datagram;
  assert.equal(cookieReply.length, COOKIE_REPLY_SIZE);
  now += 2000; // B is no longer under load
  assert.equal(b.isUnderLoad(now), false);

  assert.equal(a.indexCount, 1);
  assert.equal(b.indexCount, 1);
  const indexA = u32le(initiation, 4); // the initiator's sender index became its session index
  const indexB = u32le(response, 4);
  assert.equal(u32le(response, 8), indexA);
  assert.equal(u32le(cookieReply, 4), indexA);
  assert.notEqual(indexA, indexB);

  const w: World = { a, b, peerB, peerA, now, initiation, response, cookieReply, indexA, indexB };
  assertSessionWorks(w);
  return w;
}

/** A packet each way is delivered intact to the right peer. */
function assertSessionWorks(w: World, payloadSeed = 3): void {
  const ab = ipv4('10.0.0.1', '10.0.0.2', 33, payloadSeed);
  const s1 = w.a.send(ab, w.now);
  assert.equal(s1.kind, 'sent', 'A→B should send on the established session');
  assert.equal(s1.out.length, 1);
  const d1 = w.b.receive(s1.out[0]!.datagram, EP_A, w.now);
  if (d1.kind !== 'deliver') assert.fail(`A→B not delivered: ${JSON.stringify(d1.kind === 'drop' ? d1.reason : d1.kind)}`);
  assert.equal(d1.peer, w.peerA);
  assert.deepEqual(d1.packet, ab);

  const ba = ipv6('fd00::2', 'fd00::1', 17, payloadSeed);
  const s2 = w.b.send(ba, w.now);
  assert.equal(s2.kind, 'sent', 'B→A should send on the established session');
  assert.equal(s2.out.length, 1);
  const d2 = w.a.receive(s2.out[0]!.datagram, EP_B, w.now);
  if (d2.kind !== 'deliver') assert.fail(`B→A not delivered: ${JSON.stringify(d2.kind === 'drop' ? d2.reason : d2.kind)}`);
  assert.equal(d2.peer, w.peerB);
  assert.deepEqual(d2.packet, ba);
}

/** A fresh transport message A→B carrying `packet`, not yet received by B. */
function transportAB(w: World, packet: Uint8Array = ipv4('10.0.0.1', '10.0.0.2', 20, 11)): Uint8Array {
  const s = w.a.sendTo(w.peerB, packet, w.now);
  if (s.kind !== 'sent') assert.fail(`sendTo: ${s.kind}`);
  assert.equal(s.out.length, 1);
  return s.out[0]!.datagram;
}

function counts(core: WireGuard): Map<DropReason, number> {
  return new Map(core.drops);
}

/** The counters that changed from `before` to now. */
function delta(core: WireGuard, before: ReadonlyMap<DropReason, number>): Map<DropReason, number> {
  const out = new Map<DropReason, number>();
  for (const k of new Set([...before.keys(), ...core.drops.keys()])) {
    const d = (core.drops.get(k) ?? 0) - (before.get(k) ?? 0);
    if (d !== 0) out.set(k, d);
  }
  return out;
}

let cases = 0;

/** Feeds one datagram and checks: a drop, with exactly this reason, counted once, nothing sent. */
function expectDrop(core: WireGuard, datagram: Uint8Array, from: Endpoint, now: number, reason: DropReason, label: string): void {
  cases++;
  const before = counts(core);
  let r: ReceiveResult<Endpoint>;
  try {
    r = core.receive(datagram, from, now);
  } catch (e) {
    assert.fail(`${label}: receive threw ${String(e)}`);
  }
  if (r.kind !== 'drop') assert.fail(`${label}: expected drop '${reason}', got ${r.kind}`);
  if (r.reason !== reason) assert.fail(`${label}: expected drop '${reason}', got '${r.reason}'`);
  assert.equal(r.out.length, 0, `${label}: a drop sent something`);
  assert.deepEqual(delta(core, before), new Map([[reason, 1]]), `${label}: drop counters`);
}

function describeCase(kind: string, detail: string): string {
  return `${kind}: ${detail}`;
}

// ---- the captured messages, each with its addressee and expected fates ----------------------

interface Captured {
  name: string;
  type: 1 | 2 | 3 | 4;
  bytes: Uint8Array;
  to: 'a' | 'b';
  /** Drop reason for a same-type message of a wrong length (or a transport cut below 32). */
  short: DropReason;
}

function captured(w: World): Captured[] {
  return [
    { name: 'initiation', type: 1, bytes: w.initiation, to: 'b', short: 'bad-length' },
    { name: 'response', type: 2, bytes: w.response, to: 'a', short: 'bad-length' },
    { name: 'cookie reply', type: 3, bytes: w.cookieReply, to: 'a', short: 'bad-length' },
    { name: 'transport', type: 4, bytes: transportAB(w), to: 'b', short: 'bad-length' },
  ];
}

function target(w: World, c: Captured): { core: WireGuard; from: Endpoint } {
  return c.to === 'a' ? { core: w.a, from: EP_B } : { core: w.b, from: EP_A };
}

/** The undamaged message's fate, checked after the damaged copies (the positive control). */
function control(w: World, c: Captured): void {
  const { core, from } = target(w, c);
  const r = core.receive(c.bytes, from, w.now);
  switch (c.type) {
    case 1: // B consumed this initiation during setup: its timestamp is not newer
      assert.equal(r.kind === 'drop' && r.reason, 'initiation-replay', 'control: initiation');
      break;
    case 2: // A's index for this handshake now holds a session, not a pending handshake
      assert.equal(r.kind === 'drop' && r.reason, 'unknown-index', 'control: response');
      break;
    case 3: // A still holds the MAC1 this reply answers
      assert.equal(r.kind === 'handled' && r.what, 'cookie-consumed', 'control: cookie reply');
      break;
    case 4: {
      if (r.kind !== 'deliver') assert.fail(`control: transport not delivered (${r.kind === 'drop' ? r.reason : r.kind})`);
      assert.deepEqual(r.packet, ipv4('10.0.0.1', '10.0.0.2', 20, 11));
      // and once only
      const again = core.receive(c.bytes, from, w.now);
      assert.equal(again.kind === 'drop' && again.reason, 'replay', 'control: transport replayed');
      break;
    }
  }
}

// ---- tests ---------------------------------------------------------------------------------

describe('malformed input is dropped with a counted reason and never throws', () => {
  test('empty datagram: reason "empty" on both cores', () => {
    const w = world();
    expectDrop(w.b, new Uint8Array(0), EP_A, w.now, 'empty', 'empty to B');
    expectDrop(w.a, new Uint8Array(0), EP_B, w.now, 'empty', 'empty to A');
    expectDrop(w.b, new Uint8Array(new ArrayBuffer(64), 64, 0), EP_A, w.now, 'empty', 'empty view at the end of a buffer');
    assertSessionWorks(w);
  });

  test('type bytes 0 and 5..255: reason "unknown-type", on every captured body and alone', () => {
    const w = world();
    const msgs = captured(w);
    const types = [0];
    for (let t = 5; t <= 255; t++) types.push(t);
    assert.equal(types.length, 252);
    for (const t of types) {
      expectDrop(w.b, Uint8Array.of(t), EP_A, w.now, 'unknown-type', `type ${t} alone`);
      expectDrop(w.b, Uint8Array.of(t, 1, 2, 3), EP_A, w.now, 'unknown-type', `type ${t} with non-zero reserved bytes`);
      for (const c of msgs) {
        const { core, from } = target(w, c);
        expectDrop(core, withByte(c.bytes, 0, t), from, w.now, 'unknown-type', describeCase(c.name, `type byte ${t}`));
      }
    }
    for (const c of msgs) control(w, c);
    assertSessionWorks(w);
  });

  test('every non-zero value in each reserved byte (1..3): reason "reserved-nonzero"', () => {
    const w = world();
    const msgs = captured(w);
    for (const c of msgs) {
      const { core, from } = target(w, c);
      for (let byte = 1; byte <= 3; byte++) {
        for (let v = 1; v <= 255; v++) {
          expectDrop(core, withByte(c.bytes, byte, v), from, w.now, 'reserved-nonzero', describeCase(c.name, `byte ${byte} = ${v}`));
        }
      }
    }
    for (const c of msgs) control(w, c);
    assertSessionWorks(w);
  });

  test('truncated by one byte and to every length 1..len-1: "bad-length" (a transport of 32+ bytes fails to decrypt)', () => {
    const w = world();
    const msgs = captured(w);
    for (const c of msgs) {
      const { core, from } = target(w, c);
      assert.ok(c.bytes.length > 1);
      // by one byte, as a view and as a copy
      const cut = c.bytes.length - 1;
      const one: DropReason = c.type === 4 && cut >= TRANSPORT_MIN_SIZE ? 'decrypt' : c.short;
      expectDrop(core, c.bytes.subarray(0, cut), from, w.now, one, describeCase(c.name, 'truncated by 1 (view)'));
      expectDrop(core, c.bytes.slice(0, cut), from, w.now, one, describeCase(c.name, 'truncated by 1 (copy)'));
      for (let len = 1; len < c.bytes.length; len++) {
        const expected: DropReason = c.type === 4 && len >= TRANSPORT_MIN_SIZE ? 'decrypt' : c.short;
        expectDrop(core, c.bytes.slice(0, len), from, w.now, expected, describeCase(c.name, `truncated to ${len}`));
      }
    }
    for (const c of msgs) control(w, c);
    assertSessionWorks(w);
  });

  test('extended by one byte (and, for transport, by a whole 16-byte block): "bad-length" / "decrypt"', () => {
    const w = world();
    const msgs = captured(w);
    for (const c of msgs) {
      const { core, from } = target(w, c);
      const expected: DropReason = c.type === 4 ? 'decrypt' : 'bad-length';
      for (const extra of [Uint8Array.of(0), Uint8Array.of(0xff), filled(16, 5)]) {
        expectDrop(core, extended(c.bytes, extra), from, w.now, expected, describeCase(c.name, `extended by ${extra.length} (${extra[0]})`));
      }
    }
    for (const c of msgs) control(w, c);
    assertSessionWorks(w);
  });

  test('a valid type byte on another type\'s body: each is judged by the new type\'s rules', () => {
    const w = world();
    const msgs = captured(w);
    const t = msgs[3]!.bytes;
    assert.equal(t.length, 80, 'transport size chosen so that it matches no handshake size');
    // [message, new type, expected reason]
    const table: [Captured, number, DropReason][] = [];
    for (const c of msgs) {
      for (let nt = 1; nt <= 4; nt++) {
        if (nt === c.type) continue;
        let expected: DropReason = 'bad-length';
        if (nt === 4) {
          // read as a transport: the receiver field is bytes 4..7
          const receiver = u32le(c.bytes, 4);
          const live = c.to === 'a' ? w.indexA : w.indexB;
          expected = receiver === live ? 'decrypt' : 'unknown-index';
        }
        table.push([c, nt, expected]);
      }
    }
    // Pinned here so a change in the capture is noticed: the cookie reply's receiver is A's
    // live index (decrypt), the initiation's and response's first u32 are their sender indices.
    assert.deepEqual(
      table.filter(([, nt]) => nt === 4).map(([c, , e]) => [c.name, e]),
      [
        ['initiation', 'unknown-index'],
        ['response', 'unknown-index'],
        ['cookie reply', 'decrypt'],
      ],
    );
    for (const [c, nt, expected] of table) {
      const { core, from } = target(w, c);
      expectDrop(core, withByte(c.bytes, 0, nt), from, w.now, expected, describeCase(c.name, `type byte ${nt}`));
    }
    for (const c of msgs) control(w, c);
    assertSessionWorks(w);
  });

  test('initiation and response with any flipped MAC1 bit (or any flipped bit MAC1 covers): "bad-mac1"', () => {
    const w = world();
    const specs = [
      { name: 'initiation', bytes: w.initiation, core: w.b, from: EP_A, mac1: 116, control: 'initiation-replay' as DropReason },
      { name: 'response', bytes: w.response, core: w.a, from: EP_B, mac1: 60, control: 'unknown-index' as DropReason },
    ];
    for (const s of specs) {
      // every bit of MAC1 itself
      for (let bit = s.mac1 * 8; bit < (s.mac1 + 16) * 8; bit++) {
        expectDrop(s.core, flipBit(s.bytes, bit), s.from, w.now, 'bad-mac1', describeCase(s.name, `MAC1 bit ${bit}`));
      }
      // every bit MAC1 covers, after the header (type and reserved bytes fail parsing first)
      for (let bit = 32; bit < s.mac1 * 8; bit++) {
        expectDrop(s.core, flipBit(s.bytes, bit), s.from, w.now, 'bad-mac1', describeCase(s.name, `covered bit ${bit}`));
      }
      // MAC2 is not checked when not under load: a flipped MAC2 bit changes nothing
      for (let bit = (s.mac1 + 16) * 8; bit < (s.mac1 + 32) * 8; bit += 13) {
        expectDrop(s.core, flipBit(s.bytes, bit), s.from, w.now, s.control, describeCase(s.name, `MAC2 bit ${bit}`));
      }
      // the positive control: with MAC1 intact the message gets past the MAC check
      expectDrop(s.core, s.bytes, s.from, w.now, s.control, describeCase(s.name, 'undamaged'));
    }
    // a handshake message sent to the wrong core carries a MAC1 for someone else's key
    expectDrop(w.a, w.initiation, EP_B, w.now, 'bad-mac1', 'initiation to its own sender');
    expectDrop(w.b, w.response, EP_A, w.now, 'bad-mac1', 'response to its own sender');
    assertSessionWorks(w);
  });

  test('transport with an unknown receiver index: "unknown-index"', () => {
    const w = world();
    const t = transportAB(w);
    assert.equal(u32le(t, 4), w.indexB);
    const unknown = [0, 0xffffffff, w.indexA, (w.indexB + 1) >>> 0, (w.indexB - 1) >>> 0];
    for (let bit = 0; bit < 32; bit++) unknown.push((w.indexB ^ (1 << bit)) >>> 0);
    for (const index of unknown) {
      assert.notEqual(index, w.indexB);
      expectDrop(w.b, withU32le(t, 4, index), EP_A, w.now, 'unknown-index', `transport to index ${index.toString(16)}`);
    }
    // a transport to B's session index, but sent to A, which holds a different index
    expectDrop(w.a, t, EP_B, w.now, 'unknown-index', 'transport to the wrong core');
    // the index of a handshake in progress is not a session index. B sent data at setup and
    // has heard nothing authenticated since, so after KEEPALIVE_TIMEOUT + REKEY_TIMEOUT (and
    // at most 334 ms of jitter) its timer starts a new handshake.
    w.now += 15_400;
    const out = w.b.tick(w.now).filter((o) => o.datagram[0] === 1);
    assert.equal(out.length, 1);
    const pending = out[0]!.datagram;
    assert.equal(pending.length, INITIATION_SIZE);
    assert.equal(w.b.indexCount, 2);
    const pendingIndex = u32le(pending, 4);
    assert.notEqual(pendingIndex, w.indexB);
    expectDrop(w.b, withU32le(t, 4, pendingIndex), EP_A, w.now, 'unknown-index', 'transport to a pending handshake index');
    // the undamaged transport is delivered
    const r = w.b.receive(t, EP_A, w.now);
    assert.equal(r.kind, 'deliver');
    assertSessionWorks(w);
  });

  test('transport with a live index and any flipped counter or ciphertext bit: "decrypt"', () => {
    const w = world();
    const packet = ipv4('10.0.0.1', '10.0.0.2', 20, 11);
    const t = transportAB(w, packet);
    assert.equal(t.length, 80);
    let flips = 0;
    for (let bit = 64; bit < t.length * 8; bit++) {
      expectDrop(w.b, flipBit(t, bit), EP_A, w.now, 'decrypt', `transport bit ${bit}`);
      flips++;
    }
    assert.equal(flips, (80 - 8) * 8);
    // failed attempts moved no replay state: the undamaged message is delivered, once
    const r = w.b.receive(t, EP_A, w.now);
    if (r.kind !== 'deliver') assert.fail(`undamaged transport: ${r.kind}`);
    assert.deepEqual(r.packet, packet);
    expectDrop(w.b, t, EP_A, w.now, 'replay', 'transport replayed');
    // and the same damage on an already-received message is still "decrypt", not "replay"
    expectDrop(w.b, flipBit(t, 100), EP_A, w.now, 'decrypt', 'flipped copy of a received transport');
    assertSessionWorks(w);
  });

  test('cookie reply with an unknown index: "unknown-index"; with a damaged cookie: "cookie-decrypt"', () => {
    const w = world();
    const c = w.cookieReply;
    for (const index of [0, 0xffffffff, w.indexB, (w.indexA ^ 1) >>> 0, (w.indexA ^ 0x80000000) >>> 0]) {
      expectDrop(w.a, withU32le(c, 4, index), EP_B, w.now, 'unknown-index', `cookie reply to index ${index.toString(16)}`);
    }
    // B holds no entry for A's index
    expectDrop(w.b, c, EP_A, w.now, 'unknown-index', 'cookie reply to the wrong core');
    // nonce (bytes 8..31) and sealed cookie (32..63): every byte, one bit each
    for (let byte = 8; byte < 64; byte++) {
      expectDrop(w.a, flipBit(c, byte * 8 + (byte % 8)), EP_B, w.now, 'cookie-decrypt', `cookie reply byte ${byte}`);
    }
    // a cookie reply for B's live session index: B holds the entry but never sent that MAC1
    expectDrop(w.b, withU32le(c, 4, w.indexB), EP_A, w.now, 'cookie-decrypt', 'cookie reply to B for a MAC1 B never sent');
    const r = w.a.receive(c, EP_B, w.now);
    assert.equal(r.kind === 'handled' && r.what, 'cookie-consumed');
    assertSessionWorks(w);
  });

  test('inner packets: bad version, truncated header, bad length, spoofed source', () => {
    const w = world();
    const send = (packet: Uint8Array): Uint8Array => transportAB(w, packet);
    const good4 = ipv4('10.0.0.1', '10.0.0.2');
    const inner: [string, Uint8Array, DropReason][] = [];

    // version nibble other than 4 and 6
    for (const v of [0, 1, 2, 3, 5, 7, 8, 15]) {
      inner.push([`version ${v}`, withByte(good4, 0, (v << 4) | 5), 'inner-bad-version']);
    }
    inner.push(['one byte 0x00', Uint8Array.of(0), 'inner-bad-version']);
    // shorter than the header even with the padding (padding rounds up to 16 bytes)
    for (const n of [1, 2, 10, 16]) inner.push([`IPv4 header cut to ${n}`, good4.slice(0, n), 'inner-truncated']);
    const good6 = ipv6('fd00::1', 'fd00::2');
    for (const n of [1, 20, 32]) inner.push([`IPv6 header cut to ${n}`, good6.slice(0, n), 'inner-truncated']);
    // the total length is larger than the packet (and than the padding), or below the header
    const long4 = Uint8Array.from(good4);
    long4[2] = 0x05; // 1280
    long4[3] = 0x00;
    inner.push(['IPv4 total length 1280 > 40', long4, 'inner-bad-length']);
    inner.push(['IPv4 total length 65535', withByte(withByte(good4, 2, 0xff), 3, 0xff), 'inner-bad-length']);
    inner.push(['IPv4 total length 49 in 40 bytes (padded to 48)', withByte(good4, 3, 49), 'inner-bad-length']);
    inner.push(['IPv4 total length 19', withByte(good4, 3, 19), 'inner-bad-length']);
    inner.push(['IPv4 total length 0', withByte(good4, 3, 0), 'inner-bad-length']);
    inner.push(['IPv6 payload length 1000 > 24', withByte(withByte(good6, 4, 0x03), 5, 0xe8), 'inner-bad-length']);
    // sources outside A's AllowedIPs at B (10.0.0.1/32, fd00::1/128)
    for (const src of ['10.0.0.99', '10.0.0.2', '0.0.0.0', '255.255.255.255', '10.0.0.0']) {
      inner.push([`IPv4 source ${src}`, ipv4(src, '10.0.0.2'), 'inner-disallowed-source']);
    }
    for (const src of ['fd00::3', 'fd00::2', '::', '::ffff:10.0.0.1']) {
      inner.push([`IPv6 source ${src}`, ipv6(src, 'fd00::2'), 'inner-disallowed-source']);
    }

    for (const [label, packet, reason] of inner) {
      const d = send(packet);
      // The session is already confirmed, so these drops send nothing either.
      expectDrop(w.b, d, EP_A, w.now, reason, `inner ${label}`);
      // the datagram was authentic: a replay is now refused as such
      expectDrop(w.b, d, EP_A, w.now, 'replay', `inner ${label}, replayed`);
    }

    // controls: allowed sources are delivered, trimmed of the padding
    for (const p of [good4, good6, ipv4('10.0.0.1', '10.0.0.2', 0), withByte(good4, 3, 21)]) {
      const r = w.b.receive(send(p), EP_A, w.now);
      if (r.kind !== 'deliver') assert.fail(`control not delivered: ${r.kind === 'drop' ? r.reason : r.kind}`);
      const length = p[0]! >> 4 === 4 ? (p[2]! << 8) | p[3]! : 40 + ((p[4]! << 8) | p[5]!);
      assert.equal(r.packet.length, length);
      assert.deepEqual(r.packet, p.length >= length ? p.subarray(0, length) : extended(p, new Uint8Array(length - p.length)));
    }
    // an empty inner packet is a keepalive, not a drop
    const k = w.b.receive(send(new Uint8Array(0)), EP_A, w.now);
    assert.equal(k.kind === 'handled' && k.what, 'keepalive');
    assertSessionWorks(w);
  });

  test('an inner drop on the first packet of a new session still confirms that session', () => {
    // Past REKEY_AFTER_TIME the initiator A sends on its session and starts a new handshake;
    // B answers, and A's first data packet on the new session has a spoofed source.
    const w = world(7);
    w.now = 1000 + 120_001;
    const sent = w.a.send(ipv4('10.0.0.1', '10.0.0.2'), w.now);
    assert.equal(sent.kind, 'sent');
    assert.deepEqual(sent.out.map((o) => o.datagram[0]), [4, 1]);
    assert.equal(w.b.receive(sent.out[0]!.datagram, EP_A, w.now).kind, 'deliver');
    const init = sent.out.slice(1);
    const resp = w.b.receive(init[0]!.datagram, EP_A, w.now);
    assert.equal(resp.kind === 'handled' && resp.what, 'initiation');
    // B stages a packet for A: it still has the old session, so it goes out on that
    const viaOld = w.b.send(ipv4('10.0.0.2', '10.0.0.1'), w.now);
    assert.equal(viaOld.kind, 'sent');
    const done = w.a.receive(resp.out[0]!.datagram, EP_B, w.now);
    assert.equal(done.kind === 'handled' && done.what, 'response');
    // A's keepalive after the response would confirm; send a spoofed packet first instead
    const spoofed = w.a.sendTo(w.peerB, ipv4('10.9.9.9', '10.0.0.2'), w.now);
    if (spoofed.kind !== 'sent') assert.fail(spoofed.kind);
    const before = counts(w.b);
    const r = w.b.receive(spoofed.out[0]!.datagram, EP_A, w.now);
    if (r.kind !== 'drop') assert.fail(r.kind);
    assert.equal(r.reason, 'inner-disallowed-source');
    assert.deepEqual(delta(w.b, before), new Map([['inner-disallowed-source', 1]]));
    assert.equal(r.out.length, 0);
    assert.equal(w.b.indexCount, 2); // the new session and the previous one
    cases++;
    assertSessionWorks(w);
  });

  test('case count', () => {
    // Runs last (node:test runs a suite's tests in order). The drop cases above, by test:
    // empty 3; unknown type 252 × 6 = 1512; reserved 4 × 3 × 255 = 3060; truncation
    // 149 + 93 + 65 + 81 = 388; extension 12; type swap 12; MAC1 1035 + 587 + 2 = 1624;
    // unknown index 39; decrypt 578; cookie reply 63; inner 31 × 2 = 62; new session 1.
    assert.equal(cases, 7354);
    console.log(`# malformed: ${cases} drop cases checked`);
  });
});
