// Running the real podtap command inside a test pod, the way a container
// runtime would: its own process, its own namespace, signals and exit codes.

import { resolve } from 'node:path';
import tmp from 'tmp';
import { startInPod, runInPod, type Cleanup, type RunResult } from './netns.ts';
import type { Pod } from './pods.ts';

export const PODTAP = resolve(import.meta.dirname, '../../init/podtap');

export interface ReadyLine {
  event: 'ready';
  mac: string;
  ip: string;
  gateway?: string;
  mtu: number;
  bridge: string;
  tap: string;
  queues: number;
  linkLocal: string;
  timings: Record<string, number>;
  [k: string]: unknown;
}

export interface Running {
  proc: ReturnType<typeof startInPod>;
  pid: number;
  stateDir: string;
  /** Resolves with the ready line, rejects if podtap exits first. */
  ready: Promise<ReadyLine>;
  stdout(): string;
  stderr(): string;
}

/** A scratch state dir for one podtap, removed at cleanup. */
export function stateDirFor(cleanup: Cleanup): string {
  const dir = tmp.dirSync({ tmpdir: '/run', prefix: 'podtap-test-state-' }).name;
  cleanup.path(dir);
  return dir;
}

/** Starts `podtap <args>` in the pod; the ready promise settles on the first stdout line. */
export function startPodtap(pod: Pod, args: string[], cleanup: Cleanup, env: Record<string, string> = {}, stateDir = stateDirFor(cleanup)): Running {
  const argv = [PODTAP, ...args.slice(0, 1), '--state-dir', stateDir, ...args.slice(1)];
  const proc = startInPod(pod.pod, pod.hostname, argv, cleanup, env);
  let out = '';
  let err = '';
  proc.stderr?.on('data', (d: Buffer) => (err += d.toString()));
  const ready = new Promise<ReadyLine>((resolveReady, reject) => {
    proc.stdout?.on('data', (d: Buffer) => {
      out += d.toString();
      const line = out.split('\n').find((l) => l.startsWith('{"event":"ready"'));
      if (line) resolveReady(JSON.parse(line));
    });
    void proc.then((r) => reject(new Error(`podtap exited (${r.exitCode ?? r.signal}) before it was ready:\n${err}`)));
  });
  ready.catch(() => {});
  return { proc, pid: proc.pid!, stateDir, ready, stdout: () => out, stderr: () => err };
}

export function podtapIn(pod: Pod, args: string[], env: Record<string, string> = {}): Promise<RunResult> {
  return runInPod(pod.pod, pod.hostname, [PODTAP, ...args], { reject: false, env });
}
