// `podtap up --qmp PATH`: QEMU is already running in the pod (started the
// way a VM launcher would, with a QMP socket and no NIC) and its guest is
// waiting for eth0. podtap sets up the network and hot-plugs a virtio-net NIC
// on its tap fds over QMP; the guest gets the pod's address by DHCP and pings
// the node. On SIGTERM podtap unplugs the NIC (device_del, the guest's
// DEVICE_DELETED, netdev_del) and restores the namespace while QEMU keeps
// running. Both on i440fx and, with --qmp-bus naming a pcie-root-port, on
// q35. And when there is no QEMU at the path, podtap gives up after its
// bounded retry with a message that says so, leaving the pod as it was.

import { existsSync, mkdtempSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, expect, it } from 'vitest';
import { QmpClient } from '../../src/handoff/qmp.ts';
import { Cleanup, startInPod } from '../helpers/netns.ts';
import { makePod } from '../helpers/pods.ts';
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
// q35: pcie.0 does not; QEMU gets a pcie-root-port and podtap --qmp-bus.
const MACHINES = [
  { machine: 'pc', qemuExtra: [] as string[], podtapExtra: [] as string[] },
  { machine: 'q35', qemuExtra: ['-device', 'pcie-root-port,id=rp1,bus=pcie.0,chassis=1'], podtapExtra: ['--qmp-bus', 'rp1'] },
];

it.each(MACHINES)('-machine $machine: hot-plugs the NIC into a running QEMU, and unplugs it on SIGTERM while QEMU keeps running', async ({ machine, qemuExtra, podtapExtra }) => {
  const guest = await buildGuest();
  const pod = await makePod('ptp', { cleanup });
  const dir = mkdtempSync('/tmp/podtap-qmp-');
  cleanup.path(dir);
  const qmpSocket = join(dir, 'qmp.sock');

  // No -netdev/-device: the guest boots without a NIC and waits up to 60 s
  // for eth0, then DHCPs and pings the node once a second until powered off.
  const qemuArgv = guestQemuArgs({ guest, net: 'dhcp', ping: [pod.nodeAddr], mode: 'ping-forever', waitNic: 60, qmpSocket, guestTimeout: 150 });
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
  expect(ready).toMatchObject({ mac: pod.expect.mac, ip: `${pod.podIP}/${pod.prefix}`, tap: 'tap0', qmp: { device: 'podtap0' } });

  // The NIC appears in the running guest, which gets its lease and pings.
  await waitFor('a successful ping from the guest', () => parseGuestOutput(serial).ticks.some((t) => t.ok), 60_000, () => `${tail()}\npodtap:\n${podtap.stderr()}`);
  const report = parseGuestOutput(serial);
  expect(report.errors).toEqual([]);
  expect(report.nicUptime).toBeGreaterThan(report.bootUptime!);
  expect(report.last?.mac).toBe(pod.expect.mac);
  expect(report.lease?.ip).toBe(pod.podIP);
  expect(report.last?.addresses.map((a) => a.local)).toEqual([pod.podIP]);
  expect(report.ticks.find((t) => t.ok)?.target).toBe(pod.nodeAddr);

  // SIGTERM: the NIC leaves QEMU before the network goes away.
  process.kill(podtap.pid, 'SIGTERM');
  const exit = await podtap.proc;
  expect(exit.exitCode, podtap.stderr()).toBe(0);
  expect(podtap.stderr()).toMatch(/NIC unplugged from QEMU/);
  expect(podtap.stderr()).toMatch(/namespace restored/);
  expect(podtap.stderr()).not.toMatch(/unplugging the NIC from QEMU failed/);

  // QEMU is still running, its VM too, and neither the device nor the
  // netdev is left in it.
  expect(alive(qemuPid)).toBe(true);
  const qmp = await QmpClient.connect(qmpSocket, { timeoutMs: 5000 });
  try {
    expect(await qmp.execute('query-status')).toMatchObject({ status: 'running', running: true });
    const peripherals = (await qmp.execute('qom-list', { path: '/machine/peripheral' })) as { name: string }[];
    expect(peripherals.map((p) => p.name)).not.toContain('podtap0');
    const network = (await qmp.execute('human-monitor-command', { 'command-line': 'info network' })) as string;
    expect(network).not.toMatch(/podtap0/);

    expect(diffSnapshots(before, await snapshot(pod.pod))).toEqual([]);

    // Now the VM's own owner stops it.
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
