/**
 * Linux TUN through koffi: open /dev/net/tun, ioctl TUNSETIFF with IFF_TUN | IFF_NO_PI (one
 * bare IP packet per read and write), and set the MTU with SIOCSIFMTU. Reads run one at a time
 * on libuv's thread pool (so packets stay in order); writes are synchronous (a TUN write does
 * not block). A read error (EBADFD once the interface is deleted) closes the device.
 */
import fs from 'node:fs';
import { sys } from './libc.ts';
import { StrataError } from '../crypto/errors.ts';
import type { Tun } from './types.ts';

const TUNSETIFF = 0x400454ca;
const SIOCSIFMTU = 0x8922;
const IFF_TUN = 0x0001;
const IFF_NO_PI = 0x1000;
const IFNAMSIZ = 16;
const IFREQ_SIZE = 40;
const AF_INET = 2;
const SOCK_DGRAM = 2;
const SOCK_CLOEXEC = 0o2000000;

function ifreq(name: string): Buffer {
  const b = Buffer.alloc(IFREQ_SIZE);
  if (Buffer.byteLength(name) >= IFNAMSIZ || !/^[A-Za-z0-9_.-]*$/.test(name)) {
    throw new StrataError('ERR_IFNAME', 'interface name must be 1-15 characters of letters, digits, _ . -');
  }
  b.write(name, 0, 'latin1');
  return b;
}

export class LinuxTun implements Tun {
  readonly name: string;
  #mtu: number;
  #fd: number;
  #closed = false;
  readonly #buf = Buffer.allocUnsafe(65536);

  private constructor(fd: number, name: string, mtu: number) {
    this.#fd = fd;
    this.name = name;
    this.#mtu = mtu;
  }

  /** Creates (or attaches to) TUN interface `name` in the current network namespace. */
  static create(name: string, mtu = 1420): LinuxTun {
    const req = ifreq(name);
    let fd: number;
    try {
      fd = fs.openSync('/dev/net/tun', fs.constants.O_RDWR | 0o2000000 /* O_CLOEXEC */);
    } catch (e) {
      throw new StrataError('ERR_TUN_OPEN', `cannot open /dev/net/tun: ${(e as Error).message}`);
    }
    req.writeUInt16LE(IFF_TUN | IFF_NO_PI, IFNAMSIZ);
    const s = sys();
    if (s.ioctl(fd, TUNSETIFF, req) < 0) {
      const errno = s.errno();
      fs.closeSync(fd);
      throw new StrataError('ERR_TUN_CREATE', `TUNSETIFF ${name} failed (errno ${errno})`);
    }
    const actual = req.toString('latin1', 0, IFNAMSIZ).replace(/\0.*$/s, '');
    const tun = new LinuxTun(fd, actual, mtu);
    tun.setMtu(mtu);
    return tun;
  }

  get mtu(): number {
    return this.#mtu;
  }

  setMtu(mtu: number): void {
    const s = sys();
    const sock = s.socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (sock < 0) throw new StrataError('ERR_TUN_MTU', `socket() failed (errno ${s.errno()})`);
    try {
      const req = ifreq(this.name);
      req.writeInt32LE(mtu, IFNAMSIZ);
      if (s.ioctl(sock, SIOCSIFMTU, req) < 0) throw new StrataError('ERR_TUN_MTU', `SIOCSIFMTU failed (errno ${s.errno()})`);
      this.#mtu = mtu;
    } finally {
      s.close(sock);
    }
  }

  /** Hands the descriptor over (to the native reader); this object no longer reads or closes it. */
  takeFd(): number {
    const fd = this.#fd;
    this.#closed = true;
    return fd;
  }

  start(onPacket: (packet: Uint8Array) => void, onClosed: (reason: Error) => void): void {
    const loop = (): void => {
      if (this.#closed) return;
      fs.read(this.#fd, this.#buf, 0, this.#buf.length, null, (err, n) => {
        if (this.#closed) return;
        if (err) {
          this.close();
          onClosed(err);
          return;
        }
        if (n > 0) {
          const packet = Uint8Array.prototype.slice.call(this.#buf, 0, n);
          // Plaintext does not outlive its handling: the read buffer and the copy are wiped.
          this.#buf.fill(0, 0, n);
          onPacket(packet);
          packet.fill(0);
        }
        loop();
      });
    };
    loop();
  }

  write(packet: Uint8Array): void {
    if (this.#closed) return;
    try {
      fs.writeSync(this.#fd, packet);
    } catch {
      // A packet the kernel refuses (e.g. the interface is down) is dropped, as by wireguard-go.
    }
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      fs.closeSync(this.#fd);
    } catch {
      // already gone
    }
  }
}
