// The sidecar socket: podtap serves the tap's queue fds on a Unix socket so a
// VMM in another container of the pod (sharing a volume) can pick them up,
// as often as it needs to (a restarted VMM fetches them again).
//
// Protocol "podtap-fds/2", kept trivial so any language can speak it:
//   - the client connects and sends nothing;
//   - the server sends one message: a UTF-8 JSON object followed by "\n",
//       {"protocol":"podtap-fds/2","fds":N,"nics":[{...},...],"description":{...}}
//     with the N queue fds attached as one SCM_RIGHTS control message to its
//     first bytes: NIC 0's queues in queue order, then NIC 1's, and so on;
//     then it closes the connection;
//   - the client reads to EOF, collecting fds from every recvmsg, and checks
//     it got N.
// Each entry of `nics` describes one NIC: `fds` (how many of the N are its
// queues), mac, mtu, interface, tap, bridge, ip, ... `description` repeats
// NIC 0's entry, as version 1 had it, for clients that know one NIC only.
// Version 1 (one NIC, no `nics`) is still understood when fetching.

import { accessSync, writeSync, constants as fsConstants, lstatSync, statSync, unlinkSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import path from 'node:path';
import { type NicValues, type PlaceholderInput, substituteArgv } from './placeholders.ts';
import {
  SyscallError,
  closeAllQuietly,
  closeFd,
  connectUnix,
  dup2,
  dupFd,
  recvFdsNow,
  sendFds,
  socketFdOf,
  whenReadable,
} from '../sys/native.ts';

export const PROTOCOL = 'podtap-fds/2';
const PROTOCOL_V1 = 'podtap-fds/1';

export type FdDescription = Record<string, unknown> & {
  fds?: number; // queue fds of this NIC (podtap-fds/2)
  mac?: string;
  mtu?: number;
  queues?: number;
  tap?: string;
  bridge?: string;
  interface?: string;
};

export class FdSocketError extends Error {
  readonly code: string | undefined;

  constructor(message: string, code?: string) {
    super(message);
    this.name = 'FdSocketError';
    this.code = code;
  }
}

export interface ServeFdsOptions {
  path: string;
  mode?: number; // of the socket file; default 0o600
  // Still owned by the caller: close() doesn't close them. A function is
  // asked at each connection (after an adoption a TAP can only be opened
  // once the VMM that held it has let go). One array per NIC, in NIC order.
  fds: readonly (readonly number[])[] | (() => readonly (readonly number[])[] | Promise<readonly (readonly number[])[]>);
  nics: FdDescription[];
  // Reports per-connection failures (a client that hung up early, ...).
  onError?: (err: Error) => void;
}

export interface FdServer {
  readonly path: string;
  // Connections served so far.
  readonly served: number;
  close(): Promise<void>;
}

// Removes a socket file nobody listens on; refuses to touch anything else.
function clearStaleSocket(p: string): void {
  let st;
  try {
    st = lstatSync(p);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  if (!st.isSocket()) {
    throw new FdSocketError(`${p} exists and is not a socket; refusing to replace it`, 'EEXIST');
  }
  try {
    const fd = connectUnix(p);
    closeFd(fd);
    throw new FdSocketError(`another server is listening on ${p}; stop it or pick another path`, 'EADDRINUSE');
  } catch (err) {
    if (err instanceof SyscallError && err.code === 'ECONNREFUSED') {
      unlinkSync(p);
      return;
    }
    if (err instanceof SyscallError && err.code === 'ENOENT') return;
    throw err;
  }
}

export async function serveFds(opts: ServeFdsOptions): Promise<FdServer> {
  const mode = opts.mode ?? 0o600;
  const sockPath = path.resolve(opts.path);
  const current = async (): Promise<readonly (readonly number[])[]> => (typeof opts.fds === 'function' ? opts.fds() : opts.fds);
  if (typeof opts.fds !== 'function' && opts.fds.flat().length < 1) throw new RangeError('serveFds needs at least one fd');

  clearStaleSocket(sockPath);

  let served = 0;
  const server: Server = createServer({ pauseOnConnect: true }, (conn) => {
    // Never resumed: the client sends nothing, and Node needn't read.
    void current()
      .then((perNic) => {
        if (perNic.some((f) => f.length < 1)) throw new FdSocketError('no TAP fds to serve right now (the VMM that holds a tap is still running)', 'EBUSY');
        const fds = perNic.flat();
        const nics = opts.nics.map((d, i) => ({ ...d, fds: perNic[i]!.length }));
        const payload = Buffer.from(`${JSON.stringify({ protocol: PROTOCOL, fds: fds.length, nics, description: nics[0] })}\n`);
        sendFds(socketFdOf(conn), payload, fds, { timeoutMs: 2000 });
        served++;
      })
      .catch((err: unknown) => opts.onError?.(err instanceof Error ? err : new Error(String(err))))
      // The message sits in the peer's receive queue; closing doesn't lose it.
      .finally(() => conn.destroy());
  });

  // The socket file is created with exactly the requested mode, by the
  // umask in force while it is bound: no chmod afterwards, which would
  // follow a symlink planted at the path in between.
  await new Promise<void>((resolve, reject) => {
    const onError = (err: Error): void => reject(new FdSocketError(`cannot listen on ${sockPath}: ${err.message}`, (err as NodeJS.ErrnoException).code));
    server.once('error', onError);
    const oldMask = process.umask(~mode & 0o777);
    try {
      server.listen(sockPath);
    } finally {
      process.umask(oldMask);
    }
    server.once('listening', () => {
      server.off('error', onError);
      resolve();
    });
  });
  server.on('error', (err) => opts.onError?.(err));
  const ino = statSync(sockPath).ino;

  let closed: Promise<void> | undefined;
  return {
    path: sockPath,
    get served() {
      return served;
    },
    close() {
      closed ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        // Only unlink the file if it is still ours (not replaced by a new server).
        try {
          if (statSync(sockPath).ino === ino) unlinkSync(sockPath);
        } catch {
          // already gone
        }
      });
      return closed;
    },
  };
}

export interface FetchedFds {
  /** One entry per NIC; `fds` of each says how many of the fds are its queues. */
  nics: FdDescription[];
  fds: number[]; // close-on-exec; the caller owns them; NIC 0's queues first
}

const MAX_MESSAGE = 1 << 20;

function connectHint(code: string, p: string): string {
  switch (code) {
    case 'ENOENT':
      return `no socket at ${p}: is podtap running with the fd socket at this path, and is the volume shared with this container?`;
    case 'ECONNREFUSED':
      return `nothing listens on ${p}: podtap exited or has not started serving yet`;
    case 'EACCES':
    case 'EPERM': {
      let owner = '';
      try {
        const st = statSync(p);
        owner = ` (socket owned by uid ${st.uid} gid ${st.gid}, mode ${(st.mode & 0o777).toString(8).padStart(4, '0')})`;
      } catch {
        // can't stat it either
      }
      return `no permission to connect to ${p}${owner}: run as that user, or serve the socket with a wider mode`;
    }
    default:
      return `cannot connect to ${p}`;
  }
}

// Fetches the fds from a podtap fd socket, retrying while it is missing or
// refusing (podtap still starting) for up to timeoutMs (default 10 s).
export async function fetchFds(sockPath: string, opts: { timeoutMs?: number; maxFds?: number } = {}): Promise<FetchedFds> {
  const timeoutMs = opts.timeoutMs ?? 10_000;
  const maxFds = opts.maxFds ?? 64;
  const deadline = Date.now() + timeoutMs;
  let sock: number;
  for (;;) {
    try {
      sock = connectUnix(sockPath);
      break;
    } catch (err) {
      const code = err instanceof SyscallError ? err.code : undefined;
      const retryable = code === 'ENOENT' || code === 'ECONNREFUSED' || code === 'EAGAIN';
      if (!code || !retryable || Date.now() + 100 > deadline) {
        if (!code) throw err;
        throw new FdSocketError(
          `fetching fds: ${connectHint(code, sockPath)} (${code}${retryable ? `, retried for ${timeoutMs} ms` : ''})`,
          code,
        );
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  const chunks: Buffer[] = [];
  const fds: number[] = [];
  let size = 0;
  try {
    for (;;) {
      const got = recvFdsNow(sock, 65536, maxFds - fds.length);
      if (!got) {
        const left = deadline - Date.now();
        if (left <= 0 || !(await whenReadable(sock, left))) {
          throw new FdSocketError(`fetching fds from ${sockPath}: the server sent no complete answer within ${timeoutMs} ms`, 'ETIMEDOUT');
        }
        continue;
      }
      fds.push(...got.fds);
      if (got.data.length === 0) break;
      chunks.push(got.data);
      size += got.data.length;
      if (size > MAX_MESSAGE) throw new FdSocketError(`fetching fds from ${sockPath}: answer larger than ${MAX_MESSAGE} bytes`);
    }
    const text = Buffer.concat(chunks).toString('utf8').trim();
    let msg: { protocol?: unknown; fds?: unknown; description?: unknown; nics?: unknown };
    try {
      msg = JSON.parse(text) as typeof msg;
    } catch {
      throw new FdSocketError(`fetching fds from ${sockPath}: not a podtap fd socket (unparsable answer ${JSON.stringify(text.slice(0, 100))})`);
    }
    if (msg.protocol !== PROTOCOL && msg.protocol !== PROTOCOL_V1) {
      throw new FdSocketError(`fetching fds from ${sockPath}: unsupported protocol ${JSON.stringify(msg.protocol)} (want ${PROTOCOL})`);
    }
    if (msg.fds !== fds.length) {
      throw new FdSocketError(`fetching fds from ${sockPath}: announced ${String(msg.fds)} fd(s) but ${fds.length} arrived`);
    }
    const nics = (msg.protocol === PROTOCOL_V1 ? [{ ...(msg.description as FdDescription), fds: fds.length }] : msg.nics) as FdDescription[];
    if (!Array.isArray(nics) || nics.reduce((n, d) => n + (typeof d?.fds === 'number' ? d.fds : NaN), 0) !== fds.length) {
      throw new FdSocketError(`fetching fds from ${sockPath}: the NIC descriptions do not account for the ${fds.length} fd(s)`);
    }
    return { nics, fds };
  } catch (err) {
    closeAllQuietly(fds);
    throw err;
  } finally {
    closeAllQuietly([sock]);
  }
}

// argv[0] as execve needs it: execve doesn't search PATH.
export function resolveExecutable(file: string, envPath: string | undefined): string {
  const check = (p: string): boolean => {
    try {
      accessSync(p, fsConstants.X_OK);
      return statSync(p).isFile();
    } catch {
      return false;
    }
  };
  if (file.includes('/')) {
    if (!check(file)) throw new FdSocketError(`cannot execute ${file}: missing, not a file, or not executable`, 'ENOENT');
    return file;
  }
  const dirs = (envPath ?? '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin').split(':');
  for (const dir of dirs) {
    const candidate = path.join(dir || '.', file);
    if (check(candidate)) return candidate;
  }
  throw new FdSocketError(`cannot execute ${file}: not found in PATH (${envPath ?? 'default PATH'})`, 'ENOENT');
}

export interface ExecOptions {
  env?: NodeJS.ProcessEnv;
}

// Replaces this process with the VMM, the queue fds at 3, 4, ... (in queue
// order, inheritable), placeholders in argv filled in for those numbers and
// the description. Everything that can be checked (placeholders, the
// executable, process.execve itself) is checked before any fd moves, and
// those failures throw. Once fds 3.. are overwritten, Node's own descriptors
// there (libuv's epoll and signal fds) are gone, so there is no returning
// into the event loop: Node 24 aborts the process when execve fails, and on
// a Node that throws instead this reports on stderr and exits with 127.
export function execWithFds(argv: readonly string[], fds: readonly number[], nics: readonly FdDescription[], opts: ExecOptions = {}): never {
  if (argv.length === 0) throw new RangeError('execWithFds: empty argv');
  if (fds.length === 0) throw new RangeError('execWithFds: no fds');
  const execve = (process as unknown as { execve?: (file: string, args: string[], env: Record<string, string>) => never }).execve;
  if (typeof execve !== 'function') {
    throw new FdSocketError(`process.execve is missing in Node ${process.version}: podtap needs Node >= 23.11 to exec the VMM`);
  }
  const target = fds.map((_, i) => 3 + i);
  const finalArgv = substituteArgv(argv, placeholderInput(nics, target));
  const env = opts.env ?? process.env;
  const file = resolveExecutable(finalArgv[0]!, env.PATH);
  const envList: Record<string, string> = {};
  for (const [k, v] of Object.entries(env)) if (v !== undefined) envList[k] = v;

  // Copy every fd above the target range first, so moving one into place
  // can't clobber another still waiting to move.
  const temps = fds.map((fd) => dupFd(fd, { cloexec: true, min: 3 + fds.length }));
  temps.forEach((t, i) => dup2(t, target[i]!));
  closeAllQuietly(temps);

  try {
    execve.call(process, file, finalArgv, envList);
  } catch (err) {
    writeSync(2, `podtap: exec ${file} failed: ${(err as Error).message}\n`);
  }
  process.exit(127);
}

/** Placeholder values from fetched NIC descriptions, the fds numbered as the VMM will see them. */
export function placeholderInput(nics: readonly FdDescription[], target: readonly number[]): PlaceholderInput {
  let at = 0;
  return {
    nics: nics.map((d) => {
      const n = typeof d.fds === 'number' ? d.fds : 0;
      const v: NicValues = { fds: target.slice(at, at + n) };
      at += n;
      if (typeof d.mac === 'string') v.mac = d.mac;
      if (typeof d.mtu === 'number') v.mtu = d.mtu;
      if (typeof d.tap === 'string') v.tap = d.tap;
      if (typeof d.bridge === 'string') v.bridge = d.bridge;
      if (typeof d.interface === 'string') v.interface = d.interface;
      return v;
    }),
  };
}
