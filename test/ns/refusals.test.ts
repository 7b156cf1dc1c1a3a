// Refusals: a pod podtap can't take over, an environment it can't work in,
// names already taken, another podtap. Each is refused before the first
// change, with the problem, the fix and a non-zero exit, and the namespace
// exactly as it was. And the things that are no longer refused (an
// interface without IPv4, a bridge name taken while no bridge is needed)
// are taken over and restored.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Cleanup, createNetns, nsSh, runInPod } from '../helpers/netns.ts';
import { makePod, type Pod } from '../helpers/pods.ts';
import { snapshot, diffSnapshots } from '../helpers/snapshot.ts';
import { expectReady, podtapIn, startPodtap, stateDirFor, PODTAP } from '../helpers/podtap.ts';

const cleanup = new Cleanup();
afterAll(() => cleanup.cleanupAll());

let pod: Pod;
let multi: Pod;
beforeAll(async () => {
  [pod, multi] = await Promise.all([makePod('ptp', { cleanup }), makePod('multi', { cleanup })]);
});

/** Runs podtap with argv (state dir added) and asserts: exit status, message, fix, nothing changed. */
async function refused(argv: string[], status: number, message: RegExp, opts: { wrap?: string[]; env?: Record<string, string>; on?: Pod; fix?: RegExp } = {}) {
  const p = opts.on ?? pod;
  const before = await snapshot(p.pod);
  const stateDir = stateDirFor(cleanup);
  const full = [...(opts.wrap ?? []), PODTAP, argv[0]!, ...(argv[0] === 'inspect' ? [] : ['--state-dir', stateDir]), ...argv.slice(1)];
  const r = await runInPod(p.pod, p.hostname, full, { reject: false, env: opts.env ?? {}, timeoutMs: 30_000 });
  expect(r.exitCode, r.stderr).toBe(status);
  expect(r.stderr).toMatch(message);
  const fix = /\n\s*fix: (.*)/.exec(r.stderr)?.[1];
  expect(fix, `no fix line in:\n${r.stderr}`).toBeDefined();
  if (opts.fix) expect(fix).toMatch(opts.fix);
  expect(r.stdout).toBe('');
  expect(r.stderr).not.toMatch(/restoring the namespace|namespace restored/);
  expect(diffSnapshots(before, await snapshot(p.pod))).toEqual([]);
  return r;
}

/** Up, the ready line, SIGTERM, the namespace as before. */
async function upAndBack(p: Pod, args: string[], check: (ready: Awaited<ReturnType<typeof startPodtap>['ready']>) => void) {
  const before = await snapshot(p.pod);
  const up = startPodtap(p, args, cleanup);
  check(await up.ready);
  up.proc.kill('SIGTERM');
  const r = await up.proc;
  expect(r.exitCode, up.stderr()).toBe(0);
  expect(diffSnapshots(before, await snapshot(p.pod))).toEqual([]);
}

/** A bare namespace (no pod fixture) that runs podtap under the same pod wrapper. */
async function bareNs(): Promise<Pod> {
  const ns = await createNetns({ cleanup });
  return { ...pod, pod: ns, node: ns };
}

describe('the pod shape', () => {
  it('no pod interface at all', async () => {
    const lonely = await bareNs();
    await nsSh(lonely.pod, 'ip link add lan0 type bridge && ip addr add 10.9.9.9/24 dev lan0');
    await refused(['up'], 4, /no pod interface \(veth or macvlan\) in this network namespace \(links: lo \(loopback\), lan0 \(bridge, 10\.9\.9\.9\/24\)\)/, { on: lonely, fix: /--interface/ });
  });

  it('several candidates without --interface, listing them, and how to take them all', async () => {
    const r = await refused(['up'], 4, /4 pod interfaces in this network namespace: /, { on: multi, fix: /PODTAP_INTERFACE=eth0,net1,net2,net3/ });
    for (const d of [/eth0 \(veth, 10\.27\.0\.2\/16\)/, /net1 \(veth, 10\.28\.0\.2\/24\)/, /net2 \(macvlan, 10\.29\.0\.2\/24\)/, /net3 \(veth\)/]) expect(r.stderr).toMatch(d);
  });

  it('the same, for inspect: the problem is in the report, exit 4', async () => {
    const r = await multi.run([PODTAP, 'inspect'], { reject: false });
    expect(r.exitCode, r.stderr).toBe(4);
    const report = JSON.parse(r.stdout) as { interfaces: { interface: string; kind: string }[]; chosen: string[]; problem: string };
    expect(report.interfaces.map((i) => [i.interface, i.kind])).toEqual([['eth0', 'veth'], ['net1', 'veth'], ['net2', 'macvlan'], ['net3', 'veth']]);
    expect(report.chosen).toEqual([]);
    expect(report.problem).toMatch(/4 pod interfaces/);
  });

  it('an interface named twice', async () => {
    await refused(['up', '--interface', 'eth0', '--interface', 'eth0'], 2, /--interface names eth0 twice/);
    await refused(['up'], 2, /PODTAP_INTERFACE names eth0 twice/, { env: { PODTAP_INTERFACE: 'eth0,net1,eth0' }, on: multi });
  });

  for (const name of ['e#0', 'e"q']) {
    it(`a pod interface named ${name}, which podtap does not pass to ip or nft`, async () => {
      const odd = await bareNs();
      const peer = await createNetns({ cleanup });
      await nsSh(odd.pod, 'ip link add name "$1" type veth peer name p0 netns "$2" && ip addr add 10.5.0.2/24 dev "$1" && ip link set "$1" up', [name, peer]);
      const quoted = JSON.stringify(name).replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
      await refused(['up'], 4, new RegExp(`the interface name ${quoted} has characters podtap does not pass to ip or nft`), { on: odd, fix: /1 to 15 characters/ });
      // Named on the command line, it never gets that far.
      await refused(['up', '--interface', name], 2, /--interface is .*not a valid interface name/, { on: odd });
    });
  }

  it('a non-CNI kind (vxlan) is refused without --force, and taken over with it', async () => {
    // No vlan or dummy driver on this kernel: a vxlan link stands in for a
    // link no CNI plugin leaves in a pod.
    await nsSh(pod.pod, 'ip link add vx0 type vxlan id 42 dstport 4789 && ip addr add 10.98.0.2/24 dev vx0 && ip link set vx0 up');
    try {
      await refused(['up', '--interface', 'vx0'], 4, /interface vx0 is a vxlan \("vxlan"\), which no CNI plugin puts in a pod/, { fix: /add --force/ });
      await upAndBack(pod, ['up', '--interface', 'vx0', '--force'], (ready) => {
        expect(ready).toMatchObject({ tap: 'tap0', datapath: 'redirect', ip: '10.98.0.2/24', nics: [expect.objectContaining({ interface: 'vx0', kind: 'vxlan' })] });
      });
    } finally {
      await nsSh(pod.pod, 'ip link del vx0');
    }
  });

  it('a macvlan on the bridge data path', async () => {
    await refused(['up', '--datapath', 'bridge', '--interface', 'net2'], 2, /net2 is a macvlan interface, which the bridge data path cannot carry/, { on: multi, fix: /--datapath redirect/ });
    await refused(['up', '--datapath', 'bridge', ...multi.nicArgs('redirect')], 2, /net2 is a macvlan interface/, { on: multi });
  });

  it('an interface without IPv4 is no longer refused: it is carried as layer 2 only', async () => {
    const other = await makePod('ptp', { cleanup });
    await nsSh(other.pod, 'ip -4 addr flush dev eth0');
    for (const datapath of ['redirect', 'bridge'] as const) {
      await upAndBack(other, ['up', '--datapath', datapath], (ready) => {
        expect(ready).toMatchObject({ datapath, mac: other.expect.mac, nics: [expect.objectContaining({ interface: 'eth0', defaultRoute: false })] });
        expect(ready.ip).toBeUndefined();
        expect(ready.nics[0]!.ip).toBeUndefined();
        // No address to hand out: no DHCP server for it.
        expect(ready.dhcp).toEqual([]);
      });
    }
    await other.cleanup();
  });
});

describe('the environment', () => {
  it('/dev/net/tun missing', async () => {
    await refused(['up'], 3, /\/dev\/net\/tun does not exist/, { wrap: ['unshare', '-m', 'sh', '-c', 'mount -t tmpfs none /dev/net && exec "$@"', 'hide-tun'] });
  });

  it('no CAP_NET_ADMIN', async () => {
    await refused(['up'], 3, /lacks CAP_NET_ADMIN.*\n.*fix: add the NET_ADMIN capability/, { wrap: ['setpriv', '--bounding-set', '-net_admin', '--inh-caps', '-net_admin', '--'] });
  });
  // nft missing from PATH: see hardening.test.ts.
});

describe('names already taken', () => {
  it('a bridge name already taken, with the bridge data path', async () => {
    await nsSh(pod.pod, 'ip link add br0 type bridge');
    try {
      await refused(['up', '--datapath', 'bridge'], 5, /a link named br0 already exists, so the bridge for eth0 can't be created/, { fix: /--bridge/ });
      // The redirect data path makes no bridge: the name is no obstacle.
      await upAndBack(pod, ['up', '--datapath', 'redirect'], (ready) => expect(ready).toMatchObject({ datapath: 'redirect', bridge: null }));
      await upAndBack(pod, ['up'], (ready) => expect(ready).toMatchObject({ datapath: 'redirect', bridge: null }));
    } finally {
      await nsSh(pod.pod, 'ip link del br0');
    }
  });

  it("the bridge name of a later NIC (br1) already taken", async () => {
    await nsSh(multi.pod, 'ip link add br1 type bridge');
    try {
      await refused(['up', '--datapath', 'bridge', ...multi.nicArgs('bridge')], 5, /a link named br1 already exists, so the bridge for net1 can't be created/, { on: multi });
    } finally {
      await nsSh(multi.pod, 'ip link del br1');
    }
  });

  for (const datapath of ['redirect', 'bridge'] as const) {
    it(`a tap name already taken (${datapath})`, async () => {
      await nsSh(pod.pod, 'ip tuntap add dev vmtap mode tap');
      try {
        await refused(['up', '--datapath', datapath, '--tap', 'vmtap'], 5, /a link named vmtap already exists, so the tap for eth0 can't be created/, { fix: /--tap/ });
      } finally {
        await nsSh(pod.pod, 'ip link del vmtap');
      }
    });
  }

  it('the tap name of a later NIC (tap2) already taken', async () => {
    await nsSh(multi.pod, 'ip tuntap add dev tap2 mode tap');
    try {
      await refused(['up', ...multi.nicArgs('redirect')], 5, /a link named tap2 already exists, so the tap for net2 can't be created/, { on: multi });
    } finally {
      await nsSh(multi.pod, 'ip link del tap2');
    }
  });

  it("a later NIC's tap name that is a pod interface", async () => {
    // --tap net0: NIC 1 (net1) would get a tap called net1.
    await refused(['up', '--tap', 'net0', '--interface', 'eth0', '--interface', 'net1'], 5, /a link named net1 already exists, so the tap for net1 can't be created/, { on: multi });
  });
});

describe('options and other podtaps', () => {
  it('malformed options', async () => {
    await refused(['up', '--queues', '0'], 2, /--queues is 0, out of range/);
    await refused(['up', '--bridge', 'this-name-is-too-long'], 2, /not a valid interface name/);
    await refused(['up'], 2, /PODTAP_LOG_FORMAT is "yaml", not a log format/, { env: { PODTAP_LOG_FORMAT: 'yaml' } });
    await refused(['up', '--datapath', 'tc'], 2, /--datapath is "tc", not a data path/, { fix: /bridge or redirect/ });
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
    await other.cleanup();
  });

  it('a second podtap while one is running, on both data paths', async () => {
    for (const datapath of ['redirect', 'bridge'] as const) {
      const up = startPodtap(pod, ['up', '--no-dhcp', '--datapath', datapath], cleanup);
      expectReady(await up.ready, pod, datapath);
      const during = await snapshot(pod.pod);
      for (const cmd of [['up', '--datapath', datapath], ['down']]) {
        const r = await runInPod(pod.pod, pod.hostname, [PODTAP, cmd[0]!, '--state-dir', up.stateDir, ...cmd.slice(1)], { reject: false });
        expect(r.exitCode, r.stderr).toBe(5);
        expect(r.stderr).toMatch(new RegExp(`another podtap \\(pid ${up.pid}\\) holds .*lock`));
      }
      expect(diffSnapshots(during, await snapshot(pod.pod))).toEqual([]);
      up.proc.kill('SIGTERM');
      expect((await up.proc).exitCode).toBe(0);
    }
  });
});
