// "Never lose the pod's network": podtap is killed (SIGKILL, no cleanup of
// any kind) at every step of setup and of teardown, just before and just
// after applying it, in every pod shape. Each time `podtap down` must restore
// the namespace to exactly the snapshot taken before podtap first ran.
//
// One pod per shape and phase serves the whole walk: restoring it exactly is
// the assertion, so a case that fails to restore is reported and the pod is
// rebuilt for the rest of the walk (a later case must not fail for an
// earlier one's leftovers). All failing cases are reported together.
//
// vitest runs one file in one worker, so the shapes run as concurrent tests,
// two at a time (the machine has two cores).

import { readdirSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { afterAll, expect, it } from 'vitest';
import { Cleanup } from '../helpers/netns.ts';
import { makePod, SHAPES, type Pod, type Shape } from '../helpers/pods.ts';
import { snapshot, diffSnapshots, type Snapshot } from '../helpers/snapshot.ts';
import { podtapIn, startPodtap, stateDirFor } from '../helpers/podtap.ts';
import { limiter } from '../helpers/limit.ts';

const cleanup = new Cleanup();
afterAll(() => cleanup.cleanupAll());

// PODTAP_TEST_CRASH_PARALLEL: walks in flight at once (default 2, one per core).
const walks = limiter(Number(process.env.PODTAP_TEST_CRASH_PARALLEL ?? 2));
const timings: string[] = [];
afterAll(() => {
  if (timings.length) console.log(`crash walk timings:\n  ${timings.join('\n  ')}`);
});

type Phase = 'setup' | 'teardown';
const WHEN = ['before', 'after'] as const;

/** Context for a difference: eth0's addresses and the IPv6 routes, before and after. */
function explain(before: Snapshot, after: Snapshot): string {
  const side = (s: Snapshot) => JSON.stringify({ eth0: s.addresses.eth0, inet6: s.routes.inet6 }, null, 1);
  return `before: ${side(before)}\nafter: ${side(after)}`;
}

/** A normal run with DHCP on: the ready line's step count, and proof that a clean SIGTERM restores. */
async function stepCount(pod: Pod, before: Snapshot, flags: string[]): Promise<number> {
  const up = startPodtap(pod, ['up', ...flags], cleanup);
  const ready = await up.ready;
  up.proc.kill('SIGTERM');
  const r = await up.proc;
  expect(r.exitCode, up.stderr()).toBe(0);
  const after = await snapshot(pod.pod);
  expect(diffSnapshots(before, after), explain(before, after)).toEqual([]);
  expect(typeof ready.steps).toBe('number');
  return ready.steps as number;
}

/** One crash and one `podtap down`; returns what went wrong (empty when all is well). */
async function crashAndRestore(pod: Pod, before: Snapshot, flags: string[], phase: Phase, k: number, when: 'before' | 'after'): Promise<string[]> {
  const problems: string[] = [];
  const stateDir = stateDirFor(cleanup);
  const up = startPodtap(pod, ['up', ...flags], cleanup, { PODTAP_FAULT: `${phase}:${k}:${when}` }, stateDir);
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
  if (diff.length) problems.push(`namespace differs after down:\n    ${diff.join('\n    ')}\n${explain(before, after)}\n${down.stderr}`);
  await rm(stateDir, { recursive: true, force: true });
  return problems;
}

// Every shape and phase with the defaults; plus a persistent tap (Firecracker's
// mode), which unlike a plain tap outlives podtap's kill -9 and must still go.
const cases: { shape: Shape; phase: Phase; flags: string[] }[] = [
  ...SHAPES.flatMap((shape) => (['setup', 'teardown'] as const).map((phase) => ({ shape, phase, flags: [] }))),
  { shape: 'ptp', phase: 'setup', flags: ['--persist-tap'] },
];

for (const { shape, phase, flags } of cases) {
  it.concurrent(`${shape} pod${flags.length ? ` (${flags.join(' ')})` : ''}: kill -9 at every ${phase} step (before and after it), then \`podtap down\` restores exactly`, async () => {
    await walks(async () => {
      const t0 = Date.now();
      let pod = await makePod(shape, { cleanup });
      let before = await snapshot(pod.pod);
      const n = await stepCount(pod, before, flags);
      expect(n).toBeGreaterThan(5);

      const failures: string[] = [];
      for (let k = 0; k < n; k++) {
        for (const when of WHEN) {
          const problems = await crashAndRestore(pod, before, flags, phase, k, when);
          if (!problems.length) continue;
          failures.push(`${phase}:${k}:${when}: ${problems.join('\n  ')}`);
          // Start the rest of the walk from a clean pod.
          await pod.cleanup();
          pod = await makePod(shape, { cleanup });
          before = await snapshot(pod.pod);
        }
      }
      // The fault counter is exact: one past the last step never fires.
      const beyond = startPodtap(pod, ['up', ...flags], cleanup, { PODTAP_FAULT: `${phase}:${n}:before` });
      await beyond.ready;
      beyond.proc.kill('SIGTERM');
      expect((await beyond.proc).exitCode, beyond.stderr()).toBe(0);
      expect(diffSnapshots(before, await snapshot(pod.pod))).toEqual([]);

      timings.push(`${shape}${flags.length ? ' ' + flags.join(' ') : ''} ${phase}: ${n} steps, ${2 * n} crashes, ${((Date.now() - t0) / 1000).toFixed(1)} s`);
      expect(failures).toEqual([]);
    });
  }, 900_000);
}
