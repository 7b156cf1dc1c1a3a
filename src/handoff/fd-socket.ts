// The sidecar socket: podtap serves the tap's queue fds on a Unix socket so a
// VMM in another container of the pod (sharing a volume) can pick them up,
// as often as it needs to (a restarted VMM fetches them again).
//
// Protocol "podtap-fds/1", kept trivial so any language can speak it:
//   - the client connects and sends nothing;
//   - the server sends one message: a UTF-8 JSON object followed by "\n",
//       {"protocol":"podtap-fds/1","fds":N,"description":{...}}
//     with the N queue fds (queue order) attached as one SCM_RIGHTS control
//     message to its first bytes, then closes the connection;
//   - the client reads to EOF, collecting fds from every recvmsg, and checks
//     it got N.
// `description` is what the VMM needs besides the fds: mac, mtu, queues,
// tap, bridge, ip, ...

import { accessSync, chmodSync, writeSync, constants as fsConstants, lstatSync, statSync, unlinkSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import path from 'node:path';
import { type PlaceholderInput, substituteArgv } from './placeholders.ts';
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

export const PROTOCOL = 'podtap-fds/1';

export type FdDescription = Record<string, unknown> & {
  mac?: string;
  mtu?: number;
  queues?: number;
  tap?: string;
  bridge?: string;
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
  // asked at each connection (after an adoption the TAP can only be opened
  // once the VMM that held it has let go).
  fds: readonly number[] | (() => readonly number[] | Promise<readonly number[]>);
  description: FdDescription;
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
  const { description } = opts;
  const mode = opts.mode ?? 0o600;
  const sockPath = path.resolve(opts.path);
  const current = async (): Promise<readonly number[]> => (typeof opts.fds === 'function' ? opts.fds() : opts.fds);
  if (typeof opts.fds !== 'function' && opts.fds.length < 1) throw new RangeError('serveFds needs at least one fd');

  clearStaleSocket(sockPath);

  let served = 0;
  const server: Server = createServer({ pauseOnConnect: true }, (conn) => {
    // Never resumed: the client sends nothing, and Node needn't read.
    void current()
      .then((fds) => {
        if (fds.length < 1) throw new FdSocketError('no TAP fds to serve right now (the VMM that holds the tap is still running)', 'EBUSY');
        const payload = Buffer.from(`${JSON.stringify({ protocol: PROTOCOL, fds: fds.length, description })}\n`);
        sendFds(socketFdOf(conn), payload, fds, { timeoutMs: 2000 });
        served++;
      })
      .catch((err: unknown) => opts.onError?.(err instanceof Error ? err : new Error(String(err))))
      // The message sits in the peer's receive queue; closing doesn't lose it.
      .finally(() => conn.destroy());
  });

  // The socket file must never be reachable with looser permissions than
  // asked for: bind under a umask that yields at most 0600, then chmod to the
  // requested mode before the first accept (which needs the event loop).
  await new Promise<void>((resolve, reject) => {
    const onError = (err: Error): void => reject(new FdSocketError(`cannot listen on ${sockPath}: ${err.message}`, (err as NodeJS.ErrnoException).code));
    server.once('error', onError);
    let oldMask: number | undefined;
    try {
      oldMask = process.umask(0o177);
    } catch {
      // worker threads can't change the umask; the chmod below still applies
    }
    try {
      server.listen(sockPath);
    } finally {
      if (oldMask !== undefined) process.umask(oldMask);
    }
    try {
      chmodSync(sockPath, mode);
    } catch (err) {
      server.close();
      reject(new FdSocketError(`cannot chmod ${sockPath}: ${(err as Error).message}`));
      return;
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
  description: FdDescription;
  fds: number[]; // close-on-exec; the caller owns them
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
    let msg: { protocol?: unknown; fds?: unknown; description?: unknown };
    try {
      msg = JSON.parse(text) as typeof msg;
    } catch {
      throw new FdSocketError(`fetching fds from ${sockPath}: not a podtap fd socket (unparsable answer ${JSON.stringify(text.slice(0, 100))})`);
    }
    if (msg.protocol !== PROTOCOL) {
      throw new FdSocketError(`fetching fds from ${sockPath}: unsupported protocol ${JSON.stringify(msg.protocol)} (want ${PROTOCOL})`);
    }
    if (msg.fds !== fds.length) {
      throw new FdSocketError(`fetching fds from ${sockPath}: announced ${String(msg.fds)} fd(s) but ${fds.length} arrived`);
    }
    const description = (msg.description ?? {}) as FdDescription;
    return { description, fds };
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
export function execWithFds(argv: readonly string[], fds: readonly number[], description: FdDescription, opts: ExecOptions = {}): never {
  if (argv.length === 0) throw new RangeError('execWithFds: empty argv');
  if (fds.length === 0) throw new RangeError('execWithFds: no fds');
  const execve = (process as unknown as { execve?: (file: string, args: string[], env: Record<string, string>) => never }).execve;
  if (typeof execve !== 'function') {
    throw new FdSocketError(`process.execve is missing in Node ${process.version}: podtap needs Node >= 23.11 to exec the VMM`);
  }
  const target = fds.map((_, i) => 3 + i);
  const input: PlaceholderInput = { fds: target };
  if (typeof description.mac === 'string') input.mac = description.mac;
  if (typeof description.mtu === 'number') input.mtu = description.mtu;
  if (typeof description.tap === 'string') input.tap = description.tap;
  if (typeof description.bridge === 'string') input.bridge = description.bridge;
  const finalArgv = substituteArgv(argv, input);
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
