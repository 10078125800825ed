/**
 * A relay's metrics, for Prometheus: aggregates only. No series carries a per-client label
 * (no key, address, endpoint or index): counts of clients, admissions, forwarded and exit
 * packets, and drops by reason. Served on loopback only, when asked for.
 */
import http from 'node:http';
import { Counter, Gauge, Registry } from 'prom-client';
import { StrataError } from '../crypto/errors.ts';
import type { RelayNode } from './relay.ts';

export function relayRegistry(node: RelayNode): Registry {
  const registry = new Registry();
  const gauge = (name: string, help: string, read: () => number): void => {
    new Gauge({
      name,
      help,
      registers: [registry],
      collect() {
        this.set(read());
      },
    });
  };
  const counter = (name: string, help: string, read: () => number): void => {
    new Counter({
      name,
      help,
      registers: [registry],
      collect() {
        this.reset();
        this.inc(read());
      },
    });
  };
  gauge('strata_relay_clients', 'Clients admitted and not yet expired', () => node.stats.clients);
  counter('strata_relay_admitted_total', 'Clients admitted', () => node.stats.admitted);
  counter('strata_relay_refused_admissions_total', 'Admissions refused (allow-list, bound or rate)', () => node.stats.refusedAdmissions);
  counter('strata_relay_forwarded_packets_total', 'Inner datagrams forwarded to a next hop', () => node.stats.forwardedPackets);
  counter('strata_relay_forwarded_bytes_total', 'Bytes forwarded to next hops', () => node.stats.forwardedBytes);
  counter('strata_relay_reply_packets_total', 'Replies carried back to clients', () => node.stats.replyPackets);
  counter('strata_relay_exit_packets_total', 'Packets sent out through the exit', () => node.stats.exitPackets);
  counter('strata_relay_refused_forwards_total', 'Inner packets to endpoints not on the relay list', () => node.stats.refusedForwards);
  counter('strata_relay_fast_path_packets_total', 'Client datagrams the native fast path carried (in and out)', () => node.stats.fastPathPackets);
  counter('strata_relay_cookie_replies_total', 'Cookie replies sent under load', () => node.core.cookieRepliesSent);
  new Counter({
    name: 'strata_relay_drops_total',
    help: 'Datagrams dropped by the protocol core, by reason',
    labelNames: ['reason'],
    registers: [registry],
    collect() {
      this.reset();
      for (const [reason, n] of node.core.drops) this.inc({ reason }, n);
    },
  });
  return registry;
}

/** Serves /metrics on 127.0.0.1:port. */
export async function serveMetrics(registry: Registry, port: number): Promise<http.Server> {
  const server = http.createServer((req, res) => {
    if (req.url !== '/metrics') {
      res.writeHead(404).end();
      return;
    }
    registry.metrics().then(
      (text) => res.writeHead(200, { 'content-type': registry.contentType }).end(text),
      () => res.writeHead(500).end(),
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (e: NodeJS.ErrnoException) => reject(new StrataError(e.code === 'EADDRINUSE' ? 'ERR_PORT_IN_USE' : 'ERR_LISTEN', `metrics port ${port}: ${e.code ?? e.message}`)));
    server.listen(port, '127.0.0.1', () => resolve());
  });
  return server;
}
