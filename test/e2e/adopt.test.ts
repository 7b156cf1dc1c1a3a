// Restart without disturbing the VM: podtap (a sidecar serving the TAP over
// its fd socket) is killed with SIGKILL while the guest pings the node every
// second. A new `podtap up` on the same journal adopts the setup: the guest's
// pings go on (no loss beyond the restart window), its lease renews against
// the new podtap. Then the VMM restarts, as a sidecar VMM container would:
// the old one took the TAP with it (podtap, having adopted, held no queue),
// so the new one's `podtap exec` makes podtap open it again, and the new
// guest must get its lease and reach the node as the first did. SIGTERM
// then restores the namespace exactly. On both data paths: adoption must
// find (and keep) the netdev table or the bridge.

import { afterAll, describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { Cleanup, run as runCmd } from '../helpers/netns.ts';
import { DATAPATHS, makePod } from '../helpers/pods.ts';
import { snapshot, diffSnapshots } from '../helpers/snapshot.ts';
import { buildGuest, guestQemuArgs, runGuest } from '../helpers/guest.ts';
import { expectTakenOver, PODTAP, startPodtap, stateDirFor } from '../helpers/podtap.ts';
import { datapathArgs } from './support.ts';

const cleanup = new Cleanup();
afterAll(() => cleanup.cleanupAll());

describe.each(DATAPATHS)('%s data path', (datapath) => it('a running guest keeps its traffic and lease across kill -9 of podtap and an adopting restart', async () => {
  const guest = await buildGuest();
  const pod = await makePod('ptp', { cleanup });
  const before = await snapshot(pod.pod);
  const stateDir = stateDirFor(cleanup);
  const sock = join(stateDir, 'fds.sock');
  // udhcpc renews at half the lease, and never sooner than 15 s.
  const args = ['up', '--fd-socket', sock, '--lease-time', '30', ...datapathArgs(datapath)];
  const first = startPodtap(pod, args, cleanup, {}, stateDir);
  expect(await first.ready).toMatchObject({ adopted: false, datapath });

  const stop = new AbortController();
  const events: { t: number; line: string }[] = [];
  const t0 = Date.now();
  let killedAt = 0;
  let second: ReturnType<typeof startPodtap> | undefined;
  let renewalsAfterRestart = 0;
  let adoptedState: Promise<unknown> | undefined;
  let ticksAfterKill = 0;
  let ticksAtRenewal = -1;
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
        if (ticksAtRenewal < 0) ticksAtRenewal = ticksAfterKill;
        // While the guest still holds its TAP: the adopted setup is the
        // same devices and guard, nothing added.
        adoptedState ??= expectTakenOver(pod, datapath).then(() => undefined, (e: unknown) => e);
      }
      // Enough pings after the kill to judge the loss (the renewal's timing
      // varies with the boot), and a few more after the renewal: then stop.
      if (killedAt && / tick /.test(line)) ticksAfterKill++;
      if (ticksAtRenewal >= 0 && ticksAfterKill >= Math.max(12, ticksAtRenewal + 3)) stop.abort();
    },
  });
  const result = await run;
  expect(killedAt, result.serial).toBeGreaterThan(0);
  expect(second, 'podtap was restarted').toBeDefined();
  const ready = await second!.ready;
  expect(ready).toMatchObject({ adopted: true, datapath, mac: pod.expect.mac });
  expect(await adoptedState).toBeUndefined();
  expect(renewalsAfterRestart, result.serial).toBeGreaterThanOrEqual(1);

  // Pings during and after the restart: at most the restart window (~2 s) lost.
  const ticks = result.report.ticks;
  const afterKill = events.filter((e) => e.t > killedAt && / tick /.test(e.line)).map((e) => / ok /.test(e.line));
  expect(afterKill.length).toBeGreaterThan(10);
  expect(afterKill.filter((ok) => !ok).length).toBeLessThanOrEqual(3);
  expect(ticks.slice(-5).every((t) => t.ok)).toBe(true);

  // The VMM is gone, and with it the TAP. A new one fetches the fds again.
  const tapLeft = await runCmd('ip', ['-n', pod.pod, 'link', 'show', 'dev', 'tap0'], { reject: false });
  expect(tapLeft.exitCode, 'the old VMM took the TAP with it').not.toBe(0);
  const next = await runGuest(pod.argv([PODTAP, 'exec', '--fd-socket', sock, '--', ...guestQemuArgs({ guest, net: 'dhcp', ping: [pod.nodeAddr], guestTimeout: 90 }), '-netdev', 'tap,id=n0,fd={fd}', '-device', 'virtio-net-pci,netdev=n0,mac={mac},romfile=']), { timeoutMs: 120_000 });
  expect(next.report.errors, `${next.serial}\npodtap:\n${second!.stderr()}`).toEqual([]);
  expect(next.report.lease?.ip).toBe(pod.podIP);
  expect(next.report.pings).toEqual([expect.objectContaining({ target: pod.nodeAddr, ok: true })]);
  expect(next.exitCode, next.stderr).toBe(0);

  second!.proc.kill('SIGTERM');
  expect((await second!.proc).exitCode, second!.stderr()).toBe(0);
  expect(diffSnapshots(before, await snapshot(pod.pod))).toEqual([]);
}));
