/**
 * The kill switch: an nftables table of Strata's own, replaced atomically (`nft -f`), with
 * policy drop. Only loopback, the tunnel interface, the daemon's own packets to its relays
 * (its UDP socket carries the mark), DHCP, IPv6 neighbour discovery and, if the user asks, the
 * local LAN may pass. Plain DNS goes only through the tunnel to the chosen resolver; any other
 * DNS is refused. It is put in place before the first hop comes up, stays through every
 * rebuild, and outlives a crashed daemon: only `strata disconnect` removes it.
 */
import { execFileSync } from 'node:child_process';
import { StrataError } from '../crypto/errors.ts';
import { parseIP, parsePrefix, formatPrefix } from '../wireguard/ip.ts';

export const KILLSWITCH_TABLE = 'strata_killswitch';

export interface KillSwitchOptions {
  tunName: string;
  mark: number;
  /** The resolver reached through the tunnel; DNS to anything else is rejected. */
  dns?: string | null;
  /** Local prefixes that may be reached outside the tunnel (validated). */
  allowLan?: readonly string[];
}

/** Parses LAN prefixes ("192.168.1.0/24"); any that does not parse is an error naming it. */
export function parseLanRanges(ranges: readonly string[]): string[] {
  return ranges.map((r) => {
    const p = r.includes('/') ? parsePrefix(r.trim()) : null;
    if (p === null) throw new StrataError('ERR_LAN_RANGE', `"${r}" is not a LAN range (ADDRESS/BITS, e.g. 192.168.1.0/24)`);
    return formatPrefix(p);
  });
}

export function killSwitchRules(o: KillSwitchOptions): string {
  const lan = parseLanRanges(o.allowLan ?? []);
  const lan4 = lan.filter((p) => !p.includes(':'));
  const lan6 = lan.filter((p) => p.includes(':'));
  const dns = o.dns ?? null;
  if (dns !== null && parseIP(dns) === null) throw new StrataError('ERR_DNS', `"${dns}" is not an IP address`);
  const dnsFamily = dns === null ? null : dns.includes(':') ? 'ip6' : 'ip';
  const tun = JSON.stringify(o.tunName);
  return [
    `table inet ${KILLSWITCH_TABLE} {`,
    '  chain output {',
    '    type filter hook output priority filter; policy drop;',
    '    oifname "lo" accept',
    `    meta mark ${o.mark} accept`,
    ...(dns !== null ? [`    oifname ${tun} ${dnsFamily} daddr ${dns} meta l4proto { tcp, udp } th dport 53 accept`] : []),
    '    meta l4proto { tcp, udp } th dport 53 reject',
    `    oifname ${tun} accept`,
    '    udp sport 68 udp dport 67 accept',
    '    ip6 saddr fe80::/10 udp sport 546 udp dport 547 accept',
    '    icmpv6 type { nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert } accept',
    ...(lan4.length > 0 ? [`    ip daddr { ${lan4.join(', ')} } accept`] : []),
    ...(lan6.length > 0 ? [`    ip6 daddr { ${lan6.join(', ')} } accept`] : []),
    '    reject with icmpx admin-prohibited',
    '  }',
    '  chain input {',
    '    type filter hook input priority filter; policy drop;',
    '    iifname "lo" accept',
    '    ct state established,related accept',
    '    udp sport 67 udp dport 68 accept',
    '    ip6 saddr fe80::/10 udp sport 547 udp dport 546 accept',
    '    icmpv6 type { nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert, nd-redirect } accept',
    ...(lan4.length > 0 ? [`    ip saddr { ${lan4.join(', ')} } accept`] : []),
    ...(lan6.length > 0 ? [`    ip6 saddr { ${lan6.join(', ')} } accept`] : []),
    '  }',
    '  chain forward {',
    '    type filter hook forward priority filter; policy drop;',
    '  }',
    '}',
    '',
  ].join('\n');
}

function nft(args: string[], input?: string): void {
  execFileSync('nft', args, { input, stdio: [input === undefined ? 'ignore' : 'pipe', 'ignore', 'pipe'] });
}

export function enableKillSwitch(o: KillSwitchOptions): void {
  const rules = killSwitchRules(o);
  // Declaring, deleting and re-adding in one transaction replaces the table atomically.
  try {
    nft(['-f', '-'], `table inet ${KILLSWITCH_TABLE}\ndelete table inet ${KILLSWITCH_TABLE}\n${rules}`);
  } catch (e) {
    throw new StrataError('ERR_KILLSWITCH', `cannot install the kill switch: ${String((e as { stderr?: Buffer }).stderr ?? (e as Error).message).trim()}`);
  }
}

export function killSwitchPresent(): boolean {
  try {
    nft(['list', 'table', 'inet', KILLSWITCH_TABLE]);
    return true;
  } catch {
    return false;
  }
}

export function disableKillSwitch(): void {
  try {
    nft(['delete', 'table', 'inet', KILLSWITCH_TABLE]);
  } catch {
    // not there
  }
}
