/**
 * The four WireGuard messages, parsed and written by exact length. Parsing never throws: it
 * returns the message or a reason. Each parsed message holds subarray views into the datagram.
 */
export const MESSAGE_INITIATION = 1;
export const MESSAGE_RESPONSE = 2;
export const MESSAGE_COOKIE_REPLY = 3;
export const MESSAGE_TRANSPORT = 4;

export const INITIATION_SIZE = 148;
export const RESPONSE_SIZE = 92;
export const COOKIE_REPLY_SIZE = 64;
export const TRANSPORT_HEADER_SIZE = 16;
/** The smallest transport message: a header and an empty (keepalive) sealed payload. */
export const TRANSPORT_MIN_SIZE = TRANSPORT_HEADER_SIZE + 16;

export interface Initiation {
  readonly type: typeof MESSAGE_INITIATION;
  readonly sender: number;
  readonly ephemeral: Uint8Array; // 32
  readonly encryptedStatic: Uint8Array; // 48
  readonly encryptedTimestamp: Uint8Array; // 28
  readonly mac1: Uint8Array; // 16
  readonly mac2: Uint8Array; // 16
  readonly bytes: Uint8Array; // the whole message
}

export interface Response {
  readonly type: typeof MESSAGE_RESPONSE;
  readonly sender: number;
  readonly receiver: number;
  readonly ephemeral: Uint8Array; // 32
  readonly encryptedNothing: Uint8Array; // 16
  readonly mac1: Uint8Array;
  readonly mac2: Uint8Array;
  readonly bytes: Uint8Array;
}

export interface CookieReply {
  readonly type: typeof MESSAGE_COOKIE_REPLY;
  readonly receiver: number;
  readonly nonce: Uint8Array; // 24
  readonly encryptedCookie: Uint8Array; // 32
}

export interface TransportHeader {
  readonly type: typeof MESSAGE_TRANSPORT;
  readonly receiver: number;
  readonly counter: bigint;
  readonly sealed: Uint8Array; // encrypted payload and tag
}

export type Message = Initiation | Response | CookieReply | TransportHeader;

export type ParseError =
  | 'empty'
  | 'unknown-type'
  | 'reserved-nonzero'
  | 'bad-length';

export type ParseResult = { ok: true; message: Message } | { ok: false; reason: ParseError };

function u32le(b: Uint8Array, o: number): number {
  return (b[o]! | (b[o + 1]! << 8) | (b[o + 2]! << 16) | (b[o + 3]! << 24)) >>> 0;
}

function putU32le(b: Uint8Array, o: number, v: number): void {
  b[o] = v & 0xff;
  b[o + 1] = (v >>> 8) & 0xff;
  b[o + 2] = (v >>> 16) & 0xff;
  b[o + 3] = (v >>> 24) & 0xff;
}

export function readU64le(b: Uint8Array, o: number): bigint {
  const lo = u32le(b, o);
  const hi = u32le(b, o + 4);
  // Below 2^53 the value is exact as a double: one conversion instead of three bigint ops.
  if (hi < 0x200000) return BigInt(hi * 0x100000000 + lo);
  return BigInt(lo) | (BigInt(hi) << 32n);
}

export function writeU64le(b: Uint8Array, o: number, v: bigint): void {
  if (v < 0x20000000000000n) {
    const n = Number(v);
    const hi = Math.floor(n / 0x100000000);
    putU32le(b, o, n - hi * 0x100000000);
    putU32le(b, o + 4, hi);
    return;
  }
  putU32le(b, o, Number(v & 0xffffffffn));
  putU32le(b, o + 4, Number((v >> 32n) & 0xffffffffn));
}

/** Parses any datagram; the type byte selects the exact length required. */
export function parse(d: Uint8Array): ParseResult {
  if (d.length === 0) return { ok: false, reason: 'empty' };
  const type = d[0]!;
  if (type < 1 || type > 4) return { ok: false, reason: 'unknown-type' };
  if ((d[1]! | d[2]! | d[3]!) !== 0) return { ok: false, reason: 'reserved-nonzero' };
  switch (type) {
    case MESSAGE_INITIATION:
      if (d.length !== INITIATION_SIZE) return { ok: false, reason: 'bad-length' };
      return {
        ok: true,
        message: {
          type,
          sender: u32le(d, 4),
          ephemeral: d.subarray(8, 40),
          encryptedStatic: d.subarray(40, 88),
          encryptedTimestamp: d.subarray(88, 116),
          mac1: d.subarray(116, 132),
          mac2: d.subarray(132, 148),
          bytes: d,
        },
      };
    case MESSAGE_RESPONSE:
      if (d.length !== RESPONSE_SIZE) return { ok: false, reason: 'bad-length' };
      return {
        ok: true,
        message: {
          type,
          sender: u32le(d, 4),
          receiver: u32le(d, 8),
          ephemeral: d.subarray(12, 44),
          encryptedNothing: d.subarray(44, 60),
          mac1: d.subarray(60, 76),
          mac2: d.subarray(76, 92),
          bytes: d,
        },
      };
    case MESSAGE_COOKIE_REPLY:
      if (d.length !== COOKIE_REPLY_SIZE) return { ok: false, reason: 'bad-length' };
      return {
        ok: true,
        message: { type, receiver: u32le(d, 4), nonce: d.subarray(8, 32), encryptedCookie: d.subarray(32, 64) },
      };
    default:
      // Transport: the sealed payload is at least a tag, and (padded to 16) a multiple of 16.
      if (d.length < TRANSPORT_MIN_SIZE) return { ok: false, reason: 'bad-length' };
      return {
        ok: true,
        message: { type: MESSAGE_TRANSPORT, receiver: u32le(d, 4), counter: readU64le(d, 8), sealed: d.subarray(16) },
      };
  }
}

/** Offsets of the MACs within a handshake message: MAC1 covers bytes before it, MAC2 likewise. */
export function macOffsets(message: Uint8Array): { mac1: number; mac2: number } {
  const n = message.length;
  return { mac1: n - 32, mac2: n - 16 };
}

export function writeInitiation(
  sender: number,
  ephemeral: Uint8Array,
  encryptedStatic: Uint8Array,
  encryptedTimestamp: Uint8Array,
): Uint8Array {
  const b = new Uint8Array(INITIATION_SIZE);
  b[0] = MESSAGE_INITIATION;
  putU32le(b, 4, sender);
  b.set(ephemeral, 8);
  b.set(encryptedStatic, 40);
  b.set(encryptedTimestamp, 88);
  return b; // MACs are filled in afterwards
}

export function writeResponse(sender: number, receiver: number, ephemeral: Uint8Array, encryptedNothing: Uint8Array): Uint8Array {
  const b = new Uint8Array(RESPONSE_SIZE);
  b[0] = MESSAGE_RESPONSE;
  putU32le(b, 4, sender);
  putU32le(b, 8, receiver);
  b.set(ephemeral, 12);
  b.set(encryptedNothing, 44);
  return b;
}

export function writeCookieReply(receiver: number, nonce: Uint8Array, encryptedCookie: Uint8Array): Uint8Array {
  const b = new Uint8Array(COOKIE_REPLY_SIZE);
  b[0] = MESSAGE_COOKIE_REPLY;
  putU32le(b, 4, receiver);
  b.set(nonce, 8);
  b.set(encryptedCookie, 32);
  return b;
}

/** Writes a transport header at the start of `out`. */
export function writeTransportHeader(out: Uint8Array, receiver: number, counter: bigint): void {
  out[0] = MESSAGE_TRANSPORT;
  out[1] = 0;
  out[2] = 0;
  out[3] = 0;
  putU32le(out, 4, receiver);
  writeU64le(out, 8, counter);
}
