/**
 * The fail-closed rule: an nftables table of Strata's own, replaced atomically with `nft -f`,
 * whose output policy is drop. Only loopback, the tunnel interface, the daemon's own packets
 * (its UDP socket carries the mark) and IPv6 neighbour discovery may leave. It is put in place
 * before the first hop comes up and stays through every rebuild, until disconnect.
 */
import { execFileSync } from 'node:child_process';
import { StrataError } from '../crypto/errors.ts';

export const KILLSWITCH_TABLE = 'strata_killswitch';

export function killSwitchRules(tunName: string, mark: number): string {
  return [
    `table inet ${KILLSWITCH_TABLE} {`,
    '  chain output {',
    '    type filter hook output priority 0; policy drop;',
    '    oifname "lo" accept',
    `    oifname "${tunName}" accept`,
    `    meta mark ${mark} accept`,
    '    icmpv6 type { nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert } accept',
    '  }',
    '}',
    '',
  ].join('\n');
}

export function enableKillSwitch(tunName: string, mark: number): void {
  // Deleting and adding in one transaction replaces the table atomically.
  const script = `table inet ${KILLSWITCH_TABLE}\ndelete table inet ${KILLSWITCH_TABLE}\n${killSwitchRules(tunName, mark)}`;
  try {
    execFileSync('nft', ['-f', '-'], { input: script, stdio: ['pipe', 'ignore', 'pipe'] });
  } catch (e) {
    throw new StrataError('ERR_KILLSWITCH', `cannot install the fail-closed rule: ${String((e as { stderr?: Buffer }).stderr ?? (e as Error).message).trim()}`);
  }
}

export function disableKillSwitch(): void {
  try {
    execFileSync('nft', ['delete', 'table', 'inet', KILLSWITCH_TABLE], { stdio: 'ignore' });
  } catch {
    // not there
  }
}
