// The sidecar pattern: `podtap up --fd-socket PATH` runs with NET_ADMIN in
// one container; the VMM runs in another without it and gets the TAP through
// `podtap exec --fd-socket PATH -- qemu ...`, which fetches the fds over the
// socket and execs QEMU with them at 3, 4, ... Here both run in the pod's
// namespace, the VMM side under setpriv with CAP_NET_ADMIN dropped from its
// bounding and inheritable sets (so no exec can get it back). The guest gets
// the pod's address by DHCP and pings the node; a second VMM after the first
// exits fetches the fds again. SIGTERM removes the socket and restores the
// pod. With two NICs of two queues each (a Multus pod, pods.ts "multi"),
// the VMM gets NIC 0's queue fds at 3 and 4 and NIC 1's at 5 and 6, each
// NIC's placeholders render its own values, and a guest with both NICs gets
// a lease on each.

import { chmodSync, chownSync, existsSync, mkdtempSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { Cleanup } from '../helpers/netns.ts';
import { makePod, type Pod } from '../helpers/pods.ts';
import { snapshot, diffSnapshots } from '../helpers/snapshot.ts';
import { buildGuest, guestQemuArgs, runGuest, type Guest } from '../helpers/guest.ts';
import { expectReady, PODTAP, startPodtap } from '../helpers/podtap.ts';

const cleanup = new Cleanup();
afterAll(() => cleanup.cleanupAll());

const CAP_NET_ADMIN = 12n;

// Root, but with CAP_NET_ADMIN gone for good (bounding and inheritable sets).
const ROOT_WITHOUT_NET_ADMIN = ['setpriv', '--bounding-set', '-net_admin', '--inh-caps', '-net_admin', '--'];
// An ordinary user: no capabilities at all.
const asUser = (uid: number) => ['setpriv', '--reuid', String(uid), '--regid', String(uid), '--clear-groups', '--'];

/** Boots the guest through `podtap exec` from a process without NET_ADMIN; returns what it saw. */
async function bootViaExec(pod: Pod, guest: Guest, socket: string, drop: string[] = ROOT_WITHOUT_NET_ADMIN, qemu: string[] = [
  ...guestQemuArgs({ guest, net: 'dhcp', ping: [pod.nodeAddr], guestTimeout: 90 }),
  '-netdev', 'tap,id=n0,fd={fd}',
  '-device', 'virtio-net-pci,netdev=n0,mac={mac},romfile=',
]) {
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
  expectReady(ready, pod, 'redirect');
  expect(ready.fdSocket).toBe(socket);

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

it('two NICs over the fd socket: NIC 0\'s queue fds, then NIC 1\'s, placeholders rendered per NIC, and a two-NIC guest gets both leases', async () => {
  const guest = await buildGuest();
  const pod = await makePod('multi', { cleanup });
  const [eth0, net1] = pod.nics;
  const dir = mkdtempSync('/tmp/podtap-sidecar-');
  cleanup.path(dir);
  const socket = join(dir, 'fds.sock');
  const before = await snapshot(pod.pod);

  const podtap = startPodtap(pod, ['up', '--fd-socket', socket, '--queues', '2', '--interface', 'eth0', '--interface', 'net1'], cleanup);
  const ready = await podtap.ready;
  expect(ready.nics.map((n) => [n.interface, n.mac, n.tap, n.queues])).toEqual([['eth0', eth0!.mac, 'tap0', 2], ['net1', net1!.mac, 'tap1', 2]]);

  // A VMM that only shows what it was given: which TAP each fd from 3 on is
  // (the kernel names it in fdinfo), and its arguments as podtap rendered them.
  const show = [
    'for n in 3 4 5 6 7 8 9; do',
    '  if [ -e /proc/$$/fd/$n ]; then echo "fd $n $(sed -n "s/^iff:[[:space:]]*//p" /proc/$$/fdinfo/$n)"; else echo "fd $n none"; fi',
    'done',
    'echo "argv $*"',
  ].join('\n');
  const shown = await pod.run([...ROOT_WITHOUT_NET_ADMIN, PODTAP, 'exec', '--fd-socket', socket, '--',
    'sh', '-c', show, 'vmm', '{fd}', '{fds}', '{fd:1}', '{fds:net1}', '{fds_csv:1}', '{vectors:1}', '{ch_queues:eth0}', '{queues:1}', '{mac}', '{mac:net1}', '{interface:1}', '{tap:net1}', '{mtu:1}']);
  expect(shown.stdout.split('\n')).toEqual([
    'fd 3 tap0', 'fd 4 tap0', 'fd 5 tap1', 'fd 6 tap1', 'fd 7 none', 'fd 8 none', 'fd 9 none',
    `argv 3 3:4 5 5:6 5,6 6 4 2 ${eth0!.mac} ${net1!.mac} net1 tap1 1500`,
  ]);

  // A real guest with one NIC per pod interface, each on its own queue fds.
  const qemu = [
    ...guestQemuArgs({ guest, net: 'dhcp', more: [{ nic: 'eth1', net: 'dhcp' }], ping: [eth0!.nodeAddr!, net1!.nodeAddr!], guestTimeout: 90 }),
    '-netdev', 'tap,id=n0,fds={fds:0}',
    '-device', 'virtio-net-pci,netdev=n0,mac={mac:0},mq=on,vectors={vectors:0},romfile=',
    '-netdev', 'tap,id=n1,fds={fds:net1}',
    '-device', 'virtio-net-pci,netdev=n1,mac={mac:net1},mq=on,vectors={vectors:net1},romfile=',
  ];
  const { vm } = await bootViaExec(pod, guest, socket, ROOT_WITHOUT_NET_ADMIN, qemu);
  expect(vm.reason, vm.stderr).toBe('done');
  const r = vm.report;
  expect(r.errors, vm.serial).toEqual([]);
  expect(r.last?.links.map((l) => [l.name, l.mac, l.addresses.map((a) => `${a.local}/${a.prefixlen}`)])).toEqual([
    ['eth0', eth0!.mac, [`${eth0!.ip}/${eth0!.handedPrefix}`]],
    ['eth1', net1!.mac, [`${net1!.ip}/${net1!.handedPrefix}`]],
  ]);
  expect(r.pings).toEqual([
    expect.objectContaining({ target: eth0!.nodeAddr, ok: true }),
    expect.objectContaining({ target: net1!.nodeAddr, ok: true }),
  ]);
  expect(vm.exitCode, vm.stderr).toBe(0);

  process.kill(podtap.pid, 'SIGTERM');
  expect((await podtap.proc).exitCode, podtap.stderr()).toBe(0);
  expect(existsSync(socket)).toBe(false);
  expect(diffSnapshots(before, await snapshot(pod.pod))).toEqual([]);
});
