// Bad input and hostile environments: one clear message naming the problem
// and the fix, a non-zero exit, and the namespace exactly as it was.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Cleanup, createNetns, nsSh } from '../helpers/netns.ts';
import { makePod, type Pod } from '../helpers/pods.ts';
import { snapshot, diffSnapshots } from '../helpers/snapshot.ts';
import { podtapIn, startPodtap, stateDirFor, PODTAP } from '../helpers/podtap.ts';
import { runInPod } from '../helpers/netns.ts';

const cleanup = new Cleanup();
afterAll(() => cleanup.cleanupAll());

let pod: Pod;
beforeAll(async () => {
  pod = await makePod('ptp', { cleanup });
});

/** Runs podtap with argv (state dir added) and asserts: exit status, message, fix, nothing changed. */
async function refused(argv: string[], status: number, message: RegExp, opts: { wrap?: string[]; env?: Record<string, string>; on?: Pod } = {}) {
  const p = opts.on ?? pod;
  const before = await snapshot(p.pod);
  const stateDir = stateDirFor(cleanup);
  const full = [...(opts.wrap ?? []), PODTAP, argv[0]!, '--state-dir', stateDir, ...argv.slice(1)];
  const r = await runInPod(p.pod, p.hostname, full, { reject: false, env: opts.env ?? {} });
  expect(r.exitCode, r.stderr).toBe(status);
  expect(r.stderr).toMatch(message);
  expect(r.stderr).toMatch(/fix: /);
  expect(r.stdout).toBe('');
  expect(diffSnapshots(before, await snapshot(p.pod))).toEqual([]);
  return r;
}

describe('refusals leave the namespace unchanged', () => {
  it('no veth', async () => {
    const ns = await createNetns({ cleanup } as any);
    const lonely = { ...pod, pod: ns } as Pod;
    await nsSh(ns, 'ip link add lan0 type bridge && ip addr add 10.9.9.9/24 dev lan0');
    await refused(['up'], 4, /no veth in this network namespace \(links: lo .*lan0 \(bridge, 10.9.9.9\/24\)/, { on: lonely });
  });

  it('several veths, listing the candidates', async () => {
    await nsSh(pod.pod, 'ip link add extra0 type veth peer name extra1');
    try {
      await refused(['up'], 4, /3 veths in this network namespace: .*eth0 \(veth, 10\.22\./);
    } finally {
      await nsSh(pod.pod, 'ip link del extra0');
    }
  });

  it('a veth with no IPv4 address', async () => {
    const other = await makePod('ptp', { cleanup });
    await nsSh(other.pod, 'ip -4 addr flush dev eth0');
    await refused(['up'], 4, /eth0 has no IPv4 address/, { on: other });
  });

  it('/dev/net/tun missing', async () => {
    await refused(['up'], 3, /\/dev\/net\/tun does not exist/, { wrap: ['unshare', '-m', 'sh', '-c', 'mount -t tmpfs none /dev/net && exec "$@"', 'hide-tun'] });
  });

  it('no CAP_NET_ADMIN', async () => {
    await refused(['up'], 3, /lacks CAP_NET_ADMIN.*\n.*fix: add the NET_ADMIN capability/, { wrap: ['setpriv', '--bounding-set', '-net_admin', '--inh-caps', '-net_admin', '--'] });
  });

  it('a bridge name already taken', async () => {
    await nsSh(pod.pod, 'ip link add br0 type bridge');
    try {
      await refused(['up'], 5, /a link named br0 already exists, so the bridge can't be created/);
    } finally {
      await nsSh(pod.pod, 'ip link del br0');
    }
  });

  it('a tap name already taken', async () => {
    await nsSh(pod.pod, 'ip tuntap add dev vmtap mode tap');
    try {
      await refused(['up', '--tap', 'vmtap'], 5, /a link named vmtap already exists, so the tap can't be created/);
    } finally {
      await nsSh(pod.pod, 'ip link del vmtap');
    }
  });

  it('malformed options', async () => {
    await refused(['up', '--queues', '0'], 2, /--queues is 0, out of range/);
    await refused(['up', '--bridge', 'this-name-is-too-long'], 2, /not a valid interface name/);
    await refused(['up'], 2, /PODTAP_LOG_FORMAT is "yaml", not a log format/, { env: { PODTAP_LOG_FORMAT: 'yaml' } });
  });

  it('an existing journal from another run', async () => {
    const other = await makePod('bridge', { cleanup });
    const before = await snapshot(other.pod);
    const stateDir = stateDirFor(cleanup);
    // A crash in the middle of setup leaves a journal the next `up` must not build on.
    const crashed = await runInPod(other.pod, other.hostname, [PODTAP, 'up', '--state-dir', stateDir, '--no-dhcp'], { reject: false, env: { PODTAP_FAULT: 'setup:5:after' } });
    expect(crashed.exitCode).not.toBe(0);
    const r = await runInPod(other.pod, other.hostname, [PODTAP, 'up', '--state-dir', stateDir, '--no-dhcp'], { reject: false });
    expect(r.exitCode).toBe(5);
    expect(r.stderr).toMatch(/journal from an earlier podtap run .*\n.*fix: run `podtap down`/);
    const down = await podtapIn(other, ['down', '--state-dir', stateDir]);
    expect(down.exitCode, down.stderr).toBe(0);
    expect(diffSnapshots(before, await snapshot(other.pod))).toEqual([]);
  });

  it('a second podtap while one is running', async () => {
    const up = startPodtap(pod, ['up', '--no-dhcp'], cleanup);
    await up.ready;
    const r = await runInPod(pod.pod, pod.hostname, [PODTAP, 'up', '--state-dir', up.stateDir, '--no-dhcp'], { reject: false });
    expect(r.exitCode).toBe(5);
    expect(r.stderr).toMatch(/another podtap \(pid \d+\) holds/);
    up.proc.kill('SIGTERM');
    expect((await up.proc).exitCode).toBe(0);
  });
});
