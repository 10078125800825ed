/**
 * bench:wg — strata-wg against wireguard-go, end to end, on the same namespace topology.
 *
 * Per implementation and round, this builds two network namespaces, cli and srv, joined by a
 * veth pair (10.77.1.1/24 <-> 10.77.1.2/24), runs the daemon in each with its TUN there
 * (inner 10.78.0.1/24 <-> 10.78.0.2/24, MTU 1420), and measures through the tunnel:
 *
 *   TCP P1 / P4   iperf3 -t DUR -P 1 / -P 4, receiver throughput (end.sum_received)
 *   RTT           ping -c PINGN -i 0.02, median
 *
 * Rounds alternate strata-wg / wireguard-go / strata-wg / wireguard-go ...; each pair is
 * torn down before the next is built, so only one implementation runs at a time. Values in
 * the table are means over the rounds. The last line is the throughput ratio strata /
 * wireguard-go: the geometric mean of the TCP P1 and TCP P4 ratios.
 *
 * Noise care (after tools/wireguard-go-baseline.sh): before every load run the host is sampled
 * while our processes are idle and we wait (<= WAIT_IDLE s) until it is below IDLE_MAX % busy;
 * every TCP run estimates the CPU used by other processes (host busy minus kernel threads, our
 * daemons and iperf3) and is repeated (<= RETRIES) when that exceeds FOREIGN_MAX % of a core.
 *
 * Safety: everything runs in a private mount namespace (unshare --mount --propagation private)
 * whose /run is bind-mounted to a fresh temporary directory, so `ip netns` handles and UAPI
 * sockets (/var/run/wireguard/IF.sock) live there and vanish on exit. Nothing is created in the
 * host network namespace; all traffic stays between namespaces created here. Every child runs
 * under timeout(1), background ones with a lifetime bound too, and all are stopped by PID and
 * the namespaces deleted on exit, on errors and on SIGINT/SIGTERM.
 *
 * Env knobs: RUNS=2 DUR=10 PINGN=200 WARMUP=3 WAIT_IDLE=60 IDLE_MAX=10 FOREIGN_MAX=15 RETRIES=2
 *            WG_LOG=error KEEP=0 (KEEP=1 keeps the temporary directory with daemon logs)
 *            STRATA_WG=bin/strata-wg (another strata-wg build to measure, e.g. a snapshot).
 * Requires root, wireguard-go, wg, iperf3, ping, ip, unshare, mount, timeout, /dev/net/tun.
 * Exit: 0 ok, 1 a measurement failed, 2 precondition missing, 130 interrupted.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
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
  preflight,
  reexecIsolated,
  run,
  setBenchName,
  start,
  stop,
  stopAll,
  waitIperfListening,
  waitQuiet as waitQuietFor,
  type Proc,
} from './common.ts';

// ------------------------------------------------------------------ configuration
setBenchName('bench:wg');

const RUNS = envInt('RUNS', 2, 1, 100);
const DUR = envInt('DUR', 10, 1, 300);
const PINGN = envInt('PINGN', 200, 1, 2000);
const WARMUP = envInt('WARMUP', 3, 0, 60);
const WAIT_IDLE = envInt('WAIT_IDLE', 60, 0, 600);
const IDLE_MAX = envInt('IDLE_MAX', 10, 1, 100);
const FOREIGN_MAX = envInt('FOREIGN_MAX', 15, 1, 10000);
const RETRIES = envInt('RETRIES', 2, 0, 10);
const WG_LOG = process.env.WG_LOG ?? 'error';
const KEEP = process.env.KEEP === '1';

const ROOT = path.resolve(import.meta.dirname, '..');
const STRATA_BIN = path.resolve(process.env.STRATA_WG || path.join(ROOT, 'bin', 'strata-wg'));
const VARS = isolationVars('STRATA_BENCH_WG');
const TOOLS = ['wireguard-go', 'wg', 'iperf3', 'ping', 'ip', 'unshare', 'mount', 'timeout', 'ss'];

// Outer addresses on the veth (only inside our namespaces), inner addresses on the tunnel.
const VETH_CLI = '10.77.1.1';
const VETH_SRV = '10.77.1.2';
const TUN_CLI = '10.78.0.1';
const TUN_SRV = '10.78.0.2';
const WG_PORT = 51820;
const MTU = 1420;

type ImplId = 'strata' | 'wggo';
const IMPLS: readonly { id: ImplId; name: string; bin: string; tag: string }[] = [
  { id: 'strata', name: 'strata-wg', bin: STRATA_BIN, tag: 's' },
  { id: 'wggo', name: 'wireguard-go', bin: 'wireguard-go', tag: 'w' },
];

// ------------------------------------------------------------------ outer process
// Checks preconditions, makes the temporary /run, and re-executes itself inside a private
// mount namespace; removes the directory once the inner process (and its namespace) is gone.
async function outer(): Promise<never> {
  preflight(TOOLS, () => {
    try {
      fs.accessSync(STRATA_BIN, fs.constants.X_OK);
    } catch {
      precondition(`missing or not executable: ${STRATA_BIN}`);
    }
  });
  // Upper bound on the whole run, as a last resort if the inner process hangs.
  return reexecIsolated({
    script: import.meta.filename,
    vars: VARS,
    tmpPrefix: 'strata-bench-wg-',
    dirs: ['keys', 'logs'],
    budgetS: RUNS * IMPLS.length * pairLifetimeS() + 120,
    keep: KEEP,
    keptNote: 'daemon and iperf3 logs under logs/',
  });
}

/** Upper bound on how long one implementation's pair lives: set-up, warm-up, measurements. */
function pairLifetimeS(): number {
  const tcpRun = WAIT_IDLE + 3 + DUR + 40;
  return 120 + (WARMUP > 0 ? WARMUP + 40 : 0) + 2 * (RETRIES + 1) * tcpRun + WAIT_IDLE + 3 + PINGN * 0.02 + 20;
}

const waitQuiet = (): Promise<number> => waitQuietFor(WAIT_IDLE, IDLE_MAX);

// ------------------------------------------------------------------ inner process: topology
interface Pair {
  impl: (typeof IMPLS)[number];
  nsCli: string;
  nsSrv: string;
  ifCli: string;
  ifSrv: string;
  daemons: Proc[];
  procs: Proc[];
}

let BASE = '';

const genkey = (name: string): Promise<{ key: string; pub: string }> => genkeyIn(path.join(BASE, 'keys'), name);

/** Start the daemon in the foreground in ns, wait for its UAPI socket, configure key and address. */
async function daemonUp(pair: Pair, ns: string, ifc: string, addr: string): Promise<string> {
  const logFd = fs.openSync(path.join(BASE, 'logs', `${ifc}.log`), 'a');
  const sock = `/run/wireguard/${ifc}.sock`;
  let p: Proc;
  try {
    p = start('ip', ['netns', 'exec', ns, pair.impl.bin, '-f', ifc], pairLifetimeS(), `${pair.impl.name} ${ifc}`, ['ignore', logFd, logFd], {
      ...process.env,
      LOG_LEVEL: WG_LOG,
    });
  } finally {
    fs.closeSync(logFd);
  }
  pair.daemons.push(p);
  pair.procs.push(p);
  p.inner = await innerPid(p);
  for (let i = 0; i < 300 && !fs.existsSync(sock); i++) {
    if (p.done) break;
    await sleep(50);
  }
  if (!fs.existsSync(sock)) {
    const tail = fs.readFileSync(path.join(BASE, 'logs', `${ifc}.log`), 'utf8').trim().split('\n').slice(-5).join(' | ');
    throw new Error(`${pair.impl.name} ${ifc} did not come up (${p.done ? `exited ${p.child.exitCode}` : 'no UAPI socket after 15 s'}): ${tail}`);
  }
  const k = await genkey(ifc);
  await nsx(ns, 'wg', 'set', ifc, 'private-key', k.key, 'listen-port', `${WG_PORT}`);
  await must('ip', ['-n', ns, 'addr', 'add', `${addr}/24`, 'dev', ifc]);
  await must('ip', ['-n', ns, 'link', 'set', ifc, 'mtu', `${MTU}`, 'up']);
  return k.pub;
}

async function pairUp(impl: (typeof IMPLS)[number], round: number): Promise<Pair> {
  const id = `${process.pid}-r${round}-${impl.tag}`;
  const pair: Pair = {
    impl,
    nsCli: `strata-bench-${id}-cli`,
    nsSrv: `strata-bench-${id}-srv`,
    // <= 15 characters; the UAPI socket directory is shared by both namespaces.
    ifCli: `sbw${round}${impl.tag}c`,
    ifSrv: `sbw${round}${impl.tag}s`,
    daemons: [],
    procs: [],
  };
  current = pair;
  await mkns(pair.nsCli);
  await mkns(pair.nsSrv);
  // Created from inside cli with its peer end placed directly in srv: never in the host namespace.
  await must('ip', ['-n', pair.nsCli, 'link', 'add', 'vcli', 'type', 'veth', 'peer', 'name', 'vsrv', 'netns', pair.nsSrv]);
  await must('ip', ['-n', pair.nsCli, 'addr', 'add', `${VETH_CLI}/24`, 'dev', 'vcli']);
  await must('ip', ['-n', pair.nsSrv, 'addr', 'add', `${VETH_SRV}/24`, 'dev', 'vsrv']);
  await must('ip', ['-n', pair.nsCli, 'link', 'set', 'vcli', 'up']);
  await must('ip', ['-n', pair.nsSrv, 'link', 'set', 'vsrv', 'up']);

  const pubSrv = await daemonUp(pair, pair.nsSrv, pair.ifSrv, TUN_SRV);
  const pubCli = await daemonUp(pair, pair.nsCli, pair.ifCli, TUN_CLI);
  await nsx(pair.nsSrv, 'wg', 'set', pair.ifSrv, 'peer', pubCli, 'allowed-ips', `${TUN_CLI}/32`);
  await nsx(pair.nsCli, 'wg', 'set', pair.ifCli, 'peer', pubSrv, 'allowed-ips', `${TUN_SRV}/32`, 'endpoint', `${VETH_SRV}:${WG_PORT}`);

  // iperf3 server bound to the tunnel address: reachable only through the tunnel.
  const logFd = fs.openSync(path.join(BASE, 'logs', `iperf3-${id}.log`), 'a');
  try {
    pair.procs.push(start('ip', ['netns', 'exec', pair.nsSrv, 'iperf3', '-s', '-B', TUN_SRV], pairLifetimeS(), 'iperf3 -s', ['ignore', logFd, logFd]));
  } finally {
    fs.closeSync(logFd);
  }
  const server = pair.procs.at(-1)!;
  server.inner = await innerPid(server);
  if (!(await waitIperfListening(pair.nsSrv, server))) throw new Error('iperf3 server did not start');

  // Reachability through the tunnel; also performs the handshake.
  let reached = false;
  for (let i = 0; i < 3 && !reached; i++) {
    reached = (await run('ip', ['netns', 'exec', pair.nsCli, 'ping', '-n', '-q', '-c', '3', '-i', '0.2', '-W', '5', TUN_SRV], 30)).code === 0;
  }
  if (!reached) throw new Error(`${TUN_SRV} unreachable through ${impl.name}`);
  return pair;
}

async function pairDown(pair: Pair): Promise<void> {
  for (const p of [...pair.procs].reverse()) await stop(p);
  await delns(pair.nsCli);
  await delns(pair.nsSrv);
  if (current === pair) current = null;
}

let current: Pair | null = null;

// ------------------------------------------------------------------ inner process: measurements
interface TcpSample {
  mbps: number;
  daemonCpu: number; // both daemons, % of one core
  retransmits: number;
  foreign: number; // other processes, % of one core
  repeats: number;
}

async function iperfOnce(pair: Pair, streams: number, seconds: number): Promise<TcpSample> {
  const dpids = pair.daemons.map((d) => d.inner).filter((p): p is number => p !== null);
  const r = await iperfRun(pair.nsCli, TUN_SRV, streams, seconds, dpids);
  if (Number.isNaN(r.mbps)) {
    log(`  iperf3 -P ${streams} failed (${r.timedOut ? 'timed out' : `exit ${r.exitCode}`}): ${r.error}`);
    return { mbps: NaN, daemonCpu: NaN, retransmits: NaN, foreign: 0, repeats: 0 };
  }
  return {
    mbps: r.mbps,
    daemonCpu: r.cpu.reduce((a, b) => a + b, 0),
    retransmits: r.retransmits,
    foreign: r.foreign,
    repeats: 0,
  };
}

async function tcpTest(pair: Pair, streams: number): Promise<TcpSample> {
  let s: TcpSample;
  let repeats = 0;
  for (;;) {
    await waitQuiet();
    s = await iperfOnce(pair, streams, DUR);
    if (Number.isNaN(s.mbps) || s.foreign <= FOREIGN_MAX || repeats >= RETRIES) break;
    repeats++;
    log(`  TCP -P ${streams}: other processes used ~${s.foreign.toFixed(0)}% of a core; repeating`);
  }
  s.repeats = repeats;
  log(`  TCP -P ${streams}: ${s.mbps.toFixed(1)} Mbit/s, daemons ${s.daemonCpu.toFixed(0)}% of a core, retr ${s.retransmits}, foreign ~${s.foreign.toFixed(0)}%`);
  return s;
}

async function pingTest(pair: Pair): Promise<{ median: number; avg: number; loss: number }> {
  await waitQuiet();
  const res = await pingRun(pair.nsCli, TUN_SRV, PINGN);
  log(`  ping: median ${res.median} ms, avg ${res.avg.toFixed(3)} ms, loss ${res.loss}%`);
  return res;
}

// ------------------------------------------------------------------ inner process: main
interface Results {
  p1: TcpSample[];
  p4: TcpSample[];
  rtt: number[];
  loss: number[];
  failures: number;
}

async function cleanupAll(): Promise<void> {
  if (current !== null) await pairDown(current).catch((e: unknown) => log(`teardown: ${(e as Error).message}`));
  await stopAll(3000);
  for (const ns of ourNamespaces()) await delns(ns);
}

async function inner(): Promise<number> {
  BASE = enterIsolation(VARS);

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
    `# bench:wg ${new Date().toISOString()} | ${cpus.length} CPUs (${cpus[0]?.model.trim() ?? '?'}) | node ${process.version} | ` +
    `${os.type()} ${os.release()} | ${firstLine('wireguard-go', ['--version'])} | strata-wg ${firstLine(STRATA_BIN, ['--version']).replace(/^strata-wg /, '')} (${STRATA_BIN}) | ` +
    `${firstLine('iperf3', ['--version'])} | RUNS=${RUNS} DUR=${DUR}s PINGN=${PINGN} WARMUP=${WARMUP}s` +
    (process.env.STRATA_NATIVE !== undefined ? ` STRATA_NATIVE=${process.env.STRATA_NATIVE}` : '');
  const res = new Map<ImplId, Results>(IMPLS.map((i) => [i.id, { p1: [], p4: [], rtt: [], loss: [], failures: 0 }]));
  const t0 = performance.now();
  try {
    for (let round = 1; round <= RUNS; round++) {
      for (const impl of IMPLS) {
        const r = res.get(impl.id)!;
        log(`round ${round}/${RUNS}: ${impl.name}`);
        let pair: Pair | null = null;
        try {
          pair = await pairUp(impl, round);
          if (WARMUP > 0) await iperfOnce(pair, 4, WARMUP);
          r.p1.push(await tcpTest(pair, 1));
          r.p4.push(await tcpTest(pair, 4));
          const p = await pingTest(pair);
          r.rtt.push(p.median);
          r.loss.push(p.loss);
        } catch (e) {
          if (e instanceof Aborted || isAborting()) throw e;
          r.failures++;
          log(`  ${impl.name} round ${round} failed: ${(e as Error).message}`);
        } finally {
          if (!isAborting()) {
            if (pair !== null) await pairDown(pair);
            else if (current !== null) await pairDown(current);
          }
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
  // A run kept although other processes used more than FOREIGN_MAX % of a core is starred.
  const tcpList = (xs: TcpSample[]): string => `[${xs.map((s) => f1(s.mbps) + (s.foreign > FOREIGN_MAX ? '*' : '')).join(', ')}]`;
  const S = res.get('strata')!;
  const W = res.get('wggo')!;
  const ratio = (a: number, b: number): number => a / b;
  const rP1 = ratio(mean(S.p1.map((s) => s.mbps)), mean(W.p1.map((s) => s.mbps)));
  const rP4 = ratio(mean(S.p4.map((s) => s.mbps)), mean(W.p4.map((s) => s.mbps)));
  const rRtt = ratio(mean(S.rtt), mean(W.rtt));
  const rThr = Math.sqrt(rP1 * rP4);

  const out: string[] = [header, ''];
  out.push(
    '## per run (rounds alternate strata-wg / wireguard-go; daemon CPU = both daemons, % of one core, mean; ' +
      `* = kept after ${RETRIES} repeat(s) with other processes using > ${FOREIGN_MAX}% of a core)`,
  );
  out.push('| implementation | TCP P1 Mbit/s runs | TCP P4 Mbit/s runs | RTT ms runs | daemon CPU P1 | daemon CPU P4 | TCP retr/run P1, P4 | ping loss % | repeats | failed rounds |');
  out.push('|---|---|---|---|---:|---:|---:|---:|---:|---:|');
  for (const impl of IMPLS) {
    const r = res.get(impl.id)!;
    out.push(
      `| ${impl.name} | ${tcpList(r.p1)} | ${tcpList(r.p4)} | ${list(r.rtt, f3)} | ` +
        `${f1(mean(r.p1.map((s) => s.daemonCpu)))}% | ${f1(mean(r.p4.map((s) => s.daemonCpu)))}% | ` +
        `${f1(mean(r.p1.map((s) => s.retransmits)))}, ${f1(mean(r.p4.map((s) => s.retransmits)))} | ${f1(mean(r.loss))} | ` +
        `${[...r.p1, ...r.p4].reduce((a, s) => a + s.repeats, 0)} | ${r.failures} |`,
    );
  }
  out.push('');
  out.push(`## means of ${RUNS} run(s), iperf3 ${DUR} s TCP through the tunnel, ping -c ${PINGN} -i 0.02 (median); throughput ratio = geometric mean of the TCP P1 and P4 ratios`);
  out.push('| implementation | TCP P1 Mbit/s | TCP P4 Mbit/s | RTT ms |');
  out.push('|---|---:|---:|---:|');
  for (const impl of IMPLS) {
    const r = res.get(impl.id)!;
    out.push(`| ${impl.name} | ${f1(mean(r.p1.map((s) => s.mbps)))} | ${f1(mean(r.p4.map((s) => s.mbps)))} | ${f3(mean(r.rtt))} |`);
  }
  out.push('');
  out.push(`ratio strata/wireguard-go TCP P1: ${fr(rP1)}`);
  out.push(`ratio strata/wireguard-go TCP P4: ${fr(rP4)}`);
  out.push(`ratio strata/wireguard-go RTT: ${fr(rRtt)}`);
  out.push(`ratio strata/wireguard-go throughput: ${fr(rThr)}`);
  log(`done in ${((performance.now() - t0) / 1000).toFixed(0)} s`);
  console.log(out.join('\n'));
  const complete = [S, W].every((r) => r.failures === 0 && [...r.p1, ...r.p4].every((s) => Number.isFinite(s.mbps)) && r.rtt.every(Number.isFinite));
  return complete && Number.isFinite(rThr) ? 0 : 1;
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
