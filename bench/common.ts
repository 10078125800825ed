/**
 * Shared machinery of the namespace benchmarks (bench/wg.ts, bench/cascade.ts): isolation,
 * bounded child processes, host-noise sampling, namespaces, iperf3 and ping.
 *
 * Isolation: the outer process checks preconditions and re-runs the bench script under
 * `unshare --mount --propagation private` with a fresh temporary directory bind-mounted over
 * /run, so `ip netns` handles and UAPI sockets (/var/run/wireguard/IF.sock) live there and
 * vanish on exit. Nothing is ever created in the host network namespace.
 *
 * Children: every command runs under timeout(1) with a hard lifetime (plus a backstop timer
 * in case timeout(1) itself hangs), is tracked until it exits, and is stopped by PID.
 * Namespaces made here are remembered; deleting one first kills (by PID) whatever it holds.
 *
 * One bench runs per process: the state here (tracked children, namespaces, the abort flag,
 * the bench's name) is module-wide.
 */
import { spawn, spawnSync, type ChildProcess, type StdioOptions } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

// ------------------------------------------------------------------ identity, options, logging
let benchName = 'bench';

/** The name preconditions and messages carry, e.g. "bench:wg". Call before anything else. */
export function setBenchName(name: string): void {
  benchName = name;
}

/** A precondition is missing: say so on stderr and stdout, exit 2. */
export function precondition(reason: string): never {
  process.stderr.write(`${benchName}: ${reason}\n`);
  console.log(`${benchName} cannot run: ${reason}`);
  process.exit(2);
}

/** An integer knob from the environment, within [min, max]; exit 2 otherwise. */
export function envInt(name: string, def: number, min: number, max: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return def;
  const v = Number(raw);
  if (!Number.isInteger(v) || v < min || v > max) {
    precondition(`${name}=${raw}: expected an integer in [${min}, ${max}]`);
  }
  return v;
}

export const log = (msg: string): void => {
  process.stderr.write(`[${new Date().toISOString().slice(11, 19)}] ${msg}\n`);
};

export function which(bin: string): string | null {
  for (const dir of (process.env.PATH ?? '').split(':')) {
    if (dir === '') continue;
    const p = path.join(dir, bin);
    try {
      fs.accessSync(p, fs.constants.X_OK);
      if (fs.statSync(p).isFile()) return p;
    } catch {
      // not here
    }
  }
  return null;
}

export function firstLine(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 10_000, stdio: ['ignore', 'pipe', 'pipe'] });
  return `${r.stdout ?? ''}`.split('\n')[0]?.trim() ?? '';
}

// ------------------------------------------------------------------ outer process
/**
 * Linux, root, the tools on PATH, /dev/net/tun, then `extra` (the bench's own checks), then
 * /var/run being /run (the bind mount relies on it). Exits 2 with a clear message otherwise.
 */
export function preflight(tools: readonly string[], extra?: () => void): void {
  if (process.platform !== 'linux') precondition('Linux only');
  if (process.getuid?.() !== 0) precondition('must run as root (network namespaces, TUN devices)');
  const missing = tools.filter((t) => which(t) === null);
  if (missing.length > 0) precondition(`missing tool(s): ${missing.join(', ')}`);
  if (!fs.existsSync('/dev/net/tun')) precondition('missing /dev/net/tun');
  extra?.();
  if (fs.realpathSync('/var/run') !== '/run') precondition('/var/run is not /run on this host');
}

export interface IsolationVars {
  /** Set to '1' in the inner process. */
  inner: string;
  /** The temporary directory whose run/ becomes /run. */
  base: string;
  /** The outer process's mount namespace, so the inner one can check it is elsewhere. */
  mntns: string;
}

/** The environment variable names of a bench's two processes, from a prefix. */
export function isolationVars(prefix: string): IsolationVars {
  return { inner: `${prefix}_INNER`, base: `${prefix}_BASE`, mntns: `${prefix}_OUTER_MNTNS` };
}

/**
 * Makes the temporary directory (with run/netns, run/wireguard and `dirs`), re-executes the
 * calling script inside a private mount namespace, forwards signals, enforces `budgetS` as a
 * last resort, and removes the directory afterwards unless `keep` or the run failed.
 */
export async function reexecIsolated(o: {
  script: string;
  vars: IsolationVars;
  tmpPrefix: string;
  dirs: readonly string[];
  budgetS: number;
  keep: boolean;
  keptNote: string;
}): Promise<never> {
  const base = fs.mkdtempSync(path.join(os.tmpdir(), o.tmpPrefix));
  for (const d of ['run/netns', 'run/wireguard', ...o.dirs]) fs.mkdirSync(path.join(base, d), { recursive: true, mode: 0o700 });

  const child = spawn('unshare', ['--mount', '--propagation', 'private', '--', process.execPath, ...process.execArgv, o.script], {
    stdio: 'inherit',
    env: { ...process.env, [o.vars.inner]: '1', [o.vars.base]: base, [o.vars.mntns]: fs.readlinkSync('/proc/self/ns/mnt') },
  });
  const forward = (sig: NodeJS.Signals): void => {
    if (child.pid !== undefined && child.exitCode === null && child.signalCode === null) child.kill(sig);
  };
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(sig, () => forward(sig));
  const guard = setTimeout(() => {
    log(`overall time budget (${o.budgetS} s) exceeded; stopping`);
    forward('SIGTERM');
    setTimeout(() => forward('SIGKILL'), 60_000).unref();
  }, o.budgetS * 1000);
  guard.unref();
  const code = await new Promise<number>((resolve) => {
    child.on('error', (e) => {
      log(`cannot start unshare: ${e.message}`);
      resolve(2);
    });
    child.on('exit', (c, s) => resolve(c ?? (s === 'SIGINT' ? 130 : 1)));
  });
  clearTimeout(guard);
  if (o.keep || (code !== 0 && code !== 130)) {
    log(`kept ${base} (${o.keptNote})`);
  } else {
    fs.rmSync(base, { recursive: true, force: true });
  }
  process.exit(code);
}

/**
 * In the inner process: checks it runs in a mount namespace of its own and bind-mounts the
 * prepared directory's run/ over /run. Returns that directory.
 */
export function enterIsolation(vars: IsolationVars): string {
  const base = process.env[vars.base] ?? '';
  if ((process.env[vars.mntns] ?? '') === '') precondition(`inner process without ${vars.mntns}`);
  if (base === '' || !fs.statSync(path.join(base, 'run', 'netns'), { throwIfNoEntry: false })?.isDirectory()) {
    precondition(`inner process without a prepared ${vars.base}`);
  }
  // Never bind over the host's /run: we must be in our own mount namespace.
  if (fs.readlinkSync('/proc/self/ns/mnt') === process.env[vars.mntns]) {
    precondition('not in a private mount namespace');
  }
  const m = spawnSync('mount', ['--bind', path.join(base, 'run'), '/run'], { encoding: 'utf8', timeout: 10_000 });
  if (m.status !== 0) precondition(`bind mount of /run failed: ${(m.stderr ?? '').trim()}`);
  return base;
}

// ------------------------------------------------------------------ inner process: children
export interface Proc {
  child: ChildProcess;
  label: string;
  exited: Promise<void>;
  done: boolean;
  /** PID of the command under timeout(1), once known. */
  inner: number | null;
}
export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
}

const live = new Set<Proc>();
let aborting = false;

export class Aborted extends Error {}

export function isAborting(): boolean {
  return aborting;
}

/** From now on, starting a child throws Aborted and `run` throws it when its child ends. */
export function beginAbort(): void {
  aborting = true;
}

/** Start `cmd args` under timeout(1) with a hard lifetime; tracked until it exits. */
export function start(cmd: string, args: string[], lifetimeS: number, label: string, stdio: StdioOptions, env?: NodeJS.ProcessEnv): Proc {
  if (aborting) throw new Aborted('aborting');
  const child = spawn('timeout', ['-k', '3', `${Math.ceil(lifetimeS)}`, cmd, ...args], {
    stdio,
    env: env ?? process.env,
  });
  const p: Proc = { child, label, exited: Promise.resolve(), done: false, inner: null };
  p.exited = new Promise<void>((resolve) => {
    const finish = (): void => {
      p.done = true;
      live.delete(p);
      resolve();
    };
    child.once('exit', finish);
    child.once('error', finish);
  });
  live.add(p);
  // Backstop in case timeout(1) itself hangs.
  const backstop = setTimeout(() => {
    if (!p.done) child.kill('SIGKILL');
  }, (lifetimeS + 15) * 1000);
  backstop.unref();
  void p.exited.then(() => clearTimeout(backstop));
  return p;
}

/** Run a command to completion (bounded by timeoutS) and collect its output. */
export async function run(cmd: string, args: string[], timeoutS: number, input?: string): Promise<RunResult> {
  const p = start(cmd, args, timeoutS, `${cmd} ${args.join(' ')}`, [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe']);
  let stdout = '';
  let stderr = '';
  p.child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
  p.child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  if (input !== undefined) p.child.stdin!.end(input);
  await p.exited;
  const code = p.child.exitCode;
  if (aborting) throw new Aborted('aborting');
  return { code, stdout, stderr, timedOut: code === 124 || code === 137 || p.child.signalCode !== null };
}

/** Like run, but throws with the command's stderr when it fails. */
export async function must(cmd: string, args: string[], timeoutS = 15, input?: string): Promise<string> {
  const r = await run(cmd, args, timeoutS, input);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.timedOut ? 'timed out' : `exit ${r.code}`}): ${r.stderr.trim()}`);
  return r.stdout;
}

/** PID of the command timeout(1) started for p (its only child). */
export async function innerPid(p: Proc): Promise<number | null> {
  const pid = p.child.pid;
  if (pid === undefined) return null;
  for (let i = 0; i < 200 && !p.done; i++) {
    try {
      const kids = fs.readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim();
      if (kids !== '') return Number(kids.split(/\s+/)[0]);
    } catch {
      return null;
    }
    await sleep(10);
  }
  return null;
}

export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Stop a tracked process by PID: SIGTERM (timeout(1) forwards it), then SIGKILL. */
export async function stop(p: Proc, graceMs = 5000): Promise<void> {
  if (p.done) return;
  const pid = p.child.pid;
  if (pid !== undefined) {
    try {
      process.kill(pid, 'SIGTERM');
    } catch {
      // already gone
    }
  }
  const t = setTimeout(() => {
    if (p.done) return;
    if (p.inner !== null && alive(p.inner)) {
      try {
        process.kill(p.inner, 'SIGKILL');
      } catch {
        // gone
      }
    }
    p.child.kill('SIGKILL');
  }, graceMs);
  await p.exited;
  clearTimeout(t);
}

/** Stop every child still tracked. */
export async function stopAll(graceMs = 3000): Promise<void> {
  await Promise.all([...live].map((p) => stop(p, graceMs)));
}

// ------------------------------------------------------------------ inner process: CPU sampling
export const HZ = Number(firstLine('getconf', ['CLK_TCK'])) || 100;

/** [busy, total, softirq] ticks summed over all CPUs; busy excludes idle and iowait. */
export function sysTicks(): [number, number, number] {
  const line = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0] ?? '';
  const f = line.trim().split(/\s+/).slice(1, 9).map(Number);
  const total = f.reduce((a, b) => a + b, 0);
  const idle = (f[3] ?? 0) + (f[4] ?? 0);
  return [total - idle, total, f[6] ?? 0];
}

/** utime + stime of a process (all its threads), or of one thread with `tid`. */
export function procTicks(pid: number, tid?: number): number {
  try {
    const s = fs.readFileSync(tid === undefined ? `/proc/${pid}/stat` : `/proc/${pid}/task/${tid}/stat`, 'utf8');
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
    return Number(f[11]) + Number(f[12]);
  } catch {
    return 0;
  }
}

/** CPU ticks of kernel threads (children of kthreadd), e.g. ksoftirqd doing our network work. */
export function kthreadTicks(): number {
  let t = 0;
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const s = fs.readFileSync(`/proc/${d}/stat`, 'utf8');
      const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
      if (f[1] === '2' || d === '2') t += Number(f[11]) + Number(f[12]);
    } catch {
      // exited meanwhile
    }
  }
  return t;
}

/** CPU ticks and command name of every process now (threads summed). */
export function procSnapshot(): Map<number, { comm: string; ticks: number }> {
  const m = new Map<number, { comm: string; ticks: number }>();
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const s = fs.readFileSync(`/proc/${d}/stat`, 'utf8');
      const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
      m.set(Number(d), { comm: s.slice(s.indexOf('(') + 1, s.lastIndexOf(')')), ticks: Number(f[11]) + Number(f[12]) });
    } catch {
      // exited meanwhile
    }
  }
  return m;
}

/** The processes that used the most CPU between two snapshots, skipping `exclude`: "comm[pid] N%" (of one core over seconds). */
export function topBetween(
  a: Map<number, { comm: string; ticks: number }>,
  b: Map<number, { comm: string; ticks: number }>,
  seconds: number,
  exclude: ReadonlySet<number>,
  n = 3,
): string[] {
  const rows: [string, number][] = [];
  for (const [pid, v] of b) {
    if (exclude.has(pid)) continue;
    const d = v.ticks - (a.get(pid)?.ticks ?? 0);
    if (d > 0) rows.push([`${v.comm}[${pid}]`, (d / HZ / seconds) * 100]);
  }
  return rows
    .sort((x, y) => y[1] - x[1])
    .slice(0, n)
    .map(([k, v]) => `${k} ${v.toFixed(0)}%`);
}

/** Host busy, % of all cores, over one second. */
export async function bgBusy(): Promise<number> {
  const [b0, t0] = sysTicks();
  await sleep(1000);
  const [b1, t1] = sysTicks();
  return t1 > t0 ? (100 * (b1 - b0)) / (t1 - t0) : 0;
}

/** Wait (<= waitIdleS s) until the host is below idleMax % busy while we are idle; returns the last busy %. */
export async function waitQuiet(waitIdleS: number, idleMax: number): Promise<number> {
  const deadline = Date.now() + waitIdleS * 1000;
  let b = await bgBusy();
  while (b >= idleMax && Date.now() < deadline) {
    await sleep(2000);
    b = await bgBusy();
  }
  if (b >= idleMax) log(`  host still ${b.toFixed(0)}% busy from other processes; measuring anyway`);
  return b;
}

// ------------------------------------------------------------------ inner process: namespaces
const namespaces = new Set<string>();

export const nsx = (ns: string, cmd: string, ...args: string[]): Promise<string> => must('ip', ['netns', 'exec', ns, cmd, ...args]);

export async function mkns(name: string): Promise<void> {
  await must('ip', ['netns', 'add', name]);
  namespaces.add(name);
  await must('ip', ['-n', name, 'link', 'set', 'lo', 'up']);
}

/** Stop every process in a namespace we created (by PID), then delete the namespace. */
export async function delns(name: string): Promise<void> {
  if (!namespaces.has(name)) return;
  // Synchronous, not `run`: this must also work while aborting.
  const r = spawnSync('timeout', ['-k', '3', '10', 'ip', 'netns', 'pids', name], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  const pids = (r.stdout ?? '').split(/\s+/).filter((s) => /^\d+$/.test(s)).map(Number);
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone
    }
  }
  spawnSync('timeout', ['-k', '3', '15', 'ip', 'netns', 'del', name], { stdio: 'ignore' });
  namespaces.delete(name);
}

/** Every namespace made here and not yet deleted. */
export function ourNamespaces(): string[] {
  return [...namespaces];
}

/** A fresh WireGuard key pair: the private key in keysDir/NAME.key (0600), the public key returned. */
export async function genkey(keysDir: string, name: string): Promise<{ key: string; pub: string }> {
  const priv = (await must('wg', ['genkey'])).trim();
  const pub = (await must('wg', ['pubkey'], 15, `${priv}\n`)).trim();
  const key = path.join(keysDir, `${name}.key`);
  fs.writeFileSync(key, `${priv}\n`, { mode: 0o600 });
  return { key, pub };
}

/** Wait until something listens on TCP port 5201 in ns (iperf3 -s), or the server has exited. */
export async function waitIperfListening(ns: string, server: Proc): Promise<boolean> {
  let listening = false;
  for (let i = 0; i < 100 && !listening && !server.done; i++) {
    listening = /:5201\s/.test(await nsx(ns, 'ss', '-ltnH'));
    if (!listening) await sleep(50);
  }
  return listening;
}

// ------------------------------------------------------------------ inner process: iperf3, ping
export interface IperfJson {
  error?: string;
  end?: {
    sum_received?: { bits_per_second?: number };
    sum_sent?: { retransmits?: number };
    cpu_utilization_percent?: { host_total?: number; remote_total?: number };
  };
}

export interface IperfSample {
  /** Receiver throughput, or NaN when the run failed. */
  mbps: number;
  retransmits: number;
  /** CPU of each watched process, % of one core, in the order given. */
  cpu: number[];
  /** CPU of the watched processes' main threads (thread id = pid), % of one core. */
  mainCpu: number[];
  /** Other processes: host busy minus kernel threads, the watched processes and iperf3; % of one core. */
  foreign: number;
  /** The whole host over the run, % of all cores. */
  hostBusy: number;
  /** Softirq time (network receive work not charged to any process), % of one core. */
  softirq: number;
  /** Kernel threads (ksoftirqd, kworkers), % of one core. */
  kthreads: number;
  /** iperf3 client and server (their own rusage), % of one core. */
  iperf3: number;
  /** Why the run failed ('' when it did not). */
  error: string;
  timedOut: boolean;
  exitCode: number | null;
}

/**
 * One iperf3 client run from ns to target (-t seconds -P streams -J), bounded by seconds + 30,
 * with the CPU of `pids` and the host's other load sampled over it.
 */
export async function iperfRun(ns: string, target: string, streams: number, seconds: number, pids: readonly number[]): Promise<IperfSample> {
  const k0 = kthreadTicks();
  const c0 = pids.map((p) => procTicks(p));
  const m0 = pids.map((p) => procTicks(p, p));
  const [b0, T0, s0] = sysTicks();
  const t0 = performance.now();
  const r = await run('ip', ['netns', 'exec', ns, 'iperf3', '-c', target, '-t', `${seconds}`, '-P', `${streams}`, '-J'], seconds + 30);
  const el = (performance.now() - t0) / 1000;
  const [b1, T1, s1] = sysTicks();
  const c1 = pids.map((p) => procTicks(p));
  const m1 = pids.map((p) => procTicks(p, p));
  const k1 = kthreadTicks();
  let j: IperfJson = {};
  try {
    j = JSON.parse(r.stdout) as IperfJson;
  } catch {
    // leave empty
  }
  const bps = j.end?.sum_received?.bits_per_second;
  if (r.code !== 0 || bps === undefined) {
    return {
      mbps: NaN,
      retransmits: NaN,
      cpu: [],
      mainCpu: [],
      foreign: 0,
      hostBusy: NaN,
      softirq: NaN,
      kthreads: NaN,
      iperf3: NaN,
      error: j.error ?? r.stderr.trim(),
      timedOut: r.timedOut,
      exitCode: r.code,
    };
  }
  const pct = (ticks: number): number => (ticks / HZ / el) * 100;
  const cpu = c1.map((c, i) => pct(c - c0[i]!));
  const own = c1.reduce((a, c, i) => a + c - c0[i]!, 0);
  const ic = j.end?.cpu_utilization_percent;
  const foreign = pct(b1 - b0 - (k1 - k0) - own) - (ic?.host_total ?? 0) - (ic?.remote_total ?? 0);
  return {
    mbps: bps / 1e6,
    retransmits: j.end?.sum_sent?.retransmits ?? 0,
    cpu,
    mainCpu: m1.map((c, i) => pct(c - m0[i]!)),
    foreign: Math.max(0, foreign),
    hostBusy: T1 > T0 ? (100 * (b1 - b0)) / (T1 - T0) : NaN,
    softirq: pct(s1 - s0),
    kthreads: pct(k1 - k0),
    iperf3: (ic?.host_total ?? 0) + (ic?.remote_total ?? 0),
    error: '',
    timedOut: false,
    exitCode: 0,
  };
}

/** ping -c count -i 0.02 from ns to target: average RTT (ms) and loss (%), NaN when unparsable. */
/**
 * ping -c count -i 0.02 from ns: the median round trip (robust to the scheduling spikes of a
 * shared machine, which move an average by more than the difference being measured), the
 * average, and the loss.
 */
export async function pingRun(ns: string, target: string, count: number): Promise<{ median: number; avg: number; loss: number }> {
  const r = await run('ip', ['netns', 'exec', ns, 'ping', '-n', '-c', `${count}`, '-i', '0.02', '-W', '1', target], count * 0.02 + 20);
  const times = [...r.stdout.matchAll(/ time=([\d.]+) ms/g)].map((m) => Number(m[1])).sort((a, b) => a - b);
  const l = /([\d.]+)% packet loss/.exec(r.stdout);
  const mid = times.length >> 1;
  const median = times.length === 0 ? NaN : times.length % 2 === 1 ? times[mid]! : (times[mid - 1]! + times[mid]!) / 2;
  const avg = times.length === 0 ? NaN : times.reduce((a, b) => a + b, 0) / times.length;
  return { median, avg, loss: l ? Number(l[1]) : NaN };
}

// ------------------------------------------------------------------ report helpers
export const mean = (xs: readonly number[]): number => {
  const v = xs.filter((x) => Number.isFinite(x));
  return v.length === 0 ? NaN : v.reduce((a, b) => a + b, 0) / v.length;
};
export const f1 = (x: number): string => (Number.isFinite(x) ? x.toFixed(1) : 'n/a');
export const f3 = (x: number): string => (Number.isFinite(x) ? x.toFixed(3) : 'n/a');
export const fr = (x: number): string => (Number.isFinite(x) ? x.toPrecision(3) : 'n/a');
export const list = (xs: readonly number[], f: (x: number) => string): string => `[${xs.map(f).join(', ')}]`;
