/**
 * Nothing to seize: the seizure drill in the test suite, relay output scanned for addresses
 * and keys, the swap refusal and the absence of core dumps.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { runDrill, type DrillReport } from '../src/lab/drill.ts';
import { labUnavailable, memoryTempDir } from '../src/lab/lab.ts';
import { relayLogger, type RelayEvent } from '../src/relay/log.ts';
import { activeSwaps } from '../src/relay/hardening.ts';
import { PrivateKey } from '../src/crypto/keys.ts';
import { relayListJson } from '../src/cascade/relaylist.ts';
import { strataBin } from '../src/lab/procs.ts';

const why = await labUnavailable();
if (why !== null) console.log(`drill tests skipped: ${why}`);

/** Anything that looks like an IPv4 or IPv6 address, a port after an address, or a key. */
const IPV4 = /\b(?:\d{1,3}\.){3}\d{1,3}\b/;
const IPV6 = /\b(?:[0-9a-f]{1,4}:){2,7}[0-9a-f]{0,4}\b|::(?:[0-9a-f]{1,4})/i;
const BASE64_KEY = /[A-Za-z0-9+/]{43}=/;
const HEX_KEY = /\b[0-9a-f]{64}\b/i;

function leaks(text: string): string[] {
  const out: string[] = [];
  for (const line of text.split('\n')) {
    if (line.trim() === '' || line.startsWith('#')) continue;
    for (const [what, re] of [
      ['IPv4 address', IPV4],
      ['IPv6 address', IPV6],
      ['base64 key', BASE64_KEY],
      ['hex key', HEX_KEY],
    ] as const) {
      if (re.test(line)) out.push(`${what}: ${line.slice(0, 120)}`);
    }
  }
  return out;
}

describe('seizure drill', { skip: why ?? false }, () => {
  let report: DrillReport;
  before(async () => {
    process.env.STRATA_TEST_MODE = '1';
    report = await runDrill({ timeScale: 100, say: (l) => console.log(`# ${l}`) });
    for (const phase of ['before', 'after'] as const) {
      for (const s of report[phase]) {
        console.log(`# ${phase} expiry, ${s.relay}: ${s.findings.map((f) => `${f.canary} in ${f.place} (${f.count})`).join(', ') || 'no canary'}`);
      }
    }
  });

  test('after expiry: zero canaries in any relay memory image, heap snapshot, files, logs or metrics', () => {
    for (const s of report.after) assert.deepEqual(s.findings, [], `${s.relay} still held ${JSON.stringify(s.findings)}`);
    assert.equal(report.after.length, 3);
    for (const s of report.after) assert.ok(s.memoryBytes > 100e6, `${s.relay}: a real memory image was read (${s.memoryBytes} bytes)`);
  });

  test('no relay wrote a byte to disk, or holds a file open for writing', () => {
    for (const s of [...report.before, ...report.after]) {
      assert.equal(s.diskBytesWritten, 0, `${s.relay} wrote to disk`);
      assert.deepEqual(s.filesWritten, [], `${s.relay} has files open for writing`);
    }
  });

  test('before expiry, a seizure exposes exactly this: the entry the client address and its hop key; middle and exit their hop key', () => {
    const seen = report.before.flatMap((s) => s.findings.map((f) => `${f.relay}:${f.canary}:${f.place}`)).sort();
    assert.deepEqual(seen, [
      'entry:client-address:heap-snapshot',
      'entry:client-address:memory',
      'entry:client-key:memory',
      'exit:client-key:memory',
      'middle:client-key:memory',
    ]);
    // Never the destination or the payload, not even at the exit while traffic flowed.
    assert.ok(!seen.some((x) => x.includes('destination') || x.includes('payload-marker')));
  });

  test('relay output and metrics carry no IP address, port or key, and metric labels are aggregate only', () => {
    for (const s of [...report.before, ...report.after]) {
      assert.deepEqual(leaks(s.output), [], `${s.relay} printed`);
      assert.deepEqual(leaks(s.metrics), [], `${s.relay} metrics`);
      for (const line of s.metrics.split('\n')) {
        const labels = /\{([^}]*)\}/.exec(line)?.[1];
        if (labels === undefined) continue;
        for (const l of labels.split(',')) assert.match(l, /^reason="[a-z0-9-]+"$/, `only drop reasons label a metric: ${line}`);
      }
      assert.match(s.metrics, /^strata_relay_clients \d+$/m);
    }
  });
});

describe('relay logger', () => {
  test('only allow-listed events and numeric aggregate fields reach the log', () => {
    const lines: string[] = [];
    const log = relayLogger((l) => lines.push(l));
    log('client-admitted', { clients: 3 });
    log('not-an-event' as RelayEvent, { clients: 1 });
    log('relay-started', { relays: 4, address: '10.1.2.3', key: 'abc', clients: NaN } as never);
    assert.equal(lines.length, 2);
    const entries = lines.map((l) => JSON.parse(l) as Record<string, unknown>);
    assert.deepEqual(Object.keys(entries[0]!).sort(), ['clients', 'event', 't']);
    assert.deepEqual(Object.keys(entries[1]!).sort(), ['event', 'relays', 't']);
    assert.deepEqual(leaks(lines.join('')), []);
  });
});

describe('relay hardening', { skip: why ?? false }, () => {
  let dir: string;
  let list: string;
  before(() => {
    dir = memoryTempDir('strata-harden-');
    list = path.join(dir, 'relays.json');
    const k = PrivateKey.generate();
    fs.writeFileSync(
      list,
      relayListJson([{ name: 'r1', country: 'IS', publicKey: k.publicKey(), endpoints: [{ address: '127.0.0.1', port: 51820, family: 'IPv4' }], roles: ['entry'], provider: '', family: '', capacity: 1, kind: 'strata' }]),
    );
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  const relayEnv = (extra: Record<string, string>): NodeJS.ProcessEnv => ({ ...process.env, STRATA_PRIVATE_KEY: PrivateKey.generate().toBase64(), ...extra });

  test('/proc/swaps parsing', () => {
    assert.deepEqual(activeSwaps('Filename\tType\tSize\tUsed\tPriority\n'), []);
    assert.deepEqual(activeSwaps('Filename\tType\tSize\tUsed\tPriority\n/swapfile  file  1048572  0  -2\n'), ['/swapfile']);
  });

  test('a relay started with swap on and no override refuses with a clear error; --allow-swap starts', () => {
    const swaps = path.join(dir, 'swaps');
    fs.writeFileSync(swaps, 'Filename\tType\tSize\tUsed\tPriority\n/swapfile  file  1048572  0  -2\n');
    const env = relayEnv({ STRATA_TEST_MODE: '1', STRATA_TEST_SWAPS_FILE: swaps });
    const r = spawnSync(strataBin(), ['relay', '--relays', list, '--listen-port', '0'], { env, encoding: 'utf8', timeout: 20_000 });
    assert.equal(r.status, 1, r.stderr);
    assert.match(r.stderr, /swap is on .*\(ERR_SWAP_ENABLED\)/);
    // With the override it gets past the check (and is stopped once ready).
    const ok = spawn(strataBin(), ['relay', '--relays', list, '--listen-port', '0', '--allow-swap'], { env });
    return new Promise<void>((resolve, reject) => {
      let out = '';
      ok.stdout.on('data', (d: Buffer) => {
        out += d.toString();
        if (out.includes('relay ready')) ok.kill('SIGTERM');
      });
      ok.on('exit', () => (out.includes('relay ready') ? resolve() : reject(new Error(`did not start: ${out}`))));
    });
  });

  test('configuration on disk is refused (ERR_CONFIG_ON_DISK)', () => {
    const disk = fs.mkdtempSync(path.join(os.tmpdir(), 'strata-disk-'));
    try {
      const onDisk = path.join(disk, 'relays.json');
      fs.copyFileSync(list, onDisk);
      if (fs.statfsSync(onDisk).type === 0x01021994) return; // this machine's /tmp is tmpfs: nothing to show
      const r = spawnSync(strataBin(), ['relay', '--relays', onDisk, '--listen-port', '0'], { env: relayEnv({}), encoding: 'utf8', timeout: 20_000 });
      assert.equal(r.status, 1, r.stderr);
      assert.match(r.stderr, /\(ERR_CONFIG_ON_DISK\)/);
    } finally {
      fs.rmSync(disk, { recursive: true, force: true });
    }
  });

  test('an abort leaves no core dump: RLIMIT_CORE 0 and not dumpable, under the permission model', async () => {
    const cwd = memoryTempDir('strata-core-');
    try {
      const child = spawn(strataBin(), ['relay', '--relays', list, '--listen-port', '0'], { env: relayEnv({}), cwd });
      await new Promise<void>((resolve, reject) => {
        let out = '';
        child.stdout.on('data', (d: Buffer) => {
          out += d.toString();
          if (out.includes('relay ready')) resolve();
        });
        child.on('exit', (c) => reject(new Error(`exited ${c} before ready`)));
      });
      const limits = fs.readFileSync(`/proc/${child.pid}/limits`, 'utf8');
      assert.match(limits, /Max core file size\s+0\s+0/);
      // The proof that counts: abort it, and no core file appears where core_pattern puts one.
      const gone = new Promise<NodeJS.Signals | null>((resolve) => child.on('exit', (_c, sig) => resolve(sig)));
      child.kill('SIGABRT');
      assert.equal(await gone, 'SIGABRT');
      await new Promise((r) => setTimeout(r, 500));
      const pattern = fs.readFileSync('/proc/sys/kernel/core_pattern', 'utf8').trim();
      const where = pattern.startsWith('|') || !pattern.includes('/') ? cwd : path.dirname(pattern);
      const before = pattern.startsWith('|') ? [] : fs.readdirSync(where).filter((f) => f.startsWith(path.basename(pattern).split('%')[0]!));
      assert.deepEqual(before, [], `no core file in ${where} (core_pattern ${pattern})`);
    } finally {
      fs.rmSync(cwd, { recursive: true, force: true });
    }
  });
});
