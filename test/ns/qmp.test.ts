// The QMP client against a real, paused QEMU (TCG, no guest) running in a
// namespace made for the test, with a tap opened there by openTap; and
// `podtap up --qmp` hot-plugging two NICs of a pod into that QEMU.

import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QmpClient, QmpConnectionError, QmpError } from '../../src/handoff/qmp.ts';
import { closeAllQuietly, openTap } from '../../src/sys/native.ts';
import { createNetns, deleteNetns, inNetns, linkIn } from '../helpers/handoff-netns.ts';
import { Cleanup } from '../helpers/netns.ts';
import { makePod } from '../helpers/pods.ts';
import { snapshot, diffSnapshots } from '../helpers/snapshot.ts';
import { podtapIn, startPodtap } from '../helpers/podtap.ts';

let ns: string;
let dir: string;
let podtapSock: string;
let qemu: ChildProcess | undefined;
let client: QmpClient | undefined;
const opened: number[] = [];

function tap(name: string, queues: number): number[] {
  const fds = inNetns(ns, () => openTap(name, { queues, vnetHdr: true, multiQueue: queues > 1 }));
  opened.push(...fds);
  return fds;
}

function dropOurFds(fds: number[]): void {
  closeAllQuietly(fds);
  for (const fd of fds) opened.splice(opened.indexOf(fd), 1);
}

async function hmp(cmd: string): Promise<string> {
  return (await client!.execute('human-monitor-command', { 'command-line': cmd })) as string;
}

// query-pci can't be used here: it lists devices behind a root port only
// once firmware has numbered the bridge's bus, and this QEMU never ran any.
// The QOM tree shows hot-plugged devices at once.
async function peripheral(id: string): Promise<boolean> {
  const list = (await client!.execute('qom-list', { path: '/machine/peripheral' })) as { name: string }[];
  return list.some((p) => p.name === id);
}

async function qomGet(id: string, property: string): Promise<unknown> {
  return client!.execute('qom-get', { path: `/machine/peripheral/${id}`, property });
}

beforeAll(async () => {
  ns = createNetns('ph-qmp');
  dir = mkdtempSync(path.join(tmpdir(), 'ph-qmp-'));
  const sock = path.join(dir, 'qmp.sock');
  // QEMU serves one client per QMP socket: podtap gets a second one.
  podtapSock = path.join(dir, 'podtap-qmp.sock');
  // `ip netns exec` execs QEMU in place, so this pid is QEMU's.
  qemu = spawn(
    'ip',
    [
      'netns', 'exec', ns,
      'qemu-system-x86_64', '-accel', 'tcg', '-machine', 'q35', '-m', '128',
      '-nodefaults', '-nographic', '-display', 'none', '-S',
      '-qmp', `unix:${sock},server=on,wait=off`,
      '-qmp', `unix:${podtapSock},server=on,wait=off`,
      '-device', 'pcie-root-port,id=rp1,bus=pcie.0,chassis=1',
      '-device', 'pcie-root-port,id=rp2,bus=pcie.0,chassis=2',
      '-device', 'pcie-root-port,id=rp3,bus=pcie.0,chassis=3',
      '-device', 'pcie-root-port,id=rp4,bus=pcie.0,chassis=4',
      '-device', 'pcie-root-port,id=rp5,bus=pcie.0,chassis=5',
    ],
    { stdio: ['ignore', 'ignore', 'inherit'] },
  );
  // QEMU creates the socket a little after starting: connect() retries.
  client = await QmpClient.connect(sock, { timeoutMs: 20_000 });
});

afterAll(async () => {
  try {
    client?.close();
    if (qemu?.pid !== undefined && qemu.exitCode === null && qemu.signalCode === null) {
      const gone = new Promise((resolve) => qemu!.once('exit', resolve));
      process.kill(qemu.pid, 'SIGKILL');
      await gone;
    }
  } finally {
    closeAllQuietly(opened);
    deleteNetns(ns);
    rmSync(dir, { recursive: true, force: true });
  }
});

describe('QMP hot-plug', () => {
  it('greets with QEMU version', () => {
    const g = client!.greeting as { QMP: { version: { qemu: { major: number } } } };
    expect(g.QMP.version.qemu.major).toBeGreaterThanOrEqual(6);
  });

  it('hot-plugs a 2-queue tap as a multiqueue virtio-net-pci NIC', async () => {
    const fds = tap('phq0', 2);
    const nic = await client!.hotplugNic({ fds, mac: '52:54:00:12:34:56', mtu: 1400, id: 'nic0', bus: 'rp1', queues: 2 });
    expect(nic).toEqual({ id: 'nic0', netdevId: 'nic0', fdnames: ['podtap-nic0-q0', 'podtap-nic0-q1'] });

    expect(await peripheral('nic0')).toBe(true);
    expect(await qomGet('nic0', 'type')).toBe('virtio-net-pci');
    expect(await qomGet('nic0', 'parent_bus')).toBe('/machine/peripheral/rp1/rp1');
    expect(await qomGet('nic0', 'hotplugged')).toBe(true);
    expect(await qomGet('nic0', 'netdev')).toBe('nic0');
    expect(await qomGet('nic0', 'mac')).toBe('52:54:00:12:34:56');
    expect(await qomGet('nic0', 'mq')).toBe(true);
    expect(await qomGet('nic0', 'vectors')).toBe(6);
    expect(await qomGet('nic0', 'host_mtu')).toBe(1400);
    const info = await hmp('info network');
    expect(info).toContain('nic0: index=0,type=nic,model=virtio-net-pci,macaddr=52:54:00:12:34:56');
    expect(info).toMatch(/nic0: index=1,type=tap,fd=\d+/);

    // QEMU holds its own copies: the tap stays when ours are closed.
    dropOurFds(fds);
    // Until the guest turns multiqueue on, QEMU keeps queue 2 detached.
    const data = linkIn(ns, 'phq0')?.linkinfo?.info_data as { numqueues: number; numdisabled: number; vnet_hdr: boolean };
    expect(data.vnet_hdr).toBe(true);
    expect(data.numqueues + data.numdisabled).toBe(2);
  });

  it('hot-plugs a single-queue tap with fd= and no mq', async () => {
    const fds = tap('phq1', 1);
    await client!.hotplugNic({ fds, mac: '52:54:00:00:00:01', id: 'nic1', bus: 'rp2' });
    expect(await qomGet('nic1', 'mq')).toBe(false);
    expect(await hmp('info network')).toMatch(/nic1: index=0,type=tap,fd=\d+/);
    dropOurFds(fds);
  });

  it('turns a netdev id clash into a QmpError and releases the passed fds', async () => {
    const fds = tap('phq2', 1);
    let err: unknown;
    try {
      await client!.hotplugNic({ fds, mac: '52:54:00:00:00:02', id: 'nic0', bus: 'rp3' });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(QmpError);
    const e = err as QmpError;
    expect(e.command).toBe('netdev_add');
    expect(e.errorClass).toBe('GenericError');
    expect(e.message).toMatch(/hot-plugging NIC nic0.*netdev_add.*GenericError: Duplicate ID 'nic0'/);
    // The getfd'd copy was closefd'd: closing ours removes the tap.
    dropOurFds(fds);
    expect(linkIn(ns, 'phq2')).toBeUndefined();
  });

  it('explains a non-hotpluggable bus and undoes the netdev', async () => {
    const fds = tap('phq3', 1);
    let err: unknown;
    try {
      await client!.hotplugNic({ fds, mac: '52:54:00:00:00:03', id: 'nic3' });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(QmpError);
    expect((err as QmpError).command).toBe('device_add');
    expect((err as Error).message).toMatch(/does not support hotplugging.*pcie-root-port/);
    expect(await hmp('info network')).not.toContain('nic3');
    dropOurFds(fds);
    expect(linkIn(ns, 'phq3')).toBeUndefined();
  });

  it('issues device_del but reports a bounded time-out while no guest acknowledges', async () => {
    const t0 = Date.now();
    let err: unknown;
    try {
      await client!.unplugNic('nic1', { timeoutMs: 1500 });
    } catch (e) {
      err = e;
    }
    expect(Date.now() - t0).toBeGreaterThanOrEqual(1400);
    expect(err).toBeInstanceOf(QmpConnectionError);
    expect((err as Error).message).toMatch(/nic1: QEMU did not report DEVICE_DELETED within 1500 ms.*guest OS/);
    // The device stays until the guest lets go; a retry keeps waiting.
    expect(await peripheral('nic1')).toBe(true);
    await expect(client!.unplugNic('nic1', { timeoutMs: 300 })).rejects.toThrow(/DEVICE_DELETED/);
  });

  it('treats unplugging an unknown NIC as done at once, and the monitor goes on answering', async () => {
    const t0 = Date.now();
    await expect(client!.unplugNic('nosuchnic', { timeoutMs: 5000 })).resolves.toBeUndefined();
    // DeviceNotFound ends it: no wait for a DEVICE_DELETED that never comes.
    expect(Date.now() - t0).toBeLessThan(2000);
    expect(await client!.execute('query-status')).toMatchObject({ running: expect.any(Boolean) });
  });

  it('handles events that arrive between a command and its return', async () => {
    const seen: string[] = [];
    const off = client!.onEvent((ev) => seen.push(ev.event));
    const resumed = client!.waitForEvent('RESUME', () => true, 5000);
    await client!.execute('cont');
    await resumed.promise;
    const stopped = client!.waitForEvent('STOP', () => true, 5000);
    await client!.execute('stop');
    await stopped.promise;
    off();
    expect(seen).toEqual(expect.arrayContaining(['RESUME', 'STOP']));
    const status = (await client!.execute('query-status')) as { running: boolean };
    expect(status.running).toBe(false);
  });

  it('fails a bad socket path after a bounded retry, naming it', async () => {
    const bad = path.join(dir, 'missing.sock');
    const t0 = Date.now();
    const err = await QmpClient.connect(bad, { timeoutMs: 800 }).catch((e: unknown) => e);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(700);
    expect(err).toBeInstanceOf(QmpConnectionError);
    expect((err as QmpConnectionError).code).toBe('ENOENT');
    expect((err as Error).message).toContain(bad);
    expect((err as Error).message).toMatch(/retried for 800 ms/);
  });

  it('podtap up --qmp, two NICs: each is hot-plugged on its own bus as podtap0 and podtap1 with its MAC and queues; after kill -9, down restores the pod', async () => {
    const cleanup = new Cleanup();
    try {
      const pod = await makePod('multi', { cleanup });
      const before = await snapshot(pod.pod);
      const nics = [pod.nics[0]!, pod.nics.find((n) => n.ifname === 'net2')!];
      const up = startPodtap(pod, ['up', '--qmp', podtapSock, '--qmp-bus', 'rp4', '--qmp-bus', 'rp5', '--queues', '2', ...nics.flatMap((n) => ['--interface', n.ifname])], cleanup);
      const ready = await up.ready;
      expect(ready.qmp).toEqual({ devices: ['podtap0', 'podtap1'] });
      for (const [i, nic] of nics.entries()) {
        const id = `podtap${i}`;
        expect(await peripheral(id)).toBe(true);
        expect(await qomGet(id, 'type')).toBe('virtio-net-pci');
        expect(await qomGet(id, 'parent_bus')).toBe(`/machine/peripheral/rp${4 + i}/rp${4 + i}`);
        expect(await qomGet(id, 'netdev')).toBe(id);
        expect(await qomGet(id, 'mac')).toBe(nic.mac);
        expect(await qomGet(id, 'mq')).toBe(true);
        expect(await qomGet(id, 'host_mtu')).toBe(nic.mtu);
      }
      // Each netdev holds its own tap's two queues.
      const info = await hmp('info network');
      for (const i of [0, 1]) expect(info.match(new RegExp(`podtap${i}: index=\\d+,type=tap,fd=\\d+`, 'g')), info).toHaveLength(2);
      // Unplugging needs a guest that acknowledges (15 s each without one):
      // kill -9 instead, and `podtap down` restores the pod while QEMU keeps its copies of the fds.
      up.proc.kill('SIGKILL');
      await up.proc;
      const down = await podtapIn(pod, ['down', '--state-dir', up.stateDir]);
      expect(down.exitCode, down.stderr).toBe(0);
      expect(diffSnapshots(before, await snapshot(pod.pod))).toEqual([]);
    } finally {
      await cleanup.cleanupAll();
    }
  });

  it('the tap goes away with QEMU', async () => {
    const gone = new Promise((resolve) => qemu!.once('exit', resolve));
    process.kill(qemu!.pid!, 'SIGKILL');
    await gone;
    await expect(client!.execute('query-status')).rejects.toThrow(/closed/);
    expect(linkIn(ns, 'phq0')).toBeUndefined();
  });
});
