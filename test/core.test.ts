import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PresharedKey, PrivateKey } from '../src/crypto/keys.ts';
import { WireGuard } from '../src/wireguard/core.ts';
import {
  KEEPALIVE_TIMEOUT,
  KEY_ZERO_AFTER,
  REJECT_AFTER_TIME,
  REKEY_AFTER_TIME,
  REKEY_TIMEOUT,
  REKEY_TIMEOUT_JITTER_MAX,
} from '../src/wireguard/constants.ts';
import { MESSAGE_INITIATION, MESSAGE_RESPONSE, MESSAGE_TRANSPORT, MESSAGE_COOKIE_REPLY } from '../src/wireguard/messages.ts';
import type { Endpoint } from '../src/wireguard/peer.ts';
import { Pair, addrOf, ipv4, ipv6, numbered, seqOf } from './harness.ts';

const types = (log: Pair['log'], from?: 'a' | 'b'): number[] => log.filter((l) => !from || l.from === from).map((l) => l.datagram[0]!);

test('handshake started by A, then data both ways', () => {
  const p = new Pair();
  const first = numbered('10.0.0.1', '10.0.0.2', 1);
  const r = p.send(p.a, first);
  assert.equal(r.kind, 'queued');
  p.flush();
  assert.deepEqual(types(p.log), [MESSAGE_INITIATION, MESSAGE_RESPONSE, MESSAGE_TRANSPORT]);
  assert.deepEqual(p.b.delivered, [first]);
  assert.ok(p.a.peer.current?.isInitiator);
  assert.equal(p.b.peer.current?.isInitiator, false, 'B confirmed its session on the first data packet');
  const back = numbered('10.0.0.2', '10.0.0.1', 2);
  assert.equal(p.send(p.b, back).kind, 'sent');
  p.flush();
  assert.deepEqual(p.a.delivered, [back]);
  // Byte counters: every datagram each side sent or authenticated.
  const sum = (from: 'a' | 'b'): number => p.log.filter((l) => l.from === from).reduce((s, l) => s + l.datagram.length, 0);
  assert.equal(p.a.peer.txBytes, sum('a'));
  assert.equal(p.b.peer.rxBytes, sum('a'));
  assert.equal(p.b.peer.txBytes, sum('b'));
  assert.equal(p.a.peer.rxBytes, sum('b'));
  assert.equal(p.a.peer.lastHandshakeWallMs, 1_700_000_000_000 + p.now);
});

test('handshake started by B; IPv6 inner traffic; preshared key', () => {
  const p = new Pair({ psk: true });
  const pkt = ipv6('fd00::2', 'fd00::1', new Uint8Array(100));
  assert.equal(p.send(p.b, pkt).kind, 'queued');
  p.flush();
  assert.deepEqual(types(p.log), [MESSAGE_INITIATION, MESSAGE_RESPONSE, MESSAGE_TRANSPORT]);
  assert.deepEqual(p.a.delivered, [pkt]);
  const reply = ipv6('fd00::1', 'fd00::2', new Uint8Array(7));
  assert.equal(p.send(p.a, reply).kind, 'sent');
  p.flush();
  assert.deepEqual(p.b.delivered, [reply]);
});

test('mismatched preshared keys never complete a handshake', () => {
  const p = new Pair({ psk: true });
  p.b.peer.presharedKey = new PresharedKey(new Uint8Array(32).fill(1));
  p.handshake();
  assert.equal(p.a.peer.current, null);
  assert.deepEqual(p.a.results.map((r) => r.kind), ['drop']);
  assert.equal(p.a.core.drops.get('response-decrypt'), 1);
});

test('transport padding: to a multiple of 16, capped at the MTU (as wireguard-go)', () => {
  const p = new Pair();
  p.handshake();
  // inner length -> datagram length (16 header + padded payload + 16 tag)
  for (const [len, expect] of [[20, 64], [84, 128], [1419, 1452], [1420, 1452], [1421, 1468]] as const) {
    const before = p.log.length;
    p.send(p.a, ipv4('10.0.0.1', '10.0.0.2', new Uint8Array(len - 20)));
    assert.equal(p.log[before]!.datagram.length, expect, `inner length ${len}`);
  }
  p.flush();
  assert.equal(p.b.delivered.length, 6);
  assert.deepEqual(p.b.delivered.slice(1).map((d) => d.length), [20, 84, 1419, 1420, 1421]);
});

test('rekey after 120 s with no lost packet, both directions, 40 ms latency', () => {
  const p = new Pair({ latency: 40 });
  let seq = 0;
  const sent = { a: [] as number[], b: [] as number[] };
  const firstIndex = () => p.a.peer.current?.localIndex;
  p.handshake();
  p.advanceTo(p.now + 100);
  const initialIndex = firstIndex();
  assert.ok(initialIndex !== undefined);
  const end = p.now + 200_000;
  while (p.now < end) {
    for (const n of [p.a, p.b]) {
      seq++;
      const pkt = numbered(addrOf(n), addrOf(p.other(n)), seq);
      sent[n.name].push(seq);
      p.send(n, pkt);
    }
    p.advanceTo(p.now + 250, 10);
  }
  p.advanceTo(p.now + 1000);
  // The first packet (sequence 0 payload of the handshake) is excluded; every numbered packet arrived once.
  const got = (n: typeof p.a) => n.delivered.filter((d) => d.length === 84).map(seqOf);
  assert.deepEqual(got(p.b), sent.a);
  assert.deepEqual(got(p.a), sent.b);
  // A new session replaced the first one, started by A (the initiator) after 120 s.
  const inits = p.log.filter((l) => l.datagram[0] === MESSAGE_INITIATION);
  assert.ok(inits.length >= 2, 'at least one rekey handshake');
  const rekeyAt = inits[1]!.at - inits[0]!.at;
  assert.ok(rekeyAt > REKEY_AFTER_TIME && rekeyAt < REKEY_AFTER_TIME + 1000, `rekey at ${rekeyAt} ms`);
  assert.notEqual(firstIndex(), initialIndex);
  assert.equal(p.a.core.drops.size, 0, JSON.stringify([...p.a.core.drops]));
  assert.equal(p.b.core.drops.size, 0, JSON.stringify([...p.b.core.drops]));
});

test('a session is refused after 180 s; sending then starts a new handshake', () => {
  const p = new Pair();
  p.handshake();
  const t0 = p.a.peer.current!.created;
  // A packet sealed now but held on the wire until 180 s have passed.
  p.send(p.a, numbered('10.0.0.1', '10.0.0.2', 7));
  const held = p.wire.splice(0)[0]!;
  p.now = t0 + REJECT_AFTER_TIME;
  const r = p.receive(p.b, held.datagram, held.from);
  assert.deepEqual(r.kind === 'drop' && r.reason, 'keypair-expired');
  // Sending on the expired session is not allowed: the packet waits for a new handshake.
  const s = p.a.core.send(numbered('10.0.0.1', '10.0.0.2', 8), p.now);
  assert.ok(s.kind === 'queued');
  assert.deepEqual(s.out.map((o) => o.datagram[0]), [MESSAGE_INITIATION]);
});

test('handshake retransmits every 5 s (+ jitter) and gives up after REKEY_ATTEMPT_TIME', () => {
  const p = new Pair();
  p.blackhole.b = true;
  p.send(p.a, numbered('10.0.0.1', '10.0.0.2', 1));
  p.advanceTo(p.now + 200_000, 5);
  const at = p.log.filter((l) => l.from === 'a' && l.datagram[0] === MESSAGE_INITIATION).map((l) => l.at);
  // The first initiation, then MAX_TIMER_HANDSHAKES + 1 retries (the kernel's and wireguard-go's count).
  assert.equal(at.length, 20);
  for (let i = 1; i < at.length; i++) {
    const gap = at[i]! - at[i - 1]!;
    assert.ok(gap >= REKEY_TIMEOUT && gap <= REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX + 5, `gap ${gap}`);
  }
  assert.ok(at.at(-1)! - at[0]! < 90_000 + 2 * (REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX));
  // After giving up the staged packet is dropped and counted, and nothing more is sent.
  assert.equal(p.a.peer.staged.length, 0);
  assert.equal(p.a.core.drops.get('handshake-gave-up'), 1);
  assert.equal(p.a.peer.timers.retransmitHandshake, null);
  assert.ok(p.a.peer.timers.zeroKeyMaterial !== null);
});

test('passive keepalive 10 s after receiving data with nothing to send', () => {
  const p = new Pair();
  p.handshake();
  p.send(p.b, numbered('10.0.0.2', '10.0.0.1', 1));
  p.flush();
  const t = p.now;
  const n = p.log.length;
  p.advanceTo(t + KEEPALIVE_TIMEOUT - 20);
  assert.equal(p.log.length, n, 'nothing before 10 s');
  p.advanceTo(t + KEEPALIVE_TIMEOUT + 20);
  const ka = p.log.slice(n);
  assert.equal(ka.length, 1);
  assert.equal(ka[0]!.from, 'a');
  assert.equal(ka[0]!.datagram.length, 32, 'a keepalive is an empty transport message');
  assert.equal(p.b.results.at(-1)?.kind, 'handled');
});

test('persistent keepalive every N seconds once configured', () => {
  const p = new Pair();
  p.handshake();
  assert.equal(p.a.core.setPersistentKeepalive(p.a.peer, 25), true);
  const out = p.a.core.sendKeepalive(p.a.peer, p.now);
  p.emit(p.a, out);
  const n = p.log.length;
  assert.equal(out.length, 1, 'sent at once when turned on');
  p.advanceTo(p.now + 100_000, 50);
  const kas = p.log.slice(n).filter((l) => l.from === 'a' && l.datagram.length === 32);
  assert.ok(kas.length >= 3 && kas.length <= 4, `${kas.length} persistent keepalives in 100 s`);
});

test('every key is wiped 540 s after the last session was derived', () => {
  const p = new Pair();
  p.handshake();
  const kp = p.a.peer.current!;
  assert.ok(p.a.core.indexCount > 0);
  p.advanceTo(p.now + KEY_ZERO_AFTER - 100, 100);
  assert.ok(p.a.peer.current !== null);
  p.advanceTo(p.now + 200, 10);
  for (const n of [p.a, p.b]) {
    assert.equal(n.peer.current, null);
    assert.equal(n.peer.previous, null);
    assert.equal(n.peer.next, null);
    assert.equal(n.peer.handshake.state, 'zeroed');
    assert.equal(n.peer.handshake.sym, null);
    assert.equal(n.core.indexCount, 0);
  }
  assert.ok(kp.send.destroyed && kp.recv.destroyed);
});

test('under load: a cookie reply, then success with MAC2', () => {
  const p = new Pair({ bOptions: { underLoadThreshold: 0 } });
  p.send(p.a, numbered('10.0.0.1', '10.0.0.2', 1));
  p.flush();
  assert.deepEqual(types(p.log), [MESSAGE_INITIATION, MESSAGE_COOKIE_REPLY]);
  assert.equal(p.b.core.cookieRepliesSent, 1);
  assert.equal(p.a.results.at(-1)?.kind === 'handled' && p.a.results.at(-1)?.kind, 'handled');
  assert.ok(p.a.peer.cookies.hasCookie);
  // The retransmission after 5 s carries MAC2, and B (still under load) accepts it.
  p.advanceTo(p.now + REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX + 10);
  assert.deepEqual(types(p.log), [MESSAGE_INITIATION, MESSAGE_COOKIE_REPLY, MESSAGE_INITIATION, MESSAGE_RESPONSE, MESSAGE_TRANSPORT]);
  const second = p.log[2]!.datagram;
  assert.ok(second.subarray(132).some((x) => x !== 0), 'MAC2 is set');
  assert.equal(p.b.delivered.length, 1);
  assert.equal(p.b.core.cookieRepliesSent, 1);
});

test('under load, a source over its rate limit is refused even with a valid MAC2', () => {
  const p = new Pair({ bOptions: { underLoadThreshold: 0 } });
  p.handshake();
  p.advanceTo(p.now + 6000);
  assert.ok(p.b.delivered.length === 1);
  // Replay the (MAC2-carrying) initiation many times at once: the token bucket stops them.
  const init = p.log.filter((l) => l.datagram[0] === MESSAGE_INITIATION).at(-1)!.datagram;
  const reasons = new Set<string>();
  for (let i = 0; i < 10; i++) {
    const r = p.receive(p.b, init, p.a.endpoint);
    if (r.kind === 'drop') reasons.add(r.reason);
  }
  assert.ok(reasons.has('rate-limited'));
});

test('replayed initiations are refused (TAI64N), and so are floods within 20 ms', () => {
  const p = new Pair();
  p.send(p.a, numbered('10.0.0.1', '10.0.0.2', 1));
  const init = p.wire[0]!.datagram;
  p.flush();
  p.now += 1000;
  const r = p.receive(p.b, init, p.a.endpoint);
  assert.deepEqual(r.kind === 'drop' && r.reason, 'initiation-replay');
  // A second core with A's key, whose wall clock is later, makes a newer initiation; arriving
  // within 20 ms of the last one B accepted, it is a flood.
  const makeTwin = (epochMs: number) => {
    const twin = new WireGuard<Endpoint>({ privateKey: new PrivateKey(p.a.core.privateKey!.raw()), epochMs });
    twin.addPeer(p.b.core.publicKey!, { endpoint: p.b.endpoint, allowedIPs: ['10.0.0.2/32'] });
    const s = twin.send(numbered('10.0.0.1', '10.0.0.2', 2), p.now);
    assert.ok(s.kind === 'queued');
    return s.out[0]!.datagram;
  };
  assert.equal(p.receive(p.b, makeTwin(1_700_000_050_000), p.a.endpoint).kind, 'handled');
  const s3 = makeTwin(1_700_000_100_000);
  p.now += 10;
  const flood = p.receive(p.b, s3, p.a.endpoint);
  assert.deepEqual(flood.kind === 'drop' && flood.reason, 'initiation-flood');
  p.now += 20;
  const later = p.receive(p.b, s3, p.a.endpoint);
  assert.equal(later.kind, 'handled', 'the same initiation is fine once 20 ms have passed');
});

test('replayed transport packets are refused', () => {
  const p = new Pair();
  p.handshake();
  p.send(p.a, numbered('10.0.0.1', '10.0.0.2', 1));
  const d = p.wire[0]!.datagram;
  p.flush();
  assert.equal(p.b.delivered.length, 2);
  const r = p.receive(p.b, d, p.a.endpoint);
  assert.deepEqual(r.kind === 'drop' && r.reason, 'replay');
  assert.equal(p.b.delivered.length, 2);
});

test('roaming: the endpoint follows the last authenticated packet, not a forged one', () => {
  const p = new Pair();
  p.handshake();
  const moved = { address: '198.51.100.9', port: 4000 };
  p.send(p.a, numbered('10.0.0.1', '10.0.0.2', 1));
  const d = p.wire.splice(0)[0]!.datagram;
  p.receive(p.b, d, moved);
  assert.deepEqual(p.b.peer.endpoint, moved);
  const s = p.b.core.send(numbered('10.0.0.2', '10.0.0.1', 2), p.now);
  assert.ok(s.kind === 'sent');
  assert.deepEqual(s.out[0]!.endpoint, moved);
  // A forged packet from elsewhere (bad ciphertext) moves nothing.
  const forged = Uint8Array.from(d);
  forged[40]! ^= 1;
  forged[8]! ^= 0x55;
  p.receive(p.b, forged, { address: '203.0.113.66', port: 1 });
  assert.deepEqual(p.b.peer.endpoint, moved);
});

test('inner packets with a source outside the peer\'s AllowedIPs are dropped', () => {
  const p = new Pair();
  p.handshake();
  const spoof = ipv4('10.9.9.9', '10.0.0.2', new Uint8Array(10));
  const r = p.a.core.sendTo(p.a.peer, spoof, p.now);
  assert.equal(r.kind, 'sent');
  p.emit(p.a, r.kind === 'sent' ? r.out : []);
  p.flush();
  assert.deepEqual(p.b.results.at(-1)?.kind === 'drop' && p.b.results.at(-1), { kind: 'drop', reason: 'inner-disallowed-source', out: [] });
  assert.equal(p.b.delivered.length, 1);
  // And outbound packets with no route are dropped as such.
  assert.deepEqual(p.a.core.send(ipv4('10.0.0.1', '10.7.7.7', new Uint8Array(1)), p.now), { kind: 'drop', reason: 'no-route', out: [] });
});

test('no packet is lost while B keeps sending through A\'s rekey on receive (165 s rule)', () => {
  const p = new Pair({ latency: 20 });
  p.handshake();
  // Only B sends; A (the initiator) must rekey on receive before the session expires.
  let seq = 0;
  const sent: number[] = [];
  const end = p.now + 400_000;
  while (p.now < end) {
    sent.push(++seq);
    p.send(p.b, numbered('10.0.0.2', '10.0.0.1', seq));
    p.advanceTo(p.now + 500, 10);
  }
  p.advanceTo(p.now + 1000);
  assert.deepEqual(p.a.delivered.map(seqOf), sent);
  assert.ok(p.log.filter((l) => l.datagram[0] === MESSAGE_INITIATION).length >= 2);
});
