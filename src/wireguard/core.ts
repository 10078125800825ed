/**
 * The sans-I/O WireGuard interface: our static identity, the peers, the index table, the
 * cookie checker and rate limiter, and the AllowedIPs trie. It reads no clock, opens no socket
 * and sets no timer: every entry point takes `now` (ms on the caller's monotonic clock) and
 * returns what to send and what to deliver, or a drop with a reason that is also counted.
 *
 * The flow follows wireguard-go (device/send.go, receive.go, timers.go, noise-protocol.go).
 */
import { PrivateKey, PresharedKey, type PublicKey } from '../crypto/keys.ts';
import { hex } from '../crypto/bytes.ts';
import { StrataError } from '../crypto/errors.ts';
import { AllowedIPs } from './allowedips.ts';
import {
  HANDSHAKE_INITIATION_RATE,
  KEEPALIVE_TIMEOUT,
  KEY_ZERO_AFTER,
  MAX_STAGED_PACKETS,
  PADDING_MULTIPLE,
  REJECT_AFTER_MESSAGES,
  REJECT_AFTER_TIME,
  REKEY_AFTER_MESSAGES,
  REKEY_AFTER_TIME,
  REKEY_ATTEMPT_TIME,
  REKEY_TIMEOUT,
  REKEY_TIMEOUT_JITTER_MAX,
  UNDER_LOAD_AFTER_TIME,
} from './constants.ts';
import { CookieChecker, cryptoRandom, type RandomBytes } from './cookie.ts';
import { consumeInitiation, consumeResponse, createInitiation, createResponse, IDENTIFIER, type SessionKeys } from './handshake.ts';
import { parseIP } from './ip.ts';
import { Keypair } from './keypair.ts';
import {
  MESSAGE_COOKIE_REPLY,
  MESSAGE_INITIATION,
  MESSAGE_RESPONSE,
  parse,
  TRANSPORT_HEADER_SIZE,
  writeTransportHeader,
  type CookieReply,
  type Initiation,
  type ParseError,
  type Response,
  type TransportHeader,
} from './messages.ts';
import { initialState, type SymmetricState } from './noise.ts';
import { Peer, type Endpoint } from './peer.ts';
import { RateLimiter } from './ratelimiter.ts';

/** Retransmissions before giving up: REKEY_ATTEMPT_TIME / REKEY_TIMEOUT (kernel, wireguard-go). */
export const MAX_TIMER_HANDSHAKES = REKEY_ATTEMPT_TIME / REKEY_TIMEOUT;
/** Initiator rekeys on receive this long after the session began (wireguard-go). */
const REKEY_ON_RECEIVE_AFTER = REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT;

export type DropReason =
  | ParseError
  | 'no-private-key'
  | 'bad-mac1'
  | 'rate-limited'
  | 'initiation-decrypt'
  | 'initiation-replay'
  | 'initiation-flood'
  | 'unknown-peer'
  | 'low-order-key'
  | 'unknown-index'
  | 'response-decrypt'
  | 'cookie-decrypt'
  | 'keypair-expired'
  | 'decrypt'
  | 'replay'
  | 'inner-truncated'
  | 'inner-bad-length'
  | 'inner-bad-version'
  | 'inner-disallowed-source'
  | 'no-route'
  | 'no-endpoint'
  | 'staged-overflow'
  | 'handshake-gave-up'
  | 'keys-zeroed';

export interface Outgoing<E> {
  readonly endpoint: E;
  readonly datagram: Uint8Array;
}

const NONE: readonly never[] = Object.freeze([]);

export type SendResult<E> =
  | { readonly kind: 'sent'; readonly out: readonly Outgoing<E>[] }
  | { readonly kind: 'queued'; readonly out: readonly Outgoing<E>[] }
  | { readonly kind: 'drop'; readonly reason: DropReason };

export type Handled = 'initiation' | 'response' | 'cookie-reply-sent' | 'cookie-consumed' | 'keepalive';

export type ReceiveResult<E extends Endpoint> =
  | { readonly kind: 'deliver'; readonly peer: Peer<E>; readonly packet: Uint8Array; readonly out: readonly Outgoing<E>[] }
  | { readonly kind: 'handled'; readonly what: Handled; readonly out: readonly Outgoing<E>[] }
  | { readonly kind: 'drop'; readonly reason: DropReason; readonly out: readonly Outgoing<E>[] };

export interface PeerConfig<E extends Endpoint> {
  presharedKey?: PresharedKey;
  endpoint?: E | null;
  persistentKeepalive?: number;
  allowedIPs?: readonly string[];
}

export interface CoreOptions<E extends Endpoint = Endpoint> {
  privateKey?: PrivateKey | null;
  /** Wall-clock ms at monotonic time 0; used for TAI64N and last-handshake times only. */
  epochMs?: number;
  /** Padding is capped at this (wireguard-go pads up to the MTU); 0 means no cap. */
  mtu?: number;
  random?: RandomBytes;
  /** Handshake messages per second above which the interface goes under load. */
  underLoadThreshold?: number;
  /**
   * Admission of unknown initiators (a relay's open mode): called with the static key of an
   * initiation that authenticated up to that key; a config admits it as a new peer, null
   * refuses ('unknown-peer').
   */
  admit?: (publicKey: PublicKey, now: number) => PeerConfig<E> | null;
  /** Called after a peer's keys were wiped 540 s after its last session (it may be removed). */
  onKeysZeroed?: (peer: Peer<E>) => void;
  /** Called when an authenticated packet moved a peer to another endpoint (roaming). */
  onRoam?: (peer: Peer<E>) => void;
}

/** Bytes of timer jitter drawn at once (256 jitters). */
const JITTER_POOL = 512;

interface IndexEntry<E extends Endpoint> {
  peer: Peer<E>;
  keypair: Keypair | null; // null: the index of a pending handshake
}

export class WireGuard<E extends Endpoint = Endpoint> {
  #privateKey: PrivateKey | null = null;
  #checker: CookieChecker | null = null;
  #responderStart: SymmetricState | null = null;
  readonly #peers = new Map<string, Peer<E>>();
  readonly #index = new Map<number, IndexEntry<E>>();
  readonly allowedIPs = new AllowedIPs<Peer<E>>();
  readonly #rate = new RateLimiter();
  readonly #random: RandomBytes;
  epochMs: number;
  mtu: number;
  readonly underLoadThreshold: number;
  readonly #admit: CoreOptions<E>['admit'];
  readonly #onKeysZeroed: CoreOptions<E>['onKeysZeroed'];
  readonly #onRoam: CoreOptions<E>['onRoam'];
  #loadWindowStart = -Infinity;
  #loadCount = 0;
  #underLoadUntil = -Infinity;
  /** Dropped datagrams and packets by reason. */
  readonly drops = new Map<DropReason, number>();
  /** Cookie replies sent (a sign of being under load). */
  cookieRepliesSent = 0;
  #wake = Infinity;
  #jitterPool: Uint8Array = new Uint8Array(0);
  #jitterAt = 0;

  constructor(options: CoreOptions<E> = {}) {
    this.#random = options.random ?? cryptoRandom;
    this.epochMs = options.epochMs ?? 0;
    this.mtu = options.mtu ?? 1420;
    this.underLoadThreshold = options.underLoadThreshold ?? 256;
    this.#admit = options.admit;
    this.#onKeysZeroed = options.onKeysZeroed;
    this.#onRoam = options.onRoam;
    if (options.privateKey) this.setPrivateKey(options.privateKey);
  }

  // ---- configuration -------------------------------------------------------------------

  get privateKey(): PrivateKey | null {
    return this.#privateKey;
  }

  get publicKey(): PublicKey | null {
    return this.#privateKey?.publicKey() ?? null;
  }

  /**
   * Sets (or clears) our static key. As wireguard-go does: a peer with our new public key is
   * removed, every handshake is reset and current sessions stop being used for sending.
   */
  setPrivateKey(key: PrivateKey | null): void {
    if (key !== null && this.#privateKey !== null && key.equals(this.#privateKey)) return;
    this.#privateKey?.wipe();
    this.#privateKey = key === null ? null : new PrivateKey(key.raw());
    this.#checker?.wipe();
    this.#checker = null;
    this.#responderStart = null;
    const pub = this.publicKey;
    if (pub !== null) {
      this.#checker = new CookieChecker(pub, this.#random);
      this.#responderStart = initialState(IDENTIFIER, pub);
    }
    for (const peer of [...this.#peers.values()]) {
      if (pub !== null && peer.publicKey.equals(pub)) {
        this.removePeer(peer);
        continue;
      }
      this.#precompute(peer);
      this.#clearHandshake(peer);
      if (peer.current) peer.current.sendCounter = REJECT_AFTER_MESSAGES;
    }
  }

  #precompute(peer: Peer<E>): void {
    peer.wipeStatic();
    peer.staticStatic = this.#privateKey?.dh(peer.publicKey) ?? null;
  }

  addPeer(publicKey: PublicKey, config: PeerConfig<E> = {}): Peer<E> {
    const pub = this.publicKey;
    if (pub !== null && pub.equals(publicKey)) throw new StrataError('ERR_PEER_IS_SELF', 'a peer cannot have our own public key');
    const id = hex(publicKey.raw());
    if (this.#peers.has(id)) throw new StrataError('ERR_PEER_EXISTS', 'a peer with this public key already exists');
    const peer = new Peer<E>(publicKey, config.presharedKey ?? PresharedKey.zero());
    this.#precompute(peer);
    this.#peers.set(id, peer);
    if (config.endpoint) peer.endpoint = config.endpoint;
    for (const a of config.allowedIPs ?? []) {
      if (!this.allowedIPs.insertText(a, peer)) {
        this.removePeer(peer);
        throw new StrataError('ERR_ALLOWED_IP', 'an allowed IP is not a valid address or prefix');
      }
    }
    if (config.persistentKeepalive !== undefined) this.setPersistentKeepalive(peer, config.persistentKeepalive);
    return peer;
  }

  getPeer(publicKey: PublicKey): Peer<E> | undefined {
    return this.#peers.get(hex(publicKey.raw()));
  }

  peers(): IterableIterator<Peer<E>> {
    return this.#peers.values();
  }

  removePeer(peer: Peer<E>): void {
    this.#zeroAll(peer, 'keys-zeroed');
    this.allowedIPs.removeOwner(peer);
    peer.wipeStatic();
    peer.cookies.wipe();
    peer.presharedKey.wipe();
    this.#peers.delete(hex(peer.publicKey.raw()));
  }

  /**
   * Sets the persistent keepalive interval (seconds, 0 = off). Returns true when this turned it
   * on; the caller then sends a keepalive at once, as wireguard-go does.
   */
  setPersistentKeepalive(peer: Peer<E>, seconds: number): boolean {
    if (!Number.isInteger(seconds) || seconds < 0 || seconds > 65535) {
      throw new StrataError('ERR_KEEPALIVE', 'persistent keepalive must be an integer from 0 to 65535');
    }
    const was = peer.persistentKeepaliveInterval;
    peer.persistentKeepaliveInterval = seconds;
    if (seconds === 0) peer.timers.persistentKeepalive = null;
    return was === 0 && seconds > 0;
  }

  /** Sends a keepalive (or what is staged) to a peer now. */
  sendKeepalive(peer: Peer<E>, now: number): Outgoing<E>[] {
    return this.#sendKeepalive(peer, now);
  }

  /**
   * Starts a handshake now, even within REKEY_TIMEOUT of the last one: a cascade client uses
   * it to probe whether a relay still answers.
   */
  forceHandshake(peer: Peer<E>, now: number): Outgoing<E>[] {
    peer.handshake.lastSentHandshake = -Infinity;
    return this.#initiate(peer, now, false);
  }

  /** Sends what is staged for a peer, starting a handshake if there is no session. */
  sendStaged(peer: Peer<E>, now: number): Outgoing<E>[] {
    return this.#sendStaged(peer, now);
  }

  // ---- outbound --------------------------------------------------------------------------

  /** Routes an IP packet by its destination through AllowedIPs and sends it to that peer. */
  send(packet: Uint8Array, now: number): SendResult<E> {
    const peer = this.route(packet);
    if (peer === null) return this.#drop('no-route');
    return this.sendTo(peer, packet, now);
  }

  /** The peer whose AllowedIPs hold the packet's destination. */
  route(packet: Uint8Array): Peer<E> | null {
    const v = packet.length > 0 ? packet[0]! >> 4 : 0;
    if (v === 4 && packet.length >= 20) return this.allowedIPs.lookup(packet, 16, 4);
    if (v === 6 && packet.length >= 40) return this.allowedIPs.lookup(packet, 24, 16);
    return null;
  }

  /**
   * Encrypts a packet for one peer, or stages a copy of it and starts a handshake. `packet` is
   * not kept after the call returns.
   */
  sendTo(peer: Peer<E>, packet: Uint8Array, now: number): SendResult<E> {
    // Fast path: nothing waiting and a usable session — seal straight away.
    const kp = peer.current;
    if (
      peer.staged.length === 0 &&
      kp !== null &&
      peer.endpoint !== null &&
      kp.sendCounter < REKEY_AFTER_MESSAGES &&
      now - kp.created < REKEY_AFTER_TIME
    ) {
      const datagram = this.#seal(kp, packet);
      this.#traversal(peer, now);
      peer.timers.sendKeepalive = null;
      if (packet.length > 0 && peer.timers.newHandshake === null) {
        this.#arm(peer, 'newHandshake', now + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + this.#jitter());
      }
      peer.txBytes += datagram.length;
      return { kind: 'sent', out: [{ endpoint: peer.endpoint, datagram }] };
    }
    if (peer.staged.length >= MAX_STAGED_PACKETS) {
      peer.staged.shift();
      this.#count('staged-overflow');
    }
    // The caller's buffer may be reused after this call (a driver's receive arena): keep a copy.
    const kept = packet.slice();
    peer.staged.push(kept);
    const out = this.#sendStaged(peer, now);
    const sent = !peer.staged.includes(kept);
    return sent ? { kind: 'sent', out } : { kind: 'queued', out };
  }

  #sendStaged(peer: Peer<E>, now: number): Outgoing<E>[] {
    if (peer.staged.length === 0) return [];
    const kp = peer.current;
    if (kp === null || kp.sendCounter >= REJECT_AFTER_MESSAGES || now - kp.created >= REJECT_AFTER_TIME) {
      return this.#initiate(peer, now, false);
    }
    const out: Outgoing<E>[] = [];
    while (peer.staged.length > 0) {
      if (kp.sendCounter >= REJECT_AFTER_MESSAGES) {
        out.push(...this.#initiate(peer, now, false));
        return out;
      }
      const packet = peer.staged.shift()!;
      const datagram = this.#seal(kp, packet);
      this.#traversal(peer, now);
      peer.timers.sendKeepalive = null; // any authenticated packet sent
      if (packet.length > 0 && peer.timers.newHandshake === null) {
        this.#arm(peer, 'newHandshake', now + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + this.#jitter());
      }
      if (peer.endpoint === null) this.#count('no-endpoint');
      else {
        peer.txBytes += datagram.length;
        out.push({ endpoint: peer.endpoint, datagram });
      }
    }
    // keepKeyFreshSending
    if (kp.sendCounter > REKEY_AFTER_MESSAGES || (kp.isInitiator && now - kp.created > REKEY_AFTER_TIME)) {
      out.push(...this.#initiate(peer, now, false));
    }
    return out;
  }

  #seal(kp: Keypair, packet: Uint8Array): Uint8Array {
    const n = packet.length;
    let unit = n;
    const mtu = this.mtu;
    if (mtu > 0 && unit > mtu) unit %= mtu;
    let padded = (unit + PADDING_MULTIPLE - 1) & ~(PADDING_MULTIPLE - 1);
    if (mtu > 0 && padded > mtu) padded = mtu;
    const pad = padded - unit;
    const counter = kp.sendCounter;
    kp.sendCounter = counter + 1n;
    // Every byte is written below (header, sealed body, padding, tag): no zero-fill needed.
    const size = TRANSPORT_HEADER_SIZE + n + pad + 16;
    const pooled = Buffer.allocUnsafe(size);
    const datagram = new Uint8Array(pooled.buffer, pooled.byteOffset, size);
    writeTransportHeader(datagram, kp.remoteIndex, counter);
    kp.send.sealPaddedInto(counter, packet, pad, datagram, TRANSPORT_HEADER_SIZE);
    return datagram;
  }

  #sendKeepalive(peer: Peer<E>, now: number): Outgoing<E>[] {
    if (peer.staged.length === 0) peer.staged.push(new Uint8Array(0));
    return this.#sendStaged(peer, now);
  }

  /** Sends a handshake initiation unless one went out less than REKEY_TIMEOUT ago. */
  #initiate(peer: Peer<E>, now: number, isRetry: boolean): Outgoing<E>[] {
    if (!isRetry) peer.handshakeAttempts = 0;
    const hs = peer.handshake;
    if (now - hs.lastSentHandshake < REKEY_TIMEOUT) return [];
    if (this.#privateKey === null) {
      this.#count('no-private-key');
      return [];
    }
    hs.lastSentHandshake = now;
    const index = this.#newIndex(peer, null);
    if (hs.localIndex !== 0 && this.#index.get(hs.localIndex)?.keypair === null) this.#index.delete(hs.localIndex);
    const message = createInitiation(hs, peer.context(this.#privateKey), index, this.epochMs + now, new PrivateKey(this.#random(32)));
    if (message === null) {
      this.#index.delete(index);
      this.#count('low-order-key');
      return [];
    }
    peer.cookies.addMacs(message, now);
    this.#traversal(peer, now);
    peer.timers.sendKeepalive = null;
    this.#arm(peer, 'retransmitHandshake', now + REKEY_TIMEOUT + this.#jitter());
    if (peer.endpoint === null) {
      this.#count('no-endpoint');
      return [];
    }
    peer.txBytes += message.length;
    return [{ endpoint: peer.endpoint, datagram: message }];
  }

  // ---- inbound ---------------------------------------------------------------------------

  /** Handles one datagram from `from`. Never throws on any input. */
  receive(datagram: Uint8Array, from: E, now: number): ReceiveResult<E> {
    const parsed = parse(datagram);
    if (!parsed.ok) return this.#drop(parsed.reason);
    const m = parsed.message;
    switch (m.type) {
      case 4:
        return this.#receiveTransport(m, datagram.length, from, now);
      case MESSAGE_COOKIE_REPLY:
        return this.#receiveCookie(m, now);
      case MESSAGE_INITIATION:
      case MESSAGE_RESPONSE:
        return this.#receiveHandshake(m, from, now);
    }
  }

  /** True while handshakes arrive faster than the threshold (and for a second after). */
  isUnderLoad(now: number): boolean {
    return now < this.#underLoadUntil;
  }

  /** Lets a driver declare load from its own signals (e.g. a backlog of handshake work). */
  markUnderLoad(now: number): void {
    this.#underLoadUntil = now + UNDER_LOAD_AFTER_TIME;
  }

  #noteHandshake(now: number): void {
    if (now - this.#loadWindowStart >= 1000) {
      this.#loadWindowStart = now;
      this.#loadCount = 0;
    }
    if (++this.#loadCount > this.underLoadThreshold) this.markUnderLoad(now);
  }

  #receiveHandshake(m: Initiation | Response, from: E, now: number): ReceiveResult<E> {
    const checker = this.#checker;
    if (checker === null || this.#privateKey === null || this.#responderStart === null) return this.#drop('no-private-key');
    if (!checker.checkMac1(m.bytes)) return this.#drop('bad-mac1');
    this.#noteHandshake(now);
    if (this.isUnderLoad(now)) {
      const source = sourceBytes(from);
      if (!checker.checkMac2(m.bytes, source, now)) {
        this.cookieRepliesSent++;
        const reply = checker.createReply(m.bytes, m.sender, source, now);
        return { kind: 'handled', what: 'cookie-reply-sent', out: [{ endpoint: from, datagram: reply }] };
      }
      if (!this.#rate.allow(rateKey(from.address), now)) return this.#drop('rate-limited');
    }
    return m.type === MESSAGE_INITIATION ? this.#receiveInitiation(m, from, now) : this.#receiveResponse(m, from, now);
  }

  #receiveInitiation(m: Initiation, from: E, now: number): ReceiveResult<E> {
    const key = this.#privateKey!;
    const check = consumeInitiation(m, key, this.#responderStart!, HANDSHAKE_INITIATION_RATE);
    if (!check.ok) return this.#drop(check.reason);
    let peer = this.getPeer(check.remoteStatic);
    if (peer === undefined) {
      const config = this.#admit?.(check.remoteStatic, now) ?? null;
      if (config === null) return this.#drop('unknown-peer');
      try {
        peer = this.addPeer(check.remoteStatic, config);
      } catch {
        return this.#drop('unknown-peer');
      }
    }
    const refusal = check.finish(peer.context(key), peer.handshake, now);
    if (refusal !== null) return this.#drop(refusal);
    this.#traversal(peer, now);
    peer.timers.newHandshake = null; // any authenticated packet received
    this.#follow(peer, from);
    peer.rxBytes += m.bytes.length;

    const index = this.#newIndex(peer, null);
    const r = createResponse(peer.handshake, peer.context(key), index, new PrivateKey(this.#random(32)));
    if (r === null) {
      this.#index.delete(index);
      return this.#drop('low-order-key');
    }
    peer.handshake.lastSentHandshake = now;
    peer.cookies.addMacs(r.message, now);
    this.#beginSession(peer, r.keys, false, now);
    this.#arm(peer, 'zeroKeyMaterial', now + KEY_ZERO_AFTER); // session derived
    this.#traversal(peer, now);
    peer.timers.sendKeepalive = null;
    peer.txBytes += r.message.length;
    return { kind: 'handled', what: 'initiation', out: [{ endpoint: from, datagram: r.message }] };
  }

  #receiveResponse(m: Response, from: E, now: number): ReceiveResult<E> {
    const entry = this.#index.get(m.receiver);
    if (entry === undefined || entry.keypair !== null) return this.#drop('unknown-index');
    const peer = entry.peer;
    const keys = consumeResponse(peer.handshake, peer.context(this.#privateKey!), m);
    if (keys === null) return this.#drop('response-decrypt');
    this.#follow(peer, from);
    peer.rxBytes += m.bytes.length;
    this.#traversal(peer, now);
    peer.timers.newHandshake = null;
    this.#beginSession(peer, keys, true, now);
    this.#arm(peer, 'zeroKeyMaterial', now + KEY_ZERO_AFTER);
    this.#handshakeComplete(peer, now);
    return { kind: 'handled', what: 'response', out: this.#sendKeepalive(peer, now) };
  }

  #receiveCookie(m: CookieReply, now: number): ReceiveResult<E> {
    const entry = this.#index.get(m.receiver);
    if (entry === undefined) return this.#drop('unknown-index');
    if (!entry.peer.cookies.consumeReply(m, now)) return this.#drop('cookie-decrypt');
    return { kind: 'handled', what: 'cookie-consumed', out: NONE };
  }

  #receiveTransport(m: TransportHeader, size: number, from: E, now: number): ReceiveResult<E> {
    const entry = this.#index.get(m.receiver);
    const kp = entry?.keypair;
    if (entry === undefined || kp == null) return this.#drop('unknown-index');
    if (now - kp.created >= REJECT_AFTER_TIME) return this.#drop('keypair-expired');
    const plain = kp.recv.open(m.counter, m.sealed);
    if (plain === null) return this.#drop('decrypt');
    if (!kp.replay.validate(m.counter, REJECT_AFTER_MESSAGES)) return this.#drop('replay');
    const peer = entry.peer;
    let out: Outgoing<E>[] | readonly never[] = NONE;
    if (peer.next === kp) {
      // Key confirmation: the responder's new session becomes current.
      if (peer.previous) this.#deleteKeypair(peer.previous);
      peer.previous = peer.current;
      peer.current = kp;
      peer.next = null;
      this.#follow(peer, from);
      this.#handshakeComplete(peer, now);
      out = this.#sendStaged(peer, now);
    }
    peer.rxBytes += size;
    this.#follow(peer, from); // roaming: follow the last authenticated packet
    // keepKeyFreshReceiving
    const cur = peer.current;
    if (!peer.sentLastMinuteHandshake && cur !== null && cur.isInitiator && now - cur.created > REKEY_ON_RECEIVE_AFTER) {
      peer.sentLastMinuteHandshake = true;
      const init = this.#initiate(peer, now, false);
      if (init.length > 0) out = [...out, ...init];
    }
    this.#traversal(peer, now);
    peer.timers.newHandshake = null;
    if (plain.length === 0) return { kind: 'handled', what: 'keepalive', out };
    // data received
    if (peer.timers.sendKeepalive === null) this.#arm(peer, 'sendKeepalive', now + KEEPALIVE_TIMEOUT);
    else peer.needAnotherKeepalive = true;
    return this.#checkInner(peer, plain, out);
  }

  /** Trims padding by the IP header's length and checks the source against AllowedIPs. */
  #checkInner(peer: Peer<E>, p: Uint8Array, out: readonly Outgoing<E>[]): ReceiveResult<E> {
    const version = p[0]! >> 4;
    let length: number;
    let src: number;
    let len: 4 | 16;
    if (version === 4) {
      if (p.length < 20) return this.#drop('inner-truncated', out);
      length = (p[2]! << 8) | p[3]!;
      if (length > p.length || length < 20) return this.#drop('inner-bad-length', out);
      src = 12;
      len = 4;
    } else if (version === 6) {
      if (p.length < 40) return this.#drop('inner-truncated', out);
      length = ((p[4]! << 8) | p[5]!) + 40;
      if (length > p.length) return this.#drop('inner-bad-length', out);
      src = 8;
      len = 16;
    } else return this.#drop('inner-bad-version', out);
    if (this.allowedIPs.lookup(p, src, len) !== peer) return this.#drop('inner-disallowed-source', out);
    return { kind: 'deliver', peer, packet: length === p.length ? p : p.subarray(0, length), out };
  }

  // ---- sessions --------------------------------------------------------------------------

  #beginSession(peer: Peer<E>, keys: SessionKeys, isInitiator: boolean, now: number): void {
    const kp = new Keypair(keys.send, keys.recv, now, isInitiator, keys.localIndex, keys.remoteIndex);
    this.#index.set(kp.localIndex, { peer, keypair: kp });
    if (isInitiator) {
      if (peer.next !== null) {
        if (peer.previous) this.#deleteKeypair(peer.previous);
        peer.previous = peer.next;
        peer.next = null;
        if (peer.current) this.#deleteKeypair(peer.current);
      } else {
        if (peer.previous) this.#deleteKeypair(peer.previous);
        peer.previous = peer.current;
      }
      peer.current = kp;
    } else {
      if (peer.next) this.#deleteKeypair(peer.next);
      peer.next = kp;
      if (peer.previous) this.#deleteKeypair(peer.previous);
      peer.previous = null;
    }
  }

  /** Roaming: the peer's endpoint follows its last authenticated packet. */
  #follow(peer: Peer<E>, from: E): void {
    if (peer.endpoint === from) return;
    peer.endpoint = from;
    this.#onRoam?.(peer);
  }

  #deleteKeypair(kp: Keypair): void {
    if (this.#index.get(kp.localIndex)?.keypair === kp) this.#index.delete(kp.localIndex);
    kp.destroy();
  }

  #clearHandshake(peer: Peer<E>): void {
    const hs = peer.handshake;
    if (hs.localIndex !== 0 && this.#index.get(hs.localIndex)?.keypair === null) this.#index.delete(hs.localIndex);
    hs.clear();
  }

  /** Wipes every session and the handshake, and drops what was staged. */
  #zeroAll(peer: Peer<E>, reason: DropReason): void {
    for (const kp of peer.keypairs()) this.#deleteKeypair(kp);
    peer.previous = peer.current = peer.next = null;
    this.#clearHandshake(peer);
    for (let i = 0; i < peer.staged.length; i++) this.#count(reason);
    peer.staged.length = 0;
  }

  #handshakeComplete(peer: Peer<E>, now: number): void {
    peer.timers.retransmitHandshake = null;
    peer.handshakeAttempts = 0;
    peer.sentLastMinuteHandshake = false;
    peer.lastHandshakeWallMs = this.epochMs + now;
  }

  #traversal(peer: Peer<E>, now: number): void {
    if (peer.persistentKeepaliveInterval > 0) this.#arm(peer, 'persistentKeepalive', now + peer.persistentKeepaliveInterval * 1000);
  }

  #arm(peer: Peer<E>, timer: keyof Peer<E>['timers'], at: number): void {
    peer.timers[timer] = at;
    if (at < this.#wake) this.#wake = at;
  }

  /**
   * A time at or before the earliest armed timer, kept in O(1) as timers are armed (disarming
   * does not raise it, so it may be early: a driver that wakes then just calls tick).
   */
  get wakeHint(): number {
    return this.#wake;
  }

  /** Recomputes the wake hint exactly (after a tick). */
  resetWakeHint(): void {
    this.#wake = this.nextDeadline() ?? Infinity;
  }

  #newIndex(peer: Peer<E>, keypair: Keypair | null): number {
    for (;;) {
      const b = this.#random(4);
      const i = (b[0]! | (b[1]! << 8) | (b[2]! << 16) | (b[3]! << 24)) >>> 0;
      if (i !== 0 && !this.#index.has(i)) {
        this.#index.set(i, { peer, keypair });
        return i;
      }
    }
  }

  /**
   * Timer jitter, drawn from a pool of random bytes: it is armed on the first data packet after
   * every reply, and a call into node:crypto per packet (an async-job object each time) costs
   * more than the rest of the packet's JavaScript. The bytes are not secret.
   */
  #jitter(): number {
    if (this.#jitterAt + 2 > this.#jitterPool.length) {
      this.#jitterPool = this.#random(JITTER_POOL);
      this.#jitterAt = 0;
    }
    const b = this.#jitterPool;
    const i = this.#jitterAt;
    this.#jitterAt += 2;
    return ((b[i]! << 8) | b[i + 1]!) % REKEY_TIMEOUT_JITTER_MAX;
  }

  // ---- timers ----------------------------------------------------------------------------

  /**
   * Folds in the traffic a fast path moved for a peer outside this core (a relay's native
   * data path, src/relay/express.ts) since the last call: byte counts, and the timer rules of
   * receive and send as if the last of those events had happened now. `e` holds counts of
   * packets received, data packets received, packets sent and data packets sent, and the
   * sequence numbers of the last of each (only their order matters).
   */
  noteOffloaded(
    peer: Peer<E>,
    e: { rx: number; rxData: number; tx: number; txData: number; rxBytes: number; txBytes: number; lastRx: number; lastRxData: number; lastTx: number; lastTxData: number },
    now: number,
  ): void {
    peer.rxBytes += e.rxBytes;
    peer.txBytes += e.txBytes;
    if (e.rx > 0 || e.tx > 0) this.#traversal(peer, now);
    // newHandshake: armed by a data packet sent, stopped by any authenticated packet received.
    if (e.txData > 0 && e.lastTxData > e.lastRx) {
      if (e.rx > 0 || peer.timers.newHandshake === null) this.#arm(peer, 'newHandshake', now + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + this.#jitter());
    } else if (e.rx > 0) peer.timers.newHandshake = null;
    // sendKeepalive: armed by a data packet received, stopped by any packet sent.
    if (e.rxData > 0 && e.lastRxData > e.lastTx) {
      if (e.tx > 0 || peer.timers.sendKeepalive === null) this.#arm(peer, 'sendKeepalive', now + KEEPALIVE_TIMEOUT);
      else peer.needAnotherKeepalive = true;
    } else if (e.tx > 0) peer.timers.sendKeepalive = null;
  }

  /** The earliest time any timer is due, or null when none is armed. */
  nextDeadline(): number | null {
    let best: number | null = null;
    for (const p of this.#peers.values()) {
      const d = p.nextDeadline();
      if (d !== null && (best === null || d < best)) best = d;
    }
    return best;
  }

  /** Runs every timer due at `now` and returns what to send. */
  tick(now: number): Outgoing<E>[] {
    const out: Outgoing<E>[] = [];
    for (const peer of this.#peers.values()) out.push(...this.tickPeer(peer, now));
    return out;
  }

  tickPeer(peer: Peer<E>, now: number): Outgoing<E>[] {
    const t = peer.timers;
    const out: Outgoing<E>[] = [];
    const due = (v: number | null): boolean => v !== null && v <= now;
    if (due(t.retransmitHandshake)) {
      t.retransmitHandshake = null;
      if (peer.handshakeAttempts > MAX_TIMER_HANDSHAKES) {
        // Give up: stop keepalives, drop what waited, and wipe keys in 540 s if not already due.
        t.sendKeepalive = null;
        for (let i = 0; i < peer.staged.length; i++) this.#count('handshake-gave-up');
        peer.staged.length = 0;
        if (t.zeroKeyMaterial === null) this.#arm(peer, 'zeroKeyMaterial', now + KEY_ZERO_AFTER);
      } else {
        peer.handshakeAttempts++;
        out.push(...this.#initiate(peer, now, true));
      }
    }
    if (due(t.sendKeepalive)) {
      t.sendKeepalive = null;
      out.push(...this.#sendKeepalive(peer, now));
      if (peer.needAnotherKeepalive) {
        peer.needAnotherKeepalive = false;
        this.#arm(peer, 'sendKeepalive', now + KEEPALIVE_TIMEOUT);
      }
    }
    if (due(t.newHandshake)) {
      t.newHandshake = null;
      out.push(...this.#initiate(peer, now, false));
    }
    if (due(t.zeroKeyMaterial)) {
      t.zeroKeyMaterial = null;
      this.#zeroAll(peer, 'keys-zeroed');
      this.#onKeysZeroed?.(peer);
    }
    if (due(t.persistentKeepalive)) {
      t.persistentKeepalive = null;
      if (peer.persistentKeepaliveInterval > 0) out.push(...this.#sendKeepalive(peer, now));
    }
    return out;
  }

  // ---- accounting ------------------------------------------------------------------------

  /** Adds drops a fast path counted outside this core (src/relay/express.ts). */
  countDrops(reason: DropReason, n: number): void {
    if (n > 0) this.drops.set(reason, (this.drops.get(reason) ?? 0) + n);
  }

  #count(reason: DropReason): void {
    this.drops.set(reason, (this.drops.get(reason) ?? 0) + 1);
  }

  #drop(reason: DropReason, out: readonly Outgoing<E>[] = NONE): { kind: 'drop'; reason: DropReason; out: readonly Outgoing<E>[] } {
    this.#count(reason);
    return { kind: 'drop', reason, out };
  }

  /** The number of live index-table entries (handshakes and sessions). */
  get indexCount(): number {
    return this.#index.size;
  }
}

/** The cookie's input: the sender's address bytes and port, big-endian. */
function sourceBytes(e: Endpoint): Uint8Array {
  const ip = parseIP(e.address) ?? new TextEncoder().encode(e.address);
  const out = new Uint8Array(ip.length + 2);
  out.set(ip);
  out[ip.length] = e.port >> 8;
  out[ip.length + 1] = e.port & 0xff;
  return out;
}

/** The rate limiter's key: an IPv4 address, or an IPv6 address's /64. */
function rateKey(address: string): string {
  const ip = parseIP(address);
  if (ip === null) return address;
  return ip.length === 4 ? address : hex(ip.subarray(0, 8));
}

export { Peer, type Endpoint };
