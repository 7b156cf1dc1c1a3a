// Processes the benchmark times. Everything timed is started with
// child_process.spawn directly (no execa in the measuring process) and the
// clock is read right before spawn() and in the 'exit' / first-line handler,
// so the parent adds the same small constant to podtap and to its baselines.
//
// Commands run "in a namespace" through `nsenter --net=/run/netns/NAME --`,
// which setns()es and execs: the pid spawn() returns is the command's own.

import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, fstatSync, openSync, readdirSync, readFileSync, readlinkSync, readSync, statSync } from 'node:fs';
import { resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import type { Cleanup } from '../test/helpers/netns.ts';

export const ROOT = resolve(import.meta.dirname, '..');
export const PODTAP = resolve(ROOT, 'init/podtap');
/** The Node that init/podtap runs (the `node` devDependency). */
export const NODE = [resolve(ROOT, 'node_modules/node/bin/node'), resolve(ROOT, 'node_modules/.bin/node')].find((p) => existsSync(p)) ?? process.execPath;
export const CNI_BIN = '/usr/lib/cni';

// ------------------------------------------------------------ podtap entry
//
// init/podtap runs dist/podtap.mjs when the build is fresh, else src/main.ts
// (type stripping at every start). The benchmark runs the launcher by default
// and records which entry each podtap process really used; `--entry dist|src`
// pins one (then without the sh launcher).

export type EntryMode = 'launcher' | 'dist' | 'src';
let entryMode: EntryMode = 'launcher';
export const entriesSeen = new Map<string, number>();

export function setEntryMode(m: EntryMode): void {
  entryMode = m;
}

/** argv that starts podtap (before its command). */
export function podtapHead(): string[] {
  if (entryMode === 'launcher') return [PODTAP];
  return [NODE, '--disable-warning=ExperimentalWarning', resolve(ROOT, entryMode === 'dist' ? 'dist/podtap.mjs' : 'src/main.ts')];
}

function newestUnder(dir: string, depth = 0): number {
  let t = 0;
  if (depth > 8) return t;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = resolve(dir, e.name);
    const st = statSync(p);
    t = Math.max(t, st.mtimeMs);
    if (e.isDirectory()) t = Math.max(t, newestUnder(p, depth + 1));
  }
  return t;
}

/** What init/podtap would run right now, and why. */
export function launcherEntry(): { entry: string; why: string } {
  const built = resolve(ROOT, 'dist/.built');
  if (!existsSync(built)) return { entry: 'src/main.ts', why: 'no dist/.built (npm run build not run)' };
  const builtAt = statSync(built).mtimeMs;
  if (existsSync(resolve(ROOT, '.git')) && newestUnder(resolve(ROOT, 'src')) > builtAt) return { entry: 'src/main.ts', why: `src/ is newer than the build of ${new Date(builtAt).toISOString()}` };
  return { entry: 'dist/podtap.mjs', why: `build of ${new Date(builtAt).toISOString()} is current` };
}

/** The entry script a running podtap uses, from its command line; counted in entriesSeen. */
export function noteEntry(pid: number): string {
  let entry = '?';
  try {
    const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    const e = argv.find((a) => /\/(dist|src)\/main\.(js|ts)$|\.mjs$/.test(a));
    if (e) {
      const abs = resolve(e);
      entry = abs.startsWith(ROOT + '/') ? abs.slice(ROOT.length + 1) : abs;
    }
  } catch {
    // exited already
  }
  entriesSeen.set(entry, (entriesSeen.get(entry) ?? 0) + 1);
  return entry;
}

export function nsenter(ns: string, argv: readonly string[]): string[] {
  return ['nsenter', `--net=/run/netns/${ns}`, '--', ...argv];
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export interface Timed {
  ms: number;
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export interface TimedOptions {
  input?: string;
  env?: NodeJS.ProcessEnv;
  timeoutMs?: number;
  /** Default true: a non-zero exit throws. */
  check?: boolean;
}

/** Runs argv to completion; `ms` is spawn → exit. Kills it on timeout and throws. */
export function timed(argv: readonly string[], opts: TimedOptions = {}): Promise<Timed> {
  const timeoutMs = opts.timeoutMs ?? 30_000;
  return new Promise((resolveP, reject) => {
    let stdout = '';
    let stderr = '';
    let exitAt = 0;
    let code: number | null = null;
    let signal: NodeJS.Signals | null = null;
    let timedOut = false;
    const t0 = performance.now();
    const child = spawn(argv[0]!, argv.slice(1), {
      stdio: [opts.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
      env: opts.env ?? process.env,
    });
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    if (opts.input !== undefined) {
      child.stdin!.on('error', () => {});
      child.stdin!.end(opts.input);
    }
    child.on('exit', (c, s) => {
      exitAt = performance.now();
      code = c;
      signal = s;
    });
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(new Error(`${argv.join(' ')}: ${e.message}`));
    });
    child.on('close', () => {
      clearTimeout(timer);
      const r: Timed = { ms: exitAt - t0, code, signal, stdout, stderr };
      if (timedOut) reject(new Error(`${argv.join(' ')}: timed out after ${timeoutMs} ms\n${stderr.slice(-2000)}`));
      else if (opts.check !== false && code !== 0) reject(new Error(`${argv.join(' ')}: exited ${code ?? signal}\n${stderr.slice(-2000)}${stdout.slice(-1000)}`));
      else resolveP(r);
    });
  });
}

/** A long-running process whose output is drained (a full pipe would stall it) and kept in a bounded tail. */
export class Running {
  readonly child: ChildProcess;
  readonly argv: readonly string[];
  readonly startedAt: number;
  exitedAt: number | undefined;
  exitCode: number | null | undefined;
  exitSignal: NodeJS.Signals | null | undefined;
  readonly exited: Promise<void>;
  private out = '';
  private err = '';
  private readonly maxKeep: number;
  private lineWaiters: { test: (line: string) => boolean; resolve: (v: { line: string; at: number }) => void }[] = [];
  private partial = '';
  private unregister: () => void = () => {};

  private readonly stderrFile: string | undefined;

  /**
   * `stderrFile`: send stderr (and, with `stdoutToFile`, stdout too) to a
   * file instead of a pipe — for chatty servers under load, so the
   * benchmark process does not spend CPU draining their logs.
   */
  constructor(argv: readonly string[], opts: { env?: NodeJS.ProcessEnv; cleanup?: Cleanup; maxKeep?: number; stderrFile?: string; stdoutToFile?: boolean } = {}) {
    this.argv = argv;
    this.maxKeep = opts.maxKeep ?? 64 * 1024;
    this.stderrFile = opts.stderrFile;
    const errFd = opts.stderrFile ? openSync(opts.stderrFile, 'a') : undefined;
    this.startedAt = performance.now();
    try {
      this.child = spawn(argv[0]!, argv.slice(1), {
        stdio: ['ignore', errFd !== undefined && opts.stdoutToFile ? errFd : 'pipe', errFd ?? 'pipe'],
        env: opts.env ?? process.env,
      });
    } finally {
      if (errFd !== undefined) closeSync(errFd);
    }
    if (this.child.pid !== undefined && opts.cleanup) {
      const pid = this.child.pid;
      this.unregister = opts.cleanup.defer(`pid ${pid} (${argv.slice(0, 6).join(' ')})`, async () => {
        if (this.exitCode !== undefined) return;
        try {
          process.kill(pid, 'SIGTERM');
        } catch {
          return;
        }
        if (await this.waitExit(5000).then(() => true, () => false)) return;
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // gone
        }
        await this.waitExit(5000).catch(() => {});
      });
    }
    this.child.stdout?.on('data', (d: Buffer) => {
      const at = performance.now();
      const s = d.toString();
      this.out = (this.out + s).slice(-this.maxKeep);
      this.partial += s;
      let nl: number;
      while ((nl = this.partial.indexOf('\n')) >= 0) {
        const line = this.partial.slice(0, nl);
        this.partial = this.partial.slice(nl + 1);
        for (const w of [...this.lineWaiters]) {
          if (w.test(line)) {
            this.lineWaiters.splice(this.lineWaiters.indexOf(w), 1);
            w.resolve({ line, at });
          }
        }
      }
    });
    this.child.stderr?.on('data', (d: Buffer) => (this.err = (this.err + d.toString()).slice(-this.maxKeep)));
    this.exited = new Promise((res) => {
      this.child.on('exit', (c, s) => {
        this.exitedAt = performance.now();
        this.exitCode = c;
        this.exitSignal = s;
        this.unregister();
        res();
      });
      this.child.on('error', (e) => {
        this.err += `\n[spawn error: ${e.message}]`;
        this.exitedAt = performance.now();
        this.exitCode = null;
        this.unregister();
        res();
      });
    });
  }

  get pid(): number {
    return this.child.pid!;
  }

  stdout(): string {
    return this.out;
  }

  stderr(): string {
    if (!this.stderrFile) return this.err;
    try {
      const fd = openSync(this.stderrFile, 'r');
      try {
        const size = fstatSync(fd).size;
        const n = Math.min(size, this.maxKeep);
        const buf = Buffer.alloc(n);
        readSync(fd, buf, 0, n, size - n);
        return this.err + buf.toString();
      } finally {
        closeSync(fd);
      }
    } catch {
      return this.err;
    }
  }

  /** Resolves with the first stdout line passing `test` and the time it arrived; rejects on exit or timeout. */
  waitLine(test: (line: string) => boolean, timeoutMs: number): Promise<{ line: string; at: number }> {
    return new Promise((res, rej) => {
      const waiter = { test, resolve: (v: { line: string; at: number }) => (clearTimeout(timer), res(v)) };
      const timer = setTimeout(() => {
        this.lineWaiters = this.lineWaiters.filter((w) => w !== waiter);
        rej(new Error(`${this.argv.join(' ')}: no matching line after ${timeoutMs} ms\nstderr: ${this.err.slice(-2000)}`));
      }, timeoutMs);
      this.lineWaiters.push(waiter);
      void this.exited.then(() => {
        if (!this.lineWaiters.includes(waiter)) return;
        this.lineWaiters = this.lineWaiters.filter((w) => w !== waiter);
        clearTimeout(timer);
        rej(new Error(`${this.argv.join(' ')} exited (${this.exitCode ?? this.exitSignal}) before the expected line\nstderr: ${this.err.slice(-2000)}`));
      });
    });
  }

  waitExit(timeoutMs: number): Promise<void> {
    if (this.exitCode !== undefined) return Promise.resolve();
    return new Promise((res, rej) => {
      const timer = setTimeout(() => rej(new Error(`${this.argv.join(' ')}: still running after ${timeoutMs} ms`)), timeoutMs);
      void this.exited.then(() => {
        clearTimeout(timer);
        res();
      });
    });
  }

  /** Sends `sig` and returns the time from the signal to exit. */
  async signalAndWait(sig: NodeJS.Signals, timeoutMs: number): Promise<number> {
    const t0 = performance.now();
    this.child.kill(sig);
    await this.waitExit(timeoutMs);
    return this.exitedAt! - t0;
  }

  /** SIGTERM then SIGKILL: for failure paths. */
  async stop(): Promise<void> {
    if (this.exitCode !== undefined) return;
    this.child.kill('SIGTERM');
    try {
      await this.waitExit(10_000);
    } catch {
      this.child.kill('SIGKILL');
      await this.waitExit(5000).catch(() => {});
    }
  }
}

/** Fields of /proc/PID/status in KiB (VmRSS, VmHWM, RssAnon, RssFile, ...). */
export function procStatusKiB(pid: number): Record<string, number> {
  const out: Record<string, number> = {};
  const text = readFileSync(`/proc/${pid}/status`, 'utf8');
  for (const m of text.matchAll(/^(\w+):\s+(\d+) kB$/gm)) out[m[1]!] = Number(m[2]);
  const th = /^Threads:\s+(\d+)$/m.exec(text);
  if (th) out.Threads = Number(th[1]);
  return out;
}

export function fdCount(pid: number): number {
  try {
    return readdirSync(`/proc/${pid}/fd`).length;
  } catch {
    return 0;
  }
}

/** Pids of processes whose network namespace is /run/netns/NAME (read from /proc, no subprocess). */
export function pidsInNetns(ns: string): number[] {
  // The namespace file's inode is the namespace id that /proc/PID/ns/net links to.
  const target = `net:[${statSync(`/run/netns/${ns}`).ino}]`;
  const out: number[] = [];
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      if (readlinkSync(`/proc/${e}/ns/net`) === target) out.push(Number(e));
    } catch {
      // gone, or a kernel thread
    }
  }
  return out;
}

export function fmtArgv(argv: readonly string[]): string {
  return argv.map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`)).join(' ');
}

/** Resident KiB per mapping (file path, [heap], [stack], or [anon]) from /proc/PID/smaps. */
export function rssByMapping(pid: number): Map<string, number> {
  const out = new Map<string, number>();
  let current = '[anon]';
  for (const line of readFileSync(`/proc/${pid}/smaps`, 'utf8').split('\n')) {
    const head = /^[0-9a-f]+-[0-9a-f]+\s+\S+\s+\S+\s+\S+\s+\d+\s*(.*)$/.exec(line);
    if (head) {
      const name = head[1]!.trim();
      current = name === '' ? '[anon]' : name.startsWith(ROOT + '/') ? name.slice(ROOT.length + 1) : name;
      continue;
    }
    const m = /^Rss:\s+(\d+) kB/.exec(line);
    if (m) out.set(current, (out.get(current) ?? 0) + Number(m[1]));
  }
  return out;
}
