// `podtap up --qmp PATH`: QEMU is already running in the pod (started the
// way a VM launcher would, with a QMP socket and no NIC) and its guest is
// waiting for its NICs. podtap sets up the network and hot-plugs one
// virtio-net NIC per pod interface on its tap fds over QMP (ids podtap0,
// podtap1, ...); the guest gets each NIC's address by DHCP and pings the
// node. On SIGTERM podtap unplugs every NIC (device_del, the guest's
// DEVICE_DELETED, netdev_del) before it restores the namespace, while QEMU
// keeps running. One NIC on i440fx, whose root bus takes hot-plug; two NICs
// (a Multus pod's eth0 and net1) on q35, each on its own pcie-root-port
// named by a --qmp-bus. On the same QEMU afterwards, a podtap whose second
// NIC QEMU refuses (a bus that does not exist) takes the first back out
// before it restores the pod and exits. Without QEMU at the path, podtap
// gives up after its bounded retry with a message that says so; with a
// --qmp-bus count that does not match the NICs it refuses before changing
// anything.

import { existsSync, mkdtempSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, expect, it } from 'vitest';
import { QmpClient } from '../../src/handoff/qmp.ts';
import { Cleanup, pingFrom, startInPod } from '../helpers/netns.ts';
import { makePod, type PodNic, type Shape } from '../helpers/pods.ts';
import { snapshot, diffSnapshots } from '../helpers/snapshot.ts';
import { buildGuest, guestQemuArgs, parseGuestOutput } from '../helpers/guest.ts';
import { podtapIn, startPodtap, stateDirFor } from '../helpers/podtap.ts';

const cleanup = new Cleanup();
afterAll(() => cleanup.cleanupAll());

async function waitFor(what: string, cond: () => boolean, timeoutMs: number, detail: () => string = () => ''): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}\n${detail()}`);
    await sleep(100);
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

// i440fx ('pc'): the root bus pci.0 takes hot-plug, no --qmp-bus needed.
// q35: pcie.0 does not; QEMU gets a pcie-root-port per NIC and podtap one
// --qmp-bus per NIC, in NIC order.
const MACHINES: { title: string; machine: string; shape: Shape; interfaces: string[]; qemuExtra: string[]; podtapExtra: string[]; badSecondBus?: string[] }[] = [
  { title: 'pc, one NIC', machine: 'pc', shape: 'ptp', interfaces: ['eth0'], qemuExtra: [], podtapExtra: [] },
  {
    title: 'q35, two NICs (then one QEMU refuses)',
    machine: 'q35',
    shape: 'multi',
    interfaces: ['eth0', 'net1'],
    qemuExtra: ['-device', 'pcie-root-port,id=rp1,bus=pcie.0,chassis=1', '-device', 'pcie-root-port,id=rp2,bus=pcie.0,chassis=2'],
    podtapExtra: ['--interface', 'eth0', '--interface', 'net1', '--qmp-bus', 'rp1', '--qmp-bus', 'rp2'],
    badSecondBus: ['--interface', 'eth0', '--interface', 'net1', '--qmp-bus', 'rp1', '--qmp-bus', 'nosuchbus'],
  },
];

/** What QEMU holds of podtap's: devices and netdevs named podtap*, and whether the VM runs. */
async function inQemu(qmpSocket: string): Promise<{ running: unknown; devices: string[]; netdevs: string[] }> {
  const qmp = await QmpClient.connect(qmpSocket, { timeoutMs: 5000 });
  try {
    const status = (await qmp.execute('query-status')) as { running: unknown };
    const peripherals = (await qmp.execute('qom-list', { path: '/machine/peripheral' })) as { name: string }[];
    const network = (await qmp.execute('human-monitor-command', { 'command-line': 'info network' })) as string;
    return {
      running: status.running,
      devices: peripherals.map((p) => p.name).filter((p) => p.startsWith('podtap')),
      netdevs: network.match(/podtap\S*/g) ?? [],
    };
  } finally {
    qmp.close();
  }
}

it.each(MACHINES.map((m) => [m.title, m] as const))('-machine %s: hot-plugs one NIC per pod interface into a running QEMU, and unplugs them all on SIGTERM while QEMU keeps running', async (_title, { machine, shape, interfaces, qemuExtra, podtapExtra, badSecondBus }) => {
  const guest = await buildGuest();
  const pod = await makePod(shape, { cleanup });
  const nics = interfaces.map((i) => pod.nics.find((n) => n.ifname === i)!);
  const ids = nics.map((_, i) => `podtap${i}`);
  const dir = mkdtempSync('/tmp/podtap-qmp-');
  cleanup.path(dir);
  const qmpSocket = join(dir, 'qmp.sock');

  // No -netdev/-device: the guest boots without a NIC and waits up to 60 s
  // for eth0 (and eth1), then DHCPs on each and pings the node through eth0
  // once a second until powered off.
  const more = nics.slice(1).map((_, i) => ({ nic: `eth${i + 1}`, net: 'dhcp' as const }));
  const qemuArgv = guestQemuArgs({ guest, net: 'dhcp', more, ping: [pod.nodeAddr], mode: 'ping-forever', waitNic: 60, qmpSocket, guestTimeout: 150 });
  qemuArgv[qemuArgv.indexOf('-machine') + 1] = machine;
  qemuArgv.push(...qemuExtra);
  const qemu = startInPod(pod.pod, pod.hostname, qemuArgv, cleanup);
  const qemuPid = qemu.pid!; // ip netns exec, unshare and sh all exec: this is QEMU
  let serial = '';
  qemu.stdout?.setEncoding('utf8');
  qemu.stdout?.on('data', (d: string) => (serial += d));
  let qemuErr = '';
  qemu.stderr?.on('data', (d: Buffer) => (qemuErr += d.toString()));
  const tail = () => `console:\n${serial.split('\n').slice(-20).join('\n')}\nqemu stderr:\n${qemuErr}`;

  await waitFor('QEMU\'s QMP socket', () => existsSync(qmpSocket), 20_000, tail);
  await waitFor('the guest to boot', () => parseGuestOutput(serial).kernel !== undefined, 60_000, tail);
  // QEMU is part of the pod before podtap starts, and must be after it ends.
  const before = await snapshot(pod.pod);
  expect(before.processes).toContain('qemu-system-x86');
  expect(parseGuestOutput(serial).nicUptime).toBeUndefined();

  const podtap = startPodtap(pod, ['up', '--qmp', qmpSocket, ...podtapExtra], cleanup);
  const ready = await podtap.ready;
  expect(ready).toMatchObject({ mac: nics[0]!.mac, ip: `${nics[0]!.ip}/${nics[0]!.handedPrefix}`, tap: 'tap0', qmp: { devices: ids } });
  expect(ready.nics.map((n) => [n.interface, n.mac])).toEqual(nics.map((n) => [n.ifname, n.mac]));

  // The NICs appear in the running guest, which gets a lease on each and pings.
  await waitFor('a successful ping from the guest', () => parseGuestOutput(serial).ticks.some((t) => t.ok), 60_000, () => `${tail()}\npodtap:\n${podtap.stderr()}`);
  const report = parseGuestOutput(serial);
  expect(report.errors).toEqual([]);
  expect(report.nicUptime).toBeGreaterThan(report.bootUptime!);
  expect(report.ticks.find((t) => t.ok)?.target).toBe(pod.nodeAddr);
  // Each NIC with its pod interface's MAC and address. Which one the guest
  // calls eth0 is the guest's business (hot-plug order), so match by MAC.
  const seen = (n: PodNic) => report.last?.links.find((l) => l.mac === n.mac);
  for (const n of nics) expect(seen(n)?.addresses.map((a) => `${a.local}/${a.prefixlen}`), `${n.ifname} ${tail()}`).toEqual([`${n.ip}/${n.handedPrefix}`]);
  expect(report.last?.links).toHaveLength(nics.length);
  // Traffic from the node into the guest, through each NIC.
  for (const n of nics) expect(await pingFrom(pod.node, n.ip!), `node → ${n.ifname} ${n.ip}`).toBe(true);

  // SIGTERM: every NIC leaves QEMU before the network goes away.
  process.kill(podtap.pid, 'SIGTERM');
  const exit = await podtap.proc;
  const log = podtap.stderr();
  expect(exit.exitCode, log).toBe(0);
  expect(log).not.toMatch(/unplugging NIC \S+ from QEMU failed/);
  const restoredAt = log.search(/namespace restored/);
  expect(restoredAt, log).toBeGreaterThan(0);
  for (const id of ids) {
    const at = log.search(new RegExp(`NIC unplugged from QEMU .*device=${id}\\b`));
    expect(at, `${id}\n${log}`).toBeGreaterThan(0);
    expect(at, `${id} unplugged before the restore\n${log}`).toBeLessThan(restoredAt);
  }

  // QEMU is still running, its VM too, and neither the devices nor the
  // netdevs are left in it.
  expect(alive(qemuPid)).toBe(true);
  expect(await inQemu(qmpSocket)).toEqual({ running: true, devices: [], netdevs: [] });
  expect(diffSnapshots(before, await snapshot(pod.pod))).toEqual([]);

  if (badSecondBus) {
    // QEMU takes NIC 0 and refuses NIC 1: podtap must not leave NIC 0 in
    // the VM on a network it is about to take away.
    const r = await podtapIn(pod, ['up', '--state-dir', stateDirFor(cleanup), '--qmp', qmpSocket, ...badSecondBus]);
    expect(r.exitCode, r.stderr).toBe(9); // handoff
    expect(r.stdout).not.toMatch(/"event":"ready"/);
    expect(r.stderr).toMatch(/hot-plugging NIC 1 \(net1\) into QEMU failed: .*nosuchbus/);
    expect(r.stderr).toMatch(/NIC unplugged from QEMU .*device=podtap0\b/);
    expect(r.stderr.search(/NIC unplugged from QEMU .*device=podtap0\b/)).toBeLessThan(r.stderr.search(/namespace restored/));
    expect(await inQemu(qmpSocket)).toEqual({ running: true, devices: [], netdevs: [] });
    expect(diffSnapshots(before, await snapshot(pod.pod))).toEqual([]);
  }

  // Now the VM's own owner stops it.
  const qmp = await QmpClient.connect(qmpSocket, { timeoutMs: 5000 });
  try {
    await qmp.execute('quit').catch(() => {}); // QEMU may hang up before it answers
  } finally {
    qmp.close();
  }
  const qemuExit = await qemu;
  expect(qemuExit.exitCode, qemuErr).toBe(0);
});

it('gives up on a QMP socket that never appears, says why, and leaves the pod as it was', async () => {
  const pod = await makePod('ptp', { cleanup });
  const before = await snapshot(pod.pod);
  const stateDir = stateDirFor(cleanup);
  const started = Date.now();
  const r = await podtapIn(pod, ['up', '--state-dir', stateDir, '--qmp', '/nonexistent.sock']);
  const took = Date.now() - started;

  expect(r.exitCode).toBe(9); // handoff
  expect(r.stdout).not.toMatch(/"event":"ready"/);
  expect(r.stderr).toMatch(/no socket at \/nonexistent\.sock/);
  expect(r.stderr).toMatch(/retried for 10000 ms/);
  expect(r.stderr).toMatch(/-qmp unix:/); // how to start QEMU so podtap can reach it
  expect(r.stderr).toMatch(/namespace restored/);
  // Bounded: it retried (QEMU may start after podtap), then stopped.
  expect(took).toBeGreaterThanOrEqual(9_500);
  expect(took).toBeLessThan(25_000);
  expect(existsSync(join(stateDir, 'ready'))).toBe(false);
  expect(diffSnapshots(before, await snapshot(pod.pod))).toEqual([]);
});

it('refuses a --qmp-bus count that does not match the NICs, before changing anything', async () => {
  const pod = await makePod('multi', { cleanup });
  const before = await snapshot(pod.pod);
  const stateDir = stateDirFor(cleanup);
  const r = await podtapIn(pod, ['up', '--state-dir', stateDir, '--interface', 'eth0', '--interface', 'net1', '--qmp', '/nonexistent.sock', '--qmp-bus', 'rp1']);
  expect(r.exitCode, r.stderr).toBe(2); // usage
  expect(r.stderr).toMatch(/1 --qmp-bus for 2 NICs/);
  expect(r.stdout).not.toMatch(/"event":"ready"/);
  expect(diffSnapshots(before, await snapshot(pod.pod))).toEqual([]);
});
