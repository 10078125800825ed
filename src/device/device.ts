/**
 * A WireGuard device: drives the sans-I/O core with a TUN and a UDP bind, on the monotonic
 * clock, with one timer armed at the core's earliest deadline. Per packet it does one core
 * call and the I/O it returns; nothing is logged on the data path.
 */
import { WireGuard } from '../wireguard/core.ts';
import type { Outgoing } from '../wireguard/core.ts';
import type { Tun, UdpBind, UdpEndpoint } from '../io/types.ts';
import { WakeTimer } from './waketimer.ts';

export interface DeviceOptions {
  tun: Tun;
  bind: UdpBind;
  /** Called once when the device stops because its TUN went away. */
  onTunClosed?: (reason: Error) => void;
}

export class Device {
  readonly core: WireGuard<UdpEndpoint>;
  readonly tun: Tun;
  readonly bind: UdpBind;
  /** The port asked for (0 = any); `bind.port` is the port bound. */
  listenPort = 0;
  fwmark = 0;
  readonly #timer: WakeTimer;
  #up = false;
  readonly #onTunClosed: ((reason: Error) => void) | undefined;
  /** Packets from the TUN and datagrams from the bind, for counters. */
  stats = { tunPackets: 0, udpDatagrams: 0 };

  constructor(options: DeviceOptions) {
    this.tun = options.tun;
    this.bind = options.bind;
    this.#onTunClosed = options.onTunClosed;
    this.core = new WireGuard<UdpEndpoint>({ epochMs: Date.now() - performance.now(), mtu: this.tun.mtu });
    this.#timer = new WakeTimer(this.core, (now) => this.#send(this.core.tick(now)));
  }

  now(): number {
    return performance.now();
  }

  /** Opens the UDP port and starts moving packets. */
  async up(listenPort = 0): Promise<void> {
    this.listenPort = listenPort;
    await this.bind.open(listenPort);
    this.bind.start((d, from) => this.#onDatagram(d, from));
    this.tun.start(
      (p) => this.#onTunPacket(p),
      (e) => {
        this.close();
        this.#onTunClosed?.(e);
      },
    );
    this.#up = true;
    this.#schedule();
  }

  /**
   * Rebinds to a new port; 0 picks one. Endpoints stay, but the local addresses learned for
   * them are forgotten (as wireguard-go clears its source cache), and sessions go on.
   */
  async setListenPort(port: number): Promise<void> {
    this.listenPort = port;
    if (this.#up) await this.bind.open(port);
    this.#forgetLocalAddresses();
  }

  #forgetLocalAddresses(): void {
    for (const peer of this.core.peers()) {
      const e = peer.endpoint;
      if (e?.local !== undefined) peer.endpoint = { address: e.address, port: e.port, family: e.family };
    }
  }

  /** Sets the firewall mark on outgoing UDP (SO_MARK); 0 clears it. */
  setFwmark(mark: number): void {
    this.bind.setMark(mark);
    this.fwmark = mark;
    this.#forgetLocalAddresses();
  }

  #send(out: readonly Outgoing<UdpEndpoint>[]): void {
    for (let i = 0; i < out.length; i++) this.bind.send(out[i]!.datagram, out[i]!.endpoint);
  }

  #onTunPacket(p: Uint8Array): void {
    this.stats.tunPackets++;
    const r = this.core.send(p, this.now());
    if (r.kind !== 'drop') this.#send(r.out);
    this.#schedule();
  }

  #onDatagram(d: Uint8Array, from: UdpEndpoint): void {
    this.stats.udpDatagrams++;
    const r = this.core.receive(d, from, this.now());
    if (r.kind === 'deliver') this.tun.write(r.packet);
    this.#send(r.out);
    this.#schedule();
  }

  /** Sends what a configuration change produced (e.g. a persistent keepalive turned on). */
  emit(out: readonly Outgoing<UdpEndpoint>[]): void {
    this.#send(out);
    this.#schedule();
  }

  #schedule(): void {
    if (this.#up) this.#timer.schedule();
  }

  /** Re-evaluates timers after configuration changes. */
  reschedule(): void {
    if (this.#up) this.#timer.reset();
  }

  close(): void {
    if (!this.#up) return;
    this.#up = false;
    this.#timer.stop();
    this.tun.close();
    void this.bind.close();
    for (const p of [...this.core.peers()]) this.core.removePeer(p);
    this.core.setPrivateKey(null);
  }
}
