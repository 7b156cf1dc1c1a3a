// The journal is the state file that makes teardown exact and crash-proof.
// Every step is in it before it is applied (write-ahead), so whatever happens
// to the process, `podtap down` replays the undo actions of everything that
// might have been done. Each write replaces the file atomically (temporary
// file, fsync, rename) and carries a checksum, so a crash mid-write leaves the
// previous version and a damaged file is refused rather than half-applied.

import { crc32 } from 'node:zlib';
import { randomId } from '../net/random.ts';
import { closeSync, fsyncSync, mkdirSync, openSync, readFileSync, readlinkSync, renameSync, unlinkSync, writeSync, accessSync, constants } from 'node:fs';
import { join } from 'node:path';
import { PodtapError } from '../errors.ts';
import type { PodNetwork } from '../pod/model.ts';
import type { Step } from '../plan/steps.ts';
import type { VmIdentity } from '../plan/plan.ts';

export const FORMAT = 'podtap-journal/1';

export interface JournalState {
  format: typeof FORMAT;
  runId: string;
  pid: number;
  pidStart: string;
  netns: string;
  createdAt: string;
  phase: 'setup' | 'ready' | 'teardown';
  settings: Record<string, unknown>; // the options that shaped the plan, for adoption and diagnostics
  pod: PodNetwork;
  vm: VmIdentity;
  linkLocal: string;
  bridgeMac: string;
  vethMac: string;
  steps: Step[];
}

export function currentNetns(): string {
  try {
    return readlinkSync('/proc/self/ns/net');
  } catch {
    return 'unknown';
  }
}

/** Field 22 of /proc/PID/stat: tells a live owner from a recycled pid. */
export function processStart(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  } catch {
    return undefined;
  }
}

export function alive(pid: number, start: string): boolean {
  return processStart(pid) === start;
}

// CRC-32 finds torn or damaged files, which is all the journal needs; it
// spares loading node:crypto at start-up.
function checksum(body: string): string {
  return crc32(body).toString(16).padStart(8, '0');
}

export function serialize(state: JournalState): string {
  const body = JSON.stringify(state);
  return JSON.stringify({ crc32: checksum(body), body }) + '\n';
}

/** Parses and verifies a journal file's text; throws PodtapError('journal') on anything not ours or damaged. */
export function deserialize(text: string, path: string): JournalState {
  const refuse = (why: string) =>
    new PodtapError('journal', `the journal ${path} ${why}`, `it was not written by this podtap run; if you are sure the namespace is as it should be, move the file away and retry`);
  let outer: { crc32?: unknown; body?: unknown };
  try {
    outer = JSON.parse(text);
  } catch {
    throw refuse('is not valid JSON (corrupt)');
  }
  if (typeof outer.body !== 'string' || typeof outer.crc32 !== 'string') throw refuse('is not a podtap journal');
  if (checksum(outer.body) !== outer.crc32) throw refuse('fails its checksum (corrupt)');
  const state = JSON.parse(outer.body) as JournalState;
  if (state.format !== FORMAT) throw refuse(`has format ${JSON.stringify(state.format)}, expected ${FORMAT}`);
  if (!Array.isArray(state.steps)) throw refuse('has no step list');
  return state;
}

export class Journal {
  readonly dir: string;
  readonly path: string;
  state: JournalState;
  private writes = 0;

  private constructor(dir: string, state: JournalState) {
    this.dir = dir;
    this.path = join(dir, 'journal.json');
    this.state = state;
  }

  static pathIn(dir: string): string {
    return join(dir, 'journal.json');
  }

  /** The journal in dir, verified, or undefined when there is none. */
  static load(dir: string): Journal | undefined {
    const path = Journal.pathIn(dir);
    let text: string;
    try {
      text = readFileSync(path, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw new PodtapError('journal', `cannot read the journal ${path}: ${(e as Error).message}`, 'check the permissions of --state-dir');
    }
    const state = deserialize(text, path);
    const here = currentNetns();
    if (state.netns !== here)
      throw new PodtapError('journal', `the journal ${path} belongs to network namespace ${state.netns}, not this one (${here})`, 'run podtap in the namespace it was set up in, or give each namespace its own --state-dir');
    return new Journal(dir, state);
  }

  static create(dir: string, init: Omit<JournalState, 'format' | 'runId' | 'pid' | 'pidStart' | 'netns' | 'createdAt' | 'phase' | 'steps'>): Journal {
    const state: JournalState = {
      format: FORMAT,
      runId: randomId(),
      pid: process.pid,
      pidStart: processStart(process.pid) ?? '',
      netns: currentNetns(),
      createdAt: new Date().toISOString(),
      phase: 'setup',
      steps: [],
      ...init,
    };
    return new Journal(dir, state);
  }

  /** Takes the journal over for this process (adoption, teardown by `down`). */
  own(): void {
    this.state.pid = process.pid;
    this.state.pidStart = processStart(process.pid) ?? '';
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

  flush(): void {
    const tmp = `${this.path}.tmp`;
    const fd = openSync(tmp, 'w', 0o600);
    try {
      writeSync(fd, serialize(this.state));
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, this.path);
    this.writes++;
  }

  remove(): void {
    for (const p of [this.path, `${this.path}.tmp`]) {
      try {
        unlinkSync(p);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
      }
    }
  }
}

/** Makes the state dir and checks it is writable, before anything is changed. */
export function prepareStateDir(dir: string): void {
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    accessSync(dir, constants.W_OK);
  } catch (e) {
    throw new PodtapError('environment', `the state dir ${dir} is not writable: ${(e as Error).message}`, 'give a writable directory with --state-dir (the default /run/podtap needs a writable /run)', e);
  }
}

/**
 * One podtap per namespace: a lock file created exclusively, naming its
 * owner. A lock whose owner is gone (crash, kill -9) is taken over.
 */
export class Lock {
  readonly path: string;
  private constructor(path: string) {
    this.path = path;
  }

  static acquire(dir: string, what: string): Lock {
    const path = join(dir, 'lock');
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        const fd = openSync(path, 'wx', 0o600);
        writeSync(fd, `${process.pid} ${processStart(process.pid) ?? ''}\n`);
        closeSync(fd);
        return new Lock(path);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw new PodtapError('environment', `cannot create the lock ${path}: ${(e as Error).message}`, 'give a writable --state-dir');
      }
      let owner = '';
      try {
        owner = readFileSync(path, 'utf8').trim();
      } catch {
        continue; // released meanwhile
      }
      const [pid, start] = owner.split(' ');
      if (pid && start !== undefined && alive(Number(pid), start))
        throw new PodtapError('conflict', `another podtap (pid ${pid}) holds ${path}, so it cannot ${what}`, `stop it with SIGTERM (it tears down by itself), or use another --state-dir for another namespace`);
      try {
        unlinkSync(path);
      } catch {
        // someone else took it over first; retry
      }
    }
    throw new PodtapError('conflict', `could not take the lock ${path}`, 'another podtap is starting here; retry');
  }

  release(): void {
    try {
      unlinkSync(this.path);
    } catch {
      // already gone
    }
  }
}
