// The sidecar pattern: `podtap up --fd-socket PATH` runs with NET_ADMIN in
// one container; the VMM runs in another without it and gets the TAP through
// `podtap exec --fd-socket PATH -- qemu ...`, which fetches the fds over the
// socket and execs QEMU with them at 3, 4, ... Here both run in the pod's
// namespace, the VMM side under setpriv with CAP_NET_ADMIN dropped from its
// bounding and inheritable sets (so no exec can get it back). The guest gets
// the pod's address by DHCP and pings the node; a second VMM after the first
// exits fetches the fds again. SIGTERM removes the socket and restores the
// pod.

import { chmodSync, chownSync, existsSync, mkdtempSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { Cleanup } from '../helpers/netns.ts';
import { makePod, type Pod } from '../helpers/pods.ts';
import { snapshot, diffSnapshots } from '../helpers/snapshot.ts';
import { buildGuest, guestQemuArgs, runGuest, type Guest } from '../helpers/guest.ts';
import { PODTAP, startPodtap } from '../helpers/podtap.ts';

const cleanup = new Cleanup();
afterAll(() => cleanup.cleanupAll());

const CAP_NET_ADMIN = 12n;

// Root, but with CAP_NET_ADMIN gone for good (bounding and inheritable sets).
const ROOT_WITHOUT_NET_ADMIN = ['setpriv', '--bounding-set', '-net_admin', '--inh-caps', '-net_admin', '--'];
// An ordinary user: no capabilities at all.
const asUser = (uid: number) => ['setpriv', '--reuid', String(uid), '--regid', String(uid), '--clear-groups', '--'];

/** Boots the guest through `podtap exec` from a process without NET_ADMIN; returns what it saw. */
async function bootViaExec(pod: Pod, guest: Guest, socket: string, drop: string[] = ROOT_WITHOUT_NET_ADMIN) {
  const qemu = [
    ...guestQemuArgs({ guest, net: 'dhcp', ping: [pod.nodeAddr], guestTimeout: 90 }),
    '-netdev', 'tap,id=n0,fd={fd}',
    '-device', 'virtio-net-pci,netdev=n0,mac={mac},romfile=',
  ];
  const argv = pod.argv([
    ...drop,
    // Shows the capabilities this side runs with, then becomes podtap exec
    // (which in turn becomes QEMU: one process throughout).
    'sh', '-c', 'echo "VMM-SIDE uid=$(id -u) $(grep ^CapEff: /proc/self/status)" >&2; exec "$@"', 'vmm-side',
    PODTAP, 'exec', '--fd-socket', socket, '--', ...qemu,
  ]);
  const vm = await runGuest(argv, { timeoutMs: 120_000 });
  const capLine = /VMM-SIDE uid=(\d+) CapEff:\s*([0-9a-f]+)/.exec(vm.stderr);
  expect(capLine, vm.stderr).not.toBeNull();
  const capEff = BigInt(`0x${capLine![2]}`);
  return { vm, uid: Number(capLine![1]), hasNetAdmin: ((capEff >> CAP_NET_ADMIN) & 1n) === 1n };
}

it('a VMM without NET_ADMIN gets the TAP over the fd socket, twice, and teardown removes the socket', async () => {
  const guest = await buildGuest();
  const pod = await makePod('ptp', { cleanup });
  const dir = mkdtempSync('/tmp/podtap-sidecar-');
  cleanup.path(dir);
  const socket = join(dir, 'fds.sock');
  const before = await snapshot(pod.pod);

  const podtap = startPodtap(pod, ['up', '--fd-socket', socket], cleanup);
  const ready = await podtap.ready;
  expect(ready).toMatchObject({ mac: pod.expect.mac, ip: `${pod.podIP}/${pod.prefix}`, tap: 'tap0', fdSocket: socket });

  // Only its owner (root, podtap's user) may connect by default.
  const st = statSync(socket);
  expect(st.isSocket()).toBe(true);
  expect((st.mode & 0o777).toString(8)).toBe('600');
  expect(st.uid).toBe(0);

  for (const attempt of [1, 2]) {
    const { vm, hasNetAdmin } = await bootViaExec(pod, guest, socket);
    expect(hasNetAdmin, `attempt ${attempt}: the VMM side must run without CAP_NET_ADMIN`).toBe(false);
    expect(vm.reason, `attempt ${attempt}\n${vm.stderr}`).toBe('done');
    expect(vm.stderr).toMatch(/fetched the TAP fds/);
    const r = vm.report;
    expect(r.errors, `attempt ${attempt}`).toEqual([]);
    expect(r.last?.mac).toBe(pod.expect.mac);
    expect(r.lease?.ip, `attempt ${attempt}`).toBe(pod.podIP);
    expect(r.last?.addresses.map((a) => a.local)).toEqual([pod.podIP]);
    expect(r.pings, `attempt ${attempt}`).toEqual([expect.objectContaining({ target: pod.nodeAddr, ok: true })]);
    expect(vm.exitCode, vm.stderr).toBe(0); // QEMU's own status: exec left no wrapper
    // podtap keeps serving for the next VMM.
    expect(podtap.proc.exitCode ?? podtap.proc.signalCode, podtap.stderr()).toBeNull();
  }

  process.kill(podtap.pid, 'SIGTERM');
  const exit = await podtap.proc;
  expect(exit.exitCode, podtap.stderr()).toBe(0);
  expect(podtap.stderr()).toMatch(/namespace restored/);
  expect(existsSync(socket)).toBe(false);
  expect(diffSnapshots(before, await snapshot(pod.pod))).toEqual([]);
});

it('--fd-socket-mode 0660 in a setgid directory (as with an fsGroup volume): the VMM runs as an ordinary user of that group', async () => {
  const guest = await buildGuest();
  const pod = await makePod('ptp', { cleanup });
  // The shared volume: group 107, setgid, so the socket podtap creates there
  // belongs to group 107 too, like an emptyDir under fsGroup: 107.
  const dir = mkdtempSync('/tmp/podtap-sidecar-');
  cleanup.path(dir);
  chownSync(dir, 0, 107);
  chmodSync(dir, 0o2775);
  const socket = join(dir, 'fds.sock');
  const before = await snapshot(pod.pod);

  const podtap = startPodtap(pod, ['up', '--fd-socket', socket, '--fd-socket-mode', '0660'], cleanup);
  await podtap.ready;
  const st = statSync(socket);
  expect((st.mode & 0o777).toString(8)).toBe('660');
  expect(st.gid).toBe(107);

  // uid 107 (QEMU's usual user) is in the group: it gets the TAP.
  const { vm, uid, hasNetAdmin } = await bootViaExec(pod, guest, socket, asUser(107));
  expect(uid).toBe(107);
  expect(hasNetAdmin).toBe(false);
  expect(vm.reason, vm.stderr).toBe('done');
  expect(vm.report.lease?.ip).toBe(pod.podIP);
  expect(vm.report.pings).toEqual([expect.objectContaining({ target: pod.nodeAddr, ok: true })]);
  expect(vm.exitCode, vm.stderr).toBe(0);

  // Another user is refused, and told why.
  const stranger = await pod.run([...asUser(108), PODTAP, 'exec', '--fd-socket', socket, '--', 'true'], { reject: false });
  expect(stranger.exitCode).toBe(9); // handoff
  expect(stranger.stderr).toMatch(/no permission to connect to .*fds\.sock \(socket owned by uid 0 gid 107, mode 0660\)/);

  process.kill(podtap.pid, 'SIGTERM');
  expect((await podtap.proc).exitCode, podtap.stderr()).toBe(0);
  expect(existsSync(socket)).toBe(false);
  expect(diffSnapshots(before, await snapshot(pod.pod))).toEqual([]);
});
