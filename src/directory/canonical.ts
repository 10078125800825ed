/**
 * Canonical JSON: object keys sorted, no whitespace, so that what is signed is one exact byte
 * string whatever produced the document. Only JSON values (no undefined, no non-finite numbers).
 */
export function canonicalJson(v: unknown): string {
  if (v === null || typeof v === 'boolean' || typeof v === 'string') return JSON.stringify(v);
  if (typeof v === 'number') {
    if (!Number.isFinite(v)) throw new TypeError('non-finite number in a signed document');
    return JSON.stringify(v);
  }
  if (Array.isArray(v)) return `[${v.map(canonicalJson).join(',')}]`;
  if (typeof v === 'object') {
    const o = v as Record<string, unknown>;
    const keys = Object.keys(o)
      .filter((k) => o[k] !== undefined)
      .sort();
    return `{${keys.map((k) => `${JSON.stringify(k)}:${canonicalJson(o[k])}`).join(',')}}`;
  }
  throw new TypeError(`cannot sign a ${typeof v}`);
}

/** The bytes a signature covers: a domain label, a newline, the canonical body. */
export function signedBytes(domain: string, body: unknown): Uint8Array {
  return new TextEncoder().encode(`${domain}\n${canonicalJson(body)}`);
}
