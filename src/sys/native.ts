// The few Linux syscalls Node has no binding for (TAP ioctls, SCM_RIGHTS,
// dup/fcntl on raw fds, setns), over koffi. Everything that touches raw
// memory layouts lives here so the rest of podtap deals in numbers and
// Buffers only.
//
// Layouts and constants are those of 64-bit little-endian Linux with the
// generic ioctl encoding (x86_64, arm64). Other targets are refused when libc
// is first loaded rather than silently mis-encoding a struct.

import koffi from 'koffi';
import { constants as osConstants } from 'node:os';
import { getSystemErrorMessage, getSystemErrorName } from 'node:util';
import type { Server, Socket } from 'node:net';

// ---------------------------------------------------------------- constants

export const IFF_TUN = 0x0001;
export const IFF_TAP = 0x0002;
export const IFF_MULTI_QUEUE = 0x0100;
export const IFF_PERSIST = 0x0800;
export const IFF_NO_PI = 0x1000;
export const IFF_ONE_QUEUE = 0x2000;
export const IFF_VNET_HDR = 0x4000;
export const IFF_TUN_EXCL = 0x8000;

export const CLONE_NEWNET = 0x40000000;

const TUNSETIFF = 0x400454ca;
const TUNSETPERSIST = 0x400454cb;
const TUNSETOWNER = 0x400454cc;
const TUNSETGROUP = 0x400454ce;
const TUNGETIFF = 0x800454d2;
const TUNSETVNETHDRSZ = 0x400454d8;

const IFNAMSIZ = 16;
const IFREQ_SIZE = 40;
// The kernel's cap on queues per tun device (MAX_TAP_QUEUES).
const MAX_TAP_QUEUES = 256;
// The kernel's cap on fds in one SCM_RIGHTS message (SCM_MAX_FD).
export const SCM_MAX_FD = 253;

const O_RDWR = 0o2;
const O_NONBLOCK = 0o4000;
const O_CLOEXEC = 0o2000000;

const F_DUPFD = 0;
const F_GETFD = 1;
const F_SETFD = 2;
const F_GETFL = 3;
const F_SETFL = 4;
const F_DUPFD_CLOEXEC = 1030;
const FD_CLOEXEC = 1;

const AF_UNIX = 1;
const SOCK_STREAM = 1;
const SOCK_CLOEXEC = 0o2000000;
const SOL_SOCKET = 1;
const SCM_RIGHTS = 1;
const MSG_CTRUNC = 0x8;
const MSG_DONTWAIT = 0x40;
const MSG_NOSIGNAL = 0x4000;
const MSG_CMSG_CLOEXEC = 0x40000000;
const SUN_PATH_MAX = 108;

const POLLIN = 0x1;
const POLLOUT = 0x4;
const POLLERR = 0x8;
const POLLHUP = 0x10;
const POLLNVAL = 0x20;

const E = osConstants.errno;

// -------------------------------------------------------------------- errors

// A failed syscall. `code` is the errno's name ('EBUSY'), matching the
// convention of Node's own system errors so callers can switch on it.
export class SyscallError extends Error {
  readonly syscall: string;
  readonly errno: number;
  readonly code: string;

  constructor(syscall: string, errno: number, message?: string) {
    const code = errnoName(errno);
    super(message ?? `${syscall} failed: ${code} (${errnoMessage(errno)})`);
    this.name = 'SyscallError';
    this.syscall = syscall;
    this.errno = errno;
    this.code = code;
  }
}

export function errnoName(errno: number): string {
  try {
    return getSystemErrorName(-errno);
  } catch {
    return `errno ${errno}`;
  }
}

function errnoMessage(errno: number): string {
  try {
    return getSystemErrorMessage(-errno);
  } catch {
    return `errno ${errno}`;
  }
}

function fail(syscall: string, errno: number, what: string): never {
  throw new SyscallError(syscall, errno, `${what}: ${syscall} failed: ${errnoName(errno)} (${errnoMessage(errno)})`);
}

// ------------------------------------------------------------------- libc

type Fn = (...args: any[]) => any;

interface Libc {
  open: Fn;
  close: Fn;
  ioctl: Fn; // variadic: (fd, req, type, value)
  fcntl: Fn; // variadic: (fd, cmd, type, value)
  dup2: Fn;
  socket: Fn;
  socketpair: Fn;
  connect: Fn;
  sendmsg: Fn;
  recvmsg: Fn;
  poll: Fn;
  setns: Fn;
  if_nametoindex: Fn;
}

let libcCache: Libc | undefined;

// Loaded on first use so commands that never touch a raw fd don't pay for
// dlopen and koffi's setup.
function libc(): Libc {
  if (libcCache) return libcCache;
  if (process.platform !== 'linux' || (process.arch !== 'x64' && process.arch !== 'arm64')) {
    throw new Error(
      `podtap's native layer supports Linux on x86_64 and arm64 only (this is ${process.platform}/${process.arch})`,
    );
  }
  const lib = koffi.load('libc.so.6');
  libcCache = {
    open: lib.func('int open(const char *path, int flags, uint32_t mode)'),
    close: lib.func('int close(int fd)'),
    ioctl: lib.func('int ioctl(int fd, unsigned long request, ...)'),
    fcntl: lib.func('int fcntl(int fd, int cmd, ...)'),
    dup2: lib.func('int dup2(int oldfd, int newfd)'),
    socket: lib.func('int socket(int domain, int type, int protocol)'),
    socketpair: lib.func('int socketpair(int domain, int type, int protocol, _Out_ int *sv)'),
    connect: lib.func('int connect(int fd, const void *addr, uint32_t addrlen)'),
    sendmsg: lib.func('intptr_t sendmsg(int fd, void *msg, int flags)'),
    recvmsg: lib.func('intptr_t recvmsg(int fd, void *msg, int flags)'),
    poll: lib.func('int poll(void *fds, unsigned long nfds, int timeout)'),
    setns: lib.func('int setns(int fd, int nstype)'),
    if_nametoindex: lib.func('unsigned int if_nametoindex(const char *name)'),
  };
  return libcCache;
}

// Runs a syscall wrapper, retrying on EINTR, and returns [result, errno].
// errno is read straight after the call, before any other native code runs.
function call(fn: () => number | bigint): [number, number] {
  for (;;) {
    const r = Number(fn());
    if (r >= 0) return [r, 0];
    const errno = koffi.errno();
    if (errno !== E.EINTR) return [r, errno];
  }
}

function ioctlPtr(fd: number, request: number, buf: Buffer): [number, number] {
  const c = libc();
  return call(() => c.ioctl(fd, request, 'void *', buf));
}

function ioctlInt(fd: number, request: number, value: number): [number, number] {
  const c = libc();
  return call(() => c.ioctl(fd, request, 'unsigned long', value));
}

function fcntlInt(fd: number, cmd: number, value: number, what: string): number {
  const c = libc();
  const [r, errno] = call(() => c.fcntl(fd, cmd, 'int', value));
  if (r < 0) fail('fcntl', errno, what);
  return r;
}

// ---------------------------------------------------------------- plain fds

export function closeFd(fd: number): void {
  const c = libc();
  // Linux releases the fd even when close reports EINTR, so never retry.
  const r = c.close(fd) as number;
  if (r < 0) {
    const errno = koffi.errno();
    if (errno !== E.EINTR) fail('close', errno, `close fd ${fd}`);
  }
}

// Closes every fd, reporting nothing: for cleanup paths that already carry
// an error of their own.
export function closeAllQuietly(fds: Iterable<number>): void {
  for (const fd of fds) {
    try {
      closeFd(fd);
    } catch {
      // the first error is the one worth reporting
    }
  }
}

// A duplicate of fd numbered >= min (default: the lowest free number).
export function dupFd(fd: number, opts: { cloexec?: boolean; min?: number } = {}): number {
  const cloexec = opts.cloexec ?? true;
  return fcntlInt(fd, cloexec ? F_DUPFD_CLOEXEC : F_DUPFD, opts.min ?? 0, `dup fd ${fd}`);
}

// Makes `to` refer to what `from` refers to; `to` ends up inheritable across
// exec (close-on-exec clear) even when from === to.
export function dup2(from: number, to: number): number {
  if (from === to) {
    setCloexec(to, false);
    return to;
  }
  const c = libc();
  const [r, errno] = call(() => c.dup2(from, to));
  if (r < 0) fail('dup2', errno, `dup2 fd ${from} -> ${to}`);
  return r;
}

export function getCloexec(fd: number): boolean {
  return (fcntlInt(fd, F_GETFD, 0, `get flags of fd ${fd}`) & FD_CLOEXEC) !== 0;
}

export function setCloexec(fd: number, on: boolean): void {
  const flags = fcntlInt(fd, F_GETFD, 0, `get flags of fd ${fd}`);
  const next = on ? flags | FD_CLOEXEC : flags & ~FD_CLOEXEC;
  if (next !== flags) fcntlInt(fd, F_SETFD, next, `set close-on-exec on fd ${fd}`);
}

export function getNonBlocking(fd: number): boolean {
  return (fcntlInt(fd, F_GETFL, 0, `get status flags of fd ${fd}`) & O_NONBLOCK) !== 0;
}

// O_NONBLOCK belongs to the open file description: it is shared with every
// dup of the fd, in this process and in any process the fd was passed to.
export function setNonBlocking(fd: number, on: boolean): void {
  const flags = fcntlInt(fd, F_GETFL, 0, `get status flags of fd ${fd}`);
  const next = on ? flags | O_NONBLOCK : flags & ~O_NONBLOCK;
  if (next !== flags) fcntlInt(fd, F_SETFL, next, `set O_NONBLOCK on fd ${fd}`);
}

// Moves the calling thread into the namespace `fd` refers to. Only the
// calling thread changes: with Node that's the main JS thread, while libuv's
// worker threads stay where they were.
export function setns(fd: number, nsType: number): void {
  const c = libc();
  const [r, errno] = call(() => c.setns(fd, nsType));
  if (r < 0) fail('setns', errno, `enter namespace fd ${fd}`);
}

// 0 when no link has that name in the current network namespace.
export function ifNameToIndex(name: string): number {
  return libc().if_nametoindex(name) as number;
}

// -------------------------------------------------------------------- TAP

export interface OpenTapOptions {
  queues: number;
  vnetHdr: boolean;
  multiQueue: boolean;
  // Fail with EBUSY when a link of that name already exists, instead of
  // attaching to it (the default: podtap creates its taps itself and must
  // never capture someone else's).
  exclusive?: boolean;
}

export interface TapInfo {
  name: string;
  flags: number;
}

function checkIfName(name: string): void {
  const bytes = Buffer.byteLength(name);
  if (bytes === 0 || bytes >= IFNAMSIZ || name === '.' || name === '..' || /[\s/:%]/.test(name)) {
    throw new RangeError(
      `invalid interface name ${JSON.stringify(name)}: 1-${IFNAMSIZ - 1} bytes, no whitespace, '/', ':' or '%'`,
    );
  }
}

function tapOpenError(name: string, queue: number, queues: number, syscall: string, errno: number, multiQueue: boolean): SyscallError {
  const code = errnoName(errno);
  const which = queues > 1 ? `tap ${name} (queue ${queue + 1} of ${queues})` : `tap ${name}`;
  let hint: string;
  if (syscall === 'open') {
    if (errno === E.ENOENT || errno === E.ENODEV || errno === E.ENXIO) {
      hint =
        '/dev/net/tun is missing: create it (mknod /dev/net/tun c 10 200, or mount a devtmpfs) ' +
        'or add the device to the container (e.g. a device plugin, or hostPath /dev/net/tun with the device allowed)';
    } else if (errno === E.EPERM || errno === E.EACCES) {
      hint =
        'no permission to open /dev/net/tun: the container\'s device cgroup must allow c 10:200 rwm ' +
        '(add the device to the pod) and the file mode must allow read/write';
    } else {
      hint = 'could not open /dev/net/tun';
    }
  } else if (errno === E.EPERM || errno === E.EACCES) {
    hint = 'creating a tap needs CAP_NET_ADMIN in the pod\'s network namespace (add NET_ADMIN to the container\'s capabilities)';
  } else if (errno === E.EBUSY) {
    hint = `the name ${name} is taken by another tap or link in this network namespace: remove it (ip link del ${name}) or pick another name`;
  } else if (errno === E.EINVAL) {
    hint =
      ifNameToIndex(name) > 0
        ? `a link named ${name} exists but is not a tap with the requested flags` +
          `${multiQueue ? ' (multi_queue)' : ''}: remove it (ip link del ${name}) or pick another name`
        : 'the kernel rejected the tap flags (is this kernel built with multi-queue tun/tap?)';
  } else {
    hint = 'TUNSETIFF failed';
  }
  return new SyscallError(syscall, errno, `${which}: ${hint} [${syscall}: ${code}]`);
}

// Opens (creating if need be) the tap `name` once per queue and returns the
// queue fds, close-on-exec and blocking. The tap lives in the network
// namespace of the calling thread at the time of the call.
export function openTap(name: string, opts: OpenTapOptions): number[] {
  checkIfName(name);
  const { queues, vnetHdr, multiQueue } = opts;
  if (!Number.isInteger(queues) || queues < 1 || queues > MAX_TAP_QUEUES) {
    throw new RangeError(`tap ${name}: queues must be an integer in 1..${MAX_TAP_QUEUES}, got ${queues}`);
  }
  if (queues > 1 && !multiQueue) {
    throw new RangeError(`tap ${name}: ${queues} queues need multiQueue: true`);
  }
  const c = libc();
  let flags = IFF_TAP | IFF_NO_PI;
  if (vnetHdr) flags |= IFF_VNET_HDR;
  if (multiQueue) flags |= IFF_MULTI_QUEUE;
  const exclusive = opts.exclusive ?? true;

  const fds: number[] = [];
  try {
    for (let q = 0; q < queues; q++) {
      const [fd, openErr] = call(() => c.open('/dev/net/tun', O_RDWR | O_CLOEXEC, 0));
      if (fd < 0) throw tapOpenError(name, q, queues, 'open', openErr, multiQueue);
      fds.push(fd);
      const ifr = Buffer.alloc(IFREQ_SIZE);
      ifr.write(name, 0, IFNAMSIZ - 1, 'utf8');
      // Only the first queue may insist on creating the device: the others
      // attach to the one it created.
      ifr.writeUInt16LE(q === 0 && exclusive ? flags | IFF_TUN_EXCL : flags, IFNAMSIZ);
      const [r, errno] = ioctlPtr(fd, TUNSETIFF, ifr);
      if (r < 0) throw tapOpenError(name, q, queues, 'TUNSETIFF', errno, multiQueue);
    }
  } catch (err) {
    closeAllQuietly(fds);
    throw err;
  }
  return fds;
}

export function tapInfo(fd: number): TapInfo {
  const ifr = Buffer.alloc(IFREQ_SIZE);
  const [r, errno] = ioctlPtr(fd, TUNGETIFF, ifr);
  if (r < 0) {
    fail('TUNGETIFF', errno, errno === 77 /* EBADFD: a tun fd not attached yet */ || errno === E.EINVAL || errno === E.ENOTTY
      ? `fd ${fd} is not an attached tap`
      : `read tap info of fd ${fd}`);
  }
  const end = ifr.indexOf(0);
  const name = ifr.toString('utf8', 0, end >= 0 && end < IFNAMSIZ ? end : IFNAMSIZ);
  return { name, flags: ifr.readUInt16LE(IFNAMSIZ) };
}

// A persistent tap outlives its fds; podtap's taps normally are not, so the
// device disappears with the last fd (the VMM's).
export function setTapPersist(fd: number, on: boolean): void {
  const [r, errno] = ioctlInt(fd, TUNSETPERSIST, on ? 1 : 0);
  if (r < 0) fail('TUNSETPERSIST', errno, `set persist=${on} on tap fd ${fd}`);
}

// -1 clears the owner/group restriction.
export function setTapOwner(fd: number, uid: number): void {
  const [r, errno] = ioctlInt(fd, TUNSETOWNER, uid >>> 0);
  if (r < 0) fail('TUNSETOWNER', errno, `set owner ${uid} on tap fd ${fd}`);
}

export function setTapGroup(fd: number, gid: number): void {
  const [r, errno] = ioctlInt(fd, TUNSETGROUP, gid >>> 0);
  if (r < 0) fail('TUNSETGROUP', errno, `set group ${gid} on tap fd ${fd}`);
}

// QEMU and Cloud Hypervisor set the header size themselves; this is for
// tests and for VMMs that don't.
export function setVnetHdrSize(fd: number, size: number): void {
  const b = Buffer.alloc(4);
  b.writeInt32LE(size);
  const [r, errno] = ioctlPtr(fd, TUNSETVNETHDRSZ, b);
  if (r < 0) fail('TUNSETVNETHDRSZ', errno, `set vnet header size ${size} on tap fd ${fd}`);
}

// ------------------------------------------------------------------ polling

// Waits (blocking the thread) until fd is readable/writable or timeoutMs
// passes; returns false on timeout. Hang-ups and errors count as ready so the
// following syscall reports them.
export function waitFd(fd: number, events: 'read' | 'write', timeoutMs: number): boolean {
  const c = libc();
  const pfd = Buffer.alloc(8);
  pfd.writeInt32LE(fd, 0);
  pfd.writeInt16LE(events === 'read' ? POLLIN : POLLOUT, 4);
  const deadline = Date.now() + Math.max(0, timeoutMs);
  for (;;) {
    const left = Math.max(0, deadline - Date.now());
    const r = c.poll(pfd, 1, Math.min(left, 2 ** 31 - 1)) as number;
    if (r > 0) {
      const rev = pfd.readInt16LE(6);
      if (rev & POLLNVAL) throw new SyscallError('poll', E.EBADF, `poll fd ${fd}: not an open fd`);
      return (rev & (POLLIN | POLLOUT | POLLERR | POLLHUP)) !== 0;
    }
    if (r === 0) return false;
    const errno = koffi.errno();
    if (errno !== E.EINTR) fail('poll', errno, `poll fd ${fd}`);
  }
}

// Resolves once fd is readable (or hung up), without blocking the event
// loop. Only for fds libuv does not already watch (ours from connectUnix or
// socketPair), since an fd can be registered with epoll only once.
export function whenReadable(fd: number, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve, reject) => {
    let done = false;
    let handle: { close(): void } | undefined;
    const finish = (ready: boolean, err?: unknown): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      try {
        handle?.close();
      } catch {
        // closing a poll handle that already failed
      }
      if (err) reject(err instanceof Error ? err : new Error(String(err)));
      else resolve(ready);
    };
    const timer = setTimeout(() => finish(false), Math.max(0, timeoutMs));
    try {
      libc();
      handle = koffi.node.poll(fd, { readable: true, disconnect: true }, () => finish(true));
    } catch (err) {
      finish(false, err);
    }
  });
}

// ------------------------------------------------------------ Unix sockets

// The fd behind a Node socket or server, for sending ancillary data that
// Node's streams can't carry. This reaches into Node's private `_handle`;
// it is the only place in podtap that does. Data written this way bypasses
// Node's write queue, so don't mix it with socket.write() of pending data.
export function socketFdOf(sock: Socket | Server): number {
  const handle = (sock as unknown as { _handle?: { fd?: unknown } })._handle;
  const fd = handle?.fd;
  if (typeof fd !== 'number' || fd < 0) {
    throw new Error('this Node socket has no usable fd (not connected yet, already closed, or not a Unix socket)');
  }
  return fd;
}

export function socketPair(): [number, number] {
  const c = libc();
  const sv = new Int32Array(2);
  const [r, errno] = call(() => c.socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv));
  if (r < 0) fail('socketpair', errno, 'create a Unix socket pair');
  return [sv[0] ?? -1, sv[1] ?? -1];
}

function sockaddrUn(path: string): Buffer {
  const len = Buffer.byteLength(path);
  if (len === 0 || len >= SUN_PATH_MAX) {
    throw new SyscallError(
      'connect',
      E.ENAMETOOLONG,
      `Unix socket path ${JSON.stringify(path)} must be 1-${SUN_PATH_MAX - 1} bytes (it is ${len}); use a shorter path`,
    );
  }
  const addr = Buffer.alloc(2 + SUN_PATH_MAX);
  addr.writeUInt16LE(AF_UNIX, 0);
  addr.write(path, 2, 'utf8');
  return addr;
}

// A blocking, close-on-exec stream socket connected to the Unix socket at
// `path`. Errors carry the errno code (ENOENT, ECONNREFUSED, EACCES...).
export function connectUnix(path: string): number {
  const c = libc();
  const addr = sockaddrUn(path);
  const [fd, sockErr] = call(() => c.socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (fd < 0) fail('socket', sockErr, 'create a Unix socket');
  const [r, errno] = call(() => c.connect(fd, addr, 2 + Buffer.byteLength(path) + 1));
  if (r < 0) {
    closeAllQuietly([fd]);
    fail('connect', errno, `connect to ${path}`);
  }
  return fd;
}

// ------------------------------------------------------------- SCM_RIGHTS

const MSGHDR_SIZE = 56;
const IOVEC_SIZE = 16;
const CMSGHDR_SIZE = 16;

const align8 = (n: number): number => (n + 7) & ~7;
const cmsgSpace = (dataLen: number): number => CMSGHDR_SIZE + align8(dataLen);

// One block of native memory holding msghdr, iovec, control data and the
// payload, so that every pointer inside it stays valid for the syscall
// (Buffers passed as plain arguments would, but pointers nested in structs
// need addresses that koffi can't give for JS memory).
class MsgBlock {
  readonly ptr: unknown;
  readonly base: bigint;
  readonly view: DataView;
  readonly bytes: Uint8Array;
  readonly dataOff: number;
  readonly ctrlOff: number;

  constructor(dataLen: number, ctrlLen: number) {
    this.ctrlOff = MSGHDR_SIZE + IOVEC_SIZE;
    this.dataOff = this.ctrlOff + align8(ctrlLen);
    const total = this.dataOff + Math.max(dataLen, 1);
    this.ptr = koffi.alloc('uint8_t', total);
    this.base = koffi.address(this.ptr);
    const ab = koffi.view(this.ptr, total);
    this.view = new DataView(ab);
    this.bytes = new Uint8Array(ab);
    this.bytes.fill(0);
    const v = this.view;
    // msghdr: name=NULL, namelen=0, iov, iovlen=1, control, controllen, flags
    v.setBigUint64(16, this.base + BigInt(MSGHDR_SIZE), true);
    v.setBigUint64(24, 1n, true);
    v.setBigUint64(32, ctrlLen > 0 ? this.base + BigInt(this.ctrlOff) : 0n, true);
    v.setBigUint64(40, BigInt(ctrlLen), true);
    // iovec: base, len
    v.setBigUint64(MSGHDR_SIZE, this.base + BigInt(this.dataOff), true);
    v.setBigUint64(MSGHDR_SIZE + 8, BigInt(dataLen), true);
  }

  setData(data: Uint8Array): void {
    this.bytes.set(data, this.dataOff);
  }

  // Points the iovec at data[offset..offset+len) of what setData copied in.
  window(offset: number, len: number): void {
    this.view.setBigUint64(MSGHDR_SIZE, this.base + BigInt(this.dataOff + offset), true);
    this.view.setBigUint64(MSGHDR_SIZE + 8, BigInt(len), true);
  }

  dropControl(): void {
    this.view.setBigUint64(32, 0n, true);
    this.view.setBigUint64(40, 0n, true);
  }

  free(): void {
    koffi.free(this.ptr);
  }
}

// Sends data with fds attached as one SCM_RIGHTS message. The fds travel
// with the first byte; if the socket takes only part of the data, the rest
// follows without them. On a non-blocking socket (any Node socket) EAGAIN is
// waited out with poll for up to timeoutMs, blocking the thread meanwhile.
export function sendFds(socketFd: number, data: Uint8Array, fds: readonly number[], opts: { timeoutMs?: number } = {}): void {
  if (fds.length > 0 && data.length === 0) {
    throw new RangeError('sendFds: a stream socket carries fds only with at least one byte of data');
  }
  if (fds.length > SCM_MAX_FD) throw new RangeError(`sendFds: at most ${SCM_MAX_FD} fds per message, got ${fds.length}`);
  const timeoutMs = opts.timeoutMs ?? 5000;
  const deadline = Date.now() + timeoutMs;
  const c = libc();
  const fdBytes = fds.length * 4;
  const ctrlLen = fds.length > 0 ? cmsgSpace(fdBytes) : 0;
  const msg = new MsgBlock(data.length, ctrlLen);
  try {
    if (fds.length > 0) {
      const o = msg.ctrlOff;
      msg.view.setBigUint64(o, BigInt(CMSGHDR_SIZE + fdBytes), true);
      msg.view.setInt32(o + 8, SOL_SOCKET, true);
      msg.view.setInt32(o + 12, SCM_RIGHTS, true);
      fds.forEach((fd, i) => msg.view.setInt32(o + CMSGHDR_SIZE + 4 * i, fd, true));
    }
    msg.setData(data);
    let sent = 0;
    while (sent < data.length) {
      msg.window(sent, data.length - sent);
      const [n, errno] = call(() => c.sendmsg(socketFd, msg.ptr, MSG_NOSIGNAL));
      if (n >= 0) {
        if (sent === 0 && n > 0) msg.dropControl();
        sent += n;
        continue;
      }
      if (errno === E.EAGAIN || errno === E.EWOULDBLOCK) {
        const left = deadline - Date.now();
        if (left <= 0 || !waitFd(socketFd, 'write', left)) {
          throw new SyscallError('sendmsg', E.ETIMEDOUT, `sendmsg on fd ${socketFd}: the peer did not read for ${timeoutMs} ms`);
        }
        continue;
      }
      fail('sendmsg', errno, `send ${fds.length} fd(s) on socket fd ${socketFd}`);
    }
  } finally {
    msg.free();
  }
}

export interface Received {
  data: Buffer; // empty: the peer closed the connection
  fds: number[];
}

function recvOnce(socketFd: number, maxBytes: number, maxFds: number, flags: number): Received | null {
  const c = libc();
  const ctrlLen = maxFds > 0 ? cmsgSpace(maxFds * 4) : 0;
  const msg = new MsgBlock(maxBytes, ctrlLen);
  try {
    const [n, errno] = call(() => c.recvmsg(socketFd, msg.ptr, flags));
    if (n < 0) {
      if (errno === E.EAGAIN || errno === E.EWOULDBLOCK) return null;
      fail('recvmsg', errno, `receive on socket fd ${socketFd}`);
    }
    const fds: number[] = [];
    const controllen = Number(msg.view.getBigUint64(40, true));
    let off = 0;
    while (off + CMSGHDR_SIZE <= controllen) {
      const p = msg.ctrlOff + off;
      const len = Number(msg.view.getBigUint64(p, true));
      if (len < CMSGHDR_SIZE) break;
      const level = msg.view.getInt32(p + 8, true);
      const type = msg.view.getInt32(p + 12, true);
      if (level === SOL_SOCKET && type === SCM_RIGHTS) {
        const count = Math.floor((len - CMSGHDR_SIZE) / 4);
        for (let i = 0; i < count; i++) fds.push(msg.view.getInt32(p + CMSGHDR_SIZE + 4 * i, true));
      }
      off += align8(len);
    }
    const msgFlags = msg.view.getInt32(48, true);
    // CMSG alignment can leave room for one fd more than asked for.
    if (msgFlags & MSG_CTRUNC || fds.length > maxFds) {
      closeAllQuietly(fds);
      throw new SyscallError(
        'recvmsg',
        E.EMSGSIZE,
        `receive on socket fd ${socketFd}: the peer sent more than ${maxFds} fd(s); the extra ones were dropped by the kernel`,
      );
    }
    return { data: Buffer.from(msg.bytes.subarray(msg.dataOff, msg.dataOff + n)), fds };
  } finally {
    msg.free();
  }
}

export interface RecvOptions {
  // Received fds are close-on-exec (MSG_CMSG_CLOEXEC) unless this is false.
  cloexec?: boolean;
  timeoutMs?: number;
}

// One recvmsg: whatever bytes are there (up to maxBytes) and the fds that
// came with them. Blocks the thread up to timeoutMs (default 5 s) waiting for
// data, then throws ETIMEDOUT.
export function recvFds(socketFd: number, maxBytes: number, maxFds: number, opts: RecvOptions = {}): Received {
  const timeoutMs = opts.timeoutMs ?? 5000;
  const deadline = Date.now() + timeoutMs;
  const flags = (opts.cloexec ?? true) ? MSG_CMSG_CLOEXEC : 0;
  for (;;) {
    const got = recvOnce(socketFd, maxBytes, maxFds, flags | MSG_DONTWAIT);
    if (got) return got;
    const left = deadline - Date.now();
    if (left <= 0 || !waitFd(socketFd, 'read', left)) {
      throw new SyscallError('recvmsg', E.ETIMEDOUT, `receive on socket fd ${socketFd}: nothing arrived within ${timeoutMs} ms`);
    }
  }
}

// recvFds without waiting: null when nothing is there yet.
export function recvFdsNow(socketFd: number, maxBytes: number, maxFds: number, opts: { cloexec?: boolean } = {}): Received | null {
  const flags = (opts.cloexec ?? true) ? MSG_CMSG_CLOEXEC : 0;
  return recvOnce(socketFd, maxBytes, maxFds, flags | MSG_DONTWAIT);
}
