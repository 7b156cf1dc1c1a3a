// Restart without disturbing the VM: podtap (a sidecar serving the TAP over
// its fd socket) is killed with SIGKILL while the guest pings the node every
// second. A new `podtap up` on the same journal adopts the setup: the guest's
// pings go on (no loss beyond the restart window), its lease renews against
// the new podtap, and SIGTERM then restores the namespace exactly.

import { afterAll, expect, it } from 'vitest';
import { join } from 'node:path';
import { Cleanup } from '../helpers/netns.ts';
import { makePod } from '../helpers/pods.ts';
import { snapshot, diffSnapshots } from '../helpers/snapshot.ts';
import { buildGuest, guestQemuArgs, runGuest } from '../helpers/guest.ts';
import { PODTAP, startPodtap, stateDirFor } from '../helpers/podtap.ts';

const cleanup = new Cleanup();
afterAll(() => cleanup.cleanupAll());

it('a running guest keeps its traffic and lease across kill -9 of podtap and an adopting restart', async () => {
  const guest = await buildGuest();
  const pod = await makePod('ptp', { cleanup });
  const before = await snapshot(pod.pod);
  const stateDir = stateDirFor(cleanup);
  const sock = join(stateDir, 'fds.sock');
  // udhcpc renews at half the lease, and never sooner than 15 s.
  const args = ['up', '--fd-socket', sock, '--lease-time', '30'];
  const first = startPodtap(pod, args, cleanup, {}, stateDir);
  expect((await first.ready).adopted).toBe(false);

  const stop = new AbortController();
  const events: { t: number; line: string }[] = [];
  const t0 = Date.now();
  let killedAt = 0;
  let second: ReturnType<typeof startPodtap> | undefined;
  let renewalsAfterRestart = 0;
  const qemu = [...guestQemuArgs({ guest, net: 'dhcp', ping: [pod.nodeAddr], mode: 'ping-forever', guestTimeout: 170 }), '-netdev', 'tap,id=n0,fd={fd}', '-device', 'virtio-net-pci,netdev=n0,mac={mac},romfile='];
  const run = runGuest(pod.argv([PODTAP, 'exec', '--fd-socket', sock, '--', ...qemu]), {
    timeoutMs: 150_000,
    signal: stop.signal,
    onLine: (line) => {
      events.push({ t: Date.now() - t0, line });
      const okTicks = events.filter((e) => / tick \d+ \S+ ok /.test(e.line)).length;
      // Once traffic flows steadily, kill podtap without any chance to clean up.
      if (!killedAt && okTicks === 5) {
        killedAt = Date.now() - t0;
        first.proc.kill('SIGKILL');
        setTimeout(() => (second = startPodtap(pod, args, cleanup, {}, stateDir)), 1000);
      }
      if (killedAt && /dhcp-end \d+ renew/.test(line)) {
        renewalsAfterRestart++;
        setTimeout(() => stop.abort(), 3000); // a few more pings after the renewal
      }
    },
  });
  const result = await run;
  expect(killedAt, result.serial).toBeGreaterThan(0);
  expect(second, 'podtap was restarted').toBeDefined();
  const ready = await second!.ready;
  expect(ready.adopted).toBe(true);
  expect(ready.mac).toBe(pod.expect.mac);
  expect(renewalsAfterRestart, result.serial).toBeGreaterThanOrEqual(1);

  // Pings during and after the restart: at most the restart window (~2 s) lost.
  const ticks = result.report.ticks;
  const afterKill = events.filter((e) => e.t > killedAt && / tick /.test(e.line)).map((e) => / ok /.test(e.line));
  expect(afterKill.length).toBeGreaterThan(10);
  expect(afterKill.filter((ok) => !ok).length).toBeLessThanOrEqual(3);
  expect(ticks.slice(-5).every((t) => t.ok)).toBe(true);

  second!.proc.kill('SIGTERM');
  expect((await second!.proc).exitCode, second!.stderr()).toBe(0);
  expect(diffSnapshots(before, await snapshot(pod.pod))).toEqual([]);
});
