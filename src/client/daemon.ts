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
import { replaceHop, type PathConstraints } from '../cascade/path.ts';
import { disableKillSwitch, enableKillSwitch, killSwitchPresent } from './killswitch.ts';
import { configureDns, restoreDnsLeftovers, type DnsSetup } from './dns.ts';
import { WakeTimer } from '../device/waketimer.ts';
import { hopStatuses, type HopStatus } from './status.ts';
import { createBind, createTun } from '../io/index.ts';
import type { Tun, UdpBind, UdpEndpoint } from '../io/types.ts';
import type { Outgoing } from '../wireguard/core.ts';

export const ROUTE_TABLE = 21317; // also the socket mark
const RULE_PRIORITY = 21310;
/**
 * IPv6 needs a link MTU of at least 1280 (RFC 8200); Linux refuses IPv6 addresses on a smaller
 * one. Deep cascades (4 or 5 hops: 1260, 1200) get a TUN of 1280 for IPv6, whose largest packets
 * the kernel then fragments on the outer hops, while IPv4 keeps the cascade's MTU through the
 * `mtu` of its routes.
 */
const IPV6_MIN_MTU = 1280;

export interface ClientOptions {
  path: readonly Relay[];
  ifname?: string;
  /** Seconds to wait for each hop's handshake. */
  hopTimeout?: number;
  /** Route everything through the tunnel (default), or only these prefixes. */
  routes?: readonly string[] | null;
  /** Registered keys for stock WireGuard hops, by hop index. */
  hopKeys?: ReadonlyMap<number, PrivateKey>;
  /** The relays replacements are drawn from (the relay list or the current consensus). */
  relays?: readonly Relay[];
  /** Install the kill switch (default true). */
  killSwitch?: boolean;
  /** A resolver reached through the tunnel: the system is pointed at it, other DNS refused. */
  dns?: string | null;
  /** LAN prefixes the kill switch lets through outside the tunnel. */
  allowLan?: readonly string[];
  failover?: Partial<FailoverTiming>;
  /** Path rules for replacements. */
  constraints?: PathConstraints;
}

export interface FailoverTiming {
  /** Silence at the exit while the user sends, before the hops are probed. */
  silenceMs: number;
  /** How long the probe handshakes have to come back. */
  probeMs: number;
  /** How long a replacement hop has to come up before another is tried. */
  replaceMs: number;
}

export const DEFAULT_FAILOVER: FailoverTiming = { silenceMs: 1000, probeMs: 500, replaceMs: 2000 };

export interface FailoverEvent {
  hop: number;
  failed: string;
  replacement: string | null;
  /** ms from the last packet received to detection, and to the new hop being up. */
  detectedAfterMs: number;
  restoredAfterMs: number | null;
}


export type { HopStatus };

export interface ClientStatus {
  interface: string;
  mtu: number;
  addresses: string[];
  hops: HopStatus[];
  killSwitch: boolean;
  dns: { resolver: string; mode: string } | null;
  failovers: FailoverEvent[];
  directorySerial: number | null;
}

function ip(args: string[]): void {
  try {
    execFileSync('ip', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (e) {
    const why = String((e as { stderr?: Buffer }).stderr ?? '').trim() || (e as Error).message;
    throw new StrataError('ERR_ROUTE', `cannot set up the tunnel's addresses or routes (ip ${args.join(' ')}): ${why}`);
  }
}

function tryIp(args: string[]): void {
  try {
    ip(args);
  } catch {
    // already gone
  }
}

/**
 * After a daemon that crashed (or was killed): removes what it left — the kill switch, the
 * policy-routing rules and the resolver files. Returns whether anything was there.
 */
export function cleanUpLeftovers(): boolean {
  let found = killSwitchPresent();
  disableKillSwitch();
  for (const f of ['-4', '-6']) {
    let rules = '';
    try {
      rules = execFileSync('ip', [f, 'rule', 'show'], { encoding: 'utf8' });
    } catch {
      continue;
    }
    if (rules.includes(`lookup ${ROUTE_TABLE}`) || rules.includes(`${RULE_PRIORITY}:`)) found = true;
    tryIp([f, 'rule', 'del', 'not', 'fwmark', String(ROUTE_TABLE), 'table', String(ROUTE_TABLE), 'priority', String(RULE_PRIORITY + 1)]);
    tryIp([f, 'rule', 'del', 'table', 'main', 'suppress_prefixlength', '0', 'priority', String(RULE_PRIORITY)]);
    tryIp([f, 'route', 'flush', 'table', String(ROUTE_TABLE)]);
  }
  if (restoreDnsLeftovers()) found = true;
  return found;
}

export class ClientDaemon {
  readonly engine: CascadeEngine;
  readonly tun: Tun;
  readonly bind: UdpBind;
  readonly #routes: readonly string[] | null;
  relays: readonly Relay[];
  directorySerial: number | null = null;
  readonly failovers: FailoverEvent[] = [];
  readonly #failed = new Set<string>();
  readonly #timing: FailoverTiming;
  readonly #constraints: PathConstraints;
  #killSwitch = false;
  #dns: DnsSetup | null = null;
  #monitor: NodeJS.Timeout | null = null;
  #repairing = false;
  #lastProbe = -Infinity;
  #addresses: [string, string] | null = null;
  readonly #timer: WakeTimer;
  #running = false;
  #routed = false;

  private constructor(engine: CascadeEngine, tun: Tun, bind: UdpBind, o: ClientOptions) {
    this.engine = engine;
    this.tun = tun;
    this.bind = bind;
    this.#routes = o.routes ?? null;
    this.relays = o.relays ?? o.path;
    this.#timing = { ...DEFAULT_FAILOVER, ...(o.failover ?? {}) };
    this.#constraints = o.constraints ?? {};
    this.#timer = new WakeTimer(engine, (now) => this.#send(engine.tick(now)));
  }

  static async connect(o: ClientOptions): Promise<ClientDaemon> {
    const engine = new CascadeEngine(o.path, { epochMs: Date.now() - performance.now(), ...(o.hopKeys ? { hopKeys: o.hopKeys } : {}) });
    let tun: Tun;
    try {
      tun = createTun(o.ifname ?? 'strata0', Math.max(engine.tunMtu, IPV6_MIN_MTU));
    } catch (e) {
      engine.close();
      throw new StrataError('ERR_TUN', `cannot create the tunnel interface: ${(e as Error).message}`);
    }
    const bind = createBind();
    const d = new ClientDaemon(engine, tun, bind, o);
    try {
      if (o.killSwitch !== false) {
        enableKillSwitch({ tunName: tun.name, mark: ROUTE_TABLE, dns: o.dns ?? null, allowLan: o.allowLan ?? [] });
        d.#killSwitch = true;
      }
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
      if (o.dns) d.#dns = configureDns(tun.name, o.dns);
      d.#monitor = setInterval(() => d.#watch(), 100);
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

  /**
   * Gives the TUN the exit hop's addresses (again, after the exit was replaced). The new ones
   * go on before the old come off: an interface left with no address loses its routes.
   */
  #address(): void {
    const name = this.tun.name;
    const exit = this.engine.exit.addresses;
    const old = this.#addresses;
    if (old !== null && old[0] === exit.v4Text) return;
    ip(['addr', 'add', `${exit.v4Text}/32`, 'dev', name]);
    ip(['-6', 'addr', 'add', `${exit.v6Text}/128`, 'dev', name, 'nodad']);
    if (old !== null) {
      tryIp(['addr', 'del', `${old[0]}/32`, 'dev', name]);
      tryIp(['-6', 'addr', 'del', `${old[1]}/128`, 'dev', name]);
    }
    this.#addresses = [exit.v4Text, exit.v6Text];
  }

  /**
   * Failover: while the user sends and nothing has come back from the exit for silenceMs, every
   * hop is probed with a handshake; the first that does not answer within probeMs is replaced
   * alone (a new relay keeping the path's diversity rules, never one seen failing).
   */
  #watch(): void {
    if (!this.#running || this.#repairing) return;
    const now = performance.now();
    const e = this.engine;
    const exitHeard = e.lastReceived[e.hops.length - 1]!;
    const silent = now - e.lastSent < 2000 && e.lastSent > exitHeard && now - exitHeard > this.#timing.silenceMs;
    if (!silent || now - this.#lastProbe < this.#timing.silenceMs + this.#timing.probeMs) return;
    this.#lastProbe = now;
    this.#repairing = true;
    this.#send(e.probe(now));
    this.#schedule();
    setTimeout(() => {
      const k = e.probeResult();
      if (k < 0) {
        // Every relay answered: the silence is the destination's. Back off before asking again.
        this.#lastProbe = performance.now() + 10_000;
        this.#repairing = false;
        return;
      }
      void this.#repair(k, exitHeard).finally(() => (this.#repairing = false));
    }, this.#timing.probeMs);
  }

  async #repair(k: number, lastHeard: number): Promise<void> {
    const failed = this.engine.hops[k]!.relay;
    this.#failed.add(failed.name);
    const event: FailoverEvent = {
      hop: k + 1,
      failed: failed.name,
      replacement: null,
      detectedAfterMs: Math.round(performance.now() - lastHeard),
      restoredAfterMs: null,
    };
    this.failovers.push(event);
    // While no replacement can be found a repair is retried every probe: keep the latest few.
    if (this.failovers.length > 32) this.failovers.splice(0, this.failovers.length - 32);
    for (;;) {
      if (!this.#running) return;
      let relay: Relay;
      try {
        relay = replaceHop(this.relays, this.engine.hops.map((h) => h.relay), k, { ...this.#constraints, avoid: this.#failed });
      } catch {
        // No other relay keeps the rules. If one was already tried, it may still answer late:
        // give it longer before leaving traffic blocked (fail closed).
        if (event.replacement !== null) {
          const late = performance.now() + 4 * this.#timing.replaceMs;
          while (this.#running && !this.engine.hopUp(k) && performance.now() < late) await new Promise((r) => setTimeout(r, 10));
          if (this.engine.hopUp(k)) {
            this.#failed.delete(this.engine.hops[k]!.relay.name);
            if (k === this.engine.hops.length - 1) this.#address();
            event.restoredAfterMs = Math.round(performance.now() - lastHeard);
          }
        }
        return;
      }
      event.replacement = relay.name;
      this.#send(this.engine.replaceHop(k, relay, performance.now()));
      this.#schedule();
      const deadline = performance.now() + this.#timing.replaceMs;
      while (!this.engine.hopUp(k) && performance.now() < deadline) await new Promise((r) => setTimeout(r, 10));
      if (this.engine.hopUp(k)) {
        if (k === this.engine.hops.length - 1) this.#address();
        event.restoredAfterMs = Math.round(performance.now() - lastHeard);
        return;
      }
      this.#failed.add(relay.name);
    }
  }

  #route(): void {
    const name = this.tun.name;
    this.#address();
    ip(['link', 'set', name, 'up']);
    this.#routed = true;
    const v4Mtu = this.engine.tunMtu < this.tun.mtu ? ['mtu', String(this.engine.tunMtu)] : [];
    if (this.#routes !== null) {
      for (const r of this.#routes) ip(r.includes(':') ? ['-6', 'route', 'add', r, 'dev', name] : ['-4', 'route', 'add', r, 'dev', name, ...v4Mtu]);
      return;
    }
    for (const f of ['-4', '-6']) {
      ip([f, 'route', 'add', 'default', 'dev', name, 'table', String(ROUTE_TABLE), ...(f === '-4' ? v4Mtu : [])]);
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
    if (this.#running) this.#timer.schedule();
  }

  status(): ClientStatus {
    const wallNow = Date.now();
    return {
      interface: this.tun.name,
      mtu: this.engine.tunMtu,
      addresses: [this.engine.exit.addresses.v4Text, this.engine.exit.addresses.v6Text],
      hops: hopStatuses(this.engine, wallNow),
      killSwitch: this.#killSwitch,
      dns: this.#dns === null ? null : { resolver: this.#dns.resolver, mode: this.#dns.mode },
      failovers: this.failovers,
      directorySerial: this.directorySerial,
    };
  }

  close(): void {
    this.#running = false;
    this.#timer.stop();
    if (this.#monitor) clearInterval(this.#monitor);
    this.#monitor = null;
    this.#dns?.restore();
    this.#dns = null;
    this.#unroute();
    if (this.#killSwitch) {
      disableKillSwitch();
      this.#killSwitch = false;
    }
    this.tun.close();
    void this.bind.close();
    this.engine.close();
  }
}
