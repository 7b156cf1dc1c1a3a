// The Linux syscalls Node has no binding for, as a minimal Node-API addon:
// TAP ioctls, fcntl/dup on raw fds, Unix socket connect, sendmsg/recvmsg
// with SCM_RIGHTS, poll, setns, flock, and AF_PACKET sockets watched by
// the event loop (podtap's servers speak raw frames on each TAP). Each function is a thin wrapper that
// returns the syscall's result, or -errno; all policy (error messages,
// retries on EAGAIN, layouts of ifreq) lives in native.ts.
//
// It replaces koffi, which cost 11 MiB of resident memory and ~15 ms of
// load time in a process whose whole budget is 15 MiB above bare Node.

#define _GNU_SOURCE
#include <node_api.h>

#include <uv.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define MAX_ARGS 6
#define MAX_FDS 253 /* the kernel's SCM_MAX_FD */

#define RETRY(expr)                      \
  ({                                     \
    long r_;                             \
    do r_ = (long)(expr);                \
    while (r_ < 0 && errno == EINTR);    \
    r_ < 0 ? -(long)errno : r_;          \
  })

static napi_value num(napi_env env, double v) {
  napi_value out;
  napi_create_double(env, v, &out);
  return out;
}

static int args(napi_env env, napi_callback_info info, size_t want, napi_value *argv) {
  size_t argc = MAX_ARGS;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < want) {
    napi_throw_type_error(env, NULL, "native: too few arguments");
    return 0;
  }
  return 1;
}

static int64_t i64(napi_env env, napi_value v) {
  int64_t out = 0;
  napi_get_value_int64(env, v, &out);
  return out;
}

/* A JS string into buf (NUL-terminated); 0 if it doesn't fit. */
static int str(napi_env env, napi_value v, char *buf, size_t size) {
  size_t len = 0;
  if (napi_get_value_string_utf8(env, v, buf, size, &len) != napi_ok) return 0;
  return len < size - 1;
}

static int bytes(napi_env env, napi_value v, void **data, size_t *len) {
  return napi_get_buffer_info(env, v, data, len) == napi_ok;
}

/* Room for the most fds one SCM_RIGHTS message can carry, suitably aligned. */
typedef union {
  char buf[CMSG_SPACE(sizeof(int) * MAX_FDS)];
  struct cmsghdr align;
} control_t;

/* A msghdr over one iovec, with room for nfds descriptors (none: no control). */
static void init_msg(struct msghdr *msg, struct iovec *iov, control_t *ctrl, size_t nfds) {
  memset(msg, 0, sizeof *msg);
  msg->msg_iov = iov;
  msg->msg_iovlen = 1;
  if (nfds > 0) {
    memset(ctrl, 0, sizeof *ctrl);
    msg->msg_control = ctrl->buf;
    msg->msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
  }
}

#define FN(name) static napi_value name(napi_env env, napi_callback_info info)
#define ARGS(n)                                 \
  napi_value argv[MAX_ARGS];                    \
  if (!args(env, info, n, argv)) return NULL

FN(Open) {
  ARGS(3);
  char path[4096];
  if (!str(env, argv[0], path, sizeof path)) return num(env, -ENAMETOOLONG);
  return num(env, RETRY(open(path, (int)i64(env, argv[1]), (mode_t)i64(env, argv[2]))));
}

FN(Close) {
  ARGS(1);
  // Linux releases the fd even when close reports EINTR: never retry.
  return num(env, close((int)i64(env, argv[0])) < 0 ? -errno : 0);
}

FN(IoctlBuf) {
  ARGS(3);
  void *data;
  size_t len;
  if (!bytes(env, argv[2], &data, &len)) return num(env, -EINVAL);
  return num(env, RETRY(ioctl((int)i64(env, argv[0]), (unsigned long)i64(env, argv[1]), data)));
}

FN(IoctlInt) {
  ARGS(3);
  return num(env, RETRY(ioctl((int)i64(env, argv[0]), (unsigned long)i64(env, argv[1]), (unsigned long)i64(env, argv[2]))));
}

FN(Fcntl) {
  ARGS(3);
  return num(env, RETRY(fcntl((int)i64(env, argv[0]), (int)i64(env, argv[1]), (int)i64(env, argv[2]))));
}

FN(Dup2) {
  ARGS(2);
  return num(env, RETRY(dup2((int)i64(env, argv[0]), (int)i64(env, argv[1]))));
}

FN(SocketPair) {
  ARGS(3);
  int sv[2];
  long r = RETRY(socketpair((int)i64(env, argv[0]), (int)i64(env, argv[1]), (int)i64(env, argv[2]), sv));
  if (r < 0) return num(env, (double)r);
  napi_value out;
  napi_create_array_with_length(env, 2, &out);
  napi_set_element(env, out, 0, num(env, sv[0]));
  napi_set_element(env, out, 1, num(env, sv[1]));
  return out;
}

/* A blocking close-on-exec stream socket connected to path, or -errno. */
FN(ConnectUnix) {
  ARGS(1);
  struct sockaddr_un addr;
  memset(&addr, 0, sizeof addr);
  addr.sun_family = AF_UNIX;
  if (!str(env, argv[0], addr.sun_path, sizeof addr.sun_path)) return num(env, -ENAMETOOLONG);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return num(env, -errno);
  long r = RETRY(connect(fd, (struct sockaddr *)&addr, sizeof addr));
  if (r < 0) {
    close(fd);
    return num(env, (double)r);
  }
  return num(env, fd);
}

/* sendmsg(fd, data[offset, offset+length), fds as one SCM_RIGHTS, flags) */
FN(SendFds) {
  ARGS(6);
  int fd = (int)i64(env, argv[0]);
  void *data;
  size_t len;
  if (!bytes(env, argv[1], &data, &len)) return num(env, -EINVAL);
  size_t off = (size_t)i64(env, argv[2]), n = (size_t)i64(env, argv[3]);
  if (off > len || n > len - off) return num(env, -EINVAL);
  uint32_t count = 0;
  napi_get_array_length(env, argv[4], &count);
  if (count > MAX_FDS) return num(env, -EINVAL);

  struct iovec iov = {.iov_base = (char *)data + off, .iov_len = n};
  struct msghdr msg;
  control_t ctrl;
  init_msg(&msg, &iov, &ctrl, count);
  if (count > 0) {
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * count);
    int *fds = (int *)CMSG_DATA(c);
    for (uint32_t i = 0; i < count; i++) {
      napi_value v;
      napi_get_element(env, argv[4], i, &v);
      fds[i] = (int)i64(env, v);
    }
  }
  return num(env, RETRY(sendmsg(fd, &msg, (int)i64(env, argv[5]))));
}

/* recvmsg(fd, maxBytes, maxFds, flags) -> { n, data, fds, flags } or -errno */
FN(RecvFds) {
  ARGS(4);
  int fd = (int)i64(env, argv[0]);
  size_t max = (size_t)i64(env, argv[1]);
  int64_t maxFds = i64(env, argv[2]);
  if (maxFds < 0 || maxFds > MAX_FDS) return num(env, -EINVAL);
  char *data = malloc(max > 0 ? max : 1);
  if (!data) return num(env, -ENOMEM);
  struct iovec iov = {.iov_base = data, .iov_len = max};
  struct msghdr msg;
  control_t ctrl;
  init_msg(&msg, &iov, &ctrl, (size_t)maxFds);
  long r = RETRY(recvmsg(fd, &msg, (int)i64(env, argv[3])));
  if (r < 0) {
    free(data);
    return num(env, (double)r);
  }
  napi_value out, buf, fds;
  napi_create_object(env, &out);
  napi_create_buffer_copy(env, (size_t)r, data, NULL, &buf);
  free(data);
  napi_create_array(env, &fds);
  uint32_t k = 0;
  for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    int *p = (int *)CMSG_DATA(c);
    for (size_t i = 0; i < count; i++) napi_set_element(env, fds, k++, num(env, p[i]));
  }
  napi_set_named_property(env, out, "n", num(env, (double)r));
  napi_set_named_property(env, out, "data", buf);
  napi_set_named_property(env, out, "fds", fds);
  napi_set_named_property(env, out, "flags", num(env, msg.msg_flags));
  return out;
}

/* poll one fd: revents, 0 on timeout, or -errno */
FN(Poll1) {
  ARGS(3);
  struct pollfd p = {.fd = (int)i64(env, argv[0]), .events = (short)i64(env, argv[1])};
  int r = poll(&p, 1, (int)i64(env, argv[2]));
  if (r < 0) return num(env, -errno);
  return num(env, r == 0 ? 0 : p.revents);
}

FN(Setns) {
  ARGS(2);
  return num(env, RETRY(setns((int)i64(env, argv[0]), (int)i64(env, argv[1]))));
}

FN(IfNameToIndex) {
  ARGS(1);
  char name[IF_NAMESIZE + 1];
  if (!str(env, argv[0], name, sizeof name)) return num(env, 0);
  return num(env, if_nametoindex(name));
}

FN(Flock) {
  ARGS(2);
  return num(env, RETRY(flock((int)i64(env, argv[0]), (int)i64(env, argv[1]))));
}

/*
 * packetOpen(ifindex, protocol, filter) -> fd or -errno: a non-blocking
 * AF_PACKET socket on one device that sees the device's received frames
 * (not the ones it transmits) which pass the classic BPF filter (a Buffer
 * of struct sock_filter). Opened with protocol 0, so it receives nothing
 * until the filter is attached and it is bound: no frame from another
 * device ever slips in.
 */
FN(PacketOpen) {
  ARGS(3);
  int ifindex = (int)i64(env, argv[0]);
  int protocol = (int)i64(env, argv[1]);
  void *code;
  size_t len;
  if (!bytes(env, argv[2], &code, &len) || len % sizeof(struct sock_filter) != 0 || len == 0) return num(env, -EINVAL);
  int fd = socket(AF_PACKET, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return num(env, -errno);
  struct sock_fprog prog = {.len = (unsigned short)(len / sizeof(struct sock_filter)), .filter = code};
  int one = 1;
  struct sockaddr_ll addr;
  memset(&addr, 0, sizeof addr);
  addr.sll_family = AF_PACKET;
  addr.sll_protocol = htons((uint16_t)protocol);
  addr.sll_ifindex = ifindex;
  /* Room for a burst: a guest (or perfdhcp) can send faster than one event
     loop turn reads. FORCE goes past rmem_max with CAP_NET_ADMIN. */
  int rcvbuf = 4 << 20;
  if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof rcvbuf) < 0)
    (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
  if (setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof prog) < 0 ||
      /* Our own replies on the device are not requests. Old kernels lack
         the option; the watcher skips outgoing frames either way. */
      (setsockopt(fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof one) < 0 && errno != ENOPROTOOPT) ||
      bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
    int e = errno;
    close(fd);
    return num(env, -e);
  }
  return num(env, fd);
}

/*
 * packetSend(fd, ifindex, frame) -> bytes sent or -errno (never blocks).
 * Sent to the device with the frame's own ethertype as the protocol, so
 * the kernel sees what it carries (nftables egress hooks match IPv6 only
 * in a frame whose protocol says IPv6, not the socket's ETH_P_ALL).
 */
FN(PacketSend) {
  ARGS(3);
  void *data;
  size_t len;
  if (!bytes(env, argv[2], &data, &len) || len < 14) return num(env, -EINVAL);
  struct sockaddr_ll to;
  memset(&to, 0, sizeof to);
  to.sll_family = AF_PACKET;
  to.sll_ifindex = (int)i64(env, argv[1]);
  memcpy(&to.sll_protocol, (char *)data + 12, 2);
  to.sll_halen = 6;
  memcpy(to.sll_addr, data, 6);
  return num(env, RETRY(sendto((int)i64(env, argv[0]), data, len, MSG_DONTWAIT, (struct sockaddr *)&to, sizeof to)));
}

/* A packet socket watched by libuv: each received frame goes to a JS callback. */
typedef struct {
  uv_poll_t poll;
  napi_env env;
  napi_ref callback;
  napi_async_context ctx;
  int fd;
  int stopped;
} watch_t;

#define FRAMES_PER_WAKEUP 64

static void on_readable(uv_poll_t *h, int status, int events) {
  (void)events;
  watch_t *w = h->data;
  if (w->stopped || status < 0) return;
  napi_env env = w->env;
  napi_handle_scope scope;
  napi_open_handle_scope(env, &scope);
  napi_value cb, recv;
  napi_get_reference_value(env, w->callback, &cb);
  napi_get_global(env, &recv); /* make_callback needs an object as `this` */
  static unsigned char buf[65536];
  for (int i = 0; i < FRAMES_PER_WAKEUP && !w->stopped; i++) {
    struct sockaddr_ll from;
    socklen_t fromlen = sizeof from;
    ssize_t n = recvfrom(w->fd, buf, sizeof buf, MSG_DONTWAIT, (struct sockaddr *)&from, &fromlen);
    if (n < 0) {
      if (errno == EINTR) continue;
      break; /* EAGAIN: drained; anything else: the next wakeup reports it */
    }
    if (from.sll_pkttype == PACKET_OUTGOING) continue;
    napi_value frame, result;
    napi_create_buffer_copy(env, (size_t)n, buf, NULL, &frame);
    /* make_callback, not call_function: promises the handler starts run
       their microtasks as after any other event. */
    if (napi_make_callback(env, w->ctx, recv, cb, 1, &frame, &result) == napi_pending_exception) {
      napi_value exc;
      napi_get_and_clear_last_exception(env, &exc);
      napi_fatal_exception(env, exc);
      break;
    }
  }
  napi_close_handle_scope(env, scope);
}

static void on_closed(uv_handle_t *h) { free(h->data); }

/* packetWatch(fd, callback) -> handle, or -errno */
FN(PacketWatch) {
  ARGS(2);
  uv_loop_t *loop;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok) return num(env, -ENOSYS);
  watch_t *w = calloc(1, sizeof *w);
  if (!w) return num(env, -ENOMEM);
  w->env = env;
  w->fd = (int)i64(env, argv[0]);
  int r = uv_poll_init_socket(loop, &w->poll, w->fd);
  if (r < 0) {
    free(w);
    return num(env, r);
  }
  w->poll.data = w;
  napi_value name;
  napi_create_string_utf8(env, "podtap:packet", NAPI_AUTO_LENGTH, &name);
  napi_async_init(env, NULL, name, &w->ctx);
  napi_create_reference(env, argv[1], 1, &w->callback);
  uv_poll_start(&w->poll, UV_READABLE, on_readable);
  napi_value handle;
  napi_create_external(env, w, NULL, NULL, &handle);
  return handle;
}

/* packetUnwatch(handle): stops watching at once; the caller may then close the fd. */
FN(PacketUnwatch) {
  ARGS(1);
  watch_t *w;
  if (napi_get_value_external(env, argv[0], (void **)&w) != napi_ok || !w || w->stopped) return num(env, -EINVAL);
  w->stopped = 1;
  uv_poll_stop(&w->poll);
  napi_delete_reference(env, w->callback);
  napi_async_destroy(env, w->ctx);
  uv_close((uv_handle_t *)&w->poll, on_closed);
  return num(env, 0);
}

NAPI_MODULE_INIT() {
  const struct {
    const char *name;
    napi_callback fn;
  } fns[] = {
      {"open", Open},         {"close", Close},         {"ioctlBuf", IoctlBuf}, {"ioctlInt", IoctlInt},
      {"fcntl", Fcntl},       {"dup2", Dup2},           {"socketPair", SocketPair}, {"connectUnix", ConnectUnix},
      {"sendFds", SendFds},   {"recvFds", RecvFds},     {"poll1", Poll1},       {"setns", Setns},
      {"ifNameToIndex", IfNameToIndex}, {"flock", Flock},
      {"packetOpen", PacketOpen}, {"packetSend", PacketSend}, {"packetWatch", PacketWatch}, {"packetUnwatch", PacketUnwatch},
  };
  for (size_t i = 0; i < sizeof fns / sizeof fns[0]; i++) {
    napi_value f;
    napi_create_function(env, fns[i].name, NAPI_AUTO_LENGTH, fns[i].fn, NULL, &f);
    napi_set_named_property(env, exports, fns[i].name, f);
  }
  return exports;
}
