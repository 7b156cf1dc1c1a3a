// podtap's whole life in real pod namespaces of every shape: up, what the
// namespace looks like while up, SIGTERM, and the namespace exactly as before;
// and kill -9 followed by `podtap down`.

import { afterAll, describe, expect, it } from 'vitest';
import { Cleanup, nsExec } from '../helpers/netns.ts';
import { makePod, SHAPES, type Pod } from '../helpers/pods.ts';
import { snapshot, diffSnapshots } from '../helpers/snapshot.ts';
import { podtapIn, startPodtap } from '../helpers/podtap.ts';

const cleanup = new Cleanup();
afterAll(() => cleanup.cleanupAll());

async function links(pod: Pod) {
  const r = await nsExec(pod.pod, ['ip', '-j', '-d', 'addr', 'show']);
  return JSON.parse(r.stdout) as any[];
}

describe.each(SHAPES)('%s pod', (shape) => {
  it('up builds br0 + tap0 with the pod identity moved off the veth; SIGTERM restores the namespace exactly', async () => {
    const pod = await makePod(shape, { cleanup });
    const before = await snapshot(pod.pod);
    const up = startPodtap(pod, ['up', '--no-dhcp'], cleanup);
    const ready = await up.ready;
    expect(ready).toMatchObject({ event: 'ready', mac: pod.expect.mac, ip: `${pod.podIP}/${pod.prefix}`, bridge: 'br0', tap: 'tap0', queues: 1, mtu: pod.expect.mtu });

    const during = await links(pod);
    const eth0 = during.find((l) => l.ifname === 'eth0');
    const br0 = during.find((l) => l.ifname === 'br0');
    const tap0 = during.find((l) => l.ifname === 'tap0');
    expect(eth0.master).toBe('br0');
    expect(eth0.address).not.toBe(pod.expect.mac);
    expect(eth0.addr_info).toEqual([]);
    expect(tap0.master).toBe('br0');
    expect(tap0.mtu).toBe(pod.expect.mtu);
    expect(br0.mtu).toBe(pod.expect.mtu);
    expect(br0.addr_info.map((a: any) => `${a.local}/${a.prefixlen}`)).toEqual([ready.linkLocal]);
    const routes = JSON.parse((await nsExec(pod.pod, ['ip', '-j', 'route', 'show', 'dev', 'eth0'])).stdout);
    expect(routes).toEqual([]);

    up.proc.kill('SIGTERM');
    const r = await up.proc;
    expect(r.exitCode, up.stderr()).toBe(0);
    expect(diffSnapshots(before, await snapshot(pod.pod))).toEqual([]);
  });

  it('after kill -9, `podtap down` restores the namespace exactly, and a second down is a no-op', async () => {
    const pod = await makePod(shape, { cleanup });
    const before = await snapshot(pod.pod);
    const up = startPodtap(pod, ['up', '--no-dhcp'], cleanup);
    await up.ready;
    up.proc.kill('SIGKILL');
    await up.proc;
    expect(diffSnapshots(before, await snapshot(pod.pod))).not.toEqual([]);

    const down = await podtapIn(pod, ['down', '--state-dir', up.stateDir]);
    expect(down.exitCode, down.stderr).toBe(0);
    expect(down.stderr).toMatch(/namespace restored/);
    expect(diffSnapshots(before, await snapshot(pod.pod))).toEqual([]);

    const again = await podtapIn(pod, ['down', '--state-dir', up.stateDir]);
    expect(again.exitCode).toBe(0);
    expect(again.stderr).toMatch(/nothing to restore/);
    expect(diffSnapshots(before, await snapshot(pod.pod))).toEqual([]);
  });
});
