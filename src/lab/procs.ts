/** Starting Strata's own programs inside a lab's namespaces. */
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { PrivateKey } from '../crypto/keys.ts';
import type { Lab } from './lab.ts';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

export function strataBin(): string {
  return path.join(root, 'bin', 'strata');
}

export function strataWgBin(): string {
  return path.join(root, 'bin', 'strata-wg');
}

/** Starts `strata relay` in a namespace (key through the environment) and waits until ready. */
export async function startRelay(lab: Lab, ns: string, relayList: string, key: PrivateKey, exit: boolean, port = 51820): Promise<number> {
  const args = ['relay', '--relays', relayList, '--listen-port', String(port)];
  if (exit) args.push('--exit');
  const child = lab.spawn(ns, strataBin(), args, { ...process.env, STRATA_PRIVATE_KEY: key.toBase64() });
  return new Promise<number>((resolve, reject) => {
    let out = '';
    let err = '';
    const timer = setTimeout(() => reject(new Error(`relay in ${ns} did not start: ${err.trim()}`)), 15_000);
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('relay ready')) {
        clearTimeout(timer);
        resolve(child.pid!);
      }
    });
    child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`relay in ${ns} exited (${code}): ${err.trim()}`));
    });
  });
}

/**
 * Starts `strata relay init ARGS` in a namespace (keys made in memory there) and waits until it
 * is ready; returns the signed descriptor it printed on its first stdout line.
 */
export async function startRelayInit(lab: Lab, ns: string, args: readonly string[]): Promise<{ descriptor: string; pid: number }> {
  const child = lab.spawn(ns, strataBin(), ['relay', 'init', ...args]);
  return new Promise((resolve, reject) => {
    let out = '';
    let err = '';
    const timer = setTimeout(() => reject(new Error(`relay init in ${ns} did not start: ${err.trim()}`)), 15_000);
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('\nrelay ready')) {
        clearTimeout(timer);
        resolve({ descriptor: out.slice(0, out.indexOf('\n')), pid: child.pid! });
      }
    });
    child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`relay init in ${ns} exited (${code}): ${err.trim()}`));
    });
  });
}
