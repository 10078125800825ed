/**
 * Protocol constants. The first group is fixed by the WireGuard whitepaper (section 6.1); the
 * second is wireguard-go's implementation choice, which Strata follows so that the two behave
 * alike on the wire. Times are in milliseconds, the unit of `now` throughout the core.
 */

// --- Whitepaper (spec) constants ---
export const REKEY_AFTER_MESSAGES = 1n << 60n;
export const REJECT_AFTER_MESSAGES = (1n << 64n) - (1n << 13n) - 1n; // 2^64 - 2^13 - 1 (wireguard-go)
export const REKEY_AFTER_TIME = 120_000;
export const REJECT_AFTER_TIME = 180_000;
export const REKEY_ATTEMPT_TIME = 90_000;
export const REKEY_TIMEOUT = 5_000;
export const KEEPALIVE_TIMEOUT = 10_000;
export const COOKIE_REFRESH_TIME = 120_000;

// --- Implementation constants (wireguard-go device/constants.go) ---
/** Keys of every session are wiped this long after the last handshake: REJECT_AFTER_TIME * 3. */
export const KEY_ZERO_AFTER = REJECT_AFTER_TIME * 3; // 540 s
/** Random extra delay added to each handshake retransmission, up to this many ms. */
export const REKEY_TIMEOUT_JITTER_MAX = 334;
/** Initiations from one peer closer together than this are refused (flood protection). */
export const HANDSHAKE_INITIATION_RATE = 20; // ms: 1 s / 50
/** Packets queued per peer while waiting for a handshake. */
export const MAX_STAGED_PACKETS = 128;
/** wireguard-go's handshake queue length above which the device is "under load". */
export const UNDER_LOAD_QUEUE_SIZE = 128;
/** Once under load, the device stays so for this long. */
export const UNDER_LOAD_AFTER_TIME = 1_000;
/** Per-source handshake rate limit: tokens per second and burst. */
export const RATELIMIT_PACKETS_PER_SECOND = 20;
export const RATELIMIT_PACKETS_BURSTABLE = 5;
/** Size of the anti-replay bitmap in bits; the window is this less one 64-bit word. */
export const REPLAY_COUNTER_BITS = 8192;
export const REPLAY_WINDOW = REPLAY_COUNTER_BITS - 64; // 8128

/** Data is padded to a multiple of this before encryption. */
export const PADDING_MULTIPLE = 16;
