/** What `strata status` shows of each hop, for the root and the rootless client alike. */
import type { CascadeEngine } from '../cascade/client.ts';
import { formatEndpoint } from '../device/endpoint.ts';

export interface HopStatus {
  hop: number;
  name: string;
  /** This connection's public key for the hop (the only key that relay ever sees). */
  publicKey: string;
  country: string;
  endpoint: string;
  up: boolean;
  handshakeAgeSeconds: number | null;
  rxBytes: number;
  txBytes: number;
}

export function hopStatuses(engine: CascadeEngine | null, wallNow = Date.now()): HopStatus[] {
  return (engine?.hops ?? []).map((h) => ({
    hop: h.index + 1,
    name: h.relay.name,
    publicKey: h.core.publicKey!.toBase64(),
    country: h.relay.country,
    endpoint: formatEndpoint(h.endpoint),
    up: h.peer.current !== null,
    handshakeAgeSeconds: h.peer.lastHandshakeWallMs === 0 ? null : Math.max(0, Math.round((wallNow - h.peer.lastHandshakeWallMs) / 1000)),
    rxBytes: h.peer.rxBytes,
    txBytes: h.peer.txBytes,
  }));
}
