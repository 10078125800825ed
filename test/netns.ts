/**
 * Network-namespace lab for the interop tests: bounded command runners, namespaces, daemons
 * (strata-wg and wireguard-go) and background processes, all torn down by PID and by name.
 *
 * Set LABTRACE=/some/file to log each lab's creation and teardown (to find leftovers).
 *
 * Safety: nothing here touches the host namespace's links, routes or addresses. Every link,
 * address and route is made with `ip -n NS` / `ip netns exec NS`; every process started is
 * tracked by PID and ended in `teardown()` (and, as a last resort, on process exit).
 */
import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

export const ROOT = path.resolve(import.meta.dirname, '..');
export const NODE = path.join(ROOT, 'node_modules', '.bin', 'node');
export const STRATA_WG = path.join(ROOT, 'bin', 'strata-wg');
export const WG_RUN_DIR = '/var/run/wireguard';

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** The absolute path of an executable found on PATH, or null. */
export function which(cmd: string): string | null {
  for (const dir of (process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin').split(':')) {
    if (dir === '') continue;
    const p = path.join(dir, cmd);
    try {
      fs.accessSync(p, fs.constants.X_OK);
      if (fs.statSync(p).isFile()) return p;
    } catch {
      // not here
    }
  }
  return null;
}

// ---- commands ------------------------------------------------------------------------------

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export interface RunOptions {
  /** Hard limit; the process is killed (SIGKILL) after this many ms. Default 10 s. */
  timeout?: number;
  /** Throw unless the exit code is 0. Default true. */
  check?: boolean;
  input?: string | Buffer;
  env?: NodeJS.ProcessEnv;
}

/** Runs a command without a shell, bounded in time; by default throws on a non-zero exit. */
export function run(cmd: string, args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  const timeout = opts.timeout ?? 10_000;
  return new Promise((resolve, reject) => {
    const child = execFile(
      cmd,
      args,
      { timeout, killSignal: 'SIGKILL', maxBuffer: 16 << 20, encoding: 'utf8', env: opts.env ?? process.env },
      (err, stdout, stderr) => {
        const e = err as (NodeJS.ErrnoException & { code?: number | string; signal?: NodeJS.Signals; killed?: boolean }) | null;
        if (e && typeof e.code === 'string') {
          reject(new Error(`${cmd} ${args.join(' ')}: ${e.message}`));
          return;
        }
        const result: RunResult = {
          code: e ? (typeof e.code === 'number' ? e.code : null) : 0,
          signal: e?.signal ?? null,
          stdout,
          stderr,
        };
        if ((opts.check ?? true) && result.code !== 0) {
          const why = result.signal ? `killed by ${result.signal}${e?.killed ? ` after ${timeout} ms` : ''}` : `exit ${result.code}`;
          reject(new Error(`${cmd} ${args.join(' ')}: ${why}\n${stderr.trim()}\n${stdout.trim()}`.trim()));
          return;
        }
        resolve(result);
      },
    );
    if (opts.input !== undefined) child.stdin!.end(opts.input);
    else child.stdin?.end();
  });
}

/** Runs a command inside network namespace `ns`. */
export function nsRun(ns: string, cmd: string, args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  return run('ip', ['netns', 'exec', ns, cmd, ...args], opts);
}

/** `ip -n NS ...` */
export function ipn(ns: string, ...args: string[]): Promise<RunResult> {
  return run('ip', ['-n', ns, ...args]);
}

/** `wg ...` (finds userspace daemons by their socket in /var/run/wireguard). */
export async function wg(...args: string[]): Promise<string> {
  return (await run('wg', args)).stdout;
}

// ---- pings ---------------------------------------------------------------------------------

export interface PingResult {
  transmitted: number;
  received: number;
  loss: number; // 0..1
  output: string;
}

export function parsePing(output: string): PingResult {
  const m = /(\d+) packets transmitted, (\d+) received/.exec(output);
  const transmitted = m ? Number(m[1]) : 0;
  const received = m ? Number(m[2]) : 0;
  return { transmitted, received, loss: transmitted === 0 ? 1 : 1 - received / transmitted, output };
}

export interface PingOptions {
  count?: number;
  interval?: number; // seconds
  wait?: number; // per-reply wait, seconds
}

/** `ping -c N -i I -W W dst` inside `ns`, bounded; never throws on loss. */
export async function ping(ns: string, dst: string, opts: PingOptions = {}): Promise<PingResult> {
  const count = opts.count ?? 5;
  const interval = opts.interval ?? 0.2;
  const wait = opts.wait ?? 1;
  const args = [dst.includes(':') ? '-6' : '-4', '-n', '-c', String(count), '-i', String(interval), '-W', String(wait), dst];
  const r = await nsRun(ns, 'ping', args, { check: false, timeout: Math.ceil((count * interval + wait + 5) * 1000) });
  return parsePing(r.stdout + r.stderr);
}

// ---- keys, UAPI ----------------------------------------------------------------------------

export interface KeyPair {
  privateKey: string;
  publicKey: string;
}

export async function genKey(): Promise<KeyPair> {
  const privateKey = (await run('wg', ['genkey'])).stdout.trim();
  const publicKey = (await run('wg', ['pubkey'], { input: privateKey + '\n' })).stdout.trim();
  return { privateKey, publicKey };
}

export async function genPsk(): Promise<string> {
  return (await run('wg', ['genpsk'])).stdout.trim();
}

export function socketPath(ifname: string): string {
  return path.join(WG_RUN_DIR, `${ifname}.sock`);
}

/**
 * One raw UAPI exchange on a fresh connection: writes `request`, returns what came back
 * until `replies` replies (each ending "errno=N" and a blank line), the peer's close, or the
 * timeout.
 */
export function uapiRaw(ifname: string, request: string, timeoutMs = 3000, replies = 1): Promise<{ reply: string; closed: boolean; timedOut: boolean }> {
  return new Promise((resolve) => {
    const c = net.connect(socketPath(ifname));
    let reply = '';
    let done = false;
    const finish = (closed: boolean, timedOut: boolean): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      c.destroy();
      resolve({ reply, closed, timedOut });
    };
    const timer = setTimeout(() => finish(false, true), timeoutMs);
    c.setEncoding('utf8');
    c.on('data', (d: string) => {
      reply += d;
      if (/(^|\n)errno=-?\d+\n\n$/.test(reply) && (reply.match(/(?:^|\n)errno=-?\d+\n\n/g)?.length ?? 0) >= replies) finish(false, false);
    });
    c.on('close', () => finish(true, false));
    c.on('error', () => finish(true, false));
    c.write(request);
  });
}

/** The errno of a UAPI reply ("errno=-22" → -22), or null if none. */
export function replyErrno(reply: string): number | null {
  const m = /(?:^|\n)errno=(-?\d+)\n\n$/.exec(reply);
  return m ? Number(m[1]) : null;
}

// ---- configuration files ---------------------------------------------------------------------

export interface ParsedConf {
  iface: Record<string, string>;
  peers: Map<string, Record<string, string>>;
}

/**
 * Parses a wg(8) configuration into a canonical form for semantic comparison: keys lower-case,
 * AllowedIPs sorted, numbers (FwMark may be hex) in decimal, zero/off values dropped as
 * `wg showconf` drops them.
 */
export function parseConf(text: string): ParsedConf {
  const iface: Record<string, string> = {};
  const peers = new Map<string, Record<string, string>>();
  let section: Record<string, string> | null = null;
  let pending: Record<string, string>[] = [];
  for (const raw of text.split('\n')) {
    const line = raw.replace(/#.*/, '').trim();
    if (line === '') continue;
    if (/^\[interface\]$/i.test(line)) {
      section = iface;
      continue;
    }
    if (/^\[peer\]$/i.test(line)) {
      section = {};
      pending.push(section);
      continue;
    }
    const eq = line.indexOf('=');
    if (eq < 0 || section === null) throw new Error(`bad config line: ${raw}`);
    const k = line.slice(0, eq).trim().toLowerCase();
    let v = line.slice(eq + 1).trim();
    if (k === 'allowedips') {
      const list = v.split(',').map((s) => s.trim()).filter((s) => s !== '');
      v = [...(section[k] ? section[k].split(',') : []), ...list].sort().join(',');
    } else if (k === 'fwmark' || k === 'listenport' || k === 'persistentkeepalive') {
      v = v === 'off' ? '0' : String(Number(v));
    }
    section[k] = v;
  }
  for (const p of pending) {
    const pub = p.publickey;
    if (pub === undefined) throw new Error('a [Peer] without PublicKey');
    for (const k of ['persistentkeepalive'] as const) if (p[k] === '0') delete p[k];
    peers.set(pub, p);
  }
  if (iface.fwmark === '0') delete iface.fwmark;
  pending = [];
  return { iface, peers };
}

// ---- the lab ---------------------------------------------------------------------------------

export interface Background {
  readonly child: ChildProcess;
  readonly pid: number;
  readonly name: string;
  /** Resolves when the process has exited (after its hard timeout at the latest). */
  readonly exited: Promise<RunResult>;
  stdout(): string;
  stderr(): string;
}

export type Impl = 'strata' | 'wggo';

let labSeq = 0;
const liveLabs = new Set<Lab>();

/**
 * Resources of one test topology. Names are unique across the machine: a prefix made of the
 * test process's PID and a sequence number ("st<pid><seq>"), at most 15 characters with the
 * role suffix.
 */
export class Lab {
  readonly prefix: string;
  readonly dir: string;
  readonly #netns: string[] = [];
  readonly #procs: Background[] = [];
  readonly #ifnames = new Set<string>();
  #extraPids = new Set<number>();

  constructor() {
    this.prefix = `st${process.pid}${(labSeq++).toString(36)}`;
    if (this.prefix.length > 13) throw new Error(`prefix ${this.prefix} too long for interface names`);
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), `${this.prefix}-`));
    fs.chmodSync(this.dir, 0o700);
    liveLabs.add(this);
    if (process.env.LABTRACE) fs.appendFileSync(process.env.LABTRACE, `${Date.now()} ${process.pid} create ${this.prefix}\n`);
  }

  /** A name unique on this machine: prefix + role (≤ 15 characters). */
  name(role: string): string {
    const n = this.prefix + role;
    if (n.length > 15) throw new Error(`name ${n} longer than 15 characters`);
    return n;
  }

  /** Creates a namespace with its loopback up. */
  async netns(role: string): Promise<string> {
    const ns = this.name(role);
    await run('ip', ['netns', 'add', ns]);
    this.#netns.push(ns);
    await ipn(ns, 'link', 'set', 'lo', 'up');
    return ns;
  }

  /** Writes a file (mode 0600) into the lab's private directory and returns its path. */
  file(name: string, content: string | Uint8Array): string {
    const p = path.join(this.dir, name);
    fs.writeFileSync(p, content, { mode: 0o600 });
    return p;
  }

  /**
   * Starts a process in the background (through `ip netns exec ns` when ns is given), tracked
   * by PID and killed after `timeout` ms at the latest.
   */
  spawn(
    name: string,
    ns: string | null,
    cmd: string,
    args: readonly string[],
    opts: { timeout: number; env?: NodeJS.ProcessEnv; stdin?: number | 'ignore'; stdout?: number | 'pipe' } = { timeout: 30_000 },
  ): Background {
    const argv = ns === null ? [cmd, ...args] : ['ip', 'netns', 'exec', ns, cmd, ...args];
    const child = spawn(argv[0]!, argv.slice(1), {
      stdio: [opts.stdin ?? 'ignore', opts.stdout ?? 'pipe', 'pipe'],
      env: opts.env ?? process.env,
    });
    if (child.pid === undefined) throw new Error(`cannot spawn ${argv.join(' ')}`);
    let out = '';
    let err = '';
    child.stdout?.setEncoding('utf8').on('data', (d: string) => {
      if (out.length < 1 << 20) out += d;
    });
    child.stderr!.setEncoding('utf8').on('data', (d: string) => {
      if (err.length < 1 << 20) err += d;
    });
    const killer = setTimeout(() => {
      try {
        process.kill(child.pid!, 'SIGKILL');
      } catch {
        // already gone
      }
    }, opts.timeout);
    const exited = new Promise<RunResult>((resolve) => {
      child.on('close', (code, signal) => {
        clearTimeout(killer);
        resolve({ code, signal, stdout: out, stderr: err });
      });
      child.on('error', (e) => {
        clearTimeout(killer);
        resolve({ code: null, signal: null, stdout: out, stderr: err + String(e) });
      });
    });
    const bg: Background = { child, pid: child.pid, name, exited, stdout: () => out, stderr: () => err };
    this.#procs.push(bg);
    return bg;
  }

  /**
   * Starts a userspace WireGuard daemon in the foreground in `ns` (its UDP sockets stay
   * there), waits until its UAPI socket answers, and returns it. The interface is created in
   * `ns`; move it with `moveLink`.
   */
  async daemon(impl: Impl, ns: string, ifname: string, env?: NodeJS.ProcessEnv): Promise<Background> {
    this.#ifnames.add(ifname);
    if (fs.existsSync(socketPath(ifname))) throw new Error(`${socketPath(ifname)} already exists`);
    const cmd = impl === 'strata' ? STRATA_WG : which('wireguard-go') ?? 'wireguard-go';
    const d = this.spawn(`${impl}:${ifname}`, ns, cmd, ['-f', ifname], { timeout: 10 * 60_000, ...(env ? { env } : {}) });
    const deadline = Date.now() + 15_000;
    for (;;) {
      if (d.child.exitCode !== null || d.child.signalCode !== null) {
        throw new Error(`${impl} ${ifname} exited early: ${d.stderr()}`);
      }
      if (fs.existsSync(socketPath(ifname))) {
        const r = await uapiRaw(ifname, 'get=1\n\n', 1000);
        if (replyErrno(r.reply) === 0) return d;
      }
      if (Date.now() > deadline) throw new Error(`${impl} ${ifname} did not come up: ${d.stderr()}`);
      await sleep(50);
    }
  }

  /** Remembers an interface name this lab owns (for socket clean-up). */
  ownInterface(ifname: string): void {
    this.#ifnames.add(ifname);
  }

  /** Remembers a PID started indirectly (e.g. a daemon wg-quick detached) to end it in teardown. */
  ownPid(pid: number): void {
    this.#extraPids.add(pid);
  }

  async moveLink(fromNs: string, ifname: string, toNs: string): Promise<void> {
    await ipn(fromNs, 'link', 'set', ifname, 'netns', toNs);
  }

  /** Ends every process (by PID), deletes the namespaces, stale sockets and files. */
  async teardown(): Promise<void> {
    liveLabs.delete(this);
    if (process.env.LABTRACE) fs.appendFileSync(process.env.LABTRACE, `${Date.now()} ${process.pid} teardown ${this.prefix}\n`);
    const alive = (pid: number): boolean => {
      try {
        process.kill(pid, 0);
        return true;
      } catch {
        return false;
      }
    };
    for (const p of [...this.#procs].reverse()) {
      if (p.child.exitCode === null && p.child.signalCode === null) {
        try {
          process.kill(p.pid, 'SIGTERM');
        } catch {
          // gone
        }
      }
    }
    for (const pid of this.#extraPids) {
      try {
        process.kill(pid, 'SIGTERM');
      } catch {
        // gone
      }
    }
    const deadline = Date.now() + 3000;
    for (const p of this.#procs) {
      const left = deadline - Date.now();
      const done = await Promise.race([p.exited.then(() => true), sleep(Math.max(0, left)).then(() => false)]);
      if (!done) {
        try {
          process.kill(p.pid, 'SIGKILL');
        } catch {
          // gone
        }
        await Promise.race([p.exited, sleep(2000)]);
      }
    }
    for (const pid of this.#extraPids) {
      for (let i = 0; i < 30 && alive(pid); i++) await sleep(100);
      if (alive(pid)) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // gone
        }
      }
    }
    for (const ns of this.#netns.splice(0)) await run('ip', ['netns', 'del', ns], { check: false });
    for (const ifname of this.#ifnames) fs.rmSync(socketPath(ifname), { force: true });
    fs.rmSync(this.dir, { recursive: true, force: true });
  }

  /** Synchronous last-resort clean-up (process exit). */
  teardownSync(): void {
    for (const p of this.#procs) {
      try {
        process.kill(p.pid, 'SIGKILL');
      } catch {
        // gone
      }
    }
    for (const pid of this.#extraPids) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone
      }
    }
    for (const ns of this.#netns) {
      try {
        execFileSync('ip', ['netns', 'del', ns], { stdio: 'ignore', timeout: 5000 });
      } catch {
        // gone
      }
    }
    for (const ifname of this.#ifnames) fs.rmSync(socketPath(ifname), { force: true });
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

/** Tears down every lab not yet torn down (for an `after` hook). */
export async function teardownAll(): Promise<void> {
  for (const lab of [...liveLabs]) await lab.teardown();
}

process.on('exit', () => {
  for (const lab of liveLabs) lab.teardownSync();
});
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.once(sig, () => {
    for (const lab of liveLabs) lab.teardownSync();
    liveLabs.clear();
    process.exit(sig === 'SIGINT' ? 130 : 143);
  });
}

/** PIDs of processes whose command line contains every one of `needles` (read from /proc). */
export function pidsByCmdline(...needles: string[]): number[] {
  const out: number[] = [];
  for (const e of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const cmd = fs.readFileSync(`/proc/${e}/cmdline`, 'utf8').split('\0');
      if (needles.every((n) => cmd.includes(n) || cmd.some((a) => a.endsWith(n)))) out.push(Number(e));
    } catch {
      // gone
    }
  }
  return out;
}

// ---- topologies ------------------------------------------------------------------------------

export interface Side {
  impl: Impl;
  ns: string; // where the interface lives
  ifname: string;
  keys: KeyPair;
  port: number;
  v4: string; // inner address
  v6: string;
  daemon: Background;
}

export interface Pair {
  lab: Lab;
  /** The underlay namespace: both daemons' UDP sockets, talking over its loopback. */
  ns0: string;
  a: Side;
  b: Side;
}

export interface PairOptions {
  a?: Impl;
  b?: Impl;
  /** Outer (underlay) address family: the endpoints are 127.0.0.1 or [::1]. */
  outer?: 4 | 6;
  psk?: { a?: string; b?: string };
  portA?: number;
  portB?: number;
  /** Environment of strata-wg daemons (e.g. STRATA_NATIVE=0 for the pure TypeScript I/O). */
  strataEnv?: NodeJS.ProcessEnv;
}

/**
 * Two userspace WireGuard interfaces: daemons started in ns0, interface A moved to ns1 and B to
 * ns2, configured as each other's peer over ns0's loopback with 192.168.241.1-2/24 and
 * fd00::1-2/24 inside. Returns once configured (no handshake yet).
 */
export async function makePair(lab: Lab, opts: PairOptions = {}): Promise<Pair> {
  const ns0 = await lab.netns('n0');
  const ns1 = await lab.netns('n1');
  const ns2 = await lab.netns('n2');
  const implA = opts.a ?? 'strata';
  const implB = opts.b ?? 'wggo';
  const ifA = lab.name('a');
  const ifB = lab.name('b');
  const [keysA, keysB] = await Promise.all([genKey(), genKey()]);
  const da = await lab.daemon(implA, ns0, ifA, implA === 'strata' ? opts.strataEnv : undefined);
  const db = await lab.daemon(implB, ns0, ifB, implB === 'strata' ? opts.strataEnv : undefined);
  await lab.moveLink(ns0, ifA, ns1);
  await lab.moveLink(ns0, ifB, ns2);
  const a: Side = { impl: implA, ns: ns1, ifname: ifA, keys: keysA, port: opts.portA ?? 51001, v4: '192.168.241.1', v6: 'fd00::1', daemon: da };
  const b: Side = { impl: implB, ns: ns2, ifname: ifB, keys: keysB, port: opts.portB ?? 51002, v4: '192.168.241.2', v6: 'fd00::2', daemon: db };
  const host = opts.outer === 6 ? '[::1]' : '127.0.0.1';
  for (const [me, other, psk] of [
    [a, b, opts.psk?.a],
    [b, a, opts.psk?.b],
  ] as const) {
    const keyFile = lab.file(`${me.ifname}.key`, me.keys.privateKey + '\n');
    const args = ['set', me.ifname, 'private-key', keyFile, 'listen-port', String(me.port), 'peer', other.keys.publicKey];
    if (psk !== undefined) args.push('preshared-key', lab.file(`${me.ifname}.psk`, psk + '\n'));
    args.push('endpoint', `${host}:${other.port}`, 'allowed-ips', `${other.v4}/32,${other.v6}/128`);
    await run('wg', args);
    await ipn(me.ns, 'addr', 'add', `${me.v4}/24`, 'dev', me.ifname);
    await ipn(me.ns, 'addr', 'add', `${me.v6}/24`, 'dev', me.ifname, 'nodad');
    await ipn(me.ns, 'link', 'set', me.ifname, 'up');
  }
  return { lab, ns0, a, b };
}

/** `wg show IF transfer` of the only peer: [rx, tx]. */
export async function transfer(ifname: string): Promise<{ rx: number; tx: number }> {
  const line = (await wg('show', ifname, 'transfer')).trim().split('\n')[0] ?? '';
  const [, rx, tx] = line.split('\t');
  return { rx: Number(rx), tx: Number(tx) };
}

/** `wg show IF endpoints` of the only peer. */
export async function endpointOf(ifname: string): Promise<string> {
  const line = (await wg('show', ifname, 'endpoints')).trim().split('\n')[0] ?? '';
  return line.split('\t')[1] ?? '';
}

/** `wg show IF latest-handshakes` of the only peer (seconds since the epoch, 0 = none). */
export async function latestHandshake(ifname: string): Promise<number> {
  const line = (await wg('show', ifname, 'latest-handshakes')).trim().split('\n')[0] ?? '';
  return Number(line.split('\t')[1] ?? 0);
}

export function sha256File(p: string): string {
  return crypto.createHash('sha256').update(fs.readFileSync(p)).digest('hex');
}

/** Polls `cond` every `every` ms until it is true or `ms` pass; returns its last value. */
export async function waitFor(cond: () => boolean | Promise<boolean>, ms: number, every = 50): Promise<boolean> {
  const deadline = Date.now() + ms;
  for (;;) {
    if (await cond()) return true;
    if (Date.now() > deadline) return false;
    await sleep(every);
  }
}
