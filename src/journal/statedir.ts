// The state dir holds what podtap (as root) later reads back and acts on:
// the journal, the lock, the ready file. Whoever can write it could make
// podtap act, so podtap trusts it only when it is podtap's own: a real
// directory (not a symlink), owned by the user podtap runs as, writable by
// nobody else. Files in it are opened without following symlinks, created
// exclusively under random temporary names and renamed into place, and
// checked with fstat before anything is read from them.

import { accessSync, closeSync, constants as C, fstatSync, fsyncSync, lstatSync, mkdirSync, openSync, readSync, renameSync, unlinkSync, writeSync, type Stats } from 'node:fs';
import { PodtapError } from '../errors.ts';
import { randomId } from '../net/random.ts';

const HINT = 'podtap acts on what is in its state dir, so it must be podtap\'s own: point --state-dir at a directory podtap creates (a new subdirectory of a volume, e.g. /run/podtap-state/podtap), or fix its owner and mode (chmod 0700)';

function uid(): number {
  return process.geteuid?.() ?? 0;
}

function problem(st: Stats, what: string): string | undefined {
  if (st.isSymbolicLink()) return `${what} is a symbolic link`;
  if (st.uid !== uid()) return `${what} is owned by uid ${st.uid}, not by podtap's uid ${uid()}`;
  if (st.mode & 0o022) return `${what} is writable by ${st.mode & 0o002 ? 'everyone' : 'its group'} (mode ${(st.mode & 0o7777).toString(8).padStart(4, '0')})`;
  return undefined;
}

/** Makes the state dir if needed (0700) and checks it is podtap's own, before anything is read from it or changed. */
export function openStateDir(dir: string, create: boolean): void {
  if (create) {
    try {
      mkdirSync(dir, { recursive: true, mode: 0o700 });
    } catch (e) {
      throw new PodtapError('environment', `cannot create the state dir ${dir}: ${(e as Error).message}`, 'give a writable directory with --state-dir (the default /run/podtap needs a writable /run)', e);
    }
  }
  let st: Stats;
  try {
    st = lstatSync(dir);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT' && !create) return; // nothing was ever recorded here
    throw new PodtapError('environment', `cannot read the state dir ${dir}: ${(e as Error).message}`, 'give a readable directory with --state-dir', e);
  }
  if (!st.isDirectory() && !st.isSymbolicLink()) throw new PodtapError('environment', `the state dir ${dir} is not a directory`, HINT);
  const why = problem(st, `the state dir ${dir}`);
  if (why) throw new PodtapError('environment', why, HINT);
  if (create) {
    try {
      accessSync(dir, C.W_OK);
    } catch (e) {
      throw new PodtapError('environment', `the state dir ${dir} is not writable: ${(e as Error).message}`, 'give a writable directory with --state-dir (the default /run/podtap needs a writable /run)', e);
    }
  }
}

/**
 * Reads a file of the state dir, or undefined when there is none. Refuses
 * symlinks and files that are not podtap's own, before reading a byte.
 */
export function readStateFile(path: string, maxBytes = 16 << 20): string | undefined {
  let fd: number;
  try {
    fd = openSync(path, C.O_RDONLY | C.O_NOFOLLOW | C.O_NONBLOCK);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return undefined;
    if (code === 'ELOOP') throw new PodtapError('journal', `${path} is a symbolic link`, HINT);
    throw new PodtapError('journal', `cannot read ${path}: ${(e as Error).message}`, 'check the permissions of --state-dir');
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw new PodtapError('journal', `${path} is not a regular file`, HINT);
    const why = problem(st, path);
    if (why) throw new PodtapError('journal', why, HINT);
    if (st.size > maxBytes) throw new PodtapError('journal', `${path} is ${st.size} bytes, more than podtap ever writes`, 'move it away; it was not written by podtap');
    const buf = Buffer.alloc(st.size);
    let off = 0;
    while (off < buf.length) {
      const n = readSync(fd, buf, off, buf.length - off, off);
      if (n === 0) break;
      off += n;
    }
    return buf.subarray(0, off).toString('utf8');
  } finally {
    closeSync(fd);
  }
}

/**
 * Replaces a file of the state dir atomically: a new file under a random
 * name (O_EXCL, O_NOFOLLOW: nothing planted can be followed or reused),
 * every byte written and synced, renamed over the old one (rename replaces
 * a symlink itself, never its target), then the directory synced. Any
 * failure (a full disk: ENOSPC) throws and leaves the previous version.
 */
export function writeStateFile(path: string, text: string): void {
  const tmp = `${path}.${randomId()}.tmp`;
  const data = Buffer.from(text);
  const fd = openSync(tmp, C.O_WRONLY | C.O_CREAT | C.O_EXCL | C.O_NOFOLLOW, 0o600);
  try {
    try {
      let off = 0;
      while (off < data.length) off += writeSync(fd, data, off, data.length - off);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, path);
  } catch (e) {
    try {
      unlinkSync(tmp);
    } catch {
      // never created, or already renamed
    }
    throw e;
  }
  syncDir(path.slice(0, path.lastIndexOf('/')) || '/');
}

function syncDir(dir: string): void {
  try {
    const fd = openSync(dir, C.O_RDONLY | C.O_DIRECTORY);
    try {
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
  } catch {
    // some file systems refuse fsync on a directory; the rename is still atomic
  }
}

/** Removes a file of the state dir; unlink never follows a symlink. */
export function removeStateFile(path: string): void {
  try {
    unlinkSync(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
}
