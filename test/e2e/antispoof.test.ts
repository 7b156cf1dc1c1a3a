// The guard's anti-spoofing, with real guests under QEMU, on both data
// paths (the netdev table of redirect, the bridge table of bridge). The CNI
// bridge shape is the one where a forged source would work without it: the
// node has 10.21.0.1/16 on cni0, so it answers ARP from any address in the
// /16 and replies to whatever MAC asked. A guest must only ever speak with
// the pod's MAC and the pod's IP; `--no-antispoof` shows the test can fail.
// A tcpdump on the node's cni0 checks that no forged frame leaves the pod.
// One pod serves every boot: each must leave it exactly as it was.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Cleanup } from '../helpers/netns.ts';
import { DATAPATHS, makePod, type Datapath, type Pod } from '../helpers/pods.ts';
import { snapshot, diffSnapshots, type Snapshot } from '../helpers/snapshot.ts';
import { buildGuest, guestQemuArgs, runGuest, type Guest, type GuestRun } from '../helpers/guest.ts';
import { PODTAP, stateDirFor } from '../helpers/podtap.ts';
import { startCapture } from '../helpers/capture.ts';
import { datapathArgs, readyIn } from './support.ts';

const cleanup = new Cleanup();
afterAll(() => cleanup.cleanupAll());

const FORGED_MAC = '02:5e:0f:0c:ad:01'; // locally administered, unicast
const FORGED_IP = '10.21.0.77'; // free in the pod's 10.21.0.0/16

let guest: Guest;
let pod: Pod;
let before: Snapshot;
beforeAll(async () => {
  guest = await buildGuest();
  pod = await makePod('bridge', { cleanup });
  before = await snapshot(pod.pod);
});

interface Boot {
  datapath: Datapath;
  mac: string; // '{mac}' for the pod's own
  ip: string;
  flags?: string[];
}

/** Boots one static guest through `podtap run`, pinging the node, with cni0 captured meanwhile. */
async function boot(b: Boot): Promise<{ run: GuestRun; frames: string[] }> {
  const capture = await startCapture(pod.node, 'cni0', cleanup);
  let stopped: Promise<string[]> | undefined;
  const qemu = [
    ...guestQemuArgs({ guest, net: { address: `${b.ip}/${pod.prefix}`, gateway: pod.gateway! }, ping: [pod.nodeAddr], guestTimeout: 60 }),
    '-netdev', 'tap,id=n0,fds={fds}',
    '-device', `virtio-net-pci,netdev=n0,mac=${b.mac},romfile=`,
  ];
  const run = await runGuest(pod.argv([PODTAP, 'run', '--state-dir', stateDirFor(cleanup), '--no-dhcp', ...datapathArgs(b.datapath), ...(b.flags ?? []), '--', ...qemu]), { timeoutMs: 120_000 }).finally(() => stopped = capture.stop());
  const frames = await stopped!;
  expect(run.reason, run.stderr).not.toBe('aborted');
  expect(readyIn(run.serial)?.datapath, run.stderr).toBe(b.datapath);
  expect(run.exitCode, run.stderr).toBe(0);
  expect(run.stderr).toMatch(/namespace restored/);
  expect(diffSnapshots(before, await snapshot(pod.pod))).toEqual([]);
  return { run, frames };
}

const pinged = (run: GuestRun) => run.report.pings.find((p) => p.target === pod.nodeAddr);
const mentioning = (frames: string[], what: string) => frames.filter((f) => f.toLowerCase().includes(what.toLowerCase()));

describe.each(DATAPATHS)('antispoof on the CNI bridge shape, %s data path', (datapath) => {
  it('an honest guest (pod MAC, pod IP) reaches the node', async () => {
    const { run, frames } = await boot({ datapath, mac: '{mac}', ip: pod.podIP });
    expect(run.report.last?.mac).toBe(pod.expect.mac);
    expect(pinged(run), run.serial).toMatchObject({ ok: true });
    // The capture works: the guest's frames do show up on cni0.
    expect(mentioning(frames, pod.expect.mac).length).toBeGreaterThan(0);
  });

  it('a guest with a forged MAC cannot reach the node, and no frame from that MAC leaves the pod', async () => {
    const { run, frames } = await boot({ datapath, mac: FORGED_MAC, ip: pod.podIP });
    expect(run.report.last?.mac).toBe(FORGED_MAC);
    expect(pinged(run), run.serial).toMatchObject({ ok: false });
    expect(mentioning(frames, FORGED_MAC)).toEqual([]);
  });

  it('the same forged-MAC guest with --no-antispoof does reach the node (the test can fail)', async () => {
    const { run, frames } = await boot({ datapath, mac: FORGED_MAC, ip: pod.podIP, flags: ['--no-antispoof'] });
    expect(run.report.last?.mac).toBe(FORGED_MAC);
    expect(pinged(run), run.serial).toMatchObject({ ok: true });
    expect(mentioning(frames, FORGED_MAC).length).toBeGreaterThan(0);
  });

  it('a guest with the pod MAC but a forged IP cannot reach the node, and no frame names that IP', async () => {
    const { run, frames } = await boot({ datapath, mac: '{mac}', ip: FORGED_IP });
    expect(run.report.last?.mac).toBe(pod.expect.mac);
    expect(run.report.last?.addresses.map((a) => a.local)).toContain(FORGED_IP);
    expect(pinged(run), run.serial).toMatchObject({ ok: false });
    expect(mentioning(frames, FORGED_IP)).toEqual([]);
  });

  it('the same forged-IP guest with --no-antispoof does reach the node (the test can fail)', async () => {
    const { run, frames } = await boot({ datapath, mac: '{mac}', ip: FORGED_IP, flags: ['--no-antispoof'] });
    expect(run.report.last?.addresses.map((a) => a.local)).toContain(FORGED_IP);
    expect(pinged(run), run.serial).toMatchObject({ ok: true });
    expect(mentioning(frames, FORGED_IP).length).toBeGreaterThan(0);
  });
});
