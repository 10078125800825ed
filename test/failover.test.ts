/**
 * Failover with real relays in network namespaces (src/lab/failover.ts for the topology):
 * a client, relays r1..r6 and a web host; the client connects through r1,r2,r3 and one relay is
 * seized (`Lab.seize`: SIGKILL to everything in its namespace, then the namespace deleted) while
 * traffic flows.
 *
 *   a. Middle lost during a 40 MiB HTTP download: the download completes with the right
 *      SHA-256; the outage (largest gap between received chunks) and the failover event's
 *      detectedAfterMs / restoredAfterMs are printed; detectedAfterMs <= 2000.
 *   b. The same for the entry.
 *   c. Exit lost while the download runs: a NEW connection (opened after the seizure, through
 *      another exit) succeeds within 3 s of the seizure.
 *   d. Over a-c, tcpdump on the client's link (router side, started before connect): every IP
 *      packet is UDP between the client and a relay endpoint (port 51820), apart from ICMPv6
 *      router solicitation / neighbour discovery, and ICMP errors the router sends the client
 *      about one of its tunnel datagrams (once the seized entry's link is gone: inbound,
 *      network-generated, quoting the tunnel packet; counted and printed apart).
 *   e. Must-show 5: a new relay reaches the client through a signed directory. Three
 *      authorities (`strata dir keygen`), threshold 2; `strata dir serve` in a lab namespace is
 *      the relays' mirror, the same file (a file-path mirror) the client's; refreshSeconds 3.
 *      Relays run `strata relay init --directory` (descriptor from their first stdout line);
 *      serial 1 is made, signed by the three and combined with the CLI, and the client connects
 *      with --directory through r1,r2,r3. The spares can never be the middle (r4 shares r1's
 *      operator family, r5 r3's country, r6 r3's provider), so the path has no replacement for
 *      its middle. Then r7 (new country, provider and family) joins: `strata relay init` in a
 *      fresh namespace, its descriptor in serial 2, signed by two authorities, written to the
 *      mirror; right after that the middle is seized. Within one refresh period after
 *      publication plus the failover time, traffic (pings, then a sha256-checked download)
 *      flows through r7, which `strata status` shows as hop 2.
 *
 * Needs root, `ip netns`, /dev/net/tun, nft and tcpdump; otherwise every test skips and says why.
 * Safety: everything runs in namespaces the lab made; each process is killed by PID and the
 * namespaces deleted in `finally`; every child has a time limit; nothing touches the host
 * namespace's interfaces, addresses or routes; the loads are bounded (40 MiB per download).
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Lab, labUnavailable, memoryTempDir } from '../src/lab/lab.ts';
import { startRelayInit, strataBin } from '../src/lab/procs.ts';
import {
  DEFAULT_FAILOVER,
  type ClientStatus,
} from '../src/client/daemon.ts';
import { controlPath, request } from '../src/client/control.ts';
import { conflicts, replaceHop } from '../src/cascade/path.ts';
import { loadDirectoryConfig } from '../src/directory/config.ts';
import { StrataError } from '../src/crypto/errors.ts';
import {
  expectedSha256,
  runLoss,
  sleep,
  startDownload,
  startWeb,
  waitForLine,
  type LossKind,
  type LossResult,
} from '../src/lab/failover.ts';

const DETECT_BOUND_MS = 2000;
/**
 * The download's largest gap: failover plus TCP's retransmission backoff (2-8 s measured here).
 * A path that comes back but loses the first packets after a roam shows up as 30 s and more.
 */
const OUTAGE_BOUND_MS = 15_000;
const EXIT_NEW_CONNECTION_BOUND_MS = 3000;

let unavailable: string | null | undefined;
async function skipUnlessLab(t: TestContext): Promise<boolean> {
  if (unavailable === undefined) {
    unavailable = await labUnavailable();
    if (unavailable === null) {
      for (const tool of ['tcpdump', 'nft']) {
        const found = await new Promise<boolean>((r) => execFile('sh', ['-c', `command -v ${tool}`], (e) => r(e === null)));
        if (!found) unavailable = `${tool} is not installed`;
      }
    }
  }
  if (unavailable === null) return false;
  console.log(`# skipped: ${t.name}: ${unavailable}`);
  t.skip(unavailable);
  return true;
}

const results = new Map<LossKind, LossResult>();
const log = (line: string): void => console.log(`# ${line}`);

function checkEvent(r: LossResult, hop: number): void {
  const e = r.event;
  assert.ok(e !== null, `no failover event for ${r.seized}: ${JSON.stringify(r.status.failovers)}`);
  assert.equal(e.hop, hop);
  assert.ok(e.detectedAfterMs <= DETECT_BOUND_MS, `detectedAfterMs ${e.detectedAfterMs} > ${DETECT_BOUND_MS}`);
  if (Number.isFinite(r.outageMs)) assert.ok(r.outageMs <= OUTAGE_BOUND_MS, `outage ${r.outageMs} ms > ${OUTAGE_BOUND_MS}`);
  assert.ok(e.restoredAfterMs !== null, 'the replacement never came up');
  assert.ok(e.replacement !== null && ['r4', 'r5', 'r6'].includes(e.replacement), `replacement ${e.replacement}`);
  const h = r.status.hops[hop - 1]!;
  assert.equal(h.name, e.replacement, `hop ${hop} is ${h.name}`);
  assert.ok(h.up, `hop ${hop} (${h.name}) is not up`);
  assert.ok(!r.status.hops.some((x) => x.name === r.seized), `${r.seized} is still in the path`);
  assert.ok(r.status.killSwitch, 'the kill switch is off');
}

async function lossTest(t: TestContext, kind: LossKind, hop: number): Promise<void> {
  if (await skipUnlessLab(t)) return;
  const r = await runLoss(kind, { capture: true, log });
  results.set(kind, r);
  const e = r.event;
  if (kind === 'exit') {
    console.log(
      `# exit ${r.seized} seized: new connection after ${r.newConnectionMs} ms (through ${r.newConnection?.peer}); ` +
        `detectedAfterMs ${e?.detectedAfterMs} restoredAfterMs ${e?.restoredAfterMs}; replacement ${e?.replacement}`,
    );
  } else {
    console.log(
      `# ${kind} ${r.seized} seized: outage (largest gap) ${r.outageMs} ms, ending ${r.gapEndAfterSeizureMs} ms after the seizure; ` +
        `detectedAfterMs ${e?.detectedAfterMs} restoredAfterMs ${e?.restoredAfterMs}; replacement ${e?.replacement}; ` +
        `${r.download.got} bytes in ${((r.download.endMs - r.download.startMs) / 1000).toFixed(1)} s, sha256 ${r.download.sha === r.expectedSha ? 'ok' : 'WRONG'}`,
    );
  }
  checkEvent(r, hop);
  if (kind === 'exit') {
    assert.ok(r.newConnection !== null && r.newConnectionMs !== null, 'no new connection succeeded within 10 s of the seizure');
    assert.ok(r.newConnectionMs <= EXIT_NEW_CONNECTION_BOUND_MS, `new connection after ${r.newConnectionMs} ms`);
    assert.equal(r.newConnection.peer, r.relayV4[e!.replacement!], 'the new connection did not leave through the replacement exit');
  } else {
    assert.ok(r.download.done, `download failed: ${r.download.error}`);
    assert.equal(r.download.got, r.bytes);
    assert.equal(r.download.sha, r.expectedSha);
  }
}

test('a. middle relay seized during a 40 MiB download: transfer completes, sha256 ok, detection <= 2 s', { timeout: 120_000 }, (t) =>
  lossTest(t, 'middle', 2),
);

test('b. entry relay seized during a 40 MiB download: transfer completes, sha256 ok, detection <= 2 s', { timeout: 120_000 }, (t) =>
  lossTest(t, 'entry', 1),
);

test('c. exit relay seized while traffic flows: a new connection succeeds within 3 s', { timeout: 120_000 }, (t) => lossTest(t, 'exit', 3));

test('d. client link during a-c: only tunnel datagrams to relay endpoints (and ICMPv6 ND/RS)', async (t) => {
  if (await skipUnlessLab(t)) return;
  if (results.size === 0) {
    console.log('# skipped: a-c did not run');
    return t.skip('a-c did not run');
  }
  for (const [kind, r] of results) {
    const c = r.capture!;
    console.log(
      `# ${kind}: ${c.frames} frames checked (${c.ipPackets} IP packets): ${c.tunnel} tunnel datagrams (${c.fragments} of them later IPv4 fragments), ` +
        `${c.neighbour} ICMPv6 ND/RS, ${c.routerErrors} router ICMP errors about tunnel datagrams${c.routerErrorSamples.length ? ` (${c.routerErrorSamples.join('; ')})` : ''}, ` +
        `${c.violations.length} others; kernel drops ${c.dropped}`,
    );
  }
  for (const [kind, r] of results) {
    const c = r.capture!;
    assert.equal(c.dropped, 0, `${kind}: the capture lost packets`);
    assert.ok(c.tunnel > 1000, `${kind}: only ${c.tunnel} tunnel datagrams captured`);
    assert.deepEqual(c.violations.slice(0, 20), [], `${kind}: ${c.violations.length} packets outside the tunnel`);
    if (kind !== 'entry') assert.equal(c.routerErrors, 0, `${kind}: ICMP errors from the router`);
  }
});

// ---- e. a new relay through the signed directory ----------------------------------------------

const REFRESH_SECONDS = 3;
/**
 * Once the client holds serial 2: the next probe slot (silence + probe after the last probe),
 * the probe, the replacement's handshake (at most replaceMs) and a ping interval.
 */
const FAILOVER_TIME_MS = DEFAULT_FAILOVER.silenceMs + DEFAULT_FAILOVER.probeMs * 2 + DEFAULT_FAILOVER.replaceMs + 200;

interface RelaySpec {
  name: string;
  country: string;
  provider: string;
  family: string;
  roles: string;
}

const SPECS: RelaySpec[] = [
  { name: 'r1', country: 'IS', provider: 'hoster-a', family: 'operator-a', roles: 'entry' },
  { name: 'r2', country: 'CH', provider: 'hoster-b', family: 'operator-b', roles: 'middle' },
  { name: 'r3', country: 'SE', provider: 'hoster-c', family: 'operator-c', roles: 'exit' },
  // Middles that can never replace r2 on r1,_,r3: each shares something with r1 or r3.
  { name: 'r4', country: 'RO', provider: 'hoster-d', family: 'operator-a', roles: 'middle' }, // r1's operator
  { name: 'r5', country: 'SE', provider: 'hoster-e', family: 'operator-e', roles: 'middle' }, // r3's country
  { name: 'r6', country: 'NL', provider: 'hoster-c', family: 'operator-f', roles: 'middle' }, // r3's provider
];
const NEWCOMER: RelaySpec = { name: 'r7', country: 'DE', provider: 'hoster-g', family: 'operator-g', roles: 'middle' };

test('e. a new relay joins through a signed directory (serial 2) and replaces a seized middle', { timeout: 150_000 }, async (t) => {
  if (await skipUnlessLab(t)) return;
  const dir = memoryTempDir('strata-failover-dir-');
  fs.chmodSync(dir, 0o700);
  let lab: Lab | null = null;
  try {
    lab = await Lab.create(['client', ...SPECS.map((s) => s.name), NEWCOMER.name, 'web', 'mirror']);
    const L = lab;
    const mirrorHost = L.host('mirror');
    const client = L.host('client');
    const strata = async (args: string[]): Promise<string> => {
      try {
        return await L.exec(mirrorHost.ns, strataBin(), args, 30_000);
      } catch (e) {
        const x = e as { stderr?: string; message: string };
        throw new Error(`strata ${args.slice(0, 2).join(' ')}: ${x.stderr?.trim() || x.message}`);
      }
    };
    const f = (name: string): string => path.join(dir, name);

    // Three authorities, threshold 2.
    const authorities: string[] = [];
    for (const a of [1, 2, 3]) authorities.push((await strata(['dir', 'keygen', '--out', f(`authority${a}.key`)])).trim());
    const consensusFile = f('consensus.json');
    const mirrorProc = L.spawn(mirrorHost.ns, strataBin(), ['dir', 'serve', '--file', consensusFile, '--port', '8080', '--address', mirrorHost.v4]);
    await waitForLine(mirrorProc, (l) => l.startsWith('serving'), 15_000, 'strata dir serve');
    const base = { authorities, threshold: 2, refreshSeconds: REFRESH_SECONDS };
    fs.writeFileSync(f('relay-dir.json'), JSON.stringify({ ...base, mirrors: [`http://${mirrorHost.v4}:8080/consensus.json`] }));
    fs.writeFileSync(f('client-dir.json'), JSON.stringify({ ...base, mirrors: [consensusFile] }));

    const initRelay = async (s: RelaySpec): Promise<string> => {
      const h = L.host(s.name);
      const args = ['--name', s.name, '--country', s.country, '--provider', s.provider, '--family', s.family, '--roles', s.roles];
      args.push('--endpoint', `${h.v4}:51820`, '--directory', f('relay-dir.json'));
      const { descriptor } = await startRelayInit(L, h.ns, args);
      JSON.parse(descriptor);
      fs.writeFileSync(f(`${s.name}.descriptor.json`), descriptor + '\n');
      return f(`${s.name}.descriptor.json`);
    };
    /** make, sign by `signers`, combine, verify; then publish with one rename. */
    const prepare = async (serial: number, descriptors: string[], signers: number[]): Promise<string> => {
      await strata(['dir', 'make', '--serial', String(serial), '--out', f(`body${serial}.json`), ...descriptors]);
      const sigs: string[] = [];
      for (const a of signers) {
        sigs.push(f(`sig${serial}-${a}.json`));
        await strata(['dir', 'sign', '--key', f(`authority${a}.key`), '--out', sigs.at(-1)!, f(`body${serial}.json`)]);
      }
      await strata(['dir', 'combine', '--out', f(`signed${serial}.json`), f(`body${serial}.json`), ...sigs]);
      const v = await strata(['dir', 'verify', '--config', f('client-dir.json'), f(`signed${serial}.json`)]);
      assert.match(v, new RegExp(`^valid: serial ${serial}, ${descriptors.length} relays`));
      return f(`signed${serial}.json`);
    };
    const publish = (signed: string): void => {
      fs.copyFileSync(signed, consensusFile + '.tmp');
      fs.renameSync(consensusFile + '.tmp', consensusFile);
    };

    const descriptors = await Promise.all(SPECS.map(initRelay));
    await startWeb(L, 'web');
    publish(await prepare(1, descriptors, [1, 2, 3]));
    // Relays started before any consensus existed: they pick serial 1 up within one refresh.
    await sleep(REFRESH_SECONDS * 1000 + 700);
    const runDir = f('run');
    await L.exec(client.ns, strataBin(), ['connect', '--directory', f('client-dir.json'), '--path', 'r1,r2,r3', '--run-dir', runDir], 60_000);
    const status = async (): Promise<ClientStatus> => (await request(controlPath(runDir), 'status', 5000)) as ClientStatus;
    assert.equal((await status()).directorySerial, 1);

    // The design: with serial 1 nothing can replace r2; with serial 2 only r7 can.
    const relays1 = (await loadDirectoryConfig(f('client-dir.json')).client.refresh()).consensus.relays;
    const byName = (rs: typeof relays1, n: string) => rs.find((r) => r.name === n)!;
    const path1 = ['r1', 'r2', 'r3'].map((n) => byName(relays1, n));
    assert.throws(() => replaceHop(relays1, path1, 1), (e: unknown) => e instanceof StrataError && e.code === 'ERR_NO_PATH');

    // Traffic the whole time: a ping every 200 ms, each reply stamped (-D) with its wall time.
    const web = L.host('web');
    const ping = L.spawn(client.ns, 'ping', ['-4', '-n', '-D', '-i', '0.2', '-W', '1', '-w', '90', web.v4]);
    const replies: number[] = [];
    let pingOut = '';
    ping.stdout!.setEncoding('utf8').on('data', (d: string) => {
      pingOut += d;
      const lines = pingOut.split('\n');
      pingOut = lines.pop()!;
      for (const l of lines) {
        const m = /^\[(\d+\.\d+)\] \d+ bytes from /.exec(l);
        if (m) replies.push(Number(m[1]) * 1000);
      }
    });
    ping.stderr!.resume();
    for (let i = 0; replies.length < 3; i++) {
      assert.ok(i < 50, 'no ping replies through r1,r2,r3');
      await sleep(100);
    }

    // A new relay joins: fresh namespace, `strata relay init`, serial 2 signed by 2 of 3.
    descriptors.push(await initRelay(NEWCOMER));
    const signed2 = await prepare(2, descriptors, [1, 2]);
    const relays2 = loadDirectoryConfig(f('client-dir.json')).client.accept(fs.readFileSync(signed2, 'utf8')).relays;
    const path2 = ['r1', 'r2', 'r3'].map((n) => byName(relays2, n));
    const middles = relays2.filter((r) => r.roles.includes('middle') && r.name !== 'r2' && !conflicts(r, path2[0]!) && !conflicts(r, path2[2]!));
    assert.deepEqual(
      middles.map((r) => r.name),
      ['r7'],
    );
    for (let i = 0; i < 20; i++) assert.equal(replaceHop(relays2, path2, 1).name, 'r7');

    publish(signed2);
    const published = Date.now();
    await L.seize('r2');
    const seized = Date.now();
    console.log(`# serial 2 published; r2 seized ${seized - published} ms later`);

    let serial2At: number | null = null;
    let hopAt: number | null = null;
    let trafficAt: number | null = null;
    let last: ClientStatus | null = null;
    const deadline = published + REFRESH_SECONDS * 1000 + FAILOVER_TIME_MS + 10_000;
    while (Date.now() < deadline && (hopAt === null || trafficAt === null)) {
      last = await status();
      if (serial2At === null && last.directorySerial === 2) serial2At = Date.now();
      if (hopAt === null && last.hops[1]!.name === 'r7' && last.hops[1]!.up) hopAt = Date.now();
      // r2 is gone and nothing else can be the middle: a reply after the seizure came through r7.
      trafficAt ??= replies.find((x) => x > seized) ?? null;
      await sleep(100);
    }
    ping.kill('SIGINT');
    console.log(
      `# client adopted serial 2 ${serial2At === null ? 'never' : `${serial2At - published} ms`} after publication; status shows r7 as hop 2 ` +
        `${hopAt === null ? 'never' : `${hopAt - published} ms`} after; first ping reply through r7 ${trafficAt === null ? 'never' : `${Math.round(trafficAt - published)} ms`} after publication ` +
        `(bound: refresh ${REFRESH_SECONDS * 1000} ms + failover ${FAILOVER_TIME_MS} ms); failovers ${JSON.stringify(last?.failovers)}`,
    );
    assert.ok(serial2At !== null && serial2At - published <= REFRESH_SECONDS * 1000 + 500, 'the client did not adopt serial 2 within one refresh period');
    assert.ok(trafficAt !== null, 'no traffic through r7');
    assert.ok(trafficAt - published <= REFRESH_SECONDS * 1000 + FAILOVER_TIME_MS, `traffic through r7 only ${Math.round(trafficAt - published)} ms after publication`);
    assert.ok(hopAt !== null, 'status never showed r7 as hop 2');

    // And a download through r1,r7,r3.
    const bytes = 8 << 20;
    const dl = await startDownload(L, client.ns, web.v4, bytes, 60).result;
    assert.ok(dl.done, `download through r7 failed: ${dl.error}`);
    assert.equal(dl.sha, expectedSha256(bytes));
    const s = await status();
    console.log(`# after: hops ${s.hops.map((h) => `${h.name}(${h.up ? 'up' : 'down'}, rx ${h.rxBytes} B)`).join(' ')}; 8 MiB download sha256 ok in ${Math.round(dl.endMs - dl.startMs)} ms`);
    assert.deepEqual(
      s.hops.map((h) => h.name),
      ['r1', 'r7', 'r3'],
    );
    assert.ok(s.hops.every((h) => h.up));
    assert.ok(s.hops[1]!.rxBytes > bytes, 'r7 did not carry the download');
    assert.equal(s.directorySerial, 2);
    assert.ok(s.failovers.some((x) => x.failed === 'r2' && x.replacement === 'r7' && x.restoredAfterMs !== null));
  } finally {
    await lab?.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
