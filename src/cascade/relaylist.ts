/**
 * The relay list: which relays exist, their WireGuard keys, endpoints and roles. A client
 * builds paths from it; a relay forwards only to endpoints it names (it is never an open UDP
 * proxy). The signed directory (later) produces the same structure.
 */
import { readFileSync } from 'node:fs';
import { z } from 'zod';
import { StrataError } from '../crypto/errors.ts';
import { PublicKey } from '../crypto/keys.ts';
import { formatEndpoint, parseEndpoint } from '../device/endpoint.ts';
import type { UdpEndpoint } from '../io/types.ts';

export type Role = 'entry' | 'middle' | 'exit';
/**
 * 'strata': a Strata relay, which admits the client's fresh per-connection key.
 * 'wireguard': a stock WireGuard server that forwards and masquerades; it knows its clients
 * in advance, so the client uses the key the operator registered for that hop (--hop-key).
 */
export type RelayKind = 'strata' | 'wireguard';

export interface Relay {
  readonly name: string;
  readonly country: string;
  readonly publicKey: PublicKey;
  readonly endpoints: readonly UdpEndpoint[];
  readonly roles: readonly Role[];
  readonly provider: string;
  readonly family: string;
  readonly capacity: number;
  readonly kind: RelayKind;
}

const relaySchema = z.object({
  name: z.string().regex(/^[A-Za-z0-9_.-]{1,32}$/, 'a name is 1-32 letters, digits, _ . -'),
  country: z.string().regex(/^[A-Z]{2}$/, 'a country is a two-letter code'),
  publicKey: z.string(),
  endpoints: z.array(z.string()).min(1),
  roles: z.array(z.enum(['entry', 'middle', 'exit'])).min(1),
  provider: z.string().max(64).default(''),
  family: z.string().max(64).default(''),
  capacity: z.number().int().positive().default(1),
  kind: z.enum(['strata', 'wireguard']).default('strata'),
});

const listSchema = z.object({ relays: z.array(relaySchema).min(1) });

export function parseRelayList(text: string): Relay[] {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new StrataError('ERR_RELAYLIST_PARSE', `relay list is not JSON: ${(e as Error).message}`);
  }
  const r = listSchema.safeParse(json);
  if (!r.success) {
    const issue = r.error.issues[0]!;
    const at = issue.path.length > 0 ? issue.path.join('.') : 'top level';
    throw new StrataError('ERR_RELAYLIST_INVALID', `relay list: ${at}: ${issue.message}`);
  }
  const seen = new Set<string>();
  const keys = new Set<string>();
  return r.data.relays.map((raw) => {
    if (seen.has(raw.name)) throw new StrataError('ERR_RELAYLIST_INVALID', `relay list: relay "${raw.name}" appears twice`);
    seen.add(raw.name);
    let publicKey: PublicKey;
    try {
      publicKey = PublicKey.parse(raw.publicKey);
    } catch {
      throw new StrataError('ERR_RELAYLIST_INVALID', `relay list: relay "${raw.name}": publicKey is not a WireGuard public key`);
    }
    if (keys.has(publicKey.toHex())) throw new StrataError('ERR_RELAYLIST_INVALID', `relay list: relay "${raw.name}" has another relay's key`);
    keys.add(publicKey.toHex());
    const endpoints = raw.endpoints.map((t) => {
      const e = parseEndpoint(t);
      if (e === null) throw new StrataError('ERR_RELAYLIST_INVALID', `relay list: relay "${raw.name}": endpoint "${t}" is not ADDRESS:PORT`);
      return e;
    });
    return { ...raw, publicKey, endpoints };
  });
}

export function loadRelayList(path: string): Relay[] {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new StrataError('ERR_RELAYLIST_READ', `cannot read relay list ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  return parseRelayList(text);
}

export function relayListJson(relays: readonly Relay[]): string {
  return JSON.stringify(
    {
      relays: relays.map((r) => ({
        name: r.name,
        country: r.country,
        publicKey: r.publicKey.toBase64(),
        endpoints: r.endpoints.map(formatEndpoint),
        roles: r.roles,
        provider: r.provider,
        family: r.family,
        capacity: r.capacity,
        kind: r.kind,
      })),
    },
    null,
    2,
  );
}

/** Resolves hop names against the list, in order; an unknown name is an error naming it. */
export function pickPath(relays: readonly Relay[], names: readonly string[]): Relay[] {
  return names.map((n, i) => {
    const r = relays.find((x) => x.name === n);
    if (r === undefined) throw new StrataError('ERR_HOP_UNKNOWN', `hop ${i + 1} "${n}" is not in the relay list`);
    return r;
  });
}

/** The endpoint key a relay checks forwarding against: "address|port". */
export function endpointKey(address: string, port: number): string {
  return `${address}|${port}`;
}
