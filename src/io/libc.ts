/** The few libc calls Node does not expose, through koffi (loaded on first use). */
import koffi from 'koffi';

export interface Libc {
  ioctl(fd: number, request: number, arg: Buffer): number;
  socket(domain: number, type: number, protocol: number): number;
  setsockopt(fd: number, level: number, name: number, value: Buffer, len: number): number;
  close(fd: number): number;
  errno(): number;
  /** _exit(2): ends the process at once, without joining libuv's thread pool. */
  exit(code: number): never;
}

let libc: Libc | null = null;

export function sys(): Libc {
  if (libc === null) {
    const lib = koffi.load('libc.so.6');
    const ioctl = lib.func('int ioctl(int fd, unsigned long request, _Inout_ uint8_t *argp)');
    const socket = lib.func('int socket(int domain, int type, int protocol)');
    const setsockopt = lib.func('int setsockopt(int fd, int level, int name, const uint8_t *value, uint32_t len)');
    const close = lib.func('int close(int fd)');
    const _exit = lib.func('void _exit(int status)');
    libc = {
      ioctl: (fd, request, arg) => ioctl(fd, request, arg) as number,
      socket: (d, t, p) => socket(d, t, p) as number,
      setsockopt: (fd, level, name, value, len) => setsockopt(fd, level, name, value, len) as number,
      close: (fd) => close(fd) as number,
      errno: () => koffi.errno(),
      exit: (code) => {
        _exit(code);
        throw new Error('unreachable');
      },
    };
  }
  return libc;
}
