// `podtap up --ch-api SOCKET`: podtap hot-plugs its tap into a running Cloud
// Hypervisor through the VMM's REST API socket (PUT /api/v1/vm.add-net with
// the queue fds as SCM_RIGHTS), and takes the NIC out again
// (PUT /api/v1/vm.remove-device) before it restores the namespace.
//
// Cloud Hypervisor itself can't be installed here: test/helpers/fake-ch.ts
// stands in for its API server, running in the pod's namespace like the real
// VMM would, and reports every request it got, with the fds that came with
// it, as JSON lines.
//
// Also: `podtap run -- cloud-hypervisor ...` is the other way to use Cloud
// Hypervisor, and its `--net fd=[3,4],num_queues=4` syntax is what the
// {fds_csv} and {ch_queues} placeholders are for; checked with a shell that
// shows its argv and its open fds.

import { spawn } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, expect, it } from 'vitest';
import { IFF_MULTI_QUEUE, IFF_NO_PI, IFF_TAP, IFF_VNET_HDR } from '../../src/sys/native.ts';
import { Cleanup } from '../helpers/netns.ts';
import { makePod, type Pod } from '../helpers/pods.ts';
import { snapshot, diffSnapshots } from '../helpers/snapshot.ts';
import { PODTAP, startPodtap, stateDirFor } from '../helpers/podtap.ts';

const cleanup = new Cleanup();
afterAll(() => cleanup.cleanupAll());

const REPO = resolve(import.meta.dirname, '../..');
const NODE = join(REPO, 'node_modules/.bin/node');
const FAKE_CH = join(REPO, 'test/helpers/fake-ch.ts');

interface TapSeen {
  name: string;
  flags: number;
  vnetHdr: boolean;
  multiQueue: boolean;
  present: boolean;
}

interface Seen {
  event: 'request';
  method: string;
  target: string;
  headers: Record<string, string>;
  body: unknown;
  fds: number;
  taps: (TapSeen | null)[];
  released?: (TapSeen | null)[];
  status: number;
  response: unknown;
}

/** Starts the stand-in for Cloud Hypervisor in the pod; resolves once it listens. */
async function startFakeCh(pod: Pod, socket: string, env: Record<string, string> = {}) {
  const child = spawn('ip', ['netns', 'exec', pod.pod, NODE, '--disable-warning=ExperimentalWarning', FAKE_CH, socket], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ...env },
  });
  cleanup.pid(child.pid!); // ip netns exec execs node: this is the server's pid
  const requests: Seen[] = [];
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  const listening = new Promise<void>((resolveListening, reject) => {
    createInterface({ input: child.stdout }).on('line', (line) => {
      const msg = JSON.parse(line) as { event: string };
      if (msg.event === 'listening') resolveListening();
      else if (msg.event === 'request') requests.push(msg as Seen);
    });
    void exited.then(() => reject(new Error(`fake Cloud Hypervisor exited:\n${stderr}`)));
  });
  await listening;
  return {
    requests,
    async waitFor(target: string, timeoutMs = 15_000): Promise<Seen> {
      const end = Date.now() + timeoutMs;
      for (;;) {
        const r = requests.find((q) => q.target === target);
        if (r) return r;
        if (Date.now() > end) throw new Error(`no ${target} request within ${timeoutMs} ms; got ${JSON.stringify(requests)}\n${stderr}`);
        await sleep(50);
      }
    },
    async stop(): Promise<void> {
      child.kill('SIGTERM');
      await exited;
    },
  };
}

const UP_CASES = [
  { shape: 'ptp', datapath: 'bridge', nics: [] as string[] },
  { shape: 'multi', datapath: 'redirect', nics: ['eth0', 'net2'] },
] as const;

for (const { shape, datapath, nics } of UP_CASES) {
  const count = Math.max(nics.length, 1);
  it(`up --ch-api --queues 2 (${shape} pod, ${datapath}, ${count} NIC${count > 1 ? 's' : ''}): adds each NIC with both queue fds, and removes them before restoring the pod`, async () => {
    const pod = await makePod(shape, { cleanup });
    const dir = mkdtempSync('/tmp/podtap-ch-');
    cleanup.path(dir);
    const apiSocket = join(dir, 'ch.sock');
    // The VMM is up before podtap, and outlives it.
    const ch = await startFakeCh(pod, apiSocket);
    const before = await snapshot(pod.pod);

    const podtap = startPodtap(pod, ['up', '--ch-api', apiSocket, '--queues', '2', '--datapath', datapath, ...nics.flatMap((n) => ['--interface', n])], cleanup);
    const ready = await podtap.ready;
    const wanted = nics.length ? nics.map((n) => pod.nics.find((x) => x.ifname === n)!) : [pod.nics[0]!];
    const ids = wanted.map((_, i) => `podtap${i}`);
    expect(ready).toMatchObject({ mac: pod.expect.mac, ip: `${pod.podIP}/${pod.handedPrefix}`, tap: 'tap0', queues: 2, datapath });
    // One device per NIC, numbered as the VMM's own ids, each with the slot Cloud Hypervisor gave it.
    expect(ready.chApi).toEqual(ids.map((device, i) => ({ device, bdf: `0000:00:${(5 + i).toString(16).padStart(2, '0')}.0` })));

    for (const [i, nic] of wanted.entries()) {
      const add = ch.requests.filter((q) => q.target === '/api/v1/vm.add-net')[i]!;
      expect(add.method).toBe('PUT');
      expect(add.headers['content-type']).toBe('application/json');
      // Cloud Hypervisor's NetConfig: num_queues counts queues (2 per pair), the
      // MAC is the pod interface's (the guest takes over its identity), no fd
      // numbers in the body (they travel as SCM_RIGHTS).
      expect(add.body).toEqual({ id: ids[i], mac: nic.mac, mtu: nic.mtu, num_queues: 4 });
      expect(add.fds).toBe(2);
      for (const tap of add.taps) {
        expect(tap).toEqual({ name: `tap${i}`, flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE, vnetHdr: true, multiQueue: true, present: true });
      }
      expect(add.status).toBe(200);
    }
    // Nothing else was asked of the VMM while it ran.
    expect(ch.requests).toHaveLength(count);

    process.kill(podtap.pid, 'SIGTERM');
    const exit = await podtap.proc;
    expect(exit.exitCode, podtap.stderr()).toBe(0);
    expect(podtap.stderr()).toMatch(/NIC removed from Cloud Hypervisor/);
    expect(podtap.stderr()).toMatch(/namespace restored/);

    for (let end = Date.now() + 15_000; ch.requests.length < 2 * count && Date.now() < end; ) await sleep(50);
    const removes = ch.requests.slice(count);
    expect(removes.map((r) => r.target)).toEqual(ids.map(() => '/api/v1/vm.remove-device'));
    expect(removes.map((r) => (r.body as { id: string }).id).sort()).toEqual(ids);
    for (const remove of removes) {
      const i = ids.indexOf((remove.body as { id: string }).id);
      expect(remove.method).toBe('PUT');
      expect(remove.fds).toBe(0);
      expect(remove.status).toBe(204);
      // The VMM let go of the NIC while its tap still existed: podtap asked
      // before tearing down the network.
      expect(remove.released).toEqual([expect.objectContaining({ name: `tap${i}`, present: true }), expect.objectContaining({ name: `tap${i}`, present: true })]);
    }

    expect(diffSnapshots(before, await snapshot(pod.pod))).toEqual([]);
    await ch.stop();
  });
}

it('up --ch-api: when Cloud Hypervisor refuses the NIC, podtap says what it answered and restores the pod', async () => {
  const pod = await makePod('ptp', { cleanup });
  const dir = mkdtempSync('/tmp/podtap-ch-');
  cleanup.path(dir);
  const apiSocket = join(dir, 'ch.sock');
  const ch = await startFakeCh(pod, apiSocket, { FAKE_CH_REJECT: 'Number of queues to virtio_net exceeds the number of vCPUs' });
  const before = await snapshot(pod.pod);

  const podtap = startPodtap(pod, ['up', '--ch-api', apiSocket, '--queues', '2'], cleanup);
  await expect(podtap.ready).rejects.toThrow(/exited/);
  const exit = await podtap.proc;
  expect(exit.exitCode).toBe(9); // handoff
  expect(podtap.stderr()).toMatch(/Cloud Hypervisor answered HTTP 500: .*exceeds the number of vCPUs/);
  expect(podtap.stderr()).toMatch(/namespace restored/);
  expect(ch.requests.map((r) => [r.target, r.status])).toEqual([['/api/v1/vm.add-net', 500]]);
  expect(diffSnapshots(before, await snapshot(pod.pod))).toEqual([]);
  await ch.stop();
});

it('run --queues 2, two NICs: {fds_csv} and {ch_queues} render Cloud Hypervisor\'s --net fd=[3,4],num_queues=4 and fd=[5,6] for NIC 1', async () => {
  const pod = await makePod('multi', { cleanup });
  const before = await snapshot(pod.pod);
  const stateDir = stateDirFor(cleanup);
  // Stands in for `cloud-hypervisor ... --net fd=[{fds_csv}],mac={mac},num_queues={ch_queues}`:
  // prints its argv, which tap each inherited fd is attached to, and its fd table.
  const script = [
    'echo "ARGV $*"',
    'for f in /proc/$$/fdinfo/*; do n=${f##*/}; i=$(sed -n "s/^iff:[[:space:]]*//p" "$f" 2>/dev/null); [ -n "$i" ] && echo "TAPFD $n $i"; done',
    'ls -l /proc/self/fd',
  ].join('; ');
  const r = await pod.run(
    [PODTAP, 'run', '--state-dir', stateDir, '--queues', '2', '--interface', 'eth0', '--interface', 'net1', '--', 'sh', '-c', script, 'cloud-hypervisor',
      '--net', 'fd=[{fds_csv}],mac={mac},num_queues={ch_queues}', '--net', 'fd=[{fds_csv:1}],mac={mac:net1},num_queues={ch_queues:1}'],
    { reject: false },
  );
  expect(r.exitCode, r.stderr).toBe(0);
  const net1 = pod.nics.find((n) => n.ifname === 'net1')!;
  expect(r.stdout).toContain(`ARGV --net fd=[3,4],mac=${pod.expect.mac},num_queues=4 --net fd=[5,6],mac=${net1.mac},num_queues=4\n`);
  // Exactly fds 3 to 6 are queues of podtap's taps, NIC 0's first; no other tap fd leaked in.
  const tapFds = r.stdout.split('\n').filter((l) => l.startsWith('TAPFD ')).sort();
  expect(tapFds).toEqual(['TAPFD 3 tap0', 'TAPFD 4 tap0', 'TAPFD 5 tap1', 'TAPFD 6 tap1']);
  for (const fd of [3, 4, 5, 6]) expect(r.stdout).toMatch(new RegExp(` ${fd} -> /dev/net/tun\n`));
  expect(r.stdout.match(/-> \/dev\/net\/tun/g)).toHaveLength(4);
  expect(diffSnapshots(before, await snapshot(pod.pod))).toEqual([]);
});
