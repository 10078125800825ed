/**
 * Binding an IPv4 and an IPv6 socket on one port, as wireguard-go does: with port 0 the IPv6
 * socket must get the port the IPv4 one was given, so a clash there means trying again; a
 * namespace without IPv6 leaves the IPv4 socket to serve alone.
 */
export interface SocketOps<S> {
  open(family: 'IPv4' | 'IPv6', port: number): Promise<S> | S;
  port(socket: S): number;
  close(socket: S): void;
}

const NO_IPV6 = new Set(['EAFNOSUPPORT', 'EADDRNOTAVAIL', 'EPROTONOSUPPORT']);

export async function bindPair<S>(
  ops: SocketOps<S>,
  port: number,
  families: readonly ('IPv4' | 'IPv6')[],
): Promise<{ v4: S | null; v6: S | null; port: number }> {
  if (!families.includes('IPv4')) {
    const v6 = await ops.open('IPv6', port);
    return { v4: null, v6, port: ops.port(v6) };
  }
  for (let attempt = 0; ; attempt++) {
    const v4 = await ops.open('IPv4', port);
    const bound = ops.port(v4);
    if (!families.includes('IPv6')) return { v4, v6: null, port: bound };
    try {
      return { v4, v6: await ops.open('IPv6', bound), port: bound };
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code ?? '';
      if (code === 'EADDRINUSE' && port === 0 && attempt < 100) {
        ops.close(v4);
        continue;
      }
      if (NO_IPV6.has(code)) return { v4, v6: null, port: bound };
      ops.close(v4);
      throw e;
    }
  }
}
