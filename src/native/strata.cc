// strata_native: the hot path of the Strata data plane, behind the same interfaces as the pure
// TypeScript path (which stays as the tested fallback).
//
//   Aead       ChaCha20-Poly1305 with OpenSSL contexts kept per key (the OpenSSL inside Node,
//              the same primitive node:crypto uses), sealing and opening into caller buffers.
//   UdpSocket  a non-blocking UDP socket polled by libuv, reading with recvmmsg and writing
//              with sendmmsg through shared slot arenas; SO_MARK.
//   TunQueue   a non-blocking TUN descriptor polled by libuv, reading batches of packets.
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

#include <cstdint>
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
  static const uint8_t zeros[16] = {0};
  uint8_t nonce[12];
  Nonce(nonce, counter);
  int n = 0, m = 0;
  uint8_t* out = dst + off;
  bool ok = EVP_EncryptInit_ex(a->enc, nullptr, nullptr, nullptr, nonce) == 1 &&
            EVP_EncryptUpdate(a->enc, out, &n, src, static_cast<int>(srcLen)) == 1 &&
            (pad == 0 || EVP_EncryptUpdate(a->enc, out + n, &m, zeros, pad) == 1) &&
            EVP_EncryptFinal_ex(a->enc, out + n + m, &m) == 1 &&
            EVP_CIPHER_CTX_ctrl(a->enc, EVP_CTRL_AEAD_GET_TAG, 16, out + srcLen + pad) == 1;
  if (!ok) {
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
  uint8_t nonce[12];
  Nonce(nonce, counter);
  size_t n = srcLen - 16;
  uint8_t tag[16];
  memcpy(tag, src + n, 16);  // the tag may be overwritten when decrypting in place
  int outl = 0, fin = 0;
  uint8_t* out = dst + off;
  bool ok = EVP_DecryptInit_ex(a->dec, nullptr, nullptr, nullptr, nonce) == 1 &&
            EVP_CIPHER_CTX_ctrl(a->dec, EVP_CTRL_AEAD_SET_TAG, 16, tag) == 1 &&
            EVP_DecryptUpdate(a->dec, out, &outl, src, static_cast<int>(n)) == 1 &&
            EVP_DecryptFinal_ex(a->dec, out + outl, &fin) == 1;
  if (!ok) {
    OPENSSL_cleanse(out, n);
    return Num(env, -1);
  }
  return Num(env, static_cast<double>(n));
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

struct Polled {
  napi_env env = nullptr;
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

static void Deliver(Polled* p, int count) {
  napi_env env = p->env;
  napi_handle_scope scope;
  napi_open_handle_scope(env, &scope);
  napi_value cb, self, arg, result;
  if (p->callback && napi_get_reference_value(env, p->callback, &cb) == napi_ok &&
      napi_get_reference_value(env, p->self, &self) == napi_ok) {
    napi_create_int32(env, count, &arg);
    napi_status st = napi_make_callback(env, p->async, self, cb, 1, &arg, &result);
    if (st == napi_pending_exception) {
      napi_value e;
      napi_get_and_clear_last_exception(env, &e);
      napi_fatal_exception(env, e);
    }
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
    Deliver(p, n);
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
    memset(&msgs[i].msg_hdr, 0, sizeof(msghdr));
    memset(&addrs[i], 0, sizeof(sockaddr_in6));
    if (p->family == 4) {
      auto* a = reinterpret_cast<sockaddr_in*>(&addrs[i]);
      a->sin_family = AF_INET;
      a->sin_port = htons(static_cast<uint16_t>(meta[2]));
      memcpy(&a->sin_addr, &meta[4], 4);
      msgs[i].msg_hdr.msg_namelen = sizeof(sockaddr_in);
    } else {
      addrs[i].sin6_family = AF_INET6;
      addrs[i].sin6_port = htons(static_cast<uint16_t>(meta[2]));
      memcpy(&addrs[i].sin6_addr, &meta[4], 16);
      addrs[i].sin6_scope_id = static_cast<uint32_t>(meta[3]);
      msgs[i].msg_hdr.msg_namelen = sizeof(sockaddr_in6);
    }
    msgs[i].msg_hdr.msg_name = &addrs[i];
    msgs[i].msg_hdr.msg_iov = &iovs[i];
    msgs[i].msg_hdr.msg_iovlen = 1;
    WritePktinfo(p, &msgs[i].msg_hdr, meta, p->control.data() + i * kControl);
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
  napi_set_named_property(env, exports, "Aead", aead);
  napi_set_named_property(env, exports, "UdpSocket", udp);
  napi_set_named_property(env, exports, "TunQueue", tun);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, Init)
