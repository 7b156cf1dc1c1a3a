// A real container engine for tests: rootful podman, run inside a throwaway
// "node" network namespace, with the project's containers.conf.
//
// Why a node namespace: podman's network backend (netavark) creates a bridge,
// veths and iptables chains in the namespace podman runs in. Running podman
// with `nsenter --net=/run/netns/<node>` keeps all of that inside a namespace
// the test made, and the machine's root namespace untouched. (`ip netns exec`
// would not do: it remounts /sys in a private mount namespace, and runc then
// fails to find its cgroups.) Each container still gets its own network
// namespace, which podman creates under /run/netns (netns-<uuid>).
//
//   const cleanup = new Cleanup();
//   afterEach(() => cleanup.cleanupAll());
//   const engine = await createNodeEngine(cleanup);
//   const name = engine.container();                 // a unique name, removed at cleanup
//   await engine.podman(['run', '-d', '--name', name, IMAGE, ...]);
//   ...
//   expect(await engine.removeAll()).toEqual([]);    // what podman left behind
//
// Cleanup removes by exact name every container, pod, volume and network
// the test registered (plus the anonymous volumes and namespaces podman made
// for them), kills the processes the engine started by pid, then deletes the
// node namespace (netns.ts kills whatever is left in it, by pid). Whatever
// podman itself failed to remove is reported: removeAll() returns it, and the
// cleanup step throws with it after cleaning up what it could.
//
// Image commands (build, import, inspect, rm) create no network and need the
// machine's connectivity to reach package registries during a build: they
// run in the root namespace through hostPodman(), which refuses anything else.
//
// podman 4.3 facts these helpers rely on (test/container/containers.conf has
// the configuration): runc, not crun (hybrid cgroups); no default ulimits;
// cgroupfs and file events (no systemd); netavark definitions under
// /run/podtap-containers/networks, not /etc/containers. aardvark-dns (the DNS
// of networks with DNS on, such as `podman kube play`'s default network) is a
// single process per machine, living in the node namespace that first needed
// it: tests that may run concurrently should use `--network podman` (no DNS).

import { execa, execaSync, type ResultPromise } from 'execa';
import { existsSync, readFileSync } from 'node:fs';
import { basename, join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  Cleanup,
  createNetns,
  killPid,
  netnsExists,
  netnsPath,
  NETNS_RUN_DIR,
  nsStateDir,
  pidsIn,
  processStartTime,
  run,
  type RunOptions,
  type RunResult,
} from './netns.ts';

export const REPO_ROOT = resolve(import.meta.dirname, '../..');
export const CONTAINERS_CONF = join(REPO_ROOT, 'test/container/containers.conf');
/** Node namespaces are `ptc-` and 6 hex digits; podman objects are named after them. */
export const NODE_PREFIX = 'ptc-';

const OBJECT_NAME = /^ptc-[0-9a-f]{6}-[cpvn][0-9]+$/;
const VALID_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;
const DEFAULT_TIMEOUT_MS = 120_000;

function env(extra?: Record<string, string>): Record<string, string> {
  return { CONTAINERS_CONF, ...extra };
}

/**
 * Why podman cannot run containers on this machine at all, or undefined.
 * Only a machine where test/install.sh could not make it work counts: a
 * Debian machine without podman yet gets undefined, and the tests then fail
 * with what to run instead of skipping.
 */
export function podmanUnavailable(): string | undefined {
  if (process.platform !== 'linux') return `containers need Linux; this is ${process.platform}`;
  if (process.getuid?.() !== 0) return 'the container tests run rootful podman in network namespaces of their own, which needs root';
  if (execaSync('podman', ['--version'], { reject: false }).exitCode === 0) return undefined;
  if (!existsSync('/usr/bin/apt-get')) return 'podman is not installed, and test/install.sh (which installs Debian 12\'s podman with apt-get) cannot install it here';
  return undefined;
}

function requirePodman(): void {
  const r = execaSync('podman', ['--version'], { reject: false });
  if (r.exitCode !== 0) throw new Error('podman is not installed: run `sh test/install.sh` as root (it installs podman, runc, netavark, ...)');
}

// ---------------------------------------------------------------------------
// Root namespace: image commands only

const HOST_SUBCOMMANDS = new Set(['build', 'image', 'images', 'import', 'rmi', 'tag', 'untag', 'history', 'version', 'info']);

/**
 * podman in the machine's root namespace, for commands that create no
 * network: `build` (which must say `--network host`: its RUN steps share the
 * machine's network to reach package registries, and nothing is created),
 * `image ...`, `images`, `import`, `rmi`, `tag`, `untag`, `history`,
 * `version`, `info`. Anything else is refused: run it in a node namespace.
 */
export function hostPodman(args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  const sub = args[0] ?? '';
  if (!HOST_SUBCOMMANDS.has(sub)) {
    throw new Error(`hostPodman: \`podman ${sub}\` may create networks; run it in a node namespace (createNodeEngine)`);
  }
  if (sub === 'build') {
    const i = args.findIndex((a) => a === '--network' || a.startsWith('--network='));
    const value = i < 0 ? undefined : args[i]!.includes('=') ? args[i]!.split('=')[1] : args[i + 1];
    if (value !== 'host') throw new Error('hostPodman: `podman build` must run with `--network host` (no network gets created)');
  }
  requirePodman();
  return run('podman', args, { timeoutMs: 900_000, ...opts, env: env(opts.env) });
}

// ---------------------------------------------------------------------------
// Node namespaces

export type PodmanProcess = ResultPromise<{ reject: false; stdin: 'ignore'; env: Record<string, string> }>;

export type Kind = 'container' | 'pod' | 'volume' | 'network';
const KIND_LETTER: Record<Kind, string> = { container: 'c', pod: 'p', volume: 'v', network: 'n' };

interface ContainerFacts {
  id: string;
  name: string;
  pid?: { pid: number; start?: string };
  conmon?: { pid: number; start?: string };
  sandbox?: string; // netns path podman made for it
  merged?: string; // its overlay mount
  anonymousVolumes: string[];
}

/** podman, confined to one node namespace, and everything it made there. */
export class NodeEngine {
  readonly ns: string;
  readonly #objects: Record<Kind, Set<string>> = { container: new Set(), pod: new Set(), volume: new Set(), network: new Set() };
  readonly #procs = new Set<PodmanProcess>();
  readonly #cleanup: Cleanup;
  #seq = 0;

  constructor(ns: string, cleanup: Cleanup) {
    this.ns = ns;
    this.#cleanup = cleanup;
  }

  get netnsPath(): string {
    return netnsPath(this.ns);
  }

  /** argv that runs `podman args...` in the node namespace (pass CONTAINERS_CONF in the environment). */
  argv(args: readonly string[]): string[] {
    return ['nsenter', `--net=${this.netnsPath}`, '--', 'podman', ...args];
  }

  /** Runs `podman args...` in the node namespace to completion (throws on failure unless `reject: false`). */
  podman(args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
    const [file, ...rest] = this.argv(args);
    return run(file!, rest, { timeoutMs: DEFAULT_TIMEOUT_MS, ...opts, env: env(opts.env) });
  }

  /**
   * Starts a long-running `podman args...` (e.g. `start --attach`) in the node
   * namespace. Resolves when it exits, never rejects; killed by pid at cleanup.
   */
  start(args: readonly string[], opts: { env?: Record<string, string> } = {}): PodmanProcess {
    const [file, ...rest] = this.argv(args);
    const sub = execa(file!, rest, { reject: false, stdin: 'ignore', env: env(opts.env) });
    if (sub.pid !== undefined) this.#cleanup.pid(sub.pid);
    this.#procs.add(sub);
    void sub.then(() => this.#procs.delete(sub));
    return sub;
  }

  #register(kind: Kind, name: string | undefined): string {
    const n = name ?? `${this.ns}-${KIND_LETTER[kind]}${++this.#seq}`;
    // A name that is all hex digits could be read as an ID prefix by podman.
    if (!VALID_NAME.test(n) || /^[0-9a-f]+$/.test(n)) throw new Error(`unusable ${kind} name ${JSON.stringify(n)}`);
    this.#objects[kind].add(n);
    return n;
  }

  /** Registers a container name for removal; without a name, makes a unique one. */
  container(name?: string): string {
    return this.#register('container', name);
  }

  /** Registers a pod name (e.g. a `kube play` YAML's metadata.name) for removal. */
  pod(name?: string): string {
    return this.#register('pod', name);
  }

  /** Names registered and not removed yet. */
  pending(kind: Kind): string[] {
    return [...this.#objects[kind]];
  }

  volume(name?: string): string {
    return this.#register('volume', name);
  }

  network(name?: string): string {
    return this.#register('network', name);
  }

  async #exists(kind: Kind | 'container-id', ref: string): Promise<boolean> {
    const sub = kind === 'container-id' ? 'container' : kind;
    const r = await this.podman([sub, 'exists', ref], { reject: false });
    if (r.exitCode === 0) return true;
    if (r.exitCode === 1 && !r.stderr.trim()) return false; // nsenter's own failure says why
    throw new Error(`podman ${sub} exists ${ref}: exit ${r.exitCode}: ${r.stderr.trim()}`);
  }

  async #facts(refs: string[]): Promise<ContainerFacts[]> {
    const out: ContainerFacts[] = [];
    for (const ref of refs) {
      const r = await this.podman(['container', 'inspect', ref], { reject: false });
      if (r.exitCode !== 0) continue; // gone in the meantime
      const [c] = JSON.parse(r.stdout) as InspectContainer[];
      if (!c) continue;
      const proc = (pid: number | undefined) => (pid && pid > 0 ? { pid, start: processStartTime(pid) } : undefined);
      const volumes = (c.Mounts ?? []).filter((m) => m.Type === 'volume' && m.Name).map((m) => m.Name!);
      const anonymous: string[] = [];
      for (const v of volumes) {
        const vi = await this.podman(['volume', 'inspect', '--format', '{{.Anonymous}}', v], { reject: false });
        if (vi.stdout.trim() === 'true') anonymous.push(v);
      }
      out.push({
        id: c.Id,
        name: c.Name,
        pid: proc(c.State?.Pid),
        conmon: proc(c.State?.ConmonPid),
        sandbox: c.NetworkSettings?.SandboxKey || undefined,
        merged: c.GraphDriver?.Data?.MergedDir || undefined,
        anonymousVolumes: anonymous,
      });
    }
    return out;
  }

  /**
   * Removes everything registered (pods, containers with their anonymous
   * volumes, volumes, networks), waits for the processes start() made, then
   * returns what podman left behind: objects that still exist, container
   * namespaces and overlay mounts still there, container or conmon processes
   * still alive, processes still in the node namespace, NETAVARK/CNI chains in
   * the root namespace's iptables. Namespaces, mounts and processes it finds
   * are cleaned up here (by exact path and pid) after being reported. A
   * second call only reports what the first left.
   */
  async removeAll(): Promise<string[]> {
    const pods = [...this.#objects.pod];
    const names = [...this.#objects.container];
    const volumes = [...this.#objects.volume];
    const networks = [...this.#objects.network];
    for (const set of Object.values(this.#objects)) set.clear();
    const left: string[] = [];
    if (!netnsExists(this.ns)) {
      // podman must not run outside a node namespace: removing a container
      // tears its network down in the namespace podman runs in.
      const all = [...pods, ...names, ...volumes, ...networks];
      if (all.length) left.push(`node namespace ${this.ns} is gone; not removed (sweepEngineOrphans will): ${all.join(' ')}`);
      return [...left, ...rootIptablesLeftovers()];
    }

    // What podman made for them, found before removal so it can be checked after.
    const refs = new Set<string>();
    for (const p of pods) {
      if (!(await this.#exists('pod', p))) continue;
      const r = await this.podman(['pod', 'inspect', '--format', '{{range .Containers}}{{.Id}} {{end}}', p], { reject: false });
      for (const id of r.stdout.split(/\s+/)) if (id) refs.add(id);
    }
    for (const n of names) refs.add(n);
    const facts = await this.#facts([...refs]);

    const failures: string[] = [];
    const attempt = async (args: string[]) => {
      const r = await this.podman(args, { reject: false, timeoutMs: 60_000 });
      if (r.exitCode !== 0) failures.push(`podman ${args.join(' ')}: exit ${r.exitCode}: ${r.stderr.trim()}`);
    };
    if (pods.length) await attempt(['pod', 'rm', '--force', '--time', '0', '--ignore', ...pods]);
    const containers = [...new Set([...names, ...facts.map((f) => f.id)])];
    if (containers.length) await attempt(['rm', '--force', '--time', '0', '--volumes', '--ignore', ...containers]);
    const anonymous = facts.flatMap((f) => f.anonymousVolumes);
    for (const v of [...new Set([...volumes, ...anonymous])]) {
      if (await this.#exists('volume', v)) await attempt(['volume', 'rm', '--force', v]);
    }
    for (const n of networks) {
      if (await this.#exists('network', n)) await attempt(['network', 'rm', '--force', n]);
    }

    // The processes this engine started end with their containers.
    for (const p of [...this.#procs]) {
      const done = await Promise.race([p.then(() => true), sleep(10_000).then(() => false)]);
      if (!done && p.pid !== undefined) {
        left.push(`podman process ${p.pid} (${p.spawnargs.slice(4, 6).join(' ')}) still running after its containers were removed`);
        await killPid(p.pid);
      }
    }

    // What is left, podman's doing.
    left.push(...failures);
    for (const p of pods) if (await this.#exists('pod', p)) left.push(`pod ${p} still exists`);
    for (const f of facts) if (await this.#exists('container-id', f.id)) left.push(`container ${f.name} (${f.id.slice(0, 12)}) still exists`);
    for (const v of [...new Set([...volumes, ...anonymous])]) if (await this.#exists('volume', v)) left.push(`volume ${v} still exists`);
    for (const n of networks) if (await this.#exists('network', n)) left.push(`network ${n} still exists`);
    const mounts = mountPoints();
    for (const f of facts) {
      if (f.sandbox && existsSync(f.sandbox)) {
        left.push(`network namespace ${f.sandbox} of container ${f.name} still there`);
        if (f.sandbox.startsWith(`${NETNS_RUN_DIR}/`) || f.sandbox.startsWith('/run/netns/')) {
          await run('ip', ['netns', 'del', basename(f.sandbox)], { reject: false });
        }
      }
      if (f.merged && mounts.has(f.merged)) {
        left.push(`overlay mount ${f.merged} of container ${f.name} still mounted`);
        await run('umount', ['--', f.merged], { reject: false });
      }
      for (const [what, p] of [['process', f.pid], ['conmon', f.conmon]] as const) {
        if (p && processStartTime(p.pid) !== undefined && processStartTime(p.pid) === p.start && !isZombie(p.pid)) {
          left.push(`${what} ${p.pid} of container ${f.name} still running`);
          await killPid(p.pid, p.start);
        }
      }
    }
    for (const pid of await pidsIn(this.ns)) left.push(`process ${pid} (${describePid(pid)}) still in node namespace ${this.ns}`);
    left.push(...rootIptablesLeftovers());
    return left;
  }
}

interface InspectContainer {
  Id: string;
  Name: string;
  State?: { Pid?: number; ConmonPid?: number };
  NetworkSettings?: { SandboxKey?: string };
  GraphDriver?: { Data?: { MergedDir?: string } };
  Mounts?: { Type?: string; Name?: string }[];
}

function mountPoints(): Set<string> {
  const out = new Set<string>();
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const mp = line.split(' ')[4];
    if (mp) out.add(mp.replace(/\\040/g, ' '));
  }
  return out;
}

function isZombie(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z');
  } catch {
    return true;
  }
}

function describePid(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean).join(' ').slice(0, 160);
  } catch {
    return 'gone';
  }
}

/** NETAVARK or CNI chains in the root namespace's iptables: podman must never put any there. */
export function rootIptablesLeftovers(): string[] {
  const out: string[] = [];
  for (const tool of ['iptables-save', 'ip6tables-save']) {
    const r = execaSync(tool, [], { reject: false });
    if (r.exitCode !== 0) continue; // not installed: nothing could have used it
    for (const line of r.stdout.split('\n')) {
      if (/NETAVARK|CNI-/.test(line)) out.push(`root namespace ${tool}: ${line}`);
    }
  }
  return out;
}

// ---------------------------------------------------------------------------
// Creation, exit and orphans

const liveEngines = new Set<NodeEngine>();
let exitHookInstalled = false;

// If the test process exits without its cleanup (a runner tearing the worker
// down), the containers go synchronously; registered before the first
// namespace, so it runs before netns.ts deletes the namespaces.
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const engine of liveEngines) {
      if (!netnsExists(engine.ns)) continue; // podman outside a node namespace could touch the root one
      const podman = (args: string[]) => execaSync('nsenter', engine.argv(args).slice(1), { reject: false, env: env(), timeout: 60_000 });
      const pods = engine.pending('pod');
      const containers = engine.pending('container');
      if (pods.length) podman(['pod', 'rm', '--force', '--time', '0', '--ignore', ...pods]);
      if (containers.length) podman(['rm', '--force', '--time', '0', '--volumes', '--ignore', ...containers]);
    }
  });
}

/**
 * Removes podman objects named after node namespaces (`ptc-xxxxxx-c1`...) that
 * no longer exist and whose owner record is gone: what a test process killed
 * outright left. Runs podman in `engine`'s namespace (removing a container
 * tears down its network in the namespace podman runs in). Returns the names
 * it removed and what podman left of them (see NodeEngine.removeAll).
 */
export async function sweepEngineOrphans(engine: NodeEngine): Promise<{ swept: string[]; left: string[] }> {
  const orphan = (name: string) => {
    if (!OBJECT_NAME.test(name)) return false;
    const node = name.slice(0, NODE_PREFIX.length + 6);
    return node !== engine.ns && !netnsExists(node) && !existsSync(nsStateDir(node));
  };
  const list = async (args: string[]) => (await engine.podman(args, { reject: false })).stdout.split('\n').map((s) => s.trim()).filter(orphan);
  const pods = await list(['pod', 'ps', '--format', '{{.Name}}']);
  const containers = await list(['ps', '-a', '--format', '{{.Names}}']);
  const volumes = await list(['volume', 'ls', '--format', '{{.Name}}']);
  const networks = await list(['network', 'ls', '--format', '{{.Name}}']);
  for (const p of pods) engine.pod(p);
  for (const c of containers) engine.container(c);
  for (const v of volumes) engine.volume(v);
  for (const n of networks) engine.network(n);
  const swept = [...pods, ...containers, ...volumes, ...networks];
  const left = swept.length ? await engine.removeAll() : [];
  return { swept, left };
}

export interface NodeEngineOptions {
  /** Default true: first remove what killed test processes left (sweepEngineOrphans). */
  sweep?: boolean;
}

/**
 * A fresh node namespace (lo up; never the root namespace) with podman
 * confined to it. `cleanup` removes the engine's podman objects, then the
 * namespace; its step throws if podman left anything behind.
 */
export async function createNodeEngine(cleanup: Cleanup, opts: NodeEngineOptions = {}): Promise<NodeEngine> {
  requirePodman();
  installExitHook();
  const ns = await createNetns({ prefix: NODE_PREFIX, cleanup });
  const engine = new NodeEngine(ns, cleanup);
  liveEngines.add(engine);
  cleanup.defer(`podman objects in ${ns}`, async () => {
    liveEngines.delete(engine);
    const left = await engine.removeAll();
    if (left.length) throw new Error(`podman left behind (cleaned up where possible):\n${left.join('\n')}`);
  });
  if (opts.sweep !== false) {
    const { swept, left } = await sweepEngineOrphans(engine);
    if (left.length) console.warn(`podman left behind while sweeping ${swept.join(' ')}:\n${left.join('\n')}`);
  }
  return engine;
}
