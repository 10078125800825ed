/**
 * An HTTP CONNECT proxy (RFC 9110 §9.3.6) on connections accepted by any net.Server (in
 * rootless mode: the listener the parent handed in). Node's HTTP parser reads the request
 * (bounded header size, header and request time limits); only CONNECT is served: any other
 * method gets 405 with `Allow: CONNECT` (for plain http:// URLs use the SOCKS5 proxy, or make
 * the client tunnel, e.g. `curl --proxytunnel`). The tunnel is opened by the same Dialer as
 * the SOCKS5 server's, so hostnames resolve inside the namespace.
 */
import http from 'node:http';
import net from 'node:net';
import type { Duplex } from 'node:stream';
import { splice, type ProxyOptions } from './socks5.ts';

/** "host:port" or "[v6]:port" → parts, or null. */
export function parseAuthority(target: string): { host: string; port: number } | null {
  const m = /^\[([0-9A-Fa-f:.]+)\]:(\d{1,5})$/.exec(target) ?? /^([A-Za-z0-9._-]+):(\d{1,5})$/.exec(target);
  if (m === null) return null;
  const host = m[1]!;
  const port = Number(m[2]);
  if (port < 1 || port > 65535) return null;
  if (target.startsWith('[') && !net.isIPv6(host)) return null;
  return { host, port };
}

function respond(socket: Duplex, status: number, reason: string): void {
  socket.end(`HTTP/1.1 ${status} ${reason}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
}

function statusFor(e: NodeJS.ErrnoException): [number, string] {
  if (e.code === 'ETIMEDOUT') return [504, 'Gateway Timeout'];
  return [502, 'Bad Gateway'];
}

/** Serves HTTP CONNECT on every connection `server` accepts. */
export function serveHttpConnect(server: net.Server, o: ProxyOptions): http.Server {
  const h = http.createServer({ maxHeaderSize: 8192, headersTimeout: o.handshakeTimeoutMs ?? 10_000, requestTimeout: 30_000 }, (req, res) => {
    res.writeHead(405, { Allow: 'CONNECT', Connection: 'close', 'Content-Type': 'text/plain' });
    res.end('this proxy serves CONNECT only; for plain HTTP use the SOCKS5 proxy or tunnel through CONNECT\n');
  });
  h.on('connect', (req: http.IncomingMessage, socket: Duplex, head: Buffer) => {
    const s = socket as net.Socket;
    s.on('error', () => s.destroy());
    const target = parseAuthority(req.url ?? '');
    if (target === null) {
      o.onRequest?.({ host: req.url ?? '', port: 0, ok: false, code: 'BAD_TARGET' });
      respond(s, 400, 'Bad Request');
      return;
    }
    o.dialer.dial(target.host, target.port).then(
      (upstream) => {
        if (s.destroyed) {
          upstream.destroy();
          return;
        }
        o.onRequest?.({ ...target, ok: true });
        upstream.setNoDelay(true);
        s.setNoDelay(true);
        s.write('HTTP/1.1 200 Connection established\r\n\r\n');
        if (head.length > 0) upstream.write(head);
        splice(s, upstream);
      },
      (e: NodeJS.ErrnoException) => {
        o.onRequest?.({ ...target, ok: false, code: e.code ?? 'ERR' });
        if (!s.destroyed) respond(s, ...statusFor(e));
      },
    );
  });
  h.on('clientError', (_e, socket) => {
    if (socket.writable) respond(socket, 400, 'Bad Request');
    else socket.destroy();
  });
  server.on('connection', (s: net.Socket) => h.emit('connection', s));
  return h;
}
