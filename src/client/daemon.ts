/**
 * The client daemon: a cascade through 1 to 5 relays behind a TUN. It brings the hops up one
 * by one through the layers already up (a hop that does not answer is named in the error),
 * routes everything through the TUN with policy routing (its own UDP socket carries a mark
 * that keeps it on the main table, as wg-quick does), serves status on a control socket, and
 * on disconnect removes what it added.
 */
import { execFileSync } from 'node:child_process';
import { StrataError } from '../crypto/errors.ts';
import type { PrivateKey } from '../crypto/keys.ts';
import { CascadeEngine } from '../cascade/client.ts';
import type { Relay } from '../cascade/relaylist.ts';
import { formatEndpoint } from '../device/endpoint.ts';
import { createBind, createTun } from '../io/index.ts';
import type { Tun, UdpBind, UdpEndpoint } from '../io/types.ts';
import type { Outgoing } from '../wireguard/core.ts';

export const ROUTE_TABLE = 21317; // also the socket mark
const RULE_PRIORITY = 21310;

export interface ClientOptions {
  path: readonly Relay[];
  ifname?: string;
  /** Seconds to wait for each hop's handshake. */
  hopTimeout?: number;
  /** Route everything through the tunnel (default), or only these prefixes. */
  routes?: readonly string[] | null;
  /** Registered keys for stock WireGuard hops, by hop index. */
  hopKeys?: ReadonlyMap<number, PrivateKey>;
}

export interface HopStatus {
  hop: number;
  name: string;
  country: string;
  endpoint: string;
  up: boolean;
  handshakeAgeSeconds: number | null;
  rxBytes: number;
  txBytes: number;
}

export interface ClientStatus {
  interface: string;
  mtu: number;
  addresses: string[];
  hops: HopStatus[];
}

function ip(args: string[]): void {
  execFileSync('ip', args, { stdio: ['ignore', 'ignore', 'pipe'] });
}

function tryIp(args: string[]): void {
  try {
    ip(args);
  } catch {
    // already gone
  }
}

export class ClientDaemon {
  readonly engine: CascadeEngine;
  readonly tun: Tun;
  readonly bind: UdpBind;
  readonly #routes: readonly string[] | null;
  #timer: NodeJS.Timeout | null = null;
  #timerAt = Infinity;
  #running = false;
  #routed = false;

  private constructor(engine: CascadeEngine, tun: Tun, bind: UdpBind, routes: readonly string[] | null) {
    this.engine = engine;
    this.tun = tun;
    this.bind = bind;
    this.#routes = routes;
  }

  static async connect(o: ClientOptions): Promise<ClientDaemon> {
    const engine = new CascadeEngine(o.path, { epochMs: Date.now() - performance.now(), ...(o.hopKeys ? { hopKeys: o.hopKeys } : {}) });
    let tun: Tun;
    try {
      tun = createTun(o.ifname ?? 'strata0', engine.tunMtu);
    } catch (e) {
      engine.close();
      throw new StrataError('ERR_TUN', `cannot create the tunnel interface: ${(e as Error).message}`);
    }
    const bind = createBind();
    const d = new ClientDaemon(engine, tun, bind, o.routes ?? null);
    try {
      await bind.open(0);
      bind.setMark(ROUTE_TABLE);
      bind.start((dg, from) => d.#onDatagram(dg, from));
      tun.start(
        (p) => d.#onTunPacket(p),
        () => d.close(),
      );
      d.#running = true;
      await d.#bringUp(o.hopTimeout ?? 5);
      d.#route();
    } catch (e) {
      d.close();
      throw e;
    }
    return d;
  }

  async #bringUp(timeoutSeconds: number): Promise<void> {
    for (let k = 0; k < this.engine.hops.length; k++) {
      const hop = this.engine.hops[k]!;
      this.#send(this.engine.startHop(k, performance.now()));
      this.#schedule();
      const deadline = performance.now() + timeoutSeconds * 1000;
      while (!this.engine.hopUp(k)) {
        if (performance.now() > deadline) {
          throw new StrataError('ERR_HOP_TIMEOUT', `hop ${k + 1} "${hop.relay.name}" did not answer within ${timeoutSeconds} s`);
        }
        await new Promise((r) => setTimeout(r, 10));
      }
    }
  }

  #route(): void {
    const name = this.tun.name;
    const exit = this.engine.exit.addresses;
    ip(['addr', 'add', `${exit.v4Text}/32`, 'dev', name]);
    ip(['-6', 'addr', 'add', `${exit.v6Text}/128`, 'dev', name, 'nodad']);
    ip(['link', 'set', name, 'up']);
    this.#routed = true;
    if (this.#routes !== null) {
      for (const r of this.#routes) ip([r.includes(':') ? '-6' : '-4', 'route', 'add', r, 'dev', name]);
      return;
    }
    for (const f of ['-4', '-6']) {
      ip([f, 'route', 'add', 'default', 'dev', name, 'table', String(ROUTE_TABLE)]);
      ip([f, 'rule', 'add', 'not', 'fwmark', String(ROUTE_TABLE), 'table', String(ROUTE_TABLE), 'priority', String(RULE_PRIORITY + 1)]);
      ip([f, 'rule', 'add', 'table', 'main', 'suppress_prefixlength', '0', 'priority', String(RULE_PRIORITY)]);
    }
  }

  #unroute(): void {
    if (!this.#routed) return;
    this.#routed = false;
    if (this.#routes === null) {
      for (const f of ['-4', '-6']) {
        tryIp([f, 'rule', 'del', 'not', 'fwmark', String(ROUTE_TABLE), 'table', String(ROUTE_TABLE), 'priority', String(RULE_PRIORITY + 1)]);
        tryIp([f, 'rule', 'del', 'table', 'main', 'suppress_prefixlength', '0', 'priority', String(RULE_PRIORITY)]);
        tryIp([f, 'route', 'flush', 'table', String(ROUTE_TABLE)]);
      }
    }
  }

  #send(out: readonly Outgoing<UdpEndpoint>[]): void {
    for (const o of out) this.bind.send(o.datagram, o.endpoint);
  }

  #onTunPacket(p: Uint8Array): void {
    this.#send(this.engine.send(p, performance.now()));
    this.#schedule();
  }

  #onDatagram(d: Uint8Array, from: UdpEndpoint): void {
    const r = this.engine.receive(d, from, performance.now());
    if (r.deliver !== null) this.tun.write(r.deliver);
    this.#send(r.out);
    this.#schedule();
  }

  #schedule(): void {
    if (!this.#running) return;
    const at = this.engine.wakeHint;
    if (at >= this.#timerAt) return;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timerAt = at;
    this.#timer = setTimeout(() => {
      this.#timer = null;
      this.#timerAt = Infinity;
      this.#send(this.engine.tick(performance.now()));
      this.engine.resetWakeHint();
      this.#schedule();
    }, Math.max(0, at - performance.now()));
  }

  status(): ClientStatus {
    const wallNow = Date.now();
    return {
      interface: this.tun.name,
      mtu: this.engine.tunMtu,
      addresses: [this.engine.exit.addresses.v4Text, this.engine.exit.addresses.v6Text],
      hops: this.engine.hops.map((h) => ({
        hop: h.index + 1,
        name: h.relay.name,
        country: h.relay.country,
        endpoint: formatEndpoint(h.endpoint),
        up: h.peer.current !== null,
        handshakeAgeSeconds: h.peer.lastHandshakeWallMs === 0 ? null : Math.max(0, Math.round((wallNow - h.peer.lastHandshakeWallMs) / 1000)),
        rxBytes: h.peer.rxBytes,
        txBytes: h.peer.txBytes,
      })),
    };
  }

  close(): void {
    this.#running = false;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
    this.#unroute();
    this.tun.close();
    void this.bind.close();
    this.engine.close();
  }
}
