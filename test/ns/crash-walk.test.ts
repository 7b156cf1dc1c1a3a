// "Never lose the pod's network": podtap is killed (SIGKILL, no cleanup of
// any kind) at every step of setup and of teardown, just before and just
// after applying it, in every pod shape (the multi-interface one too) and on
// both data paths. Each time `podtap down` must restore the namespace to
// exactly the snapshot taken before podtap first ran, and leave the state
// dir empty.
//
// One pod per walk (shape, data path, phase) serves the whole walk:
// restoring it exactly is the assertion, so a case that fails to restore is
// reported and the pod is rebuilt for the rest of the walk (a later case
// must not fail for an earlier one's leftovers). All failing cases of a walk
// are reported together.
//
// Cost: about 170 setup steps over all shapes and both data paths, each
// crashed twice per phase: some 700 crashes, each a podtap start, a
// `podtap down` and a snapshot that waits out IPv6 duplicate address
// detection on the restored link-local addresses (about a second, idle).
// Walks run as concurrent tests, PODTAP_TEST_CRASH_PARALLEL at once
// (default 6: three per core, so the walks' DAD waits overlap each other's
// work; a whole test/ns run uses about one core of the two on average);
// the longest (multi-interface) walks start first.

import { readdirSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { afterAll, expect, it } from 'vitest';
import { Cleanup } from '../helpers/netns.ts';
import { ALL_SHAPES, DATAPATHS, makePod, type Datapath, type Pod, type Shape } from '../helpers/pods.ts';
import { snapshot, diffSnapshots, type Snapshot } from '../helpers/snapshot.ts';
import { podtapIn, startPodtap, stateDirFor } from '../helpers/podtap.ts';
import { limiter } from '../helpers/limit.ts';

const cleanup = new Cleanup();
afterAll(() => cleanup.cleanupAll());

const walks = limiter(Number(process.env.PODTAP_TEST_CRASH_PARALLEL ?? 6));
const timings: string[] = [];
afterAll(() => {
  if (timings.length) console.log(`crash walk timings:\n  ${timings.join('\n  ')}`);
});

type Phase = 'setup' | 'teardown';
const WHEN = ['before', 'after'] as const;

/** Context for a difference: every pod interface's addresses and the IPv6 routes, before and after. */
function explain(pod: Pod, before: Snapshot, after: Snapshot): string {
  const side = (s: Snapshot) => JSON.stringify({ ...Object.fromEntries(pod.nics.map((n) => [n.ifname, s.addresses[n.ifname]])), inet6: s.routes.inet6 }, null, 1);
  return `before: ${side(before)}\nafter: ${side(after)}`;
}

/** A normal run: the ready line's step count, and proof that a clean SIGTERM restores. */
async function stepCount(pod: Pod, before: Snapshot, args: string[]): Promise<number> {
  const up = startPodtap(pod, args, cleanup);
  const ready = await up.ready;
  up.proc.kill('SIGTERM');
  const r = await up.proc;
  expect(r.exitCode, up.stderr()).toBe(0);
  const after = await snapshot(pod.pod);
  expect(diffSnapshots(before, after), explain(pod, before, after)).toEqual([]);
  expect(typeof ready.steps).toBe('number');
  return ready.steps;
}

/** One crash and one `podtap down`; returns what went wrong (empty when all is well). */
async function crashAndRestore(pod: Pod, before: Snapshot, args: string[], phase: Phase, k: number, when: 'before' | 'after'): Promise<string[]> {
  const problems: string[] = [];
  const stateDir = stateDirFor(cleanup);
  const up = startPodtap(pod, args, cleanup, { PODTAP_FAULT: `${phase}:${k}:${when}` }, stateDir);
  if (phase === 'teardown') {
    try {
      await up.ready;
    } catch (e) {
      return [`never became ready: ${(e as Error).message}`];
    }
    up.proc.kill('SIGTERM');
  }
  const r = await up.proc;
  if (r.signal !== 'SIGKILL') problems.push(`expected death by SIGKILL, got exit ${r.exitCode} signal ${r.signal}:\n${up.stderr()}`);
  if (phase === 'setup' && up.stdout() !== '') problems.push(`a ready line although setup was killed: ${up.stdout()}`);

  const down = await podtapIn(pod, ['down', '--state-dir', stateDir]);
  if (down.exitCode !== 0) problems.push(`podtap down exited ${down.exitCode}:\n${down.stderr}`);
  // The step was journaled before the kill, so there is always something to restore.
  else if (!/namespace restored/.test(down.stderr)) problems.push(`podtap down found nothing to restore:\n${down.stderr}`);
  const left = readdirSync(stateDir);
  if (left.length) problems.push(`state dir not clean after down: ${left.join(' ')}`);
  const after = await snapshot(pod.pod);
  const diff = diffSnapshots(before, after);
  if (diff.length) problems.push(`namespace differs after down:\n    ${diff.join('\n    ')}\n${explain(pod, before, after)}\n${down.stderr}`);
  await rm(stateDir, { recursive: true, force: true });
  return problems;
}

interface Walk {
  shape: Shape;
  datapath: Datapath;
  phase: Phase;
  flags: string[];
}

// Every shape, data path and phase with the defaults; plus a persistent tap
// (Firecracker's mode), which unlike a plain tap outlives podtap's kill -9
// and must still go. Longest walks first.
const cases: Walk[] = [
  ...[...ALL_SHAPES].reverse().flatMap((shape) =>
    DATAPATHS.flatMap((datapath) => (['setup', 'teardown'] as const).map((phase): Walk => ({ shape, datapath, phase, flags: [] }))),
  ),
  ...DATAPATHS.map((datapath): Walk => ({ shape: 'ptp', datapath, phase: 'setup', flags: ['--persist-tap'] })),
];

for (const { shape, datapath, phase, flags } of cases) {
  const label = `${shape} pod, ${datapath}${flags.length ? ` (${flags.join(' ')})` : ''}`;
  it.concurrent(`${label}: kill -9 at every ${phase} step (before and after it), then \`podtap down\` restores exactly`, async () => {
    await walks(async () => {
      const t0 = Date.now();
      let pod = await makePod(shape, { cleanup });
      const args = ['up', '--datapath', datapath, ...pod.nicArgs(datapath), ...flags];
      let before = await snapshot(pod.pod);
      const n = await stepCount(pod, before, args);
      expect(n).toBeGreaterThan(5);

      const failures: string[] = [];
      for (let k = 0; k < n; k++) {
        for (const when of WHEN) {
          const problems = await crashAndRestore(pod, before, args, phase, k, when);
          if (!problems.length) continue;
          failures.push(`${phase}:${k}:${when}: ${problems.join('\n  ')}`);
          // Start the rest of the walk from a clean pod.
          await pod.cleanup();
          pod = await makePod(shape, { cleanup });
          before = await snapshot(pod.pod);
        }
      }
      // The fault counter is exact: one past the last step never fires.
      const beyond = startPodtap(pod, args, cleanup, { PODTAP_FAULT: `${phase}:${n}:before` });
      await beyond.ready;
      beyond.proc.kill('SIGTERM');
      expect((await beyond.proc).exitCode, beyond.stderr()).toBe(0);
      expect(diffSnapshots(before, await snapshot(pod.pod))).toEqual([]);
      await pod.cleanup();

      timings.push(`${label} ${phase}: ${n} steps, ${2 * n} crashes, ${((Date.now() - t0) / 1000).toFixed(1)} s`);
      expect(failures).toEqual([]);
    });
  }, 1_200_000);
}
