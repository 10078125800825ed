/**
 * bench:core — the protocol core's own cost on one core, beside raw node:crypto.
 *
 *   handshakes/s      a full handshake (initiation, response, first data packet) between two
 *                     in-memory cores: both sides' work, on one core
 *   core seal+open/s  a 1420-byte IP packet through WireGuard.sendTo on one side and
 *                     WireGuard.receive on the other (routing, padding, header, counters,
 *                     replay window, AllowedIPs source check)
 *   raw seal+open/s   node:crypto ChaCha20-Poly1305 alone on the same 1420 bytes, KeyObject
 *                     made once, a cipher per operation: the floor any Node code pays
 *
 *   raw native        the same AEAD through the native addon (OpenSSL context reused), when
 *                     built: the floor for the native path
 *
 * The pure TypeScript path (STRATA_NATIVE=0) is measured in a child process. The last line
 * gives the core's overhead over the raw AEAD it uses. Numbers are rates on a shared machine;
 * read the ratios, not the absolutes.
 */
import { createCipheriv, createDecipheriv, createSecretKey, randomBytes } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { AeadKey } from '../src/crypto/aead.ts';
import { native } from '../src/native/index.ts';
import { Pair, ipv4 } from '../test/harness.ts';

const SECONDS = Number(process.env.BENCH_SECONDS ?? 2);

function rate(fn: () => void, seconds = SECONDS): number {
  // Warm up, then run whole batches until the time is up.
  for (let i = 0; i < 200; i++) fn();
  let n = 0;
  const start = process.hrtime.bigint();
  const limit = BigInt(Math.round(seconds * 1e9));
  let elapsed = 0n;
  while (elapsed < limit) {
    for (let i = 0; i < 100; i++) fn();
    n += 100;
    elapsed = process.hrtime.bigint() - start;
  }
  return n / (Number(elapsed) / 1e9);
}

function handshakes(): number {
  // One pair; each round moves the fake clock past REJECT_AFTER_TIME so the next packet needs
  // a fresh handshake: initiation, response, and the first data packet, both sides' work.
  const p = new Pair();
  const packet = ipv4('10.0.0.1', '10.0.0.2', new Uint8Array(16));
  let delivered = 0;
  return rate(() => {
    p.now += 200_000;
    p.send(p.a, packet);
    p.flush();
    if (p.b.delivered.length !== ++delivered) throw new Error('handshake failed');
  }, SECONDS);
}

function coreTransport(): number {
  const p = new Pair();
  p.handshake();
  p.advanceTo(p.now + 1);
  const packet = ipv4('10.0.0.1', '10.0.0.2', randomBytes(1400));
  const a = p.a.core;
  const b = p.b.core;
  const from = p.a.endpoint;
  const now = p.now;
  return rate(() => {
    const s = a.sendTo(p.a.peer, packet, now);
    if (s.kind !== 'sent') throw new Error('send failed');
    const r = b.receive(s.out[0]!.datagram, from, now);
    if (r.kind !== 'deliver') throw new Error(`receive failed: ${r.kind}`);
  });
}

function rawCrypto(): number {
  const key = createSecretKey(randomBytes(32));
  const nonce = Buffer.alloc(12);
  const payload = randomBytes(1420);
  let counter = 0n;
  return rate(() => {
    nonce.writeBigUInt64LE(counter++, 4);
    const c = createCipheriv('chacha20-poly1305', key, nonce, { authTagLength: 16 });
    const body = c.update(payload);
    c.final();
    const tag = c.getAuthTag();
    const d = createDecipheriv('chacha20-poly1305', key, nonce, { authTagLength: 16 });
    d.setAuthTag(tag);
    d.update(body);
    d.final();
  });
}

function rawNative(): number | null {
  if (native === null) return null;
  const a = new native.Aead(randomBytes(32));
  const payload = randomBytes(1420);
  const sealed = Buffer.alloc(1420 + 16);
  const opened = Buffer.alloc(1420);
  let counter = 0n;
  return rate(() => {
    a.seal(counter, payload, 0, sealed, 0);
    if (a.open(counter++, sealed, opened, 0) < 0) throw new Error('open failed');
  });
}

// The pure TypeScript path runs in a child with STRATA_NATIVE=0 and reports its core rate.
if (process.env.BENCH_CHILD === '1') {
  const r = [coreTransport(), rawCrypto(), coreTransport(), rawCrypto()];
  process.stdout.write(JSON.stringify({ core: (r[0]! + r[2]!) / 2, raw: (r[1]! + r[3]!) / 2 }));
  process.exit(0);
}

const rawNode = [rawCrypto()];
const rawNat = [rawNative()];
const core = [coreTransport()];
rawNode.push(rawCrypto());
rawNat.push(rawNative());
core.push(coreTransport());
const hs = handshakes();
const mean = (xs: (number | null)[]): number | null => (xs[0] == null ? null : xs.reduce<number>((a, b) => a + (b ?? 0), 0) / xs.length);
const child = spawnSync(process.execPath, [fileURLToPath(import.meta.url)], {
  env: { ...process.env, STRATA_NATIVE: '0', BENCH_CHILD: '1' },
  encoding: 'utf8',
});
const pure = child.status === 0 ? (JSON.parse(child.stdout) as { core: number; raw: number }) : null;

const fmt = (v: number | null): string => (v === null ? 'n/a' : Math.round(v).toLocaleString('en'));
const coreRate = mean(core)!;
const nodeRate = mean(rawNode)!;
const natRate = mean(rawNat);
console.log(`node ${process.version}, ${SECONDS} s per measurement, alternated twice; transport AEAD backend: ${AeadKey.backend}`);
console.log('| measurement (one core) | rate |');
console.log('|---|---:|');
console.log(`| handshakes/s (both sides' work) | ${fmt(hs)} |`);
console.log(`| core seal+open/s, 1420 B, ${AeadKey.backend} AEAD | ${fmt(coreRate)} |`);
console.log(`| raw ${AeadKey.backend === 'native' ? 'native (OpenSSL, reused context)' : 'node:crypto'} seal+open/s | ${fmt(AeadKey.backend === 'native' ? natRate : nodeRate)} |`);
console.log(`| raw node:crypto seal+open/s (KeyObject once, cipher per packet) | ${fmt(nodeRate)} |`);
if (pure) console.log(`| core seal+open/s, pure TypeScript path (STRATA_NATIVE=0) | ${fmt(pure.core)} |`);
console.log(`| core payload throughput | ${((coreRate * 1420 * 8) / 1e9).toFixed(2)} Gbit/s |`);
if (pure) console.log(`pure path: core overhead over raw node:crypto: ${((pure.raw / pure.core - 1) * 100).toFixed(1)}%`);
console.log(`core vs raw node:crypto: ${(coreRate / nodeRate).toFixed(2)}x`);
const floor = AeadKey.backend === 'native' ? natRate! : nodeRate;
console.log(`core overhead over the raw AEAD it uses (${AeadKey.backend}): ${((floor / coreRate - 1) * 100).toFixed(1)}%`);
