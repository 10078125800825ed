/**
 * Picks a path of N relays from a list: an entry first, an exit last, middles between, no
 * relay twice, each drawn with probability proportional to its capacity. (Diversity rules
 * across operators, countries and providers come with the signed directory.)
 */
import { randomInt } from 'node:crypto';
import { StrataError } from '../crypto/errors.ts';
import type { Relay, Role } from './relaylist.ts';

function draw(candidates: readonly Relay[]): Relay {
  const total = candidates.reduce((s, r) => s + r.capacity, 0);
  let x = randomInt(total);
  for (const r of candidates) {
    x -= r.capacity;
    if (x < 0) return r;
  }
  return candidates[candidates.length - 1]!;
}

export function choosePath(relays: readonly Relay[], hops: number): Relay[] {
  if (!Number.isInteger(hops) || hops < 1 || hops > 5) throw new StrataError('ERR_HOPS', 'hops must be 1 to 5');
  const used = new Set<Relay>();
  const path: Relay[] = [];
  for (let i = 0; i < hops; i++) {
    const role: Role = i === hops - 1 ? 'exit' : i === 0 ? 'entry' : 'middle';
    const candidates = relays.filter((r) => !used.has(r) && r.roles.includes(role));
    if (candidates.length === 0) throw new StrataError('ERR_NO_PATH', `no unused relay in the list can be hop ${i + 1} (${role})`);
    const r = draw(candidates);
    used.add(r);
    path.push(r);
  }
  return path;
}
