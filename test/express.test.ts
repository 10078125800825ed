/**
 * The relay's native fast path (src/relay/express.ts, "Express" in src/native/strata.cc), on
 * loopback: a client core talks to one relay that forwards to UDP echo servers on 127.0.0.1
 * and ::1 (both on the relay's list). Checks that the fast path carries the traffic, that the
 * replies it builds are byte for byte what the TypeScript path builds (IPv6 UDP checksum
 * included), that a replayed or forged datagram is dropped, that its traffic reaches the core's
 * timers, that a client that roams is followed from its first authenticated packet, and that STRATA_EXPRESS=0 leaves everything to TypeScript with the same results.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import dgram from 'node:dgram';
import { PrivateKey } from '../src/crypto/keys.ts';
import { hopAddresses } from '../src/cascade/addresses.ts';
import type { Relay } from '../src/cascade/relaylist.ts';
import { buildUdp } from '../src/cascade/udpip.ts';
import { createBind, createForwardBind } from '../src/io/index.ts';
import { native } from '../src/native/index.ts';
import { RelayNode } from '../src/relay/relay.ts';
import { WireGuard, type Outgoing } from '../src/wireguard/core.ts';
import { parseIP } from '../src/wireguard/ip.ts';
import type { UdpEndpoint } from '../src/io/types.ts';

const skip = native === null ? 'the native addon is not built (npm ci builds it)' : false;

/** An echo server; `push` sends an unasked datagram to whoever wrote last. */
async function echo(type: 'udp4' | 'udp6', address: string): Promise<{ port: number; push: (d: Uint8Array) => void; close: () => void }> {
  const s = dgram.createSocket(type);
  let last: dgram.RemoteInfo | null = null;
  s.on('message', (m, r) => {
    last = r;
    s.send(m, r.port, r.address);
  });
  await new Promise<void>((resolve) => s.bind(0, address, resolve));
  return { port: s.address().port, push: (d) => last !== null && s.send(d, last.port, last.address), close: () => s.close() };
}

async function freePort(): Promise<number> {
  const s = dgram.createSocket('udp4');
  await new Promise<void>((resolve) => s.bind(0, '127.0.0.1', resolve));
  const port = s.address().port;
  await new Promise<void>((resolve) => s.close(() => resolve()));
  return port;
}

const settle = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function world(express: boolean) {
  const saved = process.env.STRATA_EXPRESS;
  process.env.STRATA_EXPRESS = express ? '1' : '0';
  const e4 = await echo('udp4', '127.0.0.1');
  const e6 = await echo('udp6', '::1');
  // A next hop that never answers.
  const sink = dgram.createSocket('udp4');
  await new Promise<void>((resolve) => sink.bind(0, '127.0.0.1', resolve));
  const sinkPort = sink.address().port;
  const key = PrivateKey.generate();
  const port = await freePort();
  const entry = (name: string, address: string, p: number, family: 'IPv4' | 'IPv6', k = PrivateKey.generate()): Relay => ({
    name,
    country: 'IS',
    publicKey: k.publicKey(),
    endpoints: [{ address, port: p, family }],
    roles: ['middle'],
    provider: name,
    family: name,
    capacity: 1,
    kind: 'strata',
  });
  const relay = new RelayNode({
    privateKey: key,
    bind: createBind(),
    tun: null,
    relays: [entry('r1', '127.0.0.1', port, 'IPv4', key), entry('echo4', '127.0.0.1', e4.port, 'IPv4'), entry('echo6', '::1', e6.port, 'IPv6'), entry('sink', '127.0.0.1', sinkPort, 'IPv4')],
    makeForwardBind: createForwardBind,
  });
  await relay.start(port);
  if (saved === undefined) delete process.env.STRATA_EXPRESS;
  else process.env.STRATA_EXPRESS = saved;

  const clientKey = PrivateKey.generate();
  const core = new WireGuard<UdpEndpoint>({ privateKey: clientKey, epochMs: Date.now() - performance.now(), mtu: 1440 });
  const peer = core.addPeer(key.publicKey(), { endpoint: { address: '127.0.0.1', port, family: 'IPv4' }, allowedIPs: ['0.0.0.0/0', '::/0'] });
  const addresses = hopAddresses(clientKey.publicKey());
  const delivered: Uint8Array[] = [];
  const sent: Uint8Array[] = [];
  const socks: dgram.Socket[] = [];
  let sock: dgram.Socket;
  const send = (out: readonly Outgoing<UdpEndpoint>[]) => {
    for (const o of out) {
      sent.push(Uint8Array.from(o.datagram));
      sock.send(o.datagram, o.endpoint.port, o.endpoint.address);
    }
  };
  /** A new client socket (the client roams to another port); replies are counted per socket. */
  const roam = async (): Promise<{ received: number }> => {
    const s = dgram.createSocket('udp4');
    const counts = { received: 0 };
    s.on('message', (m, r) => {
      counts.received++;
      const res = core.receive(new Uint8Array(m), { address: r.address, port: r.port, family: 'IPv4' }, performance.now());
      if (res.kind === 'deliver') delivered.push(Uint8Array.from(res.packet));
      send(res.out);
    });
    await new Promise<void>((resolve) => s.bind(0, '127.0.0.1', resolve));
    socks.push(s);
    sock = s;
    return counts;
  };
  const first = await roam();
  send(core.forceHandshake(peer, performance.now()));
  await settle(100);
  assert.ok(peer.current !== null, 'the session is up');
  return {
    relay,
    core,
    peer,
    addresses,
    echo4: { address: parseIP('127.0.0.1')!, port: e4.port },
    echo6: { address: parseIP('::1')!, port: e6.port },
    sink: { address: parseIP('127.0.0.1')!, port: sinkPort },
    delivered,
    sent,
    send,
    get sock() {
      return sock;
    },
    first,
    roam,
    e4,
    close() {
      relay.stop();
      for (const s of socks) s.close();
      e4.close();
      e6.close();
      sink.close();
    },
  };
}

type World = Awaited<ReturnType<typeof world>>;

function udpTo(w: World, family: 4 | 6, payload: Uint8Array, srcPort = 40001): Uint8Array {
  const to = family === 4 ? w.echo4 : w.echo6;
  return buildUdp({ family, src: family === 4 ? w.addresses.v4 : w.addresses.v6, dst: to.address, srcPort, dstPort: to.port, payload });
}

/** What the client should get back: the echo's reply as the relay wraps it (src/relay/relay.ts). */
function expectedReply(w: World, family: 4 | 6, payload: Uint8Array, srcPort = 40001): Uint8Array {
  const from = family === 4 ? w.echo4 : w.echo6;
  return buildUdp({ family, src: from.address, dst: family === 4 ? w.addresses.v4 : w.addresses.v6, srcPort: from.port, dstPort: srcPort, payload }, { udpChecksum: false });
}

async function exchange(w: World, n: number): Promise<void> {
  const before = w.delivered.length;
  for (let i = 0; i < n; i++) {
    const family = i % 2 === 0 ? 4 : 6;
    const payload = new TextEncoder().encode(`datagram ${i} over IPv${family}`);
    const r = w.core.send(udpTo(w, family, payload), performance.now());
    if (r.kind !== 'drop') w.send(r.out);
    await settle(2);
  }
  await settle(100);
  const got = w.delivered.slice(before);
  assert.equal(got.length, n, 'every datagram came back');
  for (let i = 0; i < n; i++) {
    const family = i % 2 === 0 ? 4 : 6;
    const payload = new TextEncoder().encode(`datagram ${i} over IPv${family}`);
    assert.deepEqual(got[i], expectedReply(w, family, payload), `reply ${i} byte for byte`);
  }
}

for (const express of [true, false]) {
  test(`relay ${express ? 'fast path' : 'with STRATA_EXPRESS=0'}: forwards over IPv4 and IPv6, replies byte for byte`, { skip }, async () => {
    const w = await world(express);
    try {
      assert.equal(w.relay.express, express);
      await exchange(w, 200);
      const s = w.relay.stats;
      assert.equal(s.forwardedPackets, 200);
      assert.equal(s.replyPackets, 200);
      if (express) {
        // All but the first datagram (which confirms the session in TypeScript) and the first
        // reply of each family (whose next hop the fast path had not written to yet).
        assert.ok(s.fastPathPackets >= 2 * 200 - 4, `fast path carried ${s.fastPathPackets}`);
      } else {
        assert.equal(s.fastPathPackets, 0);
      }
    } finally {
      w.close();
    }
  });
}

for (const express of [true, false]) {
  test(`relay ${express ? 'fast path' : 'with STRATA_EXPRESS=0'}: replayed and forged datagrams dropped; one-way data arms the keepalive`, { skip }, async () => {
    const w = await world(express);
    try {
      await exchange(w, 20);
      const relayPeer = [...w.relay.core.peers()][0]!;
      const forwarded = w.relay.stats.forwardedPackets;
      assert.equal(relayPeer.timers.sendKeepalive, null, 'the relay answered last: no keepalive due');
      assert.notEqual(relayPeer.timers.newHandshake, null, 'the relay sent data last: it expects to hear back');
      // The same datagram again, and one with a flipped ciphertext byte.
      const last = w.sent.at(-1)!;
      const forged = Uint8Array.from(last);
      forged[20]! ^= 1;
      for (const d of [last, forged]) w.sock.send(d, w.peer.endpoint!.port, '127.0.0.1');
      await settle(100);
      assert.equal(w.relay.stats.forwardedPackets, forwarded, 'neither was forwarded');
      assert.equal(w.relay.core.drops.get('replay'), 1);
      assert.equal(w.relay.core.drops.get('decrypt'), 1);
      // Data the relay forwards and gets no answer to: after a sync, the core owes the client a
      // keepalive (as WireGuard's timers have it) and has stopped waiting for one.
      const packet = buildUdp({ family: 4, src: w.addresses.v4, dst: w.sink.address, srcPort: 40002, dstPort: w.sink.port, payload: Uint8Array.of(1, 2, 3) });
      const r = w.core.send(packet, performance.now());
      if (r.kind !== 'drop') w.send(r.out);
      await settle(100);
      assert.equal(w.relay.stats.forwardedPackets, forwarded + 1);
      assert.notEqual(relayPeer.timers.sendKeepalive, null, 'a keepalive is due');
      assert.equal(relayPeer.timers.newHandshake, null, 'a packet came in: no handshake due');
      assert.ok(relayPeer.rxBytes > 0 && relayPeer.txBytes > 0);
    } finally {
      w.close();
    }
  });
}

test('relay fast path: a client that roams is followed at its first authenticated packet, a keepalive', { skip }, async () => {
  const w = await world(true);
  try {
    await exchange(w, 20);
    // The client moves to another port and says only a keepalive from there.
    const moved = await w.roam();
    w.send(w.core.sendKeepalive(w.peer, performance.now()));
    await settle(100);
    const before = w.first.received;
    // The next hop sends on its own: the relay must wrap it for the client's new address.
    w.e4.push(Uint8Array.of(9, 9, 9));
    await settle(100);
    assert.equal(moved.received, 1, 'the reply went to the new address');
    assert.equal(w.first.received, before, 'and not to the old one');
    assert.deepEqual(w.delivered.at(-1), expectedReply(w, 4, Uint8Array.of(9, 9, 9)));
  } finally {
    w.close();
  }
});
