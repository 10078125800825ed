/**
 * Failover in a lab, shared by test/failover.test.ts and bench/failover.ts: a client, six
 * relays r1..r6 (each in its own namespace, every one entry, middle and exit capable, each with
 * its own country, provider and operator family, so any of r4..r6 may replace any hop) and a
 * web host. The client connects through r1,r2,r3 (entry, middle, exit); one of them is seized
 * (`Lab.seize`: SIGKILL to everything in its namespace, namespace deleted) while traffic flows.
 *
 *   middle / entry  a long HTTP download (40 MiB by default, sha256-checked) crosses the
 *                   seizure; the outage is the largest gap between received chunks
 *   exit            TCP connections to the web host cannot survive a new exit (new address),
 *                   so the outage is the time from the seizure to the first NEW connection
 *                   (opened after the seizure; attempts every 100 ms) that succeeds
 *
 * The client's router-side link is captured (tcpdump) from before `strata connect` to the
 * end, and every IP packet on it is classified by `checkTunnelOnly`.
 *
 * Safety: every process runs in a namespace of the Lab (killed by PID and through the
 * namespace at close); every child has a time limit; traffic goes only between the lab's
 * namespaces; nothing is configured in the host namespace.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { PrivateKey } from '../crypto/keys.ts';
import { relayListJson, type Relay } from '../cascade/relaylist.ts';
import { controlPath, request } from '../client/control.ts';
import type { ClientStatus, FailoverEvent } from '../client/daemon.ts';
import { Lab, memoryTempDir, type LabHost } from './lab.ts';
import { countPcapFrames, readPcap, startTcpdump, type CapturedPacket } from './pcap.ts';
import { startRelay, strataBin } from './procs.ts';

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
export const RELAY_PORT = 51820;
export const WEB_PORT = 80;
export const DEFAULT_DOWNLOAD_BYTES = 40 << 20;
/** The download must have this much before the seizure (so the seizure falls mid-transfer). */
const SEIZE_AFTER_BYTES = 8 << 20;

// ---- the web host -----------------------------------------------------------------------------

/**
 * The content the web host serves: a 1 MiB block (SHA-256 of "strata-failover-i" for
 * i = 0..32767, concatenated) repeated; both sides compute it, so the expected digest of any
 * prefix is known without asking the server.
 */
const PATTERN_JS = `(() => { const c = require('node:crypto'); const parts = []; for (let i = 0; i < 32768; i++) parts.push(c.createHash('sha256').update('strata-failover-' + i).digest()); return Buffer.concat(parts); })()`;

function patternBlock(): Buffer {
  const parts: Buffer[] = [];
  for (let i = 0; i < 32768; i++) parts.push(createHash('sha256').update(`strata-failover-${i}`).digest());
  return Buffer.concat(parts);
}

/** SHA-256 (hex) of the first `bytes` bytes the web host serves at /bytes/N. */
export function expectedSha256(bytes: number): string {
  const block = patternBlock();
  const h = createHash('sha256');
  for (let n = 0; n < bytes; n += block.length) h.update(block.subarray(0, Math.min(block.length, bytes - n)));
  return h.digest('hex');
}

/** GET /bytes/N: N pattern bytes (at most 256 MiB). GET anything else: "peer ADDRESS". */
const WEB_SERVER = `
const http = require('node:http');
const block = ${PATTERN_JS};
http.createServer((req, res) => {
  res.on('error', () => {});
  const m = /^\\/bytes\\/(\\d+)$/.exec(req.url);
  if (m !== null && Number(m[1]) <= 256 * 1048576) {
    const size = Number(m[1]);
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': size });
    let sent = 0;
    const pump = () => {
      while (sent < size) {
        const c = block.subarray(0, Math.min(block.length, size - sent));
        sent += c.length;
        if (!res.write(c)) return void res.once('drain', pump);
      }
      res.end();
    };
    pump();
    return;
  }
  res.writeHead(200, { 'content-type': 'text/plain' });
  res.end('peer ' + req.socket.remoteAddress.replace(/^::ffff:/, '') + '\\n');
}).listen(${WEB_PORT}, '::', () => console.log('ready'));
setTimeout(() => process.exit(0), 20 * 60 * 1000).unref();
`;

export async function startWeb(lab: Lab, host: string): Promise<ChildProcess> {
  const proc = lab.spawn(lab.host(host).ns, process.execPath, ['-e', WEB_SERVER]);
  await waitForLine(proc, (l) => l === 'ready', 15_000, `web server in ${host}`);
  return proc;
}

/** Resolves with the first stdout line `match` accepts; rejects on exit or after `ms`. */
export function waitForLine(proc: ChildProcess, match: (line: string) => boolean, ms: number, what: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let out = '';
    let err = '';
    const done = (f: () => void): void => {
      clearTimeout(timer);
      proc.stdout!.off('data', onOut);
      proc.off('exit', onExit);
      f();
    };
    const onOut = (d: Buffer): void => {
      out += d.toString();
      for (const l of out.split('\n').slice(0, -1)) if (match(l)) return done(() => resolve(l));
    };
    const onExit = (code: number | null): void => done(() => reject(new Error(`${what} exited (${code}): ${err.trim()}`)));
    const timer = setTimeout(() => done(() => reject(new Error(`${what}: nothing after ${ms} ms: ${err.trim()}`))), ms);
    proc.stdout!.on('data', onOut);
    proc.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    proc.once('exit', onExit);
  });
}

// ---- traffic from the client ------------------------------------------------------------------

export interface DownloadResult {
  done: boolean;
  error?: string;
  got: number;
  sha: string | null;
  /** The largest gap between two received chunks, and when it ended (epoch ms). */
  maxGapMs: number;
  gapEndMs: number;
  startMs: number;
  endMs: number;
}

export interface Download {
  proc: ChildProcess;
  /** Resolves once `bytes` have arrived. */
  reached(bytes: number, ms: number): Promise<void>;
  result: Promise<DownloadResult>;
}

/** An HTTP download of `bytes` from the web host, in `ns`, timing every chunk (hard limit `limitS`). */
export function startDownload(lab: Lab, ns: string, webV4: string, bytes: number, limitS = 90): Download {
  const code = `
const http = require('node:http');
const crypto = require('node:crypto');
const now = () => performance.timeOrigin + performance.now();
const h = crypto.createHash('sha256');
const startMs = now();
let last = null, maxGapMs = 0, gapEndMs = 0, got = 0, mark = 1048576;
const report = (o) => { console.log(JSON.stringify({ ...o, got, maxGapMs, gapEndMs, startMs, endMs: now() })); process.exit(o.done ? 0 : 1); };
const fail = (e) => report({ done: false, error: e.message, sha: null });
setTimeout(() => fail(new Error('timed out')), ${limitS * 1000}).unref();
const req = http.get({ host: ${JSON.stringify(webV4)}, port: ${WEB_PORT}, path: '/bytes/${bytes}', agent: false }, (res) => {
  res.on('data', (c) => {
    const t = now();
    if (last !== null && t - last > maxGapMs) { maxGapMs = t - last; gapEndMs = t; }
    last = t;
    got += c.length;
    h.update(c);
    while (got >= mark) { console.log('p ' + got); mark += 1048576; }
  });
  res.on('end', () => report({ done: got === ${bytes}, sha: h.digest('hex') }));
  res.on('error', fail);
});
req.on('error', fail);
`;
  const proc = lab.spawn(ns, process.execPath, ['-e', code]);
  let out = '';
  let err = '';
  let got = 0;
  const waiters: { bytes: number; resolve: () => void }[] = [];
  proc.stdout!.setEncoding('utf8').on('data', (d: string) => {
    out += d;
    for (const m of d.matchAll(/^p (\d+)$/gm)) got = Math.max(got, Number(m[1]));
    for (const w of waiters.splice(0)) {
      if (got >= w.bytes) w.resolve();
      else waiters.push(w);
    }
  });
  proc.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
  const result = new Promise<DownloadResult>((resolve) => {
    proc.once('exit', (code, signal) => {
      const line = out.split('\n').find((l) => l.startsWith('{'));
      if (line !== undefined) resolve(JSON.parse(line) as DownloadResult);
      else resolve({ done: false, error: `downloader exited (${code ?? signal}) without a result: ${err.trim()}`, got, sha: null, maxGapMs: NaN, gapEndMs: NaN, startMs: NaN, endMs: NaN });
    });
  });
  const reached = (bytes: number, ms: number): Promise<void> =>
    new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`download: ${bytes} bytes not reached in ${ms} ms (got ${got}; ${err.trim()})`)), ms);
      const ok = (): void => {
        clearTimeout(timer);
        resolve();
      };
      if (got >= bytes) return ok();
      waiters.push({ bytes, resolve: ok });
      void result.then(() => {
        clearTimeout(timer);
        if (got < bytes) reject(new Error(`download ended before ${bytes} bytes (got ${got})`));
      });
    });
  return { proc, reached, result };
}

export interface Attempt {
  ok: boolean;
  startMs: number;
  endMs: number;
  /** The address the web host saw (the exit's), for successful attempts. */
  peer: string | null;
}

export interface Prober {
  proc: ChildProcess;
  attempts: Attempt[];
  /**
   * The first successful attempt started at or after `t` (epoch ms) that `accept` takes,
   * waiting up to `ms`.
   */
  firstSuccessAfter(t: number, ms: number, accept?: (a: Attempt) => boolean): Promise<Attempt | null>;
  stop(): void;
}

/**
 * New TCP connections to the web host from `ns`: one HTTP GET (no connection reuse) started
 * every `everyMs`, each given `timeoutMs`; at most 20 at once. Bounded by `limitS`.
 */
export function startProber(lab: Lab, ns: string, webV4: string, everyMs = 100, timeoutMs = 1000, limitS = 60): Prober {
  const code = `
const http = require('node:http');
const now = () => performance.timeOrigin + performance.now();
let open = 0;
setTimeout(() => process.exit(0), ${limitS * 1000}).unref();
setInterval(() => {
  if (open >= 20) return;
  open++;
  const startMs = now();
  let settled = false;
  const end = (ok, peer) => { if (settled) return; settled = true; open--; console.log(JSON.stringify({ ok, startMs, endMs: now(), peer })); };
  const req = http.get({ host: ${JSON.stringify(webV4)}, port: ${WEB_PORT}, path: '/', agent: false, timeout: ${timeoutMs} }, (res) => {
    let body = '';
    res.setEncoding('utf8');
    res.on('data', (d) => (body += d));
    res.on('end', () => end(res.statusCode === 200, (/^peer (\\S+)/.exec(body) || [])[1] || null));
    res.on('error', () => end(false, null));
  });
  req.on('timeout', () => req.destroy(new Error('timeout')));
  req.on('error', () => end(false, null));
}, ${everyMs});
`;
  const proc = lab.spawn(ns, process.execPath, ['-e', code]);
  const attempts: Attempt[] = [];
  let buf = '';
  proc.stdout!.setEncoding('utf8').on('data', (d: string) => {
    buf += d;
    const lines = buf.split('\n');
    buf = lines.pop()!;
    for (const l of lines) if (l.startsWith('{')) attempts.push(JSON.parse(l) as Attempt);
  });
  proc.stderr!.resume();
  return {
    proc,
    attempts,
    async firstSuccessAfter(t, ms, accept = () => true) {
      const deadline = Date.now() + ms;
      for (;;) {
        const ok = attempts.filter((a) => a.ok && a.startMs >= t && accept(a)).sort((a, b) => a.endMs - b.endMs)[0];
        // Attempts end out of order; wait past the timeout so an earlier-ending one cannot still come.
        if (ok !== undefined && (Date.now() > ok.endMs + timeoutMs + 200 || proc.exitCode !== null)) return ok;
        if (Date.now() > deadline || proc.exitCode !== null) return ok ?? null;
        await sleep(50);
      }
    },
    stop() {
      proc.kill('SIGKILL');
    },
  };
}

// ---- captures ---------------------------------------------------------------------------------

export interface Capture {
  file: string;
  proc: ChildProcess;
  /** What tcpdump printed on stderr (its counts come at exit). */
  stderr(): string;
}

/** tcpdump's own count of packets the kernel dropped before it could read them (null: unknown). */
export function droppedByKernel(c: Capture): number | null {
  const m = /(\d+) packets? dropped by kernel/.exec(c.stderr());
  return m === null ? null : Number(m[1]);
}

/**
 * tcpdump on a host's router-side link (in the router namespace); resolves once it listens.
 * --immediate-mode hands every frame over at once (no ring block held back); the file is
 * flushed when tcpdump exits (stopCapture).
 */
export async function startCapture(lab: Lab, file: string, host: string): Promise<Capture> {
  // Headers are enough (256 B keeps an ICMP error's quoted packet); a 64 MiB kernel buffer and
  // no per-packet flush (-U) so a 40 MiB transfer is captured without drops.
  const { proc, stderr } = await startTcpdump(lab, lab.host(host).link, file, ['-s', '256', '-B', '65536']);
  return { file, proc, stderr };
}

/**
 * Waits until a host's IPv6 link plumbing is done: no tentative address on eth0, then 1.5 s
 * for the unsolicited MLD reports the kernel sends (twice, up to 1 s apart) once the
 * link-local address is usable. A capture started after this sees the host's own traffic only.
 */
export async function waitIpv6Settled(lab: Lab, host: string, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (/tentative/.test(await lab.exec(lab.host(host).ns, 'ip', ['-6', 'addr', 'show', 'dev', 'eth0']))) {
    if (Date.now() > deadline) throw new Error(`${host}: IPv6 addresses still tentative after ${ms} ms`);
    await sleep(100);
  }
  await sleep(1500);
}

/** SIGINT, then waits for tcpdump to flush and exit (SIGKILL after 5 s). */
export async function stopCapture(c: Capture): Promise<void> {
  if (c.proc.exitCode !== null || c.proc.signalCode !== null) return;
  const exited = new Promise<void>((r) => c.proc.once('exit', () => r()));
  c.proc.kill('SIGINT');
  if (!(await Promise.race([exited.then(() => true), sleep(5000).then(() => false)]))) {
    c.proc.kill('SIGKILL');
    await Promise.race([exited, sleep(2000)]);
  }
}

export interface LinkCheck {
  /** Frames in the capture (any kind), and the IP packets among them, all checked. */
  frames: number;
  /** Packets the kernel dropped before tcpdump read them (0 for a complete capture). */
  dropped: number | null;
  ipPackets: number;
  /** UDP between the client and a relay endpoint (port 51820), fragments included. */
  tunnel: number;
  /**
   * Of those, IPv4 fragments after the first (no UDP header of their own), each matched to a
   * first fragment of a tunnel datagram by source, destination and IP ID.
   */
  fragments: number;
  /** ICMPv6 router solicitation and neighbour discovery (types 133-136). */
  neighbour: number;
  /**
   * ICMP errors the router sent the client about one of the client's tunnel datagrams (e.g.
   * "network unreachable" once a seized relay's link is gone): inbound, generated by the
   * network, quoting a tunnel packet. Counted apart; not a leak.
   */
  routerErrors: number;
  routerErrorSamples: string[];
  /** Everything else: each one a packet that is not tunnel traffic. */
  violations: string[];
}

const describe = (p: CapturedPacket): string =>
  `${p.family === 4 ? 'IPv4' : 'IPv6'} proto ${p.protocol} ${p.src}${p.srcPort !== null ? `:${p.srcPort}` : ''} > ${p.dst}${p.dstPort !== null ? `:${p.dstPort}` : ''}` +
  (p.protocol === 1 || p.protocol === 58 ? ` type ${p.payload[0]} code ${p.payload[1]}` : '') +
  ` (${ipLength(p)} B)`;

/** The packet's length from its IP header (the capture keeps only the first 256 bytes). */
const ipLength = (p: CapturedPacket): number => (p.family === 4 ? (p.ip[2]! << 8) | p.ip[3]! : 40 + ((p.ip[4]! << 8) | p.ip[5]!));

/** The UDP packet an ICMP error quotes (after its 8-byte header), if it is client → relay:51820. */
function quotesTunnelPacket(p: CapturedPacket, client: LabHost, relayAddrs: ReadonlySet<string>): boolean {
  const q = p.payload.subarray(8);
  if (p.family === 4) {
    if (q.length < 28 || q[0]! >> 4 !== 4 || q[9] !== 17) return false;
    const l4 = (q[0]! & 15) * 4;
    const src = `${q[12]}.${q[13]}.${q[14]}.${q[15]}`;
    const dst = `${q[16]}.${q[17]}.${q[18]}.${q[19]}`;
    const dport = (q[l4 + 2]! << 8) | q[l4 + 3]!;
    return src === client.v4 && relayAddrs.has(dst) && dport === RELAY_PORT;
  }
  if (q.length < 48 || q[0]! >> 4 !== 6 || q[6] !== 17) return false;
  const inner = parseQuoted6(q);
  return inner !== null && inner.src === canon6(client.v6) && relayAddrs.has(inner.dst) && inner.dport === RELAY_PORT;
}

function parseQuoted6(q: Uint8Array): { src: string; dst: string; dport: number } | null {
  const hex = (o: number): string => {
    const words: string[] = [];
    for (let i = 0; i < 16; i += 2) words.push(((q[o + i]! << 8) | q[o + i + 1]!).toString(16));
    return words.join(':');
  };
  // Compared in canon6's form, as the lab's addresses are.
  return { src: canon6(hex(8)), dst: canon6(hex(24)), dport: (q[42]! << 8) | q[43]! };
}

function canon6(a: string): string {
  if (!a.includes(':')) return a;
  const [head, tail] = a.includes('::') ? a.split('::') as [string, string] : [a, null];
  const h = head === '' ? [] : head.split(':');
  const t = tail === null || tail === '' ? [] : tail.split(':');
  const words = tail === null ? h : [...h, ...new Array<string>(8 - h.length - t.length).fill('0'), ...t];
  return words.map((w) => parseInt(w, 16).toString(16)).join(':');
}

/**
 * Checks that every IP packet on the client's link is UDP between the client and a relay's
 * endpoint (any relay's v4 or v6 lab address, port 51820), apart from ICMPv6 router
 * solicitation / neighbour discovery and (counted apart) ICMP errors from the router quoting a
 * tunnel datagram.
 */
export function checkTunnelOnly(file: string, client: LabHost, relays: readonly LabHost[], dropped: number | null = null): LinkCheck {
  const relayAddrs = new Set<string>();
  for (const r of relays) {
    relayAddrs.add(r.v4);
    relayAddrs.add(canon6(r.v6));
  }
  const me = new Set([client.v4, canon6(client.v6)]);
  const routers = new Set([client.routerV4, canon6(client.routerV6)]);
  const packets = readPcap(file);
  const out: LinkCheck = {
    frames: countPcapFrames(file),
    dropped,
    ipPackets: packets.length,
    tunnel: 0,
    fragments: 0,
    neighbour: 0,
    routerErrors: 0,
    routerErrorSamples: [],
    violations: [],
  };
  // IPv4 datagrams (src>dst#id) whose first fragment is a tunnel datagram (the capture's
  // order of fragments is not relied on).
  const fragKeyOf = (p: CapturedPacket): string => `${canon6(p.src)}>${canon6(p.dst)}#${(p.ip[4]! << 8) | p.ip[5]!}`;
  const tunnelFragmented = new Set<string>();
  for (const p of packets) {
    const frag = p.family === 4 ? ((p.ip[6]! << 8) | p.ip[7]!) : 0;
    if (p.protocol !== 17 || (frag & 0x1fff) !== 0 || (frag & 0x2000) === 0) continue;
    const src = canon6(p.src);
    const dst = canon6(p.dst);
    if ((me.has(src) && relayAddrs.has(dst) && p.dstPort === RELAY_PORT) || (relayAddrs.has(src) && me.has(dst) && p.srcPort === RELAY_PORT)) {
      tunnelFragmented.add(fragKeyOf(p));
    }
  }
  for (const p of packets) {
    const src = canon6(p.src);
    const dst = canon6(p.dst);
    const frag = p.family === 4 ? ((p.ip[6]! << 8) | p.ip[7]!) : 0;
    const fragKey = fragKeyOf(p);
    if (p.family === 4 && (frag & 0x1fff) !== 0) {
      // A later fragment: its first bytes are payload, not a UDP header.
      if (p.protocol === 17 && tunnelFragmented.has(fragKey)) {
        out.tunnel++;
        out.fragments++;
      } else out.violations.push(`IPv4 fragment proto ${p.protocol} ${p.src} > ${p.dst} offset ${(frag & 0x1fff) * 8} (${ipLength(p)} B)`);
      continue;
    }
    if (p.protocol === 17) {
      const up = me.has(src) && relayAddrs.has(dst) && p.dstPort === RELAY_PORT;
      const down = relayAddrs.has(src) && me.has(dst) && p.srcPort === RELAY_PORT;
      if (up || down) {
        out.tunnel++;
        continue;
      }
    }
    if (p.family === 6 && p.protocol === 58 && p.payload.length > 0 && p.payload[0]! >= 133 && p.payload[0]! <= 136) {
      out.neighbour++;
      continue;
    }
    const icmpError = (p.protocol === 1 && (p.payload[0] === 3 || p.payload[0] === 11)) || (p.protocol === 58 && (p.payload[0] === 1 || p.payload[0] === 3));
    // An ICMP error about one of the client's own tunnel datagrams, from a router on the way or
    // from a relay's host (a relay's port closes as it is seized), is outer traffic of the tunnel.
    if (icmpError && (routers.has(src) || relayAddrs.has(src)) && me.has(dst) && quotesTunnelPacket(p, client, relayAddrs)) {
      out.routerErrors++;
      if (out.routerErrorSamples.length < 3) out.routerErrorSamples.push(describe(p));
      continue;
    }
    out.violations.push(describe(p));
  }
  return out;
}

// ---- the topology -----------------------------------------------------------------------------

export const RELAY_NAMES = ['r1', 'r2', 'r3', 'r4', 'r5', 'r6'] as const;
const COUNTRIES = ['IS', 'CH', 'SE', 'RO', 'NL', 'DE'];

export interface FailoverBed {
  lab: Lab;
  dir: string;
  runDir: string;
  list: string;
  relays: Relay[];
  client: LabHost;
  web: LabHost;
  relayHosts: LabHost[];
  /** Runs `strata connect` in the client namespace (detaches); throws with its output on failure. */
  connect(pathNames: readonly string[], extra?: readonly string[]): Promise<string>;
  status(): Promise<ClientStatus>;
  close(): Promise<void>;
}

/** Lab with client, r1..r6 (running `strata relay --exit` from one relay list) and web. */
export async function createBed(): Promise<FailoverBed> {
  const dir = memoryTempDir('strata-failover-');
  fs.chmodSync(dir, 0o700);
  let lab: Lab;
  try {
    lab = await Lab.create(['client', ...RELAY_NAMES, 'web']);
  } catch (e) {
    fs.rmSync(dir, { recursive: true, force: true });
    throw e;
  }
  const keys = RELAY_NAMES.map(() => PrivateKey.generate());
  const runDir = path.join(dir, 'run');
  const bed: FailoverBed = {
    lab,
    dir,
    runDir,
    list: path.join(dir, 'relays.json'),
    relays: RELAY_NAMES.map((n, i) => ({
      name: n,
      country: COUNTRIES[i]!,
      publicKey: keys[i]!.publicKey(),
      endpoints: [{ address: lab.host(n).v4, port: RELAY_PORT, family: 'IPv4' as const }],
      roles: ['entry', 'middle', 'exit'] as const,
      provider: `provider-${i + 1}`,
      family: `family-${i + 1}`,
      capacity: 1,
      kind: 'strata' as const,
    })),
    client: lab.host('client'),
    web: lab.host('web'),
    relayHosts: RELAY_NAMES.map((n) => lab.host(n)),
    async connect(pathNames, extra = []) {
      try {
        return await lab.exec(bed.client.ns, strataBin(), ['connect', '--relays', bed.list, '--path', pathNames.join(','), '--run-dir', runDir, ...extra], 60_000);
      } catch (e) {
        const x = e as { stdout?: string; stderr?: string; message: string };
        throw new Error(`strata connect failed: ${x.stderr?.trim() || x.message}`);
      }
    },
    async status() {
      return (await request(controlPath(runDir), 'status', 5000)) as ClientStatus;
    },
    async close() {
      try {
        await lab.close();
      } finally {
        for (const k of keys) k.wipe();
        fs.rmSync(dir, { recursive: true, force: true });
      }
    },
  };
  try {
    fs.writeFileSync(bed.list, relayListJson(bed.relays), { mode: 0o600 });
    await Promise.all(RELAY_NAMES.map((n, i) => startRelay(lab, lab.host(n).ns, bed.list, keys[i]!, true)));
    await startWeb(lab, 'web');
  } catch (e) {
    await bed.close();
    throw e;
  }
  return bed;
}

// ---- the scenarios ----------------------------------------------------------------------------

export type LossKind = 'entry' | 'middle' | 'exit';
export const PATH = ['r1', 'r2', 'r3'] as const;
export const SEIZED: Record<LossKind, string> = { entry: 'r1', middle: 'r2', exit: 'r3' };

export interface LossResult {
  kind: LossKind;
  seized: string;
  bytes: number;
  expectedSha: string;
  download: DownloadResult;
  /** middle/entry: the largest gap in received data; exit: seizure → first new connection. */
  outageMs: number;
  /** Where the largest gap ended, relative to the seizure (ms). */
  gapEndAfterSeizureMs: number;
  /** How long `Lab.seize` took (SIGKILL, namespace deleted). */
  seizeMs: number;
  newConnection: Attempt | null;
  newConnectionMs: number | null;
  event: FailoverEvent | null;
  status: ClientStatus;
  capture: LinkCheck | null;
  /** Each relay's lab address (what the web host sees when it is the exit). */
  relayV4: Record<string, string>;
}

export interface LossOptions {
  bytes?: number;
  capture?: boolean;
  log?: (line: string) => void;
  /** Called with the bed once it exists (e.g. to tear it down from a signal handler). */
  onBed?: (bed: FailoverBed) => void;
}

/**
 * One seizure of the path's `kind` hop while traffic flows, on a fresh bed; the bed is torn
 * down before this returns.
 */
export async function runLoss(kind: LossKind, o: LossOptions = {}): Promise<LossResult> {
  const bytes = o.bytes ?? DEFAULT_DOWNLOAD_BYTES;
  const log = o.log ?? (() => {});
  const expectedSha = expectedSha256(bytes);
  const bed = await createBed();
  o.onBed?.(bed);
  let cap: Capture | null = null;
  try {
    const { lab } = bed;
    if (o.capture === true) {
      await waitIpv6Settled(lab, 'client');
      cap = await startCapture(lab, path.join(bed.dir, 'client.pcap'), 'client');
    }
    await bed.connect(PATH);
    const dl = startDownload(lab, bed.client.ns, bed.web.v4, bytes);
    const prober = kind === 'exit' ? startProber(lab, bed.client.ns, bed.web.v4) : null;
    await dl.reached(SEIZE_AFTER_BYTES, 30_000);
    const seized = SEIZED[kind];
    const seizedV4 = lab.host(seized).v4;
    const t = Date.now();
    await lab.seize(seized);
    const gone = Date.now();
    log(`${kind}: seized ${seized} after ${SEIZE_AFTER_BYTES >> 20} MiB (the seizure took ${gone - t} ms)`);
    let newConnection: Attempt | null = null;
    if (prober !== null) {
      // A connection opened once the exit is gone, answered through another exit; timed from
      // the start of the seizure.
      newConnection = await prober.firstSuccessAfter(gone, 10_000, (a) => a.peer !== seizedV4);
      prober.stop();
      // The download's TCP connection went through the old exit's address: it cannot survive.
      dl.proc.kill('SIGKILL');
    }
    const download = await dl.result;
    // The event is complete once the replacement hop is up.
    let status = await bed.status();
    for (let i = 0; i < 50 && !status.failovers.some((f) => f.failed === seized && f.restoredAfterMs !== null); i++) {
      await sleep(100);
      status = await bed.status();
    }
    if (cap !== null) await stopCapture(cap);
    const event = status.failovers.find((f) => f.failed === seized) ?? null;
    const newConnectionMs = newConnection === null ? null : Math.round(newConnection.endMs - t);
    return {
      kind,
      seized,
      bytes,
      expectedSha,
      download,
      outageMs: kind === 'exit' ? (newConnectionMs ?? NaN) : Math.round(download.maxGapMs),
      gapEndAfterSeizureMs: Math.round(download.gapEndMs - t),
      seizeMs: gone - t,
      newConnection,
      newConnectionMs,
      event,
      status,
      capture: cap === null ? null : checkTunnelOnly(cap.file, bed.client, bed.relayHosts, droppedByKernel(cap)),
      relayV4: Object.fromEntries(bed.relayHosts.map((h) => [h.name, h.v4])),
    };
  } finally {
    if (cap !== null) await stopCapture(cap);
    await bed.close();
  }
}

export function median(xs: readonly number[]): number {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const m = s.length >> 1;
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}
