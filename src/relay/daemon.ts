/**
 * The relay daemon around RelayNode: real sockets, and in exit role a TUN with the hop
 * prefixes, forwarding on, and an nftables table of its own that masquerades client traffic
 * leaving any other interface. Keys come from memory only (environment or stdin); nothing is
 * written to disk; logs carry no address, port or key.
 */
import { execFileSync } from 'node:child_process';
import v8 from 'node:v8';
import vm from 'node:vm';
import { PrivateKey, PublicKey } from '../crypto/keys.ts';
import { StrataError } from '../crypto/errors.ts';
import { createBind, createForwardBind, createTun } from '../io/index.ts';
import type { Tun } from '../io/types.ts';
import { EXIT_GATEWAY_V4, EXIT_GATEWAY_V6, HOP_PREFIX_V4, HOP_PREFIX_V6 } from '../cascade/addresses.ts';
import type { Relay } from '../cascade/relaylist.ts';
import { RelayNode } from './relay.ts';
import { harden } from './hardening.ts';
import { relayLogger, type RelayLogger } from './log.ts';

export interface RelayDaemonOptions {
  privateKey: PrivateKey;
  relays: readonly Relay[];
  listenPort: number;
  exit: boolean;
  exitInterface?: string;
  allow?: readonly PublicKey[] | null;
  maxClients?: number;
  /**
   * Test-only: after SIGHUP the relay's clock runs this many times faster, so key expiry
   * (540 s) can be watched in seconds. Refused unless STRATA_TEST_MODE=1.
   */
  timeScale?: number;
  /** Harden the process first (core dumps off, swap refused, permission model required). */
  harden?: { allowSwap: boolean; requireNoWrites: boolean } | null;
  log?: RelayLogger;
}

/**
 * A full garbage collection whose freed memory V8 overwrites with zeros (--clear-free-memory):
 * after a client is forgotten, nothing of it stays in the heap's free space.
 */
function zeroingCollector(): () => void {
  v8.setFlagsFromString('--clear-free-memory');
  v8.setFlagsFromString('--expose-gc');
  type Gc = (options?: { type?: 'major' | 'minor'; execution?: 'sync' }) => void;
  const gc = vm.runInNewContext('gc') as Gc;
  let pending: NodeJS.Timeout | null = null;
  return () => {
    if (pending !== null) return;
    pending = setTimeout(() => {
      pending = null;
      // Full collections sweep the old generation and zero what they free. The young
      // generation is copied, not swept: the half it was copied from still holds the dead
      // objects, so it is overwritten by filling the young generation with zeros, twice over.
      // Regular collections, not "last-resort" ones: those shrink the young generation and
      // give its pages to V8's page pool unzeroed, out of the fill's reach (seen as a client
      // address left in an entry relay's memory after expiry).
      gc({ type: 'major', execution: 'sync' });
      for (let round = 0; round < 48; round++) {
        const filler: number[][] = [];
        for (let i = 0; i < 128; i++) filler.push(new Array<number>(1024).fill(0));
        filler.length = 0;
      }
      gc({ type: 'major', execution: 'sync' });
      // A collection may leave its sweeping (which is what zeroes the freed objects) to
      // background threads after it returns; the next full collection finishes it before it
      // starts, so one more leaves nothing dead and unzeroed behind.
      gc({ type: 'major', execution: 'sync' });
    }, 50);
    pending.unref();
  };
}

const NFT_TABLE = 'strata_exit';

function sh(file: string, args: string[]): void {
  execFileSync(file, args, { stdio: ['ignore', 'ignore', 'pipe'] });
}

/** Sets up the exit's TUN addresses, forwarding and masquerade; returns the undo. */
function setUpExit(tun: Tun): () => void {
  const name = tun.name;
  sh('ip', ['addr', 'add', `${EXIT_GATEWAY_V4}/10`, 'dev', name]);
  sh('ip', ['-6', 'addr', 'add', `${EXIT_GATEWAY_V6}/48`, 'dev', name, 'nodad']);
  sh('ip', ['link', 'set', name, 'up']);
  sh('sysctl', ['-qw', 'net.ipv4.ip_forward=1', 'net.ipv6.conf.all.forwarding=1']);
  const ruleset = [
    `table inet ${NFT_TABLE} {`,
    '  chain postrouting {',
    '    type nat hook postrouting priority srcnat; policy accept;',
    `    ip saddr ${HOP_PREFIX_V4} oifname != "${name}" masquerade`,
    `    ip6 saddr ${HOP_PREFIX_V6} oifname != "${name}" masquerade`,
    '  }',
    '}',
  ].join('\n');
  try {
    execFileSync('nft', ['delete', 'table', 'inet', NFT_TABLE], { stdio: 'ignore' });
  } catch {
    // not there
  }
  execFileSync('nft', ['-f', '-'], { input: ruleset, stdio: ['pipe', 'ignore', 'pipe'] });
  return () => {
    try {
      execFileSync('nft', ['delete', 'table', 'inet', NFT_TABLE], { stdio: 'ignore' });
    } catch {
      // already gone
    }
  };
}

export class RelayDaemon {
  readonly node: RelayNode;
  readonly port: number;
  readonly #undoExit: (() => void) | null;

  private constructor(node: RelayNode, port: number, undo: (() => void) | null) {
    this.node = node;
    this.port = port;
    this.#undoExit = undo;
  }

  static async start(o: RelayDaemonOptions): Promise<RelayDaemon> {
    if (o.harden) harden(o.harden);
    const log = o.log ?? relayLogger();
    const collect = zeroingCollector();
    const scale = o.timeScale ?? 1;
    if (scale !== 1) {
      if (process.env.STRATA_TEST_MODE !== '1') throw new StrataError('ERR_TEST_ONLY', 'a time scale is for tests only (STRATA_TEST_MODE=1)');
      if (!(scale >= 1 && scale <= 10_000)) throw new StrataError('ERR_OPTION', 'the time scale must be 1 to 10000');
    }
    let tun: Tun | null = null;
    let undo: (() => void) | null = null;
    if (o.exit) {
      try {
        tun = createTun(o.exitInterface ?? 'strata-exit', 1440);
        undo = setUpExit(tun);
      } catch (e) {
        tun?.close();
        throw new StrataError('ERR_EXIT_SETUP', `cannot set up the exit: ${(e as Error).message.split('\n')[0]}`);
      }
    }
    const node = new RelayNode({
      privateKey: o.privateKey,
      bind: createBind(),
      tun,
      relays: o.relays,
      makeForwardBind: createForwardBind,
      allow: o.allow ?? null,
      maxClients: o.maxClients ?? 1024,
      timeScale: scale,
      onExpire: () => {
        log('client-expired', { clients: node.stats.clients });
        collect();
      },
    });
    let port: number;
    try {
      port = await node.start(o.listenPort);
    } catch (e) {
      node.stop();
      undo?.();
      const code = (e as NodeJS.ErrnoException).code;
      throw new StrataError(code === 'EADDRINUSE' ? 'ERR_PORT_IN_USE' : 'ERR_BIND', `cannot listen on UDP port ${o.listenPort}: ${code ?? (e as Error).message}`);
    }
    // SIGHUP (SIGUSR1 belongs to Node's inspector, and the permission model swallows it).
    if (scale !== 1) process.on('SIGHUP', () => node.accelerate());
    log('relay-started', { relays: o.relays.length });
    return new RelayDaemon(node, port, undo);
  }

  stop(): void {
    this.node.stop();
    this.#undoExit?.();
  }
}
