/**
 * A relay descriptor: what a relay says about itself — identity key (Ed25519), WireGuard public
 * key, endpoints, roles, country, hosting provider/AS, operator family, capacity — signed by
 * its identity key. Authorities list descriptors in a consensus; clients check both.
 */
import { z } from 'zod';
import { StrataError } from '../crypto/errors.ts';
import { PublicKey } from '../crypto/keys.ts';
import { parseEndpoint } from '../device/endpoint.ts';
import type { Relay } from '../cascade/relaylist.ts';
import { signedBytes } from './canonical.ts';
import { parsePublicKey, verifySignature, type SigningKey } from './ed25519.ts';

export const DESCRIPTOR_DOMAIN = 'strata relay descriptor v1';

export const descriptorBodySchema = z.object({
  name: z.string().regex(/^[A-Za-z0-9_.-]{1,32}$/),
  identityKey: z.string(),
  wireguardKey: z.string(),
  endpoints: z.array(z.string()).min(1).max(8),
  roles: z.array(z.enum(['entry', 'middle', 'exit'])).min(1),
  country: z.string().regex(/^[A-Z]{2}$/),
  provider: z.string().min(1).max(64),
  family: z.string().min(1).max(64),
  capacity: z.number().int().positive().max(1_000_000),
  published: z.string(),
});

export type DescriptorBody = z.infer<typeof descriptorBodySchema>;

export const signedDescriptorSchema = z.object({ body: descriptorBodySchema, signature: z.string() });
export type SignedDescriptor = z.infer<typeof signedDescriptorSchema>;

export interface DescriptorFields {
  name: string;
  wireguardKey: PublicKey;
  endpoints: string[];
  roles: ('entry' | 'middle' | 'exit')[];
  country: string;
  provider: string;
  family: string;
  capacity: number;
}

export function signDescriptor(identity: SigningKey, f: DescriptorFields, published = new Date()): SignedDescriptor {
  const body: DescriptorBody = {
    name: f.name,
    identityKey: identity.publicKeyBase64,
    wireguardKey: f.wireguardKey.toBase64(),
    endpoints: f.endpoints,
    roles: f.roles,
    country: f.country,
    provider: f.provider,
    family: f.family,
    capacity: f.capacity,
    published: published.toISOString(),
  };
  const parsed = descriptorBodySchema.safeParse(body);
  if (!parsed.success) throw new StrataError('ERR_DESCRIPTOR_INVALID', `descriptor: ${parsed.error.issues[0]!.path.join('.')}: ${parsed.error.issues[0]!.message}`);
  return { body, signature: Buffer.from(identity.sign(signedBytes(DESCRIPTOR_DOMAIN, body))).toString('base64') };
}

/** Checks a descriptor's self-signature and fields; returns it as a relay-list entry. */
export function verifyDescriptor(d: SignedDescriptor): Relay {
  const b = d.body;
  const identity = parsePublicKey(b.identityKey);
  const sig = Buffer.from(d.signature, 'base64');
  if (identity === null || !verifySignature(identity, signedBytes(DESCRIPTOR_DOMAIN, b), sig)) {
    throw new StrataError('ERR_DIR_DESCRIPTOR', `descriptor of relay "${b.name}" is not signed by its identity key`);
  }
  let wireguardKey: PublicKey;
  try {
    wireguardKey = PublicKey.parse(b.wireguardKey);
  } catch {
    throw new StrataError('ERR_DIR_DESCRIPTOR', `descriptor of relay "${b.name}" has no valid WireGuard key`);
  }
  const endpoints = b.endpoints.map((t) => {
    const e = parseEndpoint(t);
    if (e === null) throw new StrataError('ERR_DIR_DESCRIPTOR', `descriptor of relay "${b.name}" has a bad endpoint`);
    return e;
  });
  return {
    name: b.name,
    country: b.country,
    publicKey: wireguardKey,
    endpoints,
    roles: b.roles,
    provider: b.provider,
    family: b.family,
    capacity: b.capacity,
    kind: 'strata',
  };
}

