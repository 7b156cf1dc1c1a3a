// The few Linux syscalls Node has no binding for (TAP ioctls, SCM_RIGHTS,
// dup/fcntl on raw fds, setns), over our own small Node-API addon
// (native.c, built to dist/native.node by `npm run build`). The addon only
// wraps syscalls; everything that gives them meaning lives here, so the rest
// of podtap deals in numbers and Buffers only.
//
// Layouts and constants are those of 64-bit little-endian Linux with the
// generic ioctl encoding (x86_64, arm64). Other targets are refused when libc
// is first loaded rather than silently mis-encoding a struct.

import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
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

// Each wrapper returns the syscall's result, or -errno (EINTR already retried).
interface Addon {
  open(path: string, flags: number, mode: number): number;
  close(fd: number): number;
  ioctlBuf(fd: number, request: number, buf: Buffer): number;
  ioctlInt(fd: number, request: number, value: number): number;
  fcntl(fd: number, cmd: number, arg: number): number;
  dup2(from: number, to: number): number;
  socketPair(domain: number, type: number, protocol: number): [number, number] | number;
  connectUnix(path: string): number;
  sendFds(fd: number, data: Uint8Array, offset: number, length: number, fds: readonly number[], flags: number): number;
  recvFds(fd: number, maxBytes: number, maxFds: number, flags: number): { n: number; data: Buffer; fds: number[]; flags: number } | number;
  poll1(fd: number, events: number, timeoutMs: number): number;
  setns(fd: number, nsType: number): number;
  ifNameToIndex(name: string): number;
  flock(fd: number, op: number): number;
  packetOpen(ifindex: number, protocol: number, filter: Buffer): number;
  packetSend(fd: number, ifindex: number, frame: Buffer): number;
  packetWatch(fd: number, onFrame: (frame: Buffer) => void): object | number;
  packetUnwatch(handle: object): number;
}

let addonCache: Addon | undefined;

// Loaded on first use so commands that never touch a raw fd don't pay for
// it. It sits next to the bundle (dist/podtap.mjs); the sources
// (src/sys/native.ts) find it in dist/ too.
function libc(): Addon {
  if (addonCache) return addonCache;
  if (process.platform !== 'linux' || (process.arch !== 'x64' && process.arch !== 'arm64')) {
    throw new Error(`podtap's native layer supports Linux on x86_64 and arm64 only (this is ${process.platform}/${process.arch})`);
  }
  const candidates = [new URL('./native.node', import.meta.url), new URL('../../dist/native.node', import.meta.url)];
  const found = candidates.find((u) => existsSync(u));
  if (!found) throw new Error('podtap\'s native addon (dist/native.node) is missing: run `npm run build` (it needs a C compiler)');
  addonCache = createRequire(import.meta.url)(found.pathname) as Addon;
  return addonCache;
}

// Runs a syscall wrapper and returns [result, errno] in the style of C.
function call(fn: () => number): [number, number] {
  const r = fn();
  return r >= 0 ? [r, 0] : [-1, -r];
}

function ioctlPtr(fd: number, request: number, buf: Buffer): [number, number] {
  const c = libc();
  return call(() => c.ioctlBuf(fd, request, buf));
}

function ioctlInt(fd: number, request: number, value: number): [number, number] {
  const c = libc();
  return call(() => c.ioctlInt(fd, request, value));
}

function fcntlInt(fd: number, cmd: number, value: number, what: string): number {
  const c = libc();
  const [r, errno] = call(() => c.fcntl(fd, cmd, value));
  if (r < 0) fail('fcntl', errno, what);
  return r;
}

// ---------------------------------------------------------------- plain fds

export function closeFd(fd: number): void {
  // Linux releases the fd even when close reports EINTR, so never retry.
  const [r, errno] = call(() => libc().close(fd));
  if (r < 0 && errno !== E.EINTR) fail('close', errno, `close fd ${fd}`);
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
  return libc().ifNameToIndex(name);
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
  const deadline = Date.now() + Math.max(0, timeoutMs);
  for (;;) {
    const left = Math.max(0, deadline - Date.now());
    const [rev, errno] = call(() => c.poll1(fd, events === 'read' ? POLLIN : POLLOUT, Math.min(left, 2 ** 31 - 1)));
    if (rev > 0) {
      if (rev & POLLNVAL) throw new SyscallError('poll', E.EBADF, `poll fd ${fd}: not an open fd`);
      return (rev & (POLLIN | POLLOUT | POLLERR | POLLHUP)) !== 0;
    }
    if (rev === 0) return false;
    if (errno !== E.EINTR) fail('poll', errno, `poll fd ${fd}`);
  }
}

// Resolves once fd is readable (or hung up), without blocking the event
// loop. Only for fds libuv does not already watch (ours from connectUnix or
// socketPair), since an fd can be registered with epoll only once.
// Short zero-timeout polls on a timer rather than an epoll registration:
// this waits on fds that libuv doesn't own, for a client's few messages.
export function whenReadable(fd: number, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve, reject) => {
    const deadline = Date.now() + Math.max(0, timeoutMs);
    const check = (): void => {
      try {
        if (waitFd(fd, 'read', 0)) return resolve(true);
      } catch (err) {
        return reject(err);
      }
      const left = deadline - Date.now();
      if (left <= 0) return resolve(false);
      setTimeout(check, Math.min(5, left));
    };
    check();
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
  const r = libc().socketPair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (typeof r === 'number') fail('socketpair', -r, 'create a Unix socket pair');
  return r;
}

// A blocking, close-on-exec stream socket connected to the Unix socket at
// `path`. Errors carry the errno code (ENOENT, ECONNREFUSED, EACCES...).
export function connectUnix(path: string): number {
  const len = Buffer.byteLength(path);
  if (len === 0 || len >= SUN_PATH_MAX) {
    throw new SyscallError('connect', E.ENAMETOOLONG, `Unix socket path ${JSON.stringify(path)} must be 1-${SUN_PATH_MAX - 1} bytes (it is ${len}); use a shorter path`);
  }
  const [fd, errno] = call(() => libc().connectUnix(path));
  if (fd < 0) fail('connect', errno, `connect to ${path}`);
  return fd;
}

// ------------------------------------------------------------- SCM_RIGHTS

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
  let sent = 0;
  while (sent < data.length) {
    // The fds go with the first chunk only.
    const [n, errno] = call(() => c.sendFds(socketFd, data, sent, data.length - sent, sent === 0 ? fds : [], MSG_NOSIGNAL));
    if (n >= 0) {
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
}

export interface Received {
  data: Buffer; // empty: the peer closed the connection
  fds: number[];
}

function recvOnce(socketFd: number, maxBytes: number, maxFds: number, flags: number): Received | null {
  const r = libc().recvFds(socketFd, maxBytes, maxFds, flags);
  if (typeof r === 'number') {
    if (-r === E.EAGAIN || -r === E.EWOULDBLOCK) return null;
    fail('recvmsg', -r, `receive on socket fd ${socketFd}`);
  }
  // CMSG alignment can leave room for one fd more than asked for.
  if (r.flags & MSG_CTRUNC || r.fds.length > maxFds) {
    closeAllQuietly(r.fds);
    throw new SyscallError('recvmsg', E.EMSGSIZE, `receive on socket fd ${socketFd}: the peer sent more than ${maxFds} fd(s); the extra ones were dropped by the kernel`);
  }
  return { data: r.data, fds: r.fds };
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

// ------------------------------------------------------------------- flock

const LOCK_EX = 2;
const LOCK_NB = 4;
const LOCK_UN = 8;

/** Takes an exclusive lock on fd without waiting; false when another process holds it. */
export function tryLockExclusive(fd: number): boolean {
  const c = libc();
  const [r, errno] = call(() => c.flock(fd, LOCK_EX | LOCK_NB));
  if (r === 0) return true;
  if (errno === E.EWOULDBLOCK) return false;
  fail('flock', errno, `lock fd ${fd}`);
}

export function unlock(fd: number): void {
  const c = libc();
  call(() => c.flock(fd, LOCK_UN));
}

// ----------------------------------------------------------- packet sockets

export const ETH_P_ALL = 0x0003;

/** One classic BPF instruction: code, jump if true, jump if false, k. */
export type BpfInsn = [number, number, number, number];

function encodeFilter(prog: readonly BpfInsn[]): Buffer {
  const b = Buffer.alloc(prog.length * 8);
  prog.forEach(([code, jt, jf, k], i) => {
    b.writeUInt16LE(code, i * 8);
    b.writeUInt8(jt, i * 8 + 2);
    b.writeUInt8(jf, i * 8 + 3);
    b.writeUInt32LE(k >>> 0, i * 8 + 4);
  });
  return b;
}

/**
 * A packet socket on one device: receives the frames the device receives
 * that pass `filter`, sends whole Ethernet frames out of it. Frames sent on
 * a TAP go to the VMM's queues; frames the VMM writes arrive here before
 * any bridge or nftables hook has seen them.
 */
export interface PacketSocket {
  readonly fd: number;
  readonly ifname: string;
  readonly ifindex: number;
  send(frame: Buffer): void;
  /** Starts delivering received frames to onFrame (once). */
  watch(onFrame: (frame: Buffer) => void): void;
  close(): void;
}

export function openPacketSocket(ifname: string, filter: readonly BpfInsn[]): PacketSocket {
  const c = libc();
  const ifindex = ifNameToIndex(ifname);
  // Index 0 would bind to every device: never.
  if (ifindex <= 0) fail('if_nametoindex', E.ENODEV, `open a packet socket on ${ifname}`);
  const [fd, errno] = call(() => c.packetOpen(ifindex, ETH_P_ALL, encodeFilter(filter)));
  if (fd < 0) fail('socket(AF_PACKET)', errno, `open a packet socket on ${ifname}`);
  let handle: object | undefined;
  let closed = false;
  return {
    fd,
    ifname,
    ifindex,
    send(frame) {
      if (closed) throw new SyscallError('send', E.EBADF, `send on ${ifname}: the packet socket is closed`);
      const [n, err] = call(() => c.packetSend(fd, ifindex, frame));
      if (n < 0) fail('send', err, `send a ${frame.length}-byte frame on ${ifname}`);
    },
    watch(onFrame) {
      if (handle || closed) return;
      const h = c.packetWatch(fd, onFrame);
      if (typeof h === 'number') fail('uv_poll', -h, `watch the packet socket on ${ifname}`);
      handle = h;
    },
    close() {
      if (closed) return;
      closed = true;
      if (handle) c.packetUnwatch(handle);
      call(() => c.close(fd));
    },
  };
}
