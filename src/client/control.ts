/**
 * The client daemon's control socket: one JSON request per line ({"op":"status"} or
 * {"op":"disconnect"}), one JSON reply per line. Errors carry a stable code.
 */
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { StrataError } from '../crypto/errors.ts';

export const DEFAULT_RUN_DIR = '/run/strata';

export function controlPath(runDir = DEFAULT_RUN_DIR): string {
  return path.join(runDir, 'client.sock');
}

export type Handler = (op: string) => Promise<unknown> | unknown;

export async function serveControl(socketPath: string, handle: Handler): Promise<net.Server> {
  fs.mkdirSync(path.dirname(socketPath), { recursive: true, mode: 0o755 });
  if (fs.existsSync(socketPath)) {
    if (await isLive(socketPath)) throw new StrataError('ERR_ALREADY_CONNECTED', 'a Strata connection is already up (strata disconnect first)');
    fs.rmSync(socketPath, { force: true });
  }
  const server = net.createServer((c) => {
    let buf = '';
    c.setEncoding('utf8');
    c.on('data', (d: string) => {
      buf += d;
      if (buf.length > 4096) return void c.destroy();
      const nl = buf.indexOf('\n');
      if (nl < 0) return;
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      let op = '';
      try {
        op = String((JSON.parse(line) as { op?: unknown }).op ?? '');
      } catch {
        c.end(JSON.stringify({ ok: false, code: 'ERR_CONTROL_REQUEST', message: 'not JSON' }) + '\n');
        return;
      }
      Promise.resolve()
        .then(() => handle(op))
        .then(
          (result) => c.end(JSON.stringify({ ok: true, result }) + '\n'),
          (e: unknown) =>
            c.end(JSON.stringify({ ok: false, code: e instanceof StrataError ? e.code : 'ERR_INTERNAL', message: (e as Error).message }) + '\n'),
        );
    });
    c.on('error', () => {});
  });
  const old = process.umask(0o077);
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(socketPath, () => resolve());
    });
  } finally {
    process.umask(old);
  }
  return server;
}

function isLive(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const c = net.connect(socketPath, () => {
      c.destroy();
      resolve(true);
    });
    c.on('error', () => resolve(false));
  });
}

/** Sends one request to the daemon. ERR_NOT_CONNECTED when none is running. */
export function request(socketPath: string, op: string, timeoutMs = 10_000): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const c = net.connect(socketPath);
    let buf = '';
    const timer = setTimeout(() => {
      c.destroy();
      reject(new StrataError('ERR_CONTROL_TIMEOUT', 'the Strata daemon did not answer'));
    }, timeoutMs);
    c.setEncoding('utf8');
    c.on('connect', () => c.write(JSON.stringify({ op }) + '\n'));
    c.on('data', (d: string) => (buf += d));
    c.on('end', () => {
      clearTimeout(timer);
      try {
        const r = JSON.parse(buf) as { ok: boolean; result?: unknown; code?: string; message?: string };
        if (r.ok) resolve(r.result);
        else reject(new StrataError(r.code ?? 'ERR_INTERNAL', r.message ?? 'error'));
      } catch {
        reject(new StrataError('ERR_CONTROL_REPLY', 'the Strata daemon sent a malformed reply'));
      }
    });
    c.on('error', (e: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      if (e.code === 'ENOENT' || e.code === 'ECONNREFUSED') reject(new StrataError('ERR_NOT_CONNECTED', 'no Strata connection is up'));
      else reject(new StrataError('ERR_CONTROL', `cannot reach the Strata daemon: ${e.code ?? e.message}`));
    });
  });
}
