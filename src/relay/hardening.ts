/**
 * What makes a relay have nothing worth seizing, applied before it touches a key:
 *   - no core dumps: RLIMIT_CORE 0 and the process marked not dumpable;
 *   - no swap: a relay refuses to start while swap is on (keys could be paged to disk),
 *     unless the operator explicitly allows it;
 *   - no disk writes: run under Node's permission model with no fs-write grant (checked here);
 *   - configuration from memory only: files must be on tmpfs/ramfs (or come from stdin/env).
 */
import { readFileSync, statfsSync } from 'node:fs';
import koffi from 'koffi';
import { StrataError } from '../crypto/errors.ts';

const PR_SET_DUMPABLE = 4;
const RLIMIT_CORE = 4;
const TMPFS_MAGIC = 0x01021994;
const RAMFS_MAGIC = 0x858458f6;

/** Active swap areas listed in /proc/swaps content (after its header line). */
export function activeSwaps(procSwaps: string): string[] {
  return procSwaps
    .split('\n')
    .slice(1)
    .map((l) => l.trim())
    .filter((l) => l !== '')
    .map((l) => l.split(/\s+/)[0]!);
}

/** Where swap is read from: /proc/swaps, or a test-only override (STRATA_TEST_MODE=1). */
function swapsText(): string {
  const override = process.env.STRATA_TEST_SWAPS_FILE;
  if (override !== undefined) {
    if (process.env.STRATA_TEST_MODE !== '1') throw new StrataError('ERR_TEST_ONLY', 'STRATA_TEST_SWAPS_FILE is for tests only (STRATA_TEST_MODE=1)');
    return readFileSync(override, 'utf8');
  }
  return readFileSync('/proc/swaps', 'utf8');
}

export function refuseSwap(allowSwap: boolean): void {
  const swaps = activeSwaps(swapsText());
  if (swaps.length > 0 && !allowSwap) {
    throw new StrataError(
      'ERR_SWAP_ENABLED',
      `swap is on (${swaps.length} area${swaps.length === 1 ? '' : 's'}): keys could be written to disk. Turn swap off (swapoff -a), or pass --allow-swap to accept the risk`,
    );
  }
}

export function disableCoreDumps(): void {
  const lib = koffi.load('libc.so.6');
  const rlimit = koffi.struct('strata_rlimit', { cur: 'uint64', max: 'uint64' });
  const setrlimit = lib.func('int setrlimit(int resource, const strata_rlimit *rlim)');
  const prctl = lib.func('int prctl(int option, unsigned long a2, unsigned long a3, unsigned long a4, unsigned long a5)');
  if (setrlimit(RLIMIT_CORE, { cur: 0, max: 0 }) !== 0) throw new StrataError('ERR_HARDENING', 'cannot set RLIMIT_CORE to 0');
  if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) !== 0) throw new StrataError('ERR_HARDENING', 'cannot mark the process not dumpable');
}

/** True when this process runs under the permission model with no fs-write grant at all. */
export function diskWritesForbidden(): boolean {
  const p = (process as unknown as { permission?: { has(scope: string, reference?: string): boolean } }).permission;
  return p !== undefined && !p.has('fs.write');
}

/** Refuses configuration files that live on disk: only tmpfs or ramfs (memory) will do. */
export function requireMemoryFile(path: string, what: string): void {
  let type: number;
  try {
    type = statfsSync(path).type;
  } catch (e) {
    throw new StrataError('ERR_CONFIG_READ', `cannot read ${what}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`);
  }
  if (type !== TMPFS_MAGIC && type !== RAMFS_MAGIC) {
    throw new StrataError('ERR_CONFIG_ON_DISK', `${what} must be on tmpfs or ramfs (e.g. /dev/shm or /run), or come from stdin: a relay reads nothing from disk`);
  }
}

export interface HardeningOptions {
  allowSwap: boolean;
  /** Refuse to run without the permission model's fs-write ban (default true). */
  requireNoWrites: boolean;
}

export function harden(o: HardeningOptions): void {
  disableCoreDumps();
  refuseSwap(o.allowSwap);
  if (o.requireNoWrites && !diskWritesForbidden()) {
    throw new StrataError('ERR_HARDENING', 'the relay must run under the permission model with no fs-write grant (bin/strata relay does this)');
  }
}
