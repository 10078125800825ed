// strata_native: the hot path of the Strata data plane, behind the same interfaces as the pure
// TypeScript path (which stays as the tested fallback).
//
//   Aead       ChaCha20-Poly1305 with OpenSSL contexts kept per key (the OpenSSL inside Node,
//              the same primitive node:crypto uses), sealing and opening into caller buffers.
//   UdpSocket  a non-blocking UDP socket polled by libuv, reading with recvmmsg and writing
//              with sendmmsg through shared slot arenas; SO_MARK.
//   TunQueue   a non-blocking TUN descriptor polled by libuv, reading batches of packets.
//   Express    a relay's transport-data fast path: data messages of sessions JavaScript hands
//              over are opened, checked and forwarded (or written to the exit TUN), and replies
//              sealed and sent back, inside the poll callback; everything else still goes to
//              JavaScript, which keeps handshakes, timers and the decision of what to hand over.
//
// Secrets: key bytes are copied into OpenSSL contexts and the caller's copy is left to the
// caller to wipe; contexts are freed (and OpenSSL cleanses them) on destroy or collection.
#include <node_api.h>
#include <uv.h>
#include <openssl/evp.h>
#include <openssl/crypto.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <cstdint>
#include <map>
#include <set>
#include <unordered_map>
#include <vector>

#define CHECK(call)                                                     \
  do {                                                                  \
    if ((call) != napi_ok) {                                            \
      napi_throw_error(env, "ERR_NATIVE", "N-API call failed: " #call); \
      return nullptr;                                                   \
    }                                                                   \
  } while (0)

static napi_value Num(napi_env env, double v) {
  napi_value r;
  napi_create_double(env, v, &r);
  return r;
}

static bool Bytes(napi_env env, napi_value v, uint8_t** data, size_t* len) {
  bool is;
  if (napi_is_typedarray(env, v, &is) == napi_ok && is) {
    napi_typedarray_type type;
    size_t length, offset;
    napi_value ab;
    void* raw;
    if (napi_get_typedarray_info(env, v, &type, &length, &raw, &ab, &offset) != napi_ok) return false;
    size_t width;
    switch (type) {
      case napi_int8_array:
      case napi_uint8_array:
      case napi_uint8_clamped_array: width = 1; break;
      case napi_int16_array:
      case napi_uint16_array: width = 2; break;
      case napi_int32_array:
      case napi_uint32_array:
      case napi_float32_array: width = 4; break;
      default: width = 8; break;
    }
    *data = static_cast<uint8_t*>(raw);
    *len = length * width;  // in bytes
    return true;
  }
  if (napi_is_arraybuffer(env, v, &is) == napi_ok && is) {
    void* raw;
    if (napi_get_arraybuffer_info(env, v, &raw, len) != napi_ok) return false;
    *data = static_cast<uint8_t*>(raw);
    return true;
  }
  return false;
}

static bool U64(napi_env env, napi_value v, uint64_t* out) {
  bool lossless;
  return napi_get_value_bigint_uint64(env, v, out, &lossless) == napi_ok && lossless;
}

static bool I32(napi_env env, napi_value v, int32_t* out) {
  return napi_get_value_int32(env, v, out) == napi_ok;
}

// ------------------------------------------------------------------------------------------
// Aead

struct Aead {
  EVP_CIPHER_CTX* enc = nullptr;
  EVP_CIPHER_CTX* dec = nullptr;
  void Free() {
    if (enc) EVP_CIPHER_CTX_free(enc);
    if (dec) EVP_CIPHER_CTX_free(dec);
    enc = dec = nullptr;
  }
};

static void Nonce(uint8_t nonce[12], uint64_t counter) {
  memset(nonce, 0, 4);
  for (int i = 0; i < 8; i++) nonce[4 + i] = static_cast<uint8_t>(counter >> (8 * i));
}

// Seals `srcLen` bytes then `pad` zero bytes into `out` (which may be `src`), and the tag after.
static bool SealInto(Aead* a, uint64_t counter, const uint8_t* src, size_t srcLen, size_t pad, uint8_t* out) {
  static const uint8_t zeros[16] = {0};
  uint8_t nonce[12];
  Nonce(nonce, counter);
  int n = 0, m = 0;
  return EVP_EncryptInit_ex(a->enc, nullptr, nullptr, nullptr, nonce) == 1 &&
         EVP_EncryptUpdate(a->enc, out, &n, src, static_cast<int>(srcLen)) == 1 &&
         (pad == 0 || EVP_EncryptUpdate(a->enc, out + n, &m, zeros, static_cast<int>(pad)) == 1) &&
         EVP_EncryptFinal_ex(a->enc, out + n + m, &m) == 1 &&
         EVP_CIPHER_CTX_ctrl(a->enc, EVP_CTRL_AEAD_GET_TAG, 16, out + srcLen + pad) == 1;
}

// Opens `sealedLen` bytes (body and tag) into `out` (which may be `src`); a forgery leaves
// `out` wiped.
static bool OpenInto(Aead* a, uint64_t counter, const uint8_t* src, size_t sealedLen, uint8_t* out) {
  uint8_t nonce[12];
  Nonce(nonce, counter);
  size_t n = sealedLen - 16;
  uint8_t tag[16];
  memcpy(tag, src + n, 16);  // the tag may be overwritten when decrypting in place
  int outl = 0, fin = 0;
  bool ok = EVP_DecryptInit_ex(a->dec, nullptr, nullptr, nullptr, nonce) == 1 &&
            EVP_CIPHER_CTX_ctrl(a->dec, EVP_CTRL_AEAD_SET_TAG, 16, tag) == 1 &&
            EVP_DecryptUpdate(a->dec, out, &outl, src, static_cast<int>(n)) == 1 &&
            EVP_DecryptFinal_ex(a->dec, out + outl, &fin) == 1;
  if (!ok) OPENSSL_cleanse(out, n);
  return ok;
}

static void AeadFinalize(napi_env, void* data, void*) {
  auto* a = static_cast<Aead*>(data);
  a->Free();
  delete a;
}

static napi_value AeadNew(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], self;
  CHECK(napi_get_cb_info(env, info, &argc, argv, &self, nullptr));
  uint8_t* key;
  size_t len;
  if (argc < 1 || !Bytes(env, argv[0], &key, &len) || len != 32) {
    napi_throw_type_error(env, "ERR_KEY_LENGTH", "Aead key must be 32 bytes");
    return nullptr;
  }
  auto* a = new Aead();
  a->enc = EVP_CIPHER_CTX_new();
  a->dec = EVP_CIPHER_CTX_new();
  if (!a->enc || !a->dec || EVP_EncryptInit_ex(a->enc, EVP_chacha20_poly1305(), nullptr, key, nullptr) != 1 ||
      EVP_DecryptInit_ex(a->dec, EVP_chacha20_poly1305(), nullptr, key, nullptr) != 1) {
    a->Free();
    delete a;
    napi_throw_error(env, "ERR_NATIVE", "OpenSSL could not set up ChaCha20-Poly1305");
    return nullptr;
  }
  CHECK(napi_wrap(env, self, a, AeadFinalize, nullptr, nullptr));
  return self;
}

static Aead* AeadThis(napi_env env, napi_callback_info info, size_t* argc, napi_value* argv) {
  napi_value self;
  void* data = nullptr;
  if (napi_get_cb_info(env, info, argc, argv, &self, nullptr) != napi_ok) return nullptr;
  if (napi_unwrap(env, self, &data) != napi_ok || !data) return nullptr;
  auto* a = static_cast<Aead*>(data);
  if (!a->enc) {
    napi_throw_error(env, "ERR_DESTROYED", "AEAD key used after destroy");
    return nullptr;
  }
  return a;
}

// seal(counter: bigint, src, pad: number, dst, dstOffset): number of bytes written
static napi_value AeadSeal(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  Aead* a = AeadThis(env, info, &argc, argv);
  if (!a) return nullptr;
  uint64_t counter;
  uint8_t *src, *dst;
  size_t srcLen, dstLen;
  int32_t pad, off;
  if (argc < 5 || !U64(env, argv[0], &counter) || !Bytes(env, argv[1], &src, &srcLen) || !I32(env, argv[2], &pad) ||
      !Bytes(env, argv[3], &dst, &dstLen) || !I32(env, argv[4], &off) || pad < 0 || pad > 15 || off < 0 ||
      static_cast<size_t>(off) + srcLen + pad + 16 > dstLen || srcLen > INT32_MAX / 2) {
    napi_throw_range_error(env, "ERR_ARGS", "seal: bad arguments");
    return nullptr;
  }
  if (!SealInto(a, counter, src, srcLen, static_cast<size_t>(pad), dst + off)) {
    napi_throw_error(env, "ERR_NATIVE", "seal failed");
    return nullptr;
  }
  return Num(env, static_cast<double>(srcLen + pad + 16));
}

// open(counter: bigint, sealed, dst, dstOffset): plaintext length, or -1 if not authentic
static napi_value AeadOpen(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  Aead* a = AeadThis(env, info, &argc, argv);
  if (!a) return nullptr;
  uint64_t counter;
  uint8_t *src, *dst;
  size_t srcLen, dstLen;
  int32_t off;
  if (argc < 4 || !U64(env, argv[0], &counter) || !Bytes(env, argv[1], &src, &srcLen) || !Bytes(env, argv[2], &dst, &dstLen) ||
      !I32(env, argv[3], &off) || off < 0 || srcLen < 16 || static_cast<size_t>(off) + srcLen - 16 > dstLen || srcLen > INT32_MAX / 2) {
    napi_throw_range_error(env, "ERR_ARGS", "open: bad arguments");
    return nullptr;
  }
  if (!OpenInto(a, counter, src, srcLen, dst + off)) return Num(env, -1);
  return Num(env, static_cast<double>(srcLen - 16));
}

static napi_value AeadDestroy(napi_env env, napi_callback_info info) {
  napi_value self;
  void* data = nullptr;
  CHECK(napi_get_cb_info(env, info, nullptr, nullptr, &self, nullptr));
  if (napi_unwrap(env, self, &data) == napi_ok && data) static_cast<Aead*>(data)->Free();
  return nullptr;
}

// ------------------------------------------------------------------------------------------
// Shared pieces for polled descriptors: slot arenas owned by JavaScript ArrayBuffers.
//
// Meta layout per slot (Int32Array, 16 entries):
//   [0] length  [1] family (4|6)  [2] port  [3] scope id  [4..7] remote address (16 bytes)
//   [8] 1 if a local address is known  [9] ifindex  [10..13] local address (16 bytes)
// UDP sockets ask for IP_PKTINFO / IPV6_RECVPKTINFO, so each datagram carries the local address
// it was sent to, and replies leave from that same address (wireguard-go's sticky sockets).

static const int kMeta = 16;

struct Arena {
  uint8_t* data = nullptr;
  size_t dataLen = 0;
  int32_t* meta = nullptr;
  size_t metaLen = 0;  // in int32 entries
  size_t slots = 0;
  size_t slotSize = 0;
  napi_ref dataRef = nullptr, metaRef = nullptr;
};

static bool ArenaFrom(napi_env env, napi_value data, napi_value meta, int32_t slots, int32_t slotSize, Arena* a) {
  uint8_t* m;
  size_t mlen;
  if (!Bytes(env, data, &a->data, &a->dataLen) || !Bytes(env, meta, &m, &mlen)) return false;
  if (slots <= 0 || slotSize <= 0 || static_cast<size_t>(slots) * slotSize > a->dataLen || static_cast<size_t>(slots) * kMeta * 4 > mlen)
    return false;
  if (reinterpret_cast<uintptr_t>(m) % 4 != 0) return false;
  a->meta = reinterpret_cast<int32_t*>(m);
  a->metaLen = mlen / 4;
  a->slots = slots;
  a->slotSize = slotSize;
  napi_create_reference(env, data, 1, &a->dataRef);
  napi_create_reference(env, meta, 1, &a->metaRef);
  return true;
}

static void ArenaRelease(napi_env env, Arena* a) {
  if (a->dataRef) napi_delete_reference(env, a->dataRef);
  if (a->metaRef) napi_delete_reference(env, a->metaRef);
  a->dataRef = a->metaRef = nullptr;
}

struct Express;
struct XPeer;

struct Polled {
  napi_env env = nullptr;
  Express* express = nullptr;  // set while an Express is attached (a relay's sockets and TUN)
  XPeer* xpeer = nullptr;      // for a client's forward socket: whose replies it carries
  int fd = -1;
  uv_poll_t* poll = nullptr;
  napi_ref callback = nullptr;
  napi_ref self = nullptr;
  napi_async_context async = nullptr;
  Arena rx, tx;
  bool isTun = false;
  int family = 4;
  std::vector<mmsghdr> msgs;
  std::vector<iovec> iovs;
  std::vector<sockaddr_in6> addrs;
  std::vector<uint8_t> control;  // per slot, kControl bytes
};

static const size_t kControl = 64;

static void PollClosed(uv_handle_t* h) { delete reinterpret_cast<uv_poll_t*>(h); }

static void PolledStop(Polled* p) {
  if (p->poll) {
    uv_poll_stop(p->poll);
    uv_close(reinterpret_cast<uv_handle_t*>(p->poll), PollClosed);
    p->poll = nullptr;
  }
}

static void PolledClose(Polled* p) {
  PolledStop(p);
  if (p->fd >= 0) close(p->fd);
  p->fd = -1;
  napi_env env = p->env;
  if (p->callback) napi_delete_reference(env, p->callback);
  p->callback = nullptr;
  if (p->async) napi_async_destroy(env, p->async);
  p->async = nullptr;
  if (p->self) {
    napi_delete_reference(env, p->self);
    p->self = nullptr;
  }
}

static void PolledFinalize(napi_env env, void* data, void*) {
  auto* p = static_cast<Polled*>(data);
  PolledClose(p);
  ArenaRelease(env, &p->rx);
  ArenaRelease(env, &p->tx);
  delete p;
}

// Calls into JavaScript from a poll callback; an exception thrown there is fatal, as for any
// uncaught exception in Node.
static void CallJs(napi_env env, napi_async_context async, napi_value recv, napi_value cb, size_t argc, napi_value* argv) {
  napi_value result;
  if (napi_make_callback(env, async, recv, cb, argc, argv, &result) == napi_pending_exception) {
    napi_value e;
    napi_get_and_clear_last_exception(env, &e);
    napi_fatal_exception(env, e);
  }
}

static void Deliver(Polled* p, int count) {
  napi_env env = p->env;
  napi_handle_scope scope;
  napi_open_handle_scope(env, &scope);
  napi_value cb, self, arg;
  if (p->callback && napi_get_reference_value(env, p->callback, &cb) == napi_ok &&
      napi_get_reference_value(env, p->self, &self) == napi_ok) {
    napi_create_int32(env, count, &arg);
    CallJs(env, p->async, self, cb, 1, &arg);
  }
  napi_close_handle_scope(env, scope);
}

static void ReadPktinfo(int32_t* meta, msghdr* h) {
  meta[8] = 0;
  for (cmsghdr* c = CMSG_FIRSTHDR(h); c != nullptr; c = CMSG_NXTHDR(h, c)) {
    if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO) {
      in_pktinfo info;
      memcpy(&info, CMSG_DATA(c), sizeof info);
      uint8_t bytes[16] = {0};
      memcpy(bytes, &info.ipi_spec_dst, 4);
      memcpy(&meta[10], bytes, 16);
      meta[9] = info.ipi_ifindex;
      meta[8] = 1;
    } else if (c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_PKTINFO) {
      in6_pktinfo info;
      memcpy(&info, CMSG_DATA(c), sizeof info);
      memcpy(&meta[10], &info.ipi6_addr, 16);
      meta[9] = static_cast<int32_t>(info.ipi6_ifindex);
      meta[8] = 1;
    }
  }
}

static void WriteAddr(int32_t* meta, const sockaddr_storage* sa) {
  uint8_t bytes[16] = {0};
  if (sa->ss_family == AF_INET) {
    auto* s4 = reinterpret_cast<const sockaddr_in*>(sa);
    meta[1] = 4;
    meta[2] = ntohs(s4->sin_port);
    memcpy(bytes, &s4->sin_addr, 4);
  } else {
    auto* s6 = reinterpret_cast<const sockaddr_in6*>(sa);
    meta[1] = 6;
    meta[2] = ntohs(s6->sin6_port);
    memcpy(bytes, &s6->sin6_addr, 16);
    meta[3] = static_cast<int32_t>(s6->sin6_scope_id);
  }
  memcpy(&meta[4], bytes, 16);
}

static int ExpressFilter(Polled* p, int n);

static void OnReadable(uv_poll_t* handle, int status, int events) {
  auto* p = static_cast<Polled*>(handle->data);
  if (status < 0) {
    // libuv reports EPOLLERR this way: for a TUN it means the interface is gone.
    Deliver(p, status == UV_EBADF ? -EBADFD : status);
    return;
  }
  if (!(events & UV_READABLE)) return;
  // A few rounds per wake-up, then back to the loop so other work gets its turn.
  for (int round = 0; round < 4 && p->fd >= 0; round++) {
    int n = 0;
    if (p->isTun) {
      while (static_cast<size_t>(n) < p->rx.slots) {
        ssize_t r = read(p->fd, p->rx.data + n * p->rx.slotSize, p->rx.slotSize);
        if (r < 0) {
          if (errno == EINTR) continue;
          if (errno != EAGAIN && errno != EWOULDBLOCK && n == 0) {
            Deliver(p, -errno);
            return;
          }
          break;
        }
        p->rx.meta[n * kMeta] = static_cast<int32_t>(r);
        n++;
      }
    } else {
      for (size_t i = 0; i < p->rx.slots; i++) {
        p->iovs[i].iov_base = p->rx.data + i * p->rx.slotSize;
        p->iovs[i].iov_len = p->rx.slotSize;
        memset(&p->msgs[i].msg_hdr, 0, sizeof(msghdr));
        p->msgs[i].msg_hdr.msg_iov = &p->iovs[i];
        p->msgs[i].msg_hdr.msg_iovlen = 1;
        p->msgs[i].msg_hdr.msg_name = &p->addrs[i];
        p->msgs[i].msg_hdr.msg_namelen = sizeof(sockaddr_in6);
        p->msgs[i].msg_hdr.msg_control = p->control.data() + i * kControl;
        p->msgs[i].msg_hdr.msg_controllen = kControl;
      }
      int r = recvmmsg(p->fd, p->msgs.data(), p->rx.slots, MSG_DONTWAIT, nullptr);
      if (r < 0) break;
      for (int i = 0; i < r; i++) {
        int32_t* meta = p->rx.meta + i * kMeta;
        // A datagram larger than a slot is truncated: mark it so JavaScript drops it.
        meta[0] = (p->msgs[i].msg_hdr.msg_flags & MSG_TRUNC) ? -1 : static_cast<int32_t>(p->msgs[i].msg_len);
        meta[3] = 0;
        WriteAddr(meta, reinterpret_cast<const sockaddr_storage*>(&p->addrs[i]));
        ReadPktinfo(meta, &p->msgs[i].msg_hdr);
      }
      // The senders' addresses are handed to JavaScript (which wipes them once handled); the
      // copies here do not linger either.
      memset(p->addrs.data(), 0, r * sizeof(sockaddr_in6));
      memset(p->control.data(), 0, r * kControl);
      n = r;
    }
    if (n == 0) break;
    // The fast path takes what it can; JavaScript is entered only for the rest.
    if (p->express == nullptr || ExpressFilter(p, n) > 0) Deliver(p, n);
    if (static_cast<size_t>(n) < p->rx.slots) break;
  }
}

static Polled* PolledThis(napi_env env, napi_callback_info info, size_t* argc, napi_value* argv, napi_value* selfOut = nullptr) {
  napi_value self;
  void* data = nullptr;
  if (napi_get_cb_info(env, info, argc, argv, &self, nullptr) != napi_ok) return nullptr;
  if (napi_unwrap(env, self, &data) != napi_ok || !data) return nullptr;
  if (selfOut) *selfOut = self;
  return static_cast<Polled*>(data);
}

// start(callback(count)): begin polling for readability
static napi_value PolledStart(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], self;
  Polled* p = PolledThis(env, info, &argc, argv, &self);
  if (!p || p->fd < 0) {
    napi_throw_error(env, "ERR_CLOSED", "descriptor is closed");
    return nullptr;
  }
  if (p->poll) return nullptr;
  CHECK(napi_create_reference(env, argv[0], 1, &p->callback));
  CHECK(napi_create_reference(env, self, 1, &p->self));
  napi_value name;
  napi_create_string_utf8(env, "strata:poll", NAPI_AUTO_LENGTH, &name);
  CHECK(napi_async_init(env, self, name, &p->async));
  uv_loop_t* loop;
  CHECK(napi_get_uv_event_loop(env, &loop));
  p->poll = new uv_poll_t;
  p->poll->data = p;
  if (uv_poll_init(loop, p->poll, p->fd) != 0 || uv_poll_start(p->poll, UV_READABLE, OnReadable) != 0) {
    delete p->poll;
    p->poll = nullptr;
    napi_throw_error(env, "ERR_POLL", "cannot poll descriptor");
  }
  return nullptr;
}

static napi_value PolledCloseJs(napi_env env, napi_callback_info info) {
  size_t argc = 0;
  Polled* p = PolledThis(env, info, &argc, nullptr);
  if (p) PolledClose(p);
  return nullptr;
}

static napi_value PolledFd(napi_env env, napi_callback_info info) {
  size_t argc = 0;
  Polled* p = PolledThis(env, info, &argc, nullptr);
  return Num(env, p ? p->fd : -1);
}

// ------------------------------------------------------------------------------------------
// UdpSocket(family 4|6, port, rxData, rxMeta, txData, txMeta, rxSlots, txSlots, slotSize)

static napi_value UdpNew(napi_env env, napi_callback_info info) {
  size_t argc = 9;
  napi_value argv[9], self;
  CHECK(napi_get_cb_info(env, info, &argc, argv, &self, nullptr));
  int32_t family, port, slots, txSlots, slotSize;
  if (argc < 9 || !I32(env, argv[0], &family) || !I32(env, argv[1], &port) || !I32(env, argv[6], &slots) ||
      !I32(env, argv[7], &txSlots) || !I32(env, argv[8], &slotSize) || (family != 4 && family != 6) || port < 0 || port > 65535) {
    napi_throw_type_error(env, "ERR_ARGS", "UdpSocket: bad arguments");
    return nullptr;
  }
  auto* p = new Polled();
  p->env = env;
  p->family = family;
  if (!ArenaFrom(env, argv[2], argv[3], slots, slotSize, &p->rx) || !ArenaFrom(env, argv[4], argv[5], txSlots, slotSize, &p->tx)) {
    ArenaRelease(env, &p->rx);
    ArenaRelease(env, &p->tx);
    delete p;
    napi_throw_range_error(env, "ERR_ARGS", "UdpSocket: arenas too small");
    return nullptr;
  }
  p->msgs.resize(slots > txSlots ? slots : txSlots);
  p->iovs.resize(slots);
  p->addrs.resize(slots);
  p->control.resize((slots > txSlots ? slots : txSlots) * kControl);
  int fd = socket(family == 4 ? AF_INET : AF_INET6, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int err = fd < 0 ? errno : 0;
  if (fd >= 0) {
    int one = 1, size = 7 << 20;
    if (family == 6) {
      setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
      setsockopt(fd, IPPROTO_IPV6, IPV6_RECVPKTINFO, &one, sizeof one);
    } else {
      setsockopt(fd, IPPROTO_IP, IP_PKTINFO, &one, sizeof one);
    }
    // Large buffers as wireguard-go asks; the FORCE variants pass rmem_max when we may.
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size) != 0) setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &size, sizeof size) != 0) setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
    int rc;
    if (family == 4) {
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_port = htons(port);
      a.sin_addr.s_addr = htonl(INADDR_ANY);
      rc = bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
    } else {
      sockaddr_in6 a{};
      a.sin6_family = AF_INET6;
      a.sin6_port = htons(port);
      a.sin6_addr = in6addr_any;
      rc = bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
    }
    if (rc != 0) {
      err = errno;
      close(fd);
      fd = -1;
    }
  }
  if (fd < 0) {
    ArenaRelease(env, &p->rx);
    ArenaRelease(env, &p->tx);
    delete p;
    napi_value e, code, msg;
    const char* name = err == EADDRINUSE ? "EADDRINUSE" : err == EAFNOSUPPORT ? "EAFNOSUPPORT" : err == EADDRNOTAVAIL ? "EADDRNOTAVAIL" : "EIO";
    napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &code);
    napi_create_string_utf8(env, strerror(err), NAPI_AUTO_LENGTH, &msg);
    napi_create_error(env, code, msg, &e);
    napi_set_named_property(env, e, "code", code);
    napi_throw(env, e);
    return nullptr;
  }
  p->fd = fd;
  CHECK(napi_wrap(env, self, p, PolledFinalize, nullptr, nullptr));
  return self;
}

static napi_value UdpPort(napi_env env, napi_callback_info info) {
  size_t argc = 0;
  Polled* p = PolledThis(env, info, &argc, nullptr);
  if (!p || p->fd < 0) return Num(env, 0);
  sockaddr_in6 a{};
  socklen_t len = sizeof a;
  if (getsockname(p->fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) return Num(env, 0);
  return Num(env, ntohs(a.sin6_port));  // sin_port and sin6_port share an offset
}

// Puts the local source address (when known) on an outgoing message as IP(V6)_PKTINFO.
static void WritePktinfo(Polled* p, msghdr* h, const int32_t* meta, uint8_t* control) {
  h->msg_control = nullptr;
  h->msg_controllen = 0;
  if (meta[8] != 1) return;
  memset(control, 0, kControl);
  h->msg_control = control;
  cmsghdr* c;
  if (p->family == 4) {
    h->msg_controllen = CMSG_SPACE(sizeof(in_pktinfo));
    c = CMSG_FIRSTHDR(h);
    c->cmsg_level = IPPROTO_IP;
    c->cmsg_type = IP_PKTINFO;
    c->cmsg_len = CMSG_LEN(sizeof(in_pktinfo));
    in_pktinfo info{};
    memcpy(&info.ipi_spec_dst, &meta[10], 4);
    memcpy(CMSG_DATA(c), &info, sizeof info);
  } else {
    h->msg_controllen = CMSG_SPACE(sizeof(in6_pktinfo));
    c = CMSG_FIRSTHDR(h);
    c->cmsg_level = IPPROTO_IPV6;
    c->cmsg_type = IPV6_PKTINFO;
    c->cmsg_len = CMSG_LEN(sizeof(in6_pktinfo));
    in6_pktinfo info{};
    memcpy(&info.ipi6_addr, &meta[10], 16);
    // The interface matters only for link-local sources.
    if (IN6_IS_ADDR_LINKLOCAL(&info.ipi6_addr)) info.ipi6_ifindex = static_cast<unsigned>(meta[9]);
    memcpy(CMSG_DATA(c), &info, sizeof info);
  }
}

// Sets up one outgoing message to the address in `meta` (slot layout), from its local address.
static void FillMsg(Polled* p, msghdr* h, iovec* iov, sockaddr_in6* addr, const int32_t* meta, uint8_t* control) {
  memset(h, 0, sizeof(msghdr));
  memset(addr, 0, sizeof(sockaddr_in6));
  if (p->family == 4) {
    auto* a = reinterpret_cast<sockaddr_in*>(addr);
    a->sin_family = AF_INET;
    a->sin_port = htons(static_cast<uint16_t>(meta[2]));
    memcpy(&a->sin_addr, &meta[4], 4);
    h->msg_namelen = sizeof(sockaddr_in);
  } else {
    addr->sin6_family = AF_INET6;
    addr->sin6_port = htons(static_cast<uint16_t>(meta[2]));
    memcpy(&addr->sin6_addr, &meta[4], 16);
    addr->sin6_scope_id = static_cast<uint32_t>(meta[3]);
    h->msg_namelen = sizeof(sockaddr_in6);
  }
  h->msg_name = addr;
  h->msg_iov = iov;
  h->msg_iovlen = 1;
  WritePktinfo(p, h, meta, control);
}

// send(count): sends tx slots 0..count-1 with sendmmsg; returns how many went out
static napi_value UdpSend(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  Polled* p = PolledThis(env, info, &argc, argv);
  int32_t count;
  if (!p || argc < 1 || !I32(env, argv[0], &count) || count < 0 || static_cast<size_t>(count) > p->tx.slots) {
    napi_throw_range_error(env, "ERR_ARGS", "send: bad count");
    return nullptr;
  }
  if (p->fd < 0) return Num(env, 0);
  std::vector<mmsghdr>& msgs = p->msgs;
  std::vector<iovec> iovs(count);
  std::vector<sockaddr_in6> addrs(count);
  for (int i = 0; i < count; i++) {
    const int32_t* meta = p->tx.meta + i * kMeta;
    iovs[i].iov_base = p->tx.data + static_cast<size_t>(i) * p->tx.slotSize;
    iovs[i].iov_len = static_cast<size_t>(meta[0]) <= p->tx.slotSize ? meta[0] : 0;
    FillMsg(p, &msgs[i].msg_hdr, &iovs[i], &addrs[i], meta, p->control.data() + i * kControl);
  }
  int sent = 0;
  while (sent < count) {
    int r = sendmmsg(p->fd, msgs.data() + sent, count - sent, MSG_DONTWAIT);
    if (r < 0) {
      if (errno == EINTR) continue;
      // A full buffer drops the rest, as UDP may.
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      // Sending from the local address the peer reached failed (it is gone: EINVAL,
      // ENETUNREACH, EADDRNOTAVAIL...): let the kernel choose the source and retry once.
      if (msgs[sent].msg_hdr.msg_control != nullptr) {
        msgs[sent].msg_hdr.msg_control = nullptr;
        msgs[sent].msg_hdr.msg_controllen = 0;
        continue;
      }
      sent++;  // skip a datagram that cannot go (e.g. EHOSTUNREACH) and go on
      continue;
    }
    sent += r;
  }
  memset(addrs.data(), 0, count * sizeof(sockaddr_in6));
  memset(p->control.data(), 0, count * kControl);
  return Num(env, sent);
}

static napi_value UdpSetMark(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  Polled* p = PolledThis(env, info, &argc, argv);
  int32_t mark;
  if (!p || argc < 1 || napi_get_value_int32(env, argv[0], &mark) != napi_ok) return nullptr;
  uint32_t m = static_cast<uint32_t>(mark);
  if (setsockopt(p->fd, SOL_SOCKET, SO_MARK, &m, sizeof m) != 0) return Num(env, -errno);
  return Num(env, 0);
}

// ------------------------------------------------------------------------------------------
// TunQueue(fd, rxData, rxMeta, slots, slotSize): takes over a TUN descriptor (made non-blocking)

static napi_value TunNew(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5], self;
  CHECK(napi_get_cb_info(env, info, &argc, argv, &self, nullptr));
  int32_t fd, slots, slotSize;
  auto* p = new Polled();
  p->env = env;
  p->isTun = true;
  if (argc < 5 || !I32(env, argv[0], &fd) || !I32(env, argv[3], &slots) || !I32(env, argv[4], &slotSize) || fd < 0 ||
      !ArenaFrom(env, argv[1], argv[2], slots, slotSize, &p->rx)) {
    ArenaRelease(env, &p->rx);
    delete p;
    napi_throw_type_error(env, "ERR_ARGS", "TunQueue: bad arguments");
    return nullptr;
  }
  int flags = fcntl(fd, F_GETFL);
  fcntl(fd, F_SETFL, flags | O_NONBLOCK);
  p->fd = fd;
  CHECK(napi_wrap(env, self, p, PolledFinalize, nullptr, nullptr));
  return self;
}

// write(packet): one packet to the TUN; returns bytes written or -errno
static napi_value TunWrite(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  Polled* p = PolledThis(env, info, &argc, argv);
  uint8_t* data;
  size_t len;
  if (!p || argc < 1 || !Bytes(env, argv[0], &data, &len)) {
    napi_throw_type_error(env, "ERR_ARGS", "write: bad arguments");
    return nullptr;
  }
  if (p->fd < 0) return Num(env, -EBADF);
  ssize_t r;
  do r = write(p->fd, data, len);
  while (r < 0 && errno == EINTR);
  return Num(env, r < 0 ? -errno : static_cast<double>(r));
}

// ------------------------------------------------------------------------------------------
// Express: a relay's transport-data fast path.
//
// JavaScript hands over a client ("peer": its endpoint, its inner hop addresses, its forward
// sockets) and the responder sessions it has confirmed (keys, and the send counter and replay
// window as shared typed arrays, so both sides keep one state). For those, data messages are
// opened, replay-checked, source-checked and forwarded to an allowed next hop (or written to the
// exit TUN) right here; replies from the next hop and packets from the TUN are sealed and sent
// back. Whatever this cannot take whole (handshakes, unknown indices, a datagram from a new
// address, a session near its limits) goes to JavaScript untouched, which keeps timers,
// roaming and rekeying. Events are counted per peer for JavaScript to fold into its timers.
// Nothing here logs; a peer's addresses are wiped when it is removed.

static const int kEv = 10;     // per-peer events, see XEvent
static const int kStats = 8;   // aggregate counters, see XStat

enum XEvent { kRxPackets, kRxData, kTxPackets, kTxData, kRxBytes, kTxBytes, kLastRx, kLastRxData, kLastTx, kLastTxData };
enum XStat { kForwarded, kForwardedBytes, kReplies, kExit, kRefused, kDecryptFail, kReplay, kInnerDrop };

using Addr16 = std::array<uint8_t, 16>;
using NextHop = std::array<uint8_t, 19>;  // family, address (16), port (big-endian)

struct XSession;

struct XDest {
  NextHop hop;
  uint16_t clientPort;
};

struct XPeer {
  uint32_t id = 0;
  int32_t ep[kMeta] = {0};  // the client's endpoint, slot-meta layout
  uint8_t v4[4] = {0};
  Addr16 v6{};
  Polled* fwd[2] = {nullptr, nullptr};
  napi_ref fwdRef[2] = {nullptr, nullptr};
  std::vector<XDest> dests;
  XSession* send = nullptr;  // the current session, used to seal replies
  double* ev = nullptr;
  napi_ref evRef = nullptr;
};

struct XSession {
  uint32_t localIndex = 0, remoteIndex = 0;
  XPeer* peer = nullptr;
  Aead* sendKey = nullptr;
  Aead* recvKey = nullptr;
  uint64_t* counter = nullptr;     // BigUint64Array(1), the next counter to send
  uint64_t* replayLast = nullptr;  // BigUint64Array(1)
  uint32_t* ring = nullptr;        // Uint32Array(256)
  uint64_t rxUntil = 0, txUntil = 0;  // uv_hrtime deadlines
  std::vector<napi_ref> refs;
};

struct Express {
  napi_env env = nullptr;
  Polled* main[2] = {nullptr, nullptr};
  Polled* tun = nullptr;
  std::vector<napi_ref> attachedRefs;
  std::unordered_map<uint32_t, XSession*> byIndex;
  std::unordered_map<uint32_t, XPeer*> peers;
  std::unordered_map<uint32_t, XPeer*> byV4;
  std::map<Addr16, XPeer*> byV6;
  std::set<NextHop> allowed;
  double* stats = nullptr;
  napi_ref statsRef = nullptr;
  napi_ref onInner = nullptr;  // onInner(peerId, packet): an inner packet this cannot send
  int mtu = 0;
  uint64_t rekeyAfterMessages = 0, rejectAfterMessages = 0, replayWindow = 0;
  double seq = 0;
  std::vector<uint8_t> scratch;
  uint8_t control[kControl];
};

static inline uint32_t Le32(const uint8_t* p) { return p[0] | (p[1] << 8) | (p[2] << 16) | (static_cast<uint32_t>(p[3]) << 24); }
static inline uint64_t Le64(const uint8_t* p) { return Le32(p) | (static_cast<uint64_t>(Le32(p + 4)) << 32); }
static inline void PutLe32(uint8_t* p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = static_cast<uint8_t>(v >> (8 * i)); }
static inline void PutLe64(uint8_t* p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = static_cast<uint8_t>(v >> (8 * i)); }
static inline uint16_t Be16(const uint8_t* p) { return static_cast<uint16_t>((p[0] << 8) | p[1]); }
static inline void PutBe16(uint8_t* p, uint16_t v) { p[0] = v >> 8; p[1] = v & 0xff; }

static NextHop HopKey(int family, const uint8_t* addr, uint16_t port) {
  NextHop k{};
  k[0] = static_cast<uint8_t>(family);
  memcpy(&k[1], addr, family == 4 ? 4 : 16);
  PutBe16(&k[17], port);
  return k;
}

// The replay window of src/wireguard/replay.ts (RFC 6479, 8192-bit ring), on the same memory.
static bool ReplayValidate(XSession* s, uint64_t counter, uint64_t limit, uint64_t window) {
  if (counter >= limit) return false;
  uint64_t block = counter >> 5;
  uint64_t last = *s->replayLast;
  if (counter > last) {
    uint64_t current = last >> 5;
    uint64_t diff = block - current;
    if (diff > 256) diff = 256;
    size_t i = (current + 1) & 255;
    for (uint64_t k = 0; k < diff; k++) {
      s->ring[i] = 0;
      i = (i + 1) & 255;
    }
    *s->replayLast = counter;
  } else if (last - counter > window) {
    return false;
  }
  size_t index = block & 255;
  uint32_t bit = 1u << (counter & 31);
  if (s->ring[index] & bit) return false;
  s->ring[index] |= bit;
  return true;
}

static void Event(Express* x, XPeer* peer, bool rx, bool data, size_t bytes) {
  double* e = peer->ev;
  double seq = ++x->seq;
  if (rx) {
    e[kRxPackets]++;
    e[kRxBytes] += static_cast<double>(bytes);
    e[kLastRx] = seq;
    if (data) {
      e[kRxData]++;
      e[kLastRxData] = seq;
    }
  } else {
    e[kTxPackets]++;
    e[kTxBytes] += static_cast<double>(bytes);
    e[kLastTx] = seq;
    if (data) {
      e[kTxData]++;
      e[kLastTxData] = seq;
    }
  }
}

// Sends one datagram from socket `s` to the address in `meta` (slot layout).
static void SendOne(Express* x, Polled* s, const int32_t* meta, uint8_t* data, size_t len) {
  if (s == nullptr || s->fd < 0) return;
  msghdr h;
  iovec iov{data, len};
  sockaddr_in6 addr;
  FillMsg(s, &h, &iov, &addr, meta, x->control);
  for (;;) {
    if (sendmsg(s->fd, &h, MSG_DONTWAIT) >= 0 || errno == EAGAIN || errno == EWOULDBLOCK) break;
    if (errno == EINTR) continue;
    if (h.msg_control == nullptr) break;
    h.msg_control = nullptr;  // the local address is gone: let the kernel choose (as UdpSend)
    h.msg_controllen = 0;
  }
  OPENSSL_cleanse(&addr, sizeof addr);
  OPENSSL_cleanse(x->control, kControl);
}

// Whether a session may still seal: the limits of the core's fast path (src/wireguard/core.ts).
static bool MaySend(Express* x, XSession* s, uint64_t now) {
  return s != nullptr && s->sendKey->enc != nullptr && *s->counter < x->rekeyAfterMessages && now < s->txUntil;
}

// Seals `n` bytes at scratch+16 in place as a transport message of session `s` and sends it
// to the peer's endpoint from the main socket of its family.
static void SealAndSend(Express* x, XSession* s, size_t n) {
  XPeer* peer = s->peer;
  size_t unit = n;
  size_t mtu = static_cast<size_t>(x->mtu);
  if (mtu > 0 && unit > mtu) unit %= mtu;
  size_t padded = (unit + 15) & ~static_cast<size_t>(15);
  if (mtu > 0 && padded > mtu) padded = mtu;
  size_t pad = padded - unit;
  uint8_t* d = x->scratch.data();
  uint64_t counter = (*s->counter)++;
  d[0] = 4;
  d[1] = d[2] = d[3] = 0;
  PutLe32(d + 4, s->remoteIndex);
  PutLe64(d + 8, counter);
  if (!SealInto(s->sendKey, counter, d + 16, n, pad, d + 16)) {
    OPENSSL_cleanse(d, 16 + n);
    return;
  }
  size_t total = 16 + n + pad + 16;
  SendOne(x, x->main[peer->ep[1] == 4 ? 0 : 1], peer->ep, d, total);
  Event(x, peer, false, n > 0, total);
}

// Hands JavaScript an opened inner packet, as a view of the receive arena valid during the call.
static void HandInner(Express* x, Polled* from, XPeer* peer, const uint8_t* packet, size_t len) {
  napi_env env = x->env;
  napi_handle_scope scope;
  napi_open_handle_scope(env, &scope);
  napi_value cb, ab, view, args[2], global;
  if (x->onInner && from->async && napi_get_reference_value(env, x->onInner, &cb) == napi_ok &&
      napi_get_reference_value(env, from->rx.dataRef, &ab) == napi_ok &&
      napi_create_typedarray(env, napi_uint8_array, len, ab, static_cast<size_t>(packet - from->rx.data), &view) == napi_ok) {
    napi_create_uint32(env, peer->id, &args[0]);
    args[1] = view;
    napi_get_global(env, &global);
    CallJs(env, from->async, global, cb, 2, args);
  }
  napi_close_handle_scope(env, scope);
}

static bool SameEndpoint(const int32_t* a, const int32_t* b) {
  if (a[1] != b[1] || a[2] != b[2] || memcmp(&a[4], &b[4], 16) != 0 || a[8] != b[8]) return false;
  return a[8] != 1 || (a[9] == b[9] && memcmp(&a[10], &b[10], 16) == 0);
}

// A datagram on a main socket: a data message of a handed-over session, from its endpoint.
static bool XFromClient(Express* x, Polled* from, const int32_t* meta, uint8_t* d, size_t len) {
  if (len < 32 || d[0] != 4 || d[1] != 0 || d[2] != 0 || d[3] != 0) return false;
  auto it = x->byIndex.find(Le32(d + 4));
  if (it == x->byIndex.end()) return false;
  XSession* s = it->second;
  XPeer* peer = s->peer;
  if (!SameEndpoint(peer->ep, meta) || s->recvKey->dec == nullptr || uv_hrtime() >= s->rxUntil) return false;
  uint64_t counter = Le64(d + 8);
  uint8_t* p = d + 16;
  if (!OpenInto(s->recvKey, counter, p, len - 16, p)) {
    x->stats[kDecryptFail]++;
    return true;
  }
  size_t n = len - 32;
  if (!ReplayValidate(s, counter, x->rejectAfterMessages, x->replayWindow)) {
    x->stats[kReplay]++;
    return true;
  }
  Event(x, peer, true, n > 0, len);
  if (n == 0) return true;  // a keepalive
  // The inner packet: trimmed to its IP length, its source the client's own hop address.
  int version = p[0] >> 4;
  size_t total;
  if (version == 4 && n >= 20) {
    total = Be16(p + 2);
    if (total > n || total < 20 || memcmp(p + 12, peer->v4, 4) != 0) total = 0;
  } else if (version == 6 && n >= 40) {
    total = Be16(p + 4) + 40;
    if (total > n || memcmp(p + 8, peer->v6.data(), 16) != 0) total = 0;
  } else {
    total = 0;
  }
  if (total == 0) {
    x->stats[kInnerDrop]++;
    return true;
  }
  // UDP to a relay this one may forward to (the rule of src/cascade/udpip.ts parseUdp): out
  // through the client's own socket for that family.
  size_t u = 0;
  if (version == 4) {
    size_t ihl = (p[0] & 0x0f) * 4;
    if (ihl >= 20 && total >= ihl + 8 && p[9] == 17 && ((p[6] & 0x3f) | p[7]) == 0) u = ihl;
  } else if (total >= 48 && p[6] == 17) {
    u = 40;
  }
  if (u != 0) {
    size_t udpLen = Be16(p + u + 4);
    if (udpLen >= 8 && u + udpLen <= total) {
      const uint8_t* dst = p + (version == 4 ? 16 : 24);
      NextHop hop = HopKey(version, dst, Be16(p + u + 2));
      if (x->allowed.count(hop) != 0) {
        Polled* out = peer->fwd[version == 4 ? 0 : 1];
        if (out == nullptr || out->fd < 0) {
          // No socket of this family yet: JavaScript opens one and sends the datagram.
          HandInner(x, from, peer, p, total);
          return true;
        }
        uint16_t clientPort = Be16(p + u);
        bool known = false;
        for (XDest& dd : peer->dests)
          if (dd.hop == hop) dd.clientPort = clientPort, known = true;
        if (!known) peer->dests.push_back({hop, clientPort});
        int32_t to[kMeta] = {0};
        to[1] = version;
        to[2] = Be16(p + u + 2);
        memcpy(&to[4], dst, version == 4 ? 4 : 16);
        SendOne(x, out, to, p + u + 8, udpLen - 8);
        x->stats[kForwarded]++;
        x->stats[kForwardedBytes] += static_cast<double>(udpLen - 8);
        return true;
      }
    }
  }
  if (x->tun != nullptr && x->tun->fd >= 0) {
    ssize_t r;
    do r = write(x->tun->fd, p, total);
    while (r < 0 && errno == EINTR);
    x->stats[kExit]++;
    return true;
  }
  x->stats[kRefused]++;
  return true;
}

// A datagram on a client's forward socket: a reply from a next hop it wrote to.
static bool XFromNext(Express* x, XPeer* peer, const int32_t* meta, const uint8_t* d, size_t len) {
  int family = meta[1];
  NextHop hop = HopKey(family, reinterpret_cast<const uint8_t*>(&meta[4]), static_cast<uint16_t>(meta[2]));
  const XDest* dest = nullptr;
  for (const XDest& dd : peer->dests)
    if (dd.hop == hop) dest = &dd;
  // A next hop native code has not written to (JavaScript may have, before the hand-over):
  // JavaScript maps it, or counts it unknown.
  if (dest == nullptr) return false;
  XSession* s = peer->send;
  size_t ipLen = family == 4 ? 20 : 40;
  size_t udpLen = 8 + len;
  if (!MaySend(x, s, uv_hrtime()) || 16 + ipLen + udpLen + 32 > x->scratch.size()) return false;
  // The reply as the client's layer expects it: from the next hop to the client's hop address
  // (src/cascade/udpip.ts buildUdp; no UDP checksum over IPv4, a full one over IPv6).
  uint8_t* ip = x->scratch.data() + 16;
  memset(ip, 0, ipLen + 8);
  const uint8_t* src = reinterpret_cast<const uint8_t*>(&meta[4]);
  uint8_t* udp = ip + ipLen;
  if (family == 4) {
    ip[0] = 0x45;
    PutBe16(ip + 2, static_cast<uint16_t>(ipLen + udpLen));
    ip[6] = 0x40;
    ip[8] = 64;
    ip[9] = 17;
    memcpy(ip + 12, src, 4);
    memcpy(ip + 16, peer->v4, 4);
    uint32_t sum = 0;
    for (size_t i = 0; i < 20; i += 2) sum += Be16(ip + i);
    while (sum > 0xffff) sum = (sum & 0xffff) + (sum >> 16);
    PutBe16(ip + 10, static_cast<uint16_t>(~sum & 0xffff));
  } else {
    ip[0] = 0x60;
    PutBe16(ip + 4, static_cast<uint16_t>(udpLen));
    ip[6] = 17;
    ip[7] = 64;
    memcpy(ip + 8, src, 16);
    memcpy(ip + 24, peer->v6.data(), 16);
  }
  PutBe16(udp, static_cast<uint16_t>(meta[2]));
  PutBe16(udp + 2, dest->clientPort);
  PutBe16(udp + 4, static_cast<uint16_t>(udpLen));
  memcpy(udp + 8, d, len);
  if (family == 6) {
    uint64_t sum = 17 + udpLen;
    for (size_t i = 8; i < 40; i += 2) sum += Be16(ip + i);
    for (size_t i = 0; i + 1 < udpLen; i += 2) sum += Be16(udp + i);
    if (udpLen & 1) sum += static_cast<uint32_t>(udp[udpLen - 1]) << 8;
    while (sum > 0xffff) sum = (sum & 0xffff) + (sum >> 16);
    uint16_t c = static_cast<uint16_t>(~sum & 0xffff);
    PutBe16(udp + 6, c == 0 ? 0xffff : c);
  }
  SealAndSend(x, s, ipLen + udpLen);
  x->stats[kReplies]++;
  return true;
}

// A packet from the exit TUN, for a client whose hop address it is sent to.
static bool XFromTun(Express* x, const uint8_t* d, size_t len) {
  XPeer* peer = nullptr;
  int version = len > 0 ? d[0] >> 4 : 0;
  if (version == 4 && len >= 20) {
    auto it = x->byV4.find(Le32(d + 16));
    if (it != x->byV4.end()) peer = it->second;
  } else if (version == 6 && len >= 40) {
    Addr16 a;
    memcpy(a.data(), d + 24, 16);
    auto it = x->byV6.find(a);
    if (it != x->byV6.end()) peer = it->second;
  }
  if (peer == nullptr || !MaySend(x, peer->send, uv_hrtime()) || 16 + len + 32 > x->scratch.size()) return false;
  memcpy(x->scratch.data() + 16, d, len);
  SealAndSend(x, peer->send, len);
  return true;
}

static int ExpressFilter(Polled* p, int n) {
  Express* x = p->express;
  int left = 0;
  for (int i = 0; i < n; i++) {
    int32_t* meta = p->rx.meta + i * kMeta;
    uint8_t* d = p->rx.data + static_cast<size_t>(i) * p->rx.slotSize;
    int32_t len = meta[0];
    bool done = false;
    if (len >= 0) {
      if (p->isTun) done = XFromTun(x, d, len);
      else if (p->xpeer != nullptr) done = XFromNext(x, p->xpeer, meta, d, len);
      else done = XFromClient(x, p, meta, d, len);
    }
    if (done) {
      // Taken here: no plaintext and no address stays in the arena; JavaScript skips it.
      OPENSSL_cleanse(d, len);
      OPENSSL_cleanse(meta, kMeta * sizeof(int32_t));
      meta[0] = -2;
    } else {
      left++;
    }
  }
  return left;
}

static void XSessionFree(napi_env env, XSession* s) {
  for (napi_ref r : s->refs) napi_delete_reference(env, r);
  delete s;
}

static void XRemoveSession(Express* x, uint32_t index) {
  auto it = x->byIndex.find(index);
  if (it == x->byIndex.end()) return;
  XSession* s = it->second;
  x->byIndex.erase(it);
  if (s->peer->send == s) s->peer->send = nullptr;
  XSessionFree(x->env, s);
}

static void XRemovePeer(Express* x, uint32_t id) {
  auto it = x->peers.find(id);
  if (it == x->peers.end()) return;
  XPeer* peer = it->second;
  x->peers.erase(it);
  for (auto s = x->byIndex.begin(); s != x->byIndex.end();) {
    if (s->second->peer == peer) {
      XSessionFree(x->env, s->second);
      s = x->byIndex.erase(s);
    } else {
      ++s;
    }
  }
  auto v4 = x->byV4.find(Le32(peer->v4));
  if (v4 != x->byV4.end() && v4->second == peer) x->byV4.erase(v4);
  auto v6 = x->byV6.find(peer->v6);
  if (v6 != x->byV6.end() && v6->second == peer) x->byV6.erase(v6);
  for (int f = 0; f < 2; f++) {
    if (peer->fwd[f]) peer->fwd[f]->express = nullptr, peer->fwd[f]->xpeer = nullptr;
    if (peer->fwdRef[f]) napi_delete_reference(x->env, peer->fwdRef[f]);
  }
  if (peer->evRef) napi_delete_reference(x->env, peer->evRef);
  // The client's endpoint, hop addresses and next hops do not outlive it.
  if (!peer->dests.empty()) OPENSSL_cleanse(peer->dests.data(), peer->dests.size() * sizeof(XDest));
  OPENSSL_cleanse(peer->ep, sizeof peer->ep);
  OPENSSL_cleanse(peer->v4, sizeof peer->v4);
  OPENSSL_cleanse(peer->v6.data(), 16);
  delete peer;
}

static void XDestroy(Express* x) {
  std::vector<uint32_t> ids;
  for (auto& kv : x->peers) ids.push_back(kv.first);
  for (uint32_t id : ids) XRemovePeer(x, id);
  for (Polled* p : {x->main[0], x->main[1], x->tun})
    if (p) p->express = nullptr;
  x->main[0] = x->main[1] = x->tun = nullptr;
  for (napi_ref r : x->attachedRefs) napi_delete_reference(x->env, r);
  x->attachedRefs.clear();
  if (x->statsRef) napi_delete_reference(x->env, x->statsRef);
  if (x->onInner) napi_delete_reference(x->env, x->onInner);
  x->statsRef = x->onInner = nullptr;
  x->allowed.clear();
  OPENSSL_cleanse(x->scratch.data(), x->scratch.size());
}

static void ExpressFinalize(napi_env, void* data, void*) {
  auto* x = static_cast<Express*>(data);
  XDestroy(x);
  delete x;
}

static Express* ExpressThis(napi_env env, napi_callback_info info, size_t* argc, napi_value* argv) {
  napi_value self;
  void* data = nullptr;
  if (napi_get_cb_info(env, info, argc, argv, &self, nullptr) != napi_ok) return nullptr;
  if (napi_unwrap(env, self, &data) != napi_ok || !data) return nullptr;
  return static_cast<Express*>(data);
}

static bool Unwrapped(napi_env env, napi_value v, void** out) {
  napi_valuetype t;
  return napi_typeof(env, v, &t) == napi_ok && t == napi_object && napi_unwrap(env, v, out) == napi_ok && *out != nullptr;
}

#define ARGS_ERROR(what)                                      \
  do {                                                        \
    napi_throw_type_error(env, "ERR_ARGS", "Express: " what); \
    return nullptr;                                           \
  } while (0)

// Express(stats: Float64Array(8), mtu, rekeyAfterMessages, rejectAfterMessages, replayWindow,
//         onInner(peerId, packet))
static napi_value ExpressNew(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6], self;
  CHECK(napi_get_cb_info(env, info, &argc, argv, &self, nullptr));
  uint8_t* stats;
  size_t statsLen;
  int32_t mtu;
  uint64_t rekey, reject, window;
  napi_valuetype cbType;
  if (argc < 6 || napi_typeof(env, argv[5], &cbType) != napi_ok || cbType != napi_function || !Bytes(env, argv[0], &stats, &statsLen) || statsLen < kStats * sizeof(double) || !I32(env, argv[1], &mtu) ||
      !U64(env, argv[2], &rekey) || !U64(env, argv[3], &reject) || !U64(env, argv[4], &window) || mtu < 0 ||
      reinterpret_cast<uintptr_t>(stats) % 8 != 0)
    ARGS_ERROR("bad arguments");
  auto* x = new Express();
  x->env = env;
  x->stats = reinterpret_cast<double*>(stats);
  napi_create_reference(env, argv[0], 1, &x->statsRef);
  napi_create_reference(env, argv[5], 1, &x->onInner);
  x->mtu = mtu;
  x->rekeyAfterMessages = rekey;
  x->rejectAfterMessages = reject;
  x->replayWindow = window;
  x->scratch.resize(65536 + 128);
  CHECK(napi_wrap(env, self, x, ExpressFinalize, nullptr, nullptr));
  return self;
}

// attach(socketOrTun): takes data messages from a relay's main socket (or its exit TUN)
static napi_value ExpressAttach(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  Express* x = ExpressThis(env, info, &argc, argv);
  void* data;
  if (!x || argc < 1 || !Unwrapped(env, argv[0], &data)) ARGS_ERROR("attach: not a socket or TUN");
  auto* p = static_cast<Polled*>(data);
  if (p->isTun) x->tun = p;
  else if (p->family == 4) x->main[0] = p;
  else x->main[1] = p;
  p->express = x;
  napi_ref r;
  napi_create_reference(env, argv[0], 1, &r);
  x->attachedRefs.push_back(r);
  return nullptr;
}

// setAllowed(records: Uint8Array): 19-byte records (family, address 16, port big-endian)
static napi_value ExpressSetAllowed(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  Express* x = ExpressThis(env, info, &argc, argv);
  uint8_t* rec;
  size_t len;
  if (!x || argc < 1 || !Bytes(env, argv[0], &rec, &len) || len % 19 != 0) ARGS_ERROR("setAllowed: bad records");
  x->allowed.clear();
  for (size_t i = 0; i < len; i += 19) {
    NextHop k;
    memcpy(k.data(), rec + i, 19);
    x->allowed.insert(k);
  }
  return nullptr;
}

static bool EndpointMeta(napi_env env, napi_value v, int32_t out[kMeta]) {
  uint8_t* m;
  size_t len;
  if (!Bytes(env, v, &m, &len) || len < kMeta * sizeof(int32_t)) return false;
  memcpy(out, m, kMeta * sizeof(int32_t));
  return out[1] == 4 || out[1] == 6;
}

// addPeer(id, endpoint: Int32Array(16), v4, v6, events: Float64Array(10))
static napi_value ExpressAddPeer(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  Express* x = ExpressThis(env, info, &argc, argv);
  uint32_t id;
  uint8_t *v4, *v6, *ev;
  size_t v4Len, v6Len, evLen;
  int32_t ep[kMeta];
  if (!x || argc < 5 || napi_get_value_uint32(env, argv[0], &id) != napi_ok || !EndpointMeta(env, argv[1], ep) ||
      !Bytes(env, argv[2], &v4, &v4Len) || v4Len != 4 || !Bytes(env, argv[3], &v6, &v6Len) || v6Len != 16 ||
      !Bytes(env, argv[4], &ev, &evLen) || evLen < kEv * sizeof(double) || reinterpret_cast<uintptr_t>(ev) % 8 != 0)
    ARGS_ERROR("addPeer: bad arguments");
  XRemovePeer(x, id);
  auto* peer = new XPeer();
  peer->id = id;
  memcpy(peer->ep, ep, sizeof ep);
  memcpy(peer->v4, v4, 4);
  memcpy(peer->v6.data(), v6, 16);
  peer->ev = reinterpret_cast<double*>(ev);
  napi_create_reference(env, argv[4], 1, &peer->evRef);
  OPENSSL_cleanse(ep, sizeof ep);  // the client's address does not stay on the stack
  x->peers[id] = peer;
  x->byV4[Le32(peer->v4)] = peer;
  x->byV6[peer->v6] = peer;
  return nullptr;
}

static XPeer* PeerArg(napi_env env, Express* x, napi_value v) {
  uint32_t id;
  if (napi_get_value_uint32(env, v, &id) != napi_ok) return nullptr;
  auto it = x->peers.find(id);
  return it == x->peers.end() ? nullptr : it->second;
}

// setEndpoint(id, endpoint: Int32Array(16)): the client roamed (JavaScript saw it first)
static napi_value ExpressSetEndpoint(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  Express* x = ExpressThis(env, info, &argc, argv);
  XPeer* peer = x && argc >= 2 ? PeerArg(env, x, argv[0]) : nullptr;
  int32_t ep[kMeta];
  if (!peer || !EndpointMeta(env, argv[1], ep)) ARGS_ERROR("setEndpoint: bad arguments");
  memcpy(peer->ep, ep, sizeof ep);
  OPENSSL_cleanse(ep, sizeof ep);
  return nullptr;
}

// setForward(id, socket): the client's forward socket for one family
static napi_value ExpressSetForward(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  Express* x = ExpressThis(env, info, &argc, argv);
  XPeer* peer = x && argc >= 2 ? PeerArg(env, x, argv[0]) : nullptr;
  void* data;
  if (!peer || !Unwrapped(env, argv[1], &data)) ARGS_ERROR("setForward: bad arguments");
  auto* p = static_cast<Polled*>(data);
  int f = p->family == 4 ? 0 : 1;
  if (peer->fwdRef[f]) napi_delete_reference(env, peer->fwdRef[f]);
  if (peer->fwd[f]) peer->fwd[f]->express = nullptr, peer->fwd[f]->xpeer = nullptr;
  peer->fwd[f] = p;
  napi_create_reference(env, argv[1], 1, &peer->fwdRef[f]);
  p->express = x;
  p->xpeer = peer;
  return nullptr;
}

// Calls `remove(x, n)` with the one u32 argument.
static napi_value ExpressRemoveBy(napi_env env, napi_callback_info info, void (*remove)(Express*, uint32_t)) {
  size_t argc = 1;
  napi_value argv[1];
  Express* x = ExpressThis(env, info, &argc, argv);
  uint32_t n;
  if (!x || argc < 1 || napi_get_value_uint32(env, argv[0], &n) != napi_ok) ARGS_ERROR("remove: bad arguments");
  remove(x, n);
  return nullptr;
}

// removePeer(id): forgets a client, its sessions and its addresses
static napi_value ExpressRemovePeer(napi_env env, napi_callback_info info) { return ExpressRemoveBy(env, info, XRemovePeer); }

// addSession(peerId, localIndex, remoteIndex, send: Aead, recv: Aead, counter: BigUint64Array(1),
//            replayLast: BigUint64Array(1), replayRing: Uint32Array(256), rxMs, txMs, current)
static napi_value ExpressAddSession(napi_env env, napi_callback_info info) {
  size_t argc = 11;
  napi_value argv[11];
  Express* x = ExpressThis(env, info, &argc, argv);
  XPeer* peer = x && argc >= 11 ? PeerArg(env, x, argv[0]) : nullptr;
  uint32_t localIndex, remoteIndex;
  void *sendKey, *recvKey;
  uint8_t *counter, *last, *ring;
  size_t counterLen, lastLen, ringLen;
  double rxMs, txMs;
  bool current;
  if (!peer || napi_get_value_uint32(env, argv[1], &localIndex) != napi_ok || napi_get_value_uint32(env, argv[2], &remoteIndex) != napi_ok ||
      !Unwrapped(env, argv[3], &sendKey) || !Unwrapped(env, argv[4], &recvKey) || !Bytes(env, argv[5], &counter, &counterLen) ||
      counterLen != 8 || !Bytes(env, argv[6], &last, &lastLen) || lastLen != 8 || !Bytes(env, argv[7], &ring, &ringLen) ||
      ringLen != 1024 || napi_get_value_double(env, argv[8], &rxMs) != napi_ok || napi_get_value_double(env, argv[9], &txMs) != napi_ok ||
      napi_get_value_bool(env, argv[10], &current) != napi_ok || reinterpret_cast<uintptr_t>(counter) % 8 != 0 ||
      reinterpret_cast<uintptr_t>(last) % 8 != 0 || reinterpret_cast<uintptr_t>(ring) % 4 != 0)
    ARGS_ERROR("addSession: bad arguments");
  if (static_cast<Aead*>(sendKey)->enc == nullptr || static_cast<Aead*>(recvKey)->dec == nullptr) ARGS_ERROR("addSession: keys destroyed");
  XRemoveSession(x, localIndex);
  auto* s = new XSession();
  s->localIndex = localIndex;
  s->remoteIndex = remoteIndex;
  s->peer = peer;
  s->sendKey = static_cast<Aead*>(sendKey);
  s->recvKey = static_cast<Aead*>(recvKey);
  s->counter = reinterpret_cast<uint64_t*>(counter);
  s->replayLast = reinterpret_cast<uint64_t*>(last);
  s->ring = reinterpret_cast<uint32_t*>(ring);
  uint64_t now = uv_hrtime();
  s->rxUntil = now + static_cast<uint64_t>(rxMs > 0 ? rxMs * 1e6 : 0);
  s->txUntil = now + static_cast<uint64_t>(txMs > 0 ? txMs * 1e6 : 0);
  for (int i = 3; i <= 7; i++) {
    napi_ref r;
    napi_create_reference(env, argv[i], 1, &r);
    s->refs.push_back(r);
  }
  x->byIndex[localIndex] = s;
  if (current) peer->send = s;
  return nullptr;
}

// removeSession(localIndex)
static napi_value ExpressRemoveSession(napi_env env, napi_callback_info info) { return ExpressRemoveBy(env, info, XRemoveSession); }

static napi_value ExpressDestroyJs(napi_env env, napi_callback_info info) {
  size_t argc = 0;
  Express* x = ExpressThis(env, info, &argc, nullptr);
  if (x) XDestroy(x);
  return nullptr;
}

// ------------------------------------------------------------------------------------------

static napi_value DefineClass(napi_env env, const char* name, napi_callback ctor, std::vector<napi_property_descriptor> props) {
  napi_value cls;
  if (napi_define_class(env, name, NAPI_AUTO_LENGTH, ctor, nullptr, props.size(), props.data(), &cls) != napi_ok) return nullptr;
  return cls;
}

#define METHOD(name, fn) {name, nullptr, fn, nullptr, nullptr, nullptr, napi_default, nullptr}

static napi_value Init(napi_env env, napi_value exports) {
  napi_value aead = DefineClass(env, "Aead", AeadNew, {METHOD("seal", AeadSeal), METHOD("open", AeadOpen), METHOD("destroy", AeadDestroy)});
  napi_value udp = DefineClass(env, "UdpSocket", UdpNew,
                               {METHOD("start", PolledStart), METHOD("send", UdpSend), METHOD("port", UdpPort),
                                METHOD("setMark", UdpSetMark), METHOD("close", PolledCloseJs), METHOD("fd", PolledFd)});
  napi_value tun = DefineClass(env, "TunQueue", TunNew,
                               {METHOD("start", PolledStart), METHOD("write", TunWrite), METHOD("close", PolledCloseJs), METHOD("fd", PolledFd)});
  napi_value express = DefineClass(env, "Express", ExpressNew,
                                   {METHOD("attach", ExpressAttach), METHOD("setAllowed", ExpressSetAllowed), METHOD("addPeer", ExpressAddPeer),
                                    METHOD("setEndpoint", ExpressSetEndpoint), METHOD("setForward", ExpressSetForward),
                                    METHOD("removePeer", ExpressRemovePeer), METHOD("addSession", ExpressAddSession),
                                    METHOD("removeSession", ExpressRemoveSession), METHOD("destroy", ExpressDestroyJs)});
  napi_set_named_property(env, exports, "Express", express);
  napi_set_named_property(env, exports, "Aead", aead);
  napi_set_named_property(env, exports, "UdpSocket", udp);
  napi_set_named_property(env, exports, "TunQueue", tun);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, Init)
