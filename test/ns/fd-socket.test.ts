// The sidecar fd socket end to end: a server process in a namespace made for
// the test holds a tap and serves its fds; clients fetch them (repeatedly)
// and exec a program that finds the tap at fd 3 and 4.

import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, chmodSync, existsSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FdSocketError, fetchFds, resolveExecutable, serveFds } from '../../src/handoff/fd-socket.ts';
import { IFF_MULTI_QUEUE, IFF_VNET_HDR, closeAllQuietly, getCloexec, socketPair, tapInfo } from '../../src/sys/native.ts';
import { NODE, REPO, createNetns, deleteNetns, linkIn } from '../helpers/handoff-netns.ts';

const url = (p: string): string => JSON.stringify(pathToFileURL(path.join(REPO, p)).href);
const NATIVE = url('src/sys/native.ts');
const FD_SOCKET = url('src/handoff/fd-socket.ts');

const DESCRIPTION = { mac: '02:00:0a:00:00:05', mtu: 1450, queues: 2, tap: 'phfd0', bridge: 'br0', ip: '10.0.0.5/24' };

// Runs inside the namespace: holds the tap, serves it until SIGTERM.
const SERVER = `
import { openTap } from ${NATIVE};
import { serveFds } from ${FD_SOCKET};
const sockPath = process.argv[1];
const fds = openTap('phfd0', { queues: 2, vnetHdr: true, multiQueue: true });
const srv = await serveFds({ path: sockPath, fds, description: ${JSON.stringify(DESCRIPTION)}, onError: (e) => console.error(e) });
console.log(JSON.stringify({ ready: true }));
process.on('SIGTERM', async () => { await srv.close(); console.log(JSON.stringify({ served: srv.served })); process.exit(0); });
`;

// Fetches the fds and execs what argv[2] names.
const EXEC_CLIENT = `
import { fetchFds, execWithFds } from ${FD_SOCKET};
const [sockPath, which] = process.argv.slice(1);
const { description, fds } = await fetchFds(sockPath);
if (which === 'sh') {
  execWithFds(['sh', '-c',
    'for f in 3 4 5 6 7; do [ -e /proc/self/fd/$f ] && echo "fd $f $(readlink /proc/self/fd/$f)"; done; ' +
    'echo "args {fd} {fds} {fds_csv} {mac} {mtu} {tap} {bridge} {queues} {vectors} {ch_queues}"; echo \\'{"json":{"ok":1}}\\''],
    fds, description);
} else {
  execWithFds([${JSON.stringify(NODE)}, '--input-type=module', '-e',
    'import { tapInfo } from "${JSON.parse(NATIVE)}"; ' +
    'console.log(JSON.stringify({ q0: tapInfo(3), q1: tapInfo(4), argv: process.argv.slice(1) }));',
    '{fd}', '{fds}', '{mac}'], fds, description);
}
`;

let ns: string;
let dir: string;
let sockPath: string;
let server: ChildProcess | undefined;
const children: ChildProcess[] = [];

function run(args: string[], opts: { timeoutMs?: number } = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(args[0]!, args.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
    children.push(child);
    let stdout = '';
    let stderr = '';
    child.stdout?.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 30_000);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

async function killChild(child: ChildProcess | undefined, signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
  if (!child || child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
  const gone = new Promise((resolve) => child.once('exit', resolve));
  process.kill(child.pid, signal);
  await gone;
}

beforeAll(async () => {
  ns = createNetns('ph-fds');
  dir = mkdtempSync(path.join(tmpdir(), 'ph-fds-'));
  // Searchable by anyone, so only the socket's own mode keeps others out.
  chmodSync(dir, 0o755);
  // serveFds never creates directories (podtap checks them up front).
  mkdirSync(path.join(dir, 'run'));
  sockPath = path.join(dir, 'run', 'fds.sock');
  server = spawn('ip', ['netns', 'exec', ns, NODE, '--input-type=module', '-e', SERVER, sockPath], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  await new Promise<void>((resolve, reject) => {
    server!.once('exit', (code) => reject(new Error(`fd server exited early (${code})`)));
    createInterface({ input: server!.stdout! }).once('line', () => resolve());
  });
});

afterAll(async () => {
  try {
    for (const c of children) await killChild(c);
    await killChild(server);
  } finally {
    deleteNetns(ns);
    rmSync(dir, { recursive: true, force: true });
  }
});

describe('fd socket', () => {
  it('creates the socket with mode 0600 in a directory it makes', () => {
    const st = statSync(sockPath);
    expect(st.isSocket()).toBe(true);
    expect(st.mode & 0o777).toBe(0o600);
  });

  it('hands out the tap fds with the description, again and again', async () => {
    for (let round = 0; round < 3; round++) {
      const { description, fds } = await fetchFds(sockPath, { timeoutMs: 5000 });
      try {
        expect(description).toEqual(DESCRIPTION);
        expect(fds).toHaveLength(2);
        for (const fd of fds) {
          expect(getCloexec(fd)).toBe(true);
          const info = tapInfo(fd);
          expect(info.name).toBe('phfd0');
          expect(info.flags & (IFF_VNET_HDR | IFF_MULTI_QUEUE)).toBe(IFF_VNET_HDR | IFF_MULTI_QUEUE);
        }
      } finally {
        closeAllQuietly(fds);
      }
    }
  });

  it('execs a program that finds the tap at fds 3 and 4 and nothing else', async () => {
    const r = await run([NODE, '--input-type=module', '-e', EXEC_CLIENT, sockPath, 'sh']);
    expect(r.code, r.stderr).toBe(0);
    const lines = r.stdout.trim().split('\n');
    expect(lines.filter((l) => l.startsWith('fd '))).toEqual(['fd 3 /dev/net/tun', 'fd 4 /dev/net/tun']);
    expect(lines).toContain('args 3 3:4 3,4 02:00:0a:00:00:05 1450 phfd0 br0 2 6 4');
    expect(lines).toContain('{"json":{"ok":1}}');
  });

  it('execs a program that sees the same tap on its inheritable fds', async () => {
    const r = await run([NODE, '--input-type=module', '-e', EXEC_CLIENT, sockPath, 'node']);
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout.trim()) as { q0: { name: string; flags: number }; q1: { name: string }; argv: string[] };
    expect(out.q0.name).toBe('phfd0');
    expect(out.q0.flags & IFF_MULTI_QUEUE).toBe(IFF_MULTI_QUEUE);
    expect(out.q1.name).toBe('phfd0');
    expect(out.argv).toEqual(['3', '3:4', '02:00:0a:00:00:05']);
  });

  it('refuses a client without permission, saying why', async () => {
    const script = `
      import { fetchFds } from ${FD_SOCKET};
      try { await fetchFds(process.argv[1], { timeoutMs: 1000 }); console.log('fetched'); }
      catch (e) { console.log(JSON.stringify({ code: e.code, message: e.message })); }
    `;
    const r = await run(['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', NODE, '--input-type=module', '-e', script, sockPath]);
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout.trim()) as { code: string; message: string };
    expect(out.code).toBe('EACCES');
    expect(out.message).toMatch(/no permission to connect .*mode 0600/);
  });

  it('reports a missing socket after a bounded retry', async () => {
    const t0 = Date.now();
    const err = (await fetchFds(path.join(dir, 'none.sock'), { timeoutMs: 500 }).catch((e: unknown) => e)) as FdSocketError;
    expect(Date.now() - t0).toBeGreaterThanOrEqual(400);
    expect(err).toBeInstanceOf(FdSocketError);
    expect(err.code).toBe('ENOENT');
    expect(err.message).toMatch(/no socket at .*none\.sock.*retried for 500 ms/);
  });

  it('removes its socket on close and the tap goes with the server', async () => {
    const stdout = createInterface({ input: server!.stdout! });
    const served = new Promise<number>((resolve) =>
      stdout.once('line', (line) => resolve((JSON.parse(line) as { served: number }).served)),
    );
    await killChild(server, 'SIGTERM');
    expect(await served).toBe(5);
    expect(existsSync(sockPath)).toBe(false);
    expect(linkIn(ns, 'phfd0')).toBeUndefined();
  });
});

describe('fd socket housekeeping', () => {
  it('replaces a stale socket, refuses a live one or a non-socket, honours mode', async () => {
    const p = path.join(dir, 'stale.sock');
    // A server that dies without unlinking leaves a stale socket file.
    const stale = spawn(NODE, ['-e', `require('net').createServer().listen(${JSON.stringify(p)}, () => console.log('up'))`], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    children.push(stale);
    await new Promise((resolve) => createInterface({ input: stale.stdout! }).once('line', resolve));
    await killChild(stale);
    expect(statSync(p).isSocket()).toBe(true);
    const refused = (await fetchFds(p, { timeoutMs: 300 }).catch((e: unknown) => e)) as FdSocketError;
    expect(refused.code).toBe('ECONNREFUSED');

    const [a, b] = socketPair();
    try {
      const srv = await serveFds({ path: p, mode: 0o660, fds: [a], description: { note: 'x' } });
      try {
        expect(statSync(p).mode & 0o777).toBe(0o660);
        await expect(serveFds({ path: p, fds: [a], description: {} })).rejects.toThrow(/another server is listening/);
        const got = await fetchFds(p, { timeoutMs: 2000 });
        expect(got.description).toEqual({ note: 'x' });
        expect(got.fds).toHaveLength(1);
        closeAllQuietly(got.fds);
        expect(srv.served).toBe(1);
      } finally {
        await srv.close();
      }
      expect(existsSync(p)).toBe(false);

      const file = path.join(dir, 'plain');
      writeFileSync(file, 'not a socket');
      await expect(serveFds({ path: file, fds: [a], description: {} })).rejects.toThrow(/not a socket; refusing/);
      expect(existsSync(file)).toBe(true);
    } finally {
      closeAllQuietly([a, b]);
    }
  });

  it('resolves executables on PATH as execve needs', () => {
    expect(resolveExecutable('sh', '/nonexistent:/bin:/usr/bin')).toMatch(/^\/(usr\/)?bin\/sh$/);
    expect(resolveExecutable('/bin/sh', undefined)).toBe('/bin/sh');
    expect(() => resolveExecutable('no-such-vmm', '/bin:/usr/bin')).toThrow(/not found in PATH/);
    const plain = path.join(dir, 'not-exec');
    writeFileSync(plain, '#!/bin/sh\n', { mode: 0o644 });
    expect(() => resolveExecutable(plain, undefined)).toThrow(/not executable/);
  });

  it('checks what it can before moving any fd', async () => {
    const script = `
      import { execWithFds } from ${FD_SOCKET};
      import { socketPair } from ${NATIVE};
      const [a] = socketPair();
      for (const argv of [['sh', '-c', '{nope}'], ['no-such-vmm-binary', '{fd}']]) {
        try { execWithFds(argv, [a], {}); } catch (e) { console.log(e.message); }
      }
      console.log('still here');
    `;
    const r = await run([NODE, '--input-type=module', '-e', script]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/unknown placeholder \{nope\}/);
    expect(r.stdout).toMatch(/no-such-vmm-binary: not found in PATH/);
    expect(r.stdout).toMatch(/still here/);
  });
});
