/**
 * Leak tests for the kill switch and the tunnel resolver, with real relays in network
 * namespaces (the failover bed of src/lab/failover.ts: client, r1..r6, web).
 *
 *   1. tcpdump on the client's link (router side) through: connect, steady traffic (pings v4+v6,
 *      TCP to the web host, DNS to an outside resolver and to the web host's port 53, every
 *      0.2 s), a hop rebuild (middle seized, a spare replaces it), a relay loss with no
 *      replacement possible, and a SIGKILL of the client daemon with traffic going on for 3 s
 *      more: no frame outside the tunnel (UDP client <-> relay:51820, ARP, ICMPv6 ND/RS only).
 *      Then a CONTROL run with --no-kill-switch, killed the same way: the capture must show the
 *      generator's packets in clear. After the SIGKILL, `strata disconnect` cleans up.
 *   2. DNS through the tunnel to a resolver of the test's own (node:dgram in 'web'): a unique
 *      name resolves with getent in the client namespace, never appears in clear on the link;
 *      DNS to another address is refused; with and without a systemd-resolved style
 *      nsswitch.conf in /etc/netns/NAME, checked before, while and after connected.
 *   3. Bad input: --allow-lan, --dns, a second connect, disconnect with nothing up.
 *
 * Needs root, `ip netns`, /dev/net/tun, nft and tcpdump; otherwise every test skips and says why.
 * Safety: traffic only between the lab's namespaces; every process is killed and every namespace
 * deleted in `finally`; the host's /etc/resolv.conf is compared before and after each test.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { LabHost } from '../src/lab/lab.ts';
import { labUnavailable } from '../src/lab/lab.ts';
import { strataBin } from '../src/lab/procs.ts';
import { MARKER } from '../src/client/dns.ts';
import { KILLSWITCH_TABLE } from '../src/client/killswitch.ts';
import { ROUTE_TABLE, type ClientStatus } from '../src/client/daemon.ts';
import {
  checkTunnelOnly,
  createBed,
  droppedByKernel,
  sleep,
  startCapture,
  stopCapture,
  waitForLine,
  waitIpv6Settled,
  type Capture,
  type FailoverBed,
  type LinkCheck,
} from '../src/lab/failover.ts';

let unavailable: string | null | undefined;
async function skipUnlessLab(t: TestContext): Promise<boolean> {
  if (unavailable === undefined) {
    unavailable = await labUnavailable();
    if (unavailable === null) {
      for (const tool of ['tcpdump', 'nft', 'getent', 'ping']) {
        const found = await new Promise<boolean>((r) => execFile('sh', ['-c', `command -v ${tool}`], (e) => r(e === null)));
        if (!found) unavailable = `${tool} is not installed`;
      }
    }
  }
  if (unavailable === null) return false;
  console.log(`# skipped: ${t.name}: ${unavailable}`);
  t.skip(unavailable);
  return true;
}

const log = (line: string): void => console.log(`# ${line}`);

// ---- helpers ----------------------------------------------------------------------------------

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** `strata ARGS` in a namespace; never throws (the exit code is returned). */
function strataIn(ns: string, args: readonly string[], timeout = 60_000): Promise<Run> {
  return new Promise((resolve) => {
    execFile('ip', ['netns', 'exec', ns, strataBin(), ...args], { timeout, maxBuffer: 16 << 20 }, (e, stdout, stderr) => {
      const code = e === null ? 0 : typeof (e as { code?: unknown }).code === 'number' ? ((e as { code: number }).code) : 1;
      resolve({ code, stdout: String(stdout), stderr: String(stderr) });
    });
  });
}

function execIn(ns: string, file: string, args: readonly string[], timeout = 20_000): Promise<Run> {
  return new Promise((resolve) => {
    execFile('ip', ['netns', 'exec', ns, file, ...args], { timeout, maxBuffer: 16 << 20 }, (e, stdout, stderr) => {
      const code = e === null ? 0 : typeof (e as { code?: unknown }).code === 'number' ? ((e as { code: number }).code) : 1;
      resolve({ code, stdout: String(stdout), stderr: String(stderr) });
    });
  });
}

async function killSwitchTable(ns: string): Promise<boolean> {
  return (await execIn(ns, 'nft', ['list', 'table', 'inet', KILLSWITCH_TABLE])).code === 0;
}

/** Rules or routes of table 21317 (policy routing) left in a namespace. */
async function routeTableLeft(ns: string): Promise<string> {
  let left = '';
  for (const f of ['-4', '-6']) {
    const rules = (await execIn(ns, 'ip', [f, 'rule', 'show'])).stdout;
    for (const l of rules.split('\n')) if (l.includes(String(ROUTE_TABLE)) || l.startsWith('21310:')) left += `${f} rule ${l.trim()}; `;
    const routes = (await execIn(ns, 'ip', [f, 'route', 'show', 'table', String(ROUTE_TABLE)])).stdout.trim();
    if (routes !== '') left += `${f} table ${ROUTE_TABLE}: ${routes}; `;
  }
  return left;
}

/** The pid of the client daemon: the process in the client namespace running `strata ... connect`. */
async function daemonPid(ns: string): Promise<number> {
  const pids: number[] = [];
  const out = await new Promise<string>((r) => execFile('ip', ['netns', 'pids', ns], (_e, so) => r(String(so))));
  for (const p of out.split(/\s+/).filter(Boolean)) {
    let cmd = '';
    try {
      cmd = fs.readFileSync(`/proc/${p}/cmdline`, 'utf8').split('\0').join(' ');
    } catch {
      continue;
    }
    if (/strata/.test(cmd) && / connect /.test(` ${cmd} `)) pids.push(Number(p));
  }
  assert.equal(pids.length, 1, `expected one strata connect process in ${ns}, found ${pids.length}`);
  return pids[0]!;
}

function hostResolvConf(): string {
  try {
    const st = fs.lstatSync('/etc/resolv.conf');
    return `${st.isSymbolicLink() ? `-> ${fs.readlinkSync('/etc/resolv.conf')} ` : ''}${st.mtimeMs} ${fs.readFileSync('/etc/resolv.conf', 'utf8')}`;
  } catch (e) {
    return `(${(e as NodeJS.ErrnoException).code})`;
  }
}

/** Never leave anything in /etc/netns or /run/strata for the lab's client namespace. */
function removeNetnsFiles(ns: string): void {
  if (!/^sl\d+-client$/.test(ns)) return;
  fs.rmSync(path.join('/etc/netns', ns), { recursive: true, force: true });
  try {
    for (const f of fs.readdirSync('/run/strata')) if (f.startsWith(`netns-${ns}-`)) fs.rmSync(path.join('/run/strata', f), { force: true });
  } catch {
    // none
  }
}

/** A DNS query (RD, one question) for NAME, type A. */
function dnsQuery(name: string, id: number): Buffer {
  const labels = name.split('.').map((l) => Buffer.concat([Buffer.from([l.length]), Buffer.from(l)]));
  const head = Buffer.from([id >> 8, id & 255, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
  return Buffer.concat([head, ...labels, Buffer.from([0, 0, 1, 0, 1])]);
}

/**
 * The traffic generator, in the client namespace: every 0.2 s a TCP connection to the web host
 * (v4 and v6) and DNS queries to an outside resolver (the router, v4 and v6) and to the web
 * host's port 53. Prints a count of TCP connects every second. Stops by itself after 120 s.
 */
const GENERATOR = `
const dgram = require('node:dgram'), net = require('node:net');
const [web4, web6, res4, res6, qhex] = process.argv.slice(1);
const q = Buffer.from(qhex, 'hex');
const s4 = dgram.createSocket('udp4'); s4.on('error', () => {});
const s6 = dgram.createSocket('udp6'); s6.on('error', () => {});
let connects = 0, sent = 0;
setInterval(() => {
  for (const [s, a] of [[s4, res4], [s4, web4], [s6, res6]]) s.send(q, 53, a, () => {});
  for (const h of [web4, web6]) {
    const c = net.connect({ host: h, port: 80 });
    c.setTimeout(1000, () => c.destroy());
    c.on('connect', () => { connects++; c.destroy(); });
    c.on('error', () => {});
  }
  sent++;
}, 200);
setInterval(() => console.log('tcp ' + connects + ' ticks ' + sent), 1000);
console.log('ready');
setTimeout(() => process.exit(0), 120000).unref();
`;

interface Traffic {
  procs: ChildProcess[];
  pingReplies: { v4: number; v6: number };
  tcpConnects(): number;
  stop(): void;
}

async function startTraffic(bed: FailoverBed): Promise<Traffic> {
  const { lab, client, web } = bed;
  const replies = { v4: 0, v6: 0 };
  const procs: ChildProcess[] = [];
  for (const [fam, addr] of [['v4', web.v4], ['v6', web.v6]] as const) {
    const p = lab.spawn(client.ns, 'ping', [fam === 'v4' ? '-4' : '-6', '-n', '-i', '0.2', '-W', '1', '-w', '120', addr]);
    p.stdout!.setEncoding('utf8').on('data', (d: string) => (replies[fam] += (d.match(/bytes from/g) ?? []).length));
    p.stderr!.resume();
    procs.push(p);
  }
  const gen = lab.spawn(client.ns, process.execPath, [
    '-e',
    GENERATOR,
    web.v4,
    web.v6,
    client.routerV4,
    client.routerV6,
    dnsQuery('leak-probe.strata.test', 0x5151).toString('hex'),
  ]);
  let tcp = 0;
  gen.stdout!.setEncoding('utf8').on('data', (d: string) => {
    for (const m of d.matchAll(/tcp (\d+)/g)) tcp = Number(m[1]);
  });
  gen.stderr!.resume();
  procs.push(gen);
  await sleep(300);
  return {
    procs,
    pingReplies: replies,
    tcpConnects: () => tcp,
    stop: () => {
      for (const p of procs) p.kill('SIGKILL');
    },
  };
}

/** Frames that are neither IPv4, IPv6 nor ARP (by ethertype), from a pcap of an Ethernet link. */
function nonIpNonArpFrames(file: string): { arp: number; other: string[] } {
  const b = fs.readFileSync(file);
  const out = { arp: 0, other: [] as string[] };
  if (b.length < 24) return out;
  const le = b.readUInt32LE(0) === 0xa1b2c3d4 || b.readUInt32LE(0) === 0xa1b23c4d;
  const u32 = (o: number): number => (le ? b.readUInt32LE(o) : b.readUInt32BE(o));
  if (u32(20) !== 1) return out; // not Ethernet: readPcap's classification is all there is
  for (let o = 24; o + 16 <= b.length; ) {
    const incl = u32(o + 8);
    const frame = b.subarray(o + 16, o + 16 + incl);
    o += 16 + incl;
    if (frame.length < 14) continue;
    const et = frame.readUInt16BE(12);
    if (et === 0x0806) out.arp++;
    else if (et !== 0x0800 && et !== 0x86dd) out.other.push(`ethertype 0x${et.toString(16)}`);
  }
  return out;
}

function summary(label: string, c: LinkCheck, arp: number): string {
  return (
    `${label}: ${c.frames} frames (${c.ipPackets} IP, ${arp} ARP): ${c.tunnel} tunnel datagrams, ${c.neighbour} ICMPv6 ND/RS, ` +
    `${c.routerErrors} router ICMP errors, ${c.violations.length} outside the tunnel; kernel drops ${c.dropped}`
  );
}

// ---- 1. the kill switch under stress, and the control run ----------------------------------

interface ScenarioResult {
  client: LabHost;
  check: LinkCheck;
  arp: number;
  otherFrames: string[];
  pingsBeforeKill: { v4: number; v6: number };
  tcpBeforeKill: number;
  status: ClientStatus;
  disconnect: Run;
  tableAfterKill: boolean;
  tableAfterDisconnect: boolean;
  routingLeft: string;
  resolvAfterKill: string | null;
  resolvAfterDisconnect: string | null;
  rebuild: string | null;
  noReplacement: string | null;
}

async function scenario(killSwitch: boolean): Promise<ScenarioResult> {
  const bed = await createBed();
  let cap: Capture | null = null;
  let traffic: Traffic | null = null;
  const resolvPath = path.join('/etc/netns', bed.client.ns, 'resolv.conf');
  const readResolv = (): string | null => {
    try {
      return fs.readFileSync(resolvPath, 'utf8');
    } catch {
      return null;
    }
  };
  try {
    const { lab, client } = bed;
    await waitIpv6Settled(lab, 'client');
    cap = await startCapture(lab, path.join(bed.dir, `client-${killSwitch ? 'ks' : 'control'}.pcap`), 'client');
    await bed.connect(['r1', 'r2', 'r3'], ['--dns', bed.web.v4, ...(killSwitch ? [] : ['--no-kill-switch'])]);
    const st0 = await bed.status();
    assert.equal(st0.killSwitch, killSwitch);
    traffic = await startTraffic(bed);
    await sleep(3000);
    assert.ok(traffic.pingReplies.v4 > 5 && traffic.pingReplies.v6 > 5, `no steady traffic through the tunnel: ${JSON.stringify(traffic.pingReplies)}`);

    let rebuild: string | null = null;
    let noReplacement: string | null = null;
    if (killSwitch) {
      // A hop rebuild: the middle is seized, spares r4..r6 are there.
      await lab.seize('r2');
      let st = await bed.status();
      for (let i = 0; i < 100 && !st.failovers.some((f) => f.failed === 'r2' && f.restoredAfterMs !== null); i++) {
        await sleep(100);
        st = await bed.status();
      }
      const ev = st.failovers.find((f) => f.failed === 'r2');
      assert.ok(ev?.restoredAfterMs != null, `the middle was not replaced: ${JSON.stringify(st.failovers)}`);
      rebuild = `r2 -> ${ev.replacement} (detected ${ev.detectedAfterMs} ms, restored ${ev.restoredAfterMs} ms)`;
      await sleep(1500);
      // A relay loss with no replacement: every spare gone, then the new middle.
      const middle = st.hops[1]!.name;
      const spares = ['r4', 'r5', 'r6'].filter((n) => n !== middle);
      for (const n of spares) await lab.seize(n);
      await lab.seize(middle);
      const lostAt = Date.now();
      // Probe, then each seized spare tried for replaceMs (2 s), then nothing is left.
      await sleep(1000 + 500 + spares.length * 2000 + 2500);
      st = await bed.status();
      const tried = st.failovers.filter((f) => f.failed === middle);
      assert.ok(tried.length > 0, `the loss of ${middle} was not noticed`);
      assert.ok(tried.every((f) => f.restoredAfterMs === null), `${middle} was replaced although no relay was left`);
      assert.equal(st.killSwitch, true);
      noReplacement = `${middle} lost (spares ${spares.join(', ')} seized first): not replaced after ${Date.now() - lostAt} ms; hop 2 is ${st.hops[1]!.name} (${st.hops[1]!.up ? 'up' : 'down'})`;
    }
    const status = await bed.status();
    const pingsBeforeKill = { ...traffic.pingReplies };
    const tcpBeforeKill = traffic.tcpConnects();

    // SIGKILL the daemon; traffic goes on for 3 s.
    const pid = await daemonPid(client.ns);
    process.kill(pid, 'SIGKILL');
    await sleep(3000);
    traffic.stop();
    await sleep(300);
    await stopCapture(cap);
    const tableAfterKill = await killSwitchTable(client.ns);
    const resolvAfterKill = readResolv();

    const disconnect = await strataIn(client.ns, ['disconnect', '--run-dir', bed.runDir]);
    const tableAfterDisconnect = await killSwitchTable(client.ns);
    const routingLeft = await routeTableLeft(client.ns);
    const resolvAfterDisconnect = readResolv();

    const check = checkTunnelOnly(cap.file, client, bed.relayHosts, droppedByKernel(cap));
    const frames = nonIpNonArpFrames(cap.file);
    return {
      client,
      check,
      arp: frames.arp,
      otherFrames: frames.other,
      pingsBeforeKill,
      tcpBeforeKill,
      status,
      disconnect,
      tableAfterKill,
      tableAfterDisconnect,
      routingLeft,
      resolvAfterKill,
      resolvAfterDisconnect,
      rebuild,
      noReplacement,
    };
  } finally {
    traffic?.stop();
    if (cap !== null) await stopCapture(cap);
    const ns = bed.client.ns;
    await bed.close();
    removeNetnsFiles(ns);
  }
}

test('1. no frame outside the tunnel through connect, traffic, rebuild, unreplaceable loss and SIGKILL; control run leaks', { timeout: 240_000 }, async (t) => {
  if (await skipUnlessLab(t)) return;
  const resolvBefore = hostResolvConf();
  const started = Date.now();

  const r = await scenario(true);
  log(`kill switch run: ${r.rebuild}; ${r.noReplacement}`);
  log(`kill switch run: before the SIGKILL ${r.pingsBeforeKill.v4} v4 / ${r.pingsBeforeKill.v6} v6 ping replies, ${r.tcpBeforeKill} TCP connects`);
  log(summary('kill switch run', r.check, r.arp));
  if (r.check.violations.length) log(`kill switch run violations: ${r.check.violations.slice(0, 10).join('; ')}`);
  log(`kill switch run: table after SIGKILL ${r.tableAfterKill ? 'present' : 'GONE'}; disconnect exit ${r.disconnect.code}: ${(r.disconnect.stdout + r.disconnect.stderr).trim()}`);

  assert.equal(r.check.dropped, 0, 'the capture lost packets');
  assert.ok(r.check.tunnel > 200, `only ${r.check.tunnel} tunnel datagrams captured`);
  assert.deepEqual(r.otherFrames, [], 'non-IP, non-ARP frames on the link');
  assert.deepEqual(r.check.violations.slice(0, 20), [], `${r.check.violations.length} packets outside the tunnel`);
  assert.equal(r.check.routerErrors, 0, 'ICMP errors from the router (the entry was never seized)');
  assert.ok(r.tableAfterKill, 'the kill switch did not outlive the SIGKILLed daemon');
  assert.ok(r.resolvAfterKill?.startsWith(MARKER), 'the tunnel resolver file was not in place after the SIGKILL (nothing for disconnect to clean)');
  assert.equal(r.disconnect.code, 0, `strata disconnect after the SIGKILL: ${r.disconnect.stderr}`);
  assert.match(r.disconnect.stdout, /removed the kill switch/);
  assert.equal(r.tableAfterDisconnect, false, 'strata_killswitch still there after disconnect');
  assert.equal(r.routingLeft, '', 'policy routing left after disconnect');
  assert.ok(r.resolvAfterDisconnect === null || !r.resolvAfterDisconnect.startsWith(MARKER), 'strata resolv.conf left after disconnect');

  const c = await scenario(false);
  const leaked = c.check.violations;
  // The generator's own packets, leaving the client in clear.
  const me = [c.client.v4, c.client.v6];
  const from = (v: string, proto: number): boolean => me.some((a) => v.startsWith(`IPv${a.includes(':') ? 6 : 4} proto ${proto} ${a}`) && v.includes(' > '));
  const byKind = {
    icmp: leaked.filter((v) => (from(v, 1) && / type 8 code /.test(v)) || (from(v, 58) && / type 128 code /.test(v))).length,
    tcp80: leaked.filter((v) => from(v, 6) && /:80 \(/.test(v)).length,
    dns: leaked.filter((v) => from(v, 17) && /:53 \(/.test(v)).length,
  };
  log(`control run (--no-kill-switch): before the SIGKILL ${c.pingsBeforeKill.v4} v4 / ${c.pingsBeforeKill.v6} v6 ping replies, ${c.tcpBeforeKill} TCP connects`);
  log(summary('control run', c.check, c.arp));
  log(`control run leaks (client -> out, in clear): ${byKind.icmp} ICMP/ICMPv6 echo requests, ${byKind.tcp80} TCP to :80, ${byKind.dns} DNS; e.g. ${leaked.slice(0, 4).join('; ')}`);
  log(`control run: disconnect exit ${c.disconnect.code}: ${(c.disconnect.stdout + c.disconnect.stderr).trim()}`);
  assert.ok(c.check.tunnel > 100, `control run: only ${c.check.tunnel} tunnel datagrams captured`);
  assert.ok(leaked.length > 10, `the control run shows no leak (${leaked.length}): the capture cannot be trusted to see one`);
  assert.ok(byKind.icmp > 0 && byKind.tcp80 > 0 && byKind.dns > 0, "the control run did not show the generator's pings, TCP and DNS in clear");
  assert.equal(c.disconnect.code, 0);
  assert.equal(c.tableAfterDisconnect, false);
  assert.equal(c.routingLeft, '');

  assert.equal(hostResolvConf(), resolvBefore, 'CRITICAL: the host /etc/resolv.conf changed');
  log(`test 1 took ${((Date.now() - started) / 1000).toFixed(1)} s`);
});

// ---- 2. DNS through the tunnel ---------------------------------------------------------------

/** Answers A queries for one name with one address; NODATA for other types, NXDOMAIN otherwise. */
const DNS_SERVER = `
const dgram = require('node:dgram');
const [addr, name, answer] = process.argv.slice(1);
const s = dgram.createSocket('udp4');
s.on('message', (m, rinfo) => {
  if (m.length < 17) return;
  let o = 12; const labels = [];
  while (o < m.length && m[o] !== 0) { labels.push(m.subarray(o + 1, o + 1 + m[o]).toString()); o += 1 + m[o]; }
  const qtype = m.readUInt16BE(o + 1);
  const qname = labels.join('.').toLowerCase();
  const question = m.subarray(12, o + 5);
  const hit = qname === name;
  const ans = hit && qtype === 1
    ? Buffer.concat([Buffer.from([0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]), Buffer.from(answer.split('.').map(Number))])
    : Buffer.alloc(0);
  const head = Buffer.from([m[0], m[1], 0x81, hit ? 0x80 : 0x83, 0, 1, 0, ans.length ? 1 : 0, 0, 0, 0, 0]);
  s.send(Buffer.concat([head, question, ans]), rinfo.port, rinfo.address);
  console.log('query ' + qname + ' type ' + qtype + ' from ' + rinfo.address);
});
s.bind(53, addr, () => console.log('ready'));
setTimeout(() => process.exit(0), 300000).unref();
`;

/** In the client namespace: a DNS query straight to ADDR:53; the outcome in one line. */
const DIRECT_QUERY = `
const dgram = require('node:dgram');
const [addr, qhex] = process.argv.slice(1);
const s = dgram.createSocket('udp4');
const done = (w) => { console.log(w); process.exit(0); };
s.on('error', (e) => done('error ' + e.code));
s.on('message', () => done('answered'));
s.send(Buffer.from(qhex, 'hex'), 53, addr, (e) => { if (e) done('send failed ' + e.code); });
setTimeout(() => done('no answer'), 1500);
`;

const RESOLVED_NSSWITCH = 'passwd: files\ngroup: files\nhosts: files resolve [!UNAVAIL=return] dns\nnetworks: files\n';

test('2. DNS: a unique name resolves through the tunnel, never in clear; other DNS refused; nsswitch.conf kept', { timeout: 150_000 }, async (t) => {
  if (await skipUnlessLab(t)) return;
  const resolvBefore = hostResolvConf();
  const started = Date.now();
  const bed = await createBed();
  const ns = bed.client.ns;
  const nsDir = path.join('/etc/netns', ns);
  const read = (f: string): string | null => {
    try {
      return fs.readFileSync(path.join(nsDir, f), 'utf8');
    } catch {
      return null;
    }
  };
  const caps: Capture[] = [];
  const bugs: string[] = [];
  try {
    const { lab, client, web } = bed;
    await waitIpv6Settled(lab, 'client');
    for (const resolvedStyle of [false, true]) {
      const label = resolvedStyle ? 'with a resolved-style nsswitch.conf' : 'plain';
      const name = `canary-${randomBytes(6).toString('hex')}.strata.test`;
      const direct = `direct-${randomBytes(6).toString('hex')}.strata.test`;
      const dns = lab.spawn(web.ns, process.execPath, ['-e', DNS_SERVER, web.v4, name, web.v4]);
      await waitForLine(dns, (l) => l === 'ready', 10_000, 'the test DNS server');
      const queries: string[] = [];
      dns.stdout!.setEncoding('utf8').on('data', (d: string) => queries.push(...d.split('\n').filter((l) => l.startsWith('query'))));

      if (resolvedStyle) {
        fs.mkdirSync(nsDir, { recursive: true });
        fs.writeFileSync(path.join(nsDir, 'nsswitch.conf'), RESOLVED_NSSWITCH);
      } else assert.equal(fs.existsSync(nsDir), false, `${nsDir} exists before the test`);
      const nssBefore = read('nsswitch.conf');

      const cap = await startCapture(lab, path.join(bed.dir, `dns-${resolvedStyle ? 'resolved' : 'plain'}.pcap`), 'client');
      caps.push(cap);
      await bed.connect(['r1', 'r2', 'r3'], ['--dns', web.v4]);
      const st = JSON.parse((await strataIn(ns, ['status', '--json', '--run-dir', bed.runDir])).stdout) as ClientStatus;
      assert.deepEqual(st.dns, { resolver: web.v4, mode: 'netns' });
      assert.equal(st.killSwitch, true);
      const nssWhile = read('nsswitch.conf');
      const resolvWhile = read('resolv.conf');
      assert.ok(resolvWhile?.startsWith(MARKER) && resolvWhile.includes(`nameserver ${web.v4}`), `resolv.conf while connected: ${resolvWhile}`);
      assert.ok(nssWhile?.startsWith(MARKER), `nsswitch.conf while connected: ${nssWhile}`);
      assert.match(nssWhile!, /^hosts: files dns$/m);
      assert.doesNotMatch(nssWhile!, /resolve/);

      const got = await execIn(ns, 'getent', ['hosts', name]);
      const directRun = await execIn(ns, process.execPath, ['-e', DIRECT_QUERY, client.routerV4, dnsQuery(direct, 0x7777).toString('hex')]);
      await sleep(500);
      await stopCapture(cap);
      const disc = await strataIn(ns, ['disconnect', '--run-dir', bed.runDir]);
      assert.equal(disc.code, 0, disc.stderr);
      const nssAfter = read('nsswitch.conf');
      const resolvAfter = read('resolv.conf');
      dns.kill('SIGKILL');

      const raw = fs.readFileSync(cap.file);
      const nameLabel = Buffer.from(name.split('.')[0]!);
      const directLabel = Buffer.from(direct.split('.')[0]!);
      const check = checkTunnelOnly(cap.file, client, bed.relayHosts, droppedByKernel(cap));
      const to53 = check.violations.filter((v) => /:53 \(/.test(v));
      log(`${label}: getent hosts ${name} -> exit ${got.code} "${got.stdout.trim()}"; the server saw ${queries.length} queries (${queries.slice(0, 3).join('; ')})`);
      log(`${label}: direct query to ${client.routerV4}:53 -> ${directRun.stdout.trim() || directRun.stderr.trim()}; ${to53.length} DNS packets outside the tunnel`);
      log(`${label}: name bytes in clear on the link: ${raw.indexOf(nameLabel) >= 0 ? 'FOUND' : 'none'}; direct query's name: ${raw.indexOf(directLabel) >= 0 ? 'FOUND' : 'none'}`);
      log(summary(`${label} capture`, check, nonIpNonArpFrames(cap.file).arp));
      log(`${label}: nsswitch.conf before ${JSON.stringify(nssBefore)}, while ${JSON.stringify(nssWhile!.split('\n').find((l) => l.startsWith('hosts')))}, after ${JSON.stringify(nssAfter)}; resolv.conf after ${JSON.stringify(resolvAfter)}`);

      assert.equal(got.code, 0, `getent hosts ${name} failed: ${got.stderr}`);
      assert.match(got.stdout, new RegExp(`^${web.v4.replaceAll('.', '\\.')}\\s+${name}`));
      assert.ok(queries.some((q) => q.startsWith(`query ${name} `)), 'the test resolver never saw the query');
      assert.equal(raw.indexOf(nameLabel), -1, 'the canary name crossed the link in clear');
      assert.equal(raw.indexOf(directLabel), -1, 'the direct DNS query crossed the link in clear');
      assert.notEqual(directRun.stdout.trim(), 'answered', 'a direct DNS query was answered');
      assert.deepEqual(check.violations, [], 'packets outside the tunnel');
      assert.ok(check.tunnel > 4, 'no tunnel traffic captured');
      assert.equal(resolvAfter, null, 'strata left its resolv.conf');
      if (resolvedStyle) {
        if (nssAfter !== RESOLVED_NSSWITCH) bugs.push(`BUG: the user's nsswitch.conf was not restored on disconnect (now: ${JSON.stringify(nssAfter)})`);
        assert.equal(nssAfter, RESOLVED_NSSWITCH, "the user's nsswitch.conf was not put back");
      } else {
        assert.equal(nssAfter, null, 'strata left its nsswitch.conf');
        assert.equal(fs.existsSync(nsDir), false, `strata left ${nsDir}`);
      }
    }
    assert.equal(hostResolvConf(), resolvBefore, 'CRITICAL: the host /etc/resolv.conf changed');
  } finally {
    for (const b of bugs) log(b);
    for (const c of caps) await stopCapture(c);
    await bed.close();
    removeNetnsFiles(ns);
    log(`test 2 took ${((Date.now() - started) / 1000).toFixed(1)} s`);
  }
});

// ---- 3. bad input ---------------------------------------------------------------------------

test('3. bad input: --allow-lan, --dns, a second connect, disconnect with nothing up', { timeout: 120_000 }, async (t) => {
  if (await skipUnlessLab(t)) return;
  const resolvBefore = hostResolvConf();
  const started = Date.now();
  const bed = await createBed();
  const ns = bed.client.ns;
  try {
    const connect = (extra: string[]): Promise<Run> =>
      strataIn(ns, ['connect', '--relays', bed.list, '--path', 'r1,r2,r3', '--run-dir', bed.runDir, ...extra]);
    const expectCode = (r: Run, code: string, what: string): void => {
      log(`${what}: exit ${r.code}: ${r.stderr.trim()}`);
      assert.equal(r.code, 1, `${what}: exit ${r.code}`);
      assert.match(r.stderr, new RegExp(`\\(${code}\\)\\s*$`), what);
    };
    for (const lan of ['10.0.0.0/33', 'nonsense']) {
      expectCode(await connect(['--allow-lan', lan]), 'ERR_LAN_RANGE', `--allow-lan ${lan}`);
      assert.equal(await killSwitchTable(ns), false, `a kill-switch table after --allow-lan ${lan}`);
    }
    expectCode(await connect(['--dns', 'not-an-ip']), 'ERR_DNS', '--dns not-an-ip');
    assert.equal(await killSwitchTable(ns), false, 'a kill-switch table after --dns not-an-ip');

    const first = await connect([]);
    assert.equal(first.code, 0, `first connect: ${first.stderr}`);
    expectCode(await connect([]), 'ERR_ALREADY_CONNECTED', 'second connect');
    assert.equal(await killSwitchTable(ns), true, "the first connection's kill switch is gone after the second connect");
    const st = await bed.status();
    assert.equal(st.killSwitch, true);
    assert.ok(st.hops.every((h) => h.up));
    const ping = await execIn(ns, 'ping', ['-c', '2', '-W', '2', '-n', bed.web.v4]);
    assert.equal(ping.code, 0, 'the first connection stopped carrying traffic');
    const d1 = await strataIn(ns, ['disconnect', '--run-dir', bed.runDir]);
    assert.equal(d1.code, 0, d1.stderr);
    assert.equal(await killSwitchTable(ns), false);
    expectCode(await strataIn(ns, ['disconnect', '--run-dir', bed.runDir]), 'ERR_NOT_CONNECTED', 'disconnect with nothing up');
    assert.equal(hostResolvConf(), resolvBefore, 'CRITICAL: the host /etc/resolv.conf changed');
  } finally {
    await bed.close();
    removeNetnsFiles(ns);
    log(`test 3 took ${((Date.now() - started) / 1000).toFixed(1)} s`);
  }
});
