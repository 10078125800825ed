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
 * The last line gives the core's overhead over raw crypto. Numbers are rates on a shared
 * machine; read the ratio, not the absolutes.
 */
import { createCipheriv, createDecipheriv, createSecretKey, randomBytes } from 'node:crypto';
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

const rows: [string, number][] = [];
const raw1 = rawCrypto();
const core1 = coreTransport();
const raw2 = rawCrypto();
const core2 = coreTransport();
const hs = handshakes();
const raw = (raw1 + raw2) / 2;
const core = (core1 + core2) / 2;
rows.push(['handshakes/s', hs], ['core seal+open/s (1420 B)', core], ['raw node:crypto seal+open/s (1420 B)', raw]);
console.log(`node ${process.version}, ${SECONDS} s per measurement, raw and core alternated twice`);
console.log('| measurement | rate |');
console.log('|---|---:|');
for (const [k, v] of rows) console.log(`| ${k} | ${Math.round(v).toLocaleString('en')} |`);
console.log(`| core throughput | ${((core * 1420 * 8) / 1e9).toFixed(2)} Gbit/s of payload |`);
console.log(`core overhead over raw crypto: ${((raw / core - 1) * 100).toFixed(1)}% (ratio core/raw ${(core / raw).toFixed(3)})`);
