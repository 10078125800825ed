/**
 * The inside of a rootless connection (src/client/rootless.ts starts it): this process runs in
 * a fresh user + network namespace (`unshare --user --map-root-user --net`), where it is root
 * over nothing but that namespace. It brings lo up, creates the TUN, gives it the exit hop's
 * addresses and a default route, drives the cascade engine over the UDP socket(s) the parent
 * bound in the original namespace, and serves SOCKS5 / HTTP CONNECT on the listeners the parent
 * bound there: the outgoing TCP connections are made by the kernel's TCP stack here, so they
 * can only leave through the TUN, that is, through the cascade.
 *
 * Protocol over the IPC channel (JSON messages, handles attached where named):
 *   parent → child: {type:'config', ...}, {type:'udp4'|'udp6'|'socks'|'http'} + handle,
 *                   {type:'status', id}, {type:'close'}
 *   child → parent: {type:'hello'}, {type:'hop', hop, name}, {type:'ready', status},
 *                   {type:'error', code, message}, {type:'status', id, status}
 * The child exits when told to close or when the channel goes away (its parent died).
 */
import { execFileSync } from 'node:child_process';
import type dgram from 'node:dgram';
import type net from 'node:net';
import { hopStatuses } from './status.ts';
import { StrataError } from '../crypto/errors.ts';
import { CascadeEngine } from '../cascade/client.ts';
import { parseRelayList } from '../cascade/relaylist.ts';
import { WakeTimer } from '../device/waketimer.ts';
import { LinuxTun } from '../io/tun.ts';
import { AdoptedUdpBind } from '../io/udp.ts';
import type { UdpEndpoint } from '../io/types.ts';
import type { Outgoing } from '../wireguard/core.ts';
import { Dialer, serveSocks5 } from './socks5.ts';
import { serveHttpConnect } from './httpconnect.ts';

export interface ChildConfig {
  type: 'config';
  /** The path, as relay list JSON (relayListJson). */
  relays: string;
  hopTimeout: number;
  dns?: string;
  expect: { udp4: boolean; udp6: boolean; socks: boolean; http: boolean };
}

const IFNAME = 'strata0';
const IPV6_MIN_MTU = 1280;

function send(msg: object): void {
  if (process.connected) process.send!(msg);
}

function ip(args: string[]): void {
  try {
    execFileSync('ip', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (e) {
    const why = String((e as { stderr?: Buffer }).stderr ?? '').trim() || (e as Error).message;
    throw new StrataError('ERR_ROUTE', `inside the namespace: ip ${args.join(' ')}: ${why}`);
  }
}

const got: { config?: ChildConfig; udp4?: dgram.Socket; udp6?: dgram.Socket; socks?: net.Server; http?: net.Server } = {};
let started = false;
let engine: CascadeEngine | null = null;
let tun: LinuxTun | null = null;
let bind: AdoptedUdpBind | null = null;
let timer: WakeTimer | null = null;
let running = false;
let ready = false;
const counters = { requests: 0, failed: 0 };

function out(o: readonly Outgoing<UdpEndpoint>[]): void {
  if (bind === null) return;
  for (const x of o) bind.send(x.datagram, x.endpoint);
}

function schedule(): void {
  if (running) timer?.schedule();
}

function status(): object {
  const e = engine;
  const wallNow = Date.now();
  return {
    pid: process.pid,
    ready,
    interface: IFNAME,
    mtu: e?.tunMtu ?? null,
    addresses: e ? [e.exit.addresses.v4Text, e.exit.addresses.v6Text] : [],
    udpPort: bind?.port ?? null,
    socks5: got.socks?.address() ?? null,
    httpProxy: got.http?.address() ?? null,
    proxy: { ...counters },
    hops: hopStatuses(e ?? null, wallNow),
  };
}

async function start(c: ChildConfig): Promise<void> {
  const path = parseRelayList(c.relays);
  ip(['link', 'set', 'lo', 'up']);
  const eng = new CascadeEngine(path, { epochMs: Date.now() - performance.now() });
  engine = eng;
  try {
    tun = LinuxTun.create(IFNAME, Math.max(eng.tunMtu, IPV6_MIN_MTU));
  } catch (e) {
    throw new StrataError('ERR_TUN', `cannot create the tunnel interface inside the namespace: ${(e as Error).message}`);
  }
  const exit = eng.exit.addresses;
  ip(['addr', 'add', `${exit.v4Text}/32`, 'dev', IFNAME]);
  let v6 = true;
  try {
    ip(['-6', 'addr', 'add', `${exit.v6Text}/128`, 'dev', IFNAME, 'nodad']);
  } catch {
    v6 = false; // IPv6 disabled in new namespaces here: IPv4 only
  }
  ip(['link', 'set', IFNAME, 'up']);
  const v4Mtu = eng.tunMtu < tun.mtu ? ['mtu', String(eng.tunMtu)] : [];
  ip(['-4', 'route', 'add', 'default', 'dev', IFNAME, ...v4Mtu]);
  if (v6) ip(['-6', 'route', 'add', 'default', 'dev', IFNAME]);

  bind = new AdoptedUdpBind({ v4: got.udp4 ?? null, v6: got.udp6 ?? null });
  timer = new WakeTimer(eng, (now) => out(eng.tick(now)));
  running = true;
  bind.start((d, from) => {
    const r = eng.receive(d, from, performance.now());
    if (r.deliver !== null) tun?.write(r.deliver);
    out(r.out);
    schedule();
  });
  tun.start(
    (p) => {
      out(eng.send(p, performance.now()));
      schedule();
    },
    (why) => void shutdown(1, `the TUN closed: ${why.message}`),
  );

  const dialer = new Dialer(c.dns !== undefined ? { dns: c.dns } : {});
  const onRequest = (ev: { ok: boolean }): void => {
    counters.requests++;
    if (!ev.ok) counters.failed++;
  };
  if (got.socks) serveSocks5(got.socks, { dialer, onRequest });
  if (got.http) serveHttpConnect(got.http, { dialer, onRequest });

  for (let k = 0; k < eng.hops.length; k++) {
    const hop = eng.hops[k]!;
    send({ type: 'hop', hop: k + 1, name: hop.relay.name });
    out(eng.startHop(k, performance.now()));
    schedule();
    const deadline = performance.now() + c.hopTimeout * 1000;
    while (!eng.hopUp(k)) {
      if (!running) throw new StrataError('ERR_CLOSED', 'closed while connecting');
      if (performance.now() > deadline) {
        throw new StrataError('ERR_HOP_TIMEOUT', `hop ${k + 1} "${hop.relay.name}" did not answer within ${c.hopTimeout} s`);
      }
      await new Promise((r) => setTimeout(r, 10));
    }
  }
  ready = true;
  send({ type: 'ready', status: status() });
}

let shuttingDown = false;
async function shutdown(code: number, why?: string): Promise<void> {
  if (shuttingDown) return;
  shuttingDown = true;
  if (why !== undefined) process.stderr.write(`strata rootless: ${why}\n`);
  running = false;
  // Open proxied connections would keep the loop alive: leave once the cleanup below is done.
  setTimeout(() => process.exit(code), 200).unref();
  process.exitCode = code;
  timer?.stop();
  for (const s of [got.socks, got.http]) s?.close();
  // A TUN read blocked on the thread pool is woken only by the interface going away (closing
  // the descriptor does not wake it, and exit would wait for that thread): delete it first.
  if (tun !== null) {
    try {
      ip(['link', 'del', IFNAME]);
    } catch {
      // already gone
    }
  }
  tun?.close();
  await bind?.close().catch(() => {});
  engine?.close();
  if (process.connected) process.disconnect();
  process.exit(code);
}

function maybeStart(): void {
  const c = got.config;
  if (started || c === undefined) return;
  const e = c.expect;
  if ((e.udp4 && !got.udp4) || (e.udp6 && !got.udp6) || (e.socks && !got.socks) || (e.http && !got.http)) return;
  started = true;
  start(c).catch((err: unknown) => {
    const code = err instanceof StrataError ? err.code : 'ERR_ROOTLESS_CHILD';
    send({ type: 'error', code, message: (err as Error).message });
    void shutdown(1);
  });
}

process.on('message', (msg: { type?: string; id?: number }, handle?: unknown) => {
  switch (msg.type) {
    case 'config':
      got.config = msg as ChildConfig;
      break;
    case 'udp4':
    case 'udp6':
      got[msg.type] = handle as dgram.Socket;
      break;
    case 'socks':
    case 'http':
      got[msg.type] = handle as net.Server;
      break;
    case 'status':
      send({ type: 'status', id: msg.id, status: status() });
      return;
    case 'close':
      void shutdown(0);
      return;
    default:
      return;
  }
  maybeStart();
});
process.on('disconnect', () => void shutdown(0));
process.on('SIGTERM', () => void shutdown(0));
process.on('SIGINT', () => void shutdown(0));
send({ type: 'hello' });
