/**
 * Property: no datagram an attacker can send makes a core throw, deliver, answer, roam or
 * change its index table. At least 100,000 seeded random datagrams go to a core (B) that has
 * an established session with A: random bytes; random bodies behind a valid header; mutations
 * of the real messages of that session; and transport messages to B's live session index with
 * a random counter and ciphertext. Each must be a drop whose reason fits what the datagram is,
 * and the session must still carry traffic both ways afterwards.
 *
 * Reproduce a failure with STRATA_FUZZ_SEED=<seed> (the seed is in the test name and in every
 * failure message); STRATA_FUZZ_COUNT raises the number of datagrams.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PrivateKey } from '../src/crypto/keys.ts';
import { WireGuard, type DropReason, type Endpoint, type Peer, type ReceiveResult } from '../src/wireguard/core.ts';
import { parseIP } from '../src/wireguard/ip.ts';
import { COOKIE_REPLY_SIZE, INITIATION_SIZE, RESPONSE_SIZE, TRANSPORT_MIN_SIZE } from '../src/wireguard/messages.ts';

const SEED = Number(process.env['STRATA_FUZZ_SEED'] ?? 0x5eed_2024) >>> 0;
const COUNT = Math.max(100_000, Number(process.env['STRATA_FUZZ_COUNT'] ?? 100_000));
const MAX_LEN = 1600;

// ---- a seeded PRNG (xorshift128) -----------------------------------------------------------

class Rng {
  #x: number;
  #y = 362436069;
  #z = 521288629;
  #w = 88675123;

  constructor(seed: number) {
    this.#x = seed >>> 0 || 123456789;
    for (let i = 0; i < 16; i++) this.u32(); // stir the seed in
  }

  u32(): number {
    const t = this.#x ^ (this.#x << 11);
    this.#x = this.#y;
    this.#y = this.#z;
    this.#z = this.#w;
    this.#w = (this.#w ^ (this.#w >>> 19) ^ (t ^ (t >>> 8))) >>> 0;
    return this.#w;
  }

  /** 0 <= result < n */
  int(n: number): number {
    return Math.floor((this.u32() / 0x1_0000_0000) * n);
  }

  /** lo <= result <= hi */
  range(lo: number, hi: number): number {
    return lo + this.int(hi - lo + 1);
  }

  fill(b: Uint8Array, start = 0, end = b.length): void {
    let i = start;
    for (; i + 4 <= end; i += 4) {
      const v = this.u32();
      b[i] = v;
      b[i + 1] = v >>> 8;
      b[i + 2] = v >>> 16;
      b[i + 3] = v >>> 24;
    }
    if (i < end) {
      const v = this.u32();
      for (let k = 0; i < end; i++, k += 8) b[i] = v >>> k;
    }
  }

  bytes(n: number): Uint8Array {
    const b = new Uint8Array(n);
    this.fill(b);
    return b;
  }

  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)]!;
  }
}

// ---- packets and the session ---------------------------------------------------------------

function ipv4(src: string, dst: string, payload: Uint8Array): Uint8Array {
  const p = new Uint8Array(20 + payload.length);
  p[0] = 0x45;
  p[2] = p.length >> 8;
  p[3] = p.length & 0xff;
  p[8] = 64;
  p[9] = 17;
  p.set(parseIP(src)!, 12);
  p.set(parseIP(dst)!, 16);
  p.set(payload, 20);
  return p;
}

function ipv6(src: string, dst: string, payload: Uint8Array): Uint8Array {
  const p = new Uint8Array(40 + payload.length);
  p[0] = 0x60;
  p[4] = payload.length >> 8;
  p[5] = payload.length & 0xff;
  p[6] = 17;
  p[7] = 64;
  p.set(parseIP(src)!, 8);
  p.set(parseIP(dst)!, 24);
  p.set(payload, 40);
  return p;
}

function u32le(b: Uint8Array, o: number): number {
  return (b[o]! | (b[o + 1]! << 8) | (b[o + 2]! << 16) | (b[o + 3]! << 24)) >>> 0;
}

function putU32le(b: Uint8Array, o: number, v: number): void {
  b[o] = v;
  b[o + 1] = v >>> 8;
  b[o + 2] = v >>> 16;
  b[o + 3] = v >>> 24;
}

const EP_A: Endpoint = { address: '192.0.2.1', port: 51820 };
const EP_B: Endpoint = { address: '192.0.2.2', port: 51820 };

interface World {
  a: WireGuard;
  b: WireGuard;
  peerA: Peer; // B's record of A
  peerB: Peer; // A's record of B
  now: number;
  /** B's one index-table entry: its session's local index. */
  indexB: number;
  /** Real messages of the session, every one already seen by its addressee. */
  captured: { name: string; bytes: Uint8Array }[];
  /** The transport messages among them that B received. */
  transportsAB: Uint8Array[];
}

function world(rng: Rng): World {
  let now = 1000;
  const random = (n: number): Uint8Array => rng.bytes(n);
  const a = new WireGuard({ privateKey: new PrivateKey(rng.bytes(32)), random });
  const b = new WireGuard({ privateKey: new PrivateKey(rng.bytes(32)), random });
  const peerB = a.addPeer(b.publicKey!, { allowedIPs: ['10.0.0.2/32', 'fd00::2/128'], endpoint: EP_B });
  const peerA = b.addPeer(a.publicKey!, { allowedIPs: ['10.0.0.1/32', 'fd00::1/128'], endpoint: EP_A });
  const captured: { name: string; bytes: Uint8Array }[] = [];

  const s = a.send(ipv4('10.0.0.1', '10.0.0.2', rng.bytes(12)), now);
  assert.equal(s.kind, 'queued');
  const initiation = s.out[0]!.datagram;
  assert.equal(initiation.length, INITIATION_SIZE);
  const r1 = b.receive(initiation, EP_A, now);
  assert.equal(r1.kind === 'handled' && r1.what, 'initiation');
  const response = r1.out[0]!.datagram;
  assert.equal(response.length, RESPONSE_SIZE);
  const r2 = a.receive(response, EP_B, now);
  assert.equal(r2.kind === 'handled' && r2.what, 'response');
  const first = r2.out[0]!.datagram;
  assert.equal(b.receive(first, EP_A, now).kind, 'deliver');
  captured.push({ name: 'initiation A→B', bytes: initiation }, { name: 'response B→A', bytes: response }, { name: 'transport A→B #0', bytes: first });

  // B under load answers the replayed initiation with a cookie reply (addressed to A).
  b.markUnderLoad(now);
  const r3 = b.receive(initiation, EP_A, now);
  assert.equal(r3.kind === 'handled' && r3.what, 'cookie-reply-sent');
  const cookie = r3.out[0]!.datagram;
  assert.equal(cookie.length, COOKIE_REPLY_SIZE);
  captured.push({ name: 'cookie reply B→A', bytes: cookie });
  now += 2000;

  // Transport both ways, of several sizes (keepalive, small, MTU-sized), all delivered.
  for (const n of [0, 1, 15, 16, 100, 1380]) {
    const p = n === 0 ? new Uint8Array(0) : ipv4('10.0.0.1', '10.0.0.2', rng.bytes(n));
    const t = a.sendTo(peerB, p, now);
    assert.equal(t.kind, 'sent');
    const d = t.out[0]!.datagram;
    assert.equal(b.receive(d, EP_A, now).kind, n === 0 ? 'handled' : 'deliver');
    captured.push({ name: `transport A→B ${n}`, bytes: d });
    const q = ipv6('fd00::2', 'fd00::1', rng.bytes(n + 3));
    const u = b.sendTo(peerA, q, now);
    assert.equal(u.kind, 'sent');
    assert.equal(a.receive(u.out[0]!.datagram, EP_B, now).kind, 'deliver');
    captured.push({ name: `transport B→A ${n}`, bytes: u.out[0]!.datagram });
  }
  assert.equal(b.indexCount, 1);
  const indexB = u32le(response, 4);
  assert.equal(u32le(first, 4), indexB);
  const transportsAB = captured.filter((c) => c.name.startsWith('transport A→B')).map((c) => c.bytes);
  assert.equal(transportsAB.length, 7);
  return { a, b, peerA, peerB, now, indexB, captured, transportsAB };
}

function assertSessionWorks(w: World, rng: Rng): void {
  const ab = ipv4('10.0.0.1', '10.0.0.2', rng.bytes(64));
  const s1 = w.a.send(ab, w.now);
  assert.equal(s1.kind, 'sent');
  assert.equal(s1.out.length, 1);
  const d1 = w.b.receive(s1.out[0]!.datagram, EP_A, w.now);
  if (d1.kind !== 'deliver') assert.fail(`A→B after the fuzzing: ${d1.kind === 'drop' ? d1.reason : d1.kind} (seed ${SEED})`);
  assert.equal(d1.peer, w.peerA);
  assert.deepEqual(d1.packet, ab);
  const ba = ipv6('fd00::2', 'fd00::1', rng.bytes(64));
  const s2 = w.b.send(ba, w.now);
  assert.equal(s2.kind, 'sent');
  assert.equal(s2.out.length, 1);
  const d2 = w.a.receive(s2.out[0]!.datagram, EP_B, w.now);
  if (d2.kind !== 'deliver') assert.fail(`B→A after the fuzzing: ${d2.kind === 'drop' ? d2.reason : d2.kind} (seed ${SEED})`);
  assert.equal(d2.peer, w.peerB);
  assert.deepEqual(d2.packet, ba);
}

// ---- what each datagram may be dropped for -------------------------------------------------

const EXACT: Record<number, number> = { 1: INITIATION_SIZE, 2: RESPONSE_SIZE, 3: COOKIE_REPLY_SIZE };

/** An independent reading of the wire format: the parse error, or null if it parses. */
function parseVerdict(d: Uint8Array): DropReason | null {
  if (d.length === 0) return 'empty';
  const t = d[0]!;
  if (t < 1 || t > 4) return 'unknown-type';
  if (((d[1] ?? 0) | (d[2] ?? 0) | (d[3] ?? 0)) !== 0) return 'reserved-nonzero';
  if (t === 4) return d.length >= TRANSPORT_MIN_SIZE ? null : 'bad-length';
  return d.length === EXACT[t] ? null : 'bad-length';
}

/** Reasons a datagram that parses may be dropped for here, by type. */
const SEMANTIC: Record<number, readonly DropReason[]> = {
  1: ['bad-mac1', 'initiation-replay'], // only the consumed initiation carries a good MAC1 for B
  2: ['bad-mac1', 'unknown-index'],
  3: ['unknown-index', 'cookie-decrypt'],
  4: ['unknown-index', 'decrypt', 'replay'],
};

// ---- the generators ------------------------------------------------------------------------

type Kind = 'random' | 'header' | 'mutation' | 'live-transport';

function randomBytes(rng: Rng): Uint8Array {
  // lengths uniform over 0..1600, with extra weight on the interesting small ones
  const n = rng.int(4) === 0 ? rng.int(TRANSPORT_MIN_SIZE + 1) : rng.int(MAX_LEN + 1);
  return rng.bytes(n);
}

function validHeader(rng: Rng, w: World): Uint8Array {
  const type = rng.range(1, 4);
  const n = type === 4 ? rng.range(TRANSPORT_MIN_SIZE, MAX_LEN) : EXACT[type]!;
  const d = rng.bytes(n);
  d[0] = type;
  d[1] = d[2] = d[3] = 0;
  // a receiver index (types 2..4): random, or B's live one half the time
  if (type !== 1 && rng.int(2) === 0) putU32le(d, type === 2 ? 8 : 4, w.indexB);
  return d;
}

function mutate(rng: Rng, w: World): Uint8Array {
  const base = rng.pick(w.captured).bytes;
  let d = Uint8Array.from(base);
  const ops = rng.range(1, 3);
  for (let k = 0; k < ops; k++) {
    switch (rng.int(7)) {
      case 0: {
        // flip 1..8 random bits
        const flips = rng.range(1, 8);
        for (let f = 0; f < flips && d.length > 0; f++) d[rng.int(d.length)]! ^= 1 << rng.int(8);
        break;
      }
      case 1: // flip one bit at the end, where the MACs and tags are
        if (d.length > 0) d[d.length - 1 - rng.int(Math.min(d.length, 40))]! ^= 1 << rng.int(8);
        break;
      case 2: // truncate
        d = d.slice(0, rng.int(d.length + 1));
        break;
      case 3: {
        // extend by random bytes
        const e = new Uint8Array(d.length + rng.range(1, 64));
        e.set(d);
        rng.fill(e, d.length);
        d = e;
        break;
      }
      case 4: {
        // splice: a head of this one and a tail of another captured message
        const other = rng.pick(w.captured).bytes;
        const i = rng.int(d.length + 1);
        const j = rng.int(other.length + 1);
        const s = new Uint8Array(i + other.length - j);
        s.set(d.subarray(0, i));
        s.set(other.subarray(j), i);
        d = s;
        break;
      }
      case 5: {
        // overwrite a random range with random bytes
        if (d.length === 0) break;
        const i = rng.int(d.length);
        rng.fill(d, i, Math.min(d.length, i + rng.range(1, 16)));
        break;
      }
      default:
        // unchanged: a plain replay of a message already received
        break;
    }
    if (d.length > MAX_LEN) d = d.slice(0, MAX_LEN);
  }
  return d;
}

function liveTransport(rng: Rng, w: World): Uint8Array {
  // the counter: random u64, small, or past the reject limit
  const hi = rng.u32();
  const lo = rng.u32();
  const counterChoice = rng.int(4);
  let n: number;
  let d: Uint8Array;
  if (rng.int(4) === 0) {
    // a real sealed payload under a counter it was not sealed with
    const real = rng.pick(w.transportsAB);
    d = Uint8Array.from(real);
    n = d.length;
    const original = u32le(real, 8);
    let c = counterChoice === 0 ? rng.int(64) : lo;
    if (c === original) c = (c + 1) >>> 0;
    putU32le(d, 8, c);
    putU32le(d, 12, counterChoice === 3 ? 0xffffffff : 0);
  } else {
    n = rng.range(TRANSPORT_MIN_SIZE, MAX_LEN);
    d = rng.bytes(n);
    putU32le(d, 8, counterChoice === 0 ? rng.int(64) : lo);
    putU32le(d, 12, counterChoice === 0 ? 0 : counterChoice === 3 ? 0xffffffff : hi);
  }
  d[0] = 4;
  d[1] = d[2] = d[3] = 0;
  putU32le(d, 4, w.indexB);
  assert.equal(d.length, n);
  return d;
}

function hexHead(d: Uint8Array): string {
  return Buffer.from(d.subarray(0, 96)).toString('hex') + (d.length > 96 ? '…' : '');
}

// ---- the property --------------------------------------------------------------------------

test(`property: ${COUNT} random datagrams to a core with a live session are all dropped (seed ${SEED}, STRATA_FUZZ_SEED to reproduce)`, () => {
  const started = performance.now();
  const rng = new Rng(SEED);
  const w = world(rng);

  const froms: Endpoint[] = [EP_A, EP_B, { address: '198.51.100.7', port: 4444 }, { address: '2001:db8::9', port: 51820 }];
  const dropsBefore = new Map(w.b.drops);
  const repliesBefore = w.b.cookieRepliesSent;
  const rxBefore = w.peerA.rxBytes;
  const reasons = new Map<DropReason, number>();
  const kinds = new Map<Kind, number>();
  const step = Math.min(1, 100_000 / COUNT); // ms per datagram: ~100 s of fake time in all
  let now = w.now;

  for (let i = 0; i < COUNT; i++) {
    const roll = rng.int(100);
    const kind: Kind = roll < 25 ? 'random' : roll < 50 ? 'header' : roll < 80 ? 'mutation' : 'live-transport';
    const d =
      kind === 'random' ? randomBytes(rng) : kind === 'header' ? validHeader(rng, w) : kind === 'mutation' ? mutate(rng, w) : liveTransport(rng, w);
    const from = rng.pick(froms);
    now += step;
    kinds.set(kind, (kinds.get(kind) ?? 0) + 1);

    const where = (): string => `seed ${SEED}, datagram #${i} (${kind}, ${d.length} bytes): ${hexHead(d)}`;
    let r: ReceiveResult<Endpoint>;
    try {
      r = w.b.receive(d, from, now);
    } catch (e) {
      assert.fail(`receive threw ${String(e)}; ${where()}`);
    }
    if (r.kind !== 'drop') assert.fail(`expected a drop, got ${r.kind}; ${where()}`);
    if (r.out.length !== 0) assert.fail(`a drop sent ${r.out.length} datagrams; ${where()}`);
    const verdict = parseVerdict(d);
    if (verdict !== null) {
      if (r.reason !== verdict) assert.fail(`expected '${verdict}', got '${r.reason}'; ${where()}`);
    } else if (kind === 'live-transport') {
      if (r.reason !== 'decrypt') assert.fail(`expected 'decrypt', got '${r.reason}'; ${where()}`);
    } else if (!SEMANTIC[d[0]!]!.includes(r.reason)) {
      assert.fail(`unexpected '${r.reason}' for a type ${d[0]} message; ${where()}`);
    }
    reasons.set(r.reason, (reasons.get(r.reason) ?? 0) + 1);
  }
  w.now = now;
  const elapsed = performance.now() - started;

  // Every call was counted once, under the reason it returned.
  const counted = new Map<DropReason, number>();
  for (const [k, v] of w.b.drops) {
    const d = v - (dropsBefore.get(k) ?? 0);
    if (d !== 0) counted.set(k, d);
  }
  assert.deepEqual(counted, reasons);
  let total = 0;
  for (const v of reasons.values()) total += v;
  assert.equal(total, COUNT);

  // Nothing moved: no cookie replies, no roaming, no received bytes, no index entries.
  assert.equal(w.b.cookieRepliesSent, repliesBefore);
  assert.deepEqual(w.peerA.endpoint, EP_A);
  assert.equal(w.peerA.rxBytes, rxBefore);
  assert.equal(w.b.indexCount, 1);
  assert.equal(w.b.isUnderLoad(now), false);

  // The generators reached every layer: parsing, MAC1, the index table, AEAD, the replay window.
  for (const reason of [
    'empty',
    'unknown-type',
    'reserved-nonzero',
    'bad-length',
    'bad-mac1',
    'initiation-replay',
    'unknown-index',
    'cookie-decrypt',
    'decrypt',
    'replay',
  ] as const) {
    assert.ok((reasons.get(reason) ?? 0) > 0, `no datagram was dropped for '${reason}' (seed ${SEED})`);
  }
  for (const k of ['random', 'header', 'mutation', 'live-transport'] as const) assert.ok((kinds.get(k) ?? 0) > COUNT / 10);

  assertSessionWorks(w, rng);
  const summary = [...reasons].sort((x, y) => y[1] - x[1]).map(([k, v]) => `${k}=${v}`).join(' ');
  console.log(`# seed ${SEED}: ${COUNT} datagrams in ${elapsed.toFixed(0)} ms; ${summary}`);
});
