/**
 * The relay daemon around RelayNode: real sockets, and in exit role a TUN with the hop
 * prefixes, forwarding on, and an nftables table of its own that masquerades client traffic
 * leaving any other interface. Keys come from memory only (environment or stdin); nothing is
 * written to disk; logs carry no address, port or key.
 */
import { execFileSync } from 'node:child_process';
import { PrivateKey, PublicKey } from '../crypto/keys.ts';
import { StrataError } from '../crypto/errors.ts';
import { createBind, createForwardBind, createTun } from '../io/index.ts';
import type { Tun } from '../io/types.ts';
import { EXIT_GATEWAY_V4, EXIT_GATEWAY_V6, HOP_PREFIX_V4, HOP_PREFIX_V6 } from '../cascade/addresses.ts';
import type { Relay } from '../cascade/relaylist.ts';
import { RelayNode } from './relay.ts';

export interface RelayDaemonOptions {
  privateKey: PrivateKey;
  relays: readonly Relay[];
  listenPort: number;
  exit: boolean;
  exitInterface?: string;
  allow?: readonly PublicKey[] | null;
  maxClients?: number;
  log?: (event: string) => void;
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
    return new RelayDaemon(node, port, undo);
  }

  stop(): void {
    this.node.stop();
    this.#undoExit?.();
  }
}
