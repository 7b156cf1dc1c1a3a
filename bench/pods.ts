// Pods for the benchmark: the test helpers' real CNI ptp pods, made several
// at a time (most of makePod's time is waiting for IPv6 DAD), plus starting
// `podtap up` in one the way the benchmark times it.

import { mkdtempSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Cleanup } from '../test/helpers/netns.ts';
import { makePod, type Pod } from '../test/helpers/pods.ts';
import { NODE, noteEntry, nsenter, podtapHead, ROOT, Running, timed } from './proc.ts';

/** Makes `n` ptp pods, `concurrency` at a time; all registered with `cleanup`. */
export async function makePods(n: number, cleanup: Cleanup, concurrency = 4): Promise<Pod[]> {
  const pods: Pod[] = [];
  let next = 0;
  const worker = async () => {
    while (next < n) {
      next++;
      pods.push(await makePod('ptp', { cleanup }));
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, n) }, worker));
  return pods;
}

export interface PodPlan {
  vm: { mac: string; ip: string; address: string; prefixlen: number; mtu: number; gateway?: string };
  datapath: string;
  linkLocal: string;
  stepIds: string[];
  setupIp: string[];
  teardownIp: string[];
  nftSetup: string;
  nftTeardown: string;
}

/** podtap's own discovery + plan for this pod (read-only), via bench/plan-helper.ts; `datapath` as --datapath. */
export async function planFor(pod: Pod, datapath?: string): Promise<PodPlan> {
  const r = await timed(nsenter(pod.pod, [NODE, '--disable-warning=ExperimentalWarning', join(ROOT, 'bench/plan-helper.ts'), resolvConfOf(pod), ...(datapath ? [datapath] : [])]), { timeoutMs: 30_000 });
  return JSON.parse(r.stdout) as PodPlan;
}

export function resolvConfOf(pod: Pod): string {
  return `/etc/netns/${pod.pod}/resolv.conf`;
}

export function tempDir(cleanup: Cleanup, prefix = 'podtap-bench-'): string {
  const dir = mkdtempSync(join('/run', prefix));
  cleanup.path(dir);
  return dir;
}

export function writeFile(dir: string, name: string, text: string): string {
  const p = join(dir, name);
  writeFileSync(p, text);
  return p;
}

export interface UpOptions {
  stateDir: string;
  args?: string[];
  env?: NodeJS.ProcessEnv;
  cleanup: Cleanup;
  /** Log to this file instead of a pipe (servers under load). */
  stderrFile?: string;
}

/** Starts `podtap up` in the pod's netns. Timing starts right before spawn (run.startedAt). */
export function startUp(pod: Pod, o: UpOptions): Running {
  const argv = nsenter(pod.pod, [...podtapHead(), 'up', '--state-dir', o.stateDir, '--resolv-conf', resolvConfOf(pod), ...(o.args ?? [])]);
  return new Running(argv, { cleanup: o.cleanup, ...(o.env ? { env: o.env } : {}), ...(o.stderrFile ? { stderrFile: o.stderrFile } : {}) });
}

export interface ReadyInfo {
  ms: number; // exec → ready line
  at: number;
  line: Record<string, any>;
}

/** `note`: count the entry podtap ran (off for deliberate what-if variants). */
export async function waitReady(run: Running, timeoutMs = 30_000, note = true): Promise<ReadyInfo> {
  const { line, at } = await run.waitLine((l) => l.startsWith('{"event":"ready"'), timeoutMs);
  if (note) noteEntry(run.pid);
  return { ms: at - run.startedAt, at, line: JSON.parse(line) };
}

/** Runs a shell script in the namespace (untimed plumbing). */
export async function nsSh(ns: string, script: string): Promise<void> {
  await timed(nsenter(ns, ['sh', '-c', script]), { timeoutMs: 10_000 });
}

/** Waits until no address in the namespace is tentative (IPv6 DAD over); returns false on timeout. */
export async function waitNoTentative(ns: string, timeoutMs = 10_000): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const r = await timed(['ip', '-n', ns, '-j', 'addr', 'show', 'tentative'], { timeoutMs: 5000 });
    const links = JSON.parse(r.stdout || '[]') as { addr_info?: unknown[] }[];
    if (!links.some((l) => (l.addr_info ?? []).length > 0)) return true;
    await new Promise((res) => setTimeout(res, 10));
  }
  return false;
}
