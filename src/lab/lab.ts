/**
 * A lab of network namespaces on one machine, for tests, benchmarks and `strata demo`: a
 * router namespace ("the internet") with one veth link to each host namespace, every host on
 * its own /24 and /64, IPv4 and IPv6 forwarding on the router. Everything is created inside
 * namespaces this lab made; teardown kills every process it started (by PID) and deletes every
 * namespace. Nothing touches the host namespace's interfaces, addresses or routes.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { promisify } from 'node:util';
import { existsSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';

const run = promisify(execFile);

export interface LabHost {
  readonly name: string;
  readonly ns: string;
  readonly index: number;
  readonly v4: string; // the host's address on its link
  readonly v6: string;
  readonly routerV4: string;
  readonly routerV6: string;
  /** The router-side interface of this host's link (where a capture sees all its traffic). */
  readonly link: string;
}

export class Lab {
  readonly id: string;
  readonly router: string;
  readonly hosts = new Map<string, LabHost>();
  readonly #procs = new Set<ChildProcess>();
  #closed = false;

  private constructor(id: string) {
    this.id = id;
    this.router = `${id}-inet`;
  }

  /** Creates the router and one namespace per host name. */
  static async create(hostNames: readonly string[], id = `sl${process.pid % 100000}${Math.floor(Math.random() * 100)}`): Promise<Lab> {
    const lab = new Lab(id);
    try {
      await lab.#cmd('ip', ['netns', 'add', lab.router]);
      await lab.sh(lab.router, 'ip link set lo up; sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1');
      let i = 0;
      for (const name of hostNames) await lab.#addHost(name, ++i);
    } catch (e) {
      await lab.close();
      throw e;
    }
    return lab;
  }

  async #addHost(name: string, index: number): Promise<void> {
    const ns = `${this.id}-${name}`;
    const link = `${this.id.slice(-6)}h${index}`.slice(0, 15);
    const host: LabHost = {
      name,
      ns,
      index,
      v4: `10.77.${index}.2`,
      v6: `fd77:${index.toString(16)}::2`,
      routerV4: `10.77.${index}.1`,
      routerV6: `fd77:${index.toString(16)}::1`,
      link,
    };
    await this.#cmd('ip', ['netns', 'add', ns]);
    await this.#cmd('ip', ['-n', this.router, 'link', 'add', link, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns]);
    await this.sh(
      this.router,
      `ip addr add ${host.routerV4}/24 dev ${link} && ip addr add ${host.routerV6}/64 dev ${link} nodad && ip link set ${link} up`,
    );
    await this.sh(
      ns,
      `ip link set lo up && ip addr add ${host.v4}/24 dev eth0 && ip addr add ${host.v6}/64 dev eth0 nodad && ip link set eth0 up && ` +
        `ip route add default via ${host.routerV4} && ip -6 route add default via ${host.routerV6}`,
    );
    this.hosts.set(name, host);
  }

  host(name: string): LabHost {
    const h = this.hosts.get(name);
    if (h === undefined) throw new Error(`no lab host ${name}`);
    return h;
  }

  async #cmd(file: string, args: string[], timeout = 20_000): Promise<string> {
    const { stdout } = await run(file, args, { timeout, maxBuffer: 64 << 20 });
    return stdout;
  }

  /** Runs a command in a namespace and returns its stdout (throws on failure). */
  async exec(ns: string, file: string, args: string[], timeout = 20_000): Promise<string> {
    return this.#cmd('ip', ['netns', 'exec', ns, file, ...args], timeout);
  }

  async sh(ns: string, script: string, timeout = 20_000): Promise<string> {
    return this.exec(ns, 'bash', ['-c', script], timeout);
  }

  /** Starts a long-running process in a namespace; it is killed at teardown. */
  spawn(ns: string, file: string, args: string[], env: NodeJS.ProcessEnv = process.env): ChildProcess {
    const child = spawn('ip', ['netns', 'exec', ns, file, ...args], { env, stdio: ['pipe', 'pipe', 'pipe'] });
    this.#procs.add(child);
    child.on('exit', () => this.#procs.delete(child));
    return child;
  }

  /**
   * As a seizure would: SIGKILL to everything in a host's namespace, then the namespace (and
   * so its link) deleted. The host stays in the map but is gone from the network.
   */
  async seize(name: string): Promise<void> {
    const h = this.host(name);
    const pids = (await this.#cmd('ip', ['netns', 'pids', h.ns])).split(/\s+/).filter(Boolean);
    for (const pid of pids) {
      try {
        process.kill(Number(pid), 'SIGKILL');
      } catch {
        // already gone
      }
    }
    await this.#cmd('ip', ['netns', 'del', h.ns]);
  }

  /** Kills every process left in our namespaces and deletes them. Safe to call twice. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const p of this.#procs) p.kill('SIGTERM');
    const names = [this.router, ...[...this.hosts.values()].map((h) => h.ns)];
    // Processes a namespace still holds (daemons that detached) are found through the namespace.
    for (const ns of names) {
      try {
        const pids = (await this.#cmd('ip', ['netns', 'pids', ns])).split(/\s+/).filter(Boolean);
        for (const pid of pids) {
          try {
            process.kill(Number(pid), 'SIGTERM');
          } catch {
            // already gone
          }
        }
      } catch {
        // namespace not there
      }
    }
    await new Promise((r) => setTimeout(r, 300));
    for (const p of this.#procs) p.kill('SIGKILL');
    for (const ns of names) {
      try {
        const pids = (await this.#cmd('ip', ['netns', 'pids', ns])).split(/\s+/).filter(Boolean);
        for (const pid of pids) {
          try {
            process.kill(Number(pid), 'SIGKILL');
          } catch {
            // already gone
          }
        }
        await this.#cmd('ip', ['netns', 'del', ns]);
      } catch {
        // not there
      }
    }
  }
}

/**
 * A temporary directory in memory (tmpfs: /dev/shm), for relay lists and directory
 * configurations: a relay reads configuration only from memory.
 */
export function memoryTempDir(prefix: string): string {
  const base = existsSync('/dev/shm') ? '/dev/shm' : tmpdir();
  return mkdtempSync(path.join(base, prefix));
}

/** Why namespace tests cannot run here, or null if they can. */
export async function labUnavailable(): Promise<string | null> {
  if (process.getuid?.() !== 0) return 'needs root (network namespaces, TUN)';
  try {
    await run('ip', ['netns', 'list']);
  } catch {
    return 'ip netns is not available';
  }
  try {
    const fs = await import('node:fs');
    fs.accessSync('/dev/net/tun');
  } catch {
    return '/dev/net/tun is not available';
  }
  return null;
}
