// The sidecar fd socket end to end: a server process in a namespace made for
// the test holds two NICs' taps (two queues and one) and serves their fds
// (podtap-fds/2); clients fetch them (repeatedly) and exec a program that
// finds NIC 0's queues at fds 3 and 4 and NIC 1's at 5. Then the real
// thing: `podtap up --fd-socket` in a two-NIC pod and `podtap exec`.

import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, chmodSync, existsSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect, createServer } from 'node:net';
import { FdSocketError, PROTOCOL, fetchFds, resolveExecutable, serveFds } from '../../src/handoff/fd-socket.ts';
import { IFF_MULTI_QUEUE, IFF_VNET_HDR, closeAllQuietly, getCloexec, sendFds, socketFdOf, socketPair, tapInfo } from '../../src/sys/native.ts';
import { NODE, REPO, createNetns, deleteNetns, linkIn } from '../helpers/handoff-netns.ts';
import { Cleanup, runInPod } from '../helpers/netns.ts';
import { makePod } from '../helpers/pods.ts';
import { snapshot, diffSnapshots } from '../helpers/snapshot.ts';
import { PODTAP, expectReady, startPodtap } from '../helpers/podtap.ts';

const url = (p: string): string => JSON.stringify(pathToFileURL(path.join(REPO, p)).href);
const NATIVE = url('src/sys/native.ts');
const FD_SOCKET = url('src/handoff/fd-socket.ts');

const NIC0 = { nic: 0, interface: 'eth0', mac: '02:00:0a:00:00:05', mtu: 1450, queues: 2, tap: 'phfd0', bridge: 'br0', ip: '10.0.0.5/24' };
const NIC1 = { nic: 1, interface: 'net1', mac: '02:00:0a:00:01:05', mtu: 1500, queues: 1, tap: 'phfd1', bridge: null, ip: '10.1.0.5/24' };

// Runs inside the namespace: holds the taps, serves them until SIGTERM.
const SERVER = `
import { openTap } from ${NATIVE};
import { serveFds } from ${FD_SOCKET};
const sockPath = process.argv[1];
const fds = [openTap('phfd0', { queues: 2, vnetHdr: true, multiQueue: true }), openTap('phfd1', { queues: 1, vnetHdr: true, multiQueue: false })];
const srv = await serveFds({ path: sockPath, fds, nics: ${JSON.stringify([NIC0, NIC1])}, onError: (e) => console.error(e) });
console.log(JSON.stringify({ ready: true }));
process.on('SIGTERM', async () => { await srv.close(); console.log(JSON.stringify({ served: srv.served })); process.exit(0); });
`;

// Fetches the fds and execs what argv[2] names.
const EXEC_CLIENT = `
import { fetchFds, execWithFds } from ${FD_SOCKET};
const [sockPath, which] = process.argv.slice(1);
const { nics, fds } = await fetchFds(sockPath);
if (which === 'sh') {
  execWithFds(['sh', '-c',
    'for f in 3 4 5 6 7; do [ -e /proc/self/fd/$f ] && echo "fd $f $(readlink /proc/self/fd/$f)"; done; ' +
    'echo "args {fd} {fds} {fds_csv} {mac} {mtu} {tap} {bridge} {queues} {vectors} {ch_queues}"; ' +
    'echo "nic1 {fd:1} {fds:net1} {mac:1} {mtu:net1} {tap:1} {queues:1} {interface:1}"; echo \\'{"json":{"ok":1}}\\''],
    fds, nics);
} else {
  execWithFds([${JSON.stringify(NODE)}, '--input-type=module', '-e',
    'import { tapInfo } from "${JSON.parse(NATIVE)}"; ' +
    'console.log(JSON.stringify({ q0: tapInfo(3), q1: tapInfo(4), n1: tapInfo(5), argv: process.argv.slice(1) }));',
    '{fd}', '{fds}', '{mac}', '{fd:1}'], fds, nics);
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
  it('creates a socket file with exactly the default mode 0600', () => {
    const st = statSync(sockPath);
    expect(st.isSocket()).toBe(true);
    expect(st.mode & 0o777).toBe(0o600);
  });

  it('hands out every NIC\'s tap fds with their descriptions, NIC 0\'s queues first, again and again', async () => {
    for (let round = 0; round < 3; round++) {
      const { nics, fds } = await fetchFds(sockPath, { timeoutMs: 5000 });
      try {
        expect(nics).toEqual([{ ...NIC0, fds: 2 }, { ...NIC1, fds: 1 }]);
        expect(fds).toHaveLength(3);
        for (const fd of fds) expect(getCloexec(fd)).toBe(true);
        const infos = fds.map((fd) => tapInfo(fd));
        expect(infos.map((i) => i.name)).toEqual(['phfd0', 'phfd0', 'phfd1']);
        for (const i of infos.slice(0, 2)) expect(i.flags & (IFF_VNET_HDR | IFF_MULTI_QUEUE)).toBe(IFF_VNET_HDR | IFF_MULTI_QUEUE);
        expect(infos[2]!.flags & (IFF_VNET_HDR | IFF_MULTI_QUEUE)).toBe(IFF_VNET_HDR);
      } finally {
        closeAllQuietly(fds);
      }
    }
  });

  it('speaks podtap-fds/2 on the wire: one JSON line with every NIC and NIC 0 as the description', async () => {
    // A client that takes no fds (the kernel closes them) and reads the text.
    const text = await new Promise<string>((resolve, reject) => {
      let got = '';
      const c = connect(sockPath);
      c.on('data', (d) => (got += d.toString()));
      c.on('end', () => resolve(got));
      c.on('error', reject);
    });
    expect(text.endsWith('\n')).toBe(true);
    expect(JSON.parse(text)).toEqual({ protocol: 'podtap-fds/2', fds: 3, nics: [{ ...NIC0, fds: 2 }, { ...NIC1, fds: 1 }], description: { ...NIC0, fds: 2 } });
    expect(PROTOCOL).toBe('podtap-fds/2');
  });

  it('execs a program that finds NIC 0 at fds 3 and 4, NIC 1 at fd 5, and nothing else', async () => {
    const r = await run([NODE, '--input-type=module', '-e', EXEC_CLIENT, sockPath, 'sh']);
    expect(r.code, r.stderr).toBe(0);
    const lines = r.stdout.trim().split('\n');
    expect(lines.filter((l) => l.startsWith('fd '))).toEqual(['fd 3 /dev/net/tun', 'fd 4 /dev/net/tun', 'fd 5 /dev/net/tun']);
    expect(lines).toContain('args 3 3:4 3,4 02:00:0a:00:00:05 1450 phfd0 br0 2 6 4');
    expect(lines).toContain('nic1 5 5 02:00:0a:00:01:05 1500 phfd1 1 net1');
    expect(lines).toContain('{"json":{"ok":1}}');
  });

  it('execs a program that sees the same tap on its inheritable fds', async () => {
    const r = await run([NODE, '--input-type=module', '-e', EXEC_CLIENT, sockPath, 'node']);
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout.trim()) as { q0: { name: string; flags: number }; q1: { name: string }; n1: { name: string }; argv: string[] };
    expect(out.q0.name).toBe('phfd0');
    expect(out.q0.flags & IFF_MULTI_QUEUE).toBe(IFF_MULTI_QUEUE);
    expect(out.q1.name).toBe('phfd0');
    expect(out.n1.name).toBe('phfd1');
    expect(out.argv).toEqual(['3', '3:4', '02:00:0a:00:00:05', '5']);
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
    expect(await served).toBe(6);
    expect(existsSync(sockPath)).toBe(false);
    expect(linkIn(ns, 'phfd0')).toBeUndefined();
    expect(linkIn(ns, 'phfd1')).toBeUndefined();
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
      const srv = await serveFds({ path: p, mode: 0o660, fds: [[a]], nics: [{ note: 'x' }] });
      try {
        expect(statSync(p).mode & 0o777).toBe(0o660);
        await expect(serveFds({ path: p, fds: [[a]], nics: [{}] })).rejects.toThrow(/another server is listening/);
        const got = await fetchFds(p, { timeoutMs: 2000 });
        expect(got.nics).toEqual([{ note: 'x', fds: 1 }]);
        expect(got.fds).toHaveLength(1);
        closeAllQuietly(got.fds);
        expect(srv.served).toBe(1);
      } finally {
        await srv.close();
      }
      expect(existsSync(p)).toBe(false);

      const file = path.join(dir, 'plain');
      writeFileSync(file, 'not a socket');
      await expect(serveFds({ path: file, fds: [[a]], nics: [{}] })).rejects.toThrow(/not a socket; refusing/);
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
        try { execWithFds(argv, [a], [{ fds: 1 }]); } catch (e) { console.log(e.message); }
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

describe('fetching from an older server', () => {
  it('podtap-fds/1 (one NIC, a description) is still understood', async () => {
    const p = path.join(dir, 'v1.sock');
    const [a, b] = socketPair();
    const server = createServer({ pauseOnConnect: true }, (conn) => {
      const payload = Buffer.from(`${JSON.stringify({ protocol: 'podtap-fds/1', fds: 1, description: { mac: '02:00:00:00:00:01', tap: 'tap0' } })}\n`);
      sendFds(socketFdOf(conn), payload, [a], { timeoutMs: 2000 });
      conn.destroy();
    });
    await new Promise<void>((resolve) => server.listen(p, resolve));
    try {
      const got = await fetchFds(p, { timeoutMs: 2000 });
      expect(got.nics).toEqual([{ mac: '02:00:00:00:00:01', tap: 'tap0', fds: 1 }]);
      expect(got.fds).toHaveLength(1);
      closeAllQuietly(got.fds);
    } finally {
      await new Promise((resolve) => server.close(resolve));
      closeAllQuietly([a, b]);
    }
  });
});

describe('podtap up --fd-socket and podtap exec', () => {
  const cleanup = new Cleanup();
  afterAll(() => cleanup.cleanupAll());

  it('two NICs: exec finds each NIC\'s queues in NIC order, with their placeholders; the socket goes on SIGTERM', async () => {
    const pod = await makePod('multi', { cleanup });
    const before = await snapshot(pod.pod);
    const sock = path.join(dir, 'podtap-fds.sock');
    const nicArgs = ['--interface', 'eth0', '--interface', 'net2'];
    const up = startPodtap(pod, ['up', '--fd-socket', sock, '--queues', '2', ...nicArgs], cleanup);
    const ready = await up.ready;
    expect(ready.fdSocket).toBe(sock);
    expect(ready.nics.map((n) => [n.interface, n.tap, n.queues])).toEqual([['eth0', 'tap0', 2], ['net2', 'tap1', 2]]);
    const script = 'for f in 3 4 5 6 7; do [ -e /proc/self/fd/$f ] && echo "fd $f $(sed -n "s/^iff:[[:space:]]*//p" /proc/self/fdinfo/$f)"; done; echo "args $*"';
    const r = await runInPod(pod.pod, pod.hostname, [PODTAP, 'exec', '--fd-socket', sock, '--', 'sh', '-c', script, 'vmm', '{fds}', '{mac}', '{fds:1}', '{mac:net2}', '{tap:1}', '{interface:1}'], { reject: false });
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stdout.split('\n').filter((l) => l.startsWith('fd '))).toEqual(['fd 3 tap0', 'fd 4 tap0', 'fd 5 tap1', 'fd 6 tap1']);
    const net2 = pod.nics.find((n) => n.ifname === 'net2')!;
    expect(r.stdout.split('\n')).toContain(`args 3:4 ${pod.expect.mac} 5:6 ${net2.mac} tap1 net2`);
    expect(r.stderr).toMatch(/fetched the TAP fds fds=4 nics=2/);
    up.proc.kill('SIGTERM');
    expect((await up.proc).exitCode, up.stderr()).toBe(0);
    expect(existsSync(sock)).toBe(false);
    expect(diffSnapshots(before, await snapshot(pod.pod))).toEqual([]);
  });
});
