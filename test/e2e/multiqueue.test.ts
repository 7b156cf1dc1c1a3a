// `podtap run --queues 2`: podtap opens a multi-queue tap (one fd per queue
// pair) and QEMU gets both fds through {fds}. A 2-vCPU guest must bring up
// two RX and two TX queues on its virtio-net NIC (virtio-net enables
// min(queue pairs, vCPUs) of them), get the pod's address from podtap's DHCP
// server and ping the node. While the guest runs, the tap in the pod is a
// multi_queue tap; afterwards the pod namespace is exactly as before.

import { afterAll, describe, expect, it } from 'vitest';
import { Cleanup, run } from '../helpers/netns.ts';
import { DATAPATHS, makePod } from '../helpers/pods.ts';
import { snapshot, diffSnapshots } from '../helpers/snapshot.ts';
import { buildGuest, guestQemuArgs, runGuest } from '../helpers/guest.ts';
import { expectReady, PODTAP, stateDirFor } from '../helpers/podtap.ts';
import { datapathArgs, readyIn } from './support.ts';

const cleanup = new Cleanup();
afterAll(() => cleanup.cleanupAll());

describe.each(DATAPATHS)('%s data path', (datapath) => it('a 2-vCPU guest gets 2 queue pairs on the pod\'s tap, its lease by DHCP, and reaches the node', async () => {
  const guest = await buildGuest();
  const pod = await makePod('ptp', { cleanup });
  const before = await snapshot(pod.pod);
  const stateDir = stateDirFor(cleanup);
  const qemu = [
    ...guestQemuArgs({ guest, net: 'dhcp', ping: [pod.nodeAddr], cpus: 2, guestTimeout: 90 }),
    '-netdev', 'tap,id=n0,fds={fds},vhost=off',
    '-device', 'virtio-net-pci,netdev=n0,mac={mac},mq=on,vectors={vectors},romfile=',
  ];

  // Look at the tap from the pod's side while the VM holds it.
  let tapInfo: Promise<Record<string, unknown> | undefined> | undefined;
  const vm = await runGuest(pod.argv([PODTAP, 'run', '--state-dir', stateDir, '--queues', '2', ...datapathArgs(datapath), '--', ...qemu]), {
    timeoutMs: 150_000,
    onLine: (line) => {
      if (tapInfo || !line.startsWith('{"event":"ready"')) return;
      tapInfo = run('ip', ['-n', pod.pod, '-d', '-j', 'link', 'show', 'dev', 'tap0'], { reject: false }).then((r) =>
        r.exitCode === 0 ? (JSON.parse(r.stdout) as Record<string, unknown>[])[0] : undefined,
      );
    },
  });
  expect(vm.reason, vm.stderr).toBe('done');

  const ready = readyIn(vm.serial);
  expect(ready, vm.stderr).toBeDefined();
  expectReady(ready!, pod, datapath, { queues: 2 });

  const tap = await tapInfo;
  expect(tap?.linkinfo).toMatchObject({ info_kind: 'tun', info_data: { type: 'tap', multi_queue: true, vnet_hdr: true } });
  expect(tap?.master).toBe(datapath === 'bridge' ? 'br0' : undefined);

  const r = vm.report;
  expect(r.errors).toEqual([]);
  expect(r.last?.mac).toBe(pod.expect.mac);
  expect(r.last?.rxQueues).toBe(2);
  expect(r.last?.txQueues).toBe(2);
  expect(r.lease?.ip).toBe(pod.podIP);
  expect(r.last?.addresses.map((a) => a.local)).toEqual([pod.podIP]);
  expect(r.pings).toEqual([expect.objectContaining({ target: pod.nodeAddr, ok: true })]);

  // The guest powered off: QEMU exited 0, podtap with it, after restoring.
  expect(vm.exitCode, vm.stderr).toBe(0);
  expect(vm.stderr).toMatch(/namespace restored/);
  expect(diffSnapshots(before, await snapshot(pod.pod))).toEqual([]);
}));
