// init/pod-*.yaml under `podman kube play`, in a node namespace of a test's
// own (test/helpers/engine.ts): the shipped manifest, read with yaml.ts, with
// only what a test has to change (the pod's name, the images it runs by ID,
// volume names, the VM's boot media in its disk volume) and played as JSON,
// which is YAML too.
//
// What podman 4.3 makes of a Pod manifest, as found on this machine and
// relied on here:
// - every emptyDir and persistentVolumeClaim becomes a *named* volume, named
//   after the volume (emptyDir) or the claim: two pods with a volume "state"
//   would share it. Tests rename them to names of their own, registered for
//   removal. `kube down` removes the emptyDir ones and keeps the claims'.
// - readinessProbe and startupProbe are ignored, and a livenessProbe becomes
//   a healthcheck that nothing runs without systemd. The tests run the
//   readiness probe's command themselves, as kubelet does: an exec in the
//   container (probe(), untilReady()).
// - hostPath with type CharDevice becomes a device (--device), so the tun
//   device works as on Kubernetes.
// - the pod's restartPolicy (Always by default) becomes each container's:
//   a container whose process dies is started again by podman (conmon's exit
//   command), in the same pod namespace. `podman kill` counts as a stop by
//   the user and is not restarted; a signal to the process from outside is.
// - fsGroup is ignored. A new named volume (mode 0755) takes the owner of
//   the first container that mounts it.
// - terminationGracePeriodSeconds is ignored, and `kube down` stops the pod
//   with no grace at all (podman 4.3 calls its pod stop with a timeout of 0):
//   SIGTERM and at once SIGKILL, exit status 137, no time for podtap to put
//   the namespace back (podman deletes it anyway). `podman pod stop --time 30`
//   first gives every container SIGTERM and the time it needs, as
//   Kubernetes does; `kube down` then removes the stopped pod.
// - container names are POD-CONTAINER.

import { existsSync } from 'node:fs';
import { copyFile, mkdir, mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { afterEach, beforeAll } from 'vitest';
import { REPO_ROOT, createNodeEngine, type NodeEngine } from '../helpers/engine.ts';
import { Cleanup, nsStateDir, processStartTime, run, STATE_DIR, uniqueName } from '../helpers/netns.ts';
import { parseGuestOutput, type GuestReport } from '../helpers/guest.ts';
import type { ReadyLine } from '../helpers/podtap.ts';
import { waitSettled } from '../helpers/snapshot.ts';
import { buildPodtapImage, ensureBaseImage, type BuiltImage, type Target } from './images.ts';
import { parseYaml } from './yaml.ts';

export interface EnvVar {
  name: string;
  value: string;
}

export interface VolumeMount {
  name: string;
  mountPath: string;
  readOnly?: boolean;
}

export interface Probe {
  exec: { command: string[] };
  periodSeconds?: number;
}

export interface KubeContainer {
  name: string;
  image: string;
  imagePullPolicy?: string;
  command?: string[];
  args?: string[];
  env?: EnvVar[];
  ports?: { containerPort: number; hostPort?: number; protocol?: string }[];
  securityContext?: {
    runAsUser?: number;
    runAsGroup?: number;
    runAsNonRoot?: boolean;
    allowPrivilegeEscalation?: boolean;
    capabilities?: { add?: string[]; drop?: string[] };
  };
  volumeMounts?: VolumeMount[];
  readinessProbe?: Probe;
  [key: string]: unknown;
}

export interface KubeVolume {
  name: string;
  hostPath?: { path: string; type?: string };
  emptyDir?: { medium?: string };
  persistentVolumeClaim?: { claimName: string };
}

export interface PodManifest {
  apiVersion: string;
  kind: string;
  metadata: { name: string };
  spec: {
    containers: KubeContainer[];
    initContainers?: KubeContainer[];
    volumes?: KubeVolume[];
    securityContext?: Record<string, unknown>;
    [key: string]: unknown;
  };
}

export type ManifestFile = 'pod-entrypoint.yaml' | 'pod-sidecar.yaml';

/** One of init/pod-*.yaml, parsed. */
export async function readManifest(file: ManifestFile): Promise<PodManifest> {
  const m = parseYaml(await readFile(join(REPO_ROOT, 'init', file), 'utf8')) as unknown as PodManifest;
  if (m?.apiVersion !== 'v1' || m.kind !== 'Pod' || !Array.isArray(m.spec?.containers)) throw new Error(`init/${file} is not a v1 Pod`);
  return m;
}

export function containerOf(m: PodManifest, name: string): KubeContainer {
  const c = m.spec.containers.find((x) => x.name === name);
  if (!c) throw new Error(`the manifest has no container ${name} (it has ${m.spec.containers.map((x) => x.name).join(', ')})`);
  return c;
}

export function envOf(c: KubeContainer, name: string): string | undefined {
  return c.env?.find((e) => e.name === name)?.value;
}

/** Sets (or adds) an environment variable of a container. */
export function setEnv(c: KubeContainer, name: string, value: string): void {
  const e = c.env?.find((x) => x.name === name);
  if (e) e.value = value;
  else (c.env ??= []).push({ name, value });
}

export function volumeOf(m: PodManifest, name: string): KubeVolume {
  const v = m.spec.volumes?.find((x) => x.name === name);
  if (!v) throw new Error(`the manifest has no volume ${name}`);
  return v;
}

/** The path a container mounts volume `name` at. */
export function mountOf(c: KubeContainer, name: string): string {
  const m = c.volumeMounts?.find((x) => x.name === name);
  if (!m) throw new Error(`container ${c.name} does not mount volume ${name}`);
  return m.mountPath;
}

/**
 * The manifest for one test in `engine`'s namespace: a pod name of the
 * engine's, and every volume podman would turn into a named volume
 * (emptyDir, persistentVolumeClaim) renamed to a volume name of the
 * engine's, in the volume list and in every mount. The rest is untouched.
 */
export function forEngine(original: PodManifest, engine: NodeEngine): PodManifest {
  const m = structuredClone(original);
  m.metadata.name = engine.pod();
  for (const v of m.spec.volumes ?? []) {
    if (!v.emptyDir && !v.persistentVolumeClaim) continue;
    const name = engine.volume();
    for (const c of [...m.spec.containers, ...(m.spec.initContainers ?? [])]) for (const mount of c.volumeMounts ?? []) if (mount.name === v.name) mount.name = name;
    if (v.persistentVolumeClaim) v.persistentVolumeClaim.claimName = name;
    v.name = name;
  }
  return m;
}

/**
 * The VMM's arguments for a test: `boot` (a QEMU command line that boots the
 * test guest, with no NIC) followed by every -netdev and -device pair of the
 * manifest's own arguments, placeholders and all, so that the NIC the
 * manifest configures is the one that is tested.
 */
export function withManifestNic(manifestArgs: readonly string[], boot: readonly string[]): string[] {
  const nic: string[] = [];
  for (let i = 0; i < manifestArgs.length; i++) {
    if (manifestArgs[i] === '-netdev' || manifestArgs[i] === '-device') nic.push(manifestArgs[i]!, manifestArgs[++i]!);
  }
  if (!nic.includes('-netdev') || !nic.includes('-device')) throw new Error(`the manifest's VMM arguments have no -netdev and -device: ${manifestArgs.join(' ')}`);
  return [...boot, ...nic];
}

/**
 * The VM's disk: the manifest's persistentVolumeClaim volume that `container`
 * mounts (podman makes it a named volume of the claim's name), and where the
 * test guest's kernel and initramfs will be in the container once
 * copyBootMedia() has put them into it.
 */
export function diskOf(m: PodManifest, container: string): { volume: string; kernel: string; initrd: string } {
  const c = containerOf(m, container);
  const claims = (m.spec.volumes ?? []).filter((v) => v.persistentVolumeClaim && c.volumeMounts?.some((x) => x.name === v.name));
  if (claims.length !== 1) throw new Error(`container ${container} mounts ${claims.length} claims, not one disk`);
  const v = claims[0]!;
  if (v.persistentVolumeClaim!.claimName !== v.name) throw new Error('call diskOf() on forEngine()\'s manifest, whose claim and volume names are the same');
  const at = mountOf(c, v.name);
  return { volume: v.name, kernel: `${at}/kernel`, initrd: `${at}/initrd` };
}

/** Where a named volume is on the machine. */
export async function volumeMountpoint(engine: NodeEngine, name: string): Promise<string> {
  const p = (await engine.podman(['volume', 'inspect', '--format', '{{.Mountpoint}}', name])).stdout.trim();
  if (!existsSync(p)) throw new Error(`volume ${name} is at ${p}, which does not exist`);
  return p;
}

/** Copies the test guest's kernel and initramfs into the disk volume (once `kube play --start=false` has made it). */
export async function copyBootMedia(engine: NodeEngine, volume: string, guest: { kernel: string; initrd: string }): Promise<void> {
  const at = await volumeMountpoint(engine, volume);
  await copyFile(guest.kernel, join(at, 'kernel'));
  await copyFile(guest.initrd, join(at, 'initrd'));
}

export interface PodNetwork {
  ip: string;
  prefix: number;
  mac: string;
  gateway: string;
  /** The pod's network namespace, as `ip netns` names it (podman's netns-UUID). */
  netns: string;
}

/** The address podman's IPAM gave a running container (the pod's infra container). */
export async function networkOf(engine: NodeEngine, container: string): Promise<PodNetwork> {
  const r = await engine.podman(['container', 'inspect', '--format', '{{json .NetworkSettings}}', container]);
  const s = JSON.parse(r.stdout) as { SandboxKey: string; Networks: Record<string, { IPAddress: string; IPPrefixLen: number; MacAddress: string; Gateway: string }> };
  const nets = Object.values(s.Networks ?? {});
  if (nets.length !== 1) throw new Error(`${container} is on ${nets.length} networks: ${r.stdout}`);
  const n = nets[0]!;
  if (!/^\d+\.\d+\.\d+\.\d+$/.test(n.IPAddress)) throw new Error(`podman assigned no IPv4 address to ${container}: ${r.stdout}`);
  return { ip: n.IPAddress, prefix: n.IPPrefixLen, mac: n.MacAddress, gateway: n.Gateway, netns: basename(s.SandboxKey) };
}

export interface PlayedPod {
  name: string;
  /** The JSON manifest played (and what `kube down` reads). */
  file: string;
  manifest: PodManifest;
  infra: string;
  net: PodNetwork;
  /** podman's name for a container of the manifest. */
  container(name: string): string;
  /** The container's id (for its events after `kube down` removed it). */
  id(name: string): Promise<string>;
  /** Where a volume of the manifest is on the machine (podman's named volume). */
  volumePath(name: string): Promise<string>;
}

export interface PlayOptions {
  /**
   * Runs once the pod's network namespace is up and settled, before any
   * container of the manifest starts: the moment to take a snapshot of the
   * namespace as the engine made it.
   */
  beforeStart?: (net: PodNetwork) => Promise<void>;
}

/**
 * `podman kube play` of the manifest in the engine's namespace, on the
 * `podman` network (no DNS, see engine.ts). The pod is created stopped, its
 * infra container (the pod's network namespace) started first, then the
 * manifest's containers: what `kube play` does in one go, with a moment in
 * between to look at the namespace.
 */
export async function play(engine: NodeEngine, m: PodManifest, dir: string, opts: PlayOptions = {}): Promise<PlayedPod> {
  const file = join(dir, `${m.metadata.name}.json`);
  await writeFile(file, JSON.stringify(m, null, 2));
  const r = await engine.podman(['kube', 'play', '--start=false', '--network', 'podman', file], { reject: false });
  if (r.exitCode !== 0) throw new Error(`podman kube play failed (exit ${r.exitCode}):\n${r.stderr}\n${r.stdout}`);
  const infra = (await engine.podman(['pod', 'inspect', '--format', '{{.InfraContainerID}}', m.metadata.name])).stdout.trim();
  await engine.podman(['start', infra]);
  const net = await networkOf(engine, infra);
  await waitSettled(net.netns);
  await opts.beforeStart?.(net);
  await engine.podman(['pod', 'start', m.metadata.name]);
  const container = (name: string) => {
    containerOf(m, name);
    return `${m.metadata.name}-${name}`;
  };
  return {
    name: m.metadata.name,
    file,
    manifest: m,
    infra,
    net,
    container,
    id: async (name) => (await engine.podman(['container', 'inspect', '--format', '{{.Id}}', container(name)])).stdout.trim(),
    volumePath: async (name) => {
      volumeOf(m, name);
      return volumeMountpoint(engine, name);
    },
  };
}

/** Runs a container's readiness probe command once, as kubelet does (an exec in the container). */
export async function probe(engine: NodeEngine, pod: PlayedPod, container: string): Promise<{ ready: boolean; stdout: string; stderr: string }> {
  const p = containerOf(pod.manifest, container).readinessProbe;
  if (!p?.exec?.command?.length) throw new Error(`container ${container} has no exec readiness probe`);
  const r = await engine.podman(['exec', pod.container(container), ...p.exec.command], { reject: false, timeoutMs: 30_000 });
  return { ready: r.exitCode === 0, stdout: r.stdout, stderr: r.stderr };
}

/** Runs the readiness probe every `periodMs` until it passes; returns what it printed then. */
export async function untilReady(engine: NodeEngine, pod: PlayedPod, container: string, timeoutMs = 60_000, periodMs = 500): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  let last = { ready: false, stdout: '', stderr: '' };
  while (Date.now() < deadline) {
    last = await probe(engine, pod, container);
    if (last.ready) return last.stdout;
    await new Promise((r) => setTimeout(r, periodMs));
  }
  const logs = await engine.podman(['logs', pod.container(container)], { reject: false });
  throw new Error(`the readiness probe of ${container} did not pass within ${timeoutMs} ms (last: ${last.stderr.trim()}); its log:\n${logs.stdout}\n${logs.stderr}`);
}

/** The exit status podman recorded when a container died (also once `kube down` has removed it). */
export async function exitStatuses(engine: NodeEngine, id: string, sinceMs: number): Promise<number[]> {
  const r = await engine.podman(['events', '--stream=false', '--since', new Date(sinceMs - 1000).toISOString(), '--filter', 'event=died', '--filter', `container=${id}`, '--format', '{{.ContainerExitCode}}']);
  return r.stdout.split('\n').filter(Boolean).map(Number);
}

/**
 * Keeps a pod's network namespace alive under a name of the test's own
 * (`ip netns attach`), so that what is left in it once podman has removed
 * the pod can be looked at: podman's network teardown deletes the pod's
 * veth, and whatever else is there stays. Removed at cleanup (the name only:
 * the pod's processes are podman's to end).
 */
export async function holdNetns(pod: PlayedPod, engine: NodeEngine, cleanup: Cleanup): Promise<string> {
  const pid = (await engine.podman(['container', 'inspect', '--format', '{{.State.Pid}}', pod.infra])).stdout.trim();
  const name = uniqueName('pth-');
  // An owner record, as createNetns writes one, so a killed test's hold is swept too.
  await mkdir(STATE_DIR, { recursive: true });
  await mkdir(nsStateDir(name));
  await writeFile(join(nsStateDir(name), 'owner'), `${process.pid} ${processStartTime(process.pid) ?? ''}\n`);
  cleanup.defer(`netns hold ${name}`, async () => {
    await run('ip', ['netns', 'del', name], { reject: false });
    await run('rm', ['-rf', '--', nsStateDir(name)]);
  });
  await run('ip', ['netns', 'attach', name, pid]);
  return name;
}

type Json = Record<string, unknown>;

/** Links, addresses, routes, nftables tables and processes of a namespace: what podtap would have left. */
export async function leftIn(ns: string): Promise<{ links: string[]; addresses: string[]; routes: string[]; nft: string[] }> {
  const ip = async (args: string[]) => JSON.parse((await run('ip', ['-n', ns, '-j', ...args])).stdout || '[]') as Json[];
  const links = await ip(['link', 'show']);
  const addrs = await ip(['addr', 'show']);
  const routes = [...(await ip(['-4', 'route', 'show', 'table', 'all'])), ...(await ip(['-6', 'route', 'show', 'table', 'all']))];
  const nft = (await run('ip', ['netns', 'exec', ns, 'nft', 'list', 'tables'])).stdout.split('\n').filter(Boolean);
  return {
    links: links.map((l) => String(l.ifname)),
    addresses: addrs.flatMap((l) => ((l.addr_info as Json[]) ?? []).map((a) => `${l.ifname} ${a.local}/${a.prefixlen}`)),
    routes: routes.map((r) => `${r.table ?? 'main'} ${r.type ?? 'unicast'} ${r.dst} dev ${r.dev}`),
    nft,
  };
}

/** What the manifest's image is, checked against what the README tells people to build. */
export async function documentedBuild(image: string): Promise<string | undefined> {
  const doc = await readFile(join(REPO_ROOT, 'README.md'), 'utf8');
  return doc.split('\n').find((l) => /\b(podman|docker) build\b/.test(l) && l.includes(` -t ${image} `));
}


/** Calls `fn` every `periodMs` until it returns something; throws with `what` after `timeoutMs`. */
export async function until<T>(what: string, timeoutMs: number, fn: () => Promise<T | undefined>, periodMs = 1000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() >= deadline) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, periodMs));
  }
}

/** A container's output (stdout and stderr apart) since a moment, or all of it. */
export async function logsOf(engine: NodeEngine, container: string, sinceMs?: number): Promise<{ stdout: string; stderr: string }> {
  const since = sinceMs === undefined ? [] : ['--since', new Date(sinceMs).toISOString()];
  const r = await engine.podman(['logs', ...since, container], { timeoutMs: 30_000 });
  return { stdout: r.stdout, stderr: r.stderr };
}

/** podtap's JSON log lines (PODTAP_LOG_FORMAT=json) from a container's stderr. */
export function jsonLog(stderr: string): { msg: string; [k: string]: unknown }[] {
  return stderr
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as { msg: string });
}

/** A container's pid on the machine, and its restart count. */
export async function stateOf(engine: NodeEngine, container: string): Promise<{ pid: number; restarts: number; status: string; exitCode: number }> {
  const r = await engine.podman(['container', 'inspect', '--format', '{{.State.Pid}} {{.RestartCount}} {{.State.Status}} {{.State.ExitCode}}', container]);
  const [pid, restarts, status, exitCode] = r.stdout.trim().split(' ');
  return { pid: Number(pid), restarts: Number(restarts), status: status!, exitCode: Number(exitCode) };
}

/** The podman network's gateway (the pods' gateway), before any pod is up. */
export async function podmanGateway(engine: NodeEngine): Promise<string> {
  const r = await engine.podman(['network', 'inspect', '--format', '{{range .Subnets}}{{.Gateway}} {{end}}', 'podman']);
  const gw = r.stdout.trim().split(' ')[0];
  if (!gw || !/^\d+\.\d+\.\d+\.\d+$/.test(gw)) throw new Error(`no IPv4 gateway on the podman network: ${r.stdout}`);
  return gw;
}

/** The guest's console (QEMU's serial is the VMM container's stdout) since a moment, parsed. */
export async function guestSince(engine: NodeEngine, container: string, sinceMs: number): Promise<GuestReport> {
  return parseGuestOutput((await logsOf(engine, container, sinceMs)).stdout);
}

/**
 * Where a file that a container names in one of its volumes (a socket in
 * the shared volume, say) is on the machine.
 */
export async function hostPathOf(pod: PlayedPod, c: KubeContainer, path: string): Promise<string> {
  const mount = c.volumeMounts?.find((v) => v.mountPath === dirname(path));
  if (!mount) throw new Error(`${c.name} has no volume mounted at ${dirname(path)}`);
  return `${await pod.volumePath(mount.name)}/${path.slice(dirname(path).length + 1)}`;
}

/**
 * kill -9 of podtap, the process `pid` (process 1 of `container`), from
 * outside: podman restarts the container (`podman kill` would count as the
 * user's stop, and is not restarted). Resolves with the new podtap's ready
 * line once it has adopted what the killed one set up, from the journal in
 * the state volume: the killed podtap's ready file passes the probe too
 * until the new one replaces it (podtap does not remove a stale one when it
 * starts).
 */
export async function killAndAdopt(engine: NodeEngine, pod: PlayedPod, container: string, pid: number): Promise<ReadyLine> {
  const c = pod.container(container);
  process.kill(pid, 'SIGKILL');
  await until(`the restarted ${container} container`, 60_000, async () => {
    const s = await stateOf(engine, c);
    return s.restarts === 1 && s.status === 'running' && s.pid !== pid ? s : undefined;
  }, 250);
  return until('the new podtap\'s ready line', 60_000, async () => {
    const p = await probe(engine, pod, container);
    const line = p.ready ? (JSON.parse(p.stdout) as ReadyLine) : undefined;
    return line?.adopted ? line : undefined;
  }, 250);
}

export interface KubeSuite<T extends Target> {
  /** Cleaned up after each test. */
  readonly cleanup: Cleanup;
  /** The podtap images, built before the first test. */
  readonly images: Readonly<Record<T, BuiltImage>>;
  /** The manifest as shipped, read before the first test. */
  readonly manifest: PodManifest;
  /** A node namespace and engine of the test's own, and a directory for the manifest it plays. */
  node(): Promise<{ engine: NodeEngine; dir: string }>;
}

/**
 * What every describe block of `kube play` tests starts with: a Cleanup
 * run after each test and, once for all of them, the base image, the
 * podtap images of `targets` (built in that order) and the manifest `file`.
 */
export function kubeSuite<T extends Target>(file: ManifestFile, targets: readonly T[]): KubeSuite<T> {
  const cleanup = new Cleanup();
  afterEach(() => cleanup.cleanupAll());
  const images = {} as Record<T, BuiltImage>;
  let manifest: PodManifest | undefined;
  beforeAll(async () => {
    await ensureBaseImage();
    for (const t of targets) images[t] = await buildPodtapImage(t);
    manifest = await readManifest(file);
  }, 1_800_000);
  return {
    cleanup,
    images,
    get manifest(): PodManifest {
      if (!manifest) throw new Error(`${file} is read before the first test`);
      return manifest;
    },
    async node() {
      const engine = await createNodeEngine(cleanup);
      const dir = await mkdtemp('/tmp/podtap-kube-');
      cleanup.path(dir);
      return { engine, dir };
    },
  };
}
