/**
 * Path selection (src/cascade/path.ts): diversity rules, roles, constraints, and the exit's
 * capacity weighting.
 *
 *   1. Must-show 4: a 50-relay directory with deliberately overlapping families, countries and
 *      providers. 1,000 seeded choosePath() calls (3 hops, 5 hops, and 3 hops with an exit
 *      country): no two hops share family, country or provider, roles are respected, no relay
 *      twice; and a chi-square goodness-of-fit test of the exit (drawn first, so exactly
 *      capacity-proportional among the eligible exits) at the 0.999 level.
 *   2. Failing cases: ERR_NO_PATH, ERR_HOPS, avoid, replaceHop.
 *   3. Real randomness (node:crypto): 1,000 paths still obey every rule.
 *
 * The chi-square p-value and critical value come from the regularized incomplete gamma function
 * implemented below (Numerical Recipes §6.2, Lanczos log-gamma), checked against the published
 * table of upper 0.001 critical values (NIST/SEMATECH e-Handbook of Statistical Methods,
 * §1.3.6.7.4 "Critical Values of the Chi-Square Distribution").
 */
import { describe, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { PrivateKey, PublicKey } from '../src/crypto/keys.ts';
import { StrataError } from '../src/crypto/errors.ts';
import { choosePath, conflicts, replaceHop, type PathConstraints } from '../src/cascade/path.ts';
import type { Relay, Role } from '../src/cascade/relaylist.ts';

// ---- a seeded PRNG: xoshiro128**, seeded by splitmix32 ------------------------------------

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}

/** A deterministic stream of uniform 32-bit unsigned integers. */
function xoshiro128(seed: number): () => number {
  let sm = seed >>> 0;
  const splitmix32 = (): number => {
    sm = (sm + 0x9e3779b9) >>> 0;
    let z = sm;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
    return (z ^ (z >>> 16)) >>> 0;
  };
  let a = splitmix32();
  let b = splitmix32();
  let c = splitmix32();
  let d = splitmix32();
  return () => {
    const result = Math.imul(rotl(Math.imul(b, 5) >>> 0, 7), 9) >>> 0;
    const t = (b << 9) >>> 0;
    c = (c ^ a) >>> 0;
    d = (d ^ b) >>> 0;
    b = (b ^ c) >>> 0;
    a = (a ^ d) >>> 0;
    c = (c ^ t) >>> 0;
    d = rotl(d, 11);
    return result;
  };
}

const TWO_32 = 0x1_0000_0000;

/**
 * A uniform integer in [0, n) from 32-bit words, by rejection sampling: words at or above the
 * largest multiple of n below 2^32 are drawn again, so `x % n` has no modulo bias.
 */
function uniformFrom(next: () => number): (n: number) => number {
  return (n: number) => {
    if (!Number.isInteger(n) || n < 1 || n > TWO_32) throw new RangeError(`n = ${n} is not an integer in [1, 2^32]`);
    const limit = TWO_32 - (TWO_32 % n);
    for (;;) {
      const x = next();
      if (x < limit) return x % n;
    }
  };
}

function seeded(seed: number): (n: number) => number {
  return uniformFrom(xoshiro128(seed));
}

// ---- chi-square -----------------------------------------------------------------------------

const LANCZOS = [
  0.99999999999980993, 676.5203681218851, -1259.1392167224028, 771.32342877765313, -176.61502916214059, 12.507343278686905,
  -0.13857109526572012, 9.9843695780195716e-6, 1.5056327351493116e-7,
];

function lnGamma(z: number): number {
  if (z < 0.5) return Math.log(Math.PI / Math.sin(Math.PI * z)) - lnGamma(1 - z);
  const zz = z - 1;
  let x = LANCZOS[0]!;
  for (let i = 1; i < 9; i++) x += LANCZOS[i]! / (zz + i);
  const t = zz + 7.5;
  return 0.5 * Math.log(2 * Math.PI) + (zz + 0.5) * Math.log(t) - t + Math.log(x);
}

/** Regularized lower P(a, x) and upper Q(a, x) incomplete gamma functions. */
function incompleteGamma(a: number, x: number): { p: number; q: number } {
  if (x <= 0) return { p: 0, q: 1 };
  const front = Math.exp(-x + a * Math.log(x) - lnGamma(a));
  if (x < a + 1) {
    let ap = a;
    let del = 1 / a;
    let sum = del;
    for (let i = 0; i < 10_000 && Math.abs(del) > Math.abs(sum) * 1e-16; i++) {
      ap += 1;
      del *= x / ap;
      sum += del;
    }
    const p = sum * front;
    return { p, q: 1 - p };
  }
  // Continued fraction (modified Lentz).
  const TINY = 1e-300;
  let b = x + 1 - a;
  let c = 1 / TINY;
  let d = 1 / b;
  let h = d;
  for (let i = 1; i < 10_000; i++) {
    const an = -i * (i - a);
    b += 2;
    d = an * d + b;
    if (Math.abs(d) < TINY) d = TINY;
    c = b + an / c;
    if (Math.abs(c) < TINY) c = TINY;
    d = 1 / d;
    const del = d * c;
    h *= del;
    if (Math.abs(del - 1) < 1e-16) break;
  }
  const q = front * h;
  return { p: 1 - q, q };
}

function chiSquareCdf(x: number, df: number): number {
  return incompleteGamma(df / 2, x / 2).p;
}

/** P(X >= x) for X ~ chi-square(df): the p-value of statistic x. */
function chiSquareSf(x: number, df: number): number {
  return incompleteGamma(df / 2, x / 2).q;
}

/** The p-quantile of chi-square(df), by bisection on the CDF. */
function chiSquareQuantile(p: number, df: number): number {
  let lo = 0;
  let hi = Math.max(1, df);
  while (chiSquareCdf(hi, df) < p) hi *= 2;
  for (let i = 0; i < 200; i++) {
    const mid = (lo + hi) / 2;
    if (chiSquareCdf(mid, df) < p) lo = mid;
    else hi = mid;
  }
  return (lo + hi) / 2;
}

/**
 * Upper 0.001 critical values (the 0.999 quantile), df = 1..30, from NIST/SEMATECH
 * e-Handbook of Statistical Methods, §1.3.6.7.4, https://www.itl.nist.gov/div898/handbook/eda/section3/eda3674.htm
 */
const CHI2_999_TABLE = [
  10.828, 13.816, 16.266, 18.467, 20.515, 22.458, 24.322, 26.125, 27.877, 29.588, 31.264, 32.91, 34.528, 36.123, 37.697, 39.252,
  40.79, 42.312, 43.82, 45.315, 46.797, 48.268, 49.728, 51.179, 52.62, 54.052, 55.476, 56.892, 58.301, 59.703,
];

interface Bin {
  label: string;
  observed: number;
  expected: number;
}

/** Merges bins with expected count < 5 (smallest first) until every bin has at least 5. */
function mergeSmallBins(bins: readonly Bin[]): Bin[] {
  const sorted = [...bins].sort((x, y) => x.expected - y.expected);
  const out: Bin[] = [];
  let acc: Bin | null = null;
  for (const b of sorted) {
    acc = acc === null ? { ...b } : { label: `${acc.label}+${b.label}`, observed: acc.observed + b.observed, expected: acc.expected + b.expected };
    if (acc.expected >= 5) {
      out.push(acc);
      acc = null;
    }
  }
  if (acc !== null) {
    const last = out.pop();
    out.push(last === undefined ? acc : { label: `${last.label}+${acc.label}`, observed: last.observed + acc.observed, expected: last.expected + acc.expected });
  }
  return out;
}

interface ChiSquare {
  statistic: number;
  df: number;
  pValue: number;
  critical999: number;
  bins: number;
  merged: number;
}

/** Goodness of fit of `counts` (by relay name) to capacity-proportional expectations. */
function exitChiSquare(exits: readonly Relay[], counts: ReadonlyMap<string, number>, n: number): ChiSquare {
  const total = exits.reduce((s, r) => s + r.capacity, 0);
  const raw = exits.map((r) => ({ label: r.name, observed: counts.get(r.name) ?? 0, expected: (n * r.capacity) / total }));
  const bins = mergeSmallBins(raw);
  const statistic = bins.reduce((s, b) => s + (b.observed - b.expected) ** 2 / b.expected, 0);
  const df = bins.length - 1;
  return { statistic, df, pValue: chiSquareSf(statistic, df), critical999: chiSquareQuantile(0.999, df), bins: bins.length, merged: raw.length - bins.length };
}

function report(t: TestContext, label: string, x: ChiSquare): void {
  const line = `chi-square [${label}]: statistic=${x.statistic.toFixed(3)} df=${x.df} p-value=${x.pValue.toFixed(4)} critical(0.999)=${x.critical999.toFixed(3)} bins=${x.bins} (merged ${x.merged})`;
  t.diagnostic(line);
}

// ---- the 50-relay directory -----------------------------------------------------------------

const COUNTRIES = ['DE', 'NL', 'SE', 'CH', 'IS', 'FR', 'FI', 'NO', 'RO', 'US', 'CA', 'JP'];

/**
 * 50 relays: 10 families, 12 countries, 8 providers, spread by arithmetic so that about a
 * quarter of all pairs conflict; capacities 1..10; 20 exit-capable (i % 5 in {0, 1}),
 * 30 entry-capable (i % 5 in {1, 2, 3}; 10 relays are both), all middle-capable.
 */
function directory(): Relay[] {
  return Array.from({ length: 50 }, (_, i): Relay => {
    const roles: Role[] = [];
    if (i % 5 >= 1 && i % 5 <= 3) roles.push('entry');
    roles.push('middle');
    if (i % 5 < 2) roles.push('exit');
    return {
      name: `r${String(i).padStart(2, '0')}`,
      country: COUNTRIES[(i + (i >> 2)) % 12]!,
      publicKey: PrivateKey.generate().publicKey(),
      endpoints: [{ address: `198.51.100.${i + 1}`, port: 51820, family: 'IPv4' }],
      roles,
      provider: `AS${64500 + ((i * 5 + (i >> 3)) % 8)}`,
      family: `fam${i % 10}`,
      capacity: ((i * 7 + Math.floor(i / 10)) % 10) + 1,
      kind: 'strata',
    };
  });
}

const RELAYS = directory();
const EXITS = RELAYS.filter((r) => r.roles.includes('exit'));

/** The country with the most exit-capable relays, and those relays. */
const [EXIT_COUNTRY, EXITS_IN_COUNTRY] = (() => {
  const byCountry = new Map<string, Relay[]>();
  for (const r of EXITS) byCountry.set(r.country, [...(byCountry.get(r.country) ?? []), r]);
  return [...byCountry].sort((a, b) => b[1].length - a[1].length)[0]!;
})();

function roleAt(index: number, hops: number): Role {
  return index === hops - 1 ? 'exit' : index === 0 ? 'entry' : 'middle';
}

/** Every rule, checked on the attributes directly (not through conflicts()). */
function checkPath(p: readonly Relay[], hops: number, relays: readonly Relay[], c: PathConstraints = {}): void {
  assert.equal(p.length, hops);
  for (let i = 0; i < hops; i++) {
    const r = p[i]!;
    assert.ok(relays.includes(r), `hop ${i} ${r.name} comes from the relay list`);
    assert.ok(r.roles.includes(roleAt(i, hops)), `hop ${i} ${r.name} has role ${roleAt(i, hops)} (${r.roles.join(',')})`);
    assert.ok(!c.avoid?.has(r.name), `hop ${i} ${r.name} is avoided`);
  }
  if (c.exitCountry !== undefined) assert.equal(p[hops - 1]!.country, c.exitCountry);
  const distinct = (f: (r: Relay) => string, what: string) =>
    assert.equal(new Set(p.map(f)).size, hops, `two hops share ${what}: ${p.map((r) => `${r.name}:${f(r)}`).join(' ')}`);
  distinct((r) => r.name, 'a name');
  distinct((r) => r.publicKey.toBase64(), 'a WireGuard key');
  distinct((r) => r.family, 'a family');
  distinct((r) => r.country, 'a country');
  distinct((r) => r.provider, 'a provider');
}

function throwsCode(fn: () => unknown, code: string): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof StrataError, `expected a StrataError ${code}, got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    return true;
  });
}

/** n paths; checks each; returns the exit counts by name. */
function run(n: number, hops: number, c: PathConstraints, relays: readonly Relay[] = RELAYS): Map<string, number> {
  const counts = new Map<string, number>();
  for (let k = 0; k < n; k++) {
    const p = choosePath(relays, hops, c);
    checkPath(p, hops, relays, c);
    const exit = p[hops - 1]!.name;
    counts.set(exit, (counts.get(exit) ?? 0) + 1);
  }
  return counts;
}

const N = 1000;

// ---- tests ----------------------------------------------------------------------------------

describe('test machinery', () => {
  test('the PRNG is deterministic, in range, and rejection sampling redraws the biased words', () => {
    const a = seeded(42);
    const b = seeded(42);
    const xs = Array.from({ length: 100 }, () => a(1000));
    assert.deepEqual(
      xs,
      Array.from({ length: 100 }, () => b(1000)),
    );
    assert.notDeepEqual(
      xs,
      Array.from({ length: 100 }, ((c) => () => c(1000))(seeded(43))),
    );
    const r = seeded(7);
    for (const n of [1, 2, 3, 10, 110, 2 ** 31 + 1, TWO_32 - 1, TWO_32]) {
      for (let i = 0; i < 200; i++) {
        const x = r(n);
        assert.ok(Number.isInteger(x) && x >= 0 && x < n, `${x} in [0, ${n})`);
      }
    }
    // With n = 10 the words 4294967290..4294967295 would bias 0..5: they are drawn again.
    const words = [0xffff_ffff, 0xffff_fffa, 4_294_967_289, 5];
    const scripted = uniformFrom(() => words.shift()!);
    assert.equal(scripted(10), 4_294_967_289 % 10);
    assert.equal(words.length, 1);
    assert.throws(() => r(0), RangeError);
    assert.throws(() => r(1.5), RangeError);
    // Uniformity of the integers themselves: 60,000 draws of [0, 6).
    const counts = new Array<number>(6).fill(0);
    const u = seeded(2024);
    for (let i = 0; i < 60_000; i++) counts[u(6)]!++;
    const stat = counts.reduce((s, o) => s + (o - 10_000) ** 2 / 10_000, 0);
    assert.ok(stat < chiSquareQuantile(0.999, 5), `PRNG uniformity: chi-square ${stat}`);
  });

  test('the chi-square quantile matches the NIST table; the p-value is its complement', () => {
    for (let df = 1; df <= CHI2_999_TABLE.length; df++) {
      const q = chiSquareQuantile(0.999, df);
      assert.ok(Math.abs(q - CHI2_999_TABLE[df - 1]!) < 0.0015, `df=${df}: computed ${q}, table ${CHI2_999_TABLE[df - 1]}`);
      assert.ok(Math.abs(chiSquareSf(q, df) - 0.001) < 1e-9);
    }
    // Closed forms: df = 2 is exponential with mean 2; the median of df = 1 is 0.45494.
    for (const x of [0.1, 1, 5, 20]) assert.ok(Math.abs(chiSquareSf(x, 2) - Math.exp(-x / 2)) < 1e-12);
    assert.ok(Math.abs(chiSquareQuantile(0.5, 1) - 0.454936) < 1e-5);
    // Bin merging: small bins are pooled until each has at least 5.
    const merged = mergeSmallBins([
      { label: 'a', observed: 1, expected: 1 },
      { label: 'b', observed: 3, expected: 2 },
      { label: 'c', observed: 9, expected: 10 },
      { label: 'd', observed: 2, expected: 3 },
    ]);
    assert.deepEqual(
      merged.map((b) => [b.expected, b.observed]),
      [
        [6, 6],
        [10, 9],
      ],
    );
    assert.ok(merged.every((b) => b.expected >= 5));
  });

  test('the directory overlaps on purpose, and no greedy draw can ever dead-end on it', () => {
    assert.equal(RELAYS.length, 50);
    assert.equal(new Set(RELAYS.map((r) => r.family)).size, 10);
    assert.equal(new Set(RELAYS.map((r) => r.country)).size, 12);
    assert.equal(new Set(RELAYS.map((r) => r.provider)).size, 8);
    assert.deepEqual(
      [...new Set(RELAYS.map((r) => r.capacity))].sort((x, y) => x - y),
      [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
    );
    assert.equal(RELAYS.filter((r) => r.roles.includes('exit')).length, 20);
    assert.equal(RELAYS.filter((r) => r.roles.includes('entry')).length, 30);
    assert.equal(RELAYS.filter((r) => r.roles.includes('middle')).length, 50);
    let pairs = 0;
    let conflicting = 0;
    for (let i = 0; i < RELAYS.length; i++)
      for (let j = i + 1; j < RELAYS.length; j++) {
        pairs++;
        if (conflicts(RELAYS[i]!, RELAYS[j]!)) conflicting++;
      }
    assert.ok(conflicting / pairs > 0.2, `${conflicting} of ${pairs} pairs conflict`);
    // choosePath draws greedily (no backtracking). On this directory it can never get stuck:
    // every exit has a compatible entry, and every mutually compatible set of 1..4 relays has
    // a compatible relay left (all relays are middle-capable). Exhaustive over all such sets.
    const exits = EXITS;
    for (const e of exits) assert.ok(RELAYS.some((r) => r.roles.includes('entry') && !conflicts(e, r)), `exit ${e.name} has an entry`);
    let sets = 0;
    const extend = (chosen: Relay[], start: number): void => {
      if (chosen.length > 0) {
        sets++;
        assert.ok(
          RELAYS.some((r) => chosen.every((x) => !conflicts(x, r))),
          `dead end: ${chosen.map((x) => x.name).join(',')}`,
        );
      }
      if (chosen.length === 4) return;
      for (let j = start; j < RELAYS.length; j++) if (chosen.every((x) => !conflicts(x, RELAYS[j]!))) extend([...chosen, RELAYS[j]!], j + 1);
    };
    extend([], 0);
    assert.ok(sets > 1000, `${sets} compatible sets checked`);
  });
});

describe('must-show 4: 1,000 seeded paths on a 50-relay overlapping directory', () => {
  const exits = EXITS;

  test('3 hops: every rule holds; the exit is capacity-proportional (chi-square, 0.999)', (t) => {
    const counts = run(N, 3, { random: seeded(0x5eed_0003) });
    const x = exitChiSquare(exits, counts, N);
    report(t, '3 hops, 20 exit-capable relays', x);
    assert.equal(x.df, 19);
    assert.ok(x.statistic < x.critical999, `chi-square ${x.statistic} >= ${x.critical999}`);
    assert.ok(Math.abs(x.critical999 - CHI2_999_TABLE[x.df - 1]!) < 0.0015);
    // Every exit-capable relay was drawn; no other relay ever was.
    assert.equal(counts.size, exits.length);
  });

  test('5 hops: every rule holds; the exit is capacity-proportional (chi-square, 0.999)', (t) => {
    const counts = run(N, 5, { random: seeded(0x5eed_0005) });
    const x = exitChiSquare(exits, counts, N);
    report(t, '5 hops, 20 exit-capable relays', x);
    assert.ok(x.statistic < x.critical999, `chi-square ${x.statistic} >= ${x.critical999}`);
  });

  test('3 hops with exitCountry: every exit in that country, capacity-proportional among them', (t) => {
    const [country, inCountry] = [EXIT_COUNTRY, EXITS_IN_COUNTRY];
    assert.ok(inCountry.length >= 4, `${country} has ${inCountry.length} exits`);
    const c: PathConstraints = { exitCountry: country, random: seeded(0x5eed_00cc) };
    const counts = run(N, 3, c);
    assert.ok([...counts.keys()].every((n) => inCountry.some((r) => r.name === n)));
    const x = exitChiSquare(inCountry, counts, N);
    report(t, `3 hops, exitCountry=${country}, ${inCountry.length} exits (capacities ${inCountry.map((r) => r.capacity).join('/')})`, x);
    assert.ok(x.statistic < x.critical999, `chi-square ${x.statistic} >= ${x.critical999}`);
    // And with 5 hops too.
    run(N, 5, { exitCountry: country, random: seeded(0x5eed_00c5) });
  });

  test('1, 2 and 4 hops: every rule holds', () => {
    for (const hops of [1, 2, 4]) run(300, hops, { random: seeded(hops) });
  });

  test('a biased random source would be caught (the test has power)', () => {
    // Uniform over the exits instead of capacity-weighted: the same statistic rejects it.
    const r = seeded(99);
    const counts = new Map<string, number>();
    for (let k = 0; k < N; k++) {
      const e = exits[r(exits.length)]!;
      counts.set(e.name, (counts.get(e.name) ?? 0) + 1);
    }
    const x = exitChiSquare(exits, counts, N);
    assert.ok(x.statistic > x.critical999, `uniform exits give chi-square ${x.statistic}`);
  });
});

describe('failing cases', () => {
  const mk = (name: string, country: string, provider: string, family: string, roles: Role[] = ['entry', 'middle', 'exit']): Relay => ({
    name,
    country,
    publicKey: PrivateKey.generate().publicKey(),
    endpoints: [{ address: '192.0.2.1', port: 51820, family: 'IPv4' }],
    roles,
    provider,
    family,
    capacity: 1,
    kind: 'strata',
  });

  test('ERR_NO_PATH when diversity makes a path impossible', () => {
    const oneCountry = Array.from({ length: 10 }, (_, i) => mk(`de${i}`, 'DE', `AS${i}`, `f${i}`));
    throwsCode(() => choosePath(oneCountry, 3), 'ERR_NO_PATH');
    throwsCode(() => choosePath(oneCountry, 2), 'ERR_NO_PATH');
    assert.equal(choosePath(oneCountry, 1).length, 1);
    const oneProvider = Array.from({ length: 10 }, (_, i) => mk(`p${i}`, COUNTRIES[i]!, 'AS1', `f${i}`));
    throwsCode(() => choosePath(oneProvider, 2), 'ERR_NO_PATH');
    const oneFamily = Array.from({ length: 10 }, (_, i) => mk(`f${i}`, COUNTRIES[i]!, `AS${i}`, 'same-operator'));
    throwsCode(() => choosePath(oneFamily, 2), 'ERR_NO_PATH');
    // Two countries only: 2 hops work, 3 cannot.
    const twoCountries = Array.from({ length: 10 }, (_, i) => mk(`t${i}`, i % 2 === 0 ? 'SE' : 'NO', `AS${i}`, `f${i}`));
    for (let k = 0; k < 50; k++) checkPath(choosePath(twoCountries, 2), 2, twoCountries);
    throwsCode(() => choosePath(twoCountries, 3), 'ERR_NO_PATH');
    // No exit-capable relay at all, or none in the asked country.
    throwsCode(() => choosePath(RELAYS.filter((r) => !r.roles.includes('exit')), 1), 'ERR_NO_PATH');
    throwsCode(() => choosePath(RELAYS, 3, { exitCountry: 'AQ' }), 'ERR_NO_PATH');
    throwsCode(() => choosePath([], 1), 'ERR_NO_PATH');
  });

  test('a WireGuard key listed under two names is one relay: never twice in a path', () => {
    const a = mk('alias-a', 'DE', 'AS1', 'fa');
    const b: Relay = { ...mk('alias-b', 'FR', 'AS2', 'fb'), publicKey: new PublicKey(a.publicKey.raw()) };
    throwsCode(() => choosePath([a, b], 2), 'ERR_NO_PATH');
    // Empty family/provider means "none declared", never a conflict (relay lists default to '').
    const anon = [mk('n1', 'DE', '', ''), mk('n2', 'FR', '', ''), mk('n3', 'SE', '', '')];
    assert.equal(choosePath(anon, 3).length, 3);
  });

  test('ERR_HOPS for 0 and 6 (and other non-counts)', () => {
    for (const hops of [0, 6, -1, 2.5, Number.NaN, Number.POSITIVE_INFINITY, 100]) throwsCode(() => choosePath(RELAYS, hops), 'ERR_HOPS');
  });

  test('avoid excludes relays', () => {
    const exits = EXITS;
    // Avoid the 5 heaviest exits and 10 other relays.
    const heavy = [...exits].sort((a, b) => b.capacity - a.capacity).slice(0, 5);
    const avoid = new Set([...heavy.map((r) => r.name), ...RELAYS.filter((r) => !heavy.includes(r)).slice(0, 10).map((r) => r.name)]);
    assert.equal(avoid.size, 15);
    for (const hops of [1, 3, 5]) {
      const counts = run(N / 2, hops, { avoid, random: seeded(0xa001 + hops) });
      for (const name of avoid) assert.equal(counts.get(name), undefined);
    }
    throwsCode(() => choosePath(RELAYS, 3, { avoid: new Set(exits.map((r) => r.name)) }), 'ERR_NO_PATH');
    const entries = new Set(RELAYS.filter((r) => r.roles.includes('entry')).map((r) => r.name));
    throwsCode(() => choosePath(RELAYS, 2, { avoid: entries }), 'ERR_NO_PATH');
    assert.equal(choosePath(RELAYS, 1, { avoid: entries }).length, 1);
  });

  test('replaceHop keeps the diversity rules and never returns the replaced relay', (t) => {
    const random = seeded(0x4e9_1ace);
    let replaced = 0;
    let impossible = 0;
    for (const hops of [1, 2, 3, 5]) {
      for (let k = 0; k < 150; k++) {
        const p = choosePath(RELAYS, hops, { random });
        for (let i = 0; i < hops; i++) {
          const others = p.filter((_, j) => j !== i);
          const candidates = RELAYS.filter((r) => r !== p[i] && r.roles.includes(roleAt(i, hops)) && others.every((x) => !conflicts(x, r)));
          let r: Relay;
          try {
            r = replaceHop(RELAYS, p, i, { random });
          } catch (e) {
            assert.ok(e instanceof StrataError && e.code === 'ERR_NO_PATH', String(e));
            // Only when there really is no candidate.
            assert.equal(candidates.length, 0, `ERR_NO_PATH although ${candidates.map((x) => x.name).join(',')} fit`);
            impossible++;
            continue;
          }
          assert.notEqual(r.name, p[i]!.name);
          assert.ok(!r.publicKey.equals(p[i]!.publicKey));
          assert.ok(candidates.includes(r));
          const q = [...p];
          q[i] = r;
          checkPath(q, hops, RELAYS);
          replaced++;
        }
      }
    }
    t.diagnostic(`replaceHop: ${replaced} replacements checked, ${impossible} correctly refused (no candidate)`);
    assert.ok(replaced > 1000);
    // Constraints still apply: the exit's country, and avoid.
    const country = EXIT_COUNTRY;
    const avoid = new Set([EXITS_IN_COUNTRY[0]!.name, 'r02', 'r03']);
    for (let k = 0; k < 100; k++) {
      const p = choosePath(RELAYS, 3, { exitCountry: country, random });
      for (let i = 0; i < 3; i++) {
        try {
          const r = replaceHop(RELAYS, p, i, { exitCountry: country, avoid, random });
          assert.ok(!avoid.has(r.name));
          if (i === 2) assert.equal(r.country, country);
          const q = [...p];
          q[i] = r;
          checkPath(q, 3, RELAYS, { exitCountry: country, avoid: new Set() });
        } catch (e) {
          assert.ok(e instanceof StrataError && e.code === 'ERR_NO_PATH', String(e));
        }
      }
    }
    // The only relay able to fill the hop is the one being replaced: ERR_NO_PATH.
    const small = [mk('e1', 'DE', 'AS1', 'f1', ['entry']), mk('m1', 'FR', 'AS2', 'f2', ['middle']), mk('x1', 'SE', 'AS3', 'f3', ['exit'])];
    const p = choosePath(small, 3);
    assert.deepEqual(
      p.map((r) => r.name),
      ['e1', 'm1', 'x1'],
    );
    for (let i = 0; i < 3; i++) throwsCode(() => replaceHop(small, p, i), 'ERR_NO_PATH');
    // A second exit that conflicts with the entry (same country) cannot replace the exit either.
    throwsCode(() => replaceHop([...small, mk('x2', 'DE', 'AS9', 'f9', ['exit'])], p, 2), 'ERR_NO_PATH');
    const x3 = mk('x3', 'CH', 'AS9', 'f9', ['exit']);
    assert.equal(replaceHop([...small, x3], p, 2), x3);
  });

  // conflicts() treats one WireGuard key under two names as one relay: replaceHop must never
  // hand back the relay (same key, same server) it was asked to replace, under another name.
  test('replaceHop never returns the replaced relay under another name (same WireGuard key)', () => {
    const entry = mk('e1', 'DE', 'AS1', 'f1', ['entry']);
    const exit = mk('x1', 'SE', 'AS3', 'f3', ['exit']);
    const alias: Relay = { ...exit, name: 'x1-alias', publicKey: new PublicKey(exit.publicKey.raw()) };
    const p = [entry, exit];
    let caught: unknown = null;
    let got: Relay | null = null;
    try {
      got = replaceHop([entry, exit, alias], p, 1);
    } catch (e) {
      caught = e;
    }
    assert.ok(got === null || !got.publicKey.equals(exit.publicKey), `replaceHop returned ${got?.name}, which has the replaced relay's WireGuard key`);
    assert.ok(caught === null || (caught instanceof StrataError && caught.code === 'ERR_NO_PATH'));
  });
});

describe('real randomness (node:crypto randomInt, no seed)', () => {
  test('1,000 paths of 3 hops and 1,000 of 5 hops obey every rule', (t) => {
    const exits = EXITS;
    for (const hops of [3, 5]) {
      const counts = run(N, hops, {});
      const x = exitChiSquare(exits, counts, N);
      report(t, `real randomness, ${hops} hops (informative; asserted only at p > 1e-9)`, x);
      assert.ok(x.pValue > 1e-9, `exit distribution is grossly off: chi-square ${x.statistic}, df ${x.df}`);
    }
    run(N, 3, { exitCountry: EXIT_COUNTRY, avoid: new Set([EXITS_IN_COUNTRY[0]!.name, 'r02', 'r03']) });
  });
});
