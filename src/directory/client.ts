/**
 * The client's view of the directory: pinned authorities and threshold, a list of untrusted
 * mirrors (http(s) URLs or file paths, fetched only when asked), the last good consensus kept
 * while it is valid. A mirror that serves something that fails verification is skipped for
 * the next one; every failure is reported with its code.
 */
import { readFile } from 'node:fs/promises';
import { StrataError } from '../crypto/errors.ts';
import { parseConsensus, verifyConsensus, type TrustAnchor, type VerifiedConsensus } from './consensus.ts';

const MAX_CONSENSUS_BYTES = 16 << 20;

export interface MirrorFailure {
  mirror: string;
  code: string;
  message: string;
}

export interface RefreshResult {
  consensus: VerifiedConsensus;
  /** The mirror that served it, or null if the last good one was kept. */
  from: string | null;
  failures: MirrorFailure[];
}

export class DirectoryClient {
  readonly anchor: TrustAnchor;
  readonly mirrors: readonly string[];
  #current: VerifiedConsensus | null = null;
  readonly #fetchTimeoutMs: number;

  constructor(anchor: TrustAnchor, mirrors: readonly string[], options: { fetchTimeoutMs?: number } = {}) {
    if (mirrors.length === 0) throw new StrataError('ERR_DIR_CONFIG', 'no directory mirrors configured');
    this.anchor = anchor;
    this.mirrors = mirrors;
    this.#fetchTimeoutMs = options.fetchTimeoutMs ?? 5000;
  }

  get current(): VerifiedConsensus | null {
    return this.#current;
  }

  async #fetch(mirror: string): Promise<string> {
    if (/^https?:\/\//.test(mirror)) {
      const ctl = AbortSignal.timeout(this.#fetchTimeoutMs);
      let res: Response;
      try {
        res = await fetch(mirror, { signal: ctl, redirect: 'error' });
      } catch (e) {
        throw new StrataError('ERR_DIR_FETCH', `mirror unreachable: ${(e as Error).message}`);
      }
      if (!res.ok) throw new StrataError('ERR_DIR_FETCH', `mirror answered HTTP ${res.status}`);
      // Read at most 16 MiB: a hostile mirror cannot make the client buffer more.
      const chunks: Uint8Array[] = [];
      let size = 0;
      const reader = res.body?.getReader();
      if (reader === undefined) return '';
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        size += value.byteLength;
        if (size > MAX_CONSENSUS_BYTES) {
          await reader.cancel();
          throw new StrataError('ERR_DIR_FETCH', 'mirror sent more than 16 MiB');
        }
        chunks.push(value);
      }
      return Buffer.concat(chunks).toString('utf8');
    }
    try {
      return await readFile(mirror.startsWith('file://') ? new URL(mirror) : mirror, 'utf8');
    } catch (e) {
      throw new StrataError('ERR_DIR_FETCH', `cannot read mirror file: ${(e as NodeJS.ErrnoException).code ?? 'error'}`);
    }
  }

  /** Verifies a consensus text against the anchor and the last accepted one; adopts it. */
  accept(text: string, now = new Date()): VerifiedConsensus {
    const v = verifyConsensus(parseConsensus(text), this.anchor, now, this.#current);
    this.#current = v;
    return v;
  }

  /**
   * Tries each mirror in order until one serves a consensus that verifies. If none does, the
   * last good consensus is kept while still valid; otherwise the error lists every mirror's.
   */
  async refresh(now = new Date()): Promise<RefreshResult> {
    const failures: MirrorFailure[] = [];
    for (const mirror of this.mirrors) {
      try {
        const text = await this.#fetch(mirror);
        return { consensus: this.accept(text, now), from: mirror, failures };
      } catch (e) {
        const err = e instanceof StrataError ? e : new StrataError('ERR_DIR_FETCH', (e as Error).message);
        failures.push({ mirror, code: err.code, message: err.message });
      }
    }
    const cur = this.#current;
    if (cur !== null && now <= cur.validUntil) return { consensus: cur, from: null, failures };
    const detail = failures.map((f) => `${f.mirror}: ${f.code}`).join('; ');
    const code = failures.length > 0 && failures.every((f) => f.code === failures[0]!.code) ? failures[0]!.code : 'ERR_DIR_NO_VALID_CONSENSUS';
    throw new StrataError(code, `no mirror served a valid consensus (${detail})`);
  }
}
