/**
 * Path selection. A path of N relays: the exit is drawn first (so user constraints such as an
 * exit country apply to it directly), then the entry, then the middles. Every draw is weighted
 * by capacity, and skips relays that would put two hops under one operator family, one
 * country or one hosting provider/AS, and relays the client has seen fail.
 */
import { randomInt } from 'node:crypto';
import { StrataError } from '../crypto/errors.ts';
import type { Relay, Role } from './relaylist.ts';

export interface PathConstraints {
  /** Two-letter country the exit must be in. */
  exitCountry?: string;
  /** Relay names to avoid (seen failing). */
  avoid?: ReadonlySet<string>;
  /** A uniform integer in [0, n): the default is node:crypto's. */
  random?: (n: number) => number;
}

/** True when a and b may not both be in one path (same relay, family, country or provider). */
export function conflicts(a: Relay, b: Relay): boolean {
  if (a.name === b.name || a.publicKey.equals(b.publicKey)) return true;
  const same = (x: string, y: string): boolean => x !== '' && x === y;
  return same(a.family, b.family) || same(a.country, b.country) || same(a.provider, b.provider);
}

function draw(candidates: readonly Relay[], random: (n: number) => number): Relay {
  const total = candidates.reduce((s, r) => s + r.capacity, 0);
  let x = random(total);
  for (const r of candidates) {
    x -= r.capacity;
    if (x < 0) return r;
  }
  return candidates[candidates.length - 1]!;
}

function roleAt(index: number, hops: number): Role {
  return index === hops - 1 ? 'exit' : index === 0 ? 'entry' : 'middle';
}

function pick(relays: readonly Relay[], role: Role, chosen: readonly Relay[], c: PathConstraints, index: number): Relay {
  const random = c.random ?? ((n: number) => randomInt(n));
  const candidates = relays.filter(
    (r) =>
      r.roles.includes(role) &&
      !c.avoid?.has(r.name) &&
      (role !== 'exit' || c.exitCountry === undefined || r.country === c.exitCountry) &&
      chosen.every((x) => !conflicts(x, r)),
  );
  if (candidates.length === 0) {
    throw new StrataError(
      'ERR_NO_PATH',
      `no relay can be hop ${index + 1} (${role}${role === 'exit' && c.exitCountry ? ` in ${c.exitCountry}` : ''}) without sharing an operator, country or provider with the others`,
    );
  }
  return draw(candidates, random);
}

export function choosePath(relays: readonly Relay[], hops: number, c: PathConstraints = {}): Relay[] {
  if (!Number.isInteger(hops) || hops < 1 || hops > 5) throw new StrataError('ERR_HOPS', 'hops must be 1 to 5');
  const path: (Relay | undefined)[] = new Array(hops);
  const chosen: Relay[] = [];
  // Exit first, then entry, then the middles.
  const order = [hops - 1, ...(hops > 1 ? [0] : []), ...Array.from({ length: Math.max(0, hops - 2) }, (_, i) => i + 1)];
  for (const i of order) {
    const r = pick(relays, roleAt(i, hops), chosen, c, i);
    path[i] = r;
    chosen.push(r);
  }
  return path as Relay[];
}

/** A replacement for hop `index` of `path` that keeps every rule with the other hops. */
export function replaceHop(relays: readonly Relay[], path: readonly Relay[], index: number, c: PathConstraints = {}): Relay {
  const replaced = path[index]!;
  const others = path.filter((_, i) => i !== index);
  const avoid = new Set(c.avoid ?? []);
  // Never the relay being replaced, under any name (same key).
  for (const r of relays) if (r.name === replaced.name || r.publicKey.equals(replaced.publicKey)) avoid.add(r.name);
  return pick(relays, roleAt(index, path.length), others, { ...c, avoid }, index);
}
