/**
 * Cascades end to end over real TUN interfaces and UDP sockets, in network namespaces this file
 * creates (src/lab/lab.ts: a router namespace joining one namespace per host, each on its own
 * veth link). Relays are `strata relay` processes; the client is `strata connect` in the
 * client's namespace; the destination ("web") runs HTTP, a TCP sink and a UDP echo.
 *
 *   1. 1, 3 and 5 hops: ping (IPv4, IPv6), 4 MiB over TCP (sha256), 20 UDP echoes, status,
 *      disconnect leaves no TUN, rule or process.
 *   2. Captures on every link of a 3-hop cascade: who sees which address, and no handshake
 *      key or session index crosses from one wire segment to another.
 *   3. A stock wireguard-go server as the exit hop (--hop-key).
 *   4. `strata demo` runs to the end and leaves nothing.
 *   5. Bad input: unknown hop, wrong key, unreachable hop, malformed lists, a relay that
 *      refuses to forward off its list, connect twice / disconnect with nothing up.
 *
 * Needs root, `ip netns` and /dev/net/tun (and tcpdump, wireguard-go, wg for 2, 3, 5e);
 * otherwise each test is skipped with the reason printed. Every lab is closed in `finally`.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { PrivateKey } from '../src/crypto/keys.ts';
import { hopAddresses } from '../src/cascade/addresses.ts';
import { layerSizes } from '../src/cascade/client.ts';
import { relayListJson } from '../src/cascade/relaylist.ts';
import type { ClientStatus } from '../src/client/daemon.ts';
import { labUnavailable } from '../src/lab/lab.ts';
import { readPcap, type CapturedPacket } from '../src/lab/pcap.ts';
import { startRelay, strataBin } from '../src/lab/procs.ts';
import { formatIP, parseIP } from '../src/wireguard/ip.ts';
import {
  CLEAN,
  HTTP_PORT,
  ECHO_PORT,
  SINK_PORT,
  contains,
  describeResult,
  fetchIn,
  makeCascade,
  nsPids,
  parseWg,
  pingIn,
  relayEntries,
  skipUnlessLab,
  sleep,
  startCapture,
  startDestination,
  stopCapture,
  strata,
  tcpSend,
  udpExchange,
  waitClean,
  writeFile,
  type Capture,
  type Cascade,
} from './cascade-lab.ts';

const MiB = 1 << 20;
const canon = (a: string): string => formatIP(parseIP(a)!);

function which(cmd: string): boolean {
  return (process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin').split(':').some((d) => {
    try {
      fs.accessSync(path.join(d, cmd), fs.constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}

function connectArgs(c: Cascade, hops: string, extra: string[] = [], list = c.list): string[] {
  return ['connect', '--relays', list, '--path', hops, '--run-dir', c.runDir, ...extra];
}

async function status(c: Cascade): Promise<ClientStatus> {
  const r = await strata(c.client, ['status', '--json', '--run-dir', c.runDir]);
  assert.equal(r.code, 0, describeResult(r));
  return JSON.parse(r.stdout) as ClientStatus;
}

// ---- 1. end to end -----------------------------------------------------------------------------

for (const hops of [1, 3, 5]) {
  test(`${hops}-hop cascade end to end: ping v4/v6, 4 MiB over TCP, UDP echoes, status, disconnect`, { timeout: 90_000 }, async (t) => {
    if (await skipUnlessLab(t)) return;
    const names = Array.from({ length: hops }, (_, i) => `r${i + 1}`);
    const c = await makeCascade([...names, 'web'], names.map((name) => ({ name })), names, [names[hops - 1]!]);
    try {
      const dest = await startDestination(c.lab, 'web');
      const web = c.lab.host('web');
      const exitHost = c.lab.host(names[hops - 1]!);
      const con = await strata(c.client, connectArgs(c, names.join(',')), 60_000);
      assert.equal(con.code, 0, describeResult(con));

      const s = await status(c);
      assert.equal(s.hops.length, hops);
      s.hops.forEach((h, i) => {
        assert.equal(h.hop, i + 1);
        assert.equal(h.name, names[i]);
        assert.equal(h.up, true, `hop ${i + 1} up`);
        assert.notEqual(h.handshakeAgeSeconds, null);
      });
      // 60 bytes a layer over IPv4, each layer padded to 16 as relays pad: 1440, 1312, 1184.
      assert.equal(s.mtu, layerSizes(new Array(hops).fill('IPv4')).tunMtu);
      assert.ok(s.mtu <= 1500 - 60 * hops && s.mtu % 16 === 0);

      for (const dst of [web.v4, web.v6]) {
        const p = await pingIn(c.client, dst, 3);
        assert.ok(p.received >= 2, `ping ${dst} through ${hops} hops: ${p.output}`);
      }
      // Full-size packets, unfragmented at the sender: IPv4 at the cascade's MTU (the outer
      // datagram is then exactly 1500 bytes), IPv6 at the TUN's (at least IPv6's 1280).
      const v4Full = await pingIn(c.client, web.v4, 2, s.mtu - 28);
      assert.ok(v4Full.received >= 1, `full-size IPv4 ping (${s.mtu} bytes): ${v4Full.output}`);
      const v6Mtu = Math.max(s.mtu, 1280);
      const v6Full = await pingIn(c.client, web.v6, 2, v6Mtu - 48);
      assert.ok(v6Full.received >= 1, `full-size IPv6 ping (${v6Mtu} bytes): ${v6Full.output}`);
      const tooBig = await pingIn(c.client, web.v4, 1, s.mtu - 27);
      assert.equal(tooBig.received, 0, `an IPv4 packet one byte over the MTU is not sent unfragmented: ${tooBig.output}`);

      const page = await fetchIn(c.client, `http://${web.v4}:${HTTP_PORT}/`);
      assert.match(page, /^200 hello through strata from (::ffff:)?(\S+)$/);
      assert.ok(page.endsWith(exitHost.v4), `the destination sees the exit's address: ${page}`);

      const before = dest.lines().length;
      const sent = await tcpSend(c.client, web.v4, SINK_PORT, 4 * MiB, 45);
      const sink = await dest.waitLine('sink ', 10_000, before);
      const [, n, sha, from] = sink.split(' ');
      assert.equal(Number(n), 4 * MiB);
      assert.equal(sent.bytes, 4 * MiB);
      assert.equal(sha, sent.sha256, 'sha256 of the 4 MiB received');
      assert.equal(from!.replace(/^::ffff:/, ''), exitHost.v4);

      assert.equal(await udpExchange(c.client, web.v4, ECHO_PORT, 20), 20, '20 UDP echoes over IPv4');

      const s2 = await status(c);
      for (const h of s2.hops) assert.ok(h.up && h.rxBytes > 0 && h.txBytes > 0, `hop ${h.hop} carried traffic`);
      assert.ok(s2.hops[0]!.txBytes >= 4 * MiB, 'hop 1 carried the whole transfer');

      const dis = await strata(c.client, ['disconnect', '--run-dir', c.runDir]);
      assert.equal(dis.code, 0, describeResult(dis));
      assert.deepEqual(await waitClean(c.lab, c.client), CLEAN, 'no TUN, rule or process left');
      const st = await strata(c.client, ['status', '--run-dir', c.runDir]);
      assert.equal(st.code, 1);
      assert.match(st.stderr, /ERR_NOT_CONNECTED/);
    } finally {
      await c.close();
    }
  });
}

// ---- 2. captures -----------------------------------------------------------------------------

test('3-hop cascade under capture: addresses stay on their segments, no handshake identifier crosses one', { timeout: 60_000 }, async (t) => {
  if (await skipUnlessLab(t)) return;
  if (!which('tcpdump')) {
    console.log('# skipped: tcpdump is not installed');
    return t.skip('tcpdump is not installed');
  }
  const names = ['r1', 'r2', 'r3'];
  const c = await makeCascade([...names, 'web'], names.map((name) => ({ name })), names, ['r3']);
  const caps: Capture[] = [];
  try {
    await startDestination(c.lab, 'web');
    const web = c.lab.host('web');
    const cli = c.lab.host('client');
    const links = ['client', ...names, 'web'];
    for (const h of links) caps.push(await startCapture(c.lab, c.dir, h));

    const con = await strata(c.client, connectArgs(c, names.join(',')), 60_000);
    assert.equal(con.code, 0, describeResult(con));
    for (const dst of [web.v4, web.v6]) {
      const p = await pingIn(c.client, dst, 3);
      assert.ok(p.received >= 2, `ping ${dst}: ${p.output}`);
    }
    const page = await fetchIn(c.client, `http://${web.v4}:${HTTP_PORT}/`);
    assert.match(page, /^200 hello through strata/);
    await sleep(300);
    for (const cap of caps) await stopCapture(cap);

    const byLink = new Map<string, CapturedPacket[]>(caps.map((cap) => [cap.name, readPcap(cap.file)]));
    const hostOf = new Map<string, string>();
    for (const h of c.lab.hosts.values()) {
      hostOf.set(canon(h.v4), h.name);
      hostOf.set(canon(h.v6), h.name);
      hostOf.set(canon(h.routerV4), 'router');
      hostOf.set(canon(h.routerV6), 'router');
    }
    const seenOn = (addrs: string[]): string[] =>
      links.filter((l) => byLink.get(l)!.some((p) => addrs.includes(p.src) || addrs.includes(p.dst)));

    // The client's lab address: only on the client's wire and the entry's.
    const clientAddrs = [canon(cli.v4), canon(cli.v6)];
    assert.deepEqual(seenOn(clientAddrs), ['client', 'r1'], "the client's address is seen only on the client's and r1's links");

    // The destination's address: not in an IP header before the exit's link...
    const webAddrs = [canon(web.v4), canon(web.v6)];
    assert.deepEqual(seenOn(webAddrs), ['r3', 'web'], "the destination's address appears only on the exit's and the destination's links");
    // ... nor in clear anywhere in a UDP payload there (it travels encrypted).
    const secret = [parseIP(web.v4)!, parseIP(web.v6)!, new TextEncoder().encode('hello through strata')];
    for (const l of ['client', 'r1', 'r2']) {
      const pkts = byLink.get(l)!;
      assert.ok(pkts.length > 0, `capture on ${l}'s link saw traffic`);
      for (const p of pkts) {
        if (p.protocol !== 17) continue;
        for (const s of secret) assert.ok(!contains(p.payload, s), `bytes of the destination (${Buffer.from(s).toString('hex')}) in clear on ${l}'s link`);
      }
    }

    // The client's per-hop addresses exist only inside the tunnels: the exit masquerades.
    const inner = (a: string): boolean => /^100\.(6[4-9]|[7-9]\d|1[01]\d|12[0-7])\./.test(a) || a.startsWith('fd53:7472:6174:');
    for (const l of links) {
      const leaked = byLink.get(l)!.filter((p) => inner(p.src) || inner(p.dst));
      assert.deepEqual(leaked.map((p) => `${p.src} > ${p.dst}`), [], `a hop address in an IP header on ${l}'s link`);
    }

    // WireGuard identifiers: each on one wire segment (the pair of hosts it travels between).
    const segOf = new Map<string, Set<string>>();
    const linksOf = new Map<string, Set<string>>();
    const typesBySegment = new Map<string, Set<number>>();
    for (const l of links) {
      for (const p of byLink.get(l)!) {
        const m = parseWg(p);
        if (m === null) continue;
        const seg = [hostOf.get(p.src) ?? p.src, hostOf.get(p.dst) ?? p.dst].sort().join('~');
        if (!typesBySegment.has(seg)) typesBySegment.set(seg, new Set());
        typesBySegment.get(seg)!.add(m.type);
        for (const id of m.ids) {
          if (!segOf.has(id)) segOf.set(id, new Set());
          if (!linksOf.has(id)) linksOf.set(id, new Set());
          segOf.get(id)!.add(seg);
          linksOf.get(id)!.add(l);
        }
      }
    }
    const segments = [...typesBySegment.keys()].sort();
    assert.deepEqual(segments, ['client~r1', 'r1~r2', 'r2~r3'], 'WireGuard travels client–r1, r1–r2 and r2–r3 only');
    for (const seg of segments) {
      for (const type of [1, 2, 4]) assert.ok(typesBySegment.get(seg)!.has(type), `message type ${type} on ${seg}`);
    }
    const ephemerals = [...segOf.keys()].filter((id) => id.startsWith('eph:'));
    assert.ok(ephemerals.length >= 6, 'an initiation and a response per hop');
    for (const [id, segs] of segOf) {
      assert.equal(segs.size, 1, `${id} seen on segments ${[...segs].join(', ')}`);
      const [a, b] = [...segs][0]!.split('~');
      for (const l of linksOf.get(id)!) assert.ok(l === a || l === b, `${id} of ${a}~${b} seen on ${l}'s link`);
    }

    const dis = await strata(c.client, ['disconnect', '--run-dir', c.runDir]);
    assert.equal(dis.code, 0, describeResult(dis));
  } finally {
    for (const cap of caps) await stopCapture(cap);
    await c.close();
  }
});

// ---- 3. a stock wireguard-go exit ------------------------------------------------------------------

test('a cascade whose exit is a stock wireguard-go server (--hop-key)', { timeout: 60_000 }, async (t) => {
  if (await skipUnlessLab(t)) return;
  if (!which('wireguard-go') || !which('wg')) {
    console.log('# skipped: wireguard-go or wg is not installed');
    return t.skip('wireguard-go or wg is not installed');
  }
  const names = ['r1', 'r2', 'r3'];
  const c = await makeCascade(
    [...names, 'web'],
    [{ name: 'r1' }, { name: 'r2' }, { name: 'r3', kind: 'wireguard' }],
    ['r1', 'r2'],
    [],
  );
  const ifname = `wg${c.lab.id.slice(2)}`.slice(0, 15);
  const sock = `/var/run/wireguard/${ifname}.sock`;
  try {
    assert.ok(!fs.existsSync(sock), `${sock} already exists`);
    await startDestination(c.lab, 'web');
    const web = c.lab.host('web');
    const r3 = c.lab.host('r3');
    const hopKey = PrivateKey.generate();
    const hopKeyFile = writeFile(c, 'r3-hop.key', hopKey.toBase64() + '\n');
    const hop = hopAddresses(hopKey.publicKey());
    const serverKeyFile = writeFile(c, 'r3-server.key', c.keys.get('r3')!.toBase64() + '\n');

    const wgo = c.lab.spawn(r3.ns, 'wireguard-go', ['-f', ifname]);
    let wgErr = '';
    wgo.stderr!.setEncoding('utf8').on('data', (d: string) => (wgErr += d));
    wgo.stdout!.resume();
    for (let i = 0; !fs.existsSync(sock); i++) {
      if (wgo.exitCode !== null || i > 150) assert.fail(`wireguard-go did not come up: ${wgErr}`);
      await sleep(50);
    }
    await c.lab.exec(r3.ns, 'wg', [
      'set', ifname, 'private-key', serverKeyFile, 'listen-port', '51820',
      'peer', hopKey.publicKey().toBase64(), 'allowed-ips', `${hop.v4Text}/32,${hop.v6Text}/128`,
    ]);
    await c.lab.sh(
      r3.ns,
      `ip addr add 100.64.0.1/10 dev ${ifname} && ip -6 addr add fd53:7472:6174::1/48 dev ${ifname} nodad && ip link set ${ifname} up && ` +
        'sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1',
    );
    const nft = writeFile(
      c,
      'r3.nft',
      `table inet strata_test_wgx {\n  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n` +
        `    ip saddr 100.64.0.0/10 oifname != "${ifname}" masquerade\n    ip6 saddr fd53:7472:6174::/48 oifname != "${ifname}" masquerade\n  }\n}\n`,
    );
    await c.lab.exec(r3.ns, 'nft', ['-f', nft]);

    const con = await strata(c.client, connectArgs(c, 'r1,r2,r3', ['--hop-key', `r3=${hopKeyFile}`]), 60_000);
    assert.equal(con.code, 0, describeResult(con));
    const s = await status(c);
    assert.deepEqual(s.hops.map((h) => h.up), [true, true, true]);
    assert.deepEqual(s.addresses, [hop.v4Text, hop.v6Text], "the tunnel carries the registered key's addresses");

    for (const dst of [web.v4, web.v6]) {
      const p = await pingIn(c.client, dst, 3);
      assert.ok(p.received >= 2, `ping ${dst} via wireguard-go: ${p.output}`);
    }
    const page = await fetchIn(c.client, `http://${web.v4}:${HTTP_PORT}/`);
    assert.match(page, /^200 hello through strata from (::ffff:)?10\.77\.4\.2$/);
    const shown = await c.lab.exec(r3.ns, 'wg', ['show', ifname, 'latest-handshakes']);
    assert.match(shown, new RegExp(`^${hopKey.publicKey().toBase64().replace(/[+/]/g, '\\$&')}\\t[1-9]`, 'm'), 'wireguard-go saw the handshake');
    hopKey.wipe();

    const dis = await strata(c.client, ['disconnect', '--run-dir', c.runDir]);
    assert.equal(dis.code, 0, describeResult(dis));
    assert.deepEqual(await waitClean(c.lab, c.client), CLEAN);
  } finally {
    await c.close();
    fs.rmSync(sock, { force: true });
  }
});

// ---- 4. the demo -----------------------------------------------------------------------------

function cmdlineOf(pid: string): string {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ');
  } catch {
    return '';
  }
}

test('`strata demo` runs to the end and leaves no namespace or process', { timeout: 60_000 }, async (t) => {
  if (await skipUnlessLab(t)) return;
  const listNs = (): Promise<string[]> =>
    new Promise((resolve) =>
      execFile('ip', ['netns', 'list'], { timeout: 10_000 }, (err, out) =>
        resolve(err ? [] : String(out).split('\n').map((l) => l.split(' ')[0]!).filter(Boolean)),
      ),
    );
  const before = new Set(await listNs());
  const child = spawn(strataBin(), ['demo'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
  const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
  const killer = setTimeout(() => child.kill('SIGINT'), 50_000);
  const prefix = `sl${child.pid! % 100000}`;
  let id: string | null = null;
  const pids = new Set<string>();
  const seenCmd = new Map<string, string>();
  let running = true;
  void exited.then(() => (running = false));
  try {
    while (running) {
      for (const ns of await listNs()) {
        if (before.has(ns)) continue;
        const m = new RegExp(`^(${prefix}\\d*)-inet$`).exec(ns);
        if (m !== null) id = m[1]!;
      }
      if (id !== null) {
        for (const ns of (await listNs()).filter((n) => n.startsWith(`${id}-`))) {
          for (const p of await nsPids(ns)) {
            pids.add(p);
            if (!seenCmd.has(p)) seenCmd.set(p, cmdlineOf(p));
          }
        }
      }
      await sleep(100);
    }
    const code = await exited;
    clearTimeout(killer);
    assert.equal(code, 0, `demo exit code\n${out}\n${err}`);
    assert.ok(id !== null, "the demo's namespaces were seen while it ran");
    assert.match(out, /\$ strata connect[^\n]*\nconnected through r1,r2,r3\n/);
    assert.match(out, /^200 <h1>Hello through Strata<\/h1>.*come from 10\.77\.4\.2/m);
    assert.match(out, /^ {2}r1: client, r2$/m);
    assert.match(out, /^ {2}r2: r1, r3$/m);
    assert.match(out, /^ {2}r3: r2, web$/m);
    assert.match(out, /\ndisconnected\ntorn down: 0 of the demo's namespaces left\n$/);
    assert.deepEqual((await listNs()).filter((n) => n.startsWith(`${id}-`)), [], 'no namespace of the demo left');
    assert.ok(pids.size >= 5, `processes seen in the demo's namespaces (${pids.size})`);
    const alive = [...pids].filter((p) => /strata|node/.test(cmdlineOf(p)));
    assert.deepEqual(alive, [], 'no process of the demo left');
    // Nor any process still holding the demo's files (its relays and client name its temp dir).
    const dirs = new Set([...pids].map((p) => /strata-demo-\w+/.exec(seenCmd.get(p) ?? '')?.[0]).filter((d) => d !== undefined));
    assert.ok(dirs.size === 1, `the demo's directory seen in its processes' command lines (${[...dirs].join(', ')})`);
    const stray = fs
      .readdirSync('/proc')
      .filter((p) => /^\d+$/.test(p) && [...dirs].some((d) => cmdlineOf(p).includes(d)));
    assert.deepEqual(stray, [], 'no process using the demo\'s directory');
  } finally {
    clearTimeout(killer);
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGINT');
      await Promise.race([exited, sleep(10_000)]);
    }
    // If the demo failed to clean up (or was killed), remove what it left: its namespaces only.
    if (id !== null) {
      for (const ns of (await listNs()).filter((n) => n.startsWith(`${id}-`))) {
        for (const p of await nsPids(ns)) {
          try {
            process.kill(Number(p), 'SIGKILL');
          } catch {
            // gone
          }
        }
        await new Promise((r) => execFile('ip', ['netns', 'del', ns], { timeout: 10_000 }, r));
      }
    }
  }
});

// ---- 5. bad input ----------------------------------------------------------------------------

describe('bad input', { timeout: 120_000 }, () => {
  let why: string | null = null;
  let c: Cascade | null = null;
  before(async () => {
    why = await labUnavailable();
    if (why !== null) return;
    // r1..r3 run; "ghost" is listed with an endpoint where nobody listens (the idle host).
    c = await makeCascade(['r1', 'r2', 'r3', 'idle'], [{ name: 'r1' }, { name: 'r2' }, { name: 'r3' }, { name: 'ghost', host: 'idle', role: 'exit' }], ['r1', 'r2', 'r3'], ['r3']);
  }, { timeout: 30_000 });
  after(async () => {
    await c?.close();
  }, { timeout: 30_000 });
  const lab = (t: { name: string; skip(m: string): void }): Cascade | null => {
    if (why !== null || c === null) {
      const reason = why ?? 'the lab did not start';
      console.log(`# skipped: ${t.name}: ${reason}`);
      t.skip(reason);
      return null;
    }
    return c;
  };
  const expectClean = async (c: Cascade): Promise<void> => {
    assert.deepEqual(await waitClean(c.lab, c.client, 3000), CLEAN, 'no TUN, rule or process left');
  };

  test('(a) an unknown hop name: ERR_HOP_UNKNOWN naming it', { timeout: 30_000 }, async (t) => {
    const c = lab(t);
    if (c === null) return;
    const r = await strata(c.client, connectArgs(c, 'r1,nosuch'));
    assert.equal(r.code, 1, describeResult(r));
    assert.match(r.stderr, /"nosuch"/);
    assert.match(r.stderr, /\(ERR_HOP_UNKNOWN\)/);
    await expectClean(c);
  });

  test('(b) a wrong key for r2: ERR_HOP_TIMEOUT naming hop 2 "r2", nothing left behind', { timeout: 30_000 }, async (t) => {
    const c = lab(t);
    if (c === null) return;
    const wrong = relayEntries(c.lab, [{ name: 'r1' }, { name: 'r2', publicKey: PrivateKey.generate() }, { name: 'r3' }], c.keys);
    assert.ok(!wrong[1]!.publicKey.equals(c.keys.get('r2')!.publicKey()));
    const list = writeFile(c, 'wrong-key.json', relayListJson(wrong));
    const started = Date.now();
    const r = await strata(c.client, connectArgs(c, 'r1,r2,r3', ['--hop-timeout', '2'], list));
    assert.equal(r.code, 1, describeResult(r));
    assert.match(r.stderr, /hop 2 "r2"/);
    assert.match(r.stderr, /\(ERR_HOP_TIMEOUT\)/);
    assert.ok(Date.now() - started < 15_000, 'gave up after the hop timeout');
    await expectClean(c);
  });

  test('(c) an unreachable hop: ERR_HOP_TIMEOUT naming it', { timeout: 30_000 }, async (t) => {
    const c = lab(t);
    if (c === null) return;
    for (const [hops, named] of [
      ['r1,ghost', 'hop 2 "ghost"'],
      ['ghost', 'hop 1 "ghost"'],
    ] as const) {
      const r = await strata(c.client, connectArgs(c, hops, ['--hop-timeout', '2']));
      assert.equal(r.code, 1, describeResult(r));
      assert.ok(r.stderr.includes(named), `${named} in: ${r.stderr}`);
      assert.match(r.stderr, /\(ERR_HOP_TIMEOUT\)/);
      await expectClean(c);
    }
  });

  test('(d) malformed relay lists: ERR_RELAYLIST_PARSE / ERR_RELAYLIST_INVALID', { timeout: 30_000 }, async (t) => {
    const c = lab(t);
    if (c === null) return;
    const good = JSON.parse(fs.readFileSync(c.list, 'utf8')) as { relays: Record<string, unknown>[] };
    const variant = (change: (r: Record<string, unknown>) => void): string => {
      const copy = structuredClone(good);
      change(copy.relays[0]!);
      return JSON.stringify(copy);
    };
    const cases: [string, string, string, RegExp][] = [
      ['not JSON', '{"relays": [', 'ERR_RELAYLIST_PARSE', /not JSON/],
      ['empty', '', 'ERR_RELAYLIST_PARSE', /not JSON/],
      ['no relays', '{"relays": []}', 'ERR_RELAYLIST_INVALID', /relays/],
      ['missing fields', '{"relays": [{"name": "r1"}]}', 'ERR_RELAYLIST_INVALID', /relays\.0\./],
      ['missing key', variant((r) => delete r.publicKey), 'ERR_RELAYLIST_INVALID', /publicKey/],
      ['bad key', variant((r) => (r.publicKey = 'bm90IGEga2V5')), 'ERR_RELAYLIST_INVALID', /"r1": publicKey/],
      ['bad endpoint (no port)', variant((r) => (r.endpoints = ['10.77.2.2'])), 'ERR_RELAYLIST_INVALID', /endpoint "10\.77\.2\.2"/],
      ['bad endpoint (port)', variant((r) => (r.endpoints = ['10.77.2.2:70000'])), 'ERR_RELAYLIST_INVALID', /endpoint/],
      ['bad endpoint (host)', variant((r) => (r.endpoints = ['relay.example:51820'])), 'ERR_RELAYLIST_INVALID', /endpoint/],
    ];
    for (const [what, text, code, message] of cases) {
      const list = writeFile(c, `bad-${what.replace(/\W+/g, '-')}.json`, text);
      const r = await strata(c.client, connectArgs(c, 'r1,r2,r3', [], list));
      assert.equal(r.code, 1, `${what}: ${describeResult(r)}`);
      assert.ok(r.stderr.includes(`(${code})`), `${what}: ${code} in ${r.stderr}`);
      assert.match(r.stderr, message, what);
    }
    await expectClean(c);
  });

  test('(f) connect twice: ERR_ALREADY_CONNECTED; disconnect with nothing up: ERR_NOT_CONNECTED', { timeout: 30_000 }, async (t) => {
    const c = lab(t);
    if (c === null) return;
    const up = await strata(c.client, connectArgs(c, 'r1,r2,r3'), 30_000);
    assert.equal(up.code, 0, describeResult(up));
    try {
      const again = await strata(c.client, connectArgs(c, 'r1,r2,r3'), 30_000);
      assert.equal(again.code, 1, describeResult(again));
      assert.match(again.stderr, /\(ERR_ALREADY_CONNECTED\)/);
      const s = await status(c);
      assert.deepEqual(s.hops.map((h) => h.up), [true, true, true], 'the first connection is still up');
      const p = await pingIn(c.client, c.lab.host('idle').v4, 2);
      assert.ok(p.received >= 1, `the first connection still carries traffic: ${p.output}`);
    } finally {
      const dis = await strata(c.client, ['disconnect', '--run-dir', c.runDir]);
      assert.equal(dis.code, 0, describeResult(dis));
    }
    await expectClean(c);
    const none = await strata(c.client, ['disconnect', '--run-dir', c.runDir]);
    assert.equal(none.code, 1, describeResult(none));
    assert.match(none.stderr, /\(ERR_NOT_CONNECTED\)/);
  });
});

test('(e) a relay does not forward to an endpoint off its list: hop 2 times out, r1 sends nothing to r2', { timeout: 45_000 }, async (t) => {
  if (await skipUnlessLab(t)) return;
  if (!which('tcpdump')) {
    console.log('# skipped: tcpdump is not installed');
    return t.skip('tcpdump is not installed');
  }
  // The client's list has r1 and r2; r1 runs with a list that has only itself and r3 (not r2).
  const c = await makeCascade(['r1', 'r2', 'r3'], [{ name: 'r1' }, { name: 'r2' }], ['r2'], ['r2']);
  const caps: Capture[] = [];
  try {
    const own = relayEntries(c.lab, [{ name: 'r1' }, { name: 'r3' }], c.keys);
    const r1List = writeFile(c, 'r1-only.json', relayListJson(own));
    await startRelay(c.lab, c.lab.host('r1').ns, r1List, c.keys.get('r1')!, false);
    for (const h of ['r1', 'r2']) caps.push(await startCapture(c.lab, c.dir, h));

    const r = await strata(c.client, connectArgs(c, 'r1,r2', ['--hop-timeout', '2']));
    assert.equal(r.code, 1, describeResult(r));
    assert.match(r.stderr, /hop 2 "r2"/);
    assert.match(r.stderr, /\(ERR_HOP_TIMEOUT\)/);
    assert.deepEqual(await waitClean(c.lab, c.client, 3000), CLEAN);
    // A direct ping from the client to r2 proves r2's capture works.
    const p = await pingIn(c.client, c.lab.host('r2').v4, 1);
    assert.equal(p.received, 1, p.output);
    await sleep(200);
    for (const cap of caps) await stopCapture(cap);

    const r1 = c.lab.host('r1');
    const r2 = c.lab.host('r2');
    const cli = c.lab.host('client');
    const r1Addrs = [canon(r1.v4), canon(r1.v6)];
    const atR1 = readPcap(caps[0]!.file);
    const atR2 = readPcap(caps[1]!.file);
    assert.ok(atR1.some((q) => q.protocol === 17 && q.src === canon(cli.v4) && q.dstPort === 51820), 'hop 1 traffic reached r1');
    const summary = (ps: CapturedPacket[]): string => ps.map((q) => `${q.src} > ${q.dst} proto ${q.protocol}`).join('\n');
    assert.ok(atR2.some((q) => q.protocol === 1 && q.src === canon(cli.v4)), `the client's direct ping is in r2's capture:\n${summary(atR2)}`);
    assert.deepEqual(
      atR2.filter((q) => r1Addrs.includes(q.src)).map((q) => `${q.src} > ${q.dst} proto ${q.protocol}`),
      [],
      "nothing from r1's address on r2's link",
    );
    assert.deepEqual(
      atR1.filter((q) => r1Addrs.includes(q.src) && q.dst === canon(r2.v4)),
      [],
      'nothing from r1 to r2 on r1\'s link',
    );
  } finally {
    for (const cap of caps) await stopCapture(cap);
    await c.close();
  }
});
