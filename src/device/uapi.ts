/**
 * The cross-platform configuration protocol (wireguard.com/xplatform), as wireguard-go's
 * device/uapi.go serves it, so the stock `wg` tool manages a Strata device: `get=1` lists the
 * device and its peers; `set=1` applies key=value lines in order, stopping at the first error
 * with a negative errno (EINVAL, EPROTO, EADDRINUSE, EIO) in the reply.
 */
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { PresharedKey, PrivateKey, PublicKey } from '../crypto/keys.ts';
import { formatPrefix, parsePrefix } from '../wireguard/ip.ts';
import type { Peer } from '../wireguard/peer.ts';
import type { UdpEndpoint } from '../io/types.ts';
import type { Device } from './device.ts';
import { formatEndpoint, parseEndpoint } from './endpoint.ts';

export const EIO = 5;
export const EINVAL = 22;
export const EPROTO = 71;
export const EADDRINUSE = 98;
export const ENOANO = 55;

export class UapiError extends Error {
  readonly errno: number;
  constructor(errno: number, message: string) {
    super(message);
    this.errno = errno;
  }
}


function keyBytes(value: string, what: string): Uint8Array {
  // UAPI keys are exactly 64 lowercase or uppercase hex digits.
  if (!/^[0-9a-fA-F]{64}$/.test(value)) throw new UapiError(EINVAL, `invalid ${what}`);
  return new Uint8Array(Buffer.from(value, 'hex'));
}

function hexKey(bytes: Uint8Array): string {
  return Buffer.from(bytes).toString('hex');
}

export function uapiGet(device: Device): string {
  const core = device.core;
  const lines: string[] = [];
  const key = core.privateKey;
  if (key !== null && !key.isZero()) lines.push(`private_key=${hexKey(key.raw())}`);
  if (device.bind.port !== 0) lines.push(`listen_port=${device.bind.port}`);
  if (device.fwmark !== 0) lines.push(`fwmark=${device.fwmark}`);
  for (const peer of core.peers()) {
    lines.push(`public_key=${hexKey(peer.publicKey.raw())}`);
    lines.push(`preshared_key=${hexKey(peer.presharedKey.raw())}`);
    lines.push('protocol_version=1');
    if (peer.endpoint !== null) lines.push(`endpoint=${formatEndpoint(peer.endpoint)}`);
    const ms = peer.lastHandshakeWallMs;
    const sec = Math.floor(ms / 1000);
    const nsec = Math.round((ms - sec * 1000) * 1e6);
    lines.push(`last_handshake_time_sec=${sec}`, `last_handshake_time_nsec=${nsec}`);
    lines.push(`tx_bytes=${peer.txBytes}`, `rx_bytes=${peer.rxBytes}`);
    lines.push(`persistent_keepalive_interval=${peer.persistentKeepaliveInterval}`);
    for (const p of core.allowedIPs.prefixesOf(peer)) lines.push(`allowed_ip=${formatPrefix(p)}`);
  }
  return lines.map((l) => l + '\n').join('');
}

interface PeerOp {
  peer: Peer<UdpEndpoint> | null; // null: a placeholder (our own key, removed, or update_only)
  created: boolean;
  keepaliveOn: boolean;
}

/** Applies a set request's lines (without the terminating blank line). Throws UapiError. */
export async function uapiSet(device: Device, lines: readonly string[]): Promise<void> {
  const core = device.core;
  let op: PeerOp | null = null;
  const post = (): void => {
    if (op === null || op.peer === null) return;
    const now = device.now();
    if (op.keepaliveOn && op.peer.endpoint !== null) device.emit(core.sendKeepalive(op.peer, now));
    device.emit(core.sendStaged(op.peer, now));
  };
  try {
    for (const line of lines) {
      const eq = line.indexOf('=');
      if (eq < 0) throw new UapiError(EPROTO, 'a line is not key=value');
      const k = line.slice(0, eq);
      const v = line.slice(eq + 1);
      if (k === 'public_key') {
        post();
        const pub = new PublicKey(keyBytes(v, 'public key'));
        const self = core.publicKey;
        if (self !== null && self.equals(pub)) op = { peer: null, created: false, keepaliveOn: false };
        else {
          const existing = core.getPeer(pub);
          op = { peer: existing ?? core.addPeer(pub), created: existing === undefined, keepaliveOn: false };
        }
        continue;
      }
      if (op === null) await deviceLine(device, k, v);
      else peerLine(device, op, k, v);
    }
    post();
  } finally {
    device.reschedule();
  }
}

async function deviceLine(device: Device, k: string, v: string): Promise<void> {
  const core = device.core;
  switch (k) {
    case 'private_key': {
      const raw = keyBytes(v, 'private key');
      if (raw.every((b) => b === 0)) core.setPrivateKey(null);
      else {
        const key = new PrivateKey(raw);
        core.setPrivateKey(key);
        key.wipe();
      }
      raw.fill(0);
      return;
    }
    case 'listen_port': {
      if (!/^[0-9]{1,5}$/.test(v) || Number(v) > 65535) throw new UapiError(EINVAL, 'invalid listen_port');
      try {
        await device.setListenPort(Number(v));
      } catch {
        throw new UapiError(EADDRINUSE, 'cannot bind listen_port');
      }
      return;
    }
    case 'fwmark': {
      if (!/^[0-9]{1,10}$/.test(v) || Number(v) > 0xffffffff) throw new UapiError(EINVAL, 'invalid fwmark');
      try {
        device.setFwmark(Number(v));
      } catch {
        throw new UapiError(EADDRINUSE, 'cannot set fwmark');
      }
      return;
    }
    case 'replace_peers':
      if (v !== 'true') throw new UapiError(EINVAL, 'replace_peers must be true');
      for (const p of [...core.peers()]) core.removePeer(p);
      return;
    default:
      throw new UapiError(EINVAL, 'invalid device key');
  }
}

function peerLine(device: Device, op: PeerOp, k: string, v: string): void {
  const core = device.core;
  const peer = op.peer;
  switch (k) {
    case 'update_only':
      if (v !== 'true') throw new UapiError(EINVAL, 'update_only must be true');
      if (op.created && peer !== null) {
        core.removePeer(peer);
        op.peer = null;
      }
      return;
    case 'remove':
      if (v !== 'true') throw new UapiError(EINVAL, 'remove must be true');
      if (peer !== null) core.removePeer(peer);
      op.peer = null;
      return;
    case 'preshared_key': {
      const raw = keyBytes(v, 'preshared key');
      if (peer !== null) {
        peer.presharedKey.wipe();
        peer.presharedKey = new PresharedKey(raw);
      }
      raw.fill(0);
      return;
    }
    case 'endpoint': {
      const e = parseEndpoint(v);
      if (e === null) throw new UapiError(EINVAL, 'invalid endpoint');
      if (peer !== null) peer.endpoint = e;
      return;
    }
    case 'persistent_keepalive_interval': {
      if (!/^[0-9]{1,5}$/.test(v) || Number(v) > 65535) throw new UapiError(EINVAL, 'invalid persistent_keepalive_interval');
      if (peer !== null) op.keepaliveOn = core.setPersistentKeepalive(peer, Number(v)) || op.keepaliveOn;
      return;
    }
    case 'replace_allowed_ips':
      if (v !== 'true') throw new UapiError(EINVAL, 'replace_allowed_ips must be true');
      if (peer !== null) core.allowedIPs.removeOwner(peer);
      return;
    case 'allowed_ip': {
      const remove = v.startsWith('-');
      const text = remove ? v.slice(1) : v;
      const prefix = text.includes('/') ? parsePrefix(text) : null;
      if (prefix === null) throw new UapiError(EINVAL, 'invalid allowed_ip');
      if (peer === null) return;
      if (remove) core.allowedIPs.remove(prefix, peer);
      else core.allowedIPs.insert(prefix, peer);
      return;
    }
    case 'protocol_version':
      if (v !== '1') throw new UapiError(EINVAL, 'invalid protocol_version');
      return;
    default:
      throw new UapiError(EINVAL, 'invalid peer key');
  }
}

/**
 * Serves UAPI on a Unix socket. Requests on one connection are handled in order; a set that
 * fails is answered with its errno and the rest of its lines are skipped; an unknown operation
 * closes the connection, as wireguard-go does.
 */
export class UapiServer {
  readonly path: string;
  readonly #server: net.Server;
  readonly #device: Device;

  private constructor(device: Device, socketPath: string, server: net.Server) {
    this.#device = device;
    this.path = socketPath;
    this.#server = server;
  }

  static socketPath(ifname: string, dir = '/var/run/wireguard'): string {
    return path.join(dir, `${ifname}.sock`);
  }

  static async listen(device: Device, socketPath: string): Promise<UapiServer> {
    fs.mkdirSync(path.dirname(socketPath), { recursive: true, mode: 0o755 });
    // A stale socket of a process that is gone is replaced; a live one is an error, once a
    // daemon that is shutting down (its interface was just deleted) has had 2 s to leave.
    for (let waited = 0; fs.existsSync(socketPath); waited += 100) {
      const live = await new Promise<boolean>((resolve) => {
        const c = net.connect(socketPath, () => {
          c.destroy();
          resolve(true);
        });
        c.on('error', () => resolve(false));
      });
      if (!live) {
        fs.rmSync(socketPath, { force: true });
        break;
      }
      if (waited >= 2000) throw new UapiError(EADDRINUSE, `${socketPath} is in use by a running daemon`);
      await new Promise((r) => setTimeout(r, 100));
    }
    const server = net.createServer();
    const s = new UapiServer(device, socketPath, server);
    server.on('connection', (c) => s.#handle(c));
    const oldMask = process.umask(0o077);
    try {
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(socketPath, () => {
          server.off('error', reject);
          resolve();
        });
      });
    } finally {
      process.umask(oldMask);
    }
    return s;
  }

  /**
   * Reads requests line by line as they stream in (a set may carry hundreds of thousands of
   * allowed_ip lines), applying each request once its blank line arrives.
   */
  #handle(c: net.Socket): void {
    let buffer = '';
    let pos = 0;
    let op: 'none' | 'get' | 'set' = 'none';
    let lines: string[] = [];
    let size = 0;
    let busy = false;
    const MAX_REQUEST = 64 << 20;

    const nextLine = (): string | null => {
      const nl = buffer.indexOf('\n', pos);
      if (nl < 0) return null;
      const line = buffer.slice(pos, nl);
      pos = nl + 1;
      return line;
    };

    const pump = async (): Promise<void> => {
      if (busy) return;
      busy = true;
      try {
        for (;;) {
          const line = nextLine();
          if (line === null) break;
          if (op === 'none') {
            if (line === 'get=1') op = 'get';
            else if (line === 'set=1') op = 'set';
            else {
              c.destroy(); // an unknown operation ends the connection, as in wireguard-go
              return;
            }
            lines = [];
            size = 0;
            continue;
          }
          if (op === 'get') {
            op = 'none';
            c.write(line === '' ? uapiGet(this.#device) + 'errno=0\n\n' : `errno=-${EINVAL}\n\n`);
            continue;
          }
          if (line !== '') {
            size += line.length + 1;
            if (size > MAX_REQUEST) {
              c.destroy();
              return;
            }
            lines.push(line);
            continue;
          }
          op = 'none';
          let errno = 0;
          try {
            await uapiSet(this.#device, lines);
          } catch (e) {
            errno = e instanceof UapiError ? e.errno : ENOANO;
          }
          lines = [];
          if (!c.destroyed) c.write(`errno=${errno === 0 ? 0 : -errno}\n\n`);
        }
        if (pos > 1 << 16) {
          buffer = buffer.slice(pos);
          pos = 0;
        }
      } finally {
        busy = false;
      }
    };
    c.setEncoding('utf8');
    c.on('data', (d: string) => {
      buffer += d;
      if (buffer.length - pos > MAX_REQUEST) {
        c.destroy();
        return;
      }
      void pump().then(() => (buffer.indexOf('\n', pos) >= 0 ? pump() : undefined));
    });
    c.on('error', () => {});
  }

  close(): void {
    this.#server.close();
    try {
      fs.unlinkSync(this.path);
    } catch {
      // already removed
    }
  }
}


