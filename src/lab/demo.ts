/**
 * `strata demo`: the project's main job on one machine. It builds a client, N relays in
 * different "countries" and a web server, each in its own network namespace joined through a
 * router namespace; connects through the cascade; shows `strata status`; fetches a page
 * through it; prints what each relay's network saw (from nftables sets in each relay's
 * namespace, not from the relay, which records nothing); and tears it all down.
 */
import { rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { PrivateKey } from '../crypto/keys.ts';
import { StrataError } from '../crypto/errors.ts';
import { relayListJson, type Relay } from '../cascade/relaylist.ts';
import { Lab, labUnavailable, memoryTempDir } from './lab.ts';
import { startRelay, strataBin } from './procs.ts';

const run = promisify(execFile);
const COUNTRIES = [
  ['IS', 'Iceland'],
  ['CH', 'Switzerland'],
  ['SE', 'Sweden'],
  ['RO', 'Romania'],
  ['NL', 'the Netherlands'],
];

const WEB_SERVER = `
const http = require('node:http');
http.createServer((req, res) => {
  res.setHeader('content-type', 'text/html');
  res.end('<h1>Hello through Strata</h1><p>this server saw the request come from ' + req.socket.remoteAddress + '</p>');
}).listen(80, '0.0.0.0', () => console.log('listening'));
`;

function say(line = ''): void {
  process.stdout.write(line + '\n');
}

/** An nftables table that records every address seen on a namespace's wire (demo only). */
const VIEW_TABLE = `table inet strata_demo_view {
  set seen4 {
    type ipv4_addr
    flags dynamic
  }
  chain inbound {
    type filter hook input priority 0; policy accept;
    iifname "eth0" update @seen4 { ip saddr }
  }
  chain outbound {
    type filter hook output priority 0; policy accept;
    oifname "eth0" update @seen4 { ip daddr }
  }
  chain forwarded {
    type filter hook forward priority 0; policy accept;
    iifname "eth0" update @seen4 { ip saddr }
    oifname "eth0" update @seen4 { ip daddr }
  }
}
`;

export async function runDemo(hops = 3): Promise<number> {
  if (!Number.isInteger(hops) || hops < 1 || hops > 5) throw new StrataError('ERR_HOPS', 'the demo runs 1 to 5 hops');
  const why = await labUnavailable();
  if (why !== null) throw new StrataError('ERR_DEMO_UNAVAILABLE', `the demo ${why}`);
  const relayNames = Array.from({ length: hops }, (_, i) => `r${i + 1}`);
  const dir = memoryTempDir('strata-demo-');
  say(`Strata demo: a client, ${hops} relays and a web server, each in its own network namespace.`);
  const lab = await Lab.create(['client', ...relayNames, 'web']);
  try {
    const keys = relayNames.map(() => PrivateKey.generate());
    const relays: Relay[] = relayNames.map((name, i) => ({
      name,
      country: COUNTRIES[i]![0]!,
      publicKey: keys[i]!.publicKey(),
      endpoints: [{ address: lab.host(name).v4, port: 51820, family: 'IPv4' }],
      roles: i === hops - 1 ? ['exit'] : i === 0 ? ['entry'] : ['middle'],
      provider: `hoster-${i + 1}`,
      family: `operator-${i + 1}`,
      capacity: 1,
      kind: 'strata' as const,
    }));
    const list = path.join(dir, 'relays.json');
    writeFileSync(list, relayListJson(relays));
    const label = new Map<string, string>();
    for (const h of lab.hosts.values()) label.set(h.v4, h.name);
    say('');
    say(`  client  ${lab.host('client').v4}`);
    relays.forEach((r, i) =>
      say(`  ${r.name}      ${lab.host(r.name).v4}  in ${COUNTRIES[i]![1]}, ${i === hops - 1 ? 'exit' : i === 0 ? 'entry' : 'middle'}`),
    );
    say(`  web     ${lab.host('web').v4}`);
    say('');

    for (const name of relayNames) await lab.exec(lab.host(name).ns, 'nft', ['-f', writeView(dir, name)]);
    await Promise.all(relays.map((r, i) => startRelay(lab, lab.host(r.name).ns, list, keys[i]!, i === hops - 1)));
    for (const k of keys) k.wipe();
    const web = lab.spawn(lab.host('web').ns, process.execPath, ['-e', WEB_SERVER]);
    await new Promise<void>((resolve, reject) => {
      web.stdout!.once('data', () => resolve());
      web.once('exit', () => reject(new Error('the web server did not start')));
    });

    const clientNs = lab.host('client').ns;
    const runDir = path.join(dir, 'run');
    const strata = strataBin();
    say(`$ strata connect --relays relays.json --path ${relayNames.join(',')}`);
    say((await lab.exec(clientNs, strata, ['connect', '--relays', list, '--path', relayNames.join(','), '--run-dir', runDir], 60_000)).trimEnd());
    say('');
    say('$ strata status');
    say((await lab.exec(clientNs, strata, ['status', '--run-dir', runDir])).trimEnd());
    say('');
    const url = `http://${lab.host('web').v4}/`;
    say(`$ fetch ${url}   (from the client's namespace, through the cascade)`);
    const page = await lab.exec(
      clientNs,
      process.execPath,
      ['-e', `fetch(${JSON.stringify(url)}).then(async (r) => console.log(r.status, await r.text())).catch((e) => { console.error(e.message); process.exit(1); })`],
      30_000,
    );
    say(page.trimEnd());
    say('');
    say('What each relay\'s network saw (every address on its wire, from nftables in its namespace):');
    for (const name of relayNames) {
      const seen = await seenBy(lab, lab.host(name).ns);
      const names = seen.map((a) => label.get(a) ?? a).sort();
      say(`  ${name}: ${names.join(', ')}`);
    }
    say('');
    say('$ strata disconnect');
    say((await lab.exec(clientNs, strata, ['disconnect', '--run-dir', runDir])).trimEnd());
    return 0;
  } finally {
    await lab.close();
    rmSync(dir, { recursive: true, force: true });
    const left = (await run('ip', ['netns', 'list'])).stdout.split('\n').filter((l) => l.startsWith(lab.id)).length;
    say(`torn down: ${left} of the demo's namespaces left`);
  }
}

function writeView(dir: string, name: string): string {
  const f = path.join(dir, `${name}-view.nft`);
  writeFileSync(f, VIEW_TABLE);
  return f;
}

async function seenBy(lab: Lab, ns: string): Promise<string[]> {
  const out = await lab.exec(ns, 'nft', ['-j', 'list', 'set', 'inet', 'strata_demo_view', 'seen4']);
  const json = JSON.parse(out) as { nftables: { set?: { elem?: (string | { elem: { val: string } })[] } }[] };
  const set = json.nftables.find((x) => x.set !== undefined)?.set;
  return (set?.elem ?? []).map((e) => (typeof e === 'string' ? e : e.elem.val));
}
