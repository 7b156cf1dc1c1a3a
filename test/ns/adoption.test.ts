// Adoption: podtap dies (kill -9) while the VMM keeps the TAPs, and `podtap
// up` is started again with the same options and state dir. When the
// namespace is exactly what the journal says, the new podtap takes the
// setup over without changing anything; when one thing differs it refuses,
// says what, and changes nothing. One small test per check, so that a check
// that always passed would be caught.
//
// The VMM is `podtap run -- sleep`: it holds the queue fds, so the taps
// outlive podtap as they would with a real VMM.

import { readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Cleanup, killPid, nsSh, processStartTime } from '../helpers/netns.ts';
import { makePod, type Datapath, type Pod } from '../helpers/pods.ts';
import { snapshot, diffSnapshots, type Snapshot } from '../helpers/snapshot.ts';
import { expectReady, podtapIn, startPodtap, stateDirFor } from '../helpers/podtap.ts';

const cleanup = new Cleanup();
afterAll(() => cleanup.cleanupAll());

// Two NICs on each data path: the veth and the macvlan on redirect (the
// macvlan can't be bridged), the veth and the bridge-plugin veth on bridge.
const NICS: Record<Datapath, string[]> = { redirect: ['eth0', 'net2'], bridge: ['eth0', 'net1'] };

let pods: Record<Datapath, Pod>;
let original: Record<Datapath, Snapshot>;
beforeAll(async () => {
  const [r, b] = await Promise.all([makePod('multi', { cleanup }), makePod('multi', { cleanup })]);
  pods = { redirect: r!, bridge: b! };
  original = { redirect: await snapshot(r!.pod), bridge: await snapshot(b!.pod) };
});

// A test that failed half-way leaves its pod as it was then: the next one
// gets a new pod rather than failing for it.
afterEach(async () => {
  for (const d of ['redirect', 'bridge'] as const) {
    if (!diffSnapshots(original[d], await snapshot(pods[d].pod)).length) continue;
    await pods[d].cleanup();
    pods[d] = await makePod('multi', { cleanup });
    original[d] = await snapshot(pods[d].pod);
  }
});

function args(datapath: Datapath, extra: string[] = []): string[] {
  return ['--datapath', datapath, ...NICS[datapath].flatMap((n) => ['--interface', n]), ...extra];
}

/** podtap's children: the stand-in VMM (sleep), once podtap has started it. */
async function vmmPids(podtap: number): Promise<number[]> {
  for (const end = Date.now() + 10_000; ; await sleep(20)) {
    const pids = readFileSync(`/proc/${podtap}/task/${podtap}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
    if (pids.length || Date.now() > end) return pids;
  }
}

interface Crashed {
  stateDir: string;
  /** The stand-in VMM's pid (none with persistent taps). */
  vmm: number[];
  /** The namespace as podtap left it when it died. */
  left: Snapshot;
  /** Ends the stand-in VMM (if any), then restores with `podtap down`, and checks the pod is as it was. */
  finish(): Promise<void>;
}

/** podtap set up with a VMM holding the taps (or persistent taps), then killed with -9. */
async function upAndKill(datapath: Datapath, extra: string[] = []): Promise<Crashed> {
  const p = pods[datapath];
  const stateDir = stateDirFor(cleanup);
  const persistent = extra.includes('--persist-tap');
  const first = persistent
    ? startPodtap(p, ['up', ...args(datapath, extra)], cleanup, {}, stateDir)
    : // The VMM lets go of podtap's stdout and stderr, so podtap's end is seen at once.
      startPodtap(p, ['run', ...args(datapath, extra), '--', 'sh', '-c', 'exec sleep 600 >/dev/null 2>&1'], cleanup, {}, stateDir);
  expectReady(await first.ready, p, datapath, { interfaces: NICS[datapath] });
  const vmm = persistent ? [] : await vmmPids(first.pid);
  if (!persistent) expect(vmm.length, 'the stand-in VMM runs').toBe(1);
  first.proc.kill('SIGKILL');
  await first.proc;
  const left = await snapshot(p.pod);
  return {
    stateDir,
    vmm,
    left,
    async finish() {
      for (const pid of vmm) await killPid(pid, processStartTime(pid));
      const down = await podtapIn(p, ['down', '--state-dir', stateDir]);
      expect(down.exitCode, down.stderr).toBe(0);
      expect(diffSnapshots(original[datapath], await snapshot(p.pod))).toEqual([]);
    },
  };
}

/** A second `up` that must refuse to adopt, saying `says`, and change nothing. */
async function refusesToAdopt(datapath: Datapath, c: Crashed, says: RegExp, extra: string[] = []): Promise<void> {
  const p = pods[datapath];
  const tampered = await snapshot(p.pod);
  const r = await podtapIn(p, ['up', '--state-dir', c.stateDir, ...args(datapath, extra)]);
  expect(r.exitCode, r.stderr).toBe(5);
  expect(r.stderr).toMatch(says);
  expect(r.stderr).toMatch(/fix: .*podtap down/);
  expect(r.stdout).toBe('');
  expect(diffSnapshots(tampered, await snapshot(p.pod))).toEqual([]);
}

for (const datapath of ['redirect', 'bridge'] as const) {
  describe(`${datapath} data path, two NICs`, () => {
    it('adopts when everything matches: nothing changes, the DHCP servers run again, and SIGTERM restores', async () => {
      const p = pods[datapath];
      const c = await upAndKill(datapath);
      const again = startPodtap(p, ['up', ...args(datapath)], cleanup, {}, c.stateDir);
      const ready = await again.ready;
      expect(ready.adopted).toBe(true);
      expect(ready.nics.map((n) => [n.interface, n.tap, n.bridge, n.datapath])).toEqual(
        NICS[datapath].map((n, i) => [n, `tap${i}`, datapath === 'bridge' ? `br${i}` : null, datapath]),
      );
      expect(again.stderr()).toMatch(/adopted the running setup .*nics=2 tapsHeldByVmm=2/);
      expect((ready.dhcp as { nic: number }[]).map((d) => d.nic)).toEqual([0, 1]);
      // Not one change to the namespace; one more process in it: podtap.
      const comm = readFileSync(`/proc/${again.pid}/comm`, 'utf8').trim();
      expect(diffSnapshots(c.left, await snapshot(p.pod))).toEqual([`processes: + ${comm}`]);
      again.proc.kill('SIGTERM');
      expect((await again.proc).exitCode, again.stderr()).toBe(0);
      await c.finish();
    });

    it('adopts after the VMM is gone too: the taps are made again, and the data path joins the new ones', async () => {
      const p = pods[datapath];
      const c = await upAndKill(datapath);
      // The VMM exits: its taps go with its fds.
      for (const pid of c.vmm) await killPid(pid, processStartTime(pid));
      const again = startPodtap(p, ['up', ...args(datapath)], cleanup, {}, c.stateDir);
      expect((await again.ready).adopted).toBe(true);
      const r = await nsSh(p.pod, 'ip -j -d link show; echo; nft list table $1 podtap', [datapath === 'bridge' ? 'bridge' : 'netdev']);
      const [links, table] = [JSON.parse(r.stdout.slice(0, r.stdout.indexOf('\n'))) as { ifname: string; master?: string }[], r.stdout.slice(r.stdout.indexOf('\n'))];
      for (const i of [0, 1]) expect(links.find((l) => l.ifname === `tap${i}`)?.master).toBe(datapath === 'bridge' ? `br${i}` : undefined);
      // The redirect path forwards to the new taps, by name, not to the
      // index a deleted tap had.
      if (datapath === 'redirect') for (const i of [0, 1]) expect(table).toContain(`fwd to "tap${i}"`);
      again.proc.kill('SIGTERM');
      expect((await again.proc).exitCode, again.stderr()).toBe(0);
      await c.finish();
    });

    it("refuses when the pod interface's MAC differs", async () => {
      const p = pods[datapath];
      const c = await upAndKill(datapath);
      const net = NICS[datapath][1]!;
      const was = JSON.parse((await nsSh(p.pod, 'ip -j link show dev "$1"', [net])).stdout)[0].address as string;
      await nsSh(p.pod, 'ip link set dev "$1" address 02:00:00:0b:ad:01', [net]);
      await refusesToAdopt(datapath, c, new RegExp(`${net} has MAC 02:00:00:0b:ad:01, the journal says ${was}`));
      await nsSh(p.pod, 'ip link set dev "$1" address "$2"', [net, was]);
      await c.finish();
    });

    it('refuses when the guard table is gone', async () => {
      const p = pods[datapath];
      const c = await upAndKill(datapath);
      const family = datapath === 'bridge' ? 'bridge' : 'netdev';
      await nsSh(p.pod, `nft delete table ${family} podtap`);
      await refusesToAdopt(datapath, c, new RegExp(`the nftables table ${family} podtap is missing`));
      await c.finish();
    });

    it('refuses when a persistent tap is missing', async () => {
      const p = pods[datapath];
      const c = await upAndKill(datapath, ['--persist-tap']);
      await nsSh(p.pod, 'ip link del tap1');
      await refusesToAdopt(datapath, c, /the persistent tap tap1 is missing/, ['--persist-tap']);
      await c.finish();
    });

    it('refuses when the options differ', async () => {
      const c = await upAndKill(datapath);
      await refusesToAdopt(datapath, c, /was written with other settings \(queues: journal 1, now 2\)/, ['--queues', '2']);
      await c.finish();
    });
  });
}

describe('bridge data path only', () => {
  it("refuses when the bridge's MAC differs", async () => {
    const p = pods.bridge;
    const c = await upAndKill('bridge');
    const was = JSON.parse((await nsSh(p.pod, 'ip -j link show dev br1')).stdout)[0].address as string;
    await nsSh(p.pod, 'ip link set dev br1 address 02:00:00:0b:ad:02');
    await refusesToAdopt('bridge', c, new RegExp(`bridge br1 has MAC 02:00:00:0b:ad:02, the journal says ${was}`));
    await c.finish();
  });

  it('refuses when the pod interface is no longer a port of its bridge', async () => {
    const p = pods.bridge;
    const c = await upAndKill('bridge');
    await nsSh(p.pod, 'ip link set dev eth0 nomaster');
    await refusesToAdopt('bridge', c, /eth0 is not a port of br0/);
    await c.finish();
  });

  it("refuses when a tap is there but not on its bridge", async () => {
    const p = pods.bridge;
    const c = await upAndKill('bridge');
    await nsSh(p.pod, 'ip link set dev tap1 nomaster');
    await refusesToAdopt('bridge', c, /tap1 exists but is not podtap's tap on br1/);
    await c.finish();
  });
});
