/**
 * A small SOCKS5 server (RFC 1928): CONNECT only, method "no authentication" only, destination
 * as IPv4, IPv6 or a hostname (resolved here, by the dialer, not by the application). It serves
 * connections accepted on any net.Server; in rootless mode that is the listener the parent
 * process handed in, and the outgoing connections are opened in this process's namespace (so
 * they go through the TUN and the cascade).
 *
 * Care taken: the greeting and request are parsed incrementally from a bounded buffer (the
 * largest legal handshake is 262 + 262 bytes); the handshake must finish within a time limit;
 * every failure gets the RFC's reply code before the connection is closed; sockets are
 * destroyed on either side's error or close.
 */
import net from 'node:net';
import dns from 'node:dns';

// RFC 1928 reply codes.
export const REP = {
  SUCCEEDED: 0x00,
  GENERAL_FAILURE: 0x01,
  NOT_ALLOWED: 0x02,
  NETWORK_UNREACHABLE: 0x03,
  HOST_UNREACHABLE: 0x04,
  CONNECTION_REFUSED: 0x05,
  TTL_EXPIRED: 0x06,
  COMMAND_NOT_SUPPORTED: 0x07,
  ADDRESS_TYPE_NOT_SUPPORTED: 0x08,
} as const;

const VERSION = 0x05;
const METHOD_NO_AUTH = 0x00;
const METHOD_NONE_ACCEPTABLE = 0xff;
const CMD_CONNECT = 0x01;
const ATYP_IPV4 = 0x01;
const ATYP_DOMAIN = 0x03;
const ATYP_IPV6 = 0x04;
/** Greeting (2 + 255) plus request (4 + 1 + 255 + 2): nothing legal is longer. */
const MAX_HANDSHAKE = 2 + 255 + 4 + 1 + 255 + 2;

export interface DialOptions {
  /** A DNS server (IP) for hostnames; default: the system resolver (resolv.conf, hosts). */
  dns?: string;
  /** ms for name resolution plus the TCP connect. Default 15 s. */
  connectTimeoutMs?: number;
}

/** Opens outgoing TCP connections for the proxies, resolving hostnames as configured. */
export class Dialer {
  readonly #resolver: dns.promises.Resolver | null;
  readonly #timeout: number;

  constructor(o: DialOptions = {}) {
    this.#timeout = o.connectTimeoutMs ?? 15_000;
    if (o.dns !== undefined) {
      if (net.isIP(o.dns) === 0) throw new Error(`--dns needs an IP address, not "${o.dns}"`);
      this.#resolver = new dns.promises.Resolver({ timeout: 3000, tries: 2 });
      this.#resolver.setServers([o.dns]);
    } else {
      this.#resolver = null;
    }
  }

  async resolve(host: string): Promise<string> {
    if (net.isIP(host) !== 0) return host;
    if (this.#resolver === null) return (await dns.promises.lookup(host)).address;
    const v4 = await this.#resolver.resolve4(host).catch(() => [] as string[]);
    if (v4.length > 0) return v4[0]!;
    const v6 = await this.#resolver.resolve6(host).catch(() => [] as string[]);
    if (v6.length > 0) return v6[0]!;
    throw Object.assign(new Error(`cannot resolve ${host}`), { code: 'ENOTFOUND' });
  }

  /** Resolves and connects; rejects with an Error whose `code` tells why (ETIMEDOUT on time-out). */
  dial(host: string, port: number): Promise<net.Socket> {
    return new Promise((resolve, reject) => {
      let done = false;
      let sock: net.Socket | null = null;
      const timer = setTimeout(() => finish(Object.assign(new Error(`connecting to ${host}:${port} timed out`), { code: 'ETIMEDOUT' })), this.#timeout);
      const finish = (err: Error | null): void => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        if (err !== null) {
          sock?.destroy();
          reject(err);
        } else {
          resolve(sock!);
        }
      };
      this.resolve(host).then(
        (address) => {
          if (done) return;
          sock = net.connect({ host: address, port });
          sock.once('connect', () => {
            sock!.removeAllListeners('error');
            finish(null);
          });
          sock.once('error', (e) => finish(e));
        },
        (e: Error) => finish(e),
      );
    });
  }
}

/** The SOCKS5 reply code for a failed dial. */
export function replyFor(e: unknown): number {
  switch ((e as NodeJS.ErrnoException).code) {
    case 'ECONNREFUSED':
      return REP.CONNECTION_REFUSED;
    case 'ENETUNREACH':
    case 'ENETDOWN':
      return REP.NETWORK_UNREACHABLE;
    case 'EHOSTUNREACH':
    case 'EHOSTDOWN':
    case 'ETIMEDOUT':
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
    case 'ENODATA':
      return REP.HOST_UNREACHABLE;
    default:
      return REP.GENERAL_FAILURE;
  }
}

function reply(code: number, bound?: net.AddressInfo | Record<string, never>): Buffer {
  const addr = bound !== undefined && 'address' in bound ? bound.address : '0.0.0.0';
  const port = bound !== undefined && 'port' in bound ? bound.port : 0;
  if (net.isIPv6(addr)) {
    const b = Buffer.alloc(4 + 16 + 2);
    b.set([VERSION, code, 0, ATYP_IPV6]);
    ipv6Bytes(addr).copy(b, 4);
    b.writeUInt16BE(port, 20);
    return b;
  }
  const b = Buffer.alloc(4 + 4 + 2);
  b.set([VERSION, code, 0, ATYP_IPV4]);
  const parts = net.isIPv4(addr) ? addr.split('.').map(Number) : [0, 0, 0, 0];
  b.set(parts, 4);
  b.writeUInt16BE(port, 8);
  return b;
}

function ipv6Bytes(text: string): Buffer {
  const b = Buffer.alloc(16);
  const [head, tail] = text.includes('::') ? text.split('::') : [text, undefined];
  const parse = (s: string | undefined): number[] => {
    if (s === undefined || s === '') return [];
    const out: number[] = [];
    for (const g of s.split(':')) {
      if (g.includes('.')) {
        const p = g.split('.').map(Number);
        out.push((p[0]! << 8) | p[1]!, (p[2]! << 8) | p[3]!);
      } else out.push(parseInt(g, 16));
    }
    return out;
  };
  const h = parse(head);
  const t = parse(tail);
  const groups = [...h, ...new Array<number>(8 - h.length - t.length).fill(0), ...t];
  groups.forEach((g, i) => b.writeUInt16BE(g & 0xffff, i * 2));
  return b;
}

function formatIPv6(b: Buffer): string {
  const g: string[] = [];
  for (let i = 0; i < 16; i += 2) g.push(b.readUInt16BE(i).toString(16));
  return g.join(':');
}

export interface ProxyOptions {
  dialer: Dialer;
  /** ms allowed for the client's greeting and request. Default 10 s. */
  handshakeTimeoutMs?: number;
  /** Called once per connection attempt (for status counters and tests). */
  onRequest?: (event: { host: string; port: number; ok: boolean; code?: string }) => void;
}

type Parsed = { kind: 'need' } | { kind: 'bad'; code: number } | { kind: 'request'; host: string; port: number; used: number };

/** Parses a CONNECT request from the start of `b` (after the greeting). */
export function parseRequest(b: Buffer): Parsed {
  if (b.length < 5) return { kind: 'need' };
  if (b[0] !== VERSION || b[2] !== 0) return { kind: 'bad', code: REP.GENERAL_FAILURE };
  const atyp = b[3]!;
  let host: string;
  let at: number;
  if (atyp === ATYP_IPV4) {
    if (b.length < 10) return { kind: 'need' };
    host = `${b[4]}.${b[5]}.${b[6]}.${b[7]}`;
    at = 8;
  } else if (atyp === ATYP_IPV6) {
    if (b.length < 22) return { kind: 'need' };
    host = formatIPv6(b.subarray(4, 20));
    at = 20;
  } else if (atyp === ATYP_DOMAIN) {
    const n = b[4]!;
    if (b.length < 5 + n + 2) return { kind: 'need' };
    host = b.toString('latin1', 5, 5 + n);
    // A hostname: letters, digits, '-', '.', '_' (an IP literal sent as a name also passes).
    if (n === 0 || !/^[A-Za-z0-9._-]+$/.test(host) && net.isIP(host) === 0) return { kind: 'bad', code: REP.HOST_UNREACHABLE };
    at = 5 + n;
  } else {
    return { kind: 'bad', code: REP.ADDRESS_TYPE_NOT_SUPPORTED };
  }
  const port = b.readUInt16BE(at);
  // The command is checked once the whole request is in, so the reply comes at the right time.
  if (b[1] !== CMD_CONNECT) return { kind: 'bad', code: REP.COMMAND_NOT_SUPPORTED };
  if (port === 0) return { kind: 'bad', code: REP.HOST_UNREACHABLE };
  return { kind: 'request', host, port, used: at + 2 };
}

/** Joins two sockets both ways; either side's end, error or close ends both. */
export function splice(a: net.Socket, b: net.Socket): void {
  const end = (): void => {
    a.destroy();
    b.destroy();
  };
  a.on('error', end);
  b.on('error', end);
  a.on('close', end);
  b.on('close', end);
  a.pipe(b);
  b.pipe(a);
}

/** Serves one SOCKS5 client connection. */
export function handleSocks5(client: net.Socket, o: ProxyOptions): void {
  let buf = Buffer.alloc(0);
  let stage: 'greeting' | 'request' | 'dialing' = 'greeting';
  client.setNoDelay(true);
  const timer = setTimeout(() => client.destroy(), o.handshakeTimeoutMs ?? 10_000);
  const fail = (code: number): void => {
    clearTimeout(timer);
    client.removeListener('data', onData);
    client.end(reply(code));
    client.destroySoon();
  };
  client.on('error', () => client.destroy());
  client.on('close', () => clearTimeout(timer));
  const onData = (chunk: Buffer): void => {
    if (stage === 'dialing') {
      // Data the client sent before our reply: kept (bounded) and forwarded once connected.
      buf = Buffer.concat([buf, chunk]);
      if (buf.length > 64 * 1024) client.destroy();
      return;
    }
    buf = Buffer.concat([buf, chunk]);
    if (buf.length > MAX_HANDSHAKE) {
      client.destroy();
      return;
    }
    if (stage === 'greeting') {
      if (buf.length < 2) return;
      if (buf[0] !== VERSION) {
        client.destroy(); // not SOCKS5: no reply is meaningful
        return;
      }
      const n = buf[1]!;
      if (buf.length < 2 + n) return;
      const methods = buf.subarray(2, 2 + n);
      buf = buf.subarray(2 + n);
      if (!methods.includes(METHOD_NO_AUTH)) {
        clearTimeout(timer);
        client.removeListener('data', onData);
        client.end(Buffer.from([VERSION, METHOD_NONE_ACCEPTABLE]));
        return;
      }
      client.write(Buffer.from([VERSION, METHOD_NO_AUTH]));
      stage = 'request';
    }
    if (stage === 'request') {
      const r = parseRequest(buf);
      if (r.kind === 'need') return;
      if (r.kind === 'bad') {
        o.onRequest?.({ host: '', port: 0, ok: false, code: `REP_${r.code}` });
        fail(r.code);
        return;
      }
      stage = 'dialing';
      buf = buf.subarray(r.used);
      client.pause();
      o.dialer.dial(r.host, r.port).then(
        (upstream) => {
          clearTimeout(timer);
          if (client.destroyed) {
            upstream.destroy();
            return;
          }
          o.onRequest?.({ host: r.host, port: r.port, ok: true });
          upstream.setNoDelay(true);
          client.removeListener('data', onData);
          client.write(reply(REP.SUCCEEDED, upstream.address() as net.AddressInfo));
          if (buf.length > 0) upstream.write(buf);
          buf = Buffer.alloc(0);
          splice(client, upstream);
          client.resume();
        },
        (e: NodeJS.ErrnoException) => {
          o.onRequest?.({ host: r.host, port: r.port, ok: false, code: e.code ?? 'ERR' });
          if (!client.destroyed) fail(replyFor(e));
        },
      );
    }
  };
  client.on('data', onData);
}

/** Serves SOCKS5 on every connection `server` accepts. */
export function serveSocks5(server: net.Server, o: ProxyOptions): void {
  server.on('connection', (s: net.Socket) => handleSocks5(s, o));
}
