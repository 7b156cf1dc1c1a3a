// `podtap run` boots a real guest under QEMU (TCG) that was given the pod's
// address statically on its kernel command line (no DHCP): it must reach the
// node namespace through the default data path (redirect: no bridge) and the
// veth, and when the guest powers off, podtap exits with QEMU's status and
// the namespace is exactly as before.

import { afterAll, expect, it } from 'vitest';
import { Cleanup } from '../helpers/netns.ts';
import { makePod } from '../helpers/pods.ts';
import { snapshot, diffSnapshots } from '../helpers/snapshot.ts';
import { buildGuest, guestQemuArgs, runGuest } from '../helpers/guest.ts';
import { expectReady, PODTAP, stateDirFor } from '../helpers/podtap.ts';
import { readyIn } from './support.ts';

const cleanup = new Cleanup();
afterAll(() => cleanup.cleanupAll());

it('a statically configured guest reaches the node namespace, and teardown restores the pod', async () => {
  const guest = await buildGuest();
  const pod = await makePod('ptp', { cleanup });
  const before = await snapshot(pod.pod);
  const stateDir = stateDirFor(cleanup);
  const qemu = [
    ...guestQemuArgs({ guest, net: { address: `${pod.podIP}/${pod.prefix}`, gateway: pod.gateway! }, ping: [pod.nodeAddr], guestTimeout: 60 }),
    '-netdev', 'tap,id=n0,fds={fds}',
    '-device', 'virtio-net-pci,netdev=n0,mac={mac},romfile=',
  ];
  const run = await runGuest(pod.argv([PODTAP, 'run', '--state-dir', stateDir, '--no-dhcp', '--', ...qemu]), { timeoutMs: 120_000 });
  expect(run.reason, run.stderr).not.toBe('aborted');
  const ready = readyIn(run.serial);
  expect(ready, run.stderr).toBeDefined();
  // The ready line still names the address podtap would hand out (/32 on
  // ptp, see pods.ts), whether or not it serves DHCP.
  expectReady(ready!, pod, 'redirect');
  expect(run.report.last?.mac).toBe(pod.expect.mac);
  expect(run.report.pings).toEqual([expect.objectContaining({ target: pod.nodeAddr, ok: true })]);
  // podtap returns once QEMU is gone and the namespace is restored.
  expect(run.exitCode, run.stderr).toBe(0);
  expect(run.stderr).toMatch(/namespace restored/);
  expect(diffSnapshots(before, await snapshot(pod.pod))).toEqual([]);
});
