/**
 * A directory configuration, for a client or a relay: the pinned authority keys, the
 * threshold, the mirrors to try in order, and how often to refresh.
 *
 *   { "authorities": ["<base64 Ed25519>", ...], "threshold": 2,
 *     "mirrors": ["http://mirror.example/consensus.json", "/media/usb/consensus.json"],
 *     "refreshSeconds": 300 }
 */
import { readFileSync } from 'node:fs';
import { z } from 'zod';
import { StrataError } from '../crypto/errors.ts';
import { DirectoryClient } from './client.ts';
import { parsePublicKey } from './ed25519.ts';

const schema = z.object({
  authorities: z.array(z.string()).min(1),
  threshold: z.number().int().min(1),
  mirrors: z.array(z.string()).min(1),
  refreshSeconds: z.number().positive().max(86_400).default(300),
});

export interface DirectoryConfig {
  client: DirectoryClient;
  refreshMs: number;
}

export function loadDirectoryConfig(path: string): DirectoryConfig {
  let json: unknown;
  try {
    json = JSON.parse(readFileSync(path, 'utf8'));
  } catch (e) {
    throw new StrataError('ERR_DIR_CONFIG', `cannot read directory configuration ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  const r = schema.safeParse(json);
  if (!r.success) {
    const i = r.error.issues[0]!;
    throw new StrataError('ERR_DIR_CONFIG', `directory configuration: ${i.path.join('.') || 'top level'}: ${i.message}`);
  }
  for (const a of r.data.authorities) {
    if (parsePublicKey(a) === null) throw new StrataError('ERR_DIR_CONFIG', 'directory configuration: an authority key is not 32 bytes of base64');
  }
  if (r.data.threshold > new Set(r.data.authorities).size) {
    throw new StrataError('ERR_DIR_CONFIG', 'directory configuration: the threshold is larger than the number of authorities');
  }
  return {
    client: new DirectoryClient({ authorities: r.data.authorities, threshold: r.data.threshold }, r.data.mirrors),
    refreshMs: r.data.refreshSeconds * 1000,
  };
}
