/**
 * A whole cascade in memory: a client engine and 1, 3 and 5 relays over an in-memory UDP
 * network, the exit's TUN a double. Checks the layering both ways, the per-hop keys and
 * addresses, and the relay's forwarding rule.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PrivateKey } from '../src/crypto/keys.ts';
import { CascadeEngine, LAYER_OVERHEAD, PATH_MTU } from '../src/cascade/client.ts';
import { hopAddresses } from '../src/cascade/addresses.ts';
import type { Relay } from '../src/cascade/relaylist.ts';
import { buildUdp, parseUdp } from '../src/cascade/udpip.ts';
import { MemoryNetwork, MemoryTun, type MemoryBind } from '../src/io/memory.ts';
import { RelayNode } from '../src/relay/relay.ts';
import { parseIP } from '../src/wireguard/ip.ts';
import type { Outgoing } from '../src/wireguard/core.ts';
import type { UdpEndpoint } from '../src/io/types.ts';

interface World {
  net: MemoryNetwork;
  relays: Relay[];
  nodes: RelayNode[];
  exitTun: MemoryTun;
  client: CascadeEngine;
  clientBind: MemoryBind;
  delivered: Uint8Array[];
  send(out: Outgoing<UdpEndpoint>[]): void;
  settle(): Promise<void>;
  close(): void;
}

async function world(hops: number, extra: { refuseAt?: number } = {}): Promise<World> {
  const net = new MemoryNetwork();
  const keys = Array.from({ length: hops }, () => PrivateKey.generate());
  const relays: Relay[] = keys.map((k, i) => ({
    name: `r${i + 1}`,
    country: ['IS', 'CH', 'SE', 'RO', 'NL'][i]!,
    publicKey: k.publicKey(),
    endpoints: [{ address: `192.0.2.${10 + i}`, port: 51820, family: 'IPv4' }],
    roles: i === hops - 1 ? ['exit'] : ['middle'],
    provider: `p${i}`,
    family: `f${i}`,
    capacity: 1,
    kind: 'strata' as const,
  }));
  const exitTun = new MemoryTun('exit0');
  const nodes: RelayNode[] = [];
  for (let i = 0; i < hops; i++) {
    const node = new RelayNode({
      privateKey: keys[i]!,
      bind: net.bind(`192.0.2.${10 + i}`),
      tun: i === hops - 1 ? exitTun : null,
      relays: extra.refuseAt === i ? [] : relays,
      makeForwardBind: () => net.bind(`192.0.2.${10 + i}`),
    });
    await node.start(51820);
    nodes.push(node);
  }
  const client = new CascadeEngine(relays, { epochMs: Date.now() - performance.now() });
  const clientBind = net.bind('198.51.100.7');
  await clientBind.open(0);
  const delivered: Uint8Array[] = [];
  const w: World = {
    net,
    relays,
    nodes,
    exitTun,
    client,
    clientBind,
    delivered,
    send(out) {
      for (const o of out) clientBind.send(o.datagram, o.endpoint);
    },
    async settle() {
      for (let i = 0; i < 40; i++) await new Promise((r) => setImmediate(r));
    },
    close() {
      for (const n of nodes) n.stop();
      client.close();
    },
  };
  clientBind.start((d, from) => {
    const r = client.receive(d, from, performance.now());
    if (r.deliver) delivered.push(Uint8Array.from(r.deliver));
    w.send(r.out);
  });
  for (let k = 0; k < hops; k++) {
    w.send(client.startHop(k, performance.now()));
    await w.settle();
    assert.ok(client.hopUp(k), `hop ${k + 1} up`);
  }
  return w;
}

function ping(src: Uint8Array, dst: Uint8Array, payload: Uint8Array): Uint8Array {
  return buildUdp({ family: 4, src, dst, srcPort: 40000, dstPort: 7, payload });
}

for (const hops of [1, 3, 5]) {
  test(`${hops}-hop cascade in memory: handshakes hop by hop, traffic both ways`, async () => {
    const w = await world(hops);
    try {
      const exit = w.client.exit;
      const dest = parseIP('203.0.113.80')!;
      const payload = new TextEncoder().encode(`hello through ${hops} hops`);
      w.send(w.client.send(ping(exit.addresses.v4, dest, payload), performance.now()));
      await w.settle();
      // The exit wrote the user's packet, from the client's exit-hop address, to its TUN.
      const atExit = w.exitTun.written.map(parseUdp).find((u) => u !== null && u.dstPort === 7);
      assert.ok(atExit, 'packet reached the exit TUN');
      assert.deepEqual(atExit.payload, payload);
      assert.deepEqual(atExit.src, exit.addresses.v4);
      // A reply injected at the exit TUN comes back through every layer.
      const reply = buildUdp({ family: 4, src: dest, dst: exit.addresses.v4, srcPort: 7, dstPort: 40000, payload: Uint8Array.of(1, 2, 3) });
      w.exitTun.inject(reply);
      await w.settle();
      assert.equal(w.delivered.length, 1);
      assert.deepEqual(w.delivered[0], reply);
      // Every hop has its own key and its own inner address.
      const keys = new Set(w.client.hops.map((h) => h.core.publicKey!.toBase64()));
      assert.equal(keys.size, hops);
      assert.equal(new Set(w.client.hops.map((h) => h.addresses.v4Text)).size, hops);
      // Each relay knows exactly one client key: its own hop's.
      w.nodes.forEach((n, i) => {
        const peers = [...n.core.peers()];
        assert.equal(peers.length, 1);
        assert.ok(peers[0]!.publicKey.equals(w.client.hops[i]!.core.publicKey!));
        assert.deepEqual(hopAddresses(peers[0]!.publicKey).v4, w.client.hops[i]!.addresses.v4);
      });
      // Each IPv4 layer costs 60 bytes, and relays pad to 16: the MTU leaves room for that.
      assert.equal(w.client.tunMtu, { 1: 1440, 3: 1312, 5: 1184 }[hops]);
      assert.ok(w.client.tunMtu <= PATH_MTU - hops * LAYER_OVERHEAD.IPv4);
    } finally {
      w.close();
    }
  });
}

test('a relay forwards only to relays on its list', async () => {
  // Relay 1 has an empty list: it must not forward hop 2's handshake, so hop 2 never comes up.
  const net = new MemoryNetwork();
  const k1 = PrivateKey.generate();
  const k2 = PrivateKey.generate();
  const relays: Relay[] = [k1, k2].map((k, i) => ({
    name: `r${i + 1}`,
    country: 'IS',
    publicKey: k.publicKey(),
    endpoints: [{ address: `192.0.2.${20 + i}`, port: 51820, family: 'IPv4' as const }],
    roles: ['middle', 'exit'] as const,
    provider: '',
    family: '',
    capacity: 1,
    kind: 'strata' as const,
  }));
  const r1 = new RelayNode({ privateKey: k1, bind: net.bind('192.0.2.20'), tun: null, relays: [], makeForwardBind: () => net.bind('192.0.2.20') });
  await r1.start(51820);
  assert.equal(r1.mayForwardTo('192.0.2.21', 51820), false);
  const r1b = new RelayNode({ privateKey: PrivateKey.generate(), bind: net.bind('192.0.2.30'), tun: null, relays, makeForwardBind: () => net.bind('192.0.2.30') });
  assert.equal(r1b.mayForwardTo('192.0.2.21', 51820), true);
  assert.equal(r1b.mayForwardTo('192.0.2.21', 51821), false, 'a known address on another port is not a relay');
  assert.equal(r1b.mayForwardTo('8.8.8.8', 53), false);
  const client = new CascadeEngine(relays, { epochMs: 0 });
  const bind = net.bind('198.51.100.8');
  await bind.open(0);
  bind.start((d, from) => {
    for (const o of client.receive(d, from, performance.now()).out) bind.send(o.datagram, o.endpoint);
  });
  const settle = async () => {
    for (let i = 0; i < 40; i++) await new Promise((r) => setImmediate(r));
  };
  for (const o of client.startHop(0, performance.now())) bind.send(o.datagram, o.endpoint);
  await settle();
  assert.ok(client.hopUp(0));
  for (const o of client.startHop(1, performance.now())) bind.send(o.datagram, o.endpoint);
  await settle();
  assert.equal(client.hopUp(1), false);
  assert.ok(r1.stats.refusedForwards >= 1);
  r1.stop();
  client.close();
});
