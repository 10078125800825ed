/**
 * Helpers for test/cascade.test.ts: cascades of real `strata relay` processes in a Lab of
 * network namespaces (src/lab/lab.ts), a destination host with HTTP, TCP-sink and UDP-echo
 * servers, the `strata` command run inside a namespace (exit code and output kept), tcpdump
 * captures on the router-side links, and a parser for the WireGuard messages in captured UDP.
 *
 * Safety: every process runs inside a namespace the Lab created (the Lab kills them by PID and
 * through `ip netns pids` at close); every command has a time limit; nothing is configured in
 * the host namespace.
 */
import { execFile, execFileSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { TestContext } from 'node:test';
import { PrivateKey } from '../src/crypto/keys.ts';
import { relayListJson, type Relay, type RelayKind, type Role } from '../src/cascade/relaylist.ts';
import { Lab, labUnavailable, memoryTempDir } from '../src/lab/lab.ts';
import { startRelay, strataBin } from '../src/lab/procs.ts';
import { startTcpdump, type CapturedPacket } from '../src/lab/pcap.ts';

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Skips the test (printing why) when namespaces/TUN are unavailable; true if skipped. */
export async function skipUnlessLab(t: TestContext): Promise<boolean> {
  const why = await labUnavailable();
  if (why === null) return false;
  console.log(`# skipped: ${t.name}: ${why}`);
  t.skip(why);
  return true;
}

export interface Result {
  code: number | null;
  signal: string | null;
  stdout: string;
  stderr: string;
}

/** Runs a command in a namespace, bounded in time; never throws on a non-zero exit. */
export function runIn(ns: string, file: string, args: readonly string[], timeoutMs = 20_000, input?: string): Promise<Result> {
  return new Promise((resolve, reject) => {
    const child = execFile(
      'ip',
      ['netns', 'exec', ns, file, ...args],
      { timeout: timeoutMs, killSignal: 'SIGKILL', maxBuffer: 16 << 20, encoding: 'utf8' },
      (err, stdout, stderr) => {
        const e = err as (NodeJS.ErrnoException & { code?: number | string; signal?: string }) | null;
        if (e && typeof e.code === 'string') return reject(new Error(`${file}: ${e.message}`));
        resolve({ code: e ? (typeof e.code === 'number' ? e.code : null) : 0, signal: e?.signal ?? null, stdout, stderr });
      },
    );
    if (input !== undefined) child.stdin!.end(input);
    else child.stdin!.end();
  });
}

/** `strata ARGS` in a namespace. */
export function strata(ns: string, args: readonly string[], timeoutMs = 30_000): Promise<Result> {
  return runIn(ns, strataBin(), args, timeoutMs);
}

export function describeResult(r: Result): string {
  return `exit ${r.code}${r.signal ? ` (${r.signal})` : ''}\nstdout: ${r.stdout.trim()}\nstderr: ${r.stderr.trim()}`;
}

export interface RelaySpec {
  name: string;
  /** The lab host whose v4 address is the endpoint (default: the relay's own host). */
  host?: string;
  port?: number;
  kind?: RelayKind;
  role?: Role;
  /** A public key to publish instead of the relay's real one. */
  publicKey?: PrivateKey;
}

export interface Cascade {
  lab: Lab;
  dir: string;
  runDir: string;
  relays: Relay[];
  keys: Map<string, PrivateKey>;
  /** The relay list every relay and (by default) the client uses. */
  list: string;
  client: string; // the client namespace
  close(): Promise<void>;
}

/** Relay entries for lab hosts (endpoint = the host's v4 address). */
export function relayEntries(lab: Lab, specs: readonly RelaySpec[], keys: Map<string, PrivateKey>): Relay[] {
  return specs.map((s, i) => {
    let key = keys.get(s.name);
    if (key === undefined) {
      key = PrivateKey.generate();
      keys.set(s.name, key);
    }
    return {
      name: s.name,
      country: ['IS', 'CH', 'SE', 'RO', 'NL', 'DE', 'FI'][i % 7]!,
      publicKey: (s.publicKey ?? key).publicKey(),
      endpoints: [{ address: lab.host(s.host ?? s.name).v4, port: s.port ?? 51820, family: 'IPv4' as const }],
      roles: [s.role ?? (i === specs.length - 1 ? 'exit' : i === 0 ? 'entry' : 'middle')],
      provider: `hoster-${i + 1}`,
      family: `operator-${i + 1}`,
      capacity: 1,
      kind: s.kind ?? 'strata',
    };
  });
}

/**
 * A lab with hosts client, the relays' hosts and `extraHosts`; a relay list of `specs`; and a
 * `strata relay` started for every spec named in `start` (exit role for those in `exits`).
 */
export async function makeCascade(
  hostNames: readonly string[],
  specs: readonly RelaySpec[],
  start: readonly string[],
  exits: readonly string[],
): Promise<Cascade> {
  const dir = memoryTempDir('strata-cascade-');
  fs.chmodSync(dir, 0o700);
  let lab: Lab;
  try {
    lab = await Lab.create(['client', ...hostNames]);
  } catch (e) {
    fs.rmSync(dir, { recursive: true, force: true });
    throw e;
  }
  liveLabs.add(lab);
  const keys = new Map<string, PrivateKey>();
  const c: Cascade = {
    lab,
    dir,
    runDir: path.join(dir, 'run'),
    relays: [],
    keys,
    list: path.join(dir, 'relays.json'),
    client: lab.host('client').ns,
    async close() {
      await lab.close();
      liveLabs.delete(lab);
      for (const k of keys.values()) k.wipe();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
  try {
    c.relays = relayEntries(lab, specs, keys);
    fs.writeFileSync(c.list, relayListJson(c.relays), { mode: 0o600 });
    await Promise.all(
      start.map((name) => {
        const spec = specs.find((s) => s.name === name)!;
        return startRelay(lab, lab.host(spec.host ?? name).ns, c.list, keys.get(name)!, exits.includes(name), spec.port ?? 51820);
      }),
    );
  } catch (e) {
    await c.close();
    throw e;
  }
  return c;
}

// Last resort if this process is interrupted before a test's `finally` runs: end the
// processes in our labs' namespaces (by PID, through the namespace) and delete the namespaces.
const liveLabs = new Set<Lab>();
function teardownSync(): void {
  for (const lab of liveLabs) {
    for (const ns of [lab.router, ...[...lab.hosts.values()].map((h) => h.ns)]) {
      try {
        for (const pid of execFileSync('ip', ['netns', 'pids', ns], { encoding: 'utf8', timeout: 5000 }).split(/\s+/).filter(Boolean)) {
          try {
            process.kill(Number(pid), 'SIGKILL');
          } catch {
            // gone
          }
        }
        execFileSync('ip', ['netns', 'del', ns], { stdio: 'ignore', timeout: 5000 });
      } catch {
        // not there
      }
    }
  }
  liveLabs.clear();
}
process.on('exit', teardownSync);
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.once(sig, () => {
    teardownSync();
    process.exit(sig === 'SIGINT' ? 130 : 143);
  });
}

/** Writes a file into the cascade's private directory. */
export function writeFile(c: Cascade, name: string, text: string): string {
  const p = path.join(c.dir, name);
  fs.writeFileSync(p, text, { mode: 0o600 });
  return p;
}

// ---- the destination -------------------------------------------------------------------------

export const HTTP_PORT = 80;
export const SINK_PORT = 5001;
export const ECHO_PORT = 5002;

/**
 * One node process: HTTP on 80 (a page naming the peer's address), a TCP sink on 5001 that
 * prints "sink BYTES SHA256 FROM" per connection (at most 8 MiB, 60 s), and a UDP echo on 5002
 * (IPv4 and IPv6, datagrams of at most 2 KiB echoed once).
 */
const DEST_SERVER = `
const http = require('node:http');
const net = require('node:net');
const dgram = require('node:dgram');
const crypto = require('node:crypto');
let ready = 0;
const up = () => { if (++ready === 4) console.log('ready'); };
http.createServer((req, res) => {
  res.setHeader('content-type', 'text/plain');
  res.end('hello through strata from ' + req.socket.remoteAddress + '\\n');
}).listen(${HTTP_PORT}, '::', up);
net.createServer((s) => {
  const h = crypto.createHash('sha256');
  let n = 0;
  s.setTimeout(60000, () => s.destroy());
  s.on('data', (d) => { n += d.length; if (n > (8 << 20)) s.destroy(); else h.update(d); });
  s.on('end', () => { console.log('sink ' + n + ' ' + h.digest('hex') + ' ' + s.remoteAddress); s.end('ok'); });
  s.on('error', () => {});
}).listen(${SINK_PORT}, '::', up);
for (const type of ['udp4', 'udp6']) {
  const u = dgram.createSocket({ type, ipv6Only: type === 'udp6' });
  u.on('message', (m, r) => { if (m.length <= 2048) u.send(m, r.port, r.address); });
  u.bind(${ECHO_PORT}, up);
}
setTimeout(() => process.exit(0), 10 * 60 * 1000).unref();
`;

export interface Destination {
  proc: ChildProcess;
  /** Lines the server printed so far. */
  lines(): string[];
  /** Waits for a line starting with `prefix` (after `from` lines), up to `ms`. */
  waitLine(prefix: string, ms: number, from?: number): Promise<string>;
}

export async function startDestination(lab: Lab, host: string): Promise<Destination> {
  const proc = lab.spawn(lab.host(host).ns, process.execPath, ['-e', DEST_SERVER]);
  let out = '';
  let err = '';
  proc.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
  proc.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
  const lines = (): string[] => out.split('\n').filter((l) => l !== '');
  const waitLine = async (prefix: string, ms: number, from = 0): Promise<string> => {
    const deadline = Date.now() + ms;
    for (;;) {
      const l = lines().slice(from).find((x) => x.startsWith(prefix));
      if (l !== undefined) return l;
      if (proc.exitCode !== null || Date.now() > deadline) throw new Error(`destination: no "${prefix}" line (stderr: ${err.trim()})`);
      await sleep(25);
    }
  };
  await waitLine('ready', 15_000);
  return { proc, lines, waitLine };
}

/**
 * Sends `bytes` random bytes to host:port over TCP from `ns` and prints "sent N SHA256";
 * bounded by `seconds`.
 */
export async function tcpSend(ns: string, host: string, port: number, bytes: number, seconds: number): Promise<{ bytes: number; sha256: string }> {
  const code = `
const net = require('node:net');
const crypto = require('node:crypto');
const data = crypto.randomBytes(${bytes});
const sha = crypto.createHash('sha256').update(data).digest('hex');
setTimeout(() => { console.error('timed out'); process.exit(3); }, ${seconds * 1000}).unref();
const s = net.connect({ host: ${JSON.stringify(host)}, port: ${port} }, () => s.end(data));
s.on('data', () => {});
s.on('end', () => { console.log('sent ' + data.length + ' ' + sha); process.exit(0); });
s.on('error', (e) => { console.error(e.message); process.exit(2); });
`;
  const r = await runIn(ns, process.execPath, ['-e', code], (seconds + 5) * 1000);
  const m = /^sent (\d+) ([0-9a-f]{64})$/m.exec(r.stdout);
  if (r.code !== 0 || m === null) throw new Error(`tcp sender failed: ${describeResult(r)}`);
  return { bytes: Number(m[1]), sha256: m[2]! };
}

/**
 * Sends `count` numbered datagrams to host:port over UDP from `ns`, one at a time (each
 * waiting up to 2 s for its echo, one retry), and returns how many distinct echoes matched.
 */
export async function udpExchange(ns: string, host: string, port: number, count: number): Promise<number> {
  const code = `
const dgram = require('node:dgram');
const s = dgram.createSocket(${JSON.stringify(host.includes(':') ? 'udp6' : 'udp4')});
const got = new Set();
let i = 0, tries = 0, timer = null;
setTimeout(() => { console.log('echoes ' + got.size); process.exit(0); }, 30000).unref();
const next = () => {
  if (i >= ${count}) { console.log('echoes ' + got.size); process.exit(0); }
  const msg = Buffer.from('strata datagram ' + i + ' ' + 'x'.repeat(100 + i));
  s.send(msg, ${port}, ${JSON.stringify(host)});
  clearTimeout(timer);
  timer = setTimeout(() => { if (++tries > 1) { tries = 0; i++; } next(); }, 2000);
};
s.on('message', (m) => {
  if (m.toString() === 'strata datagram ' + i + ' ' + 'x'.repeat(100 + i)) { got.add(i); i++; tries = 0; next(); }
});
next();
`;
  const r = await runIn(ns, process.execPath, ['-e', code], 40_000);
  const m = /^echoes (\d+)$/m.exec(r.stdout);
  if (m === null) throw new Error(`udp client failed: ${describeResult(r)}`);
  return Number(m[1]);
}

/** `fetch(url)` from `ns`; returns "STATUS BODY". */
export async function fetchIn(ns: string, url: string, seconds = 15): Promise<string> {
  const code = `fetch(${JSON.stringify(url)}, { signal: AbortSignal.timeout(${seconds * 1000}) }).then(async (r) => console.log(r.status, await r.text())).catch((e) => { console.error(e.message); process.exit(1); })`;
  const r = await runIn(ns, process.execPath, ['-e', code], (seconds + 5) * 1000);
  if (r.code !== 0) throw new Error(`fetch ${url} failed: ${describeResult(r)}`);
  return r.stdout.trim();
}

export interface PingResult {
  transmitted: number;
  received: number;
  output: string;
}

/** `ping` from `ns`; `size` sets the payload size and forbids fragmentation at the sender. */
export async function pingIn(ns: string, dst: string, count = 3, size?: number): Promise<PingResult> {
  const args = [dst.includes(':') ? '-6' : '-4', '-n', '-c', String(count), '-i', '0.2', '-W', '2'];
  if (size !== undefined) args.push('-s', String(size), '-M', 'do');
  const r = await runIn(ns, 'ping', [...args, dst], (count * 0.2 + 10) * 1000);
  const m = /(\d+) packets transmitted, (\d+) received/.exec(r.stdout);
  return { transmitted: m ? Number(m[1]) : 0, received: m ? Number(m[2]) : 0, output: r.stdout + r.stderr };
}

// ---- what is left in the client namespace -----------------------------------------------------

export interface Leftovers {
  links: string[];
  rules: string[];
  /** Routes left in Strata's table (21317). */
  routes: string[];
  /** nftables tables (the client's fail-closed table, if it was left). */
  tables: string[];
  pids: string[];
}

export const CLEAN: Leftovers = { links: [], rules: [], routes: [], tables: [], pids: [] };

/** Tunnel links, Strata's policy rules and routes (table 21317), nftables tables and processes in a namespace. */
export async function leftovers(lab: Lab, ns: string): Promise<Leftovers> {
  const links = (await lab.exec(ns, 'ip', ['-o', 'link', 'show']))
    .split('\n')
    .map((l) => /^\d+:\s+([^:@]+)/.exec(l)?.[1] ?? '')
    .filter((n) => n !== '' && n !== 'lo' && n !== 'eth0');
  const rules = [
    ...(await lab.exec(ns, 'ip', ['-4', 'rule', 'show'])).split('\n'),
    ...(await lab.exec(ns, 'ip', ['-6', 'rule', 'show'])).split('\n'),
  ].filter((l) => /21317|2131[01]:|suppress_prefixlength/.test(l));
  const routes: string[] = [];
  for (const f of ['-4', '-6']) {
    // A table that was never made (or was flushed empty) is "FIB table does not exist".
    const r = await runIn(ns, 'ip', [f, 'route', 'show', 'table', '21317']);
    if (r.code !== 0 && !/table does not exist/.test(r.stderr)) throw new Error(`ip ${f} route show table 21317: ${describeResult(r)}`);
    routes.push(...r.stdout.split('\n').filter((l) => l.trim() !== ''));
  }
  const tables = (await lab.exec(ns, 'nft', ['list', 'tables'])).split('\n').filter((l) => l.trim() !== '');
  const pids = await nsPids(ns);
  return { links, rules, routes, tables, pids };
}

export async function nsPids(ns: string): Promise<string[]> {
  return new Promise((resolve) => {
    execFile('ip', ['netns', 'pids', ns], { timeout: 10_000 }, (err, stdout) => resolve(err ? [] : String(stdout).split(/\s+/).filter(Boolean)));
  });
}

/** Waits (up to `ms`) until the namespace holds no tunnel, rule or process. */
export async function waitClean(lab: Lab, ns: string, ms = 5000): Promise<Leftovers> {
  const deadline = Date.now() + ms;
  for (;;) {
    const l = await leftovers(lab, ns);
    const clean = l.links.length === 0 && l.rules.length === 0 && l.routes.length === 0 && l.tables.length === 0 && l.pids.length === 0;
    if (clean || Date.now() > deadline) return l;
    await sleep(100);
  }
}

// ---- captures --------------------------------------------------------------------------------

export interface Capture {
  name: string;
  link: string;
  file: string;
  proc: ChildProcess;
}

/**
 * Starts tcpdump on a host's router-side link (in the router namespace); waits until it listens.
 * --immediate-mode: without it, packets wait in a TPACKET_V3 ring block until the block fills
 * or times out, and a SIGINT before that loses them (a capture could miss the last packets).
 */
export async function startCapture(lab: Lab, dir: string, host: string, tag = ''): Promise<Capture> {
  const link = lab.host(host).link;
  const file = path.join(dir, `${host}${tag}.pcap`);
  const { proc } = await startTcpdump(lab, link, file, ['-s', '0', '-U']);
  return { name: host, link, file, proc };
}

/** Stops a capture with SIGINT and waits for tcpdump to exit (SIGKILL after 5 s). */
export async function stopCapture(c: Capture): Promise<void> {
  if (c.proc.exitCode !== null || c.proc.signalCode !== null) return;
  const exited = new Promise<void>((r) => c.proc.once('exit', () => r()));
  c.proc.kill('SIGINT');
  const done = await Promise.race([exited.then(() => true), sleep(5000).then(() => false)]);
  if (!done) {
    c.proc.kill('SIGKILL');
    await Promise.race([exited, sleep(2000)]);
  }
}

// ---- WireGuard messages in captured UDP ------------------------------------------------------

export interface WgMessage {
  type: 1 | 2 | 3 | 4;
  /** Identifiers that must not be seen on two segments: "eph:…", "idx:…". */
  ids: string[];
}

const hexOf = (b: Uint8Array): string => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');

/** A WireGuard message in a UDP payload (first byte 1..4, three zero bytes, a valid length). */
export function parseWg(p: CapturedPacket): WgMessage | null {
  if (p.protocol !== 17) return null;
  const d = p.payload;
  if (d.length < 4 || d[1] !== 0 || d[2] !== 0 || d[3] !== 0) return null;
  const t = d[0]!;
  if (t === 1 && d.length === 148) return { type: 1, ids: [`eph:${hexOf(d.subarray(8, 40))}`, `idx:${hexOf(d.subarray(4, 8))}`] };
  if (t === 2 && d.length === 92) {
    return { type: 2, ids: [`eph:${hexOf(d.subarray(12, 44))}`, `idx:${hexOf(d.subarray(4, 8))}`, `idx:${hexOf(d.subarray(8, 12))}`] };
  }
  if (t === 3 && d.length === 64) return { type: 3, ids: [`idx:${hexOf(d.subarray(4, 8))}`] };
  if (t === 4 && d.length >= 32 && d.length % 16 === 0) return { type: 4, ids: [`idx:${hexOf(d.subarray(4, 8))}`] };
  return null;
}

/** Whether `needle` occurs in `hay`. */
export function contains(hay: Uint8Array, needle: Uint8Array): boolean {
  return Buffer.from(hay.buffer, hay.byteOffset, hay.byteLength).indexOf(Buffer.from(needle)) >= 0;
}
