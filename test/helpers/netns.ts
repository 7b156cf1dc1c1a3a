// Named network namespaces for tests, and the bookkeeping that makes sure
// they go away again.
//
// Everything here works on namespaces that a test created itself: nothing is
// ever added to the root namespace, and cleanup deletes namespaces by their
// exact name and kills processes by pid (never by process name).
//
// How a test runs podtap "inside the pod"
// ---------------------------------------
// A Kubernetes pod is a network namespace plus a UTS namespace (its own
// hostname) plus kubelet-managed /etc/resolv.conf, /etc/hosts and
// /etc/hostname, and a container engine mounts /proc/sys read-only in it.
// `podArgv(ns, hostname, argv)` reproduces that for one command:
//
//   ip netns exec <ns>                  # joins the netns, gets a mount ns
//                                       # with /sys remounted and every
//                                       # /etc/netns/<ns>/<file> bind-mounted
//                                       # over /etc/<file>
//     unshare --uts --mount             # private hostname, so setting it
//       --propagation private --        # cannot touch the machine's; a
//                                       # private mount ns of its own
//       sh -c 'mount --bind /proc/sys /proc/sys;
//              mount -o remount,bind,ro /proc/sys;   # as podman/runc do
//              hostname "$1"; ...; exec "$@"'
//
// So podtap meets exactly what a container engine gives it: every write to
// /proc/sys fails with EROFS (a test in fixtures.test.ts proves podtap's own
// mount table says so).
//
// Every step execs, so the pid execa reports is podtap's own pid. So:
//
//   const pod = await makePod('ptp', { cleanup });
//   const up = startInPod(pod.pod, pod.hostname, ['init/podtap', 'up'], cleanup);
//   ...
//   await runInPod(pod.pod, pod.hostname, ['init/podtap', 'down']);
//
// `pod.run(argv)` / `pod.argv(argv)` in pods.ts are the same with the pod's
// names filled in. The hostname has to be set again by every command because a
// UTS namespace made by unshare dies with its last process; that is fine for
// podtap, which only reads it.

import { execa, execaSync, type ResultPromise } from 'execa';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { mkdir, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

export const NETNS_RUN_DIR = '/var/run/netns';
export const NETNS_ETC_DIR = '/etc/netns';
// Per-namespace state (owner record, CNI IPAM data...), removed with the
// namespace; the owner record is how sweepOrphans() finds what a crashed test
// process left. (/run is not tmpfs on every machine: do not rely on reboots.)
export const STATE_DIR = '/run/podtap-test';

// Processes that helpers start inside a namespace carry this variable so that
// a snapshot's process list can leave out its own plumbing.
export const HELPER_MARK = 'PODTAP_TEST_HELPER';

export interface RunOptions {
  input?: string;
  env?: Record<string, string>;
  /** Default true: a non-zero exit throws with the command's stderr. */
  reject?: boolean;
  timeoutMs?: number;
}

export interface RunResult {
  command: string;
  exitCode: number;
  stdout: string;
  stderr: string;
}

/** Runs a command to completion; throws a readable error unless `reject: false`. */
export async function run(file: string, args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  const r = await execa(file, [...args], {
    input: opts.input,
    env: opts.env,
    reject: false,
    timeout: opts.timeoutMs ?? 30_000,
    stdin: opts.input === undefined ? 'ignore' : undefined,
  });
  const res: RunResult = {
    command: [file, ...args].join(' '),
    exitCode: r.exitCode ?? -1,
    stdout: r.stdout,
    stderr: r.stderr,
  };
  if (r.failed && opts.reject !== false) {
    const why = r.timedOut ? 'timed out' : r.exitCode === undefined ? (r.signal ?? 'failed to start') : `exited ${r.exitCode}`;
    const out = [r.stderr.trim(), r.stdout.trim()].filter(Boolean).join('\n');
    throw new Error(`${res.command}: ${why}${out ? `\n${out}` : ''}`);
  }
  return res;
}

export function randomHex(bytes: number): string {
  return randomBytes(bytes).toString('hex');
}

/** A fresh namespace name: `pt-` and 6 hex digits unless told otherwise. */
export function uniqueName(prefix = 'pt-'): string {
  return `${prefix}${randomHex(3)}`;
}

export function netnsPath(name: string): string {
  return join(NETNS_RUN_DIR, name);
}

/** Directory for files that belong to a namespace; deleteNetns removes it. */
export function nsStateDir(name: string): string {
  return join(STATE_DIR, name);
}

export async function listNetns(): Promise<string[]> {
  try {
    return (await readdir(NETNS_RUN_DIR)).sort();
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw e;
  }
}

export function netnsExists(name: string): boolean {
  return existsSync(netnsPath(name));
}

/** `ip netns exec <ns> argv...` */
export function nsExec(ns: string, argv: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  return run('ip', ['netns', 'exec', ns, ...argv], { ...opts, env: { [HELPER_MARK]: '1', ...opts.env } });
}

/** `ip netns exec <ns> sh -c <script> sh args...` */
export function nsSh(ns: string, script: string, args: readonly string[] = [], opts: RunOptions = {}): Promise<RunResult> {
  return nsExec(ns, ['sh', '-c', script, 'sh', ...args], opts);
}

// ---------------------------------------------------------------------------
// Processes

interface ProcStat {
  state: string;
  ppid: number;
  startTime: string;
}

function readProcStat(pid: number): ProcStat | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  // comm may contain spaces and parentheses; the fields after the last ')'
  // are fixed.
  const rest = text.slice(text.lastIndexOf(')') + 2).split(' ');
  return { state: rest[0] ?? '?', ppid: Number(rest[1]), startTime: rest[19] ?? '' };
}

/** Start time in clock ticks since boot; with the pid it names one process for good. */
export function processStartTime(pid: number): string | undefined {
  return readProcStat(pid)?.startTime;
}

function isGone(pid: number, startTime?: string): boolean {
  const st = readProcStat(pid);
  if (!st) return true;
  if (startTime !== undefined && st.startTime !== startTime) return true; // pid reused
  return st.state === 'Z' || st.state === 'X';
}

async function waitGone(pid: number, startTime: string | undefined, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (isGone(pid, startTime)) return true;
    await sleep(20);
  }
  return isGone(pid, startTime);
}

/**
 * SIGTERM, then SIGKILL after `graceMs`. With `startTime` (see
 * processStartTime) a pid that now belongs to another process is left alone.
 */
export async function killPid(pid: number, startTime?: string, graceMs = 2000): Promise<void> {
  if (isGone(pid, startTime)) return;
  const send = (sig: NodeJS.Signals): void => {
    try {
      process.kill(pid, sig);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ESRCH') throw e;
    }
  };
  send('SIGTERM');
  if (await waitGone(pid, startTime, graceMs)) return;
  if (isGone(pid, startTime)) return;
  send('SIGKILL');
  if (!(await waitGone(pid, startTime, 5000))) throw new Error(`pid ${pid} survived SIGKILL`);
}

/** Pids of every process whose network namespace is `ns`. */
export async function pidsIn(ns: string): Promise<number[]> {
  if (!netnsExists(ns)) return [];
  const r = await run('ip', ['netns', 'pids', ns], { reject: false });
  return r.stdout
    .split('\n')
    .map((s) => Number(s.trim()))
    .filter((n) => Number.isInteger(n) && n > 0 && n !== process.pid);
}

// ---------------------------------------------------------------------------
// Namespaces

// Namespaces this process made and has not deleted yet: swept synchronously
// at exit in case a test forgot its cleanup or the runner tore the worker
// down between hooks.
const live = new Set<string>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const name of live) {
      for (const line of (execaSync('ip', ['netns', 'pids', name], { reject: false }).stdout ?? '').split('\n')) {
        const pid = Number(line.trim());
        if (pid > 0 && pid !== process.pid) {
          try {
            process.kill(pid, 'SIGKILL');
          } catch {
            // already gone
          }
        }
      }
      execaSync('ip', ['netns', 'del', name], { reject: false });
      execaSync('rm', ['-rf', '--', join(NETNS_ETC_DIR, name), nsStateDir(name)], { reject: false });
    }
  });
}

export interface CreateNetnsOptions {
  /** Exact name; default uniqueName(prefix). */
  name?: string;
  prefix?: string;
  /** Registers the namespace for deletion. */
  cleanup?: Cleanup;
}

/** Creates a namespace with lo up and an owner record for sweepOrphans(). */
export async function createNetns(opts: CreateNetnsOptions = {}): Promise<string> {
  await mkdir(STATE_DIR, { recursive: true });
  for (let attempt = 0; ; attempt++) {
    const name = opts.name ?? uniqueName(opts.prefix);
    const giveUp = opts.name !== undefined || attempt >= 5;
    // mkdir without `recursive` claims the name atomically against other
    // test processes; the owner record goes in before `ip netns add` so that
    // even a crash right after it leaves something sweepOrphans() recognises.
    const dir = nsStateDir(name);
    try {
      await mkdir(dir);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST' || giveUp) throw e;
      continue;
    }
    await writeFile(join(dir, 'owner'), `${process.pid} ${processStartTime(process.pid) ?? ''}\n`);
    const added = await run('ip', ['netns', 'add', name], { reject: false });
    if (added.exitCode !== 0) {
      // Someone else's namespace (or none at all): never ours to delete.
      await rm(dir, { recursive: true, force: true });
      if (giveUp) throw new Error(`ip netns add ${name}: ${added.stderr.trim()}`);
      continue;
    }
    installExitHook();
    live.add(name);
    opts.cleanup?.netns(name);
    await run('ip', ['-n', name, 'link', 'set', 'lo', 'up']);
    return name;
  }
}

/**
 * Kills every process in the namespace (by pid), deletes it, and removes its
 * /etc/netns/<name> and state directory. Quiet if it is already gone.
 */
export async function deleteNetns(name: string): Promise<void> {
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]*$/.test(name)) throw new Error(`refusing odd netns name ${JSON.stringify(name)}`);
  if (netnsExists(name)) {
    // A process left in the namespace would keep it (and its veths) alive
    // after the name is gone.
    const pids = await pidsIn(name);
    await Promise.all(pids.map((p) => killPid(p, processStartTime(p))));
    const r = await run('ip', ['netns', 'del', name], { reject: false });
    if (r.exitCode !== 0 && netnsExists(name)) throw new Error(`ip netns del ${name}: ${r.stderr.trim()}`);
  }
  await rm(join(NETNS_ETC_DIR, name), { recursive: true, force: true });
  await rm(nsStateDir(name), { recursive: true, force: true });
  live.delete(name);
}

/**
 * Deletes namespaces left by test processes that have died (crash, kill -9,
 * runner timeout). Only namespaces with an owner record are considered, and
 * only when that owner is gone, so concurrent test files are safe. Returns the
 * names it removed.
 */
export async function sweepOrphans(): Promise<string[]> {
  let entries: string[];
  try {
    entries = readdirSync(STATE_DIR);
  } catch {
    return [];
  }
  const swept: string[] = [];
  for (const name of entries) {
    let owner: string;
    try {
      owner = await readFile(join(STATE_DIR, name, 'owner'), 'utf8');
    } catch {
      continue;
    }
    const [pidText, start] = owner.trim().split(' ');
    const pid = Number(pidText);
    if (pid > 0 && !isGone(pid, start || undefined)) continue;
    await deleteNetns(name);
    swept.push(name);
  }
  return swept;
}

// ---------------------------------------------------------------------------
// Pod identity: resolv.conf, hosts, hostname

export interface ResolvConf {
  nameservers: string[];
  search: string[];
  options: string[];
}

export function renderResolvConf(rc: ResolvConf): string {
  const lines: string[] = [];
  if (rc.search.length) lines.push(`search ${rc.search.join(' ')}`);
  for (const ns of rc.nameservers) lines.push(`nameserver ${ns}`);
  if (rc.options.length) lines.push(`options ${rc.options.join(' ')}`);
  return `${lines.join('\n')}\n`;
}

/**
 * Puts a file in /etc/netns/<ns>/, which `ip netns exec` bind-mounts over
 * /etc/<file> (only files that already exist under /etc get mounted).
 */
export async function setNetnsEtcFile(ns: string, file: 'resolv.conf' | 'hosts' | 'hostname', content: string): Promise<void> {
  const dir = join(NETNS_ETC_DIR, ns);
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, file), content);
}

const HOSTNAME_RE = /^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;

// Exit status 125 (as `env`/`nice` use for their own failures) when the pod
// could not be set up, so a caller never mistakes it for the command's own.
const POD_INIT = [
  'mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys || exit 125',
  'hostname "$1" || exit 125',
  'shift',
  'exec "$@"',
].join('; ');

/** argv that runs `argv` in the pod: its netns, /etc files, a private hostname and a read-only /proc/sys. */
export function podArgv(ns: string, hostname: string, argv: readonly string[]): string[] {
  if (!HOSTNAME_RE.test(hostname)) throw new Error(`bad hostname ${JSON.stringify(hostname)}`);
  if (argv.length === 0) throw new Error('podArgv: empty argv');
  return [
    'ip', 'netns', 'exec', ns,
    'unshare', '--uts', '--mount', '--propagation', 'private', '--',
    'sh', '-c', POD_INIT, 'pod-init', hostname,
    ...argv,
  ];
}

/** Runs a command in the pod to completion. */
export function runInPod(ns: string, hostname: string, argv: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  const [file, ...args] = podArgv(ns, hostname, argv);
  return run(file!, args, opts);
}

/**
 * Starts a long-running command in the pod and registers its pid with
 * `cleanup`. The returned execa subprocess resolves when it exits; it does not
 * reject on a non-zero exit (check `.exitCode`).
 */
export type PodProcess = ResultPromise<{ reject: false; stdin: 'ignore'; env: Record<string, string> }>;

export function startInPod(
  ns: string,
  hostname: string,
  argv: readonly string[],
  cleanup: Cleanup,
  env: Record<string, string> = {},
): PodProcess {
  const [file, ...args] = podArgv(ns, hostname, argv);
  const sub = execa(file!, args, { reject: false, stdin: 'ignore', env });
  if (sub.pid !== undefined) cleanup.pid(sub.pid);
  return sub;
}

/** A helper process spawnInNs() started, with its output so far. */
export interface NsProcess {
  proc: PodProcess;
  pid: number;
  /** Its start time, for killPid(). */
  start: string | undefined;
  /** Takes its pid off the Cleanup it was registered with. */
  unregister(): void;
  stdout(): string;
  stderr(): string;
}

/**
 * Starts `argv` in namespace `ns` (`ip netns exec`) as one of the tests'
 * helper processes (HELPER_MARK set, no stdin, no rejection on failure),
 * collecting its output; its pid is registered with `cleanup`.
 */
export function spawnInNs(ns: string, argv: readonly string[], cleanup: Cleanup): NsProcess {
  const proc = execa('ip', ['netns', 'exec', ns, ...argv], { reject: false, stdin: 'ignore', env: { [HELPER_MARK]: '1' } });
  const pid = proc.pid!;
  const start = processStartTime(pid);
  const unregister = cleanup.pid(pid);
  let out = '';
  let err = '';
  proc.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr?.on('data', (d: Buffer) => (err += d.toString()));
  return { proc, pid, start, unregister, stdout: () => out, stderr: () => err };
}

// ---------------------------------------------------------------------------
// Reachability

let pingArgv: string[] | undefined;

function pingCommand(): string[] {
  // iputils ping when installed, else busybox's (this machine has only the
  // latter); both take -c/-W and infer the family from the address.
  pingArgv ??= ['/usr/bin/ping', '/bin/ping'].some((p) => existsSync(p)) ? ['ping'] : ['busybox', 'ping'];
  return pingArgv;
}

/** True if `addr` answers an echo from inside `ns`; a few tries, ~1 s each. */
export async function pingFrom(ns: string, addr: string, tries = 3): Promise<boolean> {
  for (let i = 0; i < tries; i++) {
    const r = await nsExec(ns, [...pingCommand(), '-c', '1', '-W', '1', addr], { reject: false, timeoutMs: 5000 });
    if (r.exitCode === 0) return true;
  }
  return false;
}

// ---------------------------------------------------------------------------
// Cleanup registry

interface Step {
  label: string;
  fn: () => Promise<void>;
}

/**
 * Undo steps, run last-registered-first by cleanupAll(). A step that fails
 * does not stop the others; cleanupAll() throws one error listing every
 * failure afterwards. Steps run once: calling cleanupAll() again is a no-op.
 *
 *   const cleanup = new Cleanup();
 *   afterAll(() => cleanup.cleanupAll());
 */
export class Cleanup {
  #steps: Step[] = [];

  /** Registers an undo step; the returned function unregisters it. */
  defer(label: string, fn: () => Promise<void>): () => void {
    const step: Step = { label, fn };
    this.#steps.push(step);
    return () => {
      const i = this.#steps.indexOf(step);
      if (i >= 0) this.#steps.splice(i, 1);
    };
  }

  netns(name: string): () => void {
    return this.defer(`netns ${name}`, () => deleteNetns(name));
  }

  /** Kills the process at cleanup, unless its pid has since been reused. */
  pid(pid: number): () => void {
    const start = processStartTime(pid);
    return this.defer(`pid ${pid}`, () => killPid(pid, start));
  }

  path(p: string): () => void {
    return this.defer(`rm ${p}`, () => rm(p, { recursive: true, force: true }));
  }

  /**
   * Runs `fn` with a Cleanup of its own (one test case's, in a file whose
   * cases run concurrently), registered here while it runs so that it is
   * cleaned up with this one should the case be abandoned; cleaned up as
   * soon as `fn` has settled.
   */
  async scope<T>(label: string, fn: (c: Cleanup) => Promise<T>): Promise<T> {
    const c = new Cleanup();
    const unregister = this.defer(label, () => c.cleanupAll());
    try {
      return await fn(c);
    } finally {
      unregister();
      await c.cleanupAll();
    }
  }

  get pending(): number {
    return this.#steps.length;
  }

  async cleanupAll(): Promise<void> {
    const errors: string[] = [];
    for (let step = this.#steps.pop(); step; step = this.#steps.pop()) {
      try {
        await step.fn();
      } catch (e) {
        errors.push(`${step.label}: ${e instanceof Error ? e.message : String(e)}`);
      }
    }
    if (errors.length) throw new Error(`cleanup failed:\n${errors.join('\n')}`);
  }
}
