/**
 * bench:failover — how long traffic stops when a relay of a 3-hop path is seized, on the lab
 * topology of src/lab/failover.ts (client, r1..r6, web; path r1,r2,r3; any of r4..r6 may replace
 * any hop), shared with test/failover.test.ts.
 *
 *   middle, entry  a 40 MiB HTTP download (sha256-checked) crosses the seizure; the outage is
 *                  the largest gap between received chunks
 *   exit           the download cannot survive a new exit; the outage is the time from the
 *                  seizure to the first new TCP connection (opened after the seizure, one
 *                  every 100 ms) answered through another exit
 *
 * Each scenario runs RUNS times (default 5), round-robin (middle, entry, exit, middle, …), each
 * run on a fresh lab torn down before the next. The table gives, per scenario, the median and
 * every run's outage, and the medians of the client's own failover event (detectedAfterMs: last
 * packet from the exit → the failed hop named; restoredAfterMs: → the replacement up).
 *
 * Env: RUNS=5 BYTES=41943040. Requires root, ip netns, /dev/net/tun, nft. Exit: 0 ok, 1 a run
 * failed (wrong bytes, no failover, no new connection), 2 precondition missing, 130/143 on
 * signals (the live lab is torn down first). Nothing is created in the host network namespace;
 * every process runs in the lab's namespaces and is killed by PID at teardown.
 */
import { labUnavailable } from '../src/lab/lab.ts';
import { median, runLoss, type FailoverBed, type LossKind, type LossResult } from '../src/lab/failover.ts';
import { envInt, log, precondition, setBenchName } from './common.ts';

setBenchName('bench:failover');
const runs = envInt('RUNS', 5, 1, 50);
const bytes = envInt('BYTES', 40 << 20, 16 << 20, 256 << 20);
const why = await labUnavailable();
if (why !== null) precondition(why);

let live: FailoverBed | null = null;
for (const [sig, code] of [
  ['SIGINT', 130],
  ['SIGTERM', 143],
] as const) {
  process.once(sig, () => {
    log(`${sig}: tearing the lab down`);
    void (live?.close() ?? Promise.resolve()).finally(() => process.exit(code));
  });
}

const kinds: LossKind[] = ['middle', 'entry', 'exit'];
const byKind = new Map<LossKind, (LossResult | Error)[]>(kinds.map((k) => [k, []]));

/** A run's problem, or null when it did what failover promises. */
function problem(r: LossResult): string | null {
  if (r.event === null) return 'no failover event';
  if (r.event.restoredAfterMs === null) return 'the replacement never came up';
  if (r.kind === 'exit') return r.newConnection === null ? 'no new connection within 10 s' : null;
  if (!r.download.done || r.download.sha !== r.expectedSha) return `download: ${r.download.error ?? 'wrong sha256'}`;
  return null;
}

let failed = 0;
for (let i = 1; i <= runs; i++) {
  for (const kind of kinds) {
    let r: LossResult | Error;
    try {
      r = await runLoss(kind, { bytes, onBed: (b) => (live = b) });
    } catch (e) {
      r = e as Error;
    }
    live = null;
    byKind.get(kind)!.push(r);
    if (r instanceof Error) {
      failed++;
      log(`run ${i} ${kind}: ERROR ${r.message}`);
      continue;
    }
    const p = problem(r);
    if (p !== null) failed++;
    log(
      `run ${i} ${kind}: outage ${r.outageMs} ms, detected ${r.event?.detectedAfterMs} ms, restored ${r.event?.restoredAfterMs} ms, ` +
        `replacement ${r.event?.replacement}${p !== null ? `; FAILED: ${p}` : ''}`,
    );
  }
}

const ms = (x: number): string => (Number.isFinite(x) ? String(Math.round(x)) : 'n/a');
const rows = kinds.map((kind) => {
  const rs = byKind.get(kind)!;
  const ok = rs.filter((r): r is LossResult => !(r instanceof Error));
  const outages = rs.map((r) => (r instanceof Error || problem(r) !== null ? NaN : r.outageMs));
  return {
    kind,
    measure: kind === 'exit' ? 'new connection' : 'largest gap',
    median: median(outages),
    runs: outages.map((x) => (Number.isFinite(x) ? ms(x) : 'FAIL')).join(', '),
    detected: median(ok.map((r) => r.event?.detectedAfterMs ?? NaN)),
    restored: median(ok.map((r) => r.event?.restoredAfterMs ?? NaN)),
  };
});
const header = ['scenario', 'outage measure', 'outage median ms', 'outage per run ms', 'detectedAfterMs median', 'restoredAfterMs median'];
const table = [header, ...rows.map((r) => [r.kind, r.measure, ms(r.median), r.runs, ms(r.detected), ms(r.restored)])];
const widths = header.map((_, c) => Math.max(...table.map((row) => row[c]!.length)));
console.log(`bench:failover: ${runs} runs per scenario, ${bytes} B downloads, path r1,r2,r3, failover silence 1000 ms, probe 500 ms`);
for (const row of table) console.log(row.map((cell, c) => cell.padEnd(widths[c]!)).join('  ').trimEnd());
process.exit(failed > 0 ? 1 : 0);
