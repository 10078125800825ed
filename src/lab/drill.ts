/**
 * The seizure drill: a 3-hop cascade carries traffic marked with canaries (the client's
 * address, the destination, a payload marker, the client's per-hop keys); then every relay is
 * "seized" — its whole process memory (/proc/PID/mem), a heap snapshot, every file it wrote,
 * its logs and its metrics — once while the client is connected, and again after the client
 * disconnected and the relays' keys expired (540 s, run faster by the test-only time scale).
 * The report says which canary was found where.
 */
import { closeSync, openSync, readFileSync, readSync, readdirSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import type { ChildProcess } from 'node:child_process';
import { PrivateKey } from '../crypto/keys.ts';
import { StrataError } from '../crypto/errors.ts';
import { relayListJson, type Relay } from '../cascade/relaylist.ts';
import type { ClientStatus } from '../client/daemon.ts';
import { parseIP } from '../wireguard/ip.ts';
import { Lab, labUnavailable, memoryTempDir } from './lab.ts';
import { strataBin } from './procs.ts';

export type Canary = 'client-address' | 'destination' | 'payload-marker' | 'client-key';
export type Place = 'memory' | 'heap-snapshot' | 'files' | 'logs' | 'metrics';
export type Role = 'entry' | 'middle' | 'exit';
export const ROLES: readonly Role[] = ['entry', 'middle', 'exit'];

export interface Finding {
  relay: Role;
  canary: Canary;
  place: Place;
  count: number;
}

export interface Seizure {
  relay: Role;
  findings: Finding[];
  memoryBytes: number;
  /** Bytes the relay caused to be written to storage (/proc/PID/io write_bytes). */
  diskBytesWritten: number;
  /** Regular files the relay holds open for writing. */
  filesWritten: string[];
  /** Everything the relay printed (stdout less heap snapshots, and stderr) and its metrics page. */
  output: string;
  metrics: string;
}

export interface DrillReport {
  before: Seizure[];
  after: Seizure[];
  expirySeconds: number;
}

interface RelayProc {
  role: Role;
  ns: string;
  child: ChildProcess;
  pid: number;
  logs: string;
  stdout: Buffer[];
  /** stdout before the first heap snapshot was asked for. */
  printed: string;
  metricsPort: number;
}

const METRICS_PORT = 9464;

function needlesOf(text: string, raw: Uint8Array | null): Buffer[] {
  const out = [Buffer.from(text)];
  if (raw !== null) out.push(Buffer.from(raw));
  return out;
}

function count(hay: Buffer | string, needles: readonly Buffer[]): number {
  const b = typeof hay === 'string' ? Buffer.from(hay) : hay;
  let n = 0;
  for (const needle of needles) for (let i = b.indexOf(needle); i >= 0; i = b.indexOf(needle, i + 1)) n++;
  return n;
}

/** Reads every readable, non-file-backed mapping of a process. */
function memoryImage(pid: number, visit: (chunk: Buffer) => void): number {
  const maps = readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n').filter(Boolean);
  const fd = openSync(`/proc/${pid}/mem`, 'r');
  let total = 0;
  try {
    for (const line of maps) {
      const [range, perms, , , inode, file] = line.split(/\s+/);
      if (!perms!.startsWith('r')) continue;
      // Program code and libraries mapped from files are the same on every machine.
      if (inode !== '0' && file !== undefined && file.startsWith('/')) continue;
      const [a, b] = range!.split('-').map((x) => parseInt(x, 16)) as [number, number];
      // 64 MiB at a time, overlapping by 64 bytes so a canary across a boundary is found.
      for (let at = a; at < b; at += (64 << 20) - 64) {
        const len = Math.min(64 << 20, b - at);
        const buf = Buffer.alloc(len);
        try {
          const n = readSync(fd, buf, 0, len, at);
          total += n;
          visit(buf.subarray(0, n));
          if (at + len >= b) break;
        } catch {
          break; // unreadable (guard pages, vsyscall)
        }
      }
    }
  } finally {
    closeSync(fd);
  }
  return total;
}

function filesOpenForWriting(pid: number): string[] {
  const out: string[] = [];
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    let target: string;
    try {
      target = readlinkSync(`/proc/${pid}/fd/${fd}`);
    } catch {
      continue;
    }
    if (!target.startsWith('/') || target.startsWith('/dev/') || target.startsWith('/proc/')) continue;
    const flags = /flags:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8'))?.[1] ?? '0';
    if ((parseInt(flags, 8) & 3) !== 0) out.push(target); // O_WRONLY or O_RDWR
  }
  return out;
}

function diskWrites(pid: number): number {
  return Number(/write_bytes:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/io`, 'utf8'))?.[1] ?? NaN);
}

/** A relay's stdout without the heap snapshots it streamed (framed "HEAPSNAPSHOT <bytes>\n"). */
function withoutSnapshots(out: Buffer): string {
  let text = '';
  let at = 0;
  for (;;) {
    const head = out.indexOf('HEAPSNAPSHOT ', at);
    if (head < 0) return text + out.subarray(at).toString();
    const nl = out.indexOf('\n', head);
    text += out.subarray(at, head).toString();
    at = nl + 1 + Number(out.subarray(head + 13, nl).toString()) + 1;
  }
}

async function heapSnapshot(r: RelayProc): Promise<Buffer> {
  r.printed += withoutSnapshots(Buffer.concat(r.stdout));
  r.stdout.length = 0;
  process.kill(r.pid, 'SIGUSR2');
  const deadline = Date.now() + 30_000;
  for (;;) {
    const all = Buffer.concat(r.stdout);
    const head = all.indexOf('HEAPSNAPSHOT ');
    if (head >= 0) {
      const nl = all.indexOf('\n', head);
      const len = Number(all.subarray(head + 13, nl).toString());
      if (all.length >= nl + 1 + len) return all.subarray(nl + 1, nl + 1 + len);
    }
    if (Date.now() > deadline) throw new StrataError('ERR_DRILL', `no heap snapshot from the ${r.role} relay`);
    await new Promise((res) => setTimeout(res, 50));
  }
}

async function seize(lab: Lab, r: RelayProc, canaries: Map<Canary, Buffer[]>): Promise<Seizure> {
  const findings: Finding[] = [];
  const add = (canary: Canary, place: Place, n: number): void => {
    if (n > 0) findings.push({ relay: r.role, canary, place, count: n });
  };
  const diskBytesWritten = diskWrites(r.pid);
  const filesWritten = filesOpenForWriting(r.pid);
  const mem = new Map<Canary, number>();
  const memoryBytes = memoryImage(r.pid, (chunk) => {
    for (const [c, needles] of canaries) mem.set(c, (mem.get(c) ?? 0) + count(chunk, needles));
  });
  for (const [c, n] of mem) add(c, 'memory', n);
  const heap = await heapSnapshot(r);
  for (const [c, needles] of canaries) add(c, 'heap-snapshot', count(heap, needles));
  for (const f of filesWritten) {
    let content: Buffer;
    try {
      content = readFileSync(f);
    } catch {
      continue;
    }
    for (const [c, needles] of canaries) add(c, 'files', count(content, needles));
  }
  for (const [c, needles] of canaries) add(c, 'logs', count(r.logs, needles));
  const metrics = await lab.exec(r.ns, process.execPath, [
    '-e',
    `fetch('http://127.0.0.1:${r.metricsPort}/metrics').then((x) => x.text()).then((t) => process.stdout.write(t))`,
  ]);
  for (const [c, needles] of canaries) add(c, 'metrics', count(metrics, needles));
  const printed = withoutSnapshots(Buffer.concat(r.stdout));
  return { relay: r.role, findings, memoryBytes, diskBytesWritten, filesWritten, output: r.printed + printed + r.logs, metrics };
}

async function clientsOf(lab: Lab, r: RelayProc): Promise<number> {
  const t = await lab.exec(r.ns, process.execPath, [
    '-e',
    `fetch('http://127.0.0.1:${r.metricsPort}/metrics').then((x) => x.text()).then((t) => process.stdout.write(t))`,
  ]);
  return Number(/^strata_relay_clients (\d+)/m.exec(t)?.[1] ?? NaN);
}

export interface DrillOptions {
  timeScale?: number;
  say?: (line: string) => void;
}

export async function runDrill(o: DrillOptions = {}): Promise<DrillReport> {
  const say = o.say ?? (() => {});
  const scale = o.timeScale ?? 100;
  const why = await labUnavailable();
  if (why !== null) throw new StrataError('ERR_DRILL_UNAVAILABLE', `the drill ${why}`);
  const names = ['r1', 'r2', 'r3'];
  const lab = await Lab.create(['client', ...names, 'web']);
  const dir = memoryTempDir('strata-drill-');
  const procs: RelayProc[] = [];
  try {
    const keys = names.map(() => PrivateKey.generate());
    const relays: Relay[] = names.map((name, i) => ({
      name,
      country: ['IS', 'CH', 'SE'][i]!,
      publicKey: keys[i]!.publicKey(),
      endpoints: [{ address: lab.host(name).v4, port: 51820, family: 'IPv4' }],
      roles: [['entry', 'middle', 'exit'][i] as Role],
      provider: `hoster-${i}`,
      family: `operator-${i}`,
      capacity: 1,
      kind: 'strata',
    }));
    const list = path.join(dir, 'relays.json');
    writeFileSync(list, relayListJson(relays));
    for (const [i, name] of names.entries()) {
      const role = ROLES[i]!;
      const args = ['relay', '--relays', list, '--metrics', String(METRICS_PORT), '--test-time-scale', String(scale)];
      if (role === 'exit') args.push('--exit');
      const child = lab.spawn(lab.host(name).ns, strataBin(), args, {
        ...process.env,
        STRATA_PRIVATE_KEY: keys[i]!.toBase64(),
        STRATA_TEST_MODE: '1',
      });
      const r: RelayProc = { role, ns: lab.host(name).ns, child, pid: child.pid!, logs: '', stdout: [], printed: '', metricsPort: METRICS_PORT };
      child.stderr!.on('data', (d: Buffer) => (r.logs += d.toString()));
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new StrataError('ERR_DRILL', `the ${role} relay did not start: ${r.logs.trim()}`)), 15_000);
        child.stdout!.on('data', (d: Buffer) => {
          r.stdout.push(d);
          if (Buffer.concat(r.stdout).includes('relay ready')) {
            clearTimeout(timer);
            resolve();
          }
        });
        child.once('exit', (code) => reject(new StrataError('ERR_DRILL', `the ${role} relay exited (${code}): ${r.logs.trim()}`)));
      });
      procs.push(r);
    }
    for (const k of keys) k.wipe();
    const marker = `STRATA-CANARY-${randomBytes(8).toString('hex')}`;
    const web = lab.spawn(lab.host('web').ns, process.execPath, [
      '-e',
      `require('node:http').createServer((q, s) => { let b = ''; q.on('data', (d) => (b += d)); q.on('end', () => s.end('echo ' + q.url + ' ' + b)); }).listen(80, '::', () => console.log('up'))`,
    ]);
    await new Promise((res) => web.stdout!.once('data', res));

    const client = lab.host('client');
    const webHost = lab.host('web');
    const runDir = path.join(dir, 'run');
    say('connecting a 3-hop cascade (entry r1, middle r2, exit r3)');
    await lab.exec(client.ns, strataBin(), ['connect', '--relays', list, '--path', names.join(','), '--run-dir', runDir], 60_000);
    const status = JSON.parse(await lab.exec(client.ns, strataBin(), ['status', '--json', '--run-dir', runDir])) as ClientStatus;
    // Traffic carrying the marker to the destination, over IPv4 and IPv6.
    for (const host of [webHost.v4, `[${webHost.v6}]`]) {
      await lab.exec(client.ns, process.execPath, [
        '-e',
        `fetch('http://${host}/${marker}', { method: 'POST', body: '${marker}' }).then((r) => r.text()).then((t) => { if (!t.includes('${marker}')) process.exit(1); })`,
      ]);
    }
    await lab.exec(client.ns, 'ping', ['-c', '3', '-i', '0.2', webHost.v4]);

    const canaries = new Map<Canary, Buffer[]>([
      // A 4-byte IPv4 address would match by chance in a ~600 MB image (about 15%), so IPv4
      // addresses are sought as text; IPv6 ones as text and as their 16 bytes.
      ['client-address', [...needlesOf(client.v4, null), ...needlesOf(client.v6, parseIP(client.v6))]],
      ['destination', [...needlesOf(webHost.v4, null), ...needlesOf(webHost.v6, parseIP(webHost.v6))]],
      ['payload-marker', [Buffer.from(marker)]],
      ['client-key', status.hops.flatMap((h) => needlesOf(h.publicKey, new Uint8Array(Buffer.from(h.publicKey, 'base64'))))],
    ]);

    say('seizing every relay while the client is connected');
    const before: Seizure[] = [];
    for (const r of procs) before.push(await seize(lab, r, canaries));

    await lab.exec(client.ns, strataBin(), ['disconnect', '--run-dir', runDir]);
    // The relays' clocks speed up only now, so the "before" seizure saw live sessions.
    for (const r of procs) process.kill(r.pid, 'SIGHUP');
    const expiry = 540 / scale;
    say(`client disconnected; waiting for the relays' keys to expire (540 s of relay time, ${expiry.toFixed(1)} s here)`);
    const deadline = Date.now() + (expiry + 30) * 1000;
    for (;;) {
      const left = await Promise.all(procs.map((r) => clientsOf(lab, r)));
      if (left.every((n) => n === 0)) break;
      if (Date.now() > deadline) throw new StrataError('ERR_DRILL', `clients still held after expiry: ${left.join(', ')}`);
      await new Promise((res) => setTimeout(res, 250));
    }
    await new Promise((res) => setTimeout(res, 500)); // the zeroing collection runs 50 ms after expiry
    say('seizing every relay after expiry');
    const after: Seizure[] = [];
    for (const r of procs) after.push(await seize(lab, r, canaries));
    return { before, after, expirySeconds: expiry };
  } finally {
    await lab.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

export function formatSeizures(title: string, seizures: readonly Seizure[]): string {
  const lines = [title];
  for (const s of seizures) {
    const found = s.findings.length === 0 ? 'no canary' : s.findings.map((f) => `${f.canary} in ${f.place} (${f.count})`).join(', ');
    lines.push(
      `  ${s.relay.padEnd(6)} ${found}; ${Math.round(s.memoryBytes / 1e6)} MB of memory read; ${s.diskBytesWritten} bytes written to disk; ${s.filesWritten.length} files written`,
    );
  }
  return lines.join('\n');
}
