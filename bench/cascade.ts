/**
 * bench:cascade — a Strata cascade against nested wireguard-go chains, end to end, on the
 * same namespace topology, for 3 and 5 hops.
 *
 * Topology (the line of tools/wireguard-go-baseline.sh phase D, identical for both and for
 * the no-tunnel reference): namespaces cli, r1..rN, dst in a line, one veth per link,
 *
 *   cli 10.0.1.1 ── 10.0.1.2 r1 10.0.2.1 ── 10.0.2.2 r2 … rN 10.0.N+1.1 ── 10.0.N+1.2 dst
 *
 * relays forwarding, r2..rN with a default route back toward cli and dst one toward rN
 * (the baseline's static return routes, MASQ=0). On it, per round and hop count:
 *
 *   direct        no tunnel: cli and r1..rN-1 route 10.0.N+1.0/24 hop by hop (kernel
 *                 forwarding); ping only, the reference for "added RTT per hop"
 *   strata        `strata relay` in each ri (rN with --exit: TUN + masquerade toward dst)
 *                 from a relay list naming ri at 10.0.i.2:51820, and
 *                 `strata connect --relays F --path r1,…,rN --run-dir D --foreground` in cli;
 *                 relays run exactly as bin/strata starts them (so confined, if it confines
 *                 them); keys, relay list and run directory sit on a tmpfs of the bench's own
 *                 mount namespace (a relay reads its list only from memory)
 *   wireguard-go  phase D exactly: wgr_i in ri (10.10.i.1/24) and wgc_i in cli (10.10.i.2/24),
 *                 MTU 1500-80i; wgc_i carries the next relay's endpoint (the last one
 *                 10.0.N+1.0/24), so cli's packets are WireGuard inside WireGuard N deep
 *
 * and measures from cli to dst (10.0.N+1.2) through the cascade:
 *
 *   TCP           iperf3 -t DUR -P 1, receiver throughput (end.sum_received), after a WARMUP s run
 *   RTT           ping -c PINGN -i 0.02, median
 *   CPU           per process during the TCP run, % of one core: the client (for wireguard-go
 *                 the N daemons in cli together) and each relay; for Strata's Node processes
 *                 also their main (JavaScript) thread
 *
 * Rounds alternate the order (strata, wireguard-go; then wireguard-go, strata; …); each
 * instance is torn down before the next is built, so only one runs at a time. Values in the
 * summary are means over the rounds; "added RTT per hop" = (RTT at N hops - direct RTT on the
 * same N-hop line) / N. The last line is the 3-hop throughput ratio strata / wireguard-go.
 *
 * Noise care, isolation and safety as bench/wg.ts (helpers in bench/common.ts): a private
 * mount namespace with a fresh /run; before every load run the host must be quiet (< IDLE_MAX %
 * busy, waiting <= WAIT_IDLE s); a TCP run during which other processes used more than
 * FOREIGN_MAX % of a core is repeated (<= RETRIES). Nothing is created in the host network
 * namespace; traffic goes only between namespaces made here; every child runs under
 * timeout(1); all are stopped by PID and the namespaces deleted on exit, error and signals.
 *
 * PROF=1: CPU profiles of the Strata client and relays over each measured TCP run (a preload
 * given through NODE_OPTIONS starts and stops the V8 profiler on SIGUSR2 and writes to an
 * inherited descriptor: the daemons exit with _exit, so --cpu-prof would write nothing, and
 * relays may not write files). The report then lists, per process, the functions with the
 * most self time (native calls by their JavaScript caller); the profiles are kept (prof/*.ndjson,
 * one V8 .cpuprofile per line).
 *
 * Env knobs: RUNS=2 DUR=10 PINGN=200 WARMUP=3 HOPS="3 5" WAIT_IDLE=60 IDLE_MAX=10
 *            FOREIGN_MAX=15 RETRIES=2 WG_LOG=error KEEP=0 PROF=0 PROF_TOP=12
 *            STRATA=bin/strata (another strata build to measure).
 * Requires root, wireguard-go, wg, iperf3, ping, ip, nft, sysctl, ss, unshare, mount, timeout,
 * /dev/net/tun. Exit: 0 ok, 1 a measurement failed, 2 precondition missing, 130 interrupted.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { ioBackend } from '../src/io/index.ts';
import {
  Aborted,
  beginAbort,
  delns,
  enterIsolation,
  envInt,
  f1,
  f3,
  firstLine,
  fr,
  genkey as genkeyIn,
  innerPid,
  iperfRun,
  isAborting,
  isolationVars,
  list,
  log,
  mean,
  mkns,
  must,
  nsx,
  ourNamespaces,
  pingRun,
  precondition,
  procSnapshot,
  topBetween,
  preflight,
  reexecIsolated,
  run,
  setBenchName,
  start,
  stop,
  stopAll,
  waitIperfListening,
  waitQuiet as waitQuietFor,
  type IperfSample,
  type Proc,
} from './common.ts';

// ------------------------------------------------------------------ configuration
setBenchName('bench:cascade');

const RUNS = envInt('RUNS', 2, 1, 100);
const DUR = envInt('DUR', 10, 1, 300);
const PINGN = envInt('PINGN', 200, 1, 2000);
const WARMUP = envInt('WARMUP', 3, 0, 60);
const WAIT_IDLE = envInt('WAIT_IDLE', 60, 0, 600);
const IDLE_MAX = envInt('IDLE_MAX', 10, 1, 100);
const FOREIGN_MAX = envInt('FOREIGN_MAX', 15, 1, 10000);
const RETRIES = envInt('RETRIES', 2, 0, 10);
const PROF = envInt('PROF', 0, 0, 1) === 1;
const PROF_TOP = envInt('PROF_TOP', 12, 1, 100);
const WG_LOG = process.env.WG_LOG ?? 'error';
const KEEP = process.env.KEEP === '1';
const HOPS: readonly number[] = (() => {
  const raw = (process.env.HOPS ?? '').trim() || '3 5';
  const hs = raw.split(/[\s,]+/).map(Number);
  if (hs.some((h) => !Number.isInteger(h) || h < 1 || h > 5) || new Set(hs).size !== hs.length) {
    precondition(`HOPS=${raw}: expected distinct hop counts from 1 to 5, e.g. "3 5"`);
  }
  return hs;
})();

const ROOT = path.resolve(import.meta.dirname, '..');
const STRATA_BIN = path.resolve(process.env.STRATA || path.join(ROOT, 'bin', 'strata'));
const VARS = isolationVars('STRATA_BENCH_CASCADE');
const TOOLS = ['wireguard-go', 'wg', 'iperf3', 'ping', 'ip', 'nft', 'sysctl', 'ss', 'unshare', 'mount', 'timeout'];
const RELAY_PORT = 51820;
const COUNTRIES = ['IS', 'CH', 'SE', 'RO', 'NL'];
const NCPU = os.cpus().length;

type Kind = 'direct' | 'strata' | 'wggo';
type ImplId = Exclude<Kind, 'direct'>;
const IMPLS: readonly { id: ImplId; name: string; tag: string }[] = [
  { id: 'strata', name: 'strata', tag: 's' },
  { id: 'wggo', name: 'wireguard-go (nested)', tag: 'w' },
];

// Addresses on the line; only inside namespaces made here.
const linkLeft = (i: number): string => `10.0.${i}.1`;
const linkRight = (i: number): string => `10.0.${i}.2`;
const dstAddr = (hops: number): string => linkRight(hops + 1);

// ------------------------------------------------------------------ outer process
/** Upper bound on how long one instance (a line plus one implementation) lives. */
function instanceLifetimeS(hops: number): number {
  const tcpRun = WAIT_IDLE + 3 + DUR + 40 + (PROF ? 10 : 0);
  return 120 + 40 * hops + (WARMUP > 0 ? WARMUP + 40 : 0) + (RETRIES + 1) * tcpRun + WAIT_IDLE + 3 + PINGN * 0.02 + 20;
}

async function outer(): Promise<never> {
  preflight(TOOLS, () => {
    try {
      fs.accessSync(STRATA_BIN, fs.constants.X_OK);
    } catch {
      precondition(`missing or not executable: ${STRATA_BIN}`);
    }
  });
  const perRound = HOPS.reduce((a, h) => a + 3 * instanceLifetimeS(h), 0);
  return reexecIsolated({
    script: import.meta.filename,
    vars: VARS,
    tmpPrefix: 'strata-bench-cascade-',
    dirs: ['keys', 'logs', 'strata', 'prof'],
    budgetS: RUNS * perRound + 120,
    keep: KEEP || PROF,
    keptNote: PROF ? 'CPU profiles under prof/, daemon logs under logs/' : 'daemon and iperf3 logs under logs/',
  });
}

// ------------------------------------------------------------------ inner process: topology
let BASE = '';

const waitQuiet = (): Promise<number> => waitQuietFor(WAIT_IDLE, IDLE_MAX);
const genkey = (name: string): Promise<{ key: string; pub: string }> => genkeyIn(path.join(BASE, 'keys'), name);

interface Daemon {
  proc: Proc;
  /** 'client' or 'r1'..'rN': the process group its CPU counts under. */
  group: string;
  /** A Node process (its main thread's CPU is reported too). */
  node: boolean;
}

interface Chain {
  kind: Kind;
  hops: number;
  round: number;
  id: string;
  cli: string;
  relays: string[];
  dst: string;
  daemons: Daemon[];
  procs: Proc[];
  /** The MTU of the innermost tunnel (what TCP in cli sees), or 1500 with no tunnel. */
  mtu: number;
}

let current: Chain | null = null;

function logFile(name: string): string {
  return path.join(BASE, 'logs', name);
}

/**
 * Start a long-running process whose output goes to a log file; its inner PID is resolved.
 * `extraFd` (closed here once handed over) becomes the child's descriptor 3.
 */
async function startLogged(args: string[], label: string, logName: string, env?: NodeJS.ProcessEnv, extraFd: number | null = null): Promise<Proc> {
  const fd = fs.openSync(logFile(logName), 'a');
  let p: Proc;
  try {
    p = start(args[0]!, args.slice(1), instanceLifetimeS(5), label, extraFd === null ? ['ignore', fd, fd] : ['ignore', fd, fd, extraFd], env);
  } finally {
    fs.closeSync(fd);
    if (extraFd !== null) fs.closeSync(extraFd);
  }
  p.inner = await innerPid(p);
  return p;
}

/** Wait until a log file matches `re` (true), or the process is gone or timeoutS passed (false). */
async function waitLog(p: Proc, logName: string, re: RegExp, timeoutS: number): Promise<boolean> {
  const deadline = performance.now() + timeoutS * 1000;
  for (;;) {
    let text = '';
    try {
      text = fs.readFileSync(logFile(logName), 'utf8');
    } catch {
      // not yet
    }
    if (re.test(text)) return true;
    if (p.done || performance.now() > deadline) return false;
    await sleep(50);
  }
}

function logTail(logName: string): string {
  try {
    return fs.readFileSync(logFile(logName), 'utf8').trim().split('\n').slice(-5).join(' | ');
  } catch {
    return '';
  }
}

/** The line cli - r1 - ... - rN - dst with forwarding and the baseline's static return routes. */
async function lineUp(kind: Kind, hops: number, round: number): Promise<Chain> {
  const tag = kind === 'direct' ? 'd' : IMPLS.find((i) => i.id === kind)!.tag;
  const id = `${process.pid}-${round}-${hops}${tag}`;
  const chain: Chain = {
    kind,
    hops,
    round,
    id,
    cli: `strata-bc-${id}-cli`,
    relays: Array.from({ length: hops }, (_, i) => `strata-bc-${id}-r${i + 1}`),
    dst: `strata-bc-${id}-dst`,
    daemons: [],
    procs: [],
    mtu: 1500,
  };
  current = chain;
  const line = [chain.cli, ...chain.relays, chain.dst];
  for (const ns of line) await mkns(ns);
  for (let i = 1; i <= hops + 1; i++) {
    const L = line[i - 1]!;
    const R = line[i]!;
    // Created from inside L with its peer end placed directly in R: never in the host namespace.
    await must('ip', ['-n', L, 'link', 'add', `v${i}l`, 'type', 'veth', 'peer', 'name', `v${i}r`, 'netns', R]);
    await must('ip', ['-n', L, 'addr', 'add', `${linkLeft(i)}/24`, 'dev', `v${i}l`]);
    await must('ip', ['-n', R, 'addr', 'add', `${linkRight(i)}/24`, 'dev', `v${i}r`]);
    await must('ip', ['-n', L, 'link', 'set', `v${i}l`, 'up']);
    await must('ip', ['-n', R, 'link', 'set', `v${i}r`, 'up']);
  }
  await must('ip', ['-n', chain.dst, 'route', 'add', 'default', 'via', linkLeft(hops + 1)]);
  for (let i = 1; i <= hops; i++) {
    const r = chain.relays[i - 1]!;
    await nsx(r, 'sysctl', '-qw', 'net.ipv4.ip_forward=1');
    if (i > 1) await must('ip', ['-n', r, 'route', 'add', 'default', 'via', linkLeft(i)]);
  }
  return chain;
}

async function chainDown(chain: Chain): Promise<void> {
  for (const p of [...chain.procs].reverse()) await stop(p);
  for (const ns of [chain.cli, ...chain.relays, chain.dst]) await delns(ns);
  if (current === chain) current = null;
}

/** No tunnel: the prefix of dst routed hop by hop by the kernel. */
async function directUp(chain: Chain): Promise<void> {
  const prefix = `10.0.${chain.hops + 1}.0/24`;
  await must('ip', ['-n', chain.cli, 'route', 'add', prefix, 'via', linkRight(1)]);
  for (let i = 1; i < chain.hops; i++) await must('ip', ['-n', chain.relays[i - 1]!, 'route', 'add', prefix, 'via', linkRight(i + 1)]);
}

/** wireguard-go in the foreground in ns as ifc (the baseline's wgup). */
async function wgup(chain: Chain, ns: string, ifc: string, addr: string, mtu: number, port: number, group: string): Promise<string> {
  const sock = `/run/wireguard/${ifc}.sock`;
  const p = await startLogged(['ip', 'netns', 'exec', ns, 'wireguard-go', '-f', ifc], `wireguard-go ${ifc}`, `${ifc}.log`, { ...process.env, LOG_LEVEL: WG_LOG });
  chain.procs.push(p);
  chain.daemons.push({ proc: p, group, node: false });
  for (let i = 0; i < 300 && !fs.existsSync(sock); i++) {
    if (p.done) break;
    await sleep(50);
  }
  if (!fs.existsSync(sock)) {
    throw new Error(`wireguard-go ${ifc} did not come up (${p.done ? `exited ${p.child.exitCode}` : 'no UAPI socket after 15 s'}): ${logTail(`${ifc}.log`)}`);
  }
  const k = await genkey(ifc);
  await nsx(ns, 'wg', 'set', ifc, 'private-key', k.key, 'listen-port', `${port}`);
  await must('ip', ['-n', ns, 'addr', 'add', addr, 'dev', ifc]);
  await must('ip', ['-n', ns, 'link', 'set', ifc, 'mtu', `${mtu}`, 'up']);
  return k.pub;
}

/** Phase D of the baseline: WireGuard inside WireGuard, every tunnel from cli, N deep. */
async function wggoUp(chain: Chain): Promise<void> {
  const N = chain.hops;
  const ifr = (i: number): string => `b${chain.round}h${N}r${i}`;
  const ifc = (i: number): string => `b${chain.round}h${N}c${i}`;
  const pubR: string[] = [];
  const pubC: string[] = [];
  for (let i = 1; i <= N; i++) {
    const mtu = 1500 - 80 * i;
    pubR[i] = await wgup(chain, chain.relays[i - 1]!, ifr(i), `10.10.${i}.1/24`, mtu, RELAY_PORT, `r${i}`);
    pubC[i] = await wgup(chain, chain.cli, ifc(i), `10.10.${i}.2/24`, mtu, 52000 + i, 'client');
  }
  for (let i = 1; i <= N; i++) {
    const allowed = i < N ? `${linkRight(i + 1)}/32` : `10.0.${N + 1}.0/24`;
    await nsx(chain.relays[i - 1]!, 'wg', 'set', ifr(i), 'peer', pubC[i]!, 'allowed-ips', `10.10.${i}.2/32`);
    await nsx(chain.cli, 'wg', 'set', ifc(i), 'peer', pubR[i]!, 'allowed-ips', `${allowed},10.10.${i}.1/32`, 'endpoint', `${linkRight(i)}:${RELAY_PORT}`);
    await must('ip', ['-n', chain.cli, 'route', 'add', allowed, 'dev', ifc(i)]);
  }
  chain.mtu = 1500 - 80 * N;
}

/**
 * The CPU-profiling preload (PROF=1): SIGUSR2 starts the V8 profiler, the next one stops it and
 * writes the profile as one JSON line to descriptor 3, a file the bench opened. No path is
 * written by the process itself: relays run under Node's permission model with no fs-write
 * grant (NODE_OPTIONS adds --allow-inspector for the profiler, nothing else).
 */
const PRELOAD = `import { Session } from 'node:inspector';
import fs from 'node:fs';
const session = new Session();
session.connect();
session.post('Profiler.enable');
let running = false;
process.on('SIGUSR2', () => {
  if (!running) {
    session.post('Profiler.start');
    running = true;
    return;
  }
  running = false;
  session.post('Profiler.stop', (err, res) => {
    if (!err) fs.writeSync(3, JSON.stringify(res.profile) + '\\n');
  });
});
`;

/** Environment and extra descriptors for a Strata process: the profiler's when PROF=1. */
function strataEnv(label: string): { env: NodeJS.ProcessEnv; profFd: number | null } {
  if (!PROF) return { env: { ...process.env }, profFd: null };
  const preload = path.join(BASE, 'prof', 'preload.mjs');
  if (!fs.existsSync(preload)) fs.writeFileSync(preload, PRELOAD);
  const prior = process.env.NODE_OPTIONS ?? '';
  return {
    env: { ...process.env, NODE_OPTIONS: `${prior} --allow-inspector --import=${preload}`.trim() },
    profFd: fs.openSync(path.join(BASE, 'prof', `${label}.ndjson`), 'a'),
  };
}

/** Strata relays in r1..rN (rN the exit) and the client in cli, through bin/strata. */
async function strataUp(chain: Chain): Promise<void> {
  const N = chain.hops;
  const dir = path.join(BASE, 'strata', chain.id);
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const keys: { key: string; pub: string }[] = [];
  for (let i = 1; i <= N; i++) keys.push(await genkey(`${chain.id}-r${i}`));
  const relays = keys.map((k, j) => ({
    name: `r${j + 1}`,
    country: COUNTRIES[j % COUNTRIES.length]!,
    publicKey: k.pub,
    endpoints: [`${linkRight(j + 1)}:${RELAY_PORT}`],
    roles: [j === N - 1 ? 'exit' : j === 0 ? 'entry' : 'middle'],
    provider: `hoster-${j + 1}`,
    family: `operator-${j + 1}`,
    capacity: 1,
    kind: 'strata',
  }));
  const listFile = path.join(dir, 'relays.json');
  fs.writeFileSync(listFile, JSON.stringify({ relays }, null, 2));

  // All relays start at once; every one is waited for (and tracked) before a failure is thrown.
  const started = await Promise.allSettled(
    keys.map(async (k, j) => {
      const name = `r${j + 1}`;
      const args = ['ip', 'netns', 'exec', chain.relays[j]!, STRATA_BIN, 'relay', '--relays', listFile, '--listen-port', `${RELAY_PORT}`];
      if (j === N - 1) args.push('--exit');
      const se = strataEnv(`h${N}-${name}`);
      const env = { ...se.env, STRATA_PRIVATE_KEY: fs.readFileSync(k.key, 'utf8').trim() };
      const logName = `strata-${chain.id}-${name}.log`;
      const p = await startLogged(args, `strata relay ${name}`, logName, env, se.profFd);
      chain.procs.push(p);
      chain.daemons.push({ proc: p, group: name, node: true });
      if (!(await waitLog(p, logName, /relay ready/, 30))) {
        throw new Error(`strata relay ${name} did not come up (${p.done ? `exited ${p.child.exitCode}` : 'not ready after 30 s'}): ${logTail(logName)}`);
      }
    }),
  );
  for (const r of started) if (r.status === 'rejected') throw r.reason;

  const logName = `strata-${chain.id}-client.log`;
  const clientEnv = strataEnv(`h${N}-client`);
  const client = await startLogged(
    ['ip', 'netns', 'exec', chain.cli, STRATA_BIN, 'connect', '--relays', listFile, '--path', relays.map((r) => r.name).join(','), '--run-dir', path.join(dir, 'run'), '--foreground'],
    'strata connect',
    logName,
    clientEnv.env,
    clientEnv.profFd,
  );
  chain.procs.push(client);
  chain.daemons.unshift({ proc: client, group: 'client', node: true });
  if (!(await waitLog(client, logName, /^interface \S+\s+mtu (\d+)/m, 10 * N + 30))) {
    throw new Error(`strata connect did not come up (${client.done ? `exited ${client.child.exitCode}` : 'not connected in time'}): ${logTail(logName)}`);
  }
  const m = /^interface \S+\s+mtu (\d+)/m.exec(fs.readFileSync(logFile(logName), 'utf8'));
  chain.mtu = m ? Number(m[1]) : NaN;
}

/** The iperf3 server in dst, and reachability of dst from cli (also runs the handshakes). */
async function endpointsUp(chain: Chain, withServer: boolean): Promise<void> {
  const target = dstAddr(chain.hops);
  if (withServer) {
    const server = await startLogged(['ip', 'netns', 'exec', chain.dst, 'iperf3', '-s'], 'iperf3 -s', `iperf3-${chain.id}.log`);
    chain.procs.push(server);
    if (!(await waitIperfListening(chain.dst, server))) throw new Error('iperf3 server did not start');
  }
  let reached = false;
  for (let i = 0; i < 3 && !reached; i++) {
    reached = (await run('ip', ['netns', 'exec', chain.cli, 'ping', '-n', '-q', '-c', '3', '-i', '0.2', '-W', '5', target], 30)).code === 0;
  }
  if (!reached) throw new Error(`${target} unreachable from cli (${chain.kind}, ${chain.hops} hops)`);
}

async function instanceUp(kind: Kind, hops: number, round: number): Promise<Chain> {
  const chain = await lineUp(kind, hops, round);
  if (kind === 'direct') await directUp(chain);
  else if (kind === 'strata') await strataUp(chain);
  else await wggoUp(chain);
  await endpointsUp(chain, kind !== 'direct');
  return chain;
}

// ------------------------------------------------------------------ inner process: measurements
interface TcpSample {
  mbps: number;
  retransmits: number;
  foreign: number;
  repeats: number;
  /** CPU per group ('client', 'r1'..), % of one core. */
  cpu: Map<string, number>;
  /** Main-thread CPU per group, Node processes only. */
  mainCpu: Map<string, number>;
  /** The whole host, % of all cores. */
  hostBusy: number;
  /** iperf3 client + server, softirq and kernel threads, % of one core each. */
  iperf3: number;
  softirq: number;
  kthreads: number;
}

function signalProfilers(chain: Chain): void {
  for (const d of chain.daemons) {
    if (!d.node || d.proc.inner === null || d.proc.done) continue;
    try {
      process.kill(d.proc.inner, 'SIGUSR2');
    } catch {
      // gone
    }
  }
}

async function iperfOnce(chain: Chain, seconds: number, profile: boolean): Promise<TcpSample> {
  const ds = chain.daemons.filter((d) => d.proc.inner !== null);
  if (profile) signalProfilers(chain);
  let r: IperfSample;
  const snap0 = procSnapshot();
  const t0 = performance.now();
  try {
    r = await iperfRun(chain.cli, dstAddr(chain.hops), 1, seconds, ds.map((d) => d.proc.inner!));
  } finally {
    if (profile) signalProfilers(chain);
  }
  if (r.foreign > FOREIGN_MAX) {
    // Who the "other processes" were (the kernel threads, our daemons and the bench excluded).
    const ours = new Set([process.pid, ...ds.map((d) => d.proc.inner!)]);
    const snap1 = procSnapshot();
    for (const [pid, v] of snap1) if (v.comm === 'iperf3' || /^(kthreadd|ksoftirqd|kworker)/.test(v.comm)) ours.add(pid);
    log(
      `  ${seconds} s run: other processes ~${r.foreign.toFixed(0)}% of a core (host ${r.hostBusy.toFixed(0)}% of ${NCPU} cores, daemons ${r.cpu.reduce((x, y) => x + y, 0).toFixed(0)}, ` +
        `iperf3 ${r.iperf3.toFixed(0)}, kthreads ${r.kthreads.toFixed(0)}, softirq ${r.softirq.toFixed(0)})`,
    );
    log(`  busiest other processes during the run: ${topBetween(snap0, snap1, (performance.now() - t0) / 1000, ours).join(', ') || 'none seen (short-lived processes?)'}`);
  }
  if (Number.isNaN(r.mbps)) {
    log(`  iperf3 -P 1 failed (${r.timedOut ? 'timed out' : `exit ${r.exitCode}`}): ${r.error}`);
    return { mbps: NaN, retransmits: NaN, foreign: 0, repeats: 0, cpu: new Map(), mainCpu: new Map(), hostBusy: NaN, iperf3: NaN, softirq: NaN, kthreads: NaN };
  }
  const cpu = new Map<string, number>();
  const mainCpu = new Map<string, number>();
  ds.forEach((d, i) => {
    cpu.set(d.group, (cpu.get(d.group) ?? 0) + (r.cpu[i] ?? 0));
    if (d.node) mainCpu.set(d.group, (mainCpu.get(d.group) ?? 0) + (r.mainCpu[i] ?? 0));
  });
  return {
    mbps: r.mbps,
    retransmits: r.retransmits,
    foreign: r.foreign,
    repeats: 0,
    cpu,
    mainCpu,
    hostBusy: r.hostBusy,
    iperf3: r.iperf3,
    softirq: r.softirq,
    kthreads: r.kthreads,
  };
}

const groupsOf = (hops: number): string[] => ['client', ...Array.from({ length: hops }, (_, i) => `r${i + 1}`)];

function cpuText(hops: number, cpu: Map<string, number>, mainCpu: Map<string, number>): string {
  return groupsOf(hops)
    .map((g) => {
      const c = cpu.get(g);
      const m = mainCpu.get(g);
      return `${g} ${c === undefined ? 'n/a' : c.toFixed(0)}${m === undefined ? '' : ` (${m.toFixed(0)})`}`;
    })
    .join(' · ');
}

async function tcpTest(chain: Chain): Promise<TcpSample> {
  let s: TcpSample;
  let repeats = 0;
  for (;;) {
    await waitQuiet();
    s = await iperfOnce(chain, DUR, PROF && chain.kind === 'strata');
    if (Number.isNaN(s.mbps) || s.foreign <= FOREIGN_MAX || repeats >= RETRIES) break;
    repeats++;
    log(`  TCP -P 1: other processes used ~${s.foreign.toFixed(0)}% of a core; repeating`);
  }
  s.repeats = repeats;
  if (Number.isFinite(s.mbps)) {
    log(
      `  TCP -P 1: ${s.mbps.toFixed(1)} Mbit/s, retr ${s.retransmits}, foreign ~${s.foreign.toFixed(0)}%, host ${s.hostBusy.toFixed(0)}% of ${NCPU} cores, ` +
        `CPU % of a core: ${cpuText(chain.hops, s.cpu, s.mainCpu)}, iperf3 ${s.iperf3.toFixed(0)}, softirq ${s.softirq.toFixed(0)}, kthreads ${s.kthreads.toFixed(0)}`,
    );
  }
  return s;
}

async function pingTest(chain: Chain): Promise<{ median: number; avg: number; loss: number }> {
  await waitQuiet();
  const res = await pingRun(chain.cli, dstAddr(chain.hops), PINGN);
  log(`  ping: median ${res.median} ms, avg ${res.avg.toFixed(3)} ms, loss ${res.loss}%`);
  return res;
}

// ------------------------------------------------------------------ inner process: profiles
interface CpuProfile {
  nodes: { id: number; callFrame: { functionName: string; url: string; lineNumber: number }; children?: number[] }[];
  samples?: number[];
  timeDeltas?: number[];
}

/**
 * Self time per function over all profiles of one process label: [function, ms][] and total ms.
 * Time in native code (the addon's AEAD, UDP and TUN calls, koffi, node internals) is keyed by
 * its JavaScript caller: V8 names every N-API callback after one of them (e.g. "_exit"), so
 * the native frame's own name says nothing.
 */
function summariseProfiles(files: readonly string[]): { rows: [string, number][]; total: number; count: number } {
  const self = new Map<string, number>();
  let total = 0;
  let count = 0;
  const profiles: CpuProfile[] = [];
  for (const f of files) {
    for (const line of fs.readFileSync(f, 'utf8').split('\n')) {
      if (line.trim() === '') continue;
      try {
        profiles.push(JSON.parse(line) as CpuProfile);
      } catch {
        // a truncated line (the process ended while writing)
      }
    }
  }
  for (const p of profiles) {
    count++;
    const jsName = (cf: CpuProfile['nodes'][number]['callFrame']): string =>
      `${cf.functionName || '(anonymous)'}${cf.url === '' ? '' : ` ${path.basename(cf.url)}:${cf.lineNumber + 1}`}`;
    const parent = new Map<number, CpuProfile['nodes'][number]>();
    for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n);
    const name = new Map<number, string>();
    for (const n of p.nodes) {
      const cf = n.callFrame;
      const native = cf.url === '' && !cf.functionName.startsWith('(');
      const caller = parent.get(n.id);
      name.set(n.id, native && caller !== undefined ? `[native] called from ${jsName(caller.callFrame)}` : jsName(cf));
    }
    const samples = p.samples ?? [];
    const deltas = p.timeDeltas ?? [];
    for (let i = 0; i < samples.length; i++) {
      const ms = (deltas[i + 1] ?? deltas[i] ?? 0) / 1000;
      const key = name.get(samples[i]!) ?? '?';
      self.set(key, (self.get(key) ?? 0) + ms);
      total += ms;
    }
  }
  return { rows: [...self.entries()].sort((a, b) => b[1] - a[1]), total, count };
}

function profileReport(): string[] {
  const dir = path.join(BASE, 'prof');
  const files = fs.readdirSync(dir).filter((f) => f.endsWith('.ndjson'));
  const labels = [...new Set(files.map((f) => f.replace(/\.ndjson$/, '')))].sort((a, b) => {
    const [ha, pa] = a.split('-');
    const [hb, pb] = b.split('-');
    return ha === hb ? (pa === 'client' ? -1 : pb === 'client' ? 1 : pa!.localeCompare(pb!)) : ha!.localeCompare(hb!);
  });
  const out: string[] = [];
  out.push(`## CPU profiles of Strata's processes over the measured TCP runs (self time, top ${PROF_TOP}; files in ${dir})`);
  for (const label of labels) {
    const s = summariseProfiles([path.join(dir, `${label}.ndjson`)]);
    if (s.total === 0) continue;
    const idle = s.rows.find(([k]) => k === '(idle)')?.[1] ?? 0;
    out.push(
      `### ${label.replace(/^h(\d)-/, '$1-hop ')}: ${s.count} profile(s), ${(s.total / 1000).toFixed(1)} s sampled, ` +
        `main thread not idle ${((100 * (s.total - idle)) / s.total).toFixed(0)}% of wall time (running, or runnable and waiting for a CPU)`,
    );
    out.push('| function | self ms | % of sampled time |');
    out.push('|---|---:|---:|');
    for (const [k, ms] of s.rows.slice(0, PROF_TOP)) out.push(`| \`${k.replace(/\|/g, '\\|')}\` | ${ms.toFixed(0)} | ${((100 * ms) / s.total).toFixed(1)} |`);
    out.push('');
  }
  return out;
}

// ------------------------------------------------------------------ inner process: main
interface ImplResults {
  tcp: TcpSample[];
  rtt: number[];
  loss: number[];
  mtu: number[];
  failures: number;
}
interface HopResults {
  direct: { rtt: number[]; loss: number[]; failures: number };
  impl: Map<ImplId, ImplResults>;
}

async function cleanupAll(): Promise<void> {
  if (current !== null) await chainDown(current).catch((e: unknown) => log(`teardown: ${(e as Error).message}`));
  await stopAll(3000);
  for (const ns of ourNamespaces()) await delns(ns);
}

/** One instance: build, measure, tear down. A failure is counted, not fatal (unless aborting). */
async function measure(kind: Kind, hops: number, round: number, onChain: (c: Chain) => Promise<void>): Promise<boolean> {
  let chain: Chain | null = null;
  try {
    chain = await instanceUp(kind, hops, round);
    await onChain(chain);
    return true;
  } catch (e) {
    if (e instanceof Aborted || isAborting()) throw e;
    log(`  ${kind} ${hops}-hop round ${round} failed: ${(e as Error).message}`);
    return false;
  } finally {
    if (!isAborting()) {
      if (chain !== null) await chainDown(chain);
      else if (current !== null) await chainDown(current);
    }
  }
}

async function inner(): Promise<number> {
  BASE = enterIsolation(VARS);
  // Keys, relay lists and the client's run directory in memory (a relay reads its list only
  // from tmpfs/ramfs); these mounts live in our private mount namespace and vanish with it.
  for (const d of ['keys', 'strata']) {
    const m = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=16m,mode=0700', 'strata-bench', path.join(BASE, d)], { encoding: 'utf8', timeout: 10_000 });
    if (m.status !== 0) precondition(`tmpfs mount on ${path.join(BASE, d)} failed: ${(m.stderr ?? '').trim()}`);
  }

  let interrupted = false;
  const onSignal = (sig: NodeJS.Signals): void => {
    if (isAborting()) return;
    beginAbort();
    interrupted = true;
    log(`${sig}: tearing down`);
    void cleanupAll().finally(() => process.exit(130));
  };
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(sig, onSignal);

  const cpus = os.cpus();
  const header =
    `# bench:cascade ${new Date().toISOString()} | ${cpus.length} CPUs (${cpus[0]?.model.trim() ?? '?'}) | node ${process.version} | ` +
    `${os.type()} ${os.release()} | ${firstLine('wireguard-go', ['--version'])} | strata ${STRATA_BIN} (I/O ${ioBackend()}) | ` +
    `${firstLine('iperf3', ['--version'])} | RUNS=${RUNS} DUR=${DUR}s PINGN=${PINGN} WARMUP=${WARMUP}s HOPS="${HOPS.join(' ')}"` +
    (process.env.STRATA_NATIVE !== undefined ? ` STRATA_NATIVE=${process.env.STRATA_NATIVE}` : '') +
    (PROF ? ' PROF=1 (Strata under the V8 profiler during TCP runs)' : '');
  const res = new Map<number, HopResults>(
    HOPS.map((h) => [h, { direct: { rtt: [], loss: [], failures: 0 }, impl: new Map(IMPLS.map((i) => [i.id, { tcp: [], rtt: [], loss: [], mtu: [], failures: 0 }])) }]),
  );
  const t0 = performance.now();
  try {
    for (let round = 1; round <= RUNS; round++) {
      const order = round % 2 === 1 ? IMPLS : [...IMPLS].reverse();
      for (const hops of HOPS) {
        const hr = res.get(hops)!;
        log(`round ${round}/${RUNS}, ${hops} hops: direct (no tunnel)`);
        const okDirect = await measure('direct', hops, round, async (c) => {
          const p = await pingTest(c);
          hr.direct.rtt.push(p.median);
          hr.direct.loss.push(p.loss);
        });
        if (!okDirect) hr.direct.failures++;
        for (const impl of order) {
          const r = hr.impl.get(impl.id)!;
          log(`round ${round}/${RUNS}, ${hops} hops: ${impl.name}`);
          const ok = await measure(impl.id, hops, round, async (c) => {
            r.mtu.push(c.mtu);
            if (WARMUP > 0) await iperfOnce(c, WARMUP, false);
            r.tcp.push(await tcpTest(c));
            const p = await pingTest(c);
            r.rtt.push(p.median);
            r.loss.push(p.loss);
          });
          if (!ok) r.failures++;
        }
      }
    }
  } catch (e) {
    if (!(e instanceof Aborted) && !isAborting()) {
      log(`error: ${(e as Error).stack ?? e}`);
      await cleanupAll();
      return 1;
    }
    // The signal handler tears down and exits.
    await new Promise(() => {});
  } finally {
    if (!isAborting()) await cleanupAll();
  }
  if (interrupted) return 130;

  // ---------------------------------------------------------------- report
  const tcpList = (xs: TcpSample[]): string => `[${xs.map((s) => f1(s.mbps) + (s.foreign > FOREIGN_MAX ? '*' : '')).join(', ')}]`;
  const meanCpu = (xs: TcpSample[], pick: (s: TcpSample) => Map<string, number>): Map<string, number> => {
    const m = new Map<string, number>();
    const keys = new Set(xs.flatMap((s) => [...pick(s).keys()]));
    for (const k of keys) m.set(k, mean(xs.map((s) => pick(s).get(k) ?? NaN)));
    return m;
  };
  const summary = new Map<number, { direct: number; impl: Map<ImplId, { mbps: number; rtt: number; perHop: number; mtu: number; busiest: string; cost: number }> }>();
  const out: string[] = [header, ''];
  out.push(
    '## per run — topology: a line cli – r1 – … – rN – dst, one veth per link (10.0.i.1 <-> 10.0.i.2), relays forwarding with static return routes ' +
      '(wireguard-go-baseline.sh phase D), the same line for direct, strata and wireguard-go; rounds alternate the order; ' +
      'CPU = % of one core during the TCP run, mean over runs, (main thread) for Node processes, wireguard-go "client" = its N daemons in cli together; ' +
      `* = kept after ${RETRIES} repeat(s) with other processes using > ${FOREIGN_MAX}% of a core`,
  );
  out.push(
    `| hops | implementation | TCP P1 Mbit/s runs | RTT ms runs | TCP retr/run | ping loss % | CPU % of a core: client · r1 … rN | iperf3 · softirq % of a core | host busy % of ${NCPU} cores | repeats | failed rounds |`,
  );
  out.push('|---:|---|---|---|---:|---:|---|---:|---:|---:|---:|');
  for (const hops of HOPS) {
    const hr = res.get(hops)!;
    out.push(`| ${hops} | direct (no tunnel) | – | ${list(hr.direct.rtt, f3)} | – | ${f1(mean(hr.direct.loss))} | – | – | – | – | ${hr.direct.failures} |`);
    const sum = { direct: mean(hr.direct.rtt), impl: new Map<ImplId, { mbps: number; rtt: number; perHop: number; mtu: number; busiest: string; cost: number }>() };
    for (const impl of IMPLS) {
      const r = hr.impl.get(impl.id)!;
      const cpu = meanCpu(r.tcp, (s) => s.cpu);
      const main = meanCpu(r.tcp, (s) => s.mainCpu);
      out.push(
        `| ${hops} | ${impl.name} | ${tcpList(r.tcp)} | ${list(r.rtt, f3)} | ${f1(mean(r.tcp.map((s) => s.retransmits)))} | ${f1(mean(r.loss))} | ` +
          `${r.tcp.length > 0 ? cpuText(hops, cpu, main) : 'n/a'} | ${f1(mean(r.tcp.map((s) => s.iperf3)))} · ${f1(mean(r.tcp.map((s) => s.softirq)))} | ` +
          `${f1(mean(r.tcp.map((s) => s.hostBusy)))} | ${r.tcp.reduce((a, s) => a + s.repeats, 0)} | ${r.failures} |`,
      );
      const top = [...cpu.entries()].filter(([, v]) => Number.isFinite(v)).sort((a, b) => b[1] - a[1])[0];
      const rtt = mean(r.rtt);
      sum.impl.set(impl.id, {
        mbps: mean(r.tcp.map((s) => s.mbps)),
        rtt,
        perHop: (rtt - sum.direct) / hops,
        mtu: mean(r.mtu),
        // The daemons' CPU (client and relays together) per 100 Mbit/s, from each run's own ratio.
        cost: mean(r.tcp.map((t) => ([...t.cpu.values()].reduce((a, b) => a + b, 0) / t.mbps) * 100)),
        busiest: top === undefined ? 'n/a' : `${top[0]} ${top[1].toFixed(0)}%${main.has(top[0]) ? ` (main thread ${main.get(top[0])!.toFixed(0)}%)` : ''}`,
      });
    }
    summary.set(hops, sum);
  }
  out.push('');
  out.push(
    `## means of ${RUNS} run(s) — line topology cli – r1 – … – rN – dst, same for both; iperf3 ${DUR} s TCP -P 1 cli -> dst through the cascade, ` +
      `ping -c ${PINGN} -i 0.02 (median); added RTT per hop = (RTT - direct RTT on the same line) / N`,
  );
  out.push(
    '| hops | implementation | inner MTU | TCP P1 Mbit/s | RTT ms | direct RTT ms | added RTT per hop ms | busiest process (% of a core) | daemons CPU per 100 Mbit/s (% of a core) |',
  );
  out.push('|---:|---|---:|---:|---:|---:|---:|---|---:|');
  for (const hops of HOPS) {
    const s = summary.get(hops)!;
    for (const impl of IMPLS) {
      const v = s.impl.get(impl.id)!;
      out.push(
        `| ${hops} | ${impl.name} | ${Number.isFinite(v.mtu) ? v.mtu.toFixed(0) : 'n/a'} | ${f1(v.mbps)} | ${f3(v.rtt)} | ${f3(s.direct)} | ${f3(v.perHop)} | ${v.busiest} | ${f1(v.cost)} |`,
      );
    }
  }
  out.push('');
  if (PROF) out.push(...profileReport());

  const last: string[] = [];
  for (const hops of HOPS) {
    const s = summary.get(hops)!;
    const S = s.impl.get('strata')!;
    const W = s.impl.get('wggo')!;
    const verdict = Number.isFinite(S.perHop) && Number.isFinite(W.perHop) ? (S.perHop <= W.perHop ? 'strata no worse' : 'strata worse') : 'n/a';
    out.push(`added RTT per hop ${hops}-hop: strata ${f3(S.perHop)} ms, wireguard-go ${f3(W.perHop)} ms (direct RTT ${f3(s.direct)} ms): ${verdict}`);
    out.push(`ratio strata/wireguard-go ${hops}-hop added RTT per hop: ${fr(S.perHop / W.perHop)}`);
    out.push(`ratio strata/wireguard-go ${hops}-hop RTT: ${fr(S.rtt / W.rtt)}`);
    const line = `ratio strata/wireguard-go ${hops}-hop throughput: ${fr(S.mbps / W.mbps)}`;
    if (hops === 3) last.push(line);
    else out.push(line);
  }
  // The 3-hop throughput ratio is always the very last line.
  out.push(last[0] ?? 'ratio strata/wireguard-go 3-hop throughput: n/a');
  log(`done in ${((performance.now() - t0) / 1000).toFixed(0)} s`);
  console.log(out.join('\n'));

  const complete = HOPS.every((h) => {
    const hr = res.get(h)!;
    return (
      hr.direct.failures === 0 &&
      hr.direct.rtt.every(Number.isFinite) &&
      [...hr.impl.values()].every((r) => r.failures === 0 && r.tcp.every((s) => Number.isFinite(s.mbps)) && r.rtt.every(Number.isFinite))
    );
  });
  return complete ? 0 : 1;
}

if (process.env[VARS.inner] === '1') {
  const code = await inner().catch(async (e: unknown) => {
    log(`fatal: ${(e as Error).stack ?? e}`);
    await cleanupAll();
    return 1;
  });
  process.exit(code);
} else {
  await outer();
}
