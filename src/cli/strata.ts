/**
 * strata — the command: connect, status, disconnect, relay, keygen, demo. Thin: it parses
 * options and calls the client, relay and lab layers. Errors print as
 * "strata: message (CODE)" and exit 1; CODE is stable.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import { Command, Option } from 'commander';
import { StrataError } from '../crypto/errors.ts';
import { PrivateKey, PublicKey } from '../crypto/keys.ts';
import { loadRelayList, pickPath } from '../cascade/relaylist.ts';
import { choosePath } from '../cascade/path.ts';
import { ClientDaemon, cleanUpLeftovers, type ClientStatus } from '../client/daemon.ts';
import { parseLanRanges } from '../client/killswitch.ts';
import { parseIP } from '../wireguard/ip.ts';
import { controlPath, DEFAULT_RUN_DIR, request, serveControl } from '../client/control.ts';
import { RelayDaemon } from '../relay/daemon.ts';
import { sys } from '../io/libc.ts';
import { registerDir } from './dir.ts';
import { relayRegistry, serveMetrics } from '../relay/metrics.ts';
import { requireMemoryFile } from '../relay/hardening.ts';
import { loadDirectoryConfig, type DirectoryConfig } from '../directory/config.ts';
import { signDescriptor } from '../directory/descriptor.ts';
import { SigningKey } from '../directory/ed25519.ts';
import type { Relay } from '../cascade/relaylist.ts';

function fail(e: unknown): never {
  if (e instanceof StrataError) process.stderr.write(`strata: ${e.message} (${e.code})\n`);
  else process.stderr.write(`strata: ${(e as Error).message ?? String(e)} (ERR_INTERNAL)\n`);
  process.exit(1);
}

function formatStatus(s: ClientStatus): string {
  const lines = [
    `interface ${s.interface}  mtu ${s.mtu}  addresses ${s.addresses.join(', ')}`,
    `kill switch ${s.killSwitch ? 'on' : 'OFF'}  dns ${s.dns === null ? 'unchanged' : `${s.dns.resolver} (${s.dns.mode})`}`,
  ];
  for (const h of s.hops) {
    const age = h.handshakeAgeSeconds === null ? 'no handshake' : `handshake ${h.handshakeAgeSeconds} s ago`;
    lines.push(
      `  hop ${h.hop}  ${h.name.padEnd(12)} ${h.country}  ${h.endpoint.padEnd(22)} ${h.up ? 'up  ' : 'down'}  ${age.padEnd(20)} rx ${h.rxBytes} B  tx ${h.txBytes} B`,
    );
  }
  return lines.join('\n');
}

async function readKey(fromStdin: boolean): Promise<PrivateKey> {
  const env = process.env.STRATA_PRIVATE_KEY;
  if (!fromStdin && env !== undefined) {
    delete process.env.STRATA_PRIVATE_KEY;
    return PrivateKey.parse(env);
  }
  if (!fromStdin) throw new StrataError('ERR_KEY_MISSING', 'give the relay key in STRATA_PRIVATE_KEY or on standard input (--key-stdin)');
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  const text = Buffer.concat(chunks).toString('utf8');
  for (const c of chunks) c.fill(0);
  return PrivateKey.parse(text);
}

async function guarded(f: () => Promise<void> | void): Promise<void> {
  try {
    await f();
  } catch (e) {
    fail(e);
  }
}

const program = new Command('strata')
  .description('Strata: a multi-hop WireGuard VPN')
  .showHelpAfterError()
  // With relayCommand's own: lets `relay init` have options `relay` also has (see below).
  .enablePositionalOptions()
  .exitOverride((err) => {
    // commander's own usage errors: keep its message, exit 2.
    process.exit(err.exitCode === 0 ? 0 : 2);
  });

program
  .command('connect')
  .description('build a cascade through 1 to 5 relays and route traffic through it')
  .option('--relays <file>', 'relay list (JSON)')
  .option('--directory <file>', 'directory configuration: pinned authorities, threshold, mirrors')
  .option('--path <names>', 'comma-separated relay names, entry first')
  .option('--exit-country <cc>', 'the exit must be in this country')
  .option('--no-kill-switch', 'do not install the kill switch (for comparison runs only)')
  .option('--dns <ip>', 'resolver reached through the tunnel; other DNS is refused')
  .option('--socks5 <host:port>', 'rootless mode: no TUN here, a SOCKS5 proxy on loopback (foreground; nothing needs root)')
  .option('--http-proxy <host:port>', 'rootless mode: an HTTP CONNECT proxy on loopback')
  .option('--allow-lan <ranges>', 'comma-separated LAN prefixes reachable outside the tunnel')
  .option('--failover-silence <ms>', 'silence at the exit, while sending, before hops are probed', '1000')
  .option('--hops <n>', 'number of hops when no --path is given', '3')
  .option('--ifname <name>', 'tunnel interface name', 'strata0')
  .option('--hop-timeout <seconds>', 'time each hop has to answer its handshake', '5')
  .option('--route <prefix...>', 'route only these prefixes (default: everything)')
  .option('--hop-key <name=file...>', 'for a stock WireGuard hop: the private key file it knows')
  .option('--run-dir <dir>', 'where the control socket lives', DEFAULT_RUN_DIR)
  .option('-f, --foreground', 'stay in the foreground')
  .action(async (o: {
    relays?: string;
    directory?: string;
    path?: string;
    hops: string;
    exitCountry?: string;
    killSwitch: boolean;
    dns?: string;
    allowLan?: string;
    socks5?: string;
    httpProxy?: string;
    failoverSilence: string;
    ifname: string;
    hopTimeout: string;
    route?: string[];
    hopKey?: string[];
    runDir: string;
    foreground?: boolean;
  }) => {
    try {
      if ((o.relays === undefined) === (o.directory === undefined)) throw new StrataError('ERR_OPTION', 'give either --relays FILE or --directory FILE');
      let dir: DirectoryConfig | null = null;
      let relays: Relay[];
      if (o.directory !== undefined) {
        dir = loadDirectoryConfig(o.directory);
        relays = (await dir.client.refresh()).consensus.relays;
      } else relays = loadRelayList(o.relays!);
      const constraints = o.exitCountry !== undefined ? { exitCountry: o.exitCountry.toUpperCase() } : {};
      const path = o.path !== undefined ? pickPath(relays, o.path.split(',').map((s) => s.trim())) : choosePath(relays, Number(o.hops), constraints);
      const allowLan = o.allowLan !== undefined ? parseLanRanges(o.allowLan.split(',').filter((r) => r.trim() !== '')) : [];
      if (o.dns !== undefined && parseIP(o.dns) === null) throw new StrataError('ERR_DNS', `--dns ${o.dns}: not an IP address`);
      const silenceMs = Number(o.failoverSilence);
      if (!(silenceMs >= 100 && silenceMs <= 60_000)) throw new StrataError('ERR_OPTION', '--failover-silence must be 100 to 60000 ms');
      const hopTimeout = Number(o.hopTimeout);
      if (!(hopTimeout > 0 && hopTimeout <= 120)) throw new StrataError('ERR_OPTION', '--hop-timeout must be 1 to 120 seconds');
      if (o.socks5 !== undefined || o.httpProxy !== undefined) {
        await runRootless(path, o.socks5, o.httpProxy, o.dns, hopTimeout);
        return;
      }
      const sock = controlPath(o.runDir);
      if (!o.foreground && process.env.STRATA_READY_FD === undefined) {
        await detach(path.map((r) => r.name).join(','), sock);
        return;
      }
      // Refuse a second connection before touching anything.
      const server = await serveControl(sock, () => null);
      server.close();
      const hopKeys = new Map<number, PrivateKey>();
      for (const spec of o.hopKey ?? []) {
        const eq = spec.indexOf('=');
        const name = spec.slice(0, eq);
        const index = path.findIndex((r) => r.name === name);
        if (eq < 1 || index < 0) throw new StrataError('ERR_OPTION', `--hop-key ${spec}: "${name}" is not a hop of this path`);
        let text: string;
        try {
          text = fs.readFileSync(spec.slice(eq + 1), 'utf8');
        } catch (e) {
          throw new StrataError('ERR_OPTION', `--hop-key ${name}: cannot read the key file (${(e as NodeJS.ErrnoException).code ?? 'error'})`);
        }
        hopKeys.set(index, PrivateKey.parse(text));
      }
      const daemon = await ClientDaemon.connect({
        path,
        relays,
        ifname: o.ifname,
        hopTimeout,
        routes: o.route ?? null,
        hopKeys,
        killSwitch: o.killSwitch,
        dns: o.dns ?? null,
        allowLan,
        failover: { silenceMs },
        constraints,
      });
      for (const k of hopKeys.values()) k.wipe();
      if (dir !== null) {
        const d = dir;
        daemon.directorySerial = d.client.current?.serial ?? null;
        // Refresh from the mirrors; keep the last good consensus when none answers.
        setInterval(() => {
          d.client.refresh().then(
            (r) => {
              daemon.relays = r.consensus.relays;
              daemon.directorySerial = r.consensus.serial;
            },
            () => {},
          );
        }, d.refreshMs).unref();
      }
      // Teardown (kill switch, routes, resolver) completes before the socket goes and before
      // `disconnect` gets its answer: whoever sees either can rely on the host being restored.
      let tornDown = false;
      const tearDown = (): void => {
        if (tornDown) return;
        tornDown = true;
        daemon.close();
        fs.rmSync(sock, { force: true });
      };
      const control = await serveControl(sock, async (op) => {
        if (op === 'status') return daemon.status();
        if (op === 'disconnect') {
          tearDown();
          // Exit once the answer has gone out (the server closes when its last client has).
          control.close(() => sys().exit(0));
          setTimeout(() => sys().exit(0), 2000);
          return { disconnected: true };
        }
        throw new StrataError('ERR_CONTROL_OP', `unknown operation "${op}"`);
      });
      const stop = (): void => {
        tearDown();
        control.close();
        sys().exit(0);
      };
      process.on('SIGTERM', stop);
      process.on('SIGINT', stop);
      signalReady({ ok: true });
      if (o.foreground) process.stdout.write(formatStatus(daemon.status()) + '\n');
    } catch (e) {
      if (process.env.STRATA_READY_FD !== undefined) {
        signalReady({ ok: false, code: e instanceof StrataError ? e.code : 'ERR_INTERNAL', message: (e as Error).message });
        process.exit(1);
      }
      fail(e);
    }
  });

/** "127.0.0.1:1080" or "[::1]:1080". */
function hostPort(text: string, option: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(text);
  const port = m ? Number(m[3]) : NaN;
  if (m === null || !(port >= 1 && port <= 65535)) throw new StrataError('ERR_OPTION', `${option} ${text}: give HOST:PORT (e.g. 127.0.0.1:1080)`);
  return { host: (m[1] ?? m[2])!, port };
}

/** Rootless mode: the cascade in an unprivileged user+network namespace behind local proxies. */
async function runRootless(path: Relay[], socks5: string | undefined, http: string | undefined, dns: string | undefined, hopTimeout: number): Promise<void> {
  const { connectRootless } = await import('../client/rootless.ts');
  const conn = await connectRootless({
    path,
    ...(socks5 !== undefined ? { socks5: hostPort(socks5, '--socks5') } : {}),
    ...(http !== undefined ? { httpProxy: hostPort(http, '--http-proxy') } : {}),
    ...(dns !== undefined ? { dns } : {}),
    hopTimeout,
    onLog: (l) => process.stderr.write(l + '\n'),
  });
  const s = await conn.status();
  process.stdout.write(
    `connected through ${s.hops.map((h) => h.name).join(',')} (rootless)` +
      (s.socks5 ? `; SOCKS5 on ${socks5}` : '') +
      (s.httpProxy ? `; HTTP CONNECT on ${http}` : '') +
      '\n',
  );
  process.on('SIGINT', () => void conn.close());
  process.on('SIGTERM', () => void conn.close());
  process.exitCode = (await conn.closed) === 0 ? 0 : 1;
}

function signalReady(msg: object): void {
  const fd = process.env.STRATA_READY_FD;
  if (fd === undefined) return;
  delete process.env.STRATA_READY_FD;
  fs.writeSync(Number(fd), JSON.stringify(msg) + '\n');
  fs.closeSync(Number(fd));
}

/** Runs `connect` again in the foreground, detached, and returns once it is up or failed. */
async function detach(pathNames: string, sock: string): Promise<void> {
  const args = process.argv.slice(1);
  const child = spawn(process.execPath, [...process.execArgv, ...args], {
    detached: true,
    stdio: ['ignore', 'ignore', 'ignore', 'pipe'],
    env: { ...process.env, STRATA_READY_FD: '3' },
  });
  const pipe = child.stdio[3] as NodeJS.ReadableStream;
  let buf = '';
  pipe.setEncoding('utf8');
  pipe.on('data', (d: string) => (buf += d));
  const code = await new Promise<number | null>((resolve) => {
    pipe.on('end', () => resolve(null));
    child.on('exit', (c) => resolve(c));
  });
  let msg: { ok: boolean; code?: string; message?: string };
  try {
    msg = JSON.parse(buf) as typeof msg;
  } catch {
    throw new StrataError('ERR_DAEMON', `the connection daemon exited (${code ?? 'no status'}) without a word`);
  }
  if (!msg.ok) throw new StrataError(msg.code ?? 'ERR_INTERNAL', msg.message ?? 'failed');
  child.unref();
  const status = (await request(sock, 'status')) as ClientStatus;
  process.stdout.write(`connected through ${pathNames}\n${formatStatus(status)}\n`);
  process.exit(0);
}

program
  .command('status')
  .description('show the cascade: each hop, its handshake age and bytes')
  .option('--json', 'machine-readable output')
  .option('--run-dir <dir>', 'where the control socket lives', DEFAULT_RUN_DIR)
  .action(async (o: { json?: boolean; runDir: string }) => {
    try {
      const s = (await request(controlPath(o.runDir), 'status')) as ClientStatus;
      process.stdout.write((o.json ? JSON.stringify(s, null, 2) : formatStatus(s)) + '\n');
    } catch (e) {
      fail(e);
    }
  });

program
  .command('disconnect')
  .description('tear the cascade down and restore routes')
  .option('--run-dir <dir>', 'where the control socket lives', DEFAULT_RUN_DIR)
  .action(async (o: { runDir: string }) => {
    try {
      const sock = controlPath(o.runDir);
      try {
        await request(sock, 'disconnect');
      } catch (e) {
        // No daemon: if one died and left its kill switch, routes or resolver behind, clean up.
        if (e instanceof StrataError && e.code === 'ERR_NOT_CONNECTED' && cleanUpLeftovers()) {
          process.stdout.write('no connection was up; removed the kill switch, routes and resolver settings a stopped daemon had left\n');
          return;
        }
        throw e;
      }
      // The daemon answers only after it has removed its kill switch, routes, resolver settings
      // and socket; a socket still there means something else holds the path.
      if (fs.existsSync(sock)) throw new StrataError('ERR_DISCONNECT', `the daemon answered but ${sock} is still there`);
      process.stdout.write('disconnected\n');
    } catch (e) {
      fail(e);
    }
  });

interface RelayRunOptions {
  relays?: string;
  directory?: string;
  listenPort: string;
  exit?: boolean;
  keyStdin?: boolean;
  allow?: string;
  maxClients: string;
  allowSwap?: boolean;
  metrics?: string;
  testTimeScale?: string;
}

/** The relay options both `relay` and `relay init` take. */
function relayRunOptions(c: Command): Command {
  return c
    .option('--listen-port <port>', 'UDP port', '51820')
    .option('--exit', 'also act as an exit (TUN, forwarding and masquerade in this host or namespace)')
    .option('--max-clients <n>', 'most clients at once', '1024')
    .option('--allow-swap', 'start even with swap on (keys could then reach the disk)')
    .option('--metrics <port>', 'serve aggregate Prometheus metrics on 127.0.0.1:PORT')
    .option('--test-time-scale <n>', 'tests only (STRATA_TEST_MODE=1): run the clock N times faster');
}

/**
 * Test mode only: on SIGUSR2, stream a heap snapshot to stdout (framed), so a seizure drill can
 * take one from a relay that may not write to disk.
 */
function heapSnapshotOnSignal(): void {
  if (process.env.STRATA_TEST_MODE !== '1') return;
  process.on('SIGUSR2', () => {
    void (async () => {
      const { getHeapSnapshot } = await import('node:v8');
      const chunks: string[] = [];
      for await (const c of getHeapSnapshot()) chunks.push(String(c));
      const text = chunks.join('');
      process.stdout.write(`HEAPSNAPSHOT ${Buffer.byteLength(text)}\n${text}\n`);
    })();
  });
}

/** Runs a relay with the keys given; returns once it is listening. */
async function runRelay(o: RelayRunOptions, key: PrivateKey): Promise<void> {
  if ((o.relays === undefined) === (o.directory === undefined)) throw new StrataError('ERR_OPTION', 'give either --relays FILE or --directory FILE');
  // Configuration from memory only: files on tmpfs or ramfs (keys come from stdin or the environment).
  if (o.relays !== undefined) requireMemoryFile(o.relays, 'the relay list');
  if (o.directory !== undefined) requireMemoryFile(o.directory, 'the directory configuration');
  if (o.allow !== undefined) requireMemoryFile(o.allow, 'the allow-list');
  const port = Number(o.listenPort);
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new StrataError('ERR_OPTION', '--listen-port must be 0 to 65535');
  let dir: DirectoryConfig | null = null;
  let relays: Relay[] = [];
  if (o.directory !== undefined) {
    dir = loadDirectoryConfig(o.directory);
    // A relay not yet in any consensus may still start: it forwards to nobody until one lists relays.
    try {
      relays = (await dir.client.refresh()).consensus.relays;
    } catch {
      relays = [];
    }
  } else relays = loadRelayList(o.relays!);
  let allow: PublicKey[] | null = null;
  if (o.allow !== undefined) {
    allow = fs
      .readFileSync(o.allow, 'utf8')
      .split('\n')
      .map((l) => l.trim())
      .filter((l) => l !== '' && !l.startsWith('#'))
      .map((l) => PublicKey.parse(l));
  }
  const scale = o.testTimeScale !== undefined ? Number(o.testTimeScale) : 1;
  const daemon = await RelayDaemon.start({
    privateKey: key,
    relays,
    listenPort: port,
    exit: o.exit === true,
    allow,
    maxClients: Number(o.maxClients),
    timeScale: scale,
    harden: { allowSwap: o.allowSwap === true, requireNoWrites: process.env.STRATA_RELAY_UNCONFINED !== '1' },
  });
  key.wipe();
  if (o.metrics !== undefined) await serveMetrics(relayRegistry(daemon.node), Number(o.metrics));
  heapSnapshotOnSignal();
  if (dir !== null) {
    const d = dir;
    setInterval(() => {
      d.client.refresh().then(
        (r) => daemon.node.setRelays(r.consensus.relays),
        () => {},
      );
    }, d.refreshMs).unref();
  }
  process.stdout.write(`relay ready (${o.exit ? 'exit' : 'forwarding'})\n`);
  const stop = (): void => {
    daemon.stop();
    sys().exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

const relayCommand = program
  .command('relay')
  .description('run a relay (foreground); the key comes from STRATA_PRIVATE_KEY or stdin, never a file')
  // `relay init` repeats --relays, --directory, --listen-port, --exit, --max-clients: without
  // this (here and on the program), `relay` itself takes them from after `init` and `init`
  // never sees them ("give either --relays FILE or --directory FILE").
  .enablePositionalOptions()
  .option('--relays <file>', 'relay list: the relays this one may forward to')
  .option('--directory <file>', 'directory configuration: forward to the relays of the current consensus')
  .option('--key-stdin', 'read the private key from standard input')
  .option('--allow <file>', 'allow-list mode: only the client public keys in this file (one per line)');
relayRunOptions(relayCommand).action((o: RelayRunOptions) => guarded(async () => runRelay(o, await readKey(o.keyStdin === true))));

const relayInit = relayCommand
  .command('init')
  .description('on a fresh host: make keys in memory, print the signed descriptor for the authorities, and run')
  .requiredOption('--name <name>', 'relay name')
  .requiredOption('--country <cc>', 'two-letter country code')
  .requiredOption('--provider <p>', 'hosting provider or AS')
  .requiredOption('--family <f>', 'operator family')
  .requiredOption('--endpoint <addr:port...>', 'public endpoint(s)')
  .option('--roles <roles>', 'comma-separated: entry,middle,exit', 'entry,middle')
  .option('--capacity <n>', 'relative capacity', '1')
  .option('--relays <file>', 'relay list: the relays this one may forward to')
  .option('--directory <file>', 'directory configuration');
relayRunOptions(relayInit).action(
    (o: RelayRunOptions & { name: string; country: string; provider: string; family: string; endpoint: string[]; roles: string; capacity: string }) =>
      guarded(async () => {
        const identity = SigningKey.generate();
        const key = PrivateKey.generate();
        const roles = o.roles.split(',').map((r) => r.trim());
        if (!roles.every((r) => r === 'entry' || r === 'middle' || r === 'exit')) throw new StrataError('ERR_OPTION', '--roles takes entry, middle, exit');
        if (roles.includes('exit')) o.exit = true;
        const descriptor = signDescriptor(identity, {
          name: o.name,
          wireguardKey: key.publicKey(),
          endpoints: o.endpoint,
          roles: roles as ('entry' | 'middle' | 'exit')[],
          country: o.country.toUpperCase(),
          provider: o.provider,
          family: o.family,
          capacity: Number(o.capacity),
        });
        process.stdout.write(JSON.stringify(descriptor) + '\n');
        await runRelay(o, key);
      }),
  );

program
  .command('keygen')
  .description('print a new private key (base64) and, on stderr, its public key')
  .action(() => {
    const k = PrivateKey.generate();
    process.stdout.write(k.toBase64() + '\n');
    process.stderr.write(`public key: ${k.publicKey().toBase64()}\n`);
    k.wipe();
  });

program
  .command('demo')
  .description('a whole cascade on this machine: client, 3 relays and a web server, each in its own network namespace')
  .addOption(new Option('--hops <n>', 'relays in the cascade').default('3'))
  .action(async (o: { hops: string }) => {
    try {
      const { runDemo } = await import('../lab/demo.ts');
      process.exitCode = await runDemo(Number(o.hops));
    } catch (e) {
      fail(e);
    }
  });

program
  .command('drill')
  .description('the seizure drill: run a 3-hop cascade with canaries, seize every relay before and after key expiry, report what it held')
  .option('--time-scale <n>', 'relay clock speed-up for the 540 s expiry (test mode)', '100')
  .action((o: { timeScale: string }) =>
    guarded(async () => {
      const { runDrill, formatSeizures } = await import('../lab/drill.ts');
      process.env.STRATA_TEST_MODE = '1';
      const report = await runDrill({ timeScale: Number(o.timeScale), say: (l) => process.stdout.write(l + '\n') });
      process.stdout.write(formatSeizures('seized while the client was connected:', report.before) + '\n');
      process.stdout.write(formatSeizures(`seized after the keys expired (${report.expirySeconds.toFixed(1)} s):`, report.after) + '\n');
      const leaked = report.after.some((s) => s.findings.length > 0 || s.diskBytesWritten !== 0 || s.filesWritten.length > 0);
      const wrote = report.before.some((s) => s.diskBytesWritten !== 0 || s.filesWritten.length > 0);
      process.stdout.write(leaked || wrote ? 'DRILL FAILED: a seizure after expiry found something\n' : 'drill passed: nothing left to seize after expiry, nothing written to disk\n');
      process.exitCode = leaked || wrote ? 1 : 0;
    }),
  );

registerDir(program, guarded);

await program.parseAsync(process.argv);
