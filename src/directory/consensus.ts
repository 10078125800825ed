/**
 * The consensus: the relays (their signed descriptors, with flags), a serial number and a
 * validity window, signed by k of n directory authorities (Ed25519). A client trusts it only
 * if at least k signatures from its pinned authorities verify, no signature is from a key it
 * does not know, it is within its window, and its serial is not older than the last accepted.
 * Mirrors are untrusted: any byte changed breaks the signatures.
 */
import { createHash } from 'node:crypto';
import { z } from 'zod';
import { StrataError } from '../crypto/errors.ts';
import type { Relay } from '../cascade/relaylist.ts';
import { signedBytes } from './canonical.ts';
import { signedDescriptorSchema, verifyDescriptor, type SignedDescriptor } from './descriptor.ts';
import { parsePublicKey, verifySignature, type SigningKey } from './ed25519.ts';

export const CONSENSUS_DOMAIN = 'strata consensus v1';

const flags = z.enum(['Running', 'Valid', 'Fast', 'Stable', 'Exit', 'BadExit']);

export const consensusBodySchema = z.object({
  serial: z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER),
  validAfter: z.string(),
  freshUntil: z.string(),
  validUntil: z.string(),
  relays: z.array(z.object({ descriptor: signedDescriptorSchema, flags: z.array(flags) })),
});
export type ConsensusBody = z.infer<typeof consensusBodySchema>;

export const signedConsensusSchema = z.object({
  consensus: consensusBodySchema,
  signatures: z.array(z.object({ authority: z.string(), signature: z.string() })),
});
export type SignedConsensus = z.infer<typeof signedConsensusSchema>;

export interface ConsensusWindow {
  validAfter: Date;
  freshUntil: Date;
  validUntil: Date;
}

export function makeConsensus(serial: number, window: ConsensusWindow, descriptors: readonly SignedDescriptor[]): ConsensusBody {
  const body: ConsensusBody = {
    serial,
    validAfter: window.validAfter.toISOString(),
    freshUntil: window.freshUntil.toISOString(),
    validUntil: window.validUntil.toISOString(),
    relays: descriptors.map((d) => ({
      descriptor: structuredClone(d),
      flags: ['Running', 'Valid', ...(d.body.roles.includes('exit') ? (['Exit'] as const) : [])],
    })),
  };
  // Each descriptor must verify before an authority vouches for it.
  for (const r of body.relays) verifyDescriptor(r.descriptor);
  return body;
}

/** One authority's signature over a consensus body. */
export function signConsensus(key: SigningKey, body: ConsensusBody): { authority: string; signature: string } {
  return { authority: key.publicKeyBase64, signature: Buffer.from(key.sign(signedBytes(CONSENSUS_DOMAIN, body))).toString('base64') };
}

/** Puts the authorities' separate signatures together on one document. */
export function combine(body: ConsensusBody, signatures: readonly { authority: string; signature: string }[]): SignedConsensus {
  const seen = new Set<string>();
  const unique = signatures.filter((s) => (seen.has(s.authority) ? false : (seen.add(s.authority), true)));
  return { consensus: body, signatures: unique };
}

export interface TrustAnchor {
  /** The pinned authority public keys (base64 Ed25519). */
  authorities: readonly string[];
  threshold: number;
}

export interface VerifiedConsensus {
  serial: number;
  validAfter: Date;
  freshUntil: Date;
  validUntil: Date;
  relays: Relay[];
  /** SHA-256 of the canonical body: two documents with one serial must have one digest. */
  digest: string;
  document: SignedConsensus;
}

export function parseConsensus(text: string): SignedConsensus {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw new StrataError('ERR_DIR_MALFORMED', 'consensus is not JSON');
  }
  const r = signedConsensusSchema.safeParse(json);
  if (!r.success) {
    const i = r.error.issues[0]!;
    throw new StrataError('ERR_DIR_MALFORMED', `consensus: ${i.path.join('.') || 'top level'}: ${i.message}`);
  }
  return r.data;
}

function date(text: string, field: string): Date {
  const d = new Date(text);
  if (Number.isNaN(d.getTime())) throw new StrataError('ERR_DIR_MALFORMED', `consensus: ${field} is not a time`);
  return d;
}

/**
 * Verifies a consensus against the pinned authorities and threshold, at wall time `now`, and
 * (if given) the last accepted one. Each failure has its own stable code.
 */
export function verifyConsensus(doc: SignedConsensus, anchor: TrustAnchor, now: Date, last: VerifiedConsensus | null = null): VerifiedConsensus {
  const pinned = new Set(anchor.authorities);
  for (const a of pinned) {
    if (parsePublicKey(a) === null) throw new StrataError('ERR_DIR_CONFIG', 'a pinned authority key is not 32 bytes of base64');
  }
  if (!Number.isInteger(anchor.threshold) || anchor.threshold < 1 || anchor.threshold > pinned.size) {
    throw new StrataError('ERR_DIR_CONFIG', `threshold ${anchor.threshold} is not between 1 and the ${pinned.size} pinned authorities`);
  }
  const bytes = signedBytes(CONSENSUS_DOMAIN, doc.consensus);
  const valid = new Set<string>();
  for (const s of doc.signatures) {
    if (!pinned.has(s.authority)) throw new StrataError('ERR_DIR_UNKNOWN_SIGNER', 'consensus carries a signature by a key that is not a pinned authority');
    const key = parsePublicKey(s.authority)!;
    if (!verifySignature(key, bytes, Buffer.from(s.signature, 'base64'))) {
      throw new StrataError('ERR_DIR_BAD_SIGNATURE', 'a signature on the consensus does not verify (the document was altered or the signature is forged)');
    }
    valid.add(s.authority);
  }
  if (valid.size < anchor.threshold) {
    throw new StrataError('ERR_DIR_THRESHOLD', `consensus is signed by ${valid.size} pinned authorities; ${anchor.threshold} are required`);
  }
  const c = doc.consensus;
  const validAfter = date(c.validAfter, 'validAfter');
  const freshUntil = date(c.freshUntil, 'freshUntil');
  const validUntil = date(c.validUntil, 'validUntil');
  if (!(validAfter <= freshUntil && freshUntil <= validUntil)) throw new StrataError('ERR_DIR_MALFORMED', 'consensus validity times are out of order');
  if (now < validAfter) throw new StrataError('ERR_DIR_NOT_YET_VALID', `consensus is valid only after ${c.validAfter}`);
  if (now > validUntil) throw new StrataError('ERR_DIR_EXPIRED', `consensus expired at ${c.validUntil}`);
  const digest = createHash('sha256').update(bytes).digest('hex');
  if (last !== null) {
    if (c.serial < last.serial) throw new StrataError('ERR_DIR_ROLLBACK', `consensus serial ${c.serial} is older than the accepted ${last.serial}`);
    if (c.serial === last.serial && digest !== last.digest) {
      throw new StrataError('ERR_DIR_ROLLBACK', `consensus serial ${c.serial} was already accepted with different contents`);
    }
  }
  const relays = c.relays
    .filter((r) => r.flags.includes('Running') && r.flags.includes('Valid'))
    .map((r) => {
      const relay = verifyDescriptor(r.descriptor);
      // The authorities decide who may exit: the Exit flag, and not BadExit.
      const exitOk = r.flags.includes('Exit') && !r.flags.includes('BadExit');
      return exitOk ? relay : { ...relay, roles: relay.roles.filter((x) => x !== 'exit') };
    })
    .filter((r) => r.roles.length > 0);
  const names = new Set<string>();
  const keys = new Set<string>();
  for (const r of relays) {
    if (names.has(r.name)) throw new StrataError('ERR_DIR_MALFORMED', `consensus lists relay "${r.name}" twice`);
    if (keys.has(r.publicKey.toHex())) throw new StrataError('ERR_DIR_MALFORMED', `consensus lists relay "${r.name}" with another relay's WireGuard key`);
    names.add(r.name);
    keys.add(r.publicKey.toHex());
  }
  return { serial: c.serial, validAfter, freshUntil, validUntil, relays, digest, document: doc };
}
