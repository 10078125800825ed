/**
 * Rootless client (src/client/rootless.ts): the cascade served through SOCKS5 / HTTP CONNECT by
 * an unprivileged user, the engine in its own user + network namespace.
 *
 *   a. Protocol (loopback only, no privileges): the SOCKS5 server's CONNECT with IPv4 / hostname,
 *      and its replies to a bad method list (0xFF), an unsupported command (0x07), an unknown
 *      address type (0x08), a refused connection (0x05); the HTTP CONNECT proxy's 200 / 405 / 400 /
 *      502. connectRootless's input checks, and ERR_PORT_IN_USE when the port is taken.
 *   b. Lab (needs root for the lab only): client, r1, r2, r3 and web namespaces; relays started
 *      with `strata relay`. In the client namespace, as uid 65534 (setpriv), a helper calls
 *      connectRootless; then curl through SOCKS5 (IP and a hostname resolved via --dns by a
 *      tiny DNS server in web, reached through the cascade) and through HTTP CONNECT fetches the
 *      page from web. Asserts: the engine child's Uid is 65534 in the initial namespace, it lives
 *      in another network namespace, the client namespace got no TUN, a second helper on the
 *      same port fails with ERR_PORT_IN_USE, and close() ends the child.
 *   c. ERR_USERNS_DENIED: the helper run where user namespaces are exhausted (a user namespace
 *      whose user.max_user_namespaces is 0, set inside it; nothing on the host changes).
 *
 * Safety: traffic only on loopback or inside the lab's namespaces; the only TUN is in the
 * child's fresh namespace; every process is ended by PID and the namespaces deleted.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { promisify } from 'node:util';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { PrivateKey } from '../src/crypto/keys.ts';
import { relayListJson, type Relay } from '../src/cascade/relaylist.ts';
import { Lab, labUnavailable, memoryTempDir } from '../src/lab/lab.ts';
import { startRelay } from '../src/lab/procs.ts';
import { connectRootless } from '../src/client/rootless.ts';
import { Dialer, serveSocks5 } from '../src/client/socks5.ts';
import { serveHttpConnect } from '../src/client/httpconnect.ts';
import { StrataError } from '../src/crypto/errors.ts';

const run = promisify(execFile);
const ROOT = path.resolve(import.meta.dirname, '..');
const NODE = process.execPath;
const NOBODY = ['--reuid=65534', '--regid=65534', '--clear-groups'];

// ---- a small SOCKS5 client (for the protocol tests; the lab uses curl) -----------------------

/** Opens a TCP connection to `port` on loopback, writes `bytes`, and collects what comes back until close or `want` bytes. */
function exchange(port: number, bytes: Buffer[], want = Infinity, ms = 5000): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: '127.0.0.1', port });
    let got = Buffer.alloc(0);
    const t = setTimeout(() => {
      s.destroy();
      resolve(got);
    }, ms);
    s.on('connect', () => {
      for (const b of bytes) s.write(b);
    });
    s.on('data', (d) => {
      got = Buffer.concat([got, d]);
      if (got.length >= want) {
        clearTimeout(t);
        s.destroy();
        resolve(got);
      }
    });
    s.on('error', (e) => {
      clearTimeout(t);
      reject(e);
    });
    s.on('close', () => {
      clearTimeout(t);
      resolve(got);
    });
  });
}

function socksConnect(atyp: number, addr: Buffer, port: number, cmd = 1): Buffer {
  const p = Buffer.alloc(2);
  p.writeUInt16BE(port);
  return Buffer.concat([Buffer.from([5, cmd, 0, atyp]), addr, p]);
}

const GREETING = Buffer.from([5, 1, 0]);

async function loopbackServer(handler: (s: net.Socket) => void): Promise<net.Server> {
  const s = net.createServer(handler);
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  return s;
}

const port = (s: net.Server): number => (s.address() as net.AddressInfo).port;

test('SOCKS5: CONNECT by IPv4 and by name, and the RFC 1928 error replies', async () => {
  const echo = await loopbackServer((s) => s.pipe(s));
  const proxy = await loopbackServer(() => {});
  serveSocks5(proxy, { dialer: new Dialer({ connectTimeoutMs: 3000 }) });
  try {
    const ep = port(echo);
    // IPv4, with data sent right behind the request (pipelined)
    let r = await exchange(port(proxy), [GREETING, socksConnect(1, Buffer.from([127, 0, 0, 1]), ep), Buffer.from('ping')], 2 + 10 + 4);
    assert.deepEqual([...r.subarray(0, 4)], [5, 0, 5, 0], 'method 0, then reply succeeded');
    assert.equal(r[5], 1, 'bound address is IPv4');
    assert.equal(r.subarray(12).toString(), 'ping');
    // hostname
    r = await exchange(port(proxy), [GREETING, socksConnect(3, Buffer.concat([Buffer.from([9]), Buffer.from('localhost')]), ep), Buffer.from('pong')], 2 + 10 + 4);
    assert.equal(r[3], 0, 'hostname CONNECT succeeded');
    assert.equal(r.subarray(r.length - 4).toString(), 'pong');
    // no acceptable method
    r = await exchange(port(proxy), [Buffer.from([5, 1, 2])]);
    assert.deepEqual([...r], [5, 0xff]);
    // BIND: command not supported
    r = await exchange(port(proxy), [GREETING, socksConnect(1, Buffer.from([127, 0, 0, 1]), ep, 2)]);
    assert.equal(r[3], 7);
    // address type 9: not supported
    r = await exchange(port(proxy), [GREETING, Buffer.from([5, 1, 0, 9, 1, 2, 3, 4])]);
    assert.equal(r[3], 8);
    // a closed port: connection refused
    const closed = await loopbackServer(() => {});
    const cp = port(closed);
    await new Promise<void>((r2) => closed.close(() => r2()));
    r = await exchange(port(proxy), [GREETING, socksConnect(1, Buffer.from([127, 0, 0, 1]), cp)]);
    assert.equal(r[3], 5);
    // an over-long handshake is cut off without a reply to it
    r = await exchange(port(proxy), [Buffer.from([5, 1, 0]), Buffer.alloc(2000, 1)]);
    assert.ok(r.length <= 2, 'nothing beyond the method reply');
  } finally {
    echo.close();
    proxy.close();
  }
});

test('HTTP CONNECT: tunnel, 405 for other methods, 400 for a bad target, 502 when refused', async () => {
  const echo = await loopbackServer((s) => s.pipe(s));
  const proxy = await loopbackServer(() => {});
  serveHttpConnect(proxy, { dialer: new Dialer({ connectTimeoutMs: 3000 }) });
  try {
    let r = await exchange(port(proxy), [Buffer.from(`CONNECT 127.0.0.1:${port(echo)} HTTP/1.1\r\nHost: x\r\n\r\nhello`)], 44);
    assert.match(r.toString(), /^HTTP\/1\.1 200 [^\r]*\r\n\r\nhello$/);
    r = await exchange(port(proxy), [Buffer.from('GET http://example.test/ HTTP/1.1\r\nHost: example.test\r\n\r\n')]);
    assert.match(r.toString(), /^HTTP\/1\.1 405/);
    assert.match(r.toString(), /Allow: CONNECT/i);
    r = await exchange(port(proxy), [Buffer.from('CONNECT nonsense HTTP/1.1\r\nHost: x\r\n\r\n')]);
    assert.match(r.toString(), /^HTTP\/1\.1 400/);
    const closed = await loopbackServer(() => {});
    const cp = port(closed);
    await new Promise<void>((r2) => closed.close(() => r2()));
    r = await exchange(port(proxy), [Buffer.from(`CONNECT 127.0.0.1:${cp} HTTP/1.1\r\nHost: x\r\n\r\n`)]);
    assert.match(r.toString(), /^HTTP\/1\.1 502/);
  } finally {
    echo.close();
    proxy.close();
  }
});

function fakeRelay(name: string, address = '127.0.0.1'): Relay {
  return {
    name,
    country: 'IS',
    publicKey: PrivateKey.generate().publicKey(),
    endpoints: [{ address, port: 51820, family: 'IPv4' }],
    roles: ['entry', 'exit'],
    provider: '',
    family: '',
    capacity: 1,
    kind: 'strata',
  };
}

async function rejectsWith(p: Promise<unknown>, code: string): Promise<StrataError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof StrataError, `a StrataError, got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    return e;
  }
  assert.fail(`expected ${code}`);
}

test('connectRootless: input checks and ERR_PORT_IN_USE (before anything is started)', async () => {
  const path1 = [fakeRelay('r1')];
  await rejectsWith(connectRootless({ path: path1 }), 'ERR_ROOTLESS_OPTIONS');
  await rejectsWith(connectRootless({ path: path1, socks5: { host: '0.0.0.0', port: 1080 } }), 'ERR_ROOTLESS_OPTIONS');
  await rejectsWith(connectRootless({ path: path1, socks5: { host: '127.0.0.1', port: 1080 }, dns: 'not-an-ip' }), 'ERR_ROOTLESS_OPTIONS');
  const taken = await loopbackServer(() => {});
  try {
    const e = await rejectsWith(connectRootless({ path: path1, socks5: { host: '127.0.0.1', port: port(taken) } }), 'ERR_PORT_IN_USE');
    assert.match(e.message, new RegExp(`127\\.0\\.0\\.1:${port(taken)}`));
    // the HTTP proxy's port taken, the SOCKS5 one free: the SOCKS5 listener is released again
    const free = await loopbackServer(() => {});
    const fp = port(free);
    await new Promise<void>((r) => free.close(() => r()));
    await rejectsWith(connectRootless({ path: path1, socks5: { host: '127.0.0.1', port: fp }, httpProxy: { host: '127.0.0.1', port: port(taken) } }), 'ERR_PORT_IN_USE');
    const again = net.createServer();
    await new Promise<void>((resolve, reject) => {
      again.once('error', reject);
      again.listen(fp, '127.0.0.1', () => resolve());
    });
    again.close();
  } finally {
    taken.close();
  }
});

// ---- the lab ----------------------------------------------------------------------------------

const HELPER = `
import { connectRootless } from ${JSON.stringify(path.join(ROOT, 'src/client/rootless.ts'))};
import { loadRelayList, pickPath } from ${JSON.stringify(path.join(ROOT, 'src/cascade/relaylist.ts'))};
const [list, names, socks, httpPort, dns] = process.argv.slice(2);
const options = { path: pickPath(loadRelayList(list), names.split(',')), socks5: { host: '127.0.0.1', port: Number(socks) }, hopTimeout: 5 };
if (httpPort !== '-') options.httpProxy = { host: '127.0.0.1', port: Number(httpPort) };
if (dns !== undefined && dns !== '-') options.dns = dns;
let conn;
try {
  conn = await connectRootless(options);
} catch (e) {
  console.log('ERROR ' + e.code + ' ' + e.message);
  process.exit(2);
}
console.log('READY ' + JSON.stringify({ pid: conn.pid, status: await conn.status() }));
let stopping = false;
const stop = async () => { stopping = true; await conn.close(); console.log('CLOSED ' + await conn.closed); process.exit(0); };
process.on('SIGTERM', stop);
process.stdin.on('data', (d) => { if (String(d).includes('close')) void stop(); });
conn.closed.then((code) => { if (!stopping) { console.log('CHILD EXITED ' + code); process.exit(1); } });
`;

const WEB = `
const http = require('node:http');
const dgram = require('node:dgram');
http.createServer((req, res) => res.end('hello from web via ' + req.socket.remoteAddress)).listen(80, '0.0.0.0', () => {
  // A tiny DNS server: web.strata.test A ${'${process.argv[1]}'}; anything else NXDOMAIN.
  const d = dgram.createSocket('udp4');
  d.on('message', (q, from) => {
    if (q.length < 12) return;
    let i = 12;
    const labels = [];
    while (i < q.length && q[i] !== 0) { labels.push(q.toString('latin1', i + 1, i + 1 + q[i])); i += q[i] + 1; }
    const qend = i + 5;
    const name = labels.join('.').toLowerCase();
    const qtype = q.readUInt16BE(i + 1);
    const hit = name === 'web.strata.test';
    const header = Buffer.from([q[0], q[1], 0x81, hit ? 0x80 : 0x83, 0, 1, 0, hit && qtype === 1 ? 1 : 0, 0, 0, 0, 0]);
    const parts = [header, q.subarray(12, qend)];
    if (hit && qtype === 1) parts.push(Buffer.from([0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, ...process.argv[1].split('.').map(Number)]));
    d.send(Buffer.concat(parts), from.port, from.address);
  });
  d.bind(53, '0.0.0.0', () => console.log('listening'));
});
`;

function waitLine(child: ChildProcess, re: RegExp, ms: number): Promise<string> {
  return new Promise((resolve, reject) => {
    let out = '';
    let err = '';
    const t = setTimeout(() => reject(new Error(`timed out waiting for ${re}; stdout: ${out.trim()} stderr: ${err.trim()}`)), ms);
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const m = out.split('\n').find((l) => re.test(l));
      if (m !== undefined) {
        clearTimeout(t);
        resolve(m);
      }
    });
    child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    child.once('exit', (code) => {
      clearTimeout(t);
      const m = out.split('\n').find((l) => re.test(l));
      if (m !== undefined) resolve(m);
      else reject(new Error(`exited (${code}) before ${re}; stdout: ${out.trim()} stderr: ${err.trim()}`));
    });
  });
}

let labWhy: string | null | undefined;
async function skipUnlessLab(t: TestContext): Promise<boolean> {
  if (labWhy === undefined) {
    labWhy = await labUnavailable();
    if (labWhy === null) {
      try {
        await run('setpriv', [...NOBODY, 'unshare', '--user', '--map-root-user', '--net', 'true'], { timeout: 5000 });
      } catch (e) {
        labWhy = `unprivileged user namespaces are not available here: ${String((e as { stderr?: string }).stderr ?? e).trim()}`;
      }
    }
    if (labWhy === null) {
      try {
        await run('setpriv', [...NOBODY, NODE, '-e', `require('fs').accessSync(${JSON.stringify(path.join(ROOT, 'src/client/rootless-child.ts'))}, require('fs').constants.R_OK)`], { timeout: 10_000 });
      } catch {
        labWhy = `uid 65534 cannot run node or read ${ROOT} (make the checkout and node_modules world-readable)`;
      }
    }
    if (labWhy === null) {
      try {
        await run('sh', ['-c', 'command -v curl']);
      } catch {
        labWhy = 'curl is not installed (apt-get install curl)';
      }
    }
  }
  if (labWhy === null) return false;
  console.log(`# skipped: ${t.name}: ${labWhy}`);
  t.skip(labWhy);
  return true;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

test('rootless lab: unprivileged SOCKS5 and HTTP CONNECT through a 3-hop cascade', { timeout: 120_000 }, async (t) => {
  if (await skipUnlessLab(t)) return;
  const dir = memoryTempDir('strata-rootless-');
  fs.chmodSync(dir, 0o755); // uid 65534 reads the relay list and the helper
  const lab = await Lab.create(['client', 'r1', 'r2', 'r3', 'web']);
  const childPids: number[] = [];
  try {
    const names = ['r1', 'r2', 'r3'];
    const keys = names.map(() => PrivateKey.generate());
    const relays: Relay[] = names.map((name, i) => ({
      name,
      country: ['IS', 'CH', 'SE'][i]!,
      publicKey: keys[i]!.publicKey(),
      endpoints: [{ address: lab.host(name).v4, port: 51820, family: 'IPv4' }],
      roles: i === 2 ? ['exit'] : i === 0 ? ['entry'] : ['middle'],
      provider: `p${i}`,
      family: `f${i}`,
      capacity: 1,
      kind: 'strata' as const,
    }));
    const list = path.join(dir, 'relays.json');
    fs.writeFileSync(list, relayListJson(relays), { mode: 0o644 });
    const helper = path.join(dir, 'helper.mjs');
    fs.writeFileSync(helper, HELPER, { mode: 0o644 });
    await Promise.all(relays.map((r, i) => startRelay(lab, lab.host(r.name).ns, list, keys[i]!, i === 2)));
    for (const k of keys) k.wipe();
    const webV4 = lab.host('web').v4;
    const web = lab.spawn(lab.host('web').ns, NODE, ['-e', WEB, webV4]);
    await waitLine(web, /listening/, 10_000);

    const clientNs = lab.host('client').ns;
    const helperArgs = (socks: number, httpPort: string, dns = '-'): string[] => [...NOBODY, NODE, helper, list, names.join(','), String(socks), httpPort, dns];
    const h = lab.spawn(clientNs, 'setpriv', helperArgs(1080, '8080', webV4));
    const readyLine = await waitLine(h, /^(READY|ERROR) /, 60_000);
    assert.match(readyLine, /^READY /, readyLine);
    const { pid, status } = JSON.parse(readyLine.slice(6)) as { pid: number; status: { hops: { up: boolean; name: string }[]; addresses: string[] } };
    childPids.push(pid);
    assert.deepEqual(status.hops.map((x) => [x.name, x.up]), [['r1', true], ['r2', true], ['r3', true]]);

    // Nothing ran as root: the engine (and the helper) are uid 65534 in the initial namespace.
    const uidOf = (p: number): string => /^Uid:\s+(.*)$/m.exec(fs.readFileSync(`/proc/${p}/status`, 'utf8'))![1]!.trim();
    assert.equal(uidOf(pid), '65534\t65534\t65534\t65534', 'the engine child runs as 65534');
    assert.equal(uidOf(h.pid!), '65534\t65534\t65534\t65534', 'the helper (parent) runs as 65534');
    assert.notEqual(fs.readlinkSync(`/proc/${pid}/ns/net`), fs.readlinkSync(`/proc/${h.pid!}/ns/net`), 'the child has its own network namespace');
    assert.notEqual(fs.readlinkSync(`/proc/${pid}/ns/user`), fs.readlinkSync('/proc/self/ns/user'), 'and its own user namespace');
    // The client's namespace got no TUN and no new route.
    const links = await lab.sh(clientNs, 'ip -o link');
    assert.doesNotMatch(links, /strata|tun/);
    const routes = await lab.sh(clientNs, 'ip route');
    assert.equal(routes.trim().split('\n').length, 2, routes);

    const curl = (args: string[]): Promise<string> => lab.exec(clientNs, 'curl', ['-sS', '--max-time', '20', ...args], 30_000);
    const viaSocks = await curl(['--socks5-hostname', '127.0.0.1:1080', `http://${webV4}/`]);
    // The web server sees the exit relay's address, not the client's.
    assert.equal(viaSocks, `hello from web via ${lab.host('r3').v4}`);
    const viaName = await curl(['--socks5-hostname', '127.0.0.1:1080', 'http://web.strata.test/']);
    assert.equal(viaName, `hello from web via ${lab.host('r3').v4}`, 'a hostname resolved through the cascade (--dns)');
    const viaHttp = await curl(['--proxytunnel', '--proxy', 'http://127.0.0.1:8080', `http://${webV4}/`]);
    assert.equal(viaHttp, `hello from web via ${lab.host('r3').v4}`);
    console.log(`# rootless: child pid ${pid} uid 65534, 3 hops up, SOCKS5 (IP + name) and HTTP CONNECT served from r3`);

    // The port is taken now: a second connection reports ERR_PORT_IN_USE.
    const h2 = lab.spawn(clientNs, 'setpriv', helperArgs(1080, '-'));
    const line2 = await waitLine(h2, /^(READY|ERROR) /, 20_000);
    assert.match(line2, /^ERROR ERR_PORT_IN_USE /);

    // Closing ends the child.
    h.stdin!.write('close\n');
    const closedLine = await waitLine(h, /^CLOSED/, 10_000);
    assert.equal(closedLine, 'CLOSED 0', 'the child exited cleanly when asked');
    for (let i = 0; i < 50 && alive(pid); i++) await new Promise((r) => setTimeout(r, 100));
    assert.equal(alive(pid), false, 'the child exited');
  } finally {
    await lab.close();
    for (const p of childPids) {
      try {
        process.kill(p, 'SIGKILL');
      } catch {
        // gone
      }
    }
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('rootless: ERR_USERNS_DENIED when user namespaces cannot be created', { timeout: 30_000 }, async (t) => {
  if (await skipUnlessLab(t)) return;
  const dir = memoryTempDir('strata-rootless-');
  fs.chmodSync(dir, 0o755);
  try {
    const list = path.join(dir, 'relays.json');
    fs.writeFileSync(list, relayListJson([fakeRelay('r1')]), { mode: 0o644 });
    const helper = path.join(dir, 'helper.mjs');
    fs.writeFileSync(helper, HELPER, { mode: 0o644 });
    // A user namespace (and a network namespace, so the listener is not on the host's loopback)
    // whose own limit of nested user namespaces is 0: unshare --user inside it fails.
    const script = `echo 0 > /proc/sys/user/max_user_namespaces && exec ${JSON.stringify(NODE)} ${JSON.stringify(helper)} ${JSON.stringify(list)} r1 1080 -`;
    const child = spawn('setpriv', [...NOBODY, 'unshare', '--user', '--map-root-user', '--net', 'sh', '-c', `ip link set lo up; ${script}`], { stdio: ['ignore', 'pipe', 'pipe'] });
    let line: string;
    try {
      line = await waitLine(child, /^(READY|ERROR) /, 20_000);
    } finally {
      child.kill('SIGKILL');
    }
    assert.match(line, /^ERROR ERR_USERNS_DENIED /);
    assert.match(line, /sysctl|AppArmor|max_user_namespaces/);
    console.log(`# ${line}`);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
