/**
 * strata-wg [-f/--foreground] INTERFACE-NAME — wireguard-go's contract: create the TUN
 * interface, serve UAPI on /var/run/wireguard/INTERFACE-NAME.sock, and detach unless -f or
 * WG_PROCESS_FOREGROUND=1. Exits cleanly on SIGINT/SIGTERM, when the interface is deleted, or
 * when the socket is removed. The interface may be moved to another network namespace; the
 * UDP sockets and the UAPI socket stay where the daemon started.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { Device } from '../device/device.ts';
import { UapiServer } from '../device/uapi.ts';
import { createBind, createTun } from '../io/index.ts';
import type { Tun } from '../io/types.ts';
import { sys } from '../io/libc.ts';

const VERSION = '0.1.0';
const USAGE = 'Usage: strata-wg [-f/--foreground] INTERFACE-NAME';

function fail(message: string, code = 1): never {
  process.stderr.write(`strata-wg: ${message}\n`);
  process.exit(code);
}

const args = process.argv.slice(2);
if (args.length === 1 && (args[0] === '--version' || args[0] === '-v')) {
  process.stdout.write(`strata-wg v${VERSION}\n\nUserspace WireGuard daemon for Linux (Strata).\n`);
  process.exit(0);
}
let foreground = process.env.WG_PROCESS_FOREGROUND === '1';
let ifname: string | undefined;
for (const a of args) {
  if (a === '-f' || a === '--foreground') foreground = true;
  else if (ifname === undefined && !a.startsWith('-')) ifname = a;
  else fail(USAGE);
}
if (ifname === undefined) fail(USAGE);
const verbose = process.env.LOG_LEVEL === 'verbose' || process.env.LOG_LEVEL === 'debug';
const log = (msg: string): void => {
  if (verbose) process.stderr.write(`INFO: (${ifname}) ${msg}\n`);
};

if (!foreground) {
  // Detach: run ourselves in the foreground in a new session and wait for it to say it is up.
  const child = spawn(process.execPath, [...process.execArgv, process.argv[1]!, ifname], {
    detached: true,
    stdio: ['ignore', 'ignore', 'pipe', 'pipe'],
    env: { ...process.env, WG_PROCESS_FOREGROUND: '1', STRATA_WG_READY_FD: '3' },
  });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const ready = child.stdio[3] as NodeJS.ReadableStream;
  let ok = false;
  ready.on('data', () => {
    ok = true;
    child.unref();
    child.stderr!.destroy();
    (ready as unknown as { destroy(): void }).destroy();
    process.exit(0);
  });
  child.on('exit', (code) => {
    if (!ok) fail(stderr.trim().replace(/^strata-wg: /, '') || `daemon exited with code ${code}`);
  });
} else {
  await run(ifname);
}

async function run(name: string): Promise<void> {
  let tun: Tun;
  try {
    tun = createTun(name, 1420);
  } catch (e) {
    fail(`failed to create TUN device: ${(e as Error).message}`);
  }
  const socketPath = UapiServer.socketPath(tun.name);
  let uapi: UapiServer | null = null;
  let stopping = false;
  const stop = (why: string): void => {
    if (stopping) return;
    stopping = true;
    log(`shutting down: ${why}`);
    uapi?.close();
    device.close();
    // A pure-path TUN read may be blocked on a thread-pool thread, which process.exit would
    // wait for: everything is closed, so leave at once.
    sys().exit(0);
  };
  const device = new Device({ tun, bind: createBind(), onTunClosed: () => stop('interface removed') });
  try {
    uapi = await UapiServer.listen(device, socketPath);
  } catch (e) {
    tun.close();
    fail(`failed to listen on UAPI socket: ${(e as Error).message}`);
  }
  try {
    await device.up(0);
  } catch (e) {
    uapi.close();
    tun.close();
    fail(`failed to bind UDP: ${(e as Error).message}`);
  }
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGTERM', () => stop('SIGTERM'));
  // Stop when our socket is removed (wireguard-go watches it with inotify).
  const dir = path.dirname(socketPath);
  const base = path.basename(socketPath);
  const check = (): void => {
    if (!fs.existsSync(socketPath)) stop('UAPI socket removed');
  };
  try {
    fs.watch(dir, (_event, file) => {
      if (file === null || file === base) check();
    });
  } catch {
    // fall back to the periodic check alone
  }
  setInterval(check, 1000);
  log('device started');
  const readyFd = process.env.STRATA_WG_READY_FD;
  if (readyFd !== undefined) {
    delete process.env.STRATA_WG_READY_FD;
    const fd = Number(readyFd);
    fs.writeSync(fd, 'ready\n');
    fs.closeSync(fd);
    // Detached: leave the parent's stderr so its exit does not take ours with it.
    process.stderr.write = () => true;
  }
}
