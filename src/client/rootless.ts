/**
 * Rootless client: `strata connect --socks5 127.0.0.1:1080 [--http-proxy 127.0.0.1:8080]` as an
 * unprivileged user. Nothing needs root:
 *
 *   - This process (the parent, in the user's own network namespace) binds the proxy
 *     listener(s) on loopback and the UDP socket that talks to the entry relay.
 *   - It starts src/client/rootless-child.ts under `unshare --user --map-root-user --net`: a
 *     fresh user + network namespace in which the child is root over nothing else, creates the
 *     TUN, routes everything through it and runs the cascade engine.
 *   - It hands the listener(s) and the UDP socket into the child over the Node IPC channel and
 *     closes its own copies (otherwise both processes would accept / receive). Descriptors keep
 *     the namespace they were made in: the proxies accept on the user's loopback, the relay
 *     traffic leaves from the user's namespace, and every proxied TCP connection is made by the
 *     kernel in the child's namespace, whose only route is the TUN.
 *
 * The user's own namespace is never changed (no TUN, route or address there); applications reach
 * the cascade only through the proxies. Failover (replacing a dead hop) is not done here yet:
 * a hop that dies leaves the proxies failing closed.
 *
 * Usage (for the CLI):
 *
 *   const conn = await connectRootless({ path, socks5: { host: '127.0.0.1', port: 1080 } });
 *   console.log(JSON.stringify(await conn.status()));   // hops, pid, proxies …
 *   await conn.closed;                                   // resolves when the child exits
 *   await conn.close();                                  // on SIGINT/SIGTERM
 *
 * Errors are StrataError with stable codes: ERR_ROOTLESS_OPTIONS (no proxy asked for, or a
 * non-loopback listen address), ERR_PORT_IN_USE, ERR_PORT_DENIED, ERR_USERNS_DENIED (with what
 * to change), ERR_UNSHARE_MISSING, ERR_ROOTLESS_CHILD (the child died or timed out), and the
 * child's own: ERR_TUN, ERR_ROUTE, ERR_HOP_TIMEOUT (names the hop), ERR_HOPS, ERR_HOP_KEY_MISSING.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import dgram from 'node:dgram';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { StrataError } from '../crypto/errors.ts';
import { relayListJson, type Relay } from '../cascade/relaylist.ts';
import type { ChildConfig } from './rootless-child.ts';

export interface HostPort {
  host: string;
  port: number;
}

export interface RootlessOptions {
  /** The cascade, entry first (1 to 5 Strata relays). */
  path: readonly Relay[];
  /** Where the SOCKS5 proxy listens (loopback only). */
  socks5?: HostPort;
  /** Where the HTTP CONNECT proxy listens (loopback only). */
  httpProxy?: HostPort;
  /** A DNS server (IP, reached through the cascade) for SOCKS5 hostnames and CONNECT targets; default: the system resolver's configuration, queried from inside the namespace. */
  dns?: string;
  /** Seconds to wait for each hop's handshake (default 5). */
  hopTimeout?: number;
  /** The unshare program (default: `unshare` on PATH). */
  unshare?: string;
  /** Gets each line the child writes to stderr (default: dropped, the last lines are kept for errors). */
  onLog?: (line: string) => void;
}

export interface RootlessStatus {
  pid: number;
  ready: boolean;
  interface: string;
  mtu: number | null;
  addresses: string[];
  udpPort: number | null;
  socks5: net.AddressInfo | null;
  httpProxy: net.AddressInfo | null;
  proxy: { requests: number; failed: number };
  hops: { hop: number; name: string; publicKey: string; country: string; endpoint: string; up: boolean; handshakeAgeSeconds: number | null; rxBytes: number; txBytes: number }[];
}

export interface RootlessConnection {
  /** The child's PID (the engine, in its own user + network namespace). */
  readonly pid: number;
  /** Current status, asked of the child (rejects if it is gone). */
  status(): Promise<RootlessStatus>;
  /** Resolves with the child's exit code once it exits, for whatever reason. */
  readonly closed: Promise<number | null>;
  /** Stops the child (SIGKILL after 3 s) and waits for it. Safe to call twice. */
  close(): Promise<void>;
}

const CHILD = path.join(path.dirname(fileURLToPath(import.meta.url)), 'rootless-child.ts');

function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || (net.isIPv4(host) && host.startsWith('127.'));
}

async function listen(where: HostPort, what: string): Promise<net.Server> {
  if (!isLoopback(where.host)) {
    throw new StrataError('ERR_ROOTLESS_OPTIONS', `the ${what} listens on loopback only (an unauthenticated proxy elsewhere is open to the network), not ${where.host}`);
  }
  if (!Number.isInteger(where.port) || where.port < 1 || where.port > 65535) {
    throw new StrataError('ERR_ROOTLESS_OPTIONS', `the ${what} port must be 1-65535, not ${where.port}`);
  }
  const server = net.createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', (e: NodeJS.ErrnoException) => {
      const at = `${where.host}:${where.port}`;
      if (e.code === 'EADDRINUSE') reject(new StrataError('ERR_PORT_IN_USE', `${at} is already in use: choose another port for the ${what}`));
      else if (e.code === 'EACCES') reject(new StrataError('ERR_PORT_DENIED', `${at}: ports below 1024 need privileges: choose a port >= 1024 for the ${what}`));
      else reject(new StrataError('ERR_PORT', `cannot listen on ${at} for the ${what}: ${e.message}`));
    });
    server.listen({ host: where.host, port: where.port, exclusive: true }, () => resolve());
  });
  return server;
}

function bindUdp(family: 'IPv4' | 'IPv6'): Promise<dgram.Socket> {
  return new Promise((resolve, reject) => {
    const s = dgram.createSocket({ type: family === 'IPv4' ? 'udp4' : 'udp6', ipv6Only: family === 'IPv6' });
    s.once('error', (e) => {
      s.close();
      reject(new StrataError('ERR_UDP', `cannot open the UDP socket for the relays: ${e.message}`));
    });
    s.bind({ port: 0, address: family === 'IPv4' ? '0.0.0.0' : '::', exclusive: true }, () => {
      s.removeAllListeners('error');
      for (const set of [() => s.setRecvBufferSize(7 << 20), () => s.setSendBufferSize(7 << 20)]) {
        try {
          set();
        } catch {
          // capped by the kernel
        }
      }
      resolve(s);
    });
  });
}

function readSysctl(file: string): string | null {
  try {
    return readFileSync(file, 'utf8').trim();
  } catch {
    return null;
  }
}

/** What to change so unprivileged user namespaces work here. */
export function usernsHint(): string {
  const hints: string[] = [];
  if (readSysctl('/proc/sys/kernel/unprivileged_userns_clone') === '0') hints.push('enable them: sysctl -w kernel.unprivileged_userns_clone=1');
  if (readSysctl('/proc/sys/kernel/apparmor_restrict_unprivileged_userns') === '1') {
    hints.push('AppArmor restricts them (Ubuntu >= 23.10): allow `userns` for node in an AppArmor profile, or sysctl -w kernel.apparmor_restrict_unprivileged_userns=0');
  }
  if (readSysctl('/proc/sys/user/max_user_namespaces') === '0') hints.push('raise the limit: sysctl -w user.max_user_namespaces=10000');
  if (hints.length === 0) {
    hints.push('allow them (sysctl kernel.unprivileged_userns_clone=1 on Debian; on Ubuntu >= 23.10 an AppArmor profile granting `userns`; user.max_user_namespaces > 0; in a container, a seccomp profile that allows unshare/clone with CLONE_NEWUSER)');
  }
  return hints.join('; ');
}

function toError(msg: { code?: unknown; message?: unknown }): StrataError {
  return new StrataError(typeof msg.code === 'string' ? msg.code : 'ERR_ROOTLESS_CHILD', typeof msg.message === 'string' ? msg.message : 'the rootless child failed');
}

/**
 * Builds the cascade with no privileges and serves it on the proxy listener(s). Resolves once
 * every hop is up and the proxies accept; rejects with a StrataError otherwise (nothing is left
 * running then).
 */
export async function connectRootless(o: RootlessOptions): Promise<RootlessConnection> {
  if (o.socks5 === undefined && o.httpProxy === undefined) {
    throw new StrataError('ERR_ROOTLESS_OPTIONS', 'rootless mode serves the cascade through a proxy: give --socks5 and/or --http-proxy');
  }
  if (o.path.length < 1 || o.path.length > 5) throw new StrataError('ERR_HOPS', `a cascade has 1 to 5 hops, not ${o.path.length}`);
  if (o.dns !== undefined && net.isIP(o.dns) === 0) throw new StrataError('ERR_ROOTLESS_OPTIONS', `--dns needs an IP address, not "${o.dns}"`);
  const hopTimeout = o.hopTimeout ?? 5;
  // Only the entry hop is reached over the network; the engine uses its first IPv4 endpoint.
  const entry = o.path[0]!;
  const family = (entry.endpoints.find((e) => e.family === 'IPv4') ?? entry.endpoints[0]!).family;

  const owned: { close(): unknown }[] = [];
  const closeOwned = (): void => {
    for (const s of owned.splice(0)) {
      try {
        s.close();
      } catch {
        // already closed
      }
    }
  };
  let socks: net.Server | null = null;
  let http: net.Server | null = null;
  let udp: dgram.Socket;
  try {
    if (o.socks5) owned.push((socks = await listen(o.socks5, 'SOCKS5 proxy')));
    if (o.httpProxy) owned.push((http = await listen(o.httpProxy, 'HTTP proxy')));
    owned.push((udp = await bindUdp(family)));
  } catch (e) {
    closeOwned();
    throw e;
  }

  let child: ChildProcess;
  try {
    child = spawn(o.unshare ?? 'unshare', ['--user', '--map-root-user', '--net', process.execPath, CHILD], {
      stdio: ['ignore', 'ignore', 'pipe', 'ipc'],
      serialization: 'json',
    });
  } catch (e) {
    closeOwned();
    throw new StrataError('ERR_UNSHARE_MISSING', `cannot start unshare (util-linux): ${(e as Error).message}`);
  }
  let stderrTail = '';
  let partial = '';
  child.stderr!.on('data', (d: Buffer) => {
    stderrTail = (stderrTail + d.toString()).slice(-4000);
    partial += d.toString();
    const lines = partial.split('\n');
    partial = lines.pop()!;
    for (const l of lines) o.onLog?.(l);
  });
  const spawnFailure = new Promise<never>((_, reject) => {
    child.once('error', (e: NodeJS.ErrnoException) => {
      reject(
        e.code === 'ENOENT'
          ? new StrataError('ERR_UNSHARE_MISSING', 'unshare (util-linux) is not installed or not on PATH')
          : new StrataError('ERR_ROOTLESS_CHILD', `cannot start the rootless child: ${e.message}`),
      );
    });
  });
  spawnFailure.catch(() => {});
  // 'exit' (or 'error' when it never started): the child is gone.
  const closed = new Promise<number | null>((resolve) => {
    child.once('exit', (code) => resolve(code));
    child.once('error', () => resolve(null));
  });

  const pending = new Map<number, (s: RootlessStatus) => void>();
  let nextId = 1;
  let exited = false;
  void closed.then(() => {
    exited = true;
    pending.clear();
  });

  const kill = async (): Promise<void> => {
    if (exited) return;
    try {
      if (child.connected) child.send({ type: 'close' });
    } catch {
      // channel gone
    }
    const t = setTimeout(() => child.kill('SIGTERM'), 1000);
    const k = setTimeout(() => child.kill('SIGKILL'), 3000);
    await closed;
    clearTimeout(t);
    clearTimeout(k);
  };

  const earlyExit = closed.then((code): never => {
    const why = stderrTail.trim();
    if (/unshare failed|Operation not permitted|No space left on device|write failed \/proc\/self\/(uid_map|gid_map|setgroups)/i.test(why) && !/strata rootless:/.test(why)) {
      throw new StrataError('ERR_USERNS_DENIED', `cannot create an unprivileged user namespace (${why.split('\n').pop()}): ${usernsHint()}`);
    }
    throw new StrataError('ERR_ROOTLESS_CHILD', `the rootless child exited (${code})${why ? `: ${why.split('\n').slice(-3).join(' | ')}` : ''}`);
  });
  earlyExit.catch(() => {});

  const messages = new Promise<RootlessStatus>((resolve, reject) => {
    child.on('message', (msg: { type?: string; id?: number; status?: RootlessStatus; code?: unknown; message?: unknown }) => {
      switch (msg.type) {
        case 'hello': {
          const config: ChildConfig = {
            type: 'config',
            relays: relayListJson(o.path),
            hopTimeout,
            ...(o.dns !== undefined ? { dns: o.dns } : {}),
            expect: { udp4: family === 'IPv4', udp6: family === 'IPv6', socks: socks !== null, http: http !== null },
          };
          child.send(config);
          // Each handle goes in, then this process's copy is closed: a listener left open here
          // would take its share of the connections and serve none of them.
          const handOver = (type: string, h: net.Server | dgram.Socket): void => {
            child.send({ type }, h, (err) => {
              if (err) reject(new StrataError('ERR_ROOTLESS_CHILD', `cannot hand the ${type} socket to the child: ${err.message}`));
              const i = owned.indexOf(h);
              if (i >= 0) owned.splice(i, 1);
              h.close();
            });
          };
          handOver(family === 'IPv4' ? 'udp4' : 'udp6', udp);
          if (socks) handOver('socks', socks);
          if (http) handOver('http', http);
          break;
        }
        case 'hop':
          o.onLog?.(`connecting hop ${String((msg as { hop?: unknown }).hop)} "${String((msg as { name?: unknown }).name)}"`);
          break;
        case 'ready':
          resolve(msg.status!);
          break;
        case 'error':
          reject(toError(msg));
          break;
        case 'status': {
          const r = pending.get(msg.id ?? -1);
          if (r) {
            pending.delete(msg.id!);
            r(msg.status!);
          }
          break;
        }
      }
    });
  });
  messages.catch(() => {});

  const overall = hopTimeout * o.path.length * 1000 + 15_000;
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new StrataError('ERR_ROOTLESS_CHILD', `the rootless child was not ready within ${Math.round(overall / 1000)} s`)), overall);
  });
  try {
    await Promise.race([messages, earlyExit, spawnFailure, timeout]);
  } catch (e) {
    closeOwned();
    await kill();
    throw e;
  } finally {
    clearTimeout(timer);
  }
  closeOwned(); // all handed over by now; anything left is closed

  return {
    pid: child.pid!,
    closed,
    status(): Promise<RootlessStatus> {
      if (exited || !child.connected) return Promise.reject(new StrataError('ERR_NOT_CONNECTED', 'the rootless connection is closed'));
      const id = nextId++;
      return new Promise((resolve, reject) => {
        const t = setTimeout(() => {
          pending.delete(id);
          reject(new StrataError('ERR_ROOTLESS_CHILD', 'the rootless child did not answer a status request'));
        }, 3000);
        pending.set(id, (s) => {
          clearTimeout(t);
          resolve(s);
        });
        child.send({ type: 'status', id });
      });
    },
    close: kill,
  };
}
