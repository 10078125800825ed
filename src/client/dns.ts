/**
 * Pointing the system's resolver at the one reached through the tunnel, and putting it back:
 *   - inside a named network namespace: /etc/netns/NAME/resolv.conf and nsswitch.conf (which
 *     `ip netns exec` mounts over /etc), with `hosts: files dns`, so nss-resolve and nscd —
 *     which would ask the host's resolver over a Unix socket, around the tunnel — are not used;
 *   - in the host's namespace with systemd-resolved: per-link DNS on the tunnel, `~.` routing;
 *   - otherwise: /etc/resolv.conf, saved first and restored on disconnect.
 * Files Strata writes carry a marker line, so a later `strata disconnect` can clean up after a
 * daemon that crashed.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { StrataError } from '../crypto/errors.ts';
import { parseIP } from '../wireguard/ip.ts';

export const MARKER = '# managed by strata: restored by `strata disconnect`';
const BACKUP = '/run/strata/resolv.conf.before-strata';

export interface DnsSetup {
  resolver: string;
  mode: 'netns' | 'systemd-resolved' | 'resolv.conf';
  restore(): void;
}

function run(file: string, args: string[]): boolean {
  try {
    execFileSync(file, args, { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/** The name of the network namespace this process is in, '' for the host's, null if unnamed. */
export function netnsName(): string | null {
  const self = fs.statSync('/proc/self/ns/net').ino;
  let init: number;
  try {
    init = fs.statSync('/proc/1/ns/net').ino;
  } catch {
    init = -1;
  }
  if (self === init) return '';
  try {
    for (const name of fs.readdirSync('/run/netns')) {
      if (fs.statSync(path.join('/run/netns', name)).ino === self) return name;
    }
  } catch {
    // no named namespaces
  }
  return null;
}

function netnsDir(name: string): string {
  return path.join('/etc/netns', name);
}

export function configureDns(tunName: string, resolver: string): DnsSetup {
  if (parseIP(resolver) === null) throw new StrataError('ERR_DNS', `"${resolver}" is not an IP address`);
  const ns = netnsName();
  if (ns === null) throw new StrataError('ERR_DNS', 'this network namespace has no name: there is no resolv.conf of its own to point at the tunnel');
  const conf = `${MARKER}\nnameserver ${resolver}\noptions edns0\n`;
  if (ns !== '') {
    const dir = netnsDir(ns);
    const created = !fs.existsSync(dir);
    fs.mkdirSync(dir, { recursive: true, mode: 0o755 });
    // The user's own files there are saved first and put back on disconnect.
    for (const f of ['resolv.conf', 'nsswitch.conf']) saveOriginal(path.join(dir, f), ns);
    fs.writeFileSync(path.join(dir, 'resolv.conf'), conf);
    let nss = 'passwd: files\ngroup: files\nhosts: files dns\n';
    try {
      nss = fs
        .readFileSync('/etc/nsswitch.conf', 'utf8')
        .split('\n')
        .map((l) => (/^\s*hosts\s*:/.test(l) ? 'hosts: files dns' : l))
        .join('\n');
    } catch {
      // use the minimal one
    }
    fs.writeFileSync(path.join(dir, 'nsswitch.conf'), `${MARKER}\n${nss}`);
    return { resolver, mode: 'netns', restore: () => restoreNetns(ns, created) };
  }
  if (fs.existsSync('/run/systemd/resolve/stub-resolv.conf') && run('resolvectl', ['status'])) {
    const ok =
      run('resolvectl', ['dns', tunName, resolver]) && run('resolvectl', ['domain', tunName, '~.']) && run('resolvectl', ['default-route', tunName, 'true']);
    if (!ok) throw new StrataError('ERR_DNS', 'systemd-resolved refused the tunnel resolver');
    return { resolver, mode: 'systemd-resolved', restore: () => void run('resolvectl', ['revert', tunName]) };
  }
  const current = fs.existsSync('/etc/resolv.conf') ? fs.readFileSync('/etc/resolv.conf', 'utf8') : '';
  if (!current.startsWith(MARKER)) {
    fs.mkdirSync(path.dirname(BACKUP), { recursive: true });
    fs.writeFileSync(BACKUP, current, { mode: 0o644 });
  }
  fs.writeFileSync('/etc/resolv.conf', conf);
  return { resolver, mode: 'resolv.conf', restore: restoreResolvConf };
}

function backupOf(file: string, ns: string): string {
  return path.join(path.dirname(BACKUP), `netns-${ns}-${path.basename(file)}.before-strata`);
}

function saveOriginal(file: string, ns: string): void {
  let content: string;
  try {
    content = fs.readFileSync(file, 'utf8');
  } catch {
    return; // none: nothing to save
  }
  if (content.startsWith(MARKER)) return; // ours, from a daemon that stopped
  fs.mkdirSync(path.dirname(BACKUP), { recursive: true });
  fs.writeFileSync(backupOf(file, ns), content, { mode: 0o644 });
}

function restoreNetns(ns: string, removeDir: boolean): void {
  const dir = netnsDir(ns);
  for (const f of ['resolv.conf', 'nsswitch.conf']) {
    const p = path.join(dir, f);
    try {
      if (!fs.readFileSync(p, 'utf8').startsWith(MARKER)) continue;
    } catch {
      continue;
    }
    const saved = backupOf(p, ns);
    if (fs.existsSync(saved)) {
      fs.writeFileSync(p, fs.readFileSync(saved));
      fs.rmSync(saved, { force: true });
    } else fs.rmSync(p, { force: true });
  }
  if (removeDir) {
    try {
      fs.rmdirSync(dir);
    } catch {
      // not empty or gone
    }
  }
}

function restoreResolvConf(): void {
  try {
    if (!fs.readFileSync('/etc/resolv.conf', 'utf8').startsWith(MARKER)) return;
    fs.writeFileSync('/etc/resolv.conf', fs.existsSync(BACKUP) ? fs.readFileSync(BACKUP) : '');
    fs.rmSync(BACKUP, { force: true });
  } catch {
    // nothing to restore
  }
}

/** After a crash: undo whatever a Strata daemon left in this namespace's resolver files. */
export function restoreDnsLeftovers(): boolean {
  const ns = netnsName();
  if (ns === null) return false;
  if (ns !== '') {
    const dir = netnsDir(ns);
    const had = ['resolv.conf', 'nsswitch.conf'].some((f) => {
      try {
        return fs.readFileSync(path.join(dir, f), 'utf8').startsWith(MARKER);
      } catch {
        return false;
      }
    });
    if (had) restoreNetns(ns, false);
    return had;
  }
  try {
    if (fs.readFileSync('/etc/resolv.conf', 'utf8').startsWith(MARKER)) {
      restoreResolvConf();
      return true;
    }
  } catch {
    // none
  }
  return false;
}
