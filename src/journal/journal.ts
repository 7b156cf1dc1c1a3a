// The journal is the state file that makes teardown exact and crash-proof.
// Every step is in it before it is applied (write-ahead), so whatever happens
// to the process, `podtap down` replays the undo actions of everything that
// might have been done. Each write replaces the file atomically and carries
// a checksum, so a crash mid-write leaves the previous version and a damaged
// file is refused rather than half-applied. Steps are typed data
// (actions.ts), checked in full before any of them is acted on.

import { crc32 } from 'node:zlib';
import { closeSync, constants as C, fstatSync, ftruncateSync, openSync, readFileSync, readlinkSync, statSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { randomId } from '../net/random.ts';
import { PodtapError } from '../errors.ts';
import type { Pod } from '../pod/model.ts';
import type { Attachment } from '../plan/attachment.ts';
import { checkStep, type Step } from './actions.ts';
import { validIfname } from '../net/names.ts';
import { readStateFile, removeStateFile, writeStateFile } from './statedir.ts';

export const FORMAT = 'podtap-journal/2';
/** Formats earlier releases wrote, for a clear refusal. */
const OLD_FORMATS: Record<string, string> = { 'podtap-journal/1': 'podtap 0.1' };

export interface JournalState {
  format: typeof FORMAT;
  runId: string;
  pid: number;
  netns: string;
  createdAt: string;
  phase: 'setup' | 'ready' | 'teardown';
  settings: Record<string, unknown>; // the options that shaped the plan, for adoption and diagnostics
  pod: Pod;
  attachments: Attachment[];
  serverId: string; // DHCPv4 server identifier (CIDR)
  forward?: { nic: number; from: string; to: string }; // --forward-port's path to the guest
  steps: Step[];
}

export function currentNetns(): string {
  try {
    return readlinkSync('/proc/self/ns/net');
  } catch {
    return 'unknown';
  }
}

// CRC-32 finds torn or damaged files, which is all the checksum is for: it
// is no protection against someone who can write the state dir (anyone can
// recompute it); the state dir's ownership and the typed steps are.
function checksum(body: string): string {
  return crc32(body).toString(16).padStart(8, '0');
}

export function serialize(state: JournalState): string {
  const body = JSON.stringify(state);
  return JSON.stringify({ crc32: checksum(body), body }) + '\n';
}

/** Parses and verifies a journal file's text; throws PodtapError('journal') on anything not ours, damaged or not well-formed. */
export function deserialize(text: string, path: string): JournalState {
  const refuse = (why: string, hint = 'it was not written by this podtap; if you are sure the namespace is as it should be, move the file away and retry') =>
    new PodtapError('journal', `the journal ${path} ${why}`, hint);
  let outer: { crc32?: unknown; body?: unknown };
  try {
    outer = JSON.parse(text);
  } catch {
    throw refuse('is not valid JSON (corrupt or truncated)');
  }
  if (typeof outer.body !== 'string' || typeof outer.crc32 !== 'string') throw refuse('is not a podtap journal');
  if (checksum(outer.body) !== outer.crc32) throw refuse('fails its checksum (corrupt)');
  let state: JournalState;
  try {
    state = JSON.parse(outer.body) as JournalState;
  } catch {
    throw refuse('has a body that is not JSON');
  }
  if (typeof state.format === 'string' && OLD_FORMATS[state.format])
    throw refuse(
      `was written by ${OLD_FORMATS[state.format]} (format ${state.format}), whose steps this podtap no longer replays`,
      `restore the namespace with that release's \`podtap down\` (its image), or move the journal away if the namespace is already as it should be`,
    );
  if (state.format !== FORMAT) throw refuse(`has format ${JSON.stringify(state.format)}, expected ${FORMAT}`);
  if (!Array.isArray(state.steps) || state.steps.length > 100_000) throw refuse('has no step list');
  if (!['setup', 'ready', 'teardown'].includes(state.phase)) throw refuse(`has an unknown phase ${JSON.stringify(state.phase)}`);
  try {
    checkDevices(state);
    for (const s of state.steps) checkStep(s);
  } catch (e) {
    throw refuse(`holds a step podtap would never write (${(e as Error).message}), so none of it is acted on`);
  }
  return state;
}

/**
 * podtap creates and deletes only its own devices: every tap opened, bridge
 * added or link deleted must be a tap or bridge of one of the journal's
 * attachments, and never a pod interface.
 */
function checkDevices(state: JournalState): void {
  if (!Array.isArray(state.attachments) || state.attachments.length > 64) throw new Error('no attachment list');
  const pod = new Set<string>();
  const taps = new Set<string>();
  const bridges = new Set<string>();
  for (const a of state.attachments) {
    for (const n of [a?.interface, a?.tap, ...(a?.bridge !== undefined ? [a.bridge] : [])]) if (typeof n !== 'string' || !validIfname(n)) throw new Error(`bad attachment device ${JSON.stringify(n)}`);
    pod.add(a.interface);
    taps.add(a.tap);
    if (a.bridge) bridges.add(a.bridge);
  }
  for (const s of state.steps) {
    for (const x of [...(s?.do ?? []), ...(s?.undo ?? [])]) {
      const name = x?.op === 'tap-open' ? x.tap?.name : x?.op === 'bridge-add' || x?.op === 'link-del' ? x.name : undefined;
      if (name === undefined) continue;
      const own = x.op === 'tap-open' ? taps.has(name) : x.op === 'bridge-add' ? bridges.has(name) : taps.has(name) || bridges.has(name);
      if (!own || pod.has(name)) throw new Error(`step ${s.id}: ${x.op} ${JSON.stringify(name)} is not a device of podtap's own`);
    }
  }
}

export class Journal {
  readonly dir: string;
  readonly path: string;
  state: JournalState;

  private constructor(dir: string, state: JournalState) {
    this.dir = dir;
    this.path = Journal.pathIn(dir);
    this.state = state;
  }

  static pathIn(dir: string): string {
    return join(dir, 'journal.json');
  }

  /** The journal in dir, verified, or undefined when there is none. */
  static load(dir: string): Journal | undefined {
    const path = Journal.pathIn(dir);
    const text = readStateFile(path);
    if (text === undefined) return undefined;
    const state = deserialize(text, path);
    const here = currentNetns();
    if (state.netns !== here)
      throw new PodtapError('journal', `the journal ${path} belongs to network namespace ${state.netns}, not this one (${here})`, 'run podtap in the namespace it was set up in, or give each namespace its own --state-dir');
    return new Journal(dir, state);
  }

  static create(dir: string, init: Pick<JournalState, 'settings' | 'pod' | 'attachments' | 'serverId' | 'forward'>): Journal {
    return new Journal(dir, {
      format: FORMAT,
      runId: randomId(),
      pid: process.pid,
      netns: currentNetns(),
      createdAt: new Date().toISOString(),
      phase: 'setup',
      steps: [],
      ...init,
    });
  }

  /** Takes the journal over for this process (adoption, teardown by `down`). */
  own(): void {
    this.state.pid = process.pid;
  }

  /** Write-ahead: record steps before any of them is applied. */
  record(steps: Step[]): void {
    this.state.steps.push(...steps);
    this.flush();
  }

  setPhase(phase: JournalState['phase']): void {
    this.state.phase = phase;
    this.flush();
  }

  /** Every byte written and synced, or an exception (set-up then fails and rolls back). */
  flush(): void {
    try {
      writeStateFile(this.path, serialize(this.state));
    } catch (e) {
      // A full or read-only state dir is the environment's problem, not a bug.
      const code = (e as NodeJS.ErrnoException).code;
      throw new PodtapError('environment', `cannot write the journal ${this.path}: ${(e as Error).message}`, code === 'ENOSPC' || code === 'EDQUOT' ? `free space in the state dir ${this.dir} (or give a larger --state-dir)` : `give a writable --state-dir`, e);
    }
  }

  remove(): void {
    removeStateFile(this.path);
  }
}

/**
 * One podtap per namespace: an exclusive flock on STATE_DIR/lock, which the
 * kernel releases when its holder dies however it dies, so a crashed podtap
 * never blocks the next one and a live one can't be impersonated by a file.
 * The file names its holder for the error message only.
 */
export class Lock {
  readonly path: string;
  private fd: number;

  private constructor(path: string, fd: number) {
    this.path = path;
    this.fd = fd;
  }

  static async acquire(dir: string, what: string): Promise<Lock> {
    const { tryLockExclusive } = await import('../sys/native.ts');
    const path = join(dir, 'lock');
    for (let attempt = 0; attempt < 5; attempt++) {
      let fd: number;
      try {
        fd = openSync(path, C.O_RDWR | C.O_CREAT | C.O_NOFOLLOW, 0o600);
      } catch (e) {
        const hint = (e as NodeJS.ErrnoException).code === 'ELOOP' ? `${path} is a symbolic link: remove it` : 'give a writable --state-dir';
        throw new PodtapError('environment', `cannot open the lock ${path}: ${(e as Error).message}`, hint);
      }
      const st = fstatSync(fd);
      if (!st.isFile() || st.uid !== (process.geteuid?.() ?? 0)) {
        closeSync(fd);
        throw new PodtapError('environment', `the lock ${path} is not a file of podtap's own`, `remove ${path}; the state dir must be podtap's own`);
      }
      if (!tryLockExclusive(fd)) {
        let holder = '';
        try {
          holder = readFileSync(path, 'utf8').trim().split(' ')[0] ?? '';
        } catch {
          // unreadable: the message goes without the pid
        }
        closeSync(fd);
        throw new PodtapError('conflict', `another podtap${/^\d+$/.test(holder) ? ` (pid ${holder})` : ''} holds ${path}, so this one cannot ${what}`, 'stop it with SIGTERM (it tears down by itself), or use another --state-dir for another namespace');
      }
      // The holder before us may have removed the file after we opened it:
      // then our lock is on a name nobody else sees. Start over.
      let same = false;
      try {
        const now = statSync(path);
        same = now.ino === st.ino && now.dev === st.dev;
      } catch {
        same = false;
      }
      if (!same) {
        closeSync(fd);
        continue;
      }
      ftruncateSync(fd, 0);
      writeSync(fd, `${process.pid}\n`, 0);
      return new Lock(path, fd);
    }
    throw new PodtapError('conflict', `could not take the lock ${path}`, 'another podtap is starting or stopping here; retry');
  }

  /** Removes the file while still holding the lock, then lets go. */
  release(): void {
    if (this.fd < 0) return;
    try {
      removeStateFile(this.path);
    } catch {
      // A read-only state dir: the file stays, and closing still lets go.
    }
    closeSync(this.fd);
    this.fd = -1;
  }
}
