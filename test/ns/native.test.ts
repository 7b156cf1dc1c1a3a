// The native syscall layer against the real kernel: taps are opened in a
// namespace made for the test, fds cross real Unix sockets.

import { spawn, spawnSync } from 'node:child_process';
import { createServer, type Server } from 'node:net';
import { closeSync, mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  IFF_MULTI_QUEUE,
  IFF_NO_PI,
  IFF_PERSIST,
  IFF_TAP,
  IFF_VNET_HDR,
  SyscallError,
  closeAllQuietly,
  closeFd,
  connectUnix,
  dup2,
  dupFd,
  getCloexec,
  openPacketSocket,
  openTap,
  recvFds,
  recvFdsNow,
  sendFds,
  setCloexec,
  setNonBlocking,
  setTapPersist,
  socketFdOf,
  socketPair,
  tapInfo,
  tryLockExclusive,
  unlock,
  whenReadable,
  type BpfInsn,
} from '../../src/sys/native.ts';
import { SERVER_FILTER, runFilter } from '../../src/serve/packet.ts';
import { udp4Frame } from '../../src/serve/frames.ts';
import { NODE, REPO, createNetns, deleteNetns, inNetns, ipIn, linkIn } from '../helpers/handoff-netns.ts';

const NATIVE_URL = pathToFileURL(path.join(REPO, 'src/sys/native.ts')).href;

let ns: string;
const opened: number[] = [];

function tap(name: string, queues = 1, extra: { vnetHdr?: boolean; exclusive?: boolean } = {}): number[] {
  const fds = inNetns(ns, () =>
    openTap(name, { queues, vnetHdr: extra.vnetHdr ?? true, multiQueue: queues > 1, exclusive: extra.exclusive }),
  );
  opened.push(...fds);
  return fds;
}

function release(fds: number[]): void {
  for (const fd of fds) {
    const i = opened.indexOf(fd);
    if (i >= 0) opened.splice(i, 1);
  }
  closeAllQuietly(fds);
}

function catchErr(fn: () => unknown): unknown {
  try {
    fn();
  } catch (err) {
    return err;
  }
  throw new Error('expected an error');
}

beforeAll(() => {
  ns = createNetns('ph-native');
});

afterAll(() => {
  closeAllQuietly(opened);
  deleteNetns(ns);
});

describe('openTap / tapInfo', () => {
  it('opens a 2-queue vnet_hdr tap that ip sees as such', () => {
    const fds = tap('phmq0', 2);
    expect(fds).toHaveLength(2);
    for (const fd of fds) {
      const info = tapInfo(fd);
      expect(info.name).toBe('phmq0');
      const want = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE;
      expect(info.flags & want).toBe(want);
      expect(info.flags & IFF_PERSIST).toBe(0);
      expect(getCloexec(fd)).toBe(true);
    }
    const link = linkIn(ns, 'phmq0');
    expect(link?.linkinfo?.info_kind).toBe('tun');
    expect(link?.linkinfo?.info_data).toMatchObject({ type: 'tap', pi: false, vnet_hdr: true, multi_queue: true, numqueues: 2 });
    expect(ipIn(ns, ['-d', 'link', 'show', 'phmq0'])).toMatch(/tun type tap pi off vnet_hdr on multi_queue numqueues 2/);

    release(fds);
    expect(linkIn(ns, 'phmq0')).toBeUndefined();
  });

  it('opens a single-queue tap without vnet_hdr', () => {
    const [fd] = tap('phsq0', 1, { vnetHdr: false });
    const info = tapInfo(fd!);
    expect(info.flags & IFF_VNET_HDR).toBe(0);
    expect(info.flags & IFF_MULTI_QUEUE).toBe(0);
    expect(info.flags & (IFF_TAP | IFF_NO_PI)).toBe(IFF_TAP | IFF_NO_PI);
    release([fd!]);
  });

  it('refuses a name held by another kind of link with EBUSY', () => {
    ipIn(ns, ['link', 'add', 'phtaken0', 'type', 'bridge']);
    try {
      const err = catchErr(() => tap('phtaken0'));
      expect(err).toBeInstanceOf(SyscallError);
      const e = err as SyscallError;
      expect(e.code).toBe('EBUSY');
      expect(e.syscall).toBe('TUNSETIFF');
      expect(e.message).toContain('phtaken0');
      expect(e.message).toContain('ip link del phtaken0');

      // Without the exclusive flag the kernel says EINVAL; the message still
      // names the culprit.
      const inval = catchErr(() => tap('phtaken0', 1, { exclusive: false })) as SyscallError;
      expect(inval.code).toBe('EINVAL');
      expect(inval.message).toMatch(/phtaken0 exists but is not a tap/);
    } finally {
      ipIn(ns, ['link', 'del', 'phtaken0']);
    }
  });

  it('refuses a name held by a live tap with EBUSY and closes what it opened', () => {
    const first = tap('phbusy0');
    const err = catchErr(() => tap('phbusy0', 2)) as SyscallError;
    expect(err.code).toBe('EBUSY');
    expect(err.message).toMatch(/taken by another tap or link/);
    // The failed call must not have left a queue attached.
    expect(linkIn(ns, 'phbusy0')?.linkinfo?.info_data).toMatchObject({ type: 'tap' });
    release(first);
    expect(linkIn(ns, 'phbusy0')).toBeUndefined();
  });

  it('rejects bad arguments before touching the kernel', () => {
    expect(() => openTap('', { queues: 1, vnetHdr: true, multiQueue: false })).toThrow(RangeError);
    expect(() => openTap('a-very-long-name0', { queues: 1, vnetHdr: true, multiQueue: false })).toThrow(/1-15 bytes/);
    expect(() => openTap('tap%d', { queues: 1, vnetHdr: true, multiQueue: false })).toThrow(RangeError);
    expect(() => openTap('tap0', { queues: 2, vnetHdr: true, multiQueue: false })).toThrow(/multiQueue/);
    expect(() => openTap('tap0', { queues: 0, vnetHdr: true, multiQueue: true })).toThrow(/queues/);
  });

  it('keeps a persistent tap after its fds close, and re-attaches to it', () => {
    const [fd] = tap('phpers0');
    setTapPersist(fd!, true);
    expect(tapInfo(fd!).flags & IFF_PERSIST).toBe(IFF_PERSIST);
    release([fd!]);
    expect(linkIn(ns, 'phpers0')?.linkinfo?.info_data).toMatchObject({ persist: true });
    const [again] = tap('phpers0', 1, { exclusive: false });
    expect(tapInfo(again!).name).toBe('phpers0');
    setTapPersist(again!, false);
    release([again!]);
    expect(linkIn(ns, 'phpers0')).toBeUndefined();
  });

  it('explains EPERM as a missing CAP_NET_ADMIN', () => {
    const script = `
      import { openTap } from ${JSON.stringify(NATIVE_URL)};
      try { openTap('phperm0', { queues: 1, vnetHdr: true, multiQueue: false }); console.log('opened'); }
      catch (e) { console.log(JSON.stringify({ code: e.code, message: e.message })); }
    `;
    const r = spawnSync(
      'ip',
      ['netns', 'exec', ns, 'setpriv', '--bounding-set', '-net_admin', NODE, '--input-type=module', '-e', script],
      { encoding: 'utf8' },
    );
    expect(r.status, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout.trim()) as { code: string; message: string };
    expect(out.code).toBe('EPERM');
    expect(out.message).toMatch(/CAP_NET_ADMIN/);
  });
});

describe('fd helpers', () => {
  it('dups with and without close-on-exec, and dup2 clears it', () => {
    const [a, b] = socketPair();
    try {
      const d1 = dupFd(a);
      const d2 = dupFd(a, { cloexec: false, min: 100 });
      expect(getCloexec(d1)).toBe(true);
      expect(getCloexec(d2)).toBe(false);
      expect(d2).toBeGreaterThanOrEqual(100);
      setCloexec(d2, true);
      expect(getCloexec(d2)).toBe(true);
      const target = dupFd(b, { min: 200 });
      expect(dup2(d1, target)).toBe(target);
      expect(getCloexec(target)).toBe(false);
      expect(dup2(target, target)).toBe(target);
      closeAllQuietly([d1, d2, target]);
    } finally {
      closeAllQuietly([a, b]);
    }
  });

  it('reports closing a closed fd as EBADF', () => {
    const [a, b] = socketPair();
    closeFd(a);
    closeFd(b);
    expect((catchErr(() => closeFd(a)) as SyscallError).code).toBe('EBADF');
  });

  it('fails tapInfo on a non-tap fd', () => {
    const [a, b] = socketPair();
    try {
      expect(() => tapInfo(a)).toThrow(SyscallError);
    } finally {
      closeAllQuietly([a, b]);
    }
  });
});

describe('SCM_RIGHTS', () => {
  it('passes tap fds over a socket pair; they arrive as the same tap', () => {
    const fds = tap('phpass0', 2);
    const [a, b] = socketPair();
    try {
      sendFds(a, Buffer.from('hello'), fds);
      const got = recvFds(b, 64, 8);
      expect(got.data.toString()).toBe('hello');
      expect(got.fds).toHaveLength(2);
      for (const fd of got.fds) {
        expect(fds).not.toContain(fd);
        expect(getCloexec(fd)).toBe(true);
        const info = tapInfo(fd);
        expect(info.name).toBe('phpass0');
        expect(info.flags & IFF_MULTI_QUEUE).toBe(IFF_MULTI_QUEUE);
      }
      // Closing the originals leaves the device alive through the copies.
      release(fds);
      expect(linkIn(ns, 'phpass0')?.linkinfo?.info_data).toMatchObject({ numqueues: 2 });
      closeAllQuietly(got.fds);
      expect(linkIn(ns, 'phpass0')).toBeUndefined();

      // Asked to, received fds are inheritable.
      const [t] = tap('phpass1');
      sendFds(a, Buffer.from('x'), [t!]);
      const inh = recvFds(b, 8, 1, { cloexec: false });
      expect(getCloexec(inh.fds[0]!)).toBe(false);
      closeAllQuietly(inh.fds);
      release([t!]);
    } finally {
      closeAllQuietly([a, b]);
    }
  });

  it('reports more fds than the receiver allows, without leaking them', () => {
    const [a, b] = socketPair();
    const [c, d] = socketPair();
    try {
      sendFds(a, Buffer.from('y'), [c, d, c]);
      const err = catchErr(() => recvFds(b, 8, 1)) as SyscallError;
      expect(err.code).toBe('EMSGSIZE');
      expect(err.message).toMatch(/more than 1 fd/);
    } finally {
      closeAllQuietly([a, b, c, d]);
    }
  });

  it('times out on a socket nobody writes to, and on one nobody reads', () => {
    const [a, b] = socketPair();
    try {
      expect(recvFdsNow(b, 8, 1)).toBeNull();
      const t0 = Date.now();
      expect((catchErr(() => recvFds(b, 8, 1, { timeoutMs: 100 })) as SyscallError).code).toBe('ETIMEDOUT');
      expect(Date.now() - t0).toBeGreaterThanOrEqual(90);
      setNonBlocking(a, true);
      const big = Buffer.alloc(8 << 20);
      expect((catchErr(() => sendFds(a, big, [], { timeoutMs: 100 })) as SyscallError).code).toBe('ETIMEDOUT');
    } finally {
      closeAllQuietly([a, b]);
    }
  });

  it('finishes a partial write after the fds went with the first chunk', async () => {
    const fds = tap('phbig0');
    const [a, b] = socketPair();
    // The reader is another process that drains the socket while this one
    // blocks in sendmsg.
    const script = `
      import { recvFds, tapInfo } from ${JSON.stringify(NATIVE_URL)};
      let bytes = 0, names = [], chunks = 0;
      for (;;) {
        const r = recvFds(3, 65536, 4, { timeoutMs: 20000 });
        if (r.data.length === 0) break;
        bytes += r.data.length; chunks++;
        for (const fd of r.fds) names.push(tapInfo(fd).name);
      }
      console.log(JSON.stringify({ bytes, names, chunks }));
    `;
    const child = spawn(NODE, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit', b] });
    let out = '';
    child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.on('exit', resolve));
    try {
      closeFd(b);
      const payload = Buffer.alloc(3 << 20, 0x61);
      sendFds(a, payload, fds, { timeoutMs: 20000 });
      closeFd(a);
      expect(await exited).toBe(0);
      const res = JSON.parse(out) as { bytes: number; names: string[]; chunks: number };
      expect(res.bytes).toBe(payload.length);
      expect(res.names).toEqual(['phbig0']);
      expect(res.chunks).toBeGreaterThan(1);
    } finally {
      child.kill();
      closeAllQuietly([a]);
      release(fds);
    }
  });

  it('sends from a Node socket (socketFdOf) to a raw connectUnix client', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'ph-native-'));
    const sock = path.join(dir, 's');
    const fds = tap('phnode0');
    let server: Server | undefined;
    let client = -1;
    try {
      server = createServer({ pauseOnConnect: true }, (conn) => {
        sendFds(socketFdOf(conn), Buffer.from('{"ok":true}'), fds);
        conn.destroy();
      });
      await new Promise<void>((resolve) => server!.listen(sock, resolve));
      client = connectUnix(sock);
      expect(await whenReadable(client, 5000)).toBe(true);
      const got = recvFds(client, 1024, 4);
      expect(got.data.toString()).toBe('{"ok":true}');
      expect(got.fds.map((fd) => tapInfo(fd).name)).toEqual(['phnode0']);
      closeAllQuietly(got.fds);
      // Then the server hung up.
      expect(recvFds(client, 1024, 4).data.length).toBe(0);

      const missing = catchErr(() => connectUnix(path.join(dir, 'nope'))) as SyscallError;
      expect(missing.code).toBe('ENOENT');
      expect(missing.message).toContain(path.join(dir, 'nope'));
    } finally {
      if (client >= 0) closeAllQuietly([client]);
      await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
      release(fds);
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('whenReadable times out when nothing arrives', async () => {
    const [a, b] = socketPair();
    try {
      expect(await whenReadable(b, 50)).toBe(false);
      sendFds(a, Buffer.from('z'), []);
      expect(await whenReadable(b, 1000)).toBe(true);
    } finally {
      closeAllQuietly([a, b]);
    }
  });
});

describe('tryLockExclusive', () => {
  // A child that takes the lock, says what it got, and holds it until killed.
  const HOLDER = `
    import { openSync } from 'node:fs';
    import { tryLockExclusive } from ${JSON.stringify(NATIVE_URL)};
    const fd = openSync(process.argv[1], 'r+');
    console.log(String(tryLockExclusive(fd)));
    setInterval(() => {}, 1000);
  `;
  const TRY = `
    import { openSync } from 'node:fs';
    import { tryLockExclusive } from ${JSON.stringify(NATIVE_URL)};
    console.log(String(tryLockExclusive(openSync(process.argv[1], 'r+'))));
  `;
  const tryIn = (file: string) => {
    const r = spawnSync(NODE, ['--input-type=module', '-e', TRY, file], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    return r.stdout.trim();
  };

  it('lets one process hold the lock; another gets false until the holder lets go or dies', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'ph-lock-'));
    const file = path.join(dir, 'lock');
    writeFileSync(file, '');
    const holder = spawn(NODE, ['--input-type=module', '-e', HOLDER, file], { stdio: ['ignore', 'pipe', 'inherit'] });
    const exited = new Promise<void>((resolve) => holder.on('exit', () => resolve()));
    const fd = openSync(file, 'r+');
    try {
      const said = await new Promise<string>((resolve) => holder.stdout!.once('data', (d: Buffer) => resolve(d.toString().trim())));
      expect(said).toBe('true');
      expect(tryLockExclusive(fd)).toBe(false);
      expect(tryIn(file)).toBe('false');
      // The kernel lets go of a dead holder's lock, however it died.
      holder.kill('SIGKILL');
      await exited;
      expect(tryLockExclusive(fd)).toBe(true);
      expect(tryLockExclusive(fd)).toBe(true); // taking it again on the same open file is no conflict
      expect(tryIn(file)).toBe('false');
      unlock(fd);
      expect(tryIn(file)).toBe('true');
    } finally {
      holder.kill('SIGKILL');
      closeSync(fd);
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('openPacketSocket', () => {
  const A_MAC = '02:00:00:00:aa:01';
  const dhcp = udp4Frame({ srcMac: A_MAC, dstMac: 'ff:ff:ff:ff:ff:ff', src: '0.0.0.0', dst: '255.255.255.255', srcPort: 68, dstPort: 67, payload: Buffer.alloc(300, 1) });
  const dns = udp4Frame({ srcMac: A_MAC, dstMac: 'ff:ff:ff:ff:ff:ff', src: '10.0.0.5', dst: '10.0.0.255', srcPort: 5353, dstPort: 53, payload: Buffer.alloc(40, 2) });
  const NOTHING: BpfInsn[] = [[0x06, 0, 0, 0]]; // ret 0: the sending side wants no frame

  beforeAll(() => {
    // Address generation off: the pair must say nothing of its own (no DAD, RS, MLD).
    ipIn(ns, ['link', 'add', 'phpa0', 'type', 'veth', 'peer', 'name', 'phpb0']);
    for (const dev of ['phpa0', 'phpb0']) ipIn(ns, ['link', 'set', 'dev', dev, 'addrgenmode', 'none']);
    for (const dev of ['phpa0', 'phpb0']) ipIn(ns, ['link', 'set', 'dev', dev, 'up']);
  });

  it('sees a frame sent to its device that passes the filter, and not one that does not', async () => {
    const rx = inNetns(ns, () => openPacketSocket('phpb0', SERVER_FILTER));
    const tx = inNetns(ns, () => openPacketSocket('phpa0', NOTHING));
    const got: Buffer[] = [];
    try {
      expect(rx.ifname).toBe('phpb0');
      rx.watch((f) => got.push(f));
      // Until the kernel has activated the new link's queue (linkwatch, up
      // to a second after "up") it drops what is sent: send until it passes.
      const deadline = Date.now() + 5000;
      while (!got.some((f) => f.equals(dhcp)) && Date.now() < deadline) {
        tx.send(dns);
        tx.send(dhcp);
        await new Promise((r) => setTimeout(r, 50));
      }
      tx.send(dns);
      await new Promise((r) => setTimeout(r, 100));
      expect(got.some((f) => f.equals(dhcp))).toBe(true);
      expect(got.some((f) => f.equals(dns))).toBe(false);
      for (const f of got) expect(runFilter(SERVER_FILTER, f)).not.toBe(0);
      // The sending side saw nothing: its filter takes no frame, and its own sends are not "received".
    } finally {
      rx.close();
      tx.close();
    }
    expect(() => rx.send(dhcp)).toThrow(/closed/);
  });

  it('refuses a device that does not exist, here or at all, instead of binding to every device', () => {
    for (const name of ['phnope0', '']) {
      const err = catchErr(() => inNetns(ns, () => openPacketSocket(name, SERVER_FILTER))) as SyscallError;
      expect(err).toBeInstanceOf(SyscallError);
      expect(err.code).toBe('ENODEV');
      expect(err.message).toContain(`open a packet socket on ${name}`);
    }
    // phpa0 exists only in the test's namespace, not in this one.
    expect((catchErr(() => openPacketSocket('phpa0', SERVER_FILTER)) as SyscallError).code).toBe('ENODEV');
  });
});
