// podtap's whole life in real pod namespaces of every shape (the
// multi-interface one too) and on both data paths: up, what the namespace
// looks like while up, SIGTERM, and the namespace exactly as before; and
// kill -9 followed by `podtap down`. Every pod runs under a read-only
// /proc/sys, as a container engine gives it (see netns.ts).

import { readdirSync } from 'node:fs';
import { afterAll, expect, it } from 'vitest';
import { Cleanup } from '../helpers/netns.ts';
import { ALL_SHAPES, DATAPATHS, makePod } from '../helpers/pods.ts';
import { snapshot, diffSnapshots } from '../helpers/snapshot.ts';
import { expectReady, expectTakenOver, podtapIn, startPodtap } from '../helpers/podtap.ts';
import { limiter } from '../helpers/limit.ts';

const cleanup = new Cleanup();
afterAll(() => cleanup.cleanupAll());

// One pod per case, three cases in flight: much of a case is waiting (DAD, linkwatch).
const slots = limiter(3);

const RESTORED = /^podtap: namespace restored(; (1 IPv6 address is|([2-9]|\d\d+) IPv6 addresses are) finishing duplicate address detection \(about a second\))?$/m;

for (const shape of ALL_SHAPES) {
  for (const datapath of DATAPATHS) {
    it.concurrent(`${shape} pod, ${datapath} data path: up takes every NIC over, SIGTERM restores exactly; after kill -9, \`podtap down\` does, and a second down is a no-op`, () =>
      slots(async () => {
        const pod = await makePod(shape, { cleanup });
        const before = await snapshot(pod.pod);
        const args = ['up', '--datapath', datapath, ...pod.nicArgs(datapath)];

        // up, SIGTERM
        const up = startPodtap(pod, args, cleanup);
        const ready = await up.ready;
        expectReady(ready, pod, datapath);
        await expectTakenOver(pod, datapath);
        // Nothing under /proc/sys changed: IPv6 on the pod interfaces is
        // silenced by netlink (addrgenmode none), never by disable_ipv6.
        const during = await snapshot(pod.pod);
        for (const [key, value] of Object.entries(before.sysctls)) {
          if (/\.addr_gen_mode$/.test(key)) continue; // mirrors addrgenmode
          expect(during.sysctls[key], key).toBe(value);
        }
        up.proc.kill('SIGTERM');
        const r = await up.proc;
        expect(r.exitCode, up.stderr()).toBe(0);
        // Exactly one of the two forms, the count and the grammar right.
        expect(up.stderr()).toMatch(RESTORED);
        expect(diffSnapshots(before, await snapshot(pod.pod))).toEqual([]);
        expect(readdirSync(up.stateDir)).toEqual([]);

        // up, kill -9, down, down
        const killed = startPodtap(pod, args, cleanup);
        await killed.ready;
        killed.proc.kill('SIGKILL');
        await killed.proc;
        expect(diffSnapshots(before, await snapshot(pod.pod))).not.toEqual([]);
        // A dead podtap leaves its readiness file and status socket behind.
        expect(readdirSync(killed.stateDir).filter((f) => f === 'ready' || f === 'status.sock').sort()).toEqual(['ready', 'status.sock']);
        const down = await podtapIn(pod, ['down', '--state-dir', killed.stateDir]);
        expect(down.exitCode, down.stderr).toBe(0);
        expect(down.stderr).toMatch(RESTORED);
        expect(diffSnapshots(before, await snapshot(pod.pod))).toEqual([]);
        // No journal, no lock, no readiness file claiming the network is up,
        // and no status socket nobody answers on.
        expect(readdirSync(killed.stateDir)).toEqual([]);
        const again = await podtapIn(pod, ['down', '--state-dir', killed.stateDir]);
        expect(again.exitCode, again.stderr).toBe(0);
        expect(again.stderr).toMatch(/nothing to restore/);
        expect(diffSnapshots(before, await snapshot(pod.pod))).toEqual([]);
        await pod.cleanup();
      }),
    );
  }
}
