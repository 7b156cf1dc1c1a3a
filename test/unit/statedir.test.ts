// The state dir is podtap's own or it is refused; its files are replaced
// atomically, never through a symlink, with every byte on disk.
//
// Faults are injected by module mocks: node:fs's writeSync and fsyncSync
// pass through to the real ones until a test arms a short write, ENOSPC or
// EIO, and net/random's randomId can be pinned so a test can plant a symlink
// at the temporary name writeStateFile will use. Ownership tests chown, so
// they need root (the unit tests run as root; without it they are skipped).

import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { chmodSync, chownSync, closeSync, existsSync, linkSync, lstatSync, mkdirSync, mkdtempSync, openSync, readFileSync, readSync, readdirSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const fault = vi.hoisted(() => ({
  /** At most this many bytes per writeSync call. */
  chunk: Infinity,
  /** writeSync throws this errno code once this many bytes went through. */
  failAfter: Infinity,
  failCode: 'ENOSPC',
  /** fsyncSync throws this errno code. */
  fsync: '' as string,
  /** The next randomId() values. */
  ids: [] as string[],
  written: 0,
  /** What each fsyncSync call synced, in order. */
  synced: [] as ('file' | 'directory')[],
}));

vi.mock('node:fs', async (importOriginal) => {
  const real = await importOriginal<typeof import('node:fs')>();
  const errno = (code: string, syscall: string) => Object.assign(new Error(`${code}: fake ${syscall}`), { code, syscall });
  return {
    ...real,
    writeSync: ((fd: number, buf: NodeJS.ArrayBufferView, off?: number, len?: number, pos?: number | null) => {
      if (typeof off !== 'number' || !(buf instanceof Uint8Array)) return (real.writeSync as (...a: unknown[]) => number)(fd, buf, off, len, pos);
      const want = len ?? buf.byteLength - off;
      if (fault.written + want > fault.failAfter) {
        const room = Math.max(0, fault.failAfter - fault.written);
        if (room === 0) throw errno(fault.failCode, 'write');
        fault.written += room;
        return real.writeSync(fd, buf, off, room, pos);
      }
      const n = real.writeSync(fd, buf, off, Math.min(want, fault.chunk), pos);
      fault.written += n;
      return n;
    }) as typeof real.writeSync,
    fsyncSync: ((fd: number) => {
      if (fault.fsync) throw errno(fault.fsync, 'fsync');
      fault.synced.push(real.fstatSync(fd).isDirectory() ? 'directory' : 'file');
      return real.fsyncSync(fd);
    }) as typeof real.fsyncSync,
  };
});

vi.mock('../../src/net/random.ts', async (importOriginal) => {
  const real = await importOriginal<typeof import('../../src/net/random.ts')>();
  return { ...real, randomId: () => fault.ids.shift() ?? real.randomId() };
});

const { openStateDir, readStateFile, removeStateFile, writeStateFile } = await import('../../src/journal/statedir.ts');
const { Journal } = await import('../../src/journal/journal.ts');

const ROOT = process.geteuid?.() === 0;
const OTHER_UID = 4242;

let base: string;
beforeEach(() => {
  base = mkdtempSync(join(tmpdir(), 'podtap-statedir-'));
  Object.assign(fault, { chunk: Infinity, failAfter: Infinity, failCode: 'ENOSPC', fsync: '', ids: [], written: 0, synced: [] });
});
afterEach(() => {
  rmSync(base, { recursive: true, force: true });
});

const tempFiles = (dir: string) => readdirSync(dir).filter((f) => f.endsWith('.tmp'));

function ownDir(): string {
  const d = join(base, 'state');
  openStateDir(d, true);
  return d;
}

describe('openStateDir', () => {
  it('creates a missing state dir 0700 and accepts it', () => {
    const d = join(base, 'a', 'b');
    openStateDir(d, true);
    expect(statSync(d).mode & 0o7777).toBe(0o700);
    expect(() => openStateDir(d, false)).not.toThrow();
    // Nothing there and nothing to create: nothing was ever recorded.
    expect(() => openStateDir(join(base, 'none'), false)).not.toThrow();
    expect(existsSync(join(base, 'none'))).toBe(false);
  });

  it.skipIf(!ROOT)('refuses a state dir owned by another uid', () => {
    const d = ownDir();
    chownSync(d, OTHER_UID, OTHER_UID);
    expect(() => openStateDir(d, true)).toThrow(new RegExp(`is owned by uid ${OTHER_UID}, not by podtap's uid 0`));
    expect(() => openStateDir(d, false)).toThrow(/owned by uid 4242/);
  });

  it('refuses a state dir its group or everyone can write', () => {
    const d = ownDir();
    chmodSync(d, 0o770);
    expect(() => openStateDir(d, true)).toThrow(/writable by its group \(mode 0770\)/);
    chmodSync(d, 0o703);
    expect(() => openStateDir(d, false)).toThrow(/writable by everyone \(mode 0703\)/);
    chmodSync(d, 0o1777);
    expect(() => openStateDir(d, true)).toThrow(/writable by everyone/);
  });

  it('refuses a symlink, even to a good state dir, and a file', () => {
    const d = ownDir();
    const link = join(base, 'link');
    symlinkSync(d, link);
    expect(() => openStateDir(link, true)).toThrow(/is a symbolic link/);
    expect(() => openStateDir(link, false)).toThrow(/is a symbolic link/);
    writeFileSync(join(base, 'file'), '');
    expect(() => openStateDir(join(base, 'file'), false)).toThrow(/is not a directory/);
  });
});

describe('readStateFile', () => {
  it('reads podtap\'s own file, and nothing when there is none', () => {
    const d = ownDir();
    writeFileSync(join(d, 'f'), 'hello', { mode: 0o600 });
    expect(readStateFile(join(d, 'f'))).toBe('hello');
    expect(readStateFile(join(d, 'missing'))).toBeUndefined();
  });

  it('refuses a symlink, a file that is not regular, too big, writable by others or (as root) owned by another uid', () => {
    const d = ownDir();
    const victim = join(base, 'victim');
    writeFileSync(victim, 'secret', { mode: 0o600 });
    symlinkSync(victim, join(d, 'journal.json'));
    expect(() => readStateFile(join(d, 'journal.json'))).toThrow(/is a symbolic link/);
    execFileSync('mkfifo', [join(d, 'fifo')]);
    expect(() => readStateFile(join(d, 'fifo'))).toThrow(/is not a regular file/);
    writeFileSync(join(d, 'big'), 'x'.repeat(100), { mode: 0o600 });
    expect(() => readStateFile(join(d, 'big'), 10)).toThrow(/is 100 bytes, more than podtap ever writes/);
    writeFileSync(join(d, 'shared'), 'x', { mode: 0o600 });
    chmodSync(join(d, 'shared'), 0o622);
    expect(() => readStateFile(join(d, 'shared'))).toThrow(/writable by everyone/);
    if (ROOT) {
      writeFileSync(join(d, 'theirs'), 'x', { mode: 0o600 });
      chownSync(join(d, 'theirs'), OTHER_UID, OTHER_UID);
      expect(() => readStateFile(join(d, 'theirs'))).toThrow(/owned by uid 4242/);
    }
  });
});

describe('writeStateFile', () => {
  it('writes the whole text, 0600, and leaves no temporary file', () => {
    const d = ownDir();
    const p = join(d, 'journal.json');
    const text = 'x'.repeat(100_000) + '\n';
    writeStateFile(p, text);
    expect(readFileSync(p, 'utf8')).toBe(text);
    expect(statSync(p).mode & 0o777).toBe(0o600);
    expect(tempFiles(d)).toEqual([]);
  });

  it('replaces the file with a new one: a reader of the old version still reads all of it', () => {
    const d = ownDir();
    const p = join(d, 'journal.json');
    writeStateFile(p, 'old version\n');
    const before = statSync(p).ino;
    const fd = openSync(p, 'r');
    try {
      writeStateFile(p, 'the new version, longer\n');
      expect(statSync(p).ino).not.toBe(before);
      const buf = Buffer.alloc(64);
      const n = readSync(fd, buf, 0, 64, 0);
      expect(buf.subarray(0, n).toString()).toBe('old version\n');
    } finally {
      closeSync(fd);
    }
    expect(readFileSync(p, 'utf8')).toBe('the new version, longer\n');
  });

  it('never follows a symlink planted at the target: the link is replaced, its target untouched', () => {
    const d = ownDir();
    const victim = join(base, 'victim');
    writeFileSync(victim, 'precious\n', { mode: 0o644 });
    const p = join(d, 'journal.json');
    symlinkSync(victim, p);
    writeStateFile(p, 'journal\n');
    expect(readFileSync(victim, 'utf8')).toBe('precious\n');
    expect(lstatSync(p).isFile()).toBe(true);
    expect(readFileSync(p, 'utf8')).toBe('journal\n');
  });

  it('never follows or reuses a symlink planted at its temporary name', () => {
    const d = ownDir();
    const victim = join(base, 'victim');
    writeFileSync(victim, 'precious\n', { mode: 0o644 });
    const p = join(d, 'journal.json');
    writeStateFile(p, 'version 1\n');
    fault.ids.push('0123456789abcdef0123456789abcdef');
    const planted = `${p}.0123456789abcdef0123456789abcdef.tmp`;
    symlinkSync(victim, planted);
    expect(() => writeStateFile(p, 'version 2\n')).toThrow(/EEXIST|ELOOP/);
    expect(readFileSync(victim, 'utf8')).toBe('precious\n');
    expect(readFileSync(p, 'utf8')).toBe('version 1\n');
    expect(lstatSync(planted).isSymbolicLink()).toBe(true);
    // A dangling link there is no better.
    rmSync(victim);
    fault.ids.push('0123456789abcdef0123456789abcdef');
    expect(() => writeStateFile(p, 'version 2\n')).toThrow(/EEXIST|ELOOP/);
    expect(existsSync(victim)).toBe(false);
  });

  it('never writes into a file planted at its temporary name (a hard link to another file)', () => {
    const d = ownDir();
    const victim = join(d, 'victim');
    writeFileSync(victim, 'precious, and longer than the journal\n', { mode: 0o600 });
    const p = join(d, 'journal.json');
    fault.ids.push('fedcba9876543210fedcba9876543210');
    linkSync(victim, `${p}.fedcba9876543210fedcba9876543210.tmp`);
    expect(() => writeStateFile(p, 'journal\n')).toThrow(/EEXIST/);
    expect(readFileSync(victim, 'utf8')).toBe('precious, and longer than the journal\n');
    expect(existsSync(p)).toBe(false);
  });

  it('syncs the data before the rename and the directory after it, so a crash leaves one whole version', () => {
    const d = ownDir();
    writeStateFile(join(d, 'journal.json'), 'journal\n');
    expect(fault.synced).toEqual(['file', 'directory']);
  });

  it('writes every byte when the kernel takes a few at a time', () => {
    const d = ownDir();
    const p = join(d, 'journal.json');
    fault.chunk = 7;
    const text = JSON.stringify({ steps: Array.from({ length: 200 }, (_, i) => ({ id: `nic0/route-del/${i}` })) });
    writeStateFile(p, text);
    expect(fault.written).toBe(Buffer.byteLength(text));
    fault.chunk = Infinity;
    expect(readFileSync(p, 'utf8')).toBe(text);
  });

  it('throws on a full disk (ENOSPC after a short write) and keeps the previous version, with no temporary file left', () => {
    const d = ownDir();
    const p = join(d, 'journal.json');
    writeStateFile(p, 'version 1\n');
    fault.written = 0;
    fault.failAfter = 3;
    expect(() => writeStateFile(p, 'version 2, which does not fit\n')).toThrow(/ENOSPC/);
    fault.failAfter = Infinity;
    expect(readFileSync(p, 'utf8')).toBe('version 1\n');
    expect(tempFiles(d)).toEqual([]);
  });

  it('throws when the data cannot be synced (EIO), keeping the previous version', () => {
    const d = ownDir();
    const p = join(d, 'journal.json');
    writeStateFile(p, 'version 1\n');
    fault.fsync = 'EIO';
    expect(() => writeStateFile(p, 'version 2\n')).toThrow(/EIO/);
    fault.fsync = '';
    expect(readFileSync(p, 'utf8')).toBe('version 1\n');
    expect(tempFiles(d)).toEqual([]);
  });

  it('makes the journal fail loudly on a full disk: set-up stops with the journal as it was', () => {
    const d = ownDir();
    const j = Journal.create(d, { settings: {}, pod: { interfaces: [], dns: { nameservers: [], search: [], options: [] }, hostname: 'x' }, attachments: [{ nic: 0, interface: 'eth0', kind: 'veth', mac: '0a:58:0a:16:00:05', mtu: 1500, datapath: 'redirect', tap: 'tap0', serverMac: '02:00:00:00:00:01', primary: true }], serverId: '169.254.75.1/32' });
    j.record([{ id: 'nic0/tap-open', do: [{ op: 'tap-open', tap: { name: 'tap0', queues: 1, persist: false } }], undo: [{ op: 'link-del', name: 'tap0' }] }]);
    fault.written = 0;
    fault.failAfter = 100;
    expect(() => j.record([{ id: 'nic0/tap-up', do: [{ op: 'link-set', name: 'tap0', up: true }], undo: [] }])).toThrow(/ENOSPC/);
    fault.failAfter = Infinity;
    expect(Journal.load(d)!.state.steps.map((s) => s.id)).toEqual(['nic0/tap-open']);
    expect(tempFiles(d)).toEqual([]);
  });

  it('removes a file without following a symlink, and a missing one is no error', () => {
    const d = ownDir();
    const victim = join(base, 'victim');
    writeFileSync(victim, 'precious\n');
    symlinkSync(victim, join(d, 'lock'));
    removeStateFile(join(d, 'lock'));
    expect(existsSync(join(d, 'lock'))).toBe(false);
    expect(readFileSync(victim, 'utf8')).toBe('precious\n');
    expect(() => removeStateFile(join(d, 'lock'))).not.toThrow();
    mkdirSync(join(d, 'dir'));
    expect(() => removeStateFile(join(d, 'dir'))).toThrow();
  });
});
